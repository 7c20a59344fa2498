//! Telemetry figures as a step document stores them: per GPU, the host, the server's own
//! metrics, and the GPUs a result ran on. The telemetry crate computes them from samples
//! (its `aggregate` module says how); readers of results use them from here.
//!
//! Every figure is absent when what it needed was absent: a GPU without an energy counter and
//! without power readings has no energy, never 0 J.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One GPU of the host, as registered with the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// Index as CUDA numbers it (`CUDA_VISIBLE_DEVICES`).
    pub index: u32,
    /// Driver UUID (`GPU-…`), or `SIMULATED-…` for a simulated GPU.
    pub uuid: String,
    /// Name as the driver reports it, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Normalised type units ask for, e.g. "H100-80GB".
    pub gpu_type: String,
    /// Memory in GB.
    pub memory_gb: f64,
}

/// How a GPU's energy was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyMethod {
    /// Delta of the energy counter (wraps unwrapped).
    Counter,
    /// The counter was reset during the step: segments summed, the reset bridged by power.
    CounterSegments,
    /// Trapezoid integral of the power samples (no usable counter).
    PowerIntegration,
    /// Step level only: GPUs used different methods.
    Mixed,
}

/// A GPU's figures over a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSummary {
    /// CUDA index.
    pub gpu: u32,
    /// Samples taken.
    pub samples: u64,
    /// Energy used during the step, J.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_j: Option<f64>,
    /// How `energy_j` was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_method: Option<EnergyMethod>,
    /// Energy by the trapezoid integral of power, J (the cross-check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_integrated_j: Option<f64>,
    /// Energy counter resets seen.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub counter_resets: u32,
    /// Time-weighted mean power, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_power_w: Option<f64>,
    /// Highest power sample, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_power_w: Option<f64>,
    /// Mean SM utilisation, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_sm_util_pct: Option<f64>,
    /// Mean memory utilisation, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_mem_util_pct: Option<f64>,
    /// Highest memory in use, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mem_used_mib: Option<u64>,
    /// Highest temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature_c: Option<u32>,
    /// Lowest SM clock, MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sm_clock_mhz: Option<u32>,
    /// Throttle reasons seen in any sample, `gpu_idle` left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_reasons_seen: Option<Vec<String>>,
    /// A reason that slows the GPU down (power cap, thermal, hardware) was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<bool>,
    /// Critical XID errors during the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid_errors: Option<u64>,
    /// Corrected ECC errors during the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_corrected: Option<u64>,
    /// Uncorrected ECC errors during the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrected: Option<u64>,
    /// Longest time between two samples with power or energy, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_ms: Option<u64>,
    /// False when counter and integrated power disagree or samples are too far apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_valid: Option<bool>,
}

/// The host's figures over a step (sysinfo).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    /// Mean CPU use over all cores, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_cpu_pct: Option<f64>,
    /// Highest CPU use, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_pct: Option<f64>,
    /// Highest memory in use, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mem_used_mib: Option<u64>,
    /// Memory installed, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_mib: Option<u64>,
    /// Highest one-minute load average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_load_1m: Option<f64>,
}

