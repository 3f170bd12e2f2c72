//! What a policy's status should say: a pure function of the policy, the other policies and the
//! Services of its namespace, and the status it has now.
//!
//! - `Accepted`: `Valid`, or `Invalid` with every problem and its field path — for what the
//!   API server's schema and CEL rules cannot catch, and for objects that cannot be read at all;
//! - `Ready`: `NoMatchingTargets` (with what was looked for), `Resolved` (targets found, the
//!   policy is in the snapshots), and — once sidecars acknowledge snapshots — `Pending` or
//!   `Programmed` from a [`Delivery`] count;
//! - `Conflicted`: `Overridden` when another policy wins precedence on some target port (the
//!   message names it and why), else `NoConflict`;
//! - `FaultsInjected`, only with `spec.faults`: `Enabled` (calls fail on purpose, and what
//!   fails), or `False` with `Disabled` or `DryRun`;
//! - `targets` (with `governedBy`, and `overriddenBy`: the policies on routes, or on a route's
//!   rules, that take over part of the target's calls), `effective` (the policy with defaults)
//!   and `observedGeneration`.
//!
//! A policy targeting an `HTTPRoute` resolves to the route (and its rule, with `sectionName`)
//! when the route exists, is valid and has that rule; it conflicts with the policies naming
//! the same route and rule; and one naming the whole route is overridden, rule by rule, by
//! those naming a rule (rule > route > Service, [`select::for_rule`]).
//!
//! Precedence here ignores `sources`: two policies selecting the same Service port conflict
//! for the callers both select, and the loser is reported even if some callers only it selects
//! still get it. A condition's `lastTransitionTime` moves only when its status does, so a
//! restarted operator recomputes exactly the status that is there and writes nothing.

use breakwater_crds::{
    CONDITION_ACCEPTED, CONDITION_CONFLICTED, CONDITION_FAULTS_INJECTED, CONDITION_READY,
    CommunicationPolicy, CommunicationPolicyStatus, EffectivePolicy, ROUTE_KIND, ResolvedTarget,
    gateway::{self, HTTPRoute},
    precedence, reasons,
    snapshot::select::{self, ServiceRef},
};
use k8s_openapi::{
    api::core::v1::Service,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::ResourceExt;

pub use crate::delivery::Delivery;

/// Kubernetes caps a condition message at 32768 bytes.
const MAX_MESSAGE: usize = 32 * 1024;

/// What a policy's status is computed from: the objects of its namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// The policies (the one whose status it is may be among them).
    pub peers: &'a [&'a CommunicationPolicy],
    /// The Services.
    pub services: &'a [&'a Service],
    /// The `HTTPRoute`s (none when the Gateway API is not installed).
    pub routes: &'a [&'a HTTPRoute],
}

/// What a policy resolved to: its targets, why some that matched cannot be governed, and
/// the conflicts it loses.
#[derive(Default)]
struct Resolution {
    targets: Vec<ResolvedTarget>,
    missing: Vec<String>,
    overridden: Vec<String>,
}

