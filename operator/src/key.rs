//! [`ObjKey`]: a namespaced object's `namespace/name`, the key every index uses.

use std::{fmt, str::FromStr};

use kube::{Resource, ResourceExt};

/// `namespace/name` of a namespaced object. Orders by namespace, then name. Written (and read,
/// in serde formats too) as `namespace/name`.
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

impl FromStr for ObjKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ObjKey::new(namespace, name))
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

impl serde::Serialize for ObjKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_what_it_writes_and_refuses_anything_else() {
        let key = ObjKey::new("shop", "payments");
        assert_eq!(key.to_string().parse::<ObjKey>(), Ok(key.clone()));
        let json =
            serde_json::to_string(&std::collections::BTreeMap::from([(key.clone(), 1)])).expect("json");
        assert_eq!(json, r#"{"shop/payments":1}"#);
        let back: std::collections::BTreeMap<ObjKey, i32> = serde_json::from_str(&json).expect("json");
        assert_eq!(back.into_keys().collect::<Vec<_>>(), [key]);
        for bad in ["payments", "/payments", "shop/", "a/b/c", ""] {
            assert!(bad.parse::<ObjKey>().is_err(), "{bad:?}");
        }
    }
}
