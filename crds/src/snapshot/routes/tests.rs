use serde_json::json;

use super::*;
use crate::gateway;

fn route(name: &str, created: Option<i64>, spec: serde_json::Value) -> HTTPRoute {
    let mut r: HTTPRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }))
    .expect("a route");
    r.metadata.creation_timestamp = created.map(|s| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).expect("a time"),
        )
    });
    gateway::validate(&r).expect("valid");
    r
}

fn parent() -> serde_json::Value {
    json!([{"group": "", "kind": "Service", "name": "orders", "port": 80}])
}

fn rules_in_order(table: &HttpRoutes) -> Vec<String> {
    table
        .matches
        .iter()
        .map(|m| {
            let r = &table.rules[m.rule as usize];
            format!("{}#{}", r.route, r.rule)
        })
        .collect()
}

#[test]
fn matches_follow_the_gateway_api_precedence_across_routes() {
    let older = route(
        "older",
        Some(1),
        json!({"parentRefs": parent(), "rules": [
            {"name": "catch-all", "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "prefix-short", "matches": [{"path": {"type": "PathPrefix", "value": "/orders/"}}],
             "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "same-as-newer", "matches": [{"path": {"value": "/reports"}, "method": "GET"}],
             "backendRefs": [{"name": "orders", "port": 80}]},
        ]}),
    );
    let newer = route(
        "newer",
        Some(2),
        json!({"parentRefs": parent(), "rules": [
            {"name": "exact", "matches": [{"path": {"type": "Exact", "value": "/orders"}}],
             "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "prefix-long", "matches": [{"path": {"value": "/orders/export"}}],
             "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "headers", "matches": [{"path": {"value": "/reports"}, "method": "GET",
               "headers": [{"name": "X-Canary", "value": "1"}]}],
             "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "same-as-older", "matches": [{"path": {"value": "/reports"}, "method": "GET"}],
             "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "regex", "matches": [{"path": {"type": "RegularExpression", "value": "/orders/[0-9]+"}}],
             "backendRefs": [{"name": "orders", "port": 80}]},
        ]}),
    );
    let table = compile(&[&newer, &older], None, |_, _| None, |_, _, _, _| None);
    assert_eq!(
        rules_in_order(&table),
        [
            "shop/newer#exact",
            "shop/newer#regex",
            "shop/newer#prefix-long",
            // `/reports` is longer than `/orders`; then a header match beats none.
            "shop/newer#headers",
            // Equal matches: the older route wins.
            "shop/older#same-as-newer",
            "shop/newer#same-as-older",
            "shop/older#prefix-short",
            "shop/older#catch-all",
        ]
    );
    let prefix = &table.matches[6];
    assert_eq!(prefix.path, PathMatch::PathPrefix("/orders".into()), "a trailing slash is dropped");
    assert_eq!(table.matches[3].headers[0].name, "x-canary", "header names are lower-cased");
    assert_eq!(table.matches[7].path, PathMatch::PathPrefix(String::new()), "no match is every path");
}

#[test]
fn producer_routes_govern_everyone_and_consumer_routes_their_own_namespace() {
    let producer = route("producer", None, json!({"parentRefs": parent()}));
    let mut consumer = route(
        "consumer",
        None,
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "orders", "namespace": "shop"}]}),
    );
    consumer.metadata.namespace = Some("web".into());
    let other_port = route(
        "other",
        None,
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 81}]}),
    );
    let gateway = route("gw", None, json!({"parentRefs": [{"name": "orders"}]}));
    let all = [&producer, &consumer, &other_port, &gateway];
    let names = |found: Vec<&HTTPRoute>| found.iter().map(|r| r.full_name()).collect::<Vec<_>>();
    assert_eq!(names(attached(all, "shop", "orders", Some(80), Some("billing"))), ["shop/producer"]);
    assert_eq!(names(attached(all, "shop", "orders", Some(80), Some("web"))), ["web/consumer"]);
    assert_eq!(names(attached(all, "shop", "orders", Some(81), None)), ["shop/other"]);
}

