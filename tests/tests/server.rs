//! Black-box tests of the `mneme` binary: real process, real HTTP, real disk.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mneme_tests::{components_dir, example, json, mneme_bin, test_component, Server};
use serde_json::{json, Value};

fn examples() -> Vec<std::path::PathBuf> {
    vec![example("bank-account"), example("blog-post"), example("task-manager")]
}

#[test]
fn acknowledged_commands_survive_kill_9() {
    kill_9_keeps_every_acknowledged_command(&[]);
}

#[test]
fn acknowledged_commands_survive_kill_9_on_the_sled_journal() {
    kill_9_keeps_every_acknowledged_command(&["--journal", "sled"]);
}

fn kill_9_keeps_every_acknowledged_command(journal: &[&str]) {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&examples());
    let server = Server::start(data.path(), comps.path(), journal);
    let url = server.url.clone();
    const CLIENTS: usize = 8;
    for c in 0..CLIENTS {
        assert_eq!(server.send("bank-account", &format!("k{c}"), r#"{"type":"CreateAccount"}"#).0, 200);
    }
    // Each client deposits 1, 2, 3, ... into its own account until the server dies.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; CLIENTS]));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                for i in 1..=100_000u64 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let body = format!(r#"{{"type":"Deposit","amount":{i}}}"#);
                    match agent.post(format!("{url}/v1/entities/bank-account/k{c}")).send(body.as_bytes()) {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap()[c] = i,
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.iter().all(|&n| n > 0), "every client got acknowledgements before the kill: {acked:?}");

    let server = Server::start(data.path(), comps.path(), journal);
    for (c, &n) in acked.iter().enumerate() {
        let id = format!("k{c}");
        let mut amounts = Vec::new();
        let mut from = 1;
        loop {
            let (s, page) = server.get(&format!("/v1/entities/bank-account/{id}/events?from={from}&limit=1000"));
            assert_eq!(s, 200);
            let events = page["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            for e in events {
                assert_eq!(e["seq_nr"].as_u64().unwrap(), from);
                from += 1;
                if e["manifest"] == "Deposited" {
                    amounts.push(e["payload"]["amount"].as_u64().unwrap());
                }
            }
        }
        // Stored deposits are exactly 1..=k with k >= the last acknowledged one.
        assert!(amounts.len() as u64 >= n, "{id}: acknowledged {n} deposits, journal has {}", amounts.len());
        assert_eq!(amounts, (1..=amounts.len() as u64).collect::<Vec<_>>(), "{id}: gap or reordering");
        let (s, state) = server.send("bank-account", &id, r#"{"type":"GetBalance"}"#);
        assert_eq!(s, 200);
        assert_eq!(state["balance"].as_u64().unwrap(), amounts.iter().sum::<u64>(), "{id}: recovered state");
    }
}

#[test]
fn a_data_directory_keeps_its_journal_backend() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &["--journal", "sled"]);
    assert_eq!(server.send("bank-account", "s", r#"{"type":"CreateAccount"}"#).0, 200);
    drop(server);
    // Starting on the other backend is refused instead of showing an empty journal.
    let out = Command::new(mneme_bin())
        .args(["serve", "--data"])
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--journal", "log"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--journal sled"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn guest_faults_fail_the_command_and_the_host_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[test_component("faulty"), example("bank-account")]);
    // The deadline leaves the memory bomb time to reach its limit on a busy machine.
    let server = Server::start(data.path(), comps.path(), &["--call-timeout-ms", "2000", "--memory-limit-mb", "32"]);
    assert_eq!(server.send("faulty", "g", r#"{"type":"Record","value":"kept"}"#).0, 200);
    let cases = [
        (r#"{"type":"Loop"}"#, "deadline of 2000 ms exceeded"),
        (r#"{"type":"Allocate"}"#, "memory limit of 32 MiB exceeded"),
        (r#"{"type":"Panic","message":"boom at the handler"}"#, "boom at the handler"),
        (r#"{"type":"BadApply"}"#, "apply"),
    ];
    for (command, expected) in cases {
        let (s, body) = server.send("faulty", "g", command);
        assert_eq!(s, 500, "{command}: {body}");
        let err = body["error"].as_str().unwrap();
        assert!(err.contains(expected), "{command}: `{err}` does not mention `{expected}`");
        // The instance was replaced and the entity kept its state.
        let (s, body) = server.send("faulty", "g", r#"{"type":"Get"}"#);
        assert_eq!((s, body), (200, json!(["kept"])), "after {command}");
    }
    let (_, events) = server.get("/v1/entities/faulty/g/events");
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "faults persisted nothing");
    assert_eq!(server.send("bank-account", "ok", r#"{"type":"CreateAccount"}"#).0, 200);
}

#[test]
fn http_errors_have_documented_statuses_and_json_bodies() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&examples());
    let server = Server::start(data.path(), comps.path(), &["--max-command-bytes", "1000", "--stash-capacity", "1"]);
    let oversized = vec![b' '; 2000];
    let cases: Vec<(&str, &str, &[u8], u16)> = vec![
        ("unknown type", "/v1/entities/nope/a", b"{}", 404),
        ("invalid id", "/v1/entities/bank-account/a%7Cb", b"{}", 400),
        ("oversized body", "/v1/entities/bank-account/a", &oversized, 413),
        ("malformed", "/v1/entities/bank-account/a", b"{not json", 400),
        ("unhandled", "/v1/entities/bank-account/a", br#"{"type":"Deposit","amount":1}"#, 409),
    ];
    let mut bodies = Vec::new();
    for (what, path, body, expected) in cases {
        let (status, text) = server.request("POST", path, body);
        assert_eq!(status, expected, "{what}: {text}");
        let v = json(&text);
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: body {text}");
        bodies.push(v["error"].as_str().unwrap().to_string());
    }
    assert!(bodies[0].contains("nope"), "{}", bodies[0]);
    assert!(bodies[3].contains("malformed"), "{}", bodies[3]);
    // A domain error reply is 422 with the entity's message.
    assert_eq!(server.send("bank-account", "a", r#"{"type":"CreateAccount"}"#).0, 200);
    let (s, body) = server.send("bank-account", "a", r#"{"type":"Withdraw","amount":5}"#);
    assert_eq!(s, 422);
    assert!(body["error"].as_str().unwrap().contains("Insufficient balance"));
    // Stash capacity 1: the second stashed command is refused with 503.
    assert_eq!(server.send("task-manager", "m", r#"{"type":"StartTask","taskId":"t1"}"#).0, 200);
    let url = server.url.clone();
    let waiting = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent
            .post(format!("{url}/v1/entities/task-manager/m"))
            .send(br#"{"type":"StartTask","taskId":"t2"}"#)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    });
    // Let t2 reach the stash first (HTTP requests on two connections are not ordered).
    std::thread::sleep(Duration::from_millis(500));
    let mut full = (0, Value::Null);
    for _ in 0..100 {
        full = server.send("task-manager", "m", r#"{"type":"StartTask","taskId":"t3"}"#);
        if full.0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(full.0, 503, "{}", full.1);
    assert!(full.1["error"].as_str().unwrap().contains("stash"));
    assert_eq!(server.send("task-manager", "m", r#"{"type":"EndTask","taskId":"t1"}"#).0, 200);
    assert_eq!(waiting.join().unwrap().0, 200, "the stashed command got its reply after unstash");
    let (s, body) = server.get("/v1/no/such/route");
    assert_eq!(s, 404);
    assert!(body["error"].is_string());
}

#[test]
fn a_command_without_reply_in_time_gets_504() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&examples());
    let server = Server::start(data.path(), comps.path(), &["--reply-timeout-secs", "1"]);
    assert_eq!(server.send("task-manager", "m", r#"{"type":"StartTask","taskId":"t1"}"#).0, 200);
    // Stashed behind t1, which never ends.
    let (s, body) = server.send("task-manager", "m", r#"{"type":"StartTask","taskId":"t2"}"#);
    assert_eq!(s, 504, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stashed"), "{body}");
}

#[test]
fn events_state_and_tag_queries() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&examples());
    let server = Server::start(data.path(), comps.path(), &[]);
    server.send("bank-account", "q", r#"{"type":"CreateAccount"}"#);
    server.send("bank-account", "q", r#"{"type":"Deposit","amount":40}"#);
    server.send("bank-account", "q2", r#"{"type":"CreateAccount"}"#);
    let (s, page) = server.get("/v1/entities/bank-account/q/events?from=2&limit=10");
    assert_eq!(s, 200);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!((e["seq_nr"].as_u64(), e["manifest"].as_str()), (Some(2), Some("Deposited")));
    assert_eq!(e["payload"]["amount"], 40);
    assert_eq!(e["tags"], json!(["account"]));
    assert!(e["offset"].as_u64().unwrap() >= 2 && e["timestamp_ms"].as_u64().unwrap() > 0);
    assert_eq!(page["next_from"], 3);
    let (s, state) = server.get("/v1/entities/bank-account/q/state");
    assert_eq!(s, 200);
    assert_eq!(state["seq_nr"], 2);
    assert!(state["state"].to_string().contains("40"), "{state}");
    let (s, tagged) = server.get("/v1/events?tag=account&from=0&limit=10");
    assert_eq!(s, 200);
    let pids: Vec<&str> =
        tagged["events"].as_array().unwrap().iter().map(|e| e["persistence_id"].as_str().unwrap()).collect();
    assert_eq!(pids, ["bank-account|q", "bank-account|q", "bank-account|q2"]);
    assert_eq!(server.get("/v1/events").0, 400, "tag is required");
}

#[test]
fn components_hot_load_reject_invalid_uploads_and_roll_back() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&examples());
    let server = Server::start(data.path(), comps.path(), &["--watch-secs", "0"]);
    let bank = std::fs::read(example("bank-account")).unwrap();
    let faulty = std::fs::read(test_component("faulty")).unwrap();
    // An invalid upload is refused with the reason; nothing changes.
    let (s, body) = server.request("PUT", "/v1/components/bank-account", b"\0asm garbage");
    assert_eq!(s, 400, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("invalid component"));
    assert_eq!(server.send("bank-account", "h", r#"{"type":"CreateAccount"}"#).0, 200);
    // A new type, then a new version of it, then back.
    let (s, body) = server.request("PUT", "/v1/components/ledger", &bank);
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["version"], 1);
    assert_eq!(server.send("ledger", "l", r#"{"type":"CreateAccount"}"#).0, 200);
    let (s, body) = server.request("PUT", "/v1/components/ledger", &faulty);
    assert_eq!((s, json(&body)["version"].clone()), (200, json!(2)));
    assert_eq!(
        server.send("ledger", "new", r#"{"type":"Record","value":"v2"}"#).0,
        200,
        "new commands run the new version"
    );
    let (s, _) = server.request("POST", "/v1/components/ledger/versions/1/activate", b"");
    assert_eq!(s, 200);
    assert_eq!(server.send("ledger", "l", r#"{"type":"GetBalance"}"#).1["balance"], 0);
    let (_, list) = server.get("/v1/components");
    let names: Vec<&str> =
        list["components"].as_array().unwrap().iter().map(|c| c["entity_type"].as_str().unwrap()).collect();
    assert_eq!(names, ["bank-account", "blog-post", "ledger", "task-manager"]);
    // Deployed versions survive a restart.
    drop(server);
    let server = Server::start(data.path(), comps.path(), &[]);
    let (_, list) = server.get("/v1/components");
    let ledger = list["components"].as_array().unwrap().iter().find(|c| c["entity_type"] == "ledger").unwrap().clone();
    assert_eq!((ledger["version"].clone(), ledger["versions"].clone()), (json!(1), json!([1, 2])));
}

#[test]
fn components_directory_is_watched() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &["--watch-secs", "1"]);
    assert_eq!(server.send("blog-post", "w", "{}").0, 404);
    std::fs::copy(example("blog-post"), comps.path().join("blog-post.wasm")).unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = server.send("blog-post", "w", r#"{"type":"GetPost"}"#).0;
        if status != 404 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(status, 404, "dropped-in component was not loaded");
}

fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(mneme_bin()).args(args).arg("--server").arg(&server.url).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_client_subcommands() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&examples());
    let server = Server::start(data.path(), comps.path(), &[]);
    let (ok, out, err) = cli(&server, &["send", "bank-account", "cli", r#"{"type":"CreateAccount"}"#]);
    assert!(ok, "{err}");
    // For people: indented JSON; with --json the server's answer as it is.
    assert_eq!(out, "{\n  \"balance\": 0\n}\n");
    let (ok, out, _) = cli(&server, &["send", "bank-account", "cli", r#"{"type":"Deposit","amount":9}"#, "--json"]);
    assert!(ok);
    assert_eq!(out, "{\"balance\":9}\n");
    let (ok, out, _) = cli(&server, &["state", "bank-account", "cli", "--json"]);
    assert!(ok);
    assert_eq!(json(&out)["seq_nr"], 2);
    let (ok, out, _) = cli(&server, &["events", "bank-account", "cli", "--from", "2", "--json"]);
    assert!(ok);
    assert_eq!(json(&out)["events"][0]["payload"]["amount"], 9);
    let (ok, out, _) = cli(&server, &["events", "--tag", "account", "--json"]);
    assert!(ok);
    assert_eq!(json(&out)["events"].as_array().unwrap().len(), 2);
    // Lists are tables: a header, then a row per event.
    let (ok, out, _) = cli(&server, &["events", "--tag", "account"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("OFFSET") && lines[0].contains("MANIFEST"), "{out}");
    assert!(lines[1].contains("bank-account|cli") && lines[1].contains("AccountCreated"), "{out}");
    assert!(lines[2].contains("Deposited") && lines[2].ends_with(r#""amount":9}"#), "{out}");
    // A deploy says what it waits for, then which version is active.
    let faulty = test_component("faulty");
    let (ok, out, err) = cli(&server, &["deploy", "faulty", faulty.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("faulty version 1 is active"), "{out}");
    assert!(err.contains("the server compiles it") && err.contains("answered after"), "{err}");
    let (ok, out, _) = cli(&server, &["components"]);
    assert!(ok);
    assert!(out.lines().next().unwrap().starts_with("TYPE"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("faulty ")), "{out}");
    let (ok, out, _) = cli(&server, &["components", "--json"]);
    assert!(ok);
    assert!(json(&out)["components"].as_array().unwrap().iter().any(|c| c["entity_type"] == "faulty"), "{out}");
    // Errors exit non-zero with the server's message.
    let (ok, _, err) = cli(&server, &["send", "bank-account", "cli", r#"{"type":"Withdraw","amount":100}"#]);
    assert!(!ok && err.contains("422") && err.contains("Insufficient balance"), "{err}");
    // Completion scripts for the shells.
    let out = Command::new(mneme_bin()).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete") && script.contains("deploy-projection"), "{script}");
}
