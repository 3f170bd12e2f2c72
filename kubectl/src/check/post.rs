//! The checks of an installed Breakwater.
//!
//! The operator's Deployment is found by the chart's labels in `--breakwater-namespace`; the
//! names of everything else (its Lease, webhook configuration, Secret, Service) are read from
//! the Deployment's environment, so a release installed under any name is checked as it is.

use std::time::SystemTime;

use breakwater_crds::CommunicationPolicy;
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{Container, Namespace, Pod, Secret},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::Timestamp,
};
use kube::{
    Api, CustomResourceExt, Resource as _, ResourceExt,
    api::{ListParams, PostParams},
};

use super::{CheckReport, Checks, tls};
use crate::{args::CheckArgs, cluster::Cluster, error::chain, pods, status};

/// The label every object of the chart carries, and the one that marks the operator's.
use crate::diagnostics::{self, OPERATOR_SELECTOR};
/// The chart's version label.
const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// Runs every check of an installed Breakwater.
pub async fn post(cluster: &Cluster, args: &CheckArgs) -> CheckReport {
    let mut c = Checks::new();
    c.part("kubernetes-api");
    c.pass(format!("the API server at {} answers ({})", cluster.url, cluster.git_version));

    let crd_version = crd(cluster, &mut c).await;
    let names = operator(cluster, args, crd_version.as_deref(), &mut c).await;
    let excluded = match &names {
        Some(names) => {
            lease(cluster, names, &mut c).await;
            webhook(cluster, args, names, &mut c).await
        }
        None => {
            c.part("webhook");
            c.skip("the webhook and its certificates (no operator Deployment to read their names from)");
            Vec::new()
        }
    };
    // Read once: which namespaces are labelled, and which are being deleted.
    let namespaces = match status::namespaces(cluster, None).await {
        Ok(n) => n,
        Err(e) => {
            c.part("injection");
            c.fail(format!("cannot list namespaces: {e}"), read_hint("namespaces"));
            return c.report("install", cluster.url.clone());
        }
    };
    injection(cluster, &namespaces, &excluded, &mut c).await;
    if crd_version.is_some() {
        policies(cluster, &namespaces, &mut c).await;
    }
    sidecars(cluster, &args.breakwater_namespace, &namespaces, &mut c).await;
    c.report("install", cluster.url.clone())
}

/// The CRD: present, Established, serving the version this plugin reads. Returns its chart
/// version label when present and usable.
async fn crd(cluster: &Cluster, c: &mut Checks) -> Option<String> {
    c.part("crd");
    let name = CommunicationPolicy::crd_name();
    let want = CommunicationPolicy::version(&());
    let api = Api::<CustomResourceDefinition>::all(cluster.client.clone());
    let crd = match api.get_opt(name).await {
        Ok(Some(crd)) => crd,
        Ok(None) => {
            c.fail(
                format!("the CustomResourceDefinition {name} is not installed: the API server rejects every CommunicationPolicy"),
                "the chart installs it (crds.install=true): `helm upgrade <release> <chart> -n <namespace> --reuse-values` \
                 puts it back; policies deleted with it must be applied again",
            );
            return None;
        }
        Err(e) => {
            c.fail(
                format!("cannot read the CustomResourceDefinition {name}: {}", chain(&e)),
                read_hint("customresourcedefinitions"),
            );
            return None;
        }
    };
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|cd| cd.type_ == "Established" && cd.status == "True"));
    if !established {
        c.fail(
            format!("{name} is not Established: the API server does not serve it yet"),
            format!("kubectl describe crd {name} says why (a name conflict, or still starting)"),
        );
        return None;
    }
    let served = crd.spec.versions.iter().any(|v| v.name == want && v.served);
    if !served {
        let versions: Vec<&str> =
            crd.spec.versions.iter().filter(|v| v.served).map(|v| v.name.as_str()).collect();
        c.fail(
            format!(
                "{name} does not serve {want}, the version this plugin reads (it serves {})",
                versions.join(", ")
            ),
            "use the kubectl-breakwater of the installed release (kubectl breakwater --version)",
        );
        return None;
    }
    let version = crd.labels().get(VERSION_LABEL).cloned();
    c.pass(format!(
        "{name} is installed, Established and serves {}/{want}{}",
        CommunicationPolicy::group(&()),
        version.as_ref().map(|v| format!(" (release {v})")).unwrap_or_default()
    ));
    Some(version.unwrap_or_default())
}

