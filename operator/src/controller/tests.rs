//! The reconciler's decisions against the mock API server ([`crate::testing`]): what it sends,
//! exactly, and when it sends nothing.

use futures_util::FutureExt;
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use super::*;
use crate::testing::{self, ApiServer};

const RESYNC: Duration = Duration::from_secs(300);
const STATUS: &str = "/apis/breakwater.dev/v1alpha1/namespaces/shop/communicationpolicies/payments/status?";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events?";

fn policy(status: Option<&CommunicationPolicyStatus>) -> Value {
    json!({
        "apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
        "metadata": {"name": "payments", "namespace": "shop", "generation": 3, "uid": "u-1"},
        "spec": {"targetRef": {"name": "payments"}, "timeouts": {"request": "1s"}},
        "status": status,
    })
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "payments", "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}})
}

/// A context over the mock API server; `leader` says whether this replica holds the lease.
fn context(objects: &[Value], leader: bool) -> (Arc<Context>, ApiServer, watch::Sender<bool>) {
    let (client, server) = testing::client();
    let (leader_tx, leader_rx) = watch::channel(leader);
    let ctx = Context {
        client: client.clone(),
        index: Index::of(objects, &[service()]),
        leader: leader_rx,
        recorder: recorder(client, "replica-1"),
        metrics: Arc::new(Metrics::new()),
        deliveries: None,
        resync: RESYNC,
    };
    (Arc::new(ctx), server, leader_tx)
}

fn object(policy: Value) -> Arc<Lenient<CommunicationPolicy>> {
    Arc::new(serde_json::from_value(policy).expect("a policy"))
}

#[tokio::test]
async fn the_leader_applies_a_new_status_once_and_records_each_condition_it_set() {
    let (ctx, mut server, _leader) = context(&[policy(None)], true);
    let (result, written, events) = {
        let api = async {
            let written = server.expect(Method::PATCH, STATUS, StatusCode::OK, policy(None)).await;
            let mut events = Vec::new();
            for _ in 0..3 {
                events.push(server.expect(Method::POST, EVENTS, StatusCode::CREATED, json!({})).await.body);
            }
            (written, events)
        };
        let (result, (written, events)) = tokio::join!(reconcile(object(policy(None)), ctx.clone()), api);
        (result, written, events)
    };
    assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));

    // One server-side apply of the whole status, forced, under the one field manager.
    assert!(written.uri.contains("fieldManager=breakwater-operator"), "{}", written.uri);
    assert!(written.uri.contains("force=true"), "{}", written.uri);
    let status = &written.body["status"];
    assert_eq!(written.body["kind"], "CommunicationPolicy");
    assert_eq!(status["observedGeneration"], 3);
    let conditions: Vec<(&str, &str, &str)> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        conditions,
        [("Accepted", "True", "Valid"), ("Ready", "True", "Resolved"), ("Conflicted", "False", "NoConflict")]
    );
    assert_eq!(status["targets"][0]["name"], "payments");

    // An Event per condition, about this policy, from this controller.
    let reasons: Vec<&str> = events.iter().map(|e| e["reason"].as_str().unwrap_or("")).collect();
    assert_eq!(reasons, ["Valid", "Resolved", "NoConflict"]);
    for e in &events {
        assert_eq!(e["regarding"]["name"], "payments");
        assert_eq!(e["reportingController"], FIELD_MANAGER);
        assert_eq!(e["reportingInstance"], "replica-1");
        assert_eq!(e["type"], "Normal");
    }
    server.nothing_more();
}

#[tokio::test]
async fn a_replica_without_the_lease_or_with_nothing_new_writes_nothing() {
    // Not the lease holder: computes, writes nothing.
    let (ctx, mut server, leader) = context(&[policy(None)], false);
    let action = testing::within(reconcile(object(policy(None)), ctx.clone())).await.expect("reconciled");
    assert_eq!(action, Action::requeue(RESYNC));
    server.nothing_more();

    // The lease holder, with the status already what it would write: nothing either (a
    // restarted operator writes nothing).
    leader.send_replace(true);
    let stored: CommunicationPolicy = serde_json::from_value(policy(None)).expect("a policy");
    let svc: Service = serde_json::from_value(service()).expect("a service");
    let now = Time(Timestamp::now());
    let scope = status::Scope { peers: &[&stored], services: &[&svc], routes: &[] };
    let current = status::desired(&stored, &scope, None, None, &now);
    let (ctx, mut server, _leader) = context(&[policy(Some(&current))], true);
    let action = testing::within(reconcile(object(policy(Some(&current))), ctx)).await.expect("reconciled");
    assert_eq!(action, Action::requeue(RESYNC));
    server.nothing_more();
}

