//! `breakwater-operator`: the control plane.
//!
//! - [`index`]: one watch per kind (CommunicationPolicy, Service, EndpointSlice, Pod, Namespace)
//!   into reflector stores, each change turned into a trigger; it owns every watch;
//! - [`compile`]: policies, Services, EndpointSlices, Namespaces and a Pod → that pod's sidecar
//!   snapshot (a pure function);
//! - [`snapshots`]: the hub holding every pod's snapshot in a watch channel, recompiling only
//!   the pods a change concerns;
//! - [`controller`]: each policy reconciled into its status, written by the lease holder only
//!   ([`leader`]);
//! - [`configserver`]: the config API — each sidecar's TLS HTTP/2 stream of its pod's snapshot,
//!   authenticated by its projected token; its acknowledgements become [`delivery`] counts,
//!   which the status reads ([`certs`]: the CA and serving certificate, the root CA in every
//!   namespace);
//! - [`inject`]: the sidecar injector (webhook, the webhook configuration's keeper, the scan for
//!   pods without their proxy);
//! - [`admin`]: health, metrics and the loopback debug view of snapshots; [`settings`]: every
//!   knob, as flags and `BREAKWATER_*` variables.
//!
//! [`run`] wires them together (and holds no logic of its own); `main.rs` only parses
//! arguments, installs logging and waits for signals.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
pub mod certs;
pub mod compile;
pub mod configserver;
pub mod controller;
pub mod delivery;
mod error;
pub mod index;
pub mod inject;
pub mod key;
pub mod leader;
pub mod listen;
pub mod metrics;
pub mod settings;
pub mod snapshots;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use breakwater_crds::CommunicationPolicy;
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::controller as kube_controller,
};
use tokio::{
    sync::mpsc,
    task::{JoinHandle, spawn},
};
use tokio_util::sync::CancellationToken;

use self::{
    admin::{Admin, AdminState},
    certs::rotation::Keeper,
    delivery::Deliveries,
    index::{Index, Lenient},
    leader::Leader,
    metrics::Metrics,
    snapshots::Hub,
};
pub use self::{
    error::{Error, Result},
    settings::{LogFormat, Settings},
};

/// The field manager of every write (one for all replicas: a new lease holder takes over the
/// fields of the last one, and a condition it drops is really dropped), and the Events' reporter.
pub const FIELD_MANAGER: &str = "breakwater-operator";

