//! HTTP/1.1 and HTTP/2 on a client connection: route each request, forward it, answer.
//!
//! hyper-util's `auto` server tells HTTP/1 from the h2 preface and keeps `Upgrade` working;
//! the upstream side uses the same HTTP version as the caller (h2 in, h2 out — which is what
//! gRPC needs), through per-endpoint pooled clients.

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderValue, Request, Response, Version, header, uri::Authority};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{io::AsyncRead, io::AsyncWrite, time::Instant};

use super::{
    body::{ClientBody, ProxyBody},
    error::{Refusal, is_grpc, refused},
    http_route::Routed,
    routes::{Destination, Routes, Routing, Target},
    stack::ResetStream,
    upstream::{absolute_uri, forward_once},
};
use crate::{
    config::ProxyLimits,
    drain::Signal,
    metrics::Direction,
    store::Store,
    telemetry::{self, spans},
};
use tracing::Instrument as _;

/// What a connection knows about itself.
#[derive(Debug, Clone)]
pub struct ConnContext {
    /// Outbound or inbound listener.
    pub direction: Direction,
    /// The destination the client meant (transparent mode), if iptables redirected it.
    pub orig_dst: Option<SocketAddr>,
    /// The configuration.
    pub store: Arc<Store>,
    /// The connection's byte and request activity (idle and head timeouts).
    pub activity: super::idle::Activity,
}

/// Serves HTTP on `io` until the client closes or draining finishes the connection; `http2`
/// when the connection is known to start with the HTTP/2 preface.
pub async fn serve<I>(io: I, ctx: ConnContext, limits: ProxyLimits, drain: Signal, http2: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = ctx.activity.clone();
    let ctx = Arc::new(ctx);
    if http2 {
        // hyper's HTTP/2 server runs each stream's handler as a task of its own, moving the
        // handler's future several times on the way there: boxed, it is a pointer to move
        // (HTTP/1.1 runs the handler inside the connection's task, unmoved: no box there).
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            Box::pin(async move { answer(handle(req, &ctx).await) })
        });
        serve_with(io, svc, activity, limits, drain).await;
    } else {
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            async move { answer(handle(req, &ctx).await) }
        });
        serve_with(io, svc, activity, limits, drain).await;
    }
}

/// The response to send, or the service error that makes hyper reset instead: HTTP/1 closes the
/// connection without an answer, HTTP/2 resets the stream (`INTERNAL_ERROR`). Only an injected
/// fault asks for that.
fn answer(resp: Response<ProxyBody>) -> Result<Response<ProxyBody>, ResetStream> {
    match resp.extensions().get::<ResetStream>() {
        Some(reset) => Err(*reset),
        None => Ok(resp),
    }
}

async fn serve_with<I, S>(
    io: I,
    svc: S,
    activity: super::idle::Activity,
    limits: ProxyLimits,
    mut drain: Signal,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<ProxyBody>, Error = ResetStream>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Ours instead (see `idle`): hyper's also runs while a kept-alive connection is silent.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    if limits.max_headers != 100 {
        // hyper's default is 100; setting it explicitly makes every parse initialise the array.
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(std::time::Duration::from_secs(60)));
    let io = super::idle::Watched::new(io, activity.clone());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        // The client closed, or the connection failed (malformed input, header timeout...).
        r = conn.as_mut() => r,
        // Draining: finish in-flight requests, close idle keep-alive at once.
        _ = drain.draining() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        // No byte either way for clientIdleTimeout: close it (h2: GOAWAY).
        // A request head begun and not finished within headerReadTimeout: close, no answer.
        _ = activity.head_overdue(limits.header_read_timeout) => {
            tracing::debug!(timeout = ?limits.header_read_timeout, "closing a connection whose request head is overdue");
            return;
        }
        _ = activity.idle_for(limits.client_idle_timeout) => {
            tracing::debug!(timeout = ?limits.client_idle_timeout, "closing an idle client connection");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, ctx: &ConnContext) -> Response<ProxyBody> {
    // HEAD: the answer has no body, whoever wrote it. hyper's HTTP/1 server leaves a body out
    // of a HEAD response by itself; its HTTP/2 server sends what it is given, and a body there
    // (or a HEADERS frame without END_STREAM) makes HTTP/2 clients reset the stream.
    let head = req.method() == http::Method::HEAD;
    let _open = ctx.activity.request_open();
    let resp = route_and_forward(req, ctx).await;
    if head { resp.map(|_| super::body::empty()) } else { resp }
}

