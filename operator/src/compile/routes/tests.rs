//! Routes in pods' snapshots, and in routes' status.

use std::sync::Arc;

use breakwater_crds::gateway::HTTPRoute;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use crate::compile::{
    World,
    tests::{obj, pod, policy, service, slice},
};

pub(crate) fn route(ns: &str, name: &str, created: i64, spec: Value) -> Arc<HTTPRoute> {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": name, "namespace": ns, "generation": 2,
            "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
        },
        "spec": spec,
    }))
}

fn services() -> Vec<Arc<Service>> {
    vec![
        service("shop", "orders", "198.19.0.10", &[("http", 80, json!(8080))]),
        service("shop", "orders-v1", "198.19.0.11", &[("http", 80, json!(8080))]),
        service("shop", "orders-v2", "198.19.0.12", &[("http", 80, json!(8080))]),
        service("other", "ledger", "198.19.0.13", &[("http", 80, json!(8080))]),
    ]
}

pub(crate) fn world(routes: &[Arc<HTTPRoute>]) -> World {
    let slices = vec![
        slice(
            "shop",
            "orders-v1-a",
            "orders-v1",
            &[("http", 8080)],
            &[("198.18.0.11", "v1", Some(true), false)],
        ),
        slice(
            "shop",
            "orders-v2-a",
            "orders-v2",
            &[("http", 8080)],
            &[("198.18.0.12", "v2", Some(true), false)],
        ),
    ];
    World::new(&[], &services(), &slices, &[]).with_routes(routes)
}

pub(crate) fn split() -> Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 80}],
        "rules": [{"backendRefs": [
            {"name": "orders-v1", "port": 80, "weight": 90},
            {"name": "orders-v2", "port": 80, "weight": 10},
            {"name": "missing", "port": 80},
            {"name": "ledger", "namespace": "other", "port": 80},
        ]}],
    })
}

#[test]
fn a_route_brings_its_parent_and_backends_into_every_callers_snapshot() {
    let w = world(&[route("shop", "split", 1, split())]);
    let s = w.compile(&pod("web", "checkout-1", json!({})));
    let names: Vec<String> = s.services.iter().map(|s| s.key()).collect();
    assert_eq!(names, ["orders.shop", "orders-v1.shop", "orders-v2.shop"], "no policy needed; not ledger");
    let table = s.services[0].ports[0].routes.as_ref().expect("routes on orders:80");
    let backends = &table.rules[0].backends;
    assert_eq!(backends[0].invalid, None);
    assert_eq!(backends[1].weight, 10);
    assert_eq!(backends[2].invalid.as_deref(), Some("backend Service shop/missing does not exist"));
    assert!(
        backends[3].invalid.as_deref().is_some_and(|m| m.contains("ReferenceGrant")),
        "{:?}",
        backends[3]
    );
    assert_eq!(s.services[1].ports[0].endpoints[0].address.to_string(), "198.18.0.11:8080");
    assert!(s.services[1].ports[0].routes.is_none(), "a backend has no routes of its own");
}

#[test]
fn a_consumer_route_governs_its_own_namespace_only_and_an_invalid_route_nothing() {
    let mut consumer = split();
    consumer["parentRefs"][0]["namespace"] = json!("shop");
    consumer["rules"] = json!([{"backendRefs": [{"name": "local-orders", "port": 80}]}]);
    let invalid = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "orders-v2"}],
        "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/(?=x)"}}]}],
    });
    let w = world(&[route("web", "mine", 1, consumer), route("shop", "bad", 2, invalid)]);
    let web = w.compile(&pod("web", "checkout-1", json!({})));
    let table = web.services[0].ports[0].routes.as_ref().expect("the consumer route");
    assert_eq!(table.rules[0].route, "web/mine");
    let billing = w.compile(&pod("billing", "b-1", json!({})));
    assert!(billing.services.is_empty(), "not a caller the route governs: {:?}", billing.services);
    assert!(web.services.iter().all(|s| s.ports.iter().all(|p| p.name.is_some())));
    assert!(!web.services.iter().any(|s| s.name == "orders-v2"), "the invalid route brings nothing");
}

#[test]
fn policies_on_a_route_and_its_rules_replace_the_services_for_their_callers() {
    let routes = [route(
        "shop",
        "orders",
        1,
        json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "orders"}],
            "rules": [
                {"name": "get", "matches": [{"method": "GET"}], "backendRefs": [{"name": "orders-v1", "port": 80}]},
                {"name": "post", "backendRefs": [{"name": "orders-v1", "port": 80}]},
            ],
        }),
    )];
    let target = |rule: Option<&str>| {
        let mut t = json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "orders"});
        if let Some(rule) = rule {
            t["sectionName"] = json!(rule);
        }
        t
    };
    let policies = [
        policy("shop", "service", 1, json!({"targetRef": {"name": "orders"}, "timeouts": {"request": "5s"}})),
        policy(
            "shop",
            "whole",
            2,
            json!({"targetRef": target(None), "sources": [{"namespace": "web"}], "timeouts": {"request": "2s"}}),
        ),
        policy("shop", "get", 3, json!({"targetRef": target(Some("get")), "retries": {}})),
    ];
    let w = World::new(&policies, &services(), &[], &[]).with_routes(&routes);
    let rules = |ns: &str| {
        let s = w.compile(&pod(ns, "caller", json!({})));
        let table = s.services[0].ports[0].routes.clone().expect("routes on orders:80");
        let names: Vec<String> = table
            .rules
            .iter()
            .map(|r| r.policy.as_ref().map(|p| p.name.clone()).unwrap_or_default())
            .collect();
        (names, s.policies().into_keys().collect::<Vec<_>>())
    };
    let (web, acknowledged) = rules("web");
    assert_eq!(web, ["shop/get", "shop/whole"], "rule > route for the callers both select");
    assert_eq!(acknowledged, ["shop/get", "shop/service", "shop/whole"], "each is acknowledged by this pod");
    let (billing, _) = rules("billing");
    assert_eq!(
        billing,
        ["shop/get", "shop/service"],
        "whole is for web's callers; the Service's for the rest"
    );
}
