//! The HTTP API (JSON). One handler per route; each turns the request into an
//! engine or journal call and the result into a status code and JSON body.
//! Every error body is `{"error": "..."}`.
//!
//! Routes come in three groups, and a route's group decides its gate:
//!
//! * **admin** (change code or configuration: deploy, activate): `Authorization:
//!   Bearer <admin token>` when an admin token is set;
//! * **client** (commands and queries): the client token, or the admin token, when a
//!   client token is set;
//! * **open**: `/health`, `/metrics`.
//!
//! Every path segment of every route is checked by [`check_segment`] before any
//! handler runs: a route added with a new parameter name fails until the name has
//! a check.
//!
//! Topics are read from the journal: `GET /v1/topics/{topic}` a page from a
//! position, `GET /v1/topics/{topic}/stream` as Server-Sent Events that follow
//! the topic live (`id:` the position, resumed with `Last-Event-ID`, keep-alive
//! comments while nothing is published).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection, RawPathParamsRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body::Body as _;
use http_body::{Frame, SizeHint};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::component::LoadedComponent;

use crate::deploys;
use crate::engine::{Engine, TopicPage};
use crate::error::CommandError;
use crate::forward::{self, Forwarder};
use crate::journal::{StoredEvent, StoredTopicMessage};
use crate::metrics;
use crate::names::{
    persistence_id, validate_component_version, validate_entity_id, validate_entity_type, validate_label,
    validate_projection_name, validate_topic, validate_view_key,
};
use crate::projection::{GenerationStatus, ProjectionError, ProjectionStatus};
use crate::router::Outcome;
use crate::subscribe::{bytes_field, event_json, subscribe, Pages, Source};
use crate::telemetry;
/// Re-exported so an embedding program can serve [`router`] without naming axum's version.
pub use axum;

#[derive(Clone)]
pub struct ApiConfig {
    /// Largest accepted command body.
    pub max_command_bytes: usize,
    /// Largest accepted component upload.
    pub max_component_bytes: usize,
    /// How long a caller waits for a reply before getting 504.
    pub reply_timeout: Duration,
    /// A request body must have arrived whole this long after its head (else 408).
    pub body_timeout: Duration,
    /// Required by the admin routes when set.
    pub admin_token: Option<Token>,
    /// Required by the client routes when set (the admin token is accepted too).
    pub client_token: Option<Token>,
    /// An event or topic stream sends a keep-alive comment after this long without news.
    pub stream_keep_alive: Duration,
    /// With several hosts: answer `307` to the owner of an entity instead of
    /// forwarding the request to it.
    pub redirect: bool,
    /// With several hosts: how long a request for an entity whose partition is
    /// moving between hosts (its owner died, or it is handed to a joining host)
    /// waits for the new owner before `503`.
    pub handoff_wait: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_command_bytes: 1 << 20,
            max_component_bytes: 256 << 20,
            reply_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            admin_token: None,
            client_token: None,
            stream_keep_alive: crate::subscribe::KEEP_ALIVE,
            redirect: false,
            // The default lease (10 s) and 2 s more, as `serve` sets it.
            handoff_wait: Duration::from_secs(12),
        }
    }
}

/// A bearer token, kept as its SHA-256 digest: presented tokens are hashed and the
/// digests compared in constant time, so neither the comparison's time nor the
/// token's length tells an attacker how much of a guess was right.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    pub fn new(secret: &str) -> Token {
        Token(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&self.0, &presented)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Equal digests, looking at every byte whatever the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= std::hint::black_box(a[i] ^ b[i]);
    }
    std::hint::black_box(diff) == 0
}

#[derive(Clone)]
struct AppState {
    engine: Engine,
    config: Arc<ApiConfig>,
    startup: Startup,
    /// Event pages shared by the streams.
    pages: Arc<Pages>,
    /// With several hosts: passes requests on to the owner of their entity.
    forwarder: Forwarder,
}

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        // A body refused as too large or too slow is left unread and the connection
        // closes after the answer: tell the client not to reuse it.
        if matches!(self.0, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let status = match &e {
            CommandError::UnknownType(_) => StatusCode::NOT_FOUND,
            CommandError::InvalidId(_) | CommandError::Malformed(_) => StatusCode::BAD_REQUEST,
            CommandError::Unhandled { .. } => StatusCode::CONFLICT,
            CommandError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CommandError::GuestFault { .. } | CommandError::RecoveryFailed { .. } | CommandError::JournalCorrupt(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            CommandError::StashFull(..)
            | CommandError::WriteFailed(_)
            | CommandError::Dropped(_)
            | CommandError::ShuttingDown
            | CommandError::NotOwner { .. }
            | CommandError::NotReady { .. }
            | CommandError::JournalUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t).map_err(|e| bad_request(e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| bad_request(e.body_text()))
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(timeout) = err.downcast_ref::<BodyTimeout>() {
                return ApiError(StatusCode::REQUEST_TIMEOUT, timeout.to_string());
            }
            source = err.source();
        }
        let status = e.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the limit".to_string()
        } else {
            e.body_text()
        };
        ApiError(status, msg)
    })
}

