//! `--otlp-endpoint`: every command is a trace span (with its recovery and its
//! call into the guest) sent to an OpenTelemetry collector over OTLP/HTTP, part
//! of the caller's trace when the request carried a `traceparent` header.
//!
//! The collector here is a listener that decodes the OTLP protobuf the server
//! sends (`ExportTraceServiceRequest`), as a collector does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mneme_tests::{components_dir, example, raw_http, Server};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

/// One exported span: what the test looks at.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
    service: String,
}

/// Accept OTLP/HTTP exports on a free port; every span decoded goes to the channel.
fn collector() -> (String, mpsc::Receiver<Span>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                // Keep-alive: one request after another on the connection.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    assert!(line.starts_with("POST /v1/traces "), "unexpected request: {line}");
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" {
                            break;
                        }
                        let (name, value) = h.split_once(':').unwrap();
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap();
                        }
                        if name.eq_ignore_ascii_case("content-type") {
                            assert_eq!(value.trim(), "application/x-protobuf");
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    for span in decode(&body) {
                        let _ = tx.send(span);
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn decode(body: &[u8]) -> Vec<Span> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut spans = Vec::new();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        let service = resource.iter().find(|a| a.key == "service.name").map(|a| text(&a.value)).unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                spans.push(Span {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    attrs: s.attributes.iter().map(|a| (a.key.clone(), text(&a.value))).collect(),
                    service: service.clone(),
                });
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Spans received until `done` says the ones wanted are there (or a deadline).
fn wait_for(rx: &mpsc::Receiver<Span>, seen: &mut Vec<Span>, what: &str, done: impl Fn(&[Span]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(span) => seen.push(span),
            Err(_) => panic!("{what}: not exported within 15 s; spans seen: {seen:#?}"),
        }
    }
}

fn post(server: &Server, path: &str, body: &str, traceparent: Option<&str>) -> u16 {
    let tp = traceparent.map(|t| format!("traceparent: {t}\r\n")).unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{tp}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(&server.addr().to_string(), request.as_bytes(), Duration::from_secs(10)).0
}

#[test]
fn commands_are_spans_in_the_callers_trace_exported_over_otlp() {
    let (endpoint, rx) = collector();
    let data = tempfile::tempdir().unwrap();
    let comps = components_dir(&[example("bank-account")]);
    let server = Server::start(data.path(), comps.path(), &["--otlp-endpoint", &endpoint]);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{caller}-01");
    let path = "/v1/entities/bank-account/acc-1";
    assert_eq!(post(&server, path, r#"{"type":"CreateAccount"}"#, Some(&traceparent)), 200);
    assert_eq!(post(&server, path, r#"{"type":"Deposit","amount":7}"#, None), 200);
    assert_eq!(post(&server, "/v1/entities/bank-account/nobody", r#"{"type":"Withdraw","amount":1}"#, None), 409);

    // Exported while the server runs (the batch goes out every few seconds).
    let mut seen = Vec::new();
    let count = |s: &[Span], name: &str| s.iter().filter(|s| s.name == name).count();
    wait_for(&rx, &mut seen, "three commands, their requests, guest calls and recoveries", |s| {
        count(s, "command") >= 3
            && count(s, "request") >= 3
            && count(s, "handle_command") >= 3
            && count(s, "recover") >= 2
    });
    let commands: Vec<&Span> = seen.iter().filter(|s| s.name == "command").collect();
    let first = commands.iter().find(|s| s.trace_id == trace).expect("the first command is in the caller's trace");
    assert_eq!(first.service, "mneme");
    for (k, v) in [("entity.type", "bank-account"), ("entity.id", "acc-1"), ("component.version", "1"), ("seq_nr", "1")]
    {
        assert_eq!(first.attrs.get(k).map(String::as_str), Some(v), "{k} of {first:#?}");
    }
    assert_eq!(first.attrs.get("events").map(String::as_str), Some("1"));
    assert_eq!(first.attrs.get("outcome").map(String::as_str), Some("ok"));
    // command <- request <- the caller's span.
    let request = seen.iter().find(|s| s.name == "request" && s.trace_id == trace).expect("the request span");
    assert_eq!(request.parent, caller, "{request:#?}");
    assert_eq!(first.parent, request.span_id);
    // Its children: the recovery of the new entity and the call into the guest.
    let children = |name: &str| seen.iter().filter(|s| s.name == name && s.parent == first.span_id).count();
    assert_eq!(children("handle_command"), 1, "{seen:#?}");
    assert_eq!(children("recover"), 1, "{seen:#?}");
    let recover = seen.iter().find(|s| s.name == "recover" && s.parent == first.span_id).unwrap();
    assert_eq!(recover.attrs.get("events").map(String::as_str), Some("0"), "{recover:#?}");
    assert_eq!(recover.attrs.get("snapshot_seq_nr").map(String::as_str), Some("0"));

    // The second command: a trace of its own, seq nr 2, no recovery.
    let second = commands.iter().find(|s| s.attrs.get("seq_nr").map(String::as_str) == Some("2")).unwrap();
    assert_ne!(second.trace_id, trace);
    assert_eq!(seen.iter().filter(|s| s.name == "recover" && s.parent == second.span_id).count(), 0);
    // A refused command says why.
    let refused = commands.iter().find(|s| s.attrs.get("entity.id").map(String::as_str) == Some("nobody")).unwrap();
    let outcome = &refused.attrs["outcome"];
    assert!(outcome.starts_with("command not handled by `bank-account`"), "{outcome}");

    // A clean shutdown exports what is still buffered.
    assert_eq!(post(&server, path, r#"{"type":"Deposit","amount":1}"#, None), 200);
    assert!(server.terminate().success());
    let mut last = Vec::new();
    wait_for(&rx, &mut last, "the last command's span", |s| {
        s.iter().any(|s| s.name == "command" && s.attrs.get("seq_nr").map(String::as_str) == Some("3"))
    });
}

#[test]
fn a_bad_otlp_endpoint_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(mneme_tests::mneme_bin())
        .args(["serve", "--data"])
        .arg(data.path())
        .args(["--otlp-endpoint", "collector:4318"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--otlp-endpoint `collector:4318`: not an http:// or https:// URL"), "{stderr}");
}
