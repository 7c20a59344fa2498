//! `evalctl baseline pin|unpin SERIES`: the campaign a series' later campaigns are judged
//! against (docs/schedules.md#baselines-and-verdicts), over the `ScheduleService`.

use std::process::ExitCode;

use clap::Subcommand;
use evalctl_proto::v1 as pb;
use serde_json::json;

use crate::cli::{ConnectionArgs, GlobalArgs};
use crate::client;
use crate::error::CliError;
use crate::render;

/// `evalctl baseline` subcommands.
#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Pin a campaign of the series as its baseline (operator only).
    Pin {
        /// The series (its schedule's name).
        series: String,
        /// A campaign of the series, by name or id.
        campaign: String,
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Go back to the default baseline: the newest earlier campaign that succeeded.
    Unpin {
        /// The series.
        series: String,
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
}

impl BaselineCommand {
    /// The connection options given after the subcommand.
    pub fn connection(&self) -> &ConnectionArgs {
        match self {
            BaselineCommand::Pin { connection, .. } | BaselineCommand::Unpin { connection, .. } => {
                connection
            }
        }
    }
}

/// Runs `evalctl baseline …`.
pub async fn run(global: &GlobalArgs, command: &BaselineCommand) -> Result<ExitCode, CliError> {
    let mut client = client::connect_schedules(&global.coordinator).await?;
    match command {
        BaselineCommand::Pin {
            series, campaign, ..
        } => {
            let pinned = client
                .pin_baseline(pb::PinBaselineRequest {
                    series: series.clone(),
                    campaign: campaign.clone(),
                })
                .await
                .map_err(CliError::rpc("baseline pin"))?
                .into_inner()
                .campaign;
            if global.json {
                render::emit_json(&json!({ "series": series, "baseline": pinned }))?;
            } else {
                render::emit(&format!(
                    "Series {series}: campaigns from now on are judged against {pinned}.\n"
                ))?;
            }
        }
        BaselineCommand::Unpin { series, .. } => {
            client
                .unpin_baseline(pb::UnpinBaselineRequest {
                    series: series.clone(),
                })
                .await
                .map_err(CliError::rpc("baseline unpin"))?;
            if global.json {
                render::emit_json(&json!({ "series": series, "baseline": null }))?;
            } else {
                render::emit(&format!(
                    "Series {series}: judged against the newest earlier campaign that succeeded.\n"
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
