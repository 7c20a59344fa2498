//! Capacity search: the highest load (concurrency or request rate) at which a deployment
//! still meets a goal, found with few probes. The next probe is a pure function of the
//! probes stored so far, so a search interrupted on one agent resumes on another from what
//! was stored, without repeating a probe.
//!
//! Each probe is a step at one load, judged against the goal with a **score**: the worst
//! ratio of a measured figure to its limit (p90 TTFT / its limit, …), so a score ≤ 1
//! passes. The score is stored with the probe and shown; the search uses its verdict.
//!
//! The method: `min` first (a search whose lowest load already fails says so after one
//! probe), then a bisection in log(load) of the bracket `[lo, hi]` — the highest passing
//! load and the lowest failing one, or `max` while no load failed. The search ends when
//! `hi / lo ≤ 1 + precision` (for concurrency, also when `hi − lo ≤ 1`); a bracket narrowed
//! onto `max` without a failure probes `max` itself (it fails, or the capacity is at least
//! `max`). So the probes are at most `1 + ⌈log2(ln(max / min) / ln(1 + precision))⌉`, one
//! more when the capacity is within the precision of `max`: 8 for `0.5..64` requests/s at
//! 5%, whatever the shape of the latency curve.
//!
//! Why not faster steps from the scores: false-position steps (where the line through two
//! probes' scores in log(load) × log(score) reaches 1) converge fast on power-law curves
//! but stall on queueing curves — latency flat far from saturation, vertical near it,
//! which is what servers show — taking 9 and more probes where halving takes 7; and an
//! expansion from `min` by doubling spends log2(max / min) probes before it brackets
//! anything.
//!
//! Any probe failed by the server (errors, not latency) ends the search without a capacity;
//! `max_probes` ends it with the bracket reached so far.

use serde::{Deserialize, Serialize};

/// What a search varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchAxis {
    /// Requests in flight: whole numbers.
    Concurrency,
    /// Requests per second.
    Rate,
}

impl SearchAxis {
    /// The axis as the matrix names it: `concurrency` or `rate`.
    pub fn name(self) -> &'static str {
        match self {
            SearchAxis::Concurrency => "concurrency",
            SearchAxis::Rate => "rate",
        }
    }
}

/// A search's bounds and budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SearchSpec {
    /// What is varied.
    pub axis: SearchAxis,
    /// The lowest load probed (the first probe).
    pub min: f64,
    /// The highest load probed.
    pub max: f64,
    /// Probes at most.
    pub max_probes: u32,
    /// Relative width of the final bracket: the capacity found is within this fraction of
    /// the true one.
    pub precision: f64,
    /// Extra runs of a load whose verdict is not settled at the confidence
    /// ([`crate::settle`]); they do not count against `max_probes`.
    #[serde(default = "default_max_repeats")]
    pub max_repeats: u32,
}

impl SearchSpec {
    /// The most probe runs the search can take: `max_probes` loads, each run at most
    /// `1 + max_repeats` times.
    pub fn max_runs(&self) -> u32 {
        self.max_probes
            .saturating_mul(self.max_repeats.saturating_add(1))
    }
}

/// [`SearchSpec::max_repeats`] when not given.
pub const DEFAULT_MAX_REPEATS: u32 = 2;

fn default_max_repeats() -> u32 {
    DEFAULT_MAX_REPEATS
}

impl SearchSpec {
    /// Checks the bounds: `0 < min ≤ max`, finite, whole numbers for concurrency, at least
    /// 2 probes, `precision` in (0, 1).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.min.is_finite() && self.max.is_finite() && self.min > 0.0) {
            return Err(format!(
                "min and max must be finite and > 0, got {} and {}",
                self.min, self.max
            ));
        }
        if self.max < self.min {
            return Err(format!(
                "max ({}) must not be below min ({})",
                self.max, self.min
            ));
        }
        if self.axis == SearchAxis::Concurrency
            && (self.min.fract() != 0.0 || self.max.fract() != 0.0)
        {
            return Err("a concurrency search takes whole numbers".into());
        }
        if self.max_probes < 2 {
            return Err(format!(
                "max_probes must be at least 2, got {}",
                self.max_probes
            ));
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Err(format!(
                "precision must be in (0, 1), got {}",
                self.precision
            ));
        }
        Ok(())
    }
}

