//! Keeping the served certificate current without a restart.
//!
//! [`Keeper::start`] loads the Secret (creating it first when the operator makes its own
//! certificates) and hands every listener the same [`Resolver`]. [`Keeper::run`] then watches
//! that one Secret (a `metadata.name` field selector, so RBAC can name it) and:
//!
//! - swaps in whatever valid certificate appears there (a `kubectl apply`, another replica's
//!   renewal, cert-manager): the next TLS handshake gets it, open connections keep theirs;
//! - keeps serving the last good one when the Secret holds something unusable (unreadable PEM,
//!   a key that does not match), and says so in the log and in
//!   `breakwater_operator_certificate_loads_total{result="invalid"}`;
//! - with [`Source::SelfSigned`], renews before expiry — checked on every change and every
//!   hour: the serving certificate `renew_before` ahead of its `notAfter`, the CA when it would
//!   expire before a new serving certificate does (the new CA is bundled with the old one in
//!   `ca.crt`, so clients that still trust only the old CA keep working until it expires). The
//!   renewal is a `replace` at the resourceVersion read: two replicas renewing at once → one
//!   wins, the other's write conflicts and the watch brings it the winner's.
//!
//! Subscribers ([`Keeper::subscribe`]) see each new [`Certs`]: the webhook configuration's
//! `caBundle` and the `breakwater-root-ca` ConfigMaps follow the CA.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Certs, Resolver, SERVING_DAYS, Source, ensure, from_secret, generate, service_ips};
use crate::{Error, Result, metrics::Metrics};

/// How often the expiry is checked when nothing changes.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How long [`Keeper::start`] waits for an external Secret before it says so again.
const WAITING_NOTE: Duration = Duration::from_secs(30);

/// Where the certificates live and who makes them.
#[derive(Debug, Clone)]
pub struct Options {
    /// The operator's namespace (the Secret and the Service are there).
    pub namespace: String,
    /// The Secret.
    pub secret: String,
    /// The operator's Service, named in the serving certificate.
    pub service: String,
    /// Who makes them.
    pub source: Source,
    /// How long before the serving certificate expires it is renewed (self-signed only).
    pub renew_before: Duration,
}

/// What needs renewing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing before the given time (the serving certificate's `notAfter` − `renew_before`).
    Nothing(time::OffsetDateTime),
    /// The serving certificate (expiring, or unreadable); the CA can sign the next one.
    Serving,
    /// The CA too (expiring before a new serving certificate would, unreadable, or its key
    /// missing).
    Ca,
}

/// What `certs` needs at `now`.
pub fn due(certs: &Certs, now: time::OffsetDateTime, renew_before: Duration) -> Due {
    let renew_before = time::Duration::try_from(renew_before).unwrap_or(time::Duration::MAX);
    let ca_ok = certs.ca_key_pem.as_deref().is_some_and(|k| rcgen::KeyPair::from_pem(k).is_ok())
        && super::not_after(&certs.ca_pem)
            .is_ok_and(|end| end > now + time::Duration::days(SERVING_DAYS) + renew_before);
    if !ca_ok {
        return Due::Ca;
    }
    match certs.not_after() {
        Ok(end) if end - renew_before > now && certs.certified_key().is_ok() => {
            Due::Nothing(end - renew_before)
        }
        _ => Due::Serving,
    }
}

/// Keeps the certificates current; see the module docs.
pub struct Keeper {
    client: Client,
    options: Options,
    resolver: Arc<Resolver>,
    current: watch::Sender<Arc<Certs>>,
    metrics: Arc<Metrics>,
    /// The Secret's content was unusable when last seen: renew it even if what is served is fine.
    broken: bool,
}

