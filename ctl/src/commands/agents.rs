//! `evalctl agents`: registered agents with their GPUs, state, leases, last heartbeat and
//! what their hosts were found to lack (a framework's program, a model's files);
//! `evalctl drain AGENT`: ask one to finish its units and take no more.

use std::process::ExitCode;

use evalctl_proto::v1 as pb;
use serde::Serialize;

use crate::cli::{DrainArgs, GlobalArgs};
use crate::client;
use crate::error::CliError;
use crate::render;

/// An agent as `--json` prints it.
#[derive(Debug, Serialize)]
struct AgentJson {
    agent_id: String,
    hostname: String,
    state: String,
    version: String,
    gpus: Vec<GpuJson>,
    labels: std::collections::BTreeMap<String, String>,
    frameworks: Vec<String>,
    lease_ids: Vec<String>,
    last_heartbeat: String,
    /// What the host was found to lack since the agent last registered.
    lacking: Vec<FaultJson>,
}

#[derive(Debug, Serialize)]
struct FaultJson {
    kind: String,
    name: String,
    error: String,
    found_at: String,
}

#[derive(Debug, Serialize)]
struct GpuJson {
    index: u32,
    gpu_type: String,
    name: String,
    uuid: String,
    memory_gb: f64,
}

/// Runs `evalctl agents`.
pub async fn list(global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut client = client::connect(&global.coordinator).await?;
    let agents = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(CliError::rpc("list agents"))?
        .into_inner()
        .agents;
    if global.json {
        let agents: Vec<AgentJson> = agents.iter().map(agent_json).collect();
        render::emit_json(&agents)?;
        return Ok(ExitCode::SUCCESS);
    }
    if agents.is_empty() {
        render::emit("No agents registered.\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut table = render::table(["AGENT", "HOST", "STATE", "GPUS", "LEASES", "LAST HEARTBEAT"]);
    for agent in &agents {
        table.add_row(vec![
            agent.agent_id.clone(),
            agent.hostname.clone(),
            agent.state.clone(),
            gpu_summary(&agent.gpus),
            agent.lease_ids.len().to_string(),
            ago(now_ms - agent.last_heartbeat_ms),
        ]);
    }
    let mut out = format!("{table}\n");
    for agent in &agents {
        for fault in &agent.faults {
            out.push_str(&format!(
                "\nAgent {} lacks {} {} (given no unit needing it until it registers again): {}\n",
                agent.agent_id, fault.kind, fault.name, fault.error
            ));
        }
    }
    render::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `evalctl drain`.
pub async fn drain(global: &GlobalArgs, args: &DrainArgs) -> Result<ExitCode, CliError> {
    let mut client = client::connect(&global.coordinator).await?;
    let response = client
        .drain(pb::DrainRequest {
            agent_id: args.agent.clone(),
        })
        .await
        .map_err(CliError::rpc("drain"))?
        .into_inner();
    if global.json {
        render::emit_json(&serde_json::json!({
            "agent_id": args.agent,
            "draining": response.draining,
        }))?;
    } else {
        render::emit(&format!(
            "Agent {} is draining: it finishes its running units and takes no more.\n",
            args.agent
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn agent_json(agent: &pb::AgentInfo) -> AgentJson {
    AgentJson {
        agent_id: agent.agent_id.clone(),
        hostname: agent.hostname.clone(),
        state: agent.state.clone(),
        version: agent.version.clone(),
        gpus: agent
            .gpus
            .iter()
            .map(|g| GpuJson {
                index: g.index,
                gpu_type: g.gpu_type.clone(),
                name: g.name.clone(),
                uuid: g.uuid.clone(),
                memory_gb: g.memory_gb,
            })
            .collect(),
        labels: agent.labels.clone().into_iter().collect(),
        frameworks: agent.frameworks.clone(),
        lease_ids: agent.lease_ids.clone(),
        last_heartbeat: render::timestamp(agent.last_heartbeat_ms),
        lacking: agent
            .faults
            .iter()
            .map(|f| FaultJson {
                kind: f.kind.clone(),
                name: f.name.clone(),
                error: f.error.clone(),
                found_at: render::timestamp(f.found_at_ms),
            })
            .collect(),
    }
}

/// "8 x H100-80GB", "4 x H100-80GB, 2 x L4-24GB", or "none".
fn gpu_summary(gpus: &[pb::GpuInfo]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for gpu in gpus {
        match counts.iter_mut().find(|(t, _)| *t == gpu.gpu_type) {
            Some((_, n)) => *n += 1,
            None => counts.push((gpu.gpu_type.clone(), 1)),
        }
    }
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(t, n)| format!("{n} x {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "3s ago", "5m ago".
fn ago(ms: i64) -> String {
    let secs = (ms.max(0) / 1000) as u64;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_summary_groups_by_type_in_order() {
        let gpu = |t: &str| pb::GpuInfo {
            gpu_type: t.into(),
            ..Default::default()
        };
        assert_eq!(gpu_summary(&[]), "none");
        assert_eq!(
            gpu_summary(&[gpu("H100-80GB"), gpu("L4-24GB"), gpu("H100-80GB")]),
            "2 x H100-80GB, 1 x L4-24GB"
        );
    }

    #[test]
    fn ago_picks_a_readable_unit() {
        assert_eq!(ago(3_400), "3s ago");
        assert_eq!(ago(600_000), "10m ago");
        assert_eq!(ago(-5), "0s ago");
    }
}
