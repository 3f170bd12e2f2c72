//! Forwarding one HTTP request to a Service under its policy: the resilience layers composed
//! in the order of the design —
//!
//! ```text
//! Timeout(request) ─▶ Retry(policy, budget) ─▶ CircuitBreaker(scope Service) ─▶ Bulkhead
//!   ─▶ Attempt: pick endpoint (skip tried and open ones) ─▶ per-try deadline ─▶ pooled client
//! ```
//!
//! and the HTTP-specific parts the generic layers ask for: replayable request bodies, the
//! classification of responses (status, `grpc-status` in headers *or trailers*,
//! `Retry-After`), and Breakwater's own answers when a layer refuses.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use super::{
    balance,
    body::{BoxError, Buffered, Chain, ClientFault, Guarded, ProxyBody},
    error::{ERROR_HEADER, GRPC_STATUS, Refusal},
    routes::Target,
    upstream::{AttemptError, forward_once},
};
use tracing::Instrument as _;

use super::state::Breakers;
use crate::telemetry::spans;
use breakwater_resilience::{
    Deadline, Decision, Enforcement, Observer as _,
    breaker::{CircuitBreakerLayer, CircuitOpen},
    bulkhead::{AttachPermit, BulkheadFull, BulkheadLayer, Permit},
    cause,
    outcome::{Failure, Outcome},
    retry::{RetryPolicy, RetryRequest, RetryResponse},
    timeout::{Elapsed, TimeoutLayer, attempt_deadline},
};

/// Set on a retried request: how many sidecars along the call chain retried it.
pub const RETRY_DEPTH_HEADER: &str = "breakwater-retry-depth";
/// The header that makes any method retryable when the policy honours it.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long body buffering waits for the next frame before streaming instead. Long enough for
/// a client without TCP_NODELAY, whose second write Nagle holds until the delayed ACK (40ms on
/// Linux, up to 200ms elsewhere); short enough that a paused stream is not held back for long.
const BUFFER_IDLE: Duration = Duration::from_millis(250);
/// Largest response body read to find gRPC trailers before deciding on a retry.
const GRPC_TRAILER_BUFFER: usize = 64 * 1024;

/// A request as the resilience layers see it: parts that can be sent again, and a body that
/// can be replayed when it was small enough.
pub struct HttpRequest {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// The whole body, when it was small enough to keep for replay.
    replay: Option<Arc<Vec<Frame<Bytes>>>>,
    /// The streaming body of a non-replayable request, taken by the first attempt.
    stream: Option<ProxyBody>,
    /// The caller's request extensions (hyper's upgrade handle among them), for the first
    /// attempt only.
    extensions: Option<http::Extensions>,
    attempt: u32,
    idempotent: bool,
    depth: u32,
    grpc: bool,
    deadline: Option<Instant>,
    /// Endpoints tried by earlier attempts (bit i = endpoint i), shared by every copy.
    tried: Arc<AtomicU64>,
    /// Set when the caller's body failed.
    fault: ClientFault,
}

impl HttpRequest {
    fn into_http(mut self) -> Option<Request<ProxyBody>> {
        let body = match &self.replay {
            Some(frames) if frames.is_empty() => super::body::empty(),
            Some(frames) => Chain::wrap(frames.iter().filter_map(clone_frame).collect(), None),
            None => self.stream.take()?,
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        if let Some(ext) = self.extensions.take() {
            *req.extensions_mut() = ext;
        }
        Some(req)
    }
}

impl RetryRequest for HttpRequest {
    fn clone_for_retry(&self) -> Self {
        Self {
            method: self.method.clone(),
            uri: self.uri.clone(),
            version: self.version,
            headers: self.headers.clone(),
            replay: self.replay.clone(),
            stream: None,
            extensions: None,
            attempt: self.attempt,
            idempotent: self.idempotent,
            depth: self.depth,
            grpc: self.grpc,
            deadline: self.deadline,
            tried: self.tried.clone(),
            fault: self.fault.clone(),
        }
    }

    fn replayable(&self) -> bool {
        self.replay.is_some()
    }

    fn idempotent(&self) -> bool {
        self.idempotent
    }

    fn depth(&self) -> u32 {
        self.depth
    }

