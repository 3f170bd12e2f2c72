//! The operator benchmark's report, in Markdown.

use std::fmt::Write as _;

use crate::{Args, load::Results};

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The report.
pub fn markdown(args: &Args, r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The operator at scale{}\n",
        if args.smoke { " (smoke run: tiny scale, numbers meaningless)" } else { "" }
    );
    let _ = writeln!(
        out,
        "`make bench-operator` (`bench/src/bin/breakwater-bench-operator`): a real kube-apiserver and etcd from the \
         e2e harness, the operator ({}) as a process of this machine, objects created by a bounded loader \
         ({} requests in flight). Pods stay Pending (no node matches them): the operator reads only their labels.\n",
        args.operator.display(),
        args.concurrency
    );
    let _ = writeln!(
        out,
        "The mix: a third of the policies govern every caller, a third the callers of a namespace \
         label, a third those of a pod label; one in five selects Services by label (`tier=backend`, \
         port 80), the others name one Service. One Service in five has a second port; every \
         EndpointSlice lists {} endpoints of pods in its namespace, so each pod also backs Services.\n",
        (args.endpoints / args.services.max(1)).max(1)
    );
    let _ = writeln!(out, "| objects | count |\n|---|---|");
    for (kind, n) in &r.objects {
        let _ = writeln!(out, "| {kind} | {n} |");
    }
    let _ = writeln!(out, "| (namespaces) | {} |", args.namespaces);
    let _ = writeln!(
        out,
        "\nLoaded in {:.1} s. Each pod's snapshot lists {:.0} Services on average.\n",
        r.load_seconds, r.services_per_snapshot
    );
    let _ = writeln!(out, "| measure | value |\n|---|---|");
    let row = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "| {k} | {v} |");
    };
    let lat = |v: &[f64]| {
        format!("p50 {:.0} ms, p99 {:.0} ms (n = {})", quantile(v, 0.5), quantile(v, 0.99), v.len())
    };
    row(&mut out, "apply → `Accepted`, idle cluster", lat(&r.accept_idle_ms));
    row(
        &mut out,
        "(the API server's first create after the CRD appears, not counted above)",
        format!("{:.0} ms", r.first_create_ms),
    );
    row(&mut out, "apply → `Accepted`, everything loaded", lat(&r.accept_loaded_ms));
    row(
        &mut out,
        "every policy's status, after the loader's last create",
        format!("{:.1} s", r.full_status_after_load_s),
    );
    row(
        &mut out,
        "every pod's snapshot, after the loader's last create",
        format!("{:.1} s", r.all_snapshots_after_load_s),
    );
    row(&mut out, "operator RSS, everything loaded", mib(r.rss_loaded_kib));
    row(&mut out, "operator peak RSS over the load", mib(r.rss_peak_kib));
    row(&mut out, "operator CPU over the load", format!("{:.1} s", r.cpu_load_s));
    row(&mut out, "restart: ready (every index listed)", format!("{:.1} s", r.restart_ready_s));
    row(
        &mut out,
        "restart: every pod's snapshot compiled",
        format!(
            "{:.1} s (the compile itself {:.0} ms)",
            r.restart_all_snapshots_s,
            r.restart_full_compile_s * 1000.0
        ),
    );
    row(
        &mut out,
        "restart: every policy reconciled (full status)",
        format!("{:.1} s, {} status writes", r.restart_full_status_s, r.restart_status_writes),
    );
    row(
        &mut out,
        "restart: RSS settled / CPU to settle",
        format!("{} / {:.1} s", mib(r.restart_rss_kib), r.restart_cpu_s),
    );
    out
}
