//! The `evalctl-agent` command line: its arguments, how they resolve against the config file,
//! and what each subcommand runs. `main.rs` only parses, starts tracing and calls [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use evalctl_sim_server::{self as sim_server, LatencyModel, ReasoningShape, SimConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::launcher::supervisor::SuperviseArgs;
use crate::runner::{self, AgentConfig, FileConfig, config::default_state_dir};

/// Exit code: the agent stopped on an error; the message on stderr says which.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: the command line is wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the TLS setup between agent and coordinator cannot work — the coordinator's
/// certificate is not signed by the CA given, the coordinator refused the agent's
/// certificate, or an `http://` URL points at a TLS port. Retrying would not help.
pub const EXIT_TLS: u8 = 3;

/// The documented exit code for an error `run` returned.
pub fn exit_code(err: &anyhow::Error) -> std::process::ExitCode {
    let code = match err.downcast_ref::<runner::AgentError>() {
        Some(runner::AgentError::Tls { .. }) => EXIT_TLS,
        _ => EXIT_FAILURE,
    };
    std::process::ExitCode::from(code)
}

/// `evalctl-agent` arguments.
#[derive(Debug, Parser)]
#[command(name = "evalctl-agent", version, about = "evalctl agent for GPU hosts")]
pub struct Cli {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EVALCTL_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: register with the coordinator, lease units, launch servers, run steps.
    Run(Box<RunArgs>),
    /// Serve a simulated OpenAI-compatible streaming model (for the quickstart and tests).
    SimServer(SimServerArgs),
    /// Check that this host can run a matrix's units: engines, models, GPUs, disk, ports.
    Doctor(DoctorArgs),
    /// Supervise one server for the agent (the agent runs this; `main` dispatches it before
    /// anything else starts).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

/// Flags of `evalctl-agent doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The units to check: a file with the output of `evalctl submit --dry-run --json
    /// MATRIX`, or `-` to read it from stdin.
    units: PathBuf,
    /// TOML config file of the agent (its state directory, server address, GPU aliases).
    #[arg(long, env = "EVALCTL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// State directory [default: ~/.local/state/evalctl/agent].
    #[arg(long, env = "EVALCTL_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// FAKE GPUs the agent runs with instead of NVML's, e.g. "H100-80GB:8".
    #[arg(long, env = "EVALCTL_AGENT_GPUS")]
    gpus: Option<String>,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

impl DoctorArgs {
    /// Runs the preflight; an error when it found a problem that would fail units.
    fn run(&self) -> anyhow::Result<()> {
        use std::io::Read as _;
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let simulated = self.gpus.clone().or_else(|| file.simulated_gpus.clone());
        let mut config = AgentConfig::new("http://127.0.0.1:7717", default_state_dir());
        config.apply_file(file)?;
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        let (source, text) = if self.units.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("failed to read the units from stdin")?;
            ("stdin".to_owned(), text)
        } else {
            let text = std::fs::read_to_string(&self.units)
                .with_context(|| format!("failed to read {}", self.units.display()))?;
            (self.units.display().to_string(), text)
        };
        let units = crate::doctor::parse_units(&source, &text)?;
        let mut host = crate::doctor::Host::probe(
            simulated.as_deref(),
            &config.gpu_aliases,
            config.state_dir.clone(),
            config.server_host.clone(),
        );
        host.containers = config.container.clone();
        let report = crate::doctor::check(&units, &host);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.human());
        }
        if report.worst() == crate::doctor::Level::Fail {
            anyhow::bail!("the preflight found problems that would fail units on this host");
        }
        Ok(())
    }
}