    fn prepare_retry(&mut self, attempt: u32) {
        self.attempt = attempt;
        self.headers.insert(RETRY_DEPTH_HEADER, HeaderValue::from(self.depth + 1));
    }
}

/// A response with its classification.
pub struct HttpResponse {
    inner: Response<ProxyBody>,
    outcome: Outcome,
}

impl RetryResponse for HttpResponse {
    fn outcome(&self) -> Outcome {
        self.outcome
    }

    fn mark_budget_exhausted(&mut self) {
        self.inner.headers_mut().insert(ERROR_HEADER, HeaderValue::from_static("retry-budget-exhausted"));
    }
}

impl AttachPermit for HttpResponse {
    fn attach_permit(self, permit: Permit) -> Self {
        let (parts, body) = self.inner.into_parts();
        Self { inner: Response::from_parts(parts, Guarded::wrap(body, permit)), outcome: self.outcome }
    }
}

/// A target's service-scope breaker layer, built on first use: its classifier and DryRun hook
/// are the same for every call under one configuration.
#[derive(Default)]
pub struct ServiceBreakerLayer(std::sync::OnceLock<CircuitBreakerLayer<HttpResponse>>);

impl std::fmt::Debug for ServiceBreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "ServiceBreakerLayer(built)" } else { "ServiceBreakerLayer" })
    }
}

/// A per-try deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("attempt {attempt} got no response within its deadline")]
pub struct PerTryElapsed {
    attempt: u32,
}

/// Every endpoint was refused by its (per-endpoint) breaker.
fn all_open() -> BoxError {
    CircuitOpen.into()
}

fn is_caused_by<E: std::error::Error + 'static>(e: &BoxError) -> Option<&E> {
    cause::<E>(e.as_ref())
}

/// How a failed attempt looks to the retry policy.
fn classify_error(e: &BoxError) -> Outcome {
    if let Some(a) = is_caused_by::<AttemptError>(e) {
        return Outcome::failed(match a {
            AttemptError::Connect { .. } => Failure::Connect,
            AttemptError::Reset { source, .. } => Failure::Reset { unprocessed: refused_stream(source) },
            AttemptError::Protocol { .. } => Failure::Status(502),
            AttemptError::NoEndpoints => Failure::Connect,
            // The caller's fault: says nothing of the upstream, and sending it again would fail
            // the same way.
            AttemptError::ClientBody { .. } => return Outcome::SUCCESS,
            // Our own limit: not a failure of the target, and not retried.
            AttemptError::ConnectionLimit { .. } => return Outcome::SUCCESS,
        });
    }
    if is_caused_by::<PerTryElapsed>(e).is_some() {
        return Outcome::failed(Failure::Timeout);
    }
    // Refusals by our own layers (open breaker, full bulkhead) are not retried.
    Outcome::SUCCESS
}

