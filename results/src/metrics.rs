//! Step metrics from request records, as vLLM's benchmark defines them (docs/metrics.md).
//!
//! Percentiles use linear interpolation between closest ranks — numpy's default `linear`
//! method, which vLLM's benchmark uses — computed exactly over the sorted values.
//! Only successful measured requests contribute latencies; warmup requests are excluded from
//! everything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::{ErrorKind, RequestRecord, TokenSource};
use crate::slo::Slo;
use crate::turns::{self, TurnMetrics};

/// The `q`-th percentile (0–100) of `sorted` (ascending, non-empty) with linear interpolation
/// between closest ranks: numpy's `percentile(values, q)` default.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no values");
    let rank = (sorted.len() - 1) as f64 * (q / 100.0).clamp(0.0, 1.0);
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted[lo], sorted[hi]);
    // Written as a + t·(b − a) like numpy, so equal neighbours give the value exactly.
    a + (rank - lo as f64) * (b - a)
}

/// Distribution of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (any order); `None` when empty.
    pub fn of(mut values: Vec<f64>) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        Some(Summary {
            mean,
            p50: percentile(&values, 50.0),
            p90: percentile(&values, 90.0),
            p95: percentile(&values, 95.0),
            p99: percentile(&values, 99.0),
            max: values[values.len() - 1],
        })
    }
}

/// Client lag (send − scheduled) in rate mode, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LagSummary {
    /// Median lag.
    pub p50: f64,
    /// 99th percentile lag.
    pub p99: f64,
    /// Largest lag.
    pub max: f64,
}

/// How to judge client lag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagPolicy {
    /// Report lag at all (rate mode).
    pub report: bool,
    /// Flag the step when p99 lag exceeds this many ms; `None` never flags (rate `inf`, where
    /// every request is scheduled at the start).
    pub tolerance_ms: Option<f64>,
}

/// Default p99 client lag above which a rate-mode step says the client fell behind.
pub const DEFAULT_LAG_TOLERANCE_MS: f64 = 10.0;

/// The metrics of one step, in the shape of the result document's `metrics` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Time to first token.
    pub ttft_ms: Option<Summary>,
    /// Time per output token (requests with more than one output token).
    pub tpot_ms: Option<Summary>,
    /// Inter-token latency, pooled over requests.
    pub itl_ms: Option<Summary>,
    /// End-to-end latency.
    pub e2el_ms: Option<Summary>,
    /// Time to first answer token; only when some request reasoned before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfa_ms: Option<Summary>,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Output tokens of successful requests per second.
    pub output_token_throughput: f64,
    /// Prompt and output tokens of successful requests per second.
    pub total_token_throughput: f64,
    /// Requests per second meeting every SLO; `None` when no SLO was set.
    pub goodput: Option<f64>,
    /// Tokens per second one user sees: 1000 / median TPOT.
    pub interactivity_tok_s: Option<f64>,
    /// Successful measured requests.
    pub completed: u64,
    /// Failed measured requests.
    pub failed: u64,
    /// Failed measured requests by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// First send to last completion of the measured requests, in seconds.
    pub duration_s: f64,
    /// Prompt tokens of successful requests (server `usage` when sent, else the dataset's).
    pub total_input_tokens: u64,
    /// Output tokens of successful requests.
    pub total_output_tokens: u64,
    /// Of `total_output_tokens`, those that were reasoning (the records' `reasoning_tokens`);
    /// absent when no request reasoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Of `total_output_tokens`, those that were the answer (the rest); absent when no
    /// request reasoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_tokens: Option<u64>,
    /// Successful requests whose output tokens came from the server's `usage`.
    pub output_tokens_from_usage: u64,
    /// Successful requests whose output tokens were counted from chunks.
    pub output_tokens_counted: u64,
    /// Warmup requests left out of every figure.
    pub warmup_excluded: u64,
    /// Send − scheduled time (rate mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_lag_ms: Option<LagSummary>,
    /// The client could not send on schedule (p99 lag above the tolerance).
    pub client_fell_behind: bool,
    /// Multi-turn steps: latency by turn position (schema 1.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<TurnMetrics>,
}

