//! The coordinator's store: campaigns, units, steps, results, agents, leases and the audit
//! log in one SQLite database. All SQL of the coordinator lives in this module, so another
//! database can replace SQLite without touching the scheduler or the services.
//!
//! Architecture (after effectum):
//! - `writer`: one thread owns the read-write connection; every write is an operation sent
//!   to it over a channel. Queued operations share one transaction, a savepoint each, and are
//!   answered after the commit. The writer also checkpoints the WAL, after answering.
//! - `readers`: a few read-only connections used on tokio's blocking pool; WAL lets them
//!   read while the writer writes. Each read is one snapshot.
//! - `migrations`: numbered `.sql` files, versioned by `PRAGMA user_version`; the first one
//!   explains the schema's conventions (integer keys, configuration parts stored once).
//! - `connection`: the pragmas (WAL, `synchronous = NORMAL`, foreign keys, busy timeout)
//!   and why a returned write survives `kill -9`.
//! - `submit` (encoding an expansion while the writer inserts it), `campaigns` (cancel,
//!   retry, status reads), `specs` (configuration parts), `audit`: the SQL of each
//!   concern; `rows`: what reads return; `clock`: the one source of `*_ms` times.
//!
//! Adding an operation (leases, results, agents): write a function taking `&Connection`
//! (and `now_ms` for writes) next to the others, and call it through `Store::write` or
//! `Store::read`. Writes record who did what with `audit::append` where an operator
//! acted. Rows refer to campaigns and units by `campaign_key` / `unit_key`;
//! `campaigns::campaign_key` maps a public [`CampaignId`] to its key.
//!
//! Resubmission (same campaign name) extends a campaign and never loses work:
//! - existing units keep their state, attempts, epoch and results; existing steps keep their
//!   state and position; units and steps that are new are added;
//! - a unit the new expansion no longer has is kept, state and results included: results
//!   are never deleted, and `compare`/`report` still see what ran (it is not counted in
//!   [`SubmitOutcome::units_kept`], which counts units of the new expansion);
//! - two moves back to `pending`, so that the new work runs: a `succeeded` unit that gains
//!   steps (its finished steps stay succeeded; the agent resumes at the first pending step),
//!   and a `cancelled` unit (with its cancelled steps): a resubmission un-cancels the
//!   campaign. `failed` units stay failed; [`Store::retry_failed`] is how they run again.
//!
//! Invariant: a cancelled campaign has no pending or leased units (cancel moves them all;
//! resubmit and retry clear the cancellation when they make units pending), so the scheduler
//! can select runnable work by unit state alone.

mod audit;
mod campaigns;
mod clock;
mod connection;
mod error;
mod migrations;
mod readers;
mod rows;
mod specs;
mod submit;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use self::clock::Clock;
pub use self::error::StoreError;
use self::readers::ReaderPool;
pub use self::rows::{
    AuditEntry, CampaignInfo, CampaignState, StateCounts, StepRow, StepState, SubmitOutcome,
    UnitRow, UnitState, UnknownState,
};
use self::writer::Command;
use crate::domain::{CampaignId, Dropped, Expansion, UnitId};

/// Where the answer of a queued write arrives.
type Reply<T> = oneshot::Receiver<Result<T, StoreError>>;

/// Handle to the store. Cheap to clone; every clone talks to the same writer thread and
/// reader pool. The writer stops, and the database closes, when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `Some` until drop, which closes the channel to stop the writer.
    tx: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<ReaderPool>,
    #[cfg(test)]
    stats: Arc<writer::Stats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.readers.close_idle();
        self.tx.take();
        // The writer finishes what is queued (writes whose callers gave up waiting) and
        // closes its connection; joining makes "dropped" mean "closed" for a reopen. (Not
        // when the last handle goes away inside a write, on the writer thread itself.)
        if let Some(handle) = self.writer.take()
            && handle.thread().id() != std::thread::current().id()
            && handle.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Expansions at least this large are encoded with `block_in_place` on a multi-threaded
