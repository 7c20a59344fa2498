//! Whether the store can write: the writer thread records every write that failed for want
//! of storage (a full disk, an I/O error, a read-only file) and clears the record at the next
//! batch that commits without one. `evalctl status`, the gRPC health service and the
//! metrics read it, so a stalled store is visible instead of campaigns that merely stop.

use std::sync::{Mutex, PoisonError};

use rusqlite::ErrorCode;

/// What [`StoreHealth::snapshot`] tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// The last write attempted succeeded (or none failed yet).
    pub writable: bool,
    /// When writes started failing (ms since the epoch), while they fail.
    pub failing_since_ms: Option<i64>,
    /// The last storage error, while writes fail.
    pub last_error: Option<String>,
    /// Writes that failed for want of storage since the store opened.
    pub write_failures: u64,
}

#[derive(Debug, Default)]
struct State {
    failing_since_ms: Option<i64>,
    last_error: Option<String>,
    write_failures: u64,
}

/// The store's record of failed writes, shared by the writer thread and readers of it.
#[derive(Debug, Default)]
pub struct StoreHealth {
    state: Mutex<State>,
}

impl StoreHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write failed at `now_ms` for want of storage, with `error` (its chain in words).
    pub(crate) fn write_failed(&self, now_ms: i64, error: String) {
        let mut state = self.lock();
        if state.failing_since_ms.is_none() {
            tracing::error!(
                error = %error,
                "the store cannot write: campaigns stall until it can (hint: free disk space \
                 on the database's file system)"
            );
        }
        state.failing_since_ms.get_or_insert(now_ms);
        state.last_error = Some(error);
        state.write_failures += 1;
    }

    /// Writes failed so far (the writer compares before and after a batch).
    pub(crate) fn failures(&self) -> u64 {
        self.lock().write_failures
    }

    /// A batch committed with no storage failure: the store writes again.
    pub(crate) fn write_succeeded(&self) {
        let mut state = self.lock();
        if let Some(since) = state.failing_since_ms.take() {
            state.last_error = None;
            tracing::info!(failing_since_ms = since, "the store writes again");
        }
    }

    /// The current record.
    pub fn snapshot(&self) -> HealthSnapshot {
        let state = self.lock();
        HealthSnapshot {
            writable: state.failing_since_ms.is_none(),
            failing_since_ms: state.failing_since_ms,
            last_error: state.last_error.clone(),
            write_failures: state.write_failures,
        }
    }
}

/// Whether `error` (or an error in its source chain) is SQLite failing for want of storage:
/// the disk or the database's page limit is full, an I/O error, the file became read-only
/// or cannot be opened. Constraint violations and the like are the caller's, not storage's.
pub(crate) fn is_storage_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(err) = next {
        if let Some(sqlite) = err.downcast_ref::<rusqlite::Error>() {
            return matches!(
                sqlite.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::ReadOnly
                        | ErrorCode::CannotOpen
                )
            );
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_recorded_until_a_write_succeeds() {
        let health = StoreHealth::default();
        assert!(health.snapshot().writable);
        health.write_failed(1_000, "database or disk is full".into());
        health.write_failed(2_000, "database or disk is full".into());
        let failing = health.snapshot();
        assert!(!failing.writable);
        assert_eq!(
            failing.failing_since_ms,
            Some(1_000),
            "since the first failure"
        );
        assert_eq!(failing.write_failures, 2);
        health.write_succeeded();
        let back = health.snapshot();
        assert!(back.writable);
        assert_eq!(back.last_error, None);
        assert_eq!(back.write_failures, 2, "the count stays");
    }

    #[test]
    fn only_storage_errors_count() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(is_storage_failure(&full));
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        );
        assert!(!is_storage_failure(&constraint));
    }
}
