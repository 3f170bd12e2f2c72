//! The harness must not rot: `breakwater-bench --smoke` runs every setup over both protocols
//! for a fraction of a second and writes its report. Nothing here looks at a timing.
//!
//! It uses the debug `breakwater-sidecar` and `breakwater-fault` beside the test's own binary
//! (`make test` builds them first with `cargo build --workspace --bins`) and HAProxy (`make test`
//! installs it through `make haproxy`). The load comes from the harness's own small generator:
//! oha, which real runs use, takes CI minutes to build from crates.io. When something is missing
//! the test fails and says which: it never skips.

use std::process::Command;

#[test]
fn smoke_run_measures_every_setup_and_writes_the_report() {
    let exe = env!("CARGO_BIN_EXE_breakwater-bench");
    let out = tempfile::tempdir().expect("a temporary directory");
    let run = Command::new(exe)
        .args(["--smoke", "--builtin-load", "--out"])
        .arg(out.path())
        .output()
        .expect("breakwater-bench starts");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "breakwater-bench --smoke failed ({}):\n{stderr}", run.status);

    let md = std::fs::read_to_string(out.path().join("bench.md")).expect("bench.md written");
    for heading in [
        "## Goals",
        "## HTTP/1.1 at 200 requests/s",
        "## h2c at 200 requests/s",
        "## Saturation",
        "## Commands",
    ] {
        assert!(md.contains(heading), "bench.md has no {heading:?}:\n{md}");
    }
    let svg = std::fs::read_to_string(out.path().join("bench.svg")).expect("bench.svg written");
    assert!(svg.starts_with("<svg") && svg.contains("bw-2hop"), "bench.svg is not a plot of the setups");

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json is JSON");
    let rows = json["rows"].as_array().expect("rows");
    // 7 setups × 2 protocols × (200 rps + saturation).
    assert_eq!(rows.len(), 28, "one row per setup, protocol and shape");
    for row in rows {
        let what = format!("{} {} {}", row["setup"], row["protocol"], row["shape"]);
        assert_eq!(row["failed"], 0, "{what}: requests failed");
        assert!(row["rps"].as_f64().is_some_and(|r| r > 0.0), "{what}: no request completed");
        if row["setup"] != "direct" {
            assert!(row["peak_rss_mb"].as_f64().is_some_and(|m| m > 0.0), "{what}: no proxy memory read");
            assert!(row["cpu_per_1000"].is_number(), "{what}: no proxy CPU read");
        }
    }
    assert_eq!(
        json["idle"].as_array().map(Vec::len),
        Some(12),
        "idle memory of the 6 proxied setups × 2 protocols"
    );
}
