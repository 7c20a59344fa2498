//! Regression check between two campaigns: steps are matched by server configuration,
//! workload and load point; repeats of a step are pooled into their median. A change is a
//! regression when it goes the worse way by more than the threshold **and** by more than
//! the noise: the larger spread of the repeats on either side, relative to the base
//! median. The spread is max − min of the repeats; with three or more, the one repeat
//! farthest from the median is left out first, so one disturbed run neither moves the
//! median nor hides a real change behind a wide spread. A tail percentile is compared only
//! where the steps completed enough requests to estimate it ([`Metric::min_requests`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::StepMetrics;

pub mod accuracy;
pub mod metric;

pub use accuracy::{ScoreChange, ScoreObservation, compare_scores};
pub use metric::{Latency, Metric, Stat, UnknownMetric};

/// What matches a step of one campaign to a step of the other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// "model / gpu xN / framework / quant".
    pub config: String,
    /// Workload name.
    pub workload: String,
    /// Load point, "c=8".
    pub load: String,
}

/// One measured step (one repeat), as a comparison sees it.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// Which step it is.
    pub key: Key,
    /// Its load metrics.
    pub metrics: &'a StepMetrics,
    /// GPU energy per output token, J, when measured.
    pub joules_per_output_token: Option<f64>,
}

/// The repeats of one metric of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Median of the repeats (the value compared).
    pub median: f64,
    /// Mean over repeats.
    pub mean: f64,
    /// Smallest repeat.
    pub min: f64,
    /// Largest repeat.
    pub max: f64,
    /// Repeats.
    pub n: usize,
    /// Spread used as noise: max − min, less the most deviant repeat when n ≥ 3.
    pub spread: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        // The spread, less the repeat farthest from the median when there are 3 or more.
        let kept: &[f64] = if n >= 3 {
            if (sorted[n - 1] - median).abs() >= (median - sorted[0]).abs() {
                &sorted[..n - 1]
            } else {
                &sorted[1..]
            }
        } else {
            &sorted
        };
        Some(Stats {
            median,
            mean: values.iter().sum::<f64>() / n as f64,
            min,
            max,
            n,
            spread: kept[kept.len() - 1] - kept[0],
        })
    }
}

/// What a change amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Worse by more than the threshold and the noise.
    Regression,
    /// Better by more than the threshold and the noise.
    Improvement,
    /// Beyond the threshold, but within the spread of the repeats.
    WithinNoise,
    /// Within the threshold.
    Unchanged,
}

/// One metric of one matched step.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The step.
    #[serde(flatten)]
    pub key: Key,
    /// The metric's name, e.g. "ttft_p90".
    pub metric: String,
    /// Its unit.
    pub unit: &'static str,
    /// Higher is better for this metric.
    pub higher_is_better: bool,
    /// The base campaign's repeats.
    pub base: Stats,
    /// The new campaign's repeats.
    pub new: Stats,
    /// (new − base) / base of the medians, as a fraction.
    pub change: f64,
    /// Spread of the repeats relative to the base median, as a fraction (0 without
    /// repeats).
    pub noise: f64,
    /// The verdict.
    pub verdict: Verdict,
}

/// The result of comparing two campaigns.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Threshold used, as a fraction.
    pub threshold: f64,
    /// Every metric of every matched step.
    pub changes: Vec<Change>,
    /// Steps only the base campaign has.
    pub only_in_base: Vec<Key>,
    /// Steps only the new campaign has.
    pub only_in_new: Vec<Key>,
}

impl Comparison {
    /// The changes flagged as regressions.
    pub fn regressions(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.verdict == Verdict::Regression)
    }

    /// Matched steps.
    pub fn matched_steps(&self) -> usize {
        let mut keys: Vec<&Key> = self.changes.iter().map(|c| &c.key).collect();
        keys.dedup();
        keys.len()
    }
}

type Groups<'a, 'm> = BTreeMap<&'a Key, Vec<&'a Observation<'m>>>;

fn group<'a, 'm>(observations: &'a [Observation<'m>]) -> Groups<'a, 'm> {
    let mut groups: Groups<'a, 'm> = BTreeMap::new();
    for o in observations {
        groups.entry(&o.key).or_default().push(o);
    }
    groups
}

