//! The argument vectors of one unit's container: what `create` is given (name, labels,
//! network, IPC, GPUs, mounts, environment, options, entrypoint, image, arguments) and the
//! `start`, `stop` and `rm` that follow. Pure: nothing here runs a command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use evalctl_proto::v1 as pb;

use super::RuntimeKind;
use crate::launcher::template::{RenderedCommand, TemplateError, TemplateValues, render_command};

/// Where a local model path is mounted inside the container (then its file name).
pub const MODEL_MOUNT_DIR: &str = "/evalctl/model";
/// Where a local tokenizer file is mounted inside the container (then its file name).
pub const TOKENIZER_MOUNT_DIR: &str = "/evalctl/tokenizer";
/// Where the host's Hugging Face hub cache is mounted inside the container.
pub const HUB_CACHE_MOUNT: &str = "/evalctl/hf-hub";

/// A read-only bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host path.
    pub source: PathBuf,
    /// The path inside the container.
    pub target: String,
}

/// Why a unit's container cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The command template did not render.
    #[error("failed to render the server command")]
    Template(#[from] TemplateError),
    /// A path that cannot be given to `--mount` (the option's own syntax uses commas).
    #[error("cannot mount `{}` into the container: the path contains a comma", .0.display())]
    Comma(PathBuf),
}

/// What a unit's container is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    /// Docker or Podman (their GPU options differ).
    pub kind: RuntimeKind,
    /// The container's name.
    pub name: String,
    /// The image.
    pub image: String,
    /// Labels (agent, unit, lease, launch).
    pub labels: BTreeMap<String, String>,
    /// The framework's container settings.
    pub spec: pb::ContainerSpec,
    /// Options of every `create` on this host (agent config), before the framework's.
    pub host_run_options: Vec<String>,
    /// The host's GPU indices of the unit (inside, they are 0..n).
    pub gpu_indices: Vec<u32>,
    /// Read-only mounts.
    pub mounts: Vec<Mount>,
    /// The server's environment inside the container.
    pub env: BTreeMap<String, String>,
    /// `host:port` published when the network is `publish`.
    pub publish: Option<(String, u16)>,
    /// The server command as it runs inside the container.
    pub command: RenderedCommand,
}

/// Everything a unit's container plan is made from.
#[derive(Debug, Clone)]
pub struct UnitContainer<'a> {
    /// The unit's configuration (its framework has an `image`).
    pub config: &'a pb::UnitConfig,
    /// The unit id.
    pub unit_id: &'a str,
    /// The agent's server address (where a published port is bound).
    pub host: &'a str,
    /// The unit's port.
    pub port: u16,
    /// The host's GPU indices of the unit.
    pub gpu_indices: &'a [u32],
    /// The container's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The host's Hugging Face hub cache, when it has one.
    pub hub_cache: Option<PathBuf>,
}

