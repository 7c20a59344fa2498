//! The result contract of evalctl: what a step result is, as the agent writes it, the
//! coordinator checks and stores it, and every reader (tables, exports, reports,
//! comparisons, recommendations) reads it.
//!
//! | module | job |
//! |---|---|
//! | [`document`] | the step document and its environment, schema versions, the check on arrival |
//! | [`metrics`] | step metrics from request records (vLLM's definitions, numpy percentiles) |
//! | [`search`] | capacity search: the next probe from the stored ones, and the verdict |
//! | [`probe`] | judging a search probe: steady-state window, keeping up, goal score |
//! | [`settle`] | noise-aware probe verdicts (Wilson bounds, repeats) and the search's plan |
//! | [`slo`] | service level objectives and whether a request meets them |
//! | [`record`] | the per-request record and error kinds |
//! | [`telemetry`] | telemetry summaries of a step: GPUs, host, server metrics |
//! | [`turns`] | latency by turn position in multi-turn steps |
//! | [`workload`] | the dataset and prefix-cache facts of a step, sampled workload values |
//! | [`codec`] | the zstd JSON Lines blobs of records and raw telemetry |
//!
//! Architecture invariant: this crate depends on no other evalctl crate and does no I/O
//! beyond (de)compressing bytes in memory. A reader of results links this and nothing of
//! the code that produced them.

pub mod codec;
pub mod compare;
pub mod document;
pub mod metrics;
pub mod probe;
pub mod record;
pub mod score;
pub mod search;
pub mod settle;
pub mod slo;
pub mod telemetry;
pub mod turns;
pub mod workload;

pub use document::{
    DocumentError, Environment, STEP_DOCUMENT_SCHEMA, STEP_DOCUMENT_SCHEMA_MINOR, SchemaVersion,
    ServerStart, StepDocument, Tokenization, check_step_document,
};
pub use metrics::{LagSummary, StepMetrics, Summary};
pub use record::{ErrorKind, RequestError, RequestRecord, TokenSource};
pub use score::Score;
pub use slo::Slo;
pub use telemetry::{
    EnergyMethod, GpuDevice, GpuSummary, HostSummary, SeriesKind, SeriesSummary,
    ServerMetricsSummary, TelemetrySummary,
};
pub use turns::{TurnFigures, TurnMetrics};
pub use workload::{
    LengthReport, PrefixCacheFacts, PrefixCachePolicy, PrefixDistribution, Sampled, WorkloadFacts,
};
