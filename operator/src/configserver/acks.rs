//! What the sidecars connected to this replica acknowledged, and how that reaches the policies'
//! status when another replica writes it.
//!
//! Each replica knows only its own streams, and only the lease holder writes status. So each
//! replica keeps, per policy, how many of its sidecars run each generation (and the last few
//! refusals), and publishes that as a small report — a ConfigMap named after itself in the
//! operator's namespace, rewritten at most once a second and refreshed every 10 s — and every
//! replica aggregates the fresh reports of all (Istio's distribution reports do the same). A
//! report not refreshed for 30 s belongs to a replica that is gone: its sidecars have
//! reconnected elsewhere, and counting it would count them twice.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use breakwater_crds::snapshot::{Snapshot, SnapshotVersion};
use futures_util::StreamExt;
use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, watch};

use crate::{key::ObjKey, metrics::Metrics};

/// The label on every replica's report.
pub const REPORT_LABEL: &str = "breakwater.dev/acknowledgements";
const REPORT_KEY: &str = "report.json";
/// How often an unchanged report is rewritten (so a live replica's report stays fresh).
const REFRESH: Duration = Duration::from_secs(10);
/// A report older than this belongs to a replica that is gone.
const STALE: Duration = Duration::from_secs(30);
/// Refusals kept per policy.
const REFUSALS: usize = 5;

/// One policy in a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAcks {
    /// Generation → sidecars enforcing it.
    #[serde(default)]
    pub generations: BTreeMap<i64, usize>,
    /// The last refusals: `namespace/pod` and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<(String, String)>,
}

/// A replica's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Policy (`namespace/name`) → acknowledgements.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyAcks>,
}

/// One connected sidecar.
#[derive(Debug)]
struct Connected {
    stream: u64,
    /// The snapshot it last applied.
    applied: Option<Arc<Snapshot>>,
}

/// The acknowledgements of this replica's streams.
#[derive(Debug, Default)]
pub struct Registry {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    pods: HashMap<ObjKey, Connected>,
    report: Report,
    next_stream: u64,
}

impl Registry {
    /// A new stream for `pod` (replacing any older one): its id.
    pub async fn connected(&self, pod: &ObjKey) -> u64 {
        let mut state = self.state.lock().await;
        state.next_stream += 1;
        let stream = state.next_stream;
        if let Some(old) = state.pods.insert(pod.clone(), Connected { stream, applied: None }) {
            subtract(&mut state.report, old.applied.as_deref());
        }
        self.changed.notify_one();
        stream
    }

    /// `pod` applied `snapshot` on stream `stream`.
    pub async fn applied(&self, pod: &ObjKey, stream: u64, snapshot: Arc<Snapshot>) {
        let mut state = self.state.lock().await;
        let State { pods, report, .. } = &mut *state;
        let Some(c) = pods.get_mut(pod).filter(|c| c.stream == stream) else { return };
        subtract(report, c.applied.as_deref());
        for (policy, generation) in snapshot.policies() {
            let acks = report.policies.entry(policy.clone()).or_default();
            *acks.generations.entry(generation.unwrap_or(0)).or_default() += 1;
            acks.refused.retain(|(p, _)| p != &pod.to_string());
        }
        c.applied = Some(snapshot);
        self.changed.notify_one();
    }

    /// `pod` refused `snapshot` because of `why`; it still runs what it applied before.
    pub async fn refused(&self, pod: &ObjKey, snapshot: &Snapshot, why: &str) {
        let mut state = self.state.lock().await;
        for policy in snapshot.policies().into_keys() {
            let acks = state.report.policies.entry(policy).or_default();
            acks.refused.retain(|(p, _)| p != &pod.to_string());
            acks.refused.push((pod.to_string(), why.chars().take(300).collect()));
            if acks.refused.len() > REFUSALS {
                acks.refused.remove(0);
            }
        }
        self.changed.notify_one();
    }

    /// Stream `stream` of `pod` ended.
    pub async fn disconnected(&self, pod: &ObjKey, stream: u64) {
        let mut state = self.state.lock().await;
        if state.pods.get(pod).is_some_and(|c| c.stream == stream) {
            if let Some(old) = state.pods.remove(pod) {
                subtract(&mut state.report, old.applied.as_deref());
            }
            self.changed.notify_one();
        }
    }

    /// How many sidecars are connected.
    pub async fn streams(&self) -> usize {
        self.state.lock().await.pods.len()
    }

    /// This replica's report now.
    pub async fn report(&self) -> Report {
        self.state.lock().await.report.clone()
    }

    /// Writes this replica's report as ConfigMap `name` in `namespace` — at most once a second
    /// when it changes, and every [`REFRESH`] anyway — until `stop`; then deletes it.
    pub async fn publish(
        self: Arc<Self>,
        client: Client,
        namespace: String,
        name: String,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let mut last: Option<Report> = None;
        loop {
            let report = self.report().await;
            if last.as_ref() != Some(&report) || last.is_none() {
                match write(&api, &name, &report).await {
                    Ok(()) => last = Some(report),
                    Err(e) => {
                        tracing::warn!(error = %e, "writing this replica's acknowledgement report failed; retrying")
                    }
                }
            }
            tokio::select! {
                // Something was acknowledged (written a second later at the soonest).
                _ = self.changed.notified() => tokio::time::sleep(Duration::from_secs(1)).await,
                // Refresh, so the report stays fresh.
                _ = tokio::time::sleep(REFRESH) => last = None,
                // Shutting down: our sidecars will reconnect elsewhere.
                _ = stop.cancelled() => break,
            }
        }
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
}

fn subtract(report: &mut Report, snapshot: Option<&Snapshot>) {
    let Some(snapshot) = snapshot else { return };
    for (policy, generation) in snapshot.policies() {
        if let Some(acks) = report.policies.get_mut(&policy) {
            let g = generation.unwrap_or(0);
            if let Some(n) = acks.generations.get_mut(&g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    acks.generations.remove(&g);
                }
            }
            if acks.generations.is_empty() && acks.refused.is_empty() {
                report.policies.remove(&policy);
            }
        }
    }
}

