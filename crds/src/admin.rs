//! Diagnostics as JSON: what the sidecar's admin endpoints `/config` and `/breakers` answer, and
//! the operator's `/debug/snapshots` (what it compiled for each pod, and what the sidecars
//! connected to that replica applied); what `kubectl breakwater config`, `breakers` and
//! `status` read. One set of types for both sides, so the two cannot drift apart.
//!
//! Every document names its [`API_VERSION`] and its `kind`. The compatibility rule is the
//! snapshot's: adding an optional field is compatible (readers ignore fields they do not know);
//! removing or renaming one, or changing its meaning, needs a new [`API_VERSION`], and a reader
//! refuses a document whose `apiVersion` it does not know with a message that names both.

use serde::{Deserialize, Serialize};

use crate::snapshot::{Snapshot, SnapshotVersion};

/// The version of these documents.
pub const API_VERSION: &str = "breakwater.dev/admin/v1";
/// `kind` of `/config`.
pub const KIND_CONFIG: &str = "SidecarConfig";
/// `kind` of `/breakers`.
pub const KIND_BREAKERS: &str = "SidecarBreakers";
/// `kind` of the operator's `/debug/snapshots`.
pub const KIND_DELIVERIES: &str = "OperatorDeliveries";

/// Which sidecar answered.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarInfo {
    /// Its version (`breakwater-sidecar --version`).
    pub version: String,
}

/// `/config`: what the sidecar enforces now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    /// [`API_VERSION`].
    pub api_version: String,
    /// [`KIND_CONFIG`].
    pub kind: String,
    /// Which sidecar.
    pub sidecar: SidecarInfo,
    /// Configurations applied since the sidecar started, from 1.
    pub version: u64,
    /// Where the snapshot in force came from, and when.
    pub snapshot: SnapshotOrigin,
    /// The configuration in force.
    pub config: EnforcedConfig,
    /// The last configuration refused (the one in force stayed), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<ReloadError>,
}

/// Where a snapshot came from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOrigin {
    /// Its version (the operator's counter and content hash; empty in local mode).
    pub version: SnapshotVersion,
    /// `stream` (the operator), `disk` (the last good one, kept over a restart) or `file`.
    pub source: String,
    /// When it was applied, Unix seconds.
    pub received_at_unix: u64,
}

/// The configuration in force: the snapshot, and the sidecar's own settings (listeners, limits,
/// telemetry), which readers other than the sidecar treat as opaque.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedConfig {
    /// What it enforces.
    pub snapshot: Snapshot,
    /// Settings that are valid but can never take effect.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The sidecar's own settings.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// A configuration the sidecar refused.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReloadError {
    /// When, Unix seconds.
    pub at_unix: u64,
    /// Every problem, one line each.
    pub problems: Vec<String>,
}

/// `/breakers`: the live state of every target's breakers, bulkhead and retry budget.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BreakersView {
    /// [`API_VERSION`].
    pub api_version: String,
    /// [`KIND_BREAKERS`].
    pub kind: String,
    /// Which sidecar.
    pub sidecar: SidecarInfo,
    /// Every governed target: outbound Service ports (and, for a headless Service, each
    /// endpoint), then the pod's own inbound ports.
    pub targets: Vec<TargetState>,
}

/// One target: a Service port as this pod calls it, or one of this pod's own ports.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetState {
    /// `outbound` (calls this pod makes) or `inbound` (calls to this pod).
    pub direction: String,
    /// The Service, `name.namespace` (inbound: the first Service routing to the port).
    pub service: String,
    /// The Service port (inbound: the pod's port); absent for "every other port".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A headless Service's endpoint this target is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_endpoint: Option<String>,
    /// The policy in force, `namespace/name` (absent: none, calls pass through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Its generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// `Enforce` or `DryRun`.
    pub mode: String,
    /// Circuit breakers: one for the Service (`endpoint` is `*`) or one per endpoint.
    #[serde(default)]
    pub breakers: Vec<BreakerState>,
    /// The bulkhead, when the policy sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadState>,
    /// The retry budget, when the policy retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetState>,
}

/// One circuit breaker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BreakerState {
    /// The endpoint `ip:port`, or `*` for the Service's breaker.
    pub endpoint: String,
    /// `Closed`, `HalfOpen` or `Open`.
    pub state: String,
    /// Failures in a row so far (Closed).
    pub consecutive_failures: u32,
    /// Calls in the sliding window (Closed).
    pub window_calls: u64,
    /// Failures in the sliding window.
    pub window_failures: u64,
    /// How many times it opened since the sidecar started (or the breaker's settings changed).
    pub trips: u64,
    /// How long the current (or next) open period lasts, milliseconds.
    pub open_duration_ms: u64,
}

