use std::sync::Arc;

use breakwater_crds::{CommunicationPolicy, CommunicationPolicyStatus, reasons};
use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use serde_json::{Value, json};

use super::*;

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + secs).expect("a valid time"))
}

fn policy(name: &str, created: i64, spec: Value) -> CommunicationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CommunicationPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": 4, "creationTimestamp": at(created)},
        "spec": spec,
    }))
    .expect("a valid policy")
}

fn service(name: &str, ports: &[u16]) -> Arc<Service> {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"port": p, "protocol": "TCP"})).collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"tier": "backend"}},
            "spec": {"clusterIP": "198.19.0.10", "ports": ports},
        }))
        .expect("a valid service"),
    )
}

fn condition<'a>(s: &'a CommunicationPolicyStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} in {s:?}"))
}

fn reason(s: &CommunicationPolicyStatus, type_: &str) -> (String, String) {
    let c = condition(s, type_);
    (c.status.clone(), c.reason.clone())
}

fn status_of(
    p: &CommunicationPolicy,
    peers: &[&CommunicationPolicy],
    services: &[Arc<Service>],
) -> CommunicationPolicyStatus {
    let services: Vec<&Service> = services.iter().map(Arc::as_ref).collect();
    desired(p, &Scope { peers, services: &services, routes: &[] }, None, None, &at(100))
}

fn payments() -> Value {
    json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "2s"}})
}

#[test]
fn a_valid_policy_with_its_service_is_accepted_resolved_and_effective() {
    let p = policy("p", 0, payments());
    let s = status_of(&p, &[&p], &[service("payments", &[80, 9090])]);
    assert_eq!(reason(&s, "Accepted"), ("True".into(), reasons::VALID.into()));
    assert_eq!(reason(&s, "Ready"), ("True".into(), reasons::RESOLVED.into()));
    assert_eq!(reason(&s, "Conflicted"), ("False".into(), reasons::NO_CONFLICT.into()));
    assert_eq!(s.observed_generation, Some(4));
    assert!(
        s.conditions.iter().all(|c| c.observed_generation == Some(4) && c.last_transition_time == at(100))
    );
    assert_eq!(s.targets.len(), 1);
    assert_eq!((s.targets[0].name.as_str(), s.targets[0].ports.as_slice()), ("payments", &[80, 9090][..]));
    assert_eq!(s.targets[0].governed_by, None);
    let effective = s.effective.expect("effective is filled");
    assert_eq!(effective.timeouts.request, Some(std::time::Duration::from_secs(2)));
    assert_eq!(effective.timeouts.connect, breakwater_crds::DEFAULT_CONNECT_TIMEOUT, "defaults filled in");
    assert_eq!(
        (s.sidecars, s.expected_sidecars),
        (None, None),
        "no sidecar count until sidecars acknowledge"
    );
}

#[test]
fn faults_are_a_condition_only_when_written_down_and_true_only_while_injected() {
    let svc = [service("payments", &[80])];
    let plain = policy("p", 0, payments());
    let s = status_of(&plain, &[&plain], &svc);
    assert!(s.conditions.iter().all(|c| c.type_ != "FaultsInjected"), "no faults, no condition");

    let faults = |enabled: bool, mode: &str| {
        policy(
            "f",
            0,
            json!({"targetRef": {"name": "payments"}, "mode": mode, "faults": {
                "enabled": enabled,
                "match": {"headers": [{"name": "x-fault-test", "value": "checkout"}]},
                "delay": {"fixedDelay": "2s", "percentage": 10},
                "abort": {"grpcStatus": "UNAVAILABLE", "percentage": 50},
            }}),
        )
    };
    let on = faults(true, "Enforce");
    let s = status_of(&on, &[&on], &svc);
    assert_eq!(reason(&s, "FaultsInjected"), ("True".into(), reasons::FAULTS_ENABLED.into()));
    assert_eq!(
        condition(&s, "FaultsInjected").message,
        "calls fail on purpose: a 2s delay for 10% of calls and gRPC UNAVAILABLE for 50% of calls carrying \
         x-fault-test: checkout"
    );
    let on_before = s;
    let off = faults(false, "Enforce");
    let s = status_of(&off, &[&off], &svc);
    assert_eq!(reason(&s, "FaultsInjected"), ("False".into(), reasons::FAULTS_DISABLED.into()));
    assert_eq!(s.effective.and_then(|e| e.faults), None, "sidecars get no faults");
    let dry = faults(true, "DryRun");
    let s = status_of(&dry, &[&dry], &svc);
    assert_eq!(reason(&s, "FaultsInjected"), ("False".into(), reasons::FAULTS_DRY_RUN.into()));

    // Turning faults on is a transition, which the controller publishes as a Warning Event.
    let off_status = desired(&off, &Scope { peers: &[&off], ..Default::default() }, None, None, &at(1));
    let changed = transitions(Some(&off_status), &on_before);
    assert!(changed.iter().any(|c| c.type_ == "FaultsInjected" && c.status == "True"), "{changed:?}");
}