/// What the checks after the operator's need from its Deployment.
#[derive(Debug)]
struct Names {
    namespace: String,
    deployment: String,
    lease: Option<String>,
    webhook: Option<String>,
    secret: Option<String>,
    service: Option<String>,
    external_certificates: bool,
}

/// The operator's Deployment: found, scaled up, every replica ready, the same version as the CRD.
async fn operator(
    cluster: &Cluster,
    args: &CheckArgs,
    crd_version: Option<&str>,
    c: &mut Checks,
) -> Option<Names> {
    c.part("operator");
    let ns = &args.breakwater_namespace;
    let api = Api::<Deployment>::namespaced(cluster.client.clone(), ns);
    let listed = match api.list(&ListParams::default().labels(OPERATOR_SELECTOR)).await {
        Ok(l) => l.items,
        Err(e) => {
            c.fail(format!("cannot list Deployments in {ns}: {}", chain(&e)), read_hint("deployments"));
            return None;
        }
    };
    let Some(deployment) = listed.into_iter().next() else {
        c.fail(
            format!("no Breakwater operator Deployment in namespace {ns} (labels {OPERATOR_SELECTOR})"),
            "installed in another namespace? pass --breakwater-namespace NAMESPACE; not installed? \
             `kubectl breakwater check --pre`, then helm install",
        );
        return None;
    };
    let name = deployment.name_any();
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    if wanted == 0 {
        c.fail(
            format!("deployment/{name} is scaled to 0 replicas: nothing injects sidecars, writes policy status or delivers policies"),
            format!("kubectl scale deployment/{name} -n {ns} --replicas=2 (the chart's default)"),
        );
    } else if ready < wanted {
        c.fail(
            format!("deployment/{name}: {ready} of {wanted} replicas ready"),
            format!("kubectl describe deployment/{name} -n {ns}; kubectl logs -n {ns} deployment/{name}"),
        );
    } else {
        c.pass(format!("deployment/{name}: {ready} of {wanted} replicas ready"));
    }
    let version = deployment.labels().get(VERSION_LABEL).cloned().unwrap_or_default();
    match crd_version {
        Some(crd) if !crd.is_empty() && !version.is_empty() && crd != version => c.fail(
            format!("the CRD is from release {crd} and the operator from {version}"),
            "`helm upgrade` installs both from one chart; a CRD applied by hand must come from the same release",
        ),
        Some(crd) if crd == version && !version.is_empty() => c.pass(format!("the CRD and the operator are both release {version}")),
        _ => {}
    }
    let ours = env!("CARGO_PKG_VERSION");
    if !version.is_empty() && version != ours {
        c.warn(
            format!(
                "this plugin is release {ours}, the install {version}: checks may not match what it runs"
            ),
            format!("install the plugin of release {version}"),
        );
    }
    let container = deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first().cloned())
        .unwrap_or_default();
    Some(Names {
        namespace: ns.clone(),
        deployment: name,
        lease: env(&container, "BREAKWATER_LEASE_NAME"),
        webhook: env(&container, "BREAKWATER_WEBHOOK_CONFIGURATION"),
        secret: env(&container, "BREAKWATER_WEBHOOK_SECRET"),
        service: env(&container, "BREAKWATER_SERVICE_NAME"),
        external_certificates: env(&container, "BREAKWATER_CERTIFICATES").is_some_and(|v| v == "external"),
    })
}

fn env(container: &Container, name: &str) -> Option<String> {
    container.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone())
}

