//! Leases: granting a unit to an agent (matching and preference), fencing every write of
//! a lease holder by epoch, and the ways a lease ends (complete, fail, release, expiry).
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
//!   release, expiry), which never fail a unit until [`MAX_INFRA_ATTEMPTS`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row};

use super::error::{SqlContext, StoreError};
use super::rows::{
    ExpiredLease, FailOutcome, GrantedLease, LeaseEnd, ReleaseOutcome, UnitRef, UnitState,
};
use super::specs::{Part, Parts};
use crate::domain::{
    AgentGpu, AgentId, CampaignId, LeaseId, LeaseRequest, ReleaseReason, StepId, StepSpec, UnitId,
};

/// Infrastructure endings (preemption, release, expiry) a unit survives: the one that
/// reaches this number fails the unit with "gave up after 20 infrastructure failures
/// (last: …)", so a unit that kills every host it lands on cannot loop forever. They
/// never count against the campaign's `max_attempts`.
pub const MAX_INFRA_ATTEMPTS: u32 = 20;

/// Warm configurations looked at per grant; an agent rarely has more than a few.
pub(crate) const MAX_WARM_CONFIGS: usize = 64;

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---- granting ----

/// Picks the best runnable unit for the agent and leases it; see
/// [`Store::acquire_lease`](super::Store::acquire_lease).
pub(crate) fn acquire(
    conn: &Connection,
    now_ms: i64,
    request: &LeaseRequest,
    ttl: Duration,
) -> Result<Option<GrantedLease>, StoreError> {
    let Some(agent) = AgentFit::load(conn, request)? else {
        return Ok(None);
    };
    if agent.free.is_empty() && !agent.cpu {
        return Ok(None);
    }
    let mut fit = Matcher {
        agent,
        parts: Parts::lazy(),
        gpus: HashMap::new(),
        frameworks: HashMap::new(),
        labels: HashMap::new(),
    };
    let campaigns = runnable_campaigns(conn)?;
    let warm: Vec<&UnitId> = request.warm_configs.iter().take(MAX_WARM_CONFIGS).collect();
    let mut chosen = None;
    if !warm.is_empty() {
        'warm: for &(_, campaign) in &campaigns {
            let mut best: Option<(Candidate, Vec<u32>)> = None;
            for &unit in &warm {
                let Some(c) = warm_candidate(conn, campaign, unit)? else {
                    continue;
                };
                if best.as_ref().is_some_and(|(b, _)| b.position <= c.position) {
                    continue;
                }
                if let Some(gpus) = fit.fits(conn, &c)? {
                    best = Some((c, gpus));
                }
            }
            if best.is_some() {
                chosen = best;
                break 'warm;
            }
        }
    }
    // Otherwise the best unit of the highest priority that has one. Among campaigns of
    // that priority: first a unit whose configuration is not running elsewhere (the host
    // running it finds it warm later), then the unit with the longest steps, then the one
    // taking the most GPUs (see [`Rank`]), then the older campaign.
    let mut at = 0;
    let mut best_key = None;
    while chosen.is_none() && at < campaigns.len() {
        let priority = campaigns[at].0;
        while at < campaigns.len() && campaigns[at].0 == priority {
            if let Some((c, gpus, rank)) = best_fitting(conn, campaigns[at].1, &mut fit)? {
                let key = (
                    !running_elsewhere(conn, c.unit_key)?,
                    rank.step_cost,
                    rank.gpus,
                );
                if best_key.is_none_or(|best| key > best) {
                    best_key = Some(key);
                    chosen = Some((c, gpus));
                }
            }
            at += 1;
        }
    }
    let Some((candidate, gpus)) = chosen else {
        return Ok(None);
    };
    grant(
        conn,
        now_ms,
        &request.agent,
        candidate.unit_key,
        gpus,
        ttl,
        fit.parts,
    )
    .map(Some)
}

/// What the grant needs to know about the asking agent.
struct AgentFit {
    /// Free GPU indices by lower-cased GPU type, ascending: offered by the agent,
    /// registered, and not held by its live leases.
    free: HashMap<String, Vec<u32>>,
    /// A CPU slot is free.
    cpu: bool,
    labels: BTreeMap<String, String>,
    /// Empty = any.
    frameworks: Vec<String>,
}

