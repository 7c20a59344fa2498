//! Submitting a campaign: encoding an expansion into rows on the caller's thread while the
//! writer inserts them.
//!
//! [`Store::submit`](super::Store::submit) queues a [`submit`] operation holding the
//! receiving end of a channel, then [`encode`]s the expansion chunk by chunk into that
//! channel: deduplicating configuration parts, serializing each distinct one once, building
//! labels. The writer inserts each chunk as it arrives, so encoding (a third of the work)
//! overlaps the inserts instead of preceding them. A submission whose encoding stops short
//! of [`Piece::Done`] (an error or a panic on the caller's side) fails and rolls back.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, Row, Statement};
use serde_json::json;

use super::audit;
use super::error::{SqlContext, StoreError};
use super::rows::{SubmitOutcome, UnitState};
use super::specs::{Interner, NewSpecs, SpecKind};
use crate::domain::{CampaignId, Dropped, Expansion};

/// Units per chunk sent to the writer.
const CHUNK_UNITS: usize = 4096;

/// Campaign settings of a submission: what the writer needs before any unit.
pub(crate) struct Header {
    name: String,
    description: Option<String>,
    priority: i32,
    max_attempts: u32,
    source_yaml: String,
    actor: String,
    dropped: Vec<Dropped>,
}

impl Header {
    pub(crate) fn new(expansion: &Expansion, source_yaml: &str, actor: &str) -> Header {
        let campaign = &expansion.campaign;
        Header {
            name: campaign.name.clone(),
            description: campaign.description.clone(),
            priority: campaign.priority,
            max_attempts: campaign.max_attempts,
            source_yaml: source_yaml.to_owned(),
            actor: actor.to_owned(),
            dropped: expansion.dropped.clone(),
        }
    }
}

/// What [`encode`] sends the writer.
pub(crate) enum Piece {
    /// Configuration parts met for the first time, continuing the shared numbering.
    Specs(Vec<(SpecKind, String)>),
    /// Units, in unit id order across all chunks, with their steps.
    Units(Vec<EncodedUnit>, Vec<EncodedStep>),
    /// The expansion is complete.
    Done,
}

/// A unit ready for its row.
pub(crate) struct EncodedUnit {
    id: String,
    /// Index in the expansion.
    position: usize,
    label: String,
    /// Model, GPU, framework and quantization, as shared part indices.
    parts: [usize; 4],
    extra_args: String,
    labels_json: String,
    /// The model's `params_b` (0 when not given), for the scheduler's estimate.
    model_size: f64,
    /// Its steps in the chunk's step list.
    steps: Range<usize>,
}

/// A step ready for its row.
pub(crate) struct EncodedStep {
    id: String,
    idx: u32,
    workload: usize,
    load: usize,
    repeat: u32,
}

/// Encodes `expansion` into `out` in chunks, ending with [`Piece::Done`]. Units go in unit
/// id order (see [`submit`] for why). CPU work only, about a microsecond per unit.
pub(crate) fn encode(expansion: &Expansion, out: &mpsc::Sender<Piece>) -> Result<(), StoreError> {
    let mut order: Vec<usize> = (0..expansion.units.len()).collect();
    // A unit listed twice keeps its first occurrence first.
    order.sort_unstable_by(|&a, &b| (&expansion.units[a].id, a).cmp(&(&expansion.units[b].id, b)));

    let mut new = NewSpecs::default();
    let mut models = Interner::default();
    let mut gpus = Interner::default();
    let mut frameworks = Interner::default();
    let mut quantizations = Interner::default();
    let mut workloads = Interner::default();
    let mut loads = Interner::default();
    for chunk in order.chunks(CHUNK_UNITS) {
        let mut units = Vec::with_capacity(chunk.len());
        let mut steps = Vec::with_capacity(chunk.len() * 2);
        for &position in chunk {
            let unit = &expansion.units[position];
            let first_step = steps.len();
            for step in &unit.steps {
                steps.push(EncodedStep {
                    id: step.id.0.clone(),
                    idx: step.index,
                    workload: workloads.intern(&step.workload, &mut new)?,
                    load: loads.intern(&step.load, &mut new)?,
                    repeat: step.repeat,
                });
            }
            let config = &unit.config;
            let labels_json = if config.labels.is_empty() {
                String::from("{}")
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
                    models.intern(&config.model, &mut new)?,
                    gpus.intern(&config.gpu, &mut new)?,
                    frameworks.intern(&config.framework, &mut new)?,
                    quantizations.intern(&config.quantization, &mut new)?,
                ],
                extra_args: config.extra_args.clone(),
                labels_json,
                model_size: config.model.params_b.unwrap_or(0.0),
                steps: first_step..steps.len(),
            });
        }
        // A send fails only when the writer gave up on the submission: its answer says why.
        let specs = new.take();
        if !specs.is_empty() && out.send(Piece::Specs(specs)).is_err() {
            return Ok(());
        }
        if out.send(Piece::Units(units, steps)).is_err() {
            return Ok(());
        }
    }
    let _ = out.send(Piece::Done);
    Ok(())
}

