//! Table-driven tests of `compile`, and properties: it is deterministic, and the order of its
//! inputs never changes its output.

use std::sync::Arc;

use breakwater_crds::{CommunicationPolicy, snapshot::Snapshot};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::World;

pub(super) fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

fn namespace(name: &str, labels: Value) -> Arc<Namespace> {
    obj(json!({"metadata": {"name": name, "labels": labels}}))
}

pub(super) fn pod(ns: &str, name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"serviceAccountName": "caller", "containers": []},
    }))
    .expect("a valid pod")
}

/// A Service with `ports` as `(name, port, targetPort)`.
pub(super) fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16, Value)]) -> Arc<Service> {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, t)| json!({"name": n, "port": p, "targetPort": t, "protocol": "TCP"}))
        .collect();
    obj(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name, "tier": "backend"}},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports},
    }))
}

/// An endpoint: `(ip, pod name, ready, terminating)`.
type Ep<'a> = (&'a str, &'a str, Option<bool>, bool);

/// A slice of `service` with `ports` as `(name, number)` and `endpoints`.
pub(super) fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[(&str, u16)],
    endpoints: &[Ep<'_>],
) -> Arc<EndpointSlice> {
    let ports: Vec<Value> =
        ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, ready, terminating)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "terminating": terminating},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
            })
        })
        .collect();
    obj(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }))
}

pub(super) fn policy(ns: &str, name: &str, created: i64, spec: Value) -> Arc<CommunicationPolicy> {
    obj(json!({
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CommunicationPolicy",
        "metadata": {
            "name": name, "namespace": ns, "generation": 3,
            "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", created / 60, created % 60),
        },
        "spec": spec,
    }))
}

#[derive(Debug)]
struct Case {
    policies: Vec<Arc<CommunicationPolicy>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    namespaces: Vec<Arc<Namespace>>,
}

impl Case {
    fn compile(&self, pod: &Pod) -> Snapshot {
        World::new(&self.policies, &self.services, &self.slices, &self.namespaces).compile(pod)
    }
}

/// The shop: payments (http 80 → named `http`, grpc 9090 → 9000), two pods whose `http` port
/// differs, one not ready, one terminating.
fn shop() -> Case {
    Case {
        policies: vec![policy(
            "shop",
            "payments",
            100,
            json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "2s"}}),
        )],
        services: vec![service(
            "shop",
            "payments",
            "198.19.0.10",
            &[("http", 80, json!("http")), ("grpc", 9090, json!(9000))],
        )],
        slices: vec![
            slice(
                "shop",
                "payments-a",
                "payments",
                &[("http", 8080), ("grpc", 9000)],
                &[
                    ("198.18.0.5", "payments-a", Some(true), false),
                    ("198.18.0.6", "payments-b", Some(false), false),
                ],
            ),
            slice(
                "shop",
                "payments-b",
                "payments",
                &[("http", 8081), ("grpc", 9000)],
                &[("198.18.0.7", "payments-c", None, false), ("198.18.0.8", "payments-d", Some(true), true)],
            ),
        ],
        namespaces: vec![
            namespace("shop", json!({"team": "shop"})),
            namespace("web", json!({"team": "web"})),
        ],
    }
}

fn endpoints(s: &Snapshot, service: usize, port: usize) -> Vec<String> {
    s.services[service].ports[port].endpoints.iter().map(|e| e.address.to_string()).collect()
}

