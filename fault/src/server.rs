//! The HTTP fault server.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rand::Rng;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{Mutex, watch},
};

use tower::BoxError;
type ResBody = BoxBody<Bytes, BoxError>;

/// Server-wide behaviour; each request may override it with query parameters.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Name reported in the `x-served-by` header and the default body.
    pub name: String,
    /// The first N requests fail with `fail_status`.
    pub fail_first: u64,
    /// Fraction of requests (0–1) that fail with `fail_status`.
    pub fail_rate: f64,
    /// Status used for failures. Default 503.
    pub fail_status: Option<u16>,
    /// Fraction of requests (0–1) answered after `slow_delay`.
    pub slow_rate: f64,
    /// Delay for the slow fraction.
    pub slow_delay: Duration,
    /// Fraction of requests (0–1) whose connection is reset instead of answered.
    pub reset_rate: f64,
    /// Delay applied to every request.
    pub delay: Duration,
    /// gRPC status put in the trailers of every gRPC response (0 = OK).
    pub grpc_status: u32,
    /// Body size of a normal answer (default: a short text).
    pub body_bytes: Option<usize>,
    /// Requests handled at once, like a server's worker pool; the rest queue (and so get
    /// slower under load, as real servers do). `None`: unlimited.
    pub workers: Option<usize>,
    /// The HTTP versions spoken (default both, HTTP/2 by prior knowledge).
    pub http: HttpVersions,
}

/// Which HTTP versions the server speaks: like many real apps, only one of them if asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpVersions {
    /// HTTP/1.x and HTTP/2 (told apart by the HTTP/2 preface).
    #[default]
    Both,
    /// HTTP/1.x only: an HTTP/2 preface gets the connection closed, as hyper's HTTP/1 server does.
    Http1,
    /// HTTP/2 (prior knowledge) only: anything else gets the connection closed.
    Http2,
}

/// Counters, shared with whoever started the server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests answered with a failure status or reset.
    pub failures: AtomicU64,
    /// Requests being handled right now.
    pub in_flight: AtomicI64,
    /// The most requests ever handled at once.
    pub max_in_flight: AtomicI64,
    /// Connections accepted.
    pub connections: AtomicU64,
    seen: Mutex<Vec<SeenRequest>>,
}

/// What the server saw of one request (kept for the last 1000 requests).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// Body length.
    pub body_len: usize,
}

impl Stats {
    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests that were failed on purpose.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// The most requests handled at once.
    pub fn max_in_flight(&self) -> i64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The last requests seen, oldest first.
    pub async fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().await.clone()
    }
}

/// A running fault server; stops when dropped.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    stats: Arc<Stats>,
    _stop: watch::Sender<()>,
}

impl FaultServer {
    /// Starts serving on `listener` with `faults`.
    pub fn serve(listener: TcpListener, faults: Faults) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = watch::channel(());
        tokio::spawn(accept_loop(listener, Arc::new(faults), stats.clone(), stopped));
        Ok(Self { addr, stats, _stop: stop })
    }

    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves `faults`.
    pub async fn bind(addr: &str, faults: Faults) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind(addr).await?, faults)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

async fn accept_loop(
    listener: TcpListener,
    faults: Arc<Faults>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<()>,
) {
    let fail_counter = Arc::new(AtomicU64::new(0));
    let workers = faults.workers.map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
    loop {
        let (stream, _) = tokio::select! {
            // The owner dropped the server: stop accepting.
            _ = stop.changed() => return,
            // A new connection.
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (faults, stats, fail_counter) = (faults.clone(), stats.clone(), fail_counter.clone());
        let workers = workers.clone();
        let mut stop = stop.clone();
        let versions = faults.http;
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (faults, stats, fail_counter, workers) =
                    (faults.clone(), stats.clone(), fail_counter.clone(), workers.clone());
                serve_one(req, faults, stats, fail_counter, workers)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let io = TokioIo::new(stream);
            // Only `serve_connection` keeps to one version (the upgradeable one ignores it).
            let conn = async move {
                match versions {
                    HttpVersions::Both => builder.serve_connection_with_upgrades(io, svc).await,
                    HttpVersions::Http1 => builder.http1_only().serve_connection(io, svc).await,
                    HttpVersions::Http2 => builder.http2_only().serve_connection(io, svc).await,
                }
            };
            tokio::select! {
                // The connection ended on its own.
                _ = conn => {}
                // The server stopped: drop the connection.
                _ = stop.changed() => {}
            }
        });
    }
}

