//! Building blocks for the unit tests of `analysis`, `report` and `export`: step metrics
//! with nothing measured, latency summaries with one value throughout, and the workload
//! facts of a reset shared-prefix step.

use evalctl_results::metrics::{LagPolicy, StepMetrics, compute};
use evalctl_results::{PrefixCacheFacts, PrefixCachePolicy, Summary, WorkloadFacts};

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

/// The workload facts of a shared-prefix step whose cache was reset by vLLM's endpoint:
/// expected hit rate 0.7619, the server's 0.7593.
pub fn reset_prefix_cache() -> WorkloadFacts {
    WorkloadFacts {
        dataset: "shared_prefix".into(),
        lengths: None,
        prefix_cache: Some(PrefixCacheFacts {
            policy: PrefixCachePolicy::Reset,
            reset_by: Some("/reset_prefix_cache".into()),
            reset_refused: None,
            salted: false,
            expected_hit_rate: Some(0.7619),
            server_hit_rate: Some(0.7593),
            server_hit_rate_from: None,
        }),
    }
}
