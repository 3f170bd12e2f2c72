//! `breakwater-operator`: the control plane.
//!
//! - [`index`]: one watch per kind (CommunicationPolicy, Service, EndpointSlice, Pod, Namespace)
//!   into reflector stores, each change turned into a trigger;
//! - [`compile`]: policies, Services, EndpointSlices, Namespaces and a Pod → that pod's sidecar
//!   snapshot (a pure function);
//! - [`snapshots`]: the hub holding every pod's snapshot in a watch channel, recompiling only
//!   the pods a change concerns;
//! - [`controller`]: each policy reconciled into its status, written by the lease holder only
//!   ([`leader`]);
//! - [`configserver`]: the config API — each sidecar's TLS HTTP/2 stream of its pod's snapshot,
//!   authenticated by its projected token, acknowledged back into the policies' status
//!   ([`certs`]: the CA and serving certificate);
//! - [`admin`]: health, metrics and the loopback debug view of snapshots; [`settings`]: every
//!   knob, as flags and `BREAKWATER_*` variables.
//!
//! [`run`] wires them together; `main.rs` only parses arguments, installs logging and waits
//! for signals.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
pub mod certs;
pub mod compile;
pub mod configserver;
pub mod controller;
mod error;
pub mod index;
pub mod inject;
pub mod key;
pub mod leader;
pub mod metrics;
pub mod settings;
pub mod snapshots;

use std::{net::SocketAddr, sync::Arc};

use breakwater_crds::CommunicationPolicy;
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::controller as kube_controller,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::{
    admin::{AdminState, Endpoints},
    index::{Index, Lenient},
    leader::Leader,
    metrics::Metrics,
    snapshots::Hub,
};
pub use self::{
    error::{Error, Result},
    settings::{LogFormat, Settings},
};