fn component_json(c: &LoadedComponent, versions: Vec<u64>) -> Value {
    json!({
        "entity_type": c.entity_type,
        "version": c.version,
        "versions": versions,
        "hash": c.hash,
        "size": c.size,
        "type_name": c.info.type_name,
        "state_version": c.info.state_version,
        "snapshot_every": c.info.snapshot_every,
        "deployed_at_ms": c.deployed_at_ms,
        "loaded_at_ms": c.loaded_at_ms,
    })
}

/// What a server that is still starting knows: the stage it is at, and the full
/// API once the journal is open and the engine runs.
///
/// The listener answers from the first moment: [`starting_router`] serves
/// `/health` (live), `/ready` (`503` with what is pending) and `503` for
/// everything else until [`Startup::started`] hands it the engine's router; from
/// then on every request goes to that router, whose `/ready` also waits for the
/// components still compiling ([`Startup::loaded`]).
#[derive(Clone, Default)]
pub struct Startup {
    inner: Arc<StartupInner>,
}

#[derive(Default)]
struct StartupInner {
    app: std::sync::OnceLock<Router>,
    stage: std::sync::Mutex<String>,
    /// Every component of the data directory and the components directory has
    /// been loaded (or has failed to).
    loaded: std::sync::atomic::AtomicBool,
}

impl Startup {
    pub fn new(stage: &str) -> Startup {
        let s = Startup::default();
        s.stage(stage);
        s
    }

    /// What the server is doing now (shown by `/health` and `/ready`).
    pub fn stage(&self, stage: &str) {
        *self.inner.stage.lock().unwrap() = stage.to_string();
    }

    /// The engine runs: serve the full API from now on.
    pub fn started(&self, app: Router) {
        let _ = self.inner.app.set(app);
    }

    /// Every component found at start is loaded (or failed to load).
    pub fn loaded(&self) {
        self.inner.loaded.store(true, std::sync::atomic::Ordering::SeqCst);
        self.stage("serving");
    }

    fn is_loaded(&self) -> bool {
        self.inner.loaded.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn current_stage(&self) -> String {
        self.inner.stage.lock().unwrap().clone()
    }
}

/// The router of a server that is starting: see [`Startup`].
pub fn starting_router(startup: Startup) -> Router {
    Router::new().fallback(move |request: Request| {
        let startup = startup.clone();
        async move {
            if let Some(app) = startup.inner.app.get() {
                return match tower::ServiceExt::oneshot(app.clone(), request).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
            }
            let stage = startup.current_stage();
            match request.uri().path() {
                "/health" => Json(json!({ "status": "starting", "stage": stage })).into_response(),
                "/ready" => {
                    let body = json!({ "status": "starting", "pending": [{ "what": stage }] });
                    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
                }
                _ => {
                    let mut r = ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("mneme is starting ({stage}); retry shortly (GET /ready tells when)"),
                    )
                    .into_response();
                    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                }
            }
        }
    })
}

pub fn router(engine: Engine, config: ApiConfig) -> Router {
    router_with(engine, config, None)
}

/// [`router`], with `/ready` also waiting for what `startup` is loading.
pub fn router_with(engine: Engine, config: ApiConfig, startup: Option<Startup>) -> Router {
    let startup = startup.unwrap_or_else(|| {
        let s = Startup::new("serving");
        s.loaded();
        s
    });
    let state = AppState {
        engine,
        config: Arc::new(config.clone()),
        startup,
        pages: Arc::default(),
        forwarder: Forwarder::default(),
    };
    // Code and configuration: every route here needs the admin token.
    let admin = Router::new()
        .route(
            "/v1/components/{entity_type}",
            put(deploy_component).layer(DefaultBodyLimit::max(config.max_component_bytes)),
        )
        .route("/v1/components/{entity_type}/versions/{version}/activate", post(activate_component))
        .route(
            "/v1/projections/{projection}",
            put(deploy_projection).layer(DefaultBodyLimit::max(config.max_component_bytes)),
        )
        .route("/v1/projections/{projection}/versions/{version}/activate", post(activate_projection));
    // What only the owner of an entity answers: with several hosts, another host
    // forwards it there (`owner_gate`, after the path check).
    let owned = Router::new()
        .route(
            "/v1/entities/{entity_type}/{entity_id}",
            post(send_command).layer(DefaultBodyLimit::max(config.max_command_bytes)),
        )
        .route("/v1/entities/{entity_type}/{entity_id}/state", get(entity_state))
        .route_layer(middleware::from_fn_with_state(state.clone(), owner_gate));
    // Commands and queries.
    let client = Router::new()
        .merge(owned)
        .route("/v1/entities/{entity_type}/{entity_id}/events", get(entity_events))
        .route("/v1/entities/{entity_type}/{entity_id}/events/stream", get(stream_entity_events))
        .route("/v1/events", get(events_by_tag))
        .route("/v1/events/stream", get(stream_events))
        .route("/v1/topics/{topic}", get(topic_messages))
        .route("/v1/topics/{topic}/stream", get(topic_stream))
        .route("/v1/components", get(list_components))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/projections", get(list_projections))
        .route("/v1/views/{projection}", get(view_scan))
        .route("/v1/views/{projection}/{key}", get(view_get));
    let open = Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics));
    // `route_layer`s run in the reverse order of their adding: the gate first, then
    // the check of the path segments, then the handler.
    let segments = || middleware::from_fn(check_segments);
    let admin = admin.route_layer(segments()).route_layer(middleware::from_fn_with_state(state.clone(), admin_gate));
    let client = client.route_layer(segments()).route_layer(middleware::from_fn_with_state(state.clone(), client_gate));
    Router::new()
        .merge(admin)
        .merge(client)
        .merge(open.route_layer(segments()))
        .layer(middleware::from_fn_with_state(state.clone(), time_body))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route; see the README for the API".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method; see the README for the API".into(),
            )
        })
        .with_state(state)
}