/// How one probe was judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ProbeOutcome {
    /// The goal was met; `score` ≤ 1.
    Pass {
        /// The worst measured/limit ratio.
        score: f64,
    },
    /// The goal was missed: `score` > 1, or `None` when the probe could not be scored (it
    /// did not achieve its offered load).
    Fail {
        /// The worst measured/limit ratio, when scored.
        score: Option<f64>,
    },
    /// The server failed requests: no latency verdict is possible.
    ServerFailed,
    /// Every run allowed at the load left the verdict unsettled at the confidence
    /// ([`crate::settle`]): the search treats it as a miss, so a capacity is only ever a
    /// settled pass.
    Inconclusive {
        /// The mean of the runs' scores, when scored.
        score: Option<f64>,
    },
}

impl ProbeOutcome {
    /// The outcome counts against the load (a miss, unscored or inconclusive).
    pub fn is_miss(&self) -> bool {
        matches!(
            self,
            ProbeOutcome::Fail { .. } | ProbeOutcome::Inconclusive { .. }
        )
    }

    /// The score, when the outcome has one.
    pub fn score(&self) -> Option<f64> {
        match *self {
            ProbeOutcome::Pass { score } => Some(score),
            ProbeOutcome::Fail { score } | ProbeOutcome::Inconclusive { score } => score,
            ProbeOutcome::ServerFailed => None,
        }
    }

    /// One word for tables: `pass`, `fail`, `server failed`, `inconclusive`.
    pub fn word(&self) -> &'static str {
        match self {
            ProbeOutcome::Pass { .. } => "pass",
            ProbeOutcome::Fail { .. } => "fail",
            ProbeOutcome::ServerFailed => "server failed",
            ProbeOutcome::Inconclusive { .. } => "inconclusive",
        }
    }
}

/// One stored probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The load it offered.
    pub load: f64,
    /// Its verdict.
    pub outcome: ProbeOutcome,
}

/// Why a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The bracket is as narrow as the precision asks.
    PrecisionReached,
    /// The probe budget ran out first.
    MaxProbes,
    /// A probe failed on server errors.
    ServerFailed,
    /// The lowest load already misses the goal.
    LowestFails,
    /// The highest load still meets it: the capacity is at least `max`.
    HighestPasses,
}

/// A finished search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SearchVerdict {
    /// The highest load that met the goal; `None` when none did or the server failed.
    pub capacity: Option<f64>,
    /// The lowest load that missed it, when one did.
    pub first_failing: Option<f64>,
    /// Probes used (distinct loads).
    pub probes: u32,
    /// Probe steps run, repeats of unsettled loads included.
    #[serde(default)]
    pub runs: u32,
    /// Why the search ended.
    pub stopped: StopReason,
}

impl StopReason {
    /// The reason in words, for tables and reports.
    pub fn describe(&self) -> &'static str {
        match self {
            StopReason::PrecisionReached => "precision reached",
            StopReason::MaxProbes => "max probes used",
            StopReason::ServerFailed => "the server failed requests",
            StopReason::LowestFails => "the lowest load already misses the goal",
            StopReason::HighestPasses => "the highest load still meets the goal",
        }
    }
}

/// What a search does next.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchStep {
    /// Probe this load.
    Probe(f64),
    /// The search is over.
    Done(SearchVerdict),
}

/// The next step of the search `spec` (which [`SearchSpec::validate`] accepted) after
/// `probes`, in any order.
pub fn next(spec: &SearchSpec, probes: &[Probe]) -> SearchStep {
    let used = probes.len() as u32;
    let done = |capacity, first_failing, stopped| {
        SearchStep::Done(SearchVerdict {
            capacity,
            first_failing,
            probes: used,
            runs: used,
            stopped,
        })
    };
    if probes
        .iter()
        .any(|p| p.outcome == ProbeOutcome::ServerFailed)
    {
        return done(None, None, StopReason::ServerFailed);
    }
    // The lowest failing load bounds the capacity; passes above it are noise and ignored.
    let first_failing = probes
        .iter()
        .filter(|p| p.outcome.is_miss())
        .map(|p| p.load)
        .min_by(f64::total_cmp);
    let capacity = probes
        .iter()
        .filter(|p| matches!(p.outcome, ProbeOutcome::Pass { .. }))
        .map(|p| p.load)
        .filter(|load| first_failing.is_none_or(|f| *load < f))
        .max_by(f64::total_cmp);
    if first_failing.is_some_and(|f| f <= spec.min) {
        return done(None, first_failing, StopReason::LowestFails);
    }
    if capacity.is_some_and(|c| c >= spec.max) {
        return done(capacity, None, StopReason::HighestPasses);
    }
    let candidate = match (capacity, first_failing) {
        (None, _) => spec.min,
        (Some(lo), hi) => {
            let top = hi.unwrap_or(spec.max);
            let narrow = top / lo <= 1.0 + spec.precision
                || (spec.axis == SearchAxis::Concurrency && top - lo <= 1.0);
            match (narrow, hi) {
                (true, Some(_)) => {
                    return done(capacity, first_failing, StopReason::PrecisionReached);
                }
                (true, None) => spec.max,
                (false, _) => midpoint(spec, lo, top),
            }
        }
    };
    if used >= spec.max_probes {
        return done(capacity, first_failing, StopReason::MaxProbes);
    }
    SearchStep::Probe(candidate)
}

