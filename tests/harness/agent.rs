//! An `evalctl-agent run` process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::{binary, eventually, unique_suffix, wait_timeout};

/// A running agent; its log (stderr) goes to a file in its state directory.
pub struct AgentProcess {
    child: Child,
    state_dir: PathBuf,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts an agent talking to `coordinator_url` with its state in `state_dir`, with
    /// extra flags (e.g. `--gpus H100-80GB:2`), and waits until it registered.
    pub fn start(coordinator_url: &str, state_dir: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_with_env(coordinator_url, state_dir, extra, &[])
    }

    /// [`AgentProcess::start`] with environment variables set for the agent (and so for
    /// the servers it starts), e.g. a `PATH` that has an engine another agent lacks.
    pub fn start_with_env(
        coordinator_url: &str,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProcess {
        let agent = AgentProcess::spawn_with_env(coordinator_url, state_dir, extra, env);
        eventually(Duration::from_secs(30), "the agent to register", || {
            agent.log().contains("registered")
        });
        agent
    }

    /// [`AgentProcess::start`] without waiting for the registration (the coordinator may
    /// be down or out of reach): the test flags (short stop grace, flush timeout and
    /// acquire wait) and `extra`.
    pub fn spawn(coordinator_url: &str, state_dir: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::spawn_with_env(coordinator_url, state_dir, extra, &[])
    }

    fn spawn_with_env(
        coordinator_url: &str,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProcess {
        std::fs::create_dir_all(state_dir).expect("create agent state dir");
        let log = state_dir.join(format!("agent-{}.log", unique_suffix()));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let child = Command::new(binary("evalctl-agent"))
            .args(["run", "--coordinator", coordinator_url, "--state-dir"])
            .arg(state_dir)
            .args([
                "--stop-grace",
                "2s",
                "--flush-timeout",
                "5s",
                "--acquire-wait",
                "2s",
            ])
            .args(extra)
            .env("EVALCTL_LOG", "info,evalctl_agent=debug")
            .envs(env.iter().copied())
            .env_remove("EVALCTL_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn evalctl-agent");
        AgentProcess {
            child,
            state_dir: state_dir.to_owned(),
            log,
        }
    }

    /// Starts an agent and does not wait for registration (its coordinator may be down).
    pub fn spawn_unregistered(coordinator_url: &str, state_dir: &Path) -> AgentProcess {
        std::fs::create_dir_all(state_dir).expect("create agent state dir");
        let log = state_dir.join(format!("agent-{}.log", unique_suffix()));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let child = Command::new(binary("evalctl-agent"))
            .args(["run", "--coordinator", coordinator_url, "--state-dir"])
            .arg(state_dir)
            .env("EVALCTL_LOG", "info,evalctl_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn evalctl-agent");
        AgentProcess {
            child,
            state_dir: state_dir.to_owned(),
            log,
        }
    }

    /// Stops the agent (SIGSTOP): it keeps its registration but asks for no work and
    /// sends no heartbeat until [`AgentProcess::resume`].
    pub fn pause(&self) {
        let _ = signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGSTOP);
    }

    /// Lets a paused agent go on (SIGCONT).
    pub fn resume(&self) {
        let _ = signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its log file (kept after the process is gone).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL: no flush, no release. Its servers' supervisors see the agent's link close
    /// and end them.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL of the agent and of its servers' supervisors, not of the servers: what the
    /// restart-time orphan reaper is for. The agent is stopped first (SIGSTOP) so its link
    /// stays open until the supervisors are dead.
    pub fn kill9_with_supervisors(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = signal::kill(pid, Signal::SIGSTOP);
        for supervisor in crate::procs::children_of(self.child.id()) {
            let _ = signal::kill(Pid::from_raw(supervisor), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The host dies: the agent and every process below it (supervisors, servers and what
    /// they started) are SIGKILLed at once. Everything is stopped first (SIGSTOP) so nothing
    /// starts a process between the look at the tree and the kill.
    pub fn kill9_with_servers(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = signal::kill(pid, Signal::SIGSTOP);
        let mut tree = Vec::new();
        // Stopping a process between looks; a second look finds what forked meanwhile.
        for _ in 0..2 {
            for process in crate::procs::descendants_of(self.child.id()) {
                let _ = signal::kill(Pid::from_raw(process), Signal::SIGSTOP);
                if !tree.contains(&process) {
                    tree.push(process);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for process in tree {
            // Servers lead their own process group; anything else dies with its pid.
            let _ = signal::killpg(Pid::from_raw(process), Signal::SIGKILL);
            let _ = signal::kill(Pid::from_raw(process), Signal::SIGKILL);
        }
    }

    /// The exit status once the process has ended, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `timeout` for the agent to exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
        wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!(
                "agent did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.log()
            )
        })
    }

    /// Waits up to `timeout` for the agent to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "agent did not exit within {timeout:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // A test that failed half-way must not leave an agent behind. Its servers are
        // ended by the agent on SIGTERM; a SIGKILL would orphan them.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            if wait_timeout(&mut self.child, Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
