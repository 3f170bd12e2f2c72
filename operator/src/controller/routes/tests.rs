//! Route status from a World of Services and routes.

use std::sync::Arc;

use breakwater_crds::gateway::HTTPRoute;
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use serde_json::json;

use crate::compile::{
    World,
    routes::tests::{route, split, world},
};

fn conditions(route: &Arc<HTTPRoute>, w: &World) -> Vec<(String, String, String, String)> {
    let now = Time(Timestamp::from_second(1_800_000_000).expect("a time"));
    let status = super::desired(route, w, &[], &now);
    status
        .iter()
        .flat_map(|p| {
            p.conditions.iter().map(move |c: &Condition| {
                (p.parent_ref.name.clone(), c.type_.clone(), c.status.clone(), c.reason.clone())
            })
        })
        .collect()
}

fn row(parent: &str, type_: &str, status: &str, reason: &str) -> (String, String, String, String) {
    (parent.into(), type_.into(), status.into(), reason.into())
}

#[test]
fn status_names_what_is_missing_unsupported_or_shadowed() {
    let mut spec = split();
    spec["parentRefs"] = json!([
        {"group": "", "kind": "Service", "name": "orders", "port": 80},
        {"group": "", "kind": "Service", "name": "gone"},
        {"name": "some-gateway"},
    ]);
    let older = route(
        "shop",
        "older",
        1,
        json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "orders"}],
            "rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}], "backendRefs": [{"name": "orders-v1", "port": 80}]}],
        }),
    );
    let newer = route(
        "shop",
        "newer",
        2,
        json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "orders"}],
            "rules": [{"name": "same", "matches": [{"path": {"type": "Exact", "value": "/a"}}], "backendRefs": [{"name": "orders-v2", "port": 80}]}],
        }),
    );
    let unsupported = route(
        "shop",
        "rewrite",
        3,
        json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "orders"}],
            "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}], "backendRefs": [{"name": "orders-v1", "port": 80}]}],
        }),
    );
    let r = route("shop", "split", 4, spec);
    let w = world(&[r.clone(), older.clone(), newer.clone(), unsupported.clone()]);
    assert_eq!(
        conditions(&r, &w),
        [
            row("orders", "Accepted", "True", "Accepted"),
            row("orders", "ResolvedRefs", "False", "BackendNotFound"),
            row("gone", "Accepted", "False", "NoMatchingParent"),
            row("gone", "ResolvedRefs", "False", "BackendNotFound"),
        ],
        "a Gateway parent is someone else's"
    );
    assert_eq!(
        conditions(&newer, &w),
        [
            row("orders", "Accepted", "True", "Accepted"),
            row("orders", "ResolvedRefs", "True", "ResolvedRefs"),
            row("orders", "breakwater.dev/Shadowed", "True", "MatchShadowed"),
        ]
    );
    assert_eq!(conditions(&older, &w).len(), 2, "the older route wins and is not shadowed");
    assert_eq!(conditions(&unsupported, &w)[0], row("orders", "Accepted", "False", "UnsupportedValue"));
    let now = Time(Timestamp::from_second(1_800_000_000).expect("a time"));
    let message = &super::desired(&newer, &w, &[], &now)[0].conditions[2].message;
    assert_eq!(message, "rule same has a match of rule 0 of older route shop/older, which takes its calls");
}
