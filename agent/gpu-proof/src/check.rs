//! `evalctl-gpu-proof check`: NVML on this host, through the agent's own telemetry code.
//! It lists the GPUs (with MIG mode and MIG instance UUIDs), reads one sample of each to
//! name the fields the driver does not report, then samples them as the agent does during
//! a step and compares the energy counter with the integral of the power readings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use evalctl_results::telemetry::GpuSummary;
use evalctl_telemetry::aggregate::gpu_summary;
use evalctl_telemetry::{GpuRecord, GpuSource, NVML_LIBRARY, NvmlGpus, Sampler};
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

/// The NVML field whose readings are integrated against the energy counter. On Hopper and
/// later it is a one-second average, not an instantaneous value: an integral of it lags a
/// load change by up to a second at each end of the interval.
pub const INTEGRATED_FIELD: &str =
    "nvmlDeviceGetPowerUsage (mW; a 1 s average on Hopper and later)";

/// The fields of a GPU sample, as the agent names them (docs/telemetry.md).
const SAMPLE_FIELDS: [&str; 15] = [
    "sm_util_pct",
    "mem_util_pct",
    "mem_used_mib",
    "power_w",
    "energy_mj",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "throttle",
    "pcie_rx_kb_s",
    "pcie_tx_kb_s",
    "xid_errors",
    "last_xid",
    "ecc_corrected",
    "ecc_uncorrected",
];

/// One GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuFacts {
    /// NVML index (PCI bus order).
    pub index: u32,
    /// The driver's name.
    pub name: String,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// The type a matrix asks for (e.g. `H100-80GB`).
    pub gpu_type: String,
    /// Memory, GB.
    pub memory_gb: f64,
    /// MIG mode is on (`None`: the GPU does not support MIG).
    pub mig_enabled: Option<bool>,
    /// UUIDs of its MIG instances (`MIG-…`), when MIG is on.
    pub mig_devices: Vec<String>,
    /// Sample fields the driver did not report for this GPU (e.g. `sm_util_pct` under
    /// MIG, `ecc_*` with ECC off).
    pub fields_missing: Vec<String>,
}

/// The sampling run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Seconds sampled.
    pub seconds: f64,
    /// The rate asked for, Hz.
    pub rate_hz_asked: f64,
    /// Sampling rounds completed (each reads every GPU).
    pub rounds: u64,
    /// Rounds per second achieved.
    pub samples_per_s: f64,
    /// The field integrated for [`GpuSummary::energy_integrated_j`].
    pub integrated_field: String,
    /// Per GPU: energy from the counter and from the integrated power, power, memory,
    /// throttle reasons, as a step's telemetry summary has them.
    pub gpus: Vec<GpuSummary>,
}

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Driver version.
    pub driver_version: Option<String>,
    /// CUDA version the driver supports.
    pub cuda_version: Option<String>,
    /// The GPUs.
    pub gpus: Vec<GpuFacts>,
    /// The sampling run.
    pub sampling: Sampling,
}

/// NVML could not be used, or lists no GPU: the reason in words.
#[derive(Debug)]
pub struct NoGpu(pub String);

/// Runs the check: inventory, one probe sample, then `seconds` of sampling at `rate_hz`.
pub fn run(seconds: f64, rate_hz: f64) -> Result<CheckReport, NoGpu> {
    let source =
        NvmlGpus::init(&BTreeMap::new()).map_err(|e| NoGpu(evalctl_common::error_chain(&e)))?;
    let inventory = source.inventory();
    let mig = mig_facts();
    let gpus: Vec<GpuFacts> = inventory
        .gpus
        .iter()
        .map(|g| {
            let (mig_enabled, mig_devices) = mig.get(&g.index).cloned().unwrap_or_default();
            GpuFacts {
                index: g.index,
                name: g.name.clone(),
                uuid: g.uuid.clone(),
                gpu_type: g.gpu_type.clone(),
                memory_gb: g.memory_gb,
                mig_enabled,
                mig_devices,
                fields_missing: missing_fields(&source, g.index),
            }
        })
        .collect();
    let indices: Vec<u32> = gpus.iter().map(|g| g.index).collect();
    let source: Arc<dyn GpuSource> = Arc::new(source);
    let handle = Sampler::start(source, &indices, rate_hz)
        .map_err(|e| NoGpu(format!("failed to start the sampler thread: {e}")))?;
    std::thread::sleep(Duration::from_secs_f64(seconds.max(0.1)));
    let telemetry = handle.finish();
    let rounds = telemetry.host.len() as u64;
    let sampled_s = telemetry.duration_ms as f64 / 1000.0;
    let summaries = indices
        .iter()
        .map(|&i| {
            let records: Vec<&GpuRecord> = telemetry.gpus.iter().filter(|r| r.gpu == i).collect();
            gpu_summary(i, &records)
        })
        .collect();
    Ok(CheckReport {
        driver_version: inventory.driver_version,
        cuda_version: inventory.cuda_version,
        gpus,
        sampling: Sampling {
            seconds: sampled_s,
            rate_hz_asked: rate_hz,
            rounds,
            samples_per_s: if sampled_s > 0.0 {
                rounds.saturating_sub(1) as f64 / sampled_s
            } else {
                0.0
            },
            integrated_field: INTEGRATED_FIELD.to_owned(),
            gpus: summaries,
        },
    })
}

/// The sample fields GPU `index` does not report.
fn missing_fields(source: &NvmlGpus, index: u32) -> Vec<String> {
    let sample = serde_json::to_value(source.sample(index)).unwrap_or_default();
    SAMPLE_FIELDS
        .iter()
        .filter(|f| sample.get(**f).is_none())
        .map(|f| (*f).to_owned())
        .collect()
}

/// Per NVML index: MIG mode (`None` when unsupported) and the MIG instances' UUIDs. A
/// second NVML handle (NVML counts initialisations); the agent's telemetry does not read
/// MIG state.
fn mig_facts() -> BTreeMap<u32, (Option<bool>, Vec<String>)> {
    let mut facts = BTreeMap::new();
    let Ok(nvml) = Nvml::builder()
        .lib_path(std::ffi::OsStr::new(NVML_LIBRARY))
        .init()
    else {
        return facts;
    };
    let count = nvml.device_count().unwrap_or(0);
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let enabled = device.mig_mode().ok().map(|m| m.current == 1);
        let mut uuids = Vec::new();
        if enabled == Some(true) {
            for slot in 0..device.mig_device_count().unwrap_or(0) {
                if let Ok(uuid) = device.mig_device_by_index(slot).and_then(|m| m.uuid()) {
                    uuids.push(uuid);
                }
            }
        }
        facts.insert(index, (enabled, uuids));
    }
    facts
}
