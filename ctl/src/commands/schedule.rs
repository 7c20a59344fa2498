//! `evalctl schedule add|list|show|pause|resume|remove|run-now|update`: campaigns submitted
//! by the coordinator at each firing of a cron pattern, over its `ScheduleService`
//! (docs/schedules.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use evalctl_coordinator::matrix;
use evalctl_proto::v1 as pb;
use serde_json::json;

use crate::cli::{ConnectionArgs, GlobalArgs};
use crate::client;
use crate::error::CliError;
use crate::render;

/// Exit code of `run-now` when the firing did not submit a campaign (skipped or failed).
pub const EXIT_NOT_FIRED: u8 = 1;

/// `evalctl schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: the matrix is submitted as campaign NAME-<local time> at each firing.
    Add {
        /// Schedule name, also its series' name ([A-Za-z0-9._-], at most 64).
        name: String,
        /// The matrix file; its text is stored with the schedule.
        matrix: PathBuf,
        /// When it fires.
        #[command(flatten)]
        timing: Timing,
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Change a schedule: a new matrix file, pattern, time zone or policy (audited).
    Update {
        /// Schedule name.
        name: String,
        /// A new matrix file.
        matrix: Option<PathBuf>,
        /// What changes.
        #[command(flatten)]
        timing: Timing,
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// List schedules with their next and last firing.
    List {
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Show one schedule and its recent firings.
    Show {
        /// Schedule name.
        name: String,
        /// Firings to list, newest first.
        #[arg(long, default_value_t = 20)]
        firings: u32,
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Pause a schedule: it does not fire until resumed.
    Pause(NameArg),
    /// Resume a schedule; the firings of the pause are not run.
    Resume(NameArg),
    /// Remove a schedule (its campaigns stay).
    Remove(NameArg),
    /// Fire a schedule now, even paused (the overlap rule applies); exit 1 when it did not
    /// submit a campaign.
    RunNow(NameArg),
}

/// A schedule's name and the connection.
#[derive(Debug, Args)]
pub struct NameArg {
    /// Schedule name.
    pub name: String,
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// When and how a schedule fires; on `update`, only what is given changes.
#[derive(Debug, Args)]
pub struct Timing {
    /// Cron pattern: 5 fields (minute hour day-of-month month day-of-week), or 6 with
    /// seconds first, e.g. "0 1 * * *" (01:00 daily).
    #[arg(long)]
    pub cron: Option<String>,
    /// IANA time zone the pattern is read in (add: default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Firings missed while the coordinator was down: run the latest once, or skip them
    /// (add: default once).
    #[arg(long, value_enum)]
    pub catch_up: Option<CatchUpArg>,
    /// A firing while a campaign of the series still runs: skip it, queue the new
    /// campaign behind, or cancel the running one (add: default skip).
    #[arg(long, value_enum)]
    pub overlap: Option<OverlapArg>,
    /// Notification sinks (names in the coordinator's config, comma-separated) its
    /// campaigns notify besides those configured for every campaign; on update, "" clears.
    #[arg(long, value_delimiter = ',')]
    pub notify: Option<Vec<String>>,
}

/// `--catch-up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CatchUpArg {
    /// Run the latest missed firing once.
    Once,
    /// Run none of them.
    Skip,
}

/// `--overlap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverlapArg {
    /// Record the firing as skipped.
    Skip,
    /// Submit anyway: its units queue behind the running campaign's.
    Queue,
    /// Cancel the running campaign, then submit.
    Cancel,
}

fn word<T: ValueEnum>(value: Option<T>) -> Option<String> {
    value.and_then(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
}

/// The sink names given, blanks dropped.
fn sinks(timing: &Timing) -> Vec<String> {
    timing
        .notify
        .iter()
        .flatten()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl ScheduleCommand {
    /// The connection options given after the subcommand.
    pub fn connection(&self) -> &ConnectionArgs {
        match self {
            ScheduleCommand::Add { connection, .. }
            | ScheduleCommand::Update { connection, .. }
            | ScheduleCommand::List { connection }
            | ScheduleCommand::Show { connection, .. } => connection,
            ScheduleCommand::Pause(a)
            | ScheduleCommand::Resume(a)
            | ScheduleCommand::Remove(a)
            | ScheduleCommand::RunNow(a) => &a.connection,
        }
    }
}

/// The matrix text and file name of `path`, checked here first so a bad file gets its line
/// and column without a coordinator.
fn read_matrix(path: &std::path::Path) -> Result<(String, String), CliError> {
    let yaml = matrix::read_file(path).map_err(CliError::matrix_file)?;
    let source_name = path.display().to_string();
    let expansion = matrix::expand_str(&source_name, &yaml).map_err(CliError::InvalidMatrix)?;
    expansion
        .check_not_empty(false)
        .map_err(CliError::EmptyCampaign)?;
    Ok((yaml, source_name))
}

fn when(ms: i64) -> String {
    if ms == 0 {
        "-".to_owned()
    } else {
        render::timestamp(ms)
    }
}

fn firing_json(f: &pb::Firing) -> serde_json::Value {
    json!({
        "fire_at_ms": (f.fire_at_ms != 0).then_some(f.fire_at_ms),
        "campaign": (!f.campaign.is_empty()).then_some(&f.campaign),
        "outcome": f.outcome,
        "detail": (!f.detail.is_empty()).then_some(&f.detail),
    })
}

fn schedule_json(s: &pb::Schedule) -> serde_json::Value {
    json!({
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "catch_up": s.catch_up,
        "overlap": s.overlap,
        "notify": s.notify,
        "paused": s.paused,
        "next_fire_at_ms": (s.next_fire_at_ms != 0).then_some(s.next_fire_at_ms),
        "next_campaign": (!s.next_campaign.is_empty()).then_some(&s.next_campaign),
        "last_firing": s.last_firing.as_ref().map(firing_json),
        "source_name": s.source_name,
        "created_by": s.created_by,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
    })
}

fn describe(s: &pb::Schedule) -> String {
    let mut text = format!(
        "Schedule {}: `{}` in {} (catch-up {}, overlap {}){}\n",
        s.name,
        s.cron,
        s.timezone,
        s.catch_up,
        s.overlap,
        if s.paused { ", paused" } else { "" }
    );
    if s.next_fire_at_ms != 0 {
        text.push_str(&format!(
            "  next: {} → campaign {}\n",
            when(s.next_fire_at_ms),
            s.next_campaign
        ));
    }
    if let Some(f) = &s.last_firing {
        text.push_str(&format!("  last: {}\n", firing_line(f)));
    }
    text
}

fn firing_line(f: &pb::Firing) -> String {
    let mut line = format!("{} {} {}", when(f.fire_at_ms), f.outcome, f.campaign);
    if !f.detail.is_empty() {
        line.push_str(&format!(" ({})", f.detail));
    }
    line
}

fn emit_schedule(
    global: &GlobalArgs,
    reply: pb::ScheduleReply,
    verb: &str,
) -> Result<(), CliError> {
    let schedule = reply.schedule.unwrap_or_default();
    if global.json {
        render::emit_json(&schedule_json(&schedule))
    } else {
        render::emit(&format!("{verb} {}", describe(&schedule)))
    }
}

/// Runs `evalctl schedule …`.
pub async fn run(global: &GlobalArgs, command: &ScheduleCommand) -> Result<ExitCode, CliError> {
    // The matrix is read before connecting: a bad file fails without a coordinator.
    let matrix = match command {
        ScheduleCommand::Add { matrix, .. } => Some(read_matrix(matrix)?),
        ScheduleCommand::Update {
            matrix: Some(path), ..
        } => Some(read_matrix(path)?),
        _ => None,
    };
    let mut client = client::connect_schedules(&global.coordinator).await?;
    match command {
        ScheduleCommand::Add { name, timing, .. } => {
            let (matrix_yaml, source_name) = matrix.unwrap_or_default();
            let reply = client
                .add_schedule(pb::AddScheduleRequest {
                    name: name.clone(),
                    matrix_yaml,
                    source_name,
                    cron: timing.cron.clone().ok_or_else(|| CliError::BadFlag {
                        flag: "--cron",
                        source: "`schedule add` needs --cron, e.g. --cron \"0 1 * * *\"".into(),
                    })?,
                    timezone: timing.timezone.clone().unwrap_or_default(),
                    catch_up: word(timing.catch_up).unwrap_or_default(),
                    overlap: word(timing.overlap).unwrap_or_default(),
                    notify: sinks(timing),
                })
                .await
                .map_err(CliError::rpc("schedule add"))?
                .into_inner();
            emit_schedule(global, reply, "Added")?;
        }
        ScheduleCommand::Update { name, timing, .. } => {
            let (matrix_yaml, source_name) = matrix.unzip();
            let reply = client
                .update_schedule(pb::UpdateScheduleRequest {
                    name: name.clone(),
                    matrix_yaml,
                    source_name,
                    cron: timing.cron.clone(),
                    timezone: timing.timezone.clone(),
                    catch_up: word(timing.catch_up),
                    overlap: word(timing.overlap),
                    set_notify: timing.notify.is_some(),
                    notify: sinks(timing),
                })
                .await
                .map_err(CliError::rpc("schedule update"))?
                .into_inner();
            emit_schedule(global, reply, "Updated")?;
        }
        ScheduleCommand::List { .. } => {
            let schedules = client
                .list_schedules(pb::ListSchedulesRequest {})
                .await
                .map_err(CliError::rpc("schedule list"))?
                .into_inner()
                .schedules;
            if global.json {
                render::emit_json(&schedules.iter().map(schedule_json).collect::<Vec<_>>())?;
            } else {
                let mut table =
                    render::table(["NAME", "CRON", "TIME ZONE", "STATE", "NEXT", "LAST"]);
                for s in &schedules {
                    table.add_row([
                        s.name.clone(),
                        s.cron.clone(),
                        s.timezone.clone(),
                        if s.paused { "paused" } else { "active" }.to_owned(),
                        when(s.next_fire_at_ms),
                        s.last_firing.as_ref().map(firing_line).unwrap_or_default(),
                    ]);
                }
                render::emit(&format!("{table}\n"))?;
            }
        }
        ScheduleCommand::Show { name, firings, .. } => {
            let got = client
                .get_schedule(pb::GetScheduleRequest {
                    name: name.clone(),
                    firings: *firings,
                })
                .await
                .map_err(CliError::rpc("schedule show"))?
                .into_inner();
            let schedule = got.schedule.unwrap_or_default();
            if global.json {
                let mut value = schedule_json(&schedule);
                value["firings"] = got.firings.iter().map(firing_json).collect();
                render::emit_json(&value)?;
            } else {
                let mut text = describe(&schedule);
                for f in &got.firings {
                    text.push_str(&format!("  {}\n", firing_line(f)));
                }
                render::emit(&text)?;
            }
        }
        ScheduleCommand::Pause(a) | ScheduleCommand::Resume(a) => {
            let paused = matches!(command, ScheduleCommand::Pause(_));
            let reply = client
                .set_schedule_paused(pb::SetSchedulePausedRequest {
                    name: a.name.clone(),
                    paused,
                })
                .await
                .map_err(CliError::rpc("schedule pause"))?
                .into_inner();
            emit_schedule(global, reply, if paused { "Paused" } else { "Resumed" })?;
        }
        ScheduleCommand::Remove(a) => {
            client
                .remove_schedule(pb::RemoveScheduleRequest {
                    name: a.name.clone(),
                })
                .await
                .map_err(CliError::rpc("schedule remove"))?;
            if global.json {
                render::emit_json(&json!({ "removed": a.name }))?;
            } else {
                render::emit(&format!(
                    "Removed schedule {} (its campaigns stay).\n",
                    a.name
                ))?;
            }
        }
        ScheduleCommand::RunNow(a) => {
            let firing = client
                .run_schedule(pb::RunScheduleRequest {
                    name: a.name.clone(),
                })
                .await
                .map_err(CliError::rpc("schedule run-now"))?
                .into_inner()
                .firing
                .unwrap_or_default();
            if global.json {
                render::emit_json(&firing_json(&firing))?;
            } else if firing.outcome == "submitted" {
                render::emit(&format!("Submitted campaign {}.\n", firing.campaign))?;
            } else {
                render::emit(&format!(
                    "Not run ({}): {}\n",
                    firing.outcome, firing.detail
                ))?;
            }
            if firing.outcome != "submitted" {
                return Ok(ExitCode::from(EXIT_NOT_FIRED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
