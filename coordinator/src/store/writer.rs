//! The single writer: one thread owns the read-write connection and applies every write.
//!
//! Callers send operations over a channel. The thread takes whatever is queued (up to
//! [`MAX_BATCH`]) and runs it as one transaction with a savepoint per operation: an
//! operation that fails is rolled back to its savepoint and answered with its error, the
//! others commit together. Answers go out on oneshot channels only after `COMMIT` returned,
//! so a caller that got `Ok` knows its write is in the WAL (see
//! [`open_writer`](super::connection::open_writer) for what that survives).
//!
//! One writer means no `SQLITE_BUSY` between writers and one fsync-free commit for many
//! operations: under load, batches grow by themselves.

use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::clock::Clock;
use super::error::{SqlContext as _, StoreError};
use super::health::{StoreHealth, is_storage_failure};

/// Most operations in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Operations waiting in the channel before senders wait.
pub(crate) const QUEUE: usize = 4096;

/// Least time between two WAL checkpoints of the writer.
///
/// SQLite's automatic checkpoint (every 1,000 WAL pages) runs inside `COMMIT`, so the write
/// that crosses the threshold waits for it: copying a large batch into the database file
/// and two fsyncs took longer than inserting a 100,000-unit campaign. The writer turns it
/// off and checkpoints itself after answering a batch, at most this often. Checkpointing
/// on the writer thread (not a thread of its own) means no commit lands while a checkpoint
/// runs, so each one can finish and let the WAL restart from its beginning.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// A write: runs on the writer's connection inside the batch transaction, under its own
/// savepoint, with the batch's `now_ms`.
pub(crate) type WriteFn<T> = Box<dyn FnOnce(&Connection, i64) -> Result<T, StoreError> + Send>;

/// What the writer thread receives.
pub(crate) enum Command {
    /// A write operation.
    Write(Box<dyn Job>),
    /// `PRAGMA wal_checkpoint(TRUNCATE)`, outside any transaction.
    Checkpoint(oneshot::Sender<Result<(), StoreError>>),
}

/// A type-erased write operation and its answer.
pub(crate) trait Job: Send {
    /// Runs the operation; returns whether it succeeded (else its savepoint is rolled back).
    /// A failure for want of storage is recorded in `health`.
    fn run(&mut self, conn: &Connection, now_ms: i64, health: &StoreHealth) -> bool;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), Arc<rusqlite::Error>>);
}

/// A write with its reply channel.
pub(crate) struct Op<T> {
    f: Option<WriteFn<T>>,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

/// Wraps the write `f` as a job for the writer; its answer arrives on the receiver.
pub(crate) fn job<T: Send + 'static>(
    f: WriteFn<T>,
) -> (Box<dyn Job>, oneshot::Receiver<Result<T, StoreError>>) {
    let (reply, rx) = oneshot::channel();
    let op = Op {
        f: Some(f),
        out: None,
        reply,
    };
    (Box::new(op), rx)
}

impl<T: Send> Job for Op<T> {
    fn run(&mut self, conn: &Connection, now_ms: i64, health: &StoreHealth) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = f(conn, now_ms);
        if let Err(err) = &out
            && is_storage_failure(err)
        {
            health.write_failed(now_ms, evalctl_common::error_chain(err));
        }
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), Arc<rusqlite::Error>>) {
        let answer = match (self.out, commit) {
            // Its own failure is the answer whatever became of the batch.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(source)) | (None, Err(source)) => Err(StoreError::Commit { source }),
            (Some(Ok(value)), Ok(())) => Ok(value),
            // Never ran: the batch failed before reaching it.
            (None, Ok(())) => Err(StoreError::WriterStopped),
        };
        // The caller may have given up waiting; the write stands either way.
        let _ = self.reply.send(answer);
    }
}

/// Counters a test reads to see batching happen.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub batches: AtomicUsize,
    pub largest_batch: AtomicUsize,
}

/// The writer thread's loop: runs until every sender is dropped, then closes the connection
/// (which checkpoints the WAL when it is the last connection).
pub(crate) fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    clock: Clock,
    health: Arc<StoreHealth>,
    #[cfg(test)] stats: Arc<Stats>,
) {
    let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut checkpoints = Vec::new();
    let mut last_checkpoint = Instant::now();
    let mut wal_dirty = false;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Write(job) => jobs.push(job),
                Command::Checkpoint(reply) => checkpoints.push(reply),
            }
            if jobs.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            #[cfg(test)]
            {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.largest_batch.fetch_max(jobs.len(), Ordering::Relaxed);
            }
            wal_dirty |= run_batch(&conn, &mut jobs, clock.now_ms(), &health);
        }
        if !checkpoints.is_empty() {
            for reply in checkpoints.drain(..) {
                let _ = reply.send(checkpoint(&conn, "TRUNCATE"));
            }
            (last_checkpoint, wal_dirty) = (Instant::now(), false);
        } else if wal_dirty && last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            if let Err(e) = checkpoint(&conn, "PASSIVE") {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
            (last_checkpoint, wal_dirty) = (Instant::now(), false);
        }
    }
    tracing::debug!("store writer stopped");
}

/// Runs `jobs` in one transaction, a savepoint each, and answers them all. Returns whether
/// the batch committed. A batch that committed with no failure for want of storage tells
/// `health` the store writes.
fn run_batch(
    conn: &Connection,
    jobs: &mut Vec<Box<dyn Job>>,
    now_ms: i64,
    health: &StoreHealth,
) -> bool {
    let failures_before = health.failures();
    let outcome = (|| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for job in jobs.iter_mut() {
            exec(conn, "SAVEPOINT op")?;
            if job.run(conn, now_ms, health) {
                exec(conn, "RELEASE op")?;
            } else {
                exec(conn, "ROLLBACK TO op")?;
                exec(conn, "RELEASE op")?;
            }
        }
        // The durability point: once COMMIT returns, the batch is in the WAL.
        exec(conn, "COMMIT")
    })();
    let commit = match outcome {
        Ok(()) => {
            if health.failures() == failures_before {
                health.write_succeeded();
            }
            Ok(())
        }
        Err(e) => {
            if is_storage_failure(&e) {
                health.write_failed(now_ms, e.to_string());
            }
            tracing::error!(error = %e, ops = jobs.len(), "store write batch failed");
            if !conn.is_autocommit()
                && let Err(rollback) = conn.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %rollback, "failed to roll back a write batch");
            }
            Err(Arc::new(e))
        }
    };
    let committed = commit.is_ok();
    for job in jobs.drain(..) {
        job.finish(commit.clone());
    }
    committed
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Copies the WAL into the database; `mode` is `PASSIVE` (what it can without waiting) or
/// `TRUNCATE` (waits for readers, then empties the WAL file).
fn checkpoint(conn: &Connection, mode: &str) -> Result<(), StoreError> {
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .sql("checkpoint the WAL")?;
    if busy != 0 {
        tracing::warn!(
            wal_frames = log,
            checkpointed = done,
            "WAL checkpoint incomplete: readers were active"
        );
    }
    Ok(())
}
