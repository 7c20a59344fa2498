//! Judging one probe of a capacity search ([`crate::search`]) from its request records:
//! on its steady-state window, against a goal, and only if the server kept up.
//!
//! - **Steady-state window.** The requests sent between 10% and 90% of the span of the
//!   probe's sends. The first tenth is the ramp-up (an empty batch filling, caches warming),
//!   the last tenth is sent while others already drain, and its requests finish on a
//!   lighter server than the load under test.
//! - **Keeping up** (rate probes). Completions in the window per second must reach the
//!   window's own sends per second within [`KEEP_UP_TOLERANCE`]: a server that queues what
//!   it cannot serve completes fewer than it is sent, and fails the probe whatever its
//!   latency looked like so far — a short probe of an overloaded server would otherwise
//!   pass on requests that had not yet waited. (Sends, not the nominal rate, so the arrival
//!   process's own noise does not count against the server.) A concurrency probe is a
//!   closed loop that cannot outrun the server; its latency shows the load instead.
//! - **Server failures.** More than [`SERVER_FAILURE_LIMIT`] of the window's requests failed
//!   with server errors (an HTTP error, a refused or reset connection, a broken stream): the
//!   probe says the server failed, and the search stops. Timeouts and stalls are the load's
//!   doing: they count as requests that missed the goal.
//! - **Score.** The worst ratio of a measured figure to its limit: ≤ 1 passes.

use serde::{Deserialize, Serialize};

use crate::metrics::percentile;
use crate::record::{ErrorKind, RequestRecord};
use crate::search::ProbeOutcome;
use crate::slo::Slo;

/// Fraction of the send span cut from each end for the steady-state window.
pub const WINDOW_TRIM: f64 = 0.1;
/// How far completions may fall short of sends in the window, as a fraction of the sends.
pub const KEEP_UP_TOLERANCE: f64 = 0.05;
/// The fraction of the window's requests that may fail with server errors.
pub const SERVER_FAILURE_LIMIT: f64 = 0.01;
/// Fewer requests in the window cannot be judged: the probe must be longer.
pub const MIN_WINDOW_REQUESTS: usize = 20;

/// What a probe must show to pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Goal {
    /// The `percentile` (e.g. 90) of each figure `limits` sets stays within its limit; a
    /// request that failed (a timeout) counts as over every limit.
    Percentile {
        /// The percentile, in (0, 100].
        percentile: f64,
        /// The limits.
        limits: Slo,
    },
    /// At least `fraction` of the requests meet every objective of `slo` (goodput); failed
    /// requests do not.
    Attainment {
        /// The fraction, in (0, 1).
        fraction: f64,
        /// The objectives.
        slo: Slo,
    },
}

/// A judged probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeJudgment {
    /// The verdict the search reads.
    pub outcome: ProbeOutcome,
    /// The steady-state window, in ns on the step's clock.
    pub window_ns: (u64, u64),
    /// Requests sent in the window.
    pub requests: usize,
    /// Sends per second in the window.
    pub sent_rps: f64,
    /// Successful completions per second in the window.
    pub completed_rps: f64,
    /// Why a failing probe failed, in words.
    pub reason: Option<String>,
    /// For each objective of the goal, how many of the window's requests met it: what
    /// [`crate::settle`] pools over a probe's runs to settle its verdict at a confidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tallies: Vec<Tally>,
}

/// How many of a probe's window requests met one objective.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The objective: `ttft`, `tpot` or `e2el` for a percentile goal, `slo` (every
    /// objective at once) for an attainment goal.
    pub objective: String,
    /// Requests that met it.
    pub within: u64,
    /// Requests in the window.
    pub of: u64,
}

impl Goal {
    /// The fraction of requests that must meet each objective: the percentile / 100, or
    /// the attainment fraction.
    pub fn required_fraction(&self) -> f64 {
        match self {
            Goal::Percentile { percentile, .. } => percentile / 100.0,
            Goal::Attainment { fraction, .. } => *fraction,
        }
    }

