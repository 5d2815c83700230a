//! Schema evolution through the real binary: version 2 of the bank account
//! (`examples/bank-account-v2`: deposits carry a currency, manifest
//! `Deposited.v2`, state version 2) is deployed over HTTP onto a journal written
//! by version 1. Its upcaster reads v1's `Deposited` events, the v1 snapshot is
//! ignored and the state rebuilt from the events, and `/metrics` shows what each
//! recovery did (snapshot used or ignored, events replayed, time taken).

use mneme_tests::{components_dir, example, Server};
use serde_json::{json, Value};

fn state(server: &Server, id: &str) -> Value {
    let (s, body) = server.get(&format!("/v1/entities/bank-account/{id}/state"));
    assert_eq!(s, 200, "{body}");
    body["state"].clone()
}

#[test]
fn version_2_reads_the_journal_of_version_1_and_ignores_its_snapshots() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[]);
    let server = Server::start(data.path(), comps.path(), &[]);
    let v1 = std::fs::read(example("bank-account")).unwrap();
    assert_eq!(server.request("PUT", "/v1/components/bank-account", &v1).0, 200);
    assert_eq!(server.send("bank-account", "a", r#"{"type":"CreateAccount"}"#).0, 200);
    // 105 deposits: version 1 snapshots every 100 events (at 100).
    for _ in 0..105 {
        assert_eq!(server.send("bank-account", "a", r#"{"type":"Deposit","amount":1}"#).0, 200);
    }
    drop(server);

    // A restart with version 1: the recovery starts from the snapshot and replays 6 events.
    let server = Server::start(data.path(), comps.path(), &[]);
    assert_eq!(server.send("bank-account", "a", r#"{"type":"GetBalance"}"#).1, json!({"balance":105}));
    assert_eq!(server.metric::<f64>("mneme_recoveries_total"), 1.0);
    assert_eq!(server.metric::<f64>("mneme_recoveries_from_snapshot_total"), 1.0);
    assert_eq!(server.metric::<f64>("mneme_recovery_events_replayed_total"), 6.0);
    assert_eq!(server.metric::<f64>("mneme_recovery_snapshots_ignored_total"), 0.0);
    assert_eq!(server.metric::<f64>("mneme_recovery_seconds_count"), 1.0);
    assert!(server.metric::<f64>("mneme_recovery_seconds_sum") > 0.0);

    // Version 2, deployed over HTTP while the entity is in memory with v1's state:
    // its state version differs, so the entity recovers again with version 2.
    let v2 = std::fs::read(example("bank-account-v2")).unwrap();
    let (s, body) = server.request("PUT", "/v1/components/bank-account", &v2);
    assert_eq!(s, 200, "{body}");
    let (s, reply) = server.send("bank-account", "a", r#"{"type":"Deposit","amount":10,"currency":"USD"}"#);
    assert_eq!((s, reply), (200, json!({"balance":115})));
    assert_eq!(server.metric::<f64>("mneme_recovery_snapshots_ignored_total"), 1.0, "v1's snapshot is not v2's state");
    assert_eq!(server.metric::<f64>("mneme_recoveries_from_snapshot_total"), 1.0, "the second recovery used none");
    assert_eq!(server.metric::<f64>("mneme_recovery_events_replayed_total"), 6.0 + 106.0, "every event replayed");
    // Rebuilt from the events: v1's deposits were upcast to the default currency.
    assert_eq!(state(&server, "a"), json!({"status":"open","balance":115,"deposited":{"EUR":105,"USD":10}}));

    // The journal holds both shapes, each under its own manifest.
    let (_, events) = server.get("/v1/entities/bank-account/a/events?from=106&limit=10");
    let manifests: Vec<&str> =
        events["events"].as_array().unwrap().iter().map(|e| e["manifest"].as_str().unwrap()).collect();
    assert_eq!(manifests, vec!["Deposited", "Deposited.v2"], "{events}");
    drop(server);

    // After a restart, version 2 (the active one) recovers the mixed journal the same way.
    let server = Server::start(data.path(), comps.path(), &[]);
    assert_eq!(state(&server, "a"), json!({"status":"open","balance":115,"deposited":{"EUR":105,"USD":10}}));
}
