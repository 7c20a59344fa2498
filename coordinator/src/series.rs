//! Verdicts of a series (docs/schedules.md#baselines-and-verdicts): when a campaign of a
//! series has ended, it is compared with its baseline by the rules of `evalctl compare`
//! (`evalctl_results::compare`: steps matched by configuration, workload and load point,
//! repeats pooled, a regression is worse than the threshold and than the noise), on the
//! default metrics at the default 5% threshold, and the verdict is stored once.

use evalctl_results::StepDocument;
use evalctl_results::compare::{self, Key, Metric, Observation, Verdict};
use tracing::{info, warn};

use crate::domain::CampaignId;
use crate::store::series::{CampaignRef, VerdictChange, VerdictRow};
use crate::store::{Store, StoreError};

/// Relative change below which nothing is flagged (`evalctl compare`'s default).
pub const THRESHOLD: f64 = 0.05;
/// Regressions a verdict lists.
const WORST: usize = 5;

/// One stored step with its comparison key.
struct Measured {
    key: Key,
    document: StepDocument,
}

/// Judges every campaign of a series that has ended without a verdict; returns the
/// verdicts stored, with their campaigns.
pub async fn judge_ended(store: &Store) -> Result<Vec<(CampaignRef, VerdictRow)>, StoreError> {
    let mut judged = Vec::new();
    for (campaign, series) in store.ended_without_verdict().await? {
        let baseline = store.series_baseline(campaign.key, &series).await?;
        let verdict = match &baseline {
            None => VerdictRow {
                outcome: "no_baseline".to_owned(),
                baseline: None,
                regressions: 0,
                improvements: 0,
                matched_steps: 0,
                worst: Vec::new(),
                judged_at_ms: 0,
            },
            Some((base, _)) => {
                let new_steps = measured(store, &campaign).await?;
                let base_steps = measured(store, base).await?;
                judge(&base.name, &base_steps, &new_steps)
            }
        };
        if store
            .store_verdict(campaign.key, baseline.map(|(b, _)| b.key), verdict.clone())
            .await?
        {
            info!(
                campaign = %campaign.name,
                %series,
                outcome = %verdict.outcome,
                regressions = verdict.regressions,
                baseline = verdict.baseline.as_deref().unwrap_or("-"),
                "series verdict"
            );
            judged.push((campaign, verdict));
        }
    }
    Ok(judged)
}

/// The steps that have load metrics, as a comparison sees them.
fn observe(steps: &[Measured]) -> Vec<Observation<'_>> {
    steps
        .iter()
        .filter_map(|m| {
            m.document.metrics.as_ref().map(|metrics| Observation {
                key: m.key.clone(),
                metrics,
                joules_per_output_token: m
                    .document
                    .telemetry
                    .as_ref()
                    .and_then(|t| t.joules_per_output_token),
            })
        })
        .collect()
}

/// The verdict of `new` against `base` (named `base_name`).
fn judge(base_name: &str, base: &[Measured], new: &[Measured]) -> VerdictRow {
    let comparison = compare::compare(
        &observe(base),
        &observe(new),
        &Metric::compare_defaults(),
        THRESHOLD,
    );
    let mut regressions: Vec<&compare::Change> = comparison.regressions().collect();
    // Worst first: the largest change the worse way.
    regressions.sort_by(|a, b| b.change.abs().total_cmp(&a.change.abs()));
    let matched = comparison.matched_steps() as u32;
    let outcome = if matched == 0 {
        "no_common_steps"
    } else if regressions.is_empty() {
        "passed"
    } else {
        "regressed"
    };
    VerdictRow {
        outcome: outcome.to_owned(),
        baseline: Some(base_name.to_owned()),
        regressions: regressions.len() as u32,
        improvements: comparison
            .changes
            .iter()
            .filter(|c| c.verdict == Verdict::Improvement)
            .count() as u32,
        matched_steps: matched,
        worst: regressions
            .iter()
            .take(WORST)
            .map(|c| VerdictChange {
                config: c.key.config.clone(),
                workload: c.key.workload.clone(),
                load: c.key.load.clone(),
                metric: c.metric.clone(),
                change: c.change,
            })
            .collect(),
        judged_at_ms: 0,
    }
}

/// The stored steps of `campaign` with their keys (documents that do not parse are left
/// out, with a warning).
async fn measured(store: &Store, campaign: &CampaignRef) -> Result<Vec<Measured>, StoreError> {
    let mut out = Vec::new();
    let Some(mut pages) = store
        .results(&CampaignId(campaign.id.clone()), false)
        .await?
    else {
        return Ok(out);
    };
    while let Some(page) = pages.next_page().await? {
        for result in page {
            match serde_json::from_str::<StepDocument>(&result.result_json) {
                Ok(document) => out.push(Measured {
                    key: Key {
                        config: result.config.label(),
                        workload: result.step.workload.name.clone(),
                        load: result.step.load.to_string(),
                    },
                    document,
                }),
                Err(err) => warn!(
                    campaign = %campaign.name,
                    step = %result.step.id,
                    error = %err,
                    "a stored result does not parse; left out of the verdict"
                ),
            }
        }
    }
    Ok(out)
}
