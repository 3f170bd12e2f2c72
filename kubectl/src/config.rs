//! `kubectl breakwater config POD`: what the pod's sidecar enforces now (its `/config`), side by
//! side with what the operator compiled for that pod (a replica's `/debug/snapshots/NS/POD`),
//! and whether the two are the same. They are when their content hashes are: the hash covers
//! everything the sidecar enforces, so a sidecar that missed an update shows here as
//! "DIFFERS", with the rows that differ.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use breakwater_crds::{
    admin::ConfigView,
    snapshot::{AppliedPolicy, Snapshot},
};
use serde::Serialize;

use crate::{
    Error,
    cluster::Cluster,
    diagnostics,
    output::{Report, Table},
};

/// What `config` found.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ConfigReport {
    /// `namespace/name`.
    pub pod: String,
    /// `Match`, `Differs` or `Unknown` (the operator's side could not be read).
    pub verdict: Verdict,
    /// The operator's side could not be read, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_error: Option<String>,
    /// Each target, both sides summarized.
    pub targets: Vec<TargetRow>,
    /// The sidecar's `/config`, whole.
    pub sidecar: ConfigView,
    /// What the operator compiled, whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<Snapshot>,
}

/// Whether the sidecar enforces what the operator compiled.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same content.
    Match,
    /// Different content: the sidecar has not applied the operator's latest (or refused it).
    Differs,
    /// The operator's side could not be read.
    Unknown,
}

/// One target on both sides.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRow {
    /// `outbound` or `inbound`.
    pub direction: String,
    /// `name.namespace` (inbound: the Services routing to the port).
    pub service: String,
    /// The port (`*`: every other port).
    pub port: String,
    /// The sidecar's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Summary>,
    /// The operator's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<Summary>,
}

/// A target's policy in a few words.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// `namespace/name@generation`, or `-` (no policy: calls pass through).
    pub policy: String,
    /// `Enforce` or `DryRun`.
    pub mode: String,
    /// Request and per-try timeouts.
    pub timeouts: String,
    /// Attempts and budget.
    pub retries: String,
    /// Trip rule and scope.
    pub breaker: String,
    /// Limit and queue.
    pub bulkhead: String,
    /// Endpoints, `ip:port` (outbound only).
    pub endpoints: Vec<String>,
}

/// Reads both sides for pod `name` in `namespace`.
pub async fn config(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    breakwater: &str,
) -> Result<ConfigReport, Error> {
    let sidecar = diagnostics::sidecar(cluster, namespace, name).await?;
    let view = diagnostics::config(cluster, &sidecar).await?;
    let (operator, operator_error) = match diagnostics::compiled(cluster, breakwater, namespace, name).await {
        Ok(s) => (Some(s), None),
        Err(why) => (None, Some(why)),
    };
    Ok(compare(format!("{namespace}/{name}"), view, operator, operator_error))
}

/// Both sides side by side.
pub fn compare(
    pod: String,
    sidecar: ConfigView,
    operator: Option<Snapshot>,
    operator_error: Option<String>,
) -> ConfigReport {
    let verdict = match &operator {
        None => Verdict::Unknown,
        Some(o) if same(&sidecar.config.snapshot, o) => Verdict::Match,
        Some(_) => Verdict::Differs,
    };
    let mut rows: BTreeMap<(String, String, String), TargetRow> = BTreeMap::new();
    let mut add = |snapshot: &Snapshot, operator_side: bool| {
        for (key, summary) in summaries(snapshot) {
            let row = rows.entry(key.clone()).or_insert_with(|| TargetRow {
                direction: key.0.clone(),
                service: key.1.clone(),
                port: key.2.clone(),
                sidecar: None,
                operator: None,
            });
            if operator_side { row.operator = Some(summary) } else { row.sidecar = Some(summary) }
        }
    };
    add(&sidecar.config.snapshot, false);
    if let Some(o) = &operator {
        add(o, true);
    }
    ConfigReport { pod, verdict, operator_error, targets: rows.into_values().collect(), sidecar, operator }
}

