//! Reloading the configuration file when it changes, and on SIGHUP.
//!
//! The directory is watched, not the file: Kubernetes mounts ConfigMaps through a symlink
//! that is swapped atomically, which a watch on the file itself would miss.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Store;
use crate::drain::Signal;

/// Editors write a file in several steps; wait this long after the last event before reading.
const SETTLE: Duration = Duration::from_millis(100);

/// Watches `path` (and SIGHUP) and reloads `store` on every change until `drain` starts.
pub async fn watch_file(path: PathBuf, store: Arc<Store>, mut drain: Signal) -> anyhow::Result<()> {
    let dir =
        path.parent().map(PathBuf::from).filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| ".".into());
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full channel: a reload is already pending, which will read the latest file.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            // Shutting down: stop watching.
            _ = drain.draining() => return Ok(()),
            // Something in the directory changed.
            Some(()) = rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
            }
            // An operator asked for a reload.
            Some(()) = hup.recv() => tracing::info!("SIGHUP: reloading the configuration"),
        }
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                // Errors are recorded by the store (log, metric, /config).
                let _ = store.reload(&text);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the configuration file")
            }
        }
    }
}
