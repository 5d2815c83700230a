//! Native tests of the SDK's protocol: decoding errors, batching, manifests.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::runtime::{self, EncodedEvent};
use crate::{Context, Effect, Entity, Level, Reply, SideEffect};

struct Counter;

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Command {
    Add { amount: u64 },
    AddAndTell { amount: u64 },
    WrongStateType,
    Stash,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(tag = "type")]
enum Event {
    Added { amount: u64 },
}

#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
struct State {
    total: u64,
}

impl Entity for Counter {
    type Command = Command;
    type Event = Event;
    type State = State;
    const TYPE_NAME: &'static str = "counter";

    fn handle(state: &State, command: Command, ctx: &Context) -> Effect<Event> {
        match command {
            Command::Add { amount } => Effect::persist_all(vec![Event::Added { amount }; 2])
                .then_reply(Reply::ok(&json!({ "total": state.total + 2 * amount, "id": ctx.entity_id })))
                .then_run(SideEffect::info("added")),
            Command::AddAndTell { amount } => Effect::persist_all(vec![Event::Added { amount }; 2])
                .then_reply_with(|after: &State| Reply::ok(&json!({ "total": after.total }))),
            Command::WrongStateType => Effect::none().then_reply_with(|n: &u64| Reply::ok(n)),
            Command::Stash => Effect::stash(),
        }
    }

    fn apply(state: State, event: &Event) -> State {
        match event {
            Event::Added { amount } => State { total: state.total + amount },
        }
    }

    fn tags(_event: &Event) -> Vec<String> {
        vec!["counting".into()]
    }
}

fn ctx() -> Context {
    Context::new("counter", "c-1", 3, 1_700_000_000_000)
}

#[test]
fn handle_command_encodes_events_with_manifest_and_tags() {
    let state = br#"{"total":1}"#;
    let effect = runtime::handle_command::<Counter>(state, br#"{"type":"Add","amount":5}"#, &ctx()).unwrap();
    let event = EncodedEvent {
        manifest: "Added".into(),
        payload: br#"{"type":"Added","amount":5}"#.to_vec(),
        tags: vec!["counting".into()],
    };
    assert_eq!(effect.events(), &[event.clone(), event]);
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"total": 11, "id": "c-1"})));
    assert_eq!(effect.side_effects(), &[SideEffect::log(Level::Info, "added")]);
}