/// Runs the operator until `shutdown` resolves, then stops within `settings.shutdown_timeout`:
/// stop accepting work, let reconciles in flight finish, release the lease.
///
/// The wiring only: each part is built here from the settings, once, and runs on its own.
pub async fn run(settings: Settings, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    // A template that cannot be used stops the operator before it answers anything: better
    // than injecting pods with half a sidecar.
    let template = settings.injection.sidecar_config.as_deref().map(load_template).transpose()?;
    let client = client(&settings).await?;
    check_crd(&client).await?;
    let identity = settings.identity();
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    // Parts that end when `stop` is cancelled, and parts that are aborted.
    let (mut parts, mut background) = (Vec::new(), Vec::new());

    // Health and metrics first, so the kubelet sees a live process while the indexes sync.
    let admin = Admin::bind(&settings).await?;
    let (triggers, queue) = index::triggers();
    let (index, watches) = Index::start(&client, &settings.pod_selector, triggers, metrics.clone());
    background.extend(watches);
    let hub = Arc::new(Hub::new(metrics.clone()));
    let (concerned_tx, concerned_rx) = mpsc::channel(1024);
    background.push(spawn(hub.clone().run(index.clone(), queue, concerned_tx, settings.snapshot_debounce)));
    let listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = Arc::new(configserver::acks::Registry::default());
    let state = AdminState {
        index: index.clone(),
        metrics: metrics.clone(),
        hub: hub.clone(),
        listening: listening.clone(),
        acks: acks.clone(),
        replica: identity.clone(),
    };
    parts.push(spawn(admin.run(state, stop.clone())));

    // The TLS listeners, once their certificate is there (cert-manager may take a while).
    let webhook = settings.webhook_address().zip(template);
    let keeper = if webhook.is_some() || settings.config_address().is_some() {
        Some(Keeper::start(client.clone(), settings.certificate_options(), metrics.clone(), &stop).await?)
    } else {
        None
    };
    let (mut deliveries, mut root_ca, mut injector) = (None, None, None);
    if let (Some(addr), Some(keeper)) = (settings.config_address(), &keeper) {
        let server = configserver::ConfigServer::new(client.clone(), &hub, &index, acks, metrics.clone());
        let api = configserver::ConfigApi::bind(&settings, addr, client.clone(), server, keeper).await?;
        deliveries = Some(Deliveries::new(hub.expected(), api.totals()));
        root_ca = settings.config_api.publish_root_ca.then(|| certs::RootCaPublisher {
            client: client.clone(),
            index: index.clone(),
            certs: keeper.subscribe(),
        });
        parts.push(spawn(api.run(stop.clone())));
        tracing::info!(%addr, "serving the config API");
    }
    if let (Some((addr, template)), Some(keeper)) = (webhook, &keeper) {
        let recorder = controller::recorder(client.clone(), &identity);
        injector = Some(
            inject::Injector::bind(
                &settings,
                addr,
                template,
                client.clone(),
                keeper,
                recorder,
                metrics.clone(),
            )
            .await?,
        );
        tracing::info!(%addr, "serving the injection webhook");
    }
    parts.extend(keeper.map(|k| spawn(k.run(stop.clone()))));
    // Bound with their certificate (or not configured): /ready may answer yes.
    listening.store(true, std::sync::atomic::Ordering::Release);

    let leader = Leader::join(
        client.clone(),
        &settings.namespace,
        &settings.lease_name,
        &identity,
        settings.lease_duration,
        settings.lease_renew_before,
    )
    .await?;
    background.push(spawn(report_leadership(leader.subscribe(), metrics.clone())));
    parts.push(spawn(controller::routes::run(
        client.clone(),
        index.clone(),
        leader.subscribe(),
        stop.clone().cancelled_owned(),
    )));
    parts.extend(root_ca.map(|p| spawn(p.run(leader.subscribe(), stop.clone()))));
    parts.extend(injector.map(|i| spawn(i.run(leader.subscribe(), stop.clone()))));

    let ctx = Arc::new(controller::Context {
        client: client.clone(),
        index,
        leader: leader.subscribe(),
        recorder: controller::recorder(client, &identity),
        metrics,
        deliveries,
        resync: settings.resync,
    });
    let inputs = controller::Inputs {
        concerned: concerned_rx,
        config: kube_controller::Config::default()
            .debounce(settings.reconcile_debounce)
            .concurrency(settings.reconcile_concurrency),
    };
    let mut controller = spawn(controller::run(ctx, inputs, stop.clone().cancelled_owned()));
    tracing::info!(%identity, version = env!("CARGO_PKG_VERSION"), "breakwater-operator started");

    tokio::select! {
        // SIGTERM or SIGINT.
        _ = shutdown => tracing::info!("shutting down"),
        // The controller ended on its own (a panic): better restarted than serving without status.
        _ = &mut controller => tracing::error!("the controller stopped"),
    }
    stop.cancel();
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    wind_down(settings.shutdown_timeout, controller, parts, background).await;
    // Every holder of a lease receiver is gone: the lease can be released.
    leader.release(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
    tracing::info!("stopped");
    Ok(())
}

/// Once `stop` is cancelled: reconciles in flight get half of `timeout`, the other parts a
/// quarter (to close listeners and delete this replica's acknowledgement report); then whatever
/// still runs is aborted (the lease gets what is left).
async fn wind_down(
    timeout: std::time::Duration,
    mut controller: JoinHandle<()>,
    mut parts: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
) {
    // A handle is awaited only while its task runs: one polled to completion must not be
    // polled again (the controller may have ended on its own).
    let half = timeout / 2;
    if !controller.is_finished() && tokio::time::timeout(half, &mut controller).await.is_err() {
        tracing::warn!(?half, "reconciles still running at shutdown were cut");
        controller.abort();
        let _ = controller.await;
    }
    let quarter = timeout / 4;
    let stopping = futures_util::future::join_all(parts.iter_mut().filter(|t| !t.is_finished()));
    if tokio::time::timeout(quarter, stopping).await.is_err() {
        tracing::warn!(?quarter, "parts still stopping at shutdown were cut");
    }
    for t in parts.into_iter().chain(background).filter(|t| !t.is_finished()) {
        t.abort();
        let _ = t.await;
    }
}

fn load_template(path: &std::path::Path) -> Result<Arc<inject::Template>> {
    let template = inject::Template::load(path).map_err(Error::Template)?;
    tracing::info!(path = %path.display(), image = %template.image, "injection template loaded");
    Ok(Arc::new(template))
}

async fn report_leadership(mut rx: tokio::sync::watch::Receiver<bool>, metrics: Arc<Metrics>) {
    loop {
        let leader = *rx.borrow_and_update();
        metrics.set_leader(leader);
        tracing::info!(
            leader,
            "lease {}",
            if leader {
                "acquired: writing status"
            } else {
                "not held: status is written by another replica"
            }
        );
        // A closed channel: the election stopped.
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A client from `--kubeconfig`, else `KUBECONFIG` or `~/.kube/config`, else the pod's
/// ServiceAccount.
async fn client(settings: &Settings) -> Result<Client> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Error::ClientConfig(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::ClientConfig(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| Error::ClientConfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| Error::ClientConfig(e.to_string()))
}

/// Fails with an install hint when the CRD is not installed (controller-rs's start-up check).
async fn check_crd(client: &Client) -> Result<()> {
    let api: Api<Lenient<CommunicationPolicy>> = Api::all(client.clone());
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::CrdMissing(kube::Error::Api(s))),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            Err(Error::Forbidden { what: "list communicationpolicies".into(), source: kube::Error::Api(s) })
        }
        Err(source) => Err(Error::Kube { what: "listing CommunicationPolicies".into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_parts_that_stop_aborts_the_rest_and_never_polls_a_finished_task() {
        let stop = CancellationToken::new();
        // The controller ended on its own, and was awaited once already (as `run`'s select does).
        let mut controller = spawn(async {});
        (&mut controller).await.expect("the controller task");
        // A part that finishes its work after `stop`, one that is already done, one that hangs.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let graceful = spawn({
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                let _ = done_tx.send(());
            }
        });
        let finished = spawn(async {});
        let hung = spawn(std::future::pending::<()>());
        let background = vec![spawn(std::future::pending::<()>())];
        tokio::task::yield_now().await;
        stop.cancel();
        let started = tokio::time::Instant::now();
        wind_down(Duration::from_secs(8), controller, vec![graceful, finished, hung], background).await;
        assert_eq!(done_rx.await, Ok(()), "the graceful part finished its work");
        // Only the hung part's quarter was waited for (the clock is paused: this is exact).
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
