//! The admin listener (loopback by default): `/live`, `/ready`, `/metrics`, `/config`,
//! `/breakers`; and the probes listener (`run --probe-address`, on every address in a pod, for
//! the kubelet and Prometheus): `/live`, `/ready` and `/metrics`, and `/config` and `/breakers`
//! only with `--probe-diagnostics` (what `kubectl breakwater config` and `breakers` read through
//! the API server's pod proxy, which cannot reach loopback).
//!
//! `/config` and `/breakers` answer the documents of [`breakwater_crds::admin`] (versioned JSON).

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

use breakwater_crds::admin;

use crate::{
    drain::Drain,
    metrics::Direction,
    proxy::{Routes, routes::Target},
    store::Store,
};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The configuration.
    pub store: Arc<Store>,
    /// Set once every listener is bound.
    pub ready: Arc<AtomicBool>,
    /// Draining turns `/ready` to 503.
    pub drain: Drain,
    /// What this listener serves.
    pub serves: Serves,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// Everything (the admin listener).
    All,
    /// `/live`, `/ready` and `/metrics` (the probes listener).
    Probes,
    /// Those and `/config` and `/breakers` (the probes listener with `--probe-diagnostics`).
    ProbesAndDiagnostics,
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
    if state.serves == Serves::Probes && !matches!(path, "/live" | "/ready" | "/metrics") {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "this port serves /live /ready /metrics; /config and /breakers are on the admin port (loopback), \
             or here with --probe-diagnostics\n"
                .into(),
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
        "/metrics" => {
            let metrics = state.store.metrics();
            scrape_gauges(&state.store.load().routes, metrics);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
            )
        }
        "/config" => json(&config(&state.store)),
        "/breakers" => json(&breakers(&state.store.load().routes)),
        _ => {
            text(StatusCode::NOT_FOUND, "text/plain", "try /live /ready /metrics /config /breakers\n".into())
        }
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => text(StatusCode::OK, "application/json", body + "\n"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("cannot encode: {e}\n")),
    }
}

fn sidecar() -> admin::SidecarInfo {
    admin::SidecarInfo { version: env!("CARGO_PKG_VERSION").to_owned() }
}

/// What the sidecar enforces now.
fn config(store: &Store) -> admin::ConfigView {
    let p = store.load();
    let mut settings = match serde_json::to_value(&*p.config) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    // These two have their own fields.
    settings.remove("snapshot");
    settings.remove("warnings");
    admin::ConfigView {
        api_version: admin::API_VERSION.into(),
        kind: admin::KIND_CONFIG.into(),
        sidecar: sidecar(),
        version: p.version,
        snapshot: admin::SnapshotOrigin {
            version: p.config.snapshot.version.clone(),
            source: p.source.as_str().into(),
            received_at_unix: p.received_at_unix,
        },
        config: admin::EnforcedConfig {
            snapshot: p.config.snapshot.clone(),
            warnings: p.config.warnings.clone(),
            settings,
        },
        last_reload_error: store
            .last_error()
            .map(|e| admin::ReloadError { at_unix: e.at_unix, problems: e.problems }),
    }
}

/// Calls `f` with every governed target: its direction, port and pinned endpoint (a headless
/// Service's per-endpoint target), for `/breakers` and the gauges read at scrape.
fn governed(routes: &Routes, mut f: impl FnMut(Direction, Option<u16>, Option<String>, &Target)) {
    for route in routes.services() {
        for p in route.ports() {
            f(Direction::Outbound, p.port, None, p.target);
            for t in p.pinned {
                f(Direction::Outbound, p.port, t.endpoints.first().map(|e| e.addr.to_string()), t);
            }
            for t in p.routed {
                f(Direction::Outbound, p.port, None, t);
            }
        }
    }
    if let Some(inbound) = &routes.inbound {
        for (port, target) in inbound.ports() {
            f(Direction::Inbound, Some(port), None, target);
        }
    }
}

/// Sets the gauges read at scrape: breaker states and bulkhead occupancy.
fn scrape_gauges(routes: &Routes, metrics: &crate::metrics::Metrics) {
    let (mut breakers, mut bulkheads) = (Vec::new(), Vec::new());
    governed(routes, |direction, _, _, target| {
        if target.policy.is_none() {
            return;
        }
        let service = target.service.to_string();
        for (endpoint, state) in target.resilience.breaker_gauges() {
            breakers.push((service.clone(), endpoint, state));
        }
        if let Some(b) = &target.resilience.bulkhead {
            bulkheads.push((service, direction, b.in_flight(), b.queued(), b.limits().max_concurrent));
        }
    });
    metrics.breakers(breakers);
    metrics.bulkheads(bulkheads);
}

/// Every governed target's breakers, bulkhead and retry budget.
fn breakers(routes: &Routes) -> admin::BreakersView {
    let mut targets = Vec::new();
    governed(routes, |direction, port, pinned, target| {
        let Some(policy) = &target.policy else { return };
        let (breakers, bulkhead, retry_budget) = target.resilience.report();
        targets.push(admin::TargetState {
            direction: direction.as_str().into(),
            service: target.service.to_string(),
            port,
            pinned_endpoint: pinned,
            policy: Some(policy.name.clone()),
            generation: policy.generation,
            mode: target.resilience.enforcement.as_str().into(),
            breakers,
            bulkhead,
            retry_budget,
        });
    });
    admin::BreakersView {
        api_version: admin::API_VERSION.into(),
        kind: admin::KIND_BREAKERS.into(),
        sidecar: sidecar(),
        targets,
    }
}
