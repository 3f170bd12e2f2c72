//! The operator's certificate authority and serving certificate, kept in the Secret the chart
//! names (`BREAKWATER_WEBHOOK_SECRET`): the config API and the injection webhook serve with it.
//! Pods trust the CA through the `breakwater-root-ca` ConfigMap the operator keeps in their
//! namespace (Istio's per-namespace root-cert pattern): a pod can read a ConfigMap of its own
//! namespace, never the Secret.
//!
//! Two replicas starting together race to create the Secret: one `create` wins, the other gets
//! `AlreadyExists` and reads what the winner wrote, so both serve the same certificate. The
//! serving certificate names the operator's Service in every form a client may dial
//! (`name`, `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`) and its cluster IPs.
//!
//! [`rotation`] keeps it current: every listener serves through one [`Resolver`], swapped when
//! the Secret changes (no restart), and the Secret is renewed before it expires. With
//! [`Source::External`] (cert-manager) the operator only reads and reloads it.

mod root_ca;
pub mod rotation;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

pub use self::root_ca::{RootCaPublisher, SYSTEM_NAMESPACES};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret, Service},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// The ConfigMap, in every namespace with sidecars, that holds the CA certificate (`ca.crt`).
pub const ROOT_CA_CONFIGMAP: &str = "breakwater-root-ca";
/// The CA certificate's key in the Secret and in the ConfigMap.
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// How long the CA is valid.
const CA_DAYS: i64 = 3650;
/// How long the serving certificate is valid.
const SERVING_DAYS: i64 = 365;

/// Who makes the certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The operator: it creates its CA and serving certificate, renews them, and sets the
    /// webhook configuration's `caBundle`.
    SelfSigned,
    /// Someone else (cert-manager): the operator reads the Secret (`ca.crt`, `tls.crt`,
    /// `tls.key`) and reloads it when it changes; it never writes it nor the `caBundle`.
    External,
}

/// The certificates, PEM.
#[derive(Clone, PartialEq)]
pub struct Certs {
    /// The CA certificate(s) pods trust (during a CA renewal, the new one and the old one).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA's private key (only in the operator's own Secret).
    ca_key_pem: Option<String>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

/// Reads the certificates from Secret `namespace/secret`, creating them first if it does not
/// exist; `service` is the operator's Service (named in the serving certificate).
pub async fn ensure(client: &Client, namespace: &str, secret: &str, service: &str) -> Result<Certs> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube = |what: String| move |source| Error::Kube { what, source };
    if let Some(existing) =
        secrets.get_opt(secret).await.map_err(kube(format!("reading Secret {namespace}/{secret}")))?
    {
        return from_secret(&existing, namespace, secret);
    }
    let ips = service_ips(client, namespace, service).await?;
    let certs = generate(namespace, service, &ips, None).map_err(|e| Error::Certificate(e.to_string()))?;
    let object = Secret {
        metadata: ObjectMeta { name: Some(secret.to_owned()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(certs.to_data()),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &object).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{secret}"), "created the operator's CA and serving certificate");
            Ok(certs)
        }
        // Another replica won the race: serve what it wrote.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing =
                secrets.get(secret).await.map_err(kube(format!("reading Secret {namespace}/{secret}")))?;
            from_secret(&existing, namespace, secret)
        }
        Err(source) => Err(Error::Kube { what: format!("creating Secret {namespace}/{secret}"), source }),
    }
}

/// The cluster IPs of the operator's Service (none if it does not exist yet).
async fn service_ips(client: &Client, namespace: &str, service: &str) -> Result<Vec<IpAddr>> {
    Ok(Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(service)
        .await
        .map_err(|source| Error::Kube { what: format!("reading Service {namespace}/{service}"), source })?
        .and_then(|s| s.spec)
        .map(|s| s.cluster_ips.or(s.cluster_ip.map(|ip| vec![ip])).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .collect())
}

impl Certs {
    /// The Secret's `data`.
    fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_CERT, Some(&self.ca_pem)),
            (CA_KEY, self.ca_key_pem.as_ref()),
            (TLS_CERT, Some(&self.cert_pem)),
            (TLS_KEY, Some(&self.key_pem)),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), ByteString(v?.as_bytes().to_vec()))))
        .collect()
    }

    /// When the serving certificate expires.
    pub fn not_after(&self) -> Result<time::OffsetDateTime> {
        not_after(&self.cert_pem).map_err(|e| Error::Certificate(format!("the serving certificate: {e}")))
    }

    /// The serving certificate and key, ready for rustls; fails when they cannot be read or do
    /// not belong together.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Certificate(format!("the serving certificate: {e}")))?;
        if chain.is_empty() {
            return Err(Error::Certificate("the serving certificate: no PEM certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("the serving key: {e}")))?;
        let key = rustls::sign::CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| Error::Certificate(format!("the serving certificate and key: {e}")))?;
        Ok(Arc::new(key))
    }
}

