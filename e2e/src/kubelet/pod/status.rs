//! What the pod reports through the `status` subresource: phase, addresses, conditions and one
//! status per container, written as a merge patch (the lists are ours; the scheduler's
//! `PodScheduled` is repeated in them).

use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::process::Child;

use super::{Running, Worker, now};

impl Worker {
    pub(super) fn set_condition(&mut self, kind: &'static str, value: bool) {
        match self.conditions.get(kind) {
            Some((old, _)) if *old == value => {}
            _ => {
                self.conditions.insert(kind, (value, now()));
            }
        }
    }

    pub(super) fn status(&self) -> Value {
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(kind, (value, at))| {
                json!({"type": kind, "status": if *value { "True" } else { "False" }, "lastTransitionTime": at})
            })
            .collect();
        let statuses = |list: &[Running]| -> Vec<Value> { list.iter().map(container_status).collect() };
        let ip = self.pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let host = self.ctx.network.gateway().to_string();
        json!({"status": {
            "phase": self.phase,
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "podIP": ip,
            "podIPs": ip.as_ref().map(|ip| vec![json!({"ip": ip})]).unwrap_or_default(),
            "startTime": self.start_time,
            "conditions": conditions,
            "initContainerStatuses": statuses(&self.init),
            "containerStatuses": statuses(&self.containers),
        }})
    }

    /// Writes the status through the `status` subresource (a merge patch: the lists are ours).
    /// Tried a few times: a lost update could leave a pod reported Pending for good.
    pub(super) async fn publish(&self) {
        const ATTEMPTS: u32 = 3;
        let patch = self.status();
        for attempt in 1..=ATTEMPTS {
            let result = self
                .api
                .patch_status(&self.pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            match result {
                Ok(_) => return,
                // The pod is gone: nothing to report to.
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) if attempt == ATTEMPTS => {
                    tracing::warn!(pod = %self.key, error = %e, "updating pod status failed");
                }
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await
                }
            }
        }
    }
}

fn container_status(r: &Running) -> Value {
    let state = if let Some((reason, message)) = &r.waiting {
        json!({"waiting": {"reason": reason, "message": message}})
    } else if let (Some(_), Some(at)) = (&r.child, &r.started_at) {
        json!({"running": {"startedAt": at}})
    } else if let Some((code, at)) = &r.terminated {
        json!({"terminated": {
            "exitCode": code,
            "reason": if *code == 0 { "Completed" } else { "Error" },
            "startedAt": r.started_at.as_ref().unwrap_or(at),
            "finishedAt": at,
        }})
    } else {
        json!({"waiting": {"reason": "PodInitializing"}})
    };
    let pid = r.child.as_ref().and_then(Child::id);
    let mut status = json!({
        "name": r.launch.name,
        "image": r.launch.image,
        "imageID": r.launch.image_id,
        "ready": r.ready,
        "started": r.child.is_some(),
        "restartCount": r.restarts,
        "state": state,
    });
    if let Some(pid) = pid {
        status["containerID"] = json!(format!("e2e://{pid}"));
    }
    status
}
