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
//!   retry, status reads), `specs` (configuration parts), `agents` (registration,
//!   heartbeats, drain), `placement` (choosing the unit for an agent: matching, ranking,
//!   warm preference), `leases` (granting it, fencing, how leases end), `results`
//!   (storing batches exactly once, reading results), `schedules` (schedules, their firings
//!   claimed exactly once, the series' running campaign), `audit`: the SQL of each concern;
//!   `rows`: what reads return; `clock`: the one source of `*_ms` times.
//!
//! Adding an operation: write a function taking `&Connection` (and `now_ms` for writes)
//! next to the others of its concern, and call it through `Store::write` or
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
//! Leases (docs/leases.md): a unit is leased with its epoch (fencing token) one higher
//! each time; every write of a lease holder is guarded by lease and epoch in its `WHERE`;
//! a unit leaves `leased` only together with its live lease (complete, fail, release,
//! expiry, cancel), so a live lease always carries its unit's current epoch.
//!
//! Invariant: a cancelled campaign has no pending or leased units (cancel moves them all;
//! resubmit and retry clear the cancellation when they make units pending), so the scheduler
//! can select runnable work by unit state alone.

mod agents;
mod audit;
mod campaigns;
mod clock;
mod connection;
mod error;
mod faults;
pub mod health;
mod leases;
mod migrations;
pub mod notify;
mod placement;
mod probes;
mod readers;
mod results;
mod rows;
pub mod schedules;
pub mod series;
mod specs;
mod submit;
mod tokens;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

