//! The Helm chart: `helm lint`, `helm template` with default and custom values, the values schema,
//! and a full install / upgrade / uninstall against the real API server, with the operator's RBAC
//! checked by SubjectAccessReview and impersonation. With `certManager.enabled` the chart renders
//! cert-manager objects; cert-manager is not installed here, so they are checked as rendered and
//! the read-only Secret access they imply is checked on the API server from the rendered RBAC alone.
//! The monitoring objects are created against the Prometheus Operator's own CRDs (from its Go
//! module, `make prometheus-operator-crds`) with strict field validation.

use std::{path::Path, time::Duration};

use breakwater_e2e::{
    Helm, TestCluster,
    helm::chart_dir,
    objects::{self, describe, manifests},
    wait,
};
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
        core::v1::{Namespace, Secret},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const RELEASE: &str = "bw";
const NAMESPACE: &str = "breakwater-system";
const TIMEOUT: Duration = Duration::from_secs(60);

fn chart() -> String {
    chart_dir().display().to_string()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}, got {}", found.len());
    found[0]
}

fn named<'a>(objects: &[&'a Value], name: &str) -> &'a Value {
    let found = objects.iter().find(|o| o["metadata"]["name"] == name);
    found.unwrap_or_else(|| {
        panic!("no object named {name} among {:?}", objects.iter().map(|o| describe(o)).collect::<Vec<_>>())
    })
}

/// A list of strings in a manifest (`verbs`, `resourceNames`), empty when absent.
fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

/// The value of the operator container's environment variable `name`.
fn operator_env<'a>(objects: &'a [Value], name: &str) -> Option<&'a Value> {
    let env = &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    env.as_array().expect("env is a list").iter().find(|e| e["name"] == name).map(|e| &e["value"])
}

/// The Role's rules on Secrets, as (resourceNames, verbs).
fn secret_rules(objects: &[Value]) -> Vec<(Vec<String>, Vec<String>)> {
    let role = one(objects, "Role");
    role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| strings(&r["resources"]).iter().any(|r| r == "secrets"))
        .map(|r| (strings(&r["resourceNames"]), strings(&r["verbs"])))
        .collect()
}

#[tokio::test]
async fn chart_passes_helm_lint_strict_with_default_and_custom_values() -> anyhow::Result<()> {
    let helm = Helm::offline()?;
    let out = helm.run(["lint", "--strict", &chart()]).await?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let values = helm.scratch().join("custom.yaml");
    std::fs::write(&values, CUSTOM_VALUES)?;
    let out = helm.run(["lint", "--strict", &chart(), "-f", &values.display().to_string()]).await?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm.run(["lint", "--strict", &chart(), "--set", "certManager.enabled=true"]).await?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let mut all_on = vec!["lint", "--strict"];
    let chart = chart();
    all_on.push(&chart);
    for part in breakwater_e2e::monitoring::ALL_ON {
        all_on.extend(["--set", part]);
    }
    let out = helm.run(all_on).await?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    Ok(())
}

#[tokio::test]
async fn default_values_render_hardened_and_labelled_objects() -> anyhow::Result<()> {
    let helm = Helm::offline()?;
    let out = helm.run(["template", RELEASE, &chart(), "--namespace", NAMESPACE]).await?;
    let objects = manifests(&out)?;
    let mut kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    );
    for o in &objects {
        let labels = &o["metadata"]["labels"];
        for key in ["name", "instance", "version", "managed-by", "part-of"] {
            let key = format!("app.kubernetes.io/{key}");
            assert!(labels[&key].is_string(), "{} lacks label {key}", describe(o));
        }
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE);
    }

    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(container["image"], "ghcr.io/breakwater-dev/breakwater/operator:0.1.0");
    assert!(container["resources"]["limits"]["memory"].is_string(), "memory limit set");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        one(&objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    );

    let webhook = one(&objects, "MutatingWebhookConfiguration");
    for hook in webhook["webhooks"].as_array().expect("webhooks is a list") {
        assert!(hook["timeoutSeconds"].as_i64().is_some_and(|t| (1..=10).contains(&t)), "{hook}");
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["clientConfig"]["service"]["namespace"], NAMESPACE);
        let excluded = excluded_namespaces(hook);
        for ns in ["kube-system", NAMESPACE] {
            assert!(excluded.contains(&ns.to_owned()), "{} must never see {ns}: {hook}", hook["name"]);
        }
        assert!(hook["objectSelector"]["matchExpressions"].is_array(), "scoped by object selector: {hook}");
    }

    // Diagnostics on by default: the operator's snapshot view on the pod's address, a named port
    // for the pod proxy, and the proxies' /config and /breakers on their probes port.
    assert_eq!(operator_env(&objects, "BREAKWATER_DEBUG_ADDRESS"), Some(&Value::from("0.0.0.0:9091")));
    let ports = &one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "debug" && p["containerPort"] == 9091)),
        "{ports}"
    );
    let template = one(&objects, "ConfigMap")["data"]["sidecar.yaml"].as_str().unwrap_or_default().to_owned();
    assert_eq!(manifests(&template)?[0]["diagnostics"], true, "{template}");

    // The operator makes its own certificates: it creates the Secret (create cannot be limited by
    // name), changes only that one, and lists and watches it for renewals; it owns the caBundle.
    assert_eq!(operator_env(&objects, "BREAKWATER_CERTIFICATES"), Some(&Value::from("self-signed")));
    assert_eq!(
        operator_env(&objects, "BREAKWATER_WEBHOOK_SECRET"),
        Some(&Value::from("bw-breakwater-webhook-tls"))
    );
    assert!(webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_null(), "{webhook}");
    let secret = vec!["bw-breakwater-webhook-tls".to_owned()];
    assert_eq!(
        secret_rules(&objects),
        [
            (vec![], vec!["create".to_owned()]),
            (secret, ["get", "list", "watch", "patch", "update"].map(String::from).to_vec())
        ]
    );

    // Least privilege: no wildcard, no Secrets cluster-wide, nothing but reads outside status,
    // events and its own webhook configuration.
    let cluster_role = one(&objects, "ClusterRole");
    for rule in cluster_role["rules"].as_array().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k].as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(str::to_owned).collect()
        };
        let (resources, verbs) = (list("resources"), list("verbs"));
        assert!(!resources.iter().chain(&verbs).any(|s| s == "*"), "no wildcards: {rule}");
        assert!(!resources.iter().any(|r| r == "secrets"), "no Secrets cluster-wide: {rule}");
        let writes = verbs.iter().any(|v| !matches!(v.as_str(), "get" | "list" | "watch"));
        if writes {
            let named = !list("resourceNames").is_empty();
            let allowed = resources.iter().all(|r| {
                matches!(r.as_str(), "communicationpolicies/status" | "httproutes/status" | "events")
                    || (r == "tokenreviews" && verbs == ["create"])
                    // The root CA: create (cannot be limited by name), and change it only by name.
                    || (r == "configmaps" && (verbs == ["create"] || named))
                    || (r == "mutatingwebhookconfigurations" && named)
            });
            assert!(allowed, "unexpected write access: {rule}");
        }
    }
    Ok(())
}

