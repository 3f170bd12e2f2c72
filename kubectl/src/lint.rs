//! `kubectl breakwater lint`: CommunicationPolicy manifests checked offline with the rules the
//! API server enforces and the sidecar applies to a local file — the same code
//! ([`breakwater_crds::load::policy`]: strict fields, then [`breakwater_crds::validate()`]), so a
//! manifest that passes here is accepted by `kubectl apply` and by the sidecar.
//!
//! A manifest directory holds Deployments and Services too: documents of other API groups are
//! listed as skipped, not errors. A `kind: List` (what `kubectl get -o yaml` prints) is read item
//! by item.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use breakwater_crds::{GROUP, load};
use serde::Serialize;
use serde_json::Value;

use crate::{
    Error,
    output::{Report, Table},
};

/// The verdict on one document.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// A valid CommunicationPolicy.
    Valid,
    /// A Breakwater document with problems.
    Invalid,
    /// Not a Breakwater resource this command checks.
    Skipped,
}

/// One problem, where it is and what is wrong.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path, `spec.retries.attempts`.
    pub path: String,
    /// What is allowed and what was found.
    pub message: String,
}

/// One document of a file.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// 1-based position in its file; `3.2` is item 2 of the List that is document 3.
    pub position: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when the document sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it is invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Problem>,
    /// Valid, but probably not what was meant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Problem>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One file.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct File {
    /// As named on the command line (`-` for standard input), or found in a directory.
    pub file: String,
    /// Why it could not be read as YAML at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its documents.
    pub documents: Vec<Document>,
}

/// What `lint` found.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct LintReport {
    /// Every file, in the order given (a directory's files sorted by name).
    pub files: Vec<File>,
    /// Valid policies.
    pub valid: usize,
    /// Invalid Breakwater documents, and files that are not YAML.
    pub invalid: usize,
    /// Documents of other kinds.
    pub skipped: usize,
    /// Warnings across every document.
    pub warnings: usize,
    /// `--strict`: warnings count as failures.
    pub strict: bool,
}

impl Report for LintReport {
    fn table(&self) -> String {
        let mut t = Table::new(&["file", "document", "kind", "name", "result"]);
        for f in &self.files {
            if let Some(e) = &f.error {
                t.row(vec![f.file.clone(), "-".into(), "-".into(), "-".into(), "invalid".into()])
                    .detail(e.clone());
            }
            for d in &f.documents {
                let result = match d.verdict {
                    Verdict::Valid if d.warnings.is_empty() => "valid".to_owned(),
                    Verdict::Valid => format!("valid, {} warning(s)", d.warnings.len()),
                    Verdict::Invalid => "invalid".to_owned(),
                    Verdict::Skipped => "skipped".to_owned(),
                };
                let name = match &d.namespace {
                    Some(ns) => format!("{ns}/{}", d.name),
                    None => d.name.clone(),
                };
                t.row(vec![f.file.clone(), d.position.clone(), d.kind.clone(), name, result]);
                for e in &d.errors {
                    t.detail(format!("error: {}: {}", e.path, e.message));
                }
                for w in &d.warnings {
                    t.detail(format!("warning: {}: {}", w.path, w.message));
                }
                if let Some(n) = &d.note {
                    t.detail(n.clone());
                }
            }
        }
        let mut out = if t.is_empty() { String::new() } else { t.render() + "\n" };
        out.push_str(&format!(
            "{} valid, {} invalid, {} skipped, {} warning(s){}\n",
            self.valid,
            self.invalid,
            self.skipped,
            self.warnings,
            if self.strict && self.warnings > 0 { " (--strict: warnings fail)" } else { "" }
        ));
        out
    }

    fn healthy(&self) -> bool {
        self.invalid == 0 && !(self.strict && self.warnings > 0)
    }
}

/// Lints `paths` (files, directories, `-`).
pub fn lint(paths: &[PathBuf], recursive: bool, strict: bool) -> Result<LintReport, Error> {
    let mut files = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| Error::Read { path: "-".into(), source })?;
            files.push(lint_text("-", &text));
            continue;
        }
        for file in expand(path, recursive)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| Error::Read { path: file.display().to_string(), source })?;
            files.push(lint_text(&file.display().to_string(), &text));
        }
    }
    let docs = || files.iter().flat_map(|f| &f.documents);
    let count = |v: Verdict| docs().filter(|d| d.verdict == v).count();
    Ok(LintReport {
        valid: count(Verdict::Valid),
        invalid: count(Verdict::Invalid) + files.iter().filter(|f| f.error.is_some()).count(),
        skipped: count(Verdict::Skipped),
        warnings: docs().map(|d| d.warnings.len()).sum(),
        strict,
        files,
    })
}