async fn write(api: &Api<ConfigMap>, name: &str, report: &Report) -> Result<(), kube::Error> {
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {REPORT_LABEL: "true"},
            "annotations": {"breakwater.dev/updated": Time(Timestamp::now())},
        },
        "data": {REPORT_KEY: serde_json::to_string(report).unwrap_or_default()},
    });
    api.patch(name, &PatchParams::apply(crate::controller::FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await?;
    Ok(())
}

/// Every fresh report summed: policy → generation → sidecars, and the refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Policy → acknowledgements over every replica.
    pub policies: BTreeMap<String, PolicyAcks>,
}

/// Watches the replicas' reports in `namespace` and keeps their sum in `out`.
pub async fn aggregate(
    client: Client,
    namespace: String,
    out: watch::Sender<Arc<Totals>>,
    metrics: Arc<Metrics>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{REPORT_LABEL}=true"));
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer).touched_objects();
    let mut stream = std::pin::pin!(stream);
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            // A report changed.
            event = stream.next() => match event {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    metrics.watch_error("ConfigMap");
                    tracing::warn!(error = %e, "watching acknowledgement reports failed; retrying");
                    continue;
                }
                None => return,
            },
            // Reports go stale with time alone.
            _ = tick.tick() => {}
        }
        let mut totals = Totals::default();
        let now = Timestamp::now();
        for cm in reader.state() {
            let updated =
                cm.annotations().get("breakwater.dev/updated").and_then(|t| t.parse::<Timestamp>().ok());
            let fresh = updated.is_some_and(|t| now.duration_since(t).unsigned_abs() < STALE);
            let report: Option<Report> =
                cm.data.as_ref().and_then(|d| d.get(REPORT_KEY)).and_then(|r| serde_json::from_str(r).ok());
            let (true, Some(report)) = (fresh, report) else { continue };
            for (policy, acks) in report.policies {
                let total = totals.policies.entry(policy).or_default();
                for (g, n) in acks.generations {
                    *total.generations.entry(g).or_default() += n;
                }
                total.refused.extend(acks.refused);
                total.refused.truncate(REFUSALS);
            }
        }
        out.send_if_modified(|current| {
            if **current == totals {
                false
            } else {
                *current = Arc::new(totals);
                true
            }
        });
    }
}

/// The version string of a snapshot, for logs.
pub fn version(v: &SnapshotVersion) -> String {
    v.to_string()
}

/// The sidecar counts the status reads: how many must enforce a policy (from the snapshot hub)
/// and how many acknowledged each generation (from every replica's report).
#[derive(Debug, Clone)]
pub struct Deliveries {
    /// Sidecars whose snapshot carries each policy.
    pub expected: watch::Receiver<crate::snapshots::Expected>,
    /// Acknowledgements over every replica.
    pub totals: watch::Receiver<Arc<Totals>>,
}

impl crate::controller::Deliveries for Deliveries {
    fn delivery(
        &self,
        policy: &ObjKey,
        generation: Option<i64>,
    ) -> Option<crate::controller::status::Delivery> {
        let name = policy.to_string();
        let expected = self.expected.borrow().get(&name).copied().unwrap_or(0);
        if expected == 0 {
            // No sidecar needs it (yet): `Resolved` says what there is to say.
            return None;
        }
        let totals = self.totals.borrow();
        let acks = totals.policies.get(&name);
        let acknowledged =
            acks.and_then(|a| a.generations.get(&generation.unwrap_or(0))).copied().unwrap_or(0);
        let refused = acks.map(|a| a.refused.clone()).unwrap_or_default();
        Some(crate::controller::status::Delivery {
            acknowledged: acknowledged.min(expected) as u32,
            expected: expected as u32,
            refused,
        })
    }
}

/// Asks the controller to reconcile each policy whose delivery count changed, as reports and
/// snapshots change.
pub async fn reconcile_on_delivery(
    deliveries: Deliveries,
    index: crate::index::Index,
    concerned: crate::snapshots::PolicyRefs,
) {
    use crate::controller::Deliveries as _;
    let (mut expected, mut totals) = (deliveries.expected.clone(), deliveries.totals.clone());
    let mut last: HashMap<ObjKey, Option<crate::controller::status::Delivery>> = HashMap::new();
    loop {
        tokio::select! {
            // Snapshots changed: who must acknowledge what.
            r = expected.changed() => if r.is_err() { return },
            // Reports changed: who acknowledged what.
            r = totals.changed() => if r.is_err() { return },
        }
        for p in index.policies.state() {
            let Some(key) = ObjKey::of(p.as_ref()) else { continue };
            let now = deliveries.delivery(&key, p.metadata.generation);
            if last.get(&key) != Some(&now) {
                last.insert(key.clone(), now);
                let reference = kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace);
                // A closed channel: the controller stopped.
                if concerned.send(reference).await.is_err() {
                    return;
                }
            }
        }
    }
}