/// The one check of a path segment, by the name of the route parameter it fills.
/// Names come from the route templates above; an unknown name is refused, so a new
/// route cannot skip its check.
pub fn check_segment(name: &str, value: &str) -> Result<(), String> {
    let checked = match name {
        "entity_type" => validate_entity_type(value),
        "entity_id" => validate_entity_id(value),
        "version" => validate_component_version(value).map(|_| ()),
        "topic" => validate_topic(value),
        "projection" => validate_projection_name(value),
        "key" => validate_view_key(value),
        _ => Err("this route parameter has no check in api::check_segment".to_string()),
    };
    checked.map_err(|e| format!("invalid path segment `{name}`: {e}"))
}

async fn check_segments(
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let params = match params {
        Ok(p) => p,
        // A route without parameters.
        Err(RawPathParamsRejection::MissingPathParams(_)) => return next.run(request).await,
        Err(e) => return bad_request(format!("invalid path segment: {}", e.body_text())).into_response(),
    };
    for (name, value) in &params {
        if let Err(e) = check_segment(name, value) {
            return bad_request(e).into_response();
        }
    }
    next.run(request).await
}

/// The bearer token of a request: `Ok(None)` when there is no `Authorization` header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| ())?;
    let (scheme, token) = value.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(());
    }
    Ok(Some(token.trim()))
}

/// Why a request does not pass a token gate: 401 without a token (or with a
/// malformed `Authorization`), 403 with a wrong one; `None` when it passes.
fn refusal(headers: &HeaderMap, which: &str, accepted: &[&Token]) -> Option<Response> {
    let unauthorized = |msg: String| {
        let mut r = ApiError(StatusCode::UNAUTHORIZED, msg).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let mut refused = match bearer(headers) {
        Ok(Some(token)) if accepted.iter().any(|t| t.matches(token)) => return None,
        Ok(Some(_)) => ApiError(StatusCode::FORBIDDEN, format!("wrong {which} token")).into_response(),
        Ok(None) => unauthorized(format!("this route needs the {which} token: send `Authorization: Bearer <token>`")),
        Err(()) => unauthorized("malformed `Authorization` header: use `Authorization: Bearer <token>`".into()),
    };
    // The request's body (if any) is left unread, so the connection closes after
    // this answer: say so, or a client reuses it for its next request and loses it.
    if has_body(headers) {
        refused.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Some(refused)
}

/// Whether a request announces a body.
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

/// With several hosts: a request for an entity another host owns goes there.
async fn owner_gate(
    State(app): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(ownership) = app.engine.ownership() else { return next.run(request).await };
    let (Some(entity_type), Some(entity_id)) = (params.get("entity_type"), params.get("entity_id")) else {
        return next.run(request).await;
    };
    let pid = persistence_id(entity_type, entity_id);
    let route = forward::route(ownership, &pid);
    if request.headers().contains_key(forward::FORWARDED_BY) {
        // Another host sent it here as the owner: run it, or say it was not run.
        return match route {
            forward::Route::Here => next.run(request).await,
            forward::Route::Elsewhere(_) | forward::Route::Nobody(_) => forward::not_owner(&pid),
        };
    }
    if matches!(route, forward::Route::Here) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, app.config.max_command_bytes).await {
        Ok(bytes) => bytes,
        Err(e) => return ApiError(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")).into_response(),
    };
    let outgoing = forward::Outgoing::new(&parts, body);
    // While the partition moves, wait for its new owner: ask the database again
    // (at once, then every 100 ms: partitions move between renewals) until the
    // handoff wait ends.
    let deadline = tokio::time::Instant::now() + app.config.handoff_wait;
    let mut route = route;
    let mut refreshed = false;
    loop {
        let why = match route {
            forward::Route::Here => {
                return next.run(Request::from_parts(parts, axum::body::Body::from(outgoing.body))).await
            }
            forward::Route::Elsewhere(holder) if app.config.redirect => return forward::redirect(&holder, &parts),
            forward::Route::Elsewhere(holder) => {
                match app.forwarder.forward(ownership.node(), &holder, outgoing.clone()).await {
                    forward::Sent::Answered(response) => return response,
                    forward::Sent::Lost(why) => return forward::lost(&holder, &why),
                    forward::Sent::NotOwner => format!("host `{}` no longer owns it", holder.node),
                    forward::Sent::NotSent(why) => {
                        format!("its owner, host `{}` at {}, could not be reached ({why})", holder.node, holder.url)
                    }
                }
            }
            forward::Route::Nobody(partition) => format!("no host owns partition {partition} right now"),
        };
        if refreshed {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return forward::unavailable(format!(
                    "`{pid}` is between hosts: {why}; waited {:?} for a new owner; retry",
                    app.config.handoff_wait
                ));
            }
            tokio::time::sleep(HANDOFF_POLL.min(left)).await;
        }
        let fresh = ownership.clone();
        let _ = tokio::task::spawn_blocking(move || fresh.refresh()).await;
        refreshed = true;
        route = forward::route(ownership, &pid);
    }
}

/// How often a request waiting for a partition's new owner asks the database.
const HANDOFF_POLL: Duration = Duration::from_millis(100);

async fn admin_gate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(admin) = &app.config.admin_token {
        if let Some(refused) = refusal(request.headers(), "admin", &[admin]) {
            return refused;
        }
    }
    next.run(request).await
}

