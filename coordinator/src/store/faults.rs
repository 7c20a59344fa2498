//! Host faults: what an agent's host lacks (a framework's program, a model's files), found
//! when a server failed to start for want of it. The scheduler gives that agent no unit
//! needing it until the agent registers again (docs/leases.md, "Failures and retries").
//!
//! A fault names the configuration part by its JSON, so it holds in every campaign that
//! uses the same framework or model, not only in the one whose unit found it.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension};

use super::error::{SqlContext, StoreError, json};
use super::rows::{AgentFault, FailureKind, UnitRef};
use crate::domain::{AgentId, CampaignId, UnitId};

/// The part of a unit's configuration that a host lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lacking {
    /// The framework's program (a missing engine).
    Framework,
    /// The model's files.
    Model,
}

impl Lacking {
    /// The part a failure of this kind shows missing, if it shows one.
    pub(crate) fn of(kind: FailureKind) -> Option<Lacking> {
        match kind {
            FailureKind::MissingEngine | FailureKind::ImageUnavailable => Some(Lacking::Framework),
            FailureKind::MissingModel => Some(Lacking::Model),
            _ => None,
        }
    }

    /// The `agent_faults.kind` and `specs.kind` spelling.
    fn as_str(self) -> &'static str {
        match self {
            Lacking::Framework => "framework",
            Lacking::Model => "model",
        }
    }

    /// The `units` column naming the part.
    fn unit_column(self) -> &'static str {
        match self {
            Lacking::Framework => "framework_spec",
            Lacking::Model => "model_spec",
        }
    }
}

/// A part one host lacks, as recorded.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub lacking: Lacking,
    pub spec_json: String,
    /// The part's name.
    pub name: String,
}

/// Records that `agent`'s host lacks the `lacking` part of the unit `unit_key`. Returns
/// the fault (recorded again, it keeps the first failure's words).
pub(crate) fn record(
    conn: &Connection,
    now_ms: i64,
    agent: &AgentId,
    unit_key: i64,
    lacking: Lacking,
    error: &str,
) -> Result<Fault, StoreError> {
    let sql = format!(
        "SELECT s.spec_json, COALESCE(json_extract(s.spec_json, '$.name'), '')
         FROM units u JOIN specs s ON s.spec_id = u.{}
         WHERE u.unit_key = ?1",
        lacking.unit_column()
    );
    let (spec_json, name): (String, String) = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row([unit_key], |r| Ok((r.get(0)?, r.get(1)?))))
        .sql("read the part the host lacks")?;
    conn.prepare_cached(
        "INSERT INTO agent_faults (agent_id, kind, spec_json, name, error, found_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (agent_id, kind, spec_json) DO NOTHING",
    )
    .and_then(|mut s| {
        s.execute((
            agent.as_str(),
            lacking.as_str(),
            &spec_json,
            &name,
            error,
            now_ms,
        ))
    })
    .sql("record the host fault")?;
    Ok(Fault {
        lacking,
        spec_json,
        name,
    })
}

