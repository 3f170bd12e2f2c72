//! The policy controller (kube-runtime's `Controller`, controller-rs's habits): reconcile each
//! CommunicationPolicy into its status.
//!
//! Triggers: the policy's own changes (heard from the index, which owns the policy watch:
//! [`Index::policy_changes`]), the policies the snapshot hub finds concerned by a Service or
//! peer-policy change (`reconcile_on`),
//! everything when this replica becomes the lease holder (`reconcile_all_on`), and a periodic
//! resync. Reconciles are debounced and run with bounded concurrency (`controller::Config`).
//!
//! Every replica reconciles (its view stays warm and its metrics honest); only the lease holder
//! writes. A write is a server-side apply of the whole status on the `status` subresource with
//! one field manager for every replica, sent only when the status differs from the one stored,
//! and followed by an Event per condition whose status or reason changed.

pub mod routes;
pub mod status;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, sync::Arc, time::Duration};

use breakwater_crds::{CONDITION_FAULTS_INJECTED, CommunicationPolicy, CommunicationPolicyStatus, reasons};
use futures_util::{Stream, StreamExt};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
    },
};
use tokio::sync::{broadcast, mpsc, watch};

use crate::{
    Error, FIELD_MANAGER, Result,
    delivery::{Deliveries, Delivery},
    index::{Index, Lenient, PolicyChange, readable},
    key::ObjKey,
    metrics::Metrics,
};

/// What every reconcile shares.
pub struct Context {
    /// The API.
    pub client: Client,
    /// The stores.
    pub index: Index,
    /// True while this replica holds the lease.
    pub leader: watch::Receiver<bool>,
    /// Events on policies.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How many sidecars run each policy (when the config API is served).
    pub deliveries: Option<Deliveries>,
    /// How often a policy is reconciled without a change.
    pub resync: Duration,
}

/// What the controller is given to run.
pub struct Inputs {
    /// Policies to reconcile again, from the snapshot hub.
    pub concerned: mpsc::Receiver<ObjectRef<Lenient<CommunicationPolicy>>>,
    /// kube-runtime's settings (debounce, concurrency).
    pub config: controller::Config,
}

/// Runs the controller until `shutdown` resolves (then finishes the reconciles in flight).
pub async fn run(
    ctx: Arc<Context>,
    inputs: Inputs,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let concerned =
        futures_util::stream::unfold(
            inputs.concerned,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        );
    let mut controller =
        Controller::for_shared_stream(changed_policies(ctx.index.clone()), ctx.index.policies.clone())
            .with_config(inputs.config)
            .reconcile_on(concerned)
            .reconcile_all_on(became_leader(ctx.leader.clone()));
    if let Some(deliveries) = ctx.deliveries.clone() {
        controller = controller.reconcile_on(delivery_changes(deliveries, ctx.index.clone()));
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
}

/// Every policy once the index is ready, then each policy the index hears of changing (every
/// policy after a relist, or when this reader fell behind). A deleted policy is not in the store
/// any more and has no status to write: it is skipped.
fn changed_policies(index: Index) -> impl Stream<Item = Arc<Lenient<CommunicationPolicy>>> + Send {
    // Subscribed before waiting, so nothing between the first list and the first read is missed.
    let changes = index.policy_changes();
    futures_util::stream::once(async move {
        index.wait_ready().await;
        let first = futures_util::stream::iter(index.policies.state());
        let rest = futures_util::stream::unfold((index, changes), |(index, mut changes)| async move {
            loop {
                let found = match changes.recv().await {
                    Ok(PolicyChange::One(key)) => {
                        let reference = ObjectRef::new(&key.name).within(&key.namespace);
                        index.policies.get(&reference).into_iter().collect()
                    }
                    Ok(PolicyChange::All) => index.policies.state(),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            "policy changes came faster than reconciles; reconciling every policy"
                        );
                        index.policies.state()
                    }
                    // The index is gone: so is the operator.
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                if !found.is_empty() {
                    return Some((futures_util::stream::iter(found), (index, changes)));
                }
            }
        });
        first.chain(rest.flatten())
    })
    .flatten()
}

/// The policies whose delivery changed (how many sidecars must enforce them, how many do), as
/// the snapshots and the acknowledgements change.
fn delivery_changes(
    deliveries: Deliveries,
    index: Index,
) -> impl Stream<Item = ObjectRef<Lenient<CommunicationPolicy>>> + Send {
    // Keyed with the generation: the same count for a new generation is news (1 of 1 on the old
    // one, then 1 of 1 on the new one once its acknowledgement is in).
    let last: HashMap<ObjKey, (Option<i64>, Option<Delivery>)> = HashMap::new();
    futures_util::stream::unfold((deliveries, index, last), |(mut deliveries, index, mut last)| async move {
        if !deliveries.changed().await {
            return None;
        }
        let mut changed = Vec::new();
        for p in index.policies.state() {
            let Some(key) = ObjKey::of(p.as_ref()) else { continue };
            let now = (p.metadata.generation, deliveries.delivery(&key, p.metadata.generation));
            if last.get(&key) != Some(&now) {
                tracing::debug!(policy = %key, generation = ?now.0, delivery = ?now.1, "delivery changed; reconciling");
                changed.push(ObjectRef::from_obj(p.as_ref()));
                last.insert(key, now);
            }
        }
        Some((futures_util::stream::iter(changed), (deliveries, index, last)))
    })
    .flatten()
}

