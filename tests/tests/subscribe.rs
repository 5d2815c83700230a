//! Live subscriptions through the real binary: Server-Sent Events from an offset
//! (all events, by tag, one entity), catch-up then live, resume with
//! `Last-Event-ID` across a restart, keep-alive comments, bad input.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, Server};
use serde_json::Value;

/// One SSE message as read off the wire.
#[derive(Debug, Clone)]
enum Msg {
    Event { id: u64, data: Value },
    Error(String),
    Comment,
}

/// Reads an SSE response on a thread; messages arrive on the channel.
fn open(url: &str, last_event_id: Option<u64>) -> mpsc::Receiver<Msg> {
    let (tx, rx) = mpsc::channel();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", &id.to_string());
    }
    let mut resp = request.call().unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.body_mut().as_reader());
        let (mut id, mut event) = (None, String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let sent = if line.starts_with(':') {
                tx.send(Msg::Comment)
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse::<u64>().unwrap());
                Ok(())
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
                Ok(())
            } else if let Some(v) = line.strip_prefix("data:") {
                if event == "error" {
                    tx.send(Msg::Error(v.trim().to_string()))
                } else {
                    tx.send(Msg::Event {
                        id: id.take().expect("an id before the data"),
                        data: serde_json::from_str(v.trim()).unwrap(),
                    })
                }
            } else {
                event.clear();
                Ok(())
            };
            if sent.is_err() {
                return;
            }
        }
    });
    rx
}

/// Events until `n` have arrived (comments skipped), or panic after `secs`.
fn take(rx: &mpsc::Receiver<Msg>, n: usize, secs: u64) -> Vec<(u64, Value)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::Event { id, data }) => out.push((id, data)),
            Ok(Msg::Comment) => {}
            Ok(Msg::Error(e)) => panic!("stream error: {e}"),
            Err(_) => panic!("only {} of {n} events arrived within {secs} s", out.len()),
        }
    }
    out
}

fn deposit(server: &Server, id: &str, amount: u64) {
    let (status, body) = server.send("bank-account", id, &format!(r#"{{"type":"Deposit","amount":{amount}}}"#));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_subscriber_from_offset_zero_gets_every_event_once_in_order_while_writes_go_on() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    for i in 0..4 {
        assert_eq!(server.send("bank-account", &format!("s{i}"), r#"{"type":"CreateAccount"}"#).0, 200);
    }
    // Some events before the subscription (catch-up), the rest while it follows.
    for a in 0..20 {
        deposit(&server, &format!("s{}", a % 4), a + 1);
    }
    let all = open(&format!("{}/v1/events/stream?from=0", server.url), None);
    let tagged = open(&format!("{}/v1/events/stream?tag=account&from=3", server.url), None);
    let entity = open(&format!("{}/v1/entities/bank-account/s1/events/stream?from=2", server.url), None);
    std::thread::scope(|s| {
        for t in 0..4 {
            let server = &server;
            s.spawn(move || {
                for a in 0..50 {
                    deposit(server, &format!("s{t}"), 1000 + a);
                }
            });
        }
    });
    let total = 4 + 20 + 200;
    let got = take(&all, total, 60);
    let offsets: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>(), "every offset once, in order");
    for (id, data) in &got {
        assert_eq!(data["offset"].as_u64(), Some(*id), "the id is the event's offset");
    }
    // Each one is the event the paging API shows.
    let (_, page) = server.get("/v1/events?tag=account&from=0&limit=10000");
    let paged: Vec<Value> = page["events"].as_array().unwrap().clone();
    assert_eq!(got.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), paged);
    let got = take(&tagged, total - 2, 60);
    assert_eq!(got.first().unwrap().0, 3);
    let got = take(&entity, 1 + 5 + 50 - 1, 60);
    let seqs: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(seqs, (2..=56).collect::<Vec<_>>(), "an entity's stream is keyed by its sequence numbers");
    assert!(got.iter().all(|(_, d)| d["persistence_id"] == "bank-account|s1"));
}

#[test]
fn many_subscribers_of_one_tag_each_get_every_event_once_in_order_while_writes_go_on() {
    // Subscribers that follow the same tag share the pages read for them; each must
    // still see exactly the journal, whether it joined before, during or after the
    // writes, and the ones at the head must wake for every write.
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    for i in 0..4 {
        assert_eq!(server.send("bank-account", &format!("m{i}"), r#"{"type":"CreateAccount"}"#).0, 200);
    }
    let url = format!("{}/v1/events/stream?tag=account&from=0", server.url);
    let early: Vec<_> = (0..6).map(|_| open(&url, None)).collect();
    let mut late = Vec::new();
    std::thread::scope(|s| {
        for t in 0..4 {
            let server = &server;
            s.spawn(move || {
                for a in 0..40 {
                    deposit(server, &format!("m{t}"), a + 1);
                }
            });
        }
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(30));
            late.push(open(&url, None));
        }
    });
    late.push(open(&url, None));
    let total = 4 + 4 * 40;
    let (_, page) = server.get("/v1/events?tag=account&from=0&limit=10000");
    let journal: Vec<Value> = page["events"].as_array().unwrap().clone();
    assert_eq!(journal.len(), total);
    for (n, rx) in early.iter().chain(&late).enumerate() {
        let got = take(rx, total, 60);
        assert_eq!(got.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), journal, "subscriber {n}");
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err_and(|e| e == mpsc::RecvTimeoutError::Timeout));
    }
    // A write after all of them reached the head reaches every one.
    deposit(&server, "m0", 7);
    for rx in early.iter().chain(&late) {
        let got = take(rx, 1, 30);
        assert_eq!(got[0].0, total as u64 + 1);
    }
}

#[test]
fn a_reconnect_with_last_event_id_across_a_restart_misses_nothing_and_repeats_nothing() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    assert_eq!(server.send("bank-account", "r", r#"{"type":"CreateAccount"}"#).0, 200);
    for a in 0..30 {
        deposit(&server, "r", a + 1);
    }
    let stream = open(&format!("{}/v1/events/stream?tag=account", server.url), None);
    let first = take(&stream, 10, 30);
    let last = first.last().unwrap().0;
    drop(stream);
    assert!(server.terminate().success());
    let server = Server::start(data.path(), comps.path(), &[]);
    for a in 0..10 {
        deposit(&server, "r", 100 + a);
    }
    let stream = open(&format!("{}/v1/events/stream?tag=account", server.url), Some(last));
    let rest = take(&stream, 31 + 10 - 10, 30);
    let ids: Vec<u64> = first.iter().chain(&rest).map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=41).collect::<Vec<_>>(), "nothing missed, nothing repeated");
    assert!(stream.recv_timeout(Duration::from_millis(300)).is_err_and(|e| e == mpsc::RecvTimeoutError::Timeout));
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len());
}

#[test]
fn an_idle_stream_sends_keep_alive_comments_and_bad_positions_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &["--stream-keep-alive-secs", "1"]);
    let stream = open(&format!("{}/v1/events/stream?tag=nothing-here", server.url), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut comments = 0;
    while comments < 2 {
        match stream.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Comment) => comments += 1,
            other => panic!("expected keep-alive comments, got {other:?}"),
        }
    }
    let (status, body) = server.get("/v1/events/stream?from=abc");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("from"), "{body}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent.get(format!("{}/v1/events/stream", server.url)).header("last-event-id", "x1").call().unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"), "{body}");
    let (status, _) = server.get("/v1/entities/bank-account/a%7Cb/events/stream");
    assert_eq!(status, 400);
}