pub use self::audit::{AuditFilter, AuditPage};
pub(crate) use self::clock::Clock;
#[cfg(test)]
pub(crate) use self::clock::store_with_test_clock;
use self::error::SqlContext as _;
pub use self::error::StoreError;
pub use self::health::HealthSnapshot;
use self::health::StoreHealth;
pub use self::leases::MAX_INFRA_ATTEMPTS;
use self::readers::ReaderPool;
pub use self::rows::{
    AgentFault, AgentRow, AgentState, AuditEntry, BatchOutcome, CampaignInfo, CampaignState,
    ExpiredLease, FailOutcome, FailureKind, GrantedLease, HeartbeatReply, HistoryRow, LeaseEnd,
    Reaction, Registered, ReleaseOutcome, StateCounts, StepRow, StepState, StoredProbeRun,
    StoredResult, StoredStep, SubmitOutcome, UnitRef, UnitRow, UnitState, UnknownState,
};
pub use self::schedules::{
    CatchUp, FiringOutcome, FiringRow, NewFiring, Overlap, ScheduleFields, ScheduleRow,
};
pub use self::tokens::{AuthToken, TokenRow, TokenTable};
use self::writer::Command;
use crate::domain::{
    AgentId, AgentRegistration, CampaignId, Dropped, Expansion, LeaseId, LeaseRequest,
    ReleaseReason, ResultBatch, UnitId,
};

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
    /// The writer's clock, for heartbeats answered from a read.
    clock: Clock,
    /// Heartbeats answered from a read, waiting to be written.
    renewals: Arc<agents::Renewals>,
    /// Whether writes fail for want of storage.
    health: Arc<StoreHealth>,
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
            migrations::SCHEMA.migrate(&mut conn)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .map_err(|source| StoreError::BlockingTask { source })??;

        let writer_clock = clock.clone();
        let health = Arc::new(StoreHealth::default());
        let writer_health = Arc::clone(&health);
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
                    writer_clock,
                    writer_health,
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
                clock,
                renewals: Arc::default(),
                health,
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

    /// Whether the store can write (see [`health`]).
    pub fn health(&self) -> HealthSnapshot {
        self.inner.health.snapshot()
    }

    /// Caps the database at its current size plus `extra_pages` pages (SQLite's
    /// `max_page_count`), so that writes past it fail with `SQLITE_FULL` as on a full disk;
    /// `None` lifts the cap. For drills and tests of what a full disk looks like.
    #[doc(hidden)]
    pub async fn limit_pages(&self, extra_pages: Option<u64>) -> Result<(), StoreError> {
        self.write(move |conn, _| {
            let pages: u64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .sql("read the page count")?;
            let max = extra_pages.map_or(4_294_967_294, |extra| pages + extra);
            conn.query_row(&format!("PRAGMA max_page_count = {max}"), [], |r| {
                r.get::<_, u64>(0)
            })
            .sql("set max_page_count")?;
            Ok(())
        })
        .await
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

    // ---- agents and leases ----

    /// Registers an agent, or updates what it reports (hostname, GPUs, labels,
    /// frameworks, versions) when it registers again.
    ///
    /// Registering again is what a restarted agent does: its live leases are kept (it
    /// resumes them through heartbeats, or they expire), a drain an operator asked for is
    /// kept, and a drain the agent announced itself is cleared.
    pub async fn register_agent(
        &self,
        agent: &AgentRegistration,
    ) -> Result<Registered, StoreError> {
        let agent = agent.clone();
        self.write(move |conn, now_ms| agents::register(conn, now_ms, &agent))
            .await
    }

    /// Picks the best runnable unit for the agent and leases it to the agent for `ttl`,
    /// in one write transaction; `None` when nothing fits (or the agent is draining).
    ///
    /// Runnable: a pending unit. It fits when
    /// - a GPU unit: the agent registered `count` GPUs of the unit's type (ignoring case)
    ///   that are in `free_gpu_indices` and not held by the agent's own live leases; the
    ///   lowest such indices are assigned;
    /// - a CPU unit (`gpu_type` `cpu`): `cpu_slots_free > 0`; no GPU is assigned;
    /// - every label of the unit is one of the agent's labels, and the agent lists the
    ///   unit's framework (or lists none).
    ///
    /// Preference: a unit whose id is in `warm_configs`, then the higher campaign
    /// priority; within it a configuration not running elsewhere, then the longest
    /// estimated steps (`params_b / √gpus`), the most GPUs, the older campaign and the
    /// unit's position in its campaign (docs/leases.md).
    ///
    /// The grant makes the unit leased, adds one to its epoch, creates the lease (a UUID)
    /// and opens the unit's attempt in its history. Fails with
    /// [`StoreError::AgentNotFound`] for an agent that never registered.
    pub async fn acquire_lease(
        &self,
        request: &LeaseRequest,
        ttl: Duration,
    ) -> Result<Option<GrantedLease>, StoreError> {
        let request = request.clone();
        self.write(move |conn, now_ms| leases::acquire(conn, now_ms, &request, ttl))
            .await
    }

    /// Records a heartbeat of `agent`: its last-heartbeat time, whether it is draining
    /// itself (a lost agent becomes active or draining again), and renews each reported
    /// `(lease, epoch)` that is live, the agent's own and at that epoch, to `now + ttl`
    /// (never shortening it). Every other reported lease is revoked in the reply (ended,
    /// expired, re-leased, cancelled or unknown); the agent's leases it did not report are
    /// left alone. The reply also says whether an operator drained the agent.
    ///
    /// A heartbeat that would change nothing but times is answered from a read snapshot and
    /// its times are written in a batch with others (`agents::Renewals`): within a second
    /// while heartbeats flow, and always before an expiry sweep or lost-agent check.
    pub async fn heartbeat(
        &self,
        agent: &AgentId,
        leases: &[(LeaseId, u64)],
        draining: bool,
        ttl: Duration,
    ) -> Result<HeartbeatReply, StoreError> {
        // Most heartbeats change nothing but times: they are answered from a read and
        // their times written in one batch (`agents::Renewals`), so 10,000 agents do not
        // queue a write each. A lease this close to its expiry is renewed by the writer,
        // in order with the expiry sweep, which may already be ending it.
        let now_ms = self.inner.clock.now_ms();
        let (probe_agent, probe_leases) = (agent.clone(), leases.to_vec());
        let probe = self
            .read(move |conn| agents::probe(conn, &probe_agent, &probe_leases, draining))
            .await?;
        if let Some(probe) = probe.filter(|p| {
            p.unchanged
                && p.earliest_expiry_ms
                    .is_none_or(|at| at.saturating_sub(now_ms) >= leases::millis(ttl) / 3)
        }) {
            let until = now_ms.saturating_add(leases::millis(ttl));
            let renewals = &self.inner.renewals;
            if renewals.record(agent, leases, &probe.reply.valid, now_ms, until) {
                let renewals = Arc::clone(renewals);
                // Only queued: the heartbeat's answer does not depend on the flush.
                self.queue_write(move |conn, _| agents::flush(conn, &renewals))
                    .await?;
            }
            return Ok(probe.reply);
        }
        let (agent, leases) = (agent.clone(), leases.to_vec());
        self.write(move |conn, now_ms| {
            agents::heartbeat(conn, now_ms, &agent, &leases, draining, ttl)
        })
        .await
    }

    /// Stores a batch of step results exactly once, in one savepoint.
    ///
    /// The batch's lease (in any state) finds the unit. Fencing: the batch's epoch must be
    /// the unit's current epoch (a lease that expired while its unit was not leased again
    /// still has it) and the unit must not be cancelled; else the batch is refused
    /// ([`StoreError::StaleEpoch`], [`StoreError::UnitCancelled`]) and nothing is written.
    /// A batch whose idempotency keys (unit, step, attempt, sequence) were all applied is
    /// acknowledged without doing anything; a result for a step that already has one is
    /// skipped. A step the unit lacks refuses the whole batch ([`StoreError::UnknownStep`]).
    pub async fn store_results(&self, batch: ResultBatch) -> Result<BatchOutcome, StoreError> {
        self.queue_results(batch).await?.await
    }

    /// [`Store::store_results`] in two halves: queues the batch behind the writes queued
    /// before it, and returns its answer to await later. A stream keeps several batches in
    /// flight this way, and the writer commits them together, still in order.
    pub async fn queue_results(
        &self,
        batch: ResultBatch,
    ) -> Result<PendingWrite<BatchOutcome>, StoreError> {
        self.queue_write(move |conn, now_ms| results::store_batch(conn, now_ms, &batch))
            .await
            .map(PendingWrite)
    }

    /// The agent a lease was granted to (live or ended); `None` for an unknown lease.
    pub async fn lease_holder(&self, lease: &LeaseId) -> Result<Option<AgentId>, StoreError> {
        let lease = lease.clone();
        self.read(move |conn| leases::holder(conn, &lease)).await
    }

    /// The unit of a live lease at `epoch` finished: it succeeds and the lease ends
    /// `succeeded`. Refused with [`StoreError::StepsMissing`] while some step has no stored
    /// result, and fenced like every holder's write ([`StoreError::StaleEpoch`],
    /// [`StoreError::LeaseEnded`], [`StoreError::LeaseNotFound`]). Completing a lease that
    /// already completed is acknowledged again.
    pub async fn complete(&self, lease: &LeaseId, epoch: u64) -> Result<UnitRef, StoreError> {
        let lease = lease.clone();
        self.write(move |conn, now_ms| leases::complete(conn, now_ms, &lease, epoch))
            .await
    }

    /// The unit of a live lease at `epoch` failed on its own account: one more attempt is
    /// spent and `error` and `log_tail` are kept as its last error. With attempts left (and
    /// a kind the retry budget applies to) it goes back to the queue with its finished
    /// steps; at the campaign's `max_attempts` it fails, and so do its pending steps. The
    /// `kind` decides the reaction ([`Reaction`]): a bad argument fails the unit at once, out
    /// of memory stores it as "does not fit", a missing engine or model is a fault of the
    /// agent's host and sends the unit to another agent. The lease ends `failed`. Fenced like [`Store::complete`]; failing a
    /// lease that already failed is acknowledged again.
    pub async fn fail(
        &self,
        lease: &LeaseId,
        epoch: u64,
        error: &str,
        log_tail: &str,
        kind: FailureKind,
    ) -> Result<FailOutcome, StoreError> {
        let (lease, error, log_tail) = (lease.clone(), error.to_owned(), log_tail.to_owned());
        self.write(move |conn, now_ms| {
            leases::fail(conn, now_ms, &lease, epoch, &error, &log_tail, kind)
        })
        .await
    }

    /// The agent gives a live lease at `epoch` back without failing its unit: the lease
    /// ends `preempted` (reason `preempted`) or `released` (any other reason), and the unit
    /// goes back to the queue with its finished steps. It counts as an infrastructure
    /// ending, not against `max_attempts`; the [`MAX_INFRA_ATTEMPTS`]th fails the unit.
    /// Fenced like [`Store::complete`]; releasing a released lease is acknowledged again.
    pub async fn release(
        &self,
        lease: &LeaseId,
        epoch: u64,
        reason: &ReleaseReason,
    ) -> Result<ReleaseOutcome, StoreError> {
        let (lease, reason) = (lease.clone(), reason.clone());
        self.write(move |conn, now_ms| leases::release(conn, now_ms, &lease, epoch, &reason))
            .await
    }

    /// The expiry sweep: ends every live lease whose `expires_at_ms` has passed as
    /// `expired` and sends its unit back to the queue with its finished steps (an
    /// infrastructure ending, like [`Store::release`]). `ttl` only words the recorded
    /// error. Idempotent: a second sweep finds nothing. Returns what it ended.
    pub async fn expire_leases(&self, ttl: Duration) -> Result<Vec<ExpiredLease>, StoreError> {
        let renewals = Arc::clone(&self.inner.renewals);
        self.write(move |conn, now_ms| {
            // Renewals answered before this sweep count.
            agents::flush(conn, &renewals)?;
            leases::expire(conn, now_ms, ttl)
        })
        .await
    }

    /// Gives every live lease at least `ttl` from now; returns how many it extended.
    ///
    /// A coordinator calls this when it starts: its agents could not heartbeat while it
    /// was down, so a lease left by the previous run expires only if its agent stays
    /// silent for a whole TTL of this one.
    pub async fn resume_leases(&self, ttl: Duration) -> Result<u64, StoreError> {
        self.write(move |conn, now_ms| leases::resume(conn, now_ms, ttl))
            .await
    }

    /// Marks `lost` every agent whose last heartbeat is older than `silence`; returns
    /// the agents it marked. A heartbeat makes a lost agent active again.
    pub async fn mark_lost_agents(&self, silence: Duration) -> Result<Vec<AgentId>, StoreError> {
        let renewals = Arc::clone(&self.inner.renewals);
        self.write(move |conn, now_ms| {
            agents::flush(conn, &renewals)?;
            agents::mark_lost(conn, now_ms, silence)
        })
        .await
    }

    /// Every registered agent with its GPUs, labels, state and live leases, by id.
    pub async fn list_agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let mut agents = self.read(agents::list).await?;
        // Heartbeats answered but not yet written.
        for agent in &mut agents {
            if let Some(at) = self.inner.renewals.seen(&agent.id) {
                agent.last_heartbeat_ms = agent.last_heartbeat_ms.max(at);
            }
        }
        Ok(agents)
    }

    /// Drains an agent: it gets no new leases (also after it registers again) and learns
    /// it from its next heartbeat; its running leases continue. Returns its live leases.
    /// Appends a `drain` audit entry; [`StoreError::AgentNotFound`] for an unknown agent.
    pub async fn drain_agent(
        &self,
        agent: &AgentId,
        actor: &str,
    ) -> Result<Vec<LeaseId>, StoreError> {
        let (agent, actor) = (agent.clone(), actor.to_owned());
        self.write(move |conn, now_ms| agents::drain(conn, now_ms, &agent, &actor))
            .await
    }

    /// The campaign's stored step results in unit position, then step order, read in
    /// pages so a large campaign streams in bounded memory (each page is one snapshot);
    /// `None` for an unknown campaign. With `include_records`, each result carries its
    /// request records.
    pub async fn results(
        &self,
        campaign: &CampaignId,
        include_records: bool,
    ) -> Result<Option<ResultPages>, StoreError> {
        let campaign = campaign.clone();
        let cursor = self
            .read(move |conn| results::start(conn, &campaign, include_records))
            .await?;
        Ok(cursor.map(|cursor| ResultPages {
            store: self.clone(),
            cursor: Some(cursor),
        }))
    }

    /// Every attempt of a unit (its leases), oldest first; empty for an unknown unit.
    pub async fn unit_history(
        &self,
        campaign: &CampaignId,
        unit: &UnitId,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let (campaign, unit) = (campaign.clone(), unit.clone());
        self.read(move |conn| results::history(conn, &campaign, &unit))
            .await
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| audit::recent(conn, limit)).await
    }

    /// The newest audit entries that match `filter`, at most `filter.limit` of them, with
    /// the cursor of the next page.
    pub async fn audit_page(&self, filter: AuditFilter) -> Result<AuditPage, StoreError> {
        self.read(move |conn| audit::page(conn, &filter)).await
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

/// The answer of a queued write: resolves once the write's transaction committed (or
/// failed). The write happens whether or not this is awaited.
#[derive(Debug)]
pub struct PendingWrite<T>(Reply<T>);

impl<T> std::future::Future for PendingWrite<T> {
    type Output = Result<T, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.map_err(|_| StoreError::WriterStopped)?)
    }
}

/// The stored results of a campaign, page by page; see [`Store::results`].
#[derive(Debug)]
pub struct ResultPages {
    store: Store,
    /// `None` once the last page was read.
    cursor: Option<results::Cursor>,
}

impl ResultPages {
    /// The next page (at most a few hundred results or a few MiB), or `None` at the end.
    pub async fn next_page(&mut self) -> Result<Option<Vec<StoredResult>>, StoreError> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        let (page, cursor) = self
            .store
            .read(move |conn| results::page(conn, cursor))
            .await?;
        if page.is_empty() {
            return Ok(None);
        }
        self.cursor = Some(cursor);
        Ok(Some(page))
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
mod lease_tests;
#[cfg(test)]
mod tests;