#[test]
fn each_port_gets_its_ready_endpoints_at_the_port_resolved_on_each_pod() {
    let s = shop().compile(&pod("shop", "checkout", json!({"app": "checkout"})));
    assert_eq!(s.services.len(), 1);
    let payments = &s.services[0];
    assert_eq!((payments.name.as_str(), payments.headless), ("payments", false));
    let ports: Vec<_> = payments.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [Some(80), Some(9090)]);
    // Named targetPort: 8080 on one pod, 8081 on the other; unset `ready` counts as ready;
    // not-ready and terminating endpoints are left out.
    assert_eq!(endpoints(&s, 0, 0), ["198.18.0.5:8080", "198.18.0.7:8081"]);
    assert_eq!(endpoints(&s, 0, 1), ["198.18.0.5:9000", "198.18.0.7:9000"]);
    assert_eq!(payments.ports[0].addresses, ["198.19.0.10:80".parse().expect("an address")]);
    assert_eq!(payments.ports[1].addresses, ["198.19.0.10:9090".parse().expect("an address")]);
    assert_eq!(payments.ports[0].endpoints[0].pod.as_deref(), Some("payments-a"));
    for p in &payments.ports {
        let policy = p.policy.as_ref().expect("the policy covers every port");
        assert_eq!((policy.name.as_str(), policy.generation), ("shop/payments", Some(3)));
    }
    assert_eq!(s.identity.name, "checkout");
    assert_eq!(s.identity.namespace_labels.get("team").map(String::as_str), Some("shop"));
    assert_eq!(s.identity.service_account.as_deref(), Some("caller"));
    assert_eq!(s.version.hash, s.content_hash());
}

#[test]
fn a_port_limited_policy_governs_its_ports_and_loses_to_an_older_one() {
    let mut case = shop();
    case.policies.push(policy(
        "shop",
        "grpc-only",
        110,
        json!({"targetRef": {"name": "payments", "ports": [9090]}, "retries": {"attempts": 3}}),
    ));
    // Older than `payments` and selecting by label: loses to the policy naming the Service.
    case.policies.push(policy(
        "shop",
        "backend-tier",
        0,
        json!({"targetRef": {"selector": {"matchLabels": {"tier": "backend"}}}, "timeouts": {"request": "9s"}}),
    ));
    let s = case.compile(&pod("shop", "checkout", json!({})));
    let names: Vec<_> = s.services[0]
        .ports
        .iter()
        .map(|p| p.policy.as_ref().map(|p| p.name.clone()).unwrap_or_default())
        .collect();
    // `payments` is older than `grpc-only` and covers every port: it wins both.
    assert_eq!(names, ["shop/payments", "shop/payments"]);
    assert_eq!(s.services[0].shadowed, ["shop/grpc-only", "shop/backend-tier"]);

    // Without `payments`, each port has its own winner.
    case.policies.remove(0);
    let s = case.compile(&pod("shop", "checkout", json!({})));
    let names: Vec<_> = s.services[0]
        .ports
        .iter()
        .map(|p| p.policy.as_ref().map(|p| p.name.clone()).unwrap_or_default())
        .collect();
    assert_eq!(names, ["shop/backend-tier", "shop/grpc-only"]);
}

#[test]
fn sources_decide_which_callers_get_a_service() {
    let mut case = shop();
    case.policies = vec![policy(
        "shop",
        "payments",
        0,
        json!({
            "targetRef": {"name": "payments"},
            "timeouts": {"request": "2s"},
            "sources": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}, {"podSelector": {"matchLabels": {"app": "checkout"}}}],
        }),
    )];
    let governed =
        |ns: &str, app: &str| !case.compile(&pod(ns, "caller", json!({"app": app}))).services.is_empty();
    assert!(governed("web", "anything"), "namespace labels match");
    assert!(governed("shop", "checkout"), "pod labels match");
    assert!(!governed("shop", "reports"), "neither matches: the Service is not in its snapshot");
}

#[test]
fn a_service_without_ready_endpoints_stays_with_an_empty_set() {
    let mut case = shop();
    case.slices = vec![slice(
        "shop",
        "payments-a",
        "payments",
        &[("http", 8080)],
        &[("198.18.0.5", "p", Some(false), false)],
    )];
    let s = case.compile(&pod("shop", "checkout", json!({})));
    assert_eq!(s.services.len(), 1);
    assert!(s.services[0].ports.iter().all(|p| p.endpoints.is_empty()));
    assert!(s.services[0].ports[0].policy.is_some(), "the policy still applies");
}

#[test]
fn headless_services_list_endpoints_and_no_address() {
    let mut case = shop();
    case.services = vec![service("shop", "payments", "None", &[("http", 80, json!("http"))])];
    let s = case.compile(&pod("shop", "checkout", json!({})));
    assert!(s.services[0].headless);
    assert!(s.services[0].ports[0].addresses.is_empty());
    assert_eq!(endpoints(&s, 0, 0), ["198.18.0.5:8080", "198.18.0.7:8081"]);
}