/// The status `policy` should have; see the module docs.
pub fn desired(
    policy: &CommunicationPolicy,
    scope: &Scope<'_>,
    delivery: Option<Delivery>,
    previous: Option<&CommunicationPolicyStatus>,
    now: &Time,
) -> CommunicationPolicyStatus {
    let generation = policy.metadata.generation;
    let conditions = Conditions { previous, generation, now };
    let effective =
        match breakwater_crds::validate(policy).and_then(|()| EffectivePolicy::resolve(&policy.spec)) {
            Ok(e) => e,
            Err(errors) => {
                let message = format!("the policy breaks {} rule(s): {errors}", errors.0.len());
                return not_accepted(&conditions, message);
            }
        };

    let me = policy.full_name();
    let mut candidates: Vec<&CommunicationPolicy> = scope
        .peers
        .iter()
        .copied()
        .filter(|p| p.full_name() != me && breakwater_crds::validate(p).is_ok())
        .collect();
    candidates.push(policy);
    let routes: Vec<&HTTPRoute> =
        scope.routes.iter().copied().filter(|r| gateway::validate(r).is_ok()).collect();

    let Resolution { targets, missing, overridden } = match policy.spec.target_ref.route_name() {
        Some((route, rule)) => route_target(policy, &candidates, &routes, route, rule),
        None => service_targets(policy, &candidates, scope.services, &routes),
    };
    let ready = if targets.is_empty() {
        let looked_for = match (&policy.spec.target_ref.name, &policy.spec.target_ref.selector) {
            (Some(name), _) if policy.spec.target_ref.is_route() => {
                format!("no HTTPRoute named {name} in namespace {}", policy.namespace_or_default())
            }
            (Some(name), _) => {
                format!("no Service named {name} in namespace {}", policy.namespace_or_default())
            }
            (None, _) => format!(
                "no Service in namespace {} matches spec.targetRef.selector",
                policy.namespace_or_default()
            ),
        };
        // A Service that matched but cannot be governed says more than "none found".
        let message = if missing.is_empty() { looked_for } else { missing.join("; ") };
        conditions.make(CONDITION_READY, false, reasons::NO_MATCHING_TARGETS, message)
    } else {
        let names = list(targets.iter().map(|t| match (&t.kind, &t.section_name) {
            (Some(kind), Some(rule)) => format!("{kind} {} (rule {rule})", t.name),
            (Some(kind), None) => format!("{kind} {}", t.name),
            (None, _) => t.name.clone(),
        }));
        match &delivery {
            None => conditions.make(
                CONDITION_READY,
                true,
                reasons::RESOLVED,
                format!("compiled for callers of {names}"),
            ),
            Some(d) if d.acknowledged >= d.expected => conditions.make(
                CONDITION_READY,
                true,
                reasons::PROGRAMMED,
                format!("{} of {} sidecars enforce this generation", d.acknowledged, d.expected),
            ),
            Some(d) => {
                let mut message =
                    format!("{} of {} sidecars enforce this generation", d.acknowledged, d.expected);
                for crate::delivery::Refusal { pod, why } in &d.refused {
                    message.push_str(&format!("; {pod} refused it: {why}"));
                }
                conditions.make(CONDITION_READY, false, reasons::PENDING, message)
            }
        }
    };
    let conflicted = if overridden.is_empty() {
        conditions.make(
            CONDITION_CONFLICTED,
            false,
            reasons::NO_CONFLICT,
            "in force wherever it applies".into(),
        )
    } else {
        conditions.make(CONDITION_CONFLICTED, true, reasons::OVERRIDDEN, overridden.join("; "))
    };
    let mut all = vec![
        conditions.make(CONDITION_ACCEPTED, true, reasons::VALID, "the policy is valid".into()),
        ready,
        conflicted,
    ];
    all.extend(faults_condition(policy, &effective, &conditions));
    CommunicationPolicyStatus {
        observed_generation: generation,
        conditions: all,
        targets,
        sidecars: delivery.as_ref().map(|d| d.acknowledged),
        expected_sidecars: delivery.as_ref().map(|d| d.expected),
        effective: Some(effective),
    }
}

