//! The launcher's error type.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::diagnosis::{self, Diagnosis};

/// What can go wrong launching a server and waiting for it.
///
/// Messages say what failed ("failed to …") and never repeat their source; print the chain to
/// see the I/O cause. A server that exits or never becomes healthy carries the tail of its log,
/// and the message shows it, so a unit fails with the reason in its error.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The rendered command has no program.
    #[error("failed to launch a server: its command is empty")]
    EmptyCommand,

    /// The log file's directory could not be created.
    #[error("failed to create the server log directory `{}`", path.display())]
    LogDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The log file could not be opened for appending.
    #[error("failed to open the server log `{}`", path.display())]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The program could not be started (not found, not executable, …).
    #[error("failed to start `{program}` (hint: {hint})")]
    Spawn {
        /// The program as resolved (a name looked up on `PATH`, or a path).
        program: String,
        /// What the user can do about it.
        hint: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The link to the supervisor (a Unix socket pair) could not be created.
    #[error("failed to create the link to the server's supervisor")]
    Link(#[source] std::io::Error),

    /// The supervisor (the agent's own binary, run as `supervise`) could not be started.
    #[error("failed to start the server's supervisor `{}` (hint: {hint})", program.display())]
    Supervisor {
        /// The supervisor program.
        program: PathBuf,
        /// What the user can do about it.
        hint: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The supervisor exited, closed its link or said nothing for a long while, without
    /// starting the server.
    #[error(
        "failed to start the server: its supervisor `{}` {what} without starting it{}",
        program.display(),
        tail_section(.log_path, .log_tail)
    )]
    SupervisorSilent {
        /// The supervisor program.
        program: PathBuf,
        /// What it did: "exited (exit status: 2)", "closed its link", "did not report
        /// within 30s".
        what: String,
        /// The server's log file, where the supervisor writes its errors.
        log_path: PathBuf,
        /// The last lines of the log (about 4 KiB).
        log_tail: String,
    },

    /// The new process's start time could not be read from `/proc` (the group was killed).
    #[error("failed to read the start time of server process {pid}")]
    StartTime {
        /// The server's pid.
        pid: i32,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The server's main process exited before its health endpoint answered 200.
    #[error(
        "failed to start the server: it exited ({status}) before {url} answered{}",
        tail_section(.log_path, .log_tail)
    )]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// The health URL that was being probed.
        url: String,
        /// The server's log file.
        log_path: PathBuf,
        /// The last lines of the log (about 4 KiB).
        log_tail: String,
    },

    /// The health endpoint did not answer 200 within the startup timeout (the server is
    /// still running; the caller stops it).
    #[error(
        "failed to start the server: {url} did not answer 200 within {} (last probe: \
         {last_probe}){}",
        humantime::format_duration(*.waited),
        tail_section(.log_path, .log_tail)
    )]
    Unhealthy {
        /// The health URL.
        url: String,
        /// The startup timeout that ran out.
        waited: Duration,
        /// What the last probe saw, e.g. `connection refused` or `HTTP 503`.
        last_probe: String,
        /// The server's log file.
        log_path: PathBuf,
        /// The last lines of the log (about 4 KiB).
        log_tail: String,
    },

    /// The wait for health was cancelled (shutdown, lease revoked).
    #[error("failed to start the server: cancelled while waiting for it to become healthy")]
    Cancelled,
}

impl LaunchError {
    /// The message without the log tail (for a report that carries the tail separately).
    pub fn summary(&self) -> String {
        match self {
            LaunchError::Exited { status, url, .. } => {
                format!("failed to start the server: it exited ({status}) before {url} answered")
            }
            LaunchError::Unhealthy {
                url,
                waited,
                last_probe,
                ..
            } => format!(
                "failed to start the server: {url} did not answer 200 within {} (last probe: {last_probe})",
                humantime::format_duration(*waited)
            ),
            other => other.to_string(),
        }
    }

    /// What kind of failure this is and the line that shows it, when recognisable: a
    /// program that was not found, or a known message at the end of the server's log.
    pub fn diagnosis(&self) -> Option<Diagnosis> {
        match self {
            LaunchError::Spawn {
                program, source, ..
            } => diagnosis::diagnose_spawn(program, source),
            other => other.log_tail().and_then(diagnosis::diagnose),
        }
    }

    /// The tail of the server's log, for errors that carry one.
    pub fn log_tail(&self) -> Option<&str> {
        match self {
            LaunchError::Exited { log_tail, .. }
            | LaunchError::Unhealthy { log_tail, .. }
            | LaunchError::SupervisorSilent { log_tail, .. } => Some(log_tail),
            _ => None,
        }
    }
}

fn tail_section(path: &Path, tail: &str) -> String {
    if tail.trim().is_empty() {
        format!("; its log `{}` is empty", path.display())
    } else {
        format!(
            "; the end of its log `{}`:\n{}",
            path.display(),
            tail.trim_end()
        )
    }
}
