//! The store's one source of time: every `*_ms` column the store writes comes from here.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in Unix milliseconds, injectable so tests (and lease expiry driven by
/// tokio's paused clock) can control it.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub(crate) fn system() -> Clock {
        Clock(Arc::new(system_now_ms))
    }

    /// A clock reading `now_ms` from a function.
    #[cfg_attr(not(test), expect(dead_code, reason = "lease work injects clocks"))]
    pub(crate) fn from_fn(now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now_ms))
    }

    /// Now, in Unix milliseconds.
    pub(crate) fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// `SystemTime::now()` in Unix milliseconds (0 for a clock set before 1970).
pub(crate) fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A store for tests whose clock reads the returned cell (Unix ms), starting at `start_ms`.
#[cfg(test)]
pub(crate) async fn store_with_test_clock(
    path: &std::path::Path,
    start_ms: i64,
) -> (super::Store, Arc<std::sync::atomic::AtomicI64>) {
    use std::sync::atomic::{AtomicI64, Ordering};
    let now = Arc::new(AtomicI64::new(start_ms));
    let reading = Arc::clone(&now);
    let store =
        super::Store::open_with_clock(path, Clock::from_fn(move || reading.load(Ordering::SeqCst)))
            .await
            .expect("open the test store");
    (store, now)
}
