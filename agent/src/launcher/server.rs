//! Starting a server process, waiting for its health endpoint, and stopping it.
//!
//! Every server runs under a supervisor (the agent's own binary, run as `supervise`; see
//! [`super::supervisor`]) that ends the server's whole process tree when the agent asks it
//! to or when the agent dies. The server runs in its own process group with stdout and
//! stderr appended to a log file. [`RunningServer::stop`] asks the supervisor (SIGTERM), which
//! ends the tree (SIGTERM, grace, SIGKILL) and exits as the server did; dropping a server that
//! was not stopped closes the link, which has the supervisor end it all the same.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::error::LaunchError;
use super::group::{self, Ending, KILL_WAIT, group_alive};
use super::health::{self, Probe};
use super::orphans::ServerRecord;
use super::startup::{StartPhases, StartWatch};
use super::supervisor::link::{self, Link, StartFailure};
use super::supervisor::report::TreeEnding;
use super::template::RenderedCommand;

/// The agent's own binary name: a command starting with it runs the `evalctl-agent` installed
/// next to the running executable when there is one (see [`resolve_program`]).
pub const AGENT_PROGRAM: &str = "evalctl-agent";

/// How often the health endpoint is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The longest one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of the log an error carries.
pub const LOG_TAIL_BYTES: usize = 4096;

/// What `evalctl-agent run` passes as [`LaunchSpec::supervisor`]: its own executable, which
/// stays runnable even when the file was replaced by an upgrade.
pub const THIS_EXECUTABLE: &str = "/proc/self/exe";

/// How much longer than the grace and the SIGKILL wait a supervisor may take to end its
/// server before the agent kills it and the server's group itself.
const SUPERVISOR_SLACK: Duration = Duration::from_secs(5);

/// Everything needed to launch one server.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The rendered command.
    pub command: RenderedCommand,
    /// Framework environment, added to the agent's own.
    pub env: BTreeMap<String, String>,
    /// `Some("0,1")` sets `CUDA_VISIBLE_DEVICES` to the unit's GPUs (`Some("")` would hide
    /// them all), with `CUDA_DEVICE_ORDER=PCI_BUS_ID` unless the framework's `env` sets an
    /// order: the agent's indices are NVML's, in PCI bus order, while CUDA's default order
    /// puts the fastest GPU first. `None` leaves both as the agent has them (CPU units).
    pub cuda_visible_devices: Option<String>,
    /// Where the server listens; health is probed there.
    pub host: String,
    /// The port the server listens on.
    pub port: u16,
    /// HTTP path that answers 200 once the server is ready, e.g. `/health`.
    pub health_path: String,
    /// How long [`RunningServer::wait_healthy`] waits for 200.
    pub startup_timeout: Duration,
    /// stdout and stderr are appended here; parent directories are created.
    pub log_path: PathBuf,
    /// [`RunningServer::stop`]: SIGTERM, this long, then SIGKILL of the group.
    pub stop_grace: Duration,
    /// The program run as `<supervisor> supervise …` to supervise the server: a build of
    /// `evalctl-agent`. [`THIS_EXECUTABLE`] in the agent binary; elsewhere
    /// [`default_supervisor`].
    pub supervisor: PathBuf,
    /// Commands the supervisor runs, in order, before it ends the server's processes,
    /// however the server ends (full argv each; empty for a plain process): a container's
    /// `stop` and `rm`.
    pub teardown: Vec<Vec<String>>,
}

/// The supervisor for a process that is not `evalctl-agent` itself (`evalctl local`,
/// tests): the `evalctl-agent` next to the running executable, else the one on `PATH`.
pub fn default_supervisor() -> PathBuf {
    resolve_program(AGENT_PROGRAM)
}

/// How [`RunningServer::stop`] ended the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The server and its whole group had already exited.
    AlreadyExited {
        /// The main process's exit status.
        status: Option<ExitStatus>,
    },
    /// The group exited within the grace after SIGTERM.
    Terminated {
        /// The main process's exit status.
        status: Option<ExitStatus>,
    },
    /// The group outlived the grace and was killed with SIGKILL.
    Killed {
        /// The main process's exit status.
        status: Option<ExitStatus>,
    },
    /// Processes of the group still ran a while after SIGKILL (uninterruptible sleep, e.g.
    /// stuck in a GPU driver call); they die when the kernel lets them.
    Stuck,
}

