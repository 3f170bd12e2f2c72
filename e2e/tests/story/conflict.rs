//! Two policies for the same Service: the older wins, the newer says so in its `Conflicted`
//! condition naming the winner, and the caller gets the winner's behaviour; the winner deleted,
//! the other takes over.

use super::{retries::retry_policy, *};

/// `status reason message` of condition `Conflicted` of policy `ns/name`.
async fn conflicted(story: &Story, ns: &str, name: &str) -> Result<String, String> {
    story
        .kubectl
        .run([
            "get",
            "cpol",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Conflicted\")]['status','reason','message']}",
        ])
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn of_two_conflicting_policies_the_loser_names_the_winner() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let Shop { ns, caller, url } = shop(story, "conflict").await?;

    // The older: 8 attempts. The newer, for the same Service: no retries.
    let older = retry_policy(&ns, 8);
    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&older)).await?;
    assert!(applied.success, "{}", applied.stderr);
    programmed(story, &ns, "payments-from-checkout").await?;
    // creationTimestamp counts whole seconds: created within the same second, the two would be
    // "as old" and the tie broken by name. The newer is created in a later second.
    let created: k8s_openapi::jiff::Timestamp = story
        .kubectl
        .run([
            "get",
            "cpol",
            "payments-from-checkout",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.metadata.creationTimestamp}",
        ])
        .await?
        .trim()
        .parse()?;
    wait::until_ok("a second later than the older policy's creation", TIMEOUT, || async {
        let now = k8s_openapi::jiff::Timestamp::now();
        if now.as_second() > created.as_second() { Ok(()) } else { Err(now.to_string()) }
    })
    .await?;
    let newer = retry_policy(&ns, 1).replace("name: payments-from-checkout", "name: payments-no-retries");
    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&newer)).await?;
    assert!(applied.success, "{}", applied.stderr);

    let expected =
        format!("True Overridden payments: {}/payments-from-checkout wins (it is older)", ns.name());
    let seen = wait::until_ok("the newer policy to report the conflict", TIMEOUT, || async {
        let line = conflicted(story, &ns, "payments-no-retries").await?;
        if line.starts_with("True") { Ok(line) } else { Err(line) }
    })
    .await?;
    assert_eq!(seen, expected);
    assert_eq!(
        conflicted(story, &ns, "payments-from-checkout").await.map_err(anyhow::Error::msg)?,
        "False NoConflict in force wherever it applies",
        "the winner is not in conflict"
    );
    let describe = story.kubectl.run(["describe", "cpol", "payments-no-retries", "-n", ns.name()]).await?;
    assert!(describe.contains("payments-from-checkout wins"), "kubectl describe shows who wins:\n{describe}");

    // The winner's retries are what the caller gets (more than 2 errors in 40: 1 in 10^4).
    let winner = calls(runner, &ns, &caller, &url, 40).await?;
    assert!(winner.errors <= 2, "the older policy is in force: {winner:?}");

    // The winner deleted: the other is in force, and says it no longer conflicts.
    story.kubectl.run(["delete", "cpol", "payments-from-checkout", "-n", ns.name()]).await?;
    wait::until_ok("the remaining policy to report no conflict", TIMEOUT, || async {
        let line = conflicted(story, &ns, "payments-no-retries").await?;
        if line.starts_with("False NoConflict") { Ok(()) } else { Err(line) }
    })
    .await?;
    programmed(story, &ns, "payments-no-retries").await?;
    let taken_over = calls(runner, &ns, &caller, &url, 40).await?;
    assert!(taken_over.errors >= 8, "no retries now: about half fail ({taken_over:?})");
    Ok(())
}
