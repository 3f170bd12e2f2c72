//! The operator's certificates on a real API server: a certificate put in the Secret is served
//! by every replica without a restart, one close to expiry is renewed, an unusable one never
//! replaces the one served; and the webhook's failure policy — `Ignore` as the chart renders it
//! until a replica answers, then what the chart configured.

use std::sync::Arc;

use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

use super::{
    inject::{admitted, container_names, fault_pod, injecting, labelled},
    *,
};

const SECRET: &str = "bw-breakwater-webhook-tls";
const SERVICE: &str = "bw-breakwater";
const WEBHOOK_PORT: u16 = 9443;

fn data(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

/// A serving certificate for the operator's Service signed by the operator's CA, valid for
/// `days` more days; PEM certificate and key.
fn signed(ca_pem: &str, ca_key_pem: &str, days: i64) -> anyhow::Result<(String, String)> {
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, rcgen::KeyPair::from_pem(ca_key_pem)?)?;
    let names: Vec<String> =
        ["", ".breakwater-system", ".breakwater-system.svc", ".breakwater-system.svc.cluster.local"]
            .iter()
            .map(|s| format!("{SERVICE}{s}"))
            .collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map(|c| c.to_vec()).unwrap_or_default()
}

fn days_left(pem: &str) -> i64 {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, p)| p.parse_x509().ok().map(|c| c.validity().not_after.timestamp()))
        .map_or(-1, |t| (t - time::OffsetDateTime::now_utc().unix_timestamp()) / 86_400)
}

/// The certificate the webhook port presents (verified against `ca_pem` for the Service's name).
async fn served(ip: std::net::Ipv4Addr, ca_pem: &str) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from(format!("{SERVICE}.breakwater-system.svc")).map_err(|e| e.to_string())?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((ip, WEBHOOK_PORT)).await.map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            tls.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
}

/// Waits until every replica presents the certificate `want` returns (given the Secret).
async fn every_replica_serves(
    op: &Operator,
    secrets: &Api<Secret>,
    what: &str,
    want: impl Fn(&Secret) -> Option<Vec<u8>>,
) -> anyhow::Result<Secret> {
    let want = &want;
    Ok(wait::until_ok(what, TIMEOUT, || async move {
        let secret = secrets.get(SECRET).await.map_err(|e| e.to_string())?;
        let expected = want(&secret).ok_or("not in the Secret yet")?;
        let ca = data(&secret, "ca.crt");
        for pod in op.pods().await.map_err(|e| e.to_string())? {
            let ip = breakwater_e2e::operator::pod_ip(&pod).map_err(|e| e.to_string())?;
            if served(ip, &ca).await? != expected {
                return Err(format!("{} still serves another certificate", pod.name_any()));
            }
        }
        Ok(secret)
    })
    .await?)
}

async fn put(secrets: &Api<Secret>, cert: &str, key: &str) -> anyhow::Result<()> {
    let data = json!({
        "tls.crt": serde_json::to_value(ByteString(cert.as_bytes().to_vec()))?,
        "tls.key": serde_json::to_value(ByteString(key.as_bytes().to_vec()))?,
    });
    secrets.patch(SECRET, &PatchParams::default(), &Patch::Merge(json!({"data": data}))).await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_put_in_the_secret_is_served_without_a_restart_renewed_before_expiry_and_never_replaced_by_garbage()
-> anyhow::Result<()> {
    let (cluster, op) = operator().await?;
    let _exclusive = DISRUPTIVE.write().await;
    let client = cluster.client()?;
    let ns = labelled(cluster, "rotate").await?;
    injecting(&client, &ns).await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    let before: Vec<String> = op.ready_pods(2, TIMEOUT).await?.iter().filter_map(|p| p.uid()).collect();
    let secret = secrets.get(SECRET).await?;
    let (ca, ca_key) = (data(&secret, "ca.crt"), data(&secret, "ca.key"));
    assert!(days_left(&data(&secret, "tls.crt")) > 300, "the operator's own certificate is valid for a year");

    // 1. A new certificate (a person rotating it) → served by every replica, no restart.
    let (cert, key) = signed(&ca, &ca_key, 200)?;
    put(&secrets, &cert, &key).await?;
    let wanted = der(&cert);
    every_replica_serves(op, &secrets, "the rotated certificate to be served", |_| Some(wanted.clone()))
        .await?;
    let stored = admitted(&client, &ns, &fault_pod("after-rotation", json!({}))?).await?;
    assert_eq!(
        container_names(&stored).0,
        ["breakwater-init", "breakwater-proxy"],
        "the API server still calls us"
    );

    // 2. One that expires in 2 days (inside the 30-day renewal window) → renewed by a replica
    //    (the Secret rewritten, valid for a year again) and served.
    let (expiring, key) = signed(&ca, &ca_key, 2)?;
    put(&secrets, &expiring, &key).await?;
    let renewed = every_replica_serves(op, &secrets, "the renewed certificate to be served", |s| {
        let pem = data(s, "tls.crt");
        (pem != expiring && pem != cert && days_left(&pem) > 300).then(|| der(&pem))
    })
    .await?;
    assert_eq!(data(&renewed, "ca.crt"), ca, "renewed with the same CA");
    let renewed_der = der(&data(&renewed, "tls.crt"));

    // 3. Garbage → never served: every replica keeps the renewed certificate, and the Secret is
    //    repaired with a new one.
    put(&secrets, "not a certificate", "not a key").await?;
    let repaired = every_replica_serves(op, &secrets, "the repaired certificate to be served", |s| {
        let pem = data(s, "tls.crt");
        (days_left(&pem) > 300 && der(&pem) != renewed_der).then(|| der(&pem))
    })
    .await?;
    assert_eq!(data(&repaired, "ca.crt"), ca);
    let mut renewals = 0.0;
    let mut invalid = 0.0;
    for pod in op.pods().await? {
        let text = op.metrics(&pod).await?;
        renewals += metric(&text, "breakwater_operator_certificate_renewals_total").unwrap_or(0.0);
        invalid +=
            metric(&text, "breakwater_operator_certificate_loads_total{result=\"invalid\"}").unwrap_or(0.0);
        assert!(
            metric(&text, "breakwater_operator_certificate_expiry_timestamp_seconds").is_some_and(
                |t| t > time::OffsetDateTime::now_utc().unix_timestamp() as f64 + 300.0 * 86_400.0
            ),
            "{}: the expiry metric follows the served certificate",
            pod.name_any()
        );
    }
    assert!(renewals >= 2.0, "two renewals written: {renewals}");
    assert!(invalid >= 1.0, "the garbage was seen and refused: {invalid}");
    let after: Vec<String> = op.ready_pods(2, TIMEOUT).await?.iter().filter_map(|p| p.uid()).collect();
    assert_eq!(before, after, "no replica restarted");
    let stored = admitted(&client, &ns, &fault_pod("after-repair", json!({}))?).await?;
    assert_eq!(container_names(&stored).0, ["breakwater-init", "breakwater-proxy"]);
    Ok(())
}

async fn failure_policies(client: &Client) -> anyhow::Result<Vec<String>> {
    let config =
        Api::<MutatingWebhookConfiguration>::all(client.clone()).get("bw-breakwater-injector").await?;
    Ok(config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.failure_policy.unwrap_or_default())
        .collect())
}

