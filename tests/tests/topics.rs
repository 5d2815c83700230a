//! Durable topics through the real binary: messages published by entities are
//! stored with their events, read from a position after a kill -9, and streamed as
//! Server-Sent Events (`id:` the position, resumed with `Last-Event-ID`, live
//! messages, keep-alive comments).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mneme_tests::{components_dir, test_component, Server};
use serde_json::{json, Value};

/// An open `GET .../stream` connection and what it has sent so far.
struct Stream {
    tcp: TcpStream,
    text: String,
}

impl Stream {
    fn open(server: &Server, path: &str, last_event_id: Option<&str>) -> Stream {
        let mut tcp = TcpStream::connect(&server.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n");
        tcp.write_all(request.as_bytes()).unwrap();
        Stream { tcp, text: String::new() }
    }

    /// Read until `done` holds for what arrived (or fail after 10 s).
    fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !done(&self.text) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the stream sent:\n{}", self.text);
            match self.tcp.read(&mut buf) {
                Ok(0) => panic!("the stream closed; it sent:\n{}", self.text),
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {} // read timeout: try again
            }
        }
    }

    /// The events received: (id, data as JSON).
    fn events(&self) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        let mut id = None;
        for line in self.text.lines() {
            if let Some(v) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                out.push((id.take().expect("data without id"), serde_json::from_str(v.trim()).unwrap()));
            }
        }
        out
    }

    fn payloads(&self) -> Vec<(u64, Value)> {
        self.events().into_iter().map(|(id, data)| (id, data["payload"].clone())).collect()
    }
}

fn record(server: &Server, value: &str) {
    let (s, body) = server.send("faulty", "p", &format!(r#"{{"type":"Record","value":"{value}"}}"#));
    assert_eq!(s, 200, "{body}");
}

#[test]
fn topics_survive_kill_9_and_stream_as_server_sent_events() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[test_component("faulty")]);
    let flags = ["--stream-keep-alive-secs", "1"];
    let server = Server::start(data.path(), comps.path(), &flags);
    for v in ["a", "b", "c"] {
        record(&server, v);
    }
    server.kill();

    let server = Server::start(data.path(), comps.path(), &flags);
    let (s, page) = server.get("/v1/topics/faulty-records?from=2");
    assert_eq!(s, 200, "{page}");
    let messages = page["messages"].as_array().unwrap();
    let read: Vec<(u64, Value)> =
        messages.iter().map(|m| (m["seq_nr"].as_u64().unwrap(), m["payload"].clone())).collect();
    assert_eq!(read, [(2, json!("b")), (3, json!("c"))]);
    assert_eq!(messages[0]["source"], "faulty|p");
    assert_eq!(
        (page["next_from"].as_u64(), page["head"].as_u64(), page["first"].as_u64()),
        (Some(4), Some(3), Some(1))
    );

    // Resume after the message with id 1: b and c, then live ones, then keep-alive.
    let mut stream = Stream::open(&server, "/v1/topics/faulty-records/stream", Some("1"));
    stream.until("b and c", |t| t.contains("id: 3") || t.contains("id:3"));
    assert!(stream.text.starts_with("HTTP/1.1 200"), "{}", stream.text);
    assert!(stream.text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", stream.text);
    record(&server, "d");
    stream.until("the live message", |t| t.contains("id: 4") || t.contains("id:4"));
    assert_eq!(stream.payloads(), [(2, json!("b")), (3, json!("c")), (4, json!("d"))]);
    stream.until("a keep-alive comment", |t| t.contains(":keep-alive") || t.contains(": keep-alive"));

    // From a position, and from the start; a bad Last-Event-ID is refused.
    let mut from3 = Stream::open(&server, "/v1/topics/faulty-records/stream?from=3", None);
    from3.until("c and d", |t| t.contains("id: 4") || t.contains("id:4"));
    assert_eq!(from3.payloads(), [(3, json!("c")), (4, json!("d"))]);
    let mut bad = Stream::open(&server, "/v1/topics/faulty-records/stream", Some("x"));
    bad.until("an answer", |t| t.contains("\r\n\r\n"));
    assert!(bad.text.starts_with("HTTP/1.1 400"), "{}", bad.text);
    // What the entity published after its recoveries, before the kill and after.
    let mut recovered = Stream::open(&server, "/v1/topics/faulty-recovered/stream", None);
    recovered.until("both recoveries' messages", |t| t.contains("id: 2") || t.contains("id:2"));
    assert_eq!(recovered.payloads(), [(1, json!({"values": 0})), (2, json!({"values": 3}))]);
}

#[test]
fn topic_retention_serves_the_newest_messages() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[test_component("faulty")]);
    let server = Server::start(data.path(), comps.path(), &["--topic-retention", "2"]);
    for v in ["a", "b", "c", "d"] {
        record(&server, v);
    }
    let (_, page) = server.get("/v1/topics/faulty-records?from=1");
    let positions: Vec<u64> =
        page["messages"].as_array().unwrap().iter().map(|m| m["seq_nr"].as_u64().unwrap()).collect();
    assert_eq!(positions, [3, 4]);
    assert_eq!(page["first"], 3);
    let mut stream = Stream::open(&server, "/v1/topics/faulty-records/stream", Some("0"));
    stream.until("the retained messages", |t| t.contains("id: 4") || t.contains("id:4"));
    assert_eq!(stream.payloads(), [(3, json!("c")), (4, json!("d"))]);
}

#[test]
fn open_streams_end_when_the_server_shuts_down() {
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[test_component("faulty")]);
    let server = Server::start(data.path(), comps.path(), &[]);
    record(&server, "a");
    let mut stream = Stream::open(&server, "/v1/topics/faulty-records/stream", None);
    stream.until("the message", |t| t.contains("id: 1") || t.contains("id:1"));
    let started = Instant::now();
    assert!(server.terminate().success());
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown waited {:?} for the stream", started.elapsed());
}
