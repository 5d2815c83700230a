//! The `{{name}}` entity: a counter that can be closed.
//!
//! Commands (JSON, `"type"` names the variant): `{"type":"Increment","by":N}`,
//! `{"type":"Get"}`, `{"type":"Close"}`. Replies: `{"value":N}`.
//! An unknown command type is malformed (400); `Increment` or `Close` once closed
//! is unhandled (409); `Increment` by 0 is an error reply (422). `Close` publishes
//! `{"id":...,"value":N}` to the topic `{{name}}`.

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply, SideEffect};
use serde::{Deserialize, Serialize};

pub struct {{Struct}};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    Increment { by: u64 },
    Get,
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    Incremented { by: u64 },
    Closed,
}

/// Stored as `{"value":N,"closed":false}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    pub value: u64,
    pub closed: bool,
}

fn value(state: &State) -> Reply {
    Reply::ok(&serde_json::json!({ "value": state.value }))
}

impl Entity for {{Struct}} {
    type Command = Command;
    type Event = Event;
    type State = State;
    const TYPE_NAME: &'static str = "{{name}}";

    fn handle(state: &State, command: Command, ctx: &Context) -> Effect<Event> {
        match command {
            Command::Get => Effect::reply(value(state)),
            // Known commands this state does not accept: 409.
            _ if state.closed => Effect::unhandled(),
            Command::Increment { by: 0 } => Effect::reply(Reply::error("by must be at least 1")),
            Command::Increment { by } if state.value.checked_add(by).is_none() => {
                Effect::reply(Reply::error(format!("adding {by} would overflow the value {}", state.value)))
            }
            Command::Increment { by } => Effect::persist(Event::Incremented { by }).then_reply_with(value),
            Command::Close => {
                let closed = serde_json::json!({ "id": ctx.entity_id, "value": state.value });
                Effect::persist(Event::Closed).then_run(SideEffect::publish("{{name}}", &closed)).then_reply_with(value)
            }
        }
    }

    fn apply(state: State, event: &Event) -> State {
        match event {
            Event::Incremented { by } => State { value: state.value.saturating_add(*by), ..state },
            Event::Closed => State { closed: true, ..state },
        }
    }

    fn tags(_event: &Event) -> Vec<String> {
        vec!["{{name}}".to_owned()]
    }
}

export_entity!({{Struct}});
