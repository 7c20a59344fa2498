//! What a supervisor tells its agent: one line per report on the link (the supervisor's
//! stdin, a Unix socket). The agent never writes to the link; closing it is the only
//! message that way.
//!
//! ```text
//! started <pid> <start time ticks>   the server runs (its pid is its process group id)
//! spawn-failed <errno>               the server could not be started (0: no errno)
//! ended <exited|terminated|killed|stuck>
//!                                    how the server's processes ended; the supervisor exits
//! ```

use std::fmt;

/// How the supervisor ended the server's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeEnding {
    /// The server exited on its own and left nothing running.
    Exited,
    /// Everything was gone within the grace after SIGTERM.
    Terminated,
    /// Something outlived the grace and was killed with SIGKILL.
    Killed,
    /// Processes still ran a while after SIGKILL (uninterruptible sleep).
    Stuck,
}

impl TreeEnding {
    fn word(self) -> &'static str {
        match self {
            TreeEnding::Exited => "exited",
            TreeEnding::Terminated => "terminated",
            TreeEnding::Killed => "killed",
            TreeEnding::Stuck => "stuck",
        }
    }

    fn from_word(word: &str) -> Option<TreeEnding> {
        [
            TreeEnding::Exited,
            TreeEnding::Terminated,
            TreeEnding::Killed,
            TreeEnding::Stuck,
        ]
        .into_iter()
        .find(|e| e.word() == word)
    }
}

/// One report line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The server runs.
    Started {
        /// Its pid, which is also its process group id.
        pid: i32,
        /// Its start time (field 22 of `/proc/<pid>/stat`), read before it could be reaped.
        start_time_ticks: u64,
    },
    /// The server could not be started.
    SpawnFailed {
        /// The OS error number of the failure; 0 when it had none.
        errno: i32,
    },
    /// The server's processes are gone (or stuck) and the supervisor exits.
    Ended(TreeEnding),
}

impl fmt::Display for Report {
    /// The line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Started {
                pid,
                start_time_ticks,
            } => write!(f, "started {pid} {start_time_ticks}"),
            Report::SpawnFailed { errno } => write!(f, "spawn-failed {errno}"),
            Report::Ended(ending) => write!(f, "ended {}", ending.word()),
        }
    }
}

impl Report {
    /// Parses one line (with or without its newline); `None` for anything else.
    pub fn parse(line: &str) -> Option<Report> {
        let mut words = line.split_ascii_whitespace();
        let report = match (words.next()?, words.next(), words.next()) {
            ("started", Some(pid), Some(ticks)) => Report::Started {
                pid: pid.parse().ok().filter(|pid| *pid > 1)?,
                start_time_ticks: ticks.parse().ok()?,
            },
            ("spawn-failed", Some(errno), None) => Report::SpawnFailed {
                errno: errno.parse().ok()?,
            },
            ("ended", Some(word), None) => Report::Ended(TreeEnding::from_word(word)?),
            _ => return None,
        };
        words.next().is_none().then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_reads_back_as_written() {
        let reports = [
            Report::Started {
                pid: 4242,
                start_time_ticks: 987_654_321,
            },
            Report::SpawnFailed { errno: 2 },
            Report::SpawnFailed { errno: 0 },
            Report::Ended(TreeEnding::Exited),
            Report::Ended(TreeEnding::Terminated),
            Report::Ended(TreeEnding::Killed),
            Report::Ended(TreeEnding::Stuck),
        ];
        for report in reports {
            let line = format!("{report}\n");
            assert_eq!(Report::parse(&line), Some(report), "{line:?}");
        }
    }

    #[test]
    fn anything_else_is_not_a_report() {
        for line in [
            "",
            "\n",
            "started",
            "started 12",
            "started 1 5",
            "started -4 5",
            "started x 5",
            "started 12 5 6",
            "spawn-failed",
            "spawn-failed two",
            "ended",
            "ended well",
            "ended killed now",
            "Traceback (most recent call last):",
        ] {
            assert_eq!(Report::parse(line), None, "{line:?}");
        }
    }
}