/// Runs the operator until `shutdown` resolves, then stops within `settings.shutdown_timeout`:
/// stop accepting work, let reconciles in flight finish, release the lease.
pub async fn run(settings: Settings, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    // A template that cannot be used stops the operator before it answers anything: better
    // than injecting pods with half a sidecar.
    let template = match &settings.injection.sidecar_config {
        Some(path) => {
            let template = inject::Template::load(path).map_err(Error::Template)?;
            tracing::info!(path = %path.display(), image = %template.image, "injection template loaded");
            Some(Arc::new(template))
        }
        None => None,
    };
    let client = client(&settings).await?;
    check_crd(&client).await?;
    let identity = settings.identity();
    let metrics = Arc::new(Metrics::new());

    // Health and metrics first, so the kubelet sees a live process while the indexes sync.
    let stop = CancellationToken::new();
    let health =
        admin::bind(SocketAddr::new(settings.bind_address, settings.health_port), "/live and /ready").await?;
    let metrics_listener =
        admin::bind(SocketAddr::new(settings.bind_address, settings.metrics_port), "/metrics").await?;
    let debug = match settings.debug_address.0 {
        Some(addr) => Some(admin::bind(addr, "/debug/snapshots").await?),
        None => None,
    };

    let (triggers, queue) = index::triggers();
    let (index, policy_stream, mut tasks) =
        Index::start(&client, &settings.pod_selector, triggers, metrics.clone());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let (concerned_tx, concerned_rx) = mpsc::channel(1024);
    tasks.push(tokio::spawn(hub.clone().run(
        index.clone(),
        queue,
        concerned_tx.clone(),
        settings.snapshot_debounce,
    )));

    let acks = Arc::new(configserver::acks::Registry::default());
    let (totals_tx, totals_rx) = tokio::sync::watch::channel(Arc::default());
    let deliveries = configserver::acks::Deliveries { expected: hub.expected(), totals: totals_rx };
    let mut config_server = None;
    if let Some(port) = settings.config_api.config_port {
        let api = &settings.config_api;
        let certs = certs::ensure(&client, &settings.namespace, &api.tls_secret, &api.service_name).await?;
        let tls = certs::server_config(&certs)?;
        let addr = SocketAddr::new(settings.bind_address, port);
        let listener = admin::bind(addr, "the config API").await?;
        let server = configserver::ConfigServer {
            hub: hub.clone(),
            index: index.clone(),
            auth: configserver::auth::Authenticator::new(client.clone()),
            acks: acks.clone(),
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(configserver::serve(listener, tls, server, stop.clone())));
        let report = format!("{}-acks-{}", settings.lease_name, identity);
        tasks.push(tokio::spawn(acks.clone().publish(
            client.clone(),
            settings.namespace.clone(),
            report,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(configserver::acks::aggregate(
            client.clone(),
            settings.namespace.clone(),
            totals_tx,
            metrics.clone(),
        )));
        tasks.push(tokio::spawn(configserver::acks::reconcile_on_delivery(
            deliveries.clone(),
            index.clone(),
            concerned_tx.clone(),
        )));
        config_server = Some(certs);
        tracing::info!(%addr, "serving the config API");
    }
    if let (Some(port), Some(template)) = (settings.injection.webhook_port, template) {
        let api = &settings.config_api;
        let certs = match &config_server {
            Some(c) => c.clone(),
            None => certs::ensure(&client, &settings.namespace, &api.tls_secret, &api.service_name).await?,
        };
        // The API server speaks HTTP/2 or HTTP/1.1 to webhooks.
        let tls = certs::server_config_alpn(&certs, &[b"h2", b"http/1.1"])?;
        let options = inject::Options { native_sidecars: native_sidecars(&client).await };
        let addr = SocketAddr::new(settings.bind_address, port);
        let listener = admin::bind(addr, "the injection webhook").await?;
        let webhook = inject::webhook::Webhook {
            template,
            options,
            metrics: metrics.clone(),
            recorder: Some(controller::recorder(client.clone(), &identity)),
        };
        tasks.push(tokio::spawn(inject::webhook::serve(listener, tls, webhook, stop.clone())));
        if let Some(name) = settings.injection.webhook_configuration.clone() {
            tasks.push(tokio::spawn(keep_ca_bundle(
                client.clone(),
                name,
                certs.ca_pem.clone(),
                stop.clone(),
            )));
        }
        tracing::info!(%addr, native_sidecars = options.native_sidecars, "serving the injection webhook");
    }

    let state = AdminState { index: index.clone(), metrics: metrics.clone(), hub };
    let mut servers = vec![
        tokio::spawn(admin::serve(health, Endpoints::Health, state.clone(), stop.clone().cancelled_owned())),
        tokio::spawn(admin::serve(
            metrics_listener,
            Endpoints::Metrics,
            state.clone(),
            stop.clone().cancelled_owned(),
        )),
    ];
    if let Some(debug) = debug {
        servers.push(tokio::spawn(admin::serve(
            debug,
            Endpoints::Debug,
            state,
            stop.clone().cancelled_owned(),
        )));
    }

    let leader = Leader::join(
        client.clone(),
        &settings.namespace,
        &settings.lease_name,
        &identity,
        settings.lease_duration,
        settings.lease_renew_before,
    )
    .await?;
    tasks.push(tokio::spawn(report_leadership(leader.subscribe(), metrics.clone())));
    if let Some(certs) = config_server.filter(|_| settings.config_api.publish_root_ca) {
        tasks.push(tokio::spawn(publish_root_ca(
            client.clone(),
            index.clone(),
            leader.subscribe(),
            certs.ca_pem,
        )));
    }

    let ctx = Arc::new(controller::Context {
        client: client.clone(),
        index,
        leader: leader.subscribe(),
        recorder: controller::recorder(client, &identity),
        metrics,
        deliveries: Some(Arc::new(deliveries)),
        resync: settings.resync,
    });
    let inputs = controller::Inputs {
        policies: policy_stream,
        concerned: concerned_rx,
        config: kube_controller::Config::default()
            .debounce(settings.reconcile_debounce)
            .concurrency(settings.reconcile_concurrency),
    };
    let mut controller = tokio::spawn(controller::run(ctx, inputs, stop.clone().cancelled_owned()));
    tracing::info!(%identity, version = env!("CARGO_PKG_VERSION"), "breakwater-operator started");

    tokio::select! {
        // SIGTERM or SIGINT.
        _ = shutdown => tracing::info!("shutting down"),
        // The controller ended on its own (its watch stream closed).
        _ = &mut controller => tracing::warn!("the controller stopped"),
    }
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    stop.cancel();
    let half = settings.shutdown_timeout / 2;
    if tokio::time::timeout(half, &mut controller).await.is_err() {
        tracing::warn!(?half, "reconciles still running at shutdown were cut");
        controller.abort();
        let _ = controller.await;
    }
    for t in tasks.into_iter().chain(servers) {
        t.abort();
        let _ = t.await;
    }
    leader.release(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
    tracing::info!("stopped");
    Ok(())
}

/// Namespaces that never get the root CA.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// While this replica leads, keeps the `breakwater-root-ca` ConfigMap in every namespace (but
/// the system ones): checked when namespaces change, and every five minutes.
async fn publish_root_ca(
    client: Client,
    index: Index,
    mut leader: tokio::sync::watch::Receiver<bool>,
    ca_pem: String,
) {
    let mut done: std::collections::HashSet<String> = Default::default();
    let mut refresh = tokio::time::interval(std::time::Duration::from_secs(300));
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            // Start over: republish everywhere.
            _ = refresh.tick() => done.clear(),
            // Look for new namespaces.
            _ = poll.tick() => {}
            // The lease changed hands.
            r = leader.changed() => if r.is_err() { return },
        }
        if !*leader.borrow() || !index.is_ready() {
            continue;
        }
        for ns in index.namespaces.state() {
            let name = ns.metadata.name.clone().unwrap_or_default();
            if SYSTEM_NAMESPACES.contains(&name.as_str())
                || ns.metadata.deletion_timestamp.is_some()
                || done.contains(&name)
            {
                continue;
            }
            match certs::publish_root_ca(&client, &name, &ca_pem).await {
                Ok(()) => {
                    done.insert(name);
                }
                Err(e) => {
                    tracing::warn!(namespace = %name, error = %e, "publishing the root CA failed; retrying")
                }
            }
        }
    }
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

/// Whether the API server runs native sidecars (Kubernetes 1.29 and later); when its version
/// cannot be read, the regular-container fallback, which works everywhere.
async fn native_sidecars(client: &Client) -> bool {
    match client.apiserver_version().await {
        Ok(v) => {
            let minor: u32 = v.minor.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
            v.major == "1" && minor >= 29 || v.major.parse::<u32>().is_ok_and(|m| m > 1)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the API server's version; injecting the proxy as a regular container");
            false
        }
    }
}

/// Keeps the webhook configuration's `caBundle` on our CA: at once (retrying every 5 s until it
/// works), then every minute (a `helm upgrade` or a person may have reset it).
async fn keep_ca_bundle(client: Client, name: String, ca_pem: String, stop: CancellationToken) {
    loop {
        let wait = match inject::webhook::patch_ca_bundle(&client, &name, &ca_pem).await {
            Ok(0) => std::time::Duration::from_secs(60),
            Ok(n) => {
                tracing::info!(webhooks = n, configuration = %name, "caBundle set");
                std::time::Duration::from_secs(60)
            }
            Err(e) => {
                tracing::warn!(error = %e, configuration = %name, "cannot set the webhook's caBundle; retrying");
                std::time::Duration::from_secs(5)
            }
        };
        tokio::select! {
            // The next check.
            _ = tokio::time::sleep(wait) => {}
            // Shutting down.
            _ = stop.cancelled() => return,
        }
    }
}
