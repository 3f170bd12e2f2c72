//! The operator's HTTP endpoints: `/live` and `/ready` on the health port, `/metrics` on the
//! metrics port (both where the kubelet and Prometheus reach them), and on loopback only
//! `/debug/snapshots` (every pod's compiled snapshot version, and what the sidecars streaming
//! from this replica applied: [`breakwater_crds::admin::DeliveriesView`]) and
//! `/debug/snapshots/NAMESPACE/POD` (one pod's snapshot, as its sidecar receives it). The chart
//! binds the debug view on the pod's address when `diagnostics.enabled`, for `kubectl
//! breakwater` through the API server's pod proxy.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::{Result, index::Index, key::ObjKey, listen::bind, metrics::Metrics, snapshots::Hub};

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Readiness comes from the index…
    pub index: Index,
    /// …and from the TLS listeners (webhook, config API): set once they are bound with their
    /// certificate, which may take a while (cert-manager). A replica Ready before that would
    /// get webhook calls it refuses, and the webhook's failure policy would let pods through
    /// without their sidecar.
    pub listening: Arc<std::sync::atomic::AtomicBool>,
    /// Metrics to encode.
    pub metrics: Arc<Metrics>,
    /// Snapshots, for the debug endpoints.
    pub hub: Arc<Hub>,
    /// What the sidecars streaming from this replica applied, for the debug endpoints.
    pub acks: Arc<crate::configserver::acks::Registry>,
    /// This replica's name.
    pub replica: String,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/live`, `/ready`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/debug/snapshots...`.
    Debug,
}

/// The admin listeners, bound before anything else so the kubelet sees a live process while
/// the indexes sync.
#[derive(Debug)]
pub struct Admin {
    health: TcpListener,
    metrics: TcpListener,
    debug: Option<TcpListener>,
}

impl Admin {
    /// Binds health and metrics, and the debug view when it has an address.
    pub async fn bind(settings: &crate::Settings) -> Result<Admin> {
        Ok(Admin {
            health: bind(settings.health_address(), "/live and /ready").await?,
            metrics: bind(settings.metrics_address(), "/metrics").await?,
            debug: match settings.debug_address.0 {
                Some(addr) => Some(bind(addr, "/debug/snapshots").await?),
                None => None,
            },
        })
    }

    /// Serves every listener until `stop`.
    pub async fn run(self, state: AdminState, stop: tokio_util::sync::CancellationToken) {
        let Admin { health, metrics, debug } = self;
        let debug = async {
            if let Some(debug) = debug {
                serve(debug, Endpoints::Debug, state.clone(), stop.cancelled()).await;
            }
        };
        tokio::join!(
            serve(health, Endpoints::Health, state.clone(), stop.cancelled()),
            serve(metrics, Endpoints::Metrics, state.clone(), stop.cancelled()),
            debug,
        );
    }
}

/// Serves `endpoints` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            // A client connected.
            a = listener.accept() => a,
            // Stop accepting.
            _ = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move {
                    let head = req.method() == Method::HEAD;
                    let resp = route(endpoints, &state, req).await;
                    Ok::<_, Infallible>(if head { without_body(resp) } else { resp })
                }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The answer to HEAD: no body (RFC 9110 §9.3.2), the Content-Length GET would get. hyper's
/// HTTP/1 server leaves the body out by itself, its HTTP/2 server does not.
fn without_body(resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let length = hyper::body::Body::size_hint(resp.body()).exact();
    let (mut parts, _) = resp.into_parts();
    if let Some(n) = length {
        parts.headers.insert(header::CONTENT_LENGTH, n.into());
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response from constants is valid")
}

async fn route(endpoints: Endpoints, state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    let path = req.uri().path();
    match (endpoints, path) {
        (Endpoints::Health, "/live") => text(StatusCode::OK, "text/plain", "live\n".into()),
        (Endpoints::Health, "/ready") => {
            let (code, why) =
                readiness(state.index.is_ready(), state.listening.load(std::sync::atomic::Ordering::Acquire));
            text(code, "text/plain", why.into())
        }
        (Endpoints::Metrics, "/metrics") => {
            for (kind, n) in state.index.counts() {
                state.metrics.indexed(kind, n);
            }
            state.metrics.unapplied(state.acks.oldest_unapplied().await);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.encode(),
            )
        }
        (Endpoints::Debug, "/debug/snapshots") => {
            let view = deliveries(state).await;
            match serde_json::to_string_pretty(&view) {
                Ok(body) => text(StatusCode::OK, "application/json", body + "\n"),
                Err(e) => {
                    text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("cannot encode: {e}\n"))
                }
            }
        }
        (Endpoints::Debug, p) if p.starts_with("/debug/snapshots/") => {
            let rest = &p["/debug/snapshots/".len()..];
            let Some((namespace, pod)) = rest.split_once('/') else {
                return text(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "use /debug/snapshots/NAMESPACE/POD\n".into(),
                );
            };
            match state.hub.current(&ObjKey::new(namespace, pod)).await {
                Some(s) => text(StatusCode::OK, "application/json", format!("{:#}\n", serde_json::json!(*s))),
                None => text(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!(
                        "no snapshot for pod {namespace}/{pod} (not a pod with a sidecar, or not indexed yet)\n"
                    ),
                ),
            }
        }
        (Endpoints::Health, _) => text(StatusCode::NOT_FOUND, "text/plain", "try /live or /ready\n".into()),
        (Endpoints::Metrics, _) => text(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into()),
        (Endpoints::Debug, _) => text(StatusCode::NOT_FOUND, "text/plain", "try /debug/snapshots\n".into()),
    }
}

/// Every pod's compiled version, and what the sidecars connected here applied.
async fn deliveries(state: &AdminState) -> breakwater_crds::admin::DeliveriesView {
    use breakwater_crds::admin;
    let mut pods = std::collections::BTreeMap::new();
    let blank = |key: &ObjKey| admin::PodDelivery {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        compiled: None,
        connected: false,
        applied: None,
    };
    for (key, version) in state.hub.versions().await {
        pods.entry(key).or_insert_with_key(blank).compiled = Some(version);
    }
    for (key, applied) in state.acks.applied_versions().await {
        let pod = pods.entry(key).or_insert_with_key(blank);
        pod.connected = true;
        pod.applied = applied;
    }
    admin::DeliveriesView {
        api_version: admin::API_VERSION.into(),
        kind: admin::KIND_DELIVERIES.into(),
        replica: state.replica.clone(),
        pods: pods.into_values().collect(),
    }
}

/// `/ready`'s answer: ready once the indexes have synced and the TLS listeners serve.
fn readiness(index_ready: bool, listening: bool) -> (StatusCode, &'static str) {
    match (index_ready, listening) {
        (true, true) => (StatusCode::OK, "ready\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "indexes not synced yet\n"),
        (true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the certificate: the webhook and config API do not serve yet\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_the_indexes_synced_and_the_tls_listeners_serve() {
        assert_eq!(readiness(true, true).0, StatusCode::OK);
        assert_eq!(readiness(false, true).0, StatusCode::SERVICE_UNAVAILABLE);
        let (code, why) = readiness(true, false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("certificate"), "{why}");
    }

    #[test]
    fn a_head_answer_has_no_body_and_the_length_get_would_have() {
        let resp = without_body(text(StatusCode::OK, "text/plain", "live\n".into()));
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "5");
        assert!(hyper::body::Body::is_end_stream(resp.body()), "no body");
    }
}
