//! `HTTPRoute`s in local mode, through the real proxy on loopback: matches, weighted
//! backends, per-rule retries and timeouts, header changes, and the answers for a request no
//! rule takes (404) and a rule with no backend (500), each checked against the upstreams' own
//! counts.

mod support;

use std::net::SocketAddr;

use breakwater_fault::{FaultServer, Faults};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn upstream(name: &str, fail_first: u64) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), fail_first, ..Default::default() })
        .await
        .expect("fault server")
}

fn route(name: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: shop}}\nspec:\n\
         \x20 parentRefs: [{{group: \"\", kind: Service, name: payments}}]\n  rules:\n{rules}"
    )
}

async fn sidecar(services: &[(&str, SocketAddr)], docs: &str) -> breakwater_sidecar::Sidecar {
    let entries: String = services.iter().map(|(n, a)| service(n, &[*a])).collect();
    start(&(sidecar_yaml(&entries, None, "") + docs)).await
}

async fn refused(yaml: &str) -> String {
    match breakwater_sidecar::Sidecar::start(yaml, None).await {
        Ok(_) => panic!("a file that should be refused started:\n{yaml}"),
        Err(e) => format!("{e:#}"),
    }
}

fn served_by(got: &Got) -> String {
    got.header("x-served-by").unwrap_or("-").to_owned()
}

#[tokio::test]
async fn a_weighted_rule_splits_calls_between_two_services() {
    let (v1, v2) = (upstream("v1", 0).await, upstream("v2", 0).await);
    let rules = "  - backendRefs:\n\
                 \x20   - {name: payments-v1, port: 80, weight: 90}\n\
                 \x20   - {name: payments-v2, port: 80, weight: 10}\n";
    let sc = sidecar(
        &[("payments", v1.addr()), ("payments-v1", v1.addr()), ("payments-v2", v2.addr())],
        &route("split", rules),
    )
    .await;
    const CALLS: u64 = 1000;
    for _ in 0..CALLS {
        assert_eq!(get(sc.outbound, "http://payments/charge").await.status, 200);
    }
    let (to_v1, to_v2) = (v1.stats().requests(), v2.stats().requests());
    assert_eq!(to_v1 + to_v2, CALLS);
    // 10 % of 1000 is 100, with a standard deviation of about 9.5: 3.5 of them either way.
    assert!((67..=133).contains(&to_v2), "v2 took {to_v2} of {CALLS} calls, expected about 100");
}

#[tokio::test]
async fn matches_pick_the_rule_and_each_rule_runs_its_own_retry_and_timeout() {
    let orders = upstream("orders", 0).await;
    let canary = upstream("canary", 0).await;
    let rules = "  - name: get-order\n\
                 \x20   matches: [{path: {type: PathPrefix, value: /orders}, method: GET}]\n\
                 \x20   retry: {attempts: 2, codes: [503], backoff: 5ms}\n\
                 \x20   backendRefs: [{name: payments, port: 80}]\n\
                 \x20 - name: post-order\n\
                 \x20   matches: [{path: {type: Exact, value: /orders}, method: POST}]\n\
                 \x20   backendRefs: [{name: payments, port: 80}]\n\
                 \x20 - name: slow\n\
                 \x20   matches: [{path: {value: /reports}}]\n\
                 \x20   timeouts: {request: 150ms}\n\
                 \x20   backendRefs: [{name: payments, port: 80}]\n\
                 \x20 - name: canary\n\
                 \x20   matches: [{headers: [{name: X-Canary, value: \"yes\"}], queryParams: [{type: RegularExpression, name: v, value: \"[0-9]+\"}]}]\n\
                 \x20   filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-canary]}}]\n\
                 \x20   backendRefs: [{name: payments-canary, port: 80}]\n\
                 \x20 - name: nowhere\n\
                 \x20   matches: [{path: {value: /nowhere}}]\n\
                 \x20   backendRefs: [{name: payments, port: 80, weight: 0}]\n";
    let sc =
        sidecar(&[("payments", orders.addr()), ("payments-canary", canary.addr())], &route("orders", rules))
            .await;

    // GET /orders/7 is retried: 503 twice, then 200, on the upstream's own count.
    let got = get(sc.outbound, "http://payments/orders/7?status=503").await;
    assert_eq!(got.status, 503, "every attempt was told to fail");
    assert_eq!(orders.stats().requests(), 3, "one try and the rule's two retries");

    // POST /orders is the other rule: no retry.
    let post = Request::post("http://payments/orders?status=503").body(Full::new(Bytes::from_static(b"{}")));
    let got = http1(sc.outbound, post.expect("a request")).await;
    assert_eq!(got.status, 503);
    assert_eq!(orders.stats().requests(), 4, "not retried");

    // /reports is cut at the rule's deadline.
    let got = get(sc.outbound, "http://payments/reports/q3?delay=3s").await;
    assert_eq!((got.status, got.header("breakwater-error")), (504, Some("timeout")));

    // The canary rule needs both the header and a numeric `v`; it rewrites the headers.
    let tagged = |uri: &str| Request::get(uri).header("x-canary", "yes").body(Full::new(Bytes::new()));
    let got = http1(sc.outbound, tagged("http://payments/anything?v=12").expect("a request")).await;
    assert_eq!(served_by(&got), "canary");
    let seen = canary.stats().seen().await;
    assert_eq!(seen[0].headers.get("x-route").map(String::as_str), Some("canary"));
    assert!(!seen[0].headers.contains_key("x-canary"), "removed on the way");
    let got = http1(sc.outbound, tagged("http://payments/anything?v=beta").expect("a request")).await;
    assert_eq!((got.status, got.header("breakwater-error")), (404, Some("no-route")), "v is not a number");

    // Prefixes match whole segments; a request no rule takes is answered 404.
    let got = get(sc.outbound, "http://payments/ordersx").await;
    assert_eq!((got.status, got.header("breakwater-error")), (404, Some("no-route")));
    // Every weight 0: the rule has nowhere to send it.
    let got = get(sc.outbound, "http://payments/nowhere").await;
    assert_eq!((got.status, got.header("breakwater-error")), (500, Some("no-backend")));
    assert_eq!(canary.stats().requests(), 1);
    assert_eq!(orders.stats().requests(), 5, "only the /reports call reached it since");
}

#[tokio::test]
async fn a_file_with_a_route_the_sidecar_cannot_enforce_is_refused_naming_the_field() {
    let up = upstream("up", 0).await;
    let rules = "  - matches: [{path: {type: RegularExpression, value: \"/(?!admin)\"}}]\n\
                 \x20   backendRefs: [{name: payments, port: 80}]\n";
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "") + &route("bad", rules);
    let err = refused(&yaml).await;
    let text = err;
    assert!(
        text.contains("HTTPRoute/bad")
            && text.contains("spec.rules[0].matches[0].path.value")
            && text.contains("look-around"),
        "{text}"
    );
    let orphan = route("orphan", "  - backendRefs: [{name: payments, port: 80}]\n")
        .replace("name: payments}]", "name: ledger}]");
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "") + &orphan;
    let err = refused(&yaml).await;
    assert!(
        format!("{err:#}").contains("spec.parentRefs[0]: no Service ledger.shop in this file"),
        "{err:#}"
    );
}

