//! Reaping: the containers a previous life of the agent left behind, found by the agent-id
//! label every evalctl container carries. Normally the supervisor tears each container down
//! when its server ends, the agent's death included; what it could not (the supervisor was
//! killed too, the host rebooted into a daemon that restarts containers) is removed here
//! when the agent starts, before it takes any lease.

use std::time::Duration;

use super::plan::ContainerPlan;
use super::{CLI_TIMEOUT, CliError, Runtime, labels};

/// The containers labelled with `agent_id`, running or not.
pub async fn list(runtime: &Runtime, agent_id: &str) -> Result<Vec<String>, CliError> {
    let filter = format!("label={}={agent_id}", labels::AGENT);
    let out = runtime
        .output(
            &["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"],
            CLI_TIMEOUT,
        )
        .await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Stops (with `grace`) and removes every container labelled with `agent_id`; returns each
/// container's name with how its removal went.
pub async fn end_orphans(
    runtime: &Runtime,
    agent_id: &str,
    grace: Duration,
) -> Result<Vec<(String, Result<(), CliError>)>, CliError> {
    let mut ended = Vec::new();
    for name in list(runtime, agent_id).await? {
        let mut outcome = Ok(());
        for args in ContainerPlan::teardown_args(&name, grace) {
            let limit = CLI_TIMEOUT + grace;
            match runtime.output(&args, limit).await {
                Ok(_) => {}
                // `stop` of a container that already exited fails on some versions; the
                // `rm --force` after it is what must succeed.
                Err(err) if args[0] == "stop" => {
                    tracing::debug!(container = %name, error = %err, "stop of a left container failed")
                }
                Err(err) => outcome = Err(err),
            }
        }
        ended.push((name, outcome));
    }
    Ok(ended)
}
