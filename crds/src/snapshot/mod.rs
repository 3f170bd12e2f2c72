//! The sidecar snapshot: everything one pod's sidecar enforces, as one versioned document.
//!
//! The operator compiles it per pod from policies, Services, EndpointSlices and the pod's
//! identity; the sidecar's local mode compiles the same document from a file. Both feed it to
//! the sidecar through one path, so what a file can say and what a cluster can say never drift
//! apart.
//!
//! What the document must be able to say, and the local file model could not:
//! - **per-port endpoint sets**: Service port 80 may lead to pod port 8080 and port 9090 to
//!   9000, and a named `targetPort` may resolve to different numbers on different pods;
//! - **a Service with no ready endpoint** is still a Service: it stays in the snapshot with an
//!   empty set, and calls to it are refused with `no-healthy-endpoints` instead of the whole
//!   snapshot being invalid;
//! - **a pod backing several Services**: [`Snapshot::inbound`] lists each of the pod's ports
//!   with every Service that routes to it and the one inbound policy in force there;
//! - **evolution**: a sidecar accepts a snapshot from a newer operator that carries fields it
//!   does not know (they are ignored and counted, see [`decode`]), and refuses with a clear
//!   error one whose [`Snapshot::schema`] it does not support, keeping the one it runs.
//!
//! Compatibility rule for whoever changes these types: adding an optional field is compatible
//! (old sidecars ignore it); removing or renaming a field, changing its meaning, or adding an
//! enum value an old sidecar cannot parse (a new retry condition, say) needs a new
//! [`SCHEMA_VERSION`].
//!
//! Policies are carried **resolved** ([`AppliedPolicy`]: the effective policy with defaults,
//! per port, after precedence), so a sidecar never re-runs selection or precedence and cannot
//! disagree with the operator about them; [`select`] is the one place both compile with.

mod wire;

pub mod routes;
pub mod select;
pub mod stream;

use std::{collections::BTreeMap, fmt, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

pub use self::wire::{DecodeError, Decoded, decode, encode};
use crate::EffectivePolicy;

/// The wire format's major version. A sidecar refuses snapshots with any other value.
pub const SCHEMA_VERSION: u32 = 1;

/// One pod's sidecar configuration.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The wire format's major version ([`SCHEMA_VERSION`] when written by this build).
    pub schema: u32,
    /// Which content this is; see [`SnapshotVersion`].
    #[serde(default)]
    pub version: SnapshotVersion,
    /// The pod this snapshot was compiled for.
    #[serde(default)]
    pub identity: Identity,
    /// The Services this pod's calls are governed for, sorted by namespace and name. A call to
    /// a destination not listed here is passed through unchanged. Shared (`Arc`) because many
    /// pods' snapshots hold the same Service with the same policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Arc<ServiceSnapshot>>,
    /// This pod's own ports that Services route to, sorted by port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<InboundPort>,
}

/// Which content a snapshot carries.
///
/// `hash` identifies the content (a SHA-256 prefix of everything but the version, see
/// [`Snapshot::content_hash`]): two snapshots with the same hash enforce the same thing, so a
/// sidecar can acknowledge "I run `hash`" and a restarted operator can tell that nothing
/// changed. `counter` orders versions for people and logs: it grows by one with each new
/// content for a pod and starts, in each operator process, from the Unix time in milliseconds,
/// so it does not go backwards when the operator restarts or another replica takes over.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotVersion {
    /// Grows with every new content.
    #[serde(default)]
    pub counter: u64,
    /// Identifies the content.
    #[serde(default)]
    pub hash: String,
}

impl fmt::Display for SnapshotVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.counter, self.hash)
    }
}

/// Who the pod is: what policies' `sources` are matched against, and what traces name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Pod name (empty in local files that do not say).
    #[serde(default)]
    pub name: String,
    /// Pod namespace.
    #[serde(default)]
    pub namespace: String,
    /// Pod UID, when compiled for a pod in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The pod's ServiceAccount, when compiled for a pod in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels of the pod's namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_labels: BTreeMap<String, String>,
}

/// A Service this pod may call under a policy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSnapshot {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// A headless Service (no cluster IP): callers address its endpoints directly, and a call to
    /// an endpoint's address goes to that endpoint only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// Its ports, each with its own endpoints and policy, sorted by port (the catch-all for
    /// unlisted ports, if any, last).
    #[serde(default)]
    pub ports: Vec<PortSnapshot>,
    /// Policies that select this Service for this caller but are in force on none of its
    /// ports (they lose precedence), by `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<String>,
}

