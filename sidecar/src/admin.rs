//! The admin listener (loopback by default): `/live`, `/ready`, `/metrics`, `/config`,
//! `/breakers`; and the probes listener (`run --probe-address`, on every address in a pod, for
//! the kubelet and Prometheus): `/live`, `/ready` and `/metrics` only — what the configuration
//! holds stays on loopback.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::{drain::Drain, store::Store};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The configuration.
    pub store: Arc<Store>,
    /// Set once every listener is bound.
    pub ready: Arc<AtomicBool>,
    /// Draining turns `/ready` to 503.
    pub drain: Drain,
    /// Only `/live`, `/ready` and `/metrics` (the probes listener).
    pub probes_only: bool,
}

/// Serves the admin endpoints until `stop` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            // The sidecar is exiting.
            _ = &mut stop => return,
            // A scrape or a probe.
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(without_body_for_head(&req, route(&req, &state))) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A response to HEAD has no body (RFC 9110 §9.3.2); its Content-Length stays what GET would
/// get. hyper's HTTP/1 server leaves the body out by itself, its HTTP/2 server does not (a body
/// there, without END_STREAM on HEADERS, makes HTTP/2 clients reset the stream).
fn without_body_for_head(req: &Request<Incoming>, resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    if req.method() != Method::HEAD {
        return resp;
    }
    let length = hyper::body::Body::size_hint(resp.body()).exact();
    let (mut parts, _) = resp.into_parts();
    if let Some(n) = length {
        parts.headers.insert(header::CONTENT_LENGTH, n.into());
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    let path = req.uri().path();
    if state.probes_only && !matches!(path, "/live" | "/ready" | "/metrics") {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "this port serves /live /ready /metrics; /config and /breakers are on the admin port (loopback)\n".into(),
        );
    }
    match path {
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            if state.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n".into())
            } else if !state.ready.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n".into())
            } else {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.store.metrics().encode(),
        ),
        "/config" => {
            let p = state.store.load();
            let body = serde_json::json!({
                "version": p.version,
                "snapshot": {
                    "version": p.config.snapshot.version,
                    "source": p.source,
                    "receivedAtUnix": p.received_at_unix,
                },
                "config": &*p.config,
                "lastReloadError": state.store.last_error(),
            });
            text(StatusCode::OK, "application/json", format!("{:#}\n", body))
        }
        "/breakers" => {
            let p = state.store.load();
            text(StatusCode::OK, "application/json", format!("{:#}\n", breakers(&p.routes)))
        }
        _ => {
            text(StatusCode::NOT_FOUND, "text/plain", "try /live /ready /metrics /config /breakers\n".into())
        }
    }
}

/// Every circuit breaker with its state and counts.
fn breakers(routes: &crate::proxy::Routes) -> serde_json::Value {
    let mut out = Vec::new();
    for route in routes.services() {
        for target in route.targets() {
            for b in target.resilience.breakers() {
                let mut v = serde_json::to_value(b).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("service".into(), route.key.to_string().into());
                    o.insert("policy".into(), target.policy_name().into());
                }
                out.push(v);
            }
        }
    }
    serde_json::Value::Array(out)
}