async fn client_gate(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(client) = &app.config.client_token {
        let accepted: Vec<&Token> = [Some(client), app.config.admin_token.as_ref()].into_iter().flatten().collect();
        if let Some(refused) = refusal(request.headers(), "client", &accepted) {
            return refused;
        }
    }
    next.run(request).await
}

/// Give a request body [`ApiConfig::body_timeout`] to arrive: a client that sends
/// fewer bytes than its `Content-Length` gets `408` instead of holding a handler.
async fn time_body(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let limit = app.config.body_timeout;
    let request =
        request.map(|body| Body::new(TimedBody { body, limit, deadline: Box::pin(tokio::time::sleep(limit)) }));
    next.run(request).await
}

/// The error a [`TimedBody`] ends with; found again by [`body`] to answer 408.
#[derive(Debug)]
struct BodyTimeout(Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body not received within {} s (--body-timeout-secs)", self.0.as_secs())
    }
}

impl std::error::Error for BodyTimeout {}

struct TimedBody {
    body: Body,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn send_command(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: axum::http::HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (entity_type, entity_id) = path(p)?;
    let payload = body(b)?;
    let manifest = headers.get("mneme-manifest").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let span = telemetry::request_span(&headers, "POST", "/v1/entities/{type}/{id}");
    let rx = span.in_scope(|| app.engine.submit(&entity_type, &entity_id, manifest, payload.to_vec()))?;
    let outcome = match tokio::time::timeout(app.config.reply_timeout, rx).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => return Err(CommandError::ShuttingDown.into()),
        Err(_) => {
            return Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no reply within {} s; the command may still be handled later (is it stashed?)",
                    app.config.reply_timeout.as_secs()
                ),
            ))
        }
    };
    Ok(match outcome {
        Outcome::Reply(bytes) => {
            let ct = if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
                "application/json"
            } else {
                "application/octet-stream"
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, ct)], bytes).into_response()
        }
        Outcome::ReplyError(msg) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, msg).into_response(),
        Outcome::NoReply => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Deserialize)]
struct Page {
    from: Option<u64>,
    limit: Option<usize>,
    tag: Option<String>,
}

impl Page {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 10_000)
    }
}

