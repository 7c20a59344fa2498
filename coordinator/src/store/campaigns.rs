//! Campaigns, units and steps after submission: cancel, retry, and the reads behind status.

use rusqlite::{Connection, OptionalExtension, Row};
use serde_json::json;

use super::audit;
use super::error::{SqlContext, StoreError};
use super::rows::{
    CampaignInfo, CampaignState, FailureKind, StateCounts, StepRow, UnitRow, UnitState,
    UnknownState,
};
use super::specs::Parts;
use crate::domain::{CampaignId, DropKind, Dropped, StepId, StepSpec, UnitId};

/// The integer key and name of the campaign with this public id.
pub(crate) fn campaign_key(
    conn: &Connection,
    campaign: &CampaignId,
) -> Result<Option<(i64, String)>, StoreError> {
    conn.prepare_cached("SELECT campaign_key, name FROM campaigns WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([campaign.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .sql("look up the campaign")
        .map_err(StoreError::from)
}

/// Cancels a campaign; see [`Store::cancel`](super::Store::cancel).
pub(crate) fn cancel(
    conn: &Connection,
    now_ms: i64,
    campaign: &CampaignId,
    actor: &str,
    reason: &str,
) -> Result<u64, StoreError> {
    let Some((key, name)) = campaign_key(conn, campaign)? else {
        return Ok(0);
    };
    // Steps and leases first: they find their units by the state this changes last.
    conn.prepare_cached(
        "UPDATE steps SET state = 'cancelled'
         WHERE state = 'pending' AND unit_key IN
             (SELECT unit_key FROM units
              WHERE campaign_key = ?1 AND state IN ('pending', 'leased'))",
    )
    .and_then(|mut s| s.execute([key]))
    .sql("cancel steps")?;
    conn.prepare_cached(
        "UPDATE leases SET ended_at_ms = ?2, end_reason = 'cancelled'
         WHERE ended_at_ms IS NULL AND unit_key IN
             (SELECT unit_key FROM units
              WHERE campaign_key = ?1 AND state IN ('pending', 'leased'))",
    )
    .and_then(|mut s| s.execute((key, now_ms)))
    .sql("end the campaign's leases")?;
    conn.prepare_cached(
        "UPDATE unit_history SET ended_at_ms = ?2, outcome = 'cancelled'
         WHERE campaign_key = ?1 AND outcome IS NULL AND ended_at_ms IS NULL",
    )
    .and_then(|mut s| s.execute((key, now_ms)))
    .sql("close running attempts")?;
    let cancelled = conn
        .prepare_cached(
            "UPDATE units SET state = 'cancelled', updated_at_ms = ?2
             WHERE campaign_key = ?1 AND state IN ('pending', 'leased')",
        )
        .and_then(|mut s| s.execute((key, now_ms)))
        .sql("cancel units")? as u64;
    // The first cancel's time and reason stay; a repeated cancel only adds an audit row.
    conn.prepare_cached(
        "UPDATE campaigns SET updated_at_ms = ?2,
             cancel_reason = CASE WHEN cancelled_at_ms IS NULL THEN ?3 ELSE cancel_reason END,
             cancelled_at_ms = COALESCE(cancelled_at_ms, ?2)
         WHERE campaign_key = ?1",
    )
    .and_then(|mut s| s.execute((key, now_ms, reason)))
    .sql("mark the campaign cancelled")?;
    audit::append(
        conn,
        now_ms,
        actor,
        "cancel",
        &format!("campaign/{name}"),
        &json!({
            "campaign_id": campaign.as_str(),
            "units_cancelled": cancelled,
            "reason": reason,
        }),
    )?;
    Ok(cancelled)
}

/// Sends failed units back to the queue; see [`Store::retry_failed`](super::Store::retry_failed).
pub(crate) fn retry_failed(
    conn: &Connection,
    now_ms: i64,
    campaign: &CampaignId,
    actor: &str,
) -> Result<u64, StoreError> {
    let Some((key, name)) = campaign_key(conn, campaign)? else {
        return Ok(0);
    };
    conn.prepare_cached(
        "UPDATE steps SET state = 'pending'
         WHERE state = 'failed' AND unit_key IN
             (SELECT unit_key FROM units WHERE campaign_key = ?1 AND state = 'failed')",
    )
    .and_then(|mut s| s.execute([key]))
    .sql("reset failed steps")?;
    let retried = conn
        .prepare_cached(
            "UPDATE units SET state = 'pending', attempts = 0, infra_attempts = 0,
                 updated_at_ms = ?2
             WHERE campaign_key = ?1 AND state = 'failed'",
        )
        .and_then(|mut s| s.execute((key, now_ms)))
        .sql("reset failed units")? as u64;
    if retried > 0 {
        // Pending units are runnable: a cancelled campaign with retried units is active
        // again (its cancelled units stay cancelled).
        conn.prepare_cached(
            "UPDATE campaigns SET updated_at_ms = ?2, cancelled_at_ms = NULL,
                 cancel_reason = NULL
             WHERE campaign_key = ?1",
        )
        .and_then(|mut s| s.execute((key, now_ms)))
        .sql("update the campaign")?;
    }
    audit::append(
        conn,
        now_ms,
        actor,
        "retry_failed",
        &format!("campaign/{name}"),
        &json!({ "campaign_id": campaign.as_str(), "units_retried": retried }),
    )?;
    Ok(retried)
}

// ---- reads ----

const CAMPAIGN_COLUMNS: &str = "campaign_key, id, name, description, priority, max_attempts, \
     created_at_ms, updated_at_ms, submitted_by, cancelled_at_ms";

/// A campaign row before its counts are filled in.
struct CampaignBase {
    key: i64,
    info: CampaignInfo,
    cancelled: bool,
}

fn campaign_base(r: &Row<'_>) -> rusqlite::Result<CampaignBase> {
    Ok(CampaignBase {
        key: r.get(0)?,
        info: CampaignInfo {
            id: CampaignId(r.get(1)?),
            name: r.get(2)?,
            description: r.get(3)?,
            state: CampaignState::Active,
            priority: r.get(4)?,
            max_attempts: r.get(5)?,
            created_at_ms: r.get(6)?,
            updated_at_ms: r.get(7)?,
            units: StateCounts::default(),
            steps: StateCounts::default(),
            dropped: 0,
            submitted_by: r.get(8)?,
            preemptions: 0,
            preemption_lost_ms: 0,
        },
        cancelled: r.get::<_, Option<i64>>(9)?.is_some(),
    })
}

/// Every campaign, newest first.
pub(crate) fn list(conn: &Connection) -> Result<Vec<CampaignInfo>, StoreError> {
    let bases = {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
                 ORDER BY created_at_ms DESC, campaign_key DESC"
            ))
            .sql("list campaigns")?;
        stmt.query_map([], campaign_base)
            .sql("list campaigns")?
            .collect::<Result<Vec<_>, _>>()
            .sql("list campaigns")?
    };
    bases.into_iter().map(|b| complete(conn, b)).collect()
}