/// One request, after waiting for a worker when the server has a worker pool.
async fn serve_one(
    req: Request<Incoming>,
    faults: Arc<Faults>,
    stats: Arc<Stats>,
    fail_counter: Arc<AtomicU64>,
    workers: Option<Arc<tokio::sync::Semaphore>>,
) -> Result<Response<ResBody>, BoxError> {
    let _worker = match workers {
        Some(w) => w.acquire_owned().await.ok(),
        None => None,
    };
    // A HEAD response has no body (RFC 9110 §9.3.2). hyper's HTTP/1 server leaves it out by
    // itself; its HTTP/2 server would send it, and END_STREAM would not be on the HEADERS frame.
    let head = req.method() == http::Method::HEAD;
    let resp = handle(req, faults, stats, fail_counter).await?;
    Ok(if head {
        resp.map(|_| http_body_util::Empty::new().map_err(|never| match never {}).boxed())
    } else {
        resp
    })
}

struct InFlight(Arc<Stats>);

impl InFlight {
    fn new(stats: Arc<Stats>) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, "1"))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn handle(
    mut req: Request<Incoming>,
    faults: Arc<Faults>,
    stats: Arc<Stats>,
    fail_counter: Arc<AtomicU64>,
) -> Result<Response<ResBody>, BoxError> {
    let _in_flight = InFlight::new(stats.clone());
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let q = query(&req);
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));

    if req.headers().contains_key(header::UPGRADE) {
        return Ok(upgrade(&mut req, &faults));
    }

    let seen = SeenRequest {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body_len: 0,
    };
    let path = req.uri().path().to_owned();
    // Read the whole request body (counted, echoed by /echo).
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seen = SeenRequest { body_len: body.len(), ..seen };
    {
        let mut all = stats.seen.lock().await;
        if all.len() >= 1000 {
            all.remove(0);
        }
        all.push(seen.clone());
    }

    let parse_delay = |k: &str| q.get(k).and_then(|v| humantime::parse_duration(v).ok());
    let (fail_roll, slow_roll, reset_roll) = {
        let mut rng = rand::rng();
        (rng.random::<f64>(), rng.random::<f64>(), rng.random::<f64>())
    };
    let mut delay = parse_delay("delay").unwrap_or(faults.delay);
    if slow_roll < faults.slow_rate {
        delay += faults.slow_delay;
    }
    if !delay.is_zero() && !q.contains_key("slow_body") {
        tokio::time::sleep(delay).await;
    }

    if q.contains_key("reset") || reset_roll < faults.reset_rate {
        stats.failures.fetch_add(1, Ordering::SeqCst);
        return Err("reset on purpose".into());
    }

    match path.as_str() {
        "/echo" => return Ok(json(StatusCode::OK, echo_json(&seen), &faults)),
        "/stats" => {
            let v = serde_json::json!({
                "requests": stats.requests(), "failures": stats.failures(),
                "inFlight": stats.in_flight(), "maxInFlight": stats.max_in_flight(),
            });
            return Ok(json(StatusCode::OK, v, &faults));
        }
        _ => {}
    }

    let first = fail_counter.fetch_add(1, Ordering::SeqCst) < faults.fail_first;
    let fail_status = faults.fail_status.unwrap_or(503);
    let status = match q.get("status").and_then(|s| s.parse::<u16>().ok()) {
        Some(s) => s,
        None if first || fail_roll < faults.fail_rate => fail_status,
        None => 200,
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() && !is_grpc {
        stats.failures.fetch_add(1, Ordering::SeqCst);
    }

    if is_grpc {
        // Failing requests (first N, or the failure fraction) answer UNAVAILABLE unless a
        // code was configured.
        let failing = first || fail_roll < faults.fail_rate;
        let default = if failing && faults.grpc_status == 0 { 14 } else { faults.grpc_status };
        let code = q.get("grpc_status").and_then(|s| s.parse().ok()).unwrap_or(default);
        if code != 0 {
            stats.failures.fetch_add(1, Ordering::SeqCst);
        }
        return Ok(grpc(code, &faults));
    }

    let size = q.get("body_bytes").and_then(|s| s.parse().ok()).or(faults.body_bytes);
    let payload = match size {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from(format!("{} {}\n", faults.name, status.as_u16())),
    };
    let mut builder = Response::builder().status(status).header("x-served-by", served_by(&faults));
    let body: ResBody = if q.contains_key("close_early") {
        builder = builder.header(header::CONTENT_LENGTH, payload.len() + 1000);
        CutShort { first: Some(payload) }.boxed()
    } else if q.contains_key("slow_body") {
        let step = if delay.is_zero() { Duration::from_millis(100) } else { delay };
        Slow::new(payload, 10, step).boxed()
    } else {
        Full::new(payload).map_err(|never| match never {}).boxed()
    };
    Ok(builder.body(body).expect("static response parts are valid"))
}

