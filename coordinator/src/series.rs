//! Verdicts of a series (docs/schedules.md#baselines-and-verdicts): when a campaign of a
//! series has ended, it is compared with its baseline by the rules of `evalctl compare`
//! (`evalctl_results::compare`: steps matched by configuration, workload and load point,
//! repeats pooled, a regression is worse than the threshold and than the noise), on the
//! default metrics at the default 5% threshold, and its accuracy scores by the same rules as
//! `compare`'s (a drop beyond 0.01 and twice its standard error), and the verdict is stored
//! once.

use evalctl_results::compare::{self, Key, Metric, Observation, ScoreObservation, Verdict};
use evalctl_results::{Score, StepDocument};
use tracing::{info, warn};

use crate::domain::CampaignId;
use crate::store::series::{CampaignRef, VerdictChange, VerdictRow};
use crate::store::{Store, StoreError};

/// Relative change below which nothing is flagged (`evalctl compare`'s default).
pub const THRESHOLD: f64 = 0.05;
/// Absolute change of an accuracy score below which nothing is flagged (`evalctl
/// compare`'s default `--accuracy-threshold`).
pub const ACCURACY_THRESHOLD: f64 = 0.01;
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

/// Every accuracy score of the steps, as a comparison sees it.
fn observe_scores(steps: &[(Key, Vec<Score>)]) -> Vec<ScoreObservation<'_>> {
    steps
        .iter()
        .flat_map(|(key, scores)| {
            scores.iter().map(|score| ScoreObservation {
                key: key.clone(),
                score,
            })
        })
        .collect()
}

fn scores_of(steps: &[Measured]) -> Vec<(Key, Vec<Score>)> {
    steps
        .iter()
        .map(|m| (m.key.clone(), m.document.scores()))
        .filter(|(_, scores)| !scores.is_empty())
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
    let (base_scores, new_scores) = (scores_of(base), scores_of(new));
    let accuracy = compare::compare_scores(
        &observe_scores(&base_scores),
        &observe_scores(&new_scores),
        ACCURACY_THRESHOLD,
    );
    // Each regression as the verdict lists it: its step, metric and relative change.
    let mut regressions: Vec<VerdictChange> = comparison
        .regressions()
        .map(|c| VerdictChange {
            config: c.key.config.clone(),
            workload: c.key.workload.clone(),
            load: c.key.load.clone(),
            metric: c.metric.clone(),
            change: c.change,
        })
        .chain(
            accuracy
                .iter()
                .filter(|c| c.verdict == Verdict::Regression)
                .map(|c| VerdictChange {
                    config: c.key.config.clone(),
                    workload: c.key.workload.clone(),
                    load: c.key.load.clone(),
                    metric: c.score.clone(),
                    change: if c.base.value == 0.0 {
                        c.change
                    } else {
                        c.change / c.base.value.abs()
                    },
                }),
        )
        .collect();
    // Worst first: the largest change the worse way.
    regressions.sort_by(|a, b| b.change.abs().total_cmp(&a.change.abs()));
    let mut scored_steps: Vec<&Key> = accuracy.iter().map(|c| &c.key).collect();
    scored_steps.dedup();
    let matched = (comparison.matched_steps() + scored_steps.len()) as u32;
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
        improvements: (comparison
            .changes
            .iter()
            .filter(|c| c.verdict == Verdict::Improvement)
            .count()
            + accuracy
                .iter()
                .filter(|c| c.verdict == Verdict::Improvement)
                .count()) as u32,
        matched_steps: matched,
        worst: regressions.into_iter().take(WORST).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An lm-eval step of configuration `config` that scored `value` ± 0.05.
    fn scored(config: &str, value: f64) -> Measured {
        Measured {
            key: Key {
                config: config.into(),
                workload: "arith".into(),
                load: "c=1".into(),
            },
            document: serde_json::from_value(serde_json::json!({
                "schema": 1, "schema_minor": 6, "simulated": true, "step_label": "arith @ c=1 #0",
                "metrics": null, "tokenization": null, "connections_opened": 0,
                "served_model": "m", "started_at_ms": 0, "finished_at_ms": 1,
                "scores": [{"name": "arith/exact_match,strict-match", "value": value,
                            "stderr": 0.05, "samples": 50, "higher_is_better": true}]
            }))
            .unwrap(),
        }
    }

    #[test]
    fn an_accuracy_drop_regresses_the_series_and_an_equal_score_passes() {
        let verdict = judge("base", &[scored("m", 0.8)], &[scored("m", 0.5)]);
        assert_eq!(verdict.outcome, "regressed", "{verdict:?}");
        assert_eq!((verdict.regressions, verdict.matched_steps), (1, 1));
        assert_eq!(verdict.worst[0].metric, "arith/exact_match,strict-match");
        assert!(
            (verdict.worst[0].change + 0.375).abs() < 1e-9,
            "{verdict:?}"
        );
        let same = judge("base", &[scored("m", 0.8)], &[scored("m", 0.8)]);
        assert_eq!((same.outcome.as_str(), same.regressions), ("passed", 0));
    }
}
