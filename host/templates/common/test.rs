//! `{{name}}` through mneme's testkit: the built component (`./build.sh` makes
//! `{{name}}.wasm`) runs in the same sandbox as in the server.

use mneme_testkit::TestKit;
use serde_json::json;

fn kit() -> TestKit {
    let wasm = concat!(env!("CARGO_MANIFEST_DIR"), "{{wasm_path}}");
    TestKit::wasm(wasm).unwrap_or_else(|e| panic!("{e}: run ./build.sh first"))
}

#[test]
fn increment_replies_persists_and_replays() {
    let mut kit = kit();
    let r = kit.run(json!({"type":"Increment","by":2}));
    assert_eq!(r.reply_json(), json!({"value":2}));
    assert_eq!(r.event_payloads(), vec![json!({"type":"Incremented","by":2})]);
    assert_eq!(r.manifests(), vec!["Incremented"]);
    assert_eq!(kit.run(json!({"type":"Increment","by":3})).reply_json(), json!({"value":5}));
    assert_eq!(kit.state_json(), json!({"value":5,"closed":false}));
    kit.restart(); // replays every event: the same state
    assert_eq!(kit.run(json!({"type":"Get"})).reply_json(), json!({"value":5}));
}

#[test]
fn given_events_then_close_publishes() {
    let mut kit = kit().with_id("c1");
    kit.given(&[json!({"type":"Incremented","by":40}), json!({"type":"Incremented","by":2})]);
    let r = kit.run(json!({"type":"Close"}));
    assert_eq!(r.reply_json(), json!({"value":42}));
    assert_eq!(r.published("{{name}}"), vec![json!({"id":"c1","value":42})]);
    assert_eq!(kit.state_json(), json!({"value":42,"closed":true}));
    kit.restart();
}

#[test]
fn unknown_malformed_unhandled_and_rejected() {
    let mut kit = kit();
    assert!(kit.run(json!({"type":"Frobnicate"})).is_malformed(), "unknown type: 400");
    assert!(kit.run(json!({"type":"Increment"})).is_malformed(), "missing field: 400");
    assert_eq!(kit.run(json!({"type":"Increment","by":0})).error(), "by must be at least 1");
    kit.run(json!({"type":"Close"}));
    assert!(kit.run(json!({"type":"Increment","by":1})).is_unhandled(), "closed: 409");
    assert!(kit.run(json!({"type":"Frobnicate"})).is_malformed(), "unknown in any state: 400");
    assert_eq!(kit.seq_nr(), 1);
}
