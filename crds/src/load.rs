//! Reading policies from YAML or JSON documents, exactly as they would be applied to a cluster.
//!
//! `kubectl apply` rejects unknown fields (strict field validation) and the API server reports
//! type errors with their path; a local file must get the same treatment, or a typo such as
//! `atempts: 3` would silently do nothing. Unknown fields are found with `serde_ignored` and
//! type errors located with `serde_path_to_error`, both by serde's maintainer.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{CommunicationPolicy, FieldError, GROUP, VERSION, ValidationErrors};

/// One document of a multi-document file.
#[derive(Debug, Clone)]
pub struct Document {
    /// 1-based position in the file, for messages.
    pub index: usize,
    /// `apiVersion`, if any.
    pub api_version: String,
    /// `kind`, if any.
    pub kind: String,
    /// The document itself.
    pub value: Value,
}

impl Document {
    /// `kind/name`, for messages: `CommunicationPolicy/payments`.
    pub fn describe(&self) -> String {
        let name = self.value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("(unnamed)");
        format!("document {} ({}/{})", self.index, self.kind, name)
    }

    /// Whether this is a Breakwater resource of `kind`.
    pub fn is(&self, kind: &str) -> bool {
        self.api_version == format!("{GROUP}/{VERSION}") && self.kind == kind
    }
}

/// Why a file could not be read as documents at all.
#[derive(Debug, thiserror::Error)]
#[error("not valid YAML: {0}")]
pub struct ParseError(String);

/// Splits a YAML (or JSON) stream into documents; empty documents are skipped.
pub fn documents(text: &str) -> Result<Vec<Document>, ParseError> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ParseError(e.to_string()))?;
    Ok(values
        .into_iter()
        .filter(|v| !v.is_null())
        .enumerate()
        .map(|(i, value)| Document {
            index: i + 1,
            api_version: value.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned(),
            kind: value.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned(),
            value,
        })
        .collect())
}

/// Deserializes `value` strictly: every unknown field and the first type error are reported
/// with their paths.
pub fn from_value_strict<T: DeserializeOwned>(value: &Value) -> Result<T, ValidationErrors> {
    let mut unknown: Vec<String> = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    let mut errors = ValidationErrors::default();
    // kube's generated root type reads `apiVersion` and `kind` by hand; `policy()` checks them.
    for path in unknown.iter().filter(|p| *p != "apiVersion" && *p != "kind") {
        errors.0.push(FieldError { path: normalise_path(path), message: "unknown field".to_owned() });
    }
    match result {
        Ok(v) if errors.0.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(e) => {
            let message = e.inner().to_string();
            let mut path = normalise_path(&e.path().to_string());
            // serde names a missing field in its message, at the parent's path; the API server
            // says `spec.faults.enabled: Required value`. Name it the same way.
            let missing = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
            let message = match missing {
                Some(field) => {
                    path = if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
                    "is required".to_owned()
                }
                None => message,
            };
            errors.0.push(FieldError { path, message });
            Err(errors)
        }
    }
}

/// Reads and validates a `CommunicationPolicy` document: strict parsing, then
/// [`crate::validate`]. Every problem is returned.
pub fn policy(value: &Value) -> Result<CommunicationPolicy, ValidationErrors> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let expected = format!("{GROUP}/{VERSION}");
    if api_version != expected {
        let mut errors = ValidationErrors::default();
        errors.push("apiVersion", format!("must be {expected:?}, got {api_version:?}"));
        return Err(errors);
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "CommunicationPolicy" {
        let mut errors = ValidationErrors::default();
        errors.push("kind", format!("must be \"CommunicationPolicy\", got {kind:?}"));
        return Err(errors);
    }
    let policy: CommunicationPolicy = from_value_strict(value)?;
    crate::validate(&policy)?;
    Ok(policy)
}

/// `serde_path_to_error` writes `spec.targetRef.ports[1]`, `serde_ignored` writes
/// `spec.targetRef.ports.1`: settle on the first, the API server's form.
pub(crate) fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    // `serde_ignored` marks the inside of an `Option` with `?`.
    for (i, part) in path.split('.').filter(|p| *p != "?").enumerate() {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let doc = documents(
            "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {name: p}\n\
             spec:\n  targetRef: {name: payments, prots: [80]}\n  retries: {atempts: 3}\n",
        )
        .expect("valid YAML");
        let errors = policy(&doc[0].value).expect_err("typos must be rejected");
        assert!(errors.has_path("spec.targetRef.prots"), "{errors}");
        assert!(errors.has_path("spec.retries.atempts"), "{errors}");
    }

    #[test]
    fn type_errors_are_named_with_their_path() {
        let doc = documents(
            "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {name: p}\n\
             spec:\n  targetRef: {name: payments, ports: [80, web]}\n  timeouts: {request: 1s}\n",
        )
        .expect("valid YAML");
        let errors = policy(&doc[0].value).expect_err("a string port must be rejected");
        assert!(errors.has_path("spec.targetRef.ports[1]"), "{errors}");
    }

    #[test]
    fn wrong_api_version_is_refused() {
        let doc =
            documents("apiVersion: breakwater.dev/v1\nkind: CommunicationPolicy\n").expect("valid YAML");
        let errors = policy(&doc[0].value).expect_err("v1 does not exist");
        assert!(errors.has_path("apiVersion"), "{errors}");
    }

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = documents("---\na: 1\n---\n---\nkind: X\n").expect("valid YAML");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].kind, "X");
        assert_eq!(docs[1].index, 2);
    }
}
