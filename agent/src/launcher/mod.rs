//! The server launcher: renders a framework's command template, starts the inference server
//! under a supervisor in its own process group with its output in a log file, waits for its
//! health endpoint, and stops its whole process tree (SIGTERM, grace, SIGKILL).
//!
//! - [`template`]: `{placeholder}` rendering into an argv ([`render_command`]).
//! - [`server`]: [`spawn`], [`RunningServer`] (health wait, exit polling, stop, log tail).
//! - [`supervisor`]: the process between the agent and each server (`evalctl-agent
//!   supervise`) that ends the server's whole tree when the agent stops it or dies.
//! - [`container`]: frameworks with an `image`: pull, create, teardown and reaping through
//!   the Docker or Podman CLI; the container's `start --attach` is the supervised server.
//! - [`startup`]: a start's phases (port open, weights loaded, healthy) for the cold-start
//!   figures.
//! - [`diagnosis`]: what kind of failure a server that did not start had (a refused
//!   command line, a port in use, out of memory, missing model files or engine), and the
//!   log line that shows it.
//! - [`orphans`]: [`ServerRecord`] and [`end_orphans`], which ends the groups a crashed agent
//!   left running, identified by process group id and start time so a reused pid is never
//!   killed; and [`end_launch`], for a crash between a spawn and its record, which finds
//!   the launch's processes by the token in their environment.
//! - `group` and `procfs` (private): process groups and `/proc` (start times, group members,
//!   descendants); the launcher is Linux only.

pub mod container;
pub mod diagnosis;
mod error;
mod group;
mod health;
pub mod orphans;
mod procfs;
pub mod server;
pub mod startup;
pub mod supervisor;
pub mod template;

pub use diagnosis::{Diagnosis, FailureClass};
pub use error::LaunchError;
pub use group::group_alive;
pub use orphans::{LAUNCH_TOKEN_ENV, OrphanOutcome, ServerRecord, end_launch, end_orphans};
pub use procfs::process_start_time;
pub use server::{
    AGENT_PROGRAM, LOG_TAIL_BYTES, LaunchSpec, RunningServer, StopOutcome, THIS_EXECUTABLE,
    append_log_line, default_supervisor, free_port, read_tail, resolve_program, spawn,
};
pub use startup::StartPhases;
pub use template::{
    RenderedCommand, SERVER_PLACEHOLDERS, TemplateError, TemplateValues, render_command,
    render_template,
};
