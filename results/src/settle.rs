//! Noise-aware probe verdicts: a capacity search's probe near the boundary is run again
//! until its verdict is settled at a stated confidence, or marked inconclusive; and the
//! search's plan from the stored runs (which load to run next, which repeat, or the verdict).
//!
//! # The rule
//!
//! A goal is a set of proportions: "p90 of TTFT ≤ 500 ms" holds exactly when at least 90%
//! of the requests have a TTFT within 500 ms; "goodput ≥ 95%" when at least 95% meet every
//! objective. A probe's window gives, for each objective, `within` of `of` requests
//! ([`Tally`]); the runs at one load are pooled by adding their tallies. For each tally the
//! Wilson score interval of the proportion, one-sided at 95% (z = 1.645), settles it:
//!
//! - **met** when its lower bound is at least the required fraction,
//! - **missed** when its upper bound is below it,
//! - **open** otherwise.
//!
//! The load passes when every tally is met, fails when any is missed (or when a run did not
//! keep up with its offered rate, or was unscored), and is run again while open, up to
//! [`SearchSpec::max_repeats`] extra runs; still open after that, it is **inconclusive**,
//! which the search treats as a miss: a capacity is only ever a settled pass.
//!
//! The confidence sets how many requests a load needs before a pass can be settled even
//! when every request is within the limit: `z² · q / (1 − q)` — 25 for p90, 52 for 95%
//! goodput, 268 for p99 ([`requests_to_settle`]). Probes shorter than that are repeated by
//! design; size `requests` or `duration` so one run has them.

use serde::{Deserialize, Serialize};

use crate::probe::{Goal, ProbeJudgment, Tally};
use crate::search::{self, Probe, ProbeOutcome, SearchAxis, SearchSpec, SearchStep, SearchVerdict};

/// One-sided 95% normal quantile for the Wilson bounds.
pub const CONFIDENCE_Z: f64 = 1.645;

/// One stored run of a probe: the load, which run at that load (from 0) and its judgment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRun {
    /// The load offered.
    pub load: f64,
    /// The run at that load, from 0; runs after the first are repeats of an open verdict.
    pub run: u32,
    /// How the run was judged.
    pub judgment: ProbeJudgment,
}

/// How one tally, or a load's tallies together, stand against the required fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The goal is met at the confidence.
    Met,
    /// The goal is missed at the confidence.
    Missed,
    /// Neither yet.
    Open,
}

/// The Wilson score interval `(lower, upper)` of `within / of` at `z`.
pub fn wilson(within: u64, of: u64, z: f64) -> (f64, f64) {
    if of == 0 {
        return (0.0, 1.0);
    }
    let n = of as f64;
    let p = within as f64 / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Settles pooled tallies against `required` (every tally met passes, any missed fails).
pub fn settle(required: f64, tallies: &[Tally]) -> Settled {
    let mut all_met = !tallies.is_empty();
    for tally in tallies {
        let (lower, upper) = wilson(tally.within, tally.of, CONFIDENCE_Z);
        if upper < required {
            return Settled::Missed;
        }
        all_met &= lower >= required;
    }
    if all_met { Settled::Met } else { Settled::Open }
}

/// The requests a load needs, all within the limits, for a pass to be settled at fraction
/// `required`: `⌈z² · q / (1 − q)⌉`.
pub fn requests_to_settle(required: f64) -> u64 {
    (CONFIDENCE_Z * CONFIDENCE_Z * required / (1.0 - required)).ceil() as u64
}

/// Adds up the tallies of several runs, objective by objective.
pub fn pool<'a>(tallies: impl IntoIterator<Item = &'a Tally>) -> Vec<Tally> {
    let mut pooled: Vec<Tally> = Vec::new();
    for tally in tallies {
        match pooled.iter_mut().find(|t| t.objective == tally.objective) {
            Some(sum) => {
                sum.within += tally.within;
                sum.of += tally.of;
            }
            None => pooled.push(tally.clone()),
        }
    }
    pooled
}