impl Keeper {
    /// Loads the certificates: creates them first when the operator makes its own; waits for
    /// the Secret when someone else does (until `stop`).
    pub async fn start(
        client: Client,
        options: Options,
        metrics: Arc<Metrics>,
        stop: &CancellationToken,
    ) -> Result<Keeper> {
        if options.source == Source::SelfSigned
            && time::Duration::try_from(options.renew_before)
                .map_or(true, |b| b >= time::Duration::days(SERVING_DAYS / 2))
        {
            return Err(Error::Certificate(format!(
                "--cert-renew-before {} must be less than half the serving certificate's {SERVING_DAYS} days",
                humantime::format_duration(options.renew_before)
            )));
        }
        let certs = match options.source {
            Source::SelfSigned => {
                ensure(&client, &options.namespace, &options.secret, &options.service).await?
            }
            Source::External => wait_for(&client, &options, stop).await?,
        };
        let key = certs.certified_key()?;
        metrics.certificate_loaded("loaded", certs.not_after().map(|t| t.unix_timestamp()).ok());
        let (current, _) = watch::channel(Arc::new(certs));
        Ok(Keeper {
            client,
            options,
            resolver: Arc::new(Resolver::new(key)),
            current,
            metrics,
            broken: false,
        })
    }

    /// The resolver every listener presents.
    pub fn resolver(&self) -> Arc<Resolver> {
        self.resolver.clone()
    }

    /// The certificates now, and each replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Certs>> {
        self.current.subscribe()
    }

    /// Watches the Secret, reloads and renews, until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.options.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.options.secret));
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                // The Secret changed (or the watch relisted it).
                e = events.next() => match e {
                    Some(Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))) => self.seen(&s),
                    Some(Ok(watcher::Event::Delete(_))) => {
                        tracing::warn!(secret = %self.options.secret, "the certificates' Secret was deleted; still serving the last certificate");
                        self.broken = true;
                    }
                    Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, secret = %self.options.secret, "watching the certificates' Secret failed; retrying");
                        continue;
                    }
                    None => return,
                },
                // The hourly expiry check.
                _ = check.tick() => {}
                // Shutting down.
                _ = stop.cancelled() => return,
            }
            match self.options.source {
                Source::SelfSigned => {
                    if let Err(e) = self.renew_if_due().await {
                        tracing::warn!(error = %e, "renewing the certificates failed; retrying at the next change or in an hour");
                    }
                }
                Source::External => {
                    let current = self.current.borrow().clone();
                    if let Due::Serving | Due::Ca =
                        due(&current, time::OffsetDateTime::now_utc(), Duration::ZERO)
                    {
                        tracing::warn!(secret = %self.options.secret, "the served certificate has expired and nothing renewed it (is cert-manager running?)");
                    }
                }
            }
        }
    }

    /// What the watch brought.
    fn seen(&mut self, secret: &Secret) {
        match from_secret(secret, &self.options.namespace, &self.options.secret) {
            Ok(certs) => self.broken = !self.load(certs),
            Err(e) => {
                tracing::warn!(error = %e, "the certificates' Secret cannot be used; still serving the last certificate");
                self.metrics.certificate_loaded("invalid", None);
                self.broken = true;
            }
        }
    }

    /// Serves `certs` if they differ from what is served and can be used; false if they cannot.
    fn load(&self, certs: Certs) -> bool {
        if **self.current.borrow() == certs {
            return true;
        }
        let checked = usable_ca(&certs.ca_pem).and_then(|()| {
            let (key, not_after) = (certs.certified_key()?, certs.not_after()?);
            // An expired certificate would be refused by every API server: keep the last one.
            if not_after <= time::OffsetDateTime::now_utc() {
                return Err(Error::Certificate(format!("tls.crt expired at {not_after}")));
            }
            Ok((key, not_after))
        });
        match checked {
            Ok((key, not_after)) => {
                self.resolver.set(key);
                self.metrics.certificate_loaded("loaded", Some(not_after.unix_timestamp()));
                tracing::info!(%not_after, "serving a new certificate");
                self.current.send_replace(Arc::new(certs));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the certificates' Secret cannot be used; still serving the last certificate");
                self.metrics.certificate_loaded("invalid", None);
                false
            }
        }
    }

    /// Renews what is due (or what the Secret holds unusably), writing the Secret.
    async fn renew_if_due(&mut self) -> Result<()> {
        let now = time::OffsetDateTime::now_utc();
        if !self.broken
            && matches!(due(&self.current.borrow(), now, self.options.renew_before), Due::Nothing(_))
        {
            return Ok(());
        }
        let Options { namespace, secret: name, service, renew_before, .. } = &self.options;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let kube = |what: &str| {
            let what = format!("{what} Secret {namespace}/{name}");
            move |source| Error::Kube { what, source }
        };
        let Some(mut secret) = api.get_opt(name).await.map_err(kube("reading"))? else {
            // Deleted: made again (a new CA; the caBundle and ConfigMaps follow it).
            let certs = ensure(&self.client, namespace, name, service).await?;
            self.broken = !self.load(certs);
            return Ok(());
        };
        let stored = from_secret(&secret, namespace, name).ok();
        let what = stored.as_ref().map_or(Due::Ca, |c| due(c, now, *renew_before));
        let ca = match (&what, &stored) {
            // Another replica renewed it already: serve that.
            (Due::Nothing(_), Some(c)) => {
                self.broken = !self.load(c.clone());
                return Ok(());
            }
            (Due::Serving, Some(c)) => c.ca_key_pem.clone().map(|key| (c.ca_pem.clone(), key)),
            _ => None,
        };
        let ips = service_ips(&self.client, namespace, service).await?;
        let mut certs =
            generate(namespace, service, &ips, ca.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))
                .map_err(|e| Error::Certificate(e.to_string()))?;
        if ca.is_none() {
            // A new CA: clients keep trusting the old one beside it until it expires.
            if let Some(old) = stored.as_ref().and_then(|c| still_valid_first(&c.ca_pem, now)) {
                certs.ca_pem = format!("{}{old}", certs.ca_pem);
            }
        }
        secret.data = Some(certs.to_data());
        secret.string_data = None;
        match api.replace(name, &PostParams::default(), &secret).await {
            Ok(_) => {
                let not_after = certs.not_after()?;
                tracing::info!(renewed = if ca.is_some() { "serving certificate" } else { "CA and serving certificate" }, %not_after, "certificates renewed");
                self.metrics.certificate_renewed();
                self.broken = !self.load(certs);
                Ok(())
            }
            // Someone wrote it since we read it: the watch brings theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!("another writer renewed the certificates first");
                Ok(())
            }
            Err(e) => Err(kube("renewing")(e)),
        }
    }
}

