//! Pooled HTTP clients to one endpoint.
//!
//! Each endpoint gets its own hyper-util client whose connector always dials that endpoint,
//! whatever the request URI says. That keeps the request's own authority (`Host` /
//! `:authority`) intact end to end — gRPC servers and virtual hosts care — while the client's
//! pool still keeps connections per endpoint, which is what the balancer and the per-endpoint
//! circuit breakers need.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection, HttpConnector},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use std::sync::Arc;

use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tower::Service;

use super::body::ProxyBody;

/// An HTTP client bound to one endpoint.
pub type EndpointClient = Client<FixedConnector, ProxyBody>;

/// Connection settings for an endpoint's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub idle_timeout: Duration,
}

/// Dials one fixed address, ignoring the URI it is given; with a connection limit, each
/// connection holds a permit until it closes (`maxConnections`).
#[derive(Debug, Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
    uri: Uri,
    inner: HttpConnector,
    limit: Option<Arc<Semaphore>>,
    connect_timeout: Duration,
}

/// Every connection allowed by `maxConnections` is open.
#[derive(Debug, thiserror::Error)]
#[error("maxConnections reached: no connection freed within the connect timeout")]
pub struct ConnectionLimitReached;

impl FixedConnector {
    fn new(addr: SocketAddr, settings: PoolSettings, limit: Option<Arc<Semaphore>>) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_connect_timeout(Some(settings.connect_timeout));
        inner.set_nodelay(true);
        inner.set_keepalive(Some(Duration::from_secs(60)));
        inner.enforce_http(true);
        let uri = Uri::try_from(format!("http://{addr}")).expect("a socket address is a valid authority");
        Self { addr, uri, inner, limit, connect_timeout: settings.connect_timeout }
    }
}

/// A connection made by [`FixedConnector`] (and its slot under the connection limit).
#[derive(Debug)]
pub struct EndpointConn {
    io: TokioIo<TcpStream>,
    /// Released when hyper drops the connection.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Connection for EndpointConn {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for EndpointConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EndpointConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl Service<Uri> for FixedConnector {
    type Response = EndpointConn;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<EndpointConn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let fut = self.inner.call(self.uri.clone());
        let (limit, wait) = (self.limit.clone(), self.connect_timeout);
        Box::pin(async move {
            let permit = match limit {
                // While we wait, hyper's pool may hand the request an idle connection instead.
                Some(l) => Some(
                    tokio::time::timeout(wait, l.acquire_owned())
                        .await
                        .map_err(|_| ConnectionLimitReached)?
                        .map_err(|_| ConnectionLimitReached)?,
                ),
                None => None,
            };
            Ok(EndpointConn { io: fut.await?, _slot: permit })
        })
    }
}

impl FixedConnector {
    /// The endpoint this connector dials.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The HTTP/1.1 and HTTP/2 clients of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointClients {
    /// For HTTP/1.x callers.
    pub http1: EndpointClient,
    /// For HTTP/2 (and gRPC) callers: h2c with prior knowledge.
    pub http2: EndpointClient,
}

impl EndpointClients {
    /// Builds both clients for `addr`.
    pub fn new(addr: SocketAddr, settings: PoolSettings, limit: Option<Arc<Semaphore>>) -> Self {
        let connector = FixedConnector::new(addr, settings, limit);
        let mut b1 = Client::builder(TokioExecutor::new());
        b1.pool_idle_timeout(settings.idle_timeout).pool_timer(TokioTimer::new()).pool_max_idle_per_host(256);
        let http1 = b1.build(connector.clone());
        let mut b2 = Client::builder(TokioExecutor::new());
        b2.pool_idle_timeout(settings.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_adaptive_window(true);
        let http2 = b2.build(connector);
        Self { http1, http2 }
    }
}
