//! Building blocks for the unit tests of `analysis`, `report` and `export`: step metrics
//! with nothing measured, latency summaries with one value throughout, and the workload
//! facts of a reset shared-prefix step, capacity rows.

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

/// A capacity row of a simulated 1-GPU deployment `server` of model "m" on workload "chat",
/// searched over rate with 7 probes: `capacity` req/s, `per_gpu` output tokens/s there,
/// and `cost` per million tokens (priced at 1 per GPU-hour when given).
pub fn capacity_row(
    server: &str,
    capacity: Option<f64>,
    per_gpu: f64,
    cost: Option<f64>,
) -> super::capacity::Capacity {
    use evalctl_results::search::StopReason;
    let stopped = if capacity.is_some() {
        StopReason::PrecisionReached
    } else {
        StopReason::LowestFails
    };
    super::capacity::Capacity {
        config: server.into(),
        server: server.into(),
        model: "m".into(),
        workload: "chat".into(),
        gpus: 1,
        over: "rate",
        goal: "p90 ttft ≤ 60 ms".into(),
        capacity,
        first_failing: capacity.map(|c| c * 1.04),
        probes: 7,
        runs: 7,
        stopped,
        stopped_because: stopped.describe(),
        output_tok_s: Some(per_gpu),
        output_tok_s_per_gpu: Some(per_gpu),
        price_per_gpu_hour: cost.map(|_| 1.0),
        cost_per_million_tokens: cost,
        simulated: true,
        accuracy: None,
    }
}

/// One deployment's score `value` (± 0.05 over 50 samples) of the shipped arithmetic task.
pub fn deployment_score(config: &str, value: f64) -> super::accuracy::DeploymentScore {
    super::accuracy::DeploymentScore {
        config: config.into(),
        model: "m".into(),
        score: "arith/exact_match,strict-match".into(),
        value,
        stderr: Some(0.05),
        samples: Some(50),
        steps: 1,
        higher_is_better: true,
        simulated: true,
    }
}

/// Report data with nothing in it, for a section's tests to fill in.
pub fn report_data() -> crate::report::ReportData {
    crate::report::ReportData {
        campaign: evalctl_proto::v1::CampaignInfo::default(),
        dropped: Vec::new(),
        series: None,
        units: Vec::new(),
        points: Vec::new(),
        capacities: Vec::new(),
        accuracy: Vec::new(),
        starts: Vec::new(),
        prices: super::cost::Prices::none(),
        generated_at_ms: 0,
    }
}
