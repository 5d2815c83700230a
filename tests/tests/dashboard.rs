//! The Grafana dashboard (`ops/grafana-dashboard.json`) charts only metrics a
//! real server exposes on `/metrics`: a renamed or removed metric fails here, not
//! on an operator's empty panel.

use std::collections::BTreeSet;

use mneme_tests::{components_dir, example, root, Server};
use serde_json::Value;

/// Every `mneme_*` name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("ops/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("mneme_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn every_metric_of_the_dashboard_exists() {
    let names = dashboard_metrics();
    assert!(names.len() >= 15, "{names:?}");
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    // Metrics labelled by entity type appear with the type's first command.
    assert_eq!(server.send("bank-account", "a", r#"{"type":"CreateAccount"}"#).0, 200);
    let (status, text) = server.request("GET", "/metrics", b"");
    assert_eq!(status, 200);
    let exposed: BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split([' ', '{']).next()).collect();
    let missing: Vec<&String> = names.iter().filter(|n| !exposed.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard uses metrics /metrics does not have: {missing:?}\n{text}");
}