/// Storage trouble is temporary (503); damage and refusals are not.
fn journal_error(e: crate::journal::JournalError) -> ApiError {
    use crate::journal::JournalError;
    let status = match &e {
        JournalError::Storage(_) | JournalError::Locked(_) | JournalError::Fenced(_) => StatusCode::SERVICE_UNAVAILABLE,
        JournalError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        JournalError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    ApiError(status, e.to_string())
}

/// Run storage or compilation work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A page of events and where the next page starts.
fn events_page(events: Vec<StoredEvent>, next_from: u64) -> Json<Value> {
    Json(json!({ "events": events.into_iter().map(event_json).collect::<Vec<_>>(), "next_from": next_from }))
}

async fn entity_events(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (entity_type, entity_id) = path(p)?;
    let page = query(q)?;
    let pid = persistence_id(&entity_type, &entity_id);
    let from = page.from.unwrap_or(1).max(1);
    let limit = page.limit();
    let journal = app.engine.journal().clone();
    let events = blocking(move || journal.events(&pid, from, limit)).await?.map_err(journal_error)?;
    let next = events.last().map_or(from, |e| e.seq_nr + 1);
    Ok(events_page(events, next))
}

async fn entity_state(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (entity_type, entity_id) = path(p)?;
    let s = app.engine.state(&entity_type, &entity_id).await?;
    let mut o = serde_json::Map::new();
    o.insert("entity_type".into(), entity_type.into());
    o.insert("entity_id".into(), entity_id.into());
    o.insert("seq_nr".into(), s.seq_nr.into());
    o.insert("component_version".into(), s.component_version.into());
    bytes_field(&mut o, "state", &s.state);
    Ok(Json(Value::Object(o)))
}

async fn events_by_tag(
    State(app): State<AppState>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let page = query(q)?;
    let Some(tag) = page.tag.clone().filter(|t| !t.is_empty()) else {
        return Err(bad_request("missing query parameter `tag`"));
    };
    validate_label("tag", &tag, false).map_err(bad_request)?;
    let from = page.from.unwrap_or(0);
    let limit = page.limit();
    let journal = app.engine.journal().clone();
    let events = blocking(move || journal.events_by_tag(&tag, from, limit)).await?.map_err(journal_error)?;
    let next = events.last().map_or(from, |e| e.offset + 1);
    Ok(events_page(events, next))
}

#[derive(Deserialize)]
struct StreamQuery {
    tag: Option<String>,
    from: Option<u64>,
}

/// Where a stream starts: right after `Last-Event-ID` when the client reconnects,
/// else at `from`.
fn resume_from(headers: &HeaderMap, from: Option<u64>, default: u64) -> Result<u64, ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(from.unwrap_or(default)) };
    let text = value.to_str().unwrap_or("(not text)").trim();
    let id: u64 = text.parse().map_err(|_| {
        bad_request(format!(
            "invalid Last-Event-ID `{}`: expected the id of an event (a number)",
            text.escape_default()
        ))
    })?;
    Ok(id + 1)
}

/// `GET /v1/events/stream?tag=T&from=OFFSET`: every event (or those with the tag)
/// from an offset on, then live.
async fn stream_events(
    State(app): State<AppState>,
    q: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let from = resume_from(&headers, q.from, 0)?;
    let tag = q.tag.filter(|t| !t.is_empty());
    if let Some(tag) = &tag {
        validate_label("tag", tag, false).map_err(bad_request)?;
    }
    if tag.is_none() {
        // Not every backend reads all events by offset: refuse up front, not mid-stream.
        let journal = app.engine.journal().clone();
        blocking(move || journal.events_from(u64::MAX, 1)).await?.map_err(journal_error)?;
    }
    Ok(subscribe(app.engine.clone(), app.pages.clone(), Source::Offsets { tag }, from, app.config.stream_keep_alive)
        .into_response())
}

/// `GET /v1/entities/{type}/{id}/events/stream?from=SEQ`: an entity's events, then live.
async fn stream_entity_events(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (entity_type, entity_id) = path(p)?;
    let q = query(q)?;
    let from = resume_from(&headers, q.from, 1)?;
    let pid = persistence_id(&entity_type, &entity_id);
    Ok(subscribe(app.engine.clone(), app.pages.clone(), Source::Entity { pid }, from, app.config.stream_keep_alive)
        .into_response())
}

/// A topic message as readers get it (`seq_nr` is its position).
fn message_json(m: StoredTopicMessage) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("seq_nr".into(), m.position.into());
    o.insert("source".into(), m.source.into());
    o.insert("timestamp_ms".into(), m.timestamp_ms.into());
    bytes_field(&mut o, "payload", &m.payload);
    Value::Object(o)
}

/// A page of a topic, off the async workers.
async fn topic_page(engine: &Engine, topic: &str, from: u64, limit: usize) -> Result<TopicPage, ApiError> {
    let (engine, topic) = (engine.clone(), topic.to_string());
    blocking(move || engine.topic_messages(&topic, from, limit)).await?.map_err(journal_error)
}

async fn topic_messages(
    State(app): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let topic = path(p)?;
    let page = query(q)?;
    let from = page.from.unwrap_or(1).max(1);
    let read = topic_page(&app.engine, &topic, from, page.limit()).await?;
    let next = read.messages.last().map_or(from.max(read.first), |m| m.position + 1);
    let messages: Vec<Value> = read.messages.into_iter().map(message_json).collect();
    Ok(Json(json!({ "topic": topic, "messages": messages, "next_from": next, "first": read.first, "head": read.head })))
}

/// Where a stream starts: after `Last-Event-ID` when the client resumes, else at
/// `?from=` (default 1, the oldest retained).
fn stream_start(headers: &HeaderMap, from: Option<u64>) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => {
            let id = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
            let id = id.ok_or_else(|| bad_request("`Last-Event-ID` must be a topic position (a number)"))?;
            Ok(id.saturating_add(1))
        }
        None => Ok(from.unwrap_or(1).max(1)),
    }
}