#[test]
fn a_pod_backing_several_services_gets_each_port_with_its_inbound_policy() {
    let mut case = shop();
    case.services.push(service("shop", "payments-admin", "198.19.0.11", &[("admin", 8443, json!(9000))]));
    case.slices.push(slice(
        "shop",
        "payments-admin-1",
        "payments-admin",
        &[("admin", 9000)],
        &[("198.18.0.5", "payments-a", Some(true), false)],
    ));
    case.policies.push(policy(
        "shop",
        "admin-inbound",
        200,
        json!({"targetRef": {"name": "payments-admin"}, "bulkhead": {"inbound": {"maxConcurrentRequests": 2}}}),
    ));
    let s = case.compile(&pod("shop", "payments-a", json!({"app": "payments"})));
    let ports: Vec<_> = s.inbound.iter().map(|p| (p.port, p.services.clone())).collect();
    assert_eq!(
        ports,
        [
            (8080, vec!["payments.shop".to_owned()]),
            (9000, vec!["payments-admin.shop".to_owned(), "payments.shop".to_owned()]),
        ]
    );
    assert_eq!(s.inbound[0].policy.as_ref().map(|p| p.name.as_str()), Some("shop/payments"));
    // Port 9000 is reached through both Services: the older policy of the two wins.
    assert_eq!(s.inbound[1].policy.as_ref().map(|p| p.name.as_str()), Some("shop/payments"));
    // A pod that is not ready still gets its inbound configuration (it is about to serve).
    let b = case.compile(&pod("shop", "payments-b", json!({})));
    assert_eq!(b.inbound.iter().map(|p| p.port).collect::<Vec<_>>(), [8080, 9000]);
}

#[test]
fn invalid_policies_and_external_names_are_left_out() {
    let mut case = shop();
    case.policies = vec![policy(
        "shop",
        "broken",
        0,
        json!({"targetRef": {"name": "payments"}, "retries": {"attempts": 0}}),
    )];
    assert!(case.compile(&pod("shop", "checkout", json!({}))).services.is_empty());
    let external: Arc<Service> = obj(json!({
        "metadata": {"name": "payments", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "payments.example.com"},
    }));
    case.services = vec![external];
    case.policies = shop().policies;
    assert!(case.compile(&pod("shop", "checkout", json!({}))).services.is_empty());
}

#[test]
fn the_hash_follows_the_endpoints() {
    let case = shop();
    let caller = pod("shop", "checkout", json!({}));
    let before = case.compile(&caller);
    assert_eq!(before, case.compile(&caller), "deterministic");
    let mut scaled = shop();
    scaled.slices.pop();
    let after = scaled.compile(&caller);
    assert_ne!(before.version.hash, after.version.hash);
    assert_eq!(endpoints(&after, 0, 0), ["198.18.0.5:8080"]);
}

