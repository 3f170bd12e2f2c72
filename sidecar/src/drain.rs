//! Graceful shutdown: one signal that every listener and connection watches, and a tracker of
//! every task that must finish before the process exits.
//!
//! On SIGTERM `main` calls [`Drain::start`]: listeners stop accepting, HTTP connections finish
//! their in-flight requests and close (idle keep-alive connections close at once), and
//! [`Drain::wait`] returns when all are done or the grace period ends, reporting what was cut.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// The owner of the shutdown signal.
#[derive(Debug, Clone)]
pub struct Drain {
    tx: watch::Sender<bool>,
    tracker: TaskTracker,
}

/// A handle that learns when draining starts.
#[derive(Debug, Clone)]
pub struct Signal(watch::Receiver<bool>);

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain that has not started.
    pub fn new() -> Self {
        Self { tx: watch::channel(false).0, tracker: TaskTracker::new() }
    }

    /// A handle for listeners and connections.
    pub fn signal(&self) -> Signal {
        Signal(self.tx.subscribe())
    }

    /// Tracks `task` so [`Drain::wait`] waits for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Starts draining.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Waits until every tracked task ended, or `grace` passed. Returns how many tasks were still
    /// running at the deadline (they are cut when the process exits).
    pub async fn wait(&self, grace: Duration) -> usize {
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

impl Signal {
    /// Resolves once draining has started (at once if it already has).
    pub async fn draining(&mut self) {
        // An error means the Drain was dropped: nothing will ever drain, so stop too.
        let _ = self.0.wait_for(|d| *d).await;
    }

    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}