#[tokio::test]
async fn a_refused_status_write_is_an_error_retried_in_five_seconds() {
    let (ctx, mut server, _leader) = context(&[policy(None)], true);
    let refused = testing::status(409, "Conflict", "the object has been modified");
    let (result, _) = tokio::join!(
        reconcile(object(policy(None)), ctx.clone()),
        server.expect(Method::PATCH, STATUS, StatusCode::CONFLICT, refused)
    );
    let error = result.expect_err("the write failed");
    assert!(matches!(&error, Error::StatusWrite { policy, .. } if policy == "shop/payments"), "{error:?}");
    assert_eq!(error_policy(object(policy(None)), &error, ctx), Action::requeue(Duration::from_secs(5)));
    // No Event for a status that was not written.
    server.nothing_more();
}

#[tokio::test]
async fn a_policy_that_cannot_be_read_gets_an_invalid_status_and_a_warning() {
    let mut unreadable = policy(None);
    unreadable["spec"]["timeouts"]["request"] = json!(17);
    let (ctx, mut server, _leader) = context(std::slice::from_ref(&unreadable), true);
    let object = object(unreadable.clone());
    assert!(object.get().is_none(), "the test's policy must fail to parse");
    let api = async {
        let written = server.expect(Method::PATCH, STATUS, StatusCode::OK, unreadable.clone()).await;
        let event = server.expect(Method::POST, EVENTS, StatusCode::CREATED, json!({})).await;
        (written, event)
    };
    let (result, (written, event)) = tokio::join!(reconcile(object, ctx), api);
    assert!(result.is_ok());
    let accepted = &written.body["status"]["conditions"][0];
    assert_eq!(
        (&accepted["type"], &accepted["status"], &accepted["reason"]),
        (&json!("Accepted"), &json!("False"), &json!("Invalid"))
    );
    assert!(accepted["message"].as_str().is_some_and(|m| m.contains("spec.timeouts.request")), "{accepted}");
    assert_eq!((&event.body["type"], &event.body["reason"]), (&json!("Warning"), &json!("Invalid")));
    server.nothing_more();
}

#[tokio::test]
async fn taking_the_lease_asks_for_every_policy_once_per_acquisition() {
    let (tx, rx) = watch::channel(false);
    let mut acquired = std::pin::pin!(became_leader(rx));
    assert!(acquired.next().now_or_never().is_none(), "not the leader: nothing");
    tx.send_replace(true);
    assert_eq!(acquired.next().await, Some(()));
    tx.send_replace(true);
    assert!(acquired.next().now_or_never().is_none(), "still the leader: nothing new");
    tx.send_replace(false);
    assert!(acquired.next().now_or_never().is_none(), "lost: nothing");
    tx.send_replace(true);
    assert_eq!(acquired.next().await, Some(()), "taken again");
    drop(tx);
    assert_eq!(acquired.next().await, None, "the election stopped");
}

#[tokio::test]
async fn the_controller_hears_of_every_policy_then_each_change_and_of_all_after_falling_behind() {
    let mut other = policy(None);
    other["metadata"]["name"] = json!("orders");
    let index = Index::of(&[policy(None), other], &[service()]);
    let mut changes = std::pin::pin!(changed_policies(index.clone()));
    let mut next = async || testing::within(changes.next()).await.and_then(|p| p.metadata.name.clone());
    let mut first = vec![next().await, next().await];
    first.sort();
    assert_eq!(
        first,
        [Some("orders".into()), Some("payments".into())],
        "every policy once the index is ready"
    );

    index.announce(PolicyChange::One(ObjKey::new("shop", "payments")));
    assert_eq!(next().await.as_deref(), Some("payments"));
    // A deleted policy has no status to write: skipped.
    index.announce(PolicyChange::One(ObjKey::new("shop", "gone")));
    index.announce(PolicyChange::One(ObjKey::new("shop", "orders")));
    assert_eq!(next().await.as_deref(), Some("orders"));

    // More changes than the reader keeps up with: the watch never waits, the reader is told
    // to look at every policy (`orders` was not among the changes).
    for _ in 0..2000 {
        index.announce(PolicyChange::One(ObjKey::new("shop", "payments")));
    }
    let mut all = vec![next().await, next().await];
    all.sort();
    assert_eq!(all, [Some("orders".into()), Some("payments".into())]);
}
