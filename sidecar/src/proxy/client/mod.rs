//! Connections to one endpoint: HTTP/1.1 connections pooled between requests
//! ([`http1::Http1Pool`]) and one shared HTTP/2 connection ([`http2::Http2Conn`]).
//!
//! Our own, on hyper's connection API, rather than hyper-util's pooled client (as linkerd2-proxy
//! does): the pool belongs to its endpoint, so a checkout neither hashes a key nor locks a
//! shared map; a connection goes back when its response body ends, without a task spawned per
//! request to watch it; and a request that a stale pooled connection did not take comes back
//! to be sent on another connection. Each connection dials the endpoint's address whatever the
//! request's URI says, which keeps the request's own authority (`Host` / `:authority`) intact
//! end to end while connections stay per endpoint, as the balancer and the per-endpoint
//! breakers need.

pub mod http1;
pub mod http2;
#[cfg(test)]
mod tests;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use socket2::{SockRef, TcpKeepalive};
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// TCP keepalive on upstream connections: a peer that vanished without a FIN is found.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Connection settings for an endpoint's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// TCP connect timeout; also how long a request waits for a connection when
    /// `maxConnections` are all busy.
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long (up to half as long again).
    pub idle_timeout: Duration,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not complete within the connect timeout.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The TCP connect failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Every connection `maxConnections` allows is open and none came free within the connect
    /// timeout.
    #[error("maxConnections reached: no connection freed within the connect timeout")]
    Limit,
}

/// Why one request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed the exchange (handshake, request, response head).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The HTTP/1.1 and HTTP/2 connections of one endpoint.
#[derive(Debug)]
pub struct EndpointClients {
    /// For HTTP/1.x requests.
    pub http1: http1::Http1Pool,
    /// For HTTP/2 (and gRPC) requests: h2c with prior knowledge.
    pub http2: http2::Http2Conn,
}

impl EndpointClients {
    /// Both, for `addr`; `limit` is the target's `maxConnections`, shared by its endpoints.
    pub fn new(addr: SocketAddr, settings: PoolSettings, limit: Option<Arc<Semaphore>>) -> Self {
        let dial = Dial { addr, settings, limit };
        Self { http1: http1::Http1Pool::new(dial.clone()), http2: http2::Http2Conn::new(dial) }
    }
}

/// How to open a connection to the endpoint.
#[derive(Debug, Clone)]
struct Dial {
    addr: SocketAddr,
    settings: PoolSettings,
    /// `maxConnections`: each open connection holds a permit until it closes.
    limit: Option<Arc<Semaphore>>,
}

impl Dial {
    /// A TCP connection to the endpoint, `TCP_NODELAY` and keepalive set.
    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::TimedOut(timeout))??;
        tcp.set_nodelay(true)?;
        SockRef::from(&tcp).set_tcp_keepalive(&TcpKeepalive::new().with_time(TCP_KEEPALIVE))?;
        Ok(tcp)
    }

    /// A permit for one more connection without waiting, or `None` when every one is taken
    /// (`Some(None)`: there is no limit).
    fn try_slot(&self) -> Option<Option<OwnedSemaphorePermit>> {
        match &self.limit {
            None => Some(None),
            Some(limit) => limit.clone().try_acquire_owned().ok().map(Some),
        }
    }
}
