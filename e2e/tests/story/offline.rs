//! The operator away: every replica scaled to zero. Callers keep the policy they had; a caller's
//! sidecar that crashes meanwhile comes back from the last good snapshot in its emptyDir (the
//! operator is not there to send one) and enforces it; a policy changed while the operator is
//! away waits; the operator back, everything converges: the change reaches the caller and the
//! status says so.

use super::{retries::retry_policy, *};

/// `generation observedGeneration reason sidecars` of policy `ns/name`.
async fn status_line(story: &Story, ns: &str, name: &str) -> Result<String, String> {
    story
        .kubectl
        .run([
            "get",
            "cpol",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration} {.status.conditions[?(@.type==\"Ready\")].reason} {.status.sidecars}",
        ])
        .await
        .map_err(|e| e.to_string())
}

/// The pid of the `breakwater-sidecar run` process in the network namespace `netns`.
fn sidecar_pid(netns: &str) -> anyhow::Result<u32> {
    let out = std::process::Command::new("ip").args(["netns", "pids", netns]).output()?;
    let mut seen = Vec::new();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        // The container runs the image's `/usr/local/bin/breakwater-sidecar`.
        let program = args.first().and_then(|a| a.rsplit('/').next()).unwrap_or_default();
        if program.starts_with("breakwater-sidecar") && args.get(1).is_some_and(|a| a == "run") {
            return Ok(pid);
        }
        seen.push(format!("{pid}: {}", args.join(" ")));
    }
    anyhow::bail!("no `breakwater-sidecar run` process in {netns}; its processes: {seen:?}")
}

/// The restart count of the caller's proxy container.
async fn proxy_restarts(client: &Client, ns: &str, pod: &str) -> anyhow::Result<i32> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns).get(pod).await?;
    Ok(pod
        .status
        .and_then(|s| s.init_container_statuses)
        .into_iter()
        .flatten()
        .find(|c| c.name == "breakwater-proxy")
        .map_or(0, |c| c.restart_count))
}

#[tokio::test]
async fn without_the_operator_callers_keep_their_policy_and_converge_when_it_returns() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let Shop { ns, caller, url } = shop(story, "offline").await?;
    let policy = "payments-from-checkout";

    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&retry_policy(&ns, 8))).await?;
    assert!(applied.success, "{}", applied.stderr);
    wait::until_ok("the retry policy to be programmed", TIMEOUT, || async {
        let line = status_line(story, &ns, policy).await?;
        if line == "1 1 Programmed 3" { Ok(()) } else { Err(line) }
    })
    .await?;

    // Every replica gone, as `kubectl scale` leaves it.
    let deployment = story.op.service_name();
    story.kubectl.run(["scale", "deployment", &deployment, "-n", NAMESPACE, "--replicas", "0"]).await?;
    story.op.gone(TIMEOUT).await?;
    // While it is away: any failure still brings it back (the other scenarios share it).
    let away = async {
        // Calls keep their retries (8 attempts at p = 0.5: more than 2 errors in 40 calls is a
        // 1-in-10^4 event; without them about 20 fail).
        let kept = calls(runner, &ns, &caller, &url, 40).await?;
        anyhow::ensure!(kept.errors <= 2, "the policy holds without the operator: {kept:?}");

        // The caller's sidecar crashes; the kubelet starts it again, and it has only its emptyDir.
        let netns = runner.netns(&ns, &caller).ok_or_else(|| anyhow::anyhow!("the caller has no netns"))?;
        let pid = sidecar_pid(&netns)?;
        breakwater_e2e::process::signal(pid, "KILL");
        wait::until_ok("the caller's proxy to be restarted and Ready", TIMEOUT, || async {
            let restarts = proxy_restarts(&client, &ns, &caller).await.map_err(|e| e.to_string())?;
            let again = sidecar_pid(&netns).map_err(|e| e.to_string())?;
            let ready = ready_pods(&client, &ns, "app=checkout", 1).await.is_ok();
            if restarts >= 1 && again != pid && ready { Ok(()) } else { Err(format!("{restarts} restarts")) }
        })
        .await?;
        let metrics = sidecar_metrics(&client, &ns, &caller).await?;
        anyhow::ensure!(
            metric_sum(&metrics, "breakwater_config_stream_connected", &[]) == 0.0,
            "the restarted sidecar has no operator to talk to:\n{metrics}"
        );
        let restarted = calls(runner, &ns, &caller, &url, 40).await?;
        anyhow::ensure!(
            restarted.errors <= 2,
            "the restarted sidecar enforces its last good snapshot: {restarted:?}"
        );

        // A change made while the operator is away is stored, not yet programmed.
        let changed = story.kubectl.output(["apply", "-f", "-"], Some(&retry_policy(&ns, 1))).await?;
        anyhow::ensure!(changed.success, "{}", changed.stderr);
        let waiting = calls(runner, &ns, &caller, &url, 20).await?;
        anyhow::ensure!(waiting.errors <= 2, "nobody programs the change yet: {waiting:?}");
        let line = status_line(story, &ns, policy).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(line.starts_with("2 1 "), "generation 2 stored, 1 observed: {line}");
        anyhow::Ok(())
    }
    .await;
    // The operator back: the change reaches the caller and the status says so.
    story.kubectl.run(["scale", "deployment", &deployment, "-n", NAMESPACE, "--replicas", "2"]).await?;
    story.op.ready_pods(2, TIMEOUT).await?;
    away?;
    wait::until_ok("the change to be programmed", TIMEOUT, || async {
        let line = status_line(story, &ns, policy).await?;
        if line == "2 2 Programmed 3" { Ok(()) } else { Err(line) }
    })
    .await?;
    let converged = calls(runner, &ns, &caller, &url, 40).await?;
    assert!(converged.errors >= 8, "one attempt again: the failures are back ({converged:?})");
    let metrics = sidecar_metrics(&client, &ns, &caller).await?;
    assert_eq!(metric_sum(&metrics, "breakwater_config_stream_connected", &[]), 1.0);
    Ok(())
}
