//! Who writes status: the holder of a Lease, elected with `kube-lease-manager` (server-side
//! apply on the Lease, so two replicas can never both take it).
//!
//! Every replica indexes, compiles and serves; only the holder writes policy status and Events,
//! so two replicas never fight over a condition. A replica that stops renewing (killed, or
//! partitioned from the API server) loses the lease after its duration and another takes over;
//! a replica that shuts down releases it at once, but the others only look again when the
//! lease they last saw would expire, so a handover takes at most the lease duration either way.
//!
//! Caveat (kube-lease-manager's model): a holder that cannot reach the API server to renew
//! still believes it holds the lease until a renewal fails; it cannot write status then either.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};

use crate::{Error, Result};

/// This replica's view of the lease.
#[derive(Debug)]
pub struct Leader {
    rx: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    lease: String,
}

impl Leader {
    /// Joins the election for Lease `namespace/name` as `identity` (creating the Lease if
    /// needed).
    pub async fn join(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
        renew_before: Duration,
    ) -> Result<Leader> {
        let lease = format!("{namespace}/{name}");
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(duration.as_secs().max(2))
            .with_grace(renew_before.as_secs().clamp(1, duration.as_secs().max(2) - 1))
            .with_field_manager(format!("breakwater-operator/{identity}"))
            .build()
            .await
            .map_err(|source| Error::Lease { lease: lease.clone(), source })?;
        let (rx, task) = manager.watch().await;
        Ok(Leader { rx, task, lease })
    }

    /// Whether this replica holds the lease now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// A receiver of the lease state (true while held).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Releases the lease (when held) and stops, within `bound`. Every receiver from
    /// [`Leader::subscribe`] must be dropped first: the manager releases when the last one goes.
    pub async fn release(self, bound: Duration) {
        let Leader { rx, task, lease } = self;
        let held = *rx.borrow();
        drop(rx);
        match tokio::time::timeout(bound, task).await {
            Ok(Ok(Ok(_))) => {
                if held {
                    tracing::info!(%lease, "lease released");
                }
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(%lease, error = %e, "releasing the lease failed; it expires on its own")
            }
            Ok(Err(e)) => tracing::warn!(%lease, error = %e, "the lease task panicked"),
            Err(_) => {
                tracing::warn!(%lease, ?bound, "releasing the lease took too long; it expires on its own")
            }
        }
    }
}
