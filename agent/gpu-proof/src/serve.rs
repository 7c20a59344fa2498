//! `evalctl-gpu-proof serve`: the proof unit's "server". It opens device 0 of what
//! `CUDA_VISIBLE_DEVICES` leaves visible, keeps it busy with the burn kernel for the life of
//! the process, and records what the driver told it in a report file; it answers the
//! OpenAI-compatible API with evalctl's simulated server, so the agent can start it, check
//! its health and run an ordinary load step while its telemetry samples the GPU. The
//! answers are simulated (and say so); the GPU load and every GPU reading are real.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use evalctl_sim_server::SimConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::burn::{BurnProgress, Burner, CudaFacts};

/// What the server writes to its report file, rewritten every second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServeReport {
    /// What the CUDA driver reported inside this process.
    pub cuda: CudaFacts,
    /// Work done so far.
    pub progress: BurnProgress,
}

/// Flags of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Device memory to hold while serving, MiB.
    #[arg(long, default_value_t = 1024)]
    pub hold_mib: u64,
    /// The report file (JSON), rewritten every second.
    #[arg(long)]
    pub report: PathBuf,
    /// Served model name.
    #[arg(long, default_value = "gpu-proof")]
    pub model: String,
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let shutdown = evalctl_common::signal::shutdown_signal();
    let (opened, open_result) = mpsc::channel();
    let report = args.report.clone();
    let hold_mib = args.hold_mib;
    // The driver's context is current on one thread: the burner's own.
    std::thread::Builder::new()
        .name("gpu-burn".to_owned())
        .spawn(move || burn(hold_mib, &report, &opened))
        .context("failed to start the burner thread")?;
    let facts = tokio::task::spawn_blocking(move || open_result.recv())
        .await
        .context("the burner thread panicked")?
        .context("the burner thread ended before opening the GPU")??;
    eprintln!(
        "CUDA device 0 of {}: {} ({}), CUDA_VISIBLE_DEVICES={}",
        facts.device_count,
        facts.name,
        facts.uuid,
        facts.cuda_visible_devices.as_deref().unwrap_or("(unset)")
    );
    let addr = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let config = SimConfig {
        model: args.model,
        ..SimConfig::default()
    };
    evalctl_sim_server::run(config, listener, shutdown).await?;
    Ok(())
}

/// The burner thread: opens the GPU, reports the outcome on `opened`, then launches the
/// kernel until the process exits, rewriting `report` every second.
fn burn(hold_mib: u64, report: &Path, opened: &mpsc::Sender<anyhow::Result<CudaFacts>>) {
    let burner = match Burner::open(hold_mib) {
        Ok(burner) => burner,
        Err(e) => {
            let _ = opened.send(Err(anyhow::Error::new(e).context("failed to open the GPU")));
            return;
        }
    };
    let mut state = ServeReport {
        cuda: burner.facts.clone(),
        progress: BurnProgress::default(),
    };
    if let Err(e) = write_report(report, &state) {
        let _ = opened.send(Err(e));
        return;
    }
    let _ = opened.send(Ok(burner.facts.clone()));
    loop {
        match burner.run_for(Duration::from_secs(1)) {
            Ok(p) => {
                let total = &mut state.progress;
                total.launches += p.launches;
                total.seconds += p.seconds;
                total.gflops = if total.seconds > 0.0 {
                    (total.gflops * (total.seconds - p.seconds) + p.gflops * p.seconds)
                        / total.seconds
                } else {
                    0.0
                };
            }
            Err(e) => {
                // The server keeps answering; the report shows the load stopped.
                eprintln!("the GPU load stopped: {e}");
                return;
            }
        }
        if let Err(e) = write_report(report, &state) {
            eprintln!("{e:#}");
        }
    }
}

/// Writes `state` to a sibling file and renames it over `path`: a reader never sees half.
fn write_report(path: &Path, state: &ServeReport) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let text = serde_json::to_vec_pretty(state)?;
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("failed to write the report {}", path.display()))
}
