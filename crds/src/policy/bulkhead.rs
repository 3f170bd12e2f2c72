//! `spec.bulkhead`: bound the calls in flight so one slow dependency cannot take every thread,
//! connection and byte of memory of its callers (outbound), and so one Service is protected
//! from all of its callers at once (inbound, in the target's own sidecar).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// Concurrency limits on the caller side, the target side, or both. At least one is set.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("has(self.outbound) || has(self.inbound)")
    .message("a bulkhead must set outbound, inbound or both"))]
#[serde(rename_all = "camelCase")]
pub struct Bulkhead {
    /// Limits enforced in each caller's sidecar, per target Service. Omit for no caller-side
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<BulkheadLimits>,

    /// Limits enforced in each target pod's own sidecar, over calls from all callers. Omit for
    /// no target-side limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<BulkheadLimits>,
}

/// One bulkhead. A call beyond `maxConcurrentRequests` waits in a queue of at most `maxQueued`,
/// for at most `maxQueueWait`; beyond that it is refused at once with 503 and
/// `breakwater-error: bulkhead-full` (gRPC: UNAVAILABLE).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.maxQueueWait) || (has(self.maxQueued) && self.maxQueued > 0)")
    .message("maxQueueWait needs a queue: set maxQueued above 0").field_path(".maxQueueWait"))]
#[serde(rename_all = "camelCase")]
pub struct BulkheadLimits {
    /// Most calls in flight at once, between 1 and 100000.
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_requests: u32,

    /// Most calls waiting for a slot, between 0 and 100000. Default: `0` (no queue: refuse at
    /// once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_queued: Option<u32>,

    /// Longest time a call waits in the queue before it is refused. Only with `maxQueued` above
    /// 0. Default: `1s` when there is a queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_wait: Option<Duration>,

    /// Most connections (outbound: to the target's endpoints together; inbound: from all
    /// callers), between 1 and 100000; also the bulkhead for opaque TCP traffic. Default: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections: Option<u32>,
}
