//! The `evalctl` command line: flags and subcommands (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default coordinator address.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7717";

/// evalctl: run LLM inference benchmark campaigns across fleets of GPU hosts.
#[derive(Debug, Parser)]
#[command(name = "evalctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Coordinator URL.
    #[arg(long, global = true, env = "EVALCTL_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a matrix file as a campaign (or only print its expansion with --dry-run).
    Submit(SubmitArgs),
    /// Show all campaigns, or one campaign with its units.
    Status(StatusArgs),
    /// Follow a campaign's progress until it ends.
    Watch(CampaignArg),
    /// Cancel every unit of a campaign that has not ended.
    Cancel(CancelArgs),
    /// Send a campaign's failed units back to the queue.
    Retry(CampaignArg),
    /// Benchmark one OpenAI-compatible server directly, no fleet needed.
    Bench(Box<crate::commands::bench::BenchArgs>),
}

/// `evalctl submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The matrix file (YAML).
    pub matrix: PathBuf,
    /// Print units, steps and dropped combinations without contacting a coordinator.
    #[arg(long)]
    pub dry_run: bool,
}

/// `evalctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Campaign name or id; all campaigns when omitted.
    pub campaign: Option<String>,
}

/// A command that names one campaign.
#[derive(Debug, Args)]
pub struct CampaignArg {
    /// Campaign name or id.
    pub campaign: String,
}

/// `evalctl cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Campaign name or id.
    pub campaign: String,
    /// Why, for the audit log.
    #[arg(long, default_value = "cancelled by operator")]
    pub reason: String,
}
