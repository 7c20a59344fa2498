//! Step results: storing an agent's batches exactly once (fenced by epoch, deduplicated
//! by idempotency key and by step), reading them back in pages, and a unit's history.

use rusqlite::{Connection, OptionalExtension};

use super::campaigns::campaign_key;
use super::error::{SqlContext, StoreError};
use super::leases::lookup;
use super::probes;
use super::rows::{
    BatchOutcome, HistoryRow, LeaseEnd, StoredResult, StoredStep, UnitRef, UnitState, UnknownState,
};
use super::specs::Parts;
use crate::domain::{AgentId, CampaignId, LeaseId, ResultBatch, StepId, StepSpec, UnitId};

/// `telemetry_samples.gpu_index` of the one chunk that holds a result's whole telemetry blob
/// (GPU, host and server lines together; each line names its kind and GPU).
pub(crate) const TELEMETRY_ALL_GPUS: i64 = -1;

/// Most result rows in one page of [`page`].
pub(crate) const PAGE_ROWS: usize = 256;

/// A page of [`page`] ends once its rows (documents and records) reach this size, so a
/// campaign with large record blobs streams in bounded memory.
pub(crate) const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// See [`Store::store_results`](super::Store::store_results).
pub(crate) fn store_batch(
    conn: &Connection,
    now_ms: i64,
    batch: &ResultBatch,
) -> Result<BatchOutcome, StoreError> {
    let held = lookup(conn, &batch.lease)?;
    if held.unit.unit != batch.unit {
        return Err(StoreError::UnitMismatch {
            lease: batch.lease.to_string(),
            expected: held.unit.unit.to_string(),
            got: batch.unit.to_string(),
        });
    }
    // The unit's epoch, not the lease's liveness: a lease that expired while its unit was
    // not leased again still carries the current epoch, and its results lose nothing.
    held.check_epoch(batch.epoch)?;
    if held.unit_state == UnitState::Cancelled {
        return Err(StoreError::UnitCancelled {
            lease: batch.lease.to_string(),
            unit: held.unit.unit.to_string(),
        });
    }

    let mut seen = conn
        .prepare_cached(
            "SELECT 1 FROM result_batches
             WHERE unit_key = ?1 AND step_id = ?2 AND attempt = ?3 AND sequence = ?4",
        )
        .sql("look up the batch")?;
    let mut duplicate = !batch.results.is_empty();
    for result in &batch.results {
        let applied = seen
            .query_row(
                (
                    held.unit_key,
                    result.step_id.as_str(),
                    batch.attempt,
                    batch.sequence,
                ),
                |_| Ok(()),
            )
            .optional()
            .sql("look up the batch")?
            .is_some();
        duplicate &= applied;
    }

    let mut stored = Vec::new();
    let mut already_stored = 0;
    if !duplicate {
        for result in &batch.results {
            let index: Option<u32> = conn
                .prepare_cached("SELECT idx FROM steps WHERE unit_key = ?1 AND step_id = ?2")
                .and_then(|mut s| {
                    s.query_row((held.unit_key, result.step_id.as_str()), |r| r.get(0))
                        .optional()
                })
                .sql("look up the step")?;
            let index = match index {
                Some(index) => index,
                // A capacity search's probe run: its row is added with its result.
                None => {
                    probes::add_probe_step(conn, held.unit_key, held.unit.unit.as_str(), result)?
                }
            };
            // Stored exactly once: a step that has its result keeps it.
            let result_id: Option<i64> = conn
                .prepare_cached(
                    "INSERT INTO step_results (unit_key, step_id, result_json, environment_json,
                         agent_id, attempt, epoch, finished_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (unit_key, step_id) DO NOTHING
                     RETURNING result_id",
                )
                .and_then(|mut s| {
                    s.query_row(
                        (
                            held.unit_key,
                            result.step_id.as_str(),
                            &result.result_json,
                            &result.environment_json,
                            held.agent.as_str(),
                            batch.attempt,
                            batch.epoch,
                            // An agent that did not say when: when it arrived.
                            if result.finished_at_ms > 0 {
                                result.finished_at_ms
                            } else {
                                now_ms
                            },
                        ),
                        |r| r.get(0),
                    )
                    .optional()
                })
                .sql("store a step result")?;
            if let Some(result_id) = result_id {
                if !result.records_zstd.is_empty() {
                    conn.prepare_cached(
                        "INSERT INTO request_records (result_id, chunk, record_count, codec, data)
                         VALUES (?1, 0, ?2, 'zstd', ?3)",
                    )
                    .and_then(|mut s| {
                        s.execute((
                            result_id,
                            i64::try_from(result.record_count).unwrap_or(i64::MAX),
                            &result.records_zstd,
                        ))
                    })
                    .sql("store request records")?;
                }
                if !result.telemetry_zstd.is_empty() {
                    // One chunk under gpu_index -1 holds the whole blob: its JSON Lines
                    // name their own kind (gpu / host / server) and GPU index.
                    conn.prepare_cached(
                        "INSERT INTO telemetry_samples
                             (result_id, gpu_index, chunk, sample_count, codec, data)
                         VALUES (?1, ?2, 0, ?3, 'zstd', ?4)",
                    )
                    .and_then(|mut s| {
                        s.execute((
                            result_id,
                            TELEMETRY_ALL_GPUS,
                            i64::try_from(result.telemetry_count).unwrap_or(i64::MAX),
                            &result.telemetry_zstd,
                        ))
                    })
                    .sql("store telemetry samples")?;
                }
                conn.prepare_cached(
                    "UPDATE steps SET state = 'succeeded' WHERE unit_key = ?1 AND step_id = ?2",
                )
                .and_then(|mut s| s.execute((held.unit_key, result.step_id.as_str())))
                .sql("mark the step succeeded")?;
                stored.push(StoredStep {
                    step: result.step_id.clone(),
                    index,
                });
            } else {
                already_stored += 1;
            }
            conn.prepare_cached(
                "INSERT INTO result_batches (unit_key, step_id, attempt, sequence, applied_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute((
                    held.unit_key,
                    result.step_id.as_str(),
                    batch.attempt,
                    batch.sequence,
                    now_ms,
                ))
            })
            .sql("record the batch")?;
        }
    }
    let (steps_done, steps_total): (u64, u64) = conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM step_results WHERE unit_key = ?1),
                 (SELECT COUNT(*) FROM steps WHERE unit_key = ?1)",
        )
        .and_then(|mut s| s.query_row([held.unit_key], |r| Ok((r.get(0)?, r.get(1)?))))
        .sql("count the unit's results")?;
    Ok(BatchOutcome {
        unit: held.unit,
        agent: held.agent,
        duplicate,
        stored,
        already_stored,
        steps_done,
        steps_total,
    })
}