    /// Checks the goal: a percentile in (0, 100), a fraction in (0, 1), at least one limit,
    /// every limit finite and > 0.
    pub fn validate(&self) -> Result<(), String> {
        let (slo, share_ok) = match self {
            Goal::Percentile { percentile, limits } => {
                (limits, *percentile > 0.0 && *percentile < 100.0)
            }
            Goal::Attainment { fraction, slo } => (slo, *fraction > 0.0 && *fraction < 1.0),
        };
        if !share_ok {
            return Err(match self {
                Goal::Percentile { percentile, .. } => {
                    format!("the percentile must be in (0, 100), got {percentile}")
                }
                Goal::Attainment { fraction, .. } => {
                    format!("the goodput fraction must be in (0, 1), got {fraction}")
                }
            });
        }
        let limits = [slo.ttft_ms, slo.tpot_ms, slo.e2el_ms];
        if limits.iter().all(Option::is_none) {
            return Err("the goal sets no latency limit (ttft, tpot or e2el)".into());
        }
        if let Some(bad) = limits
            .iter()
            .flatten()
            .find(|l| !(l.is_finite() && **l > 0.0))
        {
            return Err(format!("a latency limit must be finite and > 0, got {bad}"));
        }
        Ok(())
    }
}

/// Judges a probe's measured records (warmup records are skipped) against `goal`;
/// `rate_probe` applies the keeping-up check. An error says why the probe cannot be judged
/// (too few requests in its window).
pub fn judge(
    records: &[RequestRecord],
    goal: &Goal,
    rate_probe: bool,
) -> Result<ProbeJudgment, String> {
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let sends: Vec<u64> = measured.iter().filter_map(|r| r.sent_ns).collect();
    let (Some(&first), Some(&last)) = (sends.iter().min(), sends.iter().max()) else {
        return Err("no request of the probe was sent".into());
    };
    let trim = ((last - first) as f64 * WINDOW_TRIM) as u64;
    let (start, end) = (first + trim, last - trim);
    let in_window: Vec<&RequestRecord> = measured
        .iter()
        .copied()
        .filter(|r| r.sent_ns.is_some_and(|s| (start..=end).contains(&s)))
        .collect();
    if in_window.len() < MIN_WINDOW_REQUESTS {
        return Err(format!(
            "{} requests in the steady-state window, fewer than {MIN_WINDOW_REQUESTS}: lengthen the probe",
            in_window.len()
        ));
    }
    let seconds = ((end - start) as f64 / 1e9).max(f64::MIN_POSITIVE);
    let completed = measured
        .iter()
        .filter(|r| r.succeeded() && r.end_ns.is_some_and(|e| (start..=end).contains(&e)))
        .count();
    let mut judgment = ProbeJudgment {
        outcome: ProbeOutcome::ServerFailed,
        window_ns: (start, end),
        requests: in_window.len(),
        sent_rps: in_window.len() as f64 / seconds,
        completed_rps: completed as f64 / seconds,
        reason: None,
        tallies: Vec::new(),
    };
    let server_failures = in_window
        .iter()
        .filter(|r| r.error.as_ref().is_some_and(|e| is_server_error(e.kind)))
        .count();
    if server_failures as f64 > SERVER_FAILURE_LIMIT * in_window.len() as f64 {
        judgment.reason = Some(format!(
            "{server_failures} of {} requests failed with server errors",
            in_window.len()
        ));
        return Ok(judgment);
    }
    let score = score(&in_window, goal);
    judgment.tallies = tallies(&in_window, goal);
    if rate_probe && judgment.completed_rps < judgment.sent_rps * (1.0 - KEEP_UP_TOLERANCE) {
        judgment.outcome = ProbeOutcome::Fail { score: None };
        judgment.reason = Some(format!(
            "the server did not keep up: {:.2} completions/s for {:.2} sends/s",
            judgment.completed_rps, judgment.sent_rps
        ));
        return Ok(judgment);
    }
    judgment.outcome = match score {
        s if s <= 1.0 => ProbeOutcome::Pass { score: s },
        s => {
            judgment.reason = Some(format!("the goal's worst figure is {s:.2}× its limit"));
            ProbeOutcome::Fail {
                score: s.is_finite().then_some(s),
            }
        }
    };
    Ok(judgment)
}

/// One request's latency figure, in ms.
type Figure = fn(&RequestRecord) -> Option<f64>;

/// Errors the server caused, as opposed to the load (timeouts, stalls).
fn is_server_error(kind: ErrorKind) -> bool {
    !matches!(kind, ErrorKind::Timeout | ErrorKind::Stall)
}