#[test]
fn a_missing_service_is_no_matching_targets_naming_what_was_looked_for() {
    let p = policy("p", 0, payments());
    let s = status_of(&p, &[&p], &[service("reports", &[80])]);
    assert_eq!(reason(&s, "Accepted").1, reasons::VALID);
    assert_eq!(reason(&s, "Ready"), ("False".into(), reasons::NO_MATCHING_TARGETS.into()));
    assert!(condition(&s, "Ready").message.contains("no Service named payments in namespace shop"));
    assert!(s.targets.is_empty());

    let by_label = policy(
        "q",
        0,
        json!({"targetRef": {"selector": {"matchLabels": {"tier": "frontend"}}}, "timeouts": {"request": "1s"}}),
    );
    let s = status_of(&by_label, &[&by_label], &[service("reports", &[80])]);
    assert!(condition(&s, "Ready").message.contains("matches spec.targetRef.selector"), "{:?}", s.conditions);

    let wrong_port = policy(
        "r",
        0,
        json!({"targetRef": {"name": "payments", "ports": [8443]}, "timeouts": {"request": "1s"}}),
    );
    let s = status_of(&wrong_port, &[&wrong_port], &[service("payments", &[80])]);
    assert_eq!(reason(&s, "Ready").1, reasons::NO_MATCHING_TARGETS);
    let message = &condition(&s, "Ready").message;
    assert!(message.contains("spec.targetRef.ports") && message.contains("it has 80"), "{message}");
}

#[test]
fn the_loser_of_a_conflict_names_the_winner_and_why() {
    let older = policy("older", 0, payments());
    let newer = policy("newer", 50, payments());
    let by_label = policy(
        "tier",
        -50,
        json!({"targetRef": {"selector": {"matchLabels": {"tier": "backend"}}}, "timeouts": {"request": "5s"}}),
    );
    let peers = [&older, &newer, &by_label];
    let services = [service("payments", &[80])];

    let s = status_of(&newer, &peers, &services);
    assert_eq!(reason(&s, "Conflicted"), ("True".into(), reasons::OVERRIDDEN.into()));
    assert_eq!(condition(&s, "Conflicted").message, "payments: shop/older wins (it is older)");
    assert_eq!(s.targets[0].governed_by.as_deref(), Some("shop/older"));
    assert!(s.targets[0].ports.is_empty(), "in force on no port");
    assert_eq!(reason(&s, "Ready").1, reasons::RESOLVED, "still resolved: it names its target");

    let s = status_of(&by_label, &peers, &services);
    assert_eq!(
        condition(&s, "Conflicted").message,
        "payments: shop/older wins (it names the Service; this policy selects it by label)"
    );

    let s = status_of(&older, &peers, &services);
    assert_eq!(reason(&s, "Conflicted"), ("False".into(), reasons::NO_CONFLICT.into()));
    assert_eq!(s.targets[0].ports, [80]);

    // The winner deleted: the next in line takes over.
    let s = status_of(&newer, &[&newer, &by_label], &services);
    assert_eq!(reason(&s, "Conflicted").1, reasons::NO_CONFLICT);
}