/// Messages a stream reads from the journal at a time.
const STREAM_PAGE: usize = 256;
/// A stream also looks at the journal this often when woken by nothing.
const STREAM_POLL: Duration = Duration::from_secs(5);

struct Follow {
    engine: Engine,
    topic: String,
    next: u64,
    ready: VecDeque<StoredTopicMessage>,
    durable: tokio::sync::watch::Receiver<u64>,
    /// The server is shutting down: the stream ends.
    closing: tokio::sync::watch::Receiver<bool>,
    failed: bool,
}

async fn topic_stream(
    State(app): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Page>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = path(p)?;
    let page = query(q)?;
    let next = stream_start(&headers, page.from)?;
    // The first page now, so a journal that cannot be read answers with a status.
    let first = topic_page(&app.engine, &topic, next, STREAM_PAGE).await?;
    let mut durable = app.engine.topics().subscribe();
    durable.borrow_and_update();
    let next = first.messages.last().map_or(next.max(first.first), |m| m.position + 1);
    let closing = app.engine.topics().closing();
    let follow = Follow {
        engine: app.engine.clone(),
        topic,
        next,
        ready: first.messages.into(),
        durable,
        closing,
        failed: false,
    };
    let events = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(m) = f.ready.pop_front() {
                let id = m.position.to_string();
                let event = SseEvent::default().id(id).data(message_json(m).to_string());
                return Some((Ok::<_, Infallible>(event), f));
            }
            if f.failed || *f.closing.borrow() {
                return None;
            }
            // Messages made durable after this point wake the wait below.
            f.durable.borrow_and_update();
            match topic_page(&f.engine, &f.topic, f.next, STREAM_PAGE).await {
                Ok(page) if page.messages.is_empty() => {
                    f.next = f.next.max(page.first);
                    tokio::select! {
                        _ = f.durable.changed() => {}
                        _ = f.closing.wait_for(|closed| *closed) => {}
                        _ = tokio::time::sleep(STREAM_POLL) => {}
                    }
                }
                Ok(page) => {
                    f.next = page.messages.last().map_or(f.next, |m| m.position + 1);
                    f.ready.extend(page.messages);
                }
                Err(ApiError(_, message)) => {
                    f.failed = true;
                    let event = SseEvent::default().event("error").data(json!({ "error": message }).to_string());
                    return Some((Ok(event), f));
                }
            }
        }
    });
    let keep_alive = KeepAlive::new().interval(app.config.stream_keep_alive).text("keep-alive");
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}

/// With several hosts: this host, and who holds which partition (by the last
/// renewal). Alone: `{"hosts": null}`.
async fn cluster_status(State(app): State<AppState>) -> Json<Value> {
    let Some(ownership) = app.engine.ownership() else { return Json(json!({ "node": null, "hosts": null })) };
    let mut hosts: std::collections::BTreeMap<String, (String, Vec<u32>)> = Default::default();
    for partition in 0..crate::cluster::PARTITIONS {
        if let Some(h) = ownership.holder(partition) {
            hosts.entry(h.node).or_insert_with(|| (h.url, Vec::new())).1.push(partition);
        }
    }
    let held: Vec<u32> = ownership.held().iter().map(|l| l.partition).collect();
    Json(json!({
        "node": ownership.node(),
        "partitions": crate::cluster::PARTITIONS,
        "held": held,
        "hosts": hosts.into_iter().map(|(node, (url, partitions))| json!({
            "node": node, "url": url, "partitions": partitions,
        })).collect::<Vec<_>>(),
    }))
}

async fn list_components(State(app): State<AppState>) -> Json<Value> {
    let registry = app.engine.registry();
    let list: Vec<Value> =
        registry.list().iter().map(|c| component_json(c, registry.versions(&c.entity_type))).collect();
    Json(json!({ "components": list }))
}

async fn deploy_component(
    State(app): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let entity_type = path(p)?;
    let wasm = body(b)?;
    let (engine, t) = (app.engine.clone(), entity_type.clone());
    let loaded = blocking(move || deploys::deploy_component(&engine, &t, &wasm)).await?.map_err(bad_request)?;
    Ok(Json(component_json(&loaded, app.engine.registry().versions(&entity_type))))
}

async fn activate_component(
    State(app): State<AppState>,
    p: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (entity_type, version) = path(p)?;
    let (engine, t) = (app.engine.clone(), entity_type.clone());
    let loaded = blocking(move || deploys::activate_component(&engine, &t, version))
        .await?
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e))?;
    Ok(Json(component_json(&loaded, app.engine.registry().versions(&entity_type))))
}

