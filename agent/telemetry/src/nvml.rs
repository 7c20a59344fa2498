//! The real GPU source: NVML through nvml-wrapper, which loads `libnvidia-ml.so.1` at run
//! time. A host without the library (or without GPUs) gets an [`NvmlError`] from
//! [`NvmlGpus::init`], never a build or link failure.
//!
//! NVML is initialised once per process and kept for its lifetime (devices and XID event
//! sets borrow it), so repeated [`NvmlGpus::init`] calls share one handle.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::error::NvmlError as RawError;
use nvml_wrapper::{Device, EventSet, Nvml, bitmasks::event::EventTypes, enums::event::XidError};

use super::names::normalise_gpu_name;
use super::{GpuDevice, GpuSample, GpuSource, Inventory, ThrottleReasons};

/// The library name NVML is loaded by (the unversioned `libnvidia-ml.so` is gone from
/// recent drivers' runtime packages).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// NVML could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    /// The library is missing or NVML did not initialise (no driver loaded, no permission).
    #[error("failed to initialise NVML from `{library}`")]
    Init {
        /// The library path or name.
        library: String,
        /// The cause.
        #[source]
        source: RawError,
    },
    /// NVML answered but could not list the GPUs.
    #[error("failed to count the GPUs through NVML")]
    Count {
        /// The cause.
        #[source]
        source: RawError,
    },
    /// NVML works but the host has no GPU.
    #[error("NVML initialised but reports no GPU")]
    NoGpu,
    /// A GPU NVML listed could not be opened or described.
    #[error("failed to read GPU {index} through NVML")]
    Device {
        /// NVML index.
        index: u32,
        /// The cause.
        #[source]
        source: RawError,
    },
}

/// The process's NVML handle, once it initialised.
static NVML: OnceLock<Nvml> = OnceLock::new();

fn nvml(library: Option<&Path>) -> Result<&'static Nvml, NvmlError> {
    if let Some(nvml) = NVML.get() {
        return Ok(nvml);
    }
    let name = library.map_or(OsStr::new(NVML_LIBRARY), Path::as_os_str);
    let nvml = Nvml::builder()
        .lib_path(name)
        .init()
        .map_err(|source| NvmlError::Init {
            library: name.to_string_lossy().into_owned(),
            source,
        })?;
    // A concurrent init may have won: its handle is kept, this one dropped (NVML counts
    // initialisations, so dropping one does not shut the other down).
    Ok(NVML.get_or_init(|| nvml))
}

/// One GPU as NVML opened it.
struct Gpu {
    /// CUDA index (NVML orders devices by PCI bus id, as `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    index: u32,
    device: Device<'static>,
    /// Critical XID events of this GPU, when it supports them.
    xid: Option<Mutex<XidState>>,
}

struct XidState {
    events: EventSet<'static>,
    count: u64,
    last: Option<u64>,
}

/// The host's NVIDIA GPUs, read through NVML.
pub struct NvmlGpus {
    inventory: Inventory,
    gpus: Vec<Gpu>,
}

impl std::fmt::Debug for NvmlGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlGpus")
            .field("inventory", &self.inventory)
            .finish_non_exhaustive()
    }
}

impl NvmlGpus {
    /// Loads NVML from [`NVML_LIBRARY`] and reads the inventory; types are normalised with
    /// `aliases` (driver name → type).
    pub fn init(aliases: &BTreeMap<String, String>) -> Result<NvmlGpus, NvmlError> {
        NvmlGpus::init_from(None, aliases)
    }

    /// [`NvmlGpus::init`] with the library at `library` (e.g. a driver installed outside
    /// the loader's path).
    pub fn init_from(
        library: Option<&Path>,
        aliases: &BTreeMap<String, String>,
    ) -> Result<NvmlGpus, NvmlError> {
        let nvml = nvml(library)?;
        let count = nvml
            .device_count()
            .map_err(|source| NvmlError::Count { source })?;
        if count == 0 {
            return Err(NvmlError::NoGpu);
        }
        let mut gpus = Vec::new();
        let mut devices = Vec::new();
        for index in 0..count {
            let device_error = |source| NvmlError::Device { index, source };
            let device = nvml.device_by_index(index).map_err(device_error)?;
            let name = device.name().map_err(device_error)?;
            let uuid = device.uuid().map_err(device_error)?;
            let memory = device.memory_info().map_err(device_error)?;
            let memory_mib = memory.total / (1024 * 1024);
            devices.push(GpuDevice {
                index,
                uuid,
                gpu_type: normalise_gpu_name(&name, memory_mib, aliases),
                name,
                memory_gb: (memory.total as f64 / 1e9 * 10.0).round() / 10.0,
            });
            let xid = xid_events(nvml, &device).map(|events| {
                Mutex::new(XidState {
                    events,
                    count: 0,
                    last: None,
                })
            });
            gpus.push(Gpu { index, device, xid });
        }
        let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        Ok(NvmlGpus {
            inventory: Inventory {
                gpus: devices,
                driver_version: nvml.sys_driver_version().ok(),
                cuda_version,
                source: "nvml".to_owned(),
            },
            gpus,
        })
    }
}

/// An event set receiving `device`'s critical XID errors; `None` when it does not support
/// them (e.g. not Linux, or consumer GPUs).
fn xid_events(nvml: &'static Nvml, device: &Device<'static>) -> Option<EventSet<'static>> {
    let supported = device.supported_event_types().ok()?;
    if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
        return None;
    }
    let set = nvml.create_event_set().ok()?;
    device
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .ok()
}

impl GpuSource for NvmlGpus {
    fn inventory(&self) -> Inventory {
        self.inventory.clone()
    }

    fn sample(&self, index: u32) -> GpuSample {
        let Some(gpu) = self.gpus.iter().find(|g| g.index == index) else {
            return GpuSample::default();
        };
        let d = &gpu.device;
        let utilisation = d.utilization_rates().ok();
        let (xid_errors, last_xid) = gpu.xid.as_ref().map_or((None, None), |xid| {
            let mut state = xid.lock().unwrap_or_else(|e| e.into_inner());
            // Drain without waiting: an empty set answers `Timeout` at once.
            while let Ok(event) = state.events.wait(0) {
                if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    state.count += 1;
                    if let Some(XidError::Value(code)) = event.event_data {
                        state.last = Some(code);
                    }
                }
            }
            (Some(state.count), state.last)
        });
        GpuSample {
            sm_util_pct: utilisation.as_ref().map(|u| u.gpu),
            mem_util_pct: utilisation.as_ref().map(|u| u.memory),
            mem_used_mib: d.memory_info().ok().map(|m| m.used / (1024 * 1024)),
            power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            energy_mj: d.total_energy_consumption().ok(),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
            throttle: d
                .current_throttle_reasons()
                .ok()
                .map(|r| ThrottleReasons::from_mask(r.bits())),
            pcie_rx_kb_s: d.pcie_throughput(PcieUtilCounter::Receive).ok(),
            pcie_tx_kb_s: d.pcie_throughput(PcieUtilCounter::Send).ok(),
            xid_errors,
            last_xid,
            ecc_corrected: d
                .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                .ok(),
            ecc_uncorrected: d
                .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                .ok(),
        }
    }
}
