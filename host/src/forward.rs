//! Several hosts: any host answers any request. A command or state query for an
//! entity whose partition another host owns is forwarded to that host's
//! advertised URL and its answer passed back as it is (or, with `--redirect`,
//! answered `307` to it). A forwarded request carries [`FORWARDED_BY`]: the
//! receiving host never forwards it again; if it does not own the entity it
//! answers [`not_owner`] without running it.
//!
//! While a partition moves (its owner died, or it is handed to a joining host),
//! the request waits for the new owner (`api::owner_gate`, up to the handoff
//! wait), as it would wait in Akka's shard region. It is sent again only when it
//! surely was not run: no owner yet, the owner could not be connected to, or the
//! owner answered [`NOT_OWNER`]. A request that was sent and got no answer is not
//! sent again ([`lost`], `502`): the owner may have run it.
//!
//! Architecture invariant: this module knows HTTP and who owns what, nothing of
//! the engine's insides, Wasm or storage.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, request::Parts, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::cluster::Ownership;
use crate::journal::postgres::leases::Holder;
use crate::names::partition_of;

/// Set on a forwarded request: the node id of the host that forwarded it.
pub const FORWARDED_BY: &str = "mneme-forwarded-by";

/// Request headers passed on to the owner (`traceparent` and `tracestate`: the
/// command's span on the owner stays in the caller's trace).
const PASSED_ON: [&str; 6] = ["authorization", "content-type", "mneme-manifest", "accept", "traceparent", "tracestate"];

/// Where a request for an entity goes.
pub enum Route {
    /// This host owns it.
    Here,
    /// Another host owns it.
    Elsewhere(Holder),
    /// No host holds its partition right now (a failover is under way).
    Nobody(u32),
}

pub fn route(ownership: &Ownership, pid: &str) -> Route {
    let partition = partition_of(pid);
    if ownership.epoch(partition).is_some() {
        return Route::Here;
    }
    match ownership.holder(partition) {
        Some(h) if h.node != ownership.node() && !h.url.is_empty() => Route::Elsewhere(h),
        _ => Route::Nobody(partition),
    }
}

