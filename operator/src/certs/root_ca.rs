//! The `breakwater-root-ca` ConfigMap in every namespace (but the system ones), kept on the
//! current CA by the lease holder: when a namespace appears (the index says so), when the CA
//! changes, on taking the lease, and every five minutes (a ConfigMap someone deleted or changed
//! comes back). A namespace whose write failed is tried again after a few seconds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Certs;
use crate::index::Index;

/// Namespaces that never get the root CA.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// How often every namespace is written again.
const REFRESH: Duration = Duration::from_secs(300);
/// How soon a failed namespace is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Publishes the root CA; see the module docs.
pub struct RootCaPublisher {
    /// The API.
    pub client: Client,
    /// The namespaces (and their changes).
    pub index: Index,
    /// The CA now, and each replacement.
    pub certs: watch::Receiver<Arc<Certs>>,
}

impl RootCaPublisher {
    /// Runs until `stop` (or until the election or the certificates stop).
    pub async fn run(self, mut leader: watch::Receiver<bool>, stop: CancellationToken) {
        let RootCaPublisher { client, index, mut certs } = self;
        let mut namespaces = index.namespace_changes();
        let mut done: HashSet<String> = HashSet::new();
        let mut refresh = tokio::time::interval(REFRESH);
        let mut failed = false;
        tokio::select! {
            // Namespaces listed, and everything else: the first round can look.
            _ = index.wait_ready() => {}
            _ = stop.cancelled() => return,
        }
        loop {
            tokio::select! {
                // Start over: republish everywhere (the first tick is at once).
                _ = refresh.tick() => done.clear(),
                // A namespace came, went or changed.
                r = namespaces.changed() => if r.is_err() { return },
                // The lease changed hands.
                r = leader.changed() => if r.is_err() { return },
                // A new CA (renewed, or replaced in the Secret): publish it everywhere.
                r = certs.changed() => if r.is_err() { return } else { done.clear() },
                // A namespace failed last time.
                _ = tokio::time::sleep(RETRY), if failed => {}
                // Shutting down.
                _ = stop.cancelled() => return,
            }
            failed = false;
            let ca_pem = certs.borrow_and_update().ca_pem.clone();
            if !*leader.borrow_and_update() {
                continue;
            }
            for ns in index.namespaces.state() {
                let name = ns.metadata.name.clone().unwrap_or_default();
                if SYSTEM_NAMESPACES.contains(&name.as_str())
                    || ns.metadata.deletion_timestamp.is_some()
                    || done.contains(&name)
                {
                    continue;
                }
                match super::publish_root_ca(&client, &name, &ca_pem).await {
                    Ok(()) => {
                        done.insert(name);
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(namespace = %name, error = %e, "publishing the root CA failed; retrying");
                    }
                }
            }
        }
    }
}