const CUSTOM_VALUES: &str = "\
crds: {install: false}
imageRegistry: registry.example/bw
operator:
  replicas: 3
  image: {tag: 1.2.3}
  podDisruptionBudget: {enabled: false}
webhook:
  failurePolicy: Fail
  timeoutSeconds: 3
  excludeNamespaces: [legacy]
diagnostics: {enabled: false}
sidecar:
  image: {repository: custom/sidecar, tag: 1.2.3}
  logLevel: debug
  ports: {outbound: 16001}
  resources:
    requests: {cpu: 20m, memory: 48Mi}
";

#[tokio::test]
async fn custom_values_reach_the_objects_they_configure() -> anyhow::Result<()> {
    let helm = Helm::offline()?;
    let values = helm.scratch().join("custom.yaml");
    std::fs::write(&values, CUSTOM_VALUES)?;
    let out = helm
        .run(["template", RELEASE, &chart(), "--namespace", NAMESPACE, "-f", &values.display().to_string()])
        .await?;
    let objects = manifests(&out)?;
    assert!(find(&objects, "CustomResourceDefinition").is_empty(), "crds.install=false");
    assert!(find(&objects, "PodDisruptionBudget").is_empty(), "podDisruptionBudget.enabled=false");
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/bw/breakwater/operator:1.2.3"
    );
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let policy =
        env.as_array().expect("env").iter().find(|e| e["name"] == "BREAKWATER_WEBHOOK_FAILURE_POLICY");
    assert_eq!(policy.map(|e| &e["value"]), Some(&Value::from("Fail")), "the operator sets it: {env}");
    for hook in one(&objects, "MutatingWebhookConfiguration")["webhooks"].as_array().expect("webhooks") {
        assert_eq!(hook["failurePolicy"], "Ignore", "fail-open until the operator is ready");
        assert_eq!(hook["timeoutSeconds"], 3);
        assert!(excluded_namespaces(hook).contains(&"legacy".to_owned()), "{hook}");
    }
    let config =
        one(&objects, "ConfigMap")["data"]["sidecar.yaml"].as_str().expect("sidecar.yaml").to_owned();
    let sidecar = manifests(&config)?.into_iter().next().expect("one document");
    assert_eq!(sidecar["image"], "registry.example/bw/custom/sidecar:1.2.3");
    assert_eq!(sidecar["logLevel"], "debug");
    assert_eq!(sidecar["ports"]["outbound"], 16001);
    assert_eq!(sidecar["ports"]["inbound"], 15006, "unset keys keep their defaults");
    assert_eq!(sidecar["resources"]["requests"]["memory"], "48Mi");
    // Diagnostics off: loopback only, no debug port, no --probe-diagnostics.
    assert_eq!(sidecar["diagnostics"], false);
    assert_eq!(operator_env(&objects, "BREAKWATER_DEBUG_ADDRESS"), Some(&Value::from("127.0.0.1:9091")));
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(ports.as_array().is_some_and(|p| p.iter().all(|p| p["name"] != "debug")), "{ports}");
    Ok(())
}

