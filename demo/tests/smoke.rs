//! `make demo` cannot rot: a tiny run of the real demo (real services, real sidecars).

use std::process::Command;

#[test]
fn the_demo_runs_and_prints_its_tables() {
    let out = Command::new(env!("CARGO_BIN_EXE_breakwater-demo"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["--payments-calls", "40", "--reports-calls", "12"])
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    for expected in
        ["direct to the pods", "sidecar, DryRun", "sidecar, enforced", "reports:", "Stopping everything"]
    {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Every row reports the calls it made.
    assert!(
        text.lines()
            .filter(|l| l.contains("sidecar, enforced"))
            .all(|l| l.contains(" 40 ") || l.contains(" 12 ")),
        "{text}"
    );
}
