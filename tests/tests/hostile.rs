//! Hostile guests against the real binary over HTTP: every guest limit of the README's
//! "Guest limits" table fails the command with the documented status and message,
//! changes nothing in the journal, and leaves the host serving the same entity and
//! others; components that do not fit the `entity` world are refused at deploy,
//! naming what is wrong, and the version already active keeps serving.
//!
//! Components: `tests/components/hostile` (attacks on request), `uses-wasi` (reads
//! files and the clock), `wrong-world` (built against `mneme:entity@0.3.0`),
//! `wrong-replay` and `wrong-decide` (`tests/components/wrong-fast-path`: its
//! optional `replay` or `decide` export of another type).

use std::process::Command;

use mneme_tests::{components_dir, example, json, mneme_bin, test_component, Server};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

fn start(extra: &[&str]) -> (tempfile::TempDir, tempfile::TempDir, Server) {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[test_component("hostile"), example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), extra);
    (data, comps, server)
}

/// The entity's stored events (the whole records: seq nr, offset, payload, ...).
fn events(server: &Server, entity_type: &str, id: &str) -> Vec<Value> {
    let (s, body) = server.get(&format!("/v1/entities/{entity_type}/{id}/events?from=1&limit=1000000"));
    assert_eq!(s, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want: &[&str], what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    let err = body["error"].as_str().unwrap_or_else(|| panic!("{what}: no error message in {body}"));
    for w in want {
        assert!(err.contains(w), "{what}: `{err}` does not mention `{w}`");
    }
}

#[test]
fn hostile_commands_fail_cleanly_and_leave_the_journal_and_the_host_intact() {
    let (_data, _comps, server) = start(&["--call-timeout-ms", "1000", "--memory-limit-mb", "64"]);
    assert_eq!(server.send("hostile", "h", r#"{"type":"Record","value":"kept"}"#), (200, json!(["kept"])));
    assert_eq!(server.send("bank-account", "b", r#"{"type":"CreateAccount"}"#).0, 200);
    let before = events(&server, "hostile", "h");
    assert_eq!(before.len(), 1);
    let faults_before = server.metric::<u64>("mneme_guest_faults_total");

    let two_mib = 2 * MIB;
    let cases: Vec<(String, u16, Vec<String>)> = vec![
        (r#"{"type":"Loop"}"#.into(), 500, vec!["deadline of 1000 ms exceeded".into()]),
        (r#"{"type":"GrowMemory"}"#.into(), 500, vec!["memory limit of 64 MiB exceeded".into()]),
        (r#"{"type":"Recurse"}"#.into(), 500, vec!["stack overflow".into(), "512 KiB Wasm stack".into()]),
        (
            format!(r#"{{"type":"HugeReply","bytes":{two_mib}}}"#),
            500,
            vec![format!("a reply body of {two_mib} bytes"), format!("the {MIB} allowed"), "--max-reply-bytes".into()],
        ),
        (
            format!(r#"{{"type":"HugeError","bytes":{two_mib}}}"#),
            500,
            vec![format!("an error reply of {two_mib} bytes"), "--max-reply-bytes".into()],
        ),
        (
            r#"{"type":"ManyEvents","count":100000}"#.into(),
            500,
            vec!["100000 events".into(), "10000".into(), "--max-events-per-command".into()],
        ),
        // The journal's own limit on one event stays a rejection (422), checked after the sandbox's.
        (
            format!(r#"{{"type":"HugeEvent","bytes":{two_mib}}}"#),
            422,
            vec!["journal rejected the events".into(), format!("the limit is {MIB}")],
        ),
        (r#"{"type":"BadUtf8Import"}"#.into(), 500, vec!["not valid UTF-8".into()]),
        (r#"{"type":"BadUtf8Reply"}"#.into(), 500, vec!["not valid UTF-8".into()]),
        (r#"{"type":"Print"}"#.into(), 500, vec!["wasi:cli/stdout".into(), "no WASI".into()]),
    ];
    let mut faults = 0;
    for (i, (command, status, want)) in cases.iter().enumerate() {
        let (s, body) = server.send("hostile", "h", command);
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_error(s, &body, *status, &want, command);
        if *status == 500 {
            assert!(body["error"].as_str().unwrap().starts_with("guest fault in `hostile`"), "{command}: {body}");
            faults += 1;
        }
        // The same entity still answers, with the state it had.
        assert_eq!(server.send("hostile", "h", r#"{"type":"Get"}"#), (200, json!(["kept"])), "after {command}");
        // Other entities of the same type and of other types are served.
        let other = format!(r#"{{"type":"Record","value":"v{i}"}}"#);
        assert_eq!(
            server.send("hostile", &format!("other-{i}"), &other),
            (200, json!([format!("v{i}")])),
            "after {command}"
        );
        let (s, body) = server.send("bank-account", "b", r#"{"type":"Deposit","amount":1}"#);
        assert_eq!((s, &body["balance"]), (200, &json!(i + 1)), "after {command}: {body}");
    }
    // Nothing of any attack reached the journal.
    assert_eq!(events(&server, "hostile", "h"), before);
    let (s, state) = server.get("/v1/entities/hostile/h/state");
    assert_eq!((s, &state["seq_nr"], &state["state"]["values"]), (200, &json!(1), &json!(["kept"])));
    assert_eq!(
        server.metric::<u64>("mneme_guest_faults_total") - faults_before,
        faults,
        "every sandbox limit counts as a guest fault"
    );
}

#[test]
fn result_limits_are_configurable_and_exact() {
    let (_data, _comps, server) =
        start(&["--max-reply-bytes", "1000", "--max-events-per-command", "10", "--wasm-stack-kb", "64"]);
    // At the limit: served.
    let (s, body) = server.request("POST", "/v1/entities/hostile/c", br#"{"type":"HugeReply","bytes":1000}"#);
    assert_eq!((s, body.len()), (200, 1000), "a reply of exactly --max-reply-bytes");
    assert_eq!(server.send("hostile", "c", r#"{"type":"ManyEvents","count":10}"#).0, 200);
    assert_eq!(events(&server, "hostile", "c").len(), 10);
    // One past it: a guest fault naming the limit, nothing persisted.
    let (s, body) = server.send("hostile", "c", r#"{"type":"HugeReply","bytes":1001}"#);
    assert_error(
        s,
        &body,
        500,
        &["1001 bytes", "the 1000 allowed", "--max-reply-bytes"],
        "reply over --max-reply-bytes",
    );
    let (s, body) = server.send("hostile", "c", r#"{"type":"ManyEvents","count":11}"#);
    assert_error(
        s,
        &body,
        500,
        &["11 events", "the 10 one command", "--max-events-per-command"],
        "events over the limit",
    );
    assert_eq!(events(&server, "hostile", "c").len(), 10);
    let (s, body) = server.send("hostile", "c", r#"{"type":"Recurse"}"#);
    assert_error(s, &body, 500, &["stack overflow", "64 KiB Wasm stack"], "recursion");
    // Ordinary commands are unaffected by the small limits.
    assert_eq!(server.send("hostile", "c", r#"{"type":"Record","value":"x"}"#).0, 200);
    assert_eq!(events(&server, "hostile", "c").len(), 11);
}

#[test]
fn a_wasm_stack_beyond_what_the_host_threads_allow_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(mneme_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--wasm-stack-kb", "4096", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--wasm-stack-kb") && err.contains("4096"), "{err}");
}

#[test]
fn components_that_do_not_fit_the_entity_world_are_refused_at_deploy() {
    let data = tempfile::tempdir().unwrap();
    // Dropped into the components directory: refused at start, the others load.
    let comps = components_dir(&[example("bank-account"), test_component("uses-wasi"), test_component("wrong-world")]);
    let server = Server::start(data.path(), comps.path(), &["--watch-secs", "0"]);
    let (_, list) = server.get("/v1/components");
    let names: Vec<&str> =
        list["components"].as_array().unwrap().iter().map(|c| c["entity_type"].as_str().unwrap()).collect();
    assert_eq!(names, ["bank-account"]);
    assert_eq!(server.send("uses-wasi", "u", r#"{"type":"Now"}"#).0, 404);
    assert_eq!(server.send("wrong-world", "w", "{}").0, 404);

    // Over HTTP, on top of a working version.
    let bank = std::fs::read(example("bank-account")).unwrap();
    let (s, body) = server.request("PUT", "/v1/components/ledger", &bank);
    assert_eq!(s, 200, "{body}");
    assert_eq!(server.send("ledger", "l", r#"{"type":"CreateAccount"}"#).0, 200);
    assert_eq!(server.send("ledger", "l", r#"{"type":"Deposit","amount":7}"#).0, 200);

    let uses_wasi = std::fs::read(test_component("uses-wasi")).unwrap();
    let (s, body) = server.request("PUT", "/v1/components/ledger", &uses_wasi);
    let body = json(&body);
    assert_error(
        s,
        &body,
        400,
        &[
            "does not fit mneme's `entity` world",
            "`wasi:filesystem/types@",
            "`wasi:filesystem/preopens@",
            "`wasi:clocks/wall-clock@",
            "mneme gives guests no WASI",
            "--stub-wasi",
            "wasi-virt",
        ],
        "a component importing WASI",
    );
    // The stdio interfaces Rust's standard library always links are not what is refused.
    let err = body["error"].as_str().unwrap();
    assert!(!err.contains("wasi:cli/") && !err.contains("wasi:io/"), "{err}");

    let wrong_world = std::fs::read(test_component("wrong-world")).unwrap();
    let (s, body) = server.request("PUT", "/v1/components/ledger", &wrong_world);
    assert_error(
        s,
        &json(&body),
        400,
        &[
            "`mneme:entity/host@0.3.0`",
            "`mneme:entity/types@0.3.0`",
            "implements mneme:entity@0.2.0 (it accepts 0.1.x or 0.2.x)",
            "does not export `mneme:entity/handler@0.1.x or 0.2.x`",
            "it exports `mneme:entity/handler@0.3.0`",
        ],
        "a component of another WIT version",
    );
    let wrong_replay = std::fs::read(test_component("wrong-replay")).unwrap();
    let (s, body) = server.request("PUT", "/v1/components/ledger", &wrong_replay);
    assert_error(
        s,
        &json(&body),
        400,
        &["its `mneme:entity/replay` export does not match `wit/entity.wit`"],
        "a component whose optional `replay` export has another type",
    );
    let wrong_decide = std::fs::read(test_component("wrong-decide")).unwrap();
    let (s, body) = server.request("PUT", "/v1/components/ledger", &wrong_decide);
    assert_error(
        s,
        &json(&body),
        400,
        &[
            "its `mneme:entity/decide` export does not match `wit/entity.wit`",
            "handle-command-and-apply: func(state: list<u8>, command: command) -> result<decision, string>",
        ],
        "a component whose optional `decide` export has another type",
    );

    // The version that was active keeps serving, with its state; nothing was stored.
    let (s, body) = server.send("ledger", "l", r#"{"type":"GetBalance"}"#);
    assert_eq!((s, &body["balance"]), (200, &json!(7)), "{body}");
    let (_, list) = server.get("/v1/components");
    let ledger = list["components"].as_array().unwrap().iter().find(|c| c["entity_type"] == "ledger").unwrap().clone();
    assert_eq!((&ledger["version"], &ledger["versions"]), (&json!(1), &json!([1])), "{ledger}");
}