/// RFC 9112 §3.2: a request with more than one Host line, or with an invalid one, and an
/// HTTP/1.1 request without one, get 400. Two leniencies, neither of which can make one
/// request route two ways: an empty Host (what a client sends for a target without an
/// authority), and no Host on an absolute-form target (whose authority a proxy uses anyway,
/// §3.2.2; low-level clients such as hyper's connection API send it so).
fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header");
    }
    match first {
        None if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            Err("an HTTP/1.1 request needs a Host header")
        }
        Some(h) if !h.is_empty() && h.to_str().ok().and_then(|h| h.parse::<Authority>().ok()).is_none() => {
            Err("the Host header is not a valid host[:port]")
        }
        _ => Ok(()),
    }
}

/// RFC 9112 §3.2.2: the target's authority wins over the `Host` header, which a proxy replaces
/// (HTTP/2's `:authority` likewise). The upstream client writes `Host` from the URI for
/// HTTP/1 when there is none.
fn set_host_from_target<B>(req: &mut Request<B>) {
    let Some(authority) = req.uri().authority() else { return };
    // Usually equal (an origin-form request's URI was made from its Host): nothing to do.
    let differs =
        req.headers().get(header::HOST).is_some_and(|h| h.as_bytes() != authority.as_str().as_bytes());
    if differs && let Ok(v) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// RFC 9112 §6.1 framing rules hyper leaves to us. A Transfer-Encoding whose final coding is
/// not `chunked` leaves the body's length to guesswork: 400, and the connection closed. Both
/// Transfer-Encoding and Content-Length is how request smuggling starts (CL.TE); hyper frames
/// such a request by the former and drops the latter (closing after the answer, as §6.1
/// allows), so the second check only fires where hyper kept both (HTTP/2 never gets here).
fn check_framing<B>(req: &Request<B>) -> Result<(), &'static str> {
    if req.version() > Version::HTTP_11 {
        return Ok(());
    }
    let mut te = req.headers().get_all(header::TRANSFER_ENCODING).iter().peekable();
    if te.peek().is_none() {
        return Ok(());
    }
    if req.headers().contains_key(header::CONTENT_LENGTH) {
        return Err("the request has both Transfer-Encoding and Content-Length");
    }
    let last = te.last().and_then(|v| v.to_str().ok()).and_then(|v| v.rsplit(',').next()).map(str::trim);
    if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
        return Err("the request's Transfer-Encoding does not end in chunked");
    }
    Ok(())
}

