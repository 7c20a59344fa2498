//! The lease lifecycle: granting the unit `placement` chose, fencing every write of a lease
//! holder by epoch, and the ways a lease ends (complete, fail, release, expiry).
//!
//! Rules (docs/leases.md says them for users):
//! - A unit is runnable when it is `pending`. Granting it makes it `leased`, adds one to
//!   its `epoch` (the fencing token), inserts a live lease (`ended_at_ms IS NULL`) and
//!   opens a `unit_history` row. The unique index `leases_live_by_unit` keeps one live
//!   lease per unit, so a live lease always carries its unit's current epoch.
//! - Every write of a holder names its lease and epoch; it applies only if the epoch is
//!   the unit's current one (and, for complete/fail/release, the lease is still live).
//! - Two budgets: `units.attempts` counts the unit's own failures against the campaign's
//!   `max_attempts`; `units.infra_attempts` counts infrastructure endings (preemption,
//!   release, expiry, a host lacking the engine or the model), which never fail a unit
//!   until [`MAX_INFRA_ATTEMPTS`].
//! - The kind of a failure decides what is done about it (`fail`): a bad argument fails
//!   the unit at once, out of memory stores it as "does not fit", a missing engine or model
//!   faults the agent's host for it (`faults`) and the unit waits for another agent.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row};

use super::error::{SqlContext, StoreError};
use super::faults;
use super::placement::{self, Placement};
use super::rows::{
    ExpiredLease, FailOutcome, FailureKind, GrantedLease, LeaseEnd, Reaction, ReleaseOutcome,
    StoredProbeRun, UnitRef, UnitState,
};
use super::specs::Parts;
use crate::domain::{
    AgentId, CampaignId, LeaseId, LeaseRequest, ReleaseReason, StepId, StepSpec, UnitId,
};

/// Infrastructure endings (preemption, release, expiry) a unit survives: the one that
/// reaches this number fails the unit with "gave up after 20 infrastructure failures
/// (last: …)", so a unit that kills every host it lands on cannot loop forever. They
/// never count against the campaign's `max_attempts`.
pub const MAX_INFRA_ATTEMPTS: u32 = 20;

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---- granting ----

/// Leases the unit [`placement::choose`] picks for the agent; see
/// [`Store::acquire_lease`](super::Store::acquire_lease).
pub(crate) fn acquire(
    conn: &Connection,
    now_ms: i64,
    request: &LeaseRequest,
    ttl: Duration,
) -> Result<Option<GrantedLease>, StoreError> {
    let Some(Placement {
        unit_key,
        gpus,
        parts,
    }) = placement::choose(conn, request)?
    else {
        return Ok(None);
    };
    grant(conn, now_ms, &request.agent, unit_key, gpus, ttl, parts).map(Some)
}

