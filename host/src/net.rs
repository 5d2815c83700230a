//! The network edge of `mneme serve`: the accept loop, TLS, and the limits that keep
//! slow, silent or too many clients from holding the server.
//!
//! Each connection is served by hyper's HTTP/1.1 server with the API's router, and
//! bounded in time and number:
//!
//! * **keep-alive timeout**: a connection with no request in progress, fresh or
//!   between requests, is closed when it sends nothing for this long;
//! * **header timeout** (slowloris): once the first byte of a request head has come,
//!   the whole head must come within this time;
//! * **write stall**: a client that stops reading a response is disconnected after
//!   the keep-alive timeout without progress;
//! * **body timeout**: enforced by the API (`408`), see `ApiConfig::body_timeout`;
//! * **TLS handshake**: must finish within the header timeout;
//! * **connections**: at most `max_connections` are served. Beyond that, up to
//!   [`OVERFLOW_SLOTS`] more are accepted on an *overflow* path that answers
//!   `GET /health` and `503` to anything else, one request per connection and at most
//!   [`OVERFLOW_WAIT`] of waiting for it; past those, a connection is accepted and
//!   closed at once. So `/health` answers while every regular slot is held.
//!
//! A connection that hyper closes with request bytes still unread (an early `401`,
//! `413` or `408`) is closed the way nginx's lingering close does it: the write side
//! is shut down and what the client still sends is read and dropped, at most
//! [`LINGER`] and [`LINGER_BYTES`], so the client reads its answer instead of a
//! connection reset.
//!
//! Architecture invariant: the edge knows nothing of the engine; it serves whatever
//! router it is given.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// Connections accepted beyond `max_connections`, served only `/health` (and `503`).
pub const OVERFLOW_SLOTS: usize = 32;
/// How long an overflow connection may take to send its one request.
pub const OVERFLOW_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for requests in progress before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Lingering close: how long, and how many bytes, to read and drop before closing.
pub const LINGER: Duration = Duration::from_secs(2);
pub const LINGER_BYTES: usize = 4 << 20;

/// Limits of the listener (the body timeout is the API's).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A request head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// A connection without a request in progress is closed after this long silent.
    pub keep_alive_timeout: Duration,
    /// Connections served at once (more get the overflow path, see the module doc).
    pub max_connections: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Where `--tls-cert` and `--tls-key` point.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM: the server certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Read the certificate chain and key and make a TLS acceptor (rustls, ring,
/// TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the TLS certificate {}", files.cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {} (PEM expected)", files.cert.display());
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the TLS private key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serve `app` on `listener` until `shutdown` completes, then stop accepting, let
/// requests in progress finish (at most [`SHUTDOWN_GRACE`]) and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: NetConfig,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max = config.max_connections.max(1);
    let regular = Arc::new(Semaphore::new(max));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_SLOTS));
    // Tells the connections to finish their request in progress and close.
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was
                // accepted: wait a little rather than spin.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Replies are small: without TCP_NODELAY they can wait on Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let (permit, limits) = if let Ok(p) = regular.clone().try_acquire_owned() {
            (p, Limits::regular(&config))
        } else if let Ok(p) = overflow.clone().try_acquire_owned() {
            (p, Limits::overflow(&config))
        } else {
            tracing::debug!("connection refused: every regular and overflow slot is taken");
            continue;
        };
        let conn = Connection { app: app.clone(), limits, stopping: stopping.clone(), _permit: permit };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => conn.serve(tcp).await,
                Some(acceptor) => match tokio::time::timeout(conn.limits.header, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => conn.serve(stream).await,
                    Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot: all are closed when every slot is free.
    let all_closed = async {
        let _regular = regular.acquire_many(max as u32).await;
        let _overflow = overflow.acquire_many(OVERFLOW_SLOTS as u32).await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_closed).await.is_err() {
        tracing::warn!("requests still in progress after {} s: closing them", SHUTDOWN_GRACE.as_secs());
    }
    Ok(())
}

/// The time limits of one connection, and whether it is an overflow connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    keep_alive: Duration,
    overflow: bool,
}

impl Limits {
    fn regular(c: &NetConfig) -> Limits {
        Limits { header: c.header_timeout, keep_alive: c.keep_alive_timeout, overflow: false }
    }

    fn overflow(c: &NetConfig) -> Limits {
        Limits {
            header: c.header_timeout.min(OVERFLOW_WAIT),
            keep_alive: c.keep_alive_timeout.min(OVERFLOW_WAIT),
            overflow: true,
        }
    }
}