/// For each objective of `goal`, how many of `requests` met it (a failed request meets
/// none).
fn tallies(requests: &[&RequestRecord], goal: &Goal) -> Vec<Tally> {
    let of = requests.len() as u64;
    let count = |met: &dyn Fn(&RequestRecord) -> bool| {
        requests.iter().filter(|r| r.succeeded() && met(r)).count() as u64
    };
    match goal {
        Goal::Percentile { limits, .. } => {
            let objectives: [(&str, Option<f64>, Figure); 3] = [
                ("ttft", limits.ttft_ms, RequestRecord::ttft_ms),
                ("tpot", limits.tpot_ms, tpot_or_zero),
                ("e2el", limits.e2el_ms, RequestRecord::e2el_ms),
            ];
            objectives
                .iter()
                .filter_map(|(name, limit, figure)| {
                    let limit = (*limit)?;
                    Some(Tally {
                        objective: (*name).to_owned(),
                        within: count(&|r| figure(r).is_some_and(|v| v <= limit)),
                        of,
                    })
                })
                .collect()
        }
        Goal::Attainment { slo, .. } => vec![Tally {
            objective: "slo".into(),
            within: count(&|r| slo.met_by(r)),
            of,
        }],
    }
}

/// A request's TPOT, 0 for a request with one output token (it has none: it meets any
/// limit).
fn tpot_or_zero(r: &RequestRecord) -> Option<f64> {
    if r.output_tokens <= 1 {
        Some(0.0)
    } else {
        r.tpot_ms()
    }
}

/// The worst ratio of a figure to its limit (infinite when a failed request decides it).
fn score(requests: &[&RequestRecord], goal: &Goal) -> f64 {
    match goal {
        Goal::Percentile {
            percentile: q,
            limits,
        } => {
            let figures: [(Option<f64>, Figure); 3] = [
                (limits.ttft_ms, RequestRecord::ttft_ms),
                (limits.tpot_ms, tpot_or_zero),
                (limits.e2el_ms, RequestRecord::e2el_ms),
            ];
            figures
                .iter()
                .filter_map(|(limit, figure)| {
                    let limit = (*limit)?;
                    let mut values: Vec<f64> = requests
                        .iter()
                        .map(|r| {
                            if r.succeeded() {
                                figure(r).unwrap_or(f64::INFINITY)
                            } else {
                                f64::INFINITY
                            }
                        })
                        .collect();
                    values.sort_unstable_by(f64::total_cmp);
                    Some(percentile_or_inf(&values, *q) / limit)
                })
                .fold(0.0, f64::max)
        }
        Goal::Attainment { fraction, slo } => {
            let met = requests
                .iter()
                .filter(|r| r.succeeded() && slo.met_by(r))
                .count();
            let missed = 1.0 - met as f64 / requests.len() as f64;
            missed / (1.0 - fraction)
        }
    }
}

