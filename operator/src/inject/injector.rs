//! The injector as it runs: the webhook listener on every replica, and — when the chart names
//! its MutatingWebhookConfiguration — the keeper of that configuration and, on the lease holder,
//! the scan for pods created without the proxy.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kube::{Client, runtime::events::Recorder};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use super::{
    Options, Template,
    uninjected::{self, Scanner},
    webhook::{self, Webhook},
};
use crate::{
    Result, Settings,
    certs::{Certs, Source, rotation::Keeper},
    metrics::Metrics,
    settings::FailurePolicy,
};

/// How often the webhook configuration is checked (a `helm upgrade` renders `failurePolicy:
/// Ignore` and no `caBundle` again).
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How soon a failed check is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The injector's parts; see the module docs.
pub struct Injector {
    /// Where `/inject` is served.
    pub listener: TcpListener,
    /// TLS, from the certificate keeper.
    pub tls: Arc<rustls::ServerConfig>,
    /// What answers.
    pub webhook: Webhook,
    /// The webhook configuration's keeper and the scan, when the configuration is named.
    pub configuration: Option<(ConfigurationKeeper, Scanner)>,
}

impl Injector {
    /// Binds `/inject` on `addr` and builds the parts the settings ask for.
    pub async fn bind(
        settings: &Settings,
        addr: SocketAddr,
        template: Arc<Template>,
        client: Client,
        keeper: &Keeper,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Result<Injector> {
        // The API server speaks HTTP/2 or HTTP/1.1 to webhooks.
        let tls = crate::certs::server_config(keeper.resolver(), &[b"h2", b"http/1.1"])?;
        let options = Options { native_sidecars: native_sidecars(&client).await };
        tracing::info!(native_sidecars = options.native_sidecars, "injecting the proxy");
        let configuration = settings.injection.webhook_configuration.clone().map(|name| {
            let keeper = ConfigurationKeeper {
                client: client.clone(),
                name: name.clone(),
                certs: keeper.subscribe(),
                source: settings.certificates.source,
                failure_policy: settings.injection.webhook_failure_policy,
            };
            let scanner = Scanner {
                client: client.clone(),
                configuration: name,
                template: template.clone(),
                options,
                recorder: recorder.clone(),
                metrics: metrics.clone(),
            };
            (keeper, scanner)
        });
        let webhook = Webhook { template, options, metrics, recorder: Some(recorder) };
        let listener = crate::listen::bind(addr, "the injection webhook").await?;
        Ok(Injector { listener, tls, webhook, configuration })
    }

    /// Runs every part until `stop`.
    pub async fn run(self, leader: watch::Receiver<bool>, stop: CancellationToken) {
        let Injector { listener, tls, webhook, configuration } = self;
        let serve = webhook::serve(listener, tls, webhook, stop.clone());
        match configuration {
            // The keeper starts with the listener: `/inject` is served with the certificate
            // the caBundle will trust by the time the failure policy changes.
            Some((keeper, scanner)) => {
                tokio::join!(serve, keeper.run(stop.clone()), uninjected::run(scanner, leader, stop.clone()));
            }
            None => serve.await,
        }
    }
}

/// Keeps the MutatingWebhookConfiguration on our CA (`caBundle`, unless cert-manager sets it)
/// and, once a webhook can call us, on the configured failure policy: at once, whenever the CA
/// changes, and every ten seconds (every two while it fails).
pub struct ConfigurationKeeper {
    /// The API.
    pub client: Client,
    /// The configuration's name.
    pub name: String,
    /// The certificates now, and each replacement.
    pub certs: watch::Receiver<Arc<Certs>>,
    /// Who makes the certificates (with [`Source::External`], cert-manager sets the caBundle).
    pub source: Source,
    /// The failure policy once a webhook can call us.
    pub failure_policy: FailurePolicy,
}

impl ConfigurationKeeper {
    /// Runs until `stop` (or until the certificates stop).
    pub async fn run(self, stop: CancellationToken) {
        let ConfigurationKeeper { client, name, mut certs, source, failure_policy } = self;
        loop {
            let current = certs.borrow_and_update().clone();
            let wanted = webhook::Wanted {
                ca_bundle: (source == Source::SelfSigned).then_some(current.ca_pem.as_str()),
                trust: &current.ca_pem,
                failure_policy: failure_policy.as_str(),
            };
            let wait = match webhook::keep_configuration(&client, &name, wanted).await {
                Ok(0) => CHECK_EVERY,
                Ok(n) => {
                    tracing::info!(changes = n, configuration = %name, failure_policy = failure_policy.as_str(), "webhook configuration updated");
                    CHECK_EVERY
                }
                Err(e) => {
                    tracing::warn!(error = %e, configuration = %name, "cannot update the webhook configuration; retrying");
                    RETRY
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
