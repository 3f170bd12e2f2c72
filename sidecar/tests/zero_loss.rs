//! Nothing lost under change: keep-alive HTTP/1.1 and h2c callers under load while the
//! configuration is reloaded again and again (valid and invalid files alternating), and while
//! the sidecar drains on SIGTERM. Every load loop is bounded in count and in time.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use breakwater_fault::{FaultServer, Faults};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::{net::TcpStream, time::Instant};

async fn fault(name: &str) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), ..Default::default() })
        .await
        .expect("fault server")
}

/// What one caller saw.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failed: Vec<String>,
}

/// How a caller's connection sends one request and reads the whole answer.
enum Conn {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(proxy: SocketAddr, h2: bool) -> Self {
        let io = TokioIo::new(TcpStream::connect(proxy).await.expect("connect to the sidecar"));
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
            tokio::spawn(conn);
            Self::Http2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
            tokio::spawn(conn);
            Self::Http1(send)
        }
    }

    /// One request on the kept connection; `Err` says how it failed (no answer, a status other
    /// than 200, a body cut short).
    async fn call(&mut self, url: &str) -> Result<(), String> {
        let req = Request::get(url).body(Full::new(Bytes::new())).expect("request");
        let resp = match self {
            Self::Http1(s) => {
                s.ready().await.map_err(|e| format!("connection unusable: {e}"))?;
                s.send_request(req).await
            }
            Self::Http2(s) => {
                let mut req = req;
                *req.version_mut() = http::Version::HTTP_2;
                s.ready().await.map_err(|e| format!("connection unusable: {e}"))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| format!("no answer: {e}"))?;
        let status = resp.status();
        let body =
            resp.into_body().collect().await.map_err(|e| format!("{status}, body cut: {e}"))?.to_bytes();
        if status != 200 || !body.ends_with(b" 200\n") {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    }
}

/// A caller on one kept-alive connection: requests one after another until `stop` (checked
/// before each request), at most `max` of them, for at most `limit`.
async fn caller(
    proxy: SocketAddr,
    h2: bool,
    url: String,
    stop: Arc<AtomicBool>,
    max: usize,
    limit: Duration,
) -> Tally {
    let deadline = Instant::now() + limit;
    let mut conn = Conn::open(proxy, h2).await;
    let mut tally = Tally::default();
    for _ in 0..max {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break;
        }
        match conn.call(&url).await {
            Ok(()) => tally.ok += 1,
            Err(e) => tally.failed.push(e),
        }
    }
    tally
}

/// A valid configuration, varied by `n`: the endpoint alternates between two upstreams and
/// the policy's settings change, so every reload rebuilds routes and resilience state.
fn valid(n: usize, a: SocketAddr, b: SocketAddr) -> String {
    let endpoint = if (n / 2).is_multiple_of(2) { a } else { b };
    let spec = format!(
        "  timeouts: {{request: {}s}}\n  retries: {{attempts: {}}}\n  circuitBreaker: {{consecutiveFailures: {}}}\n  bulkhead: {{outbound: {{maxConcurrentRequests: {}}}}}\n",
        5 + n / 2 % 3,
        2 + n / 2 % 2,
        50 + n / 2 % 5,
        100 + n / 2 % 7
    );
    sidecar_yaml(&service("payments", &[endpoint]), None, "") + &policy("p", "payments", &spec)
}

/// Invalid in a different way each time: a bad field, broken YAML, an unknown kind.
fn invalid(n: usize, a: SocketAddr) -> String {
    match n % 3 {
        0 => {
            sidecar_yaml(&service("payments", &[a]), None, "")
                + &policy("p", "payments", "  retries: {attempts: 0}\n")
        }
        1 => "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\nservices: [unclosed\n".to_owned(),
        _ => sidecar_yaml(&service("payments", &[a]), None, "")
            .replace("SidecarConfig", "SidecarConfiguration"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_keep_alive_load_lose_no_request() {
    let (a, b) = (fault("a").await, fault("b").await);
    let sc = start(&valid(0, a.addr(), b.addr())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let url = "http://payments/?delay=2ms".to_owned();
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, url) = (stop.clone(), url.clone());
            tokio::spawn(caller(sc.outbound, i % 2 == 1, url, stop, 20_000, Duration::from_secs(60)))
        })
        .collect();

    // 200 reloads, valid and invalid alternating, while the callers keep calling.
    let (mut applied, mut refused) = (0, 0);
    for n in 1..=200 {
        let text = if n % 2 == 0 { valid(n, a.addr(), b.addr()) } else { invalid(n, a.addr()) };
        match sc.store.reload(&text) {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(_) => refused += 1,
        }
        // Let some calls through between reloads (bounded: the callers have their own limits).
        let before = a.stats().requests() + b.stats().requests();
        let waited = Instant::now();
        while a.stats().requests() + b.stats().requests() < before + 4 && waited.elapsed() < PATIENCE {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = Tally::default();
    for c in callers {
        let t = c.await.expect("caller");
        total.ok += t.ok;
        total.failed.extend(t.failed);
    }
    eprintln!(
        "{} calls through {applied} applied and {refused} refused reloads",
        total.ok + total.failed.len()
    );
    assert_eq!((applied, refused), (100, 100), "every valid file applied, every invalid one refused");
    assert!(total.ok >= 800, "the callers kept calling through the reloads: {total:?}");
    assert!(
        total.failed.is_empty(),
        "{} of {} calls failed: {:?}",
        total.failed.len(),
        total.ok + total.failed.len(),
        &total.failed[..total.failed.len().min(5)]
    );
    assert!(a.stats().requests() > 0 && b.stats().requests() > 0, "both configurations served calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_drain_under_load_completes_every_call_in_flight() {
    let up = fault("up").await;
    let sc = SidecarProcess::start(&sidecar_yaml(&service("payments", &[up.addr()]), None, ""), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // Each call takes 300 ms upstream, so a SIGTERM finds calls in flight on every connection.
    let url = "http://payments/?delay=300ms".to_owned();
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, url) = (stop.clone(), url.clone());
            tokio::spawn(caller(sc.outbound, i % 2 == 1, url, stop, 200, Duration::from_secs(60)))
        })
        .collect();
    let stats = up.stats().clone();
    eventually("calls done and a call in flight from every caller", || async {
        (stats.requests() >= 24 && stats.in_flight() >= 8).then_some(())
    })
    .await;

    // From here no caller starts a new call; the ones in flight must all complete.
    stop.store(true, Ordering::SeqCst);
    let kill =
        std::process::Command::new("kill").args(["-TERM", &sc.pid().to_string()]).status().expect("kill");
    assert!(kill.success());

    // New connections are refused (the listener is closed), not accepted and reset.
    eventually("new connections refused", || async {
        match TcpStream::connect(sc.outbound).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    })
    .await;

    let mut total = Tally::default();
    for c in callers {
        let t = c.await.expect("caller");
        total.ok += t.ok;
        total.failed.extend(t.failed);
    }
    eprintln!("{} calls, the last of each caller's in flight at SIGTERM", total.ok + total.failed.len());
    assert!(total.failed.is_empty(), "calls in flight at SIGTERM failed: {:?}", total.failed);
    assert!(total.ok >= 8, "every caller's call in flight completed: {total:?}");
    let mut sc = sc;
    let status = tokio::task::spawn_blocking(move || sc.wait()).await.expect("join");
    assert!(status.success(), "exit 0 after draining, got {status}");
}
