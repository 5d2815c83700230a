//! The HTTP API (JSON). One handler per route; each turns the request into an
//! engine or journal call and the result into a status code and JSON body.
//! Every error body is `{"error": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::component::LoadedComponent;

use crate::engine::Engine;
use crate::error::CommandError;
use crate::journal::StoredEvent;
use crate::names::{persistence_id, validate_entity, validate_entity_type};
use crate::router::Outcome;
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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { max_command_bytes: 1 << 20, max_component_bytes: 256 << 20, reply_timeout: Duration::from_secs(30) }
    }
}

#[derive(Clone)]
struct AppState {
    engine: Engine,
    config: Arc<ApiConfig>,
}

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
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
        let status = e.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the limit".to_string()
        } else {
            e.body_text()
        };
        ApiError(status, msg)
    })
}

/// Bytes as JSON when they are JSON, else as a hex string under `<field>_hex`.
fn bytes_field(obj: &mut serde_json::Map<String, Value>, field: &str, bytes: &[u8]) {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => {
            obj.insert(field.to_string(), v);
        }
        Err(_) => {
            obj.insert(format!("{field}_hex"), Value::String(hex::encode(bytes)));
        }
    }
}

fn event_json(e: StoredEvent) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("persistence_id".into(), e.persistence_id.into());
    o.insert("seq_nr".into(), e.seq_nr.into());
    o.insert("offset".into(), e.offset.into());
    o.insert("timestamp_ms".into(), e.timestamp_ms.into());
    o.insert("writer_id".into(), e.writer_id.into());
    o.insert("manifest".into(), e.manifest.into());
    o.insert("tags".into(), e.tags.into());
    bytes_field(&mut o, "payload", &e.payload);
    Value::Object(o)
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
    })
}

pub fn router(engine: Engine, config: ApiConfig) -> Router {
    let state = AppState { engine, config: Arc::new(config.clone()) };
    Router::new()
        .route(
            "/v1/entities/{entity_type}/{entity_id}",
            post(send_command).layer(DefaultBodyLimit::max(config.max_command_bytes)),
        )
        .route("/v1/entities/{entity_type}/{entity_id}/events", get(entity_events))
        .route("/v1/entities/{entity_type}/{entity_id}/state", get(entity_state))
        .route("/v1/events", get(events_by_tag))
        .route("/v1/topics/{topic}", get(topic_messages))
        .route("/v1/components", get(list_components))
        .route(
            "/v1/components/{entity_type}",
            put(deploy_component).layer(DefaultBodyLimit::max(config.max_component_bytes)),
        )
        .route("/v1/components/{entity_type}/versions/{version}/activate", post(activate_component))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route; see the README for the API".into()) })
        .with_state(state)
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
    let rx = app.engine.submit(&entity_type, &entity_id, manifest, payload.to_vec())?;
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
        JournalError::Storage(_) | JournalError::Locked(_) => StatusCode::SERVICE_UNAVAILABLE,
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
    validate_entity(&entity_type, &entity_id).map_err(bad_request)?;
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
    let from = page.from.unwrap_or(0);
    let limit = page.limit();
    let journal = app.engine.journal().clone();
    let events = blocking(move || journal.events_by_tag(&tag, from, limit)).await?.map_err(journal_error)?;
    let next = events.last().map_or(from, |e| e.offset + 1);
    Ok(events_page(events, next))
}

async fn topic_messages(
    State(app): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let topic = path(p)?;
    let page = query(q)?;
    let messages: Vec<Value> = app
        .engine
        .topics()
        .read(&topic, page.from.unwrap_or(1), page.limit())
        .into_iter()
        .map(|m| {
            let mut o = match serde_json::to_value(&m) {
                Ok(Value::Object(o)) => o,
                _ => serde_json::Map::new(),
            };
            bytes_field(&mut o, "payload", &m.payload);
            Value::Object(o)
        })
        .collect();
    Ok(Json(json!({ "topic": topic, "messages": messages })))
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
    let registry = app.engine.registry().clone();
    let t = entity_type.clone();
    let loaded = blocking(move || registry.deploy(&t, &wasm)).await?.map_err(bad_request)?;
    Ok(Json(component_json(&loaded, app.engine.registry().versions(&entity_type))))
}

async fn activate_component(
    State(app): State<AppState>,
    p: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (entity_type, version) = path(p)?;
    validate_entity_type(&entity_type).map_err(bad_request)?;
    let registry = app.engine.registry().clone();
    let t = entity_type.clone();
    let loaded =
        blocking(move || registry.activate(&t, version)).await?.map_err(|e| ApiError(StatusCode::NOT_FOUND, e))?;
    Ok(Json(component_json(&loaded, app.engine.registry().versions(&entity_type))))
}

/// `200` when the journal can write; `503` with the reason while it cannot (the
/// last write failed and none has succeeded since, e.g. a full disk).
async fn health(State(app): State<AppState>) -> Response {
    let components = app.engine.registry().list().len();
    let writer_id = app.engine.writer_id();
    match app.engine.journal().health() {
        Ok(()) => Json(json!({ "status": "ok", "components": components, "writer_id": writer_id })).into_response(),
        Err(why) => {
            let body = json!({ "status": "unavailable", "error": format!("journal cannot write: {why}"),
                               "components": components, "writer_id": writer_id });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.engine.metrics().render())
}