/// A file as itself; a directory as its manifests (sorted), descending only if `recursive`.
fn expand(path: &Path, recursive: bool) -> Result<Vec<PathBuf>, Error> {
    let read = |source| Error::Read { path: path.display().to_string(), source };
    if !std::fs::metadata(path).map_err(read)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(path).map_err(read)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let mut out = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                out.extend(expand(&entry, true)?);
            }
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Lints the documents of one file's `text`.
pub fn lint_text(file: &str, text: &str) -> File {
    let documents = match load::documents(text) {
        Ok(d) => d,
        Err(e) => return File { file: file.to_owned(), error: Some(e.to_string()), documents: Vec::new() },
    };
    let mut out = Vec::new();
    for doc in documents {
        let items = (doc.kind == "List").then(|| doc.value.get("items").and_then(Value::as_array).cloned());
        match items {
            Some(Some(items)) => {
                for (i, item) in items.iter().enumerate() {
                    out.push(lint_value(format!("{}.{}", doc.index, i + 1), item));
                }
            }
            _ => out.push(lint_value(doc.index.to_string(), &doc.value)),
        }
    }
    File { file: file.to_owned(), error: None, documents: out }
}

fn lint_value(position: String, value: &Value) -> Document {
    let field = |path: &str| value.pointer(path).and_then(Value::as_str).map(str::to_owned);
    let api_version = field("/apiVersion").unwrap_or_default();
    let kind = field("/kind").unwrap_or_default();
    let mut doc = Document {
        position,
        name: field("/metadata/name").unwrap_or_else(|| "(unnamed)".into()),
        namespace: field("/metadata/namespace"),
        api_version,
        kind,
        verdict: Verdict::Skipped,
        errors: Vec::new(),
        warnings: Vec::new(),
        note: None,
    };
    let group = doc.api_version.split_once('/').map(|(g, _)| g).unwrap_or_default();
    if group != GROUP {
        doc.note = Some(if doc.kind.is_empty() {
            "skipped: no kind (not a Kubernetes object)".into()
        } else {
            "skipped: not a Breakwater resource".into()
        });
        return doc;
    }
    if doc.kind == "SidecarConfig" {
        doc.note = Some(
            "skipped: a sidecar's local-mode settings; check the file with `breakwater-sidecar validate`"
                .into(),
        );
        return doc;
    }
    match load::policy(value) {
        Ok(policy) => {
            doc.verdict = Verdict::Valid;
            doc.warnings = breakwater_crds::warnings(&policy.spec)
                .into_iter()
                .map(|w| Problem { path: w.path, message: w.message })
                .collect();
        }
        Err(errors) => {
            doc.verdict = Verdict::Invalid;
            doc.errors = errors.0.into_iter().map(|e| Problem { path: e.path, message: e.message }).collect();
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\n\
        metadata: {name: payments, namespace: shop}\nspec:\n  targetRef: {name: payments}\n  timeouts: {request: 2s}\n";

    #[test]
    fn every_problem_of_an_invalid_policy_is_named_with_its_field() {
        let text = "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {name: p}\n\
            spec:\n  targetRef: {name: payments, prots: [80]}\n  retries: {attempts: 0}\n";
        let f = lint_text("p.yaml", text);
        let d = &f.documents[0];
        assert_eq!(d.verdict, Verdict::Invalid);
        assert!(d.errors.iter().any(|e| e.path == "spec.targetRef.prots"), "{:?}", d.errors);
    }

    #[test]
    fn other_kinds_are_skipped_and_list_items_are_read_one_by_one() {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- {}\n",
            serde_json::to_string(&serde_saphyr::from_str::<Value>(VALID).expect("yaml")).expect("json")
        );
        let f = lint_text("m.yaml", &text);
        let verdicts: Vec<_> = f.documents.iter().map(|d| (d.position.as_str(), d.verdict)).collect();
        assert_eq!(verdicts, [("1", Verdict::Skipped), ("2.1", Verdict::Valid)]);
    }

    #[test]
    fn a_file_that_is_not_yaml_is_invalid_not_a_crash() {
        let f = lint_text("x.yaml", "a: [unclosed\n");
        assert!(f.error.is_some());
    }
}