impl AgentFit {
    /// `None` when the agent is draining; [`StoreError::AgentNotFound`] when unknown.
    fn load(conn: &Connection, request: &LeaseRequest) -> Result<Option<AgentFit>, StoreError> {
        let row: Option<(String, String, String, bool)> = conn
            .prepare_cached(
                "SELECT gpus_json, labels_json, frameworks_json,
                     drain_requested = 1 OR self_draining = 1
                 FROM agents WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([request.agent.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .sql("read the agent")?;
        let Some((gpus, labels, frameworks, draining)) = row else {
            return Err(StoreError::AgentNotFound {
                agent: request.agent.to_string(),
            });
        };
        if draining {
            return Ok(None);
        }
        let gpus: Vec<AgentGpu> = json(&gpus, "decode the agent's GPUs")?;
        let held = held_gpus(conn, &request.agent)?;
        let offered: HashSet<u32> = request.free_gpu_indices.iter().copied().collect();
        let mut free: HashMap<String, Vec<u32>> = HashMap::new();
        for gpu in &gpus {
            if offered.contains(&gpu.index) && !held.contains(&gpu.index) {
                free.entry(gpu.gpu_type.to_ascii_lowercase())
                    .or_default()
                    .push(gpu.index);
            }
        }
        for indices in free.values_mut() {
            indices.sort_unstable();
            indices.dedup();
        }
        Ok(Some(AgentFit {
            free,
            cpu: request.cpu_slots_free > 0,
            labels: json(&labels, "decode the agent's labels")?,
            frameworks: json(&frameworks, "decode the agent's frameworks")?,
        }))
    }
}

/// GPU indices held by the agent's live leases.
fn held_gpus(conn: &Connection, agent: &AgentId) -> Result<HashSet<u32>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT gpu_indices_json FROM leases WHERE agent_id = ?1 AND ended_at_ms IS NULL",
        )
        .sql("read the agent's leases")?;
    let mut rows = stmt
        .query([agent.as_str()])
        .sql("read the agent's leases")?;
    let mut held = HashSet::new();
    while let Some(r) = rows.next().sql("read the agent's leases")? {
        let text: String = r.get(0).sql("read the agent's leases")?;
        held.extend(json::<Vec<u32>>(&text, "decode a lease's GPU indices")?);
    }
    Ok(held)
}

/// A pending unit as the scheduler's index holds it.
#[derive(Clone)]
struct Candidate {
    gpu_spec: i64,
    framework_spec: i64,
    labels_json: String,
    /// The model's `params_b` (0 when not given).
    model_size: f64,
    position: i64,
    unit_key: i64,
}

fn candidate(r: &Row<'_>) -> rusqlite::Result<Candidate> {
    Ok(Candidate {
        gpu_spec: r.get(0)?,
        framework_spec: r.get(1)?,
        labels_json: r.get(2)?,
        model_size: r.get(3)?,
        position: r.get(4)?,
        unit_key: r.get(5)?,
    })
}

/// Decides whether an agent can run a unit shape, caching each decision.
struct Matcher {
    agent: AgentFit,
    parts: Parts,
    /// gpu_spec → the GPU indices it would get, or `None` when it does not fit.
    gpus: HashMap<i64, Option<Vec<u32>>>,
    frameworks: HashMap<i64, bool>,
    labels: HashMap<String, bool>,
}

impl Matcher {
    /// The GPU indices a unit of this GPU part would get (empty for a CPU unit), or
    /// `None` when it does not fit the agent now.
    fn gpus(&mut self, conn: &Connection, gpu_spec: i64) -> Result<Option<Vec<u32>>, StoreError> {
        if let Some(known) = self.gpus.get(&gpu_spec) {
            return Ok(known.clone());
        }
        let Part::Gpu(gpu) = self.parts.fetch(conn, gpu_spec)? else {
            return Err(wrong_kind("units.gpu_spec", gpu_spec));
        };
        let fit = if gpu.is_cpu() {
            self.agent.cpu.then(Vec::new)
        } else {
            let need = gpu.count.max(1) as usize;
            self.agent
                .free
                .get(&gpu.gpu_type.to_ascii_lowercase())
                .filter(|free| free.len() >= need)
                .map(|free| free[..need].to_vec())
        };
        self.gpus.insert(gpu_spec, fit.clone());
        Ok(fit)
    }

