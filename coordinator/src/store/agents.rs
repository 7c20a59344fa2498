//! Agents: registration (which forgets what the host was found lacking), heartbeats (which renew leases and carry drain orders), drain,
//! listing, and marking agents lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};
use serde_json::json;

use super::audit;
use super::error::{SqlContext, StoreError, json};
use super::faults;
use super::leases::millis;
use super::rows::{AgentRow, AgentState, HeartbeatReply, Registered, UnknownState};
use crate::domain::{AgentId, AgentRegistration, LeaseId};

fn encode<T: serde::Serialize>(value: &T, action: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json { action, source })
}

/// See [`Store::register_agent`](super::Store::register_agent).
pub(crate) fn register(
    conn: &Connection,
    now_ms: i64,
    agent: &AgentRegistration,
) -> Result<Registered, StoreError> {
    let new = conn
        .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")
        .and_then(|mut s| s.query_row([agent.id.as_str()], |_| Ok(())).optional())
        .sql("look up the agent")?
        .is_none();
    let gpus = encode(&agent.gpus, "encode the agent's GPUs")?;
    let labels = encode(&agent.labels, "encode the agent's labels")?;
    let frameworks = encode(&agent.frameworks, "encode the agent's frameworks")?;
    let drain_requested: bool = conn
        .prepare_cached(
            "INSERT INTO agents (id, hostname, gpus_json, labels_json, frameworks_json, version,
                 driver_version, cuda_version, state, registered_at_ms, last_heartbeat_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'active', ?9, ?9)
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname,
                 gpus_json = excluded.gpus_json, labels_json = excluded.labels_json,
                 frameworks_json = excluded.frameworks_json, version = excluded.version,
                 driver_version = excluded.driver_version,
                 cuda_version = excluded.cuda_version, self_draining = 0,
                 state = CASE WHEN agents.drain_requested = 1 THEN 'draining'
                     ELSE 'active' END,
                 registered_at_ms = excluded.registered_at_ms,
                 last_heartbeat_ms = excluded.last_heartbeat_ms
             RETURNING drain_requested = 1",
        )
        .and_then(|mut s| {
            s.query_row(
                (
                    agent.id.as_str(),
                    &agent.hostname,
                    gpus,
                    labels,
                    frameworks,
                    &agent.version,
                    &agent.driver_version,
                    &agent.cuda_version,
                    now_ms,
                ),
                |r| r.get(0),
            )
        })
        .sql("register the agent")?;
    // A restarted agent may have had its engine or models installed meanwhile.
    faults::clear(conn, &agent.id)?;
    Ok(Registered {
        new,
        drain_requested,
        live_leases: live_leases(conn, &agent.id)?,
    })
}

/// The agent's live lease ids.
fn live_leases(conn: &Connection, agent: &AgentId) -> Result<Vec<LeaseId>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT lease_id FROM leases WHERE agent_id = ?1 AND ended_at_ms IS NULL
             ORDER BY granted_at_ms, rowid",
        )
        .sql("read the agent's leases")?;
    stmt.query_map([agent.as_str()], |r| r.get(0).map(LeaseId))
        .sql("read the agent's leases")?
        .collect::<Result<_, _>>()
        .sql("read the agent's leases")
        .map_err(StoreError::from)
}

/// See [`Store::heartbeat`](super::Store::heartbeat).
pub(crate) fn heartbeat(
    conn: &Connection,
    now_ms: i64,
    agent: &AgentId,
    leases: &[(LeaseId, u64)],
    draining: bool,
    ttl: Duration,
) -> Result<HeartbeatReply, StoreError> {
    let drain: Option<bool> = conn
        .prepare_cached(
            "UPDATE agents SET last_heartbeat_ms = MAX(last_heartbeat_ms, ?2),
                 self_draining = ?3,
                 state = CASE WHEN drain_requested = 1 OR ?3 = 1 THEN 'draining'
                     ELSE 'active' END
             WHERE id = ?1
             RETURNING drain_requested = 1",
        )
        .and_then(|mut s| {
            s.query_row((agent.as_str(), now_ms, draining), |r| r.get(0))
                .optional()
        })
        .sql("record the heartbeat")?;
    let Some(drain) = drain else {
        return Err(StoreError::AgentNotFound {
            agent: agent.to_string(),
        });
    };
    // Only extends, and only the holder's lease at its epoch: a lease that ended, was
    // re-leased or is someone else's is revoked.
    let mut renew = conn
        .prepare_cached(
            "UPDATE leases SET expires_at_ms = MAX(expires_at_ms, ?4)
             WHERE lease_id = ?1 AND agent_id = ?2 AND epoch = ?3 AND ended_at_ms IS NULL",
        )
        .sql("renew leases")?;
    let until = now_ms.saturating_add(millis(ttl));
    let mut reply = HeartbeatReply {
        drain,
        ..HeartbeatReply::default()
    };
    for (lease, epoch) in leases {
        let renewed = renew
            .execute((lease.as_str(), agent.as_str(), epoch, until))
            .sql("renew leases")?;
        if renewed == 1 {
            reply.valid.push(lease.clone());
        } else {
            reply.revoked.push(lease.clone());
        }
    }
    Ok(reply)
}

