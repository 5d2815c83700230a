//! The outbox through the in-process engine and the real journal: commands an
//! entity sends are stored with its events, delivered at least once (again after
//! a restart), and applied by their target at most once; the target sees who sent
//! them; components built against `mneme:entity@0.1.0` keep working.
//!
//! `SwitchableJournal::fail_done_writes` makes every write of outbox done records
//! fail, which leaves a delivered command pending in the journal exactly as a
//! crash right after its delivery would: the next start delivers it again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mneme::component::SandboxLimits;
use mneme::journal::Journal;
use mneme::{CommandError, EngineConfig};
use mneme_tests::{example, test_component, TestEngine};
use serde_json::{json, Value};

fn config() -> EngineConfig {
    EngineConfig { shards: 2, ..EngineConfig::default() }
}

fn start(dir: &tempfile::TempDir, components: &[(&str, std::path::PathBuf)]) -> TestEngine {
    TestEngine::start(dir.path(), components, config(), SandboxLimits::default())
}

fn faulty() -> Vec<(&'static str, std::path::PathBuf)> {
    vec![("faulty", test_component("faulty"))]
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

/// The value of a counter of `/metrics`.
fn metric(t: &TestEngine, name: &str) -> u64 {
    mneme_tests::metric(&t.engine.metrics().render(), &format!("mneme_{name}"))
}

fn values(t: &TestEngine, id: &str) -> Vec<String> {
    let v = t.ok("faulty", id, r#"{"type":"Get"}"#);
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_command_delivered_again_after_a_restart_is_acknowledged_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &faulty());
    // The delivery happens, but its done record never reaches the journal.
    t.journal.fail_done_writes.store(true, Ordering::SeqCst);
    t.ok("faulty", "from", r#"{"type":"SendTagged","to":"to","value":"hello"}"#);
    eventually("the target applies the sent command", || values(&t, "to").len() == 1);
    let first = values(&t, "to");
    assert!(first[0].starts_with("hello from faulty|from as faulty|from#0.0~"), "{first:?}");
    assert_eq!(t.journal.outbox_pending().unwrap().len(), 1, "delivered, but not recorded as done");
    assert_eq!(metric(&t, "outbox_duplicates_total"), 0);
    t.stop();

    // Delivered again at start; the target has applied its key: acknowledged only.
    let t = start(&dir, &faulty());
    eventually("the redelivery is recorded as done", || t.journal.outbox_pending().unwrap().is_empty());
    assert_eq!(metric(&t, "outbox_recovered_total"), 1, "the pending entry was delivered again");
    assert_eq!(metric(&t, "outbox_duplicates_total"), 1, "and recognised as applied");
    assert_eq!(values(&t, "to"), first, "applied once");
    assert_eq!(t.events("faulty", "to").len(), 1);
    t.stop();

    // Done now: nothing is delivered again.
    let t = start(&dir, &faulty());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(metric(&t, "outbox_recovered_total"), 0);
    assert_eq!(values(&t, "to"), first);
    t.stop();
}

#[test]
fn sends_are_written_before_they_are_released_and_a_failed_write_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &faulty());
    t.journal.fail_writes.store(true, Ordering::SeqCst);
    // `SendTagged` persists no event: its send alone must be written, and is not.
    let r = t.send("faulty", "from", r#"{"type":"SendTagged","to":"to","value":"lost"}"#);
    assert!(matches!(r, Err(CommandError::WriteFailed(_))), "{r:?}");
    t.journal.fail_writes.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    assert!(values(&t, "to").is_empty(), "nothing was sent");
    assert!(t.journal.outbox_pending().unwrap().is_empty());
    t.ok("faulty", "from", r#"{"type":"SendTagged","to":"to","value":"kept"}"#);
    eventually("the second send arrives", || values(&t, "to").len() == 1);
    assert!(values(&t, "to")[0].starts_with("kept from faulty|from"));
    eventually("and is recorded as done", || t.journal.outbox_pending().unwrap().is_empty());
    t.stop();
}

#[test]
fn a_command_from_outside_has_no_origin_and_sent_ones_have_distinct_keys() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &faulty());
    t.ok("faulty", "x", r#"{"type":"RecordOrigin","value":"direct"}"#);
    for v in ["a", "b"] {
        t.ok("faulty", "from", &format!(r#"{{"type":"SendTagged","to":"x","value":"{v}"}}"#));
    }
    eventually("both sends arrive", || values(&t, "x").len() == 3);
    let got = values(&t, "x");
    assert_eq!(got[0], "direct from outside");
    let keys: Vec<&str> = got[1..].iter().map(|v| v.split(" as ").nth(1).unwrap()).collect();
    assert_ne!(keys[0], keys[1], "two commands, two keys: {got:?}");
    assert!(keys.iter().all(|k| k.starts_with("faulty|from#0.0~")), "{keys:?}");
    t.stop();
}

#[test]
fn a_send_to_a_type_not_deployed_yet_is_retried_until_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &[("entity-v01", test_component("entity-v01"))]);
    t.ok("entity-v01", "v", r#"{"type":"Tell","to":"late","value":"patience"}"#);
    eventually("the delivery fails and is retried", || metric(&t, "outbox_retries_total") >= 2);
    assert_eq!(t.journal.outbox_pending().unwrap().len(), 1);
    t.engine.registry().deploy("faulty", &std::fs::read(test_component("faulty")).unwrap()).unwrap();
    eventually("delivered once the type is deployed", || {
        t.engine.send_blocking("faulty", "late", br#"{"type":"Get"}"#.to_vec()).is_ok_and(|o| {
            matches!(o, mneme::Outcome::Reply(b) if serde_json::from_slice::<Value>(&b).unwrap().as_array().unwrap().len() == 1)
        })
    });
    eventually("and recorded as done", || t.journal.outbox_pending().unwrap().is_empty());
    t.stop();
}

/// A component built against 0.1.0 (no `origin` in its world): deployed next to
/// 0.2.0 ones, its events, replies, publish, send and schedule all work, and its
/// sends reach a 0.2.0 entity with their origin.
#[test]
fn a_component_built_against_wit_0_1_0_still_deploys_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let comps = [("entity-v01", test_component("entity-v01")), ("faulty", test_component("faulty"))];
    let t = start(&dir, &comps);
    let listed = t.engine.registry().get("entity-v01").unwrap();
    assert_eq!(listed.info.type_name, "entity-v01");
    assert_eq!(t.ok("entity-v01", "v", r#"{"type":"Add","value":"a"}"#), json!(["a"]));
    assert_eq!(t.ok("entity-v01", "v", r#"{"type":"Add","value":"b"}"#), json!(["a", "b"]));
    assert_eq!(t.published("entity-v01"), vec![json!("a"), json!("b")]);
    t.ok("entity-v01", "v", r#"{"type":"Tell","to":"t","value":"hi"}"#);
    eventually("the 0.1.0 entity's send arrives", || values(&t, "t").len() == 1);
    assert!(values(&t, "t")[0].starts_with("hi from entity-v01|v as entity-v01|v#2.0~"), "{:?}", values(&t, "t"));
    t.ok("entity-v01", "v", r#"{"type":"AddLater","delayMs":100,"value":"c"}"#);
    eventually("the 0.1.0 entity's schedule fires", || {
        t.ok("entity-v01", "v", r#"{"type":"Get"}"#) == json!(["a", "b", "c"])
    });
    let r = t.send("entity-v01", "v", r#"{"type":"Nope"}"#);
    assert!(matches!(r, Err(CommandError::Malformed(_))), "{r:?}");
    t.stop();
    let t = start(&dir, &comps);
    assert_eq!(t.state("entity-v01", "v"), (3, json!(["a", "b", "c"])), "recovered through apply-events");
    t.stop();
}

#[test]
fn scheduled_commands_are_delivered_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &faulty());
    t.journal.fail_done_writes.store(true, Ordering::SeqCst);
    t.ok("faulty", "s", r#"{"type":"Schedule","delayMs":100,"value":"later"}"#);
    eventually("the timer fires", || values(&t, "s") == ["later"]);
    t.stop();
    let t = start(&dir, &faulty());
    eventually("its redelivery is recorded as done", || t.journal.outbox_pending().unwrap().is_empty());
    assert_eq!(metric(&t, "outbox_duplicates_total"), 1);
    assert_eq!(values(&t, "s"), ["later"], "applied once");
    t.stop();
}

#[test]
fn topics_are_durable_and_keep_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &faulty());
    for v in ["a", "b", "c"] {
        t.ok("faulty", "p", &format!(r#"{{"type":"Record","value":"{v}"}}"#));
    }
    t.stop();
    let config = EngineConfig { topic_retention: 2, ..config() };
    let t = TestEngine::start(dir.path(), &faulty(), config, SandboxLimits::default());
    t.ok("faulty", "p", r#"{"type":"Record","value":"d"}"#);
    let page = t.engine.topic_messages("faulty-records", 1, 100).unwrap();
    assert_eq!((page.head, page.first), (4, 3), "retention 2: positions 3 and 4 are served");
    let served: Vec<(u64, Value)> =
        page.messages.iter().map(|m| (m.position, serde_json::from_slice(&m.payload).unwrap())).collect();
    assert_eq!(served, [(3, json!("c")), (4, json!("d"))]);
    assert_eq!(page.messages[0].source, "faulty|p");
    t.stop();
}

#[test]
fn the_bank_account_saga_completes_and_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(&dir, &[("bank-account", example("bank-account"))]);
    for id in ["alice", "bob", "carol"] {
        t.ok("bank-account", id, r#"{"type":"CreateAccount"}"#);
    }
    t.ok("bank-account", "alice", r#"{"type":"Deposit","amount":100}"#);
    t.ok("bank-account", "carol", r#"{"type":"CloseAccount"}"#);
    let r = t.ok("bank-account", "alice", r#"{"type":"Transfer","to":"bob","amount":30}"#);
    assert_eq!(r, json!({"balance": 70, "transferId": "alice#3"}));
    t.ok("bank-account", "alice", r#"{"type":"Transfer","to":"carol","amount":20}"#);
    t.ok("bank-account", "alice", r#"{"type":"Transfer","to":"nobody","amount":10}"#);
    eventually("every transfer ends", || t.state("bank-account", "alice").1.get("pending").is_none());
    assert_eq!(t.state("bank-account", "alice").1, json!({"status": "open", "balance": 70}));
    assert_eq!(t.state("bank-account", "bob").1, json!({"status": "open", "balance": 30}));
    let manifests: Vec<String> = t.events("bank-account", "alice").into_iter().map(|e| e.manifest).collect();
    let ended: Vec<&str> = manifests.iter().filter(|m| m.starts_with("Transfer")).map(|m| m.as_str()).collect();
    assert_eq!(ended.iter().filter(|m| **m == "TransferCompleted").count(), 1);
    assert_eq!(ended.iter().filter(|m| **m == "TransferRefunded").count(), 2);
    // The saga's commands come only from accounts: a caller cannot mint money.
    let r = t.send("bank-account", "bob", r#"{"type":"ReceiveTransfer","transferId":"x#1","from":"alice","amount":5}"#);
    assert!(matches!(&r, Ok(mneme::Outcome::ReplyError(m)) if m.contains("not outside")), "{r:?}");
    assert_eq!(t.state("bank-account", "bob").1, json!({"status": "open", "balance": 30}));
    t.stop();
}
