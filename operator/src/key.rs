//! [`ObjKey`]: a namespaced object's `namespace/name`, the key every index uses.

use std::fmt;

use kube::{Resource, ResourceExt};

/// `namespace/name` of a namespaced object. Orders by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjKey {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjKey { namespace: namespace.to_owned(), name: name.to_owned() }
    }

    /// The key of a namespaced object; `None` for an object without a namespace or name.
    pub fn of<K: Resource>(object: &K) -> Option<Self> {
        let name = object.meta().name.clone()?;
        Some(ObjKey { namespace: object.namespace()?, name })
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