/// The Gateway API CRDs are vendored whole (the checksum beside them matches, the version is
/// the one `versions.env` names), off by default, and rendered on request, each kept on
/// uninstall unless told otherwise.
#[tokio::test]
async fn the_vendored_gateway_api_crds_match_their_checksum_and_render_only_on_request() -> anyhow::Result<()>
{
    use sha2::Digest;
    let files = chart_dir().join("files");
    let text = std::fs::read_to_string(files.join("gateway-api-standard.yaml"))?;
    let recorded = std::fs::read_to_string(files.join("gateway-api-standard.yaml.sha256"))?;
    let actual: String = sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        recorded.split_whitespace().next(),
        Some(actual.as_str()),
        "re-run e2e/gobuild/gateway-api/vendor.sh"
    );
    let versions = std::fs::read_to_string(chart_dir().join("../../e2e/gobuild/versions.env"))?;
    let version = versions.lines().find_map(|l| l.strip_prefix("GATEWAY_API_VERSION=")).expect("a version");
    assert!(text.lines().next().is_some_and(|l| l.contains(version)), "vendored for {version}");

    let helm = Helm::offline()?;
    let render = |set: &'static [&'static str]| {
        let helm = &helm;
        async move {
            let chart = chart();
            let mut args = vec!["template", RELEASE, chart.as_str(), "--namespace", NAMESPACE];
            for s in set {
                args.extend(["--set", s]);
            }
            let out = helm.run(args).await?;
            anyhow::Ok(manifests(&out)?)
        }
    };
    let gateway = |objects: &[Value]| -> Vec<Value> {
        find(objects, "CustomResourceDefinition")
            .into_iter()
            .filter(|c| c["spec"]["group"] == "gateway.networking.k8s.io")
            .cloned()
            .collect()
    };
    assert!(gateway(&render(&[]).await?).is_empty(), "off by default");
    let on = gateway(&render(&["gatewayAPI.installCRDs=true"]).await?);
    let mut names: Vec<&str> = on.iter().filter_map(|c| c["spec"]["names"]["kind"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "BackendTLSPolicy",
            "GRPCRoute",
            "Gateway",
            "GatewayClass",
            "HTTPRoute",
            "ListenerSet",
            "ReferenceGrant",
            "TCPRoute",
            "TLSRoute",
            "UDPRoute",
        ]
    );
    for crd in &on {
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{}", describe(crd));
        assert_eq!(crd["metadata"]["annotations"]["gateway.networking.k8s.io/channel"], "standard");
    }
    let released = gateway(&render(&["gatewayAPI.installCRDs=true", "gatewayAPI.keepCRDs=false"]).await?);
    assert!(released.iter().all(|c| c["metadata"]["annotations"].get("helm.sh/resource-policy").is_none()));
    Ok(())
}

#[tokio::test]
async fn cert_manager_gets_a_ca_chain_and_the_secret_while_the_operator_only_reads_it() -> anyhow::Result<()>
{
    let helm = Helm::offline()?;
    let out = helm
        .run(["template", RELEASE, &chart(), "--namespace", NAMESPACE, "--set", "certManager.enabled=true"])
        .await?;
    let objects = manifests(&out)?;
    let (issuers, certificates) = (find(&objects, "Issuer"), find(&objects, "Certificate"));
    assert_eq!(issuers.len(), 2, "a selfSigned and a CA Issuer");
    assert_eq!(certificates.len(), 2, "the CA and the serving Certificate");
    let cert_manager = |issuer: &str| json!({"name": issuer, "kind": "Issuer", "group": "cert-manager.io"});

    // cert-manager's CA bootstrap: selfSigned Issuer -> CA Certificate -> CA Issuer -> serving.
    let self_signed = named(&issuers, "bw-breakwater-selfsigned");
    assert_eq!(self_signed["spec"], json!({"selfSigned": {}}));
    let ca = named(&certificates, "bw-breakwater-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(ca["spec"]["secretName"], "bw-breakwater-ca");
    assert_eq!(ca["spec"]["issuerRef"], cert_manager("bw-breakwater-selfsigned"));
    let ca_issuer = named(&issuers, "bw-breakwater-ca");
    assert_eq!(ca_issuer["spec"]["ca"]["secretName"], ca["spec"]["secretName"], "signs with the CA's key");
    let serving = named(&certificates, "bw-breakwater-webhook");
    assert_eq!(serving["spec"]["issuerRef"], cert_manager("bw-breakwater-ca"));
    assert_serving_certificate_for_cert_manager(&objects, serving, "2160h", "720h");
    Ok(())
}

#[tokio::test]
async fn cert_manager_issuer_ref_signs_the_serving_certificate_without_a_chart_ca() -> anyhow::Result<()> {
    let helm = Helm::offline()?;
    let cases = [
        (
            "issuerRef: {name: corp-ca, kind: ClusterIssuer}\nduration: 720h\nrenewBefore: 240h\n",
            json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}),
            ("720h", "240h"),
        ),
        (
            "issuerRef: {name: vault, group: vault.example.dev}\n",
            json!({"name": "vault", "kind": "Issuer", "group": "vault.example.dev"}),
            ("2160h", "720h"),
        ),
    ];
    for (i, (values, issuer_ref, (duration, renew_before))) in cases.iter().enumerate() {
        let file = helm.scratch().join(format!("issuer-{i}.yaml"));
        let indented: String = values.lines().map(|l| format!("  {l}\n")).collect();
        std::fs::write(&file, format!("certManager:\n  enabled: true\n{indented}"))?;
        let out = helm
            .run(["template", RELEASE, &chart(), "--namespace", NAMESPACE, "-f", &file.display().to_string()])
            .await?;
        let objects = manifests(&out)?;
        assert!(find(&objects, "Issuer").is_empty(), "no chart CA with an issuerRef:\n{values}");
        let serving = one(&objects, "Certificate");
        assert_eq!(serving["metadata"]["name"], "bw-breakwater-webhook");
        assert_eq!(&serving["spec"]["issuerRef"], issuer_ref, "{values}");
        assert_serving_certificate_for_cert_manager(&objects, serving, duration, renew_before);
    }
    Ok(())
}

