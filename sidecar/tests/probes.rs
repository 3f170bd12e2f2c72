//! The probes listener (`run --probe-address`): what the kubelet and Prometheus reach from
//! outside the pod, and only that; and `breakwater-sidecar wait`, which holds an app container
//! until the proxy listens where there are no native sidecars.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn at(addr: std::net::SocketAddr, path: &str) -> Got {
    http1(addr, Request::get(path).header("host", "probes").body(Full::new(Bytes::new())).expect("request"))
        .await
}

#[tokio::test]
async fn the_probes_listener_serves_live_ready_and_metrics_and_nothing_else() {
    let sc = start(&sidecar_yaml("  []\n", None, "")).await;
    let probes = sc.serve_probes("127.0.0.1:0".parse().expect("addr"), false).await.expect("bound");
    for path in ["/live", "/ready", "/metrics"] {
        assert_eq!(at(probes, path).await.status, 200, "{path}");
    }
    for path in ["/config", "/breakers", "/"] {
        let got = at(probes, path).await;
        assert_eq!(got.status, 404, "{path}");
        assert!(got.text().contains("--probe-diagnostics"), "{path}: {}", got.text());
    }
    assert_eq!(admin(&sc, "/config").await.status, 200, "the admin port still has everything");
    sc.start_drain();
    assert_eq!(at(probes, "/ready").await.status, 503, "draining shows on the probes port too");
}

#[tokio::test]
async fn with_diagnostics_the_probes_listener_serves_config_and_breakers_as_v1_documents() {
    let spec = "  retries: {attempts: 2, budget: {ratio: 0.5, minPerSecond: 3, window: 10s}}\n\
                \x20 bulkhead: {outbound: {maxConcurrentRequests: 4, maxQueued: 2, maxQueueWait: 50ms}}\n\
                \x20 circuitBreaker: {consecutiveFailures: 5, scope: Service}\n";
    let upstream = closed_port().await;
    let sc =
        start(&(sidecar_yaml(&service("payments", &[upstream]), None, "") + &policy("p", "payments", spec)))
            .await;
    let probes = sc.serve_probes("127.0.0.1:0".parse().expect("addr"), true).await.expect("bound");
    let got = at(probes, "/config").await;
    assert_eq!(got.status, 200);
    let config = breakwater_crds::admin::read_config(&got.body).expect("a v1 document");
    assert_eq!(config.sidecar.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(config.snapshot.source, "file");
    assert_eq!(config.config.snapshot.services.len(), 1, "the snapshot it enforces");
    assert!(config.config.settings.contains_key("listeners"), "and its own settings");

    let got = at(probes, "/breakers").await;
    let view = breakwater_crds::admin::read_breakers(&got.body).expect("a v1 document");
    let target = view.targets.first().expect("the governed target");
    assert_eq!((target.service.as_str(), target.mode.as_str()), ("payments.shop", "Enforce"));
    assert_eq!(target.breakers.len(), 1);
    assert_eq!((target.breakers[0].endpoint.as_str(), target.breakers[0].state.as_str()), ("*", "Closed"));
    let bulkhead = target.bulkhead.as_ref().expect("bulkhead");
    assert_eq!((bulkhead.in_flight, bulkhead.max_concurrent, bulkhead.max_queued), (0, 4, 2));
    let budget = target.retry_budget.as_ref().expect("retry budget");
    assert_eq!((budget.min_per_second, budget.window_seconds), (3, 10));
    assert_eq!(budget.available, 30, "3/s over 10 s before any traffic");
    assert_eq!(at(probes, "/").await.status, 404);
}

#[tokio::test]
async fn wait_returns_once_the_url_answers_and_fails_at_its_timeout() {
    let sc = start(&sidecar_yaml("  []\n", None, "")).await;
    let probes = sc.serve_probes("127.0.0.1:0".parse().expect("addr"), false).await.expect("bound");
    let bin = env!("CARGO_BIN_EXE_breakwater-sidecar");
    let ok = tokio::process::Command::new(bin)
        .args(["wait", "--url", &format!("http://{probes}/live"), "--timeout", "5s"])
        .output()
        .await
        .expect("runs");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let closed = closed_port().await;
    let fail = tokio::process::Command::new(bin)
        .args(["wait", "--url", &format!("http://{closed}/live"), "--timeout", "300ms"])
        .output()
        .await
        .expect("runs");
    assert_eq!(fail.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&fail.stderr);
    assert!(stderr.contains("did not answer 200 within 300ms"), "{stderr}");
}
