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

/// Options given before the subcommand (`evalctl --coordinator URL status`), with their
/// environment variables. The connection options can also follow the subcommand of a command
/// that talks to a coordinator (`evalctl status --coordinator URL`), where they win; commands
/// that do not (`local`, `bench`) neither take nor show them.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Coordinator URL.
    #[arg(long, env = "EVALCTL_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token (prefer --token-file or EVALCTL_TOKEN: flags show in `ps`).
    #[arg(long, env = "EVALCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File whose first line is the bearer token.
    #[arg(long, env = "EVALCTL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the coordinator's certificate, for https:// URLs [default: the
    /// system roots].
    #[arg(long, env = "EVALCTL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Log line format on stderr (`local` logs its coordinator and agent there too).
    #[arg(long, global = true, value_enum, env = "EVALCTL_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// These options with the connection options given after the subcommand applied.
    pub fn with(&self, connection: Option<&ConnectionArgs>) -> GlobalArgs {
        let mut merged = self.clone();
        if let Some(c) = connection {
            if let Some(url) = &c.coordinator {
                merged.coordinator.clone_from(url);
            }
            if c.token.is_some() {
                merged.token.clone_from(&c.token);
            }
            if c.token_file.is_some() {
                merged.token_file.clone_from(&c.token_file);
            }
            if c.ca_file.is_some() {
                merged.ca_file.clone_from(&c.ca_file);
            }
        }
        merged
    }
}

/// How to reach the coordinator, given after the subcommand of a command that talks to one.
/// (Their environment variables are read by [`GlobalArgs`].)
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectionArgs {
    /// Coordinator URL [env: EVALCTL_COORDINATOR] [default: http://127.0.0.1:7717].
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Bearer token (prefer --token-file or EVALCTL_TOKEN: flags show in `ps`).
    #[arg(long)]
    pub token: Option<String>,
    /// File whose first line is the bearer token [env: EVALCTL_TOKEN_FILE].
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the coordinator's certificate, for https:// URLs [env:
    /// EVALCTL_CA_FILE] [default: the system roots].
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
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
    /// Show a campaign's step results: latency percentiles and throughput per step.
    Results(ResultsArgs),
    /// List registered agents with their GPUs, leases and last heartbeat.
    Agents(AgentsArgs),
    /// Ask an agent to finish its running units and take no more.
    Drain(DrainArgs),
    /// Run a matrix on this machine: coordinator and agent in one process, to the end.
    Local(LocalArgs),
    /// Benchmark one OpenAI-compatible server directly, no fleet needed.
    Bench(Box<crate::commands::bench::BenchArgs>),
    /// Create, list or revoke API tokens (operator only).
    #[command(subcommand)]
    Token(crate::commands::token::TokenCommand),
    /// Show the audit log: who did what, newest first, filtered by actor, action and time
    /// (operator only).
    Audit(crate::commands::audit::AuditArgs),
    /// Export a campaign's step results (or request records) as CSV, JSON Lines or Parquet.
    Export(crate::commands::export::ExportArgs),
    /// Write a self-contained HTML report of a campaign, with charts.
    Report(crate::commands::report::ReportArgs),
    /// Compare two campaigns step by step and flag regressions (exit code 7).
    Compare(crate::commands::compare::CompareArgs),
    /// Rank configurations that meet SLOs by cost or throughput per GPU.
    Recommend(crate::commands::recommend::RecommendArgs),
    /// Campaigns submitted by the coordinator on a cron pattern: add, list, show, pause,
    /// resume, remove, run-now, update.
    #[command(subcommand)]
    Schedule(crate::commands::schedule::ScheduleCommand),
    /// Pin or unpin the baseline a schedule's series is judged against.
    #[command(subcommand)]
    Baseline(crate::commands::baseline::BaselineCommand),
    /// Supervise one server for `evalctl local`'s agent (it runs this; `main` dispatches it
    /// before anything else starts), so `evalctl` alone runs a local campaign.
    #[command(hide = true)]
    Supervise(crate::commands::local::SuperviseArgs),
}

impl Command {
    /// The connection options given after the subcommand; `None` for commands that do not
    /// talk to a coordinator.
    pub fn connection(&self) -> Option<&ConnectionArgs> {
        Some(match self {
            Command::Submit(a) => &a.connection,
            Command::Status(a) => &a.connection,
            Command::Watch(a) | Command::Retry(a) => &a.connection,
            Command::Cancel(a) => &a.connection,
            Command::Results(a) => &a.connection,
            Command::Agents(a) => &a.connection,
            Command::Drain(a) => &a.connection,
            Command::Token(command) => command.connection(),
            Command::Schedule(command) => command.connection(),
            Command::Baseline(command) => command.connection(),
            Command::Export(a) => &a.connection,
            Command::Report(a) => &a.connection,
            Command::Compare(a) => &a.connection,
            Command::Recommend(a) => &a.connection,
            Command::Audit(a) => &a.connection,
            Command::Local(_) | Command::Bench(_) | Command::Supervise(_) => return None,
        })
    }
}

/// `evalctl agents`.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// `evalctl results`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Campaign name or id.
    pub campaign: String,
}

/// `evalctl drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Agent id (`evalctl agents` lists them).
    pub agent: String,
}

/// `evalctl local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// The matrix file (YAML).
    pub matrix: PathBuf,
    /// Directory for the database and the agent's state [default: ~/.local/share/evalctl/local].
    /// A second run with the same matrix resumes: finished steps are kept.
    #[arg(long, env = "EVALCTL_LOCAL_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Delete what an earlier run left in the data directory first.
    #[arg(long)]
    pub fresh: bool,
    /// CPU-only units run at once.
    #[arg(long, default_value_t = 1)]
    pub cpu_slots: u32,
    /// FAKE GPUs for the local agent, e.g. "H100-80GB:8", to try GPU matrices on a laptop
    /// with a server command that needs none.
    #[arg(long)]
    pub gpus: Option<String>,
    /// Only check that this host can run the matrix's units (engines, model files, GPUs,
    /// disk, ports), print what was found and exit: 0 when ready, 8 when a problem would
    /// fail units. Nothing is started.
    #[arg(long)]
    pub check: bool,
}

/// `evalctl submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// The matrix file (YAML).
    pub matrix: PathBuf,
    /// Print units, steps and dropped combinations without contacting a coordinator.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept a matrix that leaves no unit to run (refused otherwise: such a campaign would
    /// succeed at once without running anything).
    #[arg(long)]
    pub allow_empty: bool,
}

/// `evalctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Campaign name or id; all campaigns when omitted.
    pub campaign: Option<String>,
}

/// A command that names one campaign.
#[derive(Debug, Args)]
pub struct CampaignArg {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Campaign name or id.
    pub campaign: String,
}

/// `evalctl cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Campaign name or id.
    pub campaign: String,
    /// Why, for the audit log.
    #[arg(long, default_value = "cancelled by operator")]
    pub reason: String,
}