/// The serving Certificate names the Service the webhook calls and fills the Secret the operator
/// reads; cert-manager injects its CA into the webhook; the operator may only read that Secret.
fn assert_serving_certificate_for_cert_manager(
    objects: &[Value],
    serving: &Value,
    duration: &str,
    renew_before: &str,
) {
    let spec = &serving["spec"];
    assert_eq!(serving["metadata"]["namespace"], NAMESPACE);
    assert_eq!(serving["apiVersion"], "cert-manager.io/v1");
    assert_eq!(spec["secretName"], "bw-breakwater-webhook-tls");
    assert_eq!(
        operator_env(objects, "BREAKWATER_WEBHOOK_SECRET"),
        Some(&spec["secretName"]),
        "the Secret the operator reads"
    );
    assert_eq!(operator_env(objects, "BREAKWATER_CERTIFICATES"), Some(&Value::from("external")));

    let service = one(objects, "Service")["metadata"]["name"].as_str().expect("Service name").to_owned();
    let webhook = one(objects, "MutatingWebhookConfiguration");
    for hook in webhook["webhooks"].as_array().expect("webhooks") {
        assert_eq!(
            hook["clientConfig"]["service"]["name"],
            service.as_str(),
            "the webhook calls the Service"
        );
    }
    let dns = [
        service.clone(),
        format!("{service}.{NAMESPACE}"),
        format!("{service}.{NAMESPACE}.svc"),
        format!("{service}.{NAMESPACE}.svc.cluster.local"),
    ];
    assert_eq!(strings(&spec["dnsNames"]), dns);
    assert!(strings(&spec["usages"]).contains(&"server auth".to_owned()), "{spec}");
    assert_eq!(spec["privateKey"], json!({"rotationPolicy": "Always", "algorithm": "ECDSA", "size": 256}));
    assert_eq!(spec["duration"], duration);
    assert_eq!(spec["renewBefore"], renew_before);

    let inject = &webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"];
    assert_eq!(
        inject,
        &Value::from(format!("{NAMESPACE}/{}", serving["metadata"]["name"].as_str().unwrap_or_default()))
    );

    // No Secret written: no create, and only reads (and the watch for renewals) on the one Secret.
    assert_eq!(
        secret_rules(objects),
        [(vec!["bw-breakwater-webhook-tls".to_owned()], ["get", "list", "watch"].map(String::from).to_vec())]
    );
    // It still sets the webhook's failurePolicy once it answers.
    let patches_webhook = one(objects, "ClusterRole")["rules"].as_array().expect("rules").iter().any(|r| {
        strings(&r["resources"]) == ["mutatingwebhookconfigurations"]
            && strings(&r["resourceNames"]) == ["bw-breakwater-injector"]
            && strings(&r["verbs"]).contains(&"patch".to_owned())
    });
    assert!(patches_webhook, "the operator patches its webhook configuration");
}