async fn route_and_forward(mut req: Request<Incoming>, ctx: &ConnContext) -> Response<ProxyBody> {
    let start = Instant::now();
    let grpc = is_grpc(&req);
    if let Err(why) = check_host(&req).and_then(|()| check_framing(&req)) {
        tracing::debug!(why, "refusing a malformed request");
        ctx.store.metrics().client_error("-", ctx.direction, "bad-request");
        let mut resp = Refusal::BadRequest.response(grpc, why);
        if req.version() <= Version::HTTP_11 {
            // What follows on this connection cannot be trusted to start where we think.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    let published = ctx.store.load();
    let routes = &published.routes;
    telemetry::propagation::ensure_request_id(req.headers_mut());
    // Absolute form once, here: routing, spans and the upstream request all read this authority.
    absolute_uri(&mut req);
    set_host_from_target(&mut req);
    let dest = match ctx.direction {
        Direction::Outbound => route_outbound(routes, &req, ctx.orig_dst),
        Direction::Inbound => match &routes.inbound {
            Some(inbound) => {
                let port = ctx.orig_dst.map_or(inbound.default_port, |d| d.port());
                match inbound.target(port) {
                    Some(target) => Ok(Dest::Target(target, Some(port))),
                    // A port no Service routes to: forward it to the application as it is.
                    None => Ok(Dest::Passthrough(SocketAddr::new(inbound.app_ip, port))),
                }
            }
            None => Err("this sidecar has no inbound application configured".to_owned()),
        },
    };
    // Spans only for requests the sampler records (always none with tracing off).
    let span = if ctx.store.sampling().is_some_and(|s| s.record(req.headers())) {
        request_span(ctx.direction, &req, &dest, grpc)
    } else {
        tracing::Span::none()
    };
    let work = async {
        match dest {
            Ok(Dest::Target(target, _port)) => {
                forward_to_target(target, req, grpc, start, &ctx.activity).await
            }
            Ok(Dest::Routed(dest, table)) => {
                forward_routed(dest, table, req, grpc, start, &ctx.activity).await
            }
            Ok(Dest::Passthrough(addr)) => {
                let endpoint = routes.passthrough.endpoint(addr);
                let metrics = routes.passthrough.metrics(ctx.direction);
                let (parts, body) = req.into_parts();
                let (body, fault) = ClientBody::wrap(body, &ctx.activity);
                let mut req = Request::from_parts(parts, body);
                if !tracing::Span::current().is_disabled() {
                    spans::inject(&tracing::Span::current(), req.headers_mut());
                }
                let resp = match forward_once(&endpoint, req).await {
                    Ok(resp) => resp,
                    Err(e) => match fault.reason() {
                        // The caller's body failed: its fault, answered as such.
                        Some(reason) => {
                            metrics.client_error(reason);
                            Refusal::BadRequest.response(grpc, &format!("the request body failed: {reason}"))
                        }
                        None => e.refusal().response(grpc, &e.to_string()),
                    },
                };
                metrics.response(resp.status().as_u16(), refused(&resp), start.elapsed().as_secs_f64());
                resp
            }
            Err(why) => {
                tracing::debug!(uri = %req.uri(), why, "no route");
                let resp = Refusal::NoRoute.response(grpc, &why);
                routes.passthrough.metrics(ctx.direction).response(
                    404,
                    Some(Refusal::NoRoute.as_str()),
                    start.elapsed().as_secs_f64(),
                );
                resp
            }
        }
    };
    if span.is_disabled() {
        return work.await;
    }
    let resp = work.instrument(span.clone()).await;
    {
        let error = resp.headers().get(super::ERROR_HEADER).and_then(|v| v.to_str().ok());
        let grpc_status = resp.headers().get(super::GRPC_STATUS).and_then(|v| v.to_str().ok());
        spans::record_response(&span, resp.status().as_u16(), error, grpc_status);
    }
    resp
}

/// The CLIENT (outbound) or SERVER (inbound) span of a request.
fn request_span(
    direction: Direction,
    req: &Request<Incoming>,
    dest: &Result<Dest<'_>, String>,
    grpc: bool,
) -> tracing::Span {
    let authority = req.uri().authority();
    let target = match dest {
        Ok(Dest::Target(t, _)) => Some(*t),
        Ok(Dest::Routed(d, _)) => Some(&d.target),
        _ => None,
    };
    let (service, policy, mode) = match (target, dest) {
        (Some(t), _) => (
            t.service.to_string(),
            t.policy_name().to_owned(),
            t.policy.as_ref().map_or("-", |_| t.settings.enforcement.as_str()),
        ),
        (None, Ok(Dest::Passthrough(addr))) => (addr.to_string(), "-".to_owned(), "-"),
        (None, _) => ("-".to_owned(), "-".to_owned(), "-"),
    };
    let info = spans::RequestInfo {
        method: req.method(),
        uri: req.uri(),
        version: req.version(),
        host: authority.map_or("", |a| a.host()),
        port: authority.and_then(|a| a.port_u16()),
        service: &service,
        policy: &policy,
        mode,
        request_id: telemetry::propagation::request_id(req.headers()),
        grpc,
    };
    match direction {
        Direction::Outbound => spans::client(&info, req.headers()),
        Direction::Inbound => spans::server(&info, req.headers()),
    }
}

/// Where an outbound request goes.
enum Dest<'a> {
    /// A known Service (and the port called, when known).
    Target(&'a Arc<Target>, Option<u16>),
    /// A Service port with HTTP routes: the route decides.
    Routed(&'a Destination, &'a Routing),
    /// An unknown original destination: forwarded as it is.
    Passthrough(SocketAddr),
}

fn route_outbound<'a>(
    routes: &'a Routes,
    req: &Request<Incoming>,
    orig_dst: Option<SocketAddr>,
) -> Result<Dest<'a>, String> {
    if let Some(dst) = orig_dst {
        return Ok(match routes.by_addr(&dst) {
            Some(dest @ Destination { http: Some(table), .. }) => Dest::Routed(dest, table),
            Some(dest) => Dest::Target(&dest.target, Some(dst.port())),
            None => Dest::Passthrough(dst),
        });
    }
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| "the request names no host (no Host header or absolute URI)".to_owned())?;
    let port = authority.port_u16();
    let route = routes
        .by_host(authority.host())
        .ok_or_else(|| format!("no Service is configured for host {:?}", authority.host()))?;
    match route.destination(port) {
        Some(dest @ Destination { http: Some(table), .. }) => Ok(Dest::Routed(dest, table)),
        Some(dest) => Ok(Dest::Target(&dest.target, port)),
        None => Err(format!("Service {} has no port {}", route.key, port.unwrap_or_default())),
    }
}