/// Flags of `evalctl-agent sim-server`.
#[derive(Debug, Args)]
pub struct SimServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "EVALCTL_SIM_HOST")]
    host: std::net::IpAddr,
    /// Port to listen on; 0 picks a free one. The first stdout line is `listening on http://ADDR`.
    #[arg(long, default_value_t = 8000, env = "EVALCTL_SIM_PORT")]
    port: u16,
    /// Served model name.
    #[arg(long, default_value = "evalctl-sim", env = "EVALCTL_SIM_MODEL")]
    model: String,
    /// Prefill cost per prompt token, in microseconds.
    #[arg(long, default_value_t = LatencyModel::default().prefill_us_per_token)]
    prefill_us_per_token: f64,
    /// Decode step cost for a batch of one, in milliseconds.
    #[arg(long, default_value_t = LatencyModel::default().decode_ms_per_token)]
    decode_ms_per_token: f64,
    /// Extra decode step cost per additional running request, in milliseconds.
    #[arg(long, default_value_t = LatencyModel::default().decode_ms_per_extra_request)]
    decode_ms_per_extra_request: f64,
    /// Output tokens per streamed chunk.
    #[arg(long, default_value_t = 1)]
    tokens_per_chunk: u32,
    /// How long /health answers 503 after start, e.g. "2s".
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    startup_delay: Duration,
    /// Seed of the generated words.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Requests running at once; the rest wait.
    #[arg(long, default_value_t = SimConfig::default().max_num_seqs)]
    max_num_seqs: usize,
    /// Context length (prompt + output tokens) of one request.
    #[arg(long, default_value_t = SimConfig::default().max_model_len)]
    max_model_len: u64,
    /// Cache prompt prefixes as vLLM does (blocks of 16 tokens): cached tokens skip the
    /// prefill cost; `POST /reset_prefix_cache` empties the cache.
    #[arg(long)]
    enable_prefix_caching: bool,
    /// Stream the first `--reasoning-tokens` output tokens of each request as reasoning, in
    /// this shape: `reasoning` (vLLM 0.32's delta field), `reasoning-content` (SGLang's), or
    /// `think` (inline `<think>…</think>` text, as a server without a reasoning parser).
    #[arg(long, value_enum, requires = "reasoning_tokens")]
    reasoning: Option<ReasoningArg>,
    /// Output tokens of each request that are reasoning (with `--reasoning`).
    #[arg(long, requires = "reasoning")]
    reasoning_tokens: Option<u32>,
    /// Answer the questions of the shipped arithmetic task (datasets/lm-eval/evalctl_arith)
    /// correctly at this rate, from 0 to 1, so an accuracy harness measures it.
    #[arg(long)]
    accuracy: Option<f64>,
}

/// `--reasoning` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReasoningArg {
    Reasoning,
    ReasoningContent,
    Think,
}

/// Flags of `evalctl-agent run`; each overrides the config file's key of the same name.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file (see deploy/agent.toml).
    #[arg(long, env = "EVALCTL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Coordinator URL [default: http://127.0.0.1:7717].
    #[arg(long, env = "EVALCTL_COORDINATOR")]
    coordinator: Option<String>,
    /// State directory [default: ~/.local/state/evalctl/agent].
    #[arg(long, env = "EVALCTL_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Fixed agent id [default: generated once, kept in the state directory].
    #[arg(long, env = "EVALCTL_AGENT_ID")]
    agent_id: Option<String>,
    /// A label units may require, KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Frameworks this host can launch, comma-separated [default: any].
    #[arg(long, value_delimiter = ',', env = "EVALCTL_AGENT_FRAMEWORKS")]
    frameworks: Vec<String>,
    /// FAKE GPUs for a host without GPUs, e.g. "H100-80GB:8" (tests and local runs).
    #[arg(long, env = "EVALCTL_AGENT_GPUS")]
    gpus: Option<String>,
    /// CPU-only units run at once [default: 1].
    #[arg(long, env = "EVALCTL_AGENT_CPU_SLOTS")]
    cpu_slots: Option<u32>,
    /// SIGTERM -> SIGKILL grace of a server's process group, e.g. "10s".
    #[arg(long, value_parser = humantime::parse_duration)]
    stop_grace: Option<Duration>,
    /// How long shutdown waits for results to be acknowledged, e.g. "10s".
    #[arg(long, value_parser = humantime::parse_duration)]
    flush_timeout: Option<Duration>,
    /// Longest wait of one lease request at the coordinator, e.g. "20s".
    #[arg(long, value_parser = humantime::parse_duration)]
    acquire_wait: Option<Duration>,
    /// Stop each server after its unit instead of keeping it for the next unit.
    #[arg(long)]
    no_keep_warm: bool,
    /// Watch this cloud's preemption notices: aws, gcp or azure (spot instances).
    #[arg(long, env = "EVALCTL_SPOT_PROVIDER")]
    spot_provider: Option<String>,
    /// Metadata service base URL [default: the provider's].
    #[arg(long, env = "EVALCTL_METADATA_URL")]
    metadata_url: Option<String>,
    /// Metadata poll interval, e.g. "5s" [default: aws 5s, azure 2s; gcp long-polls].
    #[arg(long, value_parser = humantime::parse_duration)]
    metadata_poll: Option<Duration>,
    /// Bearer token with role `agent` (prefer --token-file: flags show in `ps`).
    #[arg(long, env = "EVALCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File whose first line is the bearer token.
    #[arg(long, env = "EVALCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA that signed the coordinator's certificate [default: the system roots].
    #[arg(long, env = "EVALCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key).
    #[arg(long, env = "EVALCTL_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// PEM key of --client-cert.
    #[arg(long, env = "EVALCTL_CLIENT_KEY")]
    client_key: Option<PathBuf>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

