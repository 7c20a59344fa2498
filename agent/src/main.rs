//! `evalctl-agent`: parses arguments, starts tracing, and runs the subcommand ([`cli`]).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use evalctl_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.log_format);
    let result = tokio::runtime::Runtime::new()
        .context("failed to start the tokio runtime")
        .and_then(|rt| rt.block_on(cli::run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
