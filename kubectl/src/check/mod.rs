//! `kubectl breakwater check`: the install checked part by part, in the order a request meets
//! them (API, operator, webhook, certificates, injection, policies, sidecars), each check PASS,
//! WARN or FAIL, and every FAIL with a hint that says what to do. `--pre` checks what an install
//! needs instead. Like `linkerd check`, a check that cannot be made (a read is forbidden) is a
//! FAIL that says so, not an error: the rest still run.

mod post;
mod pre;
pub mod tls;

use std::fmt::Write as _;

pub use post::post;
pub use pre::pre;
use serde::Serialize;

use crate::output::Report;

/// A check's result.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// As it should be.
    Pass,
    /// Works now, but needs attention (a certificate near its end, a version skew).
    Warn,
    /// Broken: something users rely on does not work.
    Fail,
    /// Not checked, because an earlier check failed.
    Skip,
}

/// One check.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    /// The part of the install (`operator`, `webhook`, …).
    pub part: &'static str,
    /// What was found, as a sentence.
    pub check: String,
    /// The result.
    pub verdict: Verdict,
    /// What to do about a FAIL or WARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What `check` found.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// `install` or `pre-install`.
    pub kind: &'static str,
    /// The API server checked.
    pub server: String,
    /// The checks, in order.
    pub checks: Vec<Item>,
}

impl Report for CheckReport {
    fn table(&self) -> String {
        let mut out = String::new();
        let mut part = "";
        for item in &self.checks {
            if item.part != part {
                if !part.is_empty() {
                    out.push('\n');
                }
                part = item.part;
                let _ = writeln!(out, "{part}\n{}", "-".repeat(part.len()));
            }
            let verdict = match item.verdict {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "SKIP",
            };
            let _ = writeln!(out, "{verdict}  {}", item.check);
            if let Some(hint) = &item.hint {
                let _ = writeln!(out, "      hint: {hint}");
            }
        }
        let count = |v: Verdict| self.checks.iter().filter(|i| i.verdict == v).count();
        let (fail, warn) = (count(Verdict::Fail), count(Verdict::Warn));
        let _ = writeln!(
            out,
            "\n{}",
            match (fail, warn) {
                (0, 0) => format!("All {} checks passed.", self.checks.len()),
                (0, w) => format!("No check failed; {w} {}.", plural(w, "warning")),
                (f, w) => format!("{f} {} failed, {w} {}.", plural(f, "check"), plural(w, "warning")),
            }
        );
        out
    }

    fn healthy(&self) -> bool {
        self.checks.iter().all(|i| i.verdict != Verdict::Fail)
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { word.to_owned() } else { format!("{word}s") }
}

/// The checks as they are made: the current part, then one call per result.
#[derive(Debug)]
struct Checks {
    part: &'static str,
    items: Vec<Item>,
}

impl Checks {
    fn new() -> Checks {
        Checks { part: "", items: Vec::new() }
    }

    fn part(&mut self, part: &'static str) {
        self.part = part;
    }

    fn push(&mut self, verdict: Verdict, check: impl Into<String>, hint: Option<String>) {
        self.items.push(Item { part: self.part, check: check.into(), verdict, hint });
    }

    fn pass(&mut self, check: impl Into<String>) {
        self.push(Verdict::Pass, check, None);
    }

    fn warn(&mut self, check: impl Into<String>, hint: impl Into<String>) {
        self.push(Verdict::Warn, check, Some(hint.into()));
    }

    fn fail(&mut self, check: impl Into<String>, hint: impl Into<String>) {
        self.push(Verdict::Fail, check, Some(hint.into()));
    }

    fn skip(&mut self, check: impl Into<String>) {
        self.push(Verdict::Skip, check, None);
    }

    fn report(self, kind: &'static str, server: String) -> CheckReport {
        CheckReport { kind, server, checks: self.items }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_groups_by_part_hints_under_fails_and_a_summary_counts() {
        let mut c = Checks::new();
        c.part("operator");
        c.pass("2 of 2 replicas ready");
        c.fail("no replica holds the Lease", "kubectl logs …");
        c.part("webhook");
        c.warn("the serving certificate expires in 3 days", "it renews by itself");
        let report = c.report("install", "https://127.0.0.1:6443".into());
        assert!(!report.healthy());
        assert_eq!(
            report.table(),
            "operator\n--------\nPASS  2 of 2 replicas ready\nFAIL  no replica holds the Lease\n      hint: kubectl logs …\n\n\
             webhook\n-------\nWARN  the serving certificate expires in 3 days\n      hint: it renews by itself\n\n\
             1 check failed, 1 warning.\n"
        );
    }
}
