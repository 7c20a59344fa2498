//! The step figures that comparisons and SLO checks reason about, by name, with their
//! unit and which direction is better.

use std::fmt;
use std::str::FromStr;

use crate::{StepMetrics, Summary};

/// A comparable step figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Output tokens/s.
    OutputThroughput,
    /// Successful requests/s.
    RequestThroughput,
    /// Requests/s meeting every SLO.
    Goodput,
    /// A latency statistic.
    Latency(Latency, Stat),
    /// GPU energy per output token, J.
    JoulesPerToken,
}

/// A latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Latency {
    /// Time to first token.
    Ttft,
    /// Time per output token.
    Tpot,
    /// Inter-token latency.
    Itl,
    /// End-to-end latency.
    E2el,
}

/// A statistic of a latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stat {
    /// Mean.
    Mean,
    /// Median.
    P50,
    /// 90th percentile.
    P90,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
}

impl Latency {
    const ALL: [Latency; 4] = [Latency::Ttft, Latency::Tpot, Latency::Itl, Latency::E2el];

    fn name(self) -> &'static str {
        match self {
            Latency::Ttft => "ttft",
            Latency::Tpot => "tpot",
            Latency::Itl => "itl",
            Latency::E2el => "e2el",
        }
    }
}

impl Stat {
    const ALL: [Stat; 5] = [Stat::Mean, Stat::P50, Stat::P90, Stat::P95, Stat::P99];

    fn name(self) -> &'static str {
        match self {
            Stat::Mean => "mean",
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
        }
    }

    fn of(self, s: &Summary) -> f64 {
        match self {
            Stat::Mean => s.mean,
            Stat::P50 => s.p50,
            Stat::P90 => s.p90,
            Stat::P95 => s.p95,
            Stat::P99 => s.p99,
        }
    }
}

impl Metric {
    /// What `compare` checks by default: throughput, TTFT/TPOT/E2EL at p50/p90/p99,
    /// goodput and J/token (the last two where present).
    pub fn compare_defaults() -> Vec<Metric> {
        let mut metrics = vec![Metric::OutputThroughput, Metric::RequestThroughput];
        for latency in [Latency::Ttft, Latency::Tpot, Latency::E2el] {
            for stat in [Stat::P50, Stat::P90, Stat::P99] {
                metrics.push(Metric::Latency(latency, stat));
            }
        }
        metrics.extend([Metric::Goodput, Metric::JoulesPerToken]);
        metrics
    }

    /// Higher values are better (throughputs); lower for latencies and energy.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::OutputThroughput | Metric::RequestThroughput | Metric::Goodput
        )
    }

    /// Unit of the values, for display.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::OutputThroughput => "tok/s",
            Metric::RequestThroughput | Metric::Goodput => "req/s",
            Metric::Latency(..) => "ms",
            Metric::JoulesPerToken => "J/tok",
        }
    }

    /// Requests a step must have completed for this figure to be compared: a tail
    /// percentile of a few requests is their slowest one or two, which move from run to
    /// run of the same server by more than any threshold (p99 needs 100, p95 20, p90 10).
    pub fn min_requests(self) -> u64 {
        match self {
            Metric::Latency(_, Stat::P99) => 100,
            Metric::Latency(_, Stat::P95) => 20,
            Metric::Latency(_, Stat::P90) => 10,
            _ => 1,
        }
    }

    /// The value of a step with load metrics `m` and GPU energy per output token
    /// `joules_per_output_token`; `None` when the step has no such figure.
    pub fn value(self, m: &StepMetrics, joules_per_output_token: Option<f64>) -> Option<f64> {
        match self {
            Metric::OutputThroughput => Some(m.output_token_throughput),
            Metric::RequestThroughput => Some(m.request_throughput),
            Metric::Goodput => m.goodput,
            Metric::Latency(latency, stat) => {
                let summary = match latency {
                    Latency::Ttft => m.ttft_ms,
                    Latency::Tpot => m.tpot_ms,
                    Latency::Itl => m.itl_ms,
                    Latency::E2el => m.e2el_ms,
                };
                summary.map(|s| stat.of(&s))
            }
            Metric::JoulesPerToken => joules_per_output_token,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::OutputThroughput => f.write_str("output_tok_s"),
            Metric::RequestThroughput => f.write_str("request_rps"),
            Metric::Goodput => f.write_str("goodput_rps"),
            Metric::Latency(l, s) => write!(f, "{}_{}", l.name(), s.name()),
            Metric::JoulesPerToken => f.write_str("j_per_token"),
        }
    }
}

/// A metric name that is not one of [`Metric`]'s.
#[derive(Debug, thiserror::Error)]
#[error("unknown metric `{0}` (expected e.g. ttft_p90, tpot_p50, e2el_p99, itl_mean)")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Metric, UnknownMetric> {
        let name = s.trim().to_ascii_lowercase();
        let simple = [
            Metric::OutputThroughput,
            Metric::RequestThroughput,
            Metric::Goodput,
            Metric::JoulesPerToken,
        ];
        if let Some(m) = simple.into_iter().find(|m| m.to_string() == name) {
            return Ok(m);
        }
        for latency in Latency::ALL {
            for stat in Stat::ALL {
                let m = Metric::Latency(latency, stat);
                if m.to_string() == name {
                    return Ok(m);
                }
            }
        }
        Err(UnknownMetric(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let mut all = Metric::compare_defaults();
        all.push(Metric::Latency(Latency::Itl, Stat::Mean));
        for m in all {
            assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
        }
        assert!("ttft_p42".parse::<Metric>().is_err());
        assert_eq!(
            "TTFT_P90".parse::<Metric>().unwrap(),
            Metric::Latency(Latency::Ttft, Stat::P90)
        );
    }
}
