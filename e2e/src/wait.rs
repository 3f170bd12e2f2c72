//! Waiting on conditions: poll with a deadline, never sleep as synchronization.
//!
//! A poll returns `Ok(Some(value))` when the condition holds, `Ok(None)` when it does not yet,
//! and `Err` for a failure worth retrying (the API server restarting, a port not yet open). The
//! last observation is kept so a timeout says what the harness saw, not just that it gave up.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::time::Instant;

use crate::{Error, Result};

/// How often [`until`] polls. Small, because what we wait on (a process listening, a controller
/// acting) usually takes tens of milliseconds and tests should not idle.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` every [`POLL_INTERVAL`] until it yields a value or `timeout` passes.
pub async fn until<T, E, F, Fut>(what: impl Into<String>, timeout: Duration, mut check: F) -> Result<T>
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<Option<T>, E>>,
{
    let what = what.into();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last = String::from("(nothing yet)");
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => last = String::from("condition not met"),
            Ok(Err(e)) => last = format!("{e:?}"),
            Err(_) => {}
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(Error::Timeout { what, waited: start.elapsed(), last });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`until`], with a predicate that records what it saw: `Err(observation)` means "not yet".
pub async fn until_ok<T, F, Fut>(what: impl Into<String>, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    until(what, timeout, || {
        let fut = check();
        async move { fut.await.map(Some) }
    })
    .await
}

/// Blocking poll for `Drop` impls and other synchronous code: `check` returns true when done.
/// Returns false if it did not within `timeout`.
pub fn blocking_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    const STEP: Duration = Duration::from_millis(20);
    let rounds = timeout.as_millis().div_ceil(STEP.as_millis()).max(1);
    for _ in 0..rounds {
        if check() {
            return true;
        }
        std::thread::sleep(STEP);
    }
    check()
}