// ---- reads ----

/// Where a results stream stands: the campaign's units with results, in position order,
/// and the next row to read.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    /// The campaign.
    pub campaign: CampaignId,
    /// Read each result's request records too.
    pub include_records: bool,
    /// `unit_key`s in position order.
    pub units: std::sync::Arc<Vec<i64>>,
    /// Next unit in `units`.
    pub next_unit: usize,
    /// `(idx, step_id)` of that unit's last row already read, when a page ended inside it.
    pub after: Option<(u32, String)>,
}

/// The campaign's units that have results, in position order; `None` for an unknown
/// campaign.
pub(crate) fn start(
    conn: &Connection,
    campaign: &CampaignId,
    include_records: bool,
) -> Result<Option<Cursor>, StoreError> {
    let Some((key, _)) = campaign_key(conn, campaign)? else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT u.position, u.unit_key FROM units u
             WHERE u.campaign_key = ?1
               AND EXISTS (SELECT 1 FROM step_results r WHERE r.unit_key = u.unit_key)",
        )
        .sql("list units with results")?;
    let mut units: Vec<(i64, i64)> = stmt
        .query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .sql("list units with results")?
        .collect::<Result<_, _>>()
        .sql("list units with results")?;
    // Sorting here is cheaper than `ORDER BY` over the whole campaign.
    units.sort_unstable();
    Ok(Some(Cursor {
        campaign: campaign.clone(),
        include_records,
        units: std::sync::Arc::new(units.into_iter().map(|(_, key)| key).collect()),
        next_unit: 0,
        after: None,
    }))
}

