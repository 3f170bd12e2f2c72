//! Accept loops: one per listener, each connection in its own task, tracked by the drain.

use std::{sync::Arc, time::Duration};

use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};

use super::{
    detect::{Declared, Prefixed, Protocol, detect},
    http::{self, ConnContext},
    orig_dst, tcp,
};
use crate::{
    config::ProxyLimits,
    drain::{Drain, Signal},
    metrics::Direction,
    store::Store,
};

/// Accepts connections on `listener` until draining starts, then stops accepting (the
/// listener is dropped). Each connection is detected and served in a task the drain tracks.
pub async fn serve(listener: TcpListener, direction: Direction, store: Arc<Store>, drain: Drain) {
    let mut signal = drain.signal();
    let gauge = store.metrics().open_connections(direction);
    loop {
        let (stream, peer) = tokio::select! {
            // Draining: stop accepting; in-flight connections finish on their own.
            _ = signal.draining() => break,
            // A client connected.
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, ?direction, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let orig_dst = orig_dst::original_dst(&stream);
        let ctx = ConnContext { direction, orig_dst, store: store.clone(), activity: Default::default() };
        let (limits, declared) = {
            let published = store.load();
            (published.routes.limits, published.routes.declared(direction, orig_dst))
        };
        let conn_signal = drain.signal();
        let guard = GaugeGuard::new(gauge.clone());
        drain.spawn(async move {
            let _guard = guard;
            if let Err(e) = serve_connection(stream, ctx, limits, declared, conn_signal).await {
                tracing::debug!(%peer, error = %e, "connection failed before a protocol was detected");
            }
        });
    }
    tracing::info!(?direction, "listener closed");
}

/// Serves one accepted connection until it ends: as its port declares (`declared`), else as
/// its first bytes say (HTTP/1, HTTP/2, or opaque TCP). Fails only when the connection fails
/// before its protocol is known. (Public for the fuzzer, which feeds it bytes in memory.)
pub async fn serve_connection<I>(
    stream: I,
    ctx: ConnContext,
    limits: ProxyLimits,
    declared: Option<Declared>,
    signal: Signal,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match declared {
        // hyper tells HTTP/1 from the HTTP/2 preface itself, and refuses what is neither.
        Some(Declared::Http) => http::serve(Prefixed::unread(stream), ctx, limits, signal, false).await,
        Some(Declared::Opaque) => tcp::forward(stream, ctx, signal).await,
        None => match detect(stream, limits.detect_timeout).await? {
            (Protocol::Http1, io) => http::serve(io, ctx, limits, signal, false).await,
            (Protocol::Http2, io) => http::serve(io, ctx, limits, signal, true).await,
            (Protocol::Opaque, io) => tcp::forward(io, ctx, signal).await,
        },
    }
    Ok(())
}

struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
