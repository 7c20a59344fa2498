//! Submitting a campaign: encoding an expansion into rows, and inserting or extending the
//! campaign on the writer.
//!
//! Encoding (deduplicating configuration parts, serializing them once, building labels)
//! happens on the caller's side by [`encode`], so the writer thread only runs prepared
//! inserts: it is the one resource every write shares.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use rusqlite::{Connection, OptionalExtension, Statement};
use serde_json::json;

use super::audit;
use super::error::{SqlContext, StoreError};
use super::rows::{SubmitOutcome, UnitState};
use super::specs::{Interner, SpecKind};
use crate::domain::{CampaignId, Dropped, Expansion};

/// A submission ready for the writer: owned, with every JSON column encoded.
pub(crate) struct Encoded {
    name: String,
    description: Option<String>,
    priority: i32,
    max_attempts: u32,
    source_yaml: String,
    actor: String,
    /// Distinct configuration parts; units and steps hold indices into this.
    specs: Vec<(SpecKind, String)>,
    /// Units sorted by id (see [`submit`] for why).
    units: Vec<EncodedUnit>,
    /// Every step, grouped by unit in expansion order; each unit names its range.
    steps: Vec<EncodedStep>,
    dropped: Vec<Dropped>,
}

struct EncodedUnit {
    id: String,
    /// Index in the expansion.
    position: usize,
    label: String,
    /// Model, GPU, framework and quantization, as indices into [`Encoded::specs`].
    parts: [usize; 4],
    extra_args: String,
    labels_json: String,
    steps: Range<usize>,
}

struct EncodedStep {
    id: String,
    idx: u32,
    workload: usize,
    load: usize,
    repeat: u32,
}

/// Encodes an expansion for [`submit`]: CPU work only, about a microsecond per unit.
pub(crate) fn encode(
    expansion: &Expansion,
    source_yaml: &str,
    actor: &str,
) -> Result<Encoded, StoreError> {
    let mut models = Interner::default();
    let mut gpus = Interner::default();
    let mut frameworks = Interner::default();
    let mut quantizations = Interner::default();
    let mut workloads = Interner::default();
    let mut loads = Interner::default();

    // Pass 1: intern, with indices local to each kind.
    let mut units = Vec::with_capacity(expansion.units.len());
    let mut steps = Vec::with_capacity(expansion.step_count());
    for (position, unit) in expansion.units.iter().enumerate() {
        let first_step = steps.len();
        for step in &unit.steps {
            steps.push(EncodedStep {
                id: step.id.0.clone(),
                idx: step.index,
                workload: workloads.intern(&step.workload) as usize,
                load: loads.intern(&step.load) as usize,
                repeat: step.repeat,
            });
        }
        let config = &unit.config;
        let labels_json = if config.labels.is_empty() {
            "{}".to_owned()
        } else {
            serde_json::to_string(&config.labels).map_err(|source| StoreError::Json {
                action: "encode unit labels",
                source,
            })?
        };
        units.push(EncodedUnit {
            id: unit.id.0.clone(),
            position,
            label: config.label(),
            parts: [
                models.intern(&config.model) as usize,
                gpus.intern(&config.gpu) as usize,
                frameworks.intern(&config.framework) as usize,
                quantizations.intern(&config.quantization) as usize,
            ],
            extra_args: config.extra_args.clone(),
            labels_json,
            steps: first_step..steps.len(),
        });
    }
    // Stable: a unit listed twice keeps its first occurrence first.
    units.sort_by(|a, b| a.id.cmp(&b.id));

    // Pass 2: one list of parts; shift local indices by each kind's offset.
    let mut specs = Vec::new();
    let mut offsets = [0usize; 6];
    for (i, encoded) in [
        models.encode()?,
        gpus.encode()?,
        frameworks.encode()?,
        quantizations.encode()?,
        workloads.encode()?,
        loads.encode()?,
    ]
    .into_iter()
    .enumerate()
    {
        offsets[i] = specs.len();
        specs.extend(encoded);
    }
    for unit in &mut units {
        for (part, offset) in unit.parts.iter_mut().zip(&offsets[..4]) {
            *part += offset;
        }
    }
    for step in &mut steps {
        step.workload += offsets[4];
        step.load += offsets[5];
    }

    let campaign = &expansion.campaign;
    Ok(Encoded {
        name: campaign.name.clone(),
        description: campaign.description.clone(),
        priority: campaign.priority,
        max_attempts: campaign.max_attempts,
        source_yaml: source_yaml.to_owned(),
        actor: actor.to_owned(),
        specs,
        units,
        steps,
        dropped: expansion.dropped.clone(),
    })
}