/// The campaign with this id, else the one with this name.
pub(crate) fn find(
    conn: &Connection,
    name_or_id: &str,
) -> Result<Option<CampaignInfo>, StoreError> {
    for column in ["id", "name"] {
        let base = conn
            .prepare_cached(&format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE {column} = ?1"
            ))
            .and_then(|mut s| s.query_row([name_or_id], campaign_base).optional())
            .sql("look up the campaign")?;
        if let Some(base) = base {
            return complete(conn, base).map(Some);
        }
    }
    Ok(None)
}

/// Fills in counts and the derived state.
fn complete(conn: &Connection, base: CampaignBase) -> Result<CampaignInfo, StoreError> {
    let mut info = base.info;
    let key = base.key;
    info.units = state_counts(
        conn,
        "SELECT state, COUNT(*) FROM units WHERE campaign_key = ?1 GROUP BY state",
        key,
        "units.state",
    )?;
    info.steps = step_counts(conn, key)?;
    info.dropped = count(
        conn,
        "SELECT COUNT(*) FROM dropped WHERE campaign_key = ?1",
        key,
    )?;
    info.preemptions = count(
        conn,
        "SELECT COUNT(*) FROM unit_history WHERE campaign_key = ?1 AND outcome = 'preempted'",
        key,
    )?;
    // The step results of an attempt are stamped by the agent's clock and the attempt's
    // times by the coordinator's; a negative difference from clock skew counts as nothing.
    info.preemption_lost_ms = count(
        conn,
        "SELECT COALESCE(SUM(MAX(0, h.ended_at_ms - MAX(h.started_at_ms, COALESCE(
             (SELECT MAX(r.finished_at_ms) FROM step_results r
              WHERE r.unit_key = h.unit_key AND r.attempt = h.attempt),
             h.started_at_ms)))), 0)
         FROM unit_history h
         WHERE h.campaign_key = ?1 AND h.outcome = 'preempted' AND h.ended_at_ms IS NOT NULL",
        key,
    )?;
    info.state = CampaignState::derive(&info.units, base.cancelled);
    Ok(info)
}

