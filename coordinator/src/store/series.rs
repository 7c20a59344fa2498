//! Series of scheduled campaigns: their baselines (pinned, or the newest earlier campaign
//! that succeeded) and the verdict each finished campaign gets against its baseline
//! (docs/schedules.md#baselines-and-verdicts). The comparison itself is `crate::series`.

use rusqlite::{Connection, OptionalExtension as _};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::audit;
use super::error::SqlContext as _;

/// A campaign by key, id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRef {
    /// Its key.
    pub key: i64,
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// One of the worst regressions of a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictChange {
    /// The step's configuration, workload and load point.
    pub config: String,
    /// Workload.
    pub workload: String,
    /// Load point.
    pub load: String,
    /// The metric, e.g. `ttft_p90`.
    pub metric: String,
    /// (new − base) / base, as a fraction.
    pub change: f64,
}

/// A finished campaign's verdict against its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRow {
    /// `passed`, `regressed`, `no_baseline` or `no_common_steps`.
    pub outcome: String,
    /// The baseline's name.
    pub baseline: Option<String>,
    /// Metrics flagged as regressions.
    pub regressions: u32,
    /// Metrics flagged as improvements.
    pub improvements: u32,
    /// Steps the two campaigns share.
    pub matched_steps: u32,
    /// The worst regressions, worst first.
    pub worst: Vec<VerdictChange>,
    /// When it was judged, Unix ms.
    pub judged_at_ms: i64,
}

/// What a campaign of a series knows of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeriesFacts {
    /// The series (its schedule's name).
    pub series: String,
    /// The campaign of the series created just before.
    pub predecessor: Option<String>,
    /// The baseline it is (or will be) judged against.
    pub baseline: Option<String>,
    /// The baseline is pinned.
    pub pinned: bool,
    /// The verdict, once the campaign has ended.
    pub verdict: Option<VerdictRow>,
}

fn campaign_ref(r: &rusqlite::Row<'_>) -> rusqlite::Result<CampaignRef> {
    Ok(CampaignRef {
        key: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
    })
}

/// Campaigns of a series that have ended (units, none pending or leased) and have no
/// verdict yet, oldest first.
pub(crate) fn ended_without_verdict(
    conn: &Connection,
) -> Result<Vec<(CampaignRef, String)>, StoreError> {
    conn.prepare_cached(
        "SELECT c.campaign_key, c.id, c.name, c.series FROM campaigns c
         WHERE c.series IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM campaign_verdicts v WHERE v.campaign_key = c.campaign_key)
           AND EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key)
           AND NOT EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key
                           AND u.state IN ('pending', 'leased'))
         ORDER BY c.created_at_ms, c.campaign_key",
    )
    .and_then(|mut s| {
        s.query_map([], |r| Ok((campaign_ref(r)?, r.get(3)?)))?
            .collect::<Result<Vec<_>, _>>()
    })
    .sql("find ended campaigns of series")
    .map_err(StoreError::from)
}

/// The baseline of campaign `key` of `series`: the pinned campaign (unless it is this
/// one), else the newest campaign of the series created before it whose every unit
/// succeeded. The flag says whether it is pinned.
pub(crate) fn baseline(
    conn: &Connection,
    key: i64,
    series: &str,
) -> Result<Option<(CampaignRef, bool)>, StoreError> {
    let pinned = conn
        .prepare_cached(
            "SELECT c.campaign_key, c.id, c.name FROM series_baselines b
             JOIN campaigns c USING (campaign_key)
             WHERE b.series = ?1 AND c.campaign_key != ?2",
        )
        .and_then(|mut s| s.query_row((series, key), campaign_ref).optional())
        .sql("read the pinned baseline")?;
    if let Some(pinned) = pinned {
        return Ok(Some((pinned, true)));
    }
    let latest = conn
        .prepare_cached(
            "SELECT c.campaign_key, c.id, c.name FROM campaigns c
             WHERE c.series = ?1 AND c.campaign_key != ?2 AND c.cancelled_at_ms IS NULL
               AND (c.created_at_ms, c.campaign_key) <
                   (SELECT created_at_ms, campaign_key FROM campaigns WHERE campaign_key = ?2)
               AND EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key)
               AND NOT EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key
                               AND u.state != 'succeeded')
             ORDER BY c.created_at_ms DESC, c.campaign_key DESC LIMIT 1",
        )
        .and_then(|mut s| s.query_row((series, key), campaign_ref).optional())
        .sql("find the series' last succeeded campaign")?;
    Ok(latest.map(|c| (c, false)))
}

