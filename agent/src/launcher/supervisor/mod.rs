//! The supervisor: a small process between the agent and each server, so a server never
//! outlives its agent, not even a `kill -9` of it.
//!
//! The agent starts `evalctl-agent supervise --grace <dur> -- <server argv>` (the agent's own
//! binary, see [`crate::launcher::LaunchSpec::supervisor`]) with its stdin one end of a Unix
//! socket pair, the *link*; the agent's end is close-on-exec, so no other child inherits it,
//! and the kernel closes it when the agent dies however it dies. The supervisor:
//!
//! 1. becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`): processes the server orphans —
//!    a `setsid` daemon, a double fork — are reparented to it, not to PID 1, so the server's
//!    whole tree stays below it;
//! 2. starts the server in a process group of its own, stdin `/dev/null`, stdout and stderr
//!    the supervisor's (the server log), and reports its pid and start time on the link;
//! 3. waits for the first of: the server exiting, SIGTERM (or SIGINT, SIGHUP) — the agent
//!    stopping it —, or end of file on the link — the agent is gone;
//! 4. ends the whole tree ([`tree::end`]: SIGTERM, the grace, SIGKILL, until nothing is
//!    left), reports how on the link, and exits as the server did ([`exit::mirror`]).
//!
//! `PR_SET_PDEATHSIG` is not used: it fires when the *thread* that forked the supervisor
//! exits (tokio's blocking threads end after idling), which would stop healthy servers, and
//! it could not reach grandchildren anyway. The link's end of file is the signal.
//!
//! The agent's side of the link is [`link`]; the lines on it are [`report`].

mod exit;
pub(crate) mod link;
pub(crate) mod report;
mod tree;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use report::{Report, TreeEnding};
use tree::Server;

/// The subcommand that runs a supervisor.
pub const SUPERVISE_SUBCOMMAND: &str = "supervise";

/// Exit code: the supervisor itself failed (before it could start the server).
pub const EXIT_SUPERVISOR_FAILED: u8 = 125;
/// Exit code: the server's program exists but could not be run.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// Exit code: the server's program was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Flags of the hidden `evalctl-agent supervise` (the agent runs it; people do not).
#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// SIGTERM → SIGKILL grace for the server's processes, e.g. "10s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// A command run before the server's tree is ended, however it ends (a JSON array of
    /// strings: program and arguments); repeatable, run in order. A container's `stop` and
    /// `rm`: the server's process is only the runtime's client, the container lives on
    /// without it.
    #[arg(long = "teardown", value_parser = parse_argv)]
    pub teardown: Vec<Vec<String>>,
    /// How long each teardown command may take before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub teardown_timeout: Duration,
    /// The server's program and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_argv(text: &str) -> Result<Vec<String>, String> {
    match serde_json::from_str::<Vec<String>>(text) {
        Ok(argv) if !argv.is_empty() => Ok(argv),
        Ok(_) => Err("expected a non-empty JSON array of strings".to_owned()),
        Err(err) => Err(format!("expected a JSON array of strings: {err}")),
    }
}

/// Why the supervisor could not do its job.
#[derive(Debug, thiserror::Error)]
enum SuperviseError {
    /// `PR_SET_CHILD_SUBREAPER` was refused.
    #[error("failed to become the child subreaper of the server's processes")]
    Subreaper(#[source] Errno),
    /// The signals could not be blocked or read from a signalfd.
    #[error("failed to set up signal handling")]
    Signals(#[source] Errno),
    /// Waiting on the link and the signals failed.
    #[error("failed to wait for the server, the agent or a signal")]
    Poll(#[source] Errno),
}

/// What ended the wait for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The server's main process exited.
    ServerExited,
    /// A signal asked the supervisor to stop the server.
    Asked(Signal),
    /// The link closed: the agent exited or died.
    AgentGone,
}

/// Runs a supervisor to its end; `main` exits with what this returns. Must be called
/// before any other thread exists (before a tokio runtime): the signals it reads are
/// blocked in the calling thread only.
pub fn run(args: &SuperviseArgs) -> ExitCode {
    // The link is fd 0, which the agent made one end of a Unix socket pair. The supervisor
    // uses a close-on-exec duplicate; the server's fd 0 becomes /dev/null.
    let link = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(err) => {
            note(&format!(
                "error: failed to open the link to the agent (stdin): {err}"
            ));
            return ExitCode::from(EXIT_SUPERVISOR_FAILED);
        }
    };
    match supervise(args, &link) {
        Ok(Some(status)) => exit::mirror(status),
        Ok(None) => ExitCode::from(EXIT_SUPERVISOR_FAILED),
        Err(Ended::Spawn(code)) => ExitCode::from(code),
        Err(Ended::Failed(err)) => {
            note(&format!("error: {}", evalctl_common::error_chain(&err)));
            ExitCode::from(EXIT_SUPERVISOR_FAILED)
        }
    }
}

/// A supervisor that ends without a server status to mirror.
enum Ended {
    /// The server could not be started; exit with this code.
    Spawn(u8),
    /// The supervisor failed.
    Failed(SuperviseError),
}

impl From<SuperviseError> for Ended {
    fn from(err: SuperviseError) -> Ended {
        Ended::Failed(err)
    }
}

/// Starts the server, waits, ends its tree; the server's status when it was reaped.
fn supervise(args: &SuperviseArgs, link: &File) -> Result<Option<exit::ServerStatus>, Ended> {
    nix::sys::prctl::set_child_subreaper(true).map_err(SuperviseError::Subreaper)?;
    // The server inherits the signal mask (std does not reset it), so it is emptied before
    // the spawn and the signals the supervisor reads are blocked only after it. The
    // signalfd can exist before: it receives what is blocked and pending.
    SigSet::empty()
        .thread_set_mask()
        .map_err(SuperviseError::Signals)?;
    let mut mask = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(signal);
    }
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(SuperviseError::Signals)?;

