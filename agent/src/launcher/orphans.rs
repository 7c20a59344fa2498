//! Ending the server process groups a previous life of the agent left running.
//!
//! The agent records every server it starts (process group id + the group leader's start
//! time) in its state, and forgets it once stopped. After a crash, the records that remain
//! name groups that may still hold GPUs. A pid can be reused once its process is gone, so a
//! group is ended only when its leader still exists with the recorded start time: a reused
//! pid has a later start time and is left alone.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::group::{self, Ending, group_alive};
use super::procfs;

/// A started server, as recorded in the agent's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Process group id = pid of the server's main process (the group leader).
    pub pgid: i32,
    /// The leader's start time (field 22 of `/proc/<pid>/stat`, clock ticks after boot).
    pub start_time_ticks: u64,
    /// The launch command, shell-quoted.
    pub command: String,
    /// The server's log file.
    pub log_path: PathBuf,
    /// The unit it served.
    pub unit_id: String,
}

/// What [`end_orphans`] did about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanOutcome {
    /// Neither the leader nor any other live process of the group exists.
    Gone,
    /// The leader is gone but live processes still carry the group id. They cannot be told
    /// apart from a newer group that reuses the id, so they are left alone.
    LeaderGone {
        /// How many live processes carry the group id.
        members: usize,
    },
    /// A process has the leader's pid but started at another time: the pid was reused. Left
    /// alone.
    PidReused {
        /// That process's start time.
        start_time_ticks: u64,
    },
    /// The record cannot name a server group (pgid ≤ 1, or the agent's own group). Left alone.
    Invalid,
    /// The group exited within the grace after SIGTERM.
    Terminated,
    /// The group outlived the grace and was killed with SIGKILL.
    Killed,
    /// Processes of the group still ran a while after SIGKILL.
    Stuck,
}

impl OrphanOutcome {
    /// Whether the recorded server no longer runs (the record can be forgotten). False only
    /// for [`OrphanOutcome::Stuck`].
    pub fn is_settled(&self) -> bool {
        !matches!(self, OrphanOutcome::Stuck)
    }
}

/// Ends the process groups of `records`, all at once: for each, the group leader (pid ==
/// pgid) must still exist and have the recorded start time; then SIGTERM to the group, up to
/// `grace`, SIGKILL. Returns one outcome per record, in order.
pub async fn end_orphans(records: &[ServerRecord], grace: Duration) -> Vec<OrphanOutcome> {
    futures::future::join_all(records.iter().map(|record| end_orphan(record, grace))).await
}

/// The variable a launch puts in the server's environment: its token, unique per launch
/// (`state::LaunchIntent`). Children inherit it, so every process the launch started
/// carries it, whatever group it moved to.
pub const LAUNCH_TOKEN_ENV: &str = "EVALCTL_LAUNCH_TOKEN";

/// Ends what a launch started when the agent died before recording its process group: the
/// live processes whose environment carries `token` ([`LAUNCH_TOKEN_ENV`]). A group whose
/// leader carries the token is ended as a recorded server would be (SIGTERM, `grace`,
/// SIGKILL); any other carrier is killed on its own. An environment cannot be forged by a
/// reused pid, so nothing else is touched. Returns one outcome per group or process ended.
pub async fn end_launch(
    token: &str,
    command: &str,
    log_path: &std::path::Path,
    unit_id: &str,
    grace: Duration,
) -> Vec<OrphanOutcome> {
    let carriers = match procfs::processes_with_env(LAUNCH_TOKEN_ENV, token) {
        Ok(pids) => pids,
        Err(err) => {
            tracing::warn!(error = %err, "failed to scan /proc for a launch's processes");
            return Vec::new();
        }
    };
    let mut records = Vec::new();
    let mut loose = Vec::new();
    for &pid in &carriers {
        match procfs::stat(pid) {
            Ok(stat) if stat.pgrp == pid => records.push(ServerRecord {
                pgid: pid,
                start_time_ticks: stat.start_time_ticks,
                command: command.to_owned(),
                log_path: log_path.to_owned(),
                unit_id: unit_id.to_owned(),
            }),
            Ok(stat) if carriers.contains(&stat.pgrp) => {} // ended with its group
            Ok(_) => loose.push(pid),
            Err(_) => {} // gone meanwhile
        }
    }
    let mut outcomes = end_orphans(&records, grace).await;
    for pid in loose {
        let pid = nix::unistd::Pid::from_raw(pid);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
            tracing::info!(pid = pid.as_raw(), unit = %unit_id, command, "killed a process a previous agent launched");
            outcomes.push(OrphanOutcome::Killed);
        }
    }
    outcomes
}

async fn end_orphan(record: &ServerRecord, grace: Duration) -> OrphanOutcome {
    let pgid = record.pgid;
    let outcome = if pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw() {
        OrphanOutcome::Invalid
    } else {
        match procfs::stat(pgid) {
            Ok(stat) if stat.start_time_ticks != record.start_time_ticks => {
                OrphanOutcome::PidReused {
                    start_time_ticks: stat.start_time_ticks,
                }
            }
            // The leader itself, but dead (a zombie init has not reaped yet) and alone.
            Ok(_) if !group_alive(pgid) => OrphanOutcome::Gone,
            // The leader itself (alive, or a zombie that still pins the pid): the group is ours.
            Ok(_) => match group::end_group(pgid, grace, || !group_alive(pgid)).await {
                Ending::Terminated => OrphanOutcome::Terminated,
                Ending::Killed => OrphanOutcome::Killed,
                Ending::Stuck => OrphanOutcome::Stuck,
            },
            Err(_) => match procfs::live_members(pgid) {
                Ok(0) => OrphanOutcome::Gone,
                Ok(members) => OrphanOutcome::LeaderGone { members },
                Err(_) if group_alive(pgid) => OrphanOutcome::LeaderGone { members: 1 },
                Err(_) => OrphanOutcome::Gone,
            },
        }
    };
    match outcome {
        OrphanOutcome::Gone => {}
        OrphanOutcome::Terminated | OrphanOutcome::Killed => tracing::info!(
            pgid,
            unit = %record.unit_id,
            command = %record.command,
            ?outcome,
            "ended a server left running by a previous agent"
        ),
        _ => tracing::warn!(
            pgid,
            unit = %record.unit_id,
            command = %record.command,
            ?outcome,
            "left a recorded server process group alone"
        ),
    }
    outcome
}
