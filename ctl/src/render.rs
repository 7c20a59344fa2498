//! Output helpers: tables for people, JSON for scripts, and stdout writes that treat a
//! closed pipe (`evalctl status | head`) as success.

use std::io::Write;

use comfy_table::{ContentArrangement, Table};
use evalctl_proto::v1 as pb;
use serde::Serialize;

use crate::error::CliError;

/// Writes `text` to stdout; a closed pipe is not an error.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(err)),
        _ => Ok(()),
    }
}

/// Writes `text` to stderr as is (warnings that must not mix with the output on stdout).
pub fn emit_stderr(text: &str) -> Result<(), CliError> {
    let mut err = std::io::stderr().lock();
    match err.write_all(text.as_bytes()).and_then(|()| err.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// Writes `value` as pretty JSON and a newline to stdout.
pub fn emit_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value).expect("output types serialize to JSON");
    text.push('\n');
    emit(&text)
}

/// comfy-table preset drawing only a rule under the header (a space means "no line").
const HEADER_RULE_ONLY: &str = "     ──            ";

/// A table with the house style: a rule under the header, wrapped to the terminal.
pub fn table<I, S>(headers: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table
        .load_preset(HEADER_RULE_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers);
    table
}

/// Lowercase name of a campaign state.
pub fn campaign_state(state: i32) -> &'static str {
    match pb::CampaignState::try_from(state).unwrap_or_default() {
        pb::CampaignState::Active => "active",
        pb::CampaignState::Succeeded => "succeeded",
        pb::CampaignState::Failed => "failed",
        pb::CampaignState::Cancelled => "cancelled",
        pb::CampaignState::Unspecified => "unknown",
    }
}

/// Lowercase name of a unit state.
pub fn unit_state(state: i32) -> &'static str {
    match pb::UnitState::try_from(state).unwrap_or_default() {
        pb::UnitState::Pending => "pending",
        pb::UnitState::Leased => "running",
        pb::UnitState::Succeeded => "succeeded",
        pb::UnitState::Failed => "failed",
        pb::UnitState::Cancelled => "cancelled",
        pb::UnitState::Unspecified => "unknown",
    }
}

/// A unit's state in words, as `unit_state`, except that a unit that failed because its
/// model ran out of memory "does not fit": that is a finding about the configuration, not
/// a failure of the engine or the host.
pub fn unit_outcome(unit: &pb::UnitSummary) -> &'static str {
    if does_not_fit(unit) {
        "does not fit"
    } else {
        unit_state(unit.state)
    }
}

/// How the agent classified the unit's last failure, as the store spells it
/// (`bad_argument`, `image_unavailable`, ...); `None` when it was not classified.
pub fn failure_class(unit: &pb::UnitSummary) -> Option<&'static str> {
    match pb::FailureClass::try_from(unit.failure_class).ok()? {
        pb::FailureClass::Unspecified => None,
        pb::FailureClass::BadArgument => Some("bad_argument"),
        pb::FailureClass::PortInUse => Some("port_in_use"),
        pb::FailureClass::OutOfMemory => Some("out_of_memory"),
        pb::FailureClass::MissingModel => Some("missing_model"),
        pb::FailureClass::MissingEngine => Some("missing_engine"),
        pb::FailureClass::ImageUnavailable => Some("image_unavailable"),
        pb::FailureClass::BadDataset => Some("bad_dataset"),
    }
}

/// Whether the unit failed because its model ran out of memory.
pub fn does_not_fit(unit: &pb::UnitSummary) -> bool {
    unit.state == pb::UnitState::Failed as i32
        && unit.failure_class == pb::FailureClass::OutOfMemory as i32
}

/// "done/total" from counts, where done = succeeded.
pub fn progress(counts: Option<&pb::StateCounts>) -> String {
    let c = counts.cloned().unwrap_or_default();
    format!("{}/{}", c.succeeded, c.total)
}

/// Unix milliseconds as an RFC 3339 UTC time to the second.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Counts as a JSON-friendly struct.
#[derive(Debug, Serialize)]
pub struct CountsJson {
    /// Waiting.
    pub pending: u64,
    /// Leased to an agent.
    pub running: u64,
    /// Finished.
    pub succeeded: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// All.
    pub total: u64,
}

impl From<Option<&pb::StateCounts>> for CountsJson {
    fn from(c: Option<&pb::StateCounts>) -> Self {
        let c = c.cloned().unwrap_or_default();
        CountsJson {
            pending: c.pending,
            running: c.leased,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
            total: c.total,
        }
    }
}