/// Computes step metrics from every record of a step (warmup records included; they are
/// skipped).
pub fn compute(records: &[RequestRecord], slo: &Slo, lag: LagPolicy) -> StepMetrics {
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let ok: Vec<&RequestRecord> = measured.iter().copied().filter(|r| r.succeeded()).collect();

    let mut errors = BTreeMap::new();
    for r in &measured {
        if let Some(e) = &r.error {
            *errors.entry(e.kind).or_insert(0) += 1;
        }
    }

    let first_send = measured.iter().filter_map(|r| r.sent_ns).min();
    let last_end = measured.iter().filter_map(|r| r.end_ns).max();
    let duration_s = match (first_send, last_end) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => 0.0,
    };
    let per_s = |n: f64| {
        if duration_s > 0.0 {
            n / duration_s
        } else {
            0.0
        }
    };

    let input: u64 = ok
        .iter()
        .map(|r| r.server_prompt_tokens.unwrap_or(r.input_tokens))
        .sum();
    let output: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let from_usage = ok
        .iter()
        .filter(|r| r.output_tokens_source == Some(TokenSource::Usage))
        .count() as u64;

    let reasoning = ok
        .iter()
        .any(|r| r.reasoning_tokens.is_some())
        .then(|| ok.iter().filter_map(|r| r.reasoning_tokens).sum::<u64>());

    let tpot = Summary::of(ok.iter().filter_map(|r| r.tpot_ms()).collect());
    let reasoned = ok.iter().any(|r| {
        r.reasoning_tokens.is_some()
            || (r.first_answer_ns.is_some() && r.first_answer_ns != r.token_ns.first().copied())
    });

    let client_lag_ms = if lag.report {
        let mut lags: Vec<f64> = measured.iter().filter_map(|r| r.lag_ms()).collect();
        lags.sort_unstable_by(f64::total_cmp);
        (!lags.is_empty()).then(|| LagSummary {
            p50: percentile(&lags, 50.0),
            p99: percentile(&lags, 99.0),
            max: lags[lags.len() - 1],
        })
    } else {
        None
    };
    let client_fell_behind = match (client_lag_ms, lag.tolerance_ms) {
        (Some(l), Some(tolerance)) => l.p99 > tolerance,
        _ => false,
    };

    StepMetrics {
        ttft_ms: Summary::of(ok.iter().filter_map(|r| r.ttft_ms()).collect()),
        interactivity_tok_s: tpot.filter(|t| t.p50 > 0.0).map(|t| 1000.0 / t.p50),
        tpot_ms: tpot,
        itl_ms: Summary::of(ok.iter().flat_map(|r| r.itls_ms()).collect()),
        e2el_ms: Summary::of(ok.iter().filter_map(|r| r.e2el_ms()).collect()),
        ttfa_ms: if reasoned {
            Summary::of(ok.iter().filter_map(|r| r.ttfa_ms()).collect())
        } else {
            None
        },
        request_throughput: per_s(ok.len() as f64),
        output_token_throughput: per_s(output as f64),
        total_token_throughput: per_s((input + output) as f64),
        goodput: (!slo.is_empty())
            .then(|| per_s(ok.iter().filter(|r| slo.met_by(r)).count() as f64)),
        completed: ok.len() as u64,
        failed: (measured.len() - ok.len()) as u64,
        errors,
        duration_s,
        total_input_tokens: input,
        total_output_tokens: output,
        reasoning_tokens: reasoning,
        answer_tokens: reasoning.map(|r| output.saturating_sub(r)),
        output_tokens_from_usage: from_usage,
        output_tokens_counted: ok.len() as u64 - from_usage,
        warmup_excluded: (records.len() - measured.len()) as u64,
        client_lag_ms,
        client_fell_behind,
        turns: turns::compute(&measured),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RequestError;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_match_numpy() {
        // numpy.percentile([1, 2, 3, 4], q) for q = 0, 25, 50, 90, 99, 100.
        let v = [1.0, 2.0, 3.0, 4.0];
        for (q, expected) in [
            (0.0, 1.0),
            (25.0, 1.75),
            (50.0, 2.5),
            (90.0, 3.7),
            (99.0, 3.97),
            (100.0, 4.0),
        ] {
            assert!(
                close(percentile(&v, q), expected),
                "q={q}: {}",
                percentile(&v, q)
            );
        }
        // numpy.percentile([15, 20, 35, 40, 50], [40, 95]) == [29.0, 48.0]
        let w = [15.0, 20.0, 35.0, 40.0, 50.0];
        assert!(close(percentile(&w, 40.0), 29.0));
        assert!(close(percentile(&w, 95.0), 48.0));
        // One value is every percentile.
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        // numpy.percentile(range(1, 101), 99) == 99.01
        let h: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!(close(percentile(&h, 99.0), 99.01));
        assert!(close(percentile(&h, 95.0), 95.05));
        assert!(close(percentile(&h, 90.0), 90.1));
    }

    #[test]
    fn summary_sorts_and_summarises() {
        let s = Summary::of(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert!(close(s.mean, 2.5));
        assert!(close(s.p50, 2.5));
        assert!(close(s.p90, 3.7));
        assert!(close(s.p95, 3.85));
        assert!(close(s.p99, 3.97));
        assert_eq!(s.max, 4.0);
        assert!(Summary::of(vec![]).is_none());
    }

    const MS: u64 = 1_000_000;

    /// A successful request sent at `sent` ms with token chunks at `tokens` ms.
    fn ok(sent: u64, tokens: &[u64], output: u64) -> RequestRecord {
        RequestRecord {
            scheduled_ns: sent * MS,
            sent_ns: Some(sent * MS),
            token_ns: tokens.iter().map(|t| t * MS).collect(),
            end_ns: tokens.last().map(|t| t * MS),
            input_tokens: 10,
            output_tokens: output,
            output_tokens_source: Some(TokenSource::Counted),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn step_metrics_by_hand() {
        let mut warm = ok(0, &[1, 2], 2);
        warm.warmup = true;
        let a = ok(100, &[110, 120, 130], 3); // ttft 10, e2el 30, tpot 10, itl 10 10
        let mut b = ok(200, &[240, 250, 260, 300], 4); // ttft 40, e2el 100, tpot 20, itl 10 10 40
        b.output_tokens_source = Some(TokenSource::Usage);
        b.server_prompt_tokens = Some(15);
        let single = ok(300, &[320], 1); // ttft 20, e2el 20, no tpot
        let failed = RequestRecord {
            sent_ns: Some(350 * MS),
            end_ns: Some(1100 * MS),
            error: Some(RequestError {
                kind: ErrorKind::Stall,
                message: "no bytes".into(),
            }),
            ..RequestRecord::default()
        };
        let records = [warm, a, b, single, failed];
        let slo = Slo {
            ttft_ms: Some(30.0),
            tpot_ms: Some(15.0),
            e2el_ms: None,
        };
        let m = compute(
            &records,
            &slo,
            LagPolicy {
                report: false,
                tolerance_ms: None,
            },
        );

        let ttft = m.ttft_ms.unwrap();
        assert!(close(ttft.mean, (10.0 + 40.0 + 20.0) / 3.0));
        assert!(close(ttft.p50, 20.0));
        assert!(close(ttft.p90, 20.0 + 0.8 * 20.0), "p90 {}", ttft.p90);
        assert_eq!(ttft.max, 40.0);
        let tpot = m.tpot_ms.unwrap();
        assert!(close(tpot.mean, 15.0));
        assert!(close(tpot.p50, 15.0));
        let itl = m.itl_ms.unwrap();
        // Pooled gaps: [10, 10, 10, 10, 40].
        assert!(close(itl.mean, 16.0));
        assert!(close(itl.p50, 10.0));
        assert!(close(itl.p99, 10.0 + 0.96 * 30.0));
        let e2el = m.e2el_ms.unwrap();
        assert!(close(e2el.p50, 30.0));
        assert_eq!(e2el.max, 100.0);
        assert!(m.ttfa_ms.is_none());

        // Duration: first send 100 ms → last end 1100 ms.
        assert!(close(m.duration_s, 1.0));
        assert_eq!((m.completed, m.failed, m.warmup_excluded), (3, 1, 1));
        assert_eq!(m.errors, BTreeMap::from([(ErrorKind::Stall, 1)]));
        assert!(close(m.request_throughput, 3.0));
        assert_eq!(m.total_output_tokens, 8);
        assert!(close(m.output_token_throughput, 8.0));
        assert_eq!(m.total_input_tokens, 10 + 15 + 10);
        assert!(close(m.total_token_throughput, 43.0));
        // SLO: a meets both; b misses TTFT; single meets (no TPOT needed).
        assert!(close(m.goodput.unwrap(), 2.0));
        assert!(close(m.interactivity_tok_s.unwrap(), 1000.0 / 15.0));
        assert_eq!(
            (m.output_tokens_from_usage, m.output_tokens_counted),
            (1, 2)
        );
        assert!(m.client_lag_ms.is_none());
        assert!(!m.client_fell_behind);
    }

    #[test]
    fn client_lag_in_rate_mode() {
        let mut records: Vec<RequestRecord> =
            (0..100).map(|i| ok(i * 10, &[i * 10 + 5], 1)).collect();
        for (i, r) in records.iter_mut().enumerate() {
            r.scheduled_ns = r.sent_ns.unwrap() - i as u64 * 100_000; // lag i × 0.1 ms
        }
        let policy = LagPolicy {
            report: true,
            tolerance_ms: Some(DEFAULT_LAG_TOLERANCE_MS),
        };
        let m = compute(&records, &Slo::default(), policy);
        let lag = m.client_lag_ms.unwrap();
        assert!(close(lag.p50, 4.95));
        assert!(close(lag.p99, 9.801));
        assert!(close(lag.max, 9.9));
        assert!(!m.client_fell_behind);
        assert!(m.goodput.is_none(), "no SLO, no goodput");

        records[99].scheduled_ns = 0;
        records[98].scheduled_ns = 0;
        let m = compute(&records, &Slo::default(), policy);
        assert!(m.client_fell_behind);
    }

    #[test]
    fn reasoning_shows_time_to_first_answer() {
        let mut r = ok(0, &[10, 20, 30], 3);
        r.first_answer_ns = Some(30 * MS);
        let m = compute(
            &[r],
            &Slo::default(),
            LagPolicy {
                report: false,
                tolerance_ms: None,
            },
        );
        assert!(close(m.ttfa_ms.unwrap().p50, 30.0));
    }

    #[test]
    fn serialises_to_the_result_shape() {
        let m = compute(
            &[ok(0, &[10, 20], 2)],
            &Slo::default(),
            LagPolicy {
                report: false,
                tolerance_ms: None,
            },
        );
        let v = serde_json::to_value(&m).unwrap();
        for key in ["mean", "p50", "p90", "p95", "p99", "max"] {
            assert!(v["ttft_ms"][key].is_number(), "{key}");
        }
        for key in [
            "tpot_ms",
            "itl_ms",
            "e2el_ms",
            "request_throughput",
            "output_token_throughput",
            "total_token_throughput",
            "goodput",
            "completed",
            "failed",
            "errors",
            "duration_s",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let mut failed = ok(0, &[], 0);
        failed.error = Some(RequestError {
            kind: ErrorKind::HttpStatus,
            message: "500".into(),
        });
        let m = compute(
            &[failed],
            &Slo::default(),
            LagPolicy {
                report: false,
                tolerance_ms: None,
            },
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["errors"], serde_json::json!({"http_status": 1}));
        assert!(v["ttft_ms"].is_null());
    }
}
