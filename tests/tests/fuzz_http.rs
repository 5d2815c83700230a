//! HTTP fuzzing of a real `mneme serve`: generated methods, paths (hostile
//! segments: `..`, `%2F`, `%00`, unicode, very long, empty, absolute paths, odd
//! query strings), headers, framings and bodies, written as raw bytes to a socket,
//! so malformed requests are possible. After every request:
//!
//! * the process is alive and `GET /health` answers 200;
//! * no 5xx, except the documented ones with their documented cause: 500 for a
//!   guest fault (`guest fault in ...`), 503 when a stash is full, 504 when a
//!   command stays stashed past the reply timeout;
//! * for a request that is valid HTTP/1.1 (RFC 9112 framing, RFC 3986 characters
//!   in the target, one Host, a header section under 8 KiB and 90 fields, no
//!   `Expect`), every error body is JSON `{"error": "..."}` and every 2xx body of a
//!   JSON route is JSON; a request the HTTP layer must or may refuse (malformed,
//!   over its limits) may get any answer under 500 or a closed connection;
//! * no file or directory appears or changes outside the data directory: the
//!   server runs with its data directory, components directory and working
//!   directory inside one fresh temporary directory whose whole tree (outside the
//!   data directory) is compared before and after, plus a few paths beside it.
//!   Decoys make traversal visible: `decoy/00000001.wasm` beside the data directory
//!   looks like a stored component version, so a path that escapes the component
//!   store and "activates" it writes `decoy/ACTIVE`;
//! * `GET /v1/components` lists only valid entity type names;
//! * an events query returns only what it selects: every event of
//!   `/v1/events?tag=T` carries T, in offset order from `from`; every event of
//!   `/v1/entities/{type}/{id}/events` belongs to that entity, in seq nr order.
//!
//! A fixed corpus of hostile requests runs first, then generated ones. Violations
//! are collected by kind and route (the shortest request of each is kept) and
//! reported together at the end, so one run shows every hole it found.
//!
//! CI form: `cargo test -p mneme-tests --test fuzz_http` (400 generated requests).
//! Long form: `PROPTEST_CASES=20000 cargo test -p mneme-tests --release --test fuzz_http -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mneme_tests::raw_http::{Conn, ReadError, Response};
use mneme_tests::{example, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Requests

#[derive(Clone, Debug)]
enum Framing {
    /// `content-length` = body length.
    Length,
    /// `transfer-encoding: chunked`, body cut into chunks of these sizes (last takes the rest).
    Chunked(Vec<usize>),
    /// Body bytes with no length header (they become the start of a "next request").
    NoLength,
    /// `content-length` smaller than the body.
    ShortLength,
    /// An invalid `content-length` value.
    BadLength(String),
    /// Two different `content-length` headers.
    DoubleLength,
    /// `content-length` larger than the body, then the write side is closed.
    Truncated,
}

#[derive(Clone)]
enum Req {
    Http {
        route: &'static str,
        method: String,
        target: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        framing: Framing,
    },
    /// Arbitrary bytes.
    Raw(Vec<u8>),
}

fn escape(bytes: &[u8], max: usize) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        s.push_str(&format!("...({} bytes)", bytes.len()));
    }
    s
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", escape(&self.bytes(), 400))
    }
}

