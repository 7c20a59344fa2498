//! `evalctl status`: all campaigns, or one with its units and dropped combinations.

use std::process::ExitCode;

use evalctl_proto::v1 as pb;
use serde::Serialize;

use crate::cli::{GlobalArgs, StatusArgs};
use crate::client;
use crate::error::CliError;
use crate::render::{self, CampaignJson, DroppedJson};

#[derive(Debug, Serialize)]
struct UnitJson {
    unit_id: String,
    label: String,
    state: &'static str,
    steps_done: u32,
    steps: u32,
    /// Attempts spent on the unit's own failures (they count against `max_attempts`).
    attempts: u32,
    /// Attempts made, the running one included (preempted ones too).
    tries: u32,
    agent: String,
    last_error: String,
    /// How the agent classified the last failure (`bad_argument`, `image_unavailable`, ...);
    /// absent when it was not classified.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_class: Option<&'static str>,
    log_tail: String,
}

#[derive(Debug, Serialize)]
struct DetailJson {
    campaign: CampaignJson,
    /// For a campaign of a schedule's series: predecessor, baseline, verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    series: Option<render::SeriesJson>,
    units: Vec<UnitJson>,
    dropped: Vec<DroppedJson>,
}

/// Runs `evalctl status`.
pub async fn run(global: &GlobalArgs, args: &StatusArgs) -> Result<ExitCode, CliError> {
    let mut client = client::connect(&global.coordinator).await?;
    match &args.campaign {
        None => {
            let listed = client
                .list_campaigns(pb::ListCampaignsRequest {})
                .await
                .map_err(CliError::rpc("list campaigns"))?
                .into_inner();
            warn_unwritable(listed.store.as_ref())?;
            let campaigns = listed.campaigns;
            if global.json {
                let list: Vec<CampaignJson> = campaigns.iter().map(CampaignJson::from).collect();
                render::emit_json(&list)?;
            } else if campaigns.is_empty() {
                render::emit("No campaigns yet (hint: `evalctl submit MATRIX.yaml`).\n")?;
            } else {
                let mut table = render::table([
                    "CAMPAIGN",
                    "STATE",
                    "UNITS",
                    "STEPS",
                    "FAILED",
                    "DROPPED",
                    "PREEMPTED",
                    "CREATED",
                ]);
                for c in &campaigns {
                    table.add_row([
                        c.name.clone(),
                        render::campaign_state(c.state).to_owned(),
                        render::progress(c.units.as_ref()),
                        render::progress(c.steps.as_ref()),
                        c.units.as_ref().map_or(0, |u| u.failed).to_string(),
                        c.dropped.to_string(),
                        c.preemptions.to_string(),
                        render::timestamp(c.created_at_ms),
                    ]);
                }
                render::emit(&format!("{table}\n"))?;
            }
        }
        Some(name) => {
            let got = client
                .get_campaign(pb::GetCampaignRequest {
                    campaign: name.clone(),
                })
                .await
                .map_err(CliError::rpc("get campaign"))?
                .into_inner();
            warn_unwritable(got.store.as_ref())?;
            let units = client
                .list_units(pb::ListUnitsRequest {
                    campaign: name.clone(),
                })
                .await
                .map_err(CliError::rpc("list units"))?
                .into_inner()
                .units;
            let campaign = got.campaign.unwrap_or_default();
            let detail = DetailJson {
                campaign: CampaignJson::from(&campaign),
                series: got.series.as_ref().map(render::SeriesJson::from),
                units: units
                    .iter()
                    .map(|u| UnitJson {
                        unit_id: u.unit_id.clone(),
                        label: u.label.clone(),
                        state: render::unit_outcome(u),
                        steps_done: u.steps_succeeded,
                        steps: u.steps,
                        attempts: u.attempts,
                        tries: u.tries,
                        agent: u.agent_id.clone(),
                        last_error: u.last_error.clone(),
                        failure_class: render::failure_class(u),
                        log_tail: u.log_tail.clone(),
                    })
                    .collect(),
                dropped: got.dropped.into_iter().map(DroppedJson::from).collect(),
            };
            if global.json {
                render::emit_json(&detail)?;
            } else {
                render::emit(&human_detail(&detail))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Says on stderr (so `--json` output stays what it was) that the coordinator's store
/// cannot write, since when and why: campaigns stall meanwhile.
fn warn_unwritable(store: Option<&pb::StoreHealth>) -> Result<(), CliError> {
    let Some(store) = store.filter(|s| !s.writable) else {
        return Ok(());
    };
    render::emit_stderr(&format!(
        "WARNING: the coordinator's store cannot write since {} ({} failed writes): {}\n  \
         Campaigns stall until it can (hint: free disk space on the file system of the \
         coordinator's database; it resumes by itself).\n",
        render::timestamp(store.failing_since_ms),
        store.write_failures,
        store.last_error,
    ))
}

/// "0s", "2m 5s": time lost to preemptions, to the second.
fn lost(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.round() as u64)).to_string()
}

/// Lines of a failed unit's server log shown by `status` (`--json` has the whole tail).
const FAILED_LOG_LINES: usize = 12;

fn last_lines(text: &str, n: usize) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip)
}

fn human_detail(d: &DetailJson) -> String {
    let c = &d.campaign;
    let mut out = format!(
        "Campaign {} ({})  {}\n  units: {} succeeded, {} running, {} pending, {} failed, {} cancelled of {}\n  steps: {} of {} done; {} combinations dropped; {} preemptions ({} lost)\n  submitted by {} at {}\n",
        c.name,
        c.id,
        c.state,
        c.units.succeeded,
        c.units.running,
        c.units.pending,
        c.units.failed,
        c.units.cancelled,
        c.units.total,
        c.steps.succeeded,
        c.steps.total,
        c.dropped,
        c.preemptions,
        lost(c.preemption_lost_s),
        c.submitted_by,
        c.created_at,
    );
    if let Some(series) = &d.series {
        out.push_str(&series.human());
    }
    let mut units = render::table([
        "UNIT",
        "CONFIGURATION",
        "STATE",
        "STEPS",
        "TRIES",
        "AGENT",
        "LAST ERROR",
    ]);
    for u in &d.units {
        units.add_row([
            u.unit_id.clone(),
            u.label.clone(),
            u.state.to_owned(),
            format!("{}/{}", u.steps_done, u.steps),
            u.tries.to_string(),
            u.agent.clone(),
            u.last_error.clone(),
        ]);
    }
    out.push('\n');
    out.push_str(&units.to_string());
    out.push('\n');
    for u in d
        .units
        .iter()
        .filter(|u| matches!(u.state, "failed" | "does not fit") && !u.log_tail.is_empty())
    {
        let what = if u.state == "failed" {
            "failed unit"
        } else {
            "unit that does not fit"
        };
        out.push_str(&format!(
            "\nServer log of {what} {} ({}), last lines:\n",
            u.unit_id, u.label
        ));
        for line in last_lines(&u.log_tail, FAILED_LOG_LINES) {
            out.push_str("  | ");
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(table) = render::dropped_table(&d.dropped) {
        out.push('\n');
        out.push_str(&table.to_string());
        out.push('\n');
    }
    out
}