/// Inserts or extends a campaign; see [`Store::submit`](super::Store::submit) and the
/// module docs of [`store`](super) for what a resubmission keeps.
pub(crate) fn submit(
    conn: &Connection,
    now_ms: i64,
    sub: &Encoded,
) -> Result<SubmitOutcome, StoreError> {
    let existing: Option<(i64, String)> = conn
        .prepare_cached("SELECT campaign_key, id FROM campaigns WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([&sub.name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .sql("look up the campaign")?;
    let created = existing.is_none();
    let (campaign_key, campaign_id) = match existing {
        Some((key, id)) => {
            // A resubmission is a request to run the campaign: it is no longer cancelled
            // (its cancelled units are revived below).
            conn.prepare_cached(
                "UPDATE campaigns SET description = ?2, priority = ?3, max_attempts = ?4,
                     source_yaml = ?5, updated_at_ms = ?6, cancelled_at_ms = NULL,
                     cancel_reason = NULL
                 WHERE campaign_key = ?1",
            )
            .and_then(|mut s| {
                s.execute((
                    key,
                    &sub.description,
                    sub.priority,
                    sub.max_attempts,
                    &sub.source_yaml,
                    now_ms,
                ))
            })
            .sql("update the campaign")?;
            (key, id)
        }
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            conn.prepare_cached(
                "INSERT INTO campaigns (id, name, description, priority, max_attempts,
                     source_yaml, submitted_by, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            )
            .and_then(|mut s| {
                s.execute((
                    &id,
                    &sub.name,
                    &sub.description,
                    sub.priority,
                    sub.max_attempts,
                    &sub.source_yaml,
                    &sub.actor,
                    now_ms,
                ))
            })
            .sql("insert the campaign")?;
            (conn.last_insert_rowid(), id)
        }
    };

    let spec_ids = store_specs(conn, campaign_key, created, &sub.specs)?;
    let existing_units = if created {
        HashMap::new()
    } else {
        existing_units(conn, campaign_key)?
    };

    // New units get keys (and so table, index and step rows) in unit id order: rows go to
    // the ends of their B-trees instead of random pages of the `(campaign_key, unit_id)`
    // index, which made inserting 100,000 units three times slower. `position` keeps the
    // order of first submission for reads.
    let (mut next_key, next_position): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COALESCE(MAX(unit_key), 0) + 1 FROM units),
                 (SELECT COALESCE(MAX(position), -1) + 1 FROM units WHERE campaign_key = ?1)",
            [campaign_key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .sql("allocate unit keys")?;
    let mut new_units = Vec::new();
    let mut new_steps = Vec::new();
    let mut kept = Vec::new();
    let mut previous: Option<(&str, i64)> = None;
    for unit in &sub.units {
        let steps = &sub.steps[unit.steps.clone()];
        if let Some(&(key, state)) = existing_units.get(&unit.id) {
            kept.push((key, Some(state), steps));
        } else if let Some((id, key)) = previous
            && id == unit.id
        {
            // The same unit twice in one expansion: the second adds only steps.
            kept.push((key, None, steps));
        } else {
            previous = Some((&unit.id, next_key));
            new_units.push((next_key, next_position + unit.position as i64, unit));
            new_steps.extend(steps.iter().map(|step| (next_key, step)));
            next_key += 1;
        }
    }

    insert_rows(
        conn,
        "INSERT INTO units (unit_key, campaign_key, unit_id, position, label, model_spec,
             gpu_spec, framework_spec, quantization_spec, extra_args, labels_json,
             created_at_ms, updated_at_ms)",
        "",
        13,
        &new_units,
        |stmt, i, &(key, position, unit)| {
            let [model, gpu, framework, quantization] = unit.parts.map(|p| spec_ids[p]);
            stmt.raw_bind_parameter(i, key)?;
            stmt.raw_bind_parameter(i + 1, campaign_key)?;
            stmt.raw_bind_parameter(i + 2, unit.id.as_str())?;
            stmt.raw_bind_parameter(i + 3, position)?;
            stmt.raw_bind_parameter(i + 4, unit.label.as_str())?;
            stmt.raw_bind_parameter(i + 5, model)?;
            stmt.raw_bind_parameter(i + 6, gpu)?;
            stmt.raw_bind_parameter(i + 7, framework)?;
            stmt.raw_bind_parameter(i + 8, quantization)?;
            stmt.raw_bind_parameter(i + 9, unit.extra_args.as_str())?;
            stmt.raw_bind_parameter(i + 10, unit.labels_json.as_str())?;
            stmt.raw_bind_parameter(i + 11, now_ms)?;
            stmt.raw_bind_parameter(i + 12, now_ms)
        },
        |_| Ok(()),
    )
    .sql("insert units")?;
    let units_added = new_units.len() as u64;
    let mut steps_added = insert_rows(
        conn,
        STEP_INSERT,
        "ON CONFLICT (unit_key, step_id) DO NOTHING",
        STEP_COLUMNS,
        &new_steps,
        bind_step(&spec_ids),
        |_| Ok(()),
    )
    .sql("insert steps")? as u64;

    // Steps of existing units: new ones are added; a unit that gains steps is noted.
    let kept_steps: Vec<(i64, &EncodedStep)> = kept
        .iter()
        .flat_map(|&(key, _, steps)| steps.iter().map(move |step| (key, step)))
        .collect();
    let mut gained = HashSet::new();
    steps_added += insert_rows(
        conn,
        STEP_INSERT,
        "ON CONFLICT (unit_key, step_id) DO NOTHING RETURNING unit_key",
        STEP_COLUMNS,
        &kept_steps,
        bind_step(&spec_ids),
        |row| {
            gained.insert(row.get::<_, i64>(0)?);
            Ok(())
        },
    )
    .sql("insert steps")? as u64;

    let mut reopened = 0u64;
    for (unit_key, state, _) in kept {
        match state {
            Some(UnitState::Cancelled) => {
                reopen_unit(conn, unit_key, now_ms)?;
                conn.prepare_cached(
                    "UPDATE steps SET state = 'pending'
                     WHERE unit_key = ?1 AND state = 'cancelled'",
                )
                .and_then(|mut s| s.execute([unit_key]))
                .sql("revive cancelled steps")?;
                reopened += 1;
            }
            Some(UnitState::Succeeded) if gained.contains(&unit_key) => {
                reopen_unit(conn, unit_key, now_ms)?;
                reopened += 1;
            }
            _ => {}
        }
    }

    conn.prepare_cached("DELETE FROM dropped WHERE campaign_key = ?1")
        .and_then(|mut s| s.execute([campaign_key]))
        .sql("replace the dropped list")?;
    let mut insert_dropped = conn
        .prepare_cached(
            "INSERT INTO dropped (campaign_key, position, label, kind, reason)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .sql("replace the dropped list")?;
    for (position, d) in sub.dropped.iter().enumerate() {
        insert_dropped
            .execute((
                campaign_key,
                position as i64,
                &d.label,
                d.kind.to_string(),
                &d.reason,
            ))
            .sql("replace the dropped list")?;
    }

    let outcome = SubmitOutcome {
        campaign_id: CampaignId(campaign_id),
        created,
        units_added,
        units_kept: sub.units.len() as u64 - units_added,
        steps_added,
        steps_kept: sub.steps.len() as u64 - steps_added,
    };
    audit::append(
        conn,
        now_ms,
        &sub.actor,
        if created { "submit" } else { "resubmit" },
        &format!("campaign/{}", sub.name),
        &json!({
            "campaign_id": outcome.campaign_id,
            "units_added": outcome.units_added,
            "units_kept": outcome.units_kept,
            "units_reopened": reopened,
            "steps_added": outcome.steps_added,
            "steps_kept": outcome.steps_kept,
            "dropped": sub.dropped.len(),
        }),
    )?;
    Ok(outcome)
}

