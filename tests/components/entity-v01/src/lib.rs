//! Test-only entity built against the earlier contract, `mneme:entity@0.1.0`
//! (`wit/v0.1/entity.wit`), with raw wit-bindgen (the SDK is built on 0.2.0): it
//! imports `mneme:entity/host@0.1.0` and exports `mneme:entity/handler@0.1.0`,
//! like components built before 0.2.0 and the Python, JavaScript and C examples.
//! mneme must deploy and run it, its side effects included.
//!
//! State: the JSON list of the values added. Commands (JSON):
//! `{"type":"Add","value":"x"}` persists `Added` (payload: the value), replies the
//! values and publishes the value to topic `entity-v01`;
//! `{"type":"Get"}` replies the values;
//! `{"type":"Tell","to":"id","value":"x"}` persists nothing and sends
//! `{"type":"RecordOrigin","value":"x"}` to `faulty|id`;
//! `{"type":"AddLater","delayMs":50,"value":"x"}` schedules an `Add` to itself.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../../wit/v0.1", world: "entity" });

    use exports::mneme::entity::handler::{Command, Effect, EntityInfo, Event, Guest, SideEffect};
    use mneme::entity::host;
    use mneme::entity::types::{Action, CommandTo, Message, Reply, Timer};
    use serde_json::{json, Value};

    struct EntityV01;

    fn values(state: &[u8]) -> Vec<Value> {
        serde_json::from_slice(state).unwrap_or_default()
    }

    fn reply(body: Value) -> Option<Reply> {
        Some(Reply::Ok(body.to_string().into_bytes()))
    }

    fn effect(action: Action, reply: Option<Reply>, then: Vec<SideEffect>) -> Effect {
        Effect { action, reply, then, unstash_all: false, stop: false }
    }

    impl Guest for EntityV01 {
        fn describe() -> EntityInfo {
            EntityInfo { type_name: "entity-v01".into(), state_version: 1, snapshot_every: 0 }
        }

        fn empty_state() -> Vec<u8> {
            b"[]".to_vec()
        }

        fn handle_command(state: Vec<u8>, command: Command) -> Result<Effect, String> {
            let c: Value = serde_json::from_slice(&command.payload).map_err(|e| format!("malformed command: {e}"))?;
            let value = c["value"].as_str().unwrap_or_default().to_string();
            let mut all = values(&state);
            Ok(match c["type"].as_str() {
                Some("Add") => {
                    all.push(json!(value));
                    let event = Event { manifest: "Added".into(), payload: value.clone().into_bytes(), tags: vec![] };
                    let publish = SideEffect::Publish(Message {
                        topic: "entity-v01".into(),
                        payload: json!(value).to_string().into_bytes(),
                    });
                    effect(Action::Persist(vec![event]), reply(json!(all)), vec![publish])
                }
                Some("Get") => effect(Action::None, reply(json!(all)), vec![]),
                Some("Tell") => {
                    let to = c["to"].as_str().unwrap_or_default().to_string();
                    let payload = json!({ "type": "RecordOrigin", "value": value }).to_string().into_bytes();
                    let send = SideEffect::Send(CommandTo { entity_type: "faulty".into(), entity_id: to, payload });
                    effect(Action::None, reply(json!({ "ok": true })), vec![send])
                }
                Some("AddLater") => {
                    let payload = json!({ "type": "Add", "value": value }).to_string().into_bytes();
                    let command =
                        CommandTo { entity_type: "entity-v01".into(), entity_id: command.metadata.entity_id, payload };
                    let delay_ms = c["delayMs"].as_u64().unwrap_or(0);
                    effect(
                        Action::None,
                        reply(json!({ "ok": true })),
                        vec![SideEffect::Schedule(Timer { delay_ms, command })],
                    )
                }
                _ => {
                    host::report_fault("unknown command");
                    return Err(format!("malformed command: unknown type {}", c["type"]));
                }
            })
        }

        fn apply_events(state: Vec<u8>, events: Vec<Event>) -> Result<Vec<u8>, String> {
            let mut all = values(&state);
            for e in events {
                all.push(json!(String::from_utf8(e.payload).map_err(|e| e.to_string())?));
            }
            Ok(json!(all).to_string().into_bytes())
        }

        fn on_recovery_completed(_state: Vec<u8>) -> Vec<SideEffect> {
            Vec::new()
        }
    }

    export!(EntityV01);
}
