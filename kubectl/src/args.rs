//! The command line. kubectl runs `kubectl-breakwater` for `kubectl breakwater …` and passes the
//! rest of the line as it is, so the flags are kubectl's own names (`--kubeconfig`, `--context`,
//! `-n`, `-A`, `-o`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Diagnose Breakwater: is the install healthy, what does each policy and sidecar do, are these
/// manifests valid.
///
/// Exit status: 0 when what the command reports is healthy (or valid), 1 when it found a problem
/// (a FAIL, a policy not Ready, a pod without its sidecar, an invalid document), 2 when it could not
/// find out (the cluster is unreachable, a file cannot be read, a flag is wrong).
#[derive(Parser, Debug)]
#[command(name = "kubectl breakwater", bin_name = "kubectl breakwater", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the install, part by part, in order: each line PASS or FAIL, and for a FAIL what to
    /// do. `--pre`: check that this cluster can take Breakwater, before `helm install`.
    Check(CheckArgs),
    /// Each policy with its targets, mode, conditions and how many sidecars enforce it; the
    /// pods that should have a sidecar and do not.
    Status(StatusArgs),
    /// What a pod's sidecar enforces now, side by side with what the operator compiled for it,
    /// and whether they match (read through the API server's pod proxy: no port-forward).
    Config(ConfigArgs),
    /// The live state of a pod's sidecar: circuit breakers per target and endpoint, bulkhead
    /// occupancy and queue, retry-budget headroom. Exit 1 when an enforced target refuses calls.
    Breakers(BreakersArgs),
    /// Validate CommunicationPolicy manifests offline, with the rules the API server and the
    /// sidecar apply (for CI pipelines). Files, directories (their *.yaml, *.yml and *.json) or
    /// `-` for standard input; documents of other kinds are listed as skipped.
    Lint(LintArgs),
}

/// Which cluster, as kubectl's own flags say.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the pod's
    /// ServiceAccount when run inside a cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig cluster (default: the context's).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The kubeconfig user (default: the context's).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

/// How to print what a command found.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns, for people.
    #[default]
    Table,
    /// The report as JSON (stable field names, for scripts).
    Json,
    /// The report as YAML.
    Yaml,
}

/// `check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Check what an install needs instead (API server version, native sidecars, permission to
    /// install, no conflicting webhook).
    #[arg(long)]
    pub pre: bool,
    /// The namespace Breakwater is (or will be) installed in. The operator's Deployment is found
    /// there by the chart's labels, and the names of its Lease, webhook and Secret are read from it,
    /// so any release name works.
    #[arg(long, default_value = "breakwater-system", value_name = "NAMESPACE")]
    pub breakwater_namespace: String,
    /// Warn about certificates that expire within this many days.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    pub expiry_warning_days: u32,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// Which cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short, long, value_name = "NAMESPACE", conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// The namespace Breakwater is installed in (its operator says which snapshot each sidecar
    /// applied).
    #[arg(long, default_value = "breakwater-system", value_name = "NAMESPACE")]
    pub breakwater_namespace: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// Which cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// A pod, for `config` and `breakers`.
#[derive(Args, Debug)]
pub struct PodArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The pod's namespace (default: the context's namespace, else `default`).
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Output format (json and yaml hold the documents read, whole).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// Which cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `config`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// The pod.
    #[command(flatten)]
    pub pod: PodArgs,
    /// The namespace Breakwater is installed in (its operator's pods are found there by the
    /// chart's labels).
    #[arg(long, default_value = "breakwater-system", value_name = "NAMESPACE")]
    pub breakwater_namespace: String,
}

/// `breakers`.
#[derive(Args, Debug)]
pub struct BreakersArgs {
    /// The pod.
    #[command(flatten)]
    pub pod: PodArgs,
    /// Only the targets of this Service (`name` or `name.namespace`).
    #[arg(long, value_name = "SERVICE")]
    pub to: Option<String>,
}

/// `lint`.
#[derive(Args, Debug)]
pub struct LintArgs {
    /// Files, directories or `-` (standard input).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Descend into subdirectories too.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Fail on warnings as well (settings that are valid but probably not what was meant).
    #[arg(long)]
    pub strict: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}
