//! The GPU load: a PTX kernel of dependent fused multiply-adds, loaded with
//! `cuModuleLoadData` and launched back to back through the CUDA driver API (cudarc's thin
//! `result` layer over `libcuda`, which ships with the driver), plus a block of device
//! memory held for the process's life so NVML sees memory in use.
//!
//! The thin layer, not cudarc's context objects: every driver call made here is listed in
//! this file, so the named fake `libcuda` the tests build (tests/fakes/libcuda.c) provides
//! exactly these entry points and no others.

// Calls into the CUDA driver are foreign functions: each `unsafe` block below states what
// it relies on.
#![allow(unsafe_code)]

use std::ffi::{CString, c_void};
use std::time::{Duration, Instant};

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;
use serde::{Deserialize, Serialize};

/// The kernel's source.
const PTX: &str = include_str!("burn.ptx");
/// Threads per block.
const BLOCK: u32 = 256;
/// Blocks per multiprocessor: enough resident warps to hide the FMA latency.
const BLOCKS_PER_SM: u32 = 8;
/// FMAs per thread per launch: a few milliseconds on a current GPU.
const ITERATIONS: u32 = 1 << 15;

/// What the CUDA driver reported from inside the server process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CudaFacts {
    /// `CUDA_VISIBLE_DEVICES` as this process received it (`None`: not set).
    pub cuda_visible_devices: Option<String>,
    /// `CUDA_DEVICE_ORDER` as this process received it: `PCI_BUS_ID` makes CUDA's indices
    /// NVML's.
    pub cuda_device_order: Option<String>,
    /// Devices the driver lets this process see.
    pub device_count: i32,
    /// Device 0's name.
    pub name: String,
    /// Device 0's UUID, written as NVML writes it (`GPU-…`; `MIG-…` is NVML's for a MIG
    /// instance, whose CUDA UUID is the same 16 bytes).
    pub uuid: String,
    /// Device 0's memory, bytes.
    pub total_memory_bytes: u64,
    /// Its multiprocessors.
    pub multiprocessors: i32,
    /// The CUDA version the driver supports, as "12.4".
    pub driver_cuda_version: Option<String>,
    /// Device memory held for the process's life, MiB.
    pub held_mib: u64,
}

/// How much work the burner did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BurnProgress {
    /// Kernel launches completed.
    pub launches: u64,
    /// Seconds spent launching and waiting for them.
    pub seconds: f64,
    /// Achieved single-precision rate, GFLOP/s (2 FLOPs per FMA).
    pub gflops: f64,
}

/// The CUDA driver could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No `libcuda` on the loader's path: no NVIDIA driver is installed.
    #[error("the CUDA driver library (libcuda.so) is not on the loader's path")]
    NoDriver,
    /// A driver call failed.
    #[error("CUDA driver call `{call}` failed")]
    Call {
        /// The driver entry point.
        call: &'static str,
        /// What it returned (its text comes from the driver).
        #[source]
        source: DriverError,
    },
}

fn call<T>(name: &'static str, r: Result<T, DriverError>) -> Result<T, CudaError> {
    r.map_err(|source| CudaError::Call { call: name, source })
}

/// A context on device 0 with the kernel loaded and memory held.
pub struct Burner {
    function: sys::CUfunction,
    out: sys::CUdeviceptr,
    grid: u32,
    threads: u64,
    /// What the driver said.
    pub facts: CudaFacts,
}