/// A campaign as JSON output.
#[derive(Debug, Serialize)]
pub struct CampaignJson {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// State.
    pub state: &'static str,
    /// Priority.
    pub priority: i32,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last change, RFC 3339.
    pub updated_at: String,
    /// Unit counts.
    pub units: CountsJson,
    /// Step counts.
    pub steps: CountsJson,
    /// Dropped combinations.
    pub dropped: u64,
    /// Preemptions suffered.
    pub preemptions: u64,
    /// Work lost to preemptions, seconds.
    pub preemption_lost_s: f64,
    /// Who submitted.
    pub submitted_by: String,
}

impl From<&pb::CampaignInfo> for CampaignJson {
    fn from(c: &pb::CampaignInfo) -> Self {
        CampaignJson {
            id: c.campaign_id.clone(),
            name: c.name.clone(),
            state: campaign_state(c.state),
            priority: c.priority,
            created_at: timestamp(c.created_at_ms),
            updated_at: timestamp(c.updated_at_ms),
            units: c.units.as_ref().into(),
            steps: c.steps.as_ref().into(),
            dropped: c.dropped,
            preemptions: c.preemptions,
            preemption_lost_s: c.preemption_lost_ms as f64 / 1000.0,
            submitted_by: c.submitted_by.clone(),
        }
    }
}

/// A dropped combination as JSON output.
#[derive(Debug, Serialize)]
pub struct DroppedJson {
    /// Combination label.
    pub combination: String,
    /// "excluded" or "pruned".
    pub kind: String,
    /// Why.
    pub reason: String,
}

impl From<pb::DroppedCombination> for DroppedJson {
    fn from(d: pb::DroppedCombination) -> Self {
        DroppedJson {
            combination: d.label,
            kind: d.kind,
            reason: d.reason,
        }
    }
}

/// A table of dropped combinations, or `None` when there are none.
pub fn dropped_table<'a>(dropped: impl IntoIterator<Item = &'a DroppedJson>) -> Option<Table> {
    let mut table = table(["DROPPED", "COMBINATION", "REASON"]);
    let mut any = false;
    for d in dropped {
        any = true;
        table.add_row([d.kind.as_str(), d.combination.as_str(), d.reason.as_str()]);
    }
    any.then_some(table)
}

/// A campaign's series facts as JSON (`evalctl status --json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeriesJson {
    /// The series.
    pub series: String,
    /// The campaign created just before in the series.
    pub predecessor: Option<String>,
    /// The campaign it is judged against.
    pub baseline: Option<String>,
    /// The baseline is pinned.
    pub baseline_pinned: bool,
    /// `passed`, `regressed`, `no_baseline`, `no_common_steps`; absent until judged.
    pub verdict: Option<String>,
    /// Regressions found.
    pub regressions: u32,
    /// Improvements found.
    pub improvements: u32,
    /// Steps matched with the baseline.
    pub matched_steps: u32,
    /// The worst regressions: "metric config / workload @ load: +12.3%".
    pub worst: Vec<String>,
}

impl SeriesJson {
    /// From the wire.
    pub fn from(f: &evalctl_proto::v1::SeriesFacts) -> SeriesJson {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let v = f.verdict.as_ref();
        SeriesJson {
            series: f.series.clone(),
            predecessor: some(&f.predecessor),
            baseline: some(&f.baseline),
            baseline_pinned: f.baseline_pinned,
            verdict: v.map(|v| v.outcome.clone()),
            regressions: v.map_or(0, |v| v.regressions),
            improvements: v.map_or(0, |v| v.improvements),
            matched_steps: v.map_or(0, |v| v.matched_steps),
            worst: v
                .map(|v| {
                    v.worst
                        .iter()
                        .map(|c| {
                            format!(
                                "{} {} / {} @ {}: {:+.1}%",
                                c.metric,
                                c.config,
                                c.workload,
                                c.load,
                                c.change * 100.0
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Two or more lines for the human view.
    pub fn human(&self) -> String {
        let mut out = format!(
            "  series {}: predecessor {}, baseline {}{}\n",
            self.series,
            self.predecessor.as_deref().unwrap_or("none"),
            self.baseline.as_deref().unwrap_or("none"),
            if self.baseline_pinned {
                " (pinned)"
            } else {
                ""
            }
        );
        match self.verdict.as_deref() {
            None => out.push_str("  verdict: when the campaign has ended\n"),
            Some("regressed") => {
                out.push_str(&format!(
                    "  verdict: REGRESSED: {} regressions, {} improvements over {} matched steps\n",
                    self.regressions, self.improvements, self.matched_steps
                ));
                for w in &self.worst {
                    out.push_str(&format!("    {w}\n"));
                }
            }
            Some("passed") => out.push_str(&format!(
                "  verdict: passed: no regression over {} matched steps ({} improvements)\n",
                self.matched_steps, self.improvements
            )),
            Some("no_baseline") => out
                .push_str("  verdict: no baseline (no earlier campaign of the series succeeded)\n"),
            Some(other) => out.push_str(&format!("  verdict: {other}\n")),
        }
        out
    }
}