/// Leases the pending unit `unit_key` to `agent` on `gpus`.
fn grant(
    conn: &Connection,
    now_ms: i64,
    agent: &AgentId,
    unit_key: i64,
    gpus: Vec<u32>,
    ttl: Duration,
    mut parts: Parts,
) -> Result<GrantedLease, StoreError> {
    let unit = conn
        .prepare_cached(
            "UPDATE units SET state = 'leased', epoch = epoch + 1, updated_at_ms = ?2
             WHERE unit_key = ?1 AND state = 'pending'
             RETURNING epoch, attempts + infra_attempts + 1, campaign_key, unit_id, label,
                 model_spec, gpu_spec, framework_spec, quantization_spec, extra_args,
                 labels_json",
        )
        .and_then(|mut s| {
            s.query_row((unit_key, now_ms), |r| {
                Ok((
                    r.get::<_, u64>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    [r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?],
                    r.get::<_, String>(9)?,
                    r.get::<_, String>(10)?,
                ))
            })
        })
        .sql("lease the unit")?;
    let (epoch, attempt, campaign_key, unit_id, label, spec_ids, extra_args, labels_json) = unit;
    let campaign: String = conn
        .prepare_cached("SELECT id FROM campaigns WHERE campaign_key = ?1")
        .and_then(|mut s| s.query_row([campaign_key], |r| r.get(0)))
        .sql("read the unit's campaign")?;
    let lease = LeaseId(uuid::Uuid::new_v4().to_string());
    let expires_at_ms = now_ms.saturating_add(millis(ttl));
    let gpus_json = serde_json::to_string(&gpus).map_err(|source| StoreError::Json {
        action: "encode the lease's GPU indices",
        source,
    })?;
    conn.prepare_cached(
        "INSERT INTO leases (lease_id, unit_key, agent_id, epoch, gpu_indices_json,
             granted_at_ms, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute((
            lease.as_str(),
            unit_key,
            agent.as_str(),
            epoch,
            gpus_json,
            now_ms,
            expires_at_ms,
        ))
    })
    .sql("insert the lease")?;
    conn.prepare_cached(
        "INSERT INTO unit_history (campaign_key, unit_key, attempt, epoch, lease_id, agent_id,
             started_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute((
            campaign_key,
            unit_key,
            attempt,
            epoch,
            lease.as_str(),
            agent.as_str(),
            now_ms,
        ))
    })
    .sql("open the unit's attempt")?;

    parts.fetch_all(conn, &spec_ids)?;
    let config = parts.config(spec_ids, extra_args, &labels_json)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT s.step_id, s.idx, s.workload_spec, s.load_spec, s.repeat,
                 s.state = 'succeeded' OR EXISTS (SELECT 1 FROM step_results r
                     WHERE r.unit_key = s.unit_key AND r.step_id = s.step_id)
             FROM steps s WHERE s.unit_key = ?1 AND s.search_step IS NULL
             ORDER BY s.idx, s.step_id",
        )
        .sql("read the unit's steps")?;
    let mut rows = stmt.query([unit_key]).sql("read the unit's steps")?;
    let (mut steps, mut finished_steps) = (Vec::new(), Vec::new());
    while let Some(r) = rows.next().sql("read the unit's steps")? {
        let read = |r: &Row<'_>| -> rusqlite::Result<(String, u32, i64, i64, u32, bool)> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        };
        let (id, index, workload, load, repeat, done) = read(r).sql("read the unit's steps")?;
        parts.fetch_all(conn, &[workload, load])?;
        let id = StepId(id);
        if done {
            finished_steps.push(id.clone());
        }
        steps.push(StepSpec {
            id,
            index,
            workload: parts.workload(workload)?.clone(),
            load: parts.load_point(load)?.clone(),
            repeat,
        });
    }
    let probe_runs = probe_runs(conn, unit_key)?;
    Ok(GrantedLease {
        lease,
        agent: agent.clone(),
        unit: UnitRef {
            campaign: CampaignId(campaign),
            unit: UnitId(unit_id),
            label,
        },
        epoch,
        config,
        steps,
        finished_steps,
        probe_runs,
        gpu_indices: gpus,
        expires_at_ms,
        attempt,
    })
}