/// One item each time this replica becomes the lease holder; ends when the election stops.
fn became_leader(rx: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send {
    futures_util::stream::unfold((rx, false), |(mut rx, mut was)| async move {
        loop {
            let now = *rx.borrow_and_update();
            if now && !was {
                return Some(((), (rx, true)));
            }
            was = now;
            // A closed channel: the election stopped.
            rx.changed().await.ok()?;
        }
    })
}

async fn reconcile(policy: Arc<Lenient<CommunicationPolicy>>, ctx: Arc<Context>) -> Result<Action> {
    let started = tokio::time::Instant::now();
    let result = reconcile_inner(&policy, &ctx).await;
    ctx.metrics.reconciled(started.elapsed().as_secs_f64(), result.as_ref().err().map(Error::metric_label));
    result
}

async fn reconcile_inner(object: &Lenient<CommunicationPolicy>, ctx: &Context) -> Result<Action> {
    ctx.index.wait_ready().await;
    let key = ObjKey::of(object)
        .ok_or_else(|| Error::MissingNamespace(object.metadata.name.clone().unwrap_or_default()))?;
    let now = Time(Timestamp::now());
    let (previous, desired) = match object.get() {
        Some(policy) => {
            let peers: Vec<Arc<CommunicationPolicy>> = readable(&ctx.index.policies)
                .into_iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
                .collect();
            let services: Vec<_> = readable(&ctx.index.services)
                .into_iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
                .collect();
            let routes: Vec<_> = readable(&ctx.index.routes)
                .into_iter()
                .filter(|r| r.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
                .collect();
            let peers: Vec<&CommunicationPolicy> = peers.iter().map(Arc::as_ref).collect();
            let services: Vec<_> = services.iter().map(Arc::as_ref).collect();
            let routes: Vec<_> = routes.iter().map(Arc::as_ref).collect();
            let scope = status::Scope { peers: &peers, services: &services, routes: &routes };
            let delivery = ctx.deliveries.as_ref().and_then(|d| d.delivery(&key, policy.metadata.generation));
            let previous = policy.status.clone();
            let desired = status::desired(policy, &scope, delivery, previous.as_ref(), &now);
            (previous, desired)
        }
        None => {
            let previous: Option<CommunicationPolicyStatus> =
                object.raw_status.clone().and_then(|s| serde_json::from_value(s).ok());
            let error = object.object.as_ref().err().cloned().unwrap_or_default();
            (
                previous.clone(),
                status::unreadable(object.metadata.generation, &error, previous.as_ref(), &now),
            )
        }
    };
    if !*ctx.leader.borrow() {
        return Ok(Action::requeue(ctx.resync));
    }
    if previous.as_ref() == Some(&desired) {
        ctx.metrics.status_write(false);
        return Ok(Action::requeue(ctx.resync));
    }
    write_status(ctx, &key, &desired).await?;
    ctx.metrics.status_write(true);
    tracing::info!(policy = %key, conditions = %summary(&desired), "status written");
    publish_events(ctx, object, previous.as_ref(), &desired).await;
    Ok(Action::requeue(ctx.resync))
}

async fn write_status(ctx: &Context, key: &ObjKey, status: &CommunicationPolicyStatus) -> Result<()> {
    let api: Api<Lenient<CommunicationPolicy>> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": CommunicationPolicy::api_version(&()),
        "kind": CommunicationPolicy::kind(&()),
        "status": status,
    });
    api.patch_status(&key.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::StatusWrite { policy: key.to_string(), source })?;
    Ok(())
}

/// An Event per condition that changed (failures are logged: an Event is not worth a retry).
async fn publish_events(
    ctx: &Context,
    object: &Lenient<CommunicationPolicy>,
    before: Option<&CommunicationPolicyStatus>,
    after: &CommunicationPolicyStatus,
) {
    let reference = object.object_ref(&());
    for c in status::transitions(before, after) {
        // `NotAccepted` only repeats `Invalid`.
        if c.reason == reasons::NOT_ACCEPTED {
            continue;
        }
        let warning = matches!(
            c.reason.as_str(),
            reasons::INVALID | reasons::NO_MATCHING_TARGETS | reasons::OVERRIDDEN
        ) || (c.type_ == CONDITION_FAULTS_INJECTED && c.status == "True");
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: c.reason.clone(),
            note: Some(format!("{}: {}", c.type_, c.message).chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(policy = ?reference.name, error = %e, "publishing an Event failed");
        }
    }
}

fn summary(status: &CommunicationPolicyStatus) -> String {
    status
        .conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect::<Vec<_>>()
        .join(" ")
}

fn error_policy(policy: Arc<Lenient<CommunicationPolicy>>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = ?ObjKey::of(policy.as_ref()).map(|k| k.to_string()), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The Event reporter of this replica.
pub fn recorder(client: Client, identity: &str) -> Recorder {
    Recorder::new(client, Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.into()) })
}