#[tokio::test]
async fn values_schema_rejects_bad_values_naming_the_key() -> anyhow::Result<()> {
    let helm = Helm::offline()?;
    let cases = [
        ("webhook:\n  timeoutSeconds: 30\n", "timeoutSeconds"),
        ("webhook:\n  failurePolicy: Maybe\n", "failurePolicy"),
        ("operator:\n  replicaz: 2\n", "replicaz"),
        ("sidecar:\n  ports: {admin: 70000}\n", "admin"),
        ("operator:\n  logLevel: verbose\n", "logLevel"),
        ("webhook:\n  excludeNamespaces: [Kube_System]\n", "excludeNamespaces"),
        ("certManager:\n  enabled: \"true\"\n", "enabled"),
        ("certManager:\n  duration: ninety\n", "duration"),
        ("certManager:\n  renewBefore: 30d\n", "renewBefore"),
        ("certManager:\n  issuerRef: {name: corp-ca, kind: Foo}\n", "kind"),
        // An issuerRef without a name.
        ("certManager:\n  issuerRef: {kind: ClusterIssuer}\n", "issuerRef"),
        ("certManager:\n  issuer: {name: corp-ca}\n", "issuer"),
        ("sidecar:\n  tracing: {endpoint: \"otel:4317\"}\n", "endpoint"),
        ("sidecar:\n  tracing: {sampler: sometimes}\n", "sampler"),
        ("sidecar:\n  tracing: {samplerArg: 2}\n", "samplerArg"),
        ("sidecar:\n  tracing: {samplerArg: \"half\"}\n", "samplerArg"),
    ];
    for (i, (values, key)) in cases.iter().enumerate() {
        let file = helm.scratch().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, values)?;
        let out = helm.output(["template", RELEASE, &chart(), "-f", &file.display().to_string()]).await?;
        assert!(!out.success, "accepted bad values:\n{values}");
        assert!(out.stderr.contains("schema"), "{}", out.stderr);
        assert!(out.stderr.contains(key), "message names {key}: {}", out.stderr);
    }
    // A ratio from `--set` arrives as a string (Helm parses only integers there): accepted, and
    // rendered as a number.
    let out = helm.run(["template", RELEASE, &chart(), "--set", "sidecar.tracing.samplerArg=0.25"]).await?;
    assert!(out.contains("samplerArg: 0.25\n"), "{out}");
    Ok(())
}

fn excluded_namespaces(hook: &Value) -> Vec<String> {
    hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .flat_map(|e| e["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Install, check, upgrade, uninstall: one test, because the CRD and the cluster-scoped RBAC and
/// webhook objects exist once per cluster.
#[tokio::test]
async fn chart_installs_upgrades_and_uninstalls_on_a_real_api_server() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    let helm = Helm::for_cluster(cluster)?;

    let notes =
        helm.run(["install", RELEASE, &chart(), "--namespace", NAMESPACE, "--create-namespace"]).await?;
    assert!(notes.contains("breakwater.dev/inject=enabled"), "NOTES explain injection:\n{notes}");
    let manifest = helm.run(["get", "manifest", RELEASE, "--namespace", NAMESPACE]).await?;
    let installed = manifests(&manifest)?;
    assert_eq!(installed.len(), 11, "every object of the chart");
    for object in &installed {
        let live = objects::get(&client, object, NAMESPACE).await?;
        assert!(live.is_some(), "{} exists after helm install", describe(object));
    }
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    wait_established(&crds).await?;

    check_operator_rbac(cluster, &client).await?;

    // Upgrade with a changed CRD (a new short name) and a changed value: both are applied.
    let before = crds.get("communicationpolicies.breakwater.dev").await?;
    let changed = helm.scratch().join("chart");
    copy_dir(&chart_dir(), &changed)?;
    let crd_file = changed.join("templates/crds/communicationpolicies.yaml");
    let text = std::fs::read_to_string(&crd_file)?;
    let patched =
        text.replacen("    shortNames:\n    - cpol\n", "    shortNames:\n    - cpol\n    - bwpol\n", 1);
    assert_ne!(text, patched, "the CRD template lists shortNames as expected");
    std::fs::write(&crd_file, patched)?;
    helm.run([
        "upgrade",
        RELEASE,
        &changed.display().to_string(),
        "--namespace",
        NAMESPACE,
        "--set",
        "webhook.timeoutSeconds=7",
    ])
    .await?;
    let after = crds.get("communicationpolicies.breakwater.dev").await?;
    let short = after.spec.names.short_names.clone().unwrap_or_default();
    assert!(short.contains(&"bwpol".to_owned()), "upgraded CRD serves the new short name: {short:?}");
    assert_ne!(before.metadata.resource_version, after.metadata.resource_version);
    let hooks =
        Api::<MutatingWebhookConfiguration>::all(client.clone()).get("bw-breakwater-injector").await?;
    assert!(hooks.webhooks.unwrap_or_default().iter().all(|w| w.timeout_seconds == Some(7)));

    // Uninstall: everything goes except the CRD, kept by default (crds.keep).
    helm.run(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"]).await?;
    for object in &installed {
        let live = objects::get(&client, object, NAMESPACE).await?;
        if object["kind"] == "CustomResourceDefinition" {
            let kept = live.expect("the CRD is kept on uninstall");
            assert_eq!(kept.metadata.annotations.unwrap_or_default()["helm.sh/resource-policy"], "keep");
        } else {
            assert!(live.is_none(), "{} removed by helm uninstall", describe(object));
        }
    }

    // With crds.keep=false the release adopts the kept CRD and removes it on uninstall.
    helm.run(["install", RELEASE, &chart(), "--namespace", NAMESPACE, "--set", "crds.keep=false"]).await?;
    wait_established(&crds).await?;
    helm.run(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"]).await?;
    wait::until_ok("the CRD to be deleted", TIMEOUT, || {
        let crds = crds.clone();
        async move {
            match crds.get_opt("communicationpolicies.breakwater.dev").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|c| c.map(|c| c.metadata.deletion_timestamp)))),
            }
        }
    })
    .await?;
    Ok(())
}

