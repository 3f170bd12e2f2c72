//! The downward API: the pod fields a `fieldRef` names, for env variables and volumes alike.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// The downward API fields the kubelet resolves for `fieldRef`.
pub(crate) fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let label_or_annotation = |prefix: &str, map: &BTreeMap<String, String>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => Some(pod.name_any()),
        "metadata.namespace" => pod.namespace(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        p if p.starts_with("metadata.labels['") => label_or_annotation("metadata.labels['", pod.labels()),
        p if p.starts_with("metadata.annotations['") => {
            label_or_annotation("metadata.annotations['", pod.annotations())
        }
        _ => None,
    }
}
