//! Building blocks for the unit tests of `analysis`, `report` and `export`: step metrics
//! with nothing measured, and latency summaries with one value throughout.

use evalctl_results::Summary;
use evalctl_results::metrics::{LagPolicy, StepMetrics, compute};

/// The metrics of a step that measured nothing; tests set the fields they need.
pub fn no_metrics() -> StepMetrics {
    compute(
        &[],
        &Default::default(),
        LagPolicy {
            report: false,
            tolerance_ms: None,
        },
    )
}

/// A latency summary whose mean, percentiles and maximum are all `v`.
pub fn flat(v: f64) -> Summary {
    Summary {
        mean: v,
        p50: v,
        p90: v,
        p95: v,
        p99: v,
        max: v,
    }
}