impl ServiceSnapshot {
    /// `name.namespace`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    /// SHA-256 of this Service's canonical JSON.
    pub fn content_hash(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(serde_json::to_vec(self).expect("a Service snapshot serializes to JSON")).into()
    }
}

/// One port of a Service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortSnapshot {
    /// The Service port callers use; absent for "every other port" (local files that list no
    /// ports, or ports no port-limited policy names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The port's name in the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Service port's `appProtocol`, when set (`http`, `kubernetes.io/h2c`, `grpc`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Virtual addresses (cluster IP:port, one per IP family) routed to this port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    /// Ready endpoints, `ip:port` with the port resolved on each pod. Empty: none is ready,
    /// and calls are refused with `no-healthy-endpoints`.
    #[serde(default)]
    pub endpoints: Vec<EndpointSnapshot>,
    /// The policy in force for calls to this port, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AppliedPolicy>,
    /// HTTP routes (`HTTPRoute`s attached to this port): when present, an HTTP request goes
    /// where the first matching route sends it, with that rule's policy, and one that matches
    /// none is answered 404. Opaque TCP connections still go to this port's endpoints. (A
    /// sidecar older than routes ignores this field and sends every call to the port.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<routes::HttpRoutes>,
}

/// One endpoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSnapshot {
    /// Where to connect.
    pub address: SocketAddr,
    /// The pod behind it, when known (for logs and `/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A policy as applied to one port: resolved, with defaults.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    /// `namespace/name`.
    pub name: String,
    /// The policy's `metadata.generation` this was compiled from (sidecars acknowledge it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The policy with every default filled in.
    pub effective: EffectivePolicy,
}

/// One of this pod's own ports that Services route to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InboundPort {
    /// The pod's port (a Service's target port, resolved).
    pub port: u16,
    /// Every Service that routes to it, as `name.namespace`, sorted.
    #[serde(default)]
    pub services: Vec<String>,
    /// The policy whose `bulkhead.inbound` (and mode) applies to calls arriving here: of the
    /// policies in force for those Services, the first by precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AppliedPolicy>,
    /// The `appProtocol` the Services' ports leading here declare (the first, by Service, when
    /// they differ), when any does: what the sidecar expects on this port instead of detecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl Snapshot {
    /// An empty snapshot of the current schema for `identity`.
    pub fn new(identity: Identity) -> Self {
        Snapshot { schema: SCHEMA_VERSION, identity, ..Default::default() }
    }

    /// The content hash: 16 hex digits of a SHA-256 over everything but [`Snapshot::version`]
    /// — the schema, the identity, each Service's own hash ([`ServiceSnapshot::content_hash`])
    /// in order, and the inbound ports — so that a snapshot of many shared Services hashes
    /// without serializing them again. Lists are sorted by whoever builds a snapshot, so equal
    /// content hashes equally.
    pub fn content_hash(&self) -> String {
        self.content_hash_with(self.services.iter().map(|s| s.content_hash()))
    }

    /// [`Snapshot::content_hash`] with the Services' hashes given (in the order of
    /// [`Snapshot::services`]), for a builder that already has them.
    pub fn content_hash_with(&self, service_hashes: impl IntoIterator<Item = [u8; 32]>) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.schema.to_be_bytes());
        h.update(serde_json::to_vec(&self.identity).expect("an identity serializes to JSON"));
        for s in service_hashes {
            h.update(s);
        }
        h.update(serde_json::to_vec(&self.inbound).expect("inbound ports serialize to JSON"));
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Every policy this snapshot enforces (outbound, on route rules and inbound), by
    /// `namespace/name`, with the generation compiled, deduplicated and sorted.
    pub fn policies(&self) -> BTreeMap<String, Option<i64>> {
        let ports = || self.services.iter().flat_map(|s| s.ports.iter());
        let outbound = ports().filter_map(|p| p.policy.as_ref());
        let rules =
            ports().flat_map(|p| p.routes.iter().flat_map(|r| &r.rules)).filter_map(|r| r.policy.as_ref());
        let inbound = self.inbound.iter().filter_map(|p| p.policy.as_ref());
        outbound
            .chain(rules)
            .chain(inbound)
            .filter(|p| !p.name.starts_with(routes::ROUTE_ONLY))
            .map(|p| (p.name.clone(), p.generation))
            .collect()
    }
}

#[cfg(test)]
mod tests;
