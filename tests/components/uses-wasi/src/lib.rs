//! Test-only entity written the way a guest must not be: it reads the wall clock
//! and a file through Rust's standard library, so its wasm32-wasip2 build imports
//! `wasi:clocks/wall-clock` and `wasi:filesystem/*`. mneme gives guests no WASI
//! and must refuse this component at deploy, naming those imports.

use std::time::{SystemTime, UNIX_EPOCH};

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply};
use serde::{Deserialize, Serialize};

pub struct UsesWasi;

#[derive(Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    Now,
    ReadFile { path: String },
}

#[derive(Serialize, Deserialize)]
pub enum Event {}

impl Entity for UsesWasi {
    type Command = Command;
    type Event = Event;
    type State = ();
    const TYPE_NAME: &'static str = "uses-wasi";

    fn handle(_state: &(), command: Command, _ctx: &Context) -> Effect<Event> {
        match command {
            Command::Now => {
                let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                Effect::reply(Reply::ok(&ms))
            }
            Command::ReadFile { path } => match std::fs::read_to_string(path) {
                Ok(text) => Effect::reply(Reply::ok(&text)),
                Err(e) => Effect::reply(Reply::error(e.to_string())),
            },
        }
    }

    fn apply(_state: (), event: &Event) {
        match *event {}
    }
}

export_entity!(UsesWasi);