/// The verdict on one load from its runs: `None` while it is open (run it again).
fn verdict_at(goal: &Goal, runs: &[&ProbeRun], repeats_left: bool) -> Option<ProbeOutcome> {
    let outcomes = runs.iter().map(|r| r.judgment.outcome);
    if outcomes.clone().any(|o| o == ProbeOutcome::ServerFailed) {
        return Some(ProbeOutcome::ServerFailed);
    }
    let scores: Vec<f64> = outcomes
        .clone()
        .filter_map(|o| o.score())
        .filter(|s| s.is_finite())
        .collect();
    let mean = (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
    // Unscored: a run that did not keep up with its rate, or one a failed request decided.
    if outcomes
        .clone()
        .any(|o| matches!(o, ProbeOutcome::Fail { score: None }))
    {
        return Some(ProbeOutcome::Fail { score: mean });
    }
    let pooled = pool(runs.iter().flat_map(|r| &r.judgment.tallies));
    let settled = if pooled.is_empty() {
        // A judgment without tallies: its own verdict is all there is.
        match runs.last().map(|r| r.judgment.outcome) {
            Some(ProbeOutcome::Pass { .. }) => Settled::Met,
            _ => Settled::Missed,
        }
    } else {
        settle(goal.required_fraction(), &pooled)
    };
    match settled {
        Settled::Met => Some(ProbeOutcome::Pass {
            score: mean.unwrap_or(0.0),
        }),
        Settled::Missed => Some(ProbeOutcome::Fail { score: mean }),
        Settled::Open if repeats_left => None,
        Settled::Open => Some(ProbeOutcome::Inconclusive { score: mean }),
    }
}

/// What a search does next.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextRun {
    /// Run `load` (run number `run` at that load).
    Run {
        /// The load.
        load: f64,
        /// The run at that load, from 0.
        run: u32,
    },
    /// The search is over.
    Done(SearchVerdict),
}

/// The loads probed so far with their pooled verdicts (in the order first run), and the
/// load still open, when one is.
pub fn loads(spec: &SearchSpec, goal: &Goal, runs: &[ProbeRun]) -> (Vec<Probe>, Option<NextRun>) {
    let mut loads: Vec<f64> = runs.iter().map(|r| r.load).collect();
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    let mut probes = Vec::new();
    let mut open = None;
    for load in loads {
        let at: Vec<&ProbeRun> = runs.iter().filter(|r| r.load == load).collect();
        let next_run = at.iter().map(|r| r.run + 1).max().unwrap_or(0);
        let repeats_left = (at.len() as u32) <= spec.max_repeats;
        match verdict_at(goal, &at, repeats_left) {
            Some(outcome) => probes.push(Probe { load, outcome }),
            None => {
                open = Some(NextRun::Run {
                    load,
                    run: next_run,
                })
            }
        }
    }
    (probes, open)
}

/// The next run of the search after `runs` (in any order): a repeat of the load whose
/// verdict is open, else the next probe of [`search::next`] over the settled loads, else
/// the verdict.
pub fn plan(spec: &SearchSpec, goal: &Goal, runs: &[ProbeRun]) -> NextRun {
    let (probes, open) = loads(spec, goal, runs);
    if let Some(next) = open {
        // A server failure elsewhere ends the search before any repeat.
        if !probes
            .iter()
            .any(|p| p.outcome == ProbeOutcome::ServerFailed)
        {
            return next;
        }
    }
    match search::next(spec, &probes) {
        SearchStep::Probe(load) => NextRun::Run { load, run: 0 },
        SearchStep::Done(mut verdict) => {
            verdict.runs = runs.len() as u32;
            NextRun::Done(verdict)
        }
    }
}

