//! The checks before an install: can this cluster take Breakwater, and may you install it.

use breakwater_crds::CommunicationPolicy;
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, CustomResourceExt, ResourceExt,
    api::{ListParams, PostParams},
};

use super::{CheckReport, Checks};
use crate::{args::CheckArgs, cluster::Cluster, error::chain};

/// The oldest Kubernetes the chart installs on (its `kubeVersion`).
const MINIMUM: (u32, u32) = (1, 30);
/// Native sidecars (init containers with `restartPolicy: Always`) are on by default from here
/// (beta in 1.29, GA in 1.33).
const NATIVE_SIDECARS_GA: (u32, u32) = (1, 33);

/// What `helm install` creates, as (API group, resource, namespaced): each must be allowed.
const INSTALLS: &[(&str, &str, bool)] = &[
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    ("rbac.authorization.k8s.io", "roles", true),
    ("rbac.authorization.k8s.io", "rolebindings", true),
    ("apps", "deployments", true),
    ("", "services", true),
    ("", "serviceaccounts", true),
    ("", "configmaps", true),
    ("policy", "poddisruptionbudgets", true),
];

/// Other meshes' injectors: a pod both inject gets two proxies fighting over its traffic.
const OTHER_INJECTORS: &[(&str, &str)] = &[
    ("istio-sidecar-injector", "Istio"),
    ("linkerd-proxy-injector-webhook-config", "Linkerd"),
    ("kuma-admission", "Kuma"),
];

/// Runs the pre-install checks.
pub async fn pre(cluster: &Cluster, args: &CheckArgs) -> CheckReport {
    let mut c = Checks::new();
    c.part("kubernetes-api");
    c.pass(format!("the API server at {} answers ({})", cluster.url, cluster.git_version));
    let v = cluster.version;
    if v < MINIMUM {
        c.fail(
            format!(
                "Kubernetes {}.{} is older than {}.{}, the oldest the chart installs on",
                v.0, v.1, MINIMUM.0, MINIMUM.1
            ),
            "upgrade the cluster",
        );
    } else {
        c.pass(format!("Kubernetes {}.{} is {}.{} or newer", v.0, v.1, MINIMUM.0, MINIMUM.1));
    }
    if v >= NATIVE_SIDECARS_GA {
        c.pass("native sidecars are generally available: the proxy starts before the app and stops after it");
    } else {
        c.warn(
            "native sidecars are beta here (on unless the SidecarContainers feature gate is turned off)",
            "where they are off, the proxy is injected as a plain container: it may start after the app's first call",
        );
    }

    c.part("permissions");
    let ns = &args.breakwater_namespace;
    let mut denied = 0;
    for (group, resource, namespaced) in INSTALLS {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some((*group).to_owned()),
                    resource: Some((*resource).to_owned()),
                    verb: Some("create".into()),
                    namespace: namespaced.then(|| ns.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let whom = if *namespaced { format!("{resource} in {ns}") } else { (*resource).to_owned() };
        match Api::<SelfSubjectAccessReview>::all(cluster.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => {
                denied += 1;
                c.fail(
                    format!("you may not create {whom}"),
                    "helm install creates cluster-wide objects (the CRD, the webhook, ClusterRoles): run it as a cluster administrator",
                );
            }
            Err(e) => {
                denied += 1;
                c.fail(
                    format!("cannot ask whether you may create {whom}: {}", chain(&e)),
                    format!("kubectl auth can-i create {whom}"),
                );
            }
        }
    }
    if denied == 0 {
        c.pass(format!("you may create everything the chart installs ({} kinds)", INSTALLS.len()));
    }

    c.part("conflicts");
    let crd = CommunicationPolicy::crd_name();
    match Api::<CustomResourceDefinition>::all(cluster.client.clone()).get_opt(crd).await {
        Ok(None) => c.pass(format!("{crd} is not installed yet")),
        Ok(Some(existing)) => c.warn(
            format!(
                "{crd} is already installed (release {})",
                existing.labels().get("app.kubernetes.io/version").map_or("unknown", String::as_str)
            ),
            "Breakwater is installed already: `helm upgrade`, and `kubectl breakwater check` without --pre",
        ),
        Err(e) => c.fail(
            format!("cannot read {crd}: {}", chain(&e)),
            "kubectl auth can-i get customresourcedefinitions",
        ),
    }
    match Api::<MutatingWebhookConfiguration>::all(cluster.client.clone()).list(&ListParams::default()).await
    {
        Ok(list) => {
            let mut conflicts = 0;
            for w in &list.items {
                let name = w.name_any();
                if let Some((_, mesh)) = OTHER_INJECTORS.iter().find(|(prefix, _)| name.starts_with(prefix)) {
                    conflicts += 1;
                    c.warn(
                        format!("{mesh} injects sidecars here too (MutatingWebhookConfiguration {name})"),
                        "label a namespace for one mesh only: a pod with both proxies has two sets of timeouts and retries",
                    );
                } else if w.labels().get("app.kubernetes.io/part-of").is_some_and(|p| p == "breakwater") {
                    conflicts += 1;
                    c.warn(
                        format!("a Breakwater webhook is installed already ({name})"),
                        "install one release per cluster; `helm list -A` shows where it is",
                    );
                }
            }
            if conflicts == 0 {
                c.pass("no other sidecar injector and no Breakwater webhook installed");
            }
        }
        Err(e) => c.fail(
            format!("cannot list MutatingWebhookConfigurations: {}", chain(&e)),
            "kubectl auth can-i list mutatingwebhookconfigurations",
        ),
    }
    c.report("pre-install", cluster.url.clone())
}
