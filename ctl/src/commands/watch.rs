//! `evalctl watch`: follow a campaign until it ends. On a terminal, a progress bar for
//! the campaign's steps and one line per running unit (its agent, step and time running),
//! redrawn from the watch stream; when stdout is not a terminal, one plain line per event
//! and per running unit (JSON Lines with `--json`). Exits 6 when the campaign ends failed
//! or cancelled.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use evalctl_proto::v1 as pb;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{CampaignArg, GlobalArgs};
use crate::client;
use crate::error::{CliError, EXIT_CAMPAIGN_FAILED};
use crate::render::{self, CampaignJson};

/// How often the terminal view redraws (elapsed times move between events).
const TICK: Duration = Duration::from_millis(500);

/// Runs `evalctl watch`.
pub async fn run(global: &GlobalArgs, args: &CampaignArg) -> Result<ExitCode, CliError> {
    let mut client = client::connect(&global.coordinator).await?;
    let output = if global.json {
        Output::Json
    } else {
        Output::Human
    };
    let last_state = follow(&mut client, &args.campaign, output).await?;
    Ok(match last_state {
        pb::CampaignState::Failed | pb::CampaignState::Cancelled => {
            ExitCode::from(EXIT_CAMPAIGN_FAILED)
        }
        _ => ExitCode::SUCCESS,
    })
}

/// How `follow` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Progress bars on a terminal, lines otherwise.
    Human,
    /// JSON Lines on stdout.
    Json,
    /// Nothing (the caller prints its own output).
    Silent,
}

/// Shows a campaign's progress until it ends (or the stream does); returns its last state.
pub async fn follow(
    client: &mut client::Client,
    campaign: &str,
    output: Output,
) -> Result<pb::CampaignState, CliError> {
    let mut stream = client
        .watch(pb::WatchRequest {
            campaign: campaign.to_owned(),
        })
        .await
        .map_err(CliError::rpc("watch"))?
        .into_inner();
    let mut view = View::new(output);
    let mut running = Running::default();
    let mut last_state = pb::CampaignState::Unspecified;
    while let Some(event) = stream.next().await {
        let event = event.map_err(CliError::rpc("watch"))?;
        if let Some(c) = &event.campaign {
            last_state = pb::CampaignState::try_from(c.state).unwrap_or_default();
        }
        running.update(&event.running);
        view.show(&event, &running)?;
    }
    view.finish();
    Ok(last_state)
}

/// The running units and when this watch first saw each running (the stream does not
/// carry lease start times, so "elapsed" is time running as seen by this watch).
#[derive(Debug, Default)]
struct Running {
    units: Vec<pb::UnitSummary>,
    since: HashMap<String, Instant>,
}

impl Running {
    fn update(&mut self, running: &[pb::UnitSummary]) {
        let now = Instant::now();
        self.since
            .retain(|id, _| running.iter().any(|u| &u.unit_id == id));
        for u in running {
            self.since.entry(u.unit_id.clone()).or_insert(now);
        }
        self.units = running.to_vec();
    }

    fn elapsed(&self, unit_id: &str) -> Duration {
        self.since
            .get(unit_id)
            .map_or(Duration::ZERO, Instant::elapsed)
    }
}

/// "agent a1 · step 3/8".
fn unit_status(u: &pb::UnitSummary) -> String {
    let agent = if u.agent_id.is_empty() {
        "?"
    } else {
        u.agent_id.as_str()
    };
    // The step in progress is the one after those done.
    let step = (u.steps_succeeded + 1).min(u.steps.max(1));
    format!("agent {agent} · step {step}/{}", u.steps)
}

