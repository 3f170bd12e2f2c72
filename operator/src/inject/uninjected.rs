//! Pods running without the sidecar they should have: created while no replica answered the
//! webhook (its `failurePolicy: Ignore` let them through), or before their namespace was
//! labelled. The webhook never saw them, so nothing said why; the lease holder finds them when
//! it takes the lease (an operator coming back) and every five minutes, and records a
//! `SidecarNotInjected` Event on each one's controller (or the pod) once per operator process,
//! saying how to get the proxy (restart the workload).
//!
//! "Should have" is decided exactly as admission would: the webhook configuration's own
//! namespace and object selectors, then [`inject`](super::inject) on the pod as stored
//! (an `Inject` outcome — not an opt-out, a hostNetwork pod or a refusal).

use std::{collections::HashSet, sync::Arc, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    core::{Selector, SelectorExt as _},
    runtime::events::{Event, EventType, Recorder},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Options, Outcome, Template, annotations::INJECT};
use crate::metrics::Metrics;

/// How often the lease holder looks again.
const EVERY: Duration = Duration::from_secs(300);

/// What a scan needs.
#[derive(Clone)]
pub struct Scanner {
    /// The API.
    pub client: Client,
    /// The chart's MutatingWebhookConfiguration (its selectors say which pods it sees).
    pub configuration: String,
    /// The injection template.
    pub template: Arc<Template>,
    /// How the API server runs sidecars.
    pub options: Options,
    /// Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// While this replica leads: scans at once and every five minutes.
pub async fn run(scanner: Scanner, mut leader: watch::Receiver<bool>, stop: CancellationToken) {
    let mut reported = HashSet::new();
    let mut every = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            // The next round.
            _ = every.tick() => {}
            // The lease changed hands (taken: scan now).
            r = leader.changed() => if r.is_err() { return },
            // Shutting down.
            _ = stop.cancelled() => return,
        }
        if !*leader.borrow() {
            continue;
        }
        match scan(&scanner, &mut reported).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pods = n, "reported pods running without the sidecar they should have"),
            Err(e) => {
                tracing::warn!(error = %e, "looking for pods without their sidecar failed; trying again later")
            }
        }
    }
}

/// One scan; returns how many pods it reported (each once: `reported` holds their uids).
pub async fn scan(scanner: &Scanner, reported: &mut HashSet<String>) -> Result<usize, kube::Error> {
    let client = &scanner.client;
    let configuration =
        Api::<MutatingWebhookConfiguration>::all(client.clone()).get(&scanner.configuration).await?;
    let hooks: Vec<(Selector, Selector)> = configuration
        .webhooks
        .iter()
        .flatten()
        .filter_map(|w| {
            let ns = Selector::try_from(w.namespace_selector.clone().unwrap_or_default()).ok()?;
            let obj = Selector::try_from(w.object_selector.clone().unwrap_or_default()).ok()?;
            Some((ns, obj))
        })
        .collect();
    let namespaces = Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await?;
    let labels_of = |ns: &str| {
        namespaces.items.iter().find(|n| n.name_any() == ns).map(|n| n.labels().clone()).unwrap_or_default()
    };

    // Candidates: pods without the injected label in labelled namespaces, and pods labelled
    // for injection anywhere (never every pod of the cluster).
    let uninjected = "!breakwater.dev/injected";
    let mut candidates = Vec::new();
    for ns in namespaces.items.iter().filter(|n| n.labels().get(INJECT).is_some_and(|v| v == "enabled")) {
        let api = Api::<Pod>::namespaced(client.clone(), &ns.name_any());
        candidates.extend(api.list(&ListParams::default().labels(uninjected)).await?.items);
    }
    let labelled = format!("{INJECT}=enabled,{uninjected}");
    candidates
        .extend(Api::<Pod>::all(client.clone()).list(&ListParams::default().labels(&labelled)).await?.items);

    let mut n = 0;
    for pod in candidates {
        let uid = pod.uid().unwrap_or_default();
        let namespace = pod.namespace().unwrap_or_default();
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if reported.contains(&uid) || finished || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns_labels = labels_of(&namespace);
        let seen = hooks.iter().any(|(ns, obj)| ns.matches(&ns_labels) && obj.matches(pod.labels()));
        if !seen || !matches!(super::inject(&pod, &scanner.template, scanner.options), Outcome::Inject { .. })
        {
            continue;
        }
        reported.insert(uid);
        let event = Event {
            type_: EventType::Warning,
            reason: "SidecarNotInjected".into(),
            note: Some(format!(
                "pod {} runs without the Breakwater sidecar although injection applies to it: it was created while no operator replica answered the injection webhook, or before injection was enabled; restart it (kubectl rollout restart) to add the proxy",
                pod.name_any()
            )),
            action: "Inject".into(),
            secondary: None,
        };
        let Some(subject) = super::webhook::owner_or_pod(&pod, pod.namespace()) else { continue };
        if let Err(e) = scanner.recorder.publish(&event, &subject).await {
            tracing::debug!(error = %e, "publishing an Event failed");
        }
        scanner.metrics.uninjected_reported();
        n += 1;
    }
    Ok(n)
}
