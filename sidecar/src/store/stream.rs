//! Cluster mode: the sidecar follows its pod's snapshot on the operator's config API.
//!
//! One TLS HTTP/2 stream (`POST /v1/snapshots/{namespace}/{pod}`, the pod's projected token as
//! bearer, the operator's CA from the pod's `breakwater-root-ca` ConfigMap), snapshots arriving
//! as frames on the response and acknowledgements going back on the request
//! ([`breakwater_crds::snapshot::stream`]). Each snapshot goes through the same [`Store`] as a
//! local file — a bad one is refused, acknowledged as refused, and the running one kept — and
//! each one applied is written to the snapshot directory, so a sidecar restarted while the
//! operator is away starts from it at once.
//!
//! The stream is a state machine of two states, connected and waiting: any failure — refused
//! connection, TLS, an HTTP error, a malformed frame, no first snapshot within
//! [`ControlPlane::timeout`], missed pings — ends the session, is logged and counted
//! (`breakwater_config_stream_errors_total{reason}`), and the next attempt waits a fully
//! jittered exponential backoff (capped at [`MAX_BACKOFF`]). The data plane never waits for
//! the control plane: it enforces the last good snapshot throughout.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use breakwater_crds::snapshot::{
    SnapshotVersion,
    stream::{Ack, Frames, PATH, frame},
};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, channel::Channel};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;

use super::{Source, Store};
use crate::drain::Signal;

/// The default of [`ControlPlane::timeout`].
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The file, in the snapshot directory, that holds the last good snapshot.
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// Where and how to reach the config API.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// `https://host:port` of the operator's Service.
    pub url: Uri,
    /// PEM file of the CA that signed the operator's certificate.
    pub ca: PathBuf,
    /// The projected ServiceAccount token (read again on every connection: it rotates).
    pub token: PathBuf,
    /// This pod: `(namespace, name)`.
    pub pod: (String, String),
    /// Where the last good snapshot is kept (an emptyDir); `None` keeps it in memory only.
    pub snapshot_dir: Option<PathBuf>,
    /// The name to expect in the operator's certificate, when not the URL's host.
    pub server_name: Option<String>,
    /// How long the config API may take to answer the request, and then to send the first
    /// snapshot, before the session counts as hung and is retried ([`ANSWER_TIMEOUT`]).
    pub timeout: Duration,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("the config API answered {0}: {1}")]
    Status(StatusCode, String),
    #[error("HTTP/2: {0}")]
    Http(String),
    #[error("malformed stream: {0}")]
    Malformed(String),
    #[error("the config API sent no {0} within {1:?}")]
    Silent(&'static str, Duration),
    #[error("the operator closed the stream")]
    Closed,
    #[error("{0}")]
    Local(String),
}

impl SessionError {
    fn reason(&self) -> &'static str {
        match self {
            SessionError::Connect(..) => "connect",
            SessionError::Tls(..) => "tls",
            SessionError::Status(..) => "refused",
            SessionError::Http(_) => "http2",
            SessionError::Malformed(_) => "malformed",
            SessionError::Silent(..) => "timeout",
            SessionError::Closed => "closed",
            SessionError::Local(_) => "local",
        }
    }
}

/// Applies the last good snapshot from `dir`, if there is one; whether it did.
pub fn load_from_disk(store: &Store, dir: &Path) -> bool {
    let path = dir.join(SNAPSHOT_FILE);
    let Ok(bytes) = std::fs::read(&path) else { return false };
    match store.apply_snapshot_from(&bytes, Source::Disk) {
        Ok(_) => {
            tracing::info!(path = %path.display(), "started from the last good snapshot on disk");
            true
        }
        Err((_, e)) => {
            tracing::warn!(path = %path.display(), error = %e, "the snapshot on disk is not usable; waiting for the operator");
            false
        }
    }
}

/// Follows the config API until `stop`: connects, applies, acknowledges, reconnects. `ready` is
/// set once a snapshot is applied.
pub async fn follow(cp: ControlPlane, store: Arc<Store>, ready: Arc<AtomicBool>, mut stop: Signal) {
    let mut attempt: u32 = 0;
    loop {
        let session = tokio::select! {
            // One connection, until it ends.
            r = session(&cp, &store, &ready) => r,
            // Shutting down.
            _ = stop.draining() => return,
        };
        match session {
            Ok(applied) => {
                attempt = if applied > 0 { 0 } else { attempt + 1 };
                store.metrics().config_stream_error("closed");
                tracing::info!(applied, "config stream ended; reconnecting");
            }
            Err(e) => {
                attempt += 1;
                store.metrics().config_stream_error(e.reason());
                tracing::warn!(error = %e, reason = e.reason(), attempt, "config stream failed; serving the last good snapshot and retrying");
            }
        }
        let wait = backoff(attempt);
        tokio::select! {
            // The next attempt.
            _ = tokio::time::sleep(wait) => {}
            // Shutting down.
            _ = stop.draining() => return,
        }
    }
}

/// Full jitter over an exponential ceiling: uniformly in `[0, min(cap, base·2^attempt)]`.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BASE_BACKOFF.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF);
    ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// One connection: returns how many snapshots were applied before it ended cleanly.