/// Whether the upstream refused an HTTP/2 stream without processing it (REFUSED_STREAM), which
/// makes a retry safe for any method.
fn refused_stream(e: &hyper_util::client::legacy::Error) -> bool {
    cause::<h2::Error>(e).is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// Forwards `req` to `target` and returns the response, or Breakwater's own answer saying why
/// there is none.
pub async fn call(
    target: &Arc<Target>,
    req: Request<ProxyBody>,
    grpc: bool,
    fault: ClientFault,
) -> Response<ProxyBody> {
    let res = &target.resilience;
    let deadline = target.settings.request_timeout.map(|d| Instant::now() + d);
    let (parts, body) = req.into_parts();

    let retry = res.retry.as_ref().filter(|(s, _)| s.attempts > 1);
    let retries = target.settings.retry.as_ref();
    // Keep the body for replay only when a retry may need it.
    let (replay, stream) = match (retry, retries) {
        (Some(_), Some(r)) => match super::body::buffer(body, r.max_replay_body_bytes, BUFFER_IDLE).await {
            Buffered::Whole(frames) => (Some(Arc::new(frames)), None),
            Buffered::Partial(head, rest) => (None, Some(Chain::wrap(head, Some(rest)))),
        },
        _ => (None, Some(body)),
    };
    if let Some(reason) = fault.reason() {
        // The body failed while it was buffered: nothing was sent, and nothing will be.
        target.metrics.client_error(reason);
        return Refusal::BadRequest.response(grpc, &format!("the request body failed: {reason}"));
    }
    let idempotent = retries
        .is_some_and(|r| r.idempotent(parts.method.as_str(), parts.headers.contains_key(IDEMPOTENCY_KEY)));
    let depth = parts
        .headers
        .get(RETRY_DEPTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let request = HttpRequest {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        replay,
        stream,
        extensions: Some(parts.extensions),
        attempt: 1,
        idempotent,
        depth,
        grpc,
        deadline,
        tried: Arc::new(AtomicU64::new(0)),
        fault,
    };

    let attempt = AttemptService { target: target.clone() };
    let observer = res.observer.clone();
    let enforcement = res.enforcement;
    let breaker_layer = match &res.breakers {
        Some(Breakers::Service(b)) => Some(
            target
                .service_breaker
                .0
                .get_or_init(|| {
                    let fail_on = res.fail_on;
                    CircuitBreakerLayer::<HttpResponse>::new(
                        b.clone(),
                        Arc::new(move |r: &Result<HttpResponse, BoxError>| {
                            let outcome = match r {
                                Ok(resp) => resp.outcome,
                                Err(e) if is_client_fault(e) => return None,
                                Err(e) => classify_error(e),
                            };
                            Some(outcome.failure.is_some_and(|f| f.counts_for_breaker(fail_on)))
                        }),
                        enforcement,
                        observer.clone(),
                    )
                })
                .clone(),
        ),
        _ => None,
    };
    let bulkhead_layer =
        res.bulkhead.as_ref().map(|b| BulkheadLayer::new(b.clone(), enforcement, observer.clone()));
    let inner =
        ServiceBuilder::new().option_layer(breaker_layer).option_layer(bulkhead_layer).service(attempt);

    // No layer at all without a deadline (its future would still be boxed).
    let timeout =
        target.settings.request_timeout.map(|t| TimeoutLayer::new(Some(t), enforcement, observer.clone()));
    let result = match retry {
        Some((settings, budget)) => {
            let policy = RetryPolicy::for_call(
                settings.clone(),
                budget.clone(),
                observer.clone(),
                classify_error,
                enforcement,
                deadline,
            );
            let svc = ServiceBuilder::new()
                .option_layer(timeout)
                .layer(tower::retry::RetryLayer::new(policy))
                .service(inner);
            svc.oneshot(request).await
        }
        None => ServiceBuilder::new().option_layer(timeout).service(inner).oneshot(request).await,
    };
    match result {
        Ok(resp) => resp.inner,
        Err(e) => refusal_for(target, &e, grpc),
    }
}

/// Whether an attempt failed because the caller's body did.
fn is_client_fault(e: &BoxError) -> bool {
    is_caused_by::<AttemptError>(e).is_some_and(|a| matches!(a, AttemptError::ClientBody { .. }))
}

fn clone_frame(f: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(d) = f.data_ref() {
        return Some(Frame::data(d.clone()));
    }
    f.trailers_ref().map(|t| Frame::trailers(t.clone()))
}

/// The `error.type` of a failed attempt.
fn error_type(e: &BoxError) -> &'static str {
    if is_caused_by::<PerTryElapsed>(e).is_some() {
        "timeout"
    } else if is_caused_by::<CircuitOpen>(e).is_some() {
        "circuit-open"
    } else if let Some(a) = is_caused_by::<AttemptError>(e) {
        match a {
            AttemptError::ClientBody { reason, .. } => reason,
            a => a.refusal().as_str(),
        }
    } else {
        "error"
    }
}

fn refusal_for(target: &Target, e: &BoxError, grpc: bool) -> Response<ProxyBody> {
    let refusal = if is_caused_by::<Elapsed>(e).is_some() || is_caused_by::<PerTryElapsed>(e).is_some() {
        Refusal::Timeout
    } else if is_caused_by::<CircuitOpen>(e).is_some() {
        Refusal::CircuitOpen
    } else if is_caused_by::<BulkheadFull>(e).is_some() {
        Refusal::BulkheadFull
    } else if let Some(a) = is_caused_by::<AttemptError>(e) {
        if let AttemptError::ClientBody { reason, .. } = a {
            target.metrics.client_error(reason);
        }
        a.refusal()
    } else {
        Refusal::UpstreamReset
    };
    tracing::debug!(service = %target.service, error = %e, refusal = %refusal, "call refused or failed");
    refusal.response(grpc, &e.to_string())
}

/// One attempt: choose an endpoint, apply its breaker and the per-try deadline, send.
#[derive(Clone)]
struct AttemptService {
    target: Arc<Target>,
}

impl Service<HttpRequest> for AttemptService {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let target = self.target.clone();
        // An attempt span only inside a recorded request.
        let span = if tracing::Span::current().is_disabled() {
            tracing::Span::none()
        } else {
            spans::attempt(req.attempt)
        };
        if span.is_disabled() {
            return Box::pin(async move { attempt(&target, req).await });
        }
        Box::pin(
            async move {
                let result = attempt(&target, req).await;
                let span = tracing::Span::current();
                {
                    match &result {
                        Ok(r) => {
                            let failure = r.outcome.failure.map(|f| f.reason());
                            span.record("breakwater.outcome", failure.unwrap_or("ok"));
                            let status = r.inner.headers().get(GRPC_STATUS).and_then(|v| v.to_str().ok());
                            spans::record_response(&span, r.inner.status().as_u16(), failure, status);
                        }
                        Err(e) => {
                            let cause = error_type(e);
                            span.record("breakwater.outcome", cause);
                            span.record("error.type", cause);
                            span.record("otel.status_code", "ERROR");
                        }
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

async fn attempt(target: &Arc<Target>, req: HttpRequest) -> Result<HttpResponse, BoxError> {
    let res = &target.resilience;
    let tried = req.tried.load(Ordering::Relaxed);
    let n = target.endpoints.len();
    let all_tried = n > 0 && (0..n.min(64)).all(|i| tried & (1 << i) != 0);
    let not_tried = |i: usize| all_tried || i >= 64 || tried & (1 << i) == 0;
    let breaker_ok = |i: usize| res.endpoint_breaker(i).is_none_or(|b| b.would_admit());

    // Enforced per-endpoint breakers do the outlier work as configured; otherwise the
    // balancer's own failure accrual does (see `balance`).
    let failure_aware = !res.endpoint_breakers_enforced();
    // Prefer an endpoint this call has not tried whose breaker admits; else one already tried
    // (a retry to the same pod beats no retry); else every breaker is open.
    let choice = match res.enforcement {
        Enforcement::Enforce => {
            let c = balance::pick(&target.endpoints, failure_aware, |i| not_tried(i) && breaker_ok(i))
                .or_else(|| balance::pick(&target.endpoints, failure_aware, breaker_ok));
            if c.is_none() && !target.endpoints.is_empty() {
                res.observer.decided(Decision::CircuitOpen, Enforcement::Enforce);
                return Err(all_open());
            }
            c
        }
        // DryRun: breakers must not change where calls go.
        Enforcement::DryRun => {
            let c = balance::pick(&target.endpoints, failure_aware, not_tried);
            if let Some((i, _)) = c
                && !breaker_ok(i)
            {
                res.observer.decided(Decision::CircuitOpen, Enforcement::DryRun);
            }
            c
        }
    };
    let Some((index, endpoint)) = choice else {
        return Err(AttemptError::NoEndpoints.into());
    };
    let endpoint = endpoint.clone();
    if index < 64 {
        req.tried.fetch_or(1 << index, Ordering::Relaxed);
    }
    spans::record_endpoint(&tracing::Span::current(), endpoint.addr);
    let permit = match res.endpoint_breaker(index) {
        Some(b) if res.enforcement.enforced() => Some(b.try_admit().map_err(|e| {
            res.observer.decided(Decision::CircuitOpen, Enforcement::Enforce);
            BoxError::from(e)
        })?),
        Some(b) => Some(b.admit_anyway()),
        None => None,
    };

    let attempts = res.retry.as_ref().map_or(1, |(s, _)| s.attempts);
    let per_try = target.settings.per_try_timeout;
    let this_attempt = req.attempt;
    let until = attempt_deadline(Instant::now(), per_try, req.deadline, this_attempt, attempts)
        // The whole-call deadline is enforced by the Timeout layer; here only perTry matters.
        .filter(|_| per_try.is_some());
    let grpc = req.grpc;
    let fault = req.fault.clone();
    let inspect_trailers =
        grpc && (res.retry.as_ref().is_some_and(|(s, _)| !s.grpc_codes.is_empty()) || res.breakers.is_some());
    let Some(mut http) = req.into_http() else {
        // A streamed body was already sent once: nothing to send.
        return Err(AttemptError::NoEndpoints.into());
    };

    let span = tracing::Span::current();
    if !span.is_disabled() {
        // The upstream's spans nest under this attempt.
        spans::inject(&span, http.headers_mut());
    }
    let send = async {
        let resp = forward_once(&endpoint, http).await.map_err(BoxError::from)?;
        let resp = resp.map(|b| b.map_err(BoxError::from).boxed_unsync());
        Ok::<_, BoxError>(if inspect_trailers { read_grpc_trailers(resp).await } else { resp })
    };
    let timed_out = |limit: Duration| {
        let decision = Decision::TimedOut { deadline: Deadline::PerTry, limit };
        res.observer.decided(decision, res.enforcement);
    };
    let result = match until {
        Some(until) if res.enforcement.enforced() => match tokio::time::timeout_at(until, send).await {
            Ok(r) => r,
            Err(_) => {
                timed_out(per_try.unwrap_or_default());
                Err(PerTryElapsed { attempt: this_attempt }.into())
            }
        },
        Some(until) => {
            tokio::pin!(send);
            tokio::select! {
                r = &mut send => r,
                _ = tokio::time::sleep_until(until) => {
                    timed_out(per_try.unwrap_or_default());
                    send.await
                }
            }
        }
        None => send.await,
    };

    // The caller's body failed while it was sent: whatever the upstream then did (a reset, an
    // error status) says nothing about the upstream. The breaker hears nothing of it.
    if let Some(reason) = fault.reason()
        && result.as_ref().is_err()
    {
        tracing::debug!(service = %target.service, reason, "the caller's request body failed");
        return Err(AttemptError::ClientBody { addr: endpoint.addr, reason }.into());
    }
    let outcome = match &result {
        Ok(resp) => classify_response(resp, target),
        Err(e) => {
            if is_caused_by::<AttemptError>(e).is_some_and(|a| matches!(a, AttemptError::Connect { .. })) {
                target.metrics.connect_failure();
                if failure_aware && balance::eject(&endpoint, target.pool.connect_timeout) {
                    target.metrics.ejection();
                }
            }
            classify_error(e)
        }
    };
    if failure_aware {
        endpoint.health.record(balance::is_endpoint_failure(outcome.failure));
    }
    if let Some(p) = permit {
        p.record(outcome.failure.is_some_and(|f| f.counts_for_breaker(res.fail_on)));
    }
    result.map(|inner| HttpResponse { inner, outcome })
}

/// Classifies a response: failure statuses, gRPC status (headers or trailers), `Retry-After`.
fn classify_response(resp: &Response<ProxyBody>, target: &Target) -> Outcome {
    let status = resp.status().as_u16();
    let retry_statuses =
        target.resilience.retry.as_ref().map(|(s, _)| s.statuses.as_slice()).unwrap_or_default();
    let grpc_status = resp
        .headers()
        .get(GRPC_STATUS)
        .or_else(|| resp.extensions().get::<GrpcTrailerStatus>().map(|t| &t.0))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok());
    let failure = if status >= 500 || retry_statuses.contains(&status) {
        Some(Failure::Status(status))
    } else {
        grpc_status.filter(|c| *c != 0).map(Failure::Grpc)
    };
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Outcome { failure, retry_after }
}

/// The `grpc-status` found in a response's trailers, when they were read before answering.
#[derive(Clone)]
struct GrpcTrailerStatus(HeaderValue);

/// Reads a gRPC response body (up to a small bound, while it keeps coming) so that a status in
/// the trailers can decide a retry — unary gRPC puts the status there. A streaming response is
/// passed on as a stream.
async fn read_grpc_trailers(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if resp.headers().contains_key(GRPC_STATUS) {
        return resp; // trailers-only response: the status is in the headers
    }
    let (mut parts, body) = resp.into_parts();
    match super::body::buffer(body, GRPC_TRAILER_BUFFER, BUFFER_IDLE).await {
        Buffered::Whole(frames) => {
            if let Some(status) =
                frames.iter().filter_map(Frame::trailers_ref).find_map(|t| t.get(GRPC_STATUS))
            {
                parts.extensions.insert(GrpcTrailerStatus(status.clone()));
            }
            Response::from_parts(parts, Chain::wrap(frames.into(), None))
        }
        Buffered::Partial(head, rest) => Response::from_parts(parts, Chain::wrap(head, Some(rest))),
    }
}
