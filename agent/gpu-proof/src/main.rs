//! `evalctl-gpu-proof`: the parts of `scripts/gpu-proof.sh` that need more than a shell.
//!
//! - `check`: NVML on this host through the agent's telemetry code (exit 3: no GPU);
//! - `campaign`: the proof campaign's matrix for the GPU found;
//! - `serve`: the proof unit's server, which loads the GPU through the CUDA driver API;
//! - `summarize`: the summary JSON, with the checks that decide the proof.
//!
//! docs/telemetry.md#gpu-proof describes the proof and what it found.

mod burn;
mod campaign;
mod check;
mod serve;
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Exit code of `check` when NVML is missing or lists no GPU.
const EXIT_NO_GPU: u8 = 3;
/// Exit code of `summarize` when the summary was written but a check failed.
const EXIT_CHECK_FAILED: u8 = 4;

/// The GPU proof's helper.
#[derive(Debug, Parser)]
#[command(name = "evalctl-gpu-proof", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the GPUs through NVML and sample them; exit 3 with the reason when there is none.
    Check {
        /// Seconds to sample.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Sampling rate, Hz.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Where to write the report (JSON).
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Write the proof campaign's matrix for the GPU a `check` report found.
    Campaign {
        /// The `check` report.
        #[arg(long)]
        check: PathBuf,
        /// Where the server writes its report.
        #[arg(long)]
        serve_report: PathBuf,
        /// Device memory the server holds, MiB.
        #[arg(long, default_value_t = 1024)]
        hold_mib: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Where to write the matrix.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Serve the OpenAI-compatible API (simulated answers) while loading GPU 0 with CUDA.
    Serve(serve::ServeArgs),
    /// Write the summary JSON; exit 4 when a check failed.
    Summarize {
        /// The `check` report.
        #[arg(long)]
        check: PathBuf,
        /// `evalctl local --json`'s output for the proof campaign.
        #[arg(long)]
        local: PathBuf,
        /// The server's report (absent when the server never opened the GPU).
        #[arg(long)]
        serve_report: PathBuf,
        /// Where to write the summary.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("evalctl-gpu-proof: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check {
            seconds,
            rate,
            output,
        } => match check::run(seconds, rate) {
            Ok(report) => {
                write_json(&output, &report)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(check::NoGpu(reason)) => {
                eprintln!("no NVIDIA GPU found: {reason}");
                Ok(ExitCode::from(EXIT_NO_GPU))
            }
        },
        Command::Campaign {
            check,
            serve_report,
            hold_mib,
            seconds,
            output,
        } => {
            let report: check::CheckReport = read_json(&check)?;
            let program = std::env::current_exe().context("failed to find this program")?;
            let text = campaign::matrix(&report, &program, &serve_report, hold_mib, seconds)
                .map_err(anyhow::Error::msg)?;
            std::fs::write(&output, text)
                .with_context(|| format!("failed to write {}", output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
            runtime.block_on(serve::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Summarize {
            check,
            local,
            serve_report,
            output,
        } => {
            let check: check::CheckReport = read_json(&check)?;
            let local: summary::LocalOutput = read_json(&local)?;
            let serve: Option<serve::ServeReport> = serve_report
                .exists()
                .then(|| read_json(&serve_report))
                .transpose()?;
            let summary = summary::summarize(&check, &local, serve.as_ref());
            write_json(&output, &summary)?;
            Ok(if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_CHECK_FAILED)
            })
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not what was expected", path.display()))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}
