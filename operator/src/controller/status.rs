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
//! - `targets` (with `governedBy`), `effective` (the policy with defaults) and
//!   `observedGeneration`.
//!
//! Precedence here ignores `sources`: two policies selecting the same Service port conflict
//! for the callers both select, and the loser is reported even if some callers only it selects
//! still get it. A condition's `lastTransitionTime` moves only when its status does, so a
//! restarted operator recomputes exactly the status that is there and writes nothing.

use breakwater_crds::{
    CONDITION_ACCEPTED, CONDITION_CONFLICTED, CONDITION_READY, CommunicationPolicy,
    CommunicationPolicyStatus, EffectivePolicy, ResolvedTarget, precedence, reasons,
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

/// The status `policy` should have; see the module docs. `peers` are the policies of its
/// namespace (it may be among them), `services` the Services of its namespace.
pub fn desired(
    policy: &CommunicationPolicy,
    peers: &[&CommunicationPolicy],
    services: &[&Service],
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
    let valid: Vec<&CommunicationPolicy> = peers
        .iter()
        .copied()
        .filter(|p| p.full_name() != me && breakwater_crds::validate(p).is_ok())
        .collect();
    let mut candidates = valid.clone();
    candidates.push(policy);

    let mut targets = Vec::new();
    let mut missing = Vec::new();
    let mut overridden = Vec::new();
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
            missing.push(format!("Service {name} is of type ExternalName, which has no endpoints to govern"));
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
            missing.push(format!(
                "Service {name} has none of the ports in spec.targetRef.ports (it has {})",
                list(ports.iter())
            ));
            continue;
        }
        let namespace = policy.namespace_or_default();
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
                    overridden.push(format!("{name}: {} wins ({})", winner.full_name(), why(winner, policy)));
                    governed_by = Some(winner.full_name());
                }
                Some(_) | None => {}
            }
        }
        targets.push(ResolvedTarget { name, ports: in_force, governed_by });
    }

    let ready = if targets.is_empty() {
        let looked_for = match (&policy.spec.target_ref.name, &policy.spec.target_ref.selector) {
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
        let names = list(targets.iter().map(|t| &t.name));
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
    CommunicationPolicyStatus {
        observed_generation: generation,
        conditions: vec![
            conditions.make(CONDITION_ACCEPTED, true, reasons::VALID, "the policy is valid".into()),
            ready,
            conflicted,
        ],
        targets,
        sidecars: delivery.as_ref().map(|d| d.acknowledged),
        expected_sidecars: delivery.as_ref().map(|d| d.expected),
        effective: Some(effective),
    }
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