/// A step's telemetry figures, stored in its `StepDocument` (`telemetry`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySummary {
    /// GPU source: "nvml", "simulated" (synthetic figures: no real hardware), "none".
    pub source: String,
    /// Sampling rate, Hz.
    pub rate_hz: f64,
    /// Sampled time, s.
    pub duration_s: f64,
    /// GPUs sampled.
    pub gpu_count: u32,
    /// Sampling rounds.
    pub rounds: u64,
    /// Energy of all the step's GPUs, J (absent unless every GPU has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_j: Option<f64>,
    /// How `energy_j` was obtained (`mixed` when the GPUs differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_method: Option<EnergyMethod>,
    /// Mean power of all the step's GPUs together, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_power_w: Option<f64>,
    /// Highest power of all the step's GPUs together in one round, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_power_w: Option<f64>,
    /// Mean SM utilisation over GPUs and samples, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_sm_util_pct: Option<f64>,
    /// Highest memory in use on one GPU, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mem_used_mib: Option<u64>,
    /// Highest temperature of any GPU, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature_c: Option<u32>,
    /// Throttle reasons any GPU showed, `gpu_idle` left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_reasons_seen: Option<Vec<String>>,
    /// Any GPU was slowed down (power cap, thermal, hardware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<bool>,
    /// False when any GPU's power data failed the cross-check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_valid: Option<bool>,
    /// `energy_j` / output tokens, J.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joules_per_output_token: Option<f64>,
    /// Output tokens/s per kW of mean GPU power.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tok_s_per_kw: Option<f64>,
    /// Output tokens/s per GPU of the unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tok_s_per_gpu: Option<f64>,
    /// Per GPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuSummary>,
    /// The host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostSummary>,
    /// The server's own metrics, when its framework exposes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerMetricsSummary>,
    /// The raw blob keeps one round in this many (1 = all).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub raw_downsample: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn one() -> u32 {
    1
}
fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Whether a kept series is a gauge (summarised by mean/max) or a counter (by its delta).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only grows (until the server restarts).
    Counter,
}

/// One series over a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    /// Gauge or counter.
    pub kind: SeriesKind,
    /// Scrapes that had the series.
    pub scrapes: u32,
    /// Gauges: mean of the scraped values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Gauges: highest scraped value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Counters: growth from the first to the last scrape (a decrease, i.e. a server
    /// restart, counts the new value as growth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
}

/// The server's metrics over a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerMetricsSummary {
    /// The URL scraped.
    pub url: String,
    /// Scrapes that answered.
    pub scrapes: u32,
    /// Scrapes that failed (no answer, not exposition text).
    #[serde(default)]
    pub failed_scrapes: u32,
    /// The kept series, by name (absent: the server did not expose it).
    pub series: BTreeMap<String, SeriesSummary>,
}

/// The counter pairs, `(hits, queries)` in tokens, a step's prefix-cache hit rate is
/// computed from, by engine.
const PREFIX_CACHE_COUNTERS: &[(&str, &str)] = &[
    (
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
    ),
    ("sglang:cached_tokens_total", "sglang:prompt_tokens_total"),
    (
        "sim:prefix_cache_hits_total",
        "sim:prefix_cache_queries_total",
    ),
];

impl ServerMetricsSummary {
    /// The prefix cache's hit rate over the step, in tokens, from the deltas of the first
    /// engine's counter pair present (vLLM, SGLang, the simulator), with the pair's names as
    /// `hits/queries`; `None` when the server exports none or the step queried nothing.
    pub fn prefix_cache_hit_rate(&self) -> Option<(f64, String)> {
        PREFIX_CACHE_COUNTERS.iter().find_map(|(hits, queries)| {
            let delta = |name: &str| self.series.get(name).and_then(|s| s.delta);
            let (h, q) = (delta(hits)?, delta(queries)?);
            (q > 0.0).then(|| ((h / q).clamp(0.0, 1.0), format!("{hits}/{queries}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(delta: f64) -> SeriesSummary {
        SeriesSummary {
            kind: SeriesKind::Counter,
            scrapes: 2,
            mean: None,
            max: None,
            delta: Some(delta),
        }
    }

    #[test]
    fn the_hit_rate_is_the_ratio_of_the_step_deltas_of_the_engine_counters() {
        let mut server = ServerMetricsSummary::default();
        assert_eq!(server.prefix_cache_hit_rate(), None, "no counters");
        server
            .series
            .insert("sglang:cached_tokens_total".into(), counter(300.0));
        server
            .series
            .insert("sglang:prompt_tokens_total".into(), counter(1200.0));
        assert_eq!(
            server.prefix_cache_hit_rate(),
            Some((
                0.25,
                "sglang:cached_tokens_total/sglang:prompt_tokens_total".into()
            ))
        );
        let mut idle = ServerMetricsSummary::default();
        idle.series
            .insert("vllm:prefix_cache_queries_total".into(), counter(0.0));
        idle.series
            .insert("vllm:prefix_cache_hits_total".into(), counter(0.0));
        // The step queried nothing: no rate, not 0/0.
        assert_eq!(idle.prefix_cache_hit_rate(), None);
    }
}