/// `200` when the journal can write; `503` with the reason while it cannot (the
/// last write failed and none has succeeded since, e.g. a full disk).
async fn health(State(app): State<AppState>) -> Response {
    let components = app.engine.registry().list().len();
    let writer_id = app.engine.writer_id();
    // A journal may probe its storage to answer (PostgreSQL: a query), so off the
    // async workers.
    let journal = app.engine.journal().clone();
    let health = match blocking(move || journal.health()).await {
        Ok(h) => h,
        Err(e) => Err(e.1),
    };
    match health {
        Ok(()) => Json(json!({ "status": "ok", "components": components, "writer_id": writer_id })).into_response(),
        Err(why) => {
            let body = json!({ "status": "unavailable", "error": format!("journal cannot write: {why}"),
                               "components": components, "writer_id": writer_id });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// `200` once the journal is open and every component found at start is
/// compiled; `503` with what is pending before.
async fn ready(State(app): State<AppState>) -> Response {
    let startup = &app.startup;
    let mut pending: Vec<Value> = app
        .engine
        .registry()
        .pending_all()
        .into_iter()
        .map(|(entity_type, what)| json!({ "entity_type": entity_type, "what": what }))
        .collect();
    if !startup.is_loaded() && pending.is_empty() {
        pending.push(json!({ "what": startup.current_stage() }));
    }
    let components = app.engine.registry().list().len();
    if pending.is_empty() {
        Json(json!({ "status": "ready", "components": components })).into_response()
    } else {
        let body = json!({ "status": "starting", "components": components, "pending": pending });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let mut text = app.engine.metrics().render() + &app.engine.projections().render_metrics();
    app.engine.registry().render_metrics(&mut text);
    if let Some(bytes) = app.engine.journal().disk_bytes() {
        let help = "Bytes the journal takes on disk (commit log and index; sled: its files).";
        metrics::render_gauge(&mut text, "journal_disk_bytes", help, bytes);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

// Projections and their views.

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            ProjectionError::Invalid(m) => bad_request(m),
            ProjectionError::Journal(e) => journal_error(e),
        }
    }
}

fn generation_json(g: &GenerationStatus) -> Value {
    json!({
        "generation": g.generation,
        "version": g.version,
        "view_version": g.view_version,
        "offset": g.offset,
        "lag": g.lag,
        "status": g.status,
        "error": g.error,
        "events": g.events,
    })
}

fn projection_json(p: &ProjectionStatus) -> Value {
    let serving = p.serving.as_ref();
    json!({
        "name": p.name,
        "version": p.version,
        "versions": p.versions,
        "hash": p.hash,
        "tags": p.tags,
        "view_version": p.view_version,
        "deployed_at_ms": p.deployed_at_ms,
        "status": p.status(),
        "error": p.error(),
        "generation": serving.map(|s| s.generation),
        "offset": serving.map_or(0, |s| s.offset),
        "head": p.head,
        "lag": serving.map_or(p.head, |s| s.lag),
        "serving": serving.map(generation_json),
        "rebuild": p.rebuild.as_ref().map(generation_json),
    })
}

async fn deploy_projection(
    State(app): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = path(p)?;
    let wasm = body(b)?;
    let engine = app.engine.clone();
    let status = blocking(move || deploys::deploy_projection(&engine, &name, &wasm)).await??;
    Ok(Json(projection_json(&status)))
}

async fn activate_projection(
    State(app): State<AppState>,
    p: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (name, version) = path(p)?;
    let engine = app.engine.clone();
    let status = blocking(move || deploys::activate_projection(&engine, &name, version)).await??;
    Ok(Json(projection_json(&status)))
}

async fn list_projections(State(app): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = app.engine.projections().list().iter().map(projection_json).collect();
    Json(json!({ "projections": list }))
}

async fn view_get(
    State(app): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (name, key) = path(p)?;
    let projections = app.engine.projections().clone();
    let (n, k) = (name.clone(), key.clone());
    let value = blocking(move || projections.view_get(&n, &k)).await??;
    let mut o = serde_json::Map::new();
    o.insert("projection".into(), name.into());
    o.insert("key".into(), key.into());
    bytes_field(&mut o, "value", &value);
    Ok(Json(Value::Object(o)))
}

#[derive(Deserialize)]
struct ViewQuery {
    prefix: Option<String>,
    from_key: Option<String>,
    limit: Option<usize>,
}

async fn view_scan(
    State(app): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<ViewQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = path(p)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let (prefix, from_key) = (q.prefix.unwrap_or_default(), q.from_key.unwrap_or_default());
    let projections = app.engine.projections().clone();
    let n = name.clone();
    // One more than asked: the first key of the next page.
    let mut entries = blocking(move || projections.view_scan(&n, &prefix, &from_key, limit + 1)).await??;
    let next = (entries.len() > limit).then(|| entries.pop().map(|(k, _)| k)).flatten();
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(key, value)| {
            let mut o = serde_json::Map::new();
            o.insert("key".into(), key.into());
            bytes_field(&mut o, "value", &value);
            Value::Object(o)
        })
        .collect();
    Ok(Json(json!({ "projection": name, "entries": entries, "next_from_key": next })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::{sandbox::Runtime, Registry, SandboxLimits};
    use crate::config::EngineConfig;
    use tower::ServiceExt as _;

    #[test]
    fn tokens_match_only_themselves() {
        let t = Token::new("0123456789abcdef-secret");
        assert!(t.matches("0123456789abcdef-secret"));
        for wrong in ["", "0123456789abcdef-secre", "0123456789abcdef-secret ", "1123456789abcdef-secret"] {
            assert!(!t.matches(wrong), "{wrong}");
        }
        assert_eq!(format!("{t:?}"), "Token(..)", "never printed");
    }

    #[test]
    fn constant_time_eq_looks_at_every_byte() {
        let a = [7u8; 32];
        assert!(constant_time_eq(&a, &a));
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!constant_time_eq(&a, &b), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn every_route_parameter_has_a_check() {
        assert!(check_segment("entity_type", "bank-account").is_ok());
        assert!(check_segment("entity_id", "alice").is_ok());
        assert!(check_segment("version", "3").is_ok());
        assert!(check_segment("topic", "orders").is_ok());
        let e = check_segment("entity_id", "a/b").unwrap_err();
        assert!(e.starts_with("invalid path segment `entity_id`: "), "{e}");
        assert!(check_segment("projection", "account-balances").is_ok());
        assert!(check_segment("projection", "../x").is_err());
        assert!(check_segment("key", "_total").is_ok() && check_segment("key", "a\nb").is_err());
        assert!(check_segment("view", "p").unwrap_err().contains("no check"), "unknown names are refused");
    }

    fn engine(dir: &std::path::Path) -> Engine {
        let journal = crate::journal::open(dir, crate::journal::Backend::default()).unwrap();
        let registry = Arc::new(Registry::open(Runtime::new(SandboxLimits::default()).unwrap(), dir).unwrap());
        Engine::start(EngineConfig { shards: 1, ..EngineConfig::default() }, journal, registry)
    }

    async fn call(app: &Router, request: axum::http::Request<Body>) -> (StatusCode, Value) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn request(method: &str, uri: &str, token: Option<&str>, body: Body) -> axum::http::Request<Body> {
        let mut r = axum::http::Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        r.body(body).unwrap()
    }

    /// A body that announces 100 bytes and never sends them.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(100)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gates_segments_and_body_timeout_on_the_real_router() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let config = ApiConfig {
            admin_token: Some(Token::new("admin-0123456789abcdef")),
            body_timeout: Duration::from_millis(200),
            ..ApiConfig::default()
        };
        let app = router(engine.clone(), config);
        let activate = "/v1/components/x/versions/1/activate";
        let (s, b) = call(&app, request("POST", activate, None, Body::empty())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        assert!(b["error"].as_str().unwrap().contains("admin token"), "{b}");
        let (s, b) = call(&app, request("POST", activate, Some("nope"), Body::empty())).await;
        assert_eq!((s, b["error"].as_str()), (StatusCode::FORBIDDEN, Some("wrong admin token")));
        let (s, _) = call(&app, request("POST", activate, Some("admin-0123456789abcdef"), Body::empty())).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "no such component");
        // Projections' code goes through the same gate; their views are client routes.
        for (method, uri) in [("PUT", "/v1/projections/p"), ("POST", "/v1/projections/p/versions/1/activate")] {
            let (s, b) = call(&app, request(method, uri, None, Body::from("x"))).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {uri}: {b}");
        }
        let (s, b) =
            call(&app, request("PUT", "/v1/projections/p", Some("admin-0123456789abcdef"), Body::from("x"))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(b["error"].as_str().unwrap().contains("invalid projection `p`"), "{b}");
        let (s, b) = call(&app, request("GET", "/v1/views/p/k", None, Body::empty())).await;
        assert_eq!((s, b["error"].as_str()), (StatusCode::NOT_FOUND, Some("no projection `p`")));
        // The gate comes before the check of the segments.
        let hostile = "/v1/components/..%2F..%2Fx/versions/1/activate";
        assert_eq!(call(&app, request("POST", hostile, None, Body::empty())).await.0, StatusCode::UNAUTHORIZED);
        let (s, b) = call(&app, request("POST", hostile, Some("admin-0123456789abcdef"), Body::empty())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(b["error"].as_str().unwrap().contains("`entity_type`"), "{b}");
        let (s, b) = call(&app, request("GET", "/v1/entities/t/%FF/state", None, Body::empty())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(b["error"].as_str().unwrap().contains("entity_id"), "{b}");
        let (s, _) = call(&app, request("GET", "/v1/topics/%2E%2E", None, Body::empty())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = call(&app, request("GET", "/v1/topics/%2E%2E/stream", None, Body::empty())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // A body that never comes: 408 after the body timeout.
        let start = std::time::Instant::now();
        let stalled = Body::new(Stalled);
        let (s, b) = call(&app, request("POST", "/v1/entities/t/i", None, stalled)).await;
        assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{b}");
        assert!(start.elapsed() >= Duration::from_millis(200));
        let (s, _) = call(&app, request("GET", "/health", None, Body::empty())).await;
        assert_eq!(s, StatusCode::OK);
        tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
    }
}
