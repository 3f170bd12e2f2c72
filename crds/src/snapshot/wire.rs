//! Reading and writing snapshots as JSON, tolerantly.
//!
//! Local policy files are read strictly (a typo must not silently do nothing, see
//! [`crate::load`]); snapshots from the operator are read tolerantly, because during an upgrade a
//! newer operator legitimately sends fields an older sidecar has never heard of. Those fields are
//! skipped and reported by path (`serde_ignored`), so the sidecar can count them, and the schema
//! number decides compatibility before anything else is read.

use serde_json::Value;

use super::{SCHEMA_VERSION, Snapshot};

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all, or not an object.
    #[error("the snapshot is not a JSON object: {0}")]
    NotJson(String),
    /// No `schema` number.
    #[error("the snapshot has no schema number; this sidecar reads schema {SCHEMA_VERSION}")]
    NoSchema,
    /// A schema this build does not read.
    #[error(
        "the snapshot uses schema {found}, this sidecar reads schema {SCHEMA_VERSION} only; \
         upgrade the sidecar (or run an operator that still writes schema {SCHEMA_VERSION})"
    )]
    UnsupportedSchema {
        /// The schema found.
        found: u64,
    },
    /// A field of a known name has the wrong type or value.
    #[error("{path}: {message}")]
    Invalid {
        /// Where, e.g. `services[2].ports[0].endpoints[1].address`.
        path: String,
        /// What was wrong.
        message: String,
    },
}

/// A snapshot that was read, and what in it was not understood.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Paths of fields this build does not know (ignored), e.g. `services[0].ports[1].weight`.
    pub unknown_fields: Vec<String>,
}

/// Reads a snapshot from JSON: the schema first, then every known field; unknown fields are
/// ignored and listed in [`Decoded::unknown_fields`].
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(DecodeError::NotJson("expected an object".into()));
    }
    match value.get("schema").and_then(Value::as_u64) {
        None => return Err(DecodeError::NoSchema),
        Some(found) if found != u64::from(SCHEMA_VERSION) => {
            return Err(DecodeError::UnsupportedSchema { found });
        }
        Some(_) => {}
    }
    let mut unknown_fields = Vec::new();
    let mut record =
        |path: serde_ignored::Path<'_>| unknown_fields.push(crate::load::normalise_path(&path.to_string()));
    let de = serde_ignored::Deserializer::new(&value, &mut record);
    let snapshot: Snapshot = serde_path_to_error::deserialize(de).map_err(|e| DecodeError::Invalid {
        path: crate::load::normalise_path(&e.path().to_string()),
        message: e.inner().to_string(),
    })?;
    Ok(Decoded { snapshot, unknown_fields })
}

/// Writes a snapshot as JSON.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    serde_json::to_vec(snapshot).expect("a snapshot serializes to JSON")
}
