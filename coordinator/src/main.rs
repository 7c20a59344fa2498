//! `evalctl-coordinator`: parses flags, starts tracing, binds, and serves until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use evalctl_coordinator::args::Args;
use evalctl_coordinator::server::Coordinator;
use evalctl_coordinator::{logging, signal};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (config, log_format) = args.resolve()?;
    logging::init(log_format);
    // Handlers first: a SIGTERM that arrives once the address is out must be graceful.
    let shutdown = signal::shutdown_signal();
    let coordinator = Coordinator::bind(config).await?;
    // The first stdout line is machine-readable so scripts and tests can use port 0.
    println!("listening on {}", coordinator.local_addr());
    coordinator.serve(shutdown).await?;
    Ok(())
}