/// Waits until the external Secret exists and can be used.
async fn wait_for(client: &Client, options: &Options, stop: &CancellationToken) -> Result<Certs> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &options.namespace);
    let started = tokio::time::Instant::now();
    let mut noted = started;
    loop {
        let why = match api.get_opt(&options.secret).await {
            Ok(Some(s)) => match from_secret(&s, &options.namespace, &options.secret)
                .and_then(|c| usable_ca(&c.ca_pem).and_then(|()| c.certified_key()).map(|_| c))
            {
                Ok(certs) => return Ok(certs),
                Err(e) => e.to_string(),
            },
            Ok(None) => "it does not exist yet".to_owned(),
            Err(e) => e.to_string(),
        };
        if noted.elapsed() >= WAITING_NOTE || noted == started {
            tracing::warn!(secret = %format!("{}/{}", options.namespace, options.secret), %why, "waiting for the certificates (made by cert-manager or another tool: BREAKWATER_CERTIFICATES=external)");
            noted = tokio::time::Instant::now();
        }
        tokio::select! {
            // Look again.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            // Shutting down before it appeared.
            _ = stop.cancelled() => return Err(Error::Certificate(format!("stopped while waiting for Secret {}/{}: {why}", options.namespace, options.secret))),
        }
    }
}

/// The CA bundle holds at least one certificate and nothing unreadable.
fn usable_ca(pem: &str) -> Result<()> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let n = CertificateDer::pem_slice_iter(pem.as_bytes())
        .try_fold(0, |n, c| c.map(|_| n + 1))
        .map_err(|e| Error::Certificate(format!("ca.crt: {e}")))?;
    if n == 0 { Err(Error::Certificate("ca.crt holds no certificate".into())) } else { Ok(()) }
}

