//! Projections end to end: the real binary, the real journal, the real
//! components (`examples/account-balances`, its Python twin, and the test-only
//! `faulty-projection`).
//!
//! The view of `account-balances` is checked against a fold of the journal
//! computed here: every account's `{"balance":N,"events":K}` and `_total`. The
//! event counts make double or missing application visible even where balances
//! would hide it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mneme::journal::Journal;
use mneme_tests::{components_dir, example, json, polyglot, test_component, Server};
use serde_json::{json, Value};

type View = BTreeMap<String, Value>;

/// The view `account-balances` must hold after the given events (JSON payloads
/// of the bank account, in offset order).
fn fold<'a>(events: impl IntoIterator<Item = (&'a str, &'a Value)>) -> View {
    let mut balances: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut count = 0;
    for (pid, payload) in events {
        let account = pid.split_once('|').unwrap().1.to_string();
        let amount = payload["amount"].as_u64().unwrap_or(0);
        let (balance, events) = balances.entry(account).or_default();
        match payload["type"].as_str().unwrap() {
            "Deposited" => *balance += amount,
            "Withdrawn" => *balance -= amount,
            "AccountCreated" | "AccountClosed" => {}
            other => panic!("unexpected event {other}"),
        }
        *events += 1;
        count += 1;
    }
    let total: u64 = balances.values().map(|(b, _)| b).sum();
    let mut view: View =
        balances.into_iter().map(|(k, (balance, events))| (k, json!({"balance": balance, "events": events}))).collect();
    if count > 0 {
        view.insert("_total".into(), json!({"balance": total, "events": count}));
    }
    view
}

/// Every `account` event over HTTP: (persistence id, payload) in offset order.
fn journal_events(server: &Server) -> Vec<(String, Value)> {
    let events = server.tagged_events("account");
    events.into_iter().map(|e| (e["persistence_id"].as_str().unwrap().to_string(), e["payload"].clone())).collect()
}

fn http_fold(server: &Server) -> View {
    let events = journal_events(server);
    fold(events.iter().map(|(p, v)| (p.as_str(), v)))
}

