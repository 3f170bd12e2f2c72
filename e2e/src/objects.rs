//! Objects known only as manifests (what `helm template` or `helm get manifest` prints): find them
//! on the API server by kind, namespace and name, whatever their type.

use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind},
    discovery::{self, Scope},
};
use serde_json::Value;

use crate::{Error, Result};

/// Splits a YAML stream (helm's output) into its non-empty documents.
pub fn manifests(text: &str) -> Result<Vec<Value>> {
    let docs = breakwater_crds::load::documents(text).map_err(|e| Error::Other(e.to_string()))?;
    Ok(docs.into_iter().map(|d| d.value).collect())
}

/// `Kind namespace/name` of a manifest, for messages.
pub fn describe(object: &Value) -> String {
    let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    format!("{} {}/{}", s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

/// The group, version and kind of a manifest.
pub fn gvk(object: &Value) -> Result<GroupVersionKind> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(Error::Other(format!("manifest without apiVersion or kind: {}", describe(object))));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// The object a manifest describes, as the API server has it now (`None` if absent). Namespaced
/// objects without a namespace are looked up in `default_namespace`.
pub async fn get(client: &Client, object: &Value, default_namespace: &str) -> Result<Option<DynamicObject>> {
    let gvk = gvk(object)?;
    let (resource, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(Error::kube(format!("discovering {}", describe(object))))?;
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns =
                object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    };
    api.get_opt(name).await.map_err(Error::kube(format!("reading {}", describe(object))))
}
