//! The network edge of the real binary: admin and client tokens, TLS, the check of
//! every path segment, and the connection limits (timeouts, connection count).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mneme_tests::{agent, components_dir, example, json, mneme_bin, raw_http, test_component, Server};
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";
const CLIENT: &str = "client-token-0123456789abcdef";

fn bank() -> tempfile::TempDir {
    components_dir(&[example("bank-account")])
}

fn error_of(body: &str) -> String {
    json(body)["error"].as_str().unwrap_or_else(|| panic!("no JSON error in {body}")).to_string()
}

fn cli(server: &Server, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(mneme_bin())
        .args(args)
        .arg("--server")
        .arg(&server.url)
        .env_remove("MNEME_ADMIN_TOKEN")
        .env_remove("MNEME_CLIENT_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_routes_need_the_admin_token() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let server = Server::start(data.path(), comps.path(), &["--admin-token", ADMIN, "--watch-secs", "0"]);
    let wasm = std::fs::read(example("bank-account")).unwrap();
    let projection = std::fs::read(example("account-balances")).unwrap();
    let admin_routes: [(&str, &str, &[u8]); 4] = [
        ("PUT", "/v1/components/ledger", &wasm),
        ("POST", "/v1/components/bank-account/versions/1/activate", b""),
        ("PUT", "/v1/projections/balances", &projection),
        ("POST", "/v1/projections/balances/versions/1/activate", b""),
    ];
    for (method, path, body) in admin_routes {
        let (s, b) = server.request_with(method, path, body, None);
        assert_eq!(s, 401, "{method} {path}: {b}");
        assert!(error_of(&b).contains("Authorization: Bearer"), "{b}");
        let (s, b) = server.request_with(method, path, body, Some("wrong-token-0123456789abcdef"));
        assert_eq!((s, error_of(&b)), (403, "wrong admin token".to_string()), "{method} {path}");
        let (s, b) = server.request_with(method, path, body, Some(&ADMIN[..ADMIN.len() - 1]));
        assert_eq!(s, 403, "a prefix of the token is wrong: {b}");
        let (s, b) = server.request_with(method, path, body, Some(ADMIN));
        assert_eq!(s, 200, "{method} {path}: {b}");
    }
    // A refused upload is answered even while the client is still sending it
    // (lingering close): never a connection reset instead of the 401.
    let big = vec![0u8; 3 << 20];
    for _ in 0..10 {
        let (s, b) = server.request_with("PUT", "/v1/components/ledger", &big, None);
        assert_eq!(s, 401, "{b}");
    }
    // A malformed Authorization header is a missing token.
    let (s, _) = raw_http(
        &server.addr,
        format!("POST /v1/components/ledger/versions/1/activate HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {ADMIN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    );
    assert_eq!(s, 401);
    // Without a client token, commands, queries, health and metrics stay open.
    assert_eq!(server.send("bank-account", "a", r#"{"type":"CreateAccount"}"#).0, 200);
    assert_eq!(server.get("/v1/entities/bank-account/a/state").0, 200);
    assert_eq!(server.get("/v1/components").0, 200);
    assert_eq!(server.get("/v1/projections").0, 200);
    assert_eq!(server.get("/v1/views/balances/nobody").0, 404, "no token needed; no such key");
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.request("GET", "/metrics", b"").0, 200);

    // The CLI sends the token from the environment, the flag or a file.
    let faulty = test_component("faulty");
    let faulty = faulty.to_str().unwrap();
    let (ok, _, err) = cli(&server, &["deploy", "faulty", faulty], &[]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = cli(&server, &["deploy", "faulty", faulty, "--json"], &[("MNEME_ADMIN_TOKEN", ADMIN)]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["version"], 1);
    let (ok, _, err) =
        cli(&server, &["deploy", "faulty", faulty, "--admin-token", "wrong-token-0123456789abcdef"], &[]);
    assert!(!ok && err.contains("403"), "{err}");
    let file = data.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let (ok, _, err) = cli(&server, &["rollback", "faulty", "1", "--admin-token-file", file.to_str().unwrap()], &[]);
    assert!(ok, "{err}");

    // The projection subcommands: deploy and activate need the admin token, the
    // list and the view do not (no client token is set).
    let balances = example("account-balances");
    let balances = balances.to_str().unwrap();
    let (ok, _, err) = cli(&server, &["deploy-projection", "cli-balances", balances], &[]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) =
        cli(&server, &["deploy-projection", "cli-balances", balances], &[("MNEME_ADMIN_TOKEN", ADMIN)]);
    assert!(ok, "{err}");
    assert!(out.starts_with("projection cli-balances version 1 is active"), "{out}");
    let (ok, out, err) = cli(&server, &["projections"], &[]);
    assert!(ok && out.starts_with("NAME") && out.lines().any(|l| l.starts_with("cli-balances ")), "{out} {err}");
    let (ok, out, err) = cli(&server, &["projections", "--json"], &[]);
    assert!(
        ok && json(&out)["projections"].as_array().unwrap().iter().any(|p| p["name"] == "cli-balances"),
        "{out} {err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = loop {
        let (ok, out, err) = cli(&server, &["view", "cli-balances", "a", "--json"], &[]);
        if ok {
            break json(&out)["value"].clone();
        }
        assert!(err.contains("404") && Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(value, serde_json::json!({"balance": 0, "events": 1}));
    let (ok, out, err) = cli(&server, &["view", "cli-balances", "--prefix", "_", "--json"], &[]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["entries"][0]["key"], "_total", "{out}");
    let (ok, out, err) = cli(&server, &["view", "cli-balances", "--prefix", "_"], &[]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>()[..2], ["KEY     VALUE", r#"_total  {"balance":0,"events":1}"#], "{out}");
    let (ok, _, err) = cli(&server, &["activate-projection", "cli-balances", "1"], &[]);
    assert!(!ok && err.contains("401"), "{err}");
    let token_file = ["--admin-token-file", file.to_str().unwrap()];
    let (ok, _, err) = cli(&server, &[&["activate-projection", "cli-balances", "1"][..], &token_file].concat(), &[]);
    assert!(ok, "{err}");
}

#[test]
fn the_client_token_gates_commands_and_queries() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let server = Server::start(data.path(), comps.path(), &["--admin-token", ADMIN, "--client-token", CLIENT]);
    let create = br#"{"type":"CreateAccount"}"#;
    let (s, b) = server.request_with("POST", "/v1/entities/bank-account/c", create, None);
    assert_eq!(s, 401, "{b}");
    let (s, b) = server.request_with("POST", "/v1/entities/bank-account/c", create, Some("nope-nope-nope-nope-nope"));
    assert_eq!((s, error_of(&b)), (403, "wrong client token".to_string()));
    assert_eq!(server.request_with("POST", "/v1/entities/bank-account/c", create, Some(CLIENT)).0, 200);
    // The admin token opens the client routes too; the client token opens no admin route.
    assert_eq!(server.request_with("GET", "/v1/entities/bank-account/c/state", b"", Some(ADMIN)).0, 200);
    for path in [
        "/v1/entities/bank-account/c/events",
        "/v1/events?tag=account",
        "/v1/topics/t",
        "/v1/components",
        "/v1/projections",
    ] {
        assert_eq!(server.request_with("GET", path, b"", None).0, 401, "{path}");
        assert_eq!(server.request_with("GET", path, b"", Some(CLIENT)).0, 200, "{path}");
    }
    let (s, _) = server.request_with("POST", "/v1/components/bank-account/versions/1/activate", b"", Some(CLIENT));
    assert_eq!(s, 403);
    let projection = std::fs::read(example("account-balances")).unwrap();
    let (s, _) = server.request_with("PUT", "/v1/projections/balances", &projection, Some(CLIENT));
    assert_eq!(s, 403, "a client cannot deploy a projection");
    assert_eq!(server.request_with("GET", "/v1/views/balances/c", b"", None).0, 401);
    assert_eq!(server.request_with("GET", "/v1/views/balances/c", b"", Some(CLIENT)).0, 404, "never deployed");
    assert_eq!(server.request("GET", "/health", b"").0, 200);
    assert_eq!(server.request("GET", "/metrics", b"").0, 200);
    let (ok, out, err) = cli(&server, &["state", "bank-account", "c"], &[("MNEME_CLIENT_TOKEN", CLIENT)]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["seq_nr"], 1);
    let (ok, _, err) = cli(&server, &["state", "bank-account", "c"], &[]);
    assert!(!ok && err.contains("401"), "{err}");
}

fn serve_output(args: &[&str]) -> (bool, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(mneme_bin())
        .args(["serve", "--data"])
        .arg(data.path())
        .args(args)
        .env_remove("MNEME_ADMIN_TOKEN")
        .env_remove("MNEME_CLIENT_TOKEN")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn serve_refuses_a_public_address_without_an_admin_token() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let (ok, err) = serve_output(&["--listen", listen]);
        assert!(!ok, "{listen}");
        assert!(err.contains("without an admin token") && err.contains("--insecure"), "{err}");
    }
    let (ok, err) = serve_output(&["--listen", "127.0.0.1:0", "--admin-token", "short"]);
    assert!(!ok && err.contains("at least 16"), "{err}");
    let (ok, err) = serve_output(&["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent/cert.pem"]);
    assert!(!ok && err.contains("--tls-key"), "{err}");
}

/// A self-signed certificate for localhost: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let (cert, key) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let args = ["--tls-cert", cert_file.to_str().unwrap(), "--tls-key", key_file.to_str().unwrap()];
    let server = Server::start_with(data.path(), comps.path(), &args, Some(&cert));
    assert!(server.url.starts_with("https://"));
    assert_eq!(server.send("bank-account", "t", r#"{"type":"CreateAccount"}"#).0, 200);
    let (s, state) = server.get("/v1/entities/bank-account/t/state");
    assert_eq!((s, state["seq_nr"].clone()), (200, Value::from(1)));
    // A client that does not trust the certificate gets no answer.
    let untrusting = agent(None).get(format!("{}/health", server.url)).call();
    assert!(untrusting.is_err(), "{untrusting:?}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let (s, _) = raw_http(&server.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(10));
    assert_eq!(s, 0);
    // The CLI trusts the certificate given by --ca-cert or MNEME_CA_CERT.
    let ca = cert_file.to_str().unwrap();
    let (ok, out, err) =
        cli(&server, &["send", "bank-account", "t", r#"{"type":"Deposit","amount":7}"#, "--ca-cert", ca], &[]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["balance"], 7);
    let (ok, out, err) = cli(&server, &["state", "bank-account", "t"], &[("MNEME_CA_CERT", ca)]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["seq_nr"], 2);
    let (ok, _, err) = cli(&server, &["state", "bank-account", "t"], &[]);
    assert!(!ok && err.contains("cannot reach"), "{err}");
}

/// Every file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        }
        out.push(p);
    }
}

#[test]
fn every_path_segment_is_checked() {
    // data sits three levels down, so `../../..` from its components directory
    // would land inside `root`, where it is seen.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("a/b/data");
    let comps = root.path().join("comps");
    std::fs::create_dir_all(&comps).unwrap();
    std::fs::copy(example("bank-account"), comps.join("bank-account.wasm")).unwrap();
    let server = Server::start(&data, &comps, &["--admin-token", ADMIN, "--watch-secs", "0"]);
    assert_eq!(server.send("bank-account", "ok", r#"{"type":"CreateAccount"}"#).0, 200);
    let mut before = Vec::new();
    files(root.path(), &mut before);

    let long = "x".repeat(10_000);
    let long_digits = "1".repeat(10_000);
    // (value as sent in the path, reachable as one segment)
    let hostile: Vec<(&str, bool)> = vec![
        ("..", true),
        (".", true),
        ("%2E%2E", true),
        ("%2e", true),
        ("..%2F..%2F..%2Fescaped", true),
        ("a%2Fb", true),
        ("%2F", true),
        ("a%00b", true),
        ("%00", true),
        ("%C3%A9", true),
        ("%FF", true),
        ("%F0%9F%92%A5", true),
        (&long, true),
        (&long_digits, true),
        ("a%7Cb", true),
        ("a|b", true),
        ("a%20b", true),
        ("%20", true),
        ("a%5Cb", true),
        ("a%0D%0Ab", true),
        ("-1", true),
        ("0", true),
        ("", false),
    ];
    // (method, route template, the segment under test, a valid value for the others)
    let routes: &[(&str, &str, &str)] = &[
        ("POST", "/v1/entities/{entity_type}/ok", "entity_type"),
        ("POST", "/v1/entities/bank-account/{entity_id}", "entity_id"),
        ("GET", "/v1/entities/{entity_type}/ok/events", "entity_type"),
        ("GET", "/v1/entities/bank-account/{entity_id}/events", "entity_id"),
        ("GET", "/v1/entities/{entity_type}/ok/state", "entity_type"),
        ("GET", "/v1/entities/bank-account/{entity_id}/state", "entity_id"),
        ("GET", "/v1/topics/{topic}", "topic"),
        ("PUT", "/v1/components/{entity_type}", "entity_type"),
        ("POST", "/v1/components/{entity_type}/versions/1/activate", "entity_type"),
        ("POST", "/v1/components/bank-account/versions/{version}/activate", "version"),
    ];
    let mut failures = Vec::new();
    for (method, template, segment) in routes {
        for (value, reachable) in &hostile {
            let path = template.replace(&format!("{{{segment}}}"), value);
            let body = if *method == "PUT" { "\0asm" } else { r#"{"type":"CreateAccount"}"# };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let (status, text) = raw_http(&server.addr, request.as_bytes(), Duration::from_secs(30));
            let shown = &path[..path.len().min(80)];
            // A value that cannot be a valid segment of that kind: "-1", "0" are fine
            // ids and types, and `...` only fails as a version.
            let valid_elsewhere = matches!((*segment, *value), ("entity_id" | "entity_type" | "topic", "-1" | "0"));
            if status == 0 || status >= 500 {
                failures.push(format!("{method} {shown}: {status} {text}"));
            } else if valid_elsewhere {
                // Valid names: any answer but a server error.
            } else if !reachable {
                if ![400, 404, 405].contains(&status) {
                    failures.push(format!("{method} {shown}: expected 404 for an empty segment, got {status}"));
                }
            } else if status != 400 {
                failures.push(format!("{method} {shown}: expected 400, got {status} {text}"));
            } else if !text.is_empty() && serde_json::from_str::<Value>(&text).is_ok() {
                let error = error_of(&text);
                if !error.contains(&format!("`{segment}`")) && !error.contains("path segment") {
                    failures.push(format!("{method} {shown}: message does not name `{segment}`: {error}"));
                }
            } else if !value.contains('|') {
                // Only what hyper itself refuses before routing (a `|` in the
                // request line) may answer without the API's JSON.
                failures.push(format!("{method} {shown}: 400 without a JSON error: {text:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was written outside the data directory.
    let mut after = Vec::new();
    files(root.path(), &mut after);
    let outside: Vec<_> = after.iter().filter(|p| !before.contains(p) && !p.starts_with(&data)).collect();
    assert!(outside.is_empty(), "files created outside the data directory: {outside:?}");
    let escaped: Vec<_> = after.iter().filter(|p| p.to_string_lossy().contains("escaped")).collect();
    assert!(escaped.is_empty(), "{escaped:?}");
    // And the server still serves.
    assert_eq!(server.send("bank-account", "ok", r#"{"type":"Deposit","amount":1}"#).0, 200);
}

/// Wait until the server closes `tcp`; how long that took.
fn closed_after(mut tcp: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    tcp.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("connection still open after {:?}: {e}", start.elapsed()),
        }
    }
}

#[test]
fn silent_slow_and_idle_connections_are_closed() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let server = Server::start(
        data.path(),
        comps.path(),
        &["--keep-alive-timeout-secs", "4", "--header-timeout-secs", "1", "--body-timeout-secs", "30"],
    );
    // A connection that sends nothing.
    let silent = TcpStream::connect(&server.addr).unwrap();
    let took = closed_after(silent, Duration::from_secs(20));
    assert!(took >= Duration::from_millis(3500) && took < Duration::from_secs(9), "silent: {took:?}");
    // Slowloris: a head that never ends, one byte at a time within the keep-alive
    // timeout, is closed by the header timeout.
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        if slow.write_all(b"X").is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "slowloris connection still open after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_millis(3500), "slowloris closed after {:?}", start.elapsed());
    // Keep-alive: a second request within the timeout is served on the same
    // connection; then the connection is closed when idle.
    let mut kept = TcpStream::connect(&server.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..2 {
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = kept.read(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(1200));
    }
    let took = closed_after(kept, Duration::from_secs(20));
    assert!(took > Duration::from_secs(2) && took < Duration::from_secs(9), "idle keep-alive connection: {took:?}");
}

#[test]
fn a_body_shorter_than_its_length_gets_408() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let server = Server::start(data.path(), comps.path(), &["--body-timeout-secs", "2", "--admin-token", ADMIN]);
    for (method, path) in [("POST", "/v1/entities/bank-account/b"), ("PUT", "/v1/components/ledger")] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 100\r\n\r\n0123456789"
        );
        let start = Instant::now();
        let (status, body) = raw_http(&server.addr, request.as_bytes(), Duration::from_secs(20));
        let took = start.elapsed();
        assert_eq!(status, 408, "{method} {path}: {body}");
        assert!(error_of(&body).contains("--body-timeout-secs"), "{body}");
        assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "{took:?}");
    }
    assert_eq!(server.send("bank-account", "b", r#"{"type":"CreateAccount"}"#).0, 200);
}

#[test]
fn health_answers_while_every_connection_slot_is_taken() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let server = Server::start(data.path(), comps.path(), &["--max-connections", "50"]);
    let components = || {
        raw_http(
            &server.addr,
            b"GET /v1/components HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
    };
    // Take every regular slot with idle connections. A connection the test's own
    // client closed just before (its start-up polls) may still hold a slot until
    // the server reads its end, so an idle connection can land on the overflow
    // path instead: until a request is refused, a regular slot is free; add idle
    // connections and look again (few, so the overflow slots are never all taken).
    let mut idle: Vec<TcpStream> = (0..52).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
    let mut looks = 0;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let (s, body) = components();
        if s == 503 {
            assert!(error_of(&body).contains("--max-connections"), "{body}");
            break;
        }
        assert_eq!(s, 200, "{body}");
        looks += 1;
        assert!(looks < 5, "50 regular slots not taken by {} idle connections", idle.len());
        idle.extend((0..2).map(|_| TcpStream::connect(&server.addr).unwrap()));
    }
    for _ in 0..3 {
        let start = Instant::now();
        let (s, body) = raw_http(
            &server.addr,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_eq!(s, 200, "{body}");
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
    // Everything else is still refused cleanly while the regular slots are taken.
    let (s, body) = components();
    assert_eq!(s, 503, "{body}");
    assert!(error_of(&body).contains("--max-connections"), "{body}");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if components().0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots not given back after the idle connections closed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_still_shuts_down_cleanly_with_connections_open() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let server = Server::start(data.path(), comps.path(), &[]);
    assert_eq!(server.send("bank-account", "s", r#"{"type":"CreateAccount"}"#).0, 200);
    let _idle = TcpStream::connect(&server.addr).unwrap();
    let start = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}

/// `serve --config FILE`: the file's settings apply, a flag wins over the file, and
/// a key that names no flag stops the start with its name.
#[test]
fn a_config_file_sets_what_the_flags_leave_open() {
    let data = tempfile::tempdir().unwrap();
    let comps = bank();
    let config = data.path().join("mneme.toml");
    std::fs::write(&config, format!("admin-token = \"{ADMIN}\"\nmax-command-bytes = 64\n")).unwrap();
    let config = config.to_str().unwrap();
    let server = Server::start(data.path(), comps.path(), &["--config", config, "--max-command-bytes", "4096"]);
    let wasm = std::fs::read(test_component("faulty")).unwrap();
    assert_eq!(server.request("PUT", "/v1/components/faulty", &wasm).0, 401, "the file's admin token gates deploys");
    assert_eq!(server.request_with("PUT", "/v1/components/faulty", &wasm, Some(ADMIN)).0, 200);
    let deposit = format!(r#"{{"type":"CreateAccount","padding":"{}"}}"#, "x".repeat(200));
    assert_eq!(server.send("bank-account", "a", &deposit).0, 200, "the flag's 4096 bytes win over the file's 64");
    assert!(server.terminate().success());

    let bad = data.path().join("bad.toml");
    std::fs::write(&bad, "lisen = \"0.0.0.0:1\"\n").unwrap();
    let out = Command::new(mneme_bin())
        .args(["serve", "--data"])
        .arg(data.path())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`lisen` is not a setting of `mneme serve`"), "{err}");
}
