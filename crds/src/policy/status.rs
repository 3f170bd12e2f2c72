//! `status`: what the operator made of a policy.
//!
//! Conditions use the standard `metav1.Condition` shape so `kubectl wait
//! --for=condition=Accepted` and every dashboard that reads conditions work unchanged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

use crate::EffectivePolicy;

/// Condition type: the policy is valid and the operator compiled it.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// Condition type: the compiled policy reached every sidecar that must enforce it.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: another policy wins precedence for at least one target; the message names it.
pub const CONDITION_CONFLICTED: &str = "Conflicted";
/// Condition type, present only on a policy with `spec.faults`: `True` while its sidecars inject
/// faults into real calls (a Warning: this policy makes calls fail on purpose).
pub const CONDITION_FAULTS_INJECTED: &str = "FaultsInjected";

/// Condition reasons, CamelCase as Kubernetes conventions ask. Tests and dashboards match on
/// them, so they are API: add, never rename.
pub mod reasons {
    /// `Accepted=True`: the policy is valid and compiled.
    pub const VALID: &str = "Valid";
    /// `Accepted=False`: the policy breaks a rule the API server's schema cannot check; the
    /// message names the field.
    pub const INVALID: &str = "Invalid";
    /// `Ready=True`: every target Service was found and the policy is compiled into the
    /// snapshots of the sidecars it concerns.
    pub const RESOLVED: &str = "Resolved";
    /// `Ready=False`: no Service matches `targetRef` (yet), or the HTTPRoute (or its rule)
    /// it names does not exist or is not accepted.
    pub const NO_MATCHING_TARGETS: &str = "NoMatchingTargets";
    /// `Ready=False`: the policy is not accepted, so nothing enforces it.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    /// `Ready=True`: every sidecar that must enforce the policy acknowledged its current
    /// generation (reported once sidecars acknowledge snapshots).
    pub const PROGRAMMED: &str = "Programmed";
    /// `Ready=False`: some sidecars that must enforce the policy have not acknowledged it yet.
    pub const PENDING: &str = "Pending";
    /// `Conflicted=True`: another policy wins precedence on at least one target port; the
    /// message names it and why.
    pub const OVERRIDDEN: &str = "Overridden";
    /// `Conflicted=False`: this policy is in force wherever it applies.
    pub const NO_CONFLICT: &str = "NoConflict";
    /// `FaultsInjected=True`: `spec.faults.enabled` is true and the policy is enforced.
    pub const FAULTS_ENABLED: &str = "Enabled";
    /// `FaultsInjected=False`: `spec.faults` is written down with `enabled: false`.
    pub const FAULTS_DISABLED: &str = "Disabled";
    /// `FaultsInjected=False`: faults are enabled but the policy is in `DryRun`, which only
    /// counts the faults it would inject.
    pub const FAULTS_DRY_RUN: &str = "DryRun";
}

/// The observed state of a `CommunicationPolicy`, written by the operator.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CommunicationPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Accepted` (valid and compiled), `Ready` (delivered to every sidecar that enforces it) and
    /// `Conflicted` (another policy wins for some target; the message names it), each with a
    /// CamelCase reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The Services (or the HTTPRoute) this policy resolved to, whether it is the one in force
    /// for each, and where a more specific policy takes over part of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<ResolvedTarget>,

    /// How many sidecars run this policy's current generation (acknowledged it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<u32>,

    /// How many sidecars must run it: the pods whose snapshot holds it. `Ready` is `True` when
    /// `sidecars` reaches this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sidecars: Option<u32>,

    /// The policy as enforced, with every default filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<EffectivePolicy>,
}

/// One Service (or HTTPRoute) a policy resolved to.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedTarget {
    /// `HTTPRoute` for a route; omitted for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,

    /// The Service's (or route's) name, in the policy's namespace.
    pub name: String,

    /// The route's rule, when the policy names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,

    /// The Service ports the policy applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,

    /// The policy in force for this target when it is not this one (precedence: a policy
    /// naming the target beats a selector, then the oldest, then the first by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governed_by: Option<String>,

    /// The more specific policies that govern part of this target's calls instead of this
    /// one: those on the HTTPRoutes attached to this Service (`HTTPRoute orders: shop/p`), or
    /// on rules of this route (`rule get: shop/p`). A rule's policy beats its route's, which
    /// beats its Service's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridden_by: Vec<String>,
}
