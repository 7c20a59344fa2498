//! Placement: choosing the pending unit an asking agent runs next, and the GPUs it gets.
//! It only reads; `leases` grants what it picks.
//!
//! - A unit fits an agent when the agent has enough free GPUs of the unit's type (offered,
//!   registered, and not held by its live leases) or a free CPU slot for a CPU unit, runs
//!   the unit's framework (an agent naming none runs any), carries every label the unit
//!   asks for, and its host is not known to lack the unit's framework or model (`faults`).
//!   [`Matcher`] decides, caching each decision per GPU part, framework part, model part
//!   and label set.
//! - Warm first: among the configurations the agent names as warm, a fitting pending unit
//!   of the first campaign (by priority, then age) that has one, the earliest in it.
//! - Otherwise the best fitting unit of the highest priority that has one: first a unit
//!   whose configuration is not running elsewhere, then the longest estimated steps and the
//!   most GPUs ([`Rank`]), then the older campaign.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Row};

use super::error::{SqlContext, StoreError, json};
use super::faults;
use super::specs::{Part, Parts};
use crate::domain::{AgentGpu, AgentId, LeaseRequest, UnitId};

/// Warm configurations looked at per grant; an agent rarely has more than a few.
pub(crate) const MAX_WARM_CONFIGS: usize = 64;

/// The unit chosen for an agent, as the grant needs it.
pub(crate) struct Placement {
    /// The unit's row.
    pub unit_key: i64,
    /// The GPU indices it gets (empty for a CPU unit).
    pub gpus: Vec<u32>,
    /// The configuration parts read while matching, for the grant to reuse.
    pub parts: Parts,
}

/// Picks the best runnable unit for the agent (see the module docs). `None` when the agent
/// is draining, has nothing free or fits no pending unit; [`StoreError::AgentNotFound`]
/// when it is unknown.
pub(crate) fn choose(
    conn: &Connection,
    request: &LeaseRequest,
) -> Result<Option<Placement>, StoreError> {
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
        models: HashMap::new(),
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
    Ok(Some(Placement {
        unit_key: candidate.unit_key,
        gpus,
        parts: fit.parts,
    }))
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
    /// What its host lacks, as `(kind, spec JSON)` (`faults`); nearly always empty.
    lacking: HashSet<(String, String)>,
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
            lacking: faults::lacking(conn, &request.agent)?,
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
    model_spec: i64,
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
        model_spec: r.get(6)?,
    })
}

/// Decides whether an agent can run a unit shape, caching each decision.
struct Matcher {
    agent: AgentFit,
    parts: Parts,
    /// gpu_spec → the GPU indices it would get, or `None` when it does not fit.
    gpus: HashMap<i64, Option<Vec<u32>>>,
    frameworks: HashMap<i64, bool>,
    /// model_spec → whether the host has the model (is not known to lack it).
    models: HashMap<i64, bool>,
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
        let ok = (self.agent.frameworks.is_empty()
            || self
                .agent
                .frameworks
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&framework.name)))
            && !self.lacks(conn, "framework", framework_spec)?;
        self.frameworks.insert(framework_spec, ok);
        Ok(ok)
    }

    /// Whether the host has the unit's model (is not known to lack its files).
    fn model(&mut self, conn: &Connection, model_spec: i64) -> Result<bool, StoreError> {
        if self.agent.lacking.is_empty() {
            return Ok(true);
        }
        if let Some(&known) = self.models.get(&model_spec) {
            return Ok(known);
        }
        let ok = !self.lacks(conn, "model", model_spec)?;
        self.models.insert(model_spec, ok);
        Ok(ok)
    }

    /// Whether the host is known to lack the part `spec_id` of this kind.
    fn lacks(&self, conn: &Connection, kind: &str, spec_id: i64) -> Result<bool, StoreError> {
        if self.agent.lacking.is_empty() {
            return Ok(false);
        }
        let Some(spec_json) = faults::spec_json(conn, spec_id)? else {
            return Ok(false);
        };
        Ok(self.agent.lacking.contains(&(kind.to_owned(), spec_json)))
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
        if !self.framework(conn, c.framework_spec)?
            || !self.labels(&c.labels_json)?
            || !self.model(conn, c.model_spec)?
        {
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
        "SELECT gpu_spec, framework_spec, labels_json, model_size, position, unit_key,
             model_spec
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
             unit_key, model_spec
         FROM units INDEXED BY units_runnable_by_size
         WHERE campaign_key = ?1 AND state = 'pending'";
    const ORDER: &str =
        "ORDER BY gpu_spec, framework_spec, labels_json, model_size DESC, position LIMIT 1";
    let first = format!("{COLUMNS} {ORDER}");
    let next_gpu = format!("{COLUMNS} AND gpu_spec > ?2 {ORDER}");
    let next_framework = format!("{COLUMNS} AND gpu_spec = ?2 AND framework_spec > ?3 {ORDER}");
    let next_labels =
        format!("{COLUMNS} AND gpu_spec = ?2 AND framework_spec = ?3 AND labels_json > ?4 {ORDER}");
    // The shape's next unit in the index's order (smaller model, else later position).
    let next_in_shape = format!(
        "{COLUMNS} AND gpu_spec = ?2 AND framework_spec = ?3 AND labels_json = ?4
             AND (model_size < ?5 OR (model_size = ?5 AND position > ?6)) {ORDER}"
    );
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
        /// Only this unit: its host lacks the unit's model, the shape's next unit may
        /// need another. Row by row, but only for an agent with a model fault.
        Unit,
    }
    let mut best: Option<(Candidate, Vec<u32>, Rank)> = None;
    let mut at = query(&first, &[&campaign_key])?;
    while let Some(c) = at {
        let skip = match fit.gpus(conn, c.gpu_spec)? {
            None => Skip::Gpu,
            Some(_) if !fit.framework(conn, c.framework_spec)? => Skip::Framework,
            Some(_) if !fit.labels(&c.labels_json)? => Skip::Labels,
            Some(_) if !fit.model(conn, c.model_spec)? => Skip::Unit,
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
        if matches!(skip, Skip::Unit) {
            at = query(
                &next_in_shape,
                &[
                    &campaign_key,
                    &c.gpu_spec,
                    &c.framework_spec,
                    &c.labels_json,
                    &c.model_size,
                    &c.position,
                ],
            )?;
        }
        if at.is_none() && matches!(skip, Skip::Labels | Skip::Unit) {
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

/// The error for a unit column naming a configuration part of another kind.
fn wrong_kind(column: &'static str, id: i64) -> StoreError {
    StoreError::BadValue {
        column,
        value: format!("spec {id} (wrong kind)"),
    }
}