    let (program, rest) = args
        .command
        .split_first()
        .ok_or(Ended::Spawn(EXIT_NOT_FOUND))?;
    let spawned = std::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(err) => {
            report(
                link,
                Report::SpawnFailed {
                    errno: err.raw_os_error().unwrap_or(0),
                },
            );
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            };
            return Err(Ended::Spawn(code));
        }
    };
    // The supervisor reaps its children itself (waitpid on any child, for the orphans it
    // inherits), so the `Child` handle is only read for its pid, never waited on.
    let pid = i32::try_from(child.id()).expect("invariant: Linux pids fit in i32");
    drop(child);
    let mut server = Server { pid, status: None };
    // Until now SIGTERM would have killed the supervisor outright; the agent sends it only
    // after the report below. A SIGCHLD that came meanwhile is lost, so `wait` reaps first.
    if let Err(errno) = mask.thread_block() {
        let err = SuperviseError::Signals(errno);
        note(&format!(
            "error: {}; ending the server",
            evalctl_common::error_chain(&err)
        ));
        tree::end(std::process::id() as i32, &mut server, args.grace, note);
        return Err(err.into());
    }
    // Not reaped yet, so /proc/<pid> exists even if the server already exited.
    let start_time_ticks = crate::launcher::procfs::process_start_time(pid).unwrap_or(0);
    report(
        link,
        Report::Started {
            pid,
            start_time_ticks,
        },
    );

    let cause = wait(link, &signals, &mut server)?;
    let grace = humantime::format_duration(args.grace);
    match cause {
        Cause::AgentGone => note(&format!(
            "the agent's link closed (the agent exited or was killed); ending the server \
             (SIGTERM, {grace} grace, SIGKILL)"
        )),
        // SIGTERM is the agent's normal stop and goes unremarked.
        Cause::Asked(signal) if signal != Signal::SIGTERM => note(&format!(
            "received {signal}; ending the server (SIGTERM, {grace} grace, SIGKILL)"
        )),
        Cause::Asked(_) | Cause::ServerExited => {}
    }
    teardown(args);
    let ending = tree::end(std::process::id() as i32, &mut server, args.grace, note);
    if cause == Cause::ServerExited && ending != TreeEnding::Exited {
        note(&format!(
            "the server exited and left processes running; they were {}",
            match ending {
                TreeEnding::Terminated => "terminated",
                TreeEnding::Killed => "killed",
                _ => "not all ended",
            }
        ));
    }
    report(link, Report::Ended(ending));
    Ok(server.status)
}

/// Runs the teardown commands in order, each bounded by the teardown timeout; a failure is
/// noted in the log and the next command runs all the same.
fn teardown(args: &SuperviseArgs) {
    for argv in &args.teardown {
        let shown = crate::launcher::RenderedCommand::from(argv.clone()).display();
        let spawned = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                note(&format!("teardown: failed to run `{shown}`: {err}"));
                continue;
            }
        };
        let deadline = std::time::Instant::now() + args.teardown_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        match status {
            Some(status) if status.success() => {}
            Some(status) => note(&format!("teardown: `{shown}` failed ({status})")),
            None => note(&format!(
                "teardown: `{shown}` did not finish within {}; killed",
                humantime::format_duration(args.teardown_timeout)
            )),
        }
    }
}

/// Waits for the first [`Cause`], reaping children meanwhile.
fn wait(mut link: &File, signals: &SignalFd, server: &mut Server) -> Result<Cause, Ended> {
    let mut buf = [0u8; 256];
    let mut asked = None;
    let mut link_ready = false;
    loop {
        server.reap();
        if server.status.is_some() {
            return Ok(Cause::ServerExited);
        }
        if let Some(signal) = asked {
            return Ok(Cause::Asked(signal));
        }
        if link_ready {
            // The agent never writes; anything it might is ignored. End of file or an error
            // (the peer is gone) is the agent's death.
            match link.read(&mut buf) {
                Ok(0) => return Ok(Cause::AgentGone),
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Ok(Cause::AgentGone),
            }
        }
        let mut fds = [
            PollFd::new(link.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(SuperviseError::Poll(errno).into()),
        }
        link_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(signal) => asked = Some(signal),
            }
        }
    }
}

/// Writes a report line to the link. A failure means the agent is gone; the wait notices
/// that on its own.
fn report(mut link: &File, report: Report) {
    let _ = writeln!(link, "{report}");
}

/// A line in the server's log (the supervisor's stderr), in the format of the agent's own
/// header line.
fn note(message: &str) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(
        std::io::stderr(),
        "==> {now} evalctl-agent supervise: {message}"
    );
}