    fn framework(&mut self, conn: &Connection, framework_spec: i64) -> Result<bool, StoreError> {
        if let Some(&known) = self.frameworks.get(&framework_spec) {
            return Ok(known);
        }
        let Part::Framework(framework) = self.parts.fetch(conn, framework_spec)? else {
            return Err(wrong_kind("units.framework_spec", framework_spec));
        };
        let ok = self.agent.frameworks.is_empty()
            || self
                .agent
                .frameworks
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&framework.name));
        self.frameworks.insert(framework_spec, ok);
        Ok(ok)
    }

    fn labels(&mut self, labels_json: &str) -> Result<bool, StoreError> {
        if let Some(&known) = self.labels.get(labels_json) {
            return Ok(known);
        }
        let wanted: BTreeMap<String, String> = if labels_json == "{}" {
            BTreeMap::new()
        } else {
            json(labels_json, "decode unit labels")?
        };
        let ok = wanted
            .iter()
            .all(|(k, v)| self.agent.labels.get(k) == Some(v));
        self.labels.insert(labels_json.to_owned(), ok);
        Ok(ok)
    }

    /// The GPU indices the candidate would get, or `None` when the agent cannot run it.
    fn fits(&mut self, conn: &Connection, c: &Candidate) -> Result<Option<Vec<u32>>, StoreError> {
        let Some(gpus) = self.gpus(conn, c.gpu_spec)? else {
            return Ok(None);
        };
        if !self.framework(conn, c.framework_spec)? || !self.labels(&c.labels_json)? {
            return Ok(None);
        }
        Ok(Some(gpus))
    }
}

/// Campaigns with pending units as (priority, key), best first: priority (higher first),
/// then age.
///
/// One seek per campaign in the `units_runnable_by_age` index (the next campaign key with
/// a pending unit), so finished campaigns cost nothing however many there are.
fn runnable_campaigns(conn: &Connection) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut next = conn
        .prepare_cached(
            "SELECT campaign_key FROM units INDEXED BY units_runnable_by_age
             WHERE state = 'pending' AND campaign_key > ?1
             ORDER BY campaign_key LIMIT 1",
        )
        .sql("find runnable campaigns")?;
    let mut settings = conn
        .prepare_cached("SELECT priority, created_at_ms FROM campaigns WHERE campaign_key = ?1")
        .sql("find runnable campaigns")?;
    let mut found: Vec<(i64, i64, i64)> = Vec::new();
    let mut after = i64::MIN;
    while let Some(key) = next
        .query_row([after], |r| r.get::<_, i64>(0))
        .optional()
        .sql("find runnable campaigns")?
    {
        let (priority, created): (i64, i64) = settings
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .sql("find runnable campaigns")?;
        found.push((-priority, created, key));
        after = key;
    }
    found.sort_unstable();
    Ok(found
        .into_iter()
        .map(|(priority, _, key)| (-priority, key))
        .collect())
}

/// Whether the configuration of the pending unit `unit_key` runs right now, leased in
/// another campaign (one seek in `units_leased_by_config`).
fn running_elsewhere(conn: &Connection, unit_key: i64) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM units INDEXED BY units_leased_by_config
             WHERE state = 'leased'
               AND unit_id = (SELECT unit_id FROM units WHERE unit_key = ?1))",
    )
    .and_then(|mut s| s.query_row([unit_key], |r| r.get(0)))
    .sql("look for the configuration running elsewhere")
    .map_err(StoreError::from)
}

/// The campaign's pending unit with this id, if any.
fn warm_candidate(
    conn: &Connection,
    campaign_key: i64,
    unit: &UnitId,
) -> Result<Option<Candidate>, StoreError> {
    conn.prepare_cached(
        "SELECT gpu_spec, framework_spec, labels_json, model_size, position, unit_key
         FROM units WHERE campaign_key = ?1 AND unit_id = ?2 AND state = 'pending'",
    )
    .and_then(|mut s| {
        s.query_row((campaign_key, unit.as_str()), candidate)
            .optional()
    })
    .sql("look up a warm unit")
    .map_err(StoreError::from)
}

/// How a fitting unit ranks, larger first: its estimated step time, then the GPUs it
/// takes, then the older position.
///
/// This is longest-processing-time first with what the coordinator knows before a unit
/// runs. A step's time is estimated as the model's size over the square root of the GPU
/// count (`params_b / √gpus`: a bigger model is slower, more GPUs help sublinearly), so a
/// 47B model on 2 GPUs goes before the same model on 4. Longest first keeps long units, and
/// the chains of warm reuse they start, off the end of the night, where they would run
/// alone while the rest of the fleet idles. Without `params_b` every estimate is 0 and the
/// unit taking the most GPUs goes first (which packs hosts best while they are empty).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// `params_b / √gpus`, in millions of parameters.
    step_cost: u64,
    gpus: usize,
    position: std::cmp::Reverse<i64>,
}

impl Rank {
    fn new(params_b: f64, gpus: usize, position: i64) -> Rank {
        let step_cost = params_b.max(0.0) * 1000.0 / (gpus.max(1) as f64).sqrt();
        Rank {
            step_cost: step_cost.round() as u64,
            gpus,
            position: std::cmp::Reverse(position),
        }
    }
}

