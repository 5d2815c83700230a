//! Test-only entity that misbehaves on request, so the host's sandbox (deadlines,
//! memory cap, trap recovery, fault reporting) can be tested end to end.
//!
//! Commands: `{"type":"Record","value":"a"}` persists `Recorded`, replies the values
//! so far (`["a"]`) and then publishes the value to topic `faulty-records`;
//! `{"type":"RecordMany","values":["a","b"]}` persists one event per value;
//! `{"type":"Get"}` replies the values; `{"type":"Stop"}` replies and stops;
//! `{"type":"Schedule","delayMs":50,"value":"x"}` schedules a `Record` to itself;
//! `{"type":"Send","to":"other","value":"x"}` sends a `Record` to another entity;
//! `{"type":"SendTagged","to":"other","value":"x"}` sends it a `RecordOrigin`, which
//! records `"x from SOURCE as KEY"` (the sender and idempotency key it sees), or
//! `"x from outside"` when no entity sent it;
//! `{"type":"Loop"}` never returns; `{"type":"Allocate"}` allocates until memory runs
//! out; `{"type":"Panic","message":"boom"}` panics with that message;
//! `{"type":"BadApply"}` persists a `Broken` event whose `apply` panics.
//! After every recovery it publishes `{"values":N}` to topic `faulty-recovered`.

use std::hint::black_box;

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply, SideEffect};
use serde::{Deserialize, Serialize};

pub struct Faulty;

#[derive(Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum Command {
    Record {
        value: String,
    },
    RecordMany {
        values: Vec<String>,
    },
    Get,
    Stop,
    #[serde(rename_all = "camelCase")]
    Schedule {
        delay_ms: u64,
        value: String,
    },
    Send {
        to: String,
        value: String,
    },
    SendTagged {
        to: String,
        value: String,
    },
    RecordOrigin {
        value: String,
    },
    Loop,
    Allocate,
    Panic {
        message: String,
    },
    BadApply,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "type")]
pub enum Event {
    Recorded { value: String },
    Broken,
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub struct State {
    pub values: Vec<String>,
}

impl Entity for Faulty {
    type Command = Command;
    type Event = Event;
    type State = State;
    const TYPE_NAME: &'static str = "faulty";

    fn handle(state: &State, command: Command, ctx: &Context) -> Effect<Event> {
        match command {
            Command::Record { value } => {
                let mut values = state.values.clone();
                values.push(value.clone());
                Effect::persist(Event::Recorded { value: value.clone() })
                    .then_reply(Reply::ok(&values))
                    .then_run(SideEffect::publish("faulty-records", &value))
            }
            Command::RecordMany { values } => {
                let mut all = state.values.clone();
                all.extend(values.iter().cloned());
                let events = values.into_iter().map(|value| Event::Recorded { value }).collect();
                Effect::persist_all(events).then_reply(Reply::ok(&all))
            }
            Command::Get => Effect::reply(Reply::ok(&state.values)),
            Command::Stop => Effect::reply(Reply::ok(&state.values)).then_stop(),
            Command::Schedule { delay_ms, value } => Effect::reply(Reply::ack()).then_run(SideEffect::schedule(
                delay_ms,
                "faulty",
                ctx.entity_id.clone(),
                &Command::Record { value },
            )),
            Command::Send { to, value } => {
                Effect::reply(Reply::ack()).then_run(SideEffect::send("faulty", to, &Command::Record { value }))
            }
            Command::SendTagged { to, value } => {
                Effect::reply(Reply::ack()).then_run(SideEffect::send("faulty", to, &Command::RecordOrigin { value }))
            }
            Command::RecordOrigin { value } => {
                let value = match &ctx.origin {
                    Some(o) => format!("{value} from {} as {}", o.source, o.idempotency_key),
                    None => format!("{value} from outside"),
                };
                Effect::persist(Event::Recorded { value }).then_reply(Reply::ack())
            }
            Command::Loop => spin_forever(),
            Command::Allocate => allocate_without_bound(),
            Command::Panic { message } => panic!("{message}"),
            Command::BadApply => Effect::persist(Event::Broken).then_reply(Reply::ack()),
        }
    }

    fn apply(mut state: State, event: &Event) -> State {
        match event {
            Event::Recorded { value } => {
                state.values.push(value.clone());
                state
            }
            Event::Broken => panic!("apply-events fault requested by BadApply"),
        }
    }

    fn on_recovery_completed(state: &State) -> Vec<SideEffect> {
        vec![SideEffect::publish("faulty-recovered", &serde_json::json!({ "values": state.values.len() }))]
    }
}

/// `black_box` keeps the optimizer from proving the loop side-effect free.
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Grabs 1 MiB blocks, writing every byte so the pages are really used, until the
/// allocator refuses; then panics (reported through `report-fault`).
fn allocate_without_bound() -> ! {
    const MIB: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::new();
        if block.try_reserve_exact(MIB).is_err() || hoard.try_reserve(1).is_err() {
            panic!("out of memory after allocating {} MiB", hoard.len());
        }
        block.resize(MIB, 1u8);
        hoard.push(black_box(block));
    }
}

export_entity!(Faulty);