/// The next page of results after `cursor` (empty at the end), and the cursor after it.
pub(crate) fn page(
    conn: &Connection,
    mut cursor: Cursor,
) -> Result<(Vec<StoredResult>, Cursor), StoreError> {
    let mut parts = Parts::lazy();
    let mut out = Vec::new();
    let mut bytes = 0;
    while cursor.next_unit < cursor.units.len() && out.len() < PAGE_ROWS && bytes < PAGE_BYTES {
        let unit_key = cursor.units[cursor.next_unit];
        let unit = conn
            .prepare_cached(
                "SELECT unit_id, label, model_spec, gpu_spec, framework_spec, quantization_spec,
                     extra_args, labels_json
                 FROM units WHERE unit_key = ?1",
            )
            .and_then(|mut s| {
                s.query_row([unit_key], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
            })
            .sql("read a unit")?;
        let (unit_id, label, spec_ids, extra_args, labels_json) = unit;
        parts.fetch_all(conn, &spec_ids)?;
        let config = parts.config(spec_ids, extra_args, &labels_json)?;
        let unit = UnitRef {
            campaign: cursor.campaign.clone(),
            unit: UnitId(unit_id),
            label,
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.result_id, r.step_id, s.idx, s.workload_spec, s.load_spec, s.repeat,
                     r.result_json, r.environment_json, r.agent_id, r.attempt, r.epoch,
                     r.finished_at_ms
                 FROM step_results r
                 JOIN steps s ON s.unit_key = r.unit_key AND s.step_id = r.step_id
                 WHERE r.unit_key = ?1 ORDER BY s.idx, s.step_id",
            )
            .sql("read step results")?;
        let mut rows = stmt.query([unit_key]).sql("read step results")?;
        let mut unit_done = true;
        while let Some(r) = rows.next().sql("read step results")? {
            let order: (u32, String) = (
                r.get(2).sql("read step results")?,
                r.get(1).sql("read step results")?,
            );
            if cursor.after.as_ref().is_some_and(|after| &order <= after) {
                continue;
            }
            if out.len() >= PAGE_ROWS || bytes >= PAGE_BYTES {
                unit_done = false;
                break;
            }
            let result_id: i64 = r.get(0).sql("read step results")?;
            let (workload, load): (i64, i64) = (
                r.get(3).sql("read step results")?,
                r.get(4).sql("read step results")?,
            );
            parts.fetch_all(conn, &[workload, load])?;
            let (records_zstd, telemetry_zstd) = if cursor.include_records {
                (records(conn, result_id)?, telemetry(conn, result_id)?)
            } else {
                (None, None)
            };
            let result = StoredResult {
                unit: unit.clone(),
                config: config.clone(),
                step: StepSpec {
                    id: StepId(order.1.clone()),
                    index: order.0,
                    workload: parts.workload(workload)?.clone(),
                    load: parts.load_point(load)?.clone(),
                    repeat: r.get(5).sql("read step results")?,
                },
                result_json: r.get(6).sql("read step results")?,
                environment_json: r.get(7).sql("read step results")?,
                records_zstd,
                telemetry_zstd,
                agent: AgentId(r.get(8).sql("read step results")?),
                attempt: r.get(9).sql("read step results")?,
                epoch: r.get(10).sql("read step results")?,
                finished_at_ms: r.get(11).sql("read step results")?,
            };
            bytes += result.result_json.len()
                + result.environment_json.len()
                + result.records_zstd.as_ref().map_or(0, Vec::len)
                + result.telemetry_zstd.as_ref().map_or(0, Vec::len);
            out.push(result);
            cursor.after = Some(order);
        }
        if unit_done {
            cursor.next_unit += 1;
            cursor.after = None;
        }
    }
    Ok((out, cursor))
}

/// The records of a result, its chunks concatenated (consecutive zstd frames form one
/// valid zstd stream); `None` when it has none.
fn records(conn: &Connection, result_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT data FROM request_records WHERE result_id = ?1 ORDER BY chunk")
        .sql("read request records")?;
    let mut rows = stmt.query([result_id]).sql("read request records")?;
    let mut data: Option<Vec<u8>> = None;
    while let Some(r) = rows.next().sql("read request records")? {
        let chunk = r.get_ref(0).sql("read request records")?;
        let blob = chunk.as_blob().map_err(|e| StoreError::BadValue {
            column: "request_records.data",
            value: e.to_string(),
        })?;
        data.get_or_insert_with(Vec::new).extend_from_slice(blob);
    }
    Ok(data)
}

/// The raw telemetry of a result, its chunks concatenated in (gpu_index, chunk) order;
/// `None` when it has none.
fn telemetry(conn: &Connection, result_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT data FROM telemetry_samples WHERE result_id = ?1 ORDER BY gpu_index, chunk",
        )
        .sql("read telemetry samples")?;
    let mut rows = stmt.query([result_id]).sql("read telemetry samples")?;
    let mut data: Option<Vec<u8>> = None;
    while let Some(r) = rows.next().sql("read telemetry samples")? {
        let chunk = r.get_ref(0).sql("read telemetry samples")?;
        let blob = chunk.as_blob().map_err(|e| StoreError::BadValue {
            column: "telemetry_samples.data",
            value: e.to_string(),
        })?;
        data.get_or_insert_with(Vec::new).extend_from_slice(blob);
    }
    Ok(data)
}

