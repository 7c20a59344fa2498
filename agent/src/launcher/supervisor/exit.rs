//! The supervisor exits as its server did, so what the agent reports about the supervisor's
//! exit ("it exited (exit status: 3)", "signal: 9 (SIGKILL)") is true of the server.

use std::process::ExitCode;

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigSet, Signal, raise};
use nix::sys::wait::WaitStatus;

/// How the server's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(Signal),
}

impl ServerStatus {
    /// The pid and status of a process that ended; `None` for any other wait report.
    pub(crate) fn from_wait(status: WaitStatus) -> Option<(i32, ServerStatus)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ServerStatus::Code(code))),
            WaitStatus::Signaled(pid, signal, _) => {
                Some((pid.as_raw(), ServerStatus::Signal(signal)))
            }
            _ => None,
        }
    }

    /// The exit code that stands for this status when it cannot be mirrored exactly: the
    /// code itself, or 128 + the signal number (the shells' convention).
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            // Exit codes are 0–255 (the kernel keeps the low byte).
            ServerStatus::Code(code) => (code & 0xff) as u8,
            ServerStatus::Signal(signal) => 128u8.saturating_add(signal as i32 as u8),
        }
    }
}

/// Ends this process as the server ended. An exit code is returned for `main` to exit
/// with; for a signal, the supervisor kills itself with the same signal and does not return,
/// except when the signal cannot kill it (one it ignores, like SIGPIPE, which Rust ignores):
/// then it returns [`ServerStatus::exit_code`].
pub(crate) fn mirror(status: ServerStatus) -> ExitCode {
    if let ServerStatus::Signal(signal) = status {
        // No core file of the supervisor: the server's own, if it dumped one, is what counts.
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
        let mut set = SigSet::empty();
        set.add(signal);
        // Twice: Rust's runtime catches SIGSEGV and SIGBUS to report stack overflows, and its
        // handler restores the default action for one that is not, so the second kills.
        for _ in 0..2 {
            let _ = raise(signal);
            // SIGTERM, SIGINT and SIGHUP are blocked (the supervisor reads them from a
            // signalfd): the raised one is pending, and unblocking delivers it.
            let _ = set.thread_unblock();
        }
    }
    ExitCode::from(status.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    #[test]
    fn statuses_come_from_wait_reports_and_stand_for_exit_codes() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            ServerStatus::from_wait(WaitStatus::Exited(pid, 3)),
            Some((42, ServerStatus::Code(3)))
        );
        assert_eq!(
            ServerStatus::from_wait(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some((42, ServerStatus::Signal(Signal::SIGKILL)))
        );
        assert_eq!(ServerStatus::from_wait(WaitStatus::StillAlive), None);
        assert_eq!(
            ServerStatus::from_wait(WaitStatus::Stopped(pid, Signal::SIGSTOP)),
            None
        );
        assert_eq!(ServerStatus::Code(0).exit_code(), 0);
        assert_eq!(ServerStatus::Code(3).exit_code(), 3);
        assert_eq!(ServerStatus::Code(255).exit_code(), 255);
        assert_eq!(ServerStatus::Signal(Signal::SIGKILL).exit_code(), 137);
        assert_eq!(ServerStatus::Signal(Signal::SIGTERM).exit_code(), 143);
        assert_eq!(ServerStatus::Signal(Signal::SIGPIPE).exit_code(), 141);
    }
}
