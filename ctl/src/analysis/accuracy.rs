//! Accuracy of deployments: the scores of a campaign's harness steps
//! (`evalctl_results::score`), per step as stored and per deployment as the report, the
//! comparison and `recommend --min` use them.

use std::collections::BTreeMap;

use evalctl_proto::v1 as pb;
use evalctl_results::compare::{Key, ScoreObservation};
use evalctl_results::{Score, StepDocument};
use serde::Serialize;

use super::points::{Config, workload_name};
use crate::export::steps::load_label;

/// One score of one stored step.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The unit's configuration.
    pub config: Config,
    /// Unit id.
    pub unit_id: String,
    /// Workload name.
    pub workload: String,
    /// Load point label (`c=1` for a harness).
    pub load: String,
    /// Measured against evalctl's simulator.
    pub simulated: bool,
    /// The score.
    pub score: Score,
}

impl Scored {
    /// The score as a comparison sees it.
    pub fn observation(&self) -> ScoreObservation<'_> {
        ScoreObservation {
            key: Key {
                config: self.config.to_string(),
                workload: self.workload.clone(),
                load: self.load.clone(),
            },
            score: &self.score,
        }
    }
}

/// The scores of one stored result.
pub fn of_result(result: &pb::StepResult, document: &StepDocument) -> Vec<Scored> {
    let config = Config::of(result.unit.as_ref());
    let load = load_label(result.step.as_ref().and_then(|s| s.load.as_ref()));
    document
        .scores()
        .into_iter()
        .map(|score| Scored {
            config: config.clone(),
            unit_id: result.unit_id.clone(),
            workload: workload_name(result),
            load: load.clone(),
            simulated: document.simulated,
            score,
        })
        .collect()
}

/// One score of one deployment, over its steps and repeats.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentScore {
    /// The deployment, "model / gpu xN / framework / quant".
    pub config: String,
    /// Model name.
    pub model: String,
    /// The score's name.
    pub score: String,
    /// Mean over the steps that measured it.
    pub value: f64,
    /// Standard error of that mean, when every step gave one.
    pub stderr: Option<f64>,
    /// Samples over those steps, when known.
    pub samples: Option<u64>,
    /// Steps that measured it.
    pub steps: usize,
    /// Higher is better.
    pub higher_is_better: bool,
    /// Measured against evalctl's simulator.
    pub simulated: bool,
}

/// Every deployment's scores, by deployment and then score name.
pub fn by_deployment(scored: &[Scored]) -> Vec<DeploymentScore> {
    let mut groups: BTreeMap<(String, String), Vec<&Scored>> = BTreeMap::new();
    for s in scored {
        groups
            .entry((s.config.to_string(), s.score.name.clone()))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|((config, score), steps)| {
            let n = steps.len() as f64;
            DeploymentScore {
                model: steps[0].config.model.clone(),
                value: steps.iter().map(|s| s.score.value).sum::<f64>() / n,
                stderr: steps
                    .iter()
                    .map(|s| s.score.stderr.map(|e| e * e))
                    .sum::<Option<f64>>()
                    .map(|v| v.sqrt() / n),
                samples: steps.iter().map(|s| s.score.samples).sum(),
                steps: steps.len(),
                higher_is_better: steps[0].score.higher_is_better,
                simulated: steps.iter().any(|s| s.simulated),
                config,
                score,
            }
        })
        .collect()
}

/// A `--min NAME=VALUE` bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinScore {
    /// The score's name as given (resolved against the stored names when used).
    pub name: String,
    /// The bound.
    pub value: f64,
}

