//! `kubectl-breakwater`: see the crate's documentation and `kubectl breakwater --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = breakwater_kubectl::args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(breakwater_kubectl::run(cli)) {
        Ok(outcome) => {
            print!("{}", outcome.text);
            if outcome.healthy { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