#[test]
fn invalid_peers_never_win() {
    let broken = policy("broken", 0, json!({"targetRef": {"name": "payments"}, "retries": {"attempts": 0}}));
    let p = policy("p", 50, payments());
    let s = status_of(&p, &[&broken, &p], &[service("payments", &[80])]);
    assert_eq!(reason(&s, "Conflicted").1, reasons::NO_CONFLICT);
}

#[test]
fn what_the_schema_cannot_catch_is_not_accepted_with_its_field_path() {
    let p = policy("p", 0, json!({"targetRef": {"name": "payments"}, "retries": {"attempts": 0}}));
    let s = status_of(&p, &[&p], &[service("payments", &[80])]);
    assert_eq!(reason(&s, "Accepted"), ("False".into(), reasons::INVALID.into()));
    assert!(condition(&s, "Accepted").message.contains("spec.retries.attempts"), "{:?}", s.conditions);
    assert_eq!(reason(&s, "Ready"), ("False".into(), reasons::NOT_ACCEPTED.into()));
    assert!(s.effective.is_none() && s.targets.is_empty());

    let s = unreadable(
        Some(2),
        "spec.retries.attempts: invalid type: string \"three\", expected u32",
        None,
        &at(0),
    );
    assert_eq!(reason(&s, "Accepted").1, reasons::INVALID);
    assert!(condition(&s, "Accepted").message.contains("cannot be read: spec.retries.attempts"));
    assert_eq!(s.observed_generation, Some(2));
}

#[test]
fn recomputing_changes_nothing_and_transitions_keep_their_time_until_the_status_flips() {
    let p = policy("p", 0, payments());
    let first = status_of(&p, &[&p], &[]);
    let services: Vec<&Service> = Vec::new();
    let again =
        desired(&p, &Scope { peers: &[&p], services: &services, routes: &[] }, None, Some(&first), &at(500));
    assert_eq!(again, first, "a restarted operator computes the same status: nothing to write");
    assert!(transitions(Some(&first), &again).is_empty());

    let svc = service("payments", &[80]);
    let scope = Scope { peers: &[&p], services: &[svc.as_ref()], routes: &[] };
    let later = desired(&p, &scope, None, Some(&first), &at(900));
    assert_eq!(condition(&later, "Ready").last_transition_time, at(900), "Ready flipped");
    assert_eq!(condition(&later, "Accepted").last_transition_time, at(100), "Accepted did not");
    let changed: Vec<_> = transitions(Some(&first), &later).iter().map(|c| c.reason.clone()).collect();
    assert_eq!(changed, [reasons::RESOLVED]);
    assert_eq!(transitions(None, &later).len(), 3, "a new status: every condition is news");
}

#[test]
fn delivery_counts_turn_ready_into_pending_or_programmed() {
    let p = policy("p", 0, payments());
    let svc = service("payments", &[80]);
    let scope = Scope { peers: &[&p], services: &[svc.as_ref()], routes: &[] };
    let pending = desired(
        &p,
        &scope,
        Some(Delivery {
            acknowledged: 3,
            expected: 5,
            refused: vec![crate::delivery::Refusal {
                pod: crate::key::ObjKey::new("shop", "checkout-2"),
                why: "schema 2".into(),
            }],
        }),
        None,
        &at(0),
    );
    assert_eq!(reason(&pending, "Ready"), ("False".into(), reasons::PENDING.into()));
    assert_eq!((pending.sidecars, pending.expected_sidecars), (Some(3), Some(5)), "3 of 5 sidecars");
    let message = &condition(&pending, "Ready").message;
    assert!(
        message.contains("3 of 5") && message.contains("shop/checkout-2 refused it: schema 2"),
        "{message}"
    );
    let done =
        desired(&p, &scope, Some(Delivery { acknowledged: 5, expected: 5, refused: vec![] }), None, &at(0));
    assert_eq!(reason(&done, "Ready"), ("True".into(), reasons::PROGRAMMED.into()));
}

