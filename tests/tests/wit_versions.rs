//! Components of both WIT versions mneme implements, side by side in the real
//! binary: `mneme:entity@0.1.0` ones (the test entity `entity-v01`, the C bank
//! account of `scripts/build-polyglot.sh`) deploy over HTTP and work next to
//! `0.2.0` ones (the Rust SDK's), across a kill -9; their sends reach 0.2.0
//! entities with an origin; a version mneme does not implement is refused.

use std::time::{Duration, Instant};

use mneme_tests::{components_dir, json, polyglot, test_component, Server};
use serde_json::{json, Value};

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

fn deploy(server: &Server, entity_type: &str, wasm: &std::path::Path) -> (u16, Value) {
    let (s, body) = server.request("PUT", &format!("/v1/components/{entity_type}"), &std::fs::read(wasm).unwrap());
    (s, json(&body))
}

#[test]
fn components_built_against_wit_0_1_0_deploy_over_http_and_work_next_to_0_2_0_ones() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[test_component("faulty")]);
    let server = Server::start(data.path(), comps.path(), &["--watch-secs", "0"]);
    for (name, wasm) in [("entity-v01", test_component("entity-v01")), ("ledger", polyglot("bank-account-c"))] {
        let (s, body) = deploy(&server, name, &wasm);
        assert_eq!(s, 200, "{name}: {body}");
    }
    let (_, list) = server.get("/v1/components");
    let names: Vec<&str> =
        list["components"].as_array().unwrap().iter().map(|c| c["entity_type"].as_str().unwrap()).collect();
    assert_eq!(names, ["entity-v01", "faulty", "ledger"]);

    assert_eq!(server.send("entity-v01", "v", r#"{"type":"Add","value":"a"}"#), (200, json!(["a"])));
    assert_eq!(server.send("entity-v01", "v", r#"{"type":"Tell","to":"t","value":"hi"}"#).0, 200);
    assert_eq!(server.send("ledger", "l", r#"{"type":"CreateAccount"}"#), (200, json!({"balance": 0})));
    assert_eq!(server.send("ledger", "l", r#"{"type":"Deposit","amount":7}"#), (200, json!({"balance": 7})));
    eventually("the 0.1.0 entity's send reaches the 0.2.0 one", || {
        let (_, got) = server.send("faulty", "t", r#"{"type":"Get"}"#);
        got.as_array().is_some_and(|v| v.len() == 1)
    });
    let (_, got) = server.send("faulty", "t", r#"{"type":"Get"}"#);
    assert!(got[0].as_str().unwrap().starts_with("hi from entity-v01|v as entity-v01|v#1.0~"), "{got}");
    server.kill();

    let server = Server::start(data.path(), comps.path(), &["--watch-secs", "0"]);
    assert_eq!(server.send("entity-v01", "v", r#"{"type":"Get"}"#), (200, json!(["a"])));
    assert_eq!(server.send("ledger", "l", r#"{"type":"GetBalance"}"#), (200, json!({"balance": 7})));
    let (_, topic) = server.get("/v1/topics/entity-v01");
    assert_eq!(topic["messages"][0]["payload"], json!("a"), "{topic}");
    let (s, body) = deploy(&server, "other", &test_component("wrong-world"));
    assert_eq!(s, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("it accepts 0.1.x or 0.2.x"), "{body}");
}