/// The stored probe runs of a unit's capacity searches, each with the `probe` facts of its
/// step document.
fn probe_runs(conn: &Connection, unit_key: i64) -> Result<Vec<StoredProbeRun>, StoreError> {
    #[derive(serde::Deserialize)]
    struct ProbeOnly {
        probe: Option<serde_json::Value>,
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT s.search_step, s.step_id, r.result_json FROM steps s
             JOIN step_results r ON r.unit_key = s.unit_key AND r.step_id = s.step_id
             WHERE s.unit_key = ?1 AND s.search_step IS NOT NULL
             ORDER BY r.result_id",
        )
        .sql("read the unit's probe runs")?;
    let rows = stmt
        .query_map([unit_key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .sql("read the unit's probe runs")?
        .collect::<Result<Vec<_>, _>>()
        .sql("read the unit's probe runs")?;
    let mut runs = Vec::with_capacity(rows.len());
    for (search_step, step, result_json) in rows {
        // Stored only after the same check on arrival: a probe row's document has facts.
        let facts = serde_json::from_str::<ProbeOnly>(&result_json)
            .ok()
            .and_then(|d| d.probe)
            .ok_or_else(|| StoreError::BadValue {
                column: "step_results.result_json",
                value: format!("probe run {step} without probe facts"),
            })?;
        runs.push(StoredProbeRun {
            search_step: StepId(search_step),
            step: StepId(step),
            facts_json: facts.to_string(),
        });
    }
    Ok(runs)
}

// ---- fencing ----

/// A lease with its unit, as a holder's write finds it.
pub(crate) struct Held {
    /// The lease.
    pub lease: LeaseId,
    /// The agent holding (or that held) it.
    pub agent: AgentId,
    /// The epoch it was granted at.
    pub lease_epoch: u64,
    /// `end_reason` of an ended lease; `None` while live.
    pub ended: Option<String>,
    /// When it expires (or expired) without a renewal, Unix ms.
    pub expires_at_ms: i64,
    /// Its unit's row.
    pub unit_key: i64,
    /// Its unit, campaign and label.
    pub unit: UnitRef,
    /// The unit's current epoch: equal to `lease_epoch` unless the unit was leased again.
    pub unit_epoch: u64,
    /// The unit's state now.
    pub unit_state: UnitState,
    /// The unit's own failures so far.
    pub attempts: u32,
    /// The unit's infrastructure endings so far.
    pub infra_attempts: u32,
    /// The campaign's `max_attempts`.
    pub max_attempts: u32,
}

/// The lease `lease` with its unit, whatever its state.
pub(crate) fn lookup(conn: &Connection, lease: &LeaseId) -> Result<Held, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT l.agent_id, l.epoch, CASE WHEN l.ended_at_ms IS NULL THEN NULL
                     ELSE COALESCE(l.end_reason, 'ended') END,
                 l.expires_at_ms, l.unit_key, u.unit_id, u.label, u.epoch, u.state,
                 u.attempts, u.infra_attempts, c.id, c.max_attempts
             FROM leases l JOIN units u ON u.unit_key = l.unit_key
             JOIN campaigns c ON c.campaign_key = u.campaign_key
             WHERE l.lease_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([lease.as_str()], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, u64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ),
                    (
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, u64>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, u32>(9)?,
                        r.get::<_, u32>(10)?,
                        r.get::<_, String>(11)?,
                        r.get::<_, u32>(12)?,
                    ),
                ))
            })
            .optional()
        })
        .sql("look up the lease")?;
    let Some(((agent, lease_epoch, ended, expires_at_ms, unit_key), unit)) = row else {
        return Err(StoreError::LeaseNotFound {
            lease: lease.to_string(),
        });
    };
    let (unit_id, label, unit_epoch, state, attempts, infra_attempts, campaign, max_attempts) =
        unit;
    Ok(Held {
        lease: lease.clone(),
        agent: AgentId(agent),
        lease_epoch,
        ended,
        expires_at_ms,
        unit_key,
        unit: UnitRef {
            campaign: CampaignId(campaign),
            unit: UnitId(unit_id),
            label,
        },
        unit_epoch,
        unit_state: super::campaigns::parse_unit_state(&state)?,
        attempts,
        infra_attempts,
        max_attempts,
    })
}

/// The agent a lease was granted to, live or ended; `None` for an unknown lease.
pub(crate) fn holder(conn: &Connection, lease: &LeaseId) -> Result<Option<AgentId>, StoreError> {
    conn.prepare_cached("SELECT agent_id FROM leases WHERE lease_id = ?1")
        .and_then(|mut s| {
            s.query_row([lease.as_str()], |r| r.get::<_, String>(0))
                .optional()
        })
        .sql("look up the lease's agent")
        .map(|agent| agent.map(AgentId))
        .map_err(StoreError::from)
}

impl Held {
    /// Refuses `epoch` unless it is the lease's and the unit's current epoch.
    pub(crate) fn check_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        if epoch == self.unit_epoch && epoch == self.lease_epoch {
            Ok(())
        } else {
            Err(StoreError::StaleEpoch {
                lease: self.lease.to_string(),
                unit: self.unit.unit.to_string(),
                epoch,
                current: self.unit_epoch,
            })
        }
    }

    /// Fences a write that ends the lease: the epoch must be current and the lease live.
    /// `Ok(false)` when the lease already ended the way `replay` says: a repeated call
    /// whose first answer was lost, acknowledged without doing anything.
    fn check_live(&self, epoch: u64, replay: &[LeaseEnd]) -> Result<bool, StoreError> {
        self.check_epoch(epoch)?;
        match &self.ended {
            None => Ok(true),
            Some(reason) if replay.iter().any(|end| end.as_str() == reason) => Ok(false),
            Some(reason) => Err(StoreError::LeaseEnded {
                lease: self.lease.to_string(),
                unit: self.unit.unit.to_string(),
                reason: reason.clone(),
            }),
        }
    }
}

