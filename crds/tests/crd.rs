//! The generated CRD: committed copy is fresh, the schema is structural, every field is
//! documented, and every CEL rule compiles.

use std::{fs, path::PathBuf};

use serde_json::Value;

fn schema() -> Value {
    let crd = serde_json::to_value(breakwater_crds::crd()).expect("CRD serializes");
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema").cloned().expect("CRD has a schema")
}

#[test]
fn committed_chart_crd_matches_the_types() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(breakwater_crds::crdgen::CHART_TEMPLATE);
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == breakwater_crds::crdgen::chart_template(),
        "{} is stale: run `make crds` and commit the result",
        path.display()
    );
}

/// Walks every schema node below `node`, calling `f(path, node)`.
fn walk(path: &str, node: &Value, f: &mut impl FnMut(&str, &Value)) {
    f(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(&format!("{path}.{k}"), v, f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, f);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), extra, f);
    }
}

#[test]
fn schema_is_structural() {
    let mut problems = Vec::new();
    walk("", &schema(), &mut |path, node| {
        // Every node has a type (metadata is typed by the API server itself).
        let typed = node.get("type").is_some() || node.get("x-kubernetes-int-or-string").is_some();
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for banned in ["$ref", "oneOf", "anyOf", "allOf", "not", "definitions", "$defs"] {
            if node.get(banned).is_some() {
                problems.push(format!("{path}: uses {banned}"));
            }
        }
        if node.get("properties").is_some() && node.get("additionalProperties").is_some() {
            problems.push(format!("{path}: both properties and additionalProperties"));
        }
        // The only free-form maps are label maps (string → string), as in every Kubernetes API.
        if let Some(extra) = node.get("additionalProperties") {
            let label_map =
                path.ends_with(".matchLabels") && extra.get("type") == Some(&Value::from("string"));
            if !label_map {
                problems.push(format!("{path}: untyped or undocumented map"));
            }
        }
        if node.get("x-kubernetes-preserve-unknown-fields").is_some() {
            problems.push(format!("{path}: preserves unknown fields"));
        }
    });
    assert!(problems.is_empty(), "not structural:\n{}", problems.join("\n"));
}

#[test]
fn every_field_is_documented() {
    let mut missing = Vec::new();
    walk("", &schema(), &mut |path, node| {
        let top_level = matches!(path, ".apiVersion" | ".kind" | ".metadata");
        let doc = node.get("description").and_then(Value::as_str).unwrap_or_default();
        if !top_level && !path.ends_with("[]") && !path.ends_with("{}") && doc.trim().len() < 10 {
            missing.push(path.to_owned());
        }
    });
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}

#[test]
fn spec_field_docs_state_their_defaults() {
    // `kubectl explain` must tell a user what happens when a field is omitted.
    let schema = schema();
    let mut missing = Vec::new();
    walk("", &schema.pointer("/properties/spec").cloned().expect("spec"), &mut |path, node| {
        let doc = node.get("description").and_then(Value::as_str).unwrap_or_default();
        let nullable = node.get("nullable") == Some(&Value::Bool(true));
        let selector_internals = path.contains("elector.");
        if nullable && !selector_internals && !doc.contains("Default") && !doc.contains("Omit") {
            missing.push(path.to_owned());
        }
    });
    assert!(missing.is_empty(), "optional fields that do not state a default: {missing:?}");
}

#[test]
fn every_cel_rule_compiles() {
    let compiled = kube::core::cel::compile_schema(&schema());
    assert!(!compiled.has_errors(), "CEL compilation errors: {:?}", compiled.compilation_errors());
    let rules = serde_json::to_string(&schema()).expect("schema").matches("\"rule\"").count();
    assert!(rules >= 15, "expected the cross-field rules in the schema, found {rules}");
}

#[test]
fn names_printer_columns_and_status_as_documented() {
    let crd = breakwater_crds::crd();
    assert_eq!(crd.spec.group, "breakwater.dev");
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["cpol".to_owned()][..]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource");
    let columns: Vec<_> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Target", "Mode", "Accepted", "Ready", "Age"]);
}
