//! The policy controller (kube-runtime's `Controller`, controller-rs's habits): reconcile each
//! CommunicationPolicy into its status.
//!
//! Triggers: the policy's own changes (the controller drives the policy watch), the policies
//! the snapshot hub finds concerned by a Service or peer-policy change (`reconcile_on`),
//! everything when this replica becomes the lease holder (`reconcile_all_on`), and a periodic
//! resync. Reconciles are debounced and run with bounded concurrency (`controller::Config`).
//!
//! Every replica reconciles (its view stays warm and its metrics honest); only the lease holder
//! writes. A write is a server-side apply of the whole status on the `status` subresource with
//! one field manager for every replica, sent only when the status differs from the one stored,
//! and followed by an Event per condition whose status or reason changed.

pub mod status;

use std::{sync::Arc, time::Duration};

use breakwater_crds::{CommunicationPolicy, CommunicationPolicyStatus, reasons};
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
use tokio::sync::{mpsc, watch};

use crate::{
    Error, Result,
    index::{Index, Lenient, PolicyStream, readable},
    key::ObjKey,
    metrics::Metrics,
};

/// The field manager of every status write (one for all replicas: a new lease holder takes over
/// the fields of the last one, and a condition it drops is really dropped).
pub const FIELD_MANAGER: &str = "breakwater-operator";

/// Counts of sidecars running each policy: filled in when sidecars acknowledge snapshots.
pub trait Deliveries: Send + Sync {
    /// How many sidecars run generation `generation` of `policy`, of how many that must.
    fn delivery(&self, policy: &ObjKey, generation: Option<i64>) -> Option<status::Delivery>;
}

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
    /// Sidecar acknowledgements, once there are any.
    pub deliveries: Option<Arc<dyn Deliveries>>,
    /// How often a policy is reconciled without a change.
    pub resync: Duration,
}

/// What the controller is given to run.
pub struct Inputs {
    /// The policy watch (from [`Index::start`]).
    pub policies: PolicyStream,
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
    Controller::for_stream(inputs.policies, ctx.index.policies.clone())
        .with_config(inputs.config)
        .reconcile_on(concerned)
        .reconcile_all_on(became_leader(ctx.leader.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
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
            let peers: Vec<&CommunicationPolicy> = peers.iter().map(Arc::as_ref).collect();
            let services: Vec<_> = services.iter().map(Arc::as_ref).collect();
            let delivery = ctx.deliveries.as_ref().and_then(|d| d.delivery(&key, policy.metadata.generation));
            let previous = policy.status.clone();
            let desired = status::desired(policy, &peers, &services, delivery, previous.as_ref(), &now);
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
        );
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