/// A replica holds the Lease and renews it.
async fn lease(cluster: &Cluster, names: &Names, c: &mut Checks) {
    let (ns, deployment) = (&names.namespace, &names.deployment);
    let Some(name) = &names.lease else {
        c.skip(format!("the leader (deployment/{deployment} sets no BREAKWATER_LEASE_NAME)"));
        return;
    };
    let lease = match Api::<Lease>::namespaced(cluster.client.clone(), ns).get_opt(name).await {
        Ok(l) => l,
        Err(e) => {
            c.fail(format!("cannot read Lease {name}: {}", chain(&e)), read_hint("leases"));
            return;
        }
    };
    let spec = lease.and_then(|l| l.spec).unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let age = spec.renew_time.map(|t| Timestamp::now().as_second() - t.0.as_second());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match (&holder, age) {
        (Some(holder), Some(age)) if age <= duration => {
            c.pass(format!("replica {holder} leads (Lease {name}, renewed {age}s ago)"));
        }
        _ => c.fail(
            format!(
                "no replica holds the Lease {name}{}: no one writes policy status",
                match (&holder, age) {
                    (Some(h), Some(a)) => format!(" (last holder {h}, renewed {a}s ago)"),
                    _ => String::new(),
                }
            ),
            format!("kubectl logs -n {ns} deployment/{deployment} shows why the replicas cannot renew it"),
        ),
    }
}

/// The webhook configuration, its caBundle against the serving certificate, and their expiry.
/// Returns the namespaces the webhook never injects into (from its namespace selectors).
async fn webhook(cluster: &Cluster, args: &CheckArgs, names: &Names, c: &mut Checks) -> Vec<String> {
    c.part("webhook");
    let (ns, deployment) = (&names.namespace, &names.deployment);
    let Some(name) = &names.webhook else {
        c.skip(format!("the webhook (deployment/{deployment} sets no BREAKWATER_WEBHOOK_CONFIGURATION)"));
        return Vec::new();
    };
    let configuration =
        match Api::<MutatingWebhookConfiguration>::all(cluster.client.clone()).get_opt(name).await {
            Ok(Some(w)) => w,
            Ok(None) => {
                c.fail(
                    format!("the MutatingWebhookConfiguration {name} is missing: no pod gets a sidecar"),
                    "`helm upgrade <release> <chart> -n <namespace> --reuse-values` puts it back",
                );
                return Vec::new();
            }
            Err(e) => {
                c.fail(
                    format!("cannot read MutatingWebhookConfiguration {name}: {}", chain(&e)),
                    read_hint("mutatingwebhookconfigurations"),
                );
                return Vec::new();
            }
        };
    let excluded = excluded_namespaces(&configuration);
    let writer = if names.external_certificates { "cert-manager's CA injector" } else { "the operator" };
    let bundles: Vec<(String, Vec<u8>)> = configuration
        .webhooks
        .iter()
        .flatten()
        .map(|w| {
            (w.name.clone(), w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default())
        })
        .collect();
    if let Some((hook, _)) = bundles.iter().find(|(_, b)| b.is_empty()) {
        c.fail(
            format!("webhook {hook} in {name} has no caBundle: the API server cannot call it"),
            format!("{writer} writes it once it runs: is deployment/{deployment} up (above)?"),
        );
        return excluded;
    }
    c.pass(format!("MutatingWebhookConfiguration {name} is present with {} webhooks", bundles.len()));

    let (Some(secret), Some(service)) = (&names.secret, &names.service) else {
        c.skip(format!("the caBundle (deployment/{deployment} names no Secret or Service)"));
        return excluded;
    };
    let tls_crt = match Api::<Secret>::namespaced(cluster.client.clone(), ns).get_opt(secret).await {
        Ok(Some(s)) => s.data.and_then(|mut d| d.remove("tls.crt")).map(|b| b.0),
        Ok(None) => None,
        Err(e) => {
            c.fail(
                format!("cannot read Secret {secret} to verify the caBundle: {}", chain(&e)),
                format!("this check needs `get` on secrets in {ns}; the other checks do not"),
            );
            return excluded;
        }
    };
    let Some(tls_crt) = tls_crt else {
        c.fail(
            format!("Secret {secret} holds no tls.crt: the webhook has no certificate to serve"),
            format!("{writer} writes it: kubectl logs -n {ns} deployment/{deployment}"),
        );
        return excluded;
    };
    let dns = format!("{service}.{ns}.svc");
    let now = SystemTime::now();
    match bundles.iter().find_map(|(hook, b)| tls::verify(b, &tls_crt, &dns, now).err().map(|e| (hook, e))) {
        None => c.pass(format!("the caBundle verifies the serving certificate for {dns}")),
        Some((hook, e)) => c.fail(
            format!("the caBundle of webhook {hook} does not verify the serving certificate for {dns} ({e}): the API server's calls fail"),
            format!(
                "{writer} rewrites the caBundle while it runs (within seconds); if it stays wrong: \
                 kubectl rollout restart -n {ns} deployment/{deployment}"
            ),
        ),
    }
    expiry(c, "the serving certificate (tls.crt)", &tls_crt, args.expiry_warning_days, writer);
    if let Some((_, bundle)) = bundles.first() {
        expiry(c, "the webhook's CA (caBundle)", bundle, args.expiry_warning_days, writer);
    }
    excluded
}

