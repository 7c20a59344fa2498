//! Servers in containers: frameworks with an `image` run their server through the Docker or
//! Podman command-line client (docs/containers.md).
//!
//! The lifecycle of one container, all through the runtime's CLI:
//!
//! 1. **pull** ([`image::ensure`]): by the framework's pull policy, a phase of its own with
//!    its own timeout, its progress appended to the server log;
//! 2. **identity** ([`image::identity`]): the image's digest and id, recorded in every step's
//!    environment;
//! 3. **create** ([`plan::ContainerPlan::create_argv`]): name, labels (agent, unit, lease,
//!    launch), network, IPC, GPUs, read-only mounts, environment, extra options, and the
//!    framework's rendered command as entrypoint and arguments;
//! 4. **start** attached (`start --attach`), under the agent's supervisor like any server:
//!    the container's output is the server log, and the supervisor runs the teardown
//!    (`stop` with the grace, then `rm --force`) however the server ends, the agent's
//!    death included;
//! 5. **reaping** ([`reap::end_orphans`]): at start, the agent removes every container
//!    labelled with its id, for what a previous life could not tear down.
//!
//! The CLIs are driven rather than their HTTP APIs because the CLI is the one interface both
//! runtimes share, and it is what operators type to check on what evalctl did.

pub mod image;
pub mod plan;
pub mod reap;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::template::RenderedCommand;

/// Label keys evalctl puts on its containers.
pub mod labels {
    /// The agent id: what the reaper of a restarted agent looks for.
    pub const AGENT: &str = "evalctl.agent";
    /// The unit id.
    pub const UNIT: &str = "evalctl.unit";
    /// The lease id.
    pub const LEASE: &str = "evalctl.lease";
    /// The launch token (also in the agent's state, see [`crate::state::LaunchIntent`]).
    pub const LAUNCH: &str = "evalctl.launch";
}

/// How long a pull may take when the unit does not say (a coordinator older than
/// containers sends no settings).
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long one short CLI call (`inspect`, `create`, `ps`, `rm`) may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Which container runtime the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    /// Docker when its daemon answers, else Podman.
    #[default]
    Auto,
    /// Docker.
    Docker,
    /// Podman.
    Podman,
}

impl std::str::FromStr for RuntimeChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<RuntimeChoice, String> {
        match text {
            "auto" => Ok(RuntimeChoice::Auto),
            "docker" => Ok(RuntimeChoice::Docker),
            "podman" => Ok(RuntimeChoice::Podman),
            other => Err(format!("expected auto, docker or podman, found `{other}`")),
        }
    }
}

/// The agent's container settings (`[container]` of its config file).
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Which runtime.
    pub choice: RuntimeChoice,
    /// The runtime's command, when not its name on `PATH`.
    pub program: Option<PathBuf>,
    /// Options before every subcommand.
    pub global_args: Vec<String>,
    /// Options of every `create` on this host.
    pub run_options: Vec<String>,
    /// The host's Hugging Face home (its `hub/` is mounted read-only).
    pub hf_home: Option<PathBuf>,
}

impl ContainerConfig {
    /// The Hugging Face hub cache to mount: `hf_home/hub`, with `hf_home` from the config,
    /// else `$HF_HOME`, else `~/.cache/huggingface`; `None` when it does not exist.
    pub fn hub_cache(&self) -> Option<PathBuf> {
        let home = self
            .hf_home
            .clone()
            .or_else(|| std::env::var_os("HF_HOME").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface"))
            })?;
        let hub = std::env::var_os("HF_HUB_CACHE")
            .filter(|_| self.hf_home.is_none())
            .map_or_else(|| home.join("hub"), PathBuf::from);
        hub.is_dir().then_some(hub)
    }
}

/// Docker or Podman: their CLIs differ in a few places evalctl uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Docker (the daemon's CLI).
    Docker,
    /// Podman (daemonless).
    Podman,
}

impl RuntimeKind {
    /// The command's usual name.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Podman => "podman",
        }
    }
}

/// A container runtime that answered: its CLI and how to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Docker or Podman.
    pub kind: RuntimeKind,
    /// The CLI.
    pub program: PathBuf,
    /// Options before every subcommand.
    pub global_args: Vec<String>,
    /// Options of every `create`.
    pub run_options: Vec<String>,
    /// The version it reported (the daemon's, for Docker).
    pub version: String,
}

/// No usable container runtime.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no container runtime answers on this host: {tried}")]
pub struct NoRuntime {
    /// What was tried and how each failed.
    pub tried: String,
}

/// A CLI call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command could not be started.
    #[error("failed to run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It did not finish in time (and was killed).
    #[error("`{command}` did not finish within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// It exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
}

