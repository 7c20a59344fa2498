//! Process groups: whether one still runs, signalling all of it, and ending it — SIGTERM, a
//! grace period, then SIGKILL.
//!
//! Every server runs in its own group (its pid is the group id), so the workers a framework
//! forks (vLLM's engine and tensor-parallel workers, a shell's children) go with it.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp};

use super::procfs;

/// How often a stopping group is checked.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// How long processes get to disappear after SIGKILL before the launcher gives up on them.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);

/// True while any live process of group `pgid` exists: `kill(-pgid, 0)` finds the group, and
/// `/proc` shows a member that is not a zombie. Zombies count as gone: they run nothing and
/// hold no memory, and a container's init may take its time to reap the ones reparented to it.
/// Never true for a pgid ≤ 1, which would name every process or none.
pub fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    match killpg(Pid::from_raw(pgid), None) {
        Err(Errno::ESRCH) => false,
        // EPERM: the group exists but belongs to another user; it is alive all the same.
        Ok(()) | Err(_) => procfs::live_members(pgid).map_or(true, |live| live > 0),
    }
}

/// Sends `signal` to every process of group `pgid`. Refuses (returns false) for a pgid ≤ 1
/// and for the agent's own group; a group that no longer exists is not an error.
pub(crate) fn signal_group(pgid: i32, signal: Signal) -> bool {
    if pgid <= 1 || pgid == getpgrp().as_raw() {
        tracing::warn!(pgid, %signal, "refusing to signal this process group");
        return false;
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => true,
        Err(errno) => {
            tracing::warn!(pgid, %signal, error = %errno, "failed to signal the process group");
            false
        }
    }
}

/// Polls `done` every [`POLL`] until it returns true (→ true) or `limit` has passed (→ false).
pub(crate) async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How [`end_group`] ended a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Gone within the grace after SIGTERM.
    Terminated,
    /// Gone after SIGKILL.
    Killed,
    /// Still there [`KILL_WAIT`] after SIGKILL (a process in uninterruptible sleep).
    Stuck,
}

/// SIGTERM to the group, up to `grace` for `gone` to become true, then SIGKILL and up to
/// [`KILL_WAIT`] more. `gone` is the caller's test (the group is dead, and for a child of
/// ours, reaped).
pub(crate) async fn end_group(
    pgid: i32,
    grace: Duration,
    mut gone: impl FnMut() -> bool,
) -> Ending {
    signal_group(pgid, Signal::SIGTERM);
    if wait_until(grace, &mut gone).await {
        return Ending::Terminated;
    }
    tracing::warn!(
        pgid,
        grace = %humantime::format_duration(grace),
        "server process group outlived its stop grace; sending SIGKILL"
    );
    signal_group(pgid, Signal::SIGKILL);
    if wait_until(KILL_WAIT, &mut gone).await {
        Ending::Killed
    } else {
        tracing::warn!(pgid, "server process group still runs after SIGKILL");
        Ending::Stuck
    }
}