fn orders_route(name: &str) -> breakwater_crds::gateway::HTTPRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "payments"}], "rules": [
            {"name": "get", "matches": [{"method": "GET"}], "backendRefs": [{"name": "payments", "port": 80}]},
            {"name": "post", "backendRefs": [{"name": "payments", "port": 80}]},
        ]},
    }))
    .expect("a route")
}

fn on_route(name: &str, created: i64, route: &str, rule: Option<&str>) -> CommunicationPolicy {
    let mut target = json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route});
    if let Some(rule) = rule {
        target["sectionName"] = json!(rule);
    }
    policy(name, created, json!({"targetRef": target, "retries": {}}))
}

#[test]
fn precedence_rule_route_service_is_shown_on_each_policy() {
    let route = orders_route("orders");
    let service_policy = policy("service", 0, payments());
    let whole = on_route("whole", 0, "orders", None);
    let get = on_route("get", 10, "orders", Some("get"));
    let newer_get = on_route("newer-get", 20, "orders", Some("get"));
    let peers = [&service_policy, &whole, &get, &newer_get];
    let svc = service("payments", &[80]);
    let status = |p: &CommunicationPolicy, routes: &[&breakwater_crds::gateway::HTTPRoute]| {
        desired(p, &Scope { peers: &peers, services: &[svc.as_ref()], routes }, None, None, &at(100))
    };

    let s = status(&service_policy, &[&route]);
    assert_eq!(
        s.targets[0].overridden_by,
        ["HTTPRoute orders rule get: shop/get", "HTTPRoute orders: shop/whole"]
    );
    assert_eq!(reason(&s, "Conflicted").1, reasons::NO_CONFLICT, "more specific is not a conflict");

    let s = status(&whole, &[&route]);
    assert_eq!(reason(&s, "Ready"), ("True".into(), reasons::RESOLVED.into()));
    assert_eq!(condition(&s, "Ready").message, "compiled for callers of HTTPRoute orders");
    assert_eq!(s.targets[0].kind.as_deref(), Some("HTTPRoute"));
    assert_eq!(s.targets[0].overridden_by, ["rule get: shop/get"]);
    assert_eq!(s.targets[0].governed_by, None);

    let s = status(&get, &[&route]);
    assert_eq!(condition(&s, "Ready").message, "compiled for callers of HTTPRoute orders (rule get)");
    assert_eq!(reason(&s, "Conflicted").1, reasons::NO_CONFLICT);
    let s = status(&newer_get, &[&route]);
    assert_eq!(condition(&s, "Conflicted").message, "HTTPRoute orders: shop/get wins (it is older)");
    assert_eq!(s.targets[0].governed_by.as_deref(), Some("shop/get"));

    // Missing route, missing rule, an invalid route: nothing to govern, and why.
    let s = status(&get, &[]);
    assert_eq!(reason(&s, "Ready"), ("False".into(), reasons::NO_MATCHING_TARGETS.into()));
    assert!(
        condition(&s, "Ready").message.starts_with("no accepted HTTPRoute named orders in namespace shop")
    );
    let typo = on_route("typo", 0, "orders", Some("gets"));
    let s = desired(&typo, &Scope { peers: &[&typo], services: &[], routes: &[&route] }, None, None, &at(1));
    assert_eq!(
        condition(&s, "Ready").message,
        "HTTPRoute orders has no rule named gets (its named rules: get, post)"
    );
    let mut broken = orders_route("orders");
    broken.spec.rules[0].backend_refs[0].port = None;
    let s = status(&whole, &[&broken]);
    assert_eq!(reason(&s, "Ready").1, reasons::NO_MATCHING_TARGETS, "an invalid route is never applied");
    let s = status(&service_policy, &[&broken]);
    assert!(s.targets[0].overridden_by.is_empty());
}
