//! The operator's modules depend on each other in one direction only: the imports between its
//! top-level modules form a DAG, and the rules ARCHITECTURE.md states hold. Read from the
//! sources (`crate::…` paths, grouped `use crate::{…}` included), so a change that breaks a rule
//! fails here, before review.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Top-level module → the top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Rules: (module, what it must never name, why).
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("compile", "kube::runtime", "compile is a pure function of objects, not of watches"),
    ("compile", "crate::index", "compile is a pure function of objects, not of watches"),
    ("configserver", "crate::controller", "the config server reports deliveries; the controller reads them"),
    ("controller", "crate::configserver", "the controller reads deliveries, never the config server"),
    ("delivery", "crate::controller", "delivery is what both sides share"),
    ("delivery", "crate::configserver", "delivery is what both sides share"),
    ("snapshots", "crate::controller", "the hub tells the controller through a channel it is given"),
    ("index", "crate::controller", "the index owns the watches; readers come to it"),
    ("index", "crate::snapshots", "the index owns the watches; readers come to it"),
];

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src/ is readable").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file is readable");
            out.push((path.display().to_string(), text));
        }
    }
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`src/index/mod.rs` → `index`).
fn module_of(path: &str) -> String {
    let relative = path.strip_prefix(&src().display().to_string()).unwrap_or(path).trim_start_matches('/');
    let first = relative.split('/').next().unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

/// The source without `//` comments (doc comments name modules without depending on them).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The first path segment of every `crate::` path in `code`, grouped imports included.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |from: usize| -> String {
        code[from..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let start = at + "crate::".len();
        if bytes.get(start) != Some(&b'{') {
            out.insert(ident(start));
            continue;
        }
        // A group: the first segment of each item at depth 1.
        let (mut depth, mut item) = (0, start + 1);
        for (i, c) in code[start..].char_indices() {
            let i = start + i;
            match c {
                '{' => depth += 1,
                '}' | ',' if depth == 1 => {
                    out.insert(ident(item + code[item..].len() - code[item..].trim_start().len()));
                    item = i + 1;
                    if c == '}' {
                        break;
                    }
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
    }
    // Items of the crate root (`Error`, `Result`, `FIELD_MANAGER`) are not modules.
    out.retain(|m| m.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    out
}

fn graph() -> Graph {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut graph = Graph::new();
    for (path, text) in &files {
        let module = module_of(path);
        if module == "lib" || module == "main" {
            // The wiring names everything.
            continue;
        }
        let named = named_modules(&code(text));
        graph.entry(module.clone()).or_default().extend(named.into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn the_parser_reads_plain_and_grouped_paths() {
    let code = "use crate::{a::B, b, c::{D, E}};\nfn f() { crate::d::g(); crate::Error::X; }";
    assert_eq!(named_modules(code), ["a", "b", "c", "d"].map(String::from).into_iter().collect());
}

#[test]
fn the_modules_form_a_dag() {
    let graph = graph();
    assert!(graph.len() > 10, "the operator's modules were found: {graph:?}");
    // Kahn's algorithm: a module with no remaining dependencies goes next; what remains is a cycle.
    let mut remaining = graph.clone();
    loop {
        let free: Vec<String> = remaining
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !remaining.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if free.is_empty() {
            break;
        }
        for m in free {
            remaining.remove(&m);
        }
    }
    assert!(remaining.is_empty(), "modules in an import cycle: {remaining:#?}");
}

#[test]
fn the_layering_rules_hold() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut broken = Vec::new();
    for (path, text) in &files {
        let module = module_of(path);
        let code = code(text);
        for (rule_module, needle, why) in FORBIDDEN {
            if module == *rule_module && code.contains(needle) {
                broken.push(format!("{path} names {needle}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