impl Burner {
    /// Opens device 0 (of the devices `CUDA_VISIBLE_DEVICES` leaves visible), loads the
    /// kernel and holds `hold_mib` MiB of device memory. Fails when no driver library
    /// is present, or no device is visible.
    pub fn open(hold_mib: u64) -> Result<Burner, CudaError> {
        // SAFETY: probing for the library has no preconditions; cudarc panics on first use
        // when it is absent, so this check comes first.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        call("cuInit", result::init())?;
        let device_count = call("cuDeviceGetCount", result::device::get_count())?;
        let device = call("cuDeviceGet", result::device::get(0))?;
        let name = call("cuDeviceGetName", result::device::get_name(device))?;
        let uuid = call("cuDeviceGetUuid", result::device::get_uuid(device))?;
        // SAFETY: `device` came from cuDeviceGet.
        let total = call("cuDeviceTotalMem_v2", unsafe {
            result::device::total_mem(device)
        })?;
        // SAFETY: as above; the attribute is a plain enum value.
        let multiprocessors = call("cuDeviceGetAttribute", unsafe {
            result::device::get_attribute(
                device,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
        })?;
        // SAFETY: the primary context of a valid device, made current on this thread, which
        // is the only thread that uses it.
        unsafe {
            let context = call(
                "cuDevicePrimaryCtxRetain",
                result::primary_ctx::retain(device),
            )?;
            call("cuCtxSetCurrent", result::ctx::set_current(context))?;
        }
        // The PTX is a constant without NUL bytes (a unit test checks it).
        let source = CString::new(PTX).unwrap_or_default();
        // SAFETY: a NUL-terminated PTX image, in the current context.
        let module = call("cuModuleLoadData", unsafe {
            result::module::load_data(source.as_ptr().cast())
        })?;
        // SAFETY: `module` is loaded; the name is the kernel's `.entry`.
        let function = call("cuModuleGetFunction", unsafe {
            result::module::get_function(module, CString::new("burn").unwrap_or_default())
        })?;
        let grid = (multiprocessors.max(1) as u32).saturating_mul(BLOCKS_PER_SM);
        let threads = u64::from(grid) * u64::from(BLOCK);
        // SAFETY: sizes are non-zero; the pointers are freed only at process exit.
        let out = call("cuMemAlloc_v2", unsafe {
            result::malloc_sync(threads as usize * 4)
        })?;
        if hold_mib > 0 {
            let bytes = (hold_mib as usize) << 20;
            // SAFETY: as above; writing the block makes the driver back every page.
            unsafe {
                let held = call("cuMemAlloc_v2", result::malloc_sync(bytes))?;
                call("cuMemsetD8_v2", result::memset_d8_sync(held, 0x5a, bytes))?;
            }
        }
        Ok(Burner {
            function,
            out,
            grid,
            threads,
            facts: CudaFacts {
                cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
                cuda_device_order: std::env::var("CUDA_DEVICE_ORDER").ok(),
                device_count,
                name,
                uuid: uuid_text("GPU-", &uuid.bytes.map(|b| b as u8)),
                total_memory_bytes: total as u64,
                multiprocessors,
                driver_cuda_version: driver_version(),
                held_mib: hold_mib,
            },
        })
    }

    /// Launches the kernel back to back for `period`, waiting for each, and returns the
    /// work done in it.
    pub fn run_for(&self, period: Duration) -> Result<BurnProgress, CudaError> {
        let started = Instant::now();
        let mut launches = 0u64;
        while started.elapsed() < period {
            let mut out = self.out;
            let mut iterations = ITERATIONS;
            let mut params: [*mut c_void; 2] = [
                (&raw mut out).cast::<c_void>(),
                (&raw mut iterations).cast::<c_void>(),
            ];
            // SAFETY: the kernel takes (u64 pointer, u32); `out` holds one f32 per thread of
            // the grid; the default stream; synchronised before `params` goes away.
            unsafe {
                call(
                    "cuLaunchKernel",
                    result::launch_kernel(
                        self.function,
                        (self.grid, 1, 1),
                        (BLOCK, 1, 1),
                        0,
                        std::ptr::null_mut(),
                        &mut params,
                    ),
                )?;
            }
            call("cuCtxSynchronize", result::ctx::synchronize())?;
            launches += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        let flops = launches as f64 * self.threads as f64 * f64::from(ITERATIONS) * 2.0;
        Ok(BurnProgress {
            launches,
            seconds,
            gflops: if seconds > 0.0 {
                flops / seconds / 1e9
            } else {
                0.0
            },
        })
    }
}

/// The CUDA version the driver supports, as "12.4".
fn driver_version() -> Option<String> {
    let mut version = 0;
    // SAFETY: writes one int.
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
    (status == sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("{}.{}", version / 1000, version % 1000 / 10))
}

/// 16 UUID bytes as NVML writes them: `prefix` then 8-4-4-4-12 hex digits.
pub fn uuid_text(prefix: &str, bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{prefix}{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_read_as_nvml_writes_them() {
        let bytes: [u8; 16] = [
            0xfa, 0x4e, 0xfa, 0x4e, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0x01,
        ];
        assert_eq!(
            uuid_text("GPU-", &bytes),
            "GPU-fa4efa4e-0000-4000-8000-000000000001"
        );
    }

    #[test]
    fn the_kernel_is_valid_ptx_text() {
        assert!(PTX.contains(".visible .entry burn("));
        assert!(!PTX.contains('\0'));
    }
}