/// The geometric midpoint of `(lo, hi)`, strictly inside (a whole number for concurrency,
/// where `hi − lo > 1` leaves room for one).
fn midpoint(spec: &SearchSpec, lo: f64, hi: f64) -> f64 {
    let mid = (lo * hi).sqrt();
    match spec.axis {
        SearchAxis::Concurrency => mid.round().clamp(lo + 1.0, hi - 1.0),
        // Four significant digits: a load that reads well in tables and survives any JSON
        // round trip exactly; the bracket is wider than 1 + precision, so the rounding
        // (under 0.05%) keeps the midpoint well inside it.
        SearchAxis::Rate => {
            let rounded = round_significant(mid, 4);
            if rounded > lo && rounded < hi {
                rounded
            } else {
                mid
            }
        }
    }
}

/// `x` rounded to `digits` significant digits.
fn round_significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against `score_of(load)` (score ≤ 1 passes; `None` fails unscored).
    fn run(spec: &SearchSpec, score_of: impl Fn(f64) -> Option<f64>) -> (SearchVerdict, Vec<f64>) {
        let mut probes: Vec<Probe> = Vec::new();
        loop {
            match next(spec, &probes) {
                SearchStep::Probe(load) => {
                    assert!(
                        probes.iter().all(|p| p.load != load),
                        "{load} probed twice: {probes:?}"
                    );
                    assert!(
                        (spec.min..=spec.max).contains(&load),
                        "{load} out of bounds"
                    );
                    let outcome = match score_of(load) {
                        Some(s) if s <= 1.0 => ProbeOutcome::Pass { score: s },
                        s => ProbeOutcome::Fail { score: s },
                    };
                    probes.push(Probe { load, outcome });
                }
                SearchStep::Done(verdict) => {
                    return (verdict, probes.iter().map(|p| p.load).collect());
                }
            }
        }
    }

    /// A queueing-like curve: a base latency `base` (as a fraction of the limit) that grows
    /// as 1 / (1 − load / saturation), unscored past saturation. Its capacity (score 1) is
    /// `saturation × (1 − base)`.
    fn queueing(base: f64, saturation: f64) -> impl Fn(f64) -> Option<f64> {
        move |load| (load < saturation).then(|| base / (1.0 - load / saturation))
    }

    fn rate(min: f64, max: f64) -> SearchSpec {
        SearchSpec {
            axis: SearchAxis::Rate,
            min,
            max,
            max_probes: 8,
            precision: 0.05,
            max_repeats: DEFAULT_MAX_REPEATS,
        }
    }

    #[test]
    fn finds_capacities_within_precision_in_eight_probes() {
        let mut worst = 0u32;
        for base in [0.05, 0.2, 0.5, 0.8] {
            for saturation in [0.9, 3.0, 7.7, 20.0, 55.0, 140.0] {
                let capacity = saturation * (1.0 - base);
                if !(0.5..64.0).contains(&capacity) {
                    continue;
                }
                let spec = rate(0.5, 64.0);
                let (verdict, loads) = run(&spec, queueing(base, saturation));
                assert_eq!(
                    verdict.stopped,
                    StopReason::PrecisionReached,
                    "capacity {capacity}: {verdict:?} {loads:?}"
                );
                let found = verdict.capacity.expect("a capacity");
                assert!(
                    found <= capacity && found >= capacity / 1.05,
                    "capacity {capacity}: found {found} via {loads:?}"
                );
                worst = worst.max(verdict.probes);
            }
        }
        assert!(worst <= 8, "worst search took {worst} probes");
    }

    #[test]
    fn power_law_curves_and_concurrency() {
        for capacity in [3.0, 17.0, 40.0, 100.0, 230.0] {
            for exponent in [1.0, 3.0, 8.0] {
                let spec = SearchSpec {
                    axis: SearchAxis::Concurrency,
                    min: 1.0,
                    max: 256.0,
                    max_probes: 8,
                    precision: 0.05,
                    max_repeats: DEFAULT_MAX_REPEATS,
                };
                let curve = move |load: f64| Some((load / capacity).powf(exponent));
                let (verdict, loads) = run(&spec, curve);
                let found = verdict.capacity.expect("a capacity");
                assert!(loads.iter().all(|l| l.fract() == 0.0), "{loads:?}");
                assert!(
                    found <= capacity && (found >= capacity / 1.05 || capacity - found < 1.0),
                    "capacity {capacity}, exponent {exponent}: found {found} via {loads:?} ({verdict:?})"
                );
                assert!(verdict.probes <= 8, "{loads:?}");
            }
        }
    }

    #[test]
    fn the_ends_of_the_range_and_server_failures_say_so() {
        // Already failing at min: no capacity, said plainly.
        let (v, loads) = run(&rate(2.0, 64.0), |_| Some(3.0));
        assert_eq!((v.capacity, v.first_failing), (None, Some(2.0)));
        assert_eq!((v.stopped, loads.len()), (StopReason::LowestFails, 1));
        // Still passing at max: min, the bisection up to within 5% of max (7 probes over
        // 32×), then max itself, one more than the interior bound.
        let roomy = SearchSpec {
            max_probes: 10,
            ..rate(2.0, 64.0)
        };
        let (v, loads) = run(&roomy, |_| Some(0.5));
        assert_eq!(
            (v.capacity, v.stopped),
            (Some(64.0), StopReason::HighestPasses)
        );
        assert_eq!(
            (loads.len(), loads[loads.len() - 1]),
            (9, 64.0),
            "{loads:?}"
        );
        // A server failure ends the search without a capacity.
        let spec = rate(1.0, 64.0);
        let probes = [
            Probe {
                load: 1.0,
                outcome: ProbeOutcome::Pass { score: 0.3 },
            },
            Probe {
                load: 3.3,
                outcome: ProbeOutcome::ServerFailed,
            },
        ];
        let SearchStep::Done(v) = next(&spec, &probes) else {
            panic!("a server failure ends the search")
        };
        assert_eq!((v.capacity, v.stopped), (None, StopReason::ServerFailed));
        // The budget ends it with the bracket so far.
        let tight = SearchSpec {
            max_probes: 3,
            precision: 0.001,
            ..rate(0.5, 64.0)
        };
        let (v, loads) = run(&tight, queueing(0.2, 10.0));
        assert_eq!((v.stopped, loads.len()), (StopReason::MaxProbes, 3));
        assert!(v.capacity.is_some() && v.first_failing.is_some(), "{v:?}");
    }

    #[test]
    fn the_next_probe_depends_on_the_stored_probes_alone() {
        // A search preempted after any number of probes resumes with the same next probe,
        // whatever order the stored probes come back in.
        let spec = rate(0.5, 64.0);
        let curve = queueing(0.3, 12.0);
        let (_, loads) = run(&spec, &curve);
        let judged: Vec<Probe> = loads
            .iter()
            .map(|&load| Probe {
                load,
                outcome: match curve(load) {
                    Some(s) if s <= 1.0 => ProbeOutcome::Pass { score: s },
                    s => ProbeOutcome::Fail { score: s },
                },
            })
            .collect();
        for k in 0..judged.len() {
            let mut stored = judged[..k].to_vec();
            stored.reverse();
            assert_eq!(next(&spec, &stored), SearchStep::Probe(loads[k]));
        }
    }

    #[test]
    fn specs_are_checked() {
        assert!(rate(0.5, 64.0).validate().is_ok());
        assert!(rate(0.0, 64.0).validate().is_err());
        assert!(rate(8.0, 4.0).validate().is_err());
        assert!(rate(1.0, f64::INFINITY).validate().is_err());
        let whole = SearchSpec {
            axis: SearchAxis::Concurrency,
            ..rate(1.5, 64.0)
        };
        assert!(whole.validate().is_err());
        assert!(
            SearchSpec {
                max_probes: 1,
                ..rate(1.0, 2.0)
            }
            .validate()
            .is_err()
        );
        assert!(
            SearchSpec {
                precision: 0.0,
                ..rate(1.0, 2.0)
            }
            .validate()
            .is_err()
        );
    }
}
