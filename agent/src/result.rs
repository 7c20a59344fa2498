//! The documents a step result carries: the result itself (`result_json`) and the
//! environment it was measured in (`environment_json`). The agent writes them; the CLI reads
//! them back for tables, exports and reports, with these same types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::loadgen::{StepMetrics, Tokenization};
use crate::telemetry::{GpuDevice, TelemetrySummary};

/// Version of [`StepDocument`]; bumped when a field changes meaning.
pub const STEP_DOCUMENT_SCHEMA: u32 = 1;

/// `result_json` of a stored step result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDocument {
    /// [`STEP_DOCUMENT_SCHEMA`] at the time of writing.
    pub schema: u32,
    /// The server was evalctl's simulator: the figures describe no real hardware.
    pub simulated: bool,
    /// Workload, load point and repeat, e.g. "chat @ c=8 #0".
    pub step_label: String,
    /// Load generator metrics; absent for harness (`api: command`) workloads.
    pub metrics: Option<StepMetrics>,
    /// Values a harness workload reported, by the names the matrix gave them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub harness_metrics: BTreeMap<String, serde_json::Value>,
    /// How prompt lengths were counted.
    pub tokenization: Option<Tokenization>,
    /// TCP connections the load generator opened.
    pub connections_opened: u64,
    /// The model name requests carried (as the server lists it).
    pub served_model: String,
    /// Unix milliseconds when the step started and ended.
    pub started_at_ms: i64,
    /// Unix milliseconds when the step ended.
    pub finished_at_ms: i64,
    /// GPU, host and server telemetry of the step (docs/telemetry.md); absent in documents
    /// written before telemetry existed and for steps that sampled nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySummary>,
}

/// `environment_json` of a stored step result: enough to reproduce the step and to explain a
/// difference between two results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// Host name of the agent.
    pub host: String,
    /// The agent's id.
    pub agent_id: String,
    /// evalctl-agent version.
    pub agent_version: String,
    /// The GPUs the unit ran on (empty for CPU units).
    pub gpus: Vec<GpuDevice>,
    /// Where the GPU facts came from: "none", "simulated", "nvml".
    pub gpu_source: String,
    /// GPU driver version, when known.
    pub driver_version: Option<String>,
    /// CUDA version, when known.
    pub cuda_version: Option<String>,
    /// Framework name.
    pub framework: String,
    /// Framework version, when the server reports one.
    pub framework_version: Option<String>,
    /// The exact launch command, shell-quoted.
    pub launch_command: String,
    /// Container image, when the framework names one.
    pub image: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` given to the server, when set.
    pub cuda_visible_devices: Option<String>,
    /// Operating system and architecture, e.g. "linux x86_64".
    pub os: String,
    /// Logical CPUs of the host.
    pub cpus: usize,
}
