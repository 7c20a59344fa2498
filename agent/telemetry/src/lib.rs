//! GPU telemetry: which GPUs the host has, what they do during a step, and what a step cost.
//!
//! A [`GpuSource`] answers the inventory the agent registers with and per-GPU samples. Three
//! sources exist:
//! - [`NvmlGpus`]: the real one, through NVML (`libnvidia-ml.so.1`, loaded at run time, so
//!   the agent builds and runs on hosts without an NVIDIA driver);
//! - [`NoGpus`]: what a host without a usable NVIDIA driver reports (no GPUs; the agent still
//!   runs CPU units such as llama.cpp or the simulated server);
//! - [`SimulatedGpus`]: GPUs declared by `--gpus` (e.g. `H100-80GB:8`) for tests and local
//!   runs on machines without GPUs. It is a fake, named as such: every GPU it reports
//!   carries a `SIMULATED-` UUID and its samples are synthetic, so a result can never pass
//!   for one measured on hardware.
//!
//! [`detect`] picks one. During a step, [`Sampler`] samples the leased GPUs and the host on a
//! thread of its own, [`ServerScraper`] scrapes the server's Prometheus endpoint, and
//! [`aggregate`] turns what they collected into the step's [`TelemetrySummary`].
//! docs/telemetry.md lists every field, its unit and its source.

pub mod aggregate;
mod names;
mod nvml;
pub mod prometheus;
mod recorder;
mod sampler;
mod server;
mod simulated;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use aggregate::{Throughput, summarise};
/// The result contract's telemetry types, which this crate computes.
pub use evalctl_results::telemetry::{
    EnergyMethod, GpuDevice, GpuSummary, HostSummary, SeriesKind, SeriesSummary,
    ServerMetricsSummary, TelemetrySummary,
};
pub use names::normalise_gpu_name;
pub use nvml::{NVML_LIBRARY, NvmlError, NvmlGpus};
pub use recorder::{MetricsEndpoint, RecordedTelemetry, StepRecorder};
pub use sampler::{
    DEFAULT_RATE_HZ, GpuRecord, HostRecord, HostSample, Sampler, SamplerHandle, StepTelemetry,
    TelemetryLine, decode_telemetry,
};
pub use server::{ServerScrape, ServerScraper, ServerScraperHandle};
pub use simulated::{SimulatedGpus, SimulatedGpusError};

use serde::{Deserialize, Serialize};
use tracing::info;

/// What a source found on the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The GPUs, by index.
    pub gpus: Vec<GpuDevice>,
    /// Driver version, when known.
    pub driver_version: Option<String>,
    /// CUDA driver API version, when known.
    pub cuda_version: Option<String>,
    /// Which source answered: "none", "simulated", "nvml".
    pub source: String,
}

/// One reading of one GPU. Every field is optional: absent means the GPU (or the source)
/// does not report it, never zero. Units are in the names; docs/telemetry.md gives the NVML
/// call behind each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// Percent of the last sample period a kernel ran (NVML "GPU utilisation").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_util_pct: Option<u32>,
    /// Percent of the last sample period device memory was read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_util_pct: Option<u32>,
    /// Device memory in use, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_used_mib: Option<u64>,
    /// Board power draw, W.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    /// Energy consumed since the driver last loaded, mJ (a counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    /// GPU core temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    /// SM clock, MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_clock_mhz: Option<u32>,
    /// Why clocks are held below their maximum right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleReasons>,
    /// PCIe receive throughput (host → GPU), KB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_rx_kb_s: Option<u32>,
    /// PCIe transmit throughput (GPU → host), KB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_tx_kb_s: Option<u32>,
    /// Critical XID errors seen on this GPU since the agent started (a counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid_errors: Option<u64>,
    /// The last critical XID error code seen, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_xid: Option<u64>,
    /// Corrected (single-bit) ECC errors since the driver loaded (a counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_corrected: Option<u64>,
    /// Uncorrected (double-bit) ECC errors since the driver loaded (a counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrected: Option<u64>,
}

/// NVML's clock throttle reasons: the bitmask and the names of its set bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleReasons {
    /// `nvmlClocksThrottleReason*` bits.
    pub mask: u64,
    /// Names of the set bits ([`THROTTLE_REASONS`]), e.g. `["sw_power_cap"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// NVML's throttle reason bits and their names, and whether each slows the GPU down (idle
