//! `evalctl watch`: follow a campaign until it ends. A progress bar on a terminal; one
//! line per event otherwise (JSON Lines with `--json`).

use std::io::IsTerminal;
use std::process::ExitCode;

use evalctl_proto::v1 as pb;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{CampaignArg, GlobalArgs};
use crate::client;
use crate::error::{CliError, EXIT_CAMPAIGN_FAILED};
use crate::render::{self, CampaignJson};

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
    /// A progress bar on a terminal, lines otherwise.
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
    let mut last_state = pb::CampaignState::Unspecified;
    while let Some(event) = stream.next().await {
        let event = event.map_err(CliError::rpc("watch"))?;
        if let Some(c) = &event.campaign {
            last_state = pb::CampaignState::try_from(c.state).unwrap_or_default();
        }
        view.show(&event)?;
    }
    view.finish();
    Ok(last_state)
}

/// How events are shown.
enum View {
    Bar(ProgressBar),
    Lines,
    Json,
    Silent,
}

impl View {
    fn new(output: Output) -> View {
        if output == Output::Silent {
            View::Silent
        } else if output == Output::Json {
            View::Json
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:40}] {pos}/{len} steps {elapsed_precise} {msg}",
                )
                .expect("progress template is valid")
                .progress_chars("=> "),
            );
            View::Bar(bar)
        } else {
            View::Lines
        }
    }

    fn show(&mut self, event: &pb::WatchEvent) -> Result<(), CliError> {
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
            View::Bar(bar) => {
                bar.set_prefix(campaign.name.clone());
                bar.set_length(steps.total);
                bar.set_position(steps.succeeded);
                bar.set_message(summary);
                // Unit transitions get a line above the bar; step progress only moves it.
                if !matches!(event.kind.as_str(), "snapshot" | "step_finished") {
                    let mut line = format!("  {} {}", event.kind, event.unit_label);
                    if !event.detail.is_empty() {
                        line.push_str(&format!(" ({})", event.detail));
                    }
                    bar.println(line);
                }
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
                render::emit(&line)
            }
            View::Silent => Ok(()),
            View::Json => {
                let value = serde_json::json!({
                    "at": render::timestamp(event.at_ms),
                    "kind": event.kind,
                    "unit_id": event.unit_id,
                    "unit": event.unit_label,
                    "detail": event.detail,
                    "campaign": CampaignJson::from(&campaign),
                });
                render::emit(&format!("{value}\n"))
            }
        }
    }

    fn finish(&self) {
        if let View::Bar(bar) = self {
            bar.finish();
        }
    }
}
