//! Several hosts: any host answers any request. A command or state query for an
//! entity whose partition another host owns is forwarded to that host's
//! advertised URL and its answer passed back as it is (or, with `--redirect`,
//! answered `307` to it). A forwarded request carries [`FORWARDED_BY`]: the
//! receiving host never forwards it again, so ownership moving during a failover
//! costs one `503` (retry), never a loop.
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

/// Request headers passed on to the owner.
const PASSED_ON: [&str; 4] = ["authorization", "content-type", "mneme-manifest", "accept"];

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
    /// Send the request to `holder` and answer with what it answered.
    pub async fn forward(&self, me: &str, holder: Holder, parts: Parts, body: Bytes) -> Response {
        let agent = self.agent.clone();
        let me = me.to_string();
        let url = format!("{}{}", holder.url, parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        let sent = tokio::task::spawn_blocking(move || -> Result<(u16, Option<String>, Vec<u8>), ureq::Error> {
            let headers = PASSED_ON.iter().filter_map(|&name| Some((name, parts.headers.get(name)?.to_str().ok()?)));
            let mut response = if parts.method == Method::GET {
                let mut request = agent.get(&url).header(FORWARDED_BY, &me);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request.call()?
            } else {
                let mut request = agent.post(&url).header(FORWARDED_BY, &me);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request.send(&body[..])?
            };
            let status = response.status().as_u16();
            let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
            let bytes = response.body_mut().with_config().limit(64 << 20).read_to_vec()?;
            Ok((status, content_type, bytes))
        })
        .await;
        match sent {
            Ok(Ok((status, content_type, bytes))) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut r = (status, bytes).into_response();
                if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
                    r.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                r
            }
            Ok(Err(e)) => unavailable(format!(
                "the entity is owned by host `{}` at {}, which could not be reached: {e}; retry",
                holder.node, holder.url
            )),
            Err(e) => unavailable(format!("forwarding failed: {e}")),
        }
    }
}
