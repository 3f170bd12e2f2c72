//! The operator benchmark must not rot: `breakwater-bench-operator --smoke` runs every step at a
//! tiny scale on a real control plane and writes its report. No timing is asserted; what a
//! restart writes is (nothing: the status was already right).
//!
//! It uses the debug `breakwater-operator` beside the test's own binary (`make test` builds it
//! with `cargo build --workspace --bins`) and the control plane `make k8s-bins` built; it needs
//! root, as every e2e test does. When something is missing it fails and says which.

use std::{path::PathBuf, process::Command};

#[test]
fn smoke_run_loads_a_cluster_restarts_the_operator_and_writes_the_report() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_breakwater-bench-operator"));
    let operator = exe.parent().expect("a target directory").join("breakwater-operator");
    assert!(operator.is_file(), "{} is not built: run `cargo build --workspace --bins`", operator.display());
    let out = tempfile::tempdir().expect("a temporary directory");
    let run = Command::new(&exe)
        .arg("--smoke")
        .arg("--operator")
        .arg(&operator)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("breakwater-bench-operator starts");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "breakwater-bench-operator --smoke failed ({}):\n{stderr}", run.status);

    let md = std::fs::read_to_string(out.path().join("operator.md")).expect("operator.md written");
    for row in
        ["apply → `Accepted`, idle cluster", "every pod's snapshot", "restart: every policy reconciled"]
    {
        assert!(md.contains(row), "operator.md has no {row:?}:\n{md}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("operator.json")).expect("operator.json written"),
    )
    .expect("operator.json is JSON");
    assert_eq!(json["accept_idle_ms"].as_array().map(Vec::len), Some(5), "{json}");
    assert_eq!(json["restart_status_writes"], 0.0, "a restarted operator rewrote status: {json}");
    assert!(
        json["services_per_snapshot"].as_f64().is_some_and(|n| n > 0.0),
        "snapshots hold Services: {json}"
    );
    assert!(json["rss_loaded_kib"].as_u64().is_some_and(|n| n > 0), "{json}");
}
