//! A task manager, after Akka's `TaskManager` stash example: one task runs at a
//! time; commands for any other task are stashed until the running task ends, then
//! handed in again in arrival order.
//!
//! Commands: `{"type":"StartTask","taskId":"t1"}`,
//! `{"type":"NextStep","taskId":"t1","instruction":"..."}`, `{"type":"EndTask","taskId":"t1"}`.
//!
//! Replies (Akka's example has none; these let an HTTP caller see the outcome):
//! `{"started":"t1"}` (with `"duplicate":true` when `t1` was already running),
//! `{"taskId":"t1","step":"..."}`, `{"ended":"t1"}`. A stashed command gets its
//! reply when it is finally handled. With no task running, `NextStep` and `EndTask`
//! are unhandled.

use mneme_sdk::{export_entity, Context, Effect, Entity, Reply};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub struct TaskManager;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Command {
    StartTask { task_id: String },
    NextStep { task_id: String, instruction: String },
    EndTask { task_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Event {
    TaskStarted { task_id: String },
    TaskStep { task_id: String, instruction: String },
    TaskCompleted { task_id: String },
}

/// Stored as `{"taskIdInProgress":null}` or `{"taskIdInProgress":"t1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub task_id_in_progress: Option<String>,
}

impl Entity for TaskManager {
    type Command = Command;
    type Event = Event;
    type State = State;
    const TYPE_NAME: &'static str = "task-manager";

    fn handle(state: &State, command: Command, _ctx: &Context) -> Effect<Event> {
        let Some(in_progress) = &state.task_id_in_progress else {
            return match command {
                Command::StartTask { task_id } => start(task_id),
                _ => Effect::unhandled(),
            };
        };
        match command {
            Command::StartTask { task_id } if &task_id == in_progress => {
                // Duplicate: already in progress.
                Effect::reply(Reply::ok(&json!({ "started": task_id, "duplicate": true })))
            }
            Command::NextStep { task_id, instruction } if &task_id == in_progress => {
                let reply = Reply::ok(&json!({ "taskId": task_id, "step": instruction }));
                Effect::persist(Event::TaskStep { task_id, instruction }).then_reply(reply)
            }
            Command::EndTask { task_id } if &task_id == in_progress => {
                let reply = Reply::ok(&json!({ "ended": task_id }));
                // Continue with the next task.
                Effect::persist(Event::TaskCompleted { task_id }).then_reply(reply).then_unstash_all()
            }
            // Another task is in progress: wait with this one until later.
            _ => Effect::stash(),
        }
    }

    fn apply(state: State, event: &Event) -> State {
        match event {
            Event::TaskStarted { task_id } => State { task_id_in_progress: Some(task_id.clone()) },
            Event::TaskStep { .. } => state,
            Event::TaskCompleted { .. } => State { task_id_in_progress: None },
        }
    }
}

fn start(task_id: String) -> Effect<Event> {
    let reply = Reply::ok(&json!({ "started": task_id }));
    Effect::persist(Event::TaskStarted { task_id }).then_reply(reply)
}

export_entity!(TaskManager);

#[cfg(test)]
mod tests;
