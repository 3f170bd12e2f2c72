use breakwater_crds::snapshot::routes::RouteRule;
use serde_json::json;

use super::*;

/// A table whose backends have no target: each one's "reason" names it, so a test can tell
/// which was chosen without starting anything.
fn table(matches: serde_json::Value, backends: &[(&str, u32)]) -> RouteTable<()> {
    let matches: Vec<RouteMatch> = serde_json::from_value(matches).expect("matches");
    let rules = (0..=matches.iter().map(|m| m.rule).max().unwrap_or(0))
        .map(|i| RouteRule {
            route: "shop/r".into(),
            rule: i.to_string(),
            backends: backends
                .iter()
                .map(|(name, weight)| RouteBackend {
                    name: (*name).into(),
                    namespace: "shop".into(),
                    port: 80,
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    RouteTable::build(&HttpRoutes { rules, matches }, |_, b| Err(b.name.clone())).expect("compiles")
}

fn routed(t: &RouteTable<()>, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<(String, String)> {
    let mut req = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    match t.route(&req.body(()).expect("a request")) {
        Routed::Backend(rule, b) => {
            Some((rule.name.clone(), b.target.as_ref().err().cloned().unwrap_or_default()))
        }
        Routed::NoBackend(rule) => Some((rule.name.clone(), "none".into())),
        Routed::NoMatch => None,
    }
}

fn rule_of(t: &RouteTable<()>, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
    routed(t, method, uri, headers).map(|(r, _)| r)
}

#[test]
fn prefixes_match_whole_segments_and_the_empty_prefix_matches_everything() {
    let t = table(
        json!([
            {"rule": 0, "path": {"type": "PathPrefix", "value": "/orders"}},
            {"rule": 1, "path": {"type": "PathPrefix", "value": ""}},
        ]),
        &[("a", 1)],
    );
    for (uri, rule) in [
        ("http://x/orders", "0"),
        ("http://x/orders/", "0"),
        ("http://x/orders/7?q=1", "0"),
        ("http://x/ordersx", "1"),
        ("http://x/", "1"),
    ] {
        assert_eq!(rule_of(&t, "GET", uri, &[]).as_deref(), Some(rule), "{uri}");
    }
}

#[test]
fn exact_regex_method_header_and_query_conditions_all_must_hold() {
    let t = table(
        json!([
            {"rule": 0, "path": {"type": "Exact", "value": "/a"}, "method": "POST"},
            {"rule": 1, "path": {"type": "RegularExpression", "value": "/items/[0-9]+"},
             "headers": [{"type": "Exact", "name": "x-tenant", "value": "blue"}]},
            {"rule": 2, "path": {"type": "PathPrefix", "value": "/q"},
             "queryParams": [{"type": "Exact", "name": "mode", "value": "fast"}]},
        ]),
        &[("a", 1)],
    );
    assert_eq!(rule_of(&t, "POST", "http://x/a", &[]).as_deref(), Some("0"));
    assert_eq!(rule_of(&t, "GET", "http://x/a", &[]), None, "method");
    assert_eq!(rule_of(&t, "POST", "http://x/a/", &[]), None, "exact is exact");
    assert_eq!(rule_of(&t, "GET", "http://x/items/42", &[("X-Tenant", "blue")]).as_deref(), Some("1"));
    assert_eq!(rule_of(&t, "GET", "http://x/items/42x", &[("x-tenant", "blue")]), None, "anchored");
    assert_eq!(rule_of(&t, "GET", "http://x/items/42", &[("x-tenant", "green")]), None);
    assert_eq!(
        rule_of(&t, "GET", "http://x/items/42", &[("x-tenant", "green"), ("x-tenant", "blue")]).as_deref(),
        Some("1"),
        "any of a repeated header's values"
    );
    assert_eq!(rule_of(&t, "GET", "http://x/q?a=1&mode=fast", &[]).as_deref(), Some("2"));
    assert_eq!(rule_of(&t, "GET", "http://x/q?Mode=fast", &[]), None, "query names are case-sensitive");
    assert_eq!(rule_of(&t, "GET", "http://x/q?mode=slow&mode=fast", &[]), None, "the first value counts");
}

#[test]
fn weights_share_calls_and_a_zero_weight_backend_gets_none() {
    let t = table(
        json!([{"rule": 0, "path": {"type": "PathPrefix", "value": ""}}]),
        &[("a", 3), ("b", 1), ("c", 0)],
    );
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..4000 {
        let (_, backend) = routed(&t, "GET", "http://x/", &[]).expect("routed");
        *counts.entry(backend).or_insert(0u32) += 1;
    }
    assert_eq!(counts.get("c"), None);
    let b = counts.get("b").copied().unwrap_or_default();
    // 1000 expected, standard deviation about 27.
    assert!((900..=1100).contains(&b), "{counts:?}");

    let none = table(json!([{"rule": 0, "path": {"type": "PathPrefix", "value": ""}}]), &[("a", 0)]);
    assert_eq!(routed(&none, "GET", "http://x/", &[]).map(|(_, b)| b).as_deref(), Some("none"));
}

#[test]
fn header_changes_set_then_add_then_remove() {
    let ops = HeaderOps::of(&HeaderModifier {
        set: vec![breakwater_crds::gateway::HeaderValue { name: "x-a".into(), value: "1".into() }],
        add: vec![breakwater_crds::gateway::HeaderValue { name: "x-b".into(), value: "2".into() }],
        remove: vec!["x-c".into()],
    })
    .expect("valid");
    let mut h = HeaderMap::new();
    h.insert("x-a", HeaderValue::from_static("0"));
    h.insert("x-b", HeaderValue::from_static("1"));
    h.insert("x-c", HeaderValue::from_static("gone"));
    ops.apply(&mut h);
    assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["1"]);
    assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert!(!h.contains_key("x-c"));
}

#[test]
fn a_snapshot_whose_regex_this_build_refuses_is_reported() {
    let matches: Vec<RouteMatch> = serde_json::from_value(
        json!([{"rule": 0, "path": {"type": "RegularExpression", "value": "(?<=a)b"}}]),
    )
    .expect("matches");
    let routes = HttpRoutes { rules: vec![RouteRule::default()], matches };
    let mut snapshot = Snapshot::default();
    snapshot.services.push(std::sync::Arc::new(breakwater_crds::snapshot::ServiceSnapshot {
        name: "payments".into(),
        namespace: "shop".into(),
        ports: vec![breakwater_crds::snapshot::PortSnapshot {
            port: Some(80),
            routes: Some(routes),
            ..Default::default()
        }],
        ..Default::default()
    }));
    let problems = check(&snapshot);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("Service payments.shop port 80: HTTP routes: regular expression"),
        "{problems:?}"
    );
}