fn state_counts(
    conn: &Connection,
    sql: &str,
    campaign_key: i64,
    column: &'static str,
) -> Result<StateCounts, StoreError> {
    let mut stmt = conn.prepare_cached(sql).sql("count states")?;
    let rows = stmt
        .query_map([campaign_key], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
        })
        .sql("count states")?;
    let mut counts = StateCounts::default();
    for row in rows {
        let (state, n) = row.sql("count states")?;
        counts
            .add(&state, n)
            .map_err(|e| StoreError::BadValue { column, value: e.0 })?;
    }
    Ok(counts)
}

/// Steps of a campaign by state, in one pass without grouping: a `GROUP BY state` over a
/// join sorts every step into a temporary B-tree first, which doubled the time of
/// `campaign()` for a large campaign.
fn step_counts(conn: &Connection, campaign_key: i64) -> Result<StateCounts, StoreError> {
    let counts = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(s.state = 'pending'), 0),
                 COALESCE(SUM(s.state = 'succeeded'), 0), COALESCE(SUM(s.state = 'failed'), 0),
                 COALESCE(SUM(s.state = 'cancelled'), 0)
             FROM units u JOIN steps s ON s.unit_key = u.unit_key
             WHERE u.campaign_key = ?1",
        )
        .and_then(|mut s| {
            s.query_row([campaign_key], |r| {
                Ok(StateCounts {
                    total: r.get(0)?,
                    pending: r.get(1)?,
                    leased: 0,
                    succeeded: r.get(2)?,
                    failed: r.get(3)?,
                    cancelled: r.get(4)?,
                })
            })
        })
        .sql("count steps")?;
    let known = counts.pending + counts.succeeded + counts.failed + counts.cancelled;
    if known != counts.total {
        return Err(StoreError::BadValue {
            column: "steps.state",
            value: format!("{} steps in no known state", counts.total - known),
        });
    }
    Ok(counts)
}

fn count(conn: &Connection, sql: &str, campaign_key: i64) -> Result<u64, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row([campaign_key], |r| r.get(0)))
        .sql("count rows")
        .map_err(StoreError::from)
}

/// The dropped list of a campaign, in expansion order.
pub(crate) fn dropped(
    conn: &Connection,
    campaign: &CampaignId,
) -> Result<Vec<Dropped>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT d.label, d.kind, d.reason
             FROM campaigns c JOIN dropped d ON d.campaign_key = c.campaign_key
             WHERE c.id = ?1 ORDER BY d.position",
        )
        .sql("read the dropped list")?;
    let rows = stmt
        .query_map([campaign.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })
        .sql("read the dropped list")?;
    let mut out = Vec::new();
    for row in rows {
        let (label, kind, reason) = row.sql("read the dropped list")?;
        let kind = match kind.as_str() {
            "excluded" => DropKind::Excluded,
            "pruned" => DropKind::Pruned,
            _ => {
                return Err(StoreError::BadValue {
                    column: "dropped.kind",
                    value: kind,
                });
            }
        };
        out.push(Dropped {
            label,
            kind,
            reason,
        });
    }
    Ok(out)
}

/// The units of a campaign in the order they were first submitted.
/// The columns and joins every unit listing reads.
macro_rules! units_select {
    () => {
        "SELECT u.unit_id, u.label, u.model_spec, u.gpu_spec, u.framework_spec,
             u.quantization_spec, u.extra_args, u.labels_json, u.state, u.attempts,
             u.last_error, u.epoch,
             (SELECT COUNT(*) FROM steps s WHERE s.unit_key = u.unit_key),
             (SELECT COUNT(*) FROM steps s
              WHERE s.unit_key = u.unit_key AND s.state = 'succeeded'),
             l.agent_id, u.position, u.unit_key, u.log_tail, u.infra_attempts, u.failure_kind
         FROM units u
         LEFT JOIN leases l ON l.unit_key = u.unit_key AND l.ended_at_ms IS NULL"
    };
}

