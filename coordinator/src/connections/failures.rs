//! Logs connection-level failures (refused connections, failed or timed-out TLS
//! handshakes) without letting a flood of them flood the log: the first of each kind is
//! logged at once, later ones at most once per interval, with how many were held back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

/// Shortest time between two log lines of one kind.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Kind {
    last_logged: Instant,
    held_back: u64,
}

/// The rate-limited log of connection failures.
#[derive(Debug)]
pub struct FailureLog {
    interval: Duration,
    kinds: Mutex<HashMap<&'static str, Kind>>,
}

impl Default for FailureLog {
    fn default() -> FailureLog {
        FailureLog::new(LOG_INTERVAL)
    }
}

impl FailureLog {
    /// A log that writes one line per kind per `interval` at most.
    pub fn new(interval: Duration) -> FailureLog {
        FailureLog {
            interval,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Logs a failure of `kind` (a short stable name, e.g. `tls_handshake`) from `peer`
    /// with `detail`, unless one of its kind was logged less than the interval ago.
    /// Returns whether it was logged.
    pub fn failed(&self, kind: &'static str, peer: SocketAddr, detail: &str) -> bool {
        let Some(held_back) = self.admit(kind, Instant::now()) else {
            return false;
        };
        warn!(
            kind,
            peer = %peer,
            held_back,
            "connection failed: {detail}"
        );
        true
    }

    /// `Some(count held back since the last line)` when a line of `kind` may be written at
    /// `now`.
    fn admit(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        match kinds.get_mut(kind) {
            Some(entry) if now.duration_since(entry.last_logged) < self.interval => {
                entry.held_back += 1;
                None
            }
            Some(entry) => {
                entry.last_logged = now;
                Some(std::mem::take(&mut entry.held_back))
            }
            None => {
                kinds.insert(
                    kind,
                    Kind {
                        last_logged: now,
                        held_back: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_held_back() {
        let log = FailureLog::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.admit("tls_handshake", start), Some(0));
        assert_eq!(log.admit("tls_handshake", start), None);
        assert_eq!(log.admit("tls_handshake", start), None);
        assert_eq!(log.admit("refused", start), Some(0), "kinds are apart");
        let later = start + Duration::from_secs(11);
        assert_eq!(log.admit("tls_handshake", later), Some(2));
        assert_eq!(log.admit("tls_handshake", later), None);
    }
}