/// A launched server process group and its supervisor.
#[derive(Debug)]
pub struct RunningServer {
    /// The supervisor; it exits as the server did, once the server's processes are gone.
    child: tokio::process::Child,
    /// The supervisor's pid (ours to signal: it is our child, unreaped until `exit_status`).
    supervisor_pid: i32,
    /// The link to the supervisor; dropping it has the supervisor end the server.
    link: Link,
    /// Pid of the server's main process, which is also the group id.
    pgid: i32,
    start_time_ticks: u64,
    command: String,
    host: String,
    port: u16,
    health_path: String,
    startup_timeout: Duration,
    stop_grace: Duration,
    /// How long the supervisor's teardown commands may take in all.
    teardown_limit: Duration,
    log_path: PathBuf,
    /// When the process was started (monotonic, and Unix ms).
    started: (std::time::Instant, i64),
    /// The supervisor's exit status, once reaped: the server's, mirrored.
    exit_status: Option<ExitStatus>,
    /// Set by `stop`; `Drop` kills the group when this is unset.
    stopped: Option<StopOutcome>,
}

/// Picks a free TCP port on `host` (binds port 0, reads the port, releases it). Another
/// process may take the port before the server binds it; the health wait then fails.
pub fn free_port(host: &str) -> std::io::Result<u16> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let listener = std::net::TcpListener::bind((host, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The program a command's `argv[0]` runs: for [`AGENT_PROGRAM`], the `evalctl-agent` file next
/// to the running executable (or next to its `deps/` directory, where cargo puts test
/// binaries) when it exists, so `evalctl local` and tests run the build they belong to;
/// otherwise `argv[0]` unchanged, looked up on `PATH`.
pub fn resolve_program(program: &str) -> PathBuf {
    if program == AGENT_PROGRAM
        && let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let mut candidates = vec![dir.join(AGENT_PROGRAM)];
        if dir.file_name().is_some_and(|name| name == "deps")
            && let Some(up) = dir.parent()
        {
            candidates.push(up.join(AGENT_PROGRAM));
        }
        if let Some(found) = candidates.into_iter().find(|c| c.is_file()) {
            return found;
        }
    }
    PathBuf::from(program)
}

/// Spawns the server under its supervisor, in its own process group, stdout and stderr
/// appended to the log file (after a header line naming the command), and waits for the
/// supervisor to report it started. Must be called inside a tokio runtime.
///
/// `PYTHONUNBUFFERED=1` is set unless the agent or the framework set it, so a Python server's
/// last words reach the log before it dies. The environment is the supervisor's, which the
/// server inherits.
pub async fn spawn(spec: &LaunchSpec) -> Result<RunningServer, LaunchError> {
    let (program, args) = spec
        .command
        .argv
        .split_first()
        .ok_or(LaunchError::EmptyCommand)?;
    let log = open_log(&spec.log_path)?;
    let command_line = spec.command.display();
    write_header(&log, &spec.log_path, &command_line)?;
    let stderr = log.try_clone().map_err(|source| LaunchError::OpenLog {
        path: spec.log_path.clone(),
        source,
    })?;

    let resolved = resolve_program(program);
    let mut cmd = link::command(
        &spec.supervisor,
        spec.stop_grace,
        &spec.teardown,
        &resolved,
        args,
    );
    cmd.envs(&spec.env)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr));
    if std::env::var_os("PYTHONUNBUFFERED").is_none() && !spec.env.contains_key("PYTHONUNBUFFERED")
    {
        cmd.env("PYTHONUNBUFFERED", "1");
    }
    if let Some(devices) = &spec.cuda_visible_devices {
        cmd.env("CUDA_VISIBLE_DEVICES", devices);
        if !spec.env.contains_key("CUDA_DEVICE_ORDER") {
            cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        }
    }
    let started = (
        std::time::Instant::now(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    );
    let supervised = link::start(cmd).await.map_err(|failure| match failure {
        StartFailure::Link(source) => LaunchError::Link(source),
        StartFailure::Supervisor(source) => LaunchError::Supervisor {
            program: spec.supervisor.clone(),
            hint: supervisor_hint(&spec.supervisor, &source),
            source,
        },
        StartFailure::Server { errno } => {
            let source = if errno == 0 {
                std::io::Error::other("the supervisor could not start it")
            } else {
                std::io::Error::from_raw_os_error(errno)
            };
            LaunchError::Spawn {
                program: resolved.display().to_string(),
                hint: spawn_hint(program, &source),
                source,
            }
        }
        StartFailure::Silent { status } => LaunchError::SupervisorSilent {
            program: spec.supervisor.clone(),
            what: status.map_or_else(
                || "closed its link".to_owned(),
                |status| format!("exited ({status})"),
            ),
            log_path: spec.log_path.clone(),
            log_tail: read_tail(&spec.log_path, LOG_TAIL_BYTES).unwrap_or_default(),
        },
        StartFailure::NoReport => LaunchError::SupervisorSilent {
            program: spec.supervisor.clone(),
            what: format!(
                "did not report within {}",
                humantime::format_duration(link::START_REPORT_TIMEOUT)
            ),
            log_path: spec.log_path.clone(),
            log_tail: read_tail(&spec.log_path, LOG_TAIL_BYTES).unwrap_or_default(),
        },
    })?;
    let supervisor_pid = supervised
        .child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .expect("invariant: a child that was just spawned and not waited for has a pid");
    let pid = supervised.server_pid;
    let server = RunningServer {
        child: supervised.child,
        supervisor_pid,
        link: supervised.link,
        pgid: pid,
        start_time_ticks: supervised.start_time_ticks,
        command: command_line,
        host: spec.host.clone(),
        port: spec.port,
        health_path: spec.health_path.clone(),
        startup_timeout: spec.startup_timeout,
        stop_grace: spec.stop_grace,
        teardown_limit: link::TEARDOWN_TIMEOUT * spec.teardown.len() as u32,
        log_path: spec.log_path.clone(),
        started,
        exit_status: None,
        stopped: None,
    };
    // The supervisor reads it before the server can be reaped; 0 means it could not. On
    // failure `server` is dropped, which has the supervisor end the server.
    if server.start_time_ticks == 0 {
        return Err(LaunchError::StartTime {
            pid,
            source: std::io::Error::other("the supervisor could not read it from /proc"),
        });
    }
    tracing::info!(
        pgid = pid,
        supervisor = supervisor_pid,
        command = %server.command,
        log = %server.log_path.display(),
        "server started"
    );
    Ok(server)
}

