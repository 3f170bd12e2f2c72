//! Snapshots as the operator sends them: applied through the same store as a local file, with
//! what a cluster needs and a file could not say — per-port endpoint sets, Services with no
//! ready endpoint, fields from a newer operator, and a schema this build does not read.

mod support;

use breakwater_fault::{FaultServer, Faults};
use serde_json::{Value, json};
use support::*;

async fn fault(name: &str) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), ..Default::default() })
        .await
        .expect("fault server")
}

async fn config_json(sc: &breakwater_sidecar::Sidecar) -> Value {
    serde_json::from_slice(&admin(sc, "/config").await.body).expect("json")
}

/// A snapshot with Service `payments.shop`: `ports` is `[(port, [endpoints])]`.
fn snapshot(ports: &[(u16, Vec<std::net::SocketAddr>)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, eps)| {
            json!({"port": port, "endpoints": eps.iter().map(|e| json!({"address": e.to_string()})).collect::<Vec<_>>()})
        })
        .collect();
    json!({
        "schema": 1,
        "version": {"counter": 7, "hash": "from-test"},
        "identity": {"name": "checkout-1", "namespace": "shop"},
        "services": [{"name": "payments", "namespace": "shop", "ports": ports}],
    })
}

#[tokio::test]
async fn a_service_without_ready_endpoints_is_refused_with_no_healthy_endpoints() {
    let up = fault("reports").await;
    let services = format!(
        "  - name: payments\n    namespace: shop\n    endpoints: []\n{}",
        service("reports", &[up.addr()])
    );
    let sc = start(&sidecar_yaml(&services, None, "")).await;

    let got = get(sc.outbound, "http://payments.shop/").await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.header("breakwater-error"), Some("no-healthy-endpoints"));
    let got = grpc(sc.outbound, "http://payments.shop/inventory.Stock/Get").await;
    assert_eq!(got.header("grpc-status"), Some("14"), "UNAVAILABLE for gRPC callers");
    assert_eq!(got.header("breakwater-error"), Some("no-healthy-endpoints"));
    // The rest of the configuration is in force.
    assert_eq!(get(sc.outbound, "http://reports.shop/").await.header("x-served-by"), Some("reports"));
    // Nothing was attempted, so nothing failed to connect.
    assert_eq!(
        metric(&sc, "breakwater_upstream_connect_failures_total{service=\"payments.shop\"}").await,
        0.0
    );
}

#[tokio::test]
async fn each_port_goes_to_its_own_endpoints() {
    let (web, admin_port) = (fault("web").await, fault("admin").await);
    let sc = start(&sidecar_yaml("  []\n", None, "")).await;
    let snap = snapshot(&[(80, vec![web.addr()]), (9090, vec![admin_port.addr()])]);
    let applied = sc.store.apply_snapshot(snap.to_string().as_bytes()).expect("a valid snapshot applies");
    assert!(applied);

    assert_eq!(get(sc.outbound, "http://payments.shop:80/").await.header("x-served-by"), Some("web"));
    assert_eq!(get(sc.outbound, "http://payments.shop:9090/").await.header("x-served-by"), Some("admin"));
    let other = get(sc.outbound, "http://payments.shop:7000/").await;
    assert_eq!(other.status, 404, "a port the Service does not have: {}", other.text());

    let config = config_json(&sc).await;
    assert_eq!(config["config"]["snapshot"]["version"]["hash"], "from-test");
    assert_eq!(config["version"], 2);
    // The same content again changes nothing.
    assert!(!sc.store.apply_snapshot(snap.to_string().as_bytes()).expect("still valid"));
    assert_eq!(config_json(&sc).await["version"], 2);
}

#[tokio::test]
async fn fields_from_a_newer_operator_are_ignored_and_counted() {
    let up = fault("up").await;
    let sc = start(&sidecar_yaml("  []\n", None, "")).await;
    let mut snap = snapshot(&[(80, vec![up.addr()])]);
    snap["services"][0]["ports"][0]["weight"] = json!(10);
    snap["meshWideDefaults"] = json!({"retries": 2});
    assert!(sc.store.apply_snapshot(snap.to_string().as_bytes()).expect("a newer snapshot applies"));
    assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("up"));
    assert_eq!(metric(&sc, "breakwater_config_unknown_fields_total").await, 2.0);
}

#[tokio::test]
async fn a_snapshot_of_another_schema_is_refused_and_the_running_one_kept() {
    let (old, new) = (fault("old").await, fault("new").await);
    let sc = start(&sidecar_yaml("  []\n", None, "")).await;
    sc.store.apply_snapshot(snapshot(&[(80, vec![old.addr()])]).to_string().as_bytes()).expect("applies");

    let mut next = snapshot(&[(80, vec![new.addr()])]);
    next["schema"] = json!(2);
    let err = sc.store.apply_snapshot(next.to_string().as_bytes()).expect_err("schema 2 is refused");
    assert!(err.to_string().contains("schema 2"), "{err}");
    let config = config_json(&sc).await;
    assert!(config["lastReloadError"]["problems"].to_string().contains("upgrade the sidecar"), "{config}");
    assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("old"));

    // A bad value is refused with its path, and still nothing changes.
    let mut bad = snapshot(&[(80, vec![new.addr()])]);
    bad["services"][0]["ports"][0]["endpoints"][0]["address"] = json!("nowhere");
    let err = sc.store.apply_snapshot(bad.to_string().as_bytes()).expect_err("a bad address is refused");
    assert!(err.to_string().contains("services[0].ports[0].endpoints[0].address"), "{err}");
    assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("old"));
    assert!(metric(&sc, "breakwater_config_reloads_total{result=\"failure\"}").await >= 2.0);
}
