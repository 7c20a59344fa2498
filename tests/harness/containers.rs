//! Podman for the container tests: a private image store per test (in a temporary
//! directory, `vfs` driver, so tests never share or leave images), the options this
//! machine's sandbox needs, and a local image of evalctl's simulated server built from the
//! freshly built `evalctl-agent` binary (`podman import` of a root file system: no registry,
//! no network).
//!
//! `scripts/setup-podman.sh` installs Podman and runc (`scripts/test.sh` runs it); without
//! them the tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::binary;

const SETUP_HINT: &str = "run scripts/setup-podman.sh (scripts/test.sh does): it installs \
     Podman and runc from the distribution's packages";

/// The image tag of the simulated server the tests import.
pub const SIM_IMAGE: &str = "localhost/evalctl-sim:test";

/// Podman with a private store.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// A private store; fails the test when Podman or runc is not installed.
    pub fn new() -> Podman {
        for program in ["podman", "runc"] {
            assert!(
                which(program).is_some(),
                "`{program}` is not installed; {SETUP_HINT}"
            );
        }
        Podman {
            dir: tempfile::Builder::new()
                .prefix("evalctl-podman-")
                .tempdir()
                .expect("podman store dir"),
        }
    }

    /// Options before every subcommand: the private store, and runc (crun refuses this
    /// sandbox's hybrid cgroup layout).
    pub fn global_args(&self) -> Vec<String> {
        let root = self.dir.path();
        vec![
            "--root".into(),
            root.join("storage").display().to_string(),
            "--runroot".into(),
            root.join("run").display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
            "--runtime".into(),
            "runc".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
        ]
    }

    /// Options of every `create` here: resource limits within this machine's hard limits
    /// (Podman's defaults exceed them and the sandbox refuses to raise them).
    pub fn run_options(&self) -> Vec<String> {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(_, hard)| hard.min(65536));
        vec![
            "--ulimit".into(),
            format!("nofile={nofile}:{nofile}"),
            "--ulimit".into(),
            "nproc=4096:4096".into(),
        ]
    }

    /// An agent config file (`[container]`) using this store.
    pub fn agent_config(&self, path: &Path) -> PathBuf {
        let list = |items: Vec<String>| {
            items
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "[container]\nruntime = \"podman\"\nglobal_args = [{}]\nrun_options = [{}]\n",
            list(self.global_args()),
            list(self.run_options())
        );
        std::fs::write(path, text).expect("write agent config");
        path.to_owned()
    }

    /// Runs `podman <global args> args`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(self.global_args())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// Runs `podman <global args> args` and returns its stdout; panics with its stderr when
    /// it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names of the containers (running or not) with label `key=value`.
    pub fn containers_labelled(&self, key: &str, value: &str) -> Vec<String> {
        self.ok(&[
            "ps",
            "--all",
            "--filter",
            &format!("label={key}={value}"),
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
    }

    /// Imports the simulated server's image as [`SIM_IMAGE`] (and as `also`, tags for the
    /// images a matrix names): the stripped `evalctl-agent` binary and the libraries it
    /// links, in a root file system of their own.
    pub fn import_sim_image(&self, also: &[&str]) {
        let rootfs = self.dir.path().join("rootfs");
        let bin = rootfs.join("usr/local/bin");
        std::fs::create_dir_all(&bin).expect("rootfs");
        let agent = bin.join("evalctl-agent");
        std::fs::copy(binary("evalctl-agent"), &agent).expect("copy evalctl-agent");
        // Debug symbols are most of the binary; the image needs none of them.
        let _ = Command::new("strip").arg(&agent).status();
        let ldd = Command::new("ldd").arg(&agent).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = line
                .split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from);
            if let Some(path) = path {
                let target = rootfs.join(path.strip_prefix("/").expect("absolute"));
                std::fs::create_dir_all(target.parent().expect("parent")).expect("lib dir");
                std::fs::copy(&path, &target).expect("copy library");
            }
        }
        std::fs::create_dir_all(rootfs.join("tmp")).expect("tmp");
        let tarball = self.dir.path().join("sim.tar");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .expect("tar");
        assert!(tar.success(), "tar of the image's root file system failed");
        self.ok(&[
            "import",
            "--change",
            "ENV=PATH=/usr/local/bin:/usr/bin:/bin",
            tarball.to_str().expect("utf-8 path"),
            SIM_IMAGE,
        ]);
        for tag in also {
            self.ok(&["tag", SIM_IMAGE, tag]);
        }
    }
}

impl Drop for Podman {
    /// Removes every container of the store (their processes with them) before the store.
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
    }
}

impl Default for Podman {
    fn default() -> Podman {
        Podman::new()
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
