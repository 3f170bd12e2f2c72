//! `crdgen`: writes the `CommunicationPolicy` CRD, generated from the Rust types, into the Helm
//! chart. Run it through `make crds`; a test fails when the committed file differs.
//!
//! The file goes under `templates/` (not the chart's `crds/` folder, which Helm installs once
//! and never upgrades), wrapped in `{{- if .Values.crds.install }}`, so `helm upgrade` upgrades
//! the API along with the operator.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// Generate the CommunicationPolicy CustomResourceDefinition from the Rust types.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Where to write the chart template. `-` prints the plain CRD YAML to stdout instead.
    #[arg(long, default_value = breakwater_crds::crdgen::CHART_TEMPLATE)]
    out: PathBuf,

    /// Exit 1 instead of writing when the file on disk differs from the generated one.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.out.as_os_str() == "-" {
        print!("{}", breakwater_crds::crdgen::crd_yaml());
        return ExitCode::SUCCESS;
    }
    let wanted = breakwater_crds::crdgen::chart_template();
    let current = std::fs::read_to_string(&args.out).unwrap_or_default();
    if args.check {
        if current == wanted {
            return ExitCode::SUCCESS;
        }
        eprintln!("{} is out of date: run `make crds` and commit the result", args.out.display());
        return ExitCode::FAILURE;
    }
    if let Some(dir) = args.out.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::write(&args.out, wanted) {
        eprintln!("cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("wrote {}", args.out.display());
    ExitCode::SUCCESS
}