/// What campaign `name` knows of its series; `None` when it belongs to none.
pub(crate) fn facts(conn: &Connection, name: &str) -> Result<Option<SeriesFacts>, StoreError> {
    let row: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT campaign_key, series FROM campaigns WHERE name = ?1 OR id = ?1")
        .and_then(|mut s| {
            s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .sql("read a campaign's series")?;
    let Some((key, Some(series))) = row else {
        return Ok(None);
    };
    let predecessor: Option<String> = conn
        .prepare_cached(
            "SELECT name FROM campaigns WHERE series = ?1
               AND (created_at_ms, campaign_key) <
                   (SELECT created_at_ms, campaign_key FROM campaigns WHERE campaign_key = ?2)
             ORDER BY created_at_ms DESC, campaign_key DESC LIMIT 1",
        )
        .and_then(|mut s| s.query_row((&series, key), |r| r.get(0)).optional())
        .sql("read a campaign's predecessor")?;
    let verdict = verdict(conn, key)?;
    let (baseline, pinned) = match &verdict {
        Some(v) => (v.baseline.clone(), false),
        None => baseline(conn, key, &series)?
            .map(|(c, pinned)| (Some(c.name), pinned))
            .unwrap_or((None, false)),
    };
    Ok(Some(SeriesFacts {
        series,
        predecessor,
        baseline,
        pinned,
        verdict,
    }))
}

/// The verdict of campaign `key`, once judged.
pub(crate) fn verdict(conn: &Connection, key: i64) -> Result<Option<VerdictRow>, StoreError> {
    let raw: Option<(VerdictRow, String)> = conn
        .prepare_cached(
            "SELECT v.outcome, b.name, v.regressions, v.improvements, v.matched_steps,
                    v.worst_json, v.judged_at_ms
             FROM campaign_verdicts v LEFT JOIN campaigns b ON b.campaign_key = v.baseline_key
             WHERE v.campaign_key = ?1",
        )
        .and_then(|mut s| {
            s.query_row([key], |r| {
                Ok((
                    VerdictRow {
                        outcome: r.get(0)?,
                        baseline: r.get(1)?,
                        regressions: r.get(2)?,
                        improvements: r.get(3)?,
                        matched_steps: r.get(4)?,
                        worst: Vec::new(),
                        judged_at_ms: r.get(6)?,
                    },
                    r.get(5)?,
                ))
            })
            .optional()
        })
        .sql("read a verdict")?;
    raw.map(|(mut verdict, worst)| {
        verdict.worst = serde_json::from_str(&worst).map_err(|source| StoreError::Json {
            action: "decode a verdict's worst regressions",
            source,
        })?;
        Ok(verdict)
    })
    .transpose()
}

/// Stores campaign `key`'s verdict (once: a second one is ignored). True when stored.
pub(crate) fn store_verdict(
    conn: &Connection,
    now_ms: i64,
    key: i64,
    baseline_key: Option<i64>,
    verdict: &VerdictRow,
) -> Result<bool, StoreError> {
    let worst = serde_json::to_string(&verdict.worst).map_err(|source| StoreError::Json {
        action: "encode a verdict's worst regressions",
        source,
    })?;
    let n = conn
        .prepare_cached(
            "INSERT INTO campaign_verdicts (campaign_key, baseline_key, outcome, regressions,
                 improvements, matched_steps, worst_json, judged_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                key,
                baseline_key,
                verdict.outcome,
                verdict.regressions,
                verdict.improvements,
                verdict.matched_steps,
                worst,
                now_ms
            ])
        })
        .sql("store a verdict")?;
    Ok(n > 0)
}

