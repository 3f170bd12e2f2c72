//! [`Lenient`]: a watched object that may fail to parse without failing its watch.
//!
//! kube's watcher decodes a whole list page, or a watch event, as typed objects: one object our
//! types cannot read — a policy written under an older schema, a value the API server's schema
//! lets through but a `u32` cannot hold — would fail every relist, and the index would never
//! become ready. Wrapping each object keeps its metadata (so it has a key, and a status can be
//! written on it) and either the typed object or the reason, with its field path, that it
//! could not be read. The loop counts and logs such objects and carries on.

use std::{borrow::Cow, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::Value;

/// An object of kind `K`, or why it could not be read as one.
#[derive(Debug, Clone)]
pub struct Lenient<K> {
    /// The object's metadata (always readable: the API server validates it).
    pub metadata: ObjectMeta,
    /// The object, or the path and reason it could not be read.
    pub object: Result<Arc<K>, String>,
    /// The raw `status`, kept only when the object could not be read (so its status can still
    /// be compared with what it should be).
    pub raw_status: Option<Value>,
}

impl<K> Lenient<K> {
    /// The object, when it could be read.
    pub fn get(&self) -> Option<&Arc<K>> {
        self.object.as_ref().ok()
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let metadata = match value.get("metadata") {
            Some(m) => ObjectMeta::deserialize(m).map_err(serde::de::Error::custom)?,
            None => ObjectMeta::default(),
        };
        let object = serde_path_to_error::deserialize::<_, K>(&value).map(Arc::new).map_err(|e| {
            let path = e.path().to_string();
            if path.is_empty() || path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        });
        let raw_status = if object.is_err() { value.get("status").cloned() } else { None };
        Ok(Lenient { metadata, object, raw_status })
    }
}

#[cfg(test)]
mod tests {
    use breakwater_crds::CommunicationPolicy;
    use serde_json::json;

    use super::*;

    #[test]
    fn an_unreadable_object_keeps_its_metadata_and_says_where() {
        let value = json!({
            "apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
            "metadata": {"name": "p", "namespace": "shop", "generation": 2},
            "spec": {"targetRef": {"name": "payments"}, "retries": {"attempts": "three"}},
        });
        let l: Lenient<CommunicationPolicy> =
            serde_json::from_value(value).expect("the wrapper always reads");
        assert_eq!(l.metadata.name.as_deref(), Some("p"));
        let err = l.object.expect_err("a string is not a number of attempts");
        assert!(err.starts_with("spec.retries.attempts: invalid type"), "{err}");
        assert_eq!(Lenient::<CommunicationPolicy>::plural(&()), "communicationpolicies");
    }

    #[test]
    fn a_readable_object_is_typed() {
        let value = json!({
            "apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"targetRef": {"name": "payments"}, "timeouts": {"request": "1s"}},
        });
        let l: Lenient<CommunicationPolicy> = serde_json::from_value(value).expect("reads");
        assert_eq!(l.get().map(|p| p.spec.target_ref.name.clone()), Some(Some("payments".into())));
    }
}