fn supervisor_hint(program: &Path, err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => format!(
            "`{}` supervises every server and is not installed; put `{AGENT_PROGRAM}` next to \
             this executable or on PATH",
            program.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!(
                "`{}` is not executable by the agent's user",
                program.display()
            )
        }
        _ => format!("check that `{}` runs", program.display()),
    }
}

fn open_log(path: &Path) -> Result<File, LaunchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LaunchError::LogDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LaunchError::OpenLog {
            path: path.to_owned(),
            source,
        })
}

fn write_header(mut log: &File, path: &Path, command_line: &str) -> Result<(), LaunchError> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    writeln!(log, "==> {now} evalctl-agent: starting: {command_line}").map_err(|source| {
        LaunchError::OpenLog {
            path: path.to_owned(),
            source,
        }
    })
}

fn spawn_hint(program: &str, err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound if program.contains('/') => {
            format!("`{program}` does not exist; check the framework's `command`")
        }
        std::io::ErrorKind::NotFound => format!(
            "`{program}` is not on the agent's PATH; install it, or give its full path in the \
             framework's `command`"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("`{program}` is not executable by the agent's user")
        }
        _ => "check the framework's `command`".to_owned(),
    }
}

impl RunningServer {
    /// What a restarted agent needs to find and end this server's group. `unit_id` is left
    /// empty: the launcher does not know units; the caller fills it in.
    pub fn record(&self) -> ServerRecord {
        ServerRecord {
            pgid: self.pgid,
            start_time_ticks: self.start_time_ticks,
            command: self.command.clone(),
            log_path: self.log_path.clone(),
            unit_id: String::new(),
        }
    }

