//! The `CommunicationPolicy` custom resource: what a platform team writes to govern the calls
//! made **to** one or more Services.
//!
//! The Rust types here are the single source of truth for the API: the CRD YAML in the chart is
//! generated from them (`crdgen`), their doc comments become the schema descriptions that
//! `kubectl explain` prints, and [`crate::validate`] enforces the same rules the schema and its
//! CEL expressions enforce at the API server.
//!
//! Optional fields stay optional in the stored object (`None` means "the documented default"),
//! so a policy round-trips unchanged; [`crate::EffectivePolicy`] is the same policy with every
//! default filled in, which is what sidecars enforce.

mod breaker;
mod bulkhead;
mod faults;
pub mod retries;
mod status;
mod target;
mod timeouts;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use self::{
    breaker::{BreakerScope, CircuitBreaker, FailureCondition, FailureRate},
    bulkhead::{Bulkhead, BulkheadLimits},
    faults::{FaultAbort, FaultDelay, FaultHeader, FaultMatch, Faults, MAX_FAULT_HEADERS},
    retries::{Backoff, GrpcCode, Retries, RetryBudget, RetryCondition, RetryOn},
    status::{
        CONDITION_ACCEPTED, CONDITION_CONFLICTED, CONDITION_FAULTS_INJECTED, CONDITION_READY,
        CommunicationPolicyStatus, ResolvedTarget, reasons,
    },
    target::{ROUTE_KIND, SERVICE_KIND, Source, TargetRef},
    timeouts::Timeouts,
};

/// The API group of every Breakwater resource.
pub const GROUP: &str = "breakwater.dev";
/// The API version of `CommunicationPolicy`.
pub const VERSION: &str = "v1alpha1";

/// How calls to the target Services must behave: timeouts, retries, circuit breaking and
/// bulkheads, enforced by the Breakwater sidecars of the callers (and, for `bulkhead.inbound`, of
/// the target itself), and faults injected on purpose. At least one of `timeouts`, `retries`,
/// `circuitBreaker`, `bulkhead` or `faults` must be set. When several policies select the same
/// Service, the one naming it in `targetRef.name` wins over one selecting it by label, then the
/// oldest, then the first by name; the others report a `Conflicted` condition naming the winner.
// The printer columns repeat `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[kube(
    group = "breakwater.dev",
    version = "v1alpha1",
    kind = "CommunicationPolicy",
    plural = "communicationpolicies",
    shortname = "cpol",
    category = "breakwater",
    namespaced,
    status = "CommunicationPolicyStatus",
    derive = "PartialEq",
    doc = "CommunicationPolicy sets how calls to a Service behave when it is slow or failing: \
           timeouts, retries with backoff and a budget, circuit breaking and bulkheads, enforced \
           by the Breakwater sidecars. See https://breakwater.dev/docs/api.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef.name",
        description = "The Service this policy governs (empty when it selects by label)"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        description = "Enforce, or DryRun (report only)"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the operator accepted the policy"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Resolved, NoMatchingTargets, Pending or Programmed"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.timeouts) || has(self.retries) || has(self.circuitBreaker) || has(self.bulkhead) || has(self.faults)"
).message("a policy must set at least one of timeouts, retries, circuitBreaker, bulkhead or faults"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.targetRef.kind) || self.targetRef.kind != 'HTTPRoute' || !has(self.bulkhead) || !has(self.bulkhead.inbound)"
).message("bulkhead.inbound is enforced by the target's own sidecar, which sees no routes: set it on a policy targeting the Service")
 .field_path(".bulkhead.inbound"))]
#[serde(rename_all = "camelCase")]
pub struct CommunicationPolicySpec {
    /// What this policy governs, in its own namespace: calls to a Service (by name), to the
    /// Services a label selector matches, or the calls an `HTTPRoute` (or one rule of it)
    /// matches. Where several apply to a call, the most specific wins: a route rule's policy,
    /// then the route's, then the Service's.
    pub target_ref: TargetRef,

    /// Which callers the policy applies to. A caller matches when it matches any entry. Omit to
    /// apply the policy to every Breakwater-injected caller that can reach the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub sources: Option<Vec<Source>>,

    /// Deadlines for connecting, for each attempt and for the whole call. Omit for the
    /// defaults: connect `1s`, idle `5m`, no request or per-attempt limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// When and how failed calls are retried. Omit to never retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,

    /// Stop sending calls to a failing endpoint (or Service) for a while, and fail fast instead.
    /// Omit for no circuit breaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,

    /// Bound the calls in flight and waiting, in the callers (outbound) and in the target's own
    /// sidecar (inbound). Omit for no bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<Bulkhead>,

    /// Delays and failures injected on purpose into a share of the calls (optionally only
    /// those carrying a tester's header), to try out how callers cope. Needs `enabled: true`;
    /// while on, the policy reports `FaultsInjected=True` and a Warning Event. Not injected in
    /// `DryRun`, which counts them instead. Omit for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Faults>,

    /// `Enforce` applies the policy. `DryRun` computes and reports every decision (metrics,
    /// trace events, logs) but refuses, cuts and retries nothing, so a policy can be rolled out
    /// safely. Default: `Enforce`.
    #[serde(default)]
    pub mode: Mode,
}

/// Whether a policy's decisions take effect.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Decisions take effect.
    #[default]
    Enforce,
    /// Decisions are reported but never change a call's outcome.
    DryRun,
}

impl CommunicationPolicySpec {
    /// Whether the policy applies to calls from a caller with this identity: always when
    /// `sources` is unset, else when any source matches.
    pub fn selects_caller(
        &self,
        namespace: &str,
        namespace_labels: &std::collections::BTreeMap<String, String>,
        pod_labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s.matches(namespace, namespace_labels, pod_labels)))
    }

    /// Whether the policy selects a Service named `name` with `labels` (in the policy's own
    /// namespace; the caller checks the namespace). A policy targeting a route selects none.
    pub fn selects_service(&self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        if self.target_ref.is_route() {
            return false;
        }
        match (&self.target_ref.name, &self.target_ref.selector) {
            (Some(n), _) => n == name,
            (None, Some(sel)) => crate::selector::matches(sel, labels),
            (None, None) => false,
        }
    }
}

impl CommunicationPolicy {
    /// The namespace, or `default` when unset (local files may omit it, as `kubectl apply`
    /// would default it).
    pub fn namespace_or_default(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// `namespace/name`, for messages and status.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace_or_default(), self.metadata.name.as_deref().unwrap_or_default())
    }
}
