//! Logs and traces: the log subscriber, and a span per command exported over
//! OTLP/HTTP when `--otlp-endpoint` names a collector.
//!
//! The spans (all at `DEBUG` under the target `mneme::trace`, so the log, which
//! shows `INFO` and up by default, neither prints nor pays for them unless an
//! exporter is on):
//! - `command`: from the engine accepting a command to its outcome being handed
//!   back, the wait for its events to be durable included. Fields `entity.type`,
//!   `entity.id`, `component.version`, `seq_nr` (the entity's sequence number
//!   after the command), `events` (how many it persisted), `outcome` (`ok`,
//!   `reply-error`, or the error), `origin` (the idempotency key of a command
//!   another entity sent). Its parent is the request's `traceparent`, if any.
//! - `recover` (child of the command that needed the entity): `events` replayed,
//!   `snapshot_seq_nr` (0 when no snapshot was used).
//! - `handle_command` (child of `command`): the call into the guest.
//!
//! Architecture invariant: this module knows nothing of the engine; its callers
//! hand it names and numbers.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The target of every span below; the exporter listens to it alone.
pub const TARGET: &str = "mneme::trace";

/// Installed for the life of the process: flushes the spans not yet exported
/// when dropped (a clean shutdown loses none).
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("mneme: exporting the last spans failed: {e}");
            }
        }
    }
}

/// Install the log (`RUST_LOG`, default `mneme=info`) and, with `otlp_endpoint`,
/// the span exporter. Call it outside any async runtime (the exporter's HTTP
/// client blocks, on the exporter's own thread).
pub fn init(otlp_endpoint: Option<&str>, service_name: &str) -> anyhow::Result<Telemetry> {
    let log_filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "mneme=info".into());
    // Colours only for a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let log = tracing_subscriber::fmt::layer().with_ansi(ansi).with_filter(log_filter);
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(log).init();
        return Ok(Telemetry { provider: None });
    };
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_string()).build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("mneme"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::DEBUG));
    tracing_subscriber::registry().with(log).with(spans).init();
    tracing::info!("exporting spans to {url} (OTLP/HTTP, protobuf)");
    Ok(Telemetry { provider: Some(provider) })
}

/// The collector's base URL (`http://host:4318`) gets OTLP's `/v1/traces`; a
/// URL with a path is taken as it is.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let (scheme, rest) = endpoint
        .split_once("://")
        .filter(|(s, rest)| (*s == "http" || *s == "https") && !rest.is_empty())
        .with_context(|| format!("--otlp-endpoint `{endpoint}`: not an http:// or https:// URL"))?;
    Ok(match rest.split_once('/') {
        None => format!("{scheme}://{rest}/v1/traces"),
        Some((host, "")) => format!("{scheme}://{host}/v1/traces"),
        Some(_) => endpoint.to_string(),
    })
}

/// The span of one command (see the module's doc); `parent` is the span of
/// the request that carried it, or none.
pub fn command_span(parent: &Span, entity_type: &str, entity_id: &str, origin: Option<&str>) -> Span {
    tracing::debug_span!(
        target: TARGET,
        parent: parent,
        "command",
        entity.type = entity_type,
        entity.id = entity_id,
        origin,
        component.version = tracing::field::Empty,
        seq_nr = tracing::field::Empty,
        events = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// The span of an HTTP request, child of the caller's trace when it sent a W3C
/// `traceparent` header.
pub fn request_span(headers: &axum::http::HeaderMap, method: &str, route: &str) -> Span {
    let span = tracing::debug_span!(target: TARGET, "request", http.method = method, http.route = route);
    if !span.is_disabled() && headers.contains_key("traceparent") {
        use opentelemetry::propagation::TextMapPropagator as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
    span
}

/// The span of a recovery, child of `parent` (the command that needed it).
pub fn recover_span(parent: &Span) -> Span {
    tracing::debug_span!(
        target: TARGET,
        parent: parent,
        "recover",
        events = tracing::field::Empty,
        snapshot_seq_nr = tracing::field::Empty
    )
}

/// The span of one call into the guest's command handler.
pub fn handle_command_span(parent: &Span) -> Span {
    tracing::debug_span!(target: TARGET, parent: parent, "handle_command")
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(traces_url("http://c:4318").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(traces_url("https://c/otlp/v1/traces").unwrap(), "https://c/otlp/v1/traces");
        assert!(traces_url("c:4318").unwrap_err().to_string().contains("not an http"));
        assert!(traces_url("ftp://c").is_err());
    }
}