/// A bulkhead's occupancy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BulkheadState {
    /// Calls in flight now.
    pub in_flight: usize,
    /// At most this many.
    pub max_concurrent: usize,
    /// Calls waiting for a slot now.
    pub queued: usize,
    /// At most this many wait.
    pub max_queued: usize,
    /// How long a call may wait, milliseconds.
    pub max_queue_wait_ms: u64,
}

/// A retry budget's settings and headroom.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetState {
    /// Retries allowed per request.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_per_second: u32,
    /// How long a request counts, seconds.
    pub window_seconds: u64,
    /// Retries the budget would allow now (0: spent, retries are refused).
    pub available: u64,
}

/// The operator's `/debug/snapshots`: every pod one replica compiled a snapshot for, and what
/// the sidecars streaming from that replica applied. A sidecar streams from one replica at a
/// time, so a reader asks every replica and takes `applied` from the one it is connected to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveriesView {
    /// [`API_VERSION`].
    pub api_version: String,
    /// [`KIND_DELIVERIES`].
    pub kind: String,
    /// The replica that answered (its pod name).
    pub replica: String,
    /// Every pod with a compiled snapshot or a stream, by namespace and name.
    pub pods: Vec<PodDelivery>,
}

/// One pod's snapshot as one replica knows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodDelivery {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// What the operator compiled for it now. The counter differs between replicas; the hash
    /// does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled: Option<SnapshotVersion>,
    /// Whether its sidecar streams from this replica.
    pub connected: bool,
    /// What that sidecar applied last (on this replica's stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<SnapshotVersion>,
}

/// Reads an operator's `/debug/snapshots` answer, checking its version first.
pub fn read_deliveries(body: &[u8]) -> Result<DeliveriesView, ReadError> {
    read(body, KIND_DELIVERIES)
}

/// Why a document could not be read as one of these.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Another version, or not one of these documents at all.
    #[error(
        "it answered apiVersion {found:?}, kind {kind:?}; this reader knows {API_VERSION} {expected} (is it another version than this tool?)"
    )]
    Version {
        /// What it said.
        found: String,
        /// Its kind.
        kind: String,
        /// The kind wanted.
        expected: &'static str,
    },
    /// Not JSON, or not the expected shape.
    #[error("its answer is not a {expected} document: {source}")]
    Shape {
        /// The kind wanted.
        expected: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a `/config` answer, checking its version first.
pub fn read_config(body: &[u8]) -> Result<ConfigView, ReadError> {
    read(body, KIND_CONFIG)
}

/// Reads a `/breakers` answer, checking its version first.
pub fn read_breakers(body: &[u8]) -> Result<BreakersView, ReadError> {
    read(body, KIND_BREAKERS)
}

fn read<T: serde::de::DeserializeOwned>(body: &[u8], expected: &'static str) -> Result<T, ReadError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        #[serde(default)]
        api_version: String,
        #[serde(default)]
        kind: String,
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|source| ReadError::Shape { expected, source })?;
    // An older sidecar answered without a version (`/breakers` was a bare list).
    let head: Head = serde_json::from_value(value.clone())
        .unwrap_or(Head { api_version: String::new(), kind: String::new() });
    if head.api_version != API_VERSION || head.kind != expected {
        return Err(ReadError::Version { found: head.api_version, kind: head.kind, expected });
    }
    serde_json::from_value(value).map_err(|source| ReadError::Shape { expected, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_version_is_named_not_misread() {
        let e = read_breakers(b"[{\"endpoint\": \"*\", \"state\": \"Open\"}]").expect_err("old shape");
        assert!(e.to_string().contains("apiVersion \"\""), "{e}");
        let e = read_config(br#"{"apiVersion": "breakwater.dev/admin/v2", "kind": "SidecarConfig"}"#)
            .expect_err("newer");
        assert!(
            e.to_string().contains("breakwater.dev/admin/v2") && e.to_string().contains(API_VERSION),
            "{e}"
        );
        let e = read_config(b"<html>").expect_err("not json");
        assert!(e.to_string().contains("not a SidecarConfig document"), "{e}");
    }

    #[test]
    fn a_document_round_trips() {
        let view = BreakersView {
            api_version: API_VERSION.into(),
            kind: KIND_BREAKERS.into(),
            sidecar: SidecarInfo { version: "0.1.0".into() },
            targets: vec![TargetState {
                direction: "outbound".into(),
                service: "payments.shop".into(),
                port: Some(80),
                pinned_endpoint: None,
                policy: Some("shop/payments".into()),
                generation: Some(3),
                mode: "Enforce".into(),
                breakers: vec![],
                bulkhead: Some(BulkheadState {
                    in_flight: 2,
                    max_concurrent: 10,
                    queued: 0,
                    max_queued: 5,
                    max_queue_wait_ms: 100,
                }),
                retry_budget: None,
            }],
        };
        let text = serde_json::to_vec(&view).expect("serializes");
        assert_eq!(read_breakers(&text).expect("reads"), view);
    }
}