/// The namespaces a webhook configuration never selects: `kubernetes.io/metadata.name NotIn
/// [...]` in its namespace selectors (the chart's `injection.excludeNamespaces`, kube-system,
/// the release's own).
fn excluded_namespaces(configuration: &MutatingWebhookConfiguration) -> Vec<String> {
    configuration
        .webhooks
        .iter()
        .flatten()
        .filter_map(|w| w.namespace_selector.as_ref()?.match_expressions.as_ref())
        .flatten()
        .filter(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .flat_map(|e| e.values.iter().flatten().cloned())
        .collect()
}

fn expiry(c: &mut Checks, what: &str, pem: &[u8], warn_days: u32, writer: &str) {
    let now = Timestamp::now().as_second();
    match tls::not_after(pem) {
        Err(e) => c.fail(
            format!("{what} cannot be read: {e}"),
            format!("{writer} writes it; delete it and it writes a new one"),
        ),
        Ok(ends) => {
            // The earliest end is the one that breaks calls first (a bundle may hold an old CA
            // beside the new one during rotation: then the latest matters; take the latest).
            let end = ends.iter().copied().max().unwrap_or(0);
            let days = (end - now).div_euclid(86_400);
            let date =
                k8s_openapi::jiff::Timestamp::from_second(end).map(|t| t.to_string()).unwrap_or_default();
            if end <= now {
                c.fail(
                    format!("{what} expired at {date}"),
                    format!("{writer} renews it before the end: is it running?"),
                );
            } else if days < i64::from(warn_days) {
                c.warn(
                    format!("{what} expires in {days} days ({date})"),
                    format!("{writer} renews it before the end; if the date does not move, see its logs"),
                );
            } else {
                c.pass(format!("{what} is valid for {days} more days (until {date})"));
            }
        }
    }
}

/// A server-side dry-run Pod comes back with the sidecar: the API server called the webhook,
/// over TLS, and the operator answered with the patch.
async fn injection(cluster: &Cluster, namespaces: &[Namespace], excluded: &[String], c: &mut Checks) {
    c.part("injection");
    // A labelled namespace the webhook selects (not excluded, not being deleted) when there is
    // one; otherwise a Pod that opts in on its own, in the context's namespace.
    let labelled = namespaces
        .iter()
        .filter(|n| pods::labelled(n) && !pods::terminating(n) && !excluded.contains(&n.name_any()))
        .map(ResourceExt::name_any)
        .min();
    let (ns, pod_label) = match labelled {
        Some(ns) => (ns, false),
        None => (cluster.namespace.clone(), true),
    };
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "breakwater-check-"},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
    }))
    .expect("a pod");
    if pod_label {
        pod.labels_mut().insert(pods::INJECT.into(), "enabled".into());
    }
    let how = if pod_label {
        format!("labelled {}=enabled in namespace {ns}", pods::INJECT)
    } else {
        format!("in labelled namespace {ns}")
    };
    let params = PostParams { dry_run: true, field_manager: Some("kubectl-breakwater".into()) };
    match Api::<Pod>::namespaced(cluster.client.clone(), &ns).create(&params, &pod).await {
        Ok(created) => {
            let spec = created.spec.unwrap_or_default();
            let injected = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|c| c.name == pods::PROXY);
            if injected {
                c.pass(format!("a dry-run Pod {how} comes back with the {} sidecar", pods::PROXY));
            } else {
                c.fail(
                    format!("a dry-run Pod {how} comes back without the sidecar: new pods run unprotected"),
                    "the webhook was not called or did not answer, and its failurePolicy let the Pod through: \
                     see the operator and webhook checks above, and `kubectl get events -A --field-selector reason=FailedCreate`",
                );
            }
        }
        Err(kube::Error::Api(s)) if s.code == 403 => c.fail(
            format!("cannot create a dry-run Pod in {ns}: {}", s.message),
            format!("this check needs `create` on pods in {ns} (nothing is stored: it is a dry run)"),
        ),
        Err(e) => c.fail(
            format!("the API server refused a dry-run Pod {how}: {}", chain(&e)),
            "a webhook with failurePolicy Fail that cannot be called refuses every Pod it selects: \
             see the operator and webhook checks above",
        ),
    }
}

