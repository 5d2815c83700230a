//! The components directory and HTTP deploys, through the real binary: the
//! directory only adds versions whose bytes are new, so a restart never undoes a
//! deploy or a rollback made over HTTP (README, "Deploying: who wins").

use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, rebuilt, Server};
use serde_json::Value;

fn active(server: &Server, entity_type: &str) -> (u64, Vec<u64>, Value) {
    let (s, list) = server.get("/v1/components");
    assert_eq!(s, 200, "{list}");
    let c = list["components"].as_array().unwrap().iter().find(|c| c["entity_type"] == entity_type).unwrap().clone();
    let versions = c["versions"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    (c["version"].as_u64().unwrap(), versions, c)
}

#[test]
fn the_components_directory_never_undoes_an_http_deploy_or_rollback() {
    let data = tempfile::tempdir().unwrap();
    let v1 = std::fs::read(example("bank-account")).unwrap();
    let comps = components_dir(&[]);
    let file = comps.path().join("shopping-cart.wasm");
    std::fs::write(&file, &v1).unwrap();
    let v2 = rebuilt(&v1, "v2");
    let args = ["--watch-secs", "1"];

    let server = Server::start(data.path(), comps.path(), &args);
    let (version, versions, first) = active(&server, "shopping-cart");
    assert_eq!((version, versions), (1, vec![1]));
    assert_eq!(server.send("shopping-cart", "c", r#"{"type":"CreateAccount"}"#).0, 200);
    let (s, body) = server.request("PUT", "/v1/components/shopping-cart", &v2);
    assert_eq!(s, 200, "{body}");
    assert_eq!(active(&server, "shopping-cart").0, 2);
    drop(server);

    // Restart: the file still holds v1's bytes, a stored version: nothing changes.
    let server = Server::start(data.path(), comps.path(), &args);
    let (version, versions, after) = active(&server, "shopping-cart");
    assert_eq!((version, versions), (2, vec![1, 2]), "the restart kept the HTTP deploy");
    assert_eq!(server.send("shopping-cart", "c", r#"{"type":"GetBalance"}"#).0, 200, "the entity survived");

    // A rollback over HTTP survives a restart too.
    let (s, body) = server.request("POST", "/v1/components/shopping-cart/versions/1/activate", b"");
    assert_eq!(s, 200, "{body}");
    drop(server);
    let server = Server::start(data.path(), comps.path(), &args);
    let (version, versions, rolled_back) = active(&server, "shopping-cart");
    assert_eq!((version, versions), (1, vec![1, 2]), "the restart kept the rollback");

    // The deploy time is the store's: the same after restarts; the load time is this process's.
    assert_eq!(rolled_back["deployed_at_ms"], first["deployed_at_ms"], "{rolled_back} vs {first}");
    assert!(rolled_back["loaded_at_ms"].as_u64() > first["loaded_at_ms"].as_u64(), "{rolled_back} vs {first}");
    assert_ne!(after["deployed_at_ms"], first["deployed_at_ms"], "v2 has its own deploy time");

    // Putting v2's bytes back in the directory is no deploy either (the watcher
    // sees the change, and the bytes are stored already) ...
    std::fs::write(&file, &v2).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(active(&server, "shopping-cart").0, 1, "known bytes never re-activate a version");
    // ... but new bytes are, by the watcher, as version 3.
    std::fs::write(&file, rebuilt(&v1, "v3")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while active(&server, "shopping-cart").0 != 3 {
        assert!(Instant::now() < deadline, "the watcher did not deploy the new bytes");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(active(&server, "shopping-cart").1, vec![1, 2, 3]);
    drop(server);
    let server = Server::start(data.path(), comps.path(), &args);
    assert_eq!(active(&server, "shopping-cart").0, 3, "and a restart keeps it");
}

fn projection(server: &Server, name: &str) -> Value {
    let (s, list) = server.get("/v1/projections");
    assert_eq!(s, 200, "{list}");
    list["projections"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A projection component in the directory is deployed as the projection its file
/// names (as `scripts/run-examples.sh` serves `account-balances` beside the
/// entities), by the same rule as entities: new bytes only, hot-loaded, and never
/// undoing an HTTP rollback.
#[test]
fn a_projection_in_the_components_directory_is_deployed_as_a_projection() {
    let data = tempfile::tempdir().unwrap();
    let v1 = std::fs::read(example("account-balances")).unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let file = comps.path().join("balances.wasm");
    std::fs::write(&file, &v1).unwrap();
    let args = ["--watch-secs", "1"];

    let server = Server::start(data.path(), comps.path(), &args);
    let p = projection(&server, "balances");
    assert_eq!((p["version"].as_u64(), p["versions"].clone()), (Some(1), serde_json::json!([1])), "{p}");
    let (s, list) = server.get("/v1/components");
    assert_eq!(s, 200);
    assert!(list["components"].as_array().unwrap().iter().all(|c| c["entity_type"] != "balances"), "{list}");
    assert_eq!(server.send("bank-account", "a", r#"{"type":"CreateAccount"}"#).0, 200);
    assert_eq!(server.send("bank-account", "a", r#"{"type":"Deposit","amount":7}"#).0, 200);
    wait_until("the projection did not fold the deposit", || {
        let (s, v) = server.get("/v1/views/balances/a");
        s == 200 && v["value"]["balance"] == 7
    });

    // New bytes in the file: hot-loaded as version 2.
    std::fs::write(&file, rebuilt(&v1, "v2")).unwrap();
    wait_until("the watcher did not deploy the new projection bytes", || {
        projection(&server, "balances")["version"] == 2
    });
    // Rolled back over HTTP; a restart with v2's bytes still in the file keeps the rollback.
    let (s, body) = server.request("POST", "/v1/projections/balances/versions/1/activate", b"");
    assert_eq!(s, 200, "{body}");
    drop(server);
    let server = Server::start(data.path(), comps.path(), &args);
    let p = projection(&server, "balances");
    assert_eq!((p["version"].as_u64(), p["versions"].clone()), (Some(1), serde_json::json!([1, 2])), "{p}");
    wait_until("the view did not survive", || {
        let (s, v) = server.get("/v1/views/balances/a");
        s == 200 && v["value"]["balance"] == 7
    });
}