/// With `certManager.enabled` cert-manager writes the certificate Secret: the rendered RBAC, applied
/// on its own (cert-manager's kinds are unknown to this cluster), lets the operator read and watch
/// that one Secret and write none.
#[tokio::test]
async fn monitoring_objects_are_accepted_by_the_prometheus_operator_crds_with_strict_validation()
-> anyhow::Result<()> {
    const NAMESPACE: &str = "breakwater-monitoring";
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    install_prometheus_operator_crds(&client).await?;
    let objects = breakwater_e2e::monitoring::render_all(&Helm::offline()?).await?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?)
        .await?;
    let apply = PatchParams::apply("breakwater-e2e").validation_strict();
    let mut created = Vec::new();
    for object in objects.iter().filter(|o| {
        o["apiVersion"] == "monitoring.coreos.com/v1"
            || (o["kind"] == "ConfigMap"
                && o["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-dashboards")))
    }) {
        let gvk = objects::gvk(object)?;
        let (resource, _) = kube::discovery::pinned_kind(&client, &gvk).await?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
        let name = object["metadata"]["name"].as_str().expect("a name");
        let mut object = object.clone();
        object["metadata"]["namespace"] = json!(NAMESPACE);
        // Strict: a field the CRD's schema does not know is an error, not silently pruned.
        api.patch(name, &apply, &Patch::Apply(&object))
            .await
            .map_err(|e| anyhow::anyhow!("{} refused: {e}", describe(&object)))?;
        let back = serde_json::to_value(api.get(name).await?)?;
        let field = if object["kind"] == "ConfigMap" { "data" } else { "spec" };
        assert_eq!(back[field], object[field], "{} kept as rendered", describe(&object));
        created.push(object["kind"].as_str().unwrap_or_default().to_owned());
    }
    created.sort();
    assert_eq!(created, ["ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"]);

    // The check has teeth: the same PodMonitor with a misspelt field is refused, naming it.
    let mut wrong = objects.iter().find(|o| o["kind"] == "PodMonitor").expect("a PodMonitor").clone();
    wrong["metadata"]["namespace"] = json!(NAMESPACE);
    wrong["metadata"]["name"] = json!("misspelt");
    wrong["spec"]["podMetricEndpoints"] = wrong["spec"]["podMetricsEndpoints"].take();
    let (resource, _) = kube::discovery::pinned_kind(&client, &objects::gvk(&wrong)?).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    let refused = api.patch("misspelt", &apply, &Patch::Apply(&wrong)).await.expect_err("refused");
    assert!(refused.to_string().contains("podMetricEndpoints"), "{refused}");
    Ok(())
}

#[tokio::test]
async fn cert_manager_rbac_lets_the_operator_only_read_its_secret() -> anyhow::Result<()> {
    const RELEASE: &str = "bwcm";
    const NAMESPACE: &str = "breakwater-cm";
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    let helm = Helm::offline()?;
    let out = helm
        .run([
            "template",
            RELEASE,
            &chart(),
            "--namespace",
            NAMESPACE,
            "--set",
            "certManager.enabled=true",
            "--show-only",
            "templates/rbac.yaml",
        ])
        .await?;
    let rbac = manifests(&out)?;
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(&pp, &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?)
        .await?;
    let cluster_role: ClusterRole = serde_json::from_value(one(&rbac, "ClusterRole").clone())?;
    let cluster_binding: ClusterRoleBinding =
        serde_json::from_value(one(&rbac, "ClusterRoleBinding").clone())?;
    let role: Role = serde_json::from_value(one(&rbac, "Role").clone())?;
    let binding: RoleBinding = serde_json::from_value(one(&rbac, "RoleBinding").clone())?;
    Api::<ClusterRole>::all(client.clone()).create(&pp, &cluster_role).await?;
    Api::<ClusterRoleBinding>::all(client.clone()).create(&pp, &cluster_binding).await?;
    Api::<Role>::namespaced(client.clone(), NAMESPACE).create(&pp, &role).await?;
    Api::<RoleBinding>::namespaced(client.clone(), NAMESPACE).create(&pp, &binding).await?;

    let sa = "bwcm-breakwater";
    let secret = "bwcm-breakwater-webhook-tls";
    let granted: &[AccessCase<'_>] = &[("get", "", "secrets", NAMESPACE, secret, true)];
    wait::until_ok("the Role to reach the authorizer", TIMEOUT, || async {
        let wrong = authorizer_disagrees(&client, NAMESPACE, sa, granted).await.map_err(|e| e.to_string())?;
        if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) }
    })
    .await?;
    let cases: &[AccessCase<'_>] = &[
        ("get", "", "secrets", NAMESPACE, secret, true),
        ("list", "", "secrets", NAMESPACE, secret, true),
        ("watch", "", "secrets", NAMESPACE, secret, true),
        ("create", "", "secrets", NAMESPACE, "", false),
        ("update", "", "secrets", NAMESPACE, secret, false),
        ("patch", "", "secrets", NAMESPACE, secret, false),
        ("delete", "", "secrets", NAMESPACE, secret, false),
        ("list", "", "secrets", NAMESPACE, "", false),
        ("get", "", "secrets", NAMESPACE, "bwcm-breakwater-ca", false),
        // It still sets the failurePolicy of its webhook configuration.
        (
            "patch",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
            "bwcm-breakwater-injector",
            true,
        ),
    ];
    let wrong = authorizer_disagrees(&client, NAMESPACE, sa, cases).await?;
    assert!(
        wrong.is_empty(),
        "RBAC differs from what the operator needs with cert-manager:\n{}",
        wrong.join("\n")
    );
    assert_lists_only_its_secret(&cluster.client_as_service_account(NAMESPACE, sa)?, NAMESPACE, secret).await;

    let dp = DeleteParams::default();
    Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&cluster_binding.metadata.name.unwrap_or_default(), &dp)
        .await?;
    Api::<ClusterRole>::all(client.clone())
        .delete(&cluster_role.metadata.name.unwrap_or_default(), &dp)
        .await?;
    Api::<Namespace>::all(client).delete(NAMESPACE, &dp).await?;
    Ok(())
}

