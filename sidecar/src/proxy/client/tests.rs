//! The pools against real upstreams on loopback (hyper's servers, or raw sockets where the test
//! needs an upstream that misbehaves), counting the connections the upstream accepts.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::Semaphore,
};

use super::{ConnectError, EndpointClients, PoolSettings, SendError};
use crate::proxy::body::{self, ProxyBody};

const PATIENCE: Duration = Duration::from_secs(10);

fn settings(idle_timeout: Duration) -> PoolSettings {
    PoolSettings { connect_timeout: Duration::from_millis(500), idle_timeout }
}

/// An upstream answering `ok` after `delay`, over HTTP/1.1 or HTTP/2; counts connections
/// accepted and closed.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream(version: Version, delay: Duration) -> Upstream {
    serve(TcpListener::bind("127.0.0.1:0").await.expect("bind"), version, delay)
}

/// Serves on `listener` until dropped; its connections end with it.
fn serve(listener: TcpListener, version: Version, delay: Duration) -> Upstream {
    let addr = listener.local_addr().expect("addr");
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            connections.spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let io = TokioIo::new(tcp);
                let _ = if version == Version::HTTP_2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await
                };
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Upstream { addr, accepted, closed, task }
}

fn get(addr: SocketAddr, version: Version) -> Request<ProxyBody> {
    Request::builder()
        .uri(format!("http://{addr}/orders"))
        .version(version)
        .body(body::empty())
        .expect("a valid request")
}

async fn send(clients: &EndpointClients, req: Request<ProxyBody>) -> Result<Bytes, SendError> {
    let sent = if req.version() == Version::HTTP_2 {
        tokio::time::timeout(PATIENCE, clients.http2.send(req)).await
    } else {
        tokio::time::timeout(PATIENCE, clients.http1.send(req)).await
    };
    let resp = sent.expect("no answer in time")?;
    Ok(resp.into_body().collect().await.expect("the body").to_bytes())
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn http1_requests_one_after_another_reuse_one_connection() {
    let up = upstream(Version::HTTP_11, Duration::ZERO).await;
    let clients = EndpointClients::new(up.addr, settings(Duration::from_secs(60)), None);
    for _ in 0..5 {
        assert_eq!(send(&clients, get(up.addr, Version::HTTP_11)).await.expect("answered"), "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http1_connection_the_upstream_closed_is_not_used_again() {
    // Answers one request per connection and closes it, without saying `Connection: close`.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            a.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0; 4096];
            let mut read = 0;
            while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf[read..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        }
    });
    let clients = EndpointClients::new(addr, settings(Duration::from_secs(60)), None);
    for i in 1..=3 {
        assert_eq!(send(&clients, get(addr, Version::HTTP_11)).await.expect("answered"), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), i, "a new connection for each request");
    }
    server.abort();
}

#[tokio::test]
async fn http1_under_max_connections_a_request_waits_for_a_connection_to_come_back() {
    let up = upstream(Version::HTTP_11, Duration::from_millis(200)).await;
    let limit = Arc::new(Semaphore::new(1));
    let clients =
        Arc::new(EndpointClients::new(up.addr, settings(Duration::from_secs(60)), Some(limit.clone())));
    let both: Vec<_> = (0..2)
        .map(|_| {
            let clients = clients.clone();
            let addr = up.addr;
            tokio::spawn(async move { send(&clients, get(addr, Version::HTTP_11)).await })
        })
        .collect();
    for one in both {
        assert_eq!(one.await.expect("joined").expect("answered"), "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "the second request took the first's connection");

    // A connection's slot is free again once it closed (here: with its pool).
    drop(clients);
    eventually("the slot released", || limit.available_permits() == 1).await;

    // Longer than the connect timeout (500 ms): the waiting request is refused.
    let slow = upstream(Version::HTTP_11, Duration::from_secs(2)).await;
    let clients = Arc::new(EndpointClients::new(slow.addr, settings(Duration::from_secs(60)), Some(limit)));
    let first = tokio::spawn({
        let clients = clients.clone();
        let addr = slow.addr;
        async move { send(&clients, get(addr, Version::HTTP_11)).await }
    });
    eventually("the first request's connection", || slow.accepted.load(Ordering::SeqCst) == 1).await;
    let second = send(&clients, get(slow.addr, Version::HTTP_11)).await;
    assert!(matches!(second, Err(SendError::Connect(ConnectError::Limit))), "{second:?}");
    assert_eq!(first.await.expect("joined").expect("answered"), "ok");
}

#[tokio::test]
async fn http1_idle_connections_are_closed_after_the_idle_timeout() {
    let up = upstream(Version::HTTP_11, Duration::ZERO).await;
    let clients = EndpointClients::new(up.addr, settings(Duration::from_millis(200)), None);
    assert_eq!(send(&clients, get(up.addr, Version::HTTP_11)).await.expect("answered"), "ok");
    eventually("the idle connection closed", || up.closed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(send(&clients, get(up.addr, Version::HTTP_11)).await.expect("answered"), "ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2, "a new connection after the idle one closed");
}

#[tokio::test]
async fn http2_requests_share_one_connection_and_a_closed_one_is_replaced() {
    let up = upstream(Version::HTTP_2, Duration::from_millis(50)).await;
    let clients = Arc::new(EndpointClients::new(up.addr, settings(Duration::from_secs(60)), None));
    let all: Vec<_> = (0..20)
        .map(|_| {
            let clients = clients.clone();
            let addr = up.addr;
            tokio::spawn(async move { send(&clients, get(addr, Version::HTTP_2)).await })
        })
        .collect();
    for one in all {
        assert_eq!(one.await.expect("joined").expect("answered"), "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "one connection, opened once");

    // The upstream goes away and comes back on the same port.
    let addr = up.addr;
    drop(up);
    eventually("the connection closed", || {
        clients.http2.shared.current.load().as_ref().is_none_or(|s| s.is_closed())
    })
    .await;
    let up = serve(TcpListener::bind(addr).await.expect("rebind"), Version::HTTP_2, Duration::ZERO);
    assert_eq!(send(&clients, get(addr, Version::HTTP_2)).await.expect("answered"), "ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "a new connection");
}

#[tokio::test]
async fn http2_idle_connection_is_closed_after_the_idle_timeout() {
    let up = upstream(Version::HTTP_2, Duration::ZERO).await;
    let clients = EndpointClients::new(up.addr, settings(Duration::from_millis(200)), None);
    assert_eq!(send(&clients, get(up.addr, Version::HTTP_2)).await.expect("answered"), "ok");
    eventually("the idle connection closed", || up.closed.load(Ordering::SeqCst) == 1).await;
}
