//! The handler protocol in plain Rust types: decode, call the entity, encode.
//!
//! Kept free of the WIT bindings so it is unit-tested natively; `glue` only
//! converts these results to and from the generated WIT types.

use crate::codec::{decode_command, decode_state, to_json};
use crate::effect::Action;
use crate::{Context, Effect, Entity};

/// An event ready for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub manifest: String,
    pub payload: Vec<u8>,
    pub tags: Vec<String>,
}

pub fn empty_state<E: Entity>() -> Vec<u8> {
    to_json(&E::State::default(), "empty state")
}

/// Decodes state and command, runs `E::handle`, encodes the events.
pub fn handle_command<E: Entity>(state: &[u8], command: &[u8], ctx: &Context) -> Result<Effect<EncodedEvent>, String> {
    decide::<E>(state, command, ctx, false).map(|(effect, _)| effect)
}

/// [`handle_command`], and the state after the events it persists, encoded (none
/// when it persists none): `decide.handle-command-and-apply` (`wit/entity.wit`).
/// The events are applied as `E::handle` returned them, before their encoding,
/// as Akka applies an effect's events.
pub fn handle_command_and_apply<E: Entity>(
    state: &[u8],
    command: &[u8],
    ctx: &Context,
) -> Result<(Effect<EncodedEvent>, Option<Vec<u8>>), String> {
    decide::<E>(state, command, ctx, true)
}

fn decide<E: Entity>(
    state: &[u8],
    command: &[u8],
    ctx: &Context,
    with_state_after: bool,
) -> Result<(Effect<EncodedEvent>, Option<Vec<u8>>), String> {
    let state: E::State = decode_state(state)?;
    let command: E::Command = decode_command(command)?;
    let effect = E::handle(&state, command, ctx);
    let persists = matches!(effect.action, Action::Persist(_));
    // The state after the events, by the entity's own event handler: for a reply
    // computed from it, and for the caller that asked for it.
    let after = (effect.reply_with.is_some() || (with_state_after && persists))
        .then(|| effect.events().iter().fold(state, E::apply));
    let reply = match (&effect.reply_with, &after) {
        (Some(reply), Some(after)) => Some(reply.call(after)),
        _ => effect.reply,
    };
    let state_after = match after {
        Some(after) if with_state_after && persists => Some(to_json(&after, "state")),
        _ => None,
    };
    let action = match effect.action {
        Action::Persist(events) => Action::Persist(
            events
                .iter()
                .map(|event| EncodedEvent {
                    manifest: E::manifest(event),
                    payload: to_json(event, "event"),
                    tags: E::tags(event),
                })
                .collect(),
        ),
        Action::None => Action::None,
        Action::Unhandled => Action::Unhandled,
        Action::Stash => Action::Stash,
    };
    let effect = Effect {
        action,
        reply,
        reply_with: None,
        then: effect.then,
        unstash_all: effect.unstash_all,
        stop: effect.stop,
    };
    Ok((effect, state_after))
}

/// Decodes the state once, folds every `(manifest, payload)` event, encodes once:
/// recovery hands in long batches.
pub fn apply_events<'a, E: Entity>(
    state: &[u8],
    events: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, String> {
    fold::<E>(state, events.into_iter().map(Ok))
}

/// [`apply_events`] over the packed batch of `replay.apply-event-batch`
/// (`wit/entity.wit`), read in place.
pub fn apply_event_batch<E: Entity>(state: &[u8], batch: &[u8]) -> Result<Vec<u8>, String> {
    fold::<E>(state, unpack(batch))
}

fn fold<'a, E: Entity>(
    state: &[u8],
    events: impl Iterator<Item = Result<(&'a str, &'a [u8]), String>>,
) -> Result<Vec<u8>, String> {
    let mut state: E::State = decode_state(state)?;
    for (index, event) in events.enumerate() {
        let (manifest, payload) = event?;
        let event: E::Event = E::upcast(manifest, payload)
            .map_err(|err| format!("event {index} of the batch (manifest `{manifest}`) could not be decoded: {err}"))?;
        state = E::apply(state, &event);
    }
    Ok(to_json(&state, "state"))
}

/// The events of a packed batch: each `manifest length (u32 LE), manifest,
/// payload length (u32 LE), payload`, nothing else.
fn unpack(batch: &[u8]) -> impl Iterator<Item = Result<(&str, &[u8]), String>> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let event = field(&mut rest, "manifest")
            .and_then(|m| {
                std::str::from_utf8(m).map_err(|_| "an event batch holds a manifest that is not UTF-8".into())
            })
            .and_then(|manifest| Ok((manifest, field(&mut rest, "payload")?)));
        if event.is_err() {
            rest = &[];
        }
        Some(event)
    })
}

/// One length-prefixed field (u32 LE length, then the bytes) of a packed batch:
/// the entity's `replay` batches and a projection's `feed` batches.
pub(crate) fn field<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], String> {
    let truncated = || format!("an event batch ends inside an event's {what}");
    let len = rest.get(..4).ok_or_else(truncated)?;
    let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
    let field = rest.get(4..4 + len).ok_or_else(truncated)?;
    *rest = &rest[4 + len..];
    Ok(field)
}

/// Decodes the recovered state and asks the entity for its side effects.
/// Undecodable state is a broken snapshot, which cannot be reported through this
/// function's signature, so it panics (the host sees the message as a fault).
pub fn on_recovery_completed<E: Entity>(state: &[u8]) -> Vec<crate::SideEffect> {
    match decode_state::<E::State>(state) {
        Ok(state) => E::on_recovery_completed(&state),
        Err(err) => panic!("on-recovery-completed: {err}"),
    }
}
