//! Harness for evalctl's end-to-end tests: starts the real `evalctl-coordinator` binary
//! on a loopback port with a temporary SQLite file, runs the real `evalctl` CLI against
//! it, and kills processes with real signals.
//!
//! The binaries come from the same target directory as the test executable; `cargo test
//! --workspace` builds them. A missing binary fails the test with a clear message.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

mod agent;
mod containers;
mod fake_gpu;
mod ledger;
mod metadata;
mod procs;
mod proxy;
mod receivers;

pub use agent::AgentProcess;
pub use containers::{Podman, SIM_IMAGE};
pub use fake_gpu::FakeGpu;
pub use ledger::{AgentLog, Fault, FinishedStep, Ledger, Rng, SeenResult};
pub use metadata::{Cloud, FakeMetadata};
pub use procs::{children_of, descendants_of, group_alive, process_gone, processes_with};
pub use proxy::Proxy;
pub use receivers::{HttpReceiver, Mail, Received, SmtpReceiver};

/// How long a process may take to print its listen address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (where `matrices/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The cache the setup scripts install real engines and models into: `$EVALCTL_CACHE`, by
/// default `~/.cache/evalctl` (scripts/setup-llamacpp.sh, scripts/setup-vllm.sh).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("EVALCTL_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache/evalctl"),
    }
}

/// Path of a workspace binary next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found; build it first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A coordinator process on a loopback port.
pub struct CoordinatorProcess {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl CoordinatorProcess {
    /// Starts a coordinator with its database under `data_dir`, on a free loopback port.
    pub fn start(data_dir: &Path) -> CoordinatorProcess {
        Self::start_with(data_dir, &[])
    }

    /// Starts a coordinator with extra flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> CoordinatorProcess {
        Self::start_on("127.0.0.1:0", data_dir, extra)
    }

    /// Starts a coordinator on `listen` (e.g. the address of one that was killed, so its
    /// agents find the new one where the old one was).
    pub fn start_on(listen: &str, data_dir: &Path, extra: &[&str]) -> CoordinatorProcess {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let log = data_dir.join(format!("coordinator-{}.log", unique_suffix()));
        let log_file = std::fs::File::create(&log).expect("create coordinator log");
        let mut child = Command::new(binary("evalctl-coordinator"))
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn evalctl-coordinator");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = first_line(stdout, START_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "coordinator printed no listen address within {START_TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from coordinator: {line:?}"));
        CoordinatorProcess {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    /// The coordinator's URL for `evalctl --coordinator`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data directory it was started with.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up; waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
        wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("coordinator did not exit within {timeout:?} of SIGTERM")
        })
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `evalctl` CLI with `args` against `coordinator_url` (or none) and returns
/// its output. The CLI is bounded by a timeout so a hung call fails the test.
pub fn evalctl(coordinator_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary("evalctl"));
    cmd.args(args)
        .current_dir(workspace_root())
        .env_remove("EVALCTL_COORDINATOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = coordinator_url {
        cmd.env("EVALCTL_COORDINATOR", url);
    } else {
        // A port nothing listens on: loopback port 1 refuses connections at once.
        cmd.env("EVALCTL_COORDINATOR", "http://127.0.0.1:1");
    }
    let child = cmd.spawn().expect("spawn evalctl");
    output_timeout(child, Duration::from_secs(120))
}

/// Parses a command's stdout as JSON, failing with the command's stderr when it is not.
pub fn json_stdout(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "command failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not JSON ({err}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub(crate) fn first_line(stdout: std::process::ChildStdout, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    rx.recv_timeout(timeout).ok().filter(|l| !l.is_empty())
}

pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output_timeout(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.expect("collect evalctl output"),
        Err(_) => {
            let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("evalctl did not finish within {timeout:?}")
        }
    }
}

/// A suffix unique within this test run (process id and a counter).
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
