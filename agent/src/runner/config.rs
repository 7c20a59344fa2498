//! The agent's configuration: a TOML file (`deploy/agent.toml` documents every key), then
//! environment variables and flags over it (the binary merges them; see `main.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::launcher::container::{ContainerConfig, RuntimeChoice};
use crate::preemption::{Provider, WatchConfig};
use evalctl_proto::client::ClientAuth;

/// Settings as read from the TOML file; every field optional so flags and env can fill in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Coordinator URL, e.g. "http://10.0.0.5:7717".
    pub coordinator: Option<String>,
    /// Directory of the agent's state (SQLite) and server logs.
    pub state_dir: Option<PathBuf>,
    /// Fixed agent id (default: generated once and kept in the state directory).
    pub agent_id: Option<String>,
    /// Labels units may require, e.g. `{ zone = "us-east-1a", spot = "true" }`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Frameworks this host can launch; empty = any.
    #[serde(default)]
    pub frameworks: Vec<String>,
    /// Simulated GPUs for hosts without GPUs, e.g. "H100-80GB:8" (tests, local runs).
    pub simulated_gpus: Option<String>,
    /// CPU-only units run at once.
    pub cpu_slots: Option<u32>,
    /// Address inference servers listen on (the load generator connects there).
    pub server_host: Option<String>,
    /// How long one lease request may wait at the coordinator, e.g. "20s".
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub acquire_wait: Option<Duration>,
    /// SIGTERM → SIGKILL grace of a server's process group, e.g. "10s".
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub stop_grace: Option<Duration>,
    /// How long shutdown waits for unacknowledged results to reach the coordinator.
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub flush_timeout: Option<Duration>,
    /// Keep a server running after its unit for a next unit with the same configuration.
    pub keep_warm: Option<bool>,
    /// GPU samples per second during a step (default 10; docs/telemetry.md).
    pub telemetry_rate_hz: Option<f64>,
    /// GPU type aliases: driver name (e.g. "NVIDIA H100 80GB HBM3") → the type units ask for.
    #[serde(default)]
    pub gpu_aliases: BTreeMap<String, String>,
    /// Spot provider whose preemption notices to watch: "aws", "gcp" or "azure".
    pub spot_provider: Option<String>,
    /// Metadata service base URL (default: the provider's usual address).
    pub metadata_url: Option<String>,
    /// Poll interval of the metadata service, e.g. "5s" (default: the provider's).
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub metadata_poll: Option<Duration>,
    /// Bearer token (role `agent`); prefer `token_file` or `EVALCTL_TOKEN`.
    pub token: Option<String>,
    /// File whose first line is the bearer token.
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the coordinator's certificate (`https://` URLs); default: the
    /// system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// How frameworks with an `image` run their containers (`[container]`).
    pub container: Option<ContainerFileConfig>,
}