/// The same content: the same hash when both have one, else the same document but its version.
fn same(a: &Snapshot, b: &Snapshot) -> bool {
    if !a.version.hash.is_empty() && !b.version.hash.is_empty() {
        return a.version.hash == b.version.hash;
    }
    Snapshot { version: Default::default(), ..a.clone() }
        == Snapshot { version: Default::default(), ..b.clone() }
}

type Key = (String, String, String);

fn summaries(s: &Snapshot) -> Vec<(Key, Summary)> {
    let mut out = Vec::new();
    for service in &s.services {
        for port in &service.ports {
            let key = (
                "outbound".to_owned(),
                service.key(),
                port.port.map_or_else(|| "*".to_owned(), |p| p.to_string()),
            );
            let endpoints = port.endpoints.iter().map(|e| e.address.to_string()).collect();
            out.push((key, summary(port.policy.as_ref(), endpoints, true)));
        }
    }
    for port in &s.inbound {
        let key = ("inbound".to_owned(), port.services.join(","), port.port.to_string());
        out.push((key, summary(port.policy.as_ref(), Vec::new(), false)));
    }
    out
}

fn summary(policy: Option<&AppliedPolicy>, endpoints: Vec<String>, outbound: bool) -> Summary {
    let Some(applied) = policy else {
        let none = || "-".to_owned();
        return Summary {
            policy: none(),
            mode: none(),
            timeouts: none(),
            retries: none(),
            breaker: none(),
            bulkhead: none(),
            endpoints,
        };
    };
    let p = &applied.effective;
    let name = match applied.generation {
        Some(g) => format!("{}@{g}", applied.name),
        None => applied.name.clone(),
    };
    let mut timeouts = Vec::new();
    if let Some(r) = p.timeouts.request {
        timeouts.push(format!("request {}", human(r)));
    }
    if let Some(t) = p.timeouts.per_try {
        timeouts.push(format!("per-try {}", human(t)));
    }
    let retries = p.retries.as_ref().map_or_else(
        || "-".to_owned(),
        |r| {
            format!(
                "{} attempts, budget {}% + {}/s",
                r.attempts,
                (r.budget_ratio * 100.0).round(),
                r.budget_min_per_second
            )
        },
    );
    let breaker = p.circuit_breaker.as_ref().map_or_else(
        || "-".to_owned(),
        |b| {
            let mut rules = Vec::new();
            if let Some(n) = b.consecutive_failures {
                rules.push(format!("{n} in a row"));
            }
            if let Some(r) = &b.failure_rate {
                rules.push(format!("{}% of {}", (r.threshold * 100.0).round(), human(r.window)));
            }
            format!("{} → open {}, per {:?}", rules.join(" or "), human(b.open_duration), b.scope)
                .to_lowercase()
        },
    );
    let limits = if outbound { p.bulkhead.outbound.as_ref() } else { p.bulkhead.inbound.as_ref() };
    let bulkhead = limits.map_or_else(
        || "-".to_owned(),
        |l| {
            let mut s = l.max_concurrent_requests.to_string();
            if l.max_queued > 0 {
                let _ = write!(s, " + {} queued", l.max_queued);
            }
            s
        },
    );
    Summary {
        policy: name,
        mode: format!("{:?}", p.mode),
        timeouts: if timeouts.is_empty() { "-".into() } else { timeouts.join(", ") },
        retries,
        breaker,
        bulkhead,
        endpoints,
    }
}

/// `2s`, `800ms`, `1m30s`.
fn human(d: Duration) -> String {
    breakwater_crds::duration::Duration::from_std(d).as_str().to_owned()
}

