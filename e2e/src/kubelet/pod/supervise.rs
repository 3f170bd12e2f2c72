//! Keeping containers running: exits, restarts with backoff, readiness probes, the pod's phase for
//! `restartPolicy: Never`/`OnFailure`, and the graceful stop.

use std::{net::Ipv4Addr, time::Duration};

use tokio::{process::Child, time::Instant};

use super::{Running, TICK, Worker, now};

impl Worker {
    /// One supervision round: exits, restarts, probes. Returns whether the status changed.
    pub(super) async fn supervise(&mut self) -> Result<bool, String> {
        let mut changed = false;
        let policy = self.restart_policy().to_owned();
        let ip = self.netns.as_ref().map(|n| n.ip).unwrap_or(Ipv4Addr::UNSPECIFIED);
        for (init, i) in
            (0..self.init.len()).map(|i| (true, i)).chain((0..self.containers.len()).map(|i| (false, i)))
        {
            if init && !self.is_sidecar(i) {
                continue;
            }
            let r = if init { &mut self.init[i] } else { &mut self.containers[i] };
            if let Some(child) = r.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let code = exit_code(status);
                tracing::debug!(container = %r.launch.name, code, "container exited");
                r.child = None;
                r.ready = false;
                r.terminated = Some((code, now()));
                let restart = init || policy == "Always" || (policy == "OnFailure" && code != 0);
                if restart {
                    r.restart_at = Some(Instant::now() + backoff(r.restarts));
                }
                changed = true;
            }
            if r.restart_at.is_some_and(|at| at <= Instant::now()) {
                r.restarts += 1;
                self.start(init, i)?;
                changed = true;
                continue;
            }
            let r = if init { &mut self.init[i] } else { &mut self.containers[i] };
            if r.child.is_some() && r.next_probe <= Instant::now() {
                let ready = r.launch.ready(ip).await;
                r.next_probe = Instant::now() + if ready { r.launch.probe_period() } else { TICK };
                if ready != r.ready {
                    r.ready = ready;
                    changed = true;
                }
            }
        }
        let all_ready = self.containers.iter().all(|c| c.ready)
            && (0..self.init.len()).filter(|&i| self.is_sidecar(i)).all(|i| self.init[i].ready);
        if self.conditions.get("Ready").map(|c| c.0) != Some(all_ready) {
            self.set_condition("ContainersReady", all_ready);
            self.set_condition("Ready", all_ready);
            changed = true;
        }
        // restartPolicy Never/OnFailure: the pod ends when every container has ended for good.
        let done = self
            .containers
            .iter()
            .all(|c| c.child.is_none() && c.terminated.is_some() && c.restart_at.is_none());
        if done && self.phase == "Running" {
            let failed = self.containers.iter().any(|c| c.terminated.as_ref().is_some_and(|t| t.0 != 0));
            self.phase = if failed { "Failed" } else { "Succeeded" };
            for r in self.init.iter_mut() {
                r.restart_at = None;
                if let Some(child) = r.child.as_mut() {
                    let _ = child.start_kill();
                }
            }
            changed = true;
        }
        Ok(changed)
    }
}

/// Waits for a container started by `Worker::start` to exit; returns its exit code.
pub(super) async fn wait_exit(r: &mut Running) -> i32 {
    let code = match r.child.as_mut() {
        Some(child) => child.wait().await.map(exit_code).unwrap_or(-1),
        None => -1,
    };
    r.child = None;
    r.terminated = Some((code, now()));
    code
}

/// SIGTERM to every running process at once, then up to `grace` for all to exit, then SIGKILL.
pub(super) async fn stop_all(list: &mut [Running], grace: Duration) {
    for r in list.iter() {
        if let Some(pid) = r.child.as_ref().and_then(Child::id) {
            crate::process::signal(pid, "TERM");
        }
    }
    let deadline = Instant::now() + grace;
    for r in list.iter_mut() {
        r.restart_at = None;
        if let Some(mut child) = r.child.take()
            && tokio::time::timeout_at(deadline, child.wait()).await.is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Exit code as the kubelet reports it: the code, or 128 + the signal number.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

/// Restart backoff: 1s, 2s, 4s, ... capped at 10s (the kubelet's starts at 10s and caps at 5min,
/// too slow for tests).
pub(super) fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(1u64 << restarts.min(4)).min(Duration::from_secs(10))
}
