//! The agent's end of a supervisor's link: starting the supervisor with the link as its
//! stdin, reading its reports, and its last word once it exited.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::process::Child;

use super::SUPERVISE_SUBCOMMAND;
use super::report::{Report, TreeEnding};
use crate::launcher::server::AGENT_PROGRAM;

/// How long a supervisor may take to start its server and say so. Starting is a fork and
/// an exec; this is generous for a loaded host.
pub(crate) const START_REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the agent waits for a supervisor that exited to have its last report read.
const LAST_REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// The agent's end of the link. Dropping it closes the link: the supervisor then ends the
/// server.
#[derive(Debug)]
pub(crate) struct Link {
    reader: BufReader<UnixStream>,
}

impl Link {
    /// The next report, `None` at end of file (the supervisor exited) or on an error.
    /// Lines that are no report are skipped.
    async fn next(&mut self) -> Option<Report> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {
                    if let Some(report) = Report::parse(&line) {
                        return Some(report);
                    }
                }
            }
        }
    }

    /// How the supervisor said it ended the server's processes, read after it exited.
    pub(crate) async fn ending(&mut self) -> Option<TreeEnding> {
        let last = async {
            while let Some(report) = self.next().await {
                if let Report::Ended(ending) = report {
                    return Some(ending);
                }
            }
            None
        };
        tokio::time::timeout(LAST_REPORT_TIMEOUT, last)
            .await
            .ok()
            .flatten()
    }
}

/// The command that runs a supervisor for `program args`: `supervisor supervise --grace
/// <grace> -- program args`, shown as `evalctl-agent supervise …` by `ps`. The caller adds
/// the environment and the log as stdout and stderr; [`start`] adds the rest.
pub(crate) fn command(
    supervisor: &Path,
    grace: Duration,
    teardown: &[Vec<String>],
    program: &Path,
    args: &[String],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(supervisor);
    cmd.arg0(AGENT_PROGRAM)
        .arg(SUPERVISE_SUBCOMMAND)
        .arg("--grace")
        .arg(humantime::format_duration(grace).to_string());
    for argv in teardown {
        cmd.arg("--teardown")
            .arg(serde_json::Value::from(argv.clone()).to_string());
    }
    if !teardown.is_empty() {
        cmd.arg("--teardown-timeout")
            .arg(humantime::format_duration(TEARDOWN_TIMEOUT).to_string());
    }
    cmd.arg("--").arg(program).args(args);
    cmd
}

/// How long each teardown command of a server may take in its supervisor.
pub(crate) const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// A started supervisor whose server runs.
#[derive(Debug)]
pub(crate) struct Supervised {
    /// The supervisor process.
    pub child: Child,
    /// The link to it.
    pub link: Link,
    /// The server's pid (its process group id).
    pub server_pid: i32,
    /// The server's start time, as the supervisor read it.
    pub start_time_ticks: u64,
}

/// Why a supervised server did not start.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// The link could not be created.
    Link(std::io::Error),
    /// The supervisor could not be started.
    Supervisor(std::io::Error),
    /// The supervisor could not start the server; the OS error number (0: none).
    Server {
        /// The OS error number.
        errno: i32,
    },
    /// The supervisor closed the link without starting the server.
    Silent {
        /// Its exit status, when it was seen.
        status: Option<ExitStatus>,
    },
    /// The supervisor said nothing for [`START_REPORT_TIMEOUT`].
    NoReport,
}

/// Starts `cmd` (from [`command`]) in its own process group with the link as its stdin, and
/// waits for the supervisor to report the server started.
pub(crate) async fn start(mut cmd: tokio::process::Command) -> Result<Supervised, StartFailure> {
    // std creates both ends close-on-exec; the supervisor's end becomes its fd 0 (which
    // exec keeps), the agent's stays with the agent alone. Each end is its own open file,
    // so making the agent's non-blocking leaves the supervisor's blocking.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(StartFailure::Link)?;
    ours.set_nonblocking(true).map_err(StartFailure::Link)?;
    let ours = UnixStream::from_std(ours).map_err(StartFailure::Link)?;
    cmd.stdin(Stdio::from(OwnedFd::from(theirs)))
        // Keyboard signals for the agent's group do not reach it; the agent stops it.
        .process_group(0)
        .kill_on_drop(false);
    let spawned = cmd.spawn();
    // The command holds the supervisor's end; the link must close when the supervisor exits.
    drop(cmd);
    let mut child = spawned.map_err(StartFailure::Supervisor)?;
    let mut link = Link {
        reader: BufReader::new(ours),
    };
    let first = tokio::time::timeout(START_REPORT_TIMEOUT, link.next()).await;
    match first {
        Ok(Some(Report::Started {
            pid,
            start_time_ticks,
        })) => Ok(Supervised {
            child,
            link,
            server_pid: pid,
            start_time_ticks,
        }),
        Ok(Some(Report::SpawnFailed { errno })) => {
            let _ = child.wait().await;
            Err(StartFailure::Server { errno })
        }
        // An `ended` before `started`, or end of file: the supervisor failed on its own.
        Ok(Some(Report::Ended(_)) | None) => {
            let status = tokio::time::timeout(LAST_REPORT_TIMEOUT, child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            Err(StartFailure::Silent { status })
        }
        // Dropping the link makes a supervisor that did start something end it.
        Err(_) => Err(StartFailure::NoReport),
    }
}