impl ContainerPlan {
    /// The plan of `unit`'s container under a `kind` runtime whose host adds
    /// `host_run_options`. A model path (and tokenizer) that is a local absolute path is
    /// mounted read-only and `{model.path}` names it inside the container; `{host}` is
    /// `0.0.0.0` when the port is published (the server must listen on the container's own
    /// interface) and `{gpu.indices}` counts from 0, as the container sees its GPUs.
    pub fn for_unit(
        kind: RuntimeKind,
        host_run_options: &[String],
        unit: &UnitContainer<'_>,
    ) -> Result<ContainerPlan, PlanError> {
        let config = unit.config;
        let framework = config.framework.clone().unwrap_or_default();
        let spec = framework.container.clone().unwrap_or_default();
        let publish = spec.network == pb::ContainerNetwork::Publish as i32;
        let mut values =
            TemplateValues::for_unit(unit.unit_id, config, unit.host, unit.port, unit.gpu_indices);
        let mut mounts = Vec::new();
        if let Some(mount) = local_mount(&values.model_path, MODEL_MOUNT_DIR)? {
            values.model_path = mount.target.clone();
            mounts.push(mount);
        }
        if let Some(mount) = local_mount(&values.model_tokenizer, TOKENIZER_MOUNT_DIR)? {
            values.model_tokenizer = mount.target.clone();
            mounts.push(mount);
        }
        let mut env = BTreeMap::new();
        if let Some(hub) = &unit.hub_cache {
            check_mountable(hub)?;
            mounts.push(Mount {
                source: hub.clone(),
                target: HUB_CACHE_MOUNT.to_owned(),
            });
            // Read-only: the engine finds what the host downloaded and downloads nothing.
            env.insert("HF_HUB_CACHE".to_owned(), HUB_CACHE_MOUNT.to_owned());
            env.insert("HF_HUB_OFFLINE".to_owned(), "1".to_owned());
        }
        env.extend(framework.env.clone());
        if publish {
            values.host = "0.0.0.0".to_owned();
        }
        values.gpu_indices = (0..unit.gpu_indices.len() as u32).collect();
        let command = render_command(&framework.command, &config.extra_args, &values)?;
        Ok(ContainerPlan {
            kind,
            name: unit.name.clone(),
            image: framework.image.clone(),
            labels: unit.labels.clone(),
            spec,
            host_run_options: host_run_options.to_vec(),
            gpu_indices: unit.gpu_indices.to_vec(),
            mounts,
            env,
            publish: publish.then(|| (unit.host.to_owned(), unit.port)),
            command,
        })
    }

    /// The arguments of `create` (after the program and its global options).
    pub fn create_args(&self) -> Vec<String> {
        let mut args = vec!["create".to_owned(), "--name".to_owned(), self.name.clone()];
        for (key, value) in &self.labels {
            args.extend(["--label".to_owned(), format!("{key}={value}")]);
        }
        match &self.publish {
            None => args.extend(["--network".to_owned(), "host".to_owned()]),
            Some((host, port)) => {
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                args.extend(["--publish".to_owned(), format!("{host}:{port}:{port}")]);
            }
        }
        // Not both: Podman refuses a shm size in the host's IPC namespace.
        if self.spec.shm_size.is_empty() {
            args.extend(["--ipc".to_owned(), "host".to_owned()]);
        } else {
            args.extend(["--shm-size".to_owned(), self.spec.shm_size.clone()]);
        }
        args.extend(self.gpu_args());
        for mount in &self.mounts {
            args.extend([
                "--mount".to_owned(),
                format!(
                    "type=bind,source={},target={},readonly",
                    mount.source.display(),
                    mount.target
                ),
            ]);
        }
        for (key, value) in &self.env {
            args.extend(["--env".to_owned(), format!("{key}={value}")]);
        }
        args.extend(self.host_run_options.iter().cloned());
        args.extend(self.spec.run_options.iter().cloned());
        let (program, rest) = self
            .command
            .argv
            .split_first()
            .map_or(("", &[][..]), |(p, r)| (p.as_str(), r));
        args.extend(["--entrypoint".to_owned(), program.to_owned()]);
        args.push(self.image.clone());
        args.extend(rest.iter().cloned());
        args
    }

    /// The options that give the container the unit's GPUs (none for a CPU unit). Docker's
    /// `--gpus` value carries its own double quotes: unquoted, `device=0,1` would be read as
    /// two options and expose only the first GPU. Podman takes CDI device names.
    pub fn gpu_args(&self) -> Vec<String> {
        if self.gpu_indices.is_empty() {
            return Vec::new();
        }
        let indices = self
            .gpu_indices
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>();
        match self.kind {
            RuntimeKind::Docker => {
                vec![
                    "--gpus".to_owned(),
                    format!("\"device={}\"", indices.join(",")),
                ]
            }
            RuntimeKind::Podman => indices
                .iter()
                .flat_map(|i| ["--device".to_owned(), format!("nvidia.com/gpu={i}")])
                .collect(),
        }
    }

    /// `start --attach NAME`: runs the container with its output on the caller's.
    pub fn start_args(&self) -> Vec<String> {
        vec!["start".to_owned(), "--attach".to_owned(), self.name.clone()]
    }