#[test]
fn malformed_command_is_an_error_not_a_panic() {
    let err = runtime::handle_command::<Counter>(br#"{"total":0}"#, br#"{"type":"Nope"}"#, &ctx()).unwrap_err();
    assert!(err.starts_with("malformed command: unknown variant `Nope`"), "{err}");
    let err = runtime::handle_command::<Counter>(br#"{"total":0}"#, b"not json", &ctx()).unwrap_err();
    assert!(err.starts_with("malformed command: "), "{err}");
}

#[test]
fn undecodable_state_is_reported() {
    let err = runtime::handle_command::<Counter>(br#""text""#, br#"{"type":"Stash"}"#, &ctx()).unwrap_err();
    assert!(err.starts_with("state could not be decoded: "), "{err}");
    let err = runtime::apply_events::<Counter>(b"", []).unwrap_err();
    assert!(err.starts_with("state could not be decoded: "), "{err}");
}

#[test]
fn apply_events_folds_a_batch() {
    let empty = runtime::empty_state::<Counter>();
    assert_eq!(empty, br#"{"total":0}"#);
    let e1 = br#"{"type":"Added","amount":2}"#;
    let e2 = br#"{"type":"Added","amount":3}"#;
    let state = runtime::apply_events::<Counter>(&empty, [("Added", &e1[..]), ("Added", &e2[..])]).unwrap();
    assert_eq!(state, br#"{"total":5}"#);
}

/// The packed form of `replay.apply-event-batch`: each event's manifest and
/// payload, each after its length (u32 LE).
fn packed(events: &[(&str, &[u8])]) -> Vec<u8> {
    let mut batch = Vec::new();
    for (manifest, payload) in events {
        batch.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        batch.extend_from_slice(manifest.as_bytes());
        batch.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        batch.extend_from_slice(payload);
    }
    batch
}

#[test]
fn a_packed_batch_folds_like_the_list() {
    let e1 = br#"{"type":"Added","amount":2}"#;
    let e2 = br#"{"type":"Added","amount":3}"#;
    let events = [("Added", &e1[..]), ("Added", &e2[..])];
    let empty = runtime::empty_state::<Counter>();
    let list = runtime::apply_events::<Counter>(&empty, events).unwrap();
    assert_eq!(runtime::apply_event_batch::<Counter>(&empty, &packed(&events)).unwrap(), list);
    assert_eq!(runtime::apply_event_batch::<Counter>(&empty, &[]).unwrap(), empty);
    let bad = br#"{"type":"Removed"}"#;
    let err = runtime::apply_event_batch::<Counter>(&empty, &packed(&[("Added", e1), ("Removed", bad)])).unwrap_err();
    assert!(err.starts_with("event 1 of the batch (manifest `Removed`) could not be decoded"), "{err}");
}

#[test]
fn a_malformed_packed_batch_is_an_error_not_a_panic() {
    let empty = runtime::empty_state::<Counter>();
    let whole = packed(&[("Added", br#"{"type":"Added","amount":2}"#)]);
    for cut in 1..whole.len() {
        let err = runtime::apply_event_batch::<Counter>(&empty, &whole[..cut]).unwrap_err();
        let what = if cut < 4 + "Added".len() { "manifest" } else { "payload" };
        assert_eq!(err, format!("an event batch ends inside an event's {what}"), "cut at {cut}");
    }
    let mut not_utf8 = packed(&[("A", b"{}")]);
    not_utf8[4] = 0xff;
    let err = runtime::apply_event_batch::<Counter>(&empty, &not_utf8).unwrap_err();
    assert_eq!(err, "an event batch holds a manifest that is not UTF-8");
}

#[test]
fn undecodable_event_names_its_position_and_manifest() {
    let good = br#"{"type":"Added","amount":2}"#;
    let bad = br#"{"type":"Removed"}"#;
    let err =
        runtime::apply_events::<Counter>(br#"{"total":0}"#, [("Added", &good[..]), ("Removed", &bad[..])]).unwrap_err();
    assert!(err.starts_with("event 1 of the batch (manifest `Removed`) could not be decoded"), "{err}");
}

#[test]
fn default_manifest_covers_common_serde_shapes() {
    #[derive(Serialize)]
    enum External {
        Unit,
        Newtype(u8),
        Struct { a: u8 },
    }
    #[derive(Serialize)]
    struct Plain {
        a: u8,
        b: u8,
    }
    use crate::codec::default_manifest as m;
    assert_eq!(m(&Event::Added { amount: 1 }), "Added");
    assert_eq!(m(&External::Unit), "Unit");
    assert_eq!(m(&External::Newtype(1)), "Newtype");
    assert_eq!(m(&External::Struct { a: 1 }), "Struct");
    assert_eq!(m(&Plain { a: 1, b: 2 }), "event");
    assert_eq!(m(&42), "event");
    assert_eq!(m(&vec![1, 2]), "event");
    assert_eq!(m(&Option::<u8>::None), "event");
    assert_eq!(m(&json!({"a": {"type": "Inner"}, "type": "Outer", "z": [1, {"b": 2}]})), "Outer");
    assert_eq!(m(&json!({"type": 7})), "type", "a non-string `type` is the one key");
    assert_eq!(m(&json!({"type": 7, "a": 1})), "event");
    assert_eq!(m(&json!({"Escaped\\name": {}})), "Escaped\\name");
}

#[test]
fn effect_builders_describe_what_they_say() {
    let e: Effect<u8> = Effect::none();
    assert!(e.is_none() && e.events().is_empty() && e.reply_value().is_none());
    assert!(Effect::<u8>::persist_all(vec![]).is_none());
    assert!(Effect::<u8>::unhandled().is_unhandled());
    assert!(Effect::<u8>::stash().is_stashed());
    let e = Effect::persist(1u8).then_unstash_all().then_stop();
    assert!(e.is_persist() && e.unstashes_all() && e.stops());
    let e = Effect::<u8>::reply(Reply::error("no"));
    assert!(e.is_none());
    assert_eq!(e.reply_value().and_then(Reply::error_message), Some("no"));
}

#[test]
fn ack_is_an_explicit_json_confirmation() {
    assert_eq!(Reply::ack().json(), Some(json!({"ok": true})));
    assert_eq!(Reply::ok_raw(b"x".to_vec()), Reply::Ok(b"x".to_vec()));
}

#[test]
fn side_effect_payloads_are_json() {
    let cmd = json!({"type": "Deposit", "amount": 1});
    assert_eq!(
        SideEffect::schedule(10, "bank-account", "a", &cmd),
        SideEffect::Schedule {
            delay_ms: 10,
            entity_type: "bank-account".into(),
            entity_id: "a".into(),
            payload: serde_json::to_vec(&cmd).unwrap(),
        }
    );
    assert_eq!(SideEffect::publish("t", &1), SideEffect::Publish { topic: "t".into(), payload: b"1".to_vec() });
}

#[test]
fn then_reply_with_replies_from_the_state_after_the_events() {
    let effect =
        runtime::handle_command::<Counter>(br#"{"total":1}"#, br#"{"type":"AddAndTell","amount":5}"#, &ctx()).unwrap();
    assert_eq!(effect.events().len(), 2);
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"total": 11})));
    // Natively, the handler's effect computes it from a given state.
    let effect = Counter::handle(&State { total: 1 }, Command::AddAndTell { amount: 5 }, &ctx());
    assert_eq!(effect.reply_value(), None);
    let after = effect.events().iter().fold(State { total: 1 }, Counter::apply);
    assert_eq!(effect.reply_after(&after).as_ref().and_then(Reply::json), Some(json!({"total": 11})));
    // A later `then_reply` replaces it.
    let fixed = effect.then_reply(Reply::ack());
    assert_eq!(fixed.reply_after(&after), Some(Reply::ack()));
}

#[test]
#[should_panic(expected = "then_reply_with: the closure takes a `u64`, which is not the entity's State")]
fn then_reply_with_of_another_type_than_the_state_names_the_type() {
    let _ = runtime::handle_command::<Counter>(br#"{"total":1}"#, br#"{"type":"WrongStateType"}"#, &ctx());
}

#[test]
fn handle_command_and_apply_gives_the_state_apply_events_would() {
    let state = br#"{"total":1}"#;
    for command in [&br#"{"type":"Add","amount":5}"#[..], br#"{"type":"AddAndTell","amount":4}"#] {
        let alone = runtime::handle_command::<Counter>(state, command, &ctx()).unwrap();
        let (effect, after) = runtime::handle_command_and_apply::<Counter>(state, command, &ctx()).unwrap();
        // The same decision as `handle-command`, reply included.
        assert_eq!(effect, alone);
        let folded = runtime::apply_events::<Counter>(
            state,
            effect.events().iter().map(|e| (e.manifest.as_str(), &e.payload[..])),
        )
        .unwrap();
        assert_eq!(after, Some(folded));
    }
    let (effect, after) = runtime::handle_command_and_apply::<Counter>(state, br#"{"type":"Stash"}"#, &ctx()).unwrap();
    assert!(effect.is_stashed());
    assert_eq!(after, None, "no events, no state after them");
    let err = runtime::handle_command_and_apply::<Counter>(state, br#"{"type":"Nope"}"#, &ctx()).unwrap_err();
    assert!(err.contains("Nope"), "{err}");
}