/// numpy's linear percentile, infinite when it falls on or next to an infinite value.
fn percentile_or_inf(sorted: &[f64], q: f64) -> f64 {
    let finite = sorted.iter().take_while(|v| v.is_finite()).count();
    let rank = (sorted.len() - 1) as f64 * q / 100.0;
    if rank.ceil() as usize >= finite {
        return f64::INFINITY;
    }
    percentile(sorted, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RequestError;

    const MS: u64 = 1_000_000;

    /// A request sent at `sent` ms taking `ttft` ms to its first token and ending 10 ms
    /// later with 11 tokens (TPOT 1 ms).
    fn request(sent: u64, ttft: u64) -> RequestRecord {
        let first = sent + ttft;
        RequestRecord {
            sent_ns: Some(sent * MS),
            token_ns: (0..11).map(|i| (first + i) * MS).collect(),
            end_ns: Some((first + 10) * MS),
            output_tokens: 11,
            ..RequestRecord::default()
        }
    }

    fn p90(ttft_ms: f64) -> Goal {
        Goal::Percentile {
            percentile: 90.0,
            limits: Slo {
                ttft_ms: Some(ttft_ms),
                ..Slo::default()
            },
        }
    }

    #[test]
    fn a_steady_probe_is_scored_on_its_window() {
        // 100 requests 10 ms apart; the ramp-up's first ten are slow and left out.
        let records: Vec<RequestRecord> = (0..100)
            .map(|i| request(i * 10, if i < 8 { 500 } else { 40 }))
            .collect();
        let j = judge(&records, &p90(50.0), true).expect("judged");
        assert_eq!(j.outcome, ProbeOutcome::Pass { score: 0.8 });
        assert_eq!(j.window_ns, (99 * MS, 891 * MS));
        assert_eq!(j.requests, 80);
        assert!(j.reason.is_none());
        assert_eq!(
            j.tallies,
            vec![Tally {
                objective: "ttft".into(),
                within: 80,
                of: 80
            }]
        );
        // The same probe against a tighter limit fails with its score.
        let j = judge(&records, &p90(20.0), true).expect("judged");
        assert_eq!(j.outcome, ProbeOutcome::Fail { score: Some(2.0) });
    }

    #[test]
    fn a_server_that_queues_fails_a_rate_probe_however_short() {
        // Sent every 10 ms, served every 12 ms: the queue grows, and within this short probe
        // the latency is still under the limit.
        let records: Vec<RequestRecord> = (0..100)
            .map(|i| {
                let done = 30 + i * 12;
                let mut r = request(i * 10, done - i * 10 - 10);
                r.end_ns = Some(done * MS);
                r
            })
            .collect();
        let loose = p90(1000.0);
        let j = judge(&records, &loose, true).expect("judged");
        assert_eq!(j.outcome, ProbeOutcome::Fail { score: None }, "{j:?}");
        assert!(j.reason.as_deref().unwrap().contains("did not keep up"));
        assert!(j.completed_rps < 0.9 * j.sent_rps, "{j:?}");
        // A concurrency probe has no such check (its loop waits for the server).
        let j = judge(&records, &loose, false).expect("judged");
        assert!(matches!(j.outcome, ProbeOutcome::Pass { .. }), "{j:?}");
    }

    #[test]
    fn server_errors_stop_timeouts_count_against_the_goal() {
        let failed = |kind| RequestError {
            kind,
            message: "x".into(),
        };
        let mut records: Vec<RequestRecord> = (0..100).map(|i| request(i * 10, 40)).collect();
        records[50].error = Some(failed(ErrorKind::HttpStatus));
        records[51].error = Some(failed(ErrorKind::Reset));
        let j = judge(&records, &p90(50.0), true).expect("judged");
        assert_eq!(j.outcome, ProbeOutcome::ServerFailed);
        assert!(j.reason.as_deref().unwrap().contains("2 of 80"), "{j:?}");
        // Timeouts are the load's doing: 12 of 80 over the limit puts p90 on them.
        let mut records: Vec<RequestRecord> = (0..100).map(|i| request(i * 10, 40)).collect();
        for r in &mut records[30..42] {
            r.error = Some(failed(ErrorKind::Timeout));
        }
        let j = judge(&records, &p90(50.0), false).expect("judged");
        assert_eq!(j.outcome, ProbeOutcome::Fail { score: None }, "{j:?}");
    }

    #[test]
    fn attainment_goals_score_the_misses_against_the_allowance() {
        // 8 of the 80 window requests (10%) miss a 50 ms TTFT; 95% are required.
        let records: Vec<RequestRecord> = (0..100)
            .map(|i| request(i * 10, if (20..28).contains(&i) { 90 } else { 40 }))
            .collect();
        let goal = |fraction| Goal::Attainment {
            fraction,
            slo: Slo {
                ttft_ms: Some(50.0),
                ..Slo::default()
            },
        };
        let j = judge(&records, &goal(0.95), false).expect("judged");
        let ProbeOutcome::Fail { score: Some(s) } = j.outcome else {
            panic!("{j:?}")
        };
        assert!((s - 2.0).abs() < 1e-9, "{s}");
        let j = judge(&records, &goal(0.8), false).expect("judged");
        let ProbeOutcome::Pass { score } = j.outcome else {
            panic!("{j:?}")
        };
        assert!((score - 0.5).abs() < 1e-9, "{score}");
    }

    #[test]
    fn too_short_a_probe_cannot_be_judged() {
        let records: Vec<RequestRecord> = (0..20).map(|i| request(i * 10, 40)).collect();
        let err = judge(&records, &p90(50.0), true).unwrap_err();
        assert!(err.contains("lengthen the probe"), "{err}");
        assert!(judge(&[], &p90(50.0), true).is_err());
    }
}