/// A whole view over HTTP, page by page.
fn view(server: &Server, name: &str) -> View {
    let mut out = View::new();
    let mut from = String::new();
    loop {
        let (s, page) = server.get(&format!("/v1/views/{name}?limit=7&from_key={}", encode(&from)));
        assert_eq!(s, 200, "{page}");
        for e in page["entries"].as_array().unwrap() {
            out.insert(e["key"].as_str().unwrap().to_string(), e["value"].clone());
        }
        match page["next_from_key"].as_str() {
            Some(next) => from = next.to_string(),
            None => return out,
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn projection(server: &Server, name: &str) -> Value {
    let (s, list) = server.get("/v1/projections");
    assert_eq!(s, 200, "{list}");
    list["projections"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null)
}

/// Wait until `name` has taken in everything durable and serves generation `generation`.
fn wait_caught_up(server: &Server, name: &str, generation: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = projection(server, name);
        if p["status"] == "running" && p["lag"] == 0 && p["generation"] == generation && p["rebuild"].is_null() {
            return p;
        }
        assert!(Instant::now() < deadline, "{name} did not catch up: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(server: &Server, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = projection(server, name);
        if ok(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{name}: {what}: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deploy(server: &Server, name: &str, wasm: &Path) -> Value {
    let (s, body) = server.request("PUT", &format!("/v1/projections/{name}"), &std::fs::read(wasm).unwrap());
    assert_eq!(s, 200, "{body}");
    json(&body)
}

fn ok(server: &Server, id: &str, command: &str) {
    let (s, body) = server.send("bank-account", id, command);
    assert_eq!(s, 200, "{id} {command}: {body}");
}

/// `accounts` accounts with deposits and withdrawals of 1 to 12 (never the
/// amounts `faulty-projection` fails on), from 4 threads.
fn populate(server: &Server, prefix: &str, accounts: usize, commands_each: usize) {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for a in (t..accounts).step_by(4) {
                    let id = format!("{prefix}{a}");
                    ok(server, &id, r#"{"type":"CreateAccount"}"#);
                    for i in 0..commands_each {
                        let amount = 1 + (a + i) % 12;
                        let command = if i % 3 == 2 { "Withdraw" } else { "Deposit" };
                        let body = format!(r#"{{"type":"{command}","amount":{amount}}}"#);
                        let (s, reply) = server.send("bank-account", &id, &body);
                        assert!(s == 200 || s == 422, "{body}: {reply}");
                    }
                }
            });
        }
    });
}

/// On the journal of `MNEME_TEST_JOURNAL` (the default, or PostgreSQL).
fn bank_server(data: &Path, comps: &Path, extra: &[&str]) -> Server {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(mneme_tests::serve_journal_args(data));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(data, comps, &args)
}

/// With the server killed: the serving view of `name` straight from the journal,
/// checked against the fold of the events up to its stored offset. Returns
/// (stored offset, journal head).
fn check_crash_state(data: &Path, name: &str) -> (u64, u64) {
    let journal = mneme::journal::open_with(data, &mneme_tests::test_journal(data)).unwrap();
    let head = journal.head();
    let offsets = journal.projection_offsets(name).unwrap();
    let Some(serving) = offsets.iter().filter(|o| o.live).max_by_key(|o| o.generation) else {
        return (0, head);
    };
    let events = journal.events_by_tag("account", 0, usize::MAX).unwrap();
    let payloads: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e.offset <= serving.offset)
        .map(|e| (e.persistence_id.clone(), serde_json::from_slice(&e.payload).unwrap()))
        .collect();
    let expected = fold(payloads.iter().map(|(p, v)| (p.as_str(), v)));
    let stored: View = journal
        .view_scan(name, serving.generation, "", "", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
        .collect();
    assert_eq!(stored, expected, "after a crash, the view at offset {} (head {head})", serving.offset);
    (serving.offset, head)
}

/// Kill -9 while `account-balances` catches up from offset 0 and while it follows
/// live load: after every crash the stored view is exactly the fold of the events
/// up to the stored offset, and in the end the whole journal's.
#[test]
fn account_balances_stay_exact_through_kill_9_during_catch_up_and_live_load() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    // Small batches: many atomic writes for the kills to land between (and in).
    let flags = ["--projection-batch-events", "3"];
    let mut server = bank_server(data.path(), comps.path(), &flags);
    populate(&server, "acc", 40, 40);
    deploy(&server, "account-balances", &example("account-balances"));

    // Catching up from offset 0: kill at different points of the catch-up.
    let mut partial = 0;
    for round in 1..=4u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = projection(&server, "account-balances");
            let (offset, head) = (p["offset"].as_u64().unwrap_or(0), p["head"].as_u64().unwrap());
            if offset * 5 >= head * round || p["lag"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "no progress: {p}");
            std::thread::sleep(Duration::from_millis(2));
        }
        server.kill();
        let (offset, head) = check_crash_state(data.path(), "account-balances");
        if offset > 0 && offset < head {
            partial += 1;
        }
        server = bank_server(data.path(), comps.path(), &flags);
    }
    assert!(partial >= 2, "the kills should land while catching up ({partial} did)");
    wait_caught_up(&server, "account-balances", 1);
    assert_eq!(view(&server, "account-balances"), http_fold(&server));

    // Following live load: clients keep depositing while the server is killed.
    let url = Arc::new(Mutex::new(server.url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, stop, sent) = (url.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(5)))
                    .build()
                    .into();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let id = format!("live{c}-{}", i % 5);
                    let base = url.lock().unwrap().clone();
                    let to = format!("{base}/v1/entities/bank-account/{id}");
                    let body = if i <= 5 {
                        r#"{"type":"CreateAccount"}"#.to_string()
                    } else {
                        format!(r#"{{"type":"Deposit","amount":{}}}"#, 1 + i % 12)
                    };
                    match agent.post(&to).send(body.as_bytes()) {
                        Ok(_) => {
                            sent.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    for _ in 0..3 {
        let before = sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.load(Ordering::SeqCst) < before + 150 {
            assert!(Instant::now() < deadline, "the load does not get through");
            std::thread::sleep(Duration::from_millis(10));
        }
        server.kill();
        check_crash_state(data.path(), "account-balances");
        server = bank_server(data.path(), comps.path(), &flags);
        *url.lock().unwrap() = server.url.clone();
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    wait_caught_up(&server, "account-balances", 1);
    let expected = http_fold(&server);
    assert!(expected.keys().any(|k| k.starts_with("live")), "the live load reached the journal");
    assert_eq!(view(&server, "account-balances"), expected);

    // The log, the index and every projection record check out (`journal verify`
    // reads the commit log: not on PostgreSQL).
    assert!(server.terminate().success());
    if mneme_tests::test_journal(data.path()).backend != mneme::journal::Backend::Log {
        return;
    }
    let report = mneme::journal::verify::verify(data.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.projection_records > 0 && report.view_keys as usize == expected.len());
}

/// A projection that traps on one event fails alone, at that event; a fixed
/// version resumes from the stored offset (the same view, not rebuilt); a view
/// value over the limit fails it too, with nothing of that event stored.
#[test]
fn a_faulty_projection_fails_alone_and_a_fixed_version_resumes_from_its_offset() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = bank_server(data.path(), comps.path(), &[]);
    populate(&server, "a", 8, 10);
    deploy(&server, "account-balances", &example("account-balances"));
    let deployed = deploy(&server, "balances", &test_component("faulty-projection"));
    assert_eq!((&deployed["version"], &deployed["view_version"]), (&json!(1), &json!(1)), "{deployed}");
    wait_caught_up(&server, "balances", 1);

    // The unlucky deposit, then more commands: they all succeed.
    ok(&server, "u", r#"{"type":"CreateAccount"}"#);
    ok(&server, "u", r#"{"type":"Deposit","amount":13}"#);
    let (_, events) = server.get("/v1/entities/bank-account/u/events");
    let unlucky = events["events"][1]["offset"].as_u64().unwrap();
    populate(&server, "b", 4, 5);

    let failed = wait_for(&server, "balances", "fails", |p| p["status"] == "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("unlucky deposit of 13"), "{error}");
    assert!(error.contains(&format!("offset {unlucky} (bank-account|u#2, Deposited)")), "{error}");
    assert_eq!(failed["offset"], unlucky - 1, "failed right before the event: {failed}");
    assert!(failed["lag"].as_u64().unwrap() > 0, "{failed}");
    // The view is the fold up to there, exactly.
    let all = journal_events(&server);
    let unlucky_event = |(p, v): &&(String, Value)| p == "bank-account|u" && v["amount"] == 13;
    let before_unlucky = fold(all.iter().take_while(|e| !unlucky_event(e)).map(|(p, v)| (p.as_str(), v)));
    assert_eq!(view(&server, "balances"), before_unlucky);

    // Alone: the engine and the other projection keep going.
    ok(&server, "a0", r#"{"type":"Deposit","amount":2}"#);
    wait_caught_up(&server, "account-balances", 1);
    assert_eq!(view(&server, "account-balances"), http_fold(&server));
    let metrics = server.request("GET", "/metrics", b"").1;
    assert!(metrics.contains("mneme_projection_failed{projection=\"balances\"} 1"), "{metrics}");
    assert!(metrics.contains("mneme_projection_failed{projection=\"account-balances\"} 0"), "{metrics}");

    // Bad input: nothing changes.
    let (s, body) = server.request("PUT", "/v1/projections/account-balances", b"not wasm");
    assert_eq!(s, 400, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("invalid projection"), "{body}");
    let (s, body) =
        server.request("PUT", "/v1/projections/account-balances", &std::fs::read(example("bank-account")).unwrap());
    assert_eq!(s, 400, "an entity is not a projection: {body}");
    assert!(
        body.contains("does not fit mneme's `projection` world") && body.contains("mneme:projection/handler"),
        "{body}"
    );
    let (s, body) = server.request(
        "PUT",
        "/v1/projections/account-balances",
        &std::fs::read(test_component("wrong-feed")).unwrap(),
    );
    assert_eq!(s, 400, "a mistyped `feed` export: {body}");
    assert!(
        body.contains("its `mneme:projection/feed` export does not match `wit/projection.wit`")
            && body.contains("handle-event-batch: func(batch: list<u8>) -> result<list<view-update>, string>"),
        "{body}"
    );
    let p = projection(&server, "account-balances");
    assert_eq!((&p["version"], &p["versions"], &p["status"]), (&json!(1), &json!([1]), &json!("running")), "{p}");
    for (path, status) in [
        ("/v1/views/nope", 404),
        ("/v1/views/nope/a0", 404),
        ("/v1/views/balances/no-such-account", 404),
        ("/v1/views/Bad%21name/a0", 400),
        ("/v1/views/balances/a%0Ab", 400),
    ] {
        let (s, body) = server.get(path);
        assert_eq!(s, status, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let (s, body) = server.request("POST", "/v1/projections/balances/versions/9/activate", b"");
    assert_eq!(s, 404, "{body}");
    let (s, body) = server.get("/v1/views/balances?prefix=a1");
    assert_eq!(s, 200);
    let keys: Vec<&str> = body["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["a1"], "{body}");

    // The fixed version (same view-version) resumes from the stored offset: the
    // same generation, every event once.
    let fixed = deploy(&server, "balances", &example("account-balances"));
    assert_eq!((&fixed["version"], &fixed["generation"]), (&json!(2), &json!(1)), "{fixed}");
    wait_caught_up(&server, "balances", 1);
    let expected = http_fold(&server);
    assert_eq!(view(&server, "balances"), expected);
    assert_eq!(view(&server, "account-balances"), expected);

    // A value over the limit: failed with the reason, nothing of that event stored.
    deploy(&server, "balances", &test_component("faulty-projection"));
    wait_caught_up(&server, "balances", 1);
    let u_before = server.get("/v1/views/balances/u").1["value"].clone();
    ok(&server, "u", r#"{"type":"Deposit","amount":14}"#);
    ok(&server, "u", r#"{"type":"Deposit","amount":1}"#);
    let failed = wait_for(&server, "balances", "fails on the big value", |p| p["status"] == "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("2097152 bytes") && error.contains("--max-view-value-bytes"), "{error}");
    assert_eq!(server.get("/v1/views/balances/u").1["value"], u_before);
    let all = journal_events(&server);
    let big = |(p, v): &&(String, Value)| p == "bank-account|u" && v["amount"] == 14;
    let before_big = fold(all.iter().take_while(|e| !big(e)).map(|(p, v)| (p.as_str(), v)));
    assert_eq!(view(&server, "balances"), before_big, "nothing of the event is stored");
    // Back to version 2 (stored): resumes again.
    let (s, body) = server.request("POST", "/v1/projections/balances/versions/2/activate", b"");
    assert_eq!(s, 200, "{body}");
    wait_caught_up(&server, "balances", 1);
    assert_eq!(view(&server, "balances"), http_fold(&server));
}

/// A new version with another view-version rebuilds beside the serving view:
/// queries read the old view (still following the journal) until the new one
/// has caught up; a rebuild that faults leaves the old view serving; a swap
/// survives a restart.
#[test]
fn a_new_view_version_is_rebuilt_beside_the_old_view_and_swapped_in_when_caught_up() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = bank_server(data.path(), comps.path(), &[]);
    populate(&server, "a", 8, 10);
    deploy(&server, "balances", &example("account-balances"));
    wait_caught_up(&server, "balances", 1);

    // The rebuild faults on an old event: the old view keeps serving, and live.
    ok(&server, "u", r#"{"type":"CreateAccount"}"#);
    ok(&server, "u", r#"{"type":"Deposit","amount":13}"#);
    wait_caught_up(&server, "balances", 1);
    let v2 = deploy(&server, "balances", &test_component("faulty-projection-v2"));
    assert_eq!(
        (&v2["view_version"], &v2["generation"], &v2["rebuild"]["generation"]),
        (&json!(2), &json!(1), &json!(2)),
        "{v2}"
    );
    let p = wait_for(&server, "balances", "the rebuild fails", |p| p["rebuild"]["status"] == "failed");
    assert_eq!(
        (&p["status"], &p["generation"], &p["serving"]["version"]),
        (&json!("running"), &json!(1), &json!(1)),
        "{p}"
    );
    populate(&server, "b", 4, 5);
    wait_for(&server, "balances", "the old view follows", |p| p["serving"]["lag"] == 0);
    assert_eq!(view(&server, "balances"), http_fold(&server), "queries read the old view, up to date");

    // Back to the version of the serving view: the rebuild is dropped.
    let (s, body) = server.request("POST", "/v1/projections/balances/versions/1/activate", b"");
    assert_eq!(s, 200, "{body}");
    wait_caught_up(&server, "balances", 1);

    // A rebuild that catches up takes over, and stays after a restart.
    let data = tempfile::tempdir().unwrap();
    let mut server = bank_server(data.path(), comps.path(), &[]);
    populate(&server, "c", 8, 20);
    deploy(&server, "balances", &example("account-balances"));
    wait_caught_up(&server, "balances", 1);
    deploy(&server, "balances", &test_component("faulty-projection-v2"));
    let p = wait_caught_up(&server, "balances", 2);
    assert_eq!((&p["view_version"], &p["serving"]["version"]), (&json!(2), &json!(2)), "{p}");
    assert_eq!(view(&server, "balances"), http_fold(&server));
    server.kill();
    server = bank_server(data.path(), comps.path(), &[]);
    wait_caught_up(&server, "balances", 2);
    ok(&server, "c0", r#"{"type":"Deposit","amount":1}"#);
    wait_caught_up(&server, "balances", 2);
    assert_eq!(view(&server, "balances"), http_fold(&server));
}

/// A projection built against `mneme:projection@0.1.0`, before the optional
/// `feed` export, deploys and folds every event once through `handle-events`,
/// beside one that has `feed`, and again after a restart.
#[test]
fn a_projection_built_against_wit_0_1_0_keeps_running() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let mut server = bank_server(data.path(), comps.path(), &[]);
    populate(&server, "a", 8, 5);
    let old = deploy(&server, "counts", &test_component("projection-v010"));
    assert_eq!(old["tags"], json!(["account"]), "{old}");
    deploy(&server, "account-balances", &example("account-balances"));
    populate(&server, "b", 4, 3);
    wait_caught_up(&server, "counts", 1);
    wait_caught_up(&server, "account-balances", 1);
    let balances = http_fold(&server);
    let counts = |balances: &View| -> View {
        let accounts = balances.iter().filter(|(k, _)| *k != "_total");
        accounts.map(|(k, v)| (k.clone(), v["events"].clone())).collect()
    };
    assert_eq!(balances.len(), 13, "12 accounts and `_total`");
    assert_eq!(view(&server, "counts"), counts(&balances));
    assert_eq!(view(&server, "account-balances"), balances);
    server.kill();
    server = bank_server(data.path(), comps.path(), &[]);
    ok(&server, "a0", r#"{"type":"Deposit","amount":1}"#);
    wait_caught_up(&server, "counts", 1);
    assert_eq!(view(&server, "counts"), counts(&http_fold(&server)));
}

/// The same projection written in Python gives the same view.
#[test]
fn the_python_projection_gives_the_same_view() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = bank_server(data.path(), comps.path(), &[]);
    populate(&server, "a", 12, 12);
    deploy(&server, "account-balances", &example("account-balances"));
    let py = deploy(&server, "balances-py", &polyglot("account-balances-python"));
    assert_eq!(py["tags"], json!(["account"]), "{py}");
    populate(&server, "b", 4, 6);
    wait_caught_up(&server, "account-balances", 1);
    wait_caught_up(&server, "balances-py", 1);
    let expected = http_fold(&server);
    assert_eq!(view(&server, "account-balances"), expected);
    assert_eq!(view(&server, "balances-py"), expected);
    // Byte for byte.
    let (_, rust) = server.request("GET", "/v1/views/account-balances/_total", b"");
    let (_, python) = server.request("GET", "/v1/views/balances-py/_total", b"");
    assert_eq!(rust.replace("account-balances", "X"), python.replace("balances-py", "X"));
}

/// In process: while the journal cannot write, a projection says so and stores
/// nothing; once the disk heals it catches up, every event once.
#[test]
fn a_projection_waits_out_a_failing_disk() {
    use mneme::component::SandboxLimits;
    use mneme::EngineConfig;
    use mneme_tests::TestEngine;

    let data = tempfile::tempdir().unwrap();
    let t = TestEngine::start(
        data.path(),
        &[("bank-account", example("bank-account"))],
        EngineConfig { shards: 2, ..EngineConfig::default() },
        SandboxLimits::default(),
    );
    for a in 0..5 {
        t.ok("bank-account", &format!("a{a}"), r#"{"type":"CreateAccount"}"#);
        t.ok("bank-account", &format!("a{a}"), r#"{"type":"Deposit","amount":3}"#);
    }
    t.journal.fail_writes.store(true, Ordering::SeqCst);
    let projections = t.engine.projections().clone();
    let wasm = std::fs::read(example("account-balances")).unwrap();
    projections.deploy("account-balances", &wasm).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = projections.status("account-balances").unwrap();
        let serving = s.serving.clone().unwrap();
        if serving.status == "retrying" {
            assert!(serving.error.unwrap().contains("No space left on device"));
            assert_eq!(serving.offset, 0);
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(t.journal.projection_offsets("account-balances").unwrap().is_empty(), "nothing stored");
    t.journal.fail_writes.store(false, Ordering::SeqCst);
    let head = t.journal.head();
    let deadline = Instant::now() + Duration::from_secs(30);
    while projections.status("account-balances").unwrap().serving.unwrap().offset < head {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = t.journal.events_by_tag("account", 0, usize::MAX).unwrap();
    let payloads: Vec<(String, Value)> =
        events.iter().map(|e| (e.persistence_id.clone(), serde_json::from_slice(&e.payload).unwrap())).collect();
    let view: View = projections
        .view_scan("account-balances", "", "", 1000)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
        .collect();
    assert_eq!(view, fold(payloads.iter().map(|(p, v)| (p.as_str(), v))));
    t.stop();
}

/// In process, the worker's pipeline at its edges: batches of 3 events, a view
/// cache of a few hundred bytes (it starts over every few keys, so values are read
/// back from the journal while the batch before is still being stored), and writes
/// failing now and then under a stream of commands (a failed store drops the batch
/// computed on top of it). The view is still the fold of every event once.
#[test]
fn the_view_stays_exact_with_a_tiny_cache_and_failing_writes_under_load() {
    use mneme::component::SandboxLimits;
    use mneme::config::ProjectionConfig;
    use mneme::EngineConfig;
    use mneme_tests::TestEngine;

    let data = tempfile::tempdir().unwrap();
    let projections = ProjectionConfig {
        batch_events: 3,
        cache_bytes: 300,
        retry: Duration::from_millis(20),
        ..ProjectionConfig::default()
    };
    let t = TestEngine::start(
        data.path(),
        &[("bank-account", example("bank-account"))],
        EngineConfig { shards: 2, projections, ..EngineConfig::default() },
        SandboxLimits::default(),
    );
    let accounts = 12;
    for a in 0..accounts {
        t.ok("bank-account", &format!("a{a}"), r#"{"type":"CreateAccount"}"#);
    }
    let p = t.engine.projections().clone();
    p.deploy("account-balances", &std::fs::read(example("account-balances")).unwrap()).unwrap();
    let (mut stored, mut refused) = (0, 0);
    for i in 0..600u64 {
        // Every 50th command: the disk fails for a few milliseconds.
        if i % 50 == 25 {
            t.journal.fail_writes.store(true, Ordering::SeqCst);
        }
        if i % 50 == 30 {
            t.journal.fail_writes.store(false, Ordering::SeqCst);
        }
        let command = format!(r#"{{"type":"Deposit","amount":{}}}"#, 1 + i % 7);
        match t.send("bank-account", &format!("a{}", i % accounts), &command) {
            Ok(_) => stored += 1,
            Err(_) => refused += 1,
        }
    }
    t.journal.fail_writes.store(false, Ordering::SeqCst);
    assert!(stored > 0 && refused > 0, "the disk failed during the load: {stored} stored, {refused} refused");
    let head = t.journal.head();
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.status("account-balances").unwrap().serving.unwrap().offset < head {
        assert!(Instant::now() < deadline, "{:?}", p.status("account-balances"));
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = t.journal.events_by_tag("account", 0, usize::MAX).unwrap();
    let payloads: Vec<(String, Value)> =
        events.iter().map(|e| (e.persistence_id.clone(), serde_json::from_slice(&e.payload).unwrap())).collect();
    let view: View = p
        .view_scan("account-balances", "", "", 1000)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
        .collect();
    assert_eq!(view, fold(payloads.iter().map(|(p, v)| (p.as_str(), v))));
    let batches = t.engine.metrics().projection_batches_total.load(Ordering::Relaxed);
    assert!(batches as usize > stored / 3, "small batches: {batches} for {stored} events");
    t.stop();
}
