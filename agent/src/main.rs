//! `evalctl-agent`: parses arguments, starts tracing, and calls into the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use evalctl_agent::sim_server::{self, LatencyModel, SimConfig};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "evalctl-agent", version, about = "evalctl agent for GPU hosts")]
struct Cli {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EVALCTL_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a simulated OpenAI-compatible streaming model (for the quickstart and tests).
    SimServer(SimServerArgs),
}

#[derive(Debug, Args)]
struct SimServerArgs {
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
            ..SimConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = tokio::runtime::Runtime::new()
        .context("failed to start the tokio runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::SimServer(args) => {
            // Handlers first: a SIGTERM that arrives once the address is out must be graceful.
            let shutdown = evalctl_agent::signal::shutdown_signal();
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
            sim_server::run(config, listener, shutdown).await?;
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat) {
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