/// Ends a live lease and closes its attempt in the unit's history.
fn end_lease(
    conn: &Connection,
    now_ms: i64,
    held: &Held,
    end: LeaseEnd,
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE leases SET ended_at_ms = ?2, end_reason = ?3
         WHERE lease_id = ?1 AND ended_at_ms IS NULL",
    )
    .and_then(|mut s| s.execute((held.lease.as_str(), now_ms, end.as_str())))
    .sql("end the lease")?;
    conn.prepare_cached(
        "UPDATE unit_history SET ended_at_ms = ?3, outcome = ?4, error = ?5
         WHERE unit_key = ?1 AND lease_id = ?2 AND outcome IS NULL",
    )
    .and_then(|mut s| {
        s.execute((
            held.unit_key,
            held.lease.as_str(),
            now_ms,
            end.as_str(),
            error,
        ))
    })
    .sql("close the unit's attempt")?;
    Ok(())
}

/// Moves the held unit out of `leased`, guarded by its epoch.
fn set_unit(
    conn: &Connection,
    now_ms: i64,
    held: &Held,
    state: UnitState,
    attempts: u32,
    infra_attempts: u32,
    error: Option<(&str, Option<&str>)>,
) -> Result<(), StoreError> {
    let changed = match error {
        None => conn
            .prepare_cached(
                "UPDATE units SET state = ?3, attempts = ?4, infra_attempts = ?5,
                     updated_at_ms = ?6
                 WHERE unit_key = ?1 AND epoch = ?2 AND state = 'leased'",
            )
            .and_then(|mut s| {
                s.execute((
                    held.unit_key,
                    held.unit_epoch,
                    state.as_str(),
                    attempts,
                    infra_attempts,
                    now_ms,
                ))
            }),
        Some((last_error, log_tail)) => conn
            .prepare_cached(
                "UPDATE units SET state = ?3, attempts = ?4, infra_attempts = ?5,
                     updated_at_ms = ?6, last_error = ?7, log_tail = ?8
                 WHERE unit_key = ?1 AND epoch = ?2 AND state = 'leased'",
            )
            .and_then(|mut s| {
                s.execute((
                    held.unit_key,
                    held.unit_epoch,
                    state.as_str(),
                    attempts,
                    infra_attempts,
                    now_ms,
                    last_error,
                    log_tail,
                ))
            }),
    }
    .sql("update the unit")?;
    if changed != 1 {
        return Err(StoreError::BadValue {
            column: "units.state",
            value: format!(
                "unit {} with a live lease is {} at epoch {}",
                held.unit.unit, held.unit_state, held.unit_epoch
            ),
        });
    }
    if state == UnitState::Failed {
        conn.prepare_cached(
            "UPDATE steps SET state = 'failed' WHERE unit_key = ?1 AND state = 'pending'",
        )
        .and_then(|mut s| s.execute([held.unit_key]))
        .sql("fail the unit's pending steps")?;
    }
    Ok(())
}

// ---- ending leases ----

/// See [`Store::complete`](super::Store::complete).
pub(crate) fn complete(
    conn: &Connection,
    now_ms: i64,
    lease: &LeaseId,
    epoch: u64,
) -> Result<UnitRef, StoreError> {
    let held = lookup(conn, lease)?;
    if !held.check_live(epoch, &[LeaseEnd::Succeeded])? {
        return Ok(held.unit);
    }
    let (missing, total): (u64, u64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(NOT EXISTS (SELECT 1 FROM step_results r
                     WHERE r.unit_key = s.unit_key AND r.step_id = s.step_id)), 0),
                 COUNT(*)
             FROM steps s WHERE s.unit_key = ?1",
        )
        .and_then(|mut s| s.query_row([held.unit_key], |r| Ok((r.get(0)?, r.get(1)?))))
        .sql("count the unit's results")?;
    if missing > 0 {
        return Err(StoreError::StepsMissing {
            unit: held.unit.unit.to_string(),
            missing,
            total,
        });
    }
    set_unit(
        conn,
        now_ms,
        &held,
        UnitState::Succeeded,
        held.attempts,
        held.infra_attempts,
        None,
    )?;
    end_lease(conn, now_ms, &held, LeaseEnd::Succeeded, None)?;
    Ok(held.unit)
}