/// Whether an active agent other than `agent`, not known to lack the part and (for a
/// framework) not limited to other frameworks, is registered to take units needing it.
/// GPU shapes are not compared: an agent of the wrong GPUs counts, and the unit waits
/// for it as a unit waits for any GPU no agent has.
pub(crate) fn another_agent_may_run(
    conn: &Connection,
    agent: &AgentId,
    fault: &Fault,
) -> Result<bool, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT frameworks_json FROM agents a
             WHERE a.id != ?1 AND a.state = 'active'
               AND NOT EXISTS (SELECT 1 FROM agent_faults f
                   WHERE f.agent_id = a.id AND f.kind = ?2 AND f.spec_json = ?3)",
        )
        .sql("look for another agent")?;
    let mut rows = stmt
        .query((agent.as_str(), fault.lacking.as_str(), &fault.spec_json))
        .sql("look for another agent")?;
    while let Some(r) = rows.next().sql("look for another agent")? {
        if fault.lacking == Lacking::Model {
            return Ok(true);
        }
        let text: String = r.get(0).sql("look for another agent")?;
        let frameworks: Vec<String> = json(&text, "decode an agent's frameworks")?;
        if frameworks.is_empty()
            || frameworks
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&fault.name))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fails every pending unit, in any campaign, that needs the faulted part, with `error`:
/// no agent is left to run them. Their pending steps fail too. Returns the units.
pub(crate) fn fail_pending_needing(
    conn: &Connection,
    now_ms: i64,
    fault: &Fault,
    kind: FailureKind,
    error: &str,
) -> Result<Vec<UnitRef>, StoreError> {
    let sql = format!(
        "UPDATE units SET state = 'failed', last_error = ?1, log_tail = NULL,
             failure_kind = ?2, updated_at_ms = ?3
         WHERE state = 'pending' AND {} IN
             (SELECT spec_id FROM specs WHERE kind = ?4 AND spec_json = ?5)
         RETURNING unit_key, unit_id, label,
             (SELECT id FROM campaigns c WHERE c.campaign_key = units.campaign_key)",
        fault.lacking.unit_column()
    );
    let failed: Vec<(i64, UnitRef)> = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(
                (
                    error,
                    kind.as_str(),
                    now_ms,
                    fault.lacking.as_str(),
                    &fault.spec_json,
                ),
                |r| {
                    Ok((
                        r.get(0)?,
                        UnitRef {
                            unit: UnitId(r.get(1)?),
                            label: r.get(2)?,
                            campaign: CampaignId(r.get(3)?),
                        },
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()
        })
        .sql("fail the units no agent can run")?;
    let mut steps = conn
        .prepare_cached(
            "UPDATE steps SET state = 'failed' WHERE unit_key = ?1 AND state = 'pending'",
        )
        .sql("fail the units' pending steps")?;
    for (key, _) in &failed {
        steps.execute([key]).sql("fail the units' pending steps")?;
    }
    Ok(failed.into_iter().map(|(_, unit)| unit).collect())
}

/// The parts `agent`'s host lacks, as `(kind, spec JSON)` for the scheduler.
pub(crate) fn lacking(
    conn: &Connection,
    agent: &AgentId,
) -> Result<HashSet<(String, String)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT kind, spec_json FROM agent_faults WHERE agent_id = ?1")
        .sql("read the agent's faults")?;
    stmt.query_map([agent.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .sql("read the agent's faults")
        .map_err(StoreError::from)
}

/// The faults of `agent`, oldest first, for listings.
pub(crate) fn list(conn: &Connection, agent: &AgentId) -> Result<Vec<AgentFault>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT kind, name, error, found_at_ms FROM agent_faults WHERE agent_id = ?1
             ORDER BY found_at_ms, kind, name",
        )
        .sql("read the agent's faults")?;
    stmt.query_map([agent.as_str()], |r| {
        Ok(AgentFault {
            kind: r.get(0)?,
            name: r.get(1)?,
            error: r.get(2)?,
            found_at_ms: r.get(3)?,
        })
    })
    .and_then(|rows| rows.collect())
    .sql("read the agent's faults")
    .map_err(StoreError::from)
}

/// Forgets what `agent`'s host lacked: it registered again, perhaps after the engine or
/// the model was installed.
pub(crate) fn clear(conn: &Connection, agent: &AgentId) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM agent_faults WHERE agent_id = ?1")
        .and_then(|mut s| s.execute([agent.as_str()]))
        .sql("clear the agent's faults")?;
    Ok(())
}

/// The spec JSON of a part, for matching it against faults; `None` for an unknown id.
pub(crate) fn spec_json(conn: &Connection, spec_id: i64) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT spec_json FROM specs WHERE spec_id = ?1")
        .and_then(|mut s| s.query_row([spec_id], |r| r.get(0)).optional())
        .sql("read a configuration part")
        .map_err(StoreError::from)
}