/// "1m05s".
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The terminal view: the campaign's bar and one spinner line per running unit.
struct Bars {
    multi: MultiProgress,
    campaign: ProgressBar,
    units: HashMap<String, ProgressBar>,
    unit_style: ProgressStyle,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let campaign = multi.add(ProgressBar::new(0));
        campaign.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:40}] {pos}/{len} steps {elapsed_precise} {msg}",
            )
            .expect("progress template is valid")
            .progress_chars("=> "),
        );
        campaign.enable_steady_tick(TICK);
        let unit_style = ProgressStyle::with_template("  {spinner} {prefix} · {msg} · {elapsed}")
            .expect("progress template is valid");
        Bars {
            multi,
            campaign,
            units: HashMap::new(),
            unit_style,
        }
    }

    fn show(&mut self, event: &pb::WatchEvent, summary: String, running: &Running) {
        let campaign = event.campaign.clone().unwrap_or_default();
        let steps = campaign.steps.unwrap_or_default();
        self.campaign.set_prefix(campaign.name.clone());
        self.campaign.set_length(steps.total);
        self.campaign.set_position(steps.succeeded);
        self.campaign.set_message(summary);
        // Unit transitions get a line above the bars; step progress only moves them.
        if !matches!(
            event.kind.as_str(),
            "snapshot" | "step_finished" | "progress"
        ) {
            let mut line = format!("  {} {}", event.kind, event.unit_label);
            if !event.detail.is_empty() {
                line.push_str(&format!(" ({})", event.detail));
            }
            let _ = self.multi.println(line);
        }
        self.units.retain(|id, bar| {
            let keep = running.units.iter().any(|u| &u.unit_id == id);
            if !keep {
                bar.finish_and_clear();
                self.multi.remove(bar);
            }
            keep
        });
        for u in &running.units {
            let bar = self.units.entry(u.unit_id.clone()).or_insert_with(|| {
                let bar = self
                    .multi
                    .add(ProgressBar::new_spinner().with_elapsed(running.elapsed(&u.unit_id)));
                bar.set_style(self.unit_style.clone());
                bar.set_prefix(u.label.clone());
                bar
            });
            bar.set_message(unit_status(u));
        }
    }

    fn finish(&self) {
        for bar in self.units.values() {
            bar.finish_and_clear();
        }
        // Keep the last counts (finish() would fill the bar).
        self.campaign.abandon();
    }
}

/// How events are shown.
enum View {
    Bars(Box<Bars>),
    Lines,
    Json,
    Silent,
}

impl View {
    fn new(output: Output) -> View {
        match output {
            Output::Silent => View::Silent,
            Output::Json => View::Json,
            Output::Human if std::io::stdout().is_terminal() => View::Bars(Box::new(Bars::new())),
            Output::Human => View::Lines,
        }
    }

    fn show(&mut self, event: &pb::WatchEvent, running: &Running) -> Result<(), CliError> {
        let campaign = event.campaign.clone().unwrap_or_default();
        let steps = campaign.steps.unwrap_or_default();
        let units = campaign.units.unwrap_or_default();
        let summary = format!(
            "{} | units {} done, {} running, {} pending, {} failed",
            render::campaign_state(campaign.state),
            units.succeeded,
            units.leased,
            units.pending,
            units.failed
        );
        match self {
            View::Bars(bars) => {
                bars.show(event, summary, running);
                Ok(())
            }
            View::Lines => {
                let mut line = format!(
                    "{} {} {} steps {}/{} | {}",
                    render::timestamp(event.at_ms),
                    campaign.name,
                    event.kind,
                    steps.succeeded,
                    steps.total,
                    summary
                );
                if !event.unit_label.is_empty() {
                    line.push_str(&format!(" | {}", event.unit_label));
                }
                if !event.detail.is_empty() {
                    line.push_str(&format!(" | {}", event.detail));
                }
                line.push('\n');
                for u in &running.units {
                    line.push_str(&format!(
                        "  running {} | {} | {}\n",
                        u.label,
                        unit_status(u),
                        short_duration(running.elapsed(&u.unit_id))
                    ));
                }
                render::emit(&line)
            }
            View::Silent => Ok(()),
            View::Json => {
                let running: Vec<serde_json::Value> = running
                    .units
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "unit_id": u.unit_id,
                            "unit": u.label,
                            "agent_id": u.agent_id,
                            "steps_done": u.steps_succeeded,
                            "steps": u.steps,
                            "elapsed_s": running.elapsed(&u.unit_id).as_secs_f64(),
                        })
                    })
                    .collect();
                let value = serde_json::json!({
                    "at": render::timestamp(event.at_ms),
                    "kind": event.kind,
                    "unit_id": event.unit_id,
                    "unit": event.unit_label,
                    "detail": event.detail,
                    "campaign": CampaignJson::from(&campaign),
                    "running": running,
                });
                render::emit(&format!("{value}\n"))
            }
        }
    }

    fn finish(&self) {
        if let View::Bars(bars) = self {
            bars.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lines_name_agent_step_and_time() {
        let u = pb::UnitSummary {
            unit_id: "u1".into(),
            agent_id: "a1".into(),
            steps: 8,
            steps_succeeded: 2,
            ..Default::default()
        };
        assert_eq!(unit_status(&u), "agent a1 · step 3/8");
        let done = pb::UnitSummary {
            steps_succeeded: 8,
            ..u.clone()
        };
        assert_eq!(unit_status(&done), "agent a1 · step 8/8");
        assert_eq!(short_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(short_duration(Duration::from_secs(3725)), "1h02m");

        let mut running = Running::default();
        running.update(std::slice::from_ref(&u));
        assert!(running.since.contains_key("u1"));
        running.update(&[]);
        assert!(running.since.is_empty() && running.units.is_empty());
    }
}
