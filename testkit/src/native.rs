//! A Rust entity run natively behind the host's [`EntityHandler`]: the same
//! entity code and the same JSON codec (the SDK's `runtime`) as its component,
//! without the sandbox.

use std::marker::PhantomData;

use mneme::component::bindings::mneme::entity::types::{
    Action, Command, CommandTo, Effect, EntityInfo, Event, LogLevel, LogLine, Message, Reply, SideEffect, Timer,
};
use mneme::component::{Decision, EntityHandler, EventBatch, Fault};
use mneme_sdk::runtime;

/// The handler of entity `E`, natively.
pub struct Native<E>(PhantomData<fn() -> E>);

impl<E> Default for Native<E> {
    fn default() -> Self {
        Native(PhantomData)
    }
}

fn side_effect(s: &mneme_sdk::SideEffect) -> SideEffect {
    use mneme_sdk::SideEffect as S;
    match s.clone() {
        S::Send { entity_type, entity_id, payload } => SideEffect::Send(CommandTo { entity_type, entity_id, payload }),
        S::Schedule { delay_ms, entity_type, entity_id, payload } => {
            SideEffect::Schedule(Timer { delay_ms, command: CommandTo { entity_type, entity_id, payload } })
        }
        S::Publish { topic, payload } => SideEffect::Publish(Message { topic, payload }),
        S::Log { level, message } => SideEffect::Log(LogLine {
            level: match level {
                mneme_sdk::Level::Trace => LogLevel::Trace,
                mneme_sdk::Level::Debug => LogLevel::Debug,
                mneme_sdk::Level::Info => LogLevel::Info,
                mneme_sdk::Level::Warn => LogLevel::Warn,
                mneme_sdk::Level::Error => LogLevel::Error,
            },
            message,
        }),
    }
}

fn context(command: &Command) -> mneme_sdk::Context {
    let m = &command.metadata;
    let ctx = mneme_sdk::Context::new(m.entity_type.clone(), m.entity_id.clone(), m.sequence_nr, m.timestamp_ms);
    match &m.origin {
        Some(o) => ctx.sent_by(o.source.clone(), o.idempotency_key.clone()),
        None => ctx,
    }
}

fn effect_to_wit(effect: &mneme_sdk::Effect<runtime::EncodedEvent>) -> Effect {
    let action = if effect.is_persist() {
        Action::Persist(
            effect
                .events()
                .iter()
                .map(|e| Event { manifest: e.manifest.clone(), payload: e.payload.clone(), tags: e.tags.clone() })
                .collect(),
        )
    } else if effect.is_unhandled() {
        Action::Unhandled
    } else if effect.is_stashed() {
        Action::Stash
    } else {
        Action::None
    };
    Effect {
        action,
        reply: effect.reply_value().map(|r| match r {
            mneme_sdk::Reply::Ok(b) => Reply::Ok(b.clone()),
            mneme_sdk::Reply::Error(m) => Reply::Error(m.clone()),
        }),
        then: effect.side_effects().iter().map(side_effect).collect(),
        unstash_all: effect.unstashes_all(),
        stop: effect.stops(),
    }
}

/// A panic in native entity code is what a trap is in a component.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, Fault> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Fault(format!("{what} panicked: {msg}"))
    })
}

impl<E: mneme_sdk::Entity> EntityHandler for Native<E> {
    fn describe(&mut self) -> Result<EntityInfo, Fault> {
        Ok(EntityInfo {
            type_name: E::TYPE_NAME.into(),
            state_version: E::STATE_VERSION,
            snapshot_every: E::SNAPSHOT_EVERY,
        })
    }

    fn empty_state(&mut self) -> Result<Vec<u8>, Fault> {
        guarded("empty-state", runtime::empty_state::<E>)
    }

    fn handle_command(&mut self, state: &[u8], command: &Command) -> Result<Result<Effect, String>, Fault> {
        let ctx = context(command);
        let effect = guarded("handle-command", || runtime::handle_command::<E>(state, &command.payload, &ctx))?;
        Ok(effect.map(|e| effect_to_wit(&e)))
    }

    fn handle_command_and_apply(&mut self, state: &[u8], command: &Command) -> Result<Result<Decision, String>, Fault> {
        let ctx = context(command);
        let decided =
            guarded("handle-command", || runtime::handle_command_and_apply::<E>(state, &command.payload, &ctx))?;
        Ok(decided.map(|(e, state_after)| Decision { effect: effect_to_wit(&e), state_after }))
    }

    fn apply_events(&mut self, state: &[u8], events: &[Event]) -> Result<Result<Vec<u8>, String>, Fault> {
        guarded("apply-events", || {
            runtime::apply_events::<E>(state, events.iter().map(|e| (e.manifest.as_str(), e.payload.as_slice())))
        })
    }

    fn apply_event_batch(&mut self, state: &[u8], batch: &EventBatch) -> Result<Result<Vec<u8>, String>, Fault> {
        guarded("apply-event-batch", || runtime::apply_event_batch::<E>(state, batch.as_bytes()))
    }

    fn on_recovery_completed(&mut self, state: &[u8]) -> Result<Vec<SideEffect>, Fault> {
        guarded("on-recovery-completed", || {
            runtime::on_recovery_completed::<E>(state).iter().map(side_effect).collect()
        })
    }
}