/// Inserts or extends a campaign from the pieces [`encode`] sends; see
/// [`Store::submit`](super::Store::submit) and the [module docs](super) for what a
/// resubmission keeps.
///
/// New units get keys in unit id order, so their rows, their `(campaign_key, unit_id)`
/// index entries and their steps all go to the ends of their B-trees. In expansion order the
/// index entries land on random pages, and each multi-row INSERT then copies dozens of
/// pages into its statement journal: three times slower for 100,000 units. `position`
/// keeps the order of first submission for reads.
pub(crate) fn submit(
    conn: &Connection,
    now_ms: i64,
    header: &Header,
    pieces: &mpsc::Receiver<Piece>,
) -> Result<SubmitOutcome, StoreError> {
    let (campaign_key, campaign_id, created) = upsert_campaign(conn, now_ms, header)?;
    let mut specs = SpecIds::load(conn, campaign_key, created)?;
    let existing = if created {
        HashMap::new()
    } else {
        existing_units(conn, campaign_key)?
    };
    let (mut next_key, next_position): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COALESCE(MAX(unit_key), 0) + 1 FROM units),
                 (SELECT COALESCE(MAX(position), -1) + 1 FROM units WHERE campaign_key = ?1)",
            [campaign_key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .sql("allocate unit keys")?;

    let (mut units_total, mut units_added, mut reopened) = (0u64, 0u64, 0u64);
    let (mut steps_total, mut steps_added) = (0u64, 0u64);
    // The last new unit: a unit listed twice arrives right after its first occurrence.
    let mut previous: Option<(String, i64)> = None;
    loop {
        let (units, steps) = match pieces.recv() {
            Ok(Piece::Specs(new)) => {
                specs.store(conn, campaign_key, new)?;
                continue;
            }
            Ok(Piece::Units(units, steps)) => (units, steps),
            Ok(Piece::Done) => break,
            Err(mpsc::RecvError) => return Err(StoreError::SubmitAbandoned),
        };
        units_total += units.len() as u64;
        steps_total += steps.len() as u64;

        let mut new_units = Vec::new();
        let mut new_steps = Vec::new();
        let mut kept = Vec::new();
        for unit in &units {
            let unit_steps = &steps[unit.steps.clone()];
            if let Some(&(key, state)) = existing.get(&unit.id) {
                kept.push((key, Some(state), unit_steps));
            } else if let Some((_, key)) = previous.as_ref().filter(|(id, _)| *id == unit.id) {
                kept.push((*key, None, unit_steps));
            } else {
                previous = Some((unit.id.clone(), next_key));
                new_units.push((next_key, next_position + unit.position as i64, unit));
                new_steps.extend(unit_steps.iter().map(|step| (next_key, step)));
                next_key += 1;
            }
        }

        insert_rows(
            conn,
            "INSERT INTO units (unit_key, campaign_key, unit_id, position, label, model_spec,
                 gpu_spec, framework_spec, quantization_spec, extra_args, labels_json,
                 created_at_ms, updated_at_ms, model_size)",
            "",
            14,
            &new_units,
            |stmt, i, &(key, position, unit)| {
                let [model, gpu, framework, quantization] = unit.parts.map(|p| specs.ids[p]);
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
                stmt.raw_bind_parameter(i + 12, now_ms)?;
                stmt.raw_bind_parameter(i + 13, unit.model_size)
            },
            |_| Ok(()),
        )
        .sql("insert units")?;
        units_added += new_units.len() as u64;
        steps_added += insert_rows(
            conn,
            STEP_INSERT,
            "ON CONFLICT (unit_key, step_id) DO NOTHING",
            STEP_COLUMNS,
            &new_steps,
            bind_step(&specs.ids),
            |_| Ok(()),
        )
        .sql("insert steps")? as u64;

        // Steps of units the campaign has: new ones are added, and noted.
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
            bind_step(&specs.ids),
            |row| {
                gained.insert(row.get::<_, i64>(0)?);
                Ok(())
            },
        )
        .sql("insert steps")? as u64;
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
    }

    replace_dropped(conn, campaign_key, &header.dropped)?;
    let outcome = SubmitOutcome {
        campaign_id: CampaignId(campaign_id),
        created,
        units_added,
        units_kept: units_total - units_added,
        steps_added,
        steps_kept: steps_total - steps_added,
    };
    audit::append(
        conn,
        now_ms,
        &header.actor,
        if created { "submit" } else { "resubmit" },
        &format!("campaign/{}", header.name),
        &json!({
            "campaign_id": outcome.campaign_id,
            "units_added": outcome.units_added,
            "units_kept": outcome.units_kept,
            "units_reopened": reopened,
            "steps_added": outcome.steps_added,
            "steps_kept": outcome.steps_kept,
            "dropped": header.dropped.len(),
        }),
    )?;
    Ok(outcome)
}

