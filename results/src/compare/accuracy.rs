//! Accuracy regressions between two campaigns: the scores of matched harness steps
//! ([`crate::score`]). Repeats of a step are pooled into their mean, with the standard error
//! of that mean. A score is a regression when it got worse by more than the threshold (in
//! the score's own units: 0.02 is two points of accuracy) **and** by more than
//! [`SIGMAS`] standard errors of the difference, so a drop that sampling alone could
//! explain is not flagged. Without a standard error on both sides only the threshold
//! applies.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Key, Verdict};
use crate::score::Score;

/// Standard errors of the difference a change must exceed to be flagged (about 95%
/// two-sided).
pub const SIGMAS: f64 = 2.0;

/// One score of one measured step (one repeat).
#[derive(Debug, Clone)]
pub struct ScoreObservation<'a> {
    /// Which step it is.
    pub key: Key,
    /// The score.
    pub score: &'a Score,
}

/// The repeats of one score of one step, pooled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pooled {
    /// Mean over repeats.
    pub value: f64,
    /// Standard error of that mean, when every repeat had one.
    pub stderr: Option<f64>,
    /// Repeats.
    pub n: usize,
}

impl Pooled {
    fn of(scores: &[&Score]) -> Option<Pooled> {
        let n = scores.len();
        if n == 0 {
            return None;
        }
        let value = scores.iter().map(|s| s.value).sum::<f64>() / n as f64;
        let stderr = scores
            .iter()
            .map(|s| s.stderr.map(|e| e * e))
            .sum::<Option<f64>>()
            .map(|variance| variance.sqrt() / n as f64);
        Some(Pooled { value, stderr, n })
    }
}

/// One score of one matched step.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreChange {
    /// The step.
    #[serde(flatten)]
    pub key: Key,
    /// The score's name, e.g. `gsm8k/exact_match,strict-match`.
    pub score: String,
    /// Higher is better for this score.
    pub higher_is_better: bool,
    /// The base campaign's value.
    pub base: Pooled,
    /// The new campaign's value.
    pub new: Pooled,
    /// new − base.
    pub change: f64,
    /// The standard error of the change, when both sides have one.
    pub stderr: Option<f64>,
    /// The verdict.
    pub verdict: Verdict,
}

/// Compares the scores of `new` against `base` with an absolute `threshold`.
pub fn compare_scores(
    base: &[ScoreObservation<'_>],
    new: &[ScoreObservation<'_>],
    threshold: f64,
) -> Vec<ScoreChange> {
    let new_groups = group(new);
    let mut changes = Vec::new();
    for ((key, name), base_scores) in group(base) {
        let Some(new_scores) = new_groups.get(&(key.clone(), name.clone())) else {
            continue;
        };
        let (Some(b), Some(n)) = (Pooled::of(&base_scores), Pooled::of(new_scores)) else {
            continue;
        };
        let higher_is_better = base_scores[0].higher_is_better;
        let change = n.value - b.value;
        let stderr = b.stderr.zip(n.stderr).map(|(x, y)| x.hypot(y));
        changes.push(ScoreChange {
            key,
            score: name,
            higher_is_better,
            base: b,
            new: n,
            change,
            stderr,
            verdict: verdict(change, stderr, threshold, higher_is_better),
        });
    }
    changes
}

type Groups<'a> = BTreeMap<(Key, String), Vec<&'a Score>>;

fn group<'a>(observations: &[ScoreObservation<'a>]) -> Groups<'a> {
    let mut groups: Groups<'a> = BTreeMap::new();
    for o in observations {
        groups
            .entry((o.key.clone(), o.score.name.clone()))
            .or_default()
            .push(o.score);
    }
    groups
}

/// The verdict of an absolute change: the noise is [`SIGMAS`] standard errors (none without
/// one), then the rules of [`super::compare`].
fn verdict(change: f64, stderr: Option<f64>, threshold: f64, higher_is_better: bool) -> Verdict {
    let noise = stderr.map_or(0.0, |e| SIGMAS * e);
    super::verdict(change, noise, threshold, higher_is_better)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(value: f64, stderr: Option<f64>) -> Score {
        Score {
            name: "arith/exact_match,strict-match".into(),
            value,
            stderr,
            samples: Some(50),
            higher_is_better: true,
        }
    }

    fn key(config: &str) -> Key {
        Key {
            config: config.into(),
            workload: "arith".into(),
            load: "c=1".into(),
        }
    }

    fn seen<'a>(config: &str, scores: &'a [Score]) -> Vec<ScoreObservation<'a>> {
        scores
            .iter()
            .map(|score| ScoreObservation {
                key: key(config),
                score,
            })
            .collect()
    }

    #[test]
    fn a_drop_beyond_the_threshold_and_two_standard_errors_is_a_regression() {
        let base = [score(0.8, Some(0.057))];
        let new = [score(0.5, Some(0.071))];
        let changes = compare_scores(&seen("m", &base), &seen("m", &new), 0.02);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].verdict, Verdict::Regression);
        assert!((changes[0].change + 0.3).abs() < 1e-12);
        let combined = changes[0].stderr.unwrap();
        assert!((combined - 0.057f64.hypot(0.071)).abs() < 1e-12);
    }

    #[test]
    fn a_drop_within_its_standard_errors_or_the_threshold_is_not_flagged() {
        let base = [score(0.8, Some(0.057))];
        let noisy = [score(0.72, Some(0.064))];
        let changes = compare_scores(&seen("m", &base), &seen("m", &noisy), 0.02);
        assert_eq!(changes[0].verdict, Verdict::WithinNoise);
        let small = [score(0.79, None)];
        let changes = compare_scores(&seen("m", &base), &seen("m", &small), 0.02);
        assert_eq!(changes[0].verdict, Verdict::Unchanged);
        let better = [score(0.95, Some(0.03))];
        let changes = compare_scores(&seen("m", &base), &seen("m", &better), 0.02);
        assert_eq!(changes[0].verdict, Verdict::Improvement);
    }

    #[test]
    fn repeats_pool_into_their_mean_and_unmatched_steps_are_left_out() {
        let base = [score(0.8, Some(0.06)), score(0.7, Some(0.08))];
        let new = [score(0.75, Some(0.06))];
        let changes = compare_scores(&seen("m", &base), &seen("m", &new), 0.0);
        assert!((changes[0].base.value - 0.75).abs() < 1e-12);
        assert!((changes[0].base.stderr.unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(changes[0].base.n, 2);
        assert!(compare_scores(&seen("m", &base), &seen("other", &new), 0.0).is_empty());
    }

    #[test]
    fn a_lower_is_better_score_regresses_upwards() {
        let perplexity = |value| Score {
            higher_is_better: false,
            ..score(value, None)
        };
        let changes = compare_scores(
            &seen("m", &[perplexity(12.0)]),
            &seen("m", &[perplexity(14.0)]),
            0.5,
        );
        assert_eq!(changes[0].verdict, Verdict::Regression);
    }
}
