//! One scenario, every language: the bank account written in Rust, Python,
//! JavaScript and C must produce identical replies, events and states through the
//! real engine. The Rust example is the reference; each other language's
//! transcript must equal it line for line.
//!
//! The components come from `scripts/build-components.sh` and
//! `scripts/build-polyglot.sh` (both run by `scripts/test.sh`); a missing one fails
//! the test rather than skipping it.

use std::path::Path;

use mneme::component::SandboxLimits;
use mneme::journal::Journal;
use mneme::{CommandError, EngineConfig, Outcome};
use mneme_tests::{example, polyglot, TestEngine};
use serde_json::{json, Value};

fn outcome(r: Result<Outcome, CommandError>) -> Value {
    match r {
        Ok(Outcome::Reply(b)) => {
            json!({ "ok": serde_json::from_slice::<Value>(&b).unwrap_or_else(|_| json!(String::from_utf8_lossy(&b))) })
        }
        Ok(Outcome::ReplyError(m)) => json!({ "error": m }),
        Ok(Outcome::NoReply) => json!("no reply"),
        Err(CommandError::Unhandled { reason, .. }) => json!({ "unhandled": reason }),
        Err(CommandError::Malformed(_)) => json!("malformed"),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

/// Runs the scenario against the component deployed as `bank-account` and returns
/// everything a user can observe, as JSON lines.
fn transcript(component: &Path) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let comps = [("bank-account", component.to_path_buf())];
    let limits = SandboxLimits { memory_bytes: 256 << 20, ..SandboxLimits::default() };
    let config = || EngineConfig { shards: 2, ..EngineConfig::default() };
    let t = TestEngine::start(dir.path(), &comps, config(), limits);
    let mut lines = Vec::new();
    let send = |lines: &mut Vec<Value>, t: &TestEngine, id: &str, cmd: &str| {
        let o = outcome(t.send("bank-account", id, cmd));
        lines.push(json!([id, cmd, o]));
    };
    send(&mut lines, &t, "a", r#"{"type":"GetBalance"}"#); // unhandled before creation
    send(&mut lines, &t, "a", r#"{"type":"CreateAccount"}"#);
    send(&mut lines, &t, "a", r#"{"type":"Deposit","amount":100}"#);
    send(&mut lines, &t, "a", r#"{"type":"Deposit","amount":50}"#);
    send(&mut lines, &t, "a", r#"{"type":"Withdraw","amount":500}"#); // rejected
    send(&mut lines, &t, "a", r#"{"type":"Withdraw","amount":30}"#);
    send(&mut lines, &t, "a", r#"{"type":"CreateAccount"}"#);
    send(&mut lines, &t, "a", "{not json"); // malformed
    send(&mut lines, &t, "a", r#"{"type":"Transfer","amount":1}"#); // a field missing
                                                                    // The convention every language follows: a command type the entity does not
                                                                    // know is malformed (400), in any state; a known command its state does not
                                                                    // accept is unhandled (409).
    send(&mut lines, &t, "a", r#"{"type":"Frobnicate"}"#);
    send(&mut lines, &t, "c", r#"{"type":"Frobnicate"}"#);
    send(&mut lines, &t, "c", r#"{"type":"Deposit","amount":1}"#);
    send(&mut lines, &t, "c", r#"{"type":"Withdraw","amount":1}"#);
    send(&mut lines, &t, "a", r#"{"type":"Deposit","amount":-5}"#); // invalid amount
    send(&mut lines, &t, "a", r#"{"type":"CloseAccount"}"#); // non-zero balance
    for _ in 0..105 {
        t.send("bank-account", "a", r#"{"type":"Deposit","amount":1}"#).unwrap();
    }
    // The component asks for a snapshot every 100 events.
    let snap = t.journal.load_snapshot("bank-account|a").unwrap().expect("snapshot");
    lines.push(json!(["snapshot", snap.seq_nr, serde_json::from_slice::<Value>(&snap.state).unwrap()]));
    send(&mut lines, &t, "b", r#"{"type":"CreateAccount"}"#);
    send(&mut lines, &t, "b", r#"{"type":"CloseAccount"}"#);
    send(&mut lines, &t, "b", r#"{"type":"Deposit","amount":1}"#); // closed
    send(&mut lines, &t, "b", r#"{"type":"GetBalance"}"#);
    t.stop();
    // Restart: recovery from the snapshot plus the tail, and replay of all events.
    let t = TestEngine::start(dir.path(), &comps, config(), limits);
    for id in ["a", "b"] {
        let (seq, state) = t.state("bank-account", id);
        lines.push(json!(["recovered", id, seq, state]));
    }
    send(&mut lines, &t, "a", r#"{"type":"GetBalance"}"#);
    for id in ["a", "b"] {
        for e in t.events("bank-account", id).into_iter().take(8) {
            let payload: Value = serde_json::from_slice(&e.payload).unwrap();
            lines.push(json!(["event", id, e.seq_nr, e.manifest, e.tags, payload]));
        }
    }
    t.stop();
    lines
}

#[test]
fn every_language_behaves_like_the_rust_bank_account() {
    let reference = transcript(&example("bank-account"));
    // The reference itself says what a user relies on.
    let text: Vec<String> = reference.iter().map(|l| l.to_string()).collect();
    let has = |s: &str| text.iter().any(|l| l.contains(s));
    assert!(has(r#"["a","{\"type\":\"GetBalance\"}",{"unhandled":null}]"#), "{text:#?}");
    assert!(has(r#"{"ok":{"balance":150}}"#));
    assert!(has("Insufficient balance 150 to be able to withdraw 500"));
    assert!(has(r#"["snapshot",100,{"status":"open","balance":216}]"#));
    assert!(has(r#"["recovered","a",109,{"status":"open","balance":225}]"#), "{text:#?}");
    assert_eq!(text.iter().filter(|l| l.contains("\"malformed\"")).count(), 5);
    assert!(has(r#"["a","{\"type\":\"Frobnicate\"}","malformed"]"#), "{text:#?}");
    assert!(has(r#"["c","{\"type\":\"Frobnicate\"}","malformed"]"#), "{text:#?}");
    assert!(has(r#"["c","{\"type\":\"Deposit\",\"amount\":1}",{"unhandled":null}]"#), "{text:#?}");
    assert!(has(r#"["c","{\"type\":\"Withdraw\",\"amount\":1}",{"unhandled":null}]"#), "{text:#?}");

    for lang in ["python", "js", "c"] {
        let got = transcript(&polyglot(&format!("bank-account-{lang}")));
        for (i, (want, got)) in reference.iter().zip(&got).enumerate() {
            assert_eq!(got, want, "{lang}: line {i} differs from the Rust reference");
        }
        assert_eq!(got.len(), reference.len(), "{lang}: transcript length");
    }
}