/// See [`Store::fail`](super::Store::fail).
pub(crate) fn fail(
    conn: &Connection,
    now_ms: i64,
    lease: &LeaseId,
    epoch: u64,
    error: &str,
    log_tail: &str,
    kind: FailureKind,
) -> Result<FailOutcome, StoreError> {
    let held = lookup(conn, lease)?;
    if !held.check_live(epoch, &[LeaseEnd::Failed])? {
        return Ok(FailOutcome {
            will_retry: matches!(held.unit_state, UnitState::Pending | UnitState::Leased),
            attempts: held.attempts,
            max_attempts: held.max_attempts,
            unit: held.unit,
            reaction: Reaction::Counted,
        });
    }
    let log_tail = (!log_tail.is_empty()).then_some(log_tail);
    if let Some(lacking) = faults::Lacking::of(kind) {
        return fail_for_host(conn, now_ms, held, error, log_tail, kind, lacking);
    }
    let attempts = held.attempts.saturating_add(1);
    let (will_retry, reaction) = match kind {
        FailureKind::BadArgument | FailureKind::BadDataset => (false, Reaction::FailedAtOnce),
        FailureKind::OutOfMemory => (false, Reaction::DoesNotFit),
        _ => (attempts < held.max_attempts, Reaction::Counted),
    };
    let state = if will_retry {
        UnitState::Pending
    } else {
        UnitState::Failed
    };
    set_unit(
        conn,
        now_ms,
        &held,
        state,
        attempts,
        held.infra_attempts,
        Some((error, log_tail)),
    )?;
    set_failure_kind(conn, held.unit_key, kind)?;
    end_lease(conn, now_ms, &held, LeaseEnd::Failed, Some(error))?;
    Ok(FailOutcome {
        will_retry,
        attempts,
        max_attempts: held.max_attempts,
        unit: held.unit,
        reaction,
    })
}

/// A failure that shows the agent's host lacks the engine or the model: the host is
/// faulted for it, and the unit goes back to the queue as after an infrastructure ending
/// while another agent may run it, or fails with every pending unit needing the same
/// part when none may.
fn fail_for_host(
    conn: &Connection,
    now_ms: i64,
    held: Held,
    error: &str,
    log_tail: Option<&str>,
    kind: FailureKind,
    lacking: faults::Lacking,
) -> Result<FailOutcome, StoreError> {
    let fault = faults::record(conn, now_ms, &held.agent, held.unit_key, lacking, error)?;
    let infra = held.infra_attempts.saturating_add(1);
    let elsewhere =
        faults::another_agent_may_run(conn, &held.agent, &fault)? && infra < MAX_INFRA_ATTEMPTS;
    let (state, message) = if elsewhere {
        (UnitState::Pending, error.to_owned())
    } else {
        (
            UnitState::Failed,
            format!("no agent can run it: {error} (on agent {})", held.agent),
        )
    };
    set_unit(
        conn,
        now_ms,
        &held,
        state,
        held.attempts,
        infra,
        Some((&message, log_tail)),
    )?;
    set_failure_kind(conn, held.unit_key, kind)?;
    end_lease(conn, now_ms, &held, LeaseEnd::Failed, Some(error))?;
    let also_failed = if elsewhere {
        Vec::new()
    } else {
        faults::fail_pending_needing(conn, now_ms, &fault, kind, &message)?
    };
    Ok(FailOutcome {
        will_retry: elsewhere,
        attempts: held.attempts,
        max_attempts: held.max_attempts,
        unit: held.unit,
        reaction: Reaction::HostFault { also_failed },
    })
}

/// Keeps how the unit's last failure was classified.
fn set_failure_kind(conn: &Connection, unit_key: i64, kind: FailureKind) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE units SET failure_kind = ?2 WHERE unit_key = ?1")
        .and_then(|mut s| s.execute((unit_key, kind.as_str())))
        .sql("record the failure's kind")?;
    Ok(())
}

/// See [`Store::release`](super::Store::release).
pub(crate) fn release(
    conn: &Connection,
    now_ms: i64,
    lease: &LeaseId,
    epoch: u64,
    reason: &ReleaseReason,
) -> Result<ReleaseOutcome, StoreError> {
    let held = lookup(conn, lease)?;
    let end = match reason {
        ReleaseReason::Preempted => LeaseEnd::Preempted,
        ReleaseReason::Other(_) => LeaseEnd::Released,
    };
    if !held.check_live(epoch, &[LeaseEnd::Preempted, LeaseEnd::Released])? {
        return Ok(ReleaseOutcome {
            gave_up: held.unit_state == UnitState::Failed,
            end,
            unit: held.unit,
        });
    }
    let what = format!("{reason} on agent {}", held.agent);
    let error = match reason {
        ReleaseReason::Preempted => format!("preempted on agent {}", held.agent),
        ReleaseReason::Other(_) => format!("released by agent {}: {reason}", held.agent),
    };
    let gave_up = requeue_after_infra(conn, now_ms, &held, &what)?;
    end_lease(conn, now_ms, &held, end, Some(&error))?;
    Ok(ReleaseOutcome {
        unit: held.unit,
        end,
        gave_up,
    })
}