/// How often heartbeats that only renew are written, at most.
pub(crate) const RENEW_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// What a heartbeat found in a read snapshot, deciding whether it needs the writer.
pub(crate) struct Probe {
    /// The answer, as of the snapshot.
    pub reply: HeartbeatReply,
    /// The agent's stored state already says what this heartbeat would write (apart from
    /// its time), so recording it can wait for [`flush`].
    pub unchanged: bool,
    /// The earliest expiry among the valid leases, as stored.
    pub earliest_expiry_ms: Option<i64>,
}

/// Reads what [`heartbeat`] would decide, without writing: `None` for an unknown agent.
pub(crate) fn probe(
    conn: &Connection,
    agent: &AgentId,
    leases: &[(LeaseId, u64)],
    draining: bool,
) -> Result<Option<Probe>, StoreError> {
    let row: Option<(bool, bool, String)> = conn
        .prepare_cached(
            "SELECT drain_requested = 1, self_draining = 1, state FROM agents WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([agent.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .sql("read the agent")?;
    let Some((drain, self_draining, state)) = row else {
        return Ok(None);
    };
    // The state the write path's `CASE` would set; a lost agent always takes the writer.
    let wanted = if drain || draining {
        "draining"
    } else {
        "active"
    };
    let mut probe = Probe {
        reply: HeartbeatReply {
            drain,
            ..HeartbeatReply::default()
        },
        unchanged: self_draining == draining && state == wanted,
        earliest_expiry_ms: None,
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT expires_at_ms FROM leases
             WHERE lease_id = ?1 AND agent_id = ?2 AND epoch = ?3 AND ended_at_ms IS NULL",
        )
        .sql("read the reported leases")?;
    for (lease, epoch) in leases {
        let expires: Option<i64> = stmt
            .query_row((lease.as_str(), agent.as_str(), epoch), |r| r.get(0))
            .optional()
            .sql("read the reported leases")?;
        match expires {
            Some(at) => {
                probe.reply.valid.push(lease.clone());
                probe.earliest_expiry_ms = Some(probe.earliest_expiry_ms.map_or(at, |e| e.min(at)));
            }
            None => probe.reply.revoked.push(lease.clone()),
        }
    }
    Ok(Some(probe))
}

/// Heartbeats that changed nothing but times, waiting to be written in one batch.
///
/// A heartbeat of an agent whose stored state it would not change records its time and its
/// lease renewals here instead of queueing a write of its own; [`flush`] writes them all
/// at most every [`RENEW_FLUSH_INTERVAL`], and before every expiry sweep and lost-agent
/// check, so those never act on times older than the heartbeats already answered. Losing
/// what is here (a crash) is safe: a starting coordinator gives every live lease a full TTL
/// (`leases::resume`), and agents are marked lost only after a TTL of uptime.
#[derive(Debug, Default)]
pub(crate) struct Renewals {
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Agent → latest heartbeat time.
    seen: HashMap<AgentId, i64>,
    /// Lease → (holder, epoch, renewed until).
    leases: HashMap<LeaseId, (AgentId, u64, i64)>,
    /// When a flush was last queued.
    queued_at: Option<Instant>,
}

impl Renewals {
    /// Records a heartbeat of `agent` at `now_ms` renewing `valid` (at their reported
    /// epochs) until `until_ms`. Returns whether a flush is due.
    pub(crate) fn record(
        &self,
        agent: &AgentId,
        leases: &[(LeaseId, u64)],
        valid: &[LeaseId],
        now_ms: i64,
        until_ms: i64,
    ) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let seen = p.seen.entry(agent.clone()).or_insert(now_ms);
        *seen = (*seen).max(now_ms);
        for (lease, epoch) in leases.iter().filter(|(l, _)| valid.contains(l)) {
            let entry = p
                .leases
                .entry(lease.clone())
                .or_insert((agent.clone(), *epoch, until_ms));
            *entry = (agent.clone(), *epoch, entry.2.max(until_ms));
        }
        match p.queued_at {
            Some(at) if at.elapsed() < RENEW_FLUSH_INTERVAL => false,
            _ => {
                p.queued_at = Some(Instant::now());
                true
            }
        }
    }

    /// The latest recorded heartbeat time of `agent` not yet written.
    pub(crate) fn seen(&self, agent: &AgentId) -> Option<i64> {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.seen.get(agent).copied()
    }

    /// Takes what is pending, leaving when a flush was queued.
    fn take(&self) -> Pending {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        Pending {
            seen: std::mem::take(&mut p.seen),
            leases: std::mem::take(&mut p.leases),
            queued_at: p.queued_at,
        }
    }
}

