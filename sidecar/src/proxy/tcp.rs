//! Opaque TCP: bytes copied both ways, to an endpoint of the Service that owns the original
//! destination, to the original destination itself when no Service does, or (inbound) to the
//! application.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use breakwater_crds::DEFAULT_CONNECT_TIMEOUT;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{balance, http::ConnContext, routes::Target};
use crate::{drain::Signal, metrics::Direction};

/// Forwards the opaque stream `io` until either side closes (or draining ends the process).
pub async fn forward<I>(mut io: I, ctx: ConnContext, _drain: Signal)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let published = ctx.store.load();
    let routes = &published.routes;
    let upstream = match (ctx.direction, ctx.orig_dst) {
        (Direction::Outbound, Some(dst)) => match routes.by_addr(&dst) {
            Some(route) => connect_target(route.target(Some(dst.port()))).await,
            None => connect(dst, DEFAULT_CONNECT_TIMEOUT).await.map_err(|e| format!("{dst}: {e}")),
        },
        (Direction::Outbound, None) => {
            tracing::debug!("opaque TCP in explicit proxy mode has no destination; closing");
            return;
        }
        (Direction::Inbound, dst) => match &routes.inbound {
            Some(inbound) => {
                let port = dst.map_or(inbound.app.port(), |d| d.port());
                let addr = SocketAddr::new(inbound.app.ip(), port);
                let timeout = inbound.target.pool.connect_timeout;
                connect(addr, timeout).await.map_err(|e| format!("{addr}: {e}"))
            }
            None => return,
        },
    };
    match upstream {
        Ok(mut up) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut up).await {
                tracing::debug!(error = %e, "TCP connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "TCP connect failed; closing the client connection"),
    }
}

async fn connect_target(target: &Arc<Target>) -> Result<TcpStream, String> {
    let Some((_, endpoint)) = balance::pick(&target.endpoints, |_| true) else {
        return Err(format!("{} has no endpoints", target.service));
    };
    let addr = endpoint.addr;
    let _in_flight = endpoint.start();
    connect(addr, target.pool.connect_timeout).await.map_err(|e| {
        target.metrics.connect_failure();
        format!("{addr}: {e}")
    })
}

async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