/// The first certificate's `notAfter` in `pem`.
fn not_after(pem: &str) -> std::result::Result<time::OffsetDateTime, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = block.parse_x509().map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.to_datetime())
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn from_secret(secret: &Secret, namespace: &str, name: &str) -> Result<Certs> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &str| {
        data.get(key).map(|v| String::from_utf8_lossy(&v.0).into_owned()).ok_or_else(|| {
            Error::Certificate(format!(
                "Secret {namespace}/{name} has no {key}; delete it to have it made again"
            ))
        })
    };
    Ok(Certs {
        ca_pem: get(CA_CERT)?,
        cert_pem: get(TLS_CERT)?,
        key_pem: get(TLS_KEY)?,
        ca_key_pem: get(CA_KEY).ok(),
    })
}

/// A serving certificate signed by `ca` (its certificate(s) and key, PEM), or by a new CA when
/// `ca` is `None`.
fn generate(
    namespace: &str,
    service: &str,
    ips: &[IpAddr],
    ca: Option<(&str, &str)>,
) -> std::result::Result<Certs, rcgen::Error> {
    let now = time_now();
    let (ca_pem, ca_key_pem) = match ca {
        Some((cert, key)) => (cert.to_owned(), key.to_owned()),
        None => new_ca(now)?,
    };
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?;

    let dns = [
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        // An operator run beside its API server (a benchmark, a development cluster) is called
        // by this name; the CA is trusted by nothing else but Breakwater's own clients.
        "localhost".to_owned(),
    ];
    let mut serving = CertificateParams::new(dns.to_vec())?;
    serving.subject_alt_names.extend(ips.iter().copied().map(SanType::IpAddress));
    serving.distinguished_name = name(&format!("{service}.{namespace}.svc"));
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.not_before = now - time::Duration::hours(1);
    serving.not_after = now + time::Duration::days(SERVING_DAYS);
    let key = KeyPair::generate()?;
    let cert = serving.signed_by(&key, &issuer)?;
    Ok(Certs { ca_pem, cert_pem: cert.pem(), key_pem: key.serialize_pem(), ca_key_pem: Some(ca_key_pem) })
}

/// A new self-signed CA: its certificate and key, PEM.
fn new_ca(now: time::OffsetDateTime) -> std::result::Result<(String, String), rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("breakwater-operator-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(CA_DAYS);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;
    Ok((issuer.pem(), ca_key_pem))
}

fn name(cn: &str) -> DistinguishedName {
    let mut n = DistinguishedName::new();
    n.push(DnType::CommonName, cn);
    n.push(DnType::OrganizationName, "Breakwater");
    n
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The serving certificate every TLS listener presents, swapped in place by [`rotation`]: a
/// handshake after the swap gets the new one, connections already open keep theirs.
#[derive(Debug)]
pub struct Resolver(arc_swap::ArcSwap<rustls::sign::CertifiedKey>);

impl Resolver {
    /// A resolver presenting `key`.
    pub fn new(key: Arc<rustls::sign::CertifiedKey>) -> Self {
        Resolver(arc_swap::ArcSwap::new(key))
    }

    /// Presents `key` from the next handshake on.
    pub fn set(&self, key: Arc<rustls::sign::CertifiedKey>) {
        self.0.store(key);
    }

    /// What is presented now.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.load_full()
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A rustls server configuration presenting `resolver`'s certificate, offering `alpn` (most
/// preferred first).
pub fn server_config(resolver: Arc<Resolver>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Makes sure `namespace` has the `breakwater-root-ca` ConfigMap with `ca_pem` (server-side
/// apply: creates it, or fixes it if someone changed it).
pub async fn publish_root_ca(client: &Client, namespace: &str, ca_pem: &str) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROOT_CA_CONFIGMAP, "labels": {"app.kubernetes.io/part-of": "breakwater"}},
        "data": {CA_CERT: ca_pem},
    });
    api.patch(ROOT_CA_CONFIGMAP, &PatchParams::apply(crate::FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await
        .map_err(|source| Error::Kube {
            what: format!("publishing the root CA in namespace {namespace}"),
            source,
        })?;
    Ok(())
}
