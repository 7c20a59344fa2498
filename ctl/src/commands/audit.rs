//! `evalctl audit`: the coordinator's audit log, newest first, filtered by actor, action
//! and time on the coordinator (`TokenService.ListAudit`, operator only). Pages of at most
//! the coordinator's page size are fetched until `--limit` entries are shown.

use std::process::ExitCode;

use clap::Args;
use evalctl_proto::v1 as pb;
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::client;
use crate::error::CliError;
use crate::render;
use crate::when;

/// `evalctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: crate::cli::ConnectionArgs,
    /// Only entries by this actor: a token's name, `unauthenticated` (a refused call without
    /// a valid token), `anonymous` (tokens not enforced), `local:USER` (on the database file).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only entries of this action: submit, resubmit, cancel, retry_failed, drain,
    /// token_create, token_revoke, refused.
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries at or after TIME: RFC 3339 (2025-06-01T12:00:00Z) or a duration before
    /// now (30m, 1h, 7d).
    #[arg(long, value_name = "TIME", value_parser = when::parse)]
    pub since: Option<i64>,
    /// Only entries at or before TIME: RFC 3339 or a duration before now.
    #[arg(long, value_name = "TIME", value_parser = when::parse)]
    pub until: Option<i64>,
    /// Most entries to show, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `--since` later than `--until`: no entry could match.
#[derive(Debug, thiserror::Error)]
#[error(
    "--since {} is after --until {}: expected the earlier time in --since",
    render::timestamp(*.since),
    render::timestamp(*.until)
)]
struct Reversed {
    since: i64,
    until: i64,
}

/// An entry as `--json` prints it.
#[derive(Debug, Serialize)]
struct EntryJson {
    audit_id: i64,
    at: String,
    at_ms: i64,
    actor: String,
    action: String,
    target: String,
    /// The detail object (its text when it is not JSON).
    detail: serde_json::Value,
}

fn entry_json(entry: pb::AuditEntry) -> EntryJson {
    EntryJson {
        audit_id: entry.audit_id,
        at: when::rfc3339_ms(entry.at_ms),
        at_ms: entry.at_ms,
        detail: serde_json::from_str(&entry.detail_json)
            .unwrap_or(serde_json::Value::String(entry.detail_json)),
        actor: entry.actor,
        action: entry.action,
        target: entry.target,
    }
}

/// Runs `evalctl audit`.
pub async fn run(global: &GlobalArgs, args: &AuditArgs) -> Result<ExitCode, CliError> {
    if let (Some(since), Some(until)) = (args.since, args.until)
        && since > until
    {
        return Err(CliError::BadFlag {
            flag: "--since",
            source: Box::new(Reversed { since, until }),
        });
    }
    let mut client = client::connect_tokens(&global.coordinator).await?;
    let mut entries = Vec::new();
    let mut before_id = 0;
    loop {
        let remaining = args.limit as usize - entries.len();
        let page = client
            .list_audit(pb::ListAuditRequest {
                actor: args.actor.clone().unwrap_or_default(),
                action: args.action.clone().unwrap_or_default(),
                since_ms: args.since.unwrap_or(0),
                until_ms: args.until.unwrap_or(0),
                limit: u32::try_from(remaining).unwrap_or(u32::MAX),
                before_id,
            })
            .await
            .map_err(CliError::rpc("audit"))?
            .into_inner();
        entries.extend(page.entries.into_iter().take(remaining));
        if page.next_before_id == 0 || entries.len() >= args.limit as usize {
            break;
        }
        before_id = page.next_before_id;
    }
    if global.json {
        let entries: Vec<EntryJson> = entries.into_iter().map(entry_json).collect();
        render::emit_json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        render::emit("No audit entries match.\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
    for entry in &entries {
        table.add_row([
            render::timestamp(entry.at_ms),
            entry.actor.clone(),
            entry.action.clone(),
            entry.target.clone(),
            entry.detail_json.clone(),
        ]);
    }
    render::emit(&format!("{table}\n"))?;
    Ok(ExitCode::SUCCESS)
}
