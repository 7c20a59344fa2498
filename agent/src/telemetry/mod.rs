//! GPU telemetry: where the agent learns which GPUs its host has.
//!
//! A [`GpuSource`] answers the inventory the agent registers with. Two sources exist:
//! - [`NoGpus`]: what a host without a usable NVIDIA driver reports (no GPUs; the agent still
//!   runs CPU units such as llama.cpp or the simulated server);
//! - [`SimulatedGpus`]: GPUs declared by `--gpus` (e.g. `H100-80GB:8`) for tests and local
//!   runs on machines without GPUs. It is a fake, named as such, and every GPU it reports
//!   carries a `SIMULATED-` UUID so a result can never pass for one measured on hardware.
//!
//! Sampling (power, energy, utilisation) builds on the same interface.

mod simulated;

pub use simulated::{SimulatedGpus, SimulatedGpusError};

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

/// A source of GPU facts.
pub trait GpuSource: Send + Sync {
    /// The host's GPUs.
    fn inventory(&self) -> Inventory;
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
}