    /// The server's process group id (the pid of its main process).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// `http://host:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", health::authority(&self.host, self.port))
    }

    /// The launch command, shell-quoted.
    pub fn command_line(&self) -> String {
        self.command.clone()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn health_url(&self) -> String {
        format!("{}{}", self.base_url(), self.health_path)
    }

    /// Polls `GET base_url + health_path` every 200 ms until it answers 200. Fails when the
    /// main process exits first ([`LaunchError::Exited`]), when the startup timeout passes
    /// ([`LaunchError::Unhealthy`]; the server keeps running, the caller stops it), or when
    /// `cancel` fires ([`LaunchError::Cancelled`]).
    pub async fn wait_healthy(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<StartPhases, LaunchError> {
        let url = self.health_url();
        let mut watch = StartWatch::new(self.started.0, self.started.1, &self.log_path);
        let deadline = tokio::time::Instant::now() + self.startup_timeout;
        let (host, port, path) = (self.host.clone(), self.port, self.health_path.clone());
        loop {
            if let Some(status) = self.try_exit() {
                return Err(self.exited(status, url));
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let timeout = PROBE_TIMEOUT.min(remaining).max(Duration::from_millis(50));
            let last: Probe = tokio::select! {
                () = cancel.cancelled() => return Err(LaunchError::Cancelled),
                status = self.child.wait() => return Err(self.reaped(status, url)),
                probe = health::probe(&host, port, &path, timeout) => probe,
            };
            watch.read_log();
            if last.is_healthy() {
                tracing::info!(url, "server is healthy");
                return Ok(watch.ready());
            }
            // Connected without being healthy: the port is open, the server not ready.
            watch.probed(!matches!(last, Probe::Connect(_)));
            tracing::debug!(url, probe = %last, "server not healthy yet");
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(LaunchError::Unhealthy {
                    url,
                    waited: self.startup_timeout,
                    last_probe: last.to_string(),
                    log_path: self.log_path.clone(),
                    log_tail: self.log_tail(LOG_TAIL_BYTES),
                });
            }
            let next = (now + PROBE_INTERVAL).min(deadline);
            tokio::select! {
                () = cancel.cancelled() => return Err(LaunchError::Cancelled),
                status = self.child.wait() => return Err(self.reaped(status, url)),
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// The error for a main process that was reaped while waiting for health.
    fn reaped(&mut self, status: std::io::Result<ExitStatus>, url: String) -> LaunchError {
        match status {
            Ok(status) => {
                self.exit_status = Some(status);
                self.exited(status, url)
            }
            // waitpid failed (ECHILD: someone else reaped it); report what we can.
            Err(err) => LaunchError::Unhealthy {
                url,
                waited: self.startup_timeout,
                last_probe: format!("failed to wait for the server process: {err}"),
                log_path: self.log_path.clone(),
                log_tail: self.log_tail(LOG_TAIL_BYTES),
            },
        }
    }

    fn exited(&self, status: ExitStatus, url: String) -> LaunchError {
        LaunchError::Exited {
            status,
            url,
            log_path: self.log_path.clone(),
            log_tail: self.log_tail(LOG_TAIL_BYTES),
        }
    }

    /// Non-blocking: `Some(status)` once the supervisor has exited, which it does when the
    /// server's main process exited and the rest of its tree is gone; the status is the
    /// server's.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.exit_status = status,
                Err(err) => {
                    tracing::warn!(pgid = self.pgid, error = %err, "failed to poll the server process")
                }
            }
        }
        self.exit_status
    }

    /// Ends the server: SIGTERM to its supervisor, which sends SIGTERM to the server's whole
    /// tree, waits up to `stop_grace` for every process of it to exit, then sends SIGKILL;
    /// the supervisor is reaped. Idempotent: later calls return the first outcome.
    pub async fn stop(&mut self) -> StopOutcome {
        if let Some(outcome) = self.stopped {
            return outcome;
        }
        let (pgid, grace) = (self.pgid, self.stop_grace);
        self.try_exit();
        let outcome = if self.exit_status.is_none() {
            self.stop_supervised().await
        } else if group_alive(pgid) {
            // The supervisor is gone (killed on its own) while the server's group lives.
            tracing::warn!(
                pgid,
                "the server's supervisor is gone; ending the server's process group directly"
            );
            let ending = group::end_group(pgid, grace, || !group_alive(pgid)).await;
            self.outcome(ending)
        } else {
            StopOutcome::AlreadyExited {
                status: self.exit_status,
            }
        };
        match outcome {
            StopOutcome::Killed { .. } => tracing::warn!(
                pgid,
                grace = %humantime::format_duration(grace),
                "the server outlived its stop grace and was killed with SIGKILL"
            ),
            StopOutcome::Stuck => {
                tracing::warn!(pgid, "server processes still run after SIGKILL")
            }
            _ => {}
        }
        tracing::info!(pgid, ?outcome, "server stopped");
        self.stopped = Some(outcome);
        outcome
    }

    /// [`RunningServer::stop`] while the supervisor runs.
    async fn stop_supervised(&mut self) -> StopOutcome {
        let pgid = self.pgid;
        // Our child and not yet reaped, so the pid is still the supervisor's.
        let _ = nix::sys::signal::kill(Pid::from_raw(self.supervisor_pid), Signal::SIGTERM);
        let limit = self.stop_grace + KILL_WAIT + SUPERVISOR_SLACK + self.teardown_limit;
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exit_status = Some(status);
                match self.link.ending().await {
                    Some(TreeEnding::Exited | TreeEnding::Terminated) => StopOutcome::Terminated {
                        status: self.exit_status,
                    },
                    Some(TreeEnding::Killed) => StopOutcome::Killed {
                        status: self.exit_status,
                    },
                    Some(TreeEnding::Stuck) => StopOutcome::Stuck,
                    // It died without a word (killed by someone else): judge by the group.
                    None if group_alive(pgid) => {
                        let ending =
                            group::end_group(pgid, Duration::ZERO, || !group_alive(pgid)).await;
                        self.outcome(ending)
                    }
                    None => StopOutcome::Terminated {
                        status: self.exit_status,
                    },
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(pgid, error = %err, "failed to wait for the server's supervisor");
                self.kill_everything().await
            }
            Err(_) => {
                tracing::warn!(
                    pgid,
                    waited = %humantime::format_duration(limit),
                    "the server's supervisor did not end the server in time; killing it and the \
                     server's process group"
                );
                self.kill_everything().await
            }
        }
    }

    /// The last resort when the supervisor does not do its job: SIGKILL to it and to the
    /// server's group.
    async fn kill_everything(&mut self) -> StopOutcome {
        let pgid = self.pgid;
        let _ = self.child.start_kill();
        group::signal_group(pgid, Signal::SIGKILL);
        let child = &mut self.child;
        let reaped = tokio::time::timeout(KILL_WAIT, child.wait()).await;
        if let Ok(Ok(status)) = reaped {
            self.exit_status = Some(status);
        }
        if group::wait_until(KILL_WAIT, || !group_alive(pgid)).await {
            StopOutcome::Killed {
                status: self.exit_status,
            }
        } else {
            StopOutcome::Stuck
        }
    }

    fn outcome(&self, ending: Ending) -> StopOutcome {
        match ending {
            Ending::Terminated => StopOutcome::Terminated {
                status: self.exit_status,
            },
            Ending::Killed => StopOutcome::Killed {
                status: self.exit_status,
            },
            Ending::Stuck => StopOutcome::Stuck,
        }
    }

    /// The last `max_bytes` of the log, UTF-8 lossy, starting after a line break when the
    /// cut falls inside a line that is not the last. Empty when the log cannot be read.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        read_tail(&self.log_path, max_bytes).unwrap_or_else(|err| {
            tracing::warn!(log = %self.log_path.display(), error = %err, "failed to read the server log");
            String::new()
        })
    }
}

