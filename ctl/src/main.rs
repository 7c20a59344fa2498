//! `evalctl` binary: parse the command line, start logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use evalctl::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server's supervisor (`evalctl local` starts it): single-threaded, no runtime, its
    // notes straight into the server's log.
    if let Command::Supervise(args) = &cli.command {
        return evalctl::commands::local::supervise(args);
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr);
    match cli.global.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(evalctl::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            evalctl::report(&err);
            err.exit_code()
        }
    }
}
