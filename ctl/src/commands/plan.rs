//! The units of an expanded matrix as this host would launch them: each unit's server
//! command rendered the way the agent renders it, for `submit --dry-run --json` and the
//! preflight of `evalctl local --check` (and `evalctl-agent doctor`, which reads the same
//! listing).

use evalctl_agent::doctor::PlannedUnit;
use evalctl_agent::launcher::{TemplateValues, render_command};
use evalctl_coordinator::domain::Expansion;
use evalctl_coordinator::grpc::convert;

/// The port a listing shows in rendered commands; the agent picks a free one per server.
pub const LISTED_PORT: u16 = 8000;
/// The address a listing shows in rendered commands (the agent's default `server_host`).
pub const LISTED_HOST: &str = "127.0.0.1";

/// Each unit with its command rendered for [`LISTED_HOST`]:[`LISTED_PORT`] and, for a GPU
/// unit, GPUs `0..count` standing for the ones a lease gives it.
pub fn planned_units(expansion: &Expansion) -> Vec<PlannedUnit> {
    expansion
        .units
        .iter()
        .map(|unit| {
            let config = convert::unit_config(&unit.config);
            let gpu = &unit.config.gpu;
            let indices: Vec<u32> = if gpu.is_cpu() {
                Vec::new()
            } else {
                (0..gpu.count.max(1)).collect()
            };
            let values = TemplateValues::for_unit(
                unit.id.as_str(),
                &config,
                LISTED_HOST,
                LISTED_PORT,
                &indices,
            );
            // The matrix's expansion has checked every template against the same grammar,
            // so rendering does not fail; an empty argv would show if it did.
            let argv = render_command(
                &unit.config.framework.command,
                &unit.config.extra_args,
                &values,
            )
            .map(|command| command.argv)
            .unwrap_or_default();
            PlannedUnit {
                unit_id: unit.id.to_string(),
                label: unit.config.label(),
                framework: unit.config.framework.name.clone(),
                argv,
                model_path: unit.config.model.path.clone(),
                gpu_type: gpu.gpu_type.clone(),
                gpu_count: gpu.count,
            }
        })
        .collect()
}