async fn forward_to_target(
    target: &Arc<Target>,
    req: Request<Incoming>,
    grpc: bool,
    start: Instant,
    activity: &super::idle::Activity,
) -> Response<ProxyBody> {
    // A Service with no ready endpoint: refuse at once, without retries and without counting
    // it against a breaker (nothing was tried).
    let resp = if target.endpoints.is_empty() {
        Refusal::NoHealthyEndpoints.response(grpc, &format!("{} has no ready endpoint", target.service))
    } else {
        let (parts, body) = req.into_parts();
        let (body, fault) = ClientBody::wrap(body, activity);
        target.stack.call(Request::from_parts(parts, body), grpc, fault, start).await
    };
    target.metrics.response(resp.status().as_u16(), refused(&resp), start.elapsed().as_secs_f64());
    resp
}

/// A request to a Service port with HTTP routes: to the backend its rule picks, with the
/// rule's header changes; 404 when no rule matches, 500 when the rule has no backend for it.
async fn forward_routed(
    dest: &Destination,
    table: &Routing,
    mut req: Request<Incoming>,
    grpc: bool,
    start: Instant,
    activity: &super::idle::Activity,
) -> Response<ProxyBody> {
    let (refusal, why) = match table.route(&req) {
        Routed::Backend(rule, backend) => match &backend.target {
            Ok(target) => {
                rule.request_headers(backend, req.headers_mut());
                let mut resp = forward_to_target(target, req, grpc, start, activity).await;
                rule.response_headers(backend, resp.headers_mut());
                return resp;
            }
            Err(why) => {
                (Refusal::NoBackend, format!("rule {} of HTTPRoute {}: {why}", rule.name, rule.route))
            }
        },
        Routed::NoBackend(rule) => (
            Refusal::NoBackend,
            format!("rule {} of HTTPRoute {} has no backend with a weight", rule.name, rule.route),
        ),
        Routed::NoMatch => (
            Refusal::NoRoute,
            format!(
                "no HTTPRoute rule for {} matches {} {}",
                dest.target.service,
                req.method(),
                req.uri().path()
            ),
        ),
    };
    tracing::debug!(service = %dest.target.service, why, "refused by the routes");
    let resp = refusal.response(grpc, &why);
    dest.target.metrics.response(resp.status().as_u16(), refused(&resp), start.elapsed().as_secs_f64());
    resp
}
