//! `kubectl breakwater breakers POD [--to SERVICE]`: the live state of the pod's sidecar, from its
//! `/breakers`: each governed target's circuit breakers (per Service or per endpoint), bulkhead
//! occupancy and queue, and retry-budget headroom.
//!
//! Unhealthy (exit 1) when an enforced target has a breaker open, a spent retry budget or a full
//! bulkhead (every slot and every queue place taken): calls are being refused. A DryRun target
//! refuses nothing, so its state is shown but does not count.

use std::fmt::Write as _;

use breakwater_crds::admin::{BreakersView, TargetState};
use serde::Serialize;

use crate::{
    Error,
    cluster::Cluster,
    diagnostics,
    output::{Report, Table},
};

/// What `breakers` found.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BreakersReport {
    /// `namespace/name`.
    pub pod: String,
    /// The sidecar's answer, restricted to `--to`.
    #[serde(flatten)]
    pub view: BreakersView,
}

/// Reads pod `name`'s sidecar; `to` keeps the targets of one Service (`name` or `name.namespace`).
pub async fn breakers(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    to: Option<&str>,
) -> Result<BreakersReport, Error> {
    let sidecar = diagnostics::sidecar(cluster, namespace, name).await?;
    let view = diagnostics::breakers(cluster, &sidecar).await?;
    restrict(format!("{namespace}/{name}"), view, to)
}

/// Keeps the targets `to` names; an error listing the governed Services when none matches.
pub fn restrict(pod: String, mut view: BreakersView, to: Option<&str>) -> Result<BreakersReport, Error> {
    if let Some(to) = to {
        let matches = |t: &TargetState| t.service == to || t.service.split('.').next() == Some(to);
        if !view.targets.iter().any(matches) {
            let mut known: Vec<&str> = view.targets.iter().map(|t| t.service.as_str()).collect();
            known.dedup();
            return Err(Error::Diagnostics {
                what: format!("pod {pod}"),
                why: format!("no policy governs its calls to {to}"),
                hint: if known.is_empty() {
                    "no policy governs any of its calls (kubectl breakwater config POD shows what it enforces)".into()
                } else {
                    format!("it governs: {}", known.join(", "))
                },
            });
        }
        view.targets.retain(matches);
    }
    Ok(BreakersReport { pod, view })
}

/// What is wrong with an enforced target, if anything.
fn problems(t: &TargetState) -> Vec<String> {
    if t.mode != "Enforce" {
        return Vec::new();
    }
    let mut out = Vec::new();
    for b in t.breakers.iter().filter(|b| b.state == "Open") {
        out.push(format!("breaker {} open: calls to it are refused (circuit-open)", b.endpoint));
    }
    if let Some(r) = &t.retry_budget
        && r.available == 0
    {
        out.push("retry budget spent: failed calls are not retried".into());
    }
    if let Some(b) = &t.bulkhead
        && b.in_flight >= b.max_concurrent
        && b.queued >= b.max_queued
    {
        out.push("bulkhead full: new calls are refused (bulkhead-full)".into());
    }
    out
}