/// The Services `policy` (targeting Services) resolves to, among `candidates` (the valid
/// policies of its namespace, itself included), with the route policies overriding it there.
fn service_targets(
    policy: &CommunicationPolicy,
    candidates: &[&CommunicationPolicy],
    services: &[&Service],
    routes: &[&HTTPRoute],
) -> Resolution {
    let me = policy.full_name();
    let namespace = policy.namespace_or_default();
    let mut out = Resolution::default();
    let mut sorted_services: Vec<&Service> = services.to_vec();
    sorted_services.sort_by_key(|s| s.name_any());
    for service in sorted_services {
        let name = service.name_any();
        let labels = service.labels();
        if !policy.spec.selects_service(&name, labels) {
            continue;
        }
        let Some(spec) = service.spec.as_ref() else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            out.missing
                .push(format!("Service {name} is of type ExternalName, which has no endpoints to govern"));
            continue;
        }
        let ports: Vec<u16> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        let covered: Vec<u16> =
            ports.iter().copied().filter(|p| policy.spec.target_ref.applies_to_port(*p)).collect();
        if covered.is_empty() {
            out.missing.push(format!(
                "Service {name} has none of the ports in spec.targetRef.ports (it has {})",
                list(ports.iter())
            ));
            continue;
        }
        let sorted = select::selecting(
            candidates.iter().copied(),
            &ServiceRef { name: &name, namespace, labels },
            None,
        );
        let mut in_force = Vec::new();
        let mut governed_by = None;
        for port in &covered {
            match select::in_force(&sorted, Some(*port)) {
                Some(winner) if winner.full_name() == me => in_force.push(i32::from(*port)),
                Some(winner) if governed_by.is_none() => {
                    out.overridden.push(format!(
                        "{name}: {} wins ({})",
                        winner.full_name(),
                        why(winner, policy)
                    ));
                    governed_by = Some(winner.full_name());
                }
                Some(_) | None => {}
            }
        }
        // The route policies of this namespace taking over the calls its routes match.
        let mut overridden_by = Vec::new();
        if !in_force.is_empty() {
            let this = crate::key::ObjKey::new(namespace, &name);
            for route in routes.iter().filter(|r| {
                r.namespace_or_default() == namespace
                    && crate::compile::routes::service_parents(r).any(|parent| parent == this)
            }) {
                let route_name = route.name_any();
                for rule in &route.spec.rules {
                    let winners = select::for_rule(
                        candidates.iter().copied(),
                        namespace,
                        &route_name,
                        rule.name.as_deref(),
                        None,
                    );
                    let Some(winner) = winners.first() else { continue };
                    let line = match &winner.spec.target_ref.section_name {
                        Some(rule) => {
                            format!("{ROUTE_KIND} {route_name} rule {rule}: {}", winner.full_name())
                        }
                        None => format!("{ROUTE_KIND} {route_name}: {}", winner.full_name()),
                    };
                    if !overridden_by.contains(&line) {
                        overridden_by.push(line);
                    }
                }
            }
        }
        out.targets.push(ResolvedTarget {
            name,
            ports: in_force,
            governed_by,
            overridden_by,
            ..Default::default()
        });
    }
    out
}

/// The route (rule) `policy` targets, among `routes` (the valid ones of its namespace).
fn route_target(
    policy: &CommunicationPolicy,
    candidates: &[&CommunicationPolicy],
    routes: &[&HTTPRoute],
    name: &str,
    rule: Option<&str>,
) -> Resolution {
    let me = policy.full_name();
    let namespace = policy.namespace_or_default();
    let mut out = Resolution::default();
    let Some(route) = routes.iter().find(|r| r.namespace_or_default() == namespace && r.name_any() == name)
    else {
        // An invalid route is among the Gateway API's objects but not among `routes`.
        out.missing.push(format!(
            "no accepted HTTPRoute named {name} in namespace {namespace} (a route that breaks a rule is never \
             applied: its status says why)"
        ));
        return out;
    };
    let names: Vec<&str> = route.spec.rules.iter().filter_map(|r| r.name.as_deref()).collect();
    if let Some(rule) = rule.filter(|r| !names.contains(r)) {
        out.missing.push(format!(
            "HTTPRoute {name} has no rule named {rule} (its named rules: {})",
            list(names.iter())
        ));
        return out;
    }
    let mut governed_by = None;
    let mut overridden_by = Vec::new();
    let covered = route.spec.rules.iter().map(|r| r.name.as_deref()).filter(|r| rule.is_none() || *r == rule);
    for r in covered {
        let winners = select::for_rule(candidates.iter().copied(), namespace, name, r, None);
        let Some(winner) = winners.first().filter(|w| w.full_name() != me) else { continue };
        if winner.spec.target_ref.section_name.as_deref() == rule {
            // As specific as this one: a conflict, lost.
            if governed_by.is_none() {
                out.overridden.push(format!(
                    "HTTPRoute {name}: {} wins ({})",
                    winner.full_name(),
                    why(winner, policy)
                ));
                governed_by = Some(winner.full_name());
            }
        } else if let Some(r) = r {
            overridden_by.push(format!("rule {r}: {}", winner.full_name()));
        }
    }
    out.targets.push(ResolvedTarget {
        kind: Some(ROUTE_KIND.to_owned()),
        name: name.to_owned(),
        section_name: rule.map(str::to_owned),
        ports: Vec::new(),
        governed_by,
        overridden_by,
    });
    out
}

/// The status of a policy object that could not even be read as a `CommunicationPolicy`
/// (`error` says where); `generation` is its `metadata.generation`.
pub fn unreadable(
    generation: Option<i64>,
    error: &str,
    previous: Option<&CommunicationPolicyStatus>,
    now: &Time,
) -> CommunicationPolicyStatus {
    let conditions = Conditions { previous, generation, now };
    not_accepted(&conditions, format!("the policy cannot be read: {error}"))
}