/// RFC 9110 token characters (methods, header names).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// RFC 3986 characters of an origin-form target (path and query), with every `%`
/// starting a valid escape.
fn is_rfc3986_target(t: &[u8]) -> bool {
    if t.first() != Some(&b'/') {
        return false;
    }
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&c);
    let mut i = 0;
    while i < t.len() {
        let c = t[i];
        if !allowed(c) {
            return false;
        }
        if c == b'%' {
            if i + 2 >= t.len() || !(t[i + 1].is_ascii_hexdigit() && t[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        i += 1;
    }
    true
}

impl Req {
    fn bytes(&self) -> Vec<u8> {
        let (method, target, headers, body, framing) = match self {
            Req::Raw(b) => return b.clone(),
            Req::Http { method, target, headers, body, framing, .. } => (method, target, headers, body, framing),
        };
        let mut out = Vec::new();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: 127.0.0.1\r\n");
        for (n, v) in headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        match framing {
            Framing::Length | Framing::Truncated => {
                let n = if matches!(framing, Framing::Truncated) { body.len() + 10 } else { body.len() };
                out.extend_from_slice(format!("content-length: {n}\r\n\r\n").as_bytes());
                out.extend_from_slice(body);
            }
            Framing::Chunked(sizes) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                let mut rest: &[u8] = body;
                for &s in sizes {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, r) = rest.split_at(s.clamp(1, rest.len()));
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                    rest = r;
                }
                if !rest.is_empty() {
                    out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                    out.extend_from_slice(rest);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Framing::NoLength => {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body);
            }
            Framing::ShortLength => {
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len() / 2).as_bytes());
                out.extend_from_slice(body);
            }
            Framing::BadLength(v) => {
                out.extend_from_slice(format!("content-length: {v}\r\n\r\n").as_bytes());
                out.extend_from_slice(body);
            }
            Framing::DoubleLength => {
                out.extend_from_slice(
                    format!("content-length: {}\r\ncontent-length: {}\r\n\r\n", body.len(), body.len() + 1).as_bytes(),
                );
                out.extend_from_slice(body);
            }
        }
        out
    }

    /// Whether this is a request a conforming HTTP/1.1 server must parse and route:
    /// then the application answers it, and the API's rules apply to the answer.
    fn valid(&self) -> bool {
        let Req::Http { method, target, headers, body, framing, .. } = self else { return false };
        let framing_ok = match framing {
            Framing::Length | Framing::Chunked(_) => true,
            Framing::NoLength => body.is_empty(),
            _ => false,
        };
        framing_ok
            && is_token(method.as_bytes())
            && is_rfc3986_target(target)
            && headers.len() < 90
            && headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>() < 8192
            && headers.iter().all(|(n, v)| {
                is_token(n.as_bytes())
                    && !n.eq_ignore_ascii_case("host")
                    && !n.eq_ignore_ascii_case("content-length")
                    && !n.eq_ignore_ascii_case("transfer-encoding")
                    && !n.eq_ignore_ascii_case("expect")
                    && v.iter().all(|&c| c == b'\t' || (0x20..0x7f).contains(&c))
            })
    }

    /// The same request, repaired into valid HTTP/1.1: the target percent-encoded
    /// where RFC 3986 needs it, a token method, sound framing, valid headers.
    fn make_well_formed(&mut self, natural: &str) {
        let Req::Http { method, target, headers, body, framing, .. } = self else { return };
        let mut t = Vec::new();
        if target.first() != Some(&b'/') {
            t.push(b'/');
        }
        let mut i = 0;
        while i < target.len() {
            let c = target[i];
            let escape_ok = c == b'%'
                && i + 2 < target.len()
                && target[i + 1].is_ascii_hexdigit()
                && target[i + 2].is_ascii_hexdigit();
            if (c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&c)) || escape_ok {
                t.push(c);
            } else {
                t.extend_from_slice(format!("%{c:02X}").as_bytes());
            }
            i += 1;
        }
        *target = t;
        if !is_token(method.as_bytes()) {
            *method = natural.to_string();
        }
        match framing {
            Framing::Length | Framing::Chunked(_) => {}
            Framing::NoLength => body.clear(),
            _ => *framing = Framing::Length,
        }
        headers.retain(|(n, v)| {
            is_token(n.as_bytes())
                && !["host", "content-length", "transfer-encoding", "expect"].iter().any(|h| n.eq_ignore_ascii_case(h))
                && !n.starts_with("x-h-")
                && v.len() < 1024
                && v.iter().all(|&c| c == b'\t' || (0x20..0x7f).contains(&c))
        });
    }

    fn is_head(&self) -> bool {
        matches!(self, Req::Http { method, .. } if method == "HEAD")
    }

    fn route(&self) -> &'static str {
        match self {
            Req::Http { route, .. } => route,
            Req::Raw(_) => "raw bytes",
        }
    }
}

// ---------------------------------------------------------------------------
// Generation

/// Percent-encode every byte (for absolute paths placed in one segment).
fn pct_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Percent-encode what is not unreserved.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Pools {
    /// Segments that lead out of a directory the server builds paths in.
    traversal: Vec<String>,
    segments: Vec<String>,
    versions: Vec<String>,
    queries: Vec<String>,
    bodies: Vec<Vec<u8>>,
    header_values: Vec<Vec<u8>>,
}