/// Appends a line of evalctl's own to a server log (`==> <time> evalctl-agent: message`, the
/// header's form), creating the file and its directory. A log that cannot be written loses
/// the line: the launch's own error says what happened.
pub fn append_log_line(path: &Path, message: &str) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(path) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let _ = writeln!(log, "==> {now} evalctl-agent: {message}");
    }
}

/// The last `max_bytes` of the file at `path` (see [`RunningServer::log_tail`]).
pub fn read_tail(path: &Path, max_bytes: usize) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(max_bytes.min(len as usize));
    file.take(max_bytes as u64).read_to_end(&mut bytes)?;
    if start > 0
        && let Some(newline) = memchr::memchr(b'\n', &bytes)
        && newline + 1 < bytes.len()
    {
        bytes.drain(..=newline);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        if self.try_exit().is_none() {
            // Dropping `link` right after this closes it: the supervisor ends the server.
            tracing::warn!(
                pgid = self.pgid,
                "server dropped without stop; its supervisor ends it"
            );
        } else if group_alive(self.pgid) {
            // The supervisor is gone but the group lives on: nobody else will end it.
            tracing::warn!(
                pgid = self.pgid,
                "server dropped without stop; killing its process group"
            );
            group::signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_tail_starts_at_a_line_when_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(
            read_tail(&path, 1000).unwrap(),
            "first line\nsecond line\nthird\n"
        );
        assert_eq!(read_tail(&path, 15).unwrap(), "third\n");
        // One long line: keep the cut rather than return nothing.
        std::fs::write(&path, "x".repeat(100)).unwrap();
        assert_eq!(read_tail(&path, 10).unwrap(), "x".repeat(10));
        // A cut inside a multibyte character is replaced, not an error.
        std::fs::write(&path, "é").unwrap();
        assert_eq!(read_tail(&path, 1).unwrap(), "\u{FFFD}");
        assert!(read_tail(&dir.path().join("missing"), 10).is_err());
    }

    #[test]
    fn resolves_the_agent_next_to_the_executable_or_on_path() {
        assert_eq!(resolve_program("vllm"), PathBuf::from("vllm"));
        let agent = resolve_program(AGENT_PROGRAM);
        // Unit tests run from target/<profile>/deps; the binary sits one level up once built.
        if agent != Path::new(AGENT_PROGRAM) {
            assert!(agent.is_file(), "{}", agent.display());
            assert!(agent.ends_with(AGENT_PROGRAM));
        }
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port("127.0.0.1").unwrap();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