struct Connection {
    app: Router,
    limits: Limits,
    /// Becomes true when the server shuts down.
    stopping: watch::Receiver<bool>,
    /// The connection's slot, given back when it closes.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, io: T) {
        let Connection { app, limits, mut stopping, _permit } = self;
        let busy = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(Watched::new(io, busy.clone(), limits));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            // In progress from its head until its response is written (the body
            // guard is dropped): no keep-alive or header clock runs meanwhile.
            busy.store(true, Relaxed);
            let guard = BusyGuard(busy.clone());
            let app = app.clone();
            Box::pin(async move {
                let response = if limits.overflow && !is_health(&req) {
                    over_capacity()
                } else {
                    app.oneshot(req).await.unwrap_or_else(|never| match never {})
                };
                Ok::<_, Infallible>(response.map(|body| Body::new(Guarded { body, _busy: guard })))
            })
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        // `Watched` keeps the header and keep-alive clocks; hyper's own header clock
        // (which starts when a connection goes idle) only backs them up.
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.keep_alive + limits.header)
            .keep_alive(!limits.overflow);
        let mut conn = http.serve_connection(io, service);
        let mut shutting_down = *stopping.borrow();
        if shutting_down {
            Pin::new(&mut conn).graceful_shutdown();
        }
        let served = loop {
            tokio::select! {
                served = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break served,
                changed = stopping.changed(), if !shutting_down => {
                    shutting_down = true;
                    if changed.is_err() || *stopping.borrow() {
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                }
            }
        };
        match served {
            Ok(()) => linger(conn.into_parts().io.into_inner().io).await,
            Err(e) => tracing::debug!("connection closed: {e}"),
        }
    }
}

/// Close after reading and dropping what the client still sends (see the module
/// doc), so a client still writing a refused body reads its answer.
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) {
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 16 << 10];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn is_health(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET && req.uri().path() == "/health"
}

fn over_capacity() -> Response<Body> {
    let body = r#"{"error":"too many connections: the server is at --max-connections; try again later"}"#;
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Clears the connection's `busy` flag when the response body is done with.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// A response body that holds the connection's [`BusyGuard`].
struct Guarded {
    body: Body,
    _busy: BusyGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress, nothing of the next one received: keep-alive clock.
    Idle,
    /// Part of a request head received: header clock.
    Head,
    /// A request in progress (its body is the API's to time).
    Busy,
}

/// The connection's byte stream, with the keep-alive, header and write-stall clocks.
/// A clock that runs out fails the read or write with `TimedOut`, and hyper closes
/// the connection.
struct Watched<T> {
    io: T,
    busy: Arc<AtomicBool>,
    limits: Limits,
    phase: Phase,
    read_deadline: Pin<Box<Sleep>>,
    /// Armed while a write makes no progress.
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> Watched<T> {
    fn new(io: T, busy: Arc<AtomicBool>, limits: Limits) -> Self {
        let read_deadline = Box::pin(tokio::time::sleep(limits.keep_alive));
        Watched { io, busy, limits, phase: Phase::Idle, read_deadline, write_deadline: None }
    }

    fn set_phase(&mut self, phase: Phase) {
        let clock = match phase {
            Phase::Idle => self.limits.keep_alive,
            Phase::Head => self.limits.header,
            Phase::Busy => Duration::ZERO,
        };
        if phase != Phase::Busy {
            self.read_deadline.as_mut().reset(Instant::now() + clock);
        }
        self.phase = phase;
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.busy.load(Relaxed) {
            this.phase = Phase::Busy;
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if this.phase == Phase::Busy {
            // The previous response is written: wait for the next request.
            this.set_phase(Phase::Idle);
        }
        let before = buf.filled().len();
        if let Poll::Ready(result) = Pin::new(&mut this.io).poll_read(cx, buf) {
            if result.is_ok() && buf.filled().len() > before && this.phase == Phase::Idle {
                this.set_phase(Phase::Head);
            }
            return Poll::Ready(result);
        }
        ready!(this.read_deadline.as_mut().poll(cx));
        Poll::Ready(Err(timed_out(match this.phase {
            Phase::Head => "request head not received within the header timeout",
            _ => "connection idle for the keep-alive timeout",
        })))
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Track a write's progress: a write stalled for the keep-alive timeout fails.
    fn stall<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.write_deadline = None;
            return poll;
        }
        let keep_alive = self.limits.keep_alive;
        let deadline = self.write_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(keep_alive)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(timed_out("client stopped reading the response")))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, data);
        self.stall(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stall(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.stall(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.stall(cx, poll)
    }
}
