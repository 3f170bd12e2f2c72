//! HTTP/1.1 and HTTP/2 on a client connection: route each request, forward it, answer.
//!
//! hyper-util's `auto` server tells HTTP/1 from the h2 preface and keeps `Upgrade` working;
//! the upstream side uses the same HTTP version as the caller (h2 in, h2 out — which is what
//! gRPC needs), through per-endpoint pooled clients.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version, header, uri::Authority};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{io::AsyncRead, io::AsyncWrite, time::Instant};

use super::{
    body::{ClientBody, ProxyBody},
    error::{Refusal, is_grpc},
    routes::{Endpoint, Routes, Target},
};
use crate::{
    config::{ProxyLimits, Store},
    drain::Signal,
    metrics::Direction,
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
}

/// Serves HTTP on `io` until the client closes or draining finishes the connection.
pub async fn serve<I>(io: I, ctx: ConnContext, limits: ProxyLimits, mut drain: Signal)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
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
    let activity = super::idle::Activity::new();
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
    if req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// RFC 9112 §6.1: a request with both `Transfer-Encoding` and `Content-Length` is how request
/// smuggling starts (CL.TE): hyper frames it by the former, a server behind another proxy might
/// by the latter. A server may refuse it, and a proxy must not forward it as it is; Envoy and
/// HAProxy refuse it too. (hyper itself refuses a Transfer-Encoding that does not end in
/// `chunked`, and conflicting or malformed Content-Lengths.)
///
/// And a Transfer-Encoding whose final coding is not `chunked` leaves the body's length to
/// guesswork: §6.1 says 400 and close. hyper lets it through; we do not.
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
    let span = if telemetry::sampling::record(req.headers()) {
        request_span(ctx.direction, &req, &dest, grpc)
    } else {
        tracing::Span::none()
    };
    let work = async {
        match dest {
            Ok(Dest::Target(target, _port)) => forward_to_target(target, req, grpc, start).await,
            Ok(Dest::Passthrough(addr)) => {
                let endpoint = routes.passthrough.endpoint(addr);
                let metrics = routes.passthrough.metrics(ctx.direction);
                let (parts, body) = req.into_parts();
                let (body, fault) = ClientBody::wrap(body);
                let mut req = Request::from_parts(parts, body);
                if !tracing::Span::current().is_disabled() {
                    spans::inject(&tracing::Span::current(), req.headers_mut());
                }
                let resp = match forward_once(&endpoint, req).await {
                    Ok(resp) => resp.map(box_incoming),
                    Err(e) => match fault.reason() {
                        // The caller's body failed: its fault, answered as such.
                        Some(reason) => {
                            metrics.client_error(reason);
                            Refusal::BadRequest.response(grpc, &format!("the request body failed: {reason}"))
                        }
                        None => e.refusal().response(grpc, &e.to_string()),
                    },
                };
                metrics.response(resp.status().as_u16(), start.elapsed().as_secs_f64());
                resp
            }
            Err(why) => {
                tracing::debug!(uri = %req.uri(), why, "no route");
                let resp = Refusal::NoRoute.response(grpc, &why);
                routes.passthrough.metrics(ctx.direction).response(404, start.elapsed().as_secs_f64());
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
    let (service, policy, mode) = match dest {
        Ok(Dest::Target(t, _)) => (
            t.service.to_string(),
            t.policy_name().to_owned(),
            t.effective()
                .map_or("-", |e| if e.mode == breakwater_crds::Mode::DryRun { "DryRun" } else { "Enforce" }),
        ),
        Ok(Dest::Passthrough(addr)) => (addr.to_string(), "-".to_owned(), "-"),
        Err(_) => ("-".to_owned(), "-".to_owned(), "-"),
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
            Some(target) => Dest::Target(target, Some(dst.port())),
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
    match route.target(port) {
        Some(target) => Ok(Dest::Target(target, port)),
        None => Err(format!("Service {} has no port {}", route.key, port.unwrap_or_default())),
    }
}

/// The request's authority: the URI's (absolute form, HTTP/2) or the `Host` header's.
fn authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| h.parse().ok())
}

fn box_incoming(body: Incoming) -> ProxyBody {
    body.map_err(Into::into).boxed_unsync()
}

async fn forward_to_target(
    target: &Arc<Target>,
    req: Request<Incoming>,
    grpc: bool,
    start: Instant,
) -> Response<ProxyBody> {
    // A Service with no ready endpoint: refuse at once, without retries and without counting
    // it against a breaker (nothing was tried).
    let resp = if target.endpoints.is_empty() {
        Refusal::NoHealthyEndpoints.response(grpc, &format!("{} has no ready endpoint", target.service))
    } else {
        let (parts, body) = req.into_parts();
        let (body, fault) = ClientBody::wrap(body);
        super::forward::call(target, Request::from_parts(parts, body), grpc, fault).await
    };
    target.metrics.response(resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// Why one attempt to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No connection could be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The upstream answered something that is not HTTP.
    #[error("{addr} answered invalid HTTP: {source}")]
    Protocol {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Every connection `maxConnections` allows is busy.
    #[error("{addr}: every connection maxConnections allows is busy")]
    ConnectionLimit {
        /// The endpoint.
        addr: SocketAddr,
    },
    /// The target has no endpoint to send to.
    #[error("the Service has no endpoints")]
    NoEndpoints,
    /// The caller's request body failed while it was being sent (`reason`: `body-malformed`,
    /// `body-incomplete`): the caller's fault, not the upstream's.
    #[error("the request body failed ({reason}) while it was sent to {addr}")]
    ClientBody {
        /// The endpoint.
        addr: SocketAddr,
        /// How the body failed.
        reason: &'static str,
    },
    /// The connection or stream was closed or reset before a response.
    #[error("{addr} reset the request: {source}")]
    Reset {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

impl AttemptError {
    /// The answer a caller gets for it.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Connect { .. } | Self::NoEndpoints => Refusal::ConnectFailed,
            Self::ConnectionLimit { .. } => Refusal::BulkheadFull,
            Self::Protocol { .. } => Refusal::UpstreamProtocol,
            Self::Reset { .. } => Refusal::UpstreamReset,
            Self::ClientBody { .. } => Refusal::BadRequest,
        }
    }

    fn classify(addr: SocketAddr, e: hyper_util::client::legacy::Error) -> Self {
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if s.downcast_ref::<super::client::ConnectionLimitReached>().is_some() {
                return Self::ConnectionLimit { addr };
            }
            source = s.source();
        }
        if e.is_connect() {
            return Self::Connect { addr, source: e };
        }
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(h) = s.downcast_ref::<hyper::Error>()
                && (h.is_parse() || h.is_parse_status() || h.is_parse_too_large())
            {
                return Self::Protocol { addr, source: e };
            }
            source = s.source();
        }
        Self::Reset { addr, source: e }
    }
}

/// Sends one request to `endpoint` and returns its response headers. Handles `Upgrade`
/// (WebSocket and the like): after a `101`, bytes are copied both ways until either side closes.
pub async fn forward_once(
    endpoint: &Arc<Endpoint>,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, AttemptError> {
    let _in_flight = endpoint.start();
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, upgrade.is_some());
    let client =
        if req.version() == Version::HTTP_2 { &endpoint.clients.http2 } else { &endpoint.clients.http1 };
    let mut resp = client.request(req).await.map_err(|e| AttemptError::classify(endpoint.addr, e))?;
    strip_hop_by_hop(resp.headers_mut(), upgrade.is_some());
    if let Some(downstream) = upgrade
        && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    Ok(resp)
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Gives an origin-form request (HTTP/1) the absolute URI its `Host` header implies, which is
/// what routing reads and the client needs. Without a host the URI stays as it is.
fn absolute_uri<B>(req: &mut Request<B>) {
    if req.uri().scheme().is_some() && req.uri().authority().is_some() {
        return;
    }
    if let Some(authority) = authority(req) {
        set_absolute(req, authority);
    }
}

/// `http://AUTHORITY/path?query` from the request's path and query.
fn set_absolute<B>(req: &mut Request<B>, authority: Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

/// Gives the request an absolute URI (what the client needs) while keeping its authority, and
/// removes hop-by-hop headers.
fn prepare_request(req: &mut Request<ProxyBody>, upgrade: bool) {
    absolute_uri(req);
    if req.uri().authority().is_none() {
        set_absolute(req, Authority::from_static("localhost"));
    }
    if req.version() == Version::HTTP_10 {
        *req.version_mut() = Version::HTTP_11;
    }
    strip_hop_by_hop(req.headers_mut(), upgrade);
}

/// Removes headers that belong to one connection only (RFC 9110 §7.6.1), keeping the upgrade
/// handshake when one is under way and `te: trailers` (gRPC needs it).
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !(t.is_empty() || (upgrade && t == "upgrade")))
            .collect();
        for name in listed {
            headers.remove(name.as_str());
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::PROXY_AUTHORIZATION, &header::TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}