async fn wait_established(crds: &Api<CustomResourceDefinition>) -> anyhow::Result<()> {
    wait_crd_established(crds, "communicationpolicies.breakwater.dev").await
}

async fn wait_crd_established(crds: &Api<CustomResourceDefinition>, name: &str) -> anyhow::Result<()> {
    wait::until_ok(&format!("CRD {name} to be Established"), TIMEOUT, || {
        let crds = crds.clone();
        async move {
            let crd = crds.get(name).await.map_err(|e| e.to_string())?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            let established = conditions.iter().any(|c| c.type_ == "Established" && c.status == "True");
            if established { Ok(()) } else { Err(format!("{conditions:?}")) }
        }
    })
    .await?;
    Ok(())
}

/// The Prometheus Operator's CRDs (`make prometheus-operator-crds`), installed once.
async fn install_prometheus_operator_crds(client: &Client) -> anyhow::Result<()> {
    let dir = breakwater_e2e::bins::gobuild_path("prometheus-operator/fetch.sh", "prometheus-operator-crds")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for plural in ["podmonitors", "servicemonitors", "prometheusrules"] {
        let file = dir.join(format!("monitoring.coreos.com_{plural}.yaml"));
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("{}: {e}; run `make prometheus-operator-crds`", file.display()))?;
        let crd: CustomResourceDefinition = serde_json::from_value(manifests(&text)?.remove(0))?;
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        wait_crd_established(&crds, &format!("{plural}.monitoring.coreos.com")).await?;
    }
    Ok(())
}

