//! `evalctl-agent`: parses arguments, starts tracing, and runs the subcommand ([`cli`]); a
//! server's supervisor runs before any of that ([`supervisor::run`]).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use evalctl_agent::cli::{self, Cli, Command};
use evalctl_agent::launcher::supervisor;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server's supervisor: single-threaded, no runtime, its notes straight into the log.
    if let Command::Supervise(args) = &cli.command {
        return supervisor::run(args);
    }
    cli::init_tracing(cli.log_format);
    let result = tokio::runtime::Runtime::new()
        .context("failed to start the tokio runtime")
        .and_then(|rt| rt.block_on(cli::run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            cli::exit_code(&err)
        }
    }
}
