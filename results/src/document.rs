//! The documents a step result carries: the result itself (`result_json`) and the
//! environment it was measured in (`environment_json`). The agent writes them, the
//! coordinator checks them on arrival, and the CLI reads them back for tables, exports and
//! reports, all with these same types.
//!
//! # Schema versions
//!
//! A step document says its version as `schema` (the major version) and `schema_minor`
//! (absent in documents written before minor versions existed: 0).
//!
//! - A **minor** version adds optional fields and nothing else. A reader of an older minor
//!   ignores the new fields, and the coordinator stores the document as it arrived, so the
//!   fields survive for newer readers. Agents one minor version ahead of or behind the
//!   coordinator work together, so a fleet upgrades one host at a time.
//! - A **major** version changes or removes a field. The coordinator refuses a document of
//!   a major version it does not know ([`check_step_document`]), and says which it knows.
//!
//! The JSON shape of each version is pinned by a snapshot in `results/schema/`; a test fails
//! when the shape changes without a version bump (see `tests/schema.rs`).
//!
//! | version | change |
//! |---|---|
//! | 1.0 | first version |
//! | 1.1 | `schema_minor` written |
//! | 1.2 | environment: `image_id`, `image_digest`, `container_runtime` |
//! | 1.3 | `workload`: dataset kind, prompt length misses, prefix cache policy and hit rates; metrics `reasoning_tokens`, `answer_tokens`; request records `reasoning_tokens` |
//! | 1.4 | metrics `turns` (latency by turn position); request records `conversation`, `turn` |
//! | 1.5 | `probe` (a capacity search's probe run), `search` (the search's verdict) |
//! | 1.6 | `scores` (an accuracy harness's typed scores with standard errors) |
//! | 1.7 | environment: `server_start` (the server's start split into phases, and whether the unit reused a warm server) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::StepMetrics;
use crate::probe::Goal;
use crate::score::{self, Score};
use crate::search::{Probe, ProbeOutcome, SearchAxis, SearchSpec, SearchVerdict};
use crate::settle::ProbeRun;
use crate::telemetry::{GpuDevice, TelemetrySummary};
use crate::workload::WorkloadFacts;

/// Major version of [`StepDocument`]: bumped when a field changes meaning or goes away.
pub const STEP_DOCUMENT_SCHEMA: u32 = 1;

/// Minor version of [`StepDocument`]: bumped when an optional field is added.
pub const STEP_DOCUMENT_SCHEMA_MINOR: u32 = 7;

/// A step document's schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaVersion {
    /// Readers refuse another major version.
    pub major: u32,
    /// Readers accept any minor version of their major.
    pub minor: u32,
}

impl SchemaVersion {
    /// The version this build writes.
    pub const CURRENT: SchemaVersion = SchemaVersion {
        major: STEP_DOCUMENT_SCHEMA,
        minor: STEP_DOCUMENT_SCHEMA_MINOR,
    };
}

impl std::fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How prompt lengths were counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenization {
    /// The server's `/tokenize` endpoint.
    ServerTokenize,
    /// The model's `tokenizer.json`.
    TokenizerJson,
    /// Whitespace words (the word tokenizer the simulated server uses).
    Whitespace,
}

/// `result_json` of a stored step result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDocument {
    /// Major version: [`STEP_DOCUMENT_SCHEMA`] at the time of writing.
    pub schema: u32,
    /// Minor version: [`STEP_DOCUMENT_SCHEMA_MINOR`] at the time of writing; 0 in documents
    /// written before minor versions existed.
    #[serde(default)]
    pub schema_minor: u32,
    /// The server was evalctl's simulator: the figures describe no real hardware.
    pub simulated: bool,
    /// Workload, load point and repeat, e.g. "chat @ c=8 #0".
    pub step_label: String,
    /// Load generator metrics; absent for harness (`api: command`) workloads.
    pub metrics: Option<StepMetrics>,
    /// Values a harness workload reported, by the names the matrix gave them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub harness_metrics: BTreeMap<String, serde_json::Value>,
    /// Scores an accuracy harness parsed from its own output (an `api: lm-eval` workload),
    /// from schema 1.6. [`StepDocument::scores`] adds those of `harness_metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Score>,
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
    /// What the workload was and did to the server's prefix cache (load steps, from schema
    /// 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadFacts>,
    /// The step was a run of a capacity search's probe: which search, and how the run was
    /// judged (from schema 1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeFacts>,
    /// The step was a capacity search: its verdict and probes (from schema 1.5). Such a
    /// document has no metrics of its own; its probes' documents do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchFacts>,
}

