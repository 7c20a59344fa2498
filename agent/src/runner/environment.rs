//! The environment a unit's steps ran in, recorded with every step result.

use evalctl_proto::v1 as pb;

use super::Ctx;
use super::servers::Session;
use evalctl_results::{Environment, ServerStart};

/// The environment of `lease` running on `session`.
pub fn describe(ctx: &Ctx, lease: &pb::Lease, session: &Session) -> Environment {
    let framework = lease.config.as_ref().and_then(|c| c.framework.as_ref());
    Environment {
        host: ctx.hostname.clone(),
        agent_id: ctx.agent_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        gpus: ctx
            .inventory
            .gpus
            .iter()
            .filter(|g| lease.gpu_indices.contains(&g.index))
            .cloned()
            .collect(),
        gpu_source: ctx.inventory.source.clone(),
        driver_version: ctx.inventory.driver_version.clone(),
        cuda_version: ctx.inventory.cuda_version.clone(),
        framework: framework.map(|f| f.name.clone()).unwrap_or_default(),
        framework_version: session.framework_version.clone(),
        launch_command: session.launch_command.clone(),
        image: framework
            .map(|f| f.image.clone())
            .filter(|image| !image.is_empty()),
        image_id: session.container.as_ref().map(|c| c.identity.id.clone()),
        image_digest: session
            .container
            .as_ref()
            .and_then(|c| c.identity.digest.clone()),
        container_runtime: session.container.as_ref().map(|c| c.runtime.clone()),
        cuda_visible_devices: session.cuda_visible_devices.clone(),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        server_start: Some(ServerStart {
            started_at_ms: session.start.started_at_ms,
            listening_s: session.start.listening.map(|d| d.as_secs_f64()),
            weights_loaded_s: session.start.weights_loaded.map(|d| d.as_secs_f64()),
            ready_s: session.start.ready.as_secs_f64(),
            reused: session.launched_for != lease.unit_id,
        }),
    }
}