/// What the operator's ServiceAccount may and may not do, asked of the API server's authorizer.
async fn check_operator_rbac(cluster: &TestCluster, client: &Client) -> anyhow::Result<()> {
    let sa = "bw-breakwater";
    // (verb, group, resource, namespace, name, allowed)
    let cases: &[AccessCase<'_>] = &[
        ("list", "breakwater.dev", "communicationpolicies", "", "", true),
        ("watch", "breakwater.dev", "communicationpolicies", "", "", true),
        ("patch", "breakwater.dev", "communicationpolicies/status", "shop", "p", true),
        ("watch", "gateway.networking.k8s.io", "httproutes", "", "", true),
        ("patch", "gateway.networking.k8s.io", "httproutes/status", "shop", "r", true),
        ("update", "gateway.networking.k8s.io", "httproutes", "shop", "r", false),
        ("list", "", "services", "", "", true),
        ("watch", "discovery.k8s.io", "endpointslices", "", "", true),
        ("list", "", "pods", "", "", true),
        ("list", "", "namespaces", "", "", true),
        ("create", "events.k8s.io", "events", "shop", "", true),
        ("patch", "events.k8s.io", "events", "shop", "", true),
        (
            "patch",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
            "bw-breakwater-injector",
            true,
        ),
        ("create", "coordination.k8s.io", "leases", NAMESPACE, "", true),
        ("get", "coordination.k8s.io", "leases", NAMESPACE, "bw-breakwater-operator", true),
        ("patch", "coordination.k8s.io", "leases", NAMESPACE, "bw-breakwater-operator", true),
        // Its certificates: made by the operator (self-signed, the default), watched for renewals.
        ("get", "", "secrets", NAMESPACE, "bw-breakwater-webhook-tls", true),
        ("list", "", "secrets", NAMESPACE, "bw-breakwater-webhook-tls", true),
        ("watch", "", "secrets", NAMESPACE, "bw-breakwater-webhook-tls", true),
        ("create", "", "secrets", NAMESPACE, "", true),
        ("update", "", "secrets", NAMESPACE, "bw-breakwater-webhook-tls", true),
        ("delete", "", "secrets", NAMESPACE, "bw-breakwater-webhook-tls", false),
        // Denied: Secrets anywhere else, or any other in its namespace.
        ("list", "", "secrets", "", "", false),
        ("get", "", "secrets", "", "", false),
        ("list", "", "secrets", NAMESPACE, "", false),
        ("get", "", "secrets", NAMESPACE, "other", false),
        ("get", "", "secrets", "kube-system", "bw-breakwater-webhook-tls", false),
        // Denied: writing policies, workloads, other webhooks, CRDs, RBAC.
        ("create", "breakwater.dev", "communicationpolicies", "shop", "", false),
        ("update", "breakwater.dev", "communicationpolicies", "shop", "p", false),
        ("delete", "breakwater.dev", "communicationpolicies", "shop", "p", false),
        ("create", "", "pods", "shop", "", false),
        ("delete", "", "pods", "shop", "p", false),
        ("patch", "", "services", "shop", "s", false),
        ("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "someone-else", false),
        (
            "delete",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
            "bw-breakwater-injector",
            false,
        ),
        (
            "update",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            "communicationpolicies.breakwater.dev",
            false,
        ),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", "", false),
        ("patch", "coordination.k8s.io", "leases", "kube-system", "bw-breakwater-operator", false),
        ("patch", "coordination.k8s.io", "leases", NAMESPACE, "someone-else", false),
        // The config API: token reviews; the root CA in every namespace; its replicas' reports.
        ("create", "authentication.k8s.io", "tokenreviews", "", "", true),
        ("create", "", "configmaps", "shop", "", true),
        ("patch", "", "configmaps", "shop", "breakwater-root-ca", true),
        ("get", "", "configmaps", "shop", "breakwater-root-ca", true),
        ("patch", "", "configmaps", "shop", "someone-elses", false),
        ("list", "", "configmaps", "shop", "", false),
        ("list", "", "configmaps", NAMESPACE, "", true),
        ("watch", "", "configmaps", NAMESPACE, "", true),
        ("delete", "", "configmaps", "shop", "breakwater-root-ca", false),
        ("create", "authorization.k8s.io", "subjectaccessreviews", "", "", false),
        // Nothing it does not use: core Events, replacing or watching its Lease.
        ("create", "", "events", "shop", "", false),
        ("update", "coordination.k8s.io", "leases", NAMESPACE, "bw-breakwater-operator", false),
        ("watch", "coordination.k8s.io", "leases", NAMESPACE, "bw-breakwater-operator", false),
        ("get", "", "configmaps", "kube-system", "", false),
    ];
    let wrong = authorizer_disagrees(client, NAMESPACE, sa, cases).await?;
    assert!(wrong.is_empty(), "RBAC differs from what the operator needs:\n{}", wrong.join("\n"));

    // The same through the API itself, impersonating the ServiceAccount.
    let as_operator = cluster.client_as_service_account(NAMESPACE, sa)?;
    let secrets = Api::<Secret>::all(as_operator.clone()).list(&ListParams::default()).await;
    assert!(matches!(&secrets, Err(kube::Error::Api(s)) if s.code == 403), "{secrets:?}");
    assert_lists_only_its_secret(&as_operator, NAMESPACE, "bw-breakwater-webhook-tls").await;
    let policies = kube::discovery::pinned_kind(
        &as_operator,
        &kube::api::GroupVersionKind::gvk("breakwater.dev", "v1alpha1", "CommunicationPolicy"),
    )
    .await?;
    let listed = Api::<kube::api::DynamicObject>::all_with(as_operator, &policies.0)
        .list(&ListParams::default())
        .await;
    assert!(listed.is_ok(), "the operator lists policies cluster-wide: {listed:?}");
    Ok(())
}

/// The operator's Secret watcher lists by field selector `metadata.name`, which the API server
/// authorizes as a request for that name (resourceNames); without the selector it is refused.
async fn assert_lists_only_its_secret(as_operator: &Client, namespace: &str, secret: &str) {
    let secrets = Api::<Secret>::namespaced(as_operator.clone(), namespace);
    let own = secrets.list(&ListParams::default().fields(&format!("metadata.name={secret}"))).await;
    assert!(own.is_ok(), "the operator lists its Secret {namespace}/{secret} by name: {own:?}");
    let all = secrets.list(&ListParams::default()).await;
    assert!(matches!(&all, Err(kube::Error::Api(s)) if s.code == 403), "{all:?}");
}

/// (verb, group, resource[/subresource], namespace, name, allowed)
type AccessCase<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, bool);

/// The cases the API server's authorizer answers otherwise for ServiceAccount `sa_namespace/sa`.
async fn authorizer_disagrees(
    client: &Client,
    sa_namespace: &str,
    sa: &str,
    cases: &[AccessCase<'_>],
) -> anyhow::Result<Vec<String>> {
    let reviews = Api::<SubjectAccessReview>::all(client.clone());
    let mut wrong = Vec::new();
    for &(verb, group, resource, namespace, name, expected) in cases {
        let (resource, subresource) =
            resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!("system:serviceaccount:{sa_namespace}:{sa}")),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{sa_namespace}"),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource: subresource.map(Into::into),
                    namespace: (!namespace.is_empty()).then(|| namespace.into()),
                    name: (!name.is_empty()).then(|| name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let result = reviews.create(&PostParams::default(), &review).await?;
        let allowed = result.status.map(|s| s.allowed).unwrap_or(false);
        if allowed != expected {
            wrong
                .push(format!("{verb} {group}/{resource} ns={namespace:?} name={name:?}: allowed={allowed}"));
        }
    }
    Ok(wrong)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
