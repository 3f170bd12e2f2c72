//! `kubectl breakwater`, found by the real kubectl's plugin discovery (the workspace's
//! `kubectl-breakwater` first on PATH, as `cargo install --path kubectl` leaves it), on the
//! story's release: `check` all PASS on the healthy install, then a named FAIL with its hint
//! and exit status 1 for each break a platform team meets (a pod in a labelled namespace without
//! its sidecar, the operator scaled to 0, a wrong `caBundle`, the CRD deleted), each repaired
//! the way the hint says, and `check` healthy again; `status`, `check --pre`, and the errors of
//! an unreachable cluster and a namespace without policies.

use breakwater_e2e::helm::Output;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};

use super::*;

const CRD: &str = "communicationpolicies.breakwater.dev";

/// Waits until `kubectl breakwater check` exits 0 and returns what it printed.
async fn healthy(kubectl: &Kubectl, why: &str) -> anyhow::Result<String> {
    Ok(wait::until_ok(format!("`kubectl breakwater check` to pass {why}"), TIMEOUT, || async {
        let out = plugin(kubectl, &["check"]).await.map_err(|e| e.to_string())?;
        if out.code == Some(0) { Ok(out.stdout) } else { Err(format!("{}{}", out.stdout, out.stderr)) }
    })
    .await?)
}

/// `kubectl breakwater check` found a problem: exit status 1, a FAIL line containing `fail` and,
/// right under it, a hint containing `hint`.
fn failed(out: &Output, fail: &str, hint: &str) {
    assert_eq!(out.code, Some(1), "check exits 1 on a FAIL:\n{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL  ") && l.contains(fail))
        .unwrap_or_else(|| panic!("a FAIL naming {fail:?}:\n{}", out.stdout));
    let next = lines.get(at + 1).copied().unwrap_or_default();
    assert!(
        next.trim_start().starts_with("hint: ") && next.contains(hint),
        "its hint says {hint:?}:\n{}",
        out.stdout
    );
}

