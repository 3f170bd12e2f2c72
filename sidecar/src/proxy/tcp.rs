//! Opaque TCP: bytes copied both ways, to an endpoint of the Service that owns the original
//! destination, to the original destination itself when no Service does, or (inbound) to the
//! application. Policies apply what makes sense without requests: the connect timeout, the
//! circuit breaker (on connect failures) and `maxConnections` as the bulkhead.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use breakwater_crds::DEFAULT_CONNECT_TIMEOUT;
use breakwater_resilience::{
    Decision, Enforcement, Observer as _, bulkhead::BulkheadFull, outcome::Condition,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
};

use super::{balance, http::ConnContext, routes::Target, state::Breakers};
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
            Some(dest) => connect_target(&dest.target, None).await,
            None => connect(dst, DEFAULT_CONNECT_TIMEOUT)
                .await
                .map(|s| (s, None))
                .map_err(|e| format!("{dst}: {e}")),
        },
        (Direction::Outbound, None) => {
            tracing::debug!("opaque TCP in explicit proxy mode has no destination; closing");
            return;
        }
        (Direction::Inbound, dst) => match &routes.inbound {
            Some(inbound) => {
                let port = dst.map_or(inbound.default_port, |d| d.port());
                let addr = SocketAddr::new(inbound.app_ip, port);
                match inbound.target(port) {
                    Some(target) => connect_target(target, Some(addr)).await,
                    // A port no Service routes to: straight to the application.
                    None => connect(addr, DEFAULT_CONNECT_TIMEOUT)
                        .await
                        .map(|s| (s, None))
                        .map_err(|e| format!("{addr}: {e}")),
                }
            }
            None => return,
        },
    };
    match upstream {
        Ok((mut up, _slot)) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut up).await {
                tracing::debug!(error = %e, "TCP connection ended");
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "TCP connection refused or failed; closing the client connection")
        }
    }
}

/// Connects to one of `target`'s endpoints (or to `fixed`), under its connection limit and
/// breakers. The returned slot must live as long as the connection.
async fn connect_target(
    target: &Arc<Target>,
    fixed: Option<SocketAddr>,
) -> Result<(TcpStream, Option<OwnedSemaphorePermit>), String> {
    let res = &target.resilience;
    let slot = match &res.connections {
        Some(limit) => match limit.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let full = BulkheadFull::QueueFull(limit.max as usize);
                res.observer.decided(Decision::BulkheadFull(full), res.enforcement);
                if res.enforcement.enforced() {
                    return Err(format!("{}: maxConnections ({}) reached", target.service, limit.max));
                }
                None
            }
        },
        None => None,
    };
    // As for HTTP: enforced per-endpoint breakers, or else the balancer's ejection of
    // endpoints that refuse connections.
    let failure_aware = !res.endpoint_breakers_enforced();
    let (index, addr) = match fixed {
        Some(a) => (None, a),
        None => {
            let open = |i: usize| res.endpoint_breaker(i).is_none_or(|b| b.would_admit());
            let choice = balance::pick(&target.endpoints, failure_aware, open).or_else(|| {
                res.observer.decided(Decision::CircuitOpen, res.enforcement);
                match res.enforcement {
                    Enforcement::Enforce => None,
                    Enforcement::DryRun => balance::pick(&target.endpoints, failure_aware, |_| true),
                }
            });
            let Some((i, e)) = choice else {
                if target.endpoints.is_empty() {
                    return Err(format!("{}: no-healthy-endpoints (no endpoint is ready)", target.service));
                }
                return Err(format!("{}: no endpoint available (every circuit is open)", target.service));
            };
            (Some(i), e.addr)
        }
    };
    let breaker = index.and_then(|i| res.endpoint_breaker(i)).or(match &res.breakers {
        Some(Breakers::Service(b)) => Some(b),
        _ => None,
    });
    let permit = match breaker {
        Some(b) if res.enforcement.enforced() => Some(b.try_admit().map_err(|e| {
            res.observer.decided(Decision::CircuitOpen, res.enforcement);
            format!("{}: {e}", target.service)
        })?),
        // DryRun: what an open breaker would do was reported when the endpoint was picked.
        Some(b) => Some(b.admit_anyway()),
        None => None,
    };
    let result = connect(addr, target.pool.connect_timeout).await;
    if let Some(p) = permit {
        p.record(result.is_err() && res.fail_on.contains(Condition::ConnectFailure));
    }
    match result {
        Ok(s) => Ok((s, slot)),
        Err(e) => {
            target.metrics.connect_failure();
            if let Some(endpoint) = index.and_then(|i| target.endpoints.get(i))
                && failure_aware
                && balance::eject(endpoint, target.pool.connect_timeout)
            {
                target.metrics.ejection();
            }
            Err(format!("{addr}: {e}"))
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
