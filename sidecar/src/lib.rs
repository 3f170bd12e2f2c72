//! `breakwater-sidecar`: the proxy that sits beside every application container and carries
//! its calls, enforcing `CommunicationPolicy`: timeouts, retries with backoff and budgets,
//! circuit breakers and bulkheads.
//!
//! `main.rs` only parses arguments, installs tracing, waits for signals and bounds the drain;
//! everything else is here, so tests start a [`Sidecar`] in-process on `127.0.0.1:0`.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
pub mod config;
pub mod drain;
pub mod init;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod store;
pub mod telemetry;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::oneshot};

use crate::{drain::Drain, metrics::Direction, store::Store};

/// What a sidecar shares with the process around it: the metrics registry (the trace pipeline
/// counts into it too) and, when traces are exported, which requests to record.
#[derive(Debug, Default)]
pub struct Observability {
    /// Every metric the sidecar exports.
    pub metrics: Arc<metrics::Metrics>,
    /// Which requests get spans; `None`: tracing is off.
    pub sampling: Option<telemetry::sampling::Policy>,
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// The bound outbound listener.
    pub outbound: SocketAddr,
    /// The bound inbound listener, when an application is configured.
    pub inbound: Option<SocketAddr>,
    /// The bound admin listener.
    pub admin: SocketAddr,
    /// The configuration.
    pub store: Arc<Store>,
    drain: Drain,
    ready: Arc<AtomicBool>,
    stop_admin: Option<oneshot::Sender<()>>,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({what})"))
}

impl Sidecar {
    /// Compiles `config_text`, binds every listener and starts serving. With `watch`, the file
    /// at that path is watched (and SIGHUP honoured) for reloads.
    pub async fn start(config_text: &str, watch: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_with(config_text, watch, None, Observability::default()).await
    }

    /// Cluster mode: the sidecar's own settings from `settings_text` (a SidecarConfig without
    /// Services), its snapshot from the operator's stream. It starts from the last good
    /// snapshot on disk when there is one; `/ready` answers 200 once a snapshot is applied.
    pub async fn start_cluster(
        settings_text: &str,
        control_plane: store::stream::ControlPlane,
    ) -> anyhow::Result<Self> {
        Self::start_with(settings_text, None, Some(control_plane), Observability::default()).await
    }

    /// [`Sidecar::start`] (`control_plane` `None`) or [`Sidecar::start_cluster`], counting into
    /// `observability`'s metrics and recording requests as its sampling policy says.
    pub async fn start_with(
        config_text: &str,
        watch: Option<PathBuf>,
        control_plane: Option<store::stream::ControlPlane>,
        observability: Observability,
    ) -> anyhow::Result<Self> {
        let store = Arc::new(
            Store::new(config_text, observability.metrics)
                .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?
                .with_sampling(observability.sampling),
        );
        let listeners = store.load().config.listeners;
        let drain = Drain::new();
        let ready = Arc::new(AtomicBool::new(false));

        let admin = bind(listeners.admin, "admin").await?;
        let admin_addr = admin.local_addr()?;
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        let state = admin::AdminState {
            store: store.clone(),
            ready: ready.clone(),
            drain: drain.clone(),
            serves: admin::Serves::All,
        };
        tokio::spawn(admin::serve(admin, state, async {
            let _ = admin_stopped.await;
        }));

        let outbound = bind(listeners.outbound, "outbound").await?;
        let outbound_addr = outbound.local_addr()?;
        tokio::spawn(proxy::listener::serve(outbound, Direction::Outbound, store.clone(), drain.clone()));

        let inbound_addr = match listeners.inbound {
            Some(addr) => {
                let inbound = bind(addr, "inbound").await?;
                let a = inbound.local_addr()?;
                tokio::spawn(proxy::listener::serve(
                    inbound,
                    Direction::Inbound,
                    store.clone(),
                    drain.clone(),
                ));
                Some(a)
            }
            None => None,
        };

        if let Some(path) = watch {
            let (store, signal) = (store.clone(), drain.signal());
            tokio::spawn(async move {
                if let Err(e) = store::watch_file(path, store, signal).await {
                    tracing::error!(error = %e, "cannot watch the configuration file; reload with SIGHUP only");
                }
            });
        }
        match control_plane {
            None => ready.store(true, Ordering::Release),
            Some(cp) => {
                if cp.snapshot_dir.as_deref().is_some_and(|dir| store::stream::load_from_disk(&store, dir)) {
                    ready.store(true, Ordering::Release);
                }
                tokio::spawn(store::stream::follow(cp, store.clone(), ready.clone(), drain.signal()));
            }
        }
        if ready.load(Ordering::Acquire) {
            tracing::info!(outbound = %outbound_addr, inbound = ?inbound_addr, admin = %admin_addr, "sidecar ready");
        } else {
            tracing::info!(outbound = %outbound_addr, inbound = ?inbound_addr, admin = %admin_addr, "sidecar listening; ready once the first snapshot is applied");
        }
        Ok(Self {
            outbound: outbound_addr,
            inbound: inbound_addr,
            admin: admin_addr,
            store,
            drain,
            ready,
            stop_admin: Some(stop_admin),
        })
    }

    /// Also serves `/live`, `/ready` and `/metrics` on `addr`, for the kubelet's probes and
    /// Prometheus from outside the pod, and with `diagnostics` `/config` and `/breakers` too (for
    /// `kubectl breakwater`, through the API server's pod proxy); returns the bound address.
    pub async fn serve_probes(&self, addr: SocketAddr, diagnostics: bool) -> anyhow::Result<SocketAddr> {
        let listener = bind(addr, "probes").await?;
        let bound = listener.local_addr()?;
        let state = admin::AdminState {
            store: self.store.clone(),
            ready: self.ready.clone(),
            drain: self.drain.clone(),
            serves: if diagnostics { admin::Serves::ProbesAndDiagnostics } else { admin::Serves::Probes },
        };
        tokio::spawn(admin::serve(listener, state, std::future::pending::<()>()));
        Ok(bound)
    }

    /// Starts draining: `/ready` turns 503, listeners stop accepting, connections finish.
    pub fn start_drain(&self) {
        self.drain.start();
    }

    /// Drains and waits up to `grace` for in-flight work. Returns how many connections were
    /// still open at the deadline (and are cut).
    pub async fn shutdown(mut self, grace: Duration) -> usize {
        self.drain.start();
        let cut = self.drain.wait(grace).await;
        if let Some(stop) = self.stop_admin.take() {
            let _ = stop.send(());
        }
        cut
    }
}
