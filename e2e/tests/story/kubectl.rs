//! The commands of the README, typed with the real kubectl: the examples applied, the printer
//! columns, describe, explain, server-side apply, and a server-side dry run of an invalid
//! example refused with the field's path.

use super::*;

#[tokio::test]
async fn the_examples_apply_and_read_back_with_kubectl() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let kubectl = &story.kubectl;
    let examples = breakwater_e2e::bins::workspace_root().join("examples");
    let ns = story.cluster.namespace("kubectl").await?;
    let example = |name: &str| -> anyhow::Result<String> {
        // The examples name their namespace; the test gives them its own.
        let text = std::fs::read_to_string(examples.join(name))?;
        Ok(text
            .lines()
            .map(|l| {
                if l.starts_with("  namespace:") {
                    format!("  namespace: {}", ns.name())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"))
    };

    let applied = kubectl.output(["apply", "-f", "-"], Some(&example("checkout-to-payments.yaml")?)).await?;
    assert!(applied.success, "{}{}", applied.stdout, applied.stderr);
    assert_eq!(applied.stdout.trim(), "communicationpolicy.breakwater.dev/payments-from-checkout created");

    // `kubectl get cpol`: the printer columns, filled in once the operator has looked at it.
    let table = wait::until_ok("the printer columns to show the status", TIMEOUT, || async {
        let out = kubectl.run(["get", "cpol", "-n", ns.name()]).await.map_err(|e| e.to_string())?;
        let row = out.lines().nth(1).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
        // No Service `payments` in this namespace: accepted, but nothing to program.
        if row.starts_with("payments-from-checkout payments Enforce True ") { Ok(out) } else { Err(out) }
    })
    .await?;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TARGET", "MODE", "ACCEPTED", "READY", "AGE"], "{table}");

    let described = kubectl.run(["describe", "cpol", "payments-from-checkout", "-n", ns.name()]).await?;
    for want in ["Kind:         CommunicationPolicy", "Target Ref:", "Per Try:", "Conditions:", "Accepted"] {
        assert!(described.contains(want), "describe shows {want:?}:\n{described}");
    }

    let explained = kubectl.run(["explain", "communicationpolicy.spec.retries.budget"]).await?;
    assert!(explained.contains("ratio") && explained.contains("minPerSecond"), "{explained}");
    assert!(explained.contains("GROUP:      breakwater.dev"), "{explained}");

    // Server-side apply of another example, then of the same one again (no change).
    let ssa = kubectl
        .output(["apply", "--server-side", "-f", "-"], Some(&example("reporting-bulkhead.yaml")?))
        .await?;
    assert!(ssa.success && ssa.stdout.contains("serverside-applied"), "{}{}", ssa.stdout, ssa.stderr);
    let again = kubectl
        .output(["apply", "--server-side", "-f", "-"], Some(&example("reporting-bulkhead.yaml")?))
        .await?;
    assert!(again.success, "{}", again.stderr);
    let managers = kubectl
        .run([
            "get",
            "cpol",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.items[*].metadata.managedFields[*].manager}",
            "--show-managed-fields",
        ])
        .await?;
    assert!(managers.contains("kubectl"), "kubectl owns what it applied: {managers}");

    // An invalid example, dry-run on the server: refused, the message names the field.
    let invalid = std::fs::read_to_string(examples.join("invalid").join("attempts-too-many.yaml"))?;
    let refused =
        kubectl.output(["apply", "--dry-run=server", "-n", ns.name(), "-f", "-"], Some(&invalid)).await?;
    assert!(!refused.success, "an invalid policy is refused: {}", refused.stdout);
    assert!(refused.stderr.contains("spec.retries.attempts"), "{}", refused.stderr);
    let listed = kubectl.run(["get", "cpol", "-n", ns.name(), "-o", "name"]).await?;
    assert!(!listed.contains("attempts-too-many"), "a dry run creates nothing: {listed}");
    Ok(())
}