#[tokio::test]
async fn kubectl_breakwater_check_passes_names_each_break_with_its_fix_and_passes_again() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let kubectl = Kubectl::for_cluster(story.cluster)?.with_plugin()?;
    let client = story.cluster.client()?;
    let deployment = story.op.service_name();

    // Healthy: every part passes, in order.
    let table = healthy(&kubectl, "on the installed release").await?;
    let parts: Vec<&str> = table
        .lines()
        .zip(table.lines().skip(1))
        .filter(|(_, u)| u.starts_with("---"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        parts,
        ["kubernetes-api", "crd", "operator", "webhook", "injection", "policies", "sidecars"],
        "{table}"
    );
    for want in [
        format!("PASS  deployment/{deployment}: 2 of 2 replicas ready"),
        "PASS  the caBundle verifies the serving certificate for".into(),
        "comes back with the breakwater-proxy sidecar".into(),
        "leads (Lease".into(),
    ] {
        assert!(table.contains(&want), "{want:?} in:\n{table}");
    }
    assert!(!table.contains("FAIL"), "{table}");
    // What `--nocapture` shows, and the README quotes.
    println!("$ kubectl breakwater check\n{table}");
    let json: serde_json::Value =
        serde_json::from_str(&plugin(&kubectl, &["check", "-o", "json"]).await?.stdout)?;
    assert!(json["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["verdict"] != "FAIL")), "{json}");

    // Before an install, on a cluster that has one: the install is there, you may install.
    let pre = plugin(&kubectl, &["check", "--pre"]).await?;
    assert_eq!(pre.code, Some(0), "warnings only:\n{}{}", pre.stdout, pre.stderr);
    println!("$ kubectl breakwater check --pre\n{}", pre.stdout);
    assert!(pre.stdout.contains(&format!("WARN  {CRD} is already installed")), "{}", pre.stdout);
    assert!(pre.stdout.contains("PASS  you may create everything the chart installs"), "{}", pre.stdout);

    // A pod created before its namespace was labelled runs without the sidecar.
    let ns = story.cluster.namespace("diagnose").await?;
    create_deployment(&client, &ns, &fault_deployment("lonely", "lonely", 1, &[])?).await?;
    let lonely = ready_pods(&client, &ns, "app=lonely", 1).await?.remove(0);
    let lonely = lonely.metadata.name.unwrap_or_default();
    story.kubectl.run(["label", "namespace", ns.name(), "breakwater.dev/inject=enabled"]).await?;
    let out = plugin(&kubectl, &["check"]).await?;
    println!("$ kubectl breakwater check\n{}", out.stdout);
    failed(&out, &format!("pod {}/{lonely} runs without the sidecar", ns.name()), "kubectl rollout restart");
    let status = plugin(&kubectl, &["status", "-n", ns.name()]).await?;
    assert_eq!(status.code, Some(1), "{}{}", status.stdout, status.stderr);
    assert!(
        status.stdout.contains(&format!("No CommunicationPolicies in namespace {}.", ns.name())),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.lines().any(|l| l.starts_with(&lonely) && l.contains("MISSING")),
        "{}",
        status.stdout
    );
    // The fix the hint gives: the pod made again, with the sidecar this time.
    story.kubectl.run(["rollout", "restart", "deployment/lonely", "-n", ns.name()]).await?;
    healthy(&kubectl, "once the pod is made again with its sidecar").await?;

    // The operator scaled to 0, then a wrong caBundle while nothing restores it.
    story.kubectl.run(["scale", "deployment", &deployment, "-n", NAMESPACE, "--replicas", "0"]).await?;
    story.op.gone(TIMEOUT).await?;
    let scaled_down = plugin(&kubectl, &["check"]).await?;
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let configuration = format!("{deployment}-injector");
    let count = webhooks.get(&configuration).await?.webhooks.map_or(0, |w| w.len());
    let wrong = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&rcgen::KeyPair::generate()?)?.pem()
    };
    let wrong = k8s_openapi::ByteString(wrong.into_bytes());
    let patch: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": wrong}))
        .collect();
    webhooks
        .patch(
            &configuration,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(serde_json::json!(patch))?),
        )
        .await?;
    let wrong_bundle = plugin(&kubectl, &["check"]).await?;
    story.kubectl.run(["scale", "deployment", &deployment, "-n", NAMESPACE, "--replicas", "2"]).await?;
    story.op.ready_pods(2, TIMEOUT).await?;
    failed(
        &scaled_down,
        &format!("deployment/{deployment} is scaled to 0 replicas"),
        &format!("kubectl scale deployment/{deployment} -n {NAMESPACE} --replicas=2"),
    );
    failed(
        &wrong_bundle,
        &format!("does not verify the serving certificate for {deployment}.{NAMESPACE}.svc"),
        "rewrites the caBundle while it runs",
    );
    // Back up, the operator writes its caBundle again.
    healthy(&kubectl, "once the operator is back and has restored its caBundle").await?;

    // The CRD deleted (and every policy with it): named; `status` cannot list policies (exit 2).
    story.kubectl.run(["delete", "crd", CRD, "--wait=true"]).await?;
    let no_crd = plugin(&kubectl, &["check"]).await?;
    let status = plugin(&kubectl, &["status", "-A"]).await?;
    story.op.upgrade(&[]).await?;
    failed(&no_crd, &format!("the CustomResourceDefinition {CRD} is not installed"), "helm upgrade");
    assert_eq!(status.code, Some(2), "{}{}", status.stdout, status.stderr);
    assert!(status.stderr.contains("Breakwater's CRD is not installed"), "{}", status.stderr);
    healthy(&kubectl, "once helm upgrade has put the CRD back").await?;

    // Bad input: a clear message each, never a panic.
    let empty = story.cluster.namespace("diagnose-empty").await?;
    let none = plugin(&kubectl, &["status", "-n", empty.name()]).await?;
    assert_eq!(none.code, Some(0), "{}{}", none.stdout, none.stderr);
    assert!(
        none.stdout.starts_with(&format!("No CommunicationPolicies in namespace {}.\n", empty.name())),
        "{}",
        none.stdout
    );
    assert!(none.stdout.contains("No pods where injection applies"), "{}", none.stdout);
    let dir = tempfile::tempdir()?;
    let unreachable = dir.path().join("kubeconfig");
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    std::fs::write(
        &unreachable,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: gone, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: gone, context: {{cluster: gone, user: u}}}}]\n\
             current-context: gone\n"
        ),
    )?;
    let kubeconfig = unreachable.display().to_string();
    let out = plugin(&kubectl, &["check", "--kubeconfig", &kubeconfig]).await?;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.starts_with(&format!("error: cannot reach the API server at https://127.0.0.1:{port}/")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: is the cluster up, and is `gone` the context you meant?"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // `config` and `breakers` of a pod without a sidecar (an operator replica): said, exit 2.
    let operator = story.op.ready_pods(2, TIMEOUT).await?.remove(0);
    let operator = operator.metadata.name.unwrap_or_default();
    for command in ["config", "breakers"] {
        let out = plugin(&kubectl, &[command, &operator, "-n", NAMESPACE]).await?;
        assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&format!("pod {NAMESPACE}/{operator}: has no Breakwater sidecar")),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("hint: label its namespace"), "{}", out.stderr);
    }
    let out = plugin(&kubectl, &["config", "no-such-pod", "-n", NAMESPACE]).await?;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&format!("pod {NAMESPACE}/no-such-pod: not found")), "{}", out.stderr);
    Ok(())
}
