//! Ending the server's whole process tree: every live descendant of the supervisor, which
//! as child subreaper also inherits the processes that left the server's group or session
//! (`setsid`, a double fork). SIGTERM, the grace, SIGKILL; the tree is scanned again on
//! every round, so processes forked meanwhile are found too, until none is left.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::exit::ServerStatus;
use super::report::TreeEnding;
use crate::launcher::group::{KILL_WAIT, POLL};
use crate::launcher::procfs;

/// The server's main process, as its supervisor knows it.
#[derive(Debug)]
pub(crate) struct Server {
    /// Its pid, which is also its process group id.
    pub pid: i32,
    /// How it ended, once reaped.
    pub status: Option<ServerStatus>,
}

impl Server {
    /// Reaps every child that has ended — the server, and the orphans the kernel gave the
    /// supervisor as their subreaper — and notes the server's status.
    pub(crate) fn reap(&mut self) {
        // `None` waits for any child; an error (ECHILD: no child left) ends the loop.
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
            if let Some((pid, ended)) = ServerStatus::from_wait(status)
                && pid == self.pid
            {
                self.status = Some(ended);
            }
        }
    }

    /// Signals the server's process group at once (as a terminal would), while the server
    /// is not reaped: until then no other group can have its id.
    fn signal_group(&self, signal: Signal) {
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }
}

/// Ends every live descendant of `root` (the supervisor's own pid): SIGTERM to the server's
/// group and, once, to each other descendant (a second SIGTERM could cut a graceful
/// shutdown short), up to `grace` for all of them to go; then SIGKILL, repeated on each
/// round, up to [`KILL_WAIT`]. Children are reaped throughout. `note` gets a line for the
/// server's log when SIGKILL is needed or something is stuck.
pub(crate) fn end(
    root: i32,
    server: &mut Server,
    grace: Duration,
    note: impl Fn(&str),
) -> TreeEnding {
    server.reap();
    let Some(mut live) = scan(root, &note) else {
        server.signal_group(Signal::SIGKILL);
        return TreeEnding::Stuck;
    };
    if live.is_empty() {
        return TreeEnding::Exited;
    }
    // The group gets one SIGTERM, all at once; the processes outside it one each below.
    let group_signalled = server.status.is_none();
    server.signal_group(Signal::SIGTERM);
    let mut termed: HashSet<i32> = live
        .iter()
        .filter(|(_, pgrp)| group_signalled && *pgrp == server.pid)
        .map(|(pid, _)| *pid)
        .collect();
    let deadline = Instant::now() + grace;
    loop {
        for &(pid, _) in &live {
            if termed.insert(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        std::thread::sleep(POLL);
        server.reap();
        let Some(now_live) = scan(root, &note) else {
            server.signal_group(Signal::SIGKILL);
            return TreeEnding::Stuck;
        };
        live = now_live;
        if live.is_empty() {
            return TreeEnding::Terminated;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    note(&format!(
        "{} process(es) of the server outlived the {} grace; sending SIGKILL",
        live.len(),
        humantime::format_duration(grace)
    ));
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        server.signal_group(Signal::SIGKILL);
        for &(pid, _) in &live {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(POLL);
        server.reap();
        let Some(now_live) = scan(root, &note) else {
            return TreeEnding::Stuck;
        };
        live = now_live;
        if live.is_empty() {
            return TreeEnding::Killed;
        }
        if Instant::now() >= deadline {
            let pids: Vec<String> = live.iter().map(|(pid, _)| pid.to_string()).collect();
            note(&format!(
                "processes {} still run {} after SIGKILL (uninterruptible sleep?); leaving them",
                pids.join(", "),
                humantime::format_duration(KILL_WAIT)
            ));
            return TreeEnding::Stuck;
        }
    }
}

/// The live tree, or `None` (noted) when `/proc` cannot be read: then nothing can be said
/// about what still runs.
fn scan(root: i32, note: &impl Fn(&str)) -> Option<Vec<(i32, i32)>> {
    match procfs::live_descendants(root) {
        Ok(live) => Some(live),
        Err(err) => {
            note(&format!(
                "failed to scan /proc for the server's processes: {err}"
            ));
            None
        }
    }
}
