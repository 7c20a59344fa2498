//! `evalctl submit`: validate a matrix locally, then store it on the coordinator, or
//! print its expansion with `--dry-run` without contacting anyone.

use std::collections::BTreeMap;
use std::process::ExitCode;

use evalctl_coordinator::domain::Expansion;
use evalctl_coordinator::matrix;
use evalctl_proto::v1 as pb;
use serde::Serialize;

use super::plan::planned_units;
use crate::cli::{GlobalArgs, SubmitArgs};
use crate::client;
use crate::error::CliError;
use crate::render::{self, DroppedJson};

/// The submit report, for `--json`.
#[derive(Debug, Serialize)]
struct SubmitJson {
    campaign: String,
    campaign_id: Option<String>,
    dry_run: bool,
    units: u64,
    steps: u64,
    units_added: u64,
    units_kept: u64,
    steps_added: u64,
    steps_kept: u64,
    /// Dry runs only: capacity search steps among `steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_searches: Option<u64>,
    /// Dry runs only: the most probe runs the searches can add as steps while they run.
    #[serde(skip_serializing_if = "Option::is_none")]
    probe_runs_at_most: Option<u64>,
    unit_list: Vec<UnitJson>,
    dropped: Vec<DroppedJson>,
}

#[derive(Debug, Serialize)]
struct UnitJson {
    unit_id: String,
    label: String,
    steps: u64,
    /// The server command template this unit launches (dry runs only: the coordinator's
    /// reply does not carry it).
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    /// Dry runs only: what `evalctl-agent doctor` reads (the framework, the command as the
    /// agent renders it, for port 8000 and GPUs 0..count, the model path and the GPUs).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
}

/// A dry-run unit's launch details (`PlannedUnit` without the id and label `UnitJson` has).
#[derive(Debug, Serialize)]
struct Plan {
    framework: String,
    argv: Vec<String>,
    model_path: String,
    gpu_type: String,
    gpu_count: u32,
    /// The container image, for a framework with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    /// The container's `create` per runtime (`docker`, `podman`), for a framework with an
    /// image.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    container_create: BTreeMap<String, Vec<String>>,
}

/// Runs `evalctl submit`.
pub async fn run(global: &GlobalArgs, args: &SubmitArgs) -> Result<ExitCode, CliError> {
    let yaml = matrix::read_file(&args.matrix).map_err(CliError::matrix_file)?;
    let source_name = args.matrix.display().to_string();
    // Validate here first: a bad file gets its line and column without a coordinator.
    let expansion = matrix::expand_str(&source_name, &yaml).map_err(CliError::InvalidMatrix)?;
    expansion
        .check_not_empty(args.allow_empty)
        .map_err(CliError::EmptyCampaign)?;
    let report = if args.dry_run {
        dry_run_report(&expansion)
    } else {
        let mut client = client::connect(&global.coordinator).await?;
        let response = client
            .submit(pb::SubmitRequest {
                matrix_yaml: yaml,
                source_name,
                dry_run: false,
                submitted_by: local_user(),
                allow_empty: args.allow_empty,
            })
            .await
            .map_err(CliError::rpc("submit"))?
            .into_inner();
        submitted_report(response)
    };
    if global.json {
        render::emit_json(&report)?;
    } else {
        render::emit(&human(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn dry_run_report(expansion: &Expansion) -> SubmitJson {
    let (searches, probe_runs) = expansion.search_bounds();
    SubmitJson {
        campaign: expansion.campaign.name.clone(),
        campaign_id: None,
        dry_run: true,
        units: expansion.units.len() as u64,
        steps: expansion.step_count() as u64,
        units_added: 0,
        units_kept: 0,
        steps_added: 0,
        steps_kept: 0,
        capacity_searches: Some(searches as u64),
        probe_runs_at_most: Some(probe_runs),
        unit_list: expansion
            .units
            .iter()
            .zip(planned_units(expansion))
            .map(|(u, planned)| UnitJson {
                unit_id: planned.unit_id,
                label: planned.label,
                steps: u.steps.len() as u64,
                command: Some(u.config.framework.command.clone()),
                plan: Some(Plan {
                    framework: planned.framework,
                    argv: planned.argv,
                    model_path: planned.model_path,
                    gpu_type: planned.gpu_type,
                    gpu_count: planned.gpu_count,
                    image: planned.image,
                    container_create: planned.container_create,
                }),
            })
            .collect(),
        dropped: expansion
            .dropped
            .iter()
            .map(|d| DroppedJson {
                combination: d.label.clone(),
                kind: d.kind.to_string(),
                reason: d.reason.clone(),
            })
            .collect(),
    }
}

fn submitted_report(r: pb::SubmitResponse) -> SubmitJson {
    SubmitJson {
        campaign: r.campaign,
        campaign_id: Some(r.campaign_id),
        dry_run: false,
        units: r.units,
        steps: r.steps,
        units_added: r.units_added,
        units_kept: r.units_kept,
        steps_added: r.steps_added,
        steps_kept: r.steps_kept,
        capacity_searches: None,
        probe_runs_at_most: None,
        unit_list: r
            .unit_list
            .into_iter()
            .map(|u| UnitJson {
                unit_id: u.unit_id,
                label: u.label,
                steps: u64::from(u.steps),
                command: None,
                plan: None,
            })
            .collect(),
        dropped: r.dropped.into_iter().map(DroppedJson::from).collect(),
    }
}

fn human(r: &SubmitJson) -> String {
    let excluded = r.dropped.iter().filter(|d| d.kind == "excluded").count();
    let pruned = r.dropped.iter().filter(|d| d.kind == "pruned").count();
    let mut out = String::new();
    if r.dry_run {
        out.push_str(&format!(
            "Campaign {} (dry run: nothing stored)\n",
            r.campaign
        ));
    } else {
        out.push_str(&format!(
            "Submitted campaign {} ({})\n",
            r.campaign,
            r.campaign_id.as_deref().unwrap_or("-")
        ));
    }
    out.push_str(&format!(
        "  {} units, {} steps; {} combinations dropped ({excluded} excluded, {pruned} pruned)\n",
        r.units,
        r.steps,
        r.dropped.len()
    ));
    if let (Some(searches @ 1..), Some(runs)) = (r.capacity_searches, r.probe_runs_at_most) {
        out.push_str(&format!(
            "  {searches} of the steps are capacity searches: they add at most {runs} probe \
             runs as steps while they run\n"
        ));
    }
    if !r.dry_run {
        out.push_str(&format!(
            "  stored: {} units and {} steps new, {} units and {} steps kept from earlier submits\n",
            r.units_added, r.steps_added, r.units_kept, r.steps_kept
        ));
    }
    let mut units = render::table(["UNIT", "CONFIGURATION", "STEPS"]);
    for u in &r.unit_list {
        units.add_row([u.unit_id.clone(), u.label.clone(), u.steps.to_string()]);
    }
    out.push('\n');
    out.push_str(&units.to_string());
    out.push('\n');
    if let Some(table) = render::dropped_table(&r.dropped) {
        out.push('\n');
        out.push_str(&table.to_string());
        out.push('\n');
    }
    if !r.dry_run {
        out.push_str(&format!("\nFollow it with: evalctl watch {}\n", r.campaign));
    }
    out
}

/// The local user name, for the audit log.
pub fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(os_user)
}

/// The name of this process's user from the user database (`$USER` is unset under cron,
/// systemd units and many containers), else `uid N`.
fn os_user() -> String {
    let uid = nix::unistd::Uid::current();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}
