//! `kubectl breakwater`: the diagnosis tool for Breakwater. kubectl finds `kubectl-breakwater` on
//! PATH and runs it for `kubectl breakwater …`.
//!
//! - `check [--pre]`: the install part by part, each PASS or FAIL with a hint (`check`).
//! - `status`: each policy and the sidecars that enforce it (`status`, `pods`).
//! - `config POD`: what a sidecar enforces, beside what the operator compiled for it (`config`).
//! - `breakers POD`: breakers, bulkheads and retry budgets as they are now (`breakers`).
//! - `lint`: CommunicationPolicy manifests validated offline, for CI (`lint`).
//!
//! `config`, `breakers` and `status` read the sidecars' and the operator's diagnostics through
//! the API server's pod proxy (`diagnostics`).
//!
//! Every command returns a [`output::Report`]: a table for people, JSON or YAML for scripts, and
//! whether what it found is healthy, which becomes the exit status.

pub mod args;
pub mod breakers;
pub mod check;
pub mod cluster;
pub mod config;
pub mod diagnostics;
pub mod error;
pub mod lint;
pub mod output;
pub mod pods;
pub mod status;

pub use error::Error;

use args::{Cli, Command};
use output::{Report, render};

/// What a command printed and whether it found everything healthy.
#[derive(Debug)]
pub struct Outcome {
    /// The rendered report.
    pub text: String,
    /// Exit status 0 (healthy) or 1.
    pub healthy: bool,
}

impl Outcome {
    fn of(report: &impl Report, output: args::Output) -> Outcome {
        Outcome { text: render(report, output), healthy: report.healthy() }
    }
}

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<Outcome, Error> {
    match cli.command {
        Command::Lint(a) => Ok(Outcome::of(&lint::lint(&a.files, a.recursive, a.strict)?, a.output)),
        Command::Status(a) => {
            let cluster = cluster::connect(&a.cluster).await?;
            let namespace =
                if a.all_namespaces { None } else { Some(a.namespace.unwrap_or(cluster.namespace.clone())) };
            Ok(Outcome::of(
                &status::status(&cluster, namespace.as_deref(), &a.breakwater_namespace).await?,
                a.output,
            ))
        }
        Command::Config(a) => {
            let p = a.pod;
            let cluster = cluster::connect(&p.cluster).await?;
            let namespace = p.namespace.unwrap_or(cluster.namespace.clone());
            let report = config::config(&cluster, &namespace, &p.pod, &a.breakwater_namespace).await?;
            Ok(Outcome::of(&report, p.output))
        }
        Command::Breakers(a) => {
            let p = a.pod;
            let cluster = cluster::connect(&p.cluster).await?;
            let namespace = p.namespace.unwrap_or(cluster.namespace.clone());
            let report = breakers::breakers(&cluster, &namespace, &p.pod, a.to.as_deref()).await?;
            Ok(Outcome::of(&report, p.output))
        }
        Command::Check(a) => {
            let cluster = cluster::connect(&a.cluster).await?;
            let report = if a.pre { check::pre(&cluster, &a).await } else { check::post(&cluster, &a).await };
            Ok(Outcome::of(&report, a.output))
        }
    }
}
