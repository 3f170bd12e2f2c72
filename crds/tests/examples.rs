//! Every manifest in `examples/` is valid, and every manifest in `examples/invalid/` is refused
//! with the field path its header announces (`# expect: spec.retries.attempts`), by
//! `validate()` and, where its header says `# rule: cel`, by the CRD's own CEL rules too.

use std::{fs, path::PathBuf};

use breakwater_crds::{EffectivePolicy, load};
use kube::core::cel::Validator;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_owned))
}

fn crd_schema() -> serde_json::Value {
    let crd = serde_json::to_value(breakwater_crds::crd()).expect("CRD serializes");
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema").cloned().expect("CRD has a schema")
}

#[test]
fn every_example_is_valid_everywhere() {
    let files = yaml_files("examples");
    assert!(files.len() >= 3, "expected at least three examples, found {files:?}");
    let schema = crd_schema();
    for file in files {
        let text = fs::read_to_string(&file).expect("readable example");
        let docs = load::documents(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for doc in docs {
            let policy = load::policy(&doc.value)
                .unwrap_or_else(|e| panic!("{} {}: {e}", file.display(), doc.describe()));
            EffectivePolicy::resolve(&policy.spec).expect("a valid policy resolves");
            let dead = breakwater_crds::warnings(&policy.spec);
            assert!(
                dead.is_empty(),
                "{}: a shipped example with settings that never take effect: {dead:?}",
                file.display()
            );
            Validator::new()
                .validate(&schema, &doc.value, None)
                .unwrap_or_else(|e| panic!("{}: CEL rules refuse a valid example: {e:?}", file.display()));
        }
    }
}

#[test]
fn every_invalid_example_names_its_field() {
    let files = yaml_files("examples/invalid");
    assert!(files.len() >= 20, "expected one invalid manifest per rule, found {}", files.len());
    let schema = crd_schema();
    let mut cel_checked = 0;
    for file in files {
        let text = fs::read_to_string(&file).expect("readable example");
        let expect = header(&text, "expect")
            .unwrap_or_else(|| panic!("{}: missing '# expect: <field path>' header", file.display()));
        let rule = header(&text, "rule").unwrap_or_default();
        let docs = load::documents(&text).expect("invalid examples are still valid YAML");
        assert_eq!(docs.len(), 1, "{}: one manifest per file", file.display());

        let errors = load::policy(&docs[0].value)
            .err()
            .unwrap_or_else(|| panic!("{}: validate() accepted it", file.display()));
        assert!(
            errors.has_path(&expect),
            "{}: expected a problem at {expect}, got: {errors}",
            file.display()
        );

        if rule.starts_with("cel") {
            let cel = Validator::new()
                .validate(&schema, &docs[0].value, None)
                .err()
                .unwrap_or_else(|| panic!("{}: the CEL rules accepted it", file.display()));
            assert!(
                cel.iter().any(|e| e.field_path == expect),
                "{}: expected a CEL error at {expect}, got: {cel:?}",
                file.display()
            );
            cel_checked += 1;
        }
    }
    assert!(cel_checked >= 10, "only {cel_checked} CEL rules were exercised");
}
