//! `evalctl`, the user CLI: submit matrices, follow and steer campaigns.
//!
//! The binary is a thin `main.rs`; [`run`] does the work so tests can call it.

pub mod analysis;
pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod export;
pub mod render;
pub mod report;
pub mod when;

use std::process::ExitCode;

use cli::{Cli, Command};
use error::CliError;

/// Runs one `evalctl` invocation and returns its exit code.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let global = &cli.global.with(cli.command.connection());
    client::configure(global)?;
    let outcome = match &cli.command {
        Command::Submit(args) => commands::submit::run(global, args).await,
        Command::Status(args) => commands::status::run(global, args).await,
        Command::Watch(args) => commands::watch::run(global, args).await,
        Command::Cancel(args) => commands::control::cancel(global, args).await,
        Command::Retry(args) => commands::control::retry(global, args).await,
        Command::Results(args) => commands::results::run(global, args).await,
        Command::Agents(_) => commands::agents::list(global).await,
        Command::Drain(args) => commands::agents::drain(global, args).await,
        Command::Local(args) => commands::local::run(global, args).await,
        Command::Bench(args) => commands::bench::run(global, args).await,
        Command::Token(command) => commands::token::run(global, command).await,
        Command::Schedule(command) => commands::schedule::run(global, command).await,
        Command::Baseline(command) => commands::baseline::run(global, command).await,
        Command::Audit(args) => commands::audit::run(global, args).await,
        Command::Export(args) => commands::export::run(global, args).await,
        Command::Report(args) => commands::report::run(global, args).await,
        Command::Compare(args) => commands::compare::run(global, args).await,
        Command::Recommend(args) => commands::recommend::run(global, args).await,
        // A supervisor needs a process without a runtime: `main` runs it before any.
        Command::Supervise(_) => Err(CliError::BadFlag {
            flag: "supervise",
            source: "`evalctl supervise` runs only as the process `evalctl local` starts".into(),
        }),
    };
    match outcome {
        // `local` talks to a coordinator of its own, not to --coordinator.
        Err(err) if !matches!(cli.command, Command::Local(_)) => {
            Err(client::diagnose(err, &global.coordinator).await)
        }
        outcome => outcome,
    }
}

/// Prints an error with its cause chain and hint to stderr, the way every command does.
pub fn report(err: &CliError) {
    let mut text = format!("error: {err}");
    let mut source = std::error::Error::source(err);
    if source.is_some() {
        text.push_str("\n\nCaused by:");
        while let Some(cause) = source {
            text.push_str(&format!("\n    {cause}"));
            source = cause.source();
        }
    }
    if let Some(hint) = err.hint() {
        text.push_str(&format!("\n\n(hint: {hint})"));
    }
    eprintln!("{text}");
}
