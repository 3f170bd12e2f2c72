//! Printing a report: aligned columns for people, or the report itself as JSON or YAML.
//!
//! The columns are kubectl's plain layout (upper-case headers, no borders, three spaces between
//! columns), which a table crate would only let us configure back to; a few lines do it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::args::Output;

/// What a command found.
pub trait Report: Serialize {
    /// The human rendering.
    fn table(&self) -> String;
    /// Whether what it found is healthy (exit status 0) or not (1).
    fn healthy(&self) -> bool;
}

/// `report` as `output` asks.
pub fn render(report: &impl Report, output: Output) -> String {
    match output {
        Output::Table => report.table(),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(report).expect("a report serializes to JSON");
            s.push('\n');
            s
        }
        Output::Yaml => serde_saphyr::to_string(report).expect("a report serializes to YAML"),
    }
}

/// Columns aligned on the widest cell; a row may carry detail lines printed under it, indented.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| h.to_uppercase()).collect(), rows: Vec::new() }
    }

    /// Adds a row (as many cells as headers).
    pub fn row(&mut self, cells: Vec<String>) -> &mut Table {
        debug_assert_eq!(cells.len(), self.header.len(), "a row has a cell per column");
        self.rows.push((cells, Vec::new()));
        self
    }

    /// Adds a line under the last row.
    pub fn detail(&mut self, line: impl Into<String>) -> &mut Table {
        if let Some((_, details)) = self.rows.last_mut() {
            details.push(line.into());
        }
        self
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rendering, ending with a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let last = cells.len().saturating_sub(1);
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i == last {
                    out.push_str(c);
                } else {
                    let _ = write!(out, "{c:<w$}   ");
                }
            }
            out.push('\n');
        };
        line(&mut out, &self.header);
        for (cells, details) in &self.rows {
            line(&mut out, cells);
            for d in details {
                let _ = writeln!(out, "    {d}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_and_details_indent() {
        let mut t = Table::new(&["name", "result"]);
        t.row(vec!["payments".into(), "valid".into()]);
        t.row(vec!["a".into(), "invalid".into()])
            .detail("spec.retries.attempts: must be between 1 and 10, got 0");
        assert_eq!(
            t.render(),
            "NAME       RESULT\npayments   valid\na          invalid\n    spec.retries.attempts: must be between 1 and 10, got 0\n"
        );
    }
}
