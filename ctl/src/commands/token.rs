//! `evalctl token create|list|revoke`: API tokens, over the coordinator's `TokenService`
//! (operator only). docs/security.md explains roles and the bootstrap.

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use evalctl_proto::v1 as pb;
use serde_json::json;

use crate::cli::{ConnectionArgs, GlobalArgs};
use crate::client;
use crate::error::CliError;
use crate::render;

/// `evalctl token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create {
        /// Token name, unique among live tokens (e.g. `ci`, `gpu-node-07`).
        #[arg(value_name = "NAME")]
        token_name: String,
        /// What the token may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// List tokens, live and revoked (never their secrets).
    List {
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Revoke a token by id or by the name of a live token; it stops working at once.
    Revoke {
        /// Token id (`tok_…`) or name. (Not named `token`: that is the `--token` option.)
        #[arg(value_name = "TOKEN")]
        id_or_name: String,
        /// How to reach the coordinator.
        #[command(flatten)]
        connection: ConnectionArgs,
    },
}

impl TokenCommand {
    /// The connection options given after the subcommand.
    pub fn connection(&self) -> &ConnectionArgs {
        match self {
            TokenCommand::Create { connection, .. }
            | TokenCommand::List { connection }
            | TokenCommand::Revoke { connection, .. } => connection,
        }
    }
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Submit, cancel, retry, drain, manage tokens, read.
    Operator,
    /// Read only.
    Viewer,
    /// The agent protocol only.
    Agent,
}

impl RoleArg {
    fn wire(self) -> pb::TokenRole {
        match self {
            RoleArg::Operator => pb::TokenRole::Operator,
            RoleArg::Viewer => pb::TokenRole::Viewer,
            RoleArg::Agent => pb::TokenRole::Agent,
        }
    }
}

fn role_name(role: i32) -> &'static str {
    match pb::TokenRole::try_from(role) {
        Ok(pb::TokenRole::Operator) => "operator",
        Ok(pb::TokenRole::Viewer) => "viewer",
        Ok(pb::TokenRole::Agent) => "agent",
        _ => "unknown",
    }
}

fn info_json(token: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "token_id": token.token_id,
        "name": token.name,
        "role": role_name(token.role),
        "created_ms": token.created_ms,
        "created_by": token.created_by,
        "revoked_ms": (token.revoked_ms != 0).then_some(token.revoked_ms),
        "revoked_by": (!token.revoked_by.is_empty()).then_some(&token.revoked_by),
        "last_used_ms": (token.last_used_ms != 0).then_some(token.last_used_ms),
    })
}

/// When a token last authenticated a call (to the minute: it is recorded once a minute),
/// or `never`.
fn last_used(ms: i64) -> String {
    if ms == 0 {
        "never".to_owned()
    } else {
        render::timestamp(ms)
    }
}

/// Runs `evalctl token …`.
pub async fn run(global: &GlobalArgs, command: &TokenCommand) -> Result<ExitCode, CliError> {
    let mut client = client::connect_tokens(&global.coordinator).await?;
    match command {
        TokenCommand::Create {
            token_name, role, ..
        } => {
            let response = client
                .create_token(pb::CreateTokenRequest {
                    name: token_name.clone(),
                    role: role.wire() as i32,
                })
                .await
                .map_err(CliError::rpc("token create"))?
                .into_inner();
            let token = response.token.unwrap_or_default();
            if global.json {
                let mut value = info_json(&token);
                value["secret"] = json!(response.secret);
                render::emit_json(&value)?;
            } else {
                eprintln!(
                    "Created token {} ({}, role {}). Its secret is shown once:",
                    token.token_id,
                    token.name,
                    role_name(token.role)
                );
                render::emit(&format!("{}\n", response.secret))?;
            }
        }
        TokenCommand::List { .. } => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(CliError::rpc("token list"))?
                .into_inner()
                .tokens;
            if global.json {
                render::emit_json(&tokens.iter().map(info_json).collect::<Vec<_>>())?;
            } else {
                let mut table =
                    render::table(["ID", "NAME", "ROLE", "CREATED BY", "LAST USED", "STATE"]);
                for token in &tokens {
                    let state = if token.revoked_ms == 0 {
                        "live".to_owned()
                    } else {
                        format!("revoked by {}", token.revoked_by)
                    };
                    table.add_row([
                        token.token_id.as_str(),
                        token.name.as_str(),
                        role_name(token.role),
                        token.created_by.as_str(),
                        &last_used(token.last_used_ms),
                        state.as_str(),
                    ]);
                }
                render::emit(&format!("{table}\n"))?;
            }
        }
        TokenCommand::Revoke { id_or_name, .. } => {
            let revoked = client
                .revoke_token(pb::RevokeTokenRequest {
                    token: id_or_name.clone(),
                })
                .await
                .map_err(CliError::rpc("token revoke"))?
                .into_inner()
                .token
                .unwrap_or_default();
            if global.json {
                render::emit_json(&info_json(&revoked))?;
            } else {
                render::emit(&format!(
                    "Revoked token {} ({}).\n",
                    revoked.token_id, revoked.name
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
