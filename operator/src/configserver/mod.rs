//! The config API: each sidecar holds one long-lived HTTP/2 stream (TLS) to any replica, and
//! receives its pod's snapshot on connect and on every change (wire format in
//! [`breakwater_crds::snapshot::stream`]). Every replica serves; none needs the lease.
//!
//! - **Who may read what** ([`auth`]): the bearer token must be the pod's projected
//!   ServiceAccount token for our audience; the TokenReview names the pod it is bound to, and a
//!   pod reads only its own snapshot (another pod's: 403; no or a bad token: 401).
//! - **Coalescing and flow control**: a stream watches its pod's channel in the snapshot hub,
//!   so a burst of changes reaches it as the latest snapshot only; it hands one frame at a time
//!   to HTTP/2, whose per-stream flow control holds it back when its sidecar reads slowly — while
//!   every other stream goes on. Memory per stream: one encoded frame and the stream's window.
//! - **Acknowledgements** ([`acks`]) come back on the request body, and feed the policies'
//!   status and `breakwater_operator_convergence_seconds`.

pub mod acks;
pub mod auth;
mod stream;

use std::{convert::Infallible, sync::Arc, time::Duration};

use breakwater_crds::snapshot::stream::PATH;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use self::{acks::Registry, auth::Authenticator};
use crate::{delivery::Totals, index::Index, key::ObjKey, metrics::Metrics, snapshots::Hub};

/// How long a pod's first snapshot may take to appear after it connects (a pod created a moment
/// ago is not compiled yet).
const FIRST_SNAPSHOT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What every stream shares.
#[derive(Clone)]
pub struct ConfigServer {
    /// The snapshots.
    pub hub: Arc<Hub>,
    /// Pods' UIDs, to refuse a token of an earlier pod with the same name.
    pub index: Index,
    /// Token reviews.
    pub auth: Authenticator,
    /// This replica's acknowledgements.
    pub acks: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl ConfigServer {
    /// What the streams share; `acks` is where this replica keeps what its sidecars applied
    /// (the admin's debug view reads it too).
    pub fn new(
        client: kube::Client,
        hub: &Arc<Hub>,
        index: &Index,
        acks: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ConfigServer {
            hub: hub.clone(),
            index: index.clone(),
            auth: Authenticator::new(client),
            acks,
            metrics,
        }
    }
}

impl std::fmt::Debug for ConfigServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigServer").finish_non_exhaustive()
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// The config API as it runs: the listener, this replica's acknowledgement report, and the sum
/// of every replica's reports (what the status reads, through [`crate::delivery`]).
pub struct ConfigApi {
    /// Where sidecars connect.
    pub listener: TcpListener,
    /// TLS, from the certificate keeper.
    pub tls: Arc<rustls::ServerConfig>,
    /// What every stream shares.
    pub server: ConfigServer,
    /// Where the reports live.
    pub reports: Reports,
    totals: watch::Sender<Arc<Totals>>,
}

/// Where this replica writes its acknowledgement report (ConfigMap `name` in `namespace`) and
/// reads every replica's.
#[derive(Clone)]
pub struct Reports {
    /// The API.
    pub client: kube::Client,
    /// The operator's namespace.
    pub namespace: String,
    /// This replica's report.
    pub name: String,
}

impl ConfigApi {
    /// Binds the config API on `addr` for `server`, not serving yet.
    pub async fn bind(
        settings: &crate::Settings,
        addr: std::net::SocketAddr,
        client: kube::Client,
        server: ConfigServer,
        keeper: &crate::certs::rotation::Keeper,
    ) -> crate::Result<ConfigApi> {
        let reports = Reports {
            client,
            namespace: settings.namespace.clone(),
            name: format!("{}-acks-{}", settings.lease_name, settings.identity()),
        };
        Ok(ConfigApi {
            listener: crate::listen::bind(addr, "the config API").await?,
            tls: crate::certs::server_config(keeper.resolver(), &[b"h2"])?,
            server,
            reports,
            totals: watch::Sender::new(Arc::default()),
        })
    }

    /// Every replica's acknowledgements summed, as they change.
    pub fn totals(&self) -> watch::Receiver<Arc<Totals>> {
        self.totals.subscribe()
    }

    /// Serves, reports and sums until `stop`; then deletes this replica's report (its sidecars
    /// reconnect elsewhere).
    pub async fn run(self, stop: CancellationToken) {
        let ConfigApi { listener, tls, server, reports, totals } = self;
        let (acks, metrics) = (server.acks.clone(), server.metrics.clone());
        let Reports { client, namespace, name } = reports;
        tokio::join!(
            serve(listener, tls, server, stop.clone()),
            acks.publish(client.clone(), namespace.clone(), name, stop.clone()),
            acks::aggregate(client, namespace, totals, metrics, stop),
        );
    }
}

/// Serves the config API on `listener` until `stop`; open streams are closed then (their
/// sidecars reconnect to another replica).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: ConfigServer,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            // A sidecar connects.
            a = listener.accept() => a,
            // Shutting down.
            _ = stop.cancelled() => return,
        };
        let Ok((tcp, peer)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let (acceptor, server, stop) = (acceptor.clone(), server.clone(), stop.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let service = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(route(&server, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http2_only();
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(15)))
                .keep_alive_timeout(Duration::from_secs(20))
                .initial_stream_window_size(1024 * 1024)
                .max_concurrent_streams(16);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                // The connection ended.
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "config connection ended") },
                // Shutting down: GOAWAY, let the sidecar reconnect elsewhere.
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message + "\n")).boxed())
        .expect("a response from constants is valid")
}

async fn route(server: &ConfigServer, req: Request<Incoming>) -> Response<Body> {
    let Some(rest) = req.uri().path().strip_prefix(PATH) else {
        return text(StatusCode::NOT_FOUND, format!("the config API serves POST {PATH}NAMESPACE/POD"));
    };
    let Some((namespace, pod)) =
        rest.split_once('/').filter(|(n, p)| !n.is_empty() && !p.is_empty() && !p.contains('/'))
    else {
        return text(StatusCode::NOT_FOUND, format!("the config API serves POST {PATH}NAMESPACE/POD"));
    };
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the stream is a POST (its body carries acknowledgements)".into(),
        );
    }
    let asked = ObjKey::new(namespace, pod);
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = match server.auth.check(authorization, &asked).await {
        Ok(c) => c,
        Err(refused) => {
            server.metrics.stream_refused(refused.status().as_u16());
            tracing::info!(pod = %asked, %refused, "config stream refused");
            return text(refused.status(), refused.to_string());
        }
    };
    let indexed_uid = server
        .index
        .pods
        .state()
        .iter()
        .find(|p| ObjKey::of(p.as_ref()).as_ref() == Some(&asked))
        .and_then(|p| p.metadata.uid.clone());
    if indexed_uid.as_deref().is_some_and(|uid| uid != caller.uid) {
        server.metrics.stream_refused(403);
        return text(StatusCode::FORBIDDEN, format!("the token belongs to an earlier pod named {asked}"));
    }
    let Some(rx) = server.hub.subscribe_within(&asked, FIRST_SNAPSHOT).await else {
        server.metrics.stream_refused(404);
        return text(
            StatusCode::NOT_FOUND,
            format!("no snapshot for pod {asked}: it has no sidecar label, or it is not indexed yet (retry)"),
        );
    };
    stream::start(server, asked, rx, req.into_body()).await
}
