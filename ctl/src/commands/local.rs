//! `evalctl local MATRIX`: a coordinator and one agent in this process, on loopback, with a
//! SQLite file in a data directory; runs the campaign to its end with a progress bar and
//! prints its results table. The same code paths as a fleet: the agent leases over gRPC,
//! launches servers as subprocesses and streams results back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use evalctl_agent::doctor;
pub use evalctl_agent::launcher::supervisor::SuperviseArgs;
use evalctl_agent::runner::{self, AgentConfig, GpuSource};
use evalctl_coordinator::config::Config;
use evalctl_coordinator::matrix;
use evalctl_coordinator::server::Coordinator;
use evalctl_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::results;
use super::watch::{self, Output};
use crate::cli::{GlobalArgs, LocalArgs};
use crate::client;
use crate::error::{CliError, EXIT_CAMPAIGN_FAILED, EXIT_NOT_READY};
use crate::render;

/// The hidden `evalctl supervise`: one server's supervisor, as `evalctl-agent supervise` is
/// for a fleet's agent. Runs before any runtime starts (`main` dispatches it).
pub fn supervise(args: &SuperviseArgs) -> ExitCode {
    evalctl_agent::launcher::supervisor::run(args)
}

/// `evalctl local --check`: the preflight of the matrix's units on this host, as the local
/// agent would run them.
fn preflight(
    global: &GlobalArgs,
    args: &LocalArgs,
    expansion: &evalctl_coordinator::domain::Expansion,
    data_dir: &Path,
) -> Result<ExitCode, CliError> {
    let units = super::plan::planned_units(expansion);
    let host = doctor::Host::probe(
        args.gpus.as_deref(),
        &Default::default(),
        data_dir.join("agent"),
        super::plan::LISTED_HOST.to_owned(),
    );
    let report = doctor::check(&units, &host);
    if global.json {
        render::emit_json(&report)?;
    } else {
        render::emit(&report.human())?;
    }
    Ok(if report.worst() == doctor::Level::Fail {
        ExitCode::from(EXIT_NOT_READY)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `evalctl local`.
pub async fn run(global: &GlobalArgs, args: &LocalArgs) -> Result<ExitCode, CliError> {
    let yaml = matrix::read_file(&args.matrix).map_err(CliError::matrix_file)?;
    let source_name = args.matrix.display().to_string();
    let expansion = matrix::expand_str(&source_name, &yaml).map_err(CliError::InvalidMatrix)?;
    // A local run of nothing is always a mistake: no `--allow-empty` here.
    expansion
        .check_not_empty(false)
        .map_err(CliError::EmptyCampaign)?;
    let gpus = runner::detect_gpus(args.gpus.as_deref(), &Default::default()).map_err(|e| {
        CliError::Local {
            what: "parse --gpus",
            source: Box::new(e),
        }
    })?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    if args.check {
        return preflight(global, args, &expansion, &data_dir);
    }
    if args.fresh {
        remove_previous_run(&data_dir)?;
    }

    // The coordinator, on a free loopback port.
    let mut config = Config::with_data_dir(&data_dir);
    config.listen = "127.0.0.1:0".parse().expect("constant address parses");
    config.shutdown_grace = Duration::from_secs(5);
    let coordinator = Coordinator::bind(config)
        .await
        .map_err(|e| CliError::Local {
            what: "start the coordinator",
            source: Box::new(e),
        })?;
    let url = format!("http://{}", coordinator.local_addr());
    let stop_coordinator = CancellationToken::new();
    let coordinator_task =
        tokio::spawn(coordinator.serve(stop_coordinator.clone().cancelled_owned()));

    let outcome = drive(global, args, &url, &data_dir, yaml, source_name, gpus).await;

    stop_coordinator.cancel();
    match coordinator_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the local coordinator stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the local coordinator task failed"),
    }
    let (state, results) = outcome?;
    if global.json {
        render::emit_json(&serde_json::json!({
            "campaign": expansion.campaign.name,
            "state": render::campaign_state(state as i32),
            "data_dir": data_dir,
            "results": results,
        }))?;
    } else {
        render::emit(&results::human(&expansion.campaign.name, &results))?;
        render::emit(&format!(
            "\nData: {} (evalctl local keeps it; --fresh starts over)\n",
            data_dir.display()
        ))?;
    }
    Ok(match state {
        pb::CampaignState::Succeeded => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_CAMPAIGN_FAILED),
    })
}

/// Submits, runs the agent until the campaign ends (or Ctrl-C), and reads the results.
async fn drive(
    global: &GlobalArgs,
    args: &LocalArgs,
    url: &str,
    data_dir: &Path,
    yaml: String,
    source_name: String,
    gpus: Arc<dyn GpuSource>,
) -> Result<(pb::CampaignState, Vec<results::ResultJson>), CliError> {
    let mut client = client::connect(url).await?;
    let submitted = client
        .submit(pb::SubmitRequest {
            matrix_yaml: yaml,
            source_name,
            dry_run: false,
            submitted_by: super::submit::local_user(),
            allow_empty: false,
        })
        .await
        .map_err(CliError::rpc("submit"))?
        .into_inner();
    if !global.json {
        eprintln!(
            "Campaign {}: {} units, {} steps ({} steps already done)",
            submitted.campaign, submitted.units, submitted.steps, submitted.steps_kept
        );
    }

    let mut agent_config = AgentConfig::new(url, data_dir.join("agent"));
    // This program supervises the servers (`evalctl supervise`): `evalctl` alone runs a
    // local campaign, with no `evalctl-agent` installed beside it.
    if let Ok(program) = std::env::current_exe() {
        agent_config.supervisor = program;
    }
    agent_config.cpu_slots = args.cpu_slots;
    agent_config.acquire_wait = Duration::from_secs(5);
    agent_config.stop_grace = Duration::from_secs(5);
    let stop_agent = CancellationToken::new();
    let agent = runner::run(agent_config, gpus, stop_agent.clone());
    let mut agent = std::pin::pin!(agent);

    let output = if global.json {
        Output::Silent
    } else {
        Output::Human
    };
    let mut watcher = client.clone();
    let follow = watch::follow(&mut watcher, &submitted.campaign_id, output);
    let interrupted = tokio::signal::ctrl_c();
    let state = tokio::select! {
        state = follow => state,
        ended = &mut agent => {
            return Err(match ended {
                Ok(()) => CliError::Local {
                    what: "run the agent",
                    source: "the agent stopped before the campaign ended".into(),
                },
                Err(e) => CliError::Local { what: "run the agent", source: Box::new(e) },
            });
        }
        _ = interrupted => {
            eprintln!("interrupted: stopping the agent (finished steps are kept; run the same command to resume)");
            Ok(pb::CampaignState::Active)
        }
    };
    stop_agent.cancel();
    if let Err(e) = agent.await {
        tracing::warn!(error = %e, "the local agent stopped with an error");
    }
    let state = state?;
    let results = results::fetch(&mut client, &submitted.campaign_id).await?;
    Ok((state, results))
}

/// `$XDG_DATA_HOME/evalctl/local`, else `~/.local/share/evalctl/local`, else `./evalctl-local`.
fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("evalctl/local");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/evalctl/local"),
        None => PathBuf::from("evalctl-local"),
    }
}

/// Deletes what an earlier `evalctl local` left in `dir` (its database and agent state),
/// and nothing else.
fn remove_previous_run(dir: &Path) -> Result<(), CliError> {
    let remove = |path: PathBuf, is_dir: bool| {
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CliError::Write { path, source: e })
            }
            _ => Ok(()),
        }
    };
    for file in [
        "coordinator.sqlite",
        "coordinator.sqlite-wal",
        "coordinator.sqlite-shm",
    ] {
        remove(dir.join(file), false)?;
    }
    remove(dir.join("agent"), true)
}