/// Compares `new` against `base` on `metrics` with a relative `threshold` (0.05 = 5 %).
pub fn compare(
    base: &[Observation<'_>],
    new: &[Observation<'_>],
    metrics: &[Metric],
    threshold: f64,
) -> Comparison {
    let base_groups = group(base);
    let new_groups = group(new);
    let mut changes = Vec::new();
    for (key, base_points) in &base_groups {
        let Some(new_points) = new_groups.get(key) else {
            continue;
        };
        for metric in metrics {
            let values = |observations: &[&Observation<'_>]| -> Vec<f64> {
                observations
                    .iter()
                    .filter(|o| o.metrics.completed >= metric.min_requests())
                    .filter_map(|o| metric.value(o.metrics, o.joules_per_output_token))
                    .filter(|v| v.is_finite())
                    .collect()
            };
            let (Some(b), Some(n)) = (
                Stats::of(&values(base_points)),
                Stats::of(&values(new_points)),
            ) else {
                continue;
            };
            let Some(change) = relative(b.median, n.median) else {
                continue;
            };
            let noise = if b.median.abs() > 0.0 {
                b.spread.max(n.spread) / b.median.abs()
            } else {
                0.0
            };
            changes.push(Change {
                key: (*key).clone(),
                metric: metric.to_string(),
                unit: metric.unit(),
                higher_is_better: metric.higher_is_better(),
                base: b,
                new: n,
                change,
                noise,
                verdict: verdict(change, noise, threshold, metric.higher_is_better()),
            });
        }
    }
    let only = |a: &Groups<'_, '_>, b: &Groups<'_, '_>| -> Vec<Key> {
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| (*k).clone())
            .collect()
    };
    Comparison {
        threshold,
        only_in_base: only(&base_groups, &new_groups),
        only_in_new: only(&new_groups, &base_groups),
        changes,
    }
}

/// (new − base) / |base|; `None` when base is 0 and new is not (no meaningful ratio).
fn relative(base: f64, new: f64) -> Option<f64> {
    if base == 0.0 {
        return (new == 0.0).then_some(0.0);
    }
    Some((new - base) / base.abs())
}

fn verdict(change: f64, noise: f64, threshold: f64, higher_is_better: bool) -> Verdict {
    let magnitude = change.abs();
    if magnitude <= threshold {
        Verdict::Unchanged
    } else if magnitude <= noise {
        Verdict::WithinNoise
    } else if (change < 0.0) == higher_is_better {
        Verdict::Regression
    } else {
        Verdict::Improvement
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Summary;

    /// A step of configuration "m" at `load` whose throughput and TPOT p50 are given.
    struct Step {
        key: Key,
        metrics: StepMetrics,
    }

    /// Repeat `_repeat` of the step (repeats are told apart by their order only).
    fn point(_repeat: u32, throughput: f64, tpot_p50: f64) -> Step {
        let mut metrics = crate::metrics::compute(
            &[],
            &Default::default(),
            crate::metrics::LagPolicy {
                report: false,
                tolerance_ms: None,
            },
        );
        metrics.output_token_throughput = throughput;
        metrics.tpot_ms = Summary::of(vec![tpot_p50]);
        metrics.completed = 100;
        Step {
            key: Key {
                config: "m / cpu x1 / sim / bf16".into(),
                workload: "chat".into(),
                load: "c=1".into(),
            },
            metrics,
        }
    }

    fn seen(steps: &[Step]) -> Vec<Observation<'_>> {
        steps
            .iter()
            .map(|s| Observation {
                key: s.key.clone(),
                metrics: &s.metrics,
                joules_per_output_token: None,
            })
            .collect()
    }

    fn compare(base: &[Step], new: &[Step], metrics: &[Metric], threshold: f64) -> Comparison {
        super::compare(&seen(base), &seen(new), metrics, threshold)
    }

    const METRICS: [Metric; 2] = [
        Metric::OutputThroughput,
        Metric::Latency(Latency::Tpot, Stat::P50),
    ];

    #[test]
    fn a_twenty_percent_slowdown_is_a_regression() {
        let base = [point(0, 100.0, 10.0)];
        let new = [point(0, 80.0, 12.0)];
        let c = compare(&base, &new, &METRICS, 0.05);
        assert_eq!(c.regressions().count(), 2, "{c:#?}");
        assert!((c.changes[0].change + 0.2).abs() < 1e-9);
        assert_eq!(c.matched_steps(), 1);
    }

    #[test]
    fn equal_campaigns_and_small_changes_pass() {
        let base = [point(0, 100.0, 10.0)];
        let c = compare(&base, &[point(0, 100.0, 10.0)], &METRICS, 0.05);
        assert!(c.changes.iter().all(|c| c.verdict == Verdict::Unchanged));
        let c = compare(&base, &[point(0, 97.0, 10.4)], &METRICS, 0.05);
        assert_eq!(c.regressions().count(), 0, "{c:#?}");
    }

    #[test]
    fn a_change_within_the_spread_of_repeats_is_noise() {
        // Repeats of the base range from 80 to 120: a 10 % drop of the median is noise.
        let base = [point(0, 80.0, 10.0), point(1, 120.0, 10.0)];
        let new = [point(0, 88.0, 10.0), point(1, 92.0, 10.0)];
        let c = compare(&base, &new, &METRICS[..1], 0.05);
        assert_eq!(c.changes[0].verdict, Verdict::WithinNoise, "{c:#?}");
        assert!((c.changes[0].noise - 0.4).abs() < 1e-9);
        // The same drop with tight repeats is a regression.
        let base = [point(0, 99.0, 10.0), point(1, 101.0, 10.0)];
        let c = compare(&base, &new, &METRICS[..1], 0.05);
        assert_eq!(c.changes[0].verdict, Verdict::Regression, "{c:#?}");
    }

    #[test]
    fn one_disturbed_repeat_of_three_neither_hides_nor_fakes_a_change() {
        // A 20 % drop with one wild repeat on either side is still a regression.
        let base = [
            point(0, 100.0, 10.0),
            point(1, 101.0, 10.0),
            point(2, 40.0, 10.0),
        ];
        let new = [
            point(0, 80.0, 10.0),
            point(1, 81.0, 10.0),
            point(2, 200.0, 10.0),
        ];
        let c = compare(&base, &new, &METRICS[..1], 0.05);
        assert_eq!(c.changes[0].verdict, Verdict::Regression, "{c:#?}");
        assert!((c.changes[0].change - (81.0 / 100.0 - 1.0)).abs() < 1e-9);
        assert!((c.changes[0].noise - 0.01).abs() < 1e-9);
        // Equal runs with one wild repeat: not a regression.
        let new = [
            point(0, 100.5, 10.0),
            point(1, 99.5, 10.0),
            point(2, 60.0, 10.0),
        ];
        let c = compare(&base, &new, &METRICS[..1], 0.05);
        assert_eq!(c.changes[0].verdict, Verdict::Unchanged, "{c:#?}");
    }

    #[test]
    fn a_tail_percentile_of_a_few_requests_is_not_compared() {
        let p99 = [Metric::Latency(Latency::Ttft, Stat::P99)];
        let mut base = point(0, 100.0, 10.0);
        base.metrics.ttft_ms = Summary::of(vec![10.0]);
        let mut new = point(0, 100.0, 10.0);
        new.metrics.ttft_ms = Summary::of(vec![20.0]);
        assert_eq!(
            compare(&[base], &[new], &p99, 0.05).regressions().count(),
            1
        );
        let (mut base, mut new) = (point(0, 100.0, 10.0), point(0, 100.0, 10.0));
        base.metrics.ttft_ms = Summary::of(vec![10.0]);
        new.metrics.ttft_ms = Summary::of(vec![20.0]);
        new.metrics.completed = 16;
        assert!(compare(&[base], &[new], &p99, 0.05).changes.is_empty());
    }

    #[test]
    fn improvements_and_unmatched_steps_are_reported() {
        let base = [point(0, 100.0, 10.0)];
        let mut other = point(0, 100.0, 10.0);
        other.key.load = "c=8".into();
        let new = [point(0, 150.0, 5.0), other];
        let c = compare(&base, &new, &METRICS, 0.05);
        assert!(c.changes.iter().all(|c| c.verdict == Verdict::Improvement));
        assert_eq!(c.only_in_new.len(), 1);
        assert!(c.only_in_base.is_empty());
    }
}