impl RunArgs {
    /// Flags and env over the file over defaults; the simulated GPU spec, if any.
    fn resolve(&self) -> anyhow::Result<(AgentConfig, Option<String>)> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let simulated = self.gpus.clone().or_else(|| file.simulated_gpus.clone());
        let mut config = AgentConfig::new("http://127.0.0.1:7717", default_state_dir());
        // This very binary supervises the servers it starts.
        config.supervisor = PathBuf::from(crate::launcher::THIS_EXECUTABLE);
        config.apply_file(file)?;
        if let Some(v) = &self.coordinator {
            config.coordinator = v.clone();
        }
        if let Some(v) = &self.state_dir {
            config.state_dir = v.clone();
        }
        if self.agent_id.is_some() {
            config.agent_id = self.agent_id.clone();
        }
        config.labels.extend(self.labels.iter().cloned());
        if !self.frameworks.is_empty() {
            config.frameworks = self.frameworks.clone();
        }
        if let Some(v) = self.cpu_slots {
            config.cpu_slots = v;
        }
        if let Some(v) = self.stop_grace {
            config.stop_grace = v;
        }
        if let Some(v) = self.flush_timeout {
            config.flush_timeout = v;
        }
        if let Some(v) = self.acquire_wait {
            config.acquire_wait = v;
        }
        if self.no_keep_warm {
            config.keep_warm = false;
        }
        config.set_preemption(
            self.spot_provider.as_deref(),
            self.metadata_url.clone(),
            self.metadata_poll,
        )?;
        if self.token.is_some() {
            config.auth.token = self.token.clone();
        }
        if self.token_file.is_some() {
            // A token file given here wins over a token from the config file.
            config.token_file = self.token_file.clone();
            if self.token.is_none() {
                config.auth.token = None;
            }
        }
        if self.ca_file.is_some() {
            config.auth.ca_file = self.ca_file.clone();
        }
        if self.client_cert.is_some() {
            config.auth.client_cert = self.client_cert.clone();
        }
        if self.client_key.is_some() {
            config.auth.client_key = self.client_key.clone();
        }
        Ok((config, simulated))
    }
}

impl SimServerArgs {
    fn config(&self) -> SimConfig {
        SimConfig {
            model: self.model.clone(),
            latency: LatencyModel {
                prefill_us_per_token: self.prefill_us_per_token,
                decode_ms_per_token: self.decode_ms_per_token,
                decode_ms_per_extra_request: self.decode_ms_per_extra_request,
            },
            tokens_per_chunk: self.tokens_per_chunk,
            startup_delay: self.startup_delay,
            seed: self.seed,
            max_num_seqs: self.max_num_seqs,
            max_model_len: self.max_model_len,
            prefix_caching: self.enable_prefix_caching,
            reasoning: self.reasoning.map(|r| match r {
                ReasoningArg::Reasoning => ReasoningShape::Reasoning,
                ReasoningArg::ReasoningContent => ReasoningShape::ReasoningContent,
                ReasoningArg::Think => ReasoningShape::Think,
            }),
            reasoning_tokens: self.reasoning_tokens.unwrap_or(0),
            accuracy: self.accuracy,
            ..SimConfig::default()
        }
    }
}

/// Runs one subcommand to its end (but `supervise`, which `main` runs before the runtime
/// starts: [`crate::launcher::supervisor::run`]).
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Supervise(_) => {
            anyhow::bail!("`supervise` runs before the async runtime starts, not from `run`")
        }
        Command::Run(args) => {
            let signal = evalctl_common::signal::shutdown_signal();
            let (config, simulated) = args.resolve()?;
            let gpus = runner::detect_gpus(simulated.as_deref(), &config.gpu_aliases)?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                signal.await;
                trigger.cancel();
            });
            runner::run(config, gpus, shutdown).await?;
            Ok(())
        }
        Command::Doctor(args) => args.run(),
        Command::SimServer(args) => {
            // Handlers first: a SIGTERM that arrives once the address is out must be graceful.
            let shutdown = evalctl_common::signal::shutdown_signal();
            let config = args.config();
            config.validate()?;
            let addr = SocketAddr::new(args.host, args.port);
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to bind {addr}"))?;
            let bound = listener
                .local_addr()
                .context("failed to read the bound address")?;
            println!("listening on http://{bound}");
            // As an engine logs the end of its weight loading, at the end of the startup
            // delay (the cold-start phases read it, docs/telemetry.md#cold-starts).
            let delay = config.startup_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                println!(
                    "weights loaded (simulated) after {}",
                    humantime::format_duration(delay)
                );
            });
            sim_server::run(config, listener, shutdown).await?;
            Ok(())
        }
    }
}

/// Installs the global subscriber: lines on stderr at `EVALCTL_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EVALCTL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
