use mneme_sdk::{Context, Effect, Entity, Reply};
use serde_json::json;

use super::*;

fn handle(state: &State, command: Command) -> Effect<Event> {
    TaskManager::handle(state, command, &Context::new("task-manager", "tm", 0, 0))
}

fn running(task: &str) -> State {
    State { task_id_in_progress: Some(task.into()) }
}

fn start(task: &str) -> Command {
    Command::StartTask { task_id: task.into() }
}

fn step(task: &str) -> Command {
    Command::NextStep { task_id: task.into(), instruction: "do it".into() }
}

fn end(task: &str) -> Command {
    Command::EndTask { task_id: task.into() }
}

#[test]
fn starting_a_task_when_idle_persists_and_replies() {
    let effect = handle(&State::default(), start("t1"));
    assert_eq!(effect.events(), &[Event::TaskStarted { task_id: "t1".into() }]);
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"started": "t1"})));
    assert_eq!(TaskManager::apply(State::default(), &effect.events()[0]), running("t1"));
}

#[test]
fn steps_and_end_without_a_running_task_are_unhandled() {
    assert!(handle(&State::default(), step("t1")).is_unhandled());
    assert!(handle(&State::default(), end("t1")).is_unhandled());
}

#[test]
fn duplicate_start_is_none() {
    let effect = handle(&running("t1"), start("t1"));
    assert!(effect.is_none());
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"started": "t1", "duplicate": true})));
}

#[test]
fn commands_for_other_tasks_are_stashed() {
    for command in [start("t2"), step("t2"), end("t2")] {
        let effect = handle(&running("t1"), command);
        assert!(effect.is_stashed());
        assert!(effect.reply_value().is_none());
        assert!(!effect.unstashes_all());
    }
}

#[test]
fn steps_of_the_running_task_are_persisted() {
    let effect = handle(&running("t1"), step("t1"));
    assert_eq!(effect.events(), &[Event::TaskStep { task_id: "t1".into(), instruction: "do it".into() }]);
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"taskId": "t1", "step": "do it"})));
    assert_eq!(TaskManager::apply(running("t1"), &effect.events()[0]), running("t1"));
}

#[test]
fn ending_the_running_task_unstashes_all() {
    let effect = handle(&running("t1"), end("t1"));
    assert_eq!(effect.events(), &[Event::TaskCompleted { task_id: "t1".into() }]);
    assert!(effect.unstashes_all());
    assert_eq!(effect.reply_value().and_then(Reply::json), Some(json!({"ended": "t1"})));
    let idle = TaskManager::apply(running("t1"), &effect.events()[0]);
    assert_eq!(idle, State::default());
    // The stashed StartTask t2 now starts.
    assert_eq!(handle(&idle, start("t2")).events(), &[Event::TaskStarted { task_id: "t2".into() }]);
}

#[test]
fn json_shapes_are_the_documented_ones() {
    let command: Command = serde_json::from_str(r#"{"type":"NextStep","taskId":"t1","instruction":"x"}"#).unwrap();
    assert_eq!(command, Command::NextStep { task_id: "t1".into(), instruction: "x".into() });
    assert_eq!(serde_json::to_value(running("t1")).unwrap(), json!({"taskIdInProgress": "t1"}));
    assert_eq!(
        serde_json::to_value(Event::TaskStarted { task_id: "t1".into() }).unwrap(),
        json!({"type": "TaskStarted", "taskId": "t1"})
    );
}
