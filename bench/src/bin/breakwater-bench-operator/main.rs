//! `make bench-operator`: what the operator costs at scale, on a real API server.
//!
//! A control plane from the e2e harness (etcd, kube-apiserver, controller-manager, scheduler),
//! the CRD, and the operator as a process of this machine (so its memory and CPU are read from
//! `/proc`). Then:
//!
//! 1. **apply → Accepted**, idle: policies created one at a time; the time from the create call
//!    to the watch event that shows `Accepted` for its generation, p50/p99;
//! 2. **a bounded loader** creates the scale (default 1,000 policies, 2,000 Services with
//!    EndpointSlices holding 10,000 endpoints, 5,000 pods with a sidecar label, over 20
//!    namespaces) with at most `--concurrency` requests in flight; the pods stay Pending (no
//!    node matches their selector), which is all the operator needs of them;
//! 3. **time to full status and to every pod's snapshot** after the load, the operator's RSS
//!    and CPU, and apply → Accepted again, under that load;
//! 4. **a restart**: a fresh operator process on the loaded cluster — time to ready, to every
//!    snapshot compiled, to every policy reconciled (and how many status writes that took:
//!    none should be needed), and its RSS.
//!
//! Results go to `--out` as `operator.md` and `operator.json`. `--smoke` runs the same steps at
//! a tiny scale (point `--out` elsewhere: it writes its report too).

#![forbid(unsafe_code)]

#[allow(dead_code)] // shared with the sidecar bench, which uses the rest of it
#[path = "../../procs.rs"]
mod procs;

mod load;
mod report;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser;

/// Measure the operator at scale on a real API server.
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Where the report goes (operator.md, operator.json).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The operator binary.
    #[arg(long, default_value = "target/release/breakwater-operator")]
    operator: PathBuf,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 20)]
    namespaces: usize,
    /// CommunicationPolicies.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Services (each with one EndpointSlice).
    #[arg(long, default_value_t = 2000)]
    services: usize,
    /// Endpoints in all.
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
    /// Pods with a sidecar.
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    /// Policies timed from apply to Accepted, idle and loaded.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Most create requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long any one phase may take.
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    phase_timeout: Duration,
    /// A tiny scale, to check the harness (`make test` runs it).
    #[arg(long)]
    smoke: bool,
}

impl Args {
    fn scaled(mut self) -> Self {
        if self.smoke {
            (self.namespaces, self.policies, self.services, self.endpoints, self.pods, self.samples) =
                (2, 10, 20, 40, 30, 5);
        }
        self
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse().scaled();
    if !args.operator.is_file() {
        bail!(
            "{} is not built: run `cargo build --release -p breakwater-operator` (make bench-operator does)",
            args.operator.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = runtime.block_on(load::run(&args)).context("the operator benchmark failed")?;
    std::fs::create_dir_all(&args.out)?;
    let md = report::markdown(&args, &results);
    print!("{md}");
    std::fs::write(args.out.join("operator.md"), &md)?;
    std::fs::write(args.out.join("operator.json"), serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", args.out.join("operator.md").display());
    Ok(())
}
