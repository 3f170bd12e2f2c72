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
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use breakwater_crds::snapshot::Snapshot;
use futures_util::StreamExt;
use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Mutex, Notify, watch},
    time::Instant,
};

use crate::{
    delivery::{PolicyAcks, Refusal, Totals},
    key::ObjKey,
    metrics::Metrics,
};

/// The label on every replica's report.
pub const REPORT_LABEL: &str = "breakwater.dev/acknowledgements";
const REPORT_KEY: &str = "report.json";
/// How often an unchanged report is rewritten (so a live replica's report stays fresh).
const REFRESH: Duration = Duration::from_secs(10);
/// A report older than this belongs to a replica that is gone.
const STALE: Duration = Duration::from_secs(30);
/// A report older than this is deleted (a replica killed without a chance to delete its own).
const GONE: Duration = Duration::from_secs(300);
/// Unapplied pushes remembered per sidecar.
const UNAPPLIED: usize = 8;
/// Refusals kept per policy.
const REFUSALS: usize = 5;

/// A replica's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Policy → acknowledgements.
    #[serde(default)]
    pub policies: BTreeMap<ObjKey, PolicyAcks>,
}

/// One connected sidecar.
#[derive(Debug)]
struct Connected {
    stream: u64,
    /// The snapshot it last applied.
    applied: Option<Arc<Snapshot>>,
    /// When the operator observed each change pushed to it and not applied yet, oldest first.
    /// A snapshot carries every change observed before it, so applying the one of a change
    /// applies the older ones too.
    waiting: VecDeque<Instant>,
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
        if let Some(old) =
            state.pods.insert(pod.clone(), Connected { stream, applied: None, waiting: VecDeque::new() })
        {
            subtract(&mut state.report, old.applied.as_deref());
        }
        self.changed.notify_one();
        stream
    }

    /// `snapshot`, carrying a change observed at `observed`, was pushed to `pod` on stream
    /// `stream`.
    pub async fn pushed(&self, pod: &ObjKey, stream: u64, snapshot: &Snapshot, observed: Instant) {
        let mut state = self.state.lock().await;
        let Some(c) = state.pods.get_mut(pod).filter(|c| c.stream == stream) else { return };
        // What it runs already (the first push of a reconnect): nothing to wait for.
        if c.applied.as_ref().is_some_and(|a| a.version.hash == snapshot.version.hash) {
            return;
        }
        c.waiting.push_back(observed);
        if c.waiting.len() > UNAPPLIED {
            // Keep the oldest: its age is what is reported.
            c.waiting.remove(1);
        }
    }

    /// How long the oldest change pushed to a connected sidecar has waited for it to be applied
    /// (`None`: every connected sidecar applied what it was sent).
    pub async fn oldest_unapplied(&self) -> Option<Duration> {
        let state = self.state.lock().await;
        state.pods.values().filter_map(|c| c.waiting.front()).map(|since| since.elapsed()).max()
    }

    /// `pod` applied `snapshot`, carrying a change observed at `observed`, on stream `stream`.
    pub async fn applied(&self, pod: &ObjKey, stream: u64, snapshot: Arc<Snapshot>, observed: Instant) {
        let mut state = self.state.lock().await;
        let State { pods, report, .. } = &mut *state;
        let Some(c) = pods.get_mut(pod).filter(|c| c.stream == stream) else { return };
        while c.waiting.front().is_some_and(|since| *since <= observed) {
            c.waiting.pop_front();
        }
        subtract(report, c.applied.as_deref());
        for (policy, generation) in policies(&snapshot) {
            let acks = report.policies.entry(policy).or_default();
            *acks.generations.entry(generation.unwrap_or(0)).or_default() += 1;
            acks.refused.retain(|r| &r.pod != pod);
        }
        c.applied = Some(snapshot);
        self.changed.notify_one();
    }

    /// `pod` refused `snapshot` because of `why`; it still runs what it applied before.
    pub async fn refused(&self, pod: &ObjKey, snapshot: &Snapshot, why: &str) {
        let mut state = self.state.lock().await;
        for (policy, _) in policies(snapshot) {
            let acks = state.report.policies.entry(policy).or_default();
            acks.refused.retain(|r| &r.pod != pod);
            acks.refused.push(Refusal { pod: pod.clone(), why: why.chars().take(300).collect() });
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

    /// Every connected sidecar's pod, with the version it applied last on its stream.
    pub async fn applied_versions(
        &self,
    ) -> Vec<(ObjKey, Option<breakwater_crds::snapshot::SnapshotVersion>)> {
        let state = self.state.lock().await;
        state
            .pods
            .iter()
            .map(|(pod, c)| (pod.clone(), c.applied.as_ref().map(|s| s.version.clone())))
            .collect()
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
                    Ok(()) => {
                        tracing::debug!(policies = report.policies.len(), "acknowledgement report written");
                        last = Some(report)
                    }
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

/// The policies a snapshot carries, with their generations.
fn policies(snapshot: &Snapshot) -> impl Iterator<Item = (ObjKey, Option<i64>)> {
    // The hub writes every name as `namespace/name`.
    snapshot.policies().into_iter().filter_map(|(name, generation)| Some((name.parse().ok()?, generation)))
}

fn subtract(report: &mut Report, snapshot: Option<&Snapshot>) {
    let Some(snapshot) = snapshot else { return };
    for (policy, generation) in policies(snapshot) {
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
    api.patch(name, &PatchParams::apply(crate::FIELD_MANAGER).force(), &Patch::Apply(&object)).await?;
    Ok(())
}

/// Watches the replicas' reports in `namespace` and keeps their sum in `out`, until `stop`.
pub async fn aggregate(
    client: Client,
    namespace: String,
    out: watch::Sender<Arc<Totals>>,
    metrics: Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{REPORT_LABEL}=true"));
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = watcher(api.clone(), config).default_backoff().reflect(writer).touched_objects();
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
            // Shutting down.
            _ = stop.cancelled() => return,
        }
        let mut totals = Totals::default();
        let now = Timestamp::now();
        for cm in reader.state() {
            let updated =
                cm.annotations().get("breakwater.dev/updated").and_then(|t| t.parse::<Timestamp>().ok());
            let age = updated.map(|t| now.duration_since(t).unsigned_abs());
            if age.is_none_or(|a| a > GONE) {
                // Its replica is long gone: every replica may clean it up (a delete is idempotent).
                let _ = api.delete(&cm.name_any(), &DeleteParams::default()).await;
                continue;
            }
            let fresh = age.is_some_and(|a| a < STALE);
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
                tracing::debug!(policies = totals.policies.len(), "acknowledgement totals changed");
                *current = Arc::new(totals);
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of pod `shop/checkout` carrying `policies` (name, generation).
    fn snapshot(policies: &[(&str, i64)]) -> Arc<Snapshot> {
        let ports: Vec<serde_json::Value> = policies
            .iter()
            .enumerate()
            .map(|(i, (name, generation))| {
                serde_json::json!({"port": 80 + i, "endpoints": [],
                                   "policy": {"name": name, "generation": generation, "effective": {"mode": "Enforce", "timeouts": {"connect": "1s", "idle": "5m"}, "bulkhead": {}}}})
            })
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "schema": 1,
                "version": {"counter": 1, "hash": "h"},
                "identity": {"name": "checkout", "namespace": "shop"},
                "services": [{"name": "payments", "namespace": "shop", "ports": ports}],
            }))
            .expect("a snapshot"),
        )
    }

    /// A snapshot with content `hash`.
    fn version(hash: &str) -> Arc<Snapshot> {
        let mut s = (*snapshot(&[("shop/p", 1)])).clone();
        s.version.hash = hash.to_owned();
        Arc::new(s)
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_unapplied_change_ages_until_its_snapshot_or_a_newer_one_is_applied() {
        let registry = Registry::default();
        let (a, b) = (ObjKey::new("shop", "a"), ObjKey::new("shop", "b"));
        let (sa, sb) = (registry.connected(&a).await, registry.connected(&b).await);
        assert_eq!(registry.oldest_unapplied().await, None, "nothing pushed yet");

        let t0 = Instant::now();
        registry.pushed(&a, sa, &version("v1"), t0).await;
        registry.pushed(&b, sb, &version("v1"), t0).await;
        registry.applied(&b, sb, version("v1"), t0).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(registry.oldest_unapplied().await, Some(Duration::from_secs(5)), "a has not applied v1");

        // A newer change pushed before a applied v1: still waiting since v1's change.
        let t1 = Instant::now();
        registry.pushed(&a, sa, &version("v2"), t1).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(registry.oldest_unapplied().await, Some(Duration::from_secs(10)));
        // v1 applied: v2's change is the oldest now.
        registry.applied(&a, sa, version("v1"), t0).await;
        registry.refused(&a, &version("v2"), "refused").await;
        assert_eq!(
            registry.oldest_unapplied().await,
            Some(Duration::from_secs(5)),
            "a refusal is not applying"
        );
        registry.applied(&a, sa, version("v2"), t1).await;
        assert_eq!(registry.oldest_unapplied().await, None);

        // Pushing what a sidecar already runs (a reconnect's first push) is nothing to wait for.
        registry.pushed(&a, sa, &version("v2"), Instant::now()).await;
        assert_eq!(registry.oldest_unapplied().await, None);
        // A disconnected sidecar is not waited for here (it reconnects, maybe elsewhere).
        registry.pushed(&b, sb, &version("v3"), Instant::now()).await;
        registry.disconnected(&b, sb).await;
        assert_eq!(registry.oldest_unapplied().await, None);
    }

    fn generations(report: &Report, policy: &str) -> Vec<(i64, usize)> {
        let policy: ObjKey = policy.parse().expect("a key");
        report.policies.get(&policy).map(|p| p.generations.clone().into_iter().collect()).unwrap_or_default()
    }

    #[tokio::test]
    async fn each_sidecar_counts_once_for_the_generation_it_runs() {
        let registry = Registry::default();
        let (a, b) = (ObjKey::new("shop", "a"), ObjKey::new("shop", "b"));
        let sa = registry.connected(&a).await;
        let sb = registry.connected(&b).await;
        registry.applied(&a, sa, snapshot(&[("shop/p", 1)]), Instant::now()).await;
        registry.applied(&b, sb, snapshot(&[("shop/p", 1)]), Instant::now()).await;
        assert_eq!(generations(&registry.report().await, "shop/p"), vec![(1, 2)]);

        // A moves to generation 2: counted there, not twice.
        registry.applied(&a, sa, snapshot(&[("shop/p", 2)]), Instant::now()).await;
        registry.applied(&a, sa, snapshot(&[("shop/p", 2)]), Instant::now()).await;
        assert_eq!(generations(&registry.report().await, "shop/p"), vec![(1, 1), (2, 1)]);

        // B reconnects (a new stream replaces the old one); the old stream's late news is ignored.
        let sb2 = registry.connected(&b).await;
        registry.applied(&b, sb, snapshot(&[("shop/p", 2)]), Instant::now()).await;
        assert_eq!(generations(&registry.report().await, "shop/p"), vec![(2, 1)]);
        registry.applied(&b, sb2, snapshot(&[("shop/p", 2)]), Instant::now()).await;
        registry.disconnected(&b, sb).await;
        assert_eq!(
            generations(&registry.report().await, "shop/p"),
            vec![(2, 2)],
            "an old stream's end changes nothing"
        );

        registry.disconnected(&a, sa).await;
        registry.disconnected(&b, sb2).await;
        assert!(registry.report().await.policies.is_empty(), "{:?}", registry.report().await);
        assert_eq!(registry.streams().await, 0);
    }

    #[tokio::test]
    async fn a_refusal_is_kept_until_that_sidecar_applies_the_policy_again() {
        let registry = Registry::default();
        let a = ObjKey::new("shop", "a");
        let s = registry.connected(&a).await;
        registry.applied(&a, s, snapshot(&[("shop/p", 1)]), Instant::now()).await;
        registry.refused(&a, &snapshot(&[("shop/p", 2)]), "inbound port 15000 is the admin listener").await;
        registry.refused(&a, &snapshot(&[("shop/p", 3)]), "still").await;
        let report = registry.report().await;
        assert_eq!(generations(&report, "shop/p"), vec![(1, 1)], "it still runs generation 1");
        let p = ObjKey::new("shop", "p");
        assert_eq!(
            report.policies[&p].refused,
            vec![Refusal { pod: a.clone(), why: "still".to_owned() }],
            "one per sidecar"
        );
        registry.applied(&a, s, snapshot(&[("shop/p", 3)]), Instant::now()).await;
        assert!(registry.report().await.policies[&p].refused.is_empty());
    }
}