impl CliError {
    /// The exit code, for a command that ran and failed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CliError::Failed { status, .. } => status.code(),
            _ => None,
        }
    }

    /// What the command printed on stderr, when it ran.
    pub fn stderr(&self) -> &str {
        match self {
            CliError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

impl Runtime {
    /// The runtime `config` asks for, checked by asking its version: for `auto`, Docker when
    /// its daemon answers, else Podman. Each probe waits at most `timeout`. Blocking: the
    /// agent runs it once at start (off its async threads), the preflight runs it as is.
    pub fn detect(config: &ContainerConfig, timeout: Duration) -> Result<Runtime, NoRuntime> {
        let kinds: &[RuntimeKind] = match config.choice {
            RuntimeChoice::Auto => &[RuntimeKind::Docker, RuntimeKind::Podman],
            RuntimeChoice::Docker => &[RuntimeKind::Docker],
            RuntimeChoice::Podman => &[RuntimeKind::Podman],
        };
        let mut tried = Vec::new();
        for &kind in kinds {
            let program = match (&config.program, config.choice) {
                (Some(program), RuntimeChoice::Docker | RuntimeChoice::Podman) => program.clone(),
                _ => match which::which(kind.name()) {
                    Ok(path) => path,
                    Err(_) => {
                        tried.push(format!("`{}` is not on PATH", kind.name()));
                        continue;
                    }
                },
            };
            let mut runtime = Runtime {
                kind,
                program,
                global_args: config.global_args.clone(),
                run_options: config.run_options.clone(),
                version: String::new(),
            };
            // Docker's client answers without its daemon; the server's version needs one.
            let format = match kind {
                RuntimeKind::Docker => "{{.Server.Version}}",
                RuntimeKind::Podman => "{{.Client.Version}}",
            };
            match runtime.output_blocking(&["version", "--format", format], timeout) {
                Ok(version) => {
                    runtime.version = version.trim().to_owned();
                    return Ok(runtime);
                }
                Err(err) => tried.push(first_line(&evalctl_common::error_chain(&err))),
            }
        }
        Err(NoRuntime {
            tried: tried.join("; "),
        })
    }

    /// `kind version`, e.g. `podman 4.3.1`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind.name(), self.version)
    }

    /// The full argv of `subcommand_args` (program, global options, then the arguments).
    pub fn argv<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        let mut argv = vec![self.program.display().to_string()];
        argv.extend(self.global_args.iter().cloned());
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        argv
    }

    /// A command for `args`: stdin closed, killed when dropped.
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> tokio::process::Command {
        let argv = self.argv(args);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// [`Runtime::output`] for callers outside the async runtime (detection, the preflight):
    /// for commands whose output is small (a version, an image id).
    pub fn output_blocking<S: AsRef<str>>(
        &self,
        args: &[S],
        timeout: Duration,
    ) -> Result<String, CliError> {
        let argv = self.argv(args);
        let command = RenderedCommand::from(argv.clone()).display();
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CliError::Spawn {
                command: command.clone(),
                source,
            })?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CliError::Timeout { command, timeout });
                }
                Err(source) => return Err(CliError::Spawn { command, source }),
            }
        }
        let output = child.wait_with_output().map_err(|source| CliError::Spawn {
            command: command.clone(),
            source,
        })?;
        stdout_of(command, output)
    }

    /// Runs `args` and returns its stdout; fails on a non-zero exit or after `timeout`.
    pub async fn output<S: AsRef<str>>(
        &self,
        args: &[S],
        timeout: Duration,
    ) -> Result<String, CliError> {
        let command = RenderedCommand::from(self.argv(args)).display();
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| CliError::Spawn {
            command: command.clone(),
            source,
        })?;
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => return Err(CliError::Spawn { command, source }),
            Err(_) => return Err(CliError::Timeout { command, timeout }),
        };
        stdout_of(command, output)
    }
}

/// The stdout of a command that exited, or its failure with its stderr.
fn stdout_of(command: String, output: std::process::Output) -> Result<String, CliError> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CliError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_choices_parse_and_say_what_they_expect() {
        assert_eq!("auto".parse::<RuntimeChoice>(), Ok(RuntimeChoice::Auto));
        assert_eq!("podman".parse::<RuntimeChoice>(), Ok(RuntimeChoice::Podman));
        let err = "lxc".parse::<RuntimeChoice>().unwrap_err();
        assert!(err.contains("expected auto, docker or podman"), "{err}");
    }

    #[test]
    fn a_runtime_that_is_not_there_is_named_in_the_error() {
        let config = ContainerConfig {
            choice: RuntimeChoice::Podman,
            program: Some(PathBuf::from("/nonexistent/podman")),
            ..ContainerConfig::default()
        };
        let err = Runtime::detect(&config, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/podman"), "{err}");
    }

    #[tokio::test]
    async fn cli_failures_carry_the_command_and_its_stderr() {
        let runtime = Runtime {
            kind: RuntimeKind::Podman,
            program: PathBuf::from("sh"),
            global_args: vec!["-c".into()],
            run_options: Vec::new(),
            version: String::new(),
        };
        let err = runtime
            .output(&["echo refused >&2; exit 125"], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), Some(125));
        assert_eq!(err.stderr(), "refused");
        assert!(err.to_string().contains("sh -c"), "{err}");
        let err = runtime
            .output(&["sleep 5"], Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, CliError::Timeout { .. }), "{err}");
        let blocking = runtime
            .output_blocking(&["echo refused >&2; exit 125"], Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(blocking.stderr(), "refused");
        assert_eq!(
            runtime
                .output_blocking(&["echo 4.3.1"], Duration::from_secs(5))
                .unwrap(),
            "4.3.1\n"
        );
    }
}