/// Parses `NAME=VALUE`; the name may hold commas (`gsm8k/exact_match,strict-match=0.6`).
pub fn parse_min(text: &str) -> Result<MinScore, String> {
    let (name, value) = text.rsplit_once('=').ok_or_else(|| {
        format!("`{text}` is not score=value (e.g. gsm8k/exact_match,strict-match=0.6)")
    })?;
    let value: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("`{text}`: `{value}` is not a number"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{text}` names no score"));
    }
    Ok(MinScore {
        name: name.to_owned(),
        value,
    })
}

/// The stored score `given` means: its exact name, or the one `task/metric` with some
/// filter (`gsm8k/exact_match` for `gsm8k/exact_match,strict-match` when it is the only
/// filter).
pub fn resolve<'a>(given: &str, known: &[&'a str]) -> Result<&'a str, String> {
    if let Some(exact) = known.iter().find(|k| **k == given) {
        return Ok(exact);
    }
    let prefix = format!("{given},");
    let matches: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| k.starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no score named `{given}` is stored{}",
            if known.is_empty() {
                " (the campaign ran no accuracy harness)".to_owned()
            } else {
                format!("; stored: {}", known.join(", "))
            }
        )),
        many => Err(format!(
            "`{given}` names several scores ({}): give the filter too",
            many.join(", ")
        )),
    }
}

/// Why deployment `config` fails the bounds, or `None` when it meets them all. A bound
/// names a resolved score; a deployment that did not measure it fails.
pub fn misses(config: &str, bounds: &[MinScore], scores: &[DeploymentScore]) -> Option<String> {
    let reasons: Vec<String> = bounds
        .iter()
        .filter_map(|bound| {
            let Some(s) = scores
                .iter()
                .find(|s| s.config == config && s.score == bound.name)
            else {
                return Some(format!("{} not measured", bound.name));
            };
            let fails = if s.higher_is_better {
                s.value < bound.value
            } else {
                s.value > bound.value
            };
            fails.then(|| {
                format!(
                    "{} {:.3} {} the minimum {}",
                    bound.name,
                    s.value,
                    if s.higher_is_better {
                        "below"
                    } else {
                        "worse than"
                    },
                    bound.value
                )
            })
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// "0.800 ± 0.057" (or the value alone without a standard error).
pub fn value_text(value: f64, stderr: Option<f64>) -> String {
    match stderr {
        Some(e) => format!("{value:.3} ± {e:.3}"),
        None => format!("{value:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fixtures::deployment_score as deployment;

    #[test]
    fn bounds_parse_with_commas_in_the_name() {
        assert_eq!(
            parse_min("gsm8k/exact_match,strict-match=0.6"),
            Ok(MinScore {
                name: "gsm8k/exact_match,strict-match".into(),
                value: 0.6
            })
        );
        assert!(parse_min("gsm8k").unwrap_err().contains("score=value"));
        assert!(
            parse_min("gsm8k=high")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_min("=0.5").unwrap_err().contains("names no score"));
    }

    #[test]
    fn a_name_resolves_exactly_or_by_its_only_filter() {
        let known = [
            "a/acc,none",
            "g/exact_match,strict-match",
            "g/exact_match,flex",
        ];
        assert_eq!(resolve("a/acc", &known), Ok("a/acc,none"));
        assert_eq!(
            resolve("g/exact_match,flex", &known),
            Ok("g/exact_match,flex")
        );
        assert!(
            resolve("g/exact_match", &known)
                .unwrap_err()
                .contains("several")
        );
        assert!(
            resolve("x", &known)
                .unwrap_err()
                .contains("stored: a/acc,none")
        );
        assert!(
            resolve("x", &[])
                .unwrap_err()
                .contains("no accuracy harness")
        );
    }

    #[test]
    fn a_deployment_below_a_bound_or_without_the_score_misses() {
        let scores = [deployment("good", 0.8), deployment("poor", 0.5)];
        let bound = [MinScore {
            name: "arith/exact_match,strict-match".into(),
            value: 0.7,
        }];
        assert_eq!(misses("good", &bound, &scores), None);
        assert!(
            misses("poor", &bound, &scores)
                .unwrap()
                .contains("0.500 below the minimum 0.7")
        );
        assert!(
            misses("other", &bound, &scores)
                .unwrap()
                .contains("not measured")
        );
    }
}