/// and clock settings do not count as throttling).
pub const THROTTLE_REASONS: &[(u64, &str, bool)] = &[
    (0x1, "gpu_idle", false),
    (0x2, "applications_clocks_setting", false),
    (0x4, "sw_power_cap", true),
    (0x8, "hw_slowdown", true),
    (0x10, "sync_boost", false),
    (0x20, "sw_thermal_slowdown", true),
    (0x40, "hw_thermal_slowdown", true),
    (0x80, "hw_power_brake_slowdown", true),
    (0x100, "display_clock_setting", false),
];

impl ThrottleReasons {
    /// The reasons of `mask`, named; unknown bits are named `bit_0x…`.
    pub fn from_mask(mask: u64) -> ThrottleReasons {
        let mut names = Vec::new();
        let mut known = 0;
        for (bit, name, _) in THROTTLE_REASONS {
            known |= bit;
            if mask & bit != 0 {
                names.push((*name).to_owned());
            }
        }
        let unknown = mask & !known;
        for shift in 0..64 {
            if unknown & (1 << shift) != 0 {
                names.push(format!("bit_{:#x}", 1u64 << shift));
            }
        }
        ThrottleReasons { mask, names }
    }

    /// Any bit that slows the GPU down (power cap, thermal, hardware slowdown) is set.
    pub fn slows_down(&self) -> bool {
        THROTTLE_REASONS
            .iter()
            .any(|(bit, _, slows)| *slows && self.mask & bit != 0)
    }
}

/// A source of GPU facts.
pub trait GpuSource: Send + Sync {
    /// The host's GPUs.
    fn inventory(&self) -> Inventory;

    /// One reading of the GPU with CUDA index `index`; fields the GPU does not report (or
    /// an index the source does not know) are absent.
    fn sample(&self, index: u32) -> GpuSample;
}

/// The source of a host without GPUs (or without a usable driver): reports none.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGpus;

impl GpuSource for NoGpus {
    fn inventory(&self) -> Inventory {
        Inventory {
            source: "none".to_owned(),
            ..Inventory::default()
        }
    }

    fn sample(&self, _index: u32) -> GpuSample {
        GpuSample::default()
    }
}

/// A `--gpus` spec that does not parse (the only error [`detect`] returns: a host without
/// NVML is not an error).
pub type DetectError = SimulatedGpusError;

/// The host's GPU source: the simulated GPUs of `simulated_spec` when given, else NVML when
/// it initialises (types normalised with `aliases`), else [`NoGpus`], saying once, at info
/// level, that no GPU telemetry is available and why.
pub fn detect(
    simulated_spec: Option<&str>,
    aliases: &BTreeMap<String, String>,
) -> Result<Arc<dyn GpuSource>, DetectError> {
    if let Some(spec) = simulated_spec {
        return Ok(Arc::new(SimulatedGpus::parse(spec)?));
    }
    match NvmlGpus::init(aliases) {
        Ok(gpus) => Ok(Arc::new(gpus)),
        Err(err) => {
            info!(
                reason = %evalctl_common::error_chain(&err),
                "no GPU telemetry available: NVML did not initialise; the agent runs with zero GPUs"
            );
            Ok(Arc::new(NoGpus))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_masks_are_named_and_classified() {
        let idle = ThrottleReasons::from_mask(0x1);
        assert_eq!(idle.names, ["gpu_idle"]);
        assert!(!idle.slows_down());
        let capped = ThrottleReasons::from_mask(0x4 | 0x40 | 0x1000);
        assert_eq!(
            capped.names,
            ["sw_power_cap", "hw_thermal_slowdown", "bit_0x1000"]
        );
        assert!(capped.slows_down());
        assert!(ThrottleReasons::from_mask(0).names.is_empty());
    }

    #[test]
    fn absent_sample_fields_are_absent_in_json_not_zero() {
        let sample = GpuSample {
            power_w: Some(0.0),
            ..GpuSample::default()
        };
        let json = serde_json::to_string(&sample).unwrap();
        assert_eq!(json, r#"{"power_w":0.0}"#);
        let back: GpuSample = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample);
        assert_eq!(back.energy_mj, None);
    }

    #[test]
    fn a_simulated_spec_wins_and_is_labelled() {
        let source = detect(Some("L4-24GB:2"), &BTreeMap::new()).unwrap();
        let inventory = source.inventory();
        assert_eq!(inventory.source, "simulated");
        assert_eq!(inventory.gpus.len(), 2);
        assert!(detect(Some("L4:x"), &BTreeMap::new()).is_err());
    }
}