impl Report for ConfigReport {
    fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.sidecar;
        let applied = &s.snapshot;
        let _ = writeln!(
            out,
            "pod {}: sidecar {} enforces snapshot {} (from {}, configuration #{} since it started)",
            self.pod,
            s.sidecar.version,
            version_text(&applied.version.to_string()),
            applied.source,
            s.version
        );
        match (&self.operator, self.verdict) {
            (Some(o), Verdict::Match) => {
                let _ =
                    writeln!(out, "the operator compiled {}: MATCH", version_text(&o.version.to_string()));
            }
            (Some(o), _) => {
                let _ = writeln!(
                    out,
                    "the operator compiled {}: DIFFERS (the sidecar has not applied it yet, or refused it: see `kubectl breakwater status`)",
                    version_text(&o.version.to_string())
                );
            }
            (None, _) => {
                let _ = writeln!(
                    out,
                    "what the operator compiled: unknown ({})",
                    self.operator_error.as_deref().unwrap_or("not read")
                );
            }
        }
        if let Some(e) = &s.last_reload_error {
            let _ = writeln!(
                out,
                "last configuration refused ({} problems, the one above stays):",
                e.problems.len()
            );
            for p in &e.problems {
                let _ = writeln!(out, "  {p}");
            }
        }
        for w in &s.config.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out.push('\n');
        if self.targets.is_empty() {
            out.push_str(
                "no Service is governed for this pod (no policy selects it as a caller or a target)\n",
            );
            return out;
        }
        let mut t = Table::new(&[
            "direction",
            "service",
            "port",
            "policy",
            "mode",
            "timeouts",
            "retries",
            "breaker",
            "bulkhead",
            "endpoints",
            "operator",
        ]);
        for row in &self.targets {
            let shown = row.sidecar.as_ref().or(row.operator.as_ref());
            let Some(shown) = shown else { continue };
            let operator = match (&row.sidecar, &row.operator, self.verdict) {
                (_, _, Verdict::Unknown) => "?".to_owned(),
                (Some(a), Some(b), _) if a == b => "same".to_owned(),
                (Some(_), Some(_), _) => "DIFFERS".to_owned(),
                (Some(_), None, _) => "ABSENT".to_owned(),
                (None, Some(_), _) => "NOT APPLIED".to_owned(),
                (None, None, _) => "-".to_owned(),
            };
            let endpoints =
                if row.direction == "inbound" { "-".into() } else { shown.endpoints.len().to_string() };
            t.row(vec![
                row.direction.clone(),
                row.service.clone(),
                row.port.clone(),
                shown.policy.clone(),
                shown.mode.clone(),
                shown.timeouts.clone(),
                shown.retries.clone(),
                shown.breaker.clone(),
                shown.bulkhead.clone(),
                endpoints,
                operator.clone(),
            ]);
            if operator == "DIFFERS"
                && let (Some(a), Some(b)) = (&row.sidecar, &row.operator)
            {
                for line in differences(a, b) {
                    t.detail(line);
                }
            }
        }
        out + &t.render()
    }

    fn healthy(&self) -> bool {
        self.verdict == Verdict::Match && self.sidecar.last_reload_error.is_none()
    }
}

fn version_text(v: &str) -> String {
    if v.ends_with('-') || v.is_empty() { "(unversioned: a local file)".into() } else { v.into() }
}

/// What differs between the sidecar's row `a` and the operator's `b`, one line each.
fn differences(a: &Summary, b: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, x: &str, y: &str| {
        if x != y {
            out.push(format!("{name}: sidecar {x}, operator {y}"));
        }
    };
    field("policy", &a.policy, &b.policy);
    field("mode", &a.mode, &b.mode);
    field("timeouts", &a.timeouts, &b.timeouts);
    field("retries", &a.retries, &b.retries);
    field("breaker", &a.breaker, &b.breaker);
    field("bulkhead", &a.bulkhead, &b.bulkhead);
    if a.endpoints != b.endpoints {
        out.push(format!(
            "endpoints: sidecar [{}], operator [{}]",
            a.endpoints.join(", "),
            b.endpoints.join(", ")
        ));
    }
    out
}