/// A run of a capacity search's probe ([`crate::settle`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeFacts {
    /// The search step's id.
    pub search_step: String,
    /// What the search varies.
    pub axis: SearchAxis,
    /// The load, the run at that load and the judgment.
    #[serde(flatten)]
    pub run: ProbeRun,
}

/// A finished capacity search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchFacts {
    /// The bounds and budget.
    pub spec: SearchSpec,
    /// The goal each probe was judged against.
    pub goal: Goal,
    /// The verdict.
    pub verdict: SearchVerdict,
    /// Each load probed with its verdict over its runs, in load order.
    pub probes: Vec<Probe>,
    /// Every probe run in the order it ran.
    pub runs: Vec<RunSummary>,
}

/// One probe run, as the search's verdict lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run's step id.
    pub step_id: String,
    /// The load.
    pub load: f64,
    /// The run at that load, from 0.
    pub run: u32,
    /// The run's own outcome (before pooling with the load's other runs).
    pub outcome: ProbeOutcome,
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
    /// The image's id (`sha256:…`), when the server ran in a container (schema 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The image's registry digest (`sha256:…`), when it has one (schema 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The container runtime, e.g. `podman 4.3.1` (schema 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` given to the server, when set.
    pub cuda_visible_devices: Option<String>,
    /// Operating system and architecture, e.g. "linux x86_64".
    pub os: String,
    /// Logical CPUs of the host.
    pub cpus: usize,
    /// How the step's server started (schema 1.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_start: Option<ServerStart>,
}

/// A server's start, split into the phases its port, log and health tell apart
/// (docs/telemetry.md#cold-starts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServerStart {
    /// Unix ms the agent started the server's process.
    pub started_at_ms: i64,
    /// Seconds until its port accepted a connection, when that came before health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening_s: Option<f64>,
    /// Seconds until its log said the weights were loaded, when it says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_loaded_s: Option<f64>,
    /// Seconds until its health check passed: the cold start.
    pub ready_s: f64,
    /// The unit ran on a server kept warm from an earlier unit: it paid no start.
    pub reused: bool,
}

impl StepDocument {
    /// Every accuracy score of the step: the harness's parsed `scores`, then one per numeric
    /// `harness_metrics` value not already scored under the same name.
    pub fn scores(&self) -> Vec<Score> {
        let mut scores = self.scores.clone();
        for derived in score::from_harness_values(&self.harness_metrics) {
            if !scores.iter().any(|s| s.name == derived.name) {
                scores.push(derived);
            }
        }
        scores
    }

    /// The document's schema version.
    pub fn version(&self) -> SchemaVersion {
        SchemaVersion {
            major: self.schema,
            minor: self.schema_minor,
        }
    }
}

/// Why a `result_json` is not a step document this build can read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, or JSON without a numeric `schema`.
    #[error("failed to read the step document's schema version")]
    NoVersion {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A major version this build does not know.
    #[error(
        "failed to accept a step document of schema {found}: this build reads schema \
         {known}.x only (hint: upgrade the coordinator first, then the agents)"
    )]
    UnknownMajor {
        /// The document's version.
        found: SchemaVersion,
        /// The major version this build reads.
        known: u32,
    },
    /// The version is known but a field does not have its shape.
    #[error("step document (schema {version}): field `{path}` does not match the schema")]
    Shape {
        /// The document's version.
        version: SchemaVersion,
        /// Where in the document, e.g. `metrics.ttft_ms.p99`.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The version fields alone, read before the rest of the document.
#[derive(Deserialize)]
struct VersionOnly {
    schema: u32,
    #[serde(default)]
    schema_minor: u32,
}

/// Checks that `json` is a step document this build can read: its major version is
/// [`STEP_DOCUMENT_SCHEMA`] and every field it knows has the right shape. A newer minor
/// version passes (its extra fields are ignored here and kept by whoever stores `json`).
pub fn check_step_document(json: &str) -> Result<SchemaVersion, DocumentError> {
    let VersionOnly {
        schema,
        schema_minor,
    } = serde_json::from_str(json).map_err(|source| DocumentError::NoVersion { source })?;
    let version = SchemaVersion {
        major: schema,
        minor: schema_minor,
    };
    if schema != STEP_DOCUMENT_SCHEMA {
        return Err(DocumentError::UnknownMajor {
            found: version,
            known: STEP_DOCUMENT_SCHEMA,
        });
    }
    let mut de = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize::<_, StepDocument>(&mut de).map_err(|err| {
        DocumentError::Shape {
            version,
            path: err.path().to_string(),
            source: err.into_inner(),
        }
    })?;
    Ok(version)
}