pub(crate) fn units(
    conn: &Connection,
    campaign: &CampaignId,
    state: Option<UnitState>,
) -> Result<Vec<UnitRow>, StoreError> {
    let Some((key, _)) = campaign_key(conn, campaign)? else {
        return Ok(Vec::new());
    };
    let parts = Parts::load(conn, key)?;
    let mut stmt = conn
        .prepare_cached(match state {
            None => concat!(units_select!(), " WHERE u.campaign_key = ?1"),
            // Its own statement, so SQLite can use the (campaign, state) index.
            Some(_) => concat!(
                units_select!(),
                " WHERE u.campaign_key = ?1 AND u.state = ?2"
            ),
        })
        .sql("read units")?;
    let mut rows = match state {
        None => stmt.query(rusqlite::params![key]),
        Some(state) => stmt.query(rusqlite::params![key, state.as_str()]),
    }
    .sql("read units")?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().sql("read units")? {
        let row = read_unit(r).sql("read units")?;
        let config = parts.config(row.parts, row.extra_args, &row.labels_json)?;
        let state = parse_unit_state(&row.state)?;
        // Every attempt that ended was counted as the unit's own failure or as an
        // infrastructure ending; a running or succeeded unit is on one attempt more.
        let tries = row.attempts
            + row.infra_attempts
            + u32::from(matches!(state, UnitState::Leased | UnitState::Succeeded));
        out.push((
            row.order,
            UnitRow {
                id: UnitId(row.id),
                label: row.label,
                config,
                state,
                attempts: row.attempts,
                tries,
                last_error: row.last_error,
                log_tail: row.log_tail,
                steps_total: row.steps_total,
                steps_succeeded: row.steps_succeeded,
                agent_id: row.agent_id,
                epoch: row.epoch,
                failure_kind: row.failure_kind.as_deref().and_then(FailureKind::parse),
            },
        ));
    }
    // Sorting here is cheaper than `ORDER BY`, which sorts whole rows in SQLite's sorter.
    out.sort_unstable_by_key(|&(order, _)| order);
    Ok(out.into_iter().map(|(_, unit)| unit).collect())
}

/// The columns of a `units` row as read by [`units`].
struct RawUnit {
    id: String,
    label: String,
    parts: [i64; 4],
    extra_args: String,
    labels_json: String,
    state: String,
    attempts: u32,
    infra_attempts: u32,
    last_error: Option<String>,
    log_tail: Option<String>,
    epoch: u64,
    steps_total: u32,
    steps_succeeded: u32,
    agent_id: Option<String>,
    failure_kind: Option<String>,
    /// `(position, unit_key)`: the order of first submission.
    order: (i64, i64),
}

fn read_unit(r: &Row<'_>) -> rusqlite::Result<RawUnit> {
    Ok(RawUnit {
        id: r.get(0)?,
        label: r.get(1)?,
        parts: [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
        extra_args: r.get(6)?,
        labels_json: r.get(7)?,
        state: r.get(8)?,
        attempts: r.get(9)?,
        last_error: r.get(10)?,
        epoch: r.get(11)?,
        steps_total: r.get(12)?,
        steps_succeeded: r.get(13)?,
        agent_id: r.get(14)?,
        order: (r.get(15)?, r.get(16)?),
        infra_attempts: r.get(18)?,
        log_tail: r.get(17)?,
        failure_kind: r.get(19)?,
    })
}

/// The steps of a unit in run order.
pub(crate) fn unit_steps(
    conn: &Connection,
    campaign: &CampaignId,
    unit: &UnitId,
) -> Result<Vec<StepRow>, StoreError> {
    let Some((key, _)) = campaign_key(conn, campaign)? else {
        return Ok(Vec::new());
    };
    let parts = Parts::load(conn, key)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT s.step_id, s.idx, s.workload_spec, s.load_spec, s.repeat, s.state
             FROM units u JOIN steps s ON s.unit_key = u.unit_key
             WHERE u.campaign_key = ?1 AND u.unit_id = ?2
             ORDER BY s.idx, s.step_id",
        )
        .sql("read steps")?;
    let mut rows = stmt.query((key, unit.as_str())).sql("read steps")?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().sql("read steps")? {
        let (id, index, workload, load, repeat, state): (String, u32, i64, i64, u32, String) = (
            r.get(0).sql("read steps")?,
            r.get(1).sql("read steps")?,
            r.get(2).sql("read steps")?,
            r.get(3).sql("read steps")?,
            r.get(4).sql("read steps")?,
            r.get(5).sql("read steps")?,
        );
        out.push(StepRow {
            spec: StepSpec {
                id: StepId(id),
                index,
                workload: parts.workload(workload)?.clone(),
                load: parts.load_point(load)?.clone(),
                repeat,
            },
            state: state
                .parse()
                .map_err(|e: UnknownState| StoreError::BadValue {
                    column: "steps.state",
                    value: e.0,
                })?,
        });
    }
    Ok(out)
}

/// Parses a `units.state` value.
pub(crate) fn parse_unit_state(state: &str) -> Result<UnitState, StoreError> {
    state
        .parse()
        .map_err(|e: UnknownState| StoreError::BadValue {
            column: "units.state",
            value: e.0,
        })
}
