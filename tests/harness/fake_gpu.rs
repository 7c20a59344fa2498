//! The named fakes of the NVIDIA driver libraries (tests/fakes: a fake `libnvidia-ml.so.1`
//! and a fake `libcuda.so.1` sharing one fake H100), compiled with the system C compiler
//! into a temporary directory. A process started with [`FakeGpu::env`] loads them in place
//! of a driver, so the GPU path (NVML telemetry, CUDA_VISIBLE_DEVICES, the GPU proof)
//! runs on a machine without a GPU. Nothing here is installed or shipped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::workspace_root;

/// The fake libraries, built.
pub struct FakeGpu {
    dir: tempfile::TempDir,
}

impl FakeGpu {
    /// Compiles the fakes with `cc` (every Rust toolchain has one to link with).
    pub fn build() -> FakeGpu {
        let dir = tempfile::tempdir().expect("temp dir for the fake GPU libraries");
        let sources = workspace_root().join("tests/fakes");
        for (source, library) in [
            ("fake_nvml.c", "libnvidia-ml.so.1"),
            ("fake_cuda.c", "libcuda.so.1"),
        ] {
            let out = Command::new("cc")
                .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
                .arg(dir.path().join(library))
                .arg(sources.join(source))
                .output()
                .expect("run cc");
            assert!(
                out.status.success(),
                "cc {source}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The names the CUDA loader tries first.
        std::os::unix::fs::symlink("libcuda.so.1", dir.path().join("libcuda.so"))
            .expect("link libcuda.so");
        FakeGpu { dir }
    }

    /// The directory holding the libraries.
    pub fn lib_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file through which the fake CUDA tells the fake NVML about its load.
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Environment that makes a process load the fakes; `mig` turns MIG mode on.
    pub fn env(&self, mig: bool) -> Vec<(&'static str, OsString)> {
        vec![
            ("LD_LIBRARY_PATH", self.lib_dir().as_os_str().to_owned()),
            ("EVALCTL_FAKE_GPU_STATE", self.state_file().into_os_string()),
            (
                "EVALCTL_FAKE_NVML_MIG",
                OsString::from(if mig { "1" } else { "0" }),
            ),
        ]
    }
}
