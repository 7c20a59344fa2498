//! The steps a capacity search creates while it runs (docs/capacity.md): a probe run's
//! result names a step the submission did not plan; its document's `probe` facts say which
//! search, load and run it is. The row is added here, checked against its search, in the
//! transaction that stores the result.

use evalctl_results::document::ProbeFacts;
use evalctl_results::search::SearchAxis;
use evalctl_results::settle::probe_step_id;
use rusqlite::{Connection, OptionalExtension};

use super::error::{SqlContext, StoreError};
use super::specs::{Part, Parts};
use crate::domain::{LoadPoint, ReportedResult};

/// Adds the step row of the probe run `result` to unit `unit_key` and returns its index
/// (its search step's), or refuses a result that is no run of one of the unit's searches.
pub(crate) fn add_probe_step(
    conn: &Connection,
    unit_key: i64,
    unit: &str,
    result: &ReportedResult,
) -> Result<u32, StoreError> {
    let refuse = |reason: String| StoreError::BadProbe {
        unit: unit.to_owned(),
        step: result.step_id.to_string(),
        reason,
    };
    #[derive(serde::Deserialize)]
    struct ProbeOnly {
        probe: Option<ProbeFacts>,
    }
    let facts = match serde_json::from_str::<ProbeOnly>(&result.result_json) {
        Ok(ProbeOnly { probe: Some(facts) }) => facts,
        // Not a probe run at all: the unit simply has no such step.
        Ok(ProbeOnly { probe: None }) | Err(_) => {
            return Err(StoreError::UnknownStep {
                unit: unit.to_owned(),
                step: result.step_id.to_string(),
            });
        }
    };
    let parent: Option<(u32, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT s.idx, s.workload_spec, s.load_spec, u.campaign_key
             FROM steps s JOIN units u ON u.unit_key = s.unit_key
             WHERE s.unit_key = ?1 AND s.step_id = ?2 AND s.search_step IS NULL",
        )
        .and_then(|mut s| {
            s.query_row((unit_key, facts.search_step.as_str()), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .sql("look up the probe's search step")?;
    let Some((index, workload_spec, load_spec, campaign_key)) = parent else {
        return Err(refuse(format!(
            "the unit has no step {} to search",
            facts.search_step
        )));
    };
    let mut parts = Parts::lazy();
    let Part::Load(LoadPoint::Search(search)) = parts.fetch(conn, load_spec)?.clone() else {
        return Err(refuse(format!(
            "step {} is not a capacity search",
            facts.search_step
        )));
    };
    let load = facts.run.load;
    if facts.axis != search.spec.axis || !(search.spec.min..=search.spec.max).contains(&load) {
        return Err(refuse(format!(
            "its load {load} is outside its search's range {}..{}",
            search.spec.min, search.spec.max
        )));
    }
    let expected = probe_step_id(&facts.search_step, facts.axis, load, facts.run.run);
    if result.step_id.as_str() != expected {
        return Err(refuse(format!(
            "a run of that search, load and run is step {expected}"
        )));
    }
    let point = match facts.axis {
        SearchAxis::Concurrency if load.fract() == 0.0 => LoadPoint::Concurrency(load as u32),
        SearchAxis::Concurrency => {
            return Err(refuse(format!("concurrency {load} is not a whole number")));
        }
        SearchAxis::Rate => LoadPoint::Rate {
            rps: load,
            arrival: search.arrival,
            burstiness: search.burstiness,
        },
    };
    let json = serde_json::to_string(&point).map_err(|source| StoreError::Json {
        action: "encode a probe's load point",
        source,
    })?;
    conn.prepare_cached(
        "INSERT INTO specs (campaign_key, kind, spec_json) VALUES (?1, 'load', ?2)
         ON CONFLICT DO NOTHING",
    )
    .and_then(|mut s| s.execute((campaign_key, &json)))
    .sql("store a probe's load point")?;
    let point_spec: i64 = conn
        .prepare_cached(
            "SELECT spec_id FROM specs WHERE campaign_key = ?1 AND kind = 'load' AND spec_json = ?2",
        )
        .and_then(|mut s| s.query_row((campaign_key, &json), |r| r.get(0)))
        .sql("store a probe's load point")?;
    conn.prepare_cached(
        "INSERT INTO steps (unit_key, step_id, idx, workload_spec, load_spec, repeat, search_step)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute((
            unit_key,
            result.step_id.as_str(),
            index,
            workload_spec,
            point_spec,
            facts.run.run,
            facts.search_step.as_str(),
        ))
    })
    .sql("add a probe's step")?;
    Ok(index)
}
