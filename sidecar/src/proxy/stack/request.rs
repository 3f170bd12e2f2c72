//! The request and response as the stack's steps see them: a request whose head can be sent
//! again and whose body can be replayed when it was small enough, carrying its deadline, its
//! attempt number and the endpoint chosen for it; a response with its classification.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use breakwater_resilience::{
    bulkhead::{AttachPermit, Permit},
    outcome::Outcome,
    retry::{RetryRequest, RetryResponse},
    timeout::Timed,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Frame;
use tokio::time::Instant;

use crate::{
    config::policy::Retry,
    proxy::{
        body::{self, Buffered, Chain, ClientFault, Guarded, ProxyBody},
        endpoint::Endpoint,
        error::ERROR_HEADER,
    },
};

/// Set on a retried request: how many sidecars along the call chain retried it. (Header names
/// as `HeaderName`s: a `&str` is parsed and hashed again at every lookup.)
pub static RETRY_DEPTH_HEADER: HeaderName = HeaderName::from_static("breakwater-retry-depth");
/// The header that makes any method retryable when the policy honours it.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// How long body buffering waits for the next frame before streaming instead. Long enough for
/// a client without TCP_NODELAY, whose second write Nagle holds until the delayed ACK (40ms on
/// Linux, up to 200ms elsewhere); short enough that a paused stream is not held back for long.
pub(super) const BUFFER_IDLE: Duration = Duration::from_millis(250);

/// A request as the stack's steps see it.
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
    /// This attempt's number, 1-based.
    pub(super) attempt: u32,
    idempotent: bool,
    depth: u32,
    /// Whether the caller speaks gRPC.
    pub(super) grpc: bool,
    /// The whole call's deadline, taken when the request arrived.
    deadline: Option<Instant>,
    /// Endpoints tried by earlier attempts (bit i = endpoint i), shared by every copy; only
    /// kept when the call may be retried.
    tried: Option<Arc<AtomicU64>>,
    /// The endpoint this attempt goes to (its index in the target's list), once picked.
    pub(super) endpoint: Option<(usize, Arc<Endpoint>)>,
    /// Set when the caller's body failed.
    pub(super) fault: ClientFault,
}

impl HttpRequest {
    /// Takes `req` in: reads its body into memory when retries may need to send it again (up
    /// to the policy's limit, streaming the rest), and notes what the retry decision needs.
    /// `Err` with the reason when the caller's body failed while it was read.
    pub(super) async fn read(
        req: Request<ProxyBody>,
        grpc: bool,
        fault: ClientFault,
        deadline: Option<Instant>,
        retry: Option<&Retry>,
    ) -> Result<Self, &'static str> {
        let (parts, body) = req.into_parts();
        let retry = retry.filter(|r| r.settings.attempts > 1);
        let (replay, stream) = match retry {
            Some(r) => match body::buffer(body, r.max_replay_body_bytes, BUFFER_IDLE).await {
                Buffered::Whole(frames) => (Some(Arc::new(frames)), None),
                Buffered::Partial(head, rest) => (None, Some(Chain::wrap(head, Some(rest)))),
            },
            None => (None, Some(body)),
        };
        if let Some(reason) = fault.reason() {
            // The body failed while it was buffered: nothing was sent, and nothing will be.
            return Err(reason);
        }
        let idempotent = retry.is_some_and(|r| {
            r.idempotent(parts.method.as_str(), parts.headers.contains_key(&IDEMPOTENCY_KEY))
        });
        let depth = parts
            .headers
            .get(&RETRY_DEPTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
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
            tried: retry.map(|_| Arc::new(AtomicU64::new(0))),
            endpoint: None,
            fault,
        })
    }

    /// Endpoints tried by this call's earlier attempts (bit i = endpoint i).
    pub(super) fn tried(&self) -> u64 {
        self.tried.as_ref().map_or(0, |t| t.load(Ordering::Relaxed))
    }

    /// Notes that endpoint `index` was tried (a no-op for a call that is never retried).
    pub(super) fn mark_tried(&self, index: usize) {
        if let Some(t) = &self.tried
            && index < 64
        {
            t.fetch_or(1 << index, Ordering::Relaxed);
        }
    }

    /// The request to send, or `None` when its streamed body was already sent once.
    pub(super) fn into_http(mut self) -> Option<Request<ProxyBody>> {
        let body = match &self.replay {
            Some(frames) if frames.is_empty() => body::empty(),
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

fn clone_frame(f: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(d) = f.data_ref() {
        return Some(Frame::data(d.clone()));
    }
    f.trailers_ref().map(|t| Frame::trailers(t.clone()))
}

impl Timed for HttpRequest {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn attempt(&self) -> u32 {
        self.attempt
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
            endpoint: None,
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
        self.headers.insert(RETRY_DEPTH_HEADER.clone(), HeaderValue::from(self.depth + 1));
    }
}

/// A response with its classification.
pub struct HttpResponse {
    pub(super) inner: Response<ProxyBody>,
    pub(super) outcome: Outcome,
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
