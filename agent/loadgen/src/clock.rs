//! The load generator's clock: monotonic nanoseconds since its first use in the process, the
//! one time base of every record, its conversion to tokio's timer, and waiting for an
//! instant to the microsecond.

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

/// Within this of its instant, a request task stops sleeping (tokio's timers round to whole
/// milliseconds) and yields to the runtime until the instant: other tasks keep running, and
/// the request leaves within microseconds of it.
const SPIN_NS: u64 = 1_500_000;

/// Waits until `at_ns` on the process clock, to the microsecond.
pub(crate) async fn until(at_ns: u64) {
    let now = now_ns();
    if at_ns > now + SPIN_NS {
        tokio::time::sleep(Duration::from_nanos(at_ns - now - SPIN_NS)).await;
    }
    while now_ns() < at_ns {
        tokio::task::yield_now().await;
    }
}