fn pools(env: &Env) -> Pools {
    let decoy = env.decoy.to_str().unwrap().to_string();
    let parent = env.parent.path().to_str().unwrap().to_string();
    let mut traversal: Vec<String> = [
        "..%2F..%2Fdecoy",
        "%2e%2e%2f%2e%2e%2fdecoy",
        "%2E%2E%2F%2E%2E%2Fdecoy",
        "..%2Fcomponents%2Fbank-account",
        "..%2F..%2Fx",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    traversal.push(pct_all(&decoy));
    traversal.push(pct(&decoy));
    traversal.push(format!("..%2F..%2F..%2F{}%2Fdecoy", pct(env.parent.path().file_name().unwrap().to_str().unwrap())));
    let mut segments: Vec<String> = [
        "..",
        ".",
        "...",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "..%2Fdecoy",
        "..%2F..%2F..%2Fx",
        "..%5C..%5Cdecoy",
        "..%2Fcache",
        "..%2F..%2Fcomponents",
        "%2F",
        "%2F%2F",
        "%00",
        "a%00b",
        "bank-account%00",
        "%",
        "%zz",
        "%4",
        "%FF",
        "%C3%A9t%C3%A9",
        "%F0%9F%92%A5",
        "%E2%80%AE",
        "é",
        "💥",
        "",
        "bank-account",
        "bank-account",
        "task-manager",
        "blog-post",
        "faulty",
        "nope",
        "alice",
        "acct.1",
        "a|b",
        "a%7Cb",
        "a%20b",
        "a+b",
        "~",
        "CON",
        "NUL",
        "-",
        "_",
        "0",
        "1",
        "-1",
        "18446744073709551615",
        "18446744073709551616",
        "__proto__",
        "$(id)",
        ";ls",
        "'",
        "a'b",
        "<x>",
        "%3Cx%3E",
        "a\"b",
        "%22",
        "\\",
        "%5C",
        "a:b",
        "@",
        "%2e%2e%5c",
        "..;",
        "%252e%252e%252f",
        "ACTIVE",
        "00000001.wasm",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    segments.push("a".repeat(64));
    segments.push("a".repeat(65));
    segments.push("a".repeat(200));
    segments.push("a".repeat(201));
    segments.push("b".repeat(5000));
    segments.push(pct(&format!("{parent}/x")));
    let versions = [
        "1",
        "1",
        "1",
        "1",
        "1",
        "1",
        "0",
        "2",
        "-1",
        "abc",
        "%31",
        "18446744073709551615",
        "18446744073709551616",
        "1.0",
        "",
        "%00",
        "..",
        "1%2F..%2F..",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let long_tag = "t".repeat(3000);
    let queries = [
        "",
        "?",
        "??",
        "?from=0",
        "?from=1&limit=1",
        "?from=-1",
        "?from=18446744073709551616",
        "?limit=0",
        "?limit=10000000000",
        "?limit=-5",
        "?tag=account",
        "?tag=",
        "?tag=%00",
        "?tag=%FF",
        "?tag=a%7Cb",
        "?tag=account&tag=x",
        "?from=1&from=2",
        "?&&&",
        "?=",
        "?from",
        "?limit=1e3",
        "?%",
        "?a=%zz",
        "?tag=..%2F..%2Fx",
        "?tag=%C3%A9",
        "?tag=account&from=0&limit=10000",
        "?tag=account%00",
        "?tag=account%00%00%00%00%00%00",
        "?tag=account%00%00%00%00%00%00%00&from=0",
        "#frag",
        "?tag=a+b",
        "?from=%31",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("?tag={long_tag}")])
    .collect();
    let bank = std::fs::read(example("bank-account")).unwrap();
    let mut deep = vec![b'['; 5000];
    deep.extend(vec![b']'; 5000]);
    let bodies: Vec<Vec<u8>> = [
        &br#"{"type":"CreateAccount"}"#[..],
        br#"{"type":"Deposit","amount":5}"#,
        br#"{"type":"Withdraw","amount":3}"#,
        br#"{"type":"GetBalance"}"#,
        br#"{"type":"Deposit","amount":-1}"#,
        br#"{"type":"Deposit","amount":1e400}"#,
        br#"{"type":"Deposit","amount":18446744073709551615}"#,
        br#"{"type":"Deposit","amount":18446744073709551616}"#,
        br#"{"type":"Withdraw","amount":18446744073709551615}"#,
        br#"{"type":"StartTask","taskId":"../../x"}"#,
        br#"{"type":"StartTask","taskId":"t1"}"#,
        br#"{"type":"EndTask","taskId":"t1"}"#,
        br#"{"type":"AddPost","content":{"postId":"..\u0000","title":"\u202e","body":""}}"#,
        br#"{}"#,
        br#"[]"#,
        br#"null"#,
        br#""str""#,
        br#"{"type":"#,
        b"\xff\xfe\x00",
        b"\0asm\x0d\x00\x01\x00garbage",
        b"",
    ]
    .iter()
    .map(|b| b.to_vec())
    .chain([deep, vec![b' '; (1 << 20) + 10], bank])
    .collect();
    let header_values: Vec<Vec<u8>> = [
        &b""[..],
        b"..",
        b"../../x",
        b"application/json",
        b"text/plain",
        b"Deposited",
        b"a\x00b",
        b"\xc3\xa9",
        b"x\ty",
        b"100-continue",
        b"close",
        b"chunked",
    ]
    .iter()
    .map(|b| b.to_vec())
    .chain([vec![b'm'; 300], vec![b'h'; 70_000]])
    .collect();
    Pools { traversal, segments, versions, queries, bodies, header_values }
}

fn segment(p: &Pools) -> BoxedStrategy<String> {
    let chars: Vec<char> = "abz09-_.~%2F:@!$&'()*+,;=/ é\u{0}?#".chars().collect();
    prop_oneof![
        2 => prop::sample::select(p.traversal.clone()),
        4 => prop::sample::select(p.segments.clone()),
        1 => prop::collection::vec(prop::sample::select(chars), 0..12).prop_map(|c| c.into_iter().collect::<String>()),
    ]
    .boxed()
}

fn request(p: &Pools) -> BoxedStrategy<Req> {
    let seg = segment(p);
    let routes: Vec<(&'static str, &'static str)> = vec![
        ("POST", "/v1/entities/{s}/{s}"),
        ("GET", "/v1/entities/{s}/{s}/events{q}"),
        ("GET", "/v1/entities/{s}/{s}/state{q}"),
        ("GET", "/v1/events{q}"),
        ("GET", "/v1/topics/{s}{q}"),
        ("GET", "/v1/components{q}"),
        ("PUT", "/v1/components/{s}"),
        ("POST", "/v1/components/{s}/versions/{v}/activate"),
        ("POST", "/v1/components/{s}/versions/{v}/activate"),
        ("POST", "/v1/components/{s}/versions/{v}/activate"),
        ("GET", "/health{q}"),
        ("GET", "/metrics"),
        ("GET", "/{s}/{s}/{s}"),
        ("GET", "{s}"),
    ];
    let methods: Vec<String> = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "FOO", "get", "G\0T", "",
        "GET GET",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let header_names: Vec<String> = [
        "content-type",
        "mneme-manifest",
        "accept",
        "connection",
        "expect",
        "x-forwarded-for",
        "transfer-encoding",
        "bad header",
        "",
        "host",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let http = (
        prop::sample::select(routes),
        prop::collection::vec(seg, 4),
        prop::sample::select(p.versions.clone()),
        prop::sample::select(p.queries.clone()),
        prop_oneof![4 => Just(None), 1 => prop::sample::select(methods).prop_map(Some)],
        prop::collection::vec((prop::sample::select(header_names), prop::sample::select(p.header_values.clone())), 0..4),
        prop_oneof![5 => Just(0usize), 1 => Just(150usize)],
        prop::sample::select(p.bodies.clone()),
        prop_oneof![3 => Just(true), 2 => Just(false)],
        prop_oneof![
            12 => Just(Framing::Length),
            2 => prop::collection::vec(1..64usize, 1..4).prop_map(Framing::Chunked),
            1 => Just(Framing::NoLength),
            1 => Just(Framing::ShortLength),
            1 => prop::sample::select(vec!["abc".to_string(), "-1".into(), "".into(), "18446744073709551616".into(), "1, 2".into()]).prop_map(Framing::BadLength),
            1 => Just(Framing::DoubleLength),
            1 => Just(Framing::Truncated),
        ],
    )
        .prop_map(|((natural, template), segs, version, query, method, headers, many_headers, body, well_formed, framing)| {
            let mut segs = segs.into_iter();
            let mut target = String::new();
            let mut rest = template;
            while let Some(i) = rest.find('{') {
                target.push_str(&rest[..i]);
                let (hole, after) = rest[i..].split_at(3);
                match hole {
                    "{s}" => target.push_str(&segs.next().unwrap()),
                    "{v}" => target.push_str(&version),
                    "{q}" => target.push_str(&query),
                    _ => unreachable!(),
                }
                rest = after;
            }
            target.push_str(rest);
            let mut headers: Vec<(String, Vec<u8>)> = headers;
            for i in 0..many_headers {
                headers.push((format!("x-h-{i}"), b"v".to_vec()));
            }
            let body = if natural == "GET" && method.is_none() && !matches!(framing, Framing::Length) { Vec::new() } else { body };
            let mut req = Req::Http {
                route: template,
                method: method.unwrap_or_else(|| natural.to_string()),
                target: target.into_bytes(),
                headers,
                body,
                framing,
            };
            if well_formed {
                req.make_well_formed(natural);
            }
            req
        });
    prop_oneof![
        20 => http,
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Req::Raw),
        1 => prop::collection::vec(prop::sample::select(b"GET / HTTP/1.1\r\n: \0\xff%".to_vec()), 0..200).prop_map(Req::Raw),
    ]
    .boxed()
}

/// Hostile requests that always run first.
fn corpus(env: &Env) -> Vec<Req> {
    let decoy = env.decoy.to_str().unwrap().to_string();
    let post = |target: &str, body: &[u8]| Req::Http {
        route: "corpus",
        method: "POST".into(),
        target: target.as_bytes().to_vec(),
        headers: vec![],
        body: body.to_vec(),
        framing: Framing::Length,
    };
    let get = |target: &str| Req::Http {
        route: "corpus",
        method: "GET".into(),
        target: target.as_bytes().to_vec(),
        headers: vec![],
        body: vec![],
        framing: Framing::Length,
    };
    let put = |target: &str, body: &[u8]| Req::Http {
        route: "corpus",
        method: "PUT".into(),
        target: target.as_bytes().to_vec(),
        headers: vec![],
        body: body.to_vec(),
        framing: Framing::Length,
    };
    let bank = std::fs::read(example("bank-account")).unwrap();
    vec![
        get("/health"),
        post("/v1/entities/bank-account/alice", br#"{"type":"CreateAccount"}"#),
        post("/v1/components/..%2F..%2Fdecoy/versions/1/activate", b""),
        post(&format!("/v1/components/{}/versions/1/activate", pct_all(&decoy)), b""),
        post("/v1/components/..%2Fcomponents%2Fbank-account/versions/1/activate", b""),
        post("/v1/components/..%2F..%2Fx/versions/1/activate", b""),
        post("/v1/components/%2E%2E/versions/1/activate", b""),
        put("/v1/components/..%2F..%2Fdecoy", &bank),
        put("/v1/components/%2E%2E", &bank),
        put(&format!("/v1/components/{}", pct_all(&decoy)), &bank),
        get("/v1/entities/..%2F..%2Fdecoy/alice/events"),
        get("/v1/entities/bank-account/..%2F..%2Fdecoy/state"),
        get("/v1/topics/..%2F..%2Fdecoy"),
        get("/v1/events?tag=..%2F..%2Fdecoy"),
        get("/v1/events?tag=%00&from=0"),
        get("/v1/events?tag=account%00%00%00%00%00%00&from=0"),
        get("/v1/events?tag=account%00"),
        get("/v1/events?tag=accoun"),
        get("/v1/entities/bank-account/alic/events"),
        get("/v1/entities/bank-account/alice"),
        Req::Http {
            route: "corpus",
            method: "DELETE".into(),
            target: b"/v1/entities/bank-account/alice".to_vec(),
            headers: vec![],
            body: vec![],
            framing: Framing::Length,
        },
        post("/v1/entities/bank-account/alice", &{
            let mut d = vec![b'['; 100_000];
            d.extend(vec![b']'; 100_000]);
            d
        }),
        Req::Raw(
            b"GET /health HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
    ]
}

// ---------------------------------------------------------------------------
// The server and its surroundings

struct Env {
    parent: tempfile::TempDir,
    data: PathBuf,
    comps: PathBuf,
    cwd: PathBuf,
    decoy: PathBuf,
    /// Paths beside the temporary directory that a traversal might reach.
    beside: Vec<PathBuf>,
    server: Server,
}

const SERVE_ARGS: [&str; 6] = ["--reply-timeout-secs", "1", "--stash-capacity", "2", "--watch-secs", "0"];

impl Env {
    fn new() -> Env {
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("data");
        let comps = parent.path().join("components");
        let cwd = parent.path().join("cwd");
        let decoy = parent.path().join("decoy");
        for d in [&data, &comps, &cwd, &decoy] {
            std::fs::create_dir(d).unwrap();
        }
        for name in ["bank-account", "task-manager", "blog-post"] {
            std::fs::copy(example(name), comps.join(format!("{name}.wasm"))).unwrap();
        }
        // Looks like a stored component version to a store that wandered off.
        std::fs::copy(example("bank-account"), decoy.join("00000001.wasm")).unwrap();
        let outside = parent.path().parent().unwrap();
        let beside =
            vec![outside.join("x"), outside.join("decoy"), outside.join("ACTIVE"), outside.join("00000001.wasm")]
                .into_iter()
                .filter(|p| !p.exists())
                .collect();
        let server = Server::start_in(&data, &comps, &SERVE_ARGS, Some(&cwd));
        Env { parent, data, comps, cwd, decoy, beside, server }
    }

    fn restart(&mut self) {
        let old = std::mem::replace(
            &mut self.server,
            Server::start_in(&self.data, &self.comps, &SERVE_ARGS, Some(&self.cwd)),
        );
        drop(old);
    }

    /// Every path under the temporary directory outside the data directory, with
    /// its kind, length and modification time.
    fn tree(&self) -> BTreeMap<PathBuf, (bool, u64, SystemTime)> {
        fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, (bool, u64, SystemTime)>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let p = e.path();
                if p == skip {
                    continue;
                }
                let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
                out.insert(
                    p.clone(),
                    (m.is_dir(), if m.is_dir() { 0 } else { m.len() }, m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                );
                if m.is_dir() {
                    walk(&p, skip, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.parent.path(), &self.data, &mut out);
        for p in &self.beside {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                out.insert(p.clone(), (m.is_dir(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
        out
    }

    /// Remove what a request created in the temporary directory outside the data
    /// directory (so later requests are judged on their own). Paths beside the
    /// temporary directory are only reported, never removed.
    fn restore(&self, baseline: &BTreeMap<PathBuf, (bool, u64, SystemTime)>) {
        let now = self.tree();
        for (p, (dir, ..)) in now.iter().rev() {
            if !baseline.contains_key(p) && p.starts_with(self.parent.path()) {
                let _ = if *dir { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
            }
        }
    }

    fn health(&mut self) -> Result<(), String> {
        if !self.server.alive() {
            return Err("the server process exited".into());
        }
        let mut conn =
            Conn::connect(self.server.addr(), Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
        match conn.request("GET", "/health", b"") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("/health answered {} {}", r.status, r.body_text())),
            Err(e) => Err(format!("/health: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------
// Judging one exchange

fn valid_type_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The documented 5xx answers, recognised by status and message.
fn documented_5xx(status: u16, error: &str) -> bool {
    match status {
        500 => error.starts_with("guest fault in"),
        503 => error.contains("stash"),
        504 => error.contains("stashed"),
        _ => false,
    }
}

fn error_message(r: &Response) -> Option<String> {
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    let obj = v.as_object()?;
    let e = obj.get("error")?.as_str()?;
    (!e.is_empty()).then(|| e.to_string())
}

/// Problems with the answer to `req` (an empty list when it is fine).
fn judge(req: &Req, answer: &Result<Response, ReadError>) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let valid = req.valid();
    match answer {
        Err(e) => {
            if valid {
                v.push(("no answer to a valid request".into(), e.to_string()));
            }
        }
        Ok(r) => {
            let error = error_message(r);
            let shown = format!("{} {}", r.status, escape(&r.body, 300));
            if r.status >= 500 && !documented_5xx(r.status, error.as_deref().unwrap_or("")) {
                v.push((format!("undocumented {}", r.status), shown.clone()));
            }
            if valid && r.status >= 400 && !req.is_head() {
                let json_type = r.header("content-type").is_some_and(|t| t.starts_with("application/json"));
                if error.is_none() || !json_type {
                    v.push((
                        format!("{} without a JSON error body", r.status),
                        format!("{shown} content-type {:?}", r.header("content-type")),
                    ));
                }
            }
            let metrics = matches!(req, Req::Http { target, .. } if target.starts_with(b"/metrics"));
            let success_with_body = valid && (200..300).contains(&r.status) && r.status != 204;
            if success_with_body && !req.is_head() && !metrics && serde_json::from_slice::<Value>(&r.body).is_err() {
                v.push((format!("{} with a body that is not JSON", r.status), shown.clone()));
            }
        }
    }
    v
}

/// Percent-decoding (and `+` as space in a query), as the server's extractors do.
fn pct_decode(s: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' if i + 2 < s.len() && s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit() => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
                continue;
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// What a successful answer to an events query says about the journal: every
/// event of `/v1/events?tag=T` carries T, offsets increase and start at `from`;
/// every event of `/v1/entities/{type}/{id}/events` belongs to that entity, in
/// seq nr order from `from`.
fn judge_events(req: &Req, r: &Response) -> Option<String> {
    let Req::Http { method, target, .. } = req else { return None };
    if method != "GET" || r.status != 200 {
        return None;
    }
    let (path, query) = match target.iter().position(|&c| c == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (&target[..], &b""[..]),
    };
    let params: Vec<(Vec<u8>, Vec<u8>)> = query
        .split(|&c| c == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&c| c == b'=') {
            Some(i) => (pct_decode(&p[..i], true), pct_decode(&p[i + 1..], true)),
            None => (pct_decode(p, true), Vec::new()),
        })
        .collect();
    let param = |name: &[u8]| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let from: Option<u64> = param(b"from").and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse().ok());
    let body: Value = serde_json::from_slice(&r.body).ok()?;
    let events = body["events"].as_array()?;
    let segs: Vec<Vec<u8>> = path.split(|&c| c == b'/').map(|s| pct_decode(s, false)).collect();
    if path == b"/v1/events" {
        let tag = String::from_utf8(param(b"tag")?).ok()?;
        let mut last = None;
        for e in events {
            let offset = e["offset"].as_u64().unwrap_or(0);
            if !e["tags"].as_array().is_some_and(|t| t.iter().any(|t| t.as_str() == Some(tag.as_str()))) {
                return Some(format!(
                    "tag query for {tag:?} returned an event tagged {}: {}",
                    e["tags"], e["persistence_id"]
                ));
            }
            if last.is_some_and(|l| offset <= l) || from.is_some_and(|f| offset < f) {
                return Some(format!("tag query for {tag:?}: offset {offset} out of order (from {from:?})"));
            }
            last = Some(offset);
        }
    } else if segs.len() == 6 && segs[1] == b"v1" && segs[2] == b"entities" && segs[5] == b"events" {
        let pid = format!("{}|{}", String::from_utf8_lossy(&segs[3]), String::from_utf8_lossy(&segs[4]));
        for (expected_seq, e) in (from.unwrap_or(1).max(1)..).zip(events.iter()) {
            if e["persistence_id"].as_str() != Some(pid.as_str()) || e["seq_nr"].as_u64() != Some(expected_seq) {
                return Some(format!(
                    "events of {pid:?} from {expected_seq} returned {} {}",
                    e["persistence_id"], e["seq_nr"]
                ));
            }
        }
    }
    None
}

#[derive(Default)]
struct Findings {
    /// kind -> (count, routes, shortest request, what was seen)
    by_kind: BTreeMap<String, (usize, BTreeSet<String>, Req, String)>,
    requests: usize,
    valid: usize,
    statuses: BTreeMap<String, usize>,
    /// Invalid type names already reported (each is reported once, for the request that added it).
    bad_types: BTreeSet<String>,
}

impl Findings {
    fn add(&mut self, kind: String, req: &Req, seen: String) {
        let entry = self.by_kind.entry(kind).or_insert_with(|| (0, BTreeSet::new(), req.clone(), seen.clone()));
        entry.0 += 1;
        entry.1.insert(req.route().to_string());
        if req.bytes().len() < entry.2.bytes().len() {
            entry.2 = req.clone();
            entry.3 = seen;
        }
    }
}

fn exchange(env: &Env, req: &Req) -> Result<Response, ReadError> {
    let mut conn = Conn::connect(env.server.addr(), Duration::from_secs(10)).map_err(ReadError::Broken)?;
    let bytes = req.bytes();
    let stream = conn.stream();
    // A write error is no verdict: the server may answer (413, 400) and close
    // before reading everything; the answer is read below either way.
    let _ = stream.write_all(&bytes);
    if matches!(req, Req::Http { framing: Framing::Truncated, .. }) {
        let _ = stream.shutdown(Shutdown::Write);
    }
    conn.exchange(b"", req.is_head())
}

fn run_one(env: &mut Env, findings: &mut Findings, req: &Req) {
    let before = env.tree();
    let answer = exchange(env, req);
    findings.requests += 1;
    if req.valid() {
        findings.valid += 1;
    }
    let status = match &answer {
        Ok(r) => r.status.to_string(),
        Err(ReadError::Closed) => "closed".into(),
        Err(_) => "broken".into(),
    };
    *findings.statuses.entry(status).or_default() += 1;
    for (kind, seen) in judge(req, &answer) {
        findings.add(kind, req, seen);
    }
    if let Some(wrong) = answer.as_ref().ok().and_then(|r| judge_events(req, r)) {
        findings.add("events query answered with events it does not select".into(), req, wrong);
    }
    // Files outside the data directory.
    let after = env.tree();
    if after != before {
        let added: Vec<String> =
            after.keys().filter(|p| !before.contains_key(*p)).map(|p| p.display().to_string()).collect();
        let changed: Vec<String> = after
            .iter()
            .filter(|(p, m)| before.get(*p).is_some_and(|b| b != *m))
            .map(|(p, _)| p.display().to_string())
            .collect();
        let removed: Vec<String> =
            before.keys().filter(|p| !after.contains_key(*p)).map(|p| p.display().to_string()).collect();
        findings.add(
            "file system changed outside the data directory".into(),
            req,
            format!("added {added:?} changed {changed:?} removed {removed:?}"),
        );
        env.restore(&before);
    }
    // Only valid entity type names are served.
    if matches!(req, Req::Http { route, .. } if route.contains("components") || *route == "corpus") {
        if let Ok(mut conn) = Conn::connect(env.server.addr(), Duration::from_secs(10)) {
            if let Ok(r) = conn.request("GET", "/v1/components", b"") {
                let list: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let bad: BTreeSet<String> = list["components"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c["entity_type"].as_str())
                            .filter(|t| !valid_type_name(t))
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                let new: BTreeSet<String> = bad.difference(&findings.bad_types).cloned().collect();
                if !new.is_empty() {
                    findings.bad_types.extend(new.iter().cloned());
                    findings.add("component registered under an invalid type name".into(), req, format!("{new:?}"));
                }
            }
        }
    }
    if let Err(e) = env.health() {
        findings.add("server down after the request".into(), req, e);
        env.restart();
    }
}

#[test]
fn hostile_http_requests_are_refused_cleanly_and_touch_nothing_outside_the_data_directory() {
    let mut config = Config { failure_persistence: None, ..Config::default() };
    if std::env::var("PROPTEST_CASES").is_err() {
        config.cases = 400;
    }
    let started = Instant::now();
    let mut env = Env::new();
    let mut findings = Findings::default();
    for req in corpus(&env) {
        run_one(&mut env, &mut findings, &req);
    }
    let corpus_len = findings.requests;
    let strategy = request(&pools(&env));
    let mut runner = TestRunner::new(config);
    let env_cell = std::cell::RefCell::new(env);
    let findings_cell = std::cell::RefCell::new(findings);
    runner
        .run(&strategy, |req| {
            run_one(&mut env_cell.borrow_mut(), &mut findings_cell.borrow_mut(), &req);
            Ok(())
        })
        .unwrap();
    let env = env_cell.into_inner();
    let findings = findings_cell.into_inner();
    println!(
        "fuzz tally: {} requests ({corpus_len} corpus, {} generated; {} valid HTTP), answers {:?}, {:.1}s",
        findings.requests,
        findings.requests - corpus_len,
        findings.valid,
        findings.statuses,
        started.elapsed().as_secs_f64()
    );
    drop(env);
    if !findings.by_kind.is_empty() {
        let report: Vec<String> = findings
            .by_kind
            .iter()
            .map(|(kind, (n, routes, req, seen))| {
                format!("* {kind}: {n} requests, routes {routes:?}\n    shortest: {req:?}\n    answer:   {seen}")
            })
            .collect();
        let names = if findings.bad_types.is_empty() {
            String::new()
        } else {
            format!("\ninvalid type names registered: {:?}", findings.bad_types)
        };
        panic!("{} kinds of violation:\n{}{names}", report.len(), report.join("\n"));
    }
}