/// The campaign's pending unit the agent should run next (see [`Rank`]), with its GPUs.
///
/// It walks the campaign's shapes (GPU part, framework part, labels) in
/// `units_runnable_by_size`: each seek lands on the next shape's unit of the largest model,
/// the oldest of them (within a shape the GPU count is fixed, so that is the shape's best
/// [`Rank`]), and a GPU or framework part the agent cannot run is skipped whole. So the
/// cost is a seek per shape, not a row per unit: an agent that fits nothing in a
/// 100,000-unit campaign of 40 GPU parts costs 40 seeks.
fn best_fitting(
    conn: &Connection,
    campaign_key: i64,
    fit: &mut Matcher,
) -> Result<Option<(Candidate, Vec<u32>, Rank)>, StoreError> {
    const COLUMNS: &str = "SELECT gpu_spec, framework_spec, labels_json, model_size, position,
             unit_key
         FROM units INDEXED BY units_runnable_by_size
         WHERE campaign_key = ?1 AND state = 'pending'";
    const ORDER: &str =
        "ORDER BY gpu_spec, framework_spec, labels_json, model_size DESC, position LIMIT 1";
    let first = format!("{COLUMNS} {ORDER}");
    let next_gpu = format!("{COLUMNS} AND gpu_spec > ?2 {ORDER}");
    let next_framework = format!("{COLUMNS} AND gpu_spec = ?2 AND framework_spec > ?3 {ORDER}");
    let next_labels =
        format!("{COLUMNS} AND gpu_spec = ?2 AND framework_spec = ?3 AND labels_json > ?4 {ORDER}");
    let query = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.query_row(params, candidate).optional())
            .sql("walk runnable units")
    };

    /// Which part of the shape to move past.
    enum Skip {
        Gpu,
        Framework,
        Labels,
    }
    let mut best: Option<(Candidate, Vec<u32>, Rank)> = None;
    let mut at = query(&first, &[&campaign_key])?;
    while let Some(c) = at {
        let skip = match fit.gpus(conn, c.gpu_spec)? {
            None => Skip::Gpu,
            Some(_) if !fit.framework(conn, c.framework_spec)? => Skip::Framework,
            Some(_) if !fit.labels(&c.labels_json)? => Skip::Labels,
            Some(gpus) => {
                let rank = Rank::new(c.model_size, gpus.len(), c.position);
                if best.as_ref().is_none_or(|(_, _, b)| rank > *b) {
                    best = Some((c.clone(), gpus, rank));
                }
                Skip::Labels
            }
        };
        // Past this shape: its next labels, else its next framework, else its next GPU.
        at = None;
        if matches!(skip, Skip::Labels) {
            at = query(
                &next_labels,
                &[
                    &campaign_key,
                    &c.gpu_spec,
                    &c.framework_spec,
                    &c.labels_json,
                ],
            )?;
        }
        if at.is_none() && !matches!(skip, Skip::Gpu) {
            at = query(
                &next_framework,
                &[&campaign_key, &c.gpu_spec, &c.framework_spec],
            )?;
        }
        if at.is_none() {
            at = query(&next_gpu, &[&campaign_key, &c.gpu_spec])?;
        }
    }
    Ok(best)
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
             FROM steps s WHERE s.unit_key = ?1 ORDER BY s.idx, s.step_id",
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
        gpu_indices: gpus,
        expires_at_ms,
        attempt,
    })
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
) -> Result<FailOutcome, StoreError> {
    let held = lookup(conn, lease)?;
    if !held.check_live(epoch, &[LeaseEnd::Failed])? {
        return Ok(FailOutcome {
            will_retry: matches!(held.unit_state, UnitState::Pending | UnitState::Leased),
            attempts: held.attempts,
            max_attempts: held.max_attempts,
            unit: held.unit,
        });
    }
    let attempts = held.attempts.saturating_add(1);
    let will_retry = attempts < held.max_attempts;
    let state = if will_retry {
        UnitState::Pending
    } else {
        UnitState::Failed
    };
    let log_tail = (!log_tail.is_empty()).then_some(log_tail);
    set_unit(
        conn,
        now_ms,
        &held,
        state,
        attempts,
        held.infra_attempts,
        Some((error, log_tail)),
    )?;
    end_lease(conn, now_ms, &held, LeaseEnd::Failed, Some(error))?;
    Ok(FailOutcome {
        will_retry,
        attempts,
        max_attempts: held.max_attempts,
        unit: held.unit,
    })
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

fn wrong_kind(column: &'static str, id: i64) -> StoreError {
    StoreError::BadValue {
        column,
        value: format!("spec {id} (wrong kind)"),
    }
}

/// Decodes a JSON column.
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    text: &str,
    action: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { action, source })
}