/// The step id of a probe run: derived from the search step's id, the load and the run,
/// so the same run gets the same id on any agent (a result delivered twice is stored once)
/// and reads as what it is, e.g. `s-0123456789abcdef~rate=40.5#0`.
pub fn probe_step_id(search_step: &str, axis: SearchAxis, load: f64, run: u32) -> String {
    let axis = match axis {
        SearchAxis::Concurrency => "c",
        SearchAxis::Rate => "rate",
    };
    format!("{search_step}~{axis}={load}#{run}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::Slo;

    fn goal() -> Goal {
        Goal::Percentile {
            percentile: 90.0,
            limits: Slo {
                ttft_ms: Some(100.0),
                ..Slo::default()
            },
        }
    }

    fn spec() -> SearchSpec {
        SearchSpec {
            axis: SearchAxis::Rate,
            min: 1.0,
            max: 64.0,
            max_probes: 8,
            precision: 0.05,
            max_repeats: 2,
        }
    }

    /// A run at `load` where `within` of `of` requests met the TTFT limit.
    fn run(load: f64, run: u32, within: u64, of: u64) -> ProbeRun {
        let share = within as f64 / of as f64;
        ProbeRun {
            load,
            run,
            judgment: ProbeJudgment {
                outcome: if share >= 0.9 {
                    ProbeOutcome::Pass { score: 0.9 }
                } else {
                    ProbeOutcome::Fail { score: Some(1.2) }
                },
                window_ns: (0, 1),
                requests: of as usize,
                sent_rps: load,
                completed_rps: load,
                reason: None,
                tallies: vec![Tally {
                    objective: "ttft".into(),
                    within,
                    of,
                }],
            },
        }
    }

    #[test]
    fn wilson_bounds_match_published_values() {
        // Wilson (1927) interval for 81 of 263 at z = 1.96: 0.2553 .. 0.3662 (as listed by
        // Newcombe 1998, table I, example 1 … 0.2553, 0.3662).
        let (lo, hi) = wilson(81, 263, 1.96);
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        // All met: the lower bound is n / (n + z²).
        let (lo, hi) = wilson(40, 40, CONFIDENCE_Z);
        assert!((lo - 40.0 / (40.0 + CONFIDENCE_Z * CONFIDENCE_Z)).abs() < 1e-12);
        assert_eq!(hi, 1.0);
        assert_eq!(wilson(0, 0, CONFIDENCE_Z), (0.0, 1.0));
    }

    #[test]
    fn settling_needs_enough_requests_for_the_fraction() {
        let tally = |within, of| Tally {
            objective: "ttft".into(),
            within,
            of,
        };
        assert_eq!(requests_to_settle(0.9), 25);
        assert_eq!(requests_to_settle(0.95), 52);
        assert_eq!(requests_to_settle(0.99), 268);
        assert_eq!(settle(0.9, &[tally(24, 24)]), Settled::Open);
        assert_eq!(settle(0.9, &[tally(25, 25)]), Settled::Met);
        assert_eq!(settle(0.9, &[tally(10, 40)]), Settled::Missed);
        // A boundary share stays open however many requests.
        assert_eq!(settle(0.9, &[tally(900, 1000)]), Settled::Open);
        // Any objective missed fails; every one met passes.
        assert_eq!(
            settle(0.9, &[tally(100, 100), tally(20, 100)]),
            Settled::Missed
        );
        assert_eq!(settle(0.9, &[]), Settled::Open);
    }

    #[test]
    fn an_open_load_is_repeated_then_settled_or_inconclusive() {
        let spec = spec();
        // 38 of 40 at 8 rps: open (Wilson 0.860 .. 0.983), run it again before anything else.
        let runs = vec![run(1.0, 0, 40, 40), run(8.0, 0, 38, 40)];
        assert_eq!(
            plan(&spec, &goal(), &runs),
            NextRun::Run { load: 8.0, run: 1 }
        );
        // Pooled 78 of 80 is met (lower bound 0.927): the search goes on with the next probe.
        let mut settled = runs.clone();
        settled.push(run(8.0, 1, 40, 40));
        let (probes, open) = loads(&spec, &goal(), &settled);
        assert_eq!(open, None);
        assert!(matches!(probes[1].outcome, ProbeOutcome::Pass { .. }));
        assert!(matches!(
            plan(&spec, &goal(), &settled),
            NextRun::Run { run: 0, load } if load > 8.0
        ));
        // Still open after the repeats allowed (107 of 120): inconclusive, a miss to the
        // search, which bisects below it.
        let mut open = runs.clone();
        open.push(run(8.0, 1, 34, 40));
        open.push(run(8.0, 2, 35, 40));
        let (probes, next) = loads(&spec, &goal(), &open);
        assert_eq!(next, None);
        assert!(matches!(
            probes[1].outcome,
            ProbeOutcome::Inconclusive { .. }
        ));
        assert!(matches!(
            plan(&spec, &goal(), &open),
            NextRun::Run { run: 0, load } if load > 1.0 && load < 8.0
        ));
    }

    #[test]
    fn the_plan_counts_runs_and_ends_on_a_server_failure() {
        let spec = spec();
        let mut failed = run(2.0, 0, 0, 24);
        failed.judgment.outcome = ProbeOutcome::ServerFailed;
        let runs = vec![run(1.0, 0, 20, 24), run(1.0, 1, 22, 24), failed];
        let NextRun::Done(verdict) = plan(&spec, &goal(), &runs) else {
            panic!("a server failure ends the search")
        };
        assert_eq!(verdict.stopped, search::StopReason::ServerFailed);
        assert_eq!((verdict.capacity, verdict.runs), (None, 3));
        // The lowest load missed outright: one run, no capacity.
        let NextRun::Done(verdict) = plan(&spec, &goal(), &[run(1.0, 0, 2, 40)]) else {
            panic!("the lowest load missing ends the search")
        };
        assert_eq!(verdict.stopped, search::StopReason::LowestFails);
    }

    #[test]
    fn probe_ids_name_their_search_load_and_run() {
        assert_eq!(
            probe_step_id("s-ab", SearchAxis::Rate, 40.5, 1),
            "s-ab~rate=40.5#1"
        );
        assert_eq!(
            probe_step_id("s-ab", SearchAxis::Concurrency, 12.0, 0),
            "s-ab~c=12#0"
        );
    }
}