/// Sends the held unit back to the queue after an infrastructure ending, or fails it when
/// that ending reaches [`MAX_INFRA_ATTEMPTS`]. Returns whether it failed.
fn requeue_after_infra(
    conn: &Connection,
    now_ms: i64,
    held: &Held,
    what: &str,
) -> Result<bool, StoreError> {
    let infra = held.infra_attempts.saturating_add(1);
    if infra >= MAX_INFRA_ATTEMPTS {
        let error = format!("gave up after {infra} infrastructure failures (last: {what})");
        set_unit(
            conn,
            now_ms,
            held,
            UnitState::Failed,
            held.attempts,
            infra,
            Some((&error, None)),
        )?;
        Ok(true)
    } else {
        set_unit(
            conn,
            now_ms,
            held,
            UnitState::Pending,
            held.attempts,
            infra,
            None,
        )?;
        Ok(false)
    }
}

/// See [`Store::expire_leases`](super::Store::expire_leases).
pub(crate) fn expire(
    conn: &Connection,
    now_ms: i64,
    ttl: Duration,
) -> Result<Vec<ExpiredLease>, StoreError> {
    let due: Vec<(String, i64)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT l.lease_id, a.last_heartbeat_ms FROM leases l
                 JOIN agents a ON a.id = l.agent_id
                 WHERE l.ended_at_ms IS NULL AND l.expires_at_ms < ?1
                 ORDER BY l.expires_at_ms",
            )
            .sql("find expired leases")?;
        stmt.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .sql("find expired leases")?
            .collect::<Result<_, _>>()
            .sql("find expired leases")?
    };
    let mut expired = Vec::with_capacity(due.len());
    for (lease, last_heartbeat_ms) in due {
        let held = lookup(conn, &LeaseId(lease))?;
        if held.unit_state != UnitState::Leased || held.unit_epoch != held.lease_epoch {
            // Cannot happen while every lease ends through this module; ended here rather
            // than left to fail every sweep.
            tracing::warn!(
                lease = %held.lease,
                unit = %held.unit.unit,
                state = %held.unit_state,
                "ending a live lease whose unit is not leased under it"
            );
            end_lease(
                conn,
                now_ms,
                &held,
                LeaseEnd::Expired,
                Some("lease expired: its unit was no longer leased under it"),
            )?;
            continue;
        }
        let renewed_ago = now_ms - (held.expires_at_ms - millis(ttl));
        let silent = now_ms - last_heartbeat_ms;
        let error = if silent >= renewed_ago {
            format!(
                "lease expired: agent {} sent no heartbeat for {}",
                held.agent,
                seconds(silent)
            )
        } else {
            format!(
                "lease expired: agent {} heartbeats without renewing it (last renewal {} ago)",
                held.agent,
                seconds(renewed_ago)
            )
        };
        let gave_up = requeue_after_infra(
            conn,
            now_ms,
            &held,
            &format!("lease expired on agent {}", held.agent),
        )?;
        end_lease(conn, now_ms, &held, LeaseEnd::Expired, Some(&error))?;
        expired.push(ExpiredLease {
            lease: held.lease,
            agent: held.agent,
            epoch: held.lease_epoch,
            unit: held.unit,
            error,
            gave_up,
        });
    }
    Ok(expired)
}

/// See [`Store::resume_leases`](super::Store::resume_leases).
pub(crate) fn resume(conn: &Connection, now_ms: i64, ttl: Duration) -> Result<u64, StoreError> {
    let until = now_ms.saturating_add(millis(ttl));
    conn.prepare_cached(
        "UPDATE leases SET expires_at_ms = ?1
         WHERE ended_at_ms IS NULL AND expires_at_ms < ?1",
    )
    .and_then(|mut s| s.execute([until]))
    .sql("extend live leases")
    .map_err(StoreError::from)
    .map(|n| n as u64)
}

/// `31.0s`.
fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}