/// See [`Store::unit_history`](super::Store::unit_history).
pub(crate) fn history(
    conn: &Connection,
    campaign: &CampaignId,
    unit: &UnitId,
) -> Result<Vec<HistoryRow>, StoreError> {
    let Some((key, _)) = campaign_key(conn, campaign)? else {
        return Ok(Vec::new());
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT h.attempt, h.epoch, h.lease_id, h.agent_id, h.started_at_ms,
                 h.ended_at_ms, h.outcome, h.error
             FROM units u JOIN unit_history h ON h.unit_key = u.unit_key
             WHERE u.campaign_key = ?1 AND u.unit_id = ?2
             ORDER BY h.history_id",
        )
        .sql("read the unit's history")?;
    let mut rows = stmt
        .query((key, unit.as_str()))
        .sql("read the unit's history")?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().sql("read the unit's history")? {
        let outcome: Option<String> = r.get(6).sql("read the unit's history")?;
        out.push(HistoryRow {
            attempt: r.get(0).sql("read the unit's history")?,
            epoch: r.get(1).sql("read the unit's history")?,
            lease: r
                .get::<_, Option<String>>(2)
                .sql("read the unit's history")?
                .map(LeaseId),
            agent: AgentId(r.get(3).sql("read the unit's history")?),
            started_at_ms: r.get(4).sql("read the unit's history")?,
            ended_at_ms: r.get(5).sql("read the unit's history")?,
            outcome: outcome
                .map(|o| {
                    o.parse::<LeaseEnd>()
                        .map_err(|e: UnknownState| StoreError::BadValue {
                            column: "unit_history.outcome",
                            value: e.0,
                        })
                })
                .transpose()?,
            error: r.get(7).sql("read the unit's history")?,
        });
    }
    Ok(out)
}