async fn no_operator(op: &Operator) -> anyhow::Result<()> {
    Ok(op.gone(TIMEOUT).await?)
}

#[tokio::test]
async fn the_webhook_fails_open_until_a_replica_answers_then_takes_the_configured_failure_policy()
-> anyhow::Result<()> {
    let (cluster, op) = operator().await?;
    let _exclusive = DISRUPTIVE.write().await;
    let client = cluster.client()?;
    let ns = labelled(cluster, "policy").await?;

    // `Fail` configured, no replica running: the webhook is still `Ignore`, so pods are created.
    // (Scaled to zero first, as `kubectl scale` would, so helm's server-side apply agrees on the
    // replicas it finds.)
    op.scale(0).await?;
    op.upgrade(&["webhook.failurePolicy=Fail", "operator.replicas=0"]).await?;
    no_operator(op).await?;
    assert_eq!(
        failure_policies(&client).await?,
        ["Ignore", "Ignore"],
        "fail-open before any replica answers"
    );
    let stored = admitted(&client, &ns, &fault_pod("before", json!({}))?).await?;
    assert_eq!(container_names(&stored).0, Vec::<String>::new(), "created, uninjected");

    // A replica answers → `Fail`.
    op.scale(1).await?;
    op.ready_pods(1, TAKEOVER * 2).await?;
    wait::until_ok("the configured failure policy", TIMEOUT, || async {
        let p = failure_policies(&client).await.map_err(|e| e.to_string())?;
        if p == ["Fail", "Fail"] { Ok(()) } else { Err(format!("{p:?}")) }
    })
    .await?;
    injecting(&client, &ns).await?;
    // An upgrade keeps what the operator set (no conflict with it over the field, no reopening).
    op.upgrade(&["webhook.timeoutSeconds=6", "operator.replicas=1"]).await?;
    assert_eq!(failure_policies(&client).await?, ["Fail", "Fail"], "a helm upgrade keeps the live policy");

    // What `Fail` costs: with no replica, a pod to inject is refused.
    op.scale(0).await?;
    no_operator(op).await?;
    let refusal = wait::until_ok("a refusal while no replica answers", TIMEOUT, || async {
        match admitted(&client, &ns, &fault_pod("refused", json!({})).map_err(|e| e.to_string())?).await {
            Err(e) => Ok(e.to_string()),
            Ok(p) => Err(format!("created with {:?}", container_names(&p))),
        }
    })
    .await?;
    assert!(refusal.contains("failed calling webhook"), "{refusal}");

    // Back to the default.
    op.scale(2).await?;
    op.upgrade(&["webhook.failurePolicy=Ignore", "operator.replicas=2", "webhook.timeoutSeconds=5"]).await?;
    op.ready_pods(2, TAKEOVER * 2).await?;
    injecting(&client, &ns).await?;
    assert_eq!(failure_policies(&client).await?, ["Ignore", "Ignore"]);
    Ok(())
}