    /// The teardown: `stop` (SIGTERM, the grace, then SIGKILL, by the runtime), then
    /// `rm --force` (kills what is left and removes the container).
    pub fn teardown_args(name: &str, grace: Duration) -> Vec<Vec<String>> {
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        vec![
            vec![
                "stop".to_owned(),
                "--time".to_owned(),
                seconds.to_string(),
                name.to_owned(),
            ],
            vec!["rm".to_owned(), "--force".to_owned(), name.to_owned()],
        ]
    }
}

/// The read-only mount of `path` under `dir` when it is a local absolute path; `None` for a
/// hub id or an empty value.
fn local_mount(path: &str, dir: &str) -> Result<Option<Mount>, PlanError> {
    let source = Path::new(path);
    if !source.is_absolute() {
        return Ok(None);
    }
    check_mountable(source)?;
    let name = source
        .file_name()
        .map_or_else(|| "root".into(), |n| n.to_string_lossy());
    Ok(Some(Mount {
        source: source.to_owned(),
        target: format!("{dir}/{name}"),
    }))
}

fn check_mountable(path: &Path) -> Result<(), PlanError> {
    if path.to_string_lossy().contains(',') {
        return Err(PlanError::Comma(path.to_owned()));
    }
    Ok(())
}

/// The container name of a launch: `evalctl-<unit id>-<launch token>`, shortened; names are
/// unique per launch, so a retry never meets its predecessor's container.
pub fn container_name(unit_id: &str, launch_token: &str) -> String {
    let clean = |text: &str, n: usize| {
        text.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(n)
            .collect::<String>()
    };
    format!(
        "evalctl-{}-{}",
        clean(unit_id.trim_start_matches("u-"), 16),
        clean(launch_token, 12)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(image: &str, container: pb::ContainerSpec, model_path: &str) -> pb::UnitConfig {
        pb::UnitConfig {
            model: Some(pb::ModelSpec {
                name: "tiny".into(),
                path: model_path.into(),
                ..Default::default()
            }),
            gpu: Some(pb::GpuRequirement {
                gpu_type: "H100-80GB".into(),
                count: 2,
                ..Default::default()
            }),
            framework: Some(pb::FrameworkSpec {
                name: "vllm".into(),
                command: "vllm serve {model.path} --host {host} --port {port} \
                          --tensor-parallel-size {gpu.count}"
                    .into(),
                env: [("VLLM_LOGGING_LEVEL".to_owned(), "INFO".to_owned())].into(),
                image: image.into(),
                container: Some(container),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn plan(kind: RuntimeKind, config: &pb::UnitConfig, hub: Option<PathBuf>) -> ContainerPlan {
        let unit = UnitContainer {
            config,
            unit_id: "u-0123456789abcdef0123",
            host: "127.0.0.1",
            port: 8123,
            gpu_indices: &[2, 3],
            name: container_name("u-0123456789abcdef0123", "feedbeefcafe0000"),
            labels: [("evalctl.agent".to_owned(), "a1".to_owned())].into(),
            hub_cache: hub,
        };
        ContainerPlan::for_unit(kind, &["--ulimit".into(), "nofile=1024".into()], &unit).unwrap()
    }

    #[test]
    fn docker_create_quotes_the_gpu_list_and_runs_the_command_as_entrypoint() {
        let config = config(
            "vllm/vllm-openai:v0.11.0",
            pb::ContainerSpec {
                run_options: vec!["--ulimit".into(), "memlock=-1".into()],
                ..Default::default()
            },
            "/models/llama",
        );
        let plan = plan(RuntimeKind::Docker, &config, None);
        assert_eq!(plan.name, "evalctl-0123456789abcdef-feedbeefcafe");
        assert_eq!(
            plan.create_args(),
            [
                "create",
                "--name",
                "evalctl-0123456789abcdef-feedbeefcafe",
                "--label",
                "evalctl.agent=a1",
                "--network",
                "host",
                "--ipc",
                "host",
                "--gpus",
                "\"device=2,3\"",
                "--mount",
                "type=bind,source=/models/llama,target=/evalctl/model/llama,readonly",
                "--env",
                "VLLM_LOGGING_LEVEL=INFO",
                "--ulimit",
                "nofile=1024",
                "--ulimit",
                "memlock=-1",
                "--entrypoint",
                "vllm",
                "vllm/vllm-openai:v0.11.0",
                "serve",
                "/evalctl/model/llama",
                "--host",
                "127.0.0.1",
                "--port",
                "8123",
                "--tensor-parallel-size",
                "2",
            ]
        );
    }

    #[test]
    fn podman_gets_cdi_devices_a_published_port_and_a_private_shm() {
        let config = config(
            "lmsysorg/sglang:v0.5",
            pb::ContainerSpec {
                network: pb::ContainerNetwork::Publish as i32,
                shm_size: "16g".into(),
                ..Default::default()
            },
            "meta-llama/Llama-3.1-8B",
        );
        let hub = tempfile::tempdir().unwrap();
        let plan = plan(RuntimeKind::Podman, &config, Some(hub.path().to_owned()));
        let args = plan.create_args();
        let text = args.join(" ");
        assert!(
            text.contains("--device nvidia.com/gpu=2 --device nvidia.com/gpu=3"),
            "{text}"
        );
        assert!(text.contains("--publish 127.0.0.1:8123:8123"), "{text}");
        assert!(text.contains("--shm-size 16g"), "{text}");
        assert!(!text.contains("--ipc"), "{text}");
        assert!(!text.contains("--network"), "{text}");
        // A hub id is passed as it is; the hub cache is mounted and the engine kept offline.
        assert!(
            text.contains("serve meta-llama/Llama-3.1-8B --host 0.0.0.0"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "type=bind,source={},target=/evalctl/hf-hub,readonly",
                hub.path().display()
            )),
            "{text}"
        );
        assert!(
            text.contains("--env HF_HUB_CACHE=/evalctl/hf-hub"),
            "{text}"
        );
        assert!(text.contains("--env HF_HUB_OFFLINE=1"), "{text}");
        assert!(!text.contains("CUDA_VISIBLE_DEVICES"), "{text}");
    }

    #[test]
    fn gpu_indices_count_from_zero_inside_and_cpu_units_get_no_gpu_options() {
        let mut config = config("img", pb::ContainerSpec::default(), "/m");
        if let Some(f) = config.framework.as_mut() {
            f.command = "serve --devices {gpu.indices}".into();
        }
        let plan = plan(RuntimeKind::Podman, &config, None);
        assert_eq!(plan.command.argv, ["serve", "--devices", "0,1"]);
        let cpu = ContainerPlan {
            gpu_indices: Vec::new(),
            ..plan
        };
        assert!(cpu.gpu_args().is_empty());
    }

    #[test]
    fn framework_env_overrides_the_hub_defaults_and_commas_are_refused() {
        let mut config = config("img", pb::ContainerSpec::default(), "/m");
        if let Some(f) = config.framework.as_mut() {
            f.env.insert("HF_HUB_OFFLINE".into(), "0".into());
        }
        let hub = tempfile::tempdir().unwrap();
        let plan = plan(RuntimeKind::Docker, &config, Some(hub.path().to_owned()));
        assert_eq!(plan.env["HF_HUB_OFFLINE"], "0");

        let config = self::config("img", pb::ContainerSpec::default(), "/models/a,b");
        let unit = UnitContainer {
            config: &config,
            unit_id: "u-1",
            host: "127.0.0.1",
            port: 1,
            gpu_indices: &[],
            name: "n".into(),
            labels: BTreeMap::new(),
            hub_cache: None,
        };
        let err = ContainerPlan::for_unit(RuntimeKind::Docker, &[], &unit).unwrap_err();
        assert!(err.to_string().contains("contains a comma"), "{err}");
    }

    #[test]
    fn teardown_stops_with_the_grace_rounded_up_then_removes() {
        assert_eq!(
            ContainerPlan::teardown_args("c", Duration::from_millis(2500)),
            [vec!["stop", "--time", "3", "c"], vec!["rm", "--force", "c"]]
        );
    }
}