/// A random small cluster: up to 4 Services with 1–3 ports (named targets or numbers), slices
/// with endpoints in every state, and policies selecting by name or label, with or without
/// port lists and sources.
fn arbitrary_case() -> impl Strategy<Value = Case> {
    let svc = (0usize..4, prop::collection::vec((0u16..3, any::<bool>()), 1..4), any::<bool>());
    let ep = (0u8..6, prop::option::of(any::<bool>()), any::<bool>());
    let sl = (0usize..4, 0u16..3, prop::collection::vec(ep, 0..4));
    let pol = (0usize..5, 0i64..4, prop::option::of(0u16..3), any::<bool>(), 0u8..3);
    (prop::collection::vec(svc, 1..5), prop::collection::vec(sl, 0..6), prop::collection::vec(pol, 0..6))
        .prop_map(|(svcs, slices, pols)| {
            let name = |i: usize| format!("svc-{i}");
            // Names are unique, as in one namespace of a real cluster.
            let mut seen = std::collections::BTreeSet::new();
            let services = svcs
                .iter()
                .enumerate()
                .filter(|(_, (n, _, _))| seen.insert(*n))
                .map(|(i, (n, ports, headless))| {
                    let ports: Vec<(String, u16, Value)> = ports
                        .iter()
                        .map(|(p, named)| {
                            let target = if *named { json!(format!("p{p}")) } else { json!(9000 + p) };
                            (format!("p{p}"), 80 + p, target)
                        })
                        .collect();
                    let ports: Vec<(&str, u16, Value)> =
                        ports.iter().map(|(n, p, t)| (n.as_str(), *p, t.clone())).collect();
                    let ip = if *headless { "None".to_owned() } else { format!("198.19.0.{}", 10 + i) };
                    service("shop", &name(*n), &ip, &ports)
                })
                .collect();
            let slices = slices
                .iter()
                .enumerate()
                .map(|(i, (s, port, eps))| {
                    let eps: Vec<(String, String, Option<bool>, bool)> = eps
                        .iter()
                        .map(|(h, ready, term)| (format!("198.18.0.{h}"), format!("pod-{h}"), *ready, *term))
                        .collect();
                    let eps: Vec<Ep<'_>> =
                        eps.iter().map(|(a, p, r, t)| (a.as_str(), p.as_str(), *r, *t)).collect();
                    slice(
                        "shop",
                        &format!("slice-{i}"),
                        &name(*s),
                        &[(&format!("p{port}"), 8000 + port)],
                        &eps,
                    )
                })
                .collect();
            let policies = pols
                .iter()
                .enumerate()
                .map(|(i, (target, created, port, by_label, sources))| {
                    let mut target_ref = if *by_label {
                        json!({"selector": {"matchLabels": {"tier": "backend"}}})
                    } else {
                        json!({"name": name(*target)})
                    };
                    if let Some(p) = port {
                        target_ref["ports"] = json!([80 + p]);
                    }
                    let mut spec =
                        json!({"targetRef": target_ref, "timeouts": {"request": format!("{}s", i + 1)}});
                    if *sources == 1 {
                        spec["sources"] = json!([{"podSelector": {"matchLabels": {"app": "checkout"}}}]);
                    } else if *sources == 2 {
                        spec["sources"] = json!([{"namespace": "web"}]);
                    }
                    policy("shop", &format!("pol-{i}"), *created, spec)
                })
                .collect();
            Case { policies, services, slices, namespaces: vec![namespace("shop", json!({}))] }
        })
}

fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    let mut state = seed | 1;
    for i in (1..out.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.swap(i, (state % (i as u64 + 1)) as usize);
    }
    out
}

proptest! {
    #[test]
    fn compile_is_deterministic_and_input_order_never_matters(case in arbitrary_case(), seed in any::<u64>()) {
        let callers = [pod("shop", "checkout", json!({"app": "checkout"})), pod("shop", "pod-1", json!({}))];
        let reordered = Case {
            policies: shuffled(&case.policies, seed),
            services: shuffled(&case.services, seed.rotate_left(7)),
            slices: shuffled(&case.slices, seed.rotate_left(19)),
            namespaces: case.namespaces.clone(),
        };
        for caller in &callers {
            let a = case.compile(caller);
            prop_assert_eq!(&a, &case.compile(caller));
            prop_assert_eq!(&a, &reordered.compile(caller));
        }
    }
}

/// A Service port's `appProtocol` reaches both ends: callers see it on the port (outbound), the
/// pods behind it on their own port (inbound), so neither sidecar has to detect the protocol.
#[test]
fn app_protocol_reaches_callers_and_the_pods_behind_the_port() {
    let mut case = shop();
    case.services = vec![obj(json!({
        "metadata": {"name": "payments", "namespace": "shop", "labels": {"app": "payments"}},
        "spec": {"clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}]},
    }))];
    let caller = case.compile(&pod("shop", "checkout", json!({})));
    assert_eq!(caller.services[0].ports[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    let server = case.compile(&pod("shop", "payments-a", json!({"app": "payments"})));
    assert_eq!(server.inbound[0].port, 8080);
    assert_eq!(server.inbound[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
}
