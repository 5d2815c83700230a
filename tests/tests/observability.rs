//! What `/metrics` tells an operator about where a command's time goes, per
//! entity type: commands and failures, command latency (the wait for the group
//! commit included), time in the guest, the journal's write (sync) time and batch
//! size, entities in memory, stashed commands, and the journal's size on disk.

use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, metric, Server};

fn eventually(what: &str, server: &Server, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = server.request("GET", "/metrics", b"");
        assert_eq!(status, 200, "{text}");
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}, never seen in\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_show_latency_guest_time_writes_and_stashes_per_entity_type() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account"), example("task-manager")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    let disk_at_start: u64 = server.metric("mneme_journal_disk_bytes");
    assert!(disk_at_start > 0);

    // 10 accounts, each created and given 4 deposits; one withdrawal refused.
    for i in 0..10 {
        assert_eq!(server.send("bank-account", &format!("a{i}"), r#"{"type":"CreateAccount"}"#).0, 200);
        for _ in 0..4 {
            assert_eq!(server.send("bank-account", &format!("a{i}"), r#"{"type":"Deposit","amount":5}"#).0, 200);
        }
    }
    let (status, _) = server.send("bank-account", "nobody", r#"{"type":"Withdraw","amount":5}"#);
    assert_eq!(status, 409, "unhandled: the account does not exist");
    // An unknown type is refused and gets no label of its own.
    assert_eq!(server.send("no-such-type", "x", "{}").0, 404);

    let text = server.request("GET", "/metrics", b"").1;
    let bank = |name: &str| -> f64 { metric(&text, &format!("{name}{{entity_type=\"bank-account\"}}")) };
    assert_eq!(bank("mneme_entity_commands_total"), 51.0);
    assert_eq!(bank("mneme_entity_commands_failed_total"), 1.0);
    assert_eq!(bank("mneme_command_seconds_count"), 51.0);
    assert!(bank("mneme_command_seconds_sum") > 0.0);
    let all: u64 = metric(&text, "mneme_command_seconds_bucket{entity_type=\"bank-account\",le=\"+Inf\"}");
    assert_eq!(all, 51);
    // One guest call per command: the Rust SDK's components decide and apply the
    // events in one (`handle-command-and-apply`).
    assert_eq!(bank("mneme_guest_call_seconds_count"), 51.0);
    assert!(!text.contains("no-such-type"), "{text}");

    // Every event went through a write that the histograms saw.
    let events: f64 = metric(&text, "mneme_events_persisted_total");
    assert_eq!(events, 50.0);
    assert_eq!(metric::<f64>(&text, "mneme_journal_write_events_sum"), events);
    let writes: u64 = metric(&text, "mneme_journal_writes_total");
    assert_eq!(metric::<u64>(&text, "mneme_journal_write_seconds_count"), writes);
    assert!(metric::<u64>(&text, "mneme_journal_write_events_count") <= writes);
    assert!(metric::<f64>(&text, "mneme_journal_write_seconds_sum") > 0.0);
    // Every command the shards took up was counted waiting in a shard's queue
    // (the unknown type is refused before it reaches one).
    assert_eq!(metric::<u64>(&text, "mneme_command_queue_seconds_count"), 51);
    let disk: u64 = metric(&text, "mneme_journal_disk_bytes");
    assert!(disk > disk_at_start, "the journal grew: {disk_at_start} -> {disk}");

    // The gauges follow within a shard's tick: 10 accounts and the one asked about.
    eventually("11 accounts in memory", &server, |t| {
        t.contains("mneme_entity_active{entity_type=\"bank-account\"} 11")
    });

    // A stashed command shows in the gauge while it waits, and leaves it when handled.
    let send = |id: &str, cmd: &str| assert_eq!(server.send("task-manager", id, cmd).0, 200);
    send("m", r#"{"type":"StartTask","taskId":"t1"}"#);
    std::thread::scope(|s| {
        let waiting = s.spawn(|| server.send("task-manager", "m", r#"{"type":"StartTask","taskId":"t2"}"#));
        eventually("one command stashed", &server, |t| {
            t.contains("mneme_stashed_commands{entity_type=\"task-manager\"} 1")
        });
        send("m", r#"{"type":"EndTask","taskId":"t1"}"#);
        let (status, reply) = waiting.join().unwrap();
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["started"], "t2");
    });
    eventually("no command stashed", &server, |t| t.contains("mneme_stashed_commands{entity_type=\"task-manager\"} 0"));
    assert!(server.terminate().success());
}

/// Which component version serves each type, how many are stored and their size:
/// what an operator checks after a deploy or a rollback.
#[test]
fn metrics_show_each_components_active_version() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account"), example("task-manager")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    let v1 = std::fs::read(example("bank-account")).unwrap();
    let gauge = |text: &str, name: &str| -> u64 { metric(text, &format!("{name}{{entity_type=\"bank-account\"}}")) };

    let text = server.request("GET", "/metrics", b"").1;
    assert_eq!(gauge(&text, "mneme_component_active_version"), 1);
    assert_eq!(gauge(&text, "mneme_component_versions"), 1);
    assert_eq!(gauge(&text, "mneme_component_bytes"), v1.len() as u64);
    assert_eq!(metric::<u64>(&text, "mneme_component_active_version{entity_type=\"task-manager\"}"), 1);
    let hash = server.get("/v1/components").1["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entity_type"] == "bank-account")
        .map(|c| c["hash"].as_str().unwrap().to_string())
        .unwrap();
    let info = format!("mneme_component_info{{entity_type=\"bank-account\",version=\"1\",hash=\"{}\",", &hash[..12]);
    assert!(text.contains(&info), "{info} not in\n{text}");

    // A deploy over HTTP, then a rollback.
    let v2 = mneme_tests::rebuilt(&v1, "v2");
    assert_eq!(server.request("PUT", "/v1/components/bank-account", &v2).0, 200);
    let text = server.request("GET", "/metrics", b"").1;
    assert_eq!(gauge(&text, "mneme_component_active_version"), 2);
    assert_eq!(gauge(&text, "mneme_component_versions"), 2);
    assert_eq!(gauge(&text, "mneme_component_bytes"), v2.len() as u64);
    assert_eq!(server.request("POST", "/v1/components/bank-account/versions/1/activate", b"").0, 200);
    let text = server.request("GET", "/metrics", b"").1;
    assert_eq!(gauge(&text, "mneme_component_active_version"), 1);
    assert_eq!(gauge(&text, "mneme_component_versions"), 2);
}
