//! `breakwater-operator`: parses its settings (flags or the `BREAKWATER_*` variables the Helm
//! chart sets), installs logging, and runs until SIGTERM or SIGINT.

use std::process::ExitCode;

use breakwater_operator::{LogFormat, Settings};
use clap::Parser;

/// Breakwater's control plane: watches CommunicationPolicies, Services, EndpointSlices, Pods and
/// Namespaces, compiles each sidecar's snapshot, and reports status on every policy (written by
/// the replica holding the lease).
#[derive(Debug, Parser)]
#[command(name = "breakwater-operator", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.settings.log, cli.settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(breakwater_operator::run(cli.settings, signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes, each once (some messages already include their cause).
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                source = s.source();
            }
            tracing::error!(error = %message, "breakwater-operator cannot run");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        // The kubelet asks us to stop.
        _ = term.recv() => {}
        // Interactive stop.
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_tracing(filter: &str, format: LogFormat) {
    // A bare level is the operator's own: `debug` must not turn on every HTTP and TLS crate's
    // debug output. A full filter (`info,kube=debug`) is taken as written.
    let own;
    let filter = match filter {
        "trace" | "debug" => {
            own = format!("info,breakwater_operator={filter}");
            own.as_str()
        }
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: BREAKWATER_LOG {filter:?} is not a valid filter ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}
