//! Reloads and drains: a bad file never replaces a good one; SIGTERM loses no request.

mod support;

use std::{io::BufRead, time::Duration};

use breakwater_fault::{FaultServer, Faults};
use support::*;

async fn fault(name: &str) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), ..Default::default() })
        .await
        .expect("fault server")
}

async fn config_json(sc: &breakwater_sidecar::Sidecar) -> serde_json::Value {
    serde_json::from_slice(&admin(sc, "/config").await.body).expect("json")
}

#[tokio::test]
async fn reload_good_then_bad_then_good() {
    let (a, b) = (fault("a").await, fault("b").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidecar.yaml");
    let good_a = sidecar_yaml(&service("payments", &[a.addr()]), None, "");
    std::fs::write(&path, &good_a).expect("write");
    let sc = breakwater_sidecar::Sidecar::start(&good_a, Some(path.clone())).await.expect("start");
    assert_eq!(get(sc.outbound, "http://payments/").await.header("x-served-by"), Some("a"));

    // Bad: points at b, but a policy is invalid. Nothing may change.
    let bad = sidecar_yaml(&service("payments", &[b.addr()]), None, "")
        + &policy("broken", "payments", "  retries: {attempts: 0}\n");
    std::fs::write(&path, &bad).expect("write");
    let err = eventually("the bad file to be reported", || async {
        let c = config_json(&sc).await;
        (!c["lastReloadError"].is_null()).then_some(c)
    })
    .await;
    assert_eq!(err["version"], 1, "the running configuration stays");
    let problems = err["lastReloadError"]["problems"].to_string();
    assert!(problems.contains("spec.retries.attempts"), "the error names the field: {problems}");
    assert_eq!(get(sc.outbound, "http://payments/").await.header("x-served-by"), Some("a"));
    assert!(metric(&sc, "breakwater_config_reloads_total{result=\"failure\"}").await >= 1.0);

    // Good again: points at b.
    let good_b = sidecar_yaml(&service("payments", &[b.addr()]), None, "");
    std::fs::write(&path, &good_b).expect("write");
    let ok = eventually("the good file to be applied", || async {
        let c = config_json(&sc).await;
        (c["version"] == 2).then_some(c)
    })
    .await;
    assert!(ok["lastReloadError"].is_null());
    assert_eq!(get(sc.outbound, "http://payments/").await.header("x-served-by"), Some("b"));
    assert_eq!(metric(&sc, "breakwater_config_reloads_total{result=\"success\"}").await, 1.0);
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_stops_accepting() {
    let up = fault("up").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    let outbound = sc.outbound;
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(outbound, "http://payments/?delay=500ms").await }))
        .collect();
    let stats = up.stats().clone();
    eventually("5 requests in flight upstream", || async { (stats.in_flight() == 5).then_some(()) }).await;

    sc.start_drain();
    assert_eq!(admin(&sc, "/ready").await.status, 503, "not ready while draining");
    eventually("the outbound listener to close", || async {
        tokio::net::TcpStream::connect(outbound).await.is_err().then_some(())
    })
    .await;
    let cut = sc.shutdown(Duration::from_secs(10)).await;
    assert_eq!(cut, 0, "everything finished within the grace period");
    for r in requests {
        assert_eq!(r.await.expect("task").status, 200, "no request lost");
    }
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let up = fault("up").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    let outbound = sc.outbound;
    let _stuck = tokio::spawn(async move { get(outbound, "http://payments/?delay=60s").await });
    let stats = up.stats().clone();
    eventually("the request in flight", || async { (stats.in_flight() == 1).then_some(()) }).await;
    let started = tokio::time::Instant::now();
    let cut = sc.shutdown(Duration::from_millis(300)).await;
    assert_eq!(cut, 1, "the stuck connection is reported as cut");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let up = fault("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, sidecar_yaml(&service("payments", &[up.addr()]), None, "")).expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater-sidecar"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--grace-period", "10s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the sidecar");
    let pid = child.id();
    // The sidecar logs its bound addresses once ready.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx.recv_timeout(PATIENCE).expect("the sidecar logs readiness");
    assert!(ready.contains("sidecar ready"), "{ready}");
    let outbound: std::net::SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("outbound="))
        .and_then(|a| a.parse().ok())
        .expect("outbound address in the log");

    let request = tokio::spawn(async move { get(outbound, "http://payments/?delay=500ms").await });
    let stats = up.stats().clone();
    eventually("the request in flight", || async { (stats.in_flight() == 1).then_some(()) }).await;
    let kill = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(kill.success());
    assert_eq!(request.await.expect("task").status, 200, "the in-flight request finished");
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert!(status.success(), "exit 0 after draining, got {status}");
}

#[test]
fn every_local_example_is_a_valid_sidecar_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/local") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        breakwater_sidecar::config::compile(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 1);
}

/// `validate` names what can never take effect, and still says the file is valid (exit 0).
#[test]
fn validate_warns_about_settings_that_never_take_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("inventory.yaml");
    std::fs::write(
        &file,
        "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {name: inventory, namespace: shop}\n\
         spec:\n  targetRef: {name: inventory}\n  retries:\n    retryOn: {grpcCodes: [UNAVAILABLE]}\n    retryableMethods: [POST]\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater-sidecar"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warnings are not errors: {stdout}");
    assert!(stdout.contains("valid (1 policies)"), "{stdout}");
    assert!(
        stdout.contains("warning:") && stdout.contains("spec.retries.retryableMethods: lists POST: the gRPC codes in retryOn.grpcCodes (UNAVAILABLE) are retried without it"),
        "{stdout}"
    );
}