/// Pins campaign `campaign` (name or id) as the baseline of `series`; `None` when the
/// campaign is not of the series.
pub(crate) fn pin(
    conn: &Connection,
    now_ms: i64,
    series: &str,
    campaign: &str,
    actor: &str,
) -> Result<Option<String>, StoreError> {
    let found: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT campaign_key, name FROM campaigns WHERE (name = ?1 OR id = ?1) AND series = ?2",
        )
        .and_then(|mut s| {
            s.query_row((campaign, series), |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .sql("find the campaign to pin")?;
    let Some((key, name)) = found else {
        return Ok(None);
    };
    conn.prepare_cached(
        "INSERT INTO series_baselines (series, campaign_key, pinned_by, pinned_at_ms)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (series) DO UPDATE SET campaign_key = ?2, pinned_by = ?3, pinned_at_ms = ?4",
    )
    .and_then(|mut s| s.execute(rusqlite::params![series, key, actor, now_ms]))
    .sql("pin a baseline")?;
    audit::append(
        conn,
        now_ms,
        actor,
        "baseline_pin",
        series,
        &serde_json::json!({ "campaign": name }),
    )?;
    Ok(Some(name))
}

/// Unpins the baseline of `series`; false when none was pinned.
pub(crate) fn unpin(
    conn: &Connection,
    now_ms: i64,
    series: &str,
    actor: &str,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM series_baselines WHERE series = ?1")
        .and_then(|mut s| s.execute([series]))
        .sql("unpin a baseline")?;
    if n > 0 {
        audit::append(
            conn,
            now_ms,
            actor,
            "baseline_unpin",
            series,
            &serde_json::json!({}),
        )?;
    }
    Ok(n > 0)
}

/// The series operations of the store.
impl super::Store {
    /// Campaigns of a series that ended without a verdict, oldest first.
    pub async fn ended_without_verdict(&self) -> Result<Vec<(CampaignRef, String)>, StoreError> {
        self.read(ended_without_verdict).await
    }

    /// The baseline of campaign `key` of `series`, and whether it is pinned.
    pub async fn series_baseline(
        &self,
        key: i64,
        series: &str,
    ) -> Result<Option<(CampaignRef, bool)>, StoreError> {
        let series = series.to_owned();
        self.read(move |conn| baseline(conn, key, &series)).await
    }

    /// What campaign `name` (or id) knows of its series.
    pub async fn series_facts(&self, name: &str) -> Result<Option<SeriesFacts>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| facts(conn, &name)).await
    }

    /// Stores a verdict (once).
    pub async fn store_verdict(
        &self,
        key: i64,
        baseline_key: Option<i64>,
        verdict: VerdictRow,
    ) -> Result<bool, StoreError> {
        self.write(move |conn, now_ms| store_verdict(conn, now_ms, key, baseline_key, &verdict))
            .await
    }

    /// Pins a baseline for a series (audited); `None` when the campaign is not of it.
    pub async fn pin_baseline(
        &self,
        series: &str,
        campaign: &str,
        actor: &str,
    ) -> Result<Option<String>, StoreError> {
        let (series, campaign, actor) = (series.to_owned(), campaign.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| pin(conn, now_ms, &series, &campaign, &actor))
            .await
    }

    /// Unpins a series' baseline (audited); false when none was pinned.
    pub async fn unpin_baseline(&self, series: &str, actor: &str) -> Result<bool, StoreError> {
        let (series, actor) = (series.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| unpin(conn, now_ms, &series, &actor))
            .await
    }
}