/// The first certificate of `pem`, if it has not expired at `now`.
fn still_valid_first(pem: &str, now: time::OffsetDateTime) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let first = &pem[..pem.find(END)? + END.len()];
    let end = super::not_after(first).ok()?;
    (end > now).then(|| format!("{}\n", first.trim_start()))
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;

    use super::{super::CA_DAYS, *};

    const RENEW: Duration = Duration::from_secs(30 * 86_400);

    fn fresh() -> Certs {
        generate("breakwater-system", "breakwater", &[], None).expect("certificates")
    }

    #[test]
    fn fresh_certificates_are_due_for_nothing_until_renew_before_their_end() {
        let now = time::OffsetDateTime::now_utc();
        let Due::Nothing(at) = due(&fresh(), now, RENEW) else { panic!("fresh certificates are fine") };
        let days = (at - now).whole_days();
        assert!((SERVING_DAYS - 31..=SERVING_DAYS - 29).contains(&days), "{days}");
        assert_eq!(due(&fresh(), at + time::Duration::seconds(1), RENEW), Due::Serving);
    }

    #[test]
    fn a_ca_expiring_before_the_next_serving_certificate_or_without_its_key_is_renewed() {
        let now = time::OffsetDateTime::now_utc();
        let later = now + time::Duration::days(CA_DAYS - SERVING_DAYS);
        assert_eq!(due(&fresh(), later, RENEW), Due::Ca);
        let mut keyless = fresh();
        keyless.ca_key_pem = None;
        assert_eq!(due(&keyless, now, RENEW), Due::Ca, "cert-manager's Secret has no CA key");
    }

    #[test]
    fn an_unreadable_or_mismatched_serving_certificate_is_due() {
        let now = time::OffsetDateTime::now_utc();
        let mut garbage = fresh();
        garbage.cert_pem = "not a certificate".into();
        assert_eq!(due(&garbage, now, RENEW), Due::Serving);
        let mut mismatched = fresh();
        mismatched.key_pem = fresh().key_pem;
        assert_eq!(due(&mismatched, now, RENEW), Due::Serving);
        assert!(mismatched.certified_key().is_err(), "a key that is not the certificate's is refused");
    }

    #[test]
    fn a_renewed_serving_certificate_keeps_the_ca_and_a_new_ca_bundles_the_old_one() {
        let old = fresh();
        let key = old.ca_key_pem.clone().expect("own CA key");
        let renewed =
            generate("breakwater-system", "breakwater", &[], Some((&old.ca_pem, &key))).expect("renewed");
        assert_eq!(renewed.ca_pem, old.ca_pem);
        assert_ne!(renewed.cert_pem, old.cert_pem);
        // The renewed certificate verifies against the old CA (what clients hold).
        let roots = {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(old.ca_pem.as_bytes()) {
                roots.add(c.expect("ca")).expect("root");
            }
            Arc::new(roots)
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            Arc::new(super::super::provider()),
        )
        .build()
        .expect("verifier");
        let key = renewed.certified_key().expect("usable");
        let name = rustls::pki_types::ServerName::try_from("breakwater.breakwater-system.svc").expect("name");
        verifier
            .verify_server_cert(&key.cert[0], &[], &name, &[], rustls::pki_types::UnixTime::now())
            .expect("signed by the old CA");

        let now = time::OffsetDateTime::now_utc();
        let bundled = still_valid_first(&format!("{}{}", fresh().ca_pem, old.ca_pem), now).expect("valid");
        assert!(usable_ca(&bundled).is_ok());
        assert_eq!(bundled.matches("BEGIN CERTIFICATE").count(), 1, "only the first of a bundle");
        assert!(usable_ca("garbage").is_err());
        assert!(usable_ca("").is_err());
    }

    /// The serving certificate's subject alternative names in a Secret body the client sent.
    fn sans(secret: &serde_json::Value) -> Vec<String> {
        use base64::Engine as _;
        let b64 = secret["data"][super::super::TLS_CERT].as_str().expect("tls.crt");
        let pem = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
        let cert = block.parse_x509().expect("a certificate");
        let names = cert.subject_alternative_name().expect("parsed").expect("present").value;
        names.general_names.iter().map(ToString::to_string).collect()
    }

    fn options(renew_before: Duration) -> Options {
        Options {
            namespace: "breakwater-system".into(),
            secret: "breakwater-webhook-tls".into(),
            service: "breakwater".into(),
            source: Source::SelfSigned,
            renew_before,
        }
    }

    const SECRET: &str = "/api/v1/namespaces/breakwater-system/secrets/breakwater-webhook-tls";
    const SECRETS: &str = "/api/v1/namespaces/breakwater-system/secrets?";
    const SERVICE: &str = "/api/v1/namespaces/breakwater-system/services/breakwater";

    #[tokio::test]
    async fn the_first_replica_creates_the_certificates_and_a_racing_one_serves_the_winners() {
        use http::{Method, StatusCode};

        use crate::testing;

        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let missing = testing::status(404, "NotFound", "secrets \"breakwater-webhook-tls\" not found");

        // The first: no Secret yet; the Service's cluster IP goes into the certificate.
        let (client, mut server) = testing::client();
        let api = async {
            server.expect(Method::GET, SECRET, StatusCode::NOT_FOUND, missing.clone()).await;
            let service =
                serde_json::json!({"spec": {"clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"]}});
            server.expect(Method::GET, SERVICE, StatusCode::OK, service).await;
            let created =
                server.expect(Method::POST, SECRETS, StatusCode::CREATED, serde_json::json!({})).await;
            created.body
        };
        let (first, written) =
            tokio::join!(Keeper::start(client, options(RENEW), metrics.clone(), &stop), api);
        let first = first.expect("the certificates");
        server.nothing_more();
        assert_eq!(written["type"], "kubernetes.io/tls");
        let keys: Vec<&String> = written["data"].as_object().expect("data").keys().collect();
        assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);
        let names = sans(&written);
        for wanted in ["breakwater.breakwater-system.svc", "breakwater.breakwater-system.svc.cluster.local"] {
            assert!(names.iter().any(|n| n.contains(wanted)), "{wanted} in {names:?}");
        }
        // 198.19.0.10, as x509-parser writes an IP address.
        assert!(names.iter().any(|n| n == "IPAddress(c6:13:00:0a)"), "the cluster IP in {names:?}");

        // A second replica loses the race to create it: it serves what the first wrote.
        let (client, mut server) = testing::client();
        let mut stored = written.clone();
        stored["metadata"] =
            serde_json::json!({"name": "breakwater-webhook-tls", "namespace": "breakwater-system"});
        let api = async {
            server.expect(Method::GET, SECRET, StatusCode::NOT_FOUND, missing.clone()).await;
            server
                .expect(Method::GET, SERVICE, StatusCode::NOT_FOUND, testing::status(404, "NotFound", "no"))
                .await;
            let exists =
                testing::status(409, "AlreadyExists", "secrets \"breakwater-webhook-tls\" already exists");
            server.expect(Method::POST, SECRETS, StatusCode::CONFLICT, exists).await;
            server.expect(Method::GET, SECRET, StatusCode::OK, stored).await;
        };
        let (second, ()) = tokio::join!(Keeper::start(client, options(RENEW), metrics, &stop), api);
        let second = second.expect("the winner's certificates");
        server.nothing_more();
        assert_eq!(second.subscribe().borrow().ca_pem, first.subscribe().borrow().ca_pem, "one CA for both");
        assert_eq!(
            second.resolver().current().cert,
            first.resolver().current().cert,
            "one serving certificate"
        );
    }

    #[tokio::test]
    async fn a_renew_before_of_half_the_lifetime_or_more_is_refused_before_any_request() {
        let (client, mut server) = crate::testing::client();
        let too_long = Duration::from_secs(200 * 86_400);
        let result =
            Keeper::start(client, options(too_long), Arc::new(Metrics::new()), &CancellationToken::new())
                .await;
        let Err(Error::Certificate(message)) = result else { panic!("refused") };
        assert!(message.contains("--cert-renew-before"), "{message}");
        server.nothing_more();
    }
}