fn served_by(faults: &Faults) -> HeaderValue {
    HeaderValue::from_str(&faults.name).unwrap_or(HeaderValue::from_static("fault"))
}

fn echo_json(seen: &SeenRequest) -> serde_json::Value {
    serde_json::json!({
        "method": seen.method, "uri": seen.uri, "version": seen.version,
        "headers": seen.headers, "bodyLen": seen.body_len,
    })
}

fn json(status: StatusCode, v: serde_json::Value, faults: &Faults) -> Response<ResBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-served-by", served_by(faults))
        .body(Full::new(Bytes::from(v.to_string())).map_err(|never| match never {}).boxed())
        .expect("static response parts are valid")
}

/// A gRPC answer: a 5-byte-framed empty message, then `grpc-status` in the trailers.
fn grpc(code: u32, faults: &Faults) -> Response<ResBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    if code != 0 {
        trailers.insert("grpc-message", HeaderValue::from_static("failed on purpose"));
    }
    let body = GrpcBody { message: Some(Bytes::from_static(&[0, 0, 0, 0, 0])), trailers: Some(trailers) };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("x-served-by", served_by(faults))
        .body(body.boxed())
        .expect("static response parts are valid")
}

/// `101 Switching Protocols`, then echo whatever the client sends on the upgraded connection.
fn upgrade(req: &mut Request<Incoming>, faults: &Faults) -> Response<ResBody> {
    let proto = req.headers().get(header::UPGRADE).cloned().unwrap_or(HeaderValue::from_static("echo"));
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, proto)
        .header(header::CONNECTION, "upgrade")
        .header("x-served-by", served_by(faults))
        .body(http_body_util::Empty::new().map_err(|never: Infallible| match never {}).boxed())
        .expect("static response parts are valid")
}

struct GrpcBody {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(m) = this.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(m))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// Sends the first chunk, then fails: the connection is cut before the announced length.
struct CutShort {
    first: Option<Bytes>,
}

impl Body for CutShort {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut().first.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Ready(Some(Err("body cut short on purpose".into()))),
        }
    }
}

/// Sends the payload in `chunks` pieces, `step` apart.
struct Slow {
    rest: Bytes,
    chunk: usize,
    step: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Slow {
    fn new(payload: Bytes, chunks: usize, step: Duration) -> Self {
        let chunk = payload.len().div_ceil(chunks).max(1);
        Self { rest: payload, chunk, step, sleep: None }
    }
}

impl Body for Slow {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let step = this.step;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(step)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.sleep = None;
        let n = this.chunk.min(this.rest.len());
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
    }
}
