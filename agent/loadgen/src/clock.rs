//! The load generator's clock: monotonic nanoseconds since its first use in the process, the
//! one time base of every record, and its conversion to tokio's timer.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds on the load generator's monotonic clock (since its first use in the process).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The tokio instant of `ns` on this clock (saturating far in the future or past).
pub(crate) fn to_tokio(ns: u64) -> tokio::time::Instant {
    let now = now_ns();
    let at = tokio::time::Instant::now();
    if ns >= now {
        // Far enough for any timeout, and never an `Instant` overflow.
        let far = Duration::from_secs(1 << 30);
        at.checked_add(Duration::from_nanos(ns - now).min(far))
            .unwrap_or(at)
    } else {
        at.checked_sub(Duration::from_nanos(now - ns)).unwrap_or(at)
    }
}