/// Every policy accepted and programmed: its sidecars run its current generation.
async fn policies(cluster: &Cluster, namespaces: &[Namespace], c: &mut Checks) {
    c.part("policies");
    let report = match status::policies(cluster, None).await {
        Ok(p) => p,
        Err(e) => {
            c.fail(format!("cannot list CommunicationPolicies: {e}"), read_hint("communicationpolicies"));
            return;
        }
    };
    let terminating = |ns: &str| namespaces.iter().any(|n| n.name_any() == ns && pods::terminating(n));
    let report: Vec<_> = report.into_iter().filter(|p| !terminating(&p.namespace)).collect();
    let unhealthy: Vec<_> = report.iter().filter(|p| !p.healthy()).collect();
    for p in &unhealthy {
        if p.waiting_for_targets() {
            c.warn(
                format!("{}/{}: {}", p.namespace, p.name, p.problem()),
                format!(
                    "nothing enforces it until its Service exists in {}: check targetRef.name",
                    p.namespace
                ),
            );
            continue;
        }
        c.fail(
            format!("{}/{}: {}", p.namespace, p.name, p.problem()),
            format!("kubectl describe communicationpolicy {} -n {}", p.name, p.namespace),
        );
    }
    if unhealthy.iter().all(|p| p.waiting_for_targets()) {
        match report.len() - unhealthy.len() {
            0 if report.is_empty() => c.pass("no CommunicationPolicy yet"),
            0 => {}
            n => c.pass(format!(
                "{n} {} accepted, and every sidecar runs {}",
                if n == 1 { "policy" } else { "policies" },
                if n == 1 { "it" } else { "them" }
            )),
        }
    }
}

/// Pods that should have a sidecar have a ready one, which applied what the operator compiled
/// for it.
async fn sidecars(cluster: &Cluster, breakwater: &str, namespaces: &[Namespace], c: &mut Checks) {
    c.part("sidecars");
    let pods = match pods::survey_in(cluster, None, namespaces).await {
        Ok(p) => p,
        Err(e) => {
            c.fail(format!("cannot list pods: {e}"), read_hint("pods"));
            return;
        }
    };
    let (mut ready, before) = (0, c.items.len());
    for p in &pods {
        match &p.state {
            pods::SidecarState::Ready => ready += 1,
            pods::SidecarState::Missing => c.fail(
                format!(
                    "pod {}/{} runs without the sidecar though injection applies to it",
                    p.namespace, p.name
                ),
                "it was created while the webhook was down or before the label: restart its owner \
                 (kubectl rollout restart deployment/<name> -n <namespace>) to recreate it with the sidecar",
            ),
            pods::SidecarState::NotReady { detail } => c.fail(
                format!("pod {}/{}: its {} is not ready ({detail})", p.namespace, p.name, pods::PROXY),
                format!("kubectl logs {} -n {} -c {}", p.name, p.namespace, pods::PROXY),
            ),
            pods::SidecarState::OptedOut | pods::SidecarState::HostNetwork => {}
        }
    }
    if c.items.len() == before {
        c.pass(format!(
            "{ready} {} a ready sidecar, and no pod that should have one lacks it",
            if ready == 1 { "pod runs" } else { "pods run" }
        ));
    }
    converged(cluster, breakwater, &pods, c).await;
}