/// Inserts the campaign, or updates its settings; returns its key, id and whether it is new.
fn upsert_campaign(
    conn: &Connection,
    now_ms: i64,
    header: &Header,
) -> Result<(i64, String, bool), StoreError> {
    let existing: Option<(i64, String)> = conn
        .prepare_cached("SELECT campaign_key, id FROM campaigns WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([&header.name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .sql("look up the campaign")?;
    if let Some((key, id)) = existing {
        // A resubmission is a request to run the campaign: it is no longer cancelled (its
        // cancelled units are revived as they come).
        conn.prepare_cached(
            "UPDATE campaigns SET description = ?2, priority = ?3, max_attempts = ?4,
                 source_yaml = ?5, updated_at_ms = ?6, cancelled_at_ms = NULL,
                 cancel_reason = NULL
             WHERE campaign_key = ?1",
        )
        .and_then(|mut s| {
            s.execute((
                key,
                &header.description,
                header.priority,
                header.max_attempts,
                &header.source_yaml,
                now_ms,
            ))
        })
        .sql("update the campaign")?;
        return Ok((key, id, false));
    }
    let id = uuid::Uuid::new_v4().to_string();
    conn.prepare_cached(
        "INSERT INTO campaigns (id, name, description, priority, max_attempts, source_yaml,
             submitted_by, created_at_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
    )
    .and_then(|mut s| {
        s.execute((
            &id,
            &header.name,
            &header.description,
            header.priority,
            header.max_attempts,
            &header.source_yaml,
            &header.actor,
            now_ms,
        ))
    })
    .sql("insert the campaign")?;
    Ok((conn.last_insert_rowid(), id, true))
}

/// `spec_id`s of the parts of a submission, by their shared index.
struct SpecIds {
    ids: Vec<i64>,
    /// The campaign's stored parts by `(kind, JSON)`.
    known: HashMap<(String, String), i64>,
}

impl SpecIds {
    fn load(conn: &Connection, campaign_key: i64, created: bool) -> Result<SpecIds, StoreError> {
        let mut known = HashMap::new();
        if !created {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT kind, spec_json, spec_id FROM specs WHERE campaign_key = ?1",
                )
                .sql("read configuration parts")?;
            let rows = stmt
                .query_map([campaign_key], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
                .sql("read configuration parts")?;
            for row in rows {
                let (key, id) = row.sql("read configuration parts")?;
                known.insert(key, id);
            }
        }
        Ok(SpecIds {
            ids: Vec::new(),
            known,
        })
    }

    /// Numbers `new` parts, inserting the ones the campaign lacks.
    fn store(
        &mut self,
        conn: &Connection,
        campaign_key: i64,
        new: Vec<(SpecKind, String)>,
    ) -> Result<(), StoreError> {
        let mut insert = conn
            .prepare_cached("INSERT INTO specs (campaign_key, kind, spec_json) VALUES (?1, ?2, ?3)")
            .sql("insert configuration parts")?;
        for (kind, json) in new {
            let key = (kind.as_str().to_owned(), json);
            let id = match self.known.get(&key) {
                Some(&id) => id,
                None => {
                    insert
                        .execute((campaign_key, &key.0, &key.1))
                        .sql("insert configuration parts")?;
                    let id = conn.last_insert_rowid();
                    self.known.insert(key, id);
                    id
                }
            };
            self.ids.push(id);
        }
        Ok(())
    }
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

fn replace_dropped(
    conn: &Connection,
    campaign_key: i64,
    dropped: &[Dropped],
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM dropped WHERE campaign_key = ?1")
        .and_then(|mut s| s.execute([campaign_key]))
        .sql("replace the dropped list")?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO dropped (campaign_key, position, label, kind, reason)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .sql("replace the dropped list")?;
    for (position, d) in dropped.iter().enumerate() {
        insert
            .execute((
                campaign_key,
                position as i64,
                &d.label,
                d.kind.to_string(),
                &d.reason,
            ))
            .sql("replace the dropped list")?;
    }
    Ok(())
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

/// Rows per multi-row `INSERT`: statement setup, cursors and the statement journal are
/// paid once per statement instead of once per row.
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
    mut returned: impl FnMut(&Row<'_>) -> rusqlite::Result<()>,
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
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = conn.prepare_cached(&sql(rest.len()))?;
        run(&mut stmt, rest)?;
    }
    Ok(inserted)
}
