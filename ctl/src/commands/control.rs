//! `evalctl cancel` and `evalctl retry`: steer a campaign.

use std::process::ExitCode;

use evalctl_proto::v1 as pb;
use serde_json::json;

use crate::cli::{CampaignArg, CancelArgs, GlobalArgs};
use crate::client;
use crate::error::CliError;
use crate::render;

/// Runs `evalctl cancel`.
pub async fn cancel(global: &GlobalArgs, args: &CancelArgs) -> Result<ExitCode, CliError> {
    let mut client = client::connect(&global.coordinator).await?;
    let response = client
        .cancel(pb::CancelRequest {
            campaign: args.campaign.clone(),
            reason: args.reason.clone(),
        })
        .await
        .map_err(CliError::rpc("cancel"))?
        .into_inner();
    if global.json {
        render::emit_json(&json!({
            "campaign": args.campaign,
            "units_cancelled": response.units_cancelled,
        }))?;
    } else {
        render::emit(&format!(
            "Cancelled campaign {}: {} units stopped (finished results are kept).\n",
            args.campaign, response.units_cancelled
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `evalctl retry`.
pub async fn retry(global: &GlobalArgs, args: &CampaignArg) -> Result<ExitCode, CliError> {
    let mut client = client::connect(&global.coordinator).await?;
    let response = client
        .retry(pb::RetryRequest {
            campaign: args.campaign.clone(),
        })
        .await
        .map_err(CliError::rpc("retry"))?
        .into_inner();
    if global.json {
        render::emit_json(&json!({
            "campaign": args.campaign,
            "units_retried": response.units_retried,
        }))?;
    } else {
        render::emit(&format!(
            "Campaign {}: {} failed units back in the queue with fresh attempts.\n",
            args.campaign, response.units_retried
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