/// Writes the recorded heartbeats: the same `UPDATE`s as [`heartbeat`], never moving a
/// time back, renewing only a live lease of its holder at its epoch. An agent marked lost
/// between its heartbeat's read and this write becomes active (or draining) again, as the
/// write path would have made it.
pub(crate) fn flush(conn: &Connection, renewals: &Renewals) -> Result<(), StoreError> {
    let Pending { seen, leases, .. } = renewals.take();
    if !seen.is_empty() {
        let mut stmt = conn
            .prepare_cached(
                "UPDATE agents SET last_heartbeat_ms = MAX(last_heartbeat_ms, ?2),
                     state = CASE WHEN state != 'lost' THEN state
                         WHEN drain_requested = 1 OR self_draining = 1 THEN 'draining'
                         ELSE 'active' END
                 WHERE id = ?1",
            )
            .sql("record heartbeats")?;
        for (agent, at) in &seen {
            stmt.execute((agent.as_str(), at))
                .sql("record heartbeats")?;
        }
    }
    if !leases.is_empty() {
        let mut stmt = conn
            .prepare_cached(
                "UPDATE leases SET expires_at_ms = MAX(expires_at_ms, ?4)
                 WHERE lease_id = ?1 AND agent_id = ?2 AND epoch = ?3 AND ended_at_ms IS NULL",
            )
            .sql("renew leases")?;
        for (lease, (agent, epoch, until)) in &leases {
            stmt.execute((lease.as_str(), agent.as_str(), epoch, until))
                .sql("renew leases")?;
        }
    }
    Ok(())
}

/// See [`Store::drain_agent`](super::Store::drain_agent).
pub(crate) fn drain(
    conn: &Connection,
    now_ms: i64,
    agent: &AgentId,
    actor: &str,
) -> Result<Vec<LeaseId>, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE agents SET drain_requested = 1,
                 state = CASE WHEN state = 'lost' THEN 'lost' ELSE 'draining' END
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute([agent.as_str()]))
        .sql("drain the agent")?;
    if changed == 0 {
        return Err(StoreError::AgentNotFound {
            agent: agent.to_string(),
        });
    }
    let leases = live_leases(conn, agent)?;
    audit::append(
        conn,
        now_ms,
        actor,
        "drain",
        &format!("agent/{agent}"),
        &json!({ "agent_id": agent.as_str(), "live_leases": leases.len() }),
    )?;
    Ok(leases)
}

/// See [`Store::mark_lost_agents`](super::Store::mark_lost_agents).
pub(crate) fn mark_lost(
    conn: &Connection,
    now_ms: i64,
    silence: Duration,
) -> Result<Vec<AgentId>, StoreError> {
    let before = now_ms.saturating_sub(millis(silence));
    let mut stmt = conn
        .prepare_cached(
            "UPDATE agents SET state = 'lost'
             WHERE state != 'lost' AND last_heartbeat_ms < ?1
             RETURNING id",
        )
        .sql("mark agents lost")?;
    let mut lost: Vec<AgentId> = stmt
        .query_map([before], |r| r.get(0).map(AgentId))
        .sql("mark agents lost")?
        .collect::<Result<_, _>>()
        .sql("mark agents lost")?;
    lost.sort();
    Ok(lost)
}

/// See [`Store::list_agents`](super::Store::list_agents).
pub(crate) fn list(conn: &Connection) -> Result<Vec<AgentRow>, StoreError> {
    let mut leases: HashMap<String, Vec<LeaseId>> = HashMap::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT agent_id, lease_id FROM leases WHERE ended_at_ms IS NULL
                 ORDER BY granted_at_ms, rowid",
            )
            .sql("read live leases")?;
        let mut rows = stmt.query([]).sql("read live leases")?;
        while let Some(r) = rows.next().sql("read live leases")? {
            leases
                .entry(r.get(0).sql("read live leases")?)
                .or_default()
                .push(LeaseId(r.get(1).sql("read live leases")?));
        }
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, hostname, gpus_json, labels_json, frameworks_json, version,
                 driver_version, cuda_version, state, drain_requested = 1,
                 registered_at_ms, last_heartbeat_ms
             FROM agents ORDER BY id",
        )
        .sql("list agents")?;
    let mut rows = stmt.query([]).sql("list agents")?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().sql("list agents")? {
        let get = |i| r.get::<_, String>(i).sql("list agents");
        let id = get(0)?;
        let state = get(8)?;
        let leases = leases.remove(&id).unwrap_or_default();
        let state = match state
            .parse()
            .map_err(|e: UnknownState| StoreError::BadValue {
                column: "agents.state",
                value: e.0,
            })? {
            AgentState::Draining if leases.is_empty() => AgentState::Drained,
            state => state,
        };
        let id = AgentId(id);
        let faults = faults::list(conn, &id)?;
        out.push(AgentRow {
            id,
            hostname: get(1)?,
            gpus: json(&get(2)?, "decode the agent's GPUs")?,
            labels: json(&get(3)?, "decode the agent's labels")?,
            frameworks: json(&get(4)?, "decode the agent's frameworks")?,
            version: get(5)?,
            driver_version: get(6)?,
            cuda_version: get(7)?,
            state,
            drain_requested: r.get(9).sql("list agents")?,
            registered_at_ms: r.get(10).sql("list agents")?,
            last_heartbeat_ms: r.get(11).sql("list agents")?,
            leases,
            faults,
        });
    }
    Ok(out)
}