/// `FaultsInjected`, on a policy that writes `spec.faults` down: `True` while its sidecars
/// make calls fail on purpose (the controller also sends a Warning Event then), with what they
/// inject; `False` when the block is disabled, or only counted in `DryRun`.
fn faults_condition(
    policy: &CommunicationPolicy,
    effective: &EffectivePolicy,
    conditions: &Conditions<'_>,
) -> Option<Condition> {
    policy.spec.faults.as_ref()?;
    let Some(f) = &effective.faults else {
        let why = "spec.faults.enabled is false: no fault is injected".into();
        return Some(conditions.make(CONDITION_FAULTS_INJECTED, false, reasons::FAULTS_DISABLED, why));
    };
    let mut what = Vec::new();
    if let Some(d) = &f.delay {
        what.push(format!("a {:?} delay for {}% of calls", d.fixed_delay, d.percentage));
    }
    if let Some(a) = &f.abort {
        let kind = match (a.http_status, a.grpc_status) {
            (Some(status), _) => format!("HTTP {status}"),
            (None, Some(code)) => {
                format!("gRPC {}", serde_json::to_value(code).unwrap_or_default().as_str().unwrap_or("?"))
            }
            (None, None) => "a reset".to_owned(),
        };
        what.push(format!("{kind} for {}% of calls", a.percentage));
    }
    let mut message = what.join(" and ");
    if !f.headers.is_empty() {
        let headers: Vec<String> = f.headers.iter().map(|h| format!("{}: {}", h.name, h.value)).collect();
        message.push_str(&format!(" carrying {}", headers.join(", ")));
    }
    Some(if effective.mode == breakwater_crds::Mode::DryRun {
        let message = format!("DryRun counts, and does not inject, {message}");
        conditions.make(CONDITION_FAULTS_INJECTED, false, reasons::FAULTS_DRY_RUN, message)
    } else {
        let message = format!("calls fail on purpose: {message}");
        conditions.make(CONDITION_FAULTS_INJECTED, true, reasons::FAULTS_ENABLED, message)
    })
}

fn not_accepted(conditions: &Conditions<'_>, message: String) -> CommunicationPolicyStatus {
    CommunicationPolicyStatus {
        observed_generation: conditions.generation,
        conditions: vec![
            conditions.make(CONDITION_ACCEPTED, false, reasons::INVALID, message),
            conditions.make(
                CONDITION_READY,
                false,
                reasons::NOT_ACCEPTED,
                "nothing enforces a policy that is not accepted".into(),
            ),
        ],
        ..Default::default()
    }
}

/// Why `winner` beats `loser` (see [`breakwater_crds::precedence`]).
fn why(winner: &CommunicationPolicy, loser: &CommunicationPolicy) -> &'static str {
    let (w, l) = (winner.spec.target_ref.is_by_name(), loser.spec.target_ref.is_by_name());
    if w && !l {
        "it names the Service; this policy selects it by label"
    } else if winner.metadata.creation_timestamp != loser.metadata.creation_timestamp
        && precedence::compare(winner, loser).is_lt()
    {
        "it is older"
    } else {
        "as specific and as old; it comes first by namespace/name"
    }
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

struct Conditions<'a> {
    previous: Option<&'a CommunicationPolicyStatus>,
    generation: Option<i64>,
    now: &'a Time,
}

impl Conditions<'_> {
    /// A condition; its `lastTransitionTime` is kept from the previous one of the same type
    /// when the status did not change.
    fn make(&self, type_: &str, status: bool, reason: &str, mut message: String) -> Condition {
        let status = if status { "True" } else { "False" }.to_owned();
        let previous = self.previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => self.now.clone(),
        };
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE - 3;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        }
    }
}

/// The conditions whose status or reason changed from `before` to `after`: what deserves an
/// Event.
pub fn transitions<'a>(
    before: Option<&CommunicationPolicyStatus>,
    after: &'a CommunicationPolicyStatus,
) -> Vec<&'a Condition> {
    after
        .conditions
        .iter()
        .filter(|c| {
            let old = before.and_then(|b| b.conditions.iter().find(|o| o.type_ == c.type_));
            old.is_none_or(|o| o.status != c.status || o.reason != c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests;