/// The `[container]` table: the container runtime of frameworks with an `image`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerFileConfig {
    /// `auto` (default: Docker when its daemon answers, else Podman), `docker` or `podman`.
    pub runtime: Option<String>,
    /// The runtime's command, when not the runtime's name on `PATH`.
    pub program: Option<PathBuf>,
    /// Options before every subcommand, e.g. `["--root", "/data/containers"]`.
    #[serde(default)]
    pub global_args: Vec<String>,
    /// Options of every `create` on this host, before the framework's `run_options`.
    #[serde(default)]
    pub run_options: Vec<String>,
    /// The host's Hugging Face home, whose `hub/` cache is mounted read-only (default
    /// `$HF_HOME`, else `~/.cache/huggingface`).
    pub hf_home: Option<PathBuf>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read the agent config `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid agent config `{path}`")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause (names the key).
        #[source]
        source: toml::de::Error,
    },
    /// A value is not one the key allows.
    #[error("invalid value for `{key}`: {message}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl FileConfig {
    /// Reads and parses a TOML file; unknown keys are errors.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// The agent's effective configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Coordinator URL.
    pub coordinator: String,
    /// State directory: `agent.sqlite` and `logs/`.
    pub state_dir: PathBuf,
    /// Fixed agent id, when configured.
    pub agent_id: Option<String>,
    /// Labels units may require.
    pub labels: BTreeMap<String, String>,
    /// Frameworks this host can launch; empty = any.
    pub frameworks: Vec<String>,
    /// CPU-only units run at once.
    pub cpu_slots: u32,
    /// Address servers listen on.
    pub server_host: String,
    /// Longest wait of one lease request at the coordinator.
    pub acquire_wait: Duration,
    /// SIGTERM → SIGKILL grace of a server's process group.
    pub stop_grace: Duration,
    /// How long shutdown waits for unacknowledged results.
    pub flush_timeout: Duration,
    /// Keep servers warm between units of the same configuration.
    pub keep_warm: bool,
    /// GPU and host samples per second during a step.
    pub telemetry_rate_hz: f64,
    /// GPU type aliases by driver name.
    pub gpu_aliases: BTreeMap<String, String>,
    /// The spot provider to watch for preemption notices; `None` on on-demand hosts.
    pub preemption: Option<WatchConfig>,
    /// TLS settings and the bearer token (when given directly).
    pub auth: ClientAuth,
    /// File holding the bearer token, read at start when `auth.token` is unset.
    pub token_file: Option<PathBuf>,
    /// The `evalctl-agent` that supervises each server (`supervise`): the running binary for
    /// `evalctl-agent run`, else [`crate::launcher::default_supervisor`].
    pub supervisor: PathBuf,
    /// The container runtime of frameworks with an `image`.
    pub container: ContainerConfig,
}

impl AgentConfig {
    /// Defaults for an agent talking to `coordinator` with its state in `state_dir`.
    pub fn new(coordinator: impl Into<String>, state_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            coordinator: coordinator.into(),
            state_dir: state_dir.into(),
            agent_id: None,
            labels: BTreeMap::new(),
            frameworks: Vec::new(),
            cpu_slots: 1,
            server_host: "127.0.0.1".to_owned(),
            acquire_wait: Duration::from_secs(20),
            stop_grace: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(10),
            keep_warm: true,
            telemetry_rate_hz: evalctl_telemetry::DEFAULT_RATE_HZ,
            gpu_aliases: BTreeMap::new(),
            preemption: None,
            auth: ClientAuth::default(),
            token_file: None,
            supervisor: crate::launcher::default_supervisor(),
            container: ContainerConfig::default(),
        }
    }

    /// Applies the file's values over these.
    pub fn apply_file(&mut self, file: FileConfig) -> Result<(), ConfigError> {
        self.set_preemption(
            file.spot_provider.as_deref(),
            file.metadata_url.clone(),
            file.metadata_poll,
        )?;
        if let Some(v) = file.coordinator {
            self.coordinator = v;
        }
        if let Some(v) = file.state_dir {
            self.state_dir = v;
        }
        if file.agent_id.is_some() {
            self.agent_id = file.agent_id;
        }
        self.labels.extend(file.labels);
        if !file.frameworks.is_empty() {
            self.frameworks = file.frameworks;
        }
        if let Some(v) = file.cpu_slots {
            self.cpu_slots = v;
        }
        if let Some(v) = file.server_host {
            self.server_host = v;
        }
        if let Some(v) = file.acquire_wait {
            self.acquire_wait = v;
        }
        if let Some(v) = file.stop_grace {
            self.stop_grace = v;
        }
        if let Some(v) = file.flush_timeout {
            self.flush_timeout = v;
        }
        if let Some(v) = file.keep_warm {
            self.keep_warm = v;
        }
        if let Some(v) = file.telemetry_rate_hz {
            self.telemetry_rate_hz = v;
        }
        self.gpu_aliases.extend(file.gpu_aliases);
        if file.token.is_some() {
            self.auth.token = file.token;
        }
        if file.token_file.is_some() {
            self.token_file = file.token_file;
        }
        if file.ca_file.is_some() {
            self.auth.ca_file = file.ca_file;
        }
        if file.client_cert.is_some() {
            self.auth.client_cert = file.client_cert;
        }
        if file.client_key.is_some() {
            self.auth.client_key = file.client_key;
        }
        if let Some(container) = file.container {
            if let Some(runtime) = container.runtime.as_deref() {
                self.container.choice =
                    runtime
                        .parse::<RuntimeChoice>()
                        .map_err(|message| ConfigError::Value {
                            key: "container.runtime",
                            message,
                        })?;
            }
            if container.program.is_some() {
                self.container.program = container.program;
            }
            self.container.global_args.extend(container.global_args);
            self.container.run_options.extend(container.run_options);
            if container.hf_home.is_some() {
                self.container.hf_home = container.hf_home;
            }
        }
        Ok(())
    }

    /// Sets what the preemption watcher watches; each `None` keeps what is set.
    pub fn set_preemption(
        &mut self,
        provider: Option<&str>,
        base_url: Option<String>,
        poll: Option<Duration>,
    ) -> Result<(), ConfigError> {
        if let Some(name) = provider {
            let provider = name
                .parse::<Provider>()
                .map_err(|message| ConfigError::Value {
                    key: "spot_provider",
                    message,
                })?;
            self.preemption = Some(WatchConfig::new(provider));
        }
        match self.preemption.as_mut() {
            Some(watch) => {
                if let Some(url) = base_url {
                    watch.base_url = url.trim_end_matches('/').to_owned();
                }
                if let Some(poll) = poll {
                    watch.poll = poll.max(Duration::from_millis(50));
                }
                Ok(())
            }
            None if base_url.is_some() || poll.is_some() => Err(ConfigError::Value {
                key: "metadata_url",
                message:
                    "a metadata URL or poll interval needs a spot provider (aws, gcp or azure)"
                        .into(),
            }),
            None => Ok(()),
        }
    }

    /// Where server logs go.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

/// The default state directory: `$XDG_STATE_HOME/evalctl/agent`, else
/// `~/.local/state/evalctl/agent`, else `./evalctl-agent-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("evalctl/agent");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/evalctl/agent"),
        None => PathBuf::from("evalctl-agent-state"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_agent_config_parses_and_applies() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let file = FileConfig::load(&path).expect("deploy/agent.toml parses");
        let defaults = AgentConfig::new("http://127.0.0.1:7717", "/tmp/x");
        let mut config = defaults.clone();
        config.apply_file(file).unwrap();
        // The shipped file documents the defaults: applying it changes nothing.
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn a_spot_provider_sets_its_defaults_and_flags_override_them() {
        let mut config = AgentConfig::new("http://c", "/tmp/x");
        config.set_preemption(Some("gcp"), None, None).unwrap();
        let watch = config.preemption.clone().unwrap();
        assert_eq!(watch.base_url, "http://metadata.google.internal");
        config
            .set_preemption(
                None,
                Some("http://127.0.0.1:9/".into()),
                Some(Duration::from_secs(1)),
            )
            .unwrap();
        let watch = config.preemption.unwrap();
        assert_eq!(watch.provider, Provider::Gcp);
        assert_eq!(watch.base_url, "http://127.0.0.1:9");
        assert_eq!(watch.poll, Duration::from_secs(1));

        let mut plain = AgentConfig::new("http://c", "/tmp/x");
        let err = plain
            .set_preemption(None, Some("http://x".into()), None)
            .unwrap_err();
        assert!(err.to_string().contains("needs a spot provider"), "{err}");
        let err = plain
            .set_preemption(Some("oracle"), None, None)
            .unwrap_err();
        assert!(
            err.to_string().contains("expected aws, gcp or azure"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = toml::from_str::<FileConfig>("cpu_slot = 2").unwrap_err();
        assert!(err.to_string().contains("cpu_slot"), "{err}");
    }
}
