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
    let probes = sc.serve_probes("127.0.0.1:0".parse().expect("addr")).await.expect("bound");
    for path in ["/live", "/ready", "/metrics"] {
        assert_eq!(at(probes, path).await.status, 200, "{path}");
    }
    for path in ["/config", "/breakers", "/"] {
        let got = at(probes, path).await;
        assert_eq!(got.status, 404, "{path}");
        assert!(got.text().contains("admin port"), "{path}: {}", got.text());
    }
    assert_eq!(admin(&sc, "/config").await.status, 200, "the admin port still has everything");
    sc.start_drain();
    assert_eq!(at(probes, "/ready").await.status, 503, "draining shows on the probes port too");
}

#[tokio::test]
async fn wait_returns_once_the_url_answers_and_fails_at_its_timeout() {
    let sc = start(&sidecar_yaml("  []\n", None, "")).await;
    let probes = sc.serve_probes("127.0.0.1:0".parse().expect("addr")).await.expect("bound");
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