async fn session(cp: &ControlPlane, store: &Store, ready: &AtomicBool) -> Result<u64, SessionError> {
    let host = cp.url.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let port = cp.url.port_u16().unwrap_or(443);
    let target = format!("{host}:{port}");
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| SessionError::Connect(target.clone(), "timed out".into()))?
        .map_err(|e| SessionError::Connect(target.clone(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = tls_config(&cp.ca).map_err(|e| SessionError::Tls(target.clone(), e))?;
    let name = cp.server_name.clone().unwrap_or_else(|| host.clone());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| SessionError::Tls(target.clone(), format!("{name:?} is not a server name: {e}")))?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await
    .map_err(|_| SessionError::Tls(target.clone(), "handshake timed out".into()))?
    .map_err(|e| SessionError::Tls(target.clone(), e.to_string()))?;

    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| SessionError::Http(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let result = exchange(cp, store, ready, &mut sender).await;
    driver.abort();
    result
}

async fn exchange(
    cp: &ControlPlane,
    store: &Store,
    ready: &AtomicBool,
    sender: &mut hyper::client::conn::http2::SendRequest<Channel<Bytes, std::convert::Infallible>>,
) -> Result<u64, SessionError> {
    let token = std::fs::read_to_string(&cp.token)
        .map_err(|e| SessionError::Local(format!("reading the token {}: {e}", cp.token.display())))?;
    let (mut acks, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
    let (namespace, pod) = &cp.pod;
    let uri = format!(
        "{}://{}{PATH}{namespace}/{pod}",
        cp.url.scheme_str().unwrap_or("https"),
        cp.url.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .body(body)
        .map_err(|e| SessionError::Local(e.to_string()))?;
    let response = tokio::time::timeout(cp.timeout, sender.send_request(request))
        .await
        .map_err(|_| SessionError::Silent("answer", cp.timeout))?
        .map_err(|e| SessionError::Http(e.to_string()))?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(SessionError::Status(status, String::from_utf8_lossy(&text).trim().to_owned()));
    }
    store.metrics().config_stream_connected(true);
    tracing::info!(url = %cp.url, "config stream connected");
    let mut body = response.into_body();
    let mut frames = Frames::default();
    let mut applied = 0u64;
    let result = loop {
        let next = if applied == 0 {
            match tokio::time::timeout(cp.timeout, body.frame()).await {
                Ok(f) => f,
                Err(_) => break Err(SessionError::Silent("snapshot", cp.timeout)),
            }
        } else {
            body.frame().await
        };
        let chunk = match next {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => break Err(SessionError::Http(e.to_string())),
            None => {
                break frames
                    .finish()
                    .map(|()| applied)
                    .map_err(|e| SessionError::Malformed(e.to_string()))
                    .and(Err(SessionError::Closed));
            }
        };
        let Ok(data) = chunk.into_data() else { continue };
        frames.push(&data);
        let mut failed = None;
        loop {
            let bytes = match frames.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(SessionError::Malformed(e.to_string()));
                    break;
                }
            };
            let ack = match store.apply_snapshot_from(&bytes, Source::Stream) {
                Ok((version, changed)) => {
                    applied += 1;
                    if !ready.swap(true, Ordering::AcqRel) {
                        tracing::info!(%version, "sidecar ready: first snapshot applied");
                    } else if changed {
                        tracing::info!(%version, "snapshot applied");
                    }
                    if let Some(dir) = &cp.snapshot_dir {
                        persist(dir, &bytes);
                    }
                    Ack { version, error: None }
                }
                Err((version, e)) => {
                    let Some(version) = version else {
                        // Not even a version: nothing to answer, and nothing trustworthy on this stream.
                        failed = Some(SessionError::Malformed(e.to_string()));
                        break;
                    };
                    Ack { version, error: Some(e.to_string()) }
                }
            };
            let bytes = serde_json::to_vec(&ack).expect("an acknowledgement serializes to JSON");
            if acks.send_data(Bytes::from(frame(&bytes))).await.is_err() {
                failed = Some(SessionError::Closed);
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
    };
    store.metrics().config_stream_connected(false);
    // A clean end after snapshots is a reconnect, not a failure.
    match result {
        Err(SessionError::Closed) if applied > 0 => Ok(applied),
        other => other,
    }
}

/// Writes `bytes` as the last good snapshot (to a temporary file, then renamed: a crash never
/// leaves half a snapshot).
fn persist(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join(format!(".{SNAPSHOT_FILE}.tmp"));
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE)));
    if let Err(e) = result {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the snapshot on disk; a restart will wait for the operator");
    }
}

fn tls_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(ca).map_err(|e| format!("reading the CA {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("the CA {}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("the CA {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The version a snapshot's JSON names, even when the rest cannot be read.
pub(crate) fn version_of(bytes: &[u8]) -> Option<SnapshotVersion> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    serde_json::from_value(value.get("version")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling_and_capped() {
        for attempt in 0..30 {
            let ceiling = BASE_BACKOFF.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF);
            for _ in 0..50 {
                assert!(backoff(attempt) <= ceiling);
            }
        }
        assert!(
            (0..200).map(|_| backoff(20)).any(|d| d > Duration::from_secs(1)),
            "large attempts wait long"
        );
        assert!((0..200).map(|_| backoff(20)).all(|d| d <= MAX_BACKOFF));
    }

    #[test]
    fn a_version_is_read_even_from_a_snapshot_that_cannot_be() {
        let v = version_of(br#"{"schema": 9, "version": {"counter": 3, "hash": "abc"}, "services": 7}"#);
        assert_eq!(v, Some(SnapshotVersion { counter: 3, hash: "abc".into() }));
        assert_eq!(version_of(b"not json"), None);
    }
}
