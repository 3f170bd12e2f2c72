//! `spec.targetRef` and `spec.sources`: which calls a policy governs.
//!
//! `targetRef` follows Kubernetes policy attachment (Gateway API GEP-713, as in
//! `BackendTLSPolicy`): a `group`/`kind`/`name` triple in the policy's own namespace, naming a
//! Service or an `HTTPRoute` (with `sectionName`, one rule of it). We add a label `selector`
//! for governing several Services with one policy, because platform teams often want one rule
//! for "every Service of tier=backend".
//!
//! The more specific target wins: a policy on a route's rule beats one on the whole route,
//! which beats one on the Service the route is attached to, for the calls that rule matches.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The target: one Service by `name`, every Service whose labels match `selector`, or one
/// `HTTPRoute` (optionally one of its rules, by `sectionName`), in the policy's own namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("has(self.name) != has(self.selector)")
    .message("exactly one of targetRef.name and targetRef.selector must be set"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.selector) || (has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)")
    .message("selector must not be empty (it would select every Service; name the Service instead)")
    .field_path(".selector"))]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.group) ? self.group : '') == ((has(self.kind) ? self.kind : 'Service') == 'HTTPRoute' ? 'gateway.networking.k8s.io' : '')")
    .message("a target is a Service (group \"\") or an HTTPRoute (group gateway.networking.k8s.io)")
    .field_path(".group"))]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.kind) ? self.kind : 'Service') != 'Service' || !has(self.name) || (size(self.name) <= 63 && self.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$'))")
    .message("a Service name is a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter")
    .field_path(".name"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.kind) ? self.kind : 'Service') != 'HTTPRoute' || !has(self.selector)")
    .message("an HTTPRoute is targeted by name; selector selects Services only")
    .field_path(".selector"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.kind) ? self.kind : 'Service') != 'HTTPRoute' || !has(self.ports)")
    .message("ports are for Service targets; an HTTPRoute's parentRefs say which ports it governs")
    .field_path(".ports"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.kind) ? self.kind : 'Service') == 'HTTPRoute' || !has(self.sectionName)")
    .message("sectionName names a rule of an HTTPRoute; a Service target has none")
    .field_path(".sectionName"))]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API group of the target: `""` (the core group) for a Service,
    /// `gateway.networking.k8s.io` for an HTTPRoute. Default: `""`.
    #[serde(default)]
    #[schemars(length(max = 253), regex(pattern = r"^(gateway\.networking\.k8s\.io)?$"))]
    pub group: String,

    /// Kind of the target: `Service` or `HTTPRoute`. Default: `Service`.
    #[serde(default = "service_kind")]
    #[schemars(regex(pattern = r"^(Service|HTTPRoute)$"))]
    pub kind: String,

    /// Name of the target, in the policy's namespace: a Service (a DNS-1035 label, at most 63
    /// characters) or an HTTPRoute. Omit when `selector` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,

    /// A label selector: the policy governs every Service in its namespace whose labels match.
    /// An empty selector is refused (it would match every Service; name them instead). Omit
    /// when `name` is set. Services only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Service ports (the `port` of the Service, not the target port) to which the policy
    /// applies. Omit to apply to every port. Services only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(range(min = 1, max = 65535)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub ports: Option<Vec<i32>>,

    /// With an HTTPRoute target: the `name` of one of its rules, so the policy governs only the
    /// calls that rule matches. Omit for every rule of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub section_name: Option<String>,
}

/// `kind` of a Service target.
pub const SERVICE_KIND: &str = "Service";
/// `kind` of an HTTPRoute target.
pub const ROUTE_KIND: &str = "HTTPRoute";

fn service_kind() -> String {
    SERVICE_KIND.to_owned()
}

impl TargetRef {
    /// Targets one Service by name.
    pub fn service(name: impl Into<String>) -> Self {
        Self {
            group: String::new(),
            kind: service_kind(),
            name: Some(name.into()),
            selector: None,
            ports: None,
            section_name: None,
        }
    }

    /// Targets one HTTPRoute by name, or one of its rules.
    pub fn route(name: impl Into<String>, rule: Option<&str>) -> Self {
        Self {
            group: crate::gateway::GROUP.to_owned(),
            kind: ROUTE_KIND.to_owned(),
            name: Some(name.into()),
            selector: None,
            ports: None,
            section_name: rule.map(str::to_owned),
        }
    }

    /// Whether the target is an HTTPRoute (or a rule of one) rather than Services.
    pub fn is_route(&self) -> bool {
        self.kind == ROUTE_KIND
    }

    /// The HTTPRoute this reference names, and the rule when `sectionName` is set.
    pub fn route_name(&self) -> Option<(&str, Option<&str>)> {
        self.is_route().then_some(())?;
        Some((self.name.as_deref()?, self.section_name.as_deref()))
    }

    /// Whether this reference names its Service (which wins precedence over a selector).
    pub fn is_by_name(&self) -> bool {
        self.name.is_some()
    }

    /// Whether the policy applies to calls to `port` of a matching Service.
    pub fn applies_to_port(&self, port: u16) -> bool {
        match &self.ports {
            None => true,
            Some(ports) => ports.iter().any(|p| *p == i32::from(port)),
        }
    }
}

/// One group of callers. A caller matches when it matches every field that is set.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("!(has(self.__namespace__) && has(self.namespaceSelector))")
    .message("set at most one of namespace and namespaceSelector"))]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.__namespace__) || has(self.namespaceSelector) || has(self.podSelector)")
    .message("a source must set namespace, namespaceSelector or podSelector"))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The callers' namespace (a DNS-1123 label). Omit for any namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,

    /// Callers in namespaces whose labels match. Omit for any namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Callers whose pod labels match (in the namespaces chosen above, or in any namespace).
    /// Omit for every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

impl Source {
    /// Whether a caller in `namespace` (with `namespace_labels`) whose pod has `pod_labels`
    /// matches every field of this source that is set.
    pub fn matches(
        &self,
        namespace: &str,
        namespace_labels: &std::collections::BTreeMap<String, String>,
        pod_labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.namespace_selector.as_ref().is_none_or(|s| crate::selector::matches(s, namespace_labels))
            && self.pod_selector.as_ref().is_none_or(|s| crate::selector::matches(s, pod_labels))
    }
}
