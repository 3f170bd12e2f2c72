//! The convergence benchmark must not rot: `breakwater-bench-convergence --smoke` runs every step
//! at a tiny scale (5 streams, 2 policy changes) on a real control plane and writes its report.
//! No timing is asserted; that every client applied every change, and that memory was read,
//! are.
//!
//! It uses the debug `breakwater-operator` and `breakwater-sidecar` beside the test's own
//! binary (`make test` builds them with `cargo build --workspace --bins`) and the control plane
//! `make k8s-bins` built; it needs root, as every e2e test does.

use std::{path::PathBuf, process::Command};

#[test]
fn smoke_run_streams_snapshots_to_in_process_sidecars_and_writes_the_report() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_breakwater-bench-convergence"));
    let dir = exe.parent().expect("a target directory");
    let (operator, sidecar) = (dir.join("breakwater-operator"), dir.join("breakwater-sidecar"));
    for bin in [&operator, &sidecar] {
        assert!(bin.is_file(), "{} is not built: run `cargo build --workspace --bins`", bin.display());
    }
    let out = tempfile::tempdir().expect("a temporary directory");
    let run = Command::new(&exe)
        .arg("--smoke")
        .arg("--operator")
        .arg(&operator)
        .arg("--sidecar")
        .arg(&sidecar)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("breakwater-bench-convergence starts");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "breakwater-bench-convergence --smoke failed ({}):\n{stderr}", run.status);

    let md = std::fs::read_to_string(out.path().join("convergence.md")).expect("convergence.md written");
    for row in ["patch → applied p50", "What the streams cost the operator", "The sidecar's memory"] {
        assert!(md.contains(row), "convergence.md has no {row:?}:\n{md}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("convergence.json")).expect("convergence.json written"),
    )
    .expect("convergence.json is JSON");
    let scale = &json["scales"][0];
    assert_eq!(scale["streams"], 5, "{json}");
    assert_eq!(scale["apply_ms"].as_array().map(Vec::len), Some(10), "5 clients × 2 changes: {json}");
    assert_eq!(scale["all_ms"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json["webhook"]["admissions"], 5, "the webhook step ran: {json}");
    assert_eq!(json["webhook"]["create_injected_ms"].as_array().map(Vec::len), Some(5), "{json}");
    for rss in ["sidecar_small_rss_kib", "sidecar_large_rss_kib", "rss_idle_kib"] {
        let v = json[rss].as_u64().or(scale[rss].as_u64());
        assert!(v.is_some_and(|kib| kib > 1024), "{rss} read from /proc: {json}");
    }
}