/// Every ready sidecar applied the snapshot the operator compiled for it now.
async fn converged(cluster: &Cluster, breakwater: &str, pods: &[pods::PodSidecar], c: &mut Checks) {
    let ready: Vec<_> = pods.iter().filter(|p| p.state == pods::SidecarState::Ready).collect();
    if ready.is_empty() {
        return;
    }
    let views = match diagnostics::deliveries(cluster, breakwater).await {
        Ok(v) => v,
        Err(why) => {
            c.warn(
                format!("cannot tell whether the sidecars applied their snapshots: {why}"),
                "the operator's diagnostics are read through the pod proxy: `get` on pods/proxy in its namespace, \
                 and the chart's diagnostics.enabled",
            );
            return;
        }
    };
    let before = c.items.len();
    for p in &ready {
        let (what, hint) = match diagnostics::convergence(&views, &p.namespace, &p.name) {
            diagnostics::Convergence::Current => continue,
            diagnostics::Convergence::Behind { applied, compiled } => (
                format!(
                    "pod {}/{}: its sidecar runs snapshot {applied}, the operator compiled {compiled}",
                    p.namespace, p.name
                ),
                format!(
                    "kubectl breakwater config {} -n {} shows what differs; the proxy's log says why it refused",
                    p.name, p.namespace
                ),
            ),
            diagnostics::Convergence::Pending => (
                format!(
                    "pod {}/{}: its sidecar is connected but has applied no snapshot",
                    p.namespace, p.name
                ),
                format!("kubectl logs {} -n {} -c {}", p.name, p.namespace, pods::PROXY),
            ),
            diagnostics::Convergence::NotConnected => (
                format!(
                    "pod {}/{}: its sidecar streams from no operator replica (it keeps its last snapshot)",
                    p.namespace, p.name
                ),
                format!(
                    "kubectl logs {} -n {} -c {} (can it reach the config API?)",
                    p.name,
                    p.namespace,
                    pods::PROXY
                ),
            ),
            diagnostics::Convergence::NotCompiled => (
                format!("pod {}/{}: the operator has compiled no snapshot for it", p.namespace, p.name),
                "is it labelled breakwater.dev/injected=true? the operator's log says why".to_owned(),
            ),
        };
        c.fail(what, hint);
    }
    if c.items.len() == before {
        c.pass(format!(
            "{} {} the snapshot the operator compiled for {}",
            ready.len(),
            if ready.len() == 1 { "sidecar enforces" } else { "sidecars enforce" },
            if ready.len() == 1 { "it" } else { "them" }
        ));
    }
}

fn read_hint(resource: &str) -> String {
    format!("kubectl auth can-i list {resource} (check needs read access to the install and the pods)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excluded_namespaces_come_from_the_webhooks_namespace_selectors() {
        let configuration: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bw-breakwater-injector"},
            "webhooks": [{
                "name": "namespace.inject.breakwater.dev",
                "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {},
                "namespaceSelector": {"matchExpressions": [
                    {"key": "breakwater.dev/inject", "operator": "In", "values": ["enabled"]},
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "breakwater-system"]}
                ]}
            }]
        }))
        .expect("a configuration");
        assert_eq!(excluded_namespaces(&configuration), ["kube-system", "breakwater-system"]);
    }
}