impl Report for BreakersReport {
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "pod {}: sidecar {}\n", self.pod, self.view.sidecar.version);
        if self.view.targets.is_empty() {
            out.push_str("no policy governs this pod's calls: no breakers, bulkheads or retry budgets\n");
            return out;
        }
        let mut t = Table::new(&[
            "direction",
            "service",
            "port",
            "policy",
            "mode",
            "breaker",
            "state",
            "failures",
            "trips",
            "bulkhead",
            "retry budget",
        ]);
        for target in &self.view.targets {
            let port = target.port.map_or_else(|| "*".to_owned(), |p| p.to_string());
            let service = match &target.pinned_endpoint {
                Some(e) => format!("{} ({e})", target.service),
                None => target.service.clone(),
            };
            let bulkhead = target.bulkhead.as_ref().map_or_else(
                || "-".to_owned(),
                |b| {
                    format!(
                        "{}/{} in flight, {}/{} queued",
                        b.in_flight, b.max_concurrent, b.queued, b.max_queued
                    )
                },
            );
            let budget = target.retry_budget.as_ref().map_or_else(
                || "-".to_owned(),
                |r| {
                    format!(
                        "{} left ({}% + {}/s over {}s)",
                        r.available,
                        (r.ratio * 100.0).round(),
                        r.min_per_second,
                        r.window_seconds
                    )
                },
            );
            let policy = match target.generation {
                Some(g) => format!("{}@{g}", target.policy.as_deref().unwrap_or("-")),
                None => target.policy.clone().unwrap_or_else(|| "-".into()),
            };
            let head = |breaker: String, state: String, failures: String, trips: String| {
                vec![
                    target.direction.clone(),
                    service.clone(),
                    port.clone(),
                    policy.clone(),
                    target.mode.clone(),
                    breaker,
                    state,
                    failures,
                    trips,
                    bulkhead.clone(),
                    budget.clone(),
                ]
            };
            if target.breakers.is_empty() {
                t.row(head("-".into(), "-".into(), "-".into(), "-".into()));
            }
            for b in &target.breakers {
                let state = match b.state.as_str() {
                    "Open" => format!("OPEN ({}ms)", b.open_duration_ms),
                    "HalfOpen" => "HALF-OPEN".to_owned(),
                    other => other.to_lowercase(),
                };
                let failures = format!(
                    "{} in a row, {}/{} in window",
                    b.consecutive_failures, b.window_failures, b.window_calls
                );
                t.row(head(b.endpoint.clone(), state, failures, b.trips.to_string()));
            }
            for p in problems(target) {
                t.detail(p);
            }
        }
        out + &t.render()
    }

    fn healthy(&self) -> bool {
        self.view.targets.iter().all(|t| problems(t).is_empty())
    }
}

#[cfg(test)]
mod tests {
    use breakwater_crds::admin::{self, BreakerState, BulkheadState, RetryBudgetState, SidecarInfo};

    use super::*;

    fn target(service: &str, mode: &str, state: &str, available: u64) -> TargetState {
        TargetState {
            direction: "outbound".into(),
            service: service.into(),
            port: Some(80),
            pinned_endpoint: None,
            policy: Some("shop/p".into()),
            generation: Some(2),
            mode: mode.into(),
            breakers: vec![BreakerState {
                endpoint: "198.18.0.7:8080".into(),
                state: state.into(),
                consecutive_failures: 0,
                window_calls: 4,
                window_failures: 4,
                trips: 1,
                open_duration_ms: 5000,
            }],
            bulkhead: Some(BulkheadState {
                in_flight: 1,
                max_concurrent: 8,
                queued: 0,
                max_queued: 16,
                max_queue_wait_ms: 100,
            }),
            retry_budget: Some(RetryBudgetState {
                ratio: 0.1,
                min_per_second: 5,
                window_seconds: 10,
                available,
            }),
        }
    }

    fn view(targets: Vec<TargetState>) -> BreakersView {
        BreakersView {
            api_version: admin::API_VERSION.into(),
            kind: admin::KIND_BREAKERS.into(),
            sidecar: SidecarInfo { version: "0.1.0".into() },
            targets,
        }
    }

    #[test]
    fn an_open_enforced_breaker_or_a_spent_budget_is_unhealthy_and_named() {
        let open = restrict("shop/a".into(), view(vec![target("payments.shop", "Enforce", "Open", 9)]), None)
            .expect("report");
        assert!(!open.healthy());
        let text = open.table();
        assert!(text.contains("OPEN (5000ms)") && text.contains("breaker 198.18.0.7:8080 open"), "{text}");
        let spent =
            restrict("shop/a".into(), view(vec![target("payments.shop", "Enforce", "Closed", 0)]), None)
                .expect("report");
        assert!(!spent.healthy() && spent.table().contains("retry budget spent"));
        let dry = restrict("shop/a".into(), view(vec![target("payments.shop", "DryRun", "Open", 0)]), None)
            .expect("report");
        assert!(dry.healthy(), "DryRun refuses nothing");
    }

    #[test]
    fn to_keeps_one_service_and_an_unknown_one_lists_the_governed() {
        let v = view(vec![
            target("payments.shop", "Enforce", "Closed", 9),
            target("ledger.shop", "Enforce", "Closed", 9),
        ]);
        let one = restrict("shop/a".into(), v.clone(), Some("ledger")).expect("report");
        assert_eq!(one.view.targets.len(), 1);
        assert_eq!(one.view.targets[0].service, "ledger.shop");
        let e = restrict("shop/a".into(), v, Some("inventory")).expect_err("unknown");
        let text = e.to_string();
        assert!(
            text.contains("no policy governs its calls to inventory")
                && text.contains("payments.shop, ledger.shop"),
            "{text}"
        );
    }
}
