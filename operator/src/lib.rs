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

use std::sync::Arc;

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
    let health = admin::bind(settings.health_address(), "/live and /ready").await?;
    let metrics_listener = admin::bind(settings.metrics_address(), "/metrics").await?;
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

    // Health and metrics are served from here on (the certificates may take a while when
    // cert-manager makes them).
    let state = AdminState { index: index.clone(), metrics: metrics.clone(), hub: hub.clone() };
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

    let webhook = settings.webhook_address().zip(template);
    let certs = if settings.config_address().is_some() || webhook.is_some() {
        let options = certs::rotation::Options {
            namespace: settings.namespace.clone(),
            secret: settings.config_api.tls_secret.clone(),
            service: settings.config_api.service_name.clone(),
            source: settings.certificates.source,
            renew_before: settings.certificates.renew_before,
        };
        let keeper = certs::rotation::Keeper::start(client.clone(), options, metrics.clone(), &stop).await?;
        let certs = (keeper.resolver(), keeper.subscribe());
        tasks.push(tokio::spawn(keeper.run(stop.clone())));
        Some(certs)
    } else {
        None
    };

    let acks = Arc::new(configserver::acks::Registry::default());
    let (totals_tx, totals_rx) = tokio::sync::watch::channel(Arc::default());
    let deliveries = configserver::acks::Deliveries { expected: hub.expected(), totals: totals_rx };
    if let (Some(addr), Some((resolver, _))) = (settings.config_address(), &certs) {
        let tls = certs::server_config(resolver.clone(), &[b"h2"])?;
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
        tracing::info!(%addr, "serving the config API");
    }
    let mut scanner = None;
    if let (Some((addr, template)), Some((resolver, current))) = (webhook, &certs) {
        // The API server speaks HTTP/2 or HTTP/1.1 to webhooks.
        let tls = certs::server_config(resolver.clone(), &[b"h2", b"http/1.1"])?;
        let options = inject::Options { native_sidecars: native_sidecars(&client).await };
        let listener = admin::bind(addr, "the injection webhook").await?;
        let webhook = inject::webhook::Webhook {
            template: template.clone(),
            options,
            metrics: metrics.clone(),
            recorder: Some(controller::recorder(client.clone(), &identity)),
        };
        tasks.push(tokio::spawn(inject::webhook::serve(listener, tls, webhook, stop.clone())));
        if let Some(name) = settings.injection.webhook_configuration.clone() {
            // Only now that /inject is served with the certificate the caBundle will trust.
            tasks.push(tokio::spawn(keep_webhook_configuration(
                client.clone(),
                name.clone(),
                current.clone(),
                settings.certificates.source,
                settings.injection.webhook_failure_policy,
                stop.clone(),
            )));
            scanner = Some(inject::uninjected::Scanner {
                client: client.clone(),
                configuration: name,
                template,
                options,
                recorder: controller::recorder(client.clone(), &identity),
                metrics: metrics.clone(),
            });
        }
        tracing::info!(%addr, native_sidecars = options.native_sidecars, "serving the injection webhook");
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
    if let Some((_, current)) =
        certs.filter(|_| settings.config_api.publish_root_ca && settings.config_address().is_some())
    {
        tasks.push(tokio::spawn(publish_root_ca(client.clone(), index.clone(), leader.subscribe(), current)));
    }
    if let Some(scanner) = scanner {
        tasks.push(tokio::spawn(inject::uninjected::run(scanner, leader.subscribe(), stop.clone())));
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
/// the system ones) on the current CA: checked when namespaces change, when the CA changes, and
/// every five minutes.
async fn publish_root_ca(
    client: Client,
    index: Index,
    mut leader: tokio::sync::watch::Receiver<bool>,
    mut certs: tokio::sync::watch::Receiver<Arc<certs::Certs>>,
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
            // A new CA (renewed, or replaced in the Secret): publish it everywhere.
            r = certs.changed() => if r.is_err() { return } else { done.clear() },
        }
        let ca_pem = certs.borrow().ca_pem.clone();
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

/// How often the webhook configuration is checked (a `helm upgrade` renders `failurePolicy:
/// Ignore` and no `caBundle` again).
const WEBHOOK_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the webhook configuration on our CA (`caBundle`, unless cert-manager sets it) and,
/// once a webhook can call us, on the configured failure policy: at once, whenever the CA
/// changes, and every ten seconds (retrying every 2 s while it fails).
async fn keep_webhook_configuration(
    client: Client,
    name: String,
    mut certs: tokio::sync::watch::Receiver<Arc<certs::Certs>>,
    source: certs::Source,
    failure_policy: settings::FailurePolicy,
    stop: CancellationToken,
) {
    loop {
        let current = certs.borrow_and_update().clone();
        let wanted = inject::webhook::Wanted {
            ca_bundle: (source == certs::Source::SelfSigned).then_some(current.ca_pem.as_str()),
            trust: &current.ca_pem,
            failure_policy: failure_policy.as_str(),
        };
        let wait = match inject::webhook::keep_configuration(&client, &name, wanted).await {
            Ok(0) => WEBHOOK_CHECK,
            Ok(n) => {
                tracing::info!(changes = n, configuration = %name, failure_policy = failure_policy.as_str(), "webhook configuration updated");
                WEBHOOK_CHECK
            }
            Err(e) => {
                tracing::warn!(error = %e, configuration = %name, "cannot update the webhook configuration; retrying");
                std::time::Duration::from_secs(2)
            }
        };
        tokio::select! {
            // The next check.
            _ = tokio::time::sleep(wait) => {}
            // A new CA.
            r = certs.changed() => if r.is_err() { return },
            // Shutting down.
            _ = stop.cancelled() => return,
        }
    }
}
