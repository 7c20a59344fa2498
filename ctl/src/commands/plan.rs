//! The units of an expanded matrix as this host would launch them: each unit's server
//! command rendered the way the agent renders it, for `submit --dry-run --json` and the
//! preflight of `evalctl local --check` (and `evalctl-agent doctor`, which reads the same
//! listing).

use std::collections::BTreeMap;

use evalctl_agent::doctor::PlannedUnit;
use evalctl_agent::launcher::container::RuntimeKind;
use evalctl_agent::launcher::container::labels;
use evalctl_agent::launcher::container::plan::{ContainerPlan, UnitContainer, container_name};
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
            let container_create = if config
                .framework
                .as_ref()
                .is_some_and(|f| !f.image.is_empty())
            {
                container_listing(unit.id.as_str(), &config, &indices)
            } else {
                BTreeMap::new()
            };
            PlannedUnit {
                unit_id: unit.id.to_string(),
                label: unit.config.label(),
                framework: unit.config.framework.name.clone(),
                argv,
                model_path: unit.config.model.path.clone(),
                gpu_type: gpu.gpu_type.clone(),
                gpu_count: gpu.count,
                image: unit.config.framework.image.clone(),
                container_create,
            }
        })
        .collect()
}

/// The agent id a listing's container labels show.
pub const LISTED_AGENT: &str = "AGENT";

/// A unit's container `create` for each runtime, as an agent would run it (with a listing
/// launch token and agent id, and no host cache mounted).
fn container_listing(
    unit_id: &str,
    config: &evalctl_proto::v1::UnitConfig,
    indices: &[u32],
) -> BTreeMap<String, Vec<String>> {
    let token = "0".repeat(32);
    let unit = UnitContainer {
        config,
        unit_id,
        host: LISTED_HOST,
        port: LISTED_PORT,
        gpu_indices: indices,
        name: container_name(unit_id, &token),
        labels: [
            (labels::AGENT, LISTED_AGENT),
            (labels::UNIT, unit_id),
            (labels::LAUNCH, token.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        hub_cache: None,
    };
    [RuntimeKind::Docker, RuntimeKind::Podman]
        .into_iter()
        .filter_map(|kind| {
            let plan = ContainerPlan::for_unit(kind, &[], &unit).ok()?;
            let mut argv = vec![kind.name().to_owned()];
            argv.extend(plan.create_args());
            Some((kind.name().to_owned(), argv))
        })
        .collect()
}