/// `503` with `Retry-After: 1` and a JSON error body.
pub fn unavailable(message: String) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": message }))).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `307` to the same path on the owner.
pub fn redirect(holder: &Holder, parts: &Parts) -> Response {
    let target = format!("{}{}", holder.url, parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    match HeaderValue::from_str(&target) {
        Ok(location) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => unavailable(format!("the owner's URL `{target}` is not a valid header")),
    }
}

/// Set on a `503` that a host answers to a forwarded request for an entity it
/// does not own (any more): the command was not run, so the forwarding host may
/// send it on to the new owner.
pub const NOT_OWNER: &str = "mneme-not-owner";

/// `503` to a forwarded request whose entity this host does not own.
pub fn not_owner(pid: &str) -> Response {
    let mut r = unavailable(format!(
        "this host does not own `{pid}` (partition {}); it was not run here: send it to the owner",
        partition_of(pid)
    ));
    r.headers_mut().insert(NOT_OWNER, HeaderValue::from_static("1"));
    r
}

/// A request to pass on: what of it goes to the owner.
#[derive(Clone)]
pub struct Outgoing {
    get: bool,
    path_and_query: String,
    headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Outgoing {
    pub fn new(parts: &Parts, body: Bytes) -> Outgoing {
        let headers = PASSED_ON
            .iter()
            .filter_map(|&name| Some((name, parts.headers.get(name)?.to_str().ok()?.to_string())))
            .collect();
        Outgoing {
            get: parts.method == Method::GET,
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            headers,
            body,
        }
    }
}

/// What became of a forwarded request.
pub enum Sent {
    /// The owner answered (whatever it answered).
    Answered(Response),
    /// The host did not own the entity and did not run the request.
    NotOwner,
    /// The request never reached the host (connection refused, no connection in
    /// time): safe to send again.
    NotSent(String),
    /// The request was sent but no answer came back: the host may or may not have
    /// run it.
    Lost(String),
}

/// Whether `e` happened before any byte of the request left: only then is
/// sending it elsewhere sure not to run it twice.
fn before_sending(e: &ureq::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        ureq::Error::Io(io) => {
            matches!(io.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable)
        }
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// Passes requests on to other hosts over keep-alive connections.
#[derive(Clone)]
pub struct Forwarder {
    agent: ureq::Agent,
}

impl Default for Forwarder {
    fn default() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_global(Some(Duration::from_secs(60)))
            .max_idle_connections_per_host(64)
            .build();
        Forwarder { agent: config.into() }
    }
}

impl Forwarder {
    /// Send the request to `holder`.
    pub async fn forward(&self, me: &str, holder: &Holder, request: Outgoing) -> Sent {
        let agent = self.agent.clone();
        let me = me.to_string();
        let url = format!("{}{}", holder.url, request.path_and_query);
        let sent = tokio::task::spawn_blocking(move || -> Result<(u16, bool, Option<String>, Vec<u8>), ureq::Error> {
            let mut response = if request.get {
                let mut call = agent.get(&url).header(FORWARDED_BY, &me);
                for (name, value) in &request.headers {
                    call = call.header(*name, value);
                }
                call.call()?
            } else {
                let mut call = agent.post(&url).header(FORWARDED_BY, &me);
                for (name, value) in &request.headers {
                    call = call.header(*name, value);
                }
                call.send(&request.body[..])?
            };
            let status = response.status().as_u16();
            let not_owner = response.headers().contains_key(NOT_OWNER);
            let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
            let bytes = response.body_mut().with_config().limit(64 << 20).read_to_vec()?;
            Ok((status, not_owner, content_type, bytes))
        })
        .await;
        match sent {
            Ok(Ok((503, true, _, _))) => Sent::NotOwner,
            Ok(Ok((status, _, content_type, bytes))) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut r = (status, bytes).into_response();
                if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
                    r.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                Sent::Answered(r)
            }
            Ok(Err(e)) if before_sending(&e) => Sent::NotSent(e.to_string()),
            Ok(Err(e)) => Sent::Lost(e.to_string()),
            Err(e) => Sent::Lost(format!("forwarding failed: {e}")),
        }
    }
}

/// `502`: the owner was sent the request and did not answer. Whether it ran is
/// unknown, so it is not sent again; the client decides (a state query tells).
pub fn lost(holder: &Holder, why: &str) -> Response {
    let message = format!(
        "the entity's owner, host `{}` at {}, was sent the request and did not answer ({why}): \
         it may or may not have been carried out",
        holder.node, holder.url
    );
    (StatusCode::BAD_GATEWAY, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    //! What the forwarder makes of real sockets: only a request that surely did not
    //! run may be sent again.
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    fn holder(url: String) -> Holder {
        Holder { partition: 0, node: "other".into(), url, epoch: 1 }
    }

    fn deposit() -> Outgoing {
        let request = axum::http::Request::post("/v1/entities/bank-account/a1").body(()).unwrap();
        let (parts, ()) = request.into_parts();
        Outgoing::new(&parts, Bytes::from_static(br#"{"type":"Deposit","amount":1}"#))
    }

    /// A host on a thread that reads one request and does `then` with the socket
    /// and the request's bytes.
    fn host(then: impl FnOnce(std::net::TcpStream, Vec<u8>) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(br#"{"type":"Deposit","amount":1}"#) {
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                seen.extend_from_slice(&buf[..n]);
            }
            then(socket, seen);
        });
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_is_not_sent_and_may_go_elsewhere() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let sent = Forwarder::default().forward("me", &holder(url), deposit()).await;
        assert!(matches!(sent, Sent::NotSent(_)), "a closed port: not sent");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_that_took_the_request_and_died_lost_it_and_answers_502() {
        let url = host(|socket, _| drop(socket));
        let h = holder(url);
        match Forwarder::default().forward("me", &h, deposit()).await {
            Sent::Lost(why) => assert_eq!(lost(&h, &why).status(), StatusCode::BAD_GATEWAY),
            _ => panic!("a request read by a host that then closed the connection must count as lost"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_the_owner_is_told_apart_from_any_other_503() {
        let answer = |not_owner: bool| {
            host(move |mut socket, _| {
                let extra = if not_owner { "mneme-not-owner: 1\r\n" } else { "" };
                let reply = format!("HTTP/1.1 503 Service Unavailable\r\n{extra}content-length: 2\r\n\r\n{{}}");
                socket.write_all(reply.as_bytes()).unwrap();
            })
        };
        let forwarder = Forwarder::default();
        let sent = forwarder.forward("me", &holder(answer(true)), deposit()).await;
        assert!(matches!(sent, Sent::NotOwner), "503 with mneme-not-owner: not run there");
        match forwarder.forward("me", &holder(answer(false)), deposit()).await {
            Sent::Answered(r) => assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE),
            _ => panic!("any other 503 is the owner's answer, passed back"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_owner_gets_the_callers_token_manifest_and_trace_context() {
        let (tx, rx) = std::sync::mpsc::channel();
        let url = host(move |mut socket, seen| {
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
            tx.send(String::from_utf8_lossy(&seen).to_lowercase()).unwrap();
        });
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let request = axum::http::Request::post("/v1/entities/bank-account/a1")
            .header("authorization", "Bearer client-token-0123456789")
            .header("mneme-manifest", "Deposit.v2")
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=1")
            .header("cookie", "not=passed")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let outgoing = Outgoing::new(&parts, Bytes::from_static(br#"{"type":"Deposit","amount":1}"#));
        let sent = Forwarder::default().forward("me", &holder(url), outgoing).await;
        assert!(matches!(sent, Sent::Answered(_)));
        let seen = rx.recv().unwrap();
        for line in [
            "authorization: bearer client-token-0123456789",
            "mneme-manifest: deposit.v2",
            &format!("traceparent: {traceparent}"),
            "tracestate: vendor=1",
            "mneme-forwarded-by: me",
        ] {
            assert!(seen.contains(line), "{line} not passed on:\n{seen}");
        }
        assert!(!seen.contains("cookie"), "only the headers named are passed on:\n{seen}");
    }
}
