//! One test per row of the README's semantics table (Akka Persistence Typed ->
//! mneme), each through the real engine, the real journal on disk (the default
//! backend) and the example components built from source.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mneme::component::SandboxLimits;
use mneme::journal::{Journal, NewEvent, WriteBatch};
use mneme::{CommandError, EngineConfig, Outcome};
use mneme_tests::{example, test_component, TestEngine};
use serde_json::{json, Value};

fn config() -> EngineConfig {
    EngineConfig { shards: 2, ..EngineConfig::default() }
}

fn bank() -> Vec<(&'static str, PathBuf)> {
    vec![("bank-account", example("bank-account"))]
}

fn all() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("bank-account", example("bank-account")),
        ("blog-post", example("blog-post")),
        ("task-manager", example("task-manager")),
        ("faulty", test_component("faulty")),
    ]
}

fn start(dir: &tempfile::TempDir, components: &[(&str, PathBuf)], config: EngineConfig) -> TestEngine {
    TestEngine::start(dir.path(), components, config, SandboxLimits::default())
}

fn balance(t: &TestEngine, id: &str) -> i64 {
    t.ok("bank-account", id, r#"{"type":"GetBalance"}"#)["balance"].as_i64().unwrap()
}

#[test]
fn persistence_id_is_type_and_id_and_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    t.ok("bank-account", "alice", r#"{"type":"CreateAccount"}"#);
    assert_eq!(t.events("bank-account", "alice")[0].persistence_id, "bank-account|alice");
    for bad in ["", "a|b", "a/b", "a b"] {
        let r = t.send("bank-account", bad, r#"{"type":"CreateAccount"}"#);
        assert!(matches!(r, Err(CommandError::InvalidId(_))), "{bad:?} -> {r:?}");
    }
    assert!(matches!(t.send("no-such-type", "a", "{}"), Err(CommandError::UnknownType(_))));
}

#[test]
fn persist_of_several_events_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), EngineConfig { max_event_bytes: 1000, ..config() });
    t.ok("faulty", "f", r#"{"type":"RecordMany","values":["a","b","c"]}"#);
    let seqs: Vec<u64> = t.events("faulty", "f").iter().map(|e| e.seq_nr).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    // The second event is too large: neither is stored, the state is unchanged.
    let big = "x".repeat(2000);
    let r = t.send("faulty", "f", &format!(r#"{{"type":"RecordMany","values":["d","{big}"]}}"#));
    assert!(matches!(r, Err(CommandError::Rejected(_))), "{r:?}");
    assert_eq!(t.events("faulty", "f").len(), 3);
    assert_eq!(t.ok("faulty", "f", r#"{"type":"Get"}"#), json!(["a", "b", "c"]));
}

#[test]
fn none_persists_nothing_and_unhandled_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    // An empty account handles only CreateAccount (Akka: Effect.unhandled).
    let r = t.send("bank-account", "a", r#"{"type":"Deposit","amount":5}"#);
    assert!(matches!(r, Err(CommandError::Unhandled { .. })), "{r:?}");
    t.ok("bank-account", "a", r#"{"type":"CreateAccount"}"#);
    assert_eq!(balance(&t, "a"), 0);
    assert_eq!(balance(&t, "a"), 0);
    assert_eq!(t.events("bank-account", "a").len(), 1, "queries persist nothing");
}

#[test]
fn unhandled_carries_the_entitys_reason_when_it_gives_one() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    let add = r#"{"type":"AddPost","content":{"postId":"p","title":"T","body":"B"}}"#;
    t.ok("blog-post", "p", add);
    match t.send("blog-post", "p", add) {
        Err(e @ CommandError::Unhandled { .. }) => {
            assert!(e.to_string().contains("Cannot add post while in draft state"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.events("blog-post", "p").len(), 1);
}

#[test]
fn stash_and_unstash_all_keep_order_and_capacity_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), EngineConfig { stash_capacity: 2, ..config() });
    let e = &t.engine;
    t.ok("task-manager", "m", r#"{"type":"StartTask","taskId":"t1"}"#);
    // Another task's commands are stashed while t1 runs: no reply yet.
    let start2 =
        e.submit("task-manager", "m", String::new(), br#"{"type":"StartTask","taskId":"t2"}"#.to_vec()).unwrap();
    let step2 = e
        .submit("task-manager", "m", String::new(), br#"{"type":"NextStep","taskId":"t2","instruction":"go"}"#.to_vec())
        .unwrap();
    // The stash holds 2: a third is refused with a clear error.
    let r = t.send("task-manager", "m", r#"{"type":"EndTask","taskId":"t2"}"#);
    assert!(matches!(r, Err(CommandError::StashFull(..))), "{r:?}");
    t.ok("task-manager", "m", r#"{"type":"NextStep","taskId":"t1","instruction":"work"}"#);
    // Ending t1 unstashes: t2 starts, then takes its step.
    t.ok("task-manager", "m", r#"{"type":"EndTask","taskId":"t1"}"#);
    assert!(matches!(start2.blocking_recv().unwrap(), Ok(Outcome::Reply(_))));
    assert!(matches!(step2.blocking_recv().unwrap(), Ok(Outcome::Reply(_))));
    let manifests: Vec<String> = t.events("task-manager", "m").into_iter().map(|e| e.manifest).collect();
    assert_eq!(manifests, ["TaskStarted", "TaskStep", "TaskCompleted", "TaskStarted", "TaskStep"]);
    let steps: Vec<Value> =
        t.events("task-manager", "m").iter().map(|e| serde_json::from_slice(&e.payload).unwrap()).collect();
    assert_eq!(steps[3]["taskId"], "t2");
}

#[test]
fn stop_passivates_and_the_next_command_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    t.ok("faulty", "s", r#"{"type":"Record","value":"a"}"#);
    assert_eq!(t.published("faulty-recovered").len(), 1);
    t.ok("faulty", "s", r#"{"type":"Stop"}"#);
    assert_eq!(t.ok("faulty", "s", r#"{"type":"Get"}"#), json!(["a"]));
    assert_eq!(t.published("faulty-recovered").len(), 2, "stopped entity was recovered again");
}

#[test]
fn idle_entities_are_passivated() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), EngineConfig { idle_timeout: Duration::from_millis(100), ..config() });
    t.ok("faulty", "idle", r#"{"type":"Record","value":"a"}"#);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(t.ok("faulty", "idle", r#"{"type":"Get"}"#), json!(["a"]));
    assert_eq!(t.published("faulty-recovered").len(), 2);
}

#[test]
fn reply_is_released_only_after_persist_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    t.ok("bank-account", "r", r#"{"type":"CreateAccount"}"#);
    // Every acknowledged deposit is in the journal when its reply arrives.
    for i in 1..=20 {
        t.ok("bank-account", "r", &format!(r#"{{"type":"Deposit","amount":{i}}}"#));
        assert_eq!(t.journal.highest_seq_nr("bank-account|r").unwrap(), 1 + i as u64);
    }
    // A domain error reply persists nothing.
    let r = t.send("bank-account", "r", r#"{"type":"Withdraw","amount":1000000}"#).unwrap();
    match r {
        Outcome::ReplyError(msg) => assert!(msg.contains("Insufficient balance"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.events("bank-account", "r").len(), 21);
}

#[test]
fn side_effects_run_after_the_write_and_never_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    for v in ["a", "b", "c"] {
        t.ok("faulty", "p", &format!(r#"{{"type":"Record","value":"{v}"}}"#));
    }
    assert_eq!(t.published("faulty-records"), vec![json!("a"), json!("b"), json!("c")]);
    // A write that fails releases no side effect.
    t.journal.fail_writes.store(true, Ordering::SeqCst);
    assert!(t.send("faulty", "p", r#"{"type":"Record","value":"lost"}"#).is_err());
    t.journal.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(t.published("faulty-records").len(), 3);
    t.stop();
    // Recovery replays the events but runs none of their side effects: the
    // topic, durable, holds the three messages and no more.
    let t = start(&dir, &all(), config());
    assert_eq!(t.ok("faulty", "p", r#"{"type":"Get"}"#), json!(["a", "b", "c"]));
    assert_eq!(t.published("faulty-records"), vec![json!("a"), json!("b"), json!("c")]);
}

#[test]
fn commands_wait_while_events_are_written_and_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    t.ok("bank-account", "c", r#"{"type":"CreateAccount"}"#);
    // 300 deposits in flight at once to one entity: each sees the previous ones.
    let rx: Vec<_> = (1..=300)
        .map(|i| {
            t.engine
                .submit(
                    "bank-account",
                    "c",
                    String::new(),
                    format!(r#"{{"type":"Deposit","amount":{i}}}"#).into_bytes(),
                )
                .unwrap()
        })
        .collect();
    for r in rx {
        assert!(matches!(r.blocking_recv().unwrap(), Ok(Outcome::Reply(_))));
    }
    assert_eq!(balance(&t, "c"), (1..=300).sum::<i64>());
    let seqs: Vec<u64> = t.events("bank-account", "c").iter().map(|e| e.seq_nr).collect();
    assert_eq!(seqs, (1..=301).collect::<Vec<u64>>());
    let amounts: Vec<i64> = t.events("bank-account", "c")[1..]
        .iter()
        .map(|e| serde_json::from_slice::<Value>(&e.payload).unwrap()["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, (1..=300).collect::<Vec<i64>>(), "events in command order");
}

#[test]
fn many_commands_share_one_durable_write() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    let before = t.journal.writes.load(Ordering::SeqCst);
    let rx: Vec<_> = (0..1000)
        .map(|i| {
            t.engine
                .submit("bank-account", &format!("g{i}"), String::new(), br#"{"type":"CreateAccount"}"#.to_vec())
                .unwrap()
        })
        .collect();
    for r in rx {
        assert!(matches!(r.blocking_recv().unwrap(), Ok(Outcome::Reply(_))));
    }
    let writes = t.journal.writes.load(Ordering::SeqCst) - before;
    assert!(writes < 250, "1000 commands took {writes} durable writes: no group commit");
}

#[test]
fn recovery_replays_events_through_the_event_handler() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), EngineConfig { snapshot_every: 0, ..config() });
    t.ok("bank-account", "x", r#"{"type":"CreateAccount"}"#);
    t.ok("bank-account", "x", r#"{"type":"Deposit","amount":70}"#);
    t.ok("bank-account", "x", r#"{"type":"Withdraw","amount":20}"#);
    t.ok("blog-post", "p1", r#"{"type":"AddPost","content":{"postId":"p1","title":"T","body":"B"}}"#);
    t.ok("blog-post", "p1", r#"{"type":"Publish"}"#);
    let before = (t.state("bank-account", "x"), t.state("blog-post", "p1"));
    t.stop();
    let t = start(&dir, &all(), config());
    assert_eq!((t.state("bank-account", "x"), t.state("blog-post", "p1")), before);
    assert_eq!(balance(&t, "x"), 50);
    // The recovered state drives behaviour: a published post does not handle Publish.
    assert!(matches!(t.send("blog-post", "p1", r#"{"type":"Publish"}"#), Err(CommandError::Unhandled { .. })));
}

#[test]
fn a_history_of_several_batches_recovers_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Four events per `apply-event-batch` call: 23 events are six calls (the last
    // one short), 24 are six full ones and a read that finds nothing more, and 4
    // are one full batch; all but the short histories are read a batch ahead.
    let batched = || EngineConfig { snapshot_every: 0, recovery_batch: 4, ..config() };
    let t = start(&dir, &all(), batched());
    for (id, n) in [("h23", 23), ("h24", 24), ("h4", 4), ("h3", 3)] {
        for i in 0..n {
            t.ok("faulty", id, &format!(r#"{{"type":"Record","value":"{id}-{i}"}}"#));
        }
    }
    t.stop();
    let t = start(&dir, &all(), batched());
    for (id, n) in [("h23", 23), ("h24", 24), ("h4", 4), ("h3", 3)] {
        let expected: Vec<String> = (0..n).map(|i| format!("{id}-{i}")).collect();
        assert_eq!(t.state("faulty", id), (n, json!({ "values": expected })), "{id}");
    }
}

#[test]
fn a_stored_event_the_guest_cannot_apply_fails_recovery_in_any_batch() {
    let dir = tempfile::tempdir().unwrap();
    let batched = || EngineConfig { snapshot_every: 0, recovery_batch: 4, ..config() };
    let t = start(&dir, &all(), batched());
    for id in ["broken", "undecodable"] {
        for i in 0..10 {
            t.ok("faulty", id, &format!(r#"{{"type":"Record","value":"{i}"}}"#));
        }
    }
    // Event 11 of each: one whose `apply` panics, one that does not decode; both
    // in the third batch of their recovery, read ahead while the second is applied.
    let stored = |id: &str, payload: &str| NewEvent {
        persistence_id: format!("faulty|{id}"),
        seq_nr: 11,
        timestamp_ms: 0,
        writer_id: "test".into(),
        manifest: "Recorded".into(),
        tags: Vec::new(),
        payload: payload.as_bytes().to_vec(),
    };
    let events = vec![stored("broken", r#"{"type":"Broken"}"#), stored("undecodable", r#"{"type":"Recorded"}"#)];
    t.journal.write(&WriteBatch { events, ..WriteBatch::default() }).unwrap();
    t.stop();
    let t = start(&dir, &all(), batched());
    for _ in 0..2 {
        match t.send("faulty", "broken", r#"{"type":"Get"}"#) {
            Err(CommandError::GuestFault { reason, .. }) => assert!(reason.contains("BadApply"), "{reason}"),
            other => panic!("broken: {other:?}"),
        }
        match t.send("faulty", "undecodable", r#"{"type":"Get"}"#) {
            Err(CommandError::RecoveryFailed { reason, .. }) => {
                assert!(reason.contains("event 2 of the batch") && reason.contains("value"), "{reason}")
            }
            other => panic!("undecodable: {other:?}"),
        }
    }
    // The shard goes on serving the others.
    t.ok("faulty", "fine", r#"{"type":"Record","value":"a"}"#);
}

#[test]
fn recovery_completed_signal_runs_once_per_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    t.ok("faulty", "rc", r#"{"type":"Record","value":"a"}"#);
    t.ok("faulty", "rc", r#"{"type":"Record","value":"b"}"#);
    assert_eq!(t.published("faulty-recovered"), vec![json!({"values": 0})]);
    t.stop();
    let t = start(&dir, &all(), config());
    t.ok("faulty", "rc", r#"{"type":"Get"}"#);
    // The topic is durable: the first recovery's message, then this one's.
    assert_eq!(t.published("faulty-recovered"), vec![json!({"values": 0}), json!({"values": 2})]);
}

#[test]
fn snapshots_follow_the_policy_and_recovery_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    // faulty leaves the policy to the host: every 5 events here.
    let t = start(&dir, &all(), EngineConfig { snapshot_every: 5, ..config() });
    for i in 0..12 {
        t.ok("faulty", "snap", &format!(r#"{{"type":"Record","value":"v{i}"}}"#));
    }
    let snap = t.journal.load_snapshot("faulty|snap").unwrap().expect("snapshot taken");
    assert_eq!(snap.seq_nr, 10);
    let state: Value = serde_json::from_slice(&snap.state).unwrap();
    assert_eq!(state["values"].as_array().unwrap().len(), 10);
    let expected = t.state("faulty", "snap");
    t.stop();
    let t = start(&dir, &all(), EngineConfig { snapshot_every: 5, ..config() });
    // Recovery = snapshot at 10 + replay of 11..12 gives the same state.
    assert_eq!(t.state("faulty", "snap"), expected);
    // bank-account declares its own policy (describe()), which wins over the host's.
    t.ok("bank-account", "s", r#"{"type":"CreateAccount"}"#);
    for _ in 0..6 {
        t.ok("bank-account", "s", r#"{"type":"Deposit","amount":1}"#);
    }
    assert!(t.journal.load_snapshot("bank-account|s").unwrap().is_none());
}

#[test]
fn recoveries_under_a_bound_of_one_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    for i in 0..50 {
        t.ok("bank-account", &format!("r{i}"), r#"{"type":"CreateAccount"}"#);
    }
    t.stop();
    let t = start(&dir, &bank(), EngineConfig { max_concurrent_recoveries: 1, ..config() });
    let rx: Vec<_> = (0..50)
        .map(|i| {
            t.engine
                .submit("bank-account", &format!("r{i}"), String::new(), br#"{"type":"GetBalance"}"#.to_vec())
                .unwrap()
        })
        .collect();
    for r in rx {
        assert!(matches!(r.blocking_recv().unwrap(), Ok(Outcome::Reply(_))));
    }
}

#[test]
fn a_failed_write_fails_the_command_and_the_entity_restarts_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    t.ok("bank-account", "f", r#"{"type":"CreateAccount"}"#);
    t.ok("bank-account", "f", r#"{"type":"Deposit","amount":100}"#);
    t.journal.fail_writes.store(true, Ordering::SeqCst);
    // Several commands in flight on top of each other: all fail, none half-applied.
    let rx: Vec<_> = (0..10)
        .map(|_| {
            t.engine.submit("bank-account", "f", String::new(), br#"{"type":"Deposit","amount":5}"#.to_vec()).unwrap()
        })
        .collect();
    for r in rx {
        match r.blocking_recv().unwrap() {
            Err(CommandError::WriteFailed(msg)) => assert!(msg.contains("No space left"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
    t.journal.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(balance(&t, "f"), 100, "state rolled back to the durable events");
    t.ok("bank-account", "f", r#"{"type":"Deposit","amount":1}"#);
    assert_eq!(balance(&t, "f"), 101);
    assert_eq!(t.events("bank-account", "f").len(), 3);
}

#[test]
fn journal_rejects_oversized_events_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), EngineConfig { max_event_bytes: 100, ..config() });
    let r = t.send("faulty", "big", &format!(r#"{{"type":"Record","value":"{}"}}"#, "x".repeat(200)));
    match r {
        Err(CommandError::Rejected(msg)) => assert!(msg.contains("limit is 100"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(t.events("faulty", "big").is_empty());
    assert_eq!(t.ok("faulty", "big", r#"{"type":"Get"}"#), json!([]));
}

#[test]
fn every_event_carries_the_writer_id_and_a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &bank(), config());
    t.ok("bank-account", "w", r#"{"type":"CreateAccount"}"#);
    let e = &t.events("bank-account", "w")[0];
    assert_eq!(e.writer_id, t.engine.writer_id());
    assert!(e.timestamp_ms > 1_600_000_000_000);
    // A second process on the same journal cannot open it (the backend holds a file lock).
    assert!(mneme::journal::open(dir.path(), mneme::journal::Backend::default()).is_err());
}

#[test]
fn tags_are_stored_and_queried_in_offset_order() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    t.ok("bank-account", "t1", r#"{"type":"CreateAccount"}"#);
    t.ok("blog-post", "b1", r#"{"type":"AddPost","content":{"postId":"b1","title":"T","body":"B"}}"#);
    t.ok("bank-account", "t2", r#"{"type":"CreateAccount"}"#);
    t.ok("bank-account", "t1", r#"{"type":"Deposit","amount":3}"#);
    let tagged = t.journal.events_by_tag("account", 0, 100).unwrap();
    let ids: Vec<(&str, u64)> = tagged.iter().map(|e| (e.persistence_id.as_str(), e.seq_nr)).collect();
    assert_eq!(ids, vec![("bank-account|t1", 1), ("bank-account|t2", 1), ("bank-account|t1", 2)]);
    assert!(tagged.windows(2).all(|w| w[0].offset < w[1].offset));
    let from = tagged[1].offset;
    assert_eq!(t.journal.events_by_tag("account", from, 100).unwrap().len(), 2);
    assert_eq!(t.journal.events_by_tag("blog", 0, 100).unwrap().len(), 1);
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn send_delivers_a_command_to_another_entity() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    t.ok("faulty", "from", r#"{"type":"Send","to":"to","value":"hello"}"#);
    eventually("the sent command is persisted by its target", || {
        t.ok("faulty", "to", r#"{"type":"Get"}"#) == json!(["hello"])
    });
}

#[test]
fn scheduled_commands_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    let scheduled = std::time::Instant::now();
    t.ok("faulty", "timer", r#"{"type":"Schedule","delayMs":3000,"value":"later"}"#);
    t.stop();
    let t = start(&dir, &all(), config());
    // It fires after the restart, and not before it is due (however long the
    // restart took on a loaded machine).
    for _ in 0..400 {
        if t.ok("faulty", "timer", r#"{"type":"Get"}"#) == json!(["later"]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(t.ok("faulty", "timer", r#"{"type":"Get"}"#), json!(["later"]), "the timer fired after the restart");
    assert!(scheduled.elapsed() >= Duration::from_millis(3000), "the timer fired before it was due");
    t.stop();
    // Delivered timers are removed: no second delivery after another restart.
    let t = start(&dir, &all(), config());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.ok("faulty", "timer", r#"{"type":"Get"}"#), json!(["later"]));
}

#[test]
fn unhandled_and_faults_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &all(), config());
    let _ = t.send("bank-account", "m", r#"{"type":"GetBalance"}"#);
    let _ = t.send("faulty", "m", r#"{"type":"Panic","message":"x"}"#);
    let text = t.engine.metrics().render();
    assert!(text.contains("mneme_unhandled_total 1"), "{text}");
    assert!(text.contains("mneme_guest_faults_total 1"), "{text}");
}