/// runtime, so other tasks move off the worker meanwhile.
const LARGE_SUBMIT_UNITS: usize = 1_000;

impl Store {
    /// Opens the database at `path`, creating it and its parent directories if needed, and
    /// migrates it to the current schema.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_clock(path, Clock::system()).await
    }

    /// [`Store::open`] with the clock that stamps every `*_ms` column.
    pub(crate) async fn open_with_clock(path: &Path, clock: Clock) -> Result<Store, StoreError> {
        let path = path.to_owned();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: parent.to_owned(),
                    source,
                })?;
        }
        let writer_path = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let mut conn = connection::open_writer(&writer_path)?;
            migrations::migrate(&mut conn)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .map_err(|source| StoreError::BlockingTask { source })??;

        let (tx, rx) = mpsc::channel(writer::QUEUE);
        #[cfg(test)]
        let stats = Arc::new(writer::Stats::default());
        #[cfg(test)]
        let writer_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                writer::run(
                    conn,
                    rx,
                    clock,
                    #[cfg(test)]
                    writer_stats,
                )
            })
            .map_err(|source| StoreError::SpawnWriter { source })?;
        tracing::info!(path = %path.display(), "store open");
        Ok(Store {
            inner: Arc::new(Inner {
                readers: ReaderPool::new(path.clone()),
                path,
                tx: Some(tx),
                writer: Some(handle),
                #[cfg(test)]
                stats,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Inserts or extends a campaign.
    ///
    /// Resubmitting (same campaign name) keeps every existing unit, step and result, adds
    /// the units and steps that are new, updates priority, max attempts, description and
    /// source YAML, and replaces the dropped list. A succeeded unit that gains steps and a
    /// cancelled unit go back to pending, and a cancelled campaign is no longer cancelled;
    /// units missing from the new expansion are kept as they are (see the module docs).
    /// Appends a `submit` or `resubmit` audit entry.
    pub async fn submit(
        &self,
        expansion: &Expansion,
        source_yaml: &str,
        actor: &str,
    ) -> Result<SubmitOutcome, StoreError> {
        let header = submit::Header::new(expansion, source_yaml, actor);
        let (pieces, received) = std::sync::mpsc::channel();
        let reply = self
            .queue_write(move |conn, now_ms| submit::submit(conn, now_ms, &header, &received))
            .await?;
        // Encoding overlaps the writer's inserts: it takes the chunks as they come.
        let encode = || submit::encode(expansion, &pieces);
        let encoded = if expansion.units.len() >= LARGE_SUBMIT_UNITS {
            cpu_bound(encode)
        } else {
            encode()
        };
        // Without `Piece::Done` (an encoding error) the writer rolls the submission back.
        drop(pieces);
        encoded?;
        let outcome = reply.await.map_err(|_| StoreError::WriterStopped)??;
        tracing::info!(
            campaign = %expansion.campaign.name,
            campaign_id = %outcome.campaign_id,
            created = outcome.created,
            units_added = outcome.units_added,
            steps_added = outcome.steps_added,
            "campaign submitted"
        );
        Ok(outcome)
    }

    /// Every campaign with its counts, newest first.
    pub async fn list_campaigns(&self) -> Result<Vec<CampaignInfo>, StoreError> {
        self.read(campaigns::list).await
    }

    /// The campaign with this id, or else with this name.
    pub async fn campaign(&self, name_or_id: &str) -> Result<Option<CampaignInfo>, StoreError> {
        let name_or_id = name_or_id.to_owned();
        self.read(move |conn| campaigns::find(conn, &name_or_id))
            .await
    }

    /// What the latest expansion of the campaign dropped, in expansion order.
    pub async fn dropped(&self, campaign: &CampaignId) -> Result<Vec<Dropped>, StoreError> {
        let campaign = campaign.clone();
        self.read(move |conn| campaigns::dropped(conn, &campaign))
            .await
    }

    /// The campaign's units, in the order they were first submitted (empty for an unknown
    /// campaign).
    pub async fn units(&self, campaign: &CampaignId) -> Result<Vec<UnitRow>, StoreError> {
        let campaign = campaign.clone();
        self.read(move |conn| campaigns::units(conn, &campaign, None))
            .await
    }

    /// The campaign's units in one state, in the same order as [`Store::units`]; cheap for
    /// a large campaign when few units are in that state (e.g. the leased ones).
    pub async fn units_in_state(
        &self,
        campaign: &CampaignId,
        state: UnitState,
    ) -> Result<Vec<UnitRow>, StoreError> {
        let campaign = campaign.clone();
        self.read(move |conn| campaigns::units(conn, &campaign, Some(state)))
            .await
    }

    /// The unit's steps in run order (empty for an unknown unit).
    pub async fn unit_steps(
        &self,
        campaign: &CampaignId,
        unit: &UnitId,
    ) -> Result<Vec<StepRow>, StoreError> {
        let (campaign, unit) = (campaign.clone(), unit.clone());
        self.read(move |conn| campaigns::unit_steps(conn, &campaign, &unit))
            .await
    }

    /// Cancels a campaign: its pending and leased units become cancelled, their pending
    /// steps too, and its live leases end (reason `cancelled`; agents learn it from their
    /// next heartbeat). Succeeded and failed units keep their state. Returns how many units
    /// were cancelled; an unknown id changes nothing and returns 0. Appends a `cancel`
    /// audit entry (also when nothing was left to cancel).
    pub async fn cancel(
        &self,
        campaign: &CampaignId,
        actor: &str,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let (campaign, actor, reason) = (campaign.clone(), actor.to_owned(), reason.to_owned());
        self.write(move |conn, now_ms| campaigns::cancel(conn, now_ms, &campaign, &actor, &reason))
            .await
    }

    /// Sends the campaign's failed units back to the queue: state pending, attempts (own and
    /// infrastructure) reset to 0, their failed steps pending; `last_error` and results are
    /// kept. If any unit was retried, a cancelled campaign is no longer cancelled. Returns
    /// how many units were retried; an unknown id changes nothing and returns 0. Appends a
    /// `retry_failed` audit entry.
    pub async fn retry_failed(
        &self,
        campaign: &CampaignId,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let (campaign, actor) = (campaign.clone(), actor.to_owned());
        self.write(move |conn, now_ms| campaigns::retry_failed(conn, now_ms, &campaign, &actor))
            .await
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| audit::recent(conn, limit)).await
    }

    /// Copies the WAL into the database file and truncates it (`wal_checkpoint(TRUNCATE)`),
    /// after the writes queued before it. Call at shutdown; a checkpoint that readers keep
    /// from finishing logs a warning and still returns `Ok`.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()
            .send(Command::Checkpoint(reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Runs `f` on the writer thread inside a transaction, under its own savepoint, with the
    /// store clock's `now_ms`. If `f` fails, its changes are rolled back and the error is
    /// returned; other writes of the same batch are unaffected. Returns after the commit.
    ///
    /// Once sent, the write happens even if the returned future is dropped.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let reply = self.queue_write(f).await?;
        reply.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Queues a write like [`Store::write`] and returns where its answer will arrive.
    async fn queue_write<T, F>(&self, f: F) -> Result<Reply<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, reply) = writer::job(Box::new(f));
        self.sender()
            .send(Command::Write(job))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(reply)
    }

    /// Runs `f` on a read-only connection inside one read transaction (one snapshot).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.readers.read(f).await
    }

    fn sender(&self) -> &mpsc::Sender<Command> {
        self.inner
            .tx
            .as_ref()
            .expect("the writer channel lives as long as the store")
    }
}

/// Runs CPU-bound work, telling a multi-threaded runtime to move other tasks off this
/// worker meanwhile.
fn cpu_bound<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests;