#[test]
fn a_rule_lays_its_timeouts_and_retry_over_the_policy() {
    let r = route(
        "r",
        None,
        json!({"parentRefs": parent(), "rules": [
            {"name": "get", "timeouts": {"request": "300ms", "backendRequest": "100ms"},
             "retry": {"attempts": 2, "codes": [503], "backoff": "50ms"},
             "backendRefs": [{"name": "orders", "port": 80, "weight": 0}, {"name": "gone", "port": 80}]},
            {"name": "post", "timeouts": {"request": "0s"}, "retry": {"attempts": 0},
             "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "plain", "backendRefs": [{"name": "orders", "port": 80}]},
        ]}),
    );
    let mut base = EffectivePolicy::plain();
    base.timeouts.request = Some(Duration::from_secs(5));
    base.retries = Some(EffectiveRetries::plain());
    let policy = AppliedPolicy { name: "shop/orders".into(), generation: Some(3), effective: base };
    let table = compile(
        &[&r],
        Some(&policy),
        |_, _| None,
        |_, _, name, _| (name == "gone").then(|| "no Service shop/gone".to_owned()),
    );
    let get = table.rules[0].policy.as_ref().expect("a policy").effective.clone();
    assert_eq!(get.timeouts.request, Some(Duration::from_millis(300)));
    assert_eq!(get.timeouts.per_try, Some(Duration::from_millis(100)));
    let retries = get.retries.expect("retries");
    assert_eq!((retries.attempts, retries.http_status_codes.as_slice()), (3, &[503][..]));
    assert_eq!(retries.backoff_base, Duration::from_millis(50));
    assert!(!retries.is_retryable_method("POST"), "a route's retry does not make POST safe");
    assert_eq!(table.rules[0].backends[0].weight, 0);
    assert_eq!(table.rules[0].backends[1].invalid.as_deref(), Some("no Service shop/gone"));

    let post = &table.rules[1].policy.as_ref().expect("a policy").effective;
    assert_eq!(post.timeouts.request, None, "0s removes the policy's deadline");
    assert!(post.retries.is_none());
    assert_eq!(table.rules[2].policy.as_ref(), Some(&policy), "a plain rule runs the port's policy");

    let alone = compile(&[&r], None, |_, _| None, |_, _, _, _| None);
    let named = alone.rules[0].policy.as_ref().expect("the route's own settings");
    assert_eq!(named.name, "HTTPRoute shop/r");
    assert!(alone.rules[2].policy.is_none());
}

#[test]
fn a_policy_on_a_rule_or_route_replaces_the_ports_and_is_acknowledged() {
    let r = route(
        "r",
        None,
        json!({"parentRefs": parent(), "rules": [
            {"name": "get", "timeouts": {"request": "300ms"}, "backendRefs": [{"name": "orders", "port": 80}]},
            {"name": "post", "backendRefs": [{"name": "orders", "port": 80}]},
            {"backendRefs": [{"name": "orders", "port": 80}]},
        ]}),
    );
    let applied = |name: &str, seconds: u64| AppliedPolicy {
        name: name.into(),
        generation: Some(1),
        effective: EffectivePolicy {
            retries: Some(EffectiveRetries::plain()),
            timeouts: crate::EffectiveTimeouts {
                request: Some(Duration::from_secs(seconds)),
                ..EffectivePolicy::plain().timeouts
            },
            ..EffectivePolicy::plain()
        },
    };
    let port = applied("shop/service", 5);
    let table = compile(
        &[&r],
        Some(&port),
        |route, rule| match rule {
            Some("get") => Some(applied("shop/get", 1)),
            _ if route.full_name() == "shop/r" => Some(applied("shop/route", 2)),
            _ => None,
        },
        |_, _, _, _| None,
    );
    let get = table.rules[0].policy.as_ref().expect("a policy");
    assert_eq!(get.name, "shop/get", "the rule's policy beats the port's");
    assert_eq!(
        get.effective.timeouts.request,
        Some(Duration::from_millis(300)),
        "the rule's own timeout on top"
    );
    assert!(get.effective.retries.is_some(), "the rest is the rule policy's");
    assert_eq!(table.rules[1].policy.as_ref().map(|p| p.name.as_str()), Some("shop/route"));
    assert_eq!(table.rules[2].policy.as_ref().map(|p| p.name.as_str()), Some("shop/route"), "unnamed rule");

    let mut snapshot = crate::snapshot::Snapshot::default();
    let only_route = compile(&[&r], None, |_, _| None, |_, _, _, _| None);
    snapshot.services.push(std::sync::Arc::new(crate::snapshot::ServiceSnapshot {
        ports: vec![
            crate::snapshot::PortSnapshot { routes: Some(table), ..Default::default() },
            crate::snapshot::PortSnapshot { routes: Some(only_route), ..Default::default() },
        ],
        ..Default::default()
    }));
    let acknowledged: Vec<String> = snapshot.policies().into_keys().collect();
    // `HTTPRoute shop/r` (the route's own settings alone) is no policy to acknowledge.
    assert_eq!(acknowledged, ["shop/get", "shop/route"]);
}

#[test]
fn what_the_sidecar_cannot_enforce_is_refused_with_its_field() {
    let mut r = route("r", None, json!({"parentRefs": parent()}));
    r.spec = serde_json::from_value(json!({"parentRefs": parent(), "rules": [{
        "matches": [{"path": {"type": "RegularExpression", "value": "/(?=lookahead)"}, "method": "FETCH"}],
        "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/"}}}],
        "backendRefs": [{"name": "x"}, {"kind": "Pod", "name": "y", "port": 80, "weight": -1}],
        "timeouts": {"request": "1s", "backendRequest": "2s"},
        "retry": {"codes": [200], "attempts": 11},
    }]}))
    .expect("a spec");
    let errors = gateway::validate(&r).expect_err("invalid");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.rules[0].matches[0].path.value",
            "spec.rules[0].matches[0].method",
            "spec.rules[0].filters[0].type",
            "spec.rules[0].backendRefs[0].port",
            "spec.rules[0].backendRefs[1].kind",
            "spec.rules[0].backendRefs[1].weight",
            "spec.rules[0].timeouts.backendRequest",
            "spec.rules[0].retry.codes[0]",
            "spec.rules[0].retry.attempts",
        ]
    );
    assert!(errors.0[0].message.contains("look-around"), "{}", errors.0[0]);
    assert!(errors.0[2].message.contains("\"URLRewrite\" is not supported"), "{}", errors.0[2]);
}

#[test]
fn routes_round_trip_through_the_wire_format() {
    let r = route(
        "r",
        None,
        json!({"parentRefs": parent(), "rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"},
            "queryParams": [{"type": "RegularExpression", "name": "v", "value": "[0-9]"}]}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}],
            "backendRefs": [{"name": "orders", "port": 80}]}]}),
    );
    let table = compile(&[&r], None, |_, _| None, |_, _, _, _| None);
    let text = serde_json::to_value(&table).expect("serializes");
    assert_eq!(text["matches"][0]["path"], json!({"type": "Exact", "value": "/a"}));
    assert_eq!(serde_json::from_value::<HttpRoutes>(text).expect("reads back"), table);
}