const STEP_INSERT: &str =
    "INSERT INTO steps (unit_key, step_id, idx, workload_spec, load_spec, repeat)";
const STEP_COLUMNS: usize = 6;

/// Binds a `(unit_key, step)` row for [`STEP_INSERT`].
fn bind_step(
    spec_ids: &[i64],
) -> impl Fn(&mut Statement<'_>, usize, &(i64, &EncodedStep)) -> rusqlite::Result<()> {
    move |stmt, i, &(unit_key, step)| {
        stmt.raw_bind_parameter(i, unit_key)?;
        stmt.raw_bind_parameter(i + 1, step.id.as_str())?;
        stmt.raw_bind_parameter(i + 2, step.idx)?;
        stmt.raw_bind_parameter(i + 3, spec_ids[step.workload])?;
        stmt.raw_bind_parameter(i + 4, spec_ids[step.load])?;
        stmt.raw_bind_parameter(i + 5, step.repeat)
    }
}

/// Rows per multi-row `INSERT`: one statement per 64 rows instead of per row halves the
/// time of a large insert (statement setup, cursors, bindings and the statement
/// transaction are paid once per statement).
const ROWS_PER_INSERT: usize = 64;

/// Inserts `rows` with `insert` (`INSERT INTO t (c1, …, cN)`), `columns` values per row
/// bound by `bind` from the given 1-based parameter index, then `tail` (an `ON CONFLICT`
/// or `RETURNING` clause; `returned` sees each returned row). Returns the number of rows
/// inserted.
fn insert_rows<R>(
    conn: &Connection,
    insert: &str,
    tail: &str,
    columns: usize,
    rows: &[R],
    bind: impl Fn(&mut Statement<'_>, usize, &R) -> rusqlite::Result<()>,
    mut returned: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<usize> {
    let sql = |n: usize| {
        let row = format!("({})", vec!["?"; columns].join(", "));
        format!("{insert} VALUES {} {tail}", vec![row; n].join(", "))
    };
    let mut inserted = 0;
    let mut run = |stmt: &mut Statement<'_>, chunk: &[R]| -> rusqlite::Result<()> {
        for (r, row) in chunk.iter().enumerate() {
            bind(stmt, 1 + r * columns, row)?;
        }
        let mut out = stmt.raw_query();
        while let Some(row) = out.next()? {
            returned(row)?;
        }
        inserted += conn.changes() as usize;
        Ok(())
    };
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    if chunks.len() > 0 {
        let mut stmt = conn.prepare_cached(&sql(ROWS_PER_INSERT))?;
        for chunk in &mut chunks {
            run(&mut stmt, chunk)?;
        }
    }
    if !chunks.remainder().is_empty() {
        let rest = chunks.remainder();
        let mut stmt = conn.prepare_cached(&sql(rest.len()))?;
        run(&mut stmt, rest)?;
    }
    Ok(inserted)
}

/// Maps each distinct part to its `spec_id`, inserting the ones the campaign lacks.
fn store_specs(
    conn: &Connection,
    campaign_key: i64,
    created: bool,
    specs: &[(SpecKind, String)],
) -> Result<Vec<i64>, StoreError> {
    let mut known: HashMap<(String, String), i64> = HashMap::new();
    if !created {
        let mut stmt = conn
            .prepare_cached("SELECT kind, spec_json, spec_id FROM specs WHERE campaign_key = ?1")
            .sql("read configuration parts")?;
        let rows = stmt
            .query_map([campaign_key], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
            .sql("read configuration parts")?;
        for row in rows {
            let (key, id) = row.sql("read configuration parts")?;
            known.insert(key, id);
        }
    }
    let mut insert = conn
        .prepare_cached("INSERT INTO specs (campaign_key, kind, spec_json) VALUES (?1, ?2, ?3)")
        .sql("insert configuration parts")?;
    let mut ids = Vec::with_capacity(specs.len());
    for (kind, json) in specs {
        let key = (kind.as_str().to_owned(), json.clone());
        let id = match known.get(&key) {
            Some(&id) => id,
            None => {
                insert
                    .execute((campaign_key, kind.as_str(), json))
                    .sql("insert configuration parts")?;
                let id = conn.last_insert_rowid();
                known.insert(key, id);
                id
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// `unit_id → (unit_key, state)` of a campaign's units.
fn existing_units(
    conn: &Connection,
    campaign_key: i64,
) -> Result<HashMap<String, (i64, UnitState)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT unit_id, unit_key, state FROM units WHERE campaign_key = ?1")
        .sql("read existing units")?;
    let mut rows = stmt.query([campaign_key]).sql("read existing units")?;
    let mut map = HashMap::new();
    while let Some(r) = rows.next().sql("read existing units")? {
        let state: String = r.get(2).sql("read existing units")?;
        map.insert(
            r.get(0).sql("read existing units")?,
            (
                r.get(1).sql("read existing units")?,
                super::campaigns::parse_unit_state(&state)?,
            ),
        );
    }
    Ok(map)
}

fn reopen_unit(conn: &Connection, unit_key: i64, now_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE units SET state = 'pending', updated_at_ms = ?2 WHERE unit_key = ?1",
    )
    .and_then(|mut s| s.execute((unit_key, now_ms)))
    .sql("reopen a unit")?;
    Ok(())
}