fn on_route(name: &str, rule: Option<&str>, spec: &str) -> String {
    let section = rule.map_or(String::new(), |r| format!(", sectionName: {r}"));
    format!(
        "---\napiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\n\
         metadata: {{name: {name}, namespace: shop}}\nspec:\n\
         \x20 targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders{section}}}\n{spec}"
    )
}

#[tokio::test]
async fn a_policy_on_a_rule_beats_one_on_the_route_which_beats_the_services() {
    let up = upstream("orders", 0).await;
    let rules = "  - name: get-order\n\
                 \x20   matches: [{path: {type: PathPrefix, value: /orders}, method: GET}]\n\
                 \x20   backendRefs: [{name: payments, port: 80}]\n\
                 \x20 - name: export\n\
                 \x20   matches: [{path: {value: /reports/export}}]\n\
                 \x20   backendRefs: [{name: payments, port: 80}]\n\
                 \x20 - name: rest\n\
                 \x20   backendRefs: [{name: payments, port: 80}]\n";
    let docs = [
        route("orders", rules),
        // The Service's: a 150 ms deadline, no retries. Every rule has a more specific policy.
        policy("service", "payments", "  timeouts: {request: 150ms}\n"),
        // The route's: no deadline, one call at a time per rule, no retries.
        on_route("route", None, "  bulkhead: {outbound: {maxConcurrentRequests: 1}}\n"),
        // The `get-order` rule's: three tries on 503.
        on_route(
            "get-order",
            Some("get-order"),
            "  retries: {attempts: 3, retryOn: {httpStatusCodes: [503]}, backoff: {base: 5ms, max: 10ms}}\n",
        ),
    ]
    .concat();
    let sc = sidecar(&[("payments", up.addr())], &docs).await;

    let got = get(sc.outbound, "http://payments/orders/7?status=503").await;
    assert_eq!(got.status, 503);
    assert_eq!(up.stats().requests(), 3, "the rule's policy: three tries");
    let post = Request::post("http://payments/orders?status=503").body(Full::new(Bytes::from_static(b"{}")));
    assert_eq!(http1(sc.outbound, post.expect("a request")).await.status, 503);
    assert_eq!(up.stats().requests(), 4, "the `rest` rule runs the route's policy: no retry");

    // The route's policy, not the Service's: no 150 ms deadline, and one export at a time.
    let (a, b) = tokio::join!(
        get(sc.outbound, "http://payments/reports/export?delay=400ms"),
        get(sc.outbound, "http://payments/reports/export?delay=400ms"),
    );
    let mut answers = [
        (a.status, a.header("breakwater-error").map(str::to_owned)),
        (b.status, b.header("breakwater-error").map(str::to_owned)),
    ];
    answers.sort();
    assert_eq!(answers, [(200, None), (503, Some("bulkhead-full".to_owned()))]);

    // The admin view names the policy each rule runs.
    let config = admin(&sc, "/config").await.text();
    for name in ["shop/get-order", "shop/route"] {
        assert!(config.contains(name), "{name} not in {config}");
    }
}

#[tokio::test]
async fn a_policy_on_a_route_or_rule_the_file_lacks_is_refused() {
    let up = upstream("up", 0).await;
    let rules = "  - name: read\n    backendRefs: [{name: payments, port: 80}]\n";
    let base = sidecar_yaml(&service("payments", &[up.addr()]), None, "") + &route("orders", rules);
    let typo = base.clone() + &on_route("typo", Some("raed"), "  timeouts: {request: 1s}\n");
    let text = refused(&typo).await;
    assert!(
        text.contains("CommunicationPolicy shop/typo: spec.targetRef.sectionName: HTTPRoute orders has no rule named raed"),
        "{text}"
    );
    let elsewhere = base.replace("name: orders,", "name: other,")
        + &on_route("lost", None, "  timeouts: {request: 1s}\n");
    let text = refused(&elsewhere).await;
    assert!(
        text.contains("spec.targetRef.name: no HTTPRoute orders in namespace shop in this file"),
        "{text}"
    );
}
