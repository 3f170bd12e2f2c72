//! The spans the proxy creates, with OpenTelemetry HTTP semantic-convention attributes.
//!
//! - a SERVER span per inbound request;
//! - a CLIENT span per outbound request (the logical call, retries included; `breakwater.fault`
//!   names the faults injected into it on purpose);
//! - a child span per attempt (`breakwater.attempt`, the endpoint, the outcome) — the context
//!   the upstream receives, so the application's own spans nest under the attempt.
//!
//! They are `tracing` spans at [`TARGET`]; only the OpenTelemetry layer enables that target,
//! so with tracing off the callsites are disabled and cost a branch.

use http::{HeaderMap, Method, Uri, Version};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::propagation;

/// The `tracing` target of request spans.
pub const TARGET: &str = "breakwater_sidecar::trace";

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// What every request span needs.
pub struct RequestInfo<'a> {
    /// Method.
    pub method: &'a Method,
    /// URI as received.
    pub uri: &'a Uri,
    /// HTTP version.
    pub version: Version,
    /// The host the caller named.
    pub host: &'a str,
    /// The port it named, if any.
    pub port: Option<u16>,
    /// `name.namespace` of the Service.
    pub service: &'a str,
    /// `namespace/name` of the policy, or `-`.
    pub policy: &'a str,
    /// `Enforce`, `DryRun` or `-`.
    pub mode: &'a str,
    /// The correlation ID.
    pub request_id: &'a str,
    /// Whether it is gRPC.
    pub grpc: bool,
}

fn rpc_parts(uri: &Uri) -> (&str, &str) {
    let path = uri.path().trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// The CLIENT span of an outbound call, parented on the caller's context from `headers`.
pub fn client(info: &RequestInfo<'_>, headers: &HeaderMap) -> Span {
    let (rpc_service, rpc_method) = if info.grpc { rpc_parts(info.uri) } else { ("", "") };
    let span = tracing::info_span!(
        target: TARGET,
        "client",
        otel.name = %format_args!("{} {}", info.method, info.service),
        otel.kind = "client",
        otel.status_code = Empty,
        "http.request.method" = %info.method,
        "url.full" = %format_args!("http://{}{}", info.host, info.uri.path_and_query().map_or("/", |p| p.as_str())),
        "server.address" = info.host,
        "server.port" = info.port.unwrap_or(80),
        "network.protocol.version" = version(info.version),
        "http.response.status_code" = Empty,
        "error.type" = Empty,
        "rpc.system" = if info.grpc { "grpc" } else { "" },
        "rpc.service" = rpc_service,
        "rpc.method" = rpc_method,
        "rpc.grpc.status_code" = Empty,
        "breakwater.service" = info.service,
        "breakwater.policy" = info.policy,
        "breakwater.mode" = info.mode,
        "breakwater.request_id" = info.request_id,
        "breakwater.fault" = Empty,
    );
    if !span.is_disabled() {
        let _ = span.set_parent(propagation::extract(headers));
    }
    span
}

/// Marks the current CLIENT span with the faults injected into its call: `delay`, `abort`,
/// `reset`, or `delay,abort` (`delay,reset`).
pub fn record_fault(fault: &str) {
    tracing::Span::current().record("breakwater.fault", fault);
}

/// The SERVER span of an inbound call.
pub fn server(info: &RequestInfo<'_>, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "server",
        otel.name = %format_args!("{} {}", info.method, info.service),
        otel.kind = "server",
        otel.status_code = Empty,
        "http.request.method" = %info.method,
        "url.path" = info.uri.path(),
        "server.address" = info.host,
        "network.protocol.version" = version(info.version),
        "http.response.status_code" = Empty,
        "error.type" = Empty,
        "breakwater.service" = info.service,
        "breakwater.policy" = info.policy,
        "breakwater.mode" = info.mode,
        "breakwater.request_id" = info.request_id,
    );
    if !span.is_disabled() {
        let _ = span.set_parent(propagation::extract(headers));
    }
    span
}

/// The span of attempt `n` (child of the current span).
pub fn attempt(n: u32) -> Span {
    tracing::info_span!(
        target: TARGET,
        "attempt",
        otel.name = %format_args!("attempt {n}"),
        otel.kind = "client",
        otel.status_code = Empty,
        "breakwater.attempt" = n,
        "server.address" = Empty,
        "server.port" = Empty,
        "breakwater.outcome" = Empty,
        "http.response.status_code" = Empty,
        "error.type" = Empty,
    )
}

/// Records the endpoint an attempt went to.
pub fn record_endpoint(span: &Span, addr: std::net::SocketAddr) {
    span.record("server.address", tracing::field::display(addr.ip()));
    span.record("server.port", addr.port());
}

/// Records a response (or Breakwater's own answer) on a span. `error` is the
/// `breakwater-error` cause or a failure class; it marks the span as failed.
pub fn record_response(span: &Span, status: u16, error: Option<&str>, grpc_status: Option<&str>) {
    span.record("http.response.status_code", status);
    if let Some(code) = grpc_status {
        span.record("rpc.grpc.status_code", code);
    }
    let error = error.map(str::to_owned).or_else(|| (status >= 500).then(|| status.to_string()));
    if let Some(e) = error {
        span.record("error.type", e.as_str());
        span.record("otel.status_code", "ERROR");
    }
}

/// Writes the span's context into outgoing headers.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    propagation::inject(&span.context(), headers);
}
