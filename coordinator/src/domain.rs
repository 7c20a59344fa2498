//! Domain types of campaigns, units and steps: what the matrix expands into, what the
//! store keeps and what the scheduler leases. The gRPC layer converts these to and
//! from `evalctl_proto` messages; nothing else in the coordinator sees prost types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use evalctl_results::{PrefixCachePolicy, PrefixDistribution, Sampled};

/// Stable id of a unit: a hash of its canonical [`UnitConfig`].
///
/// Two submissions of the same server configuration get the same id, in any campaign,
/// which is what lets a resubmitted campaign keep its finished units and lets `compare`
/// match units across campaigns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnitId(pub String);

/// Stable id of a step: a hash of its unit id, workload, load point and repeat.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(pub String);

/// Id of a stored campaign (a UUID; the campaign's name is unique too).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CampaignId(pub String);

/// Id of an agent: chosen by the agent and kept in its state directory, so a restarted
/// agent is the same agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub String);

/// Id of a lease (a UUID v4 string, one per grant).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub String);

macro_rules! display_id {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl $t {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    )*};
}
display_id!(UnitId, StepId, CampaignId, AgentId, LeaseId);

/// Hex digest (first 16 hex digits of SHA-256) of a value's canonical JSON form.
///
/// Canonical: struct fields in declaration order, maps as `BTreeMap`, so the digest does
/// not depend on the order of keys in the matrix file.
pub fn stable_hash<T: Serialize>(prefix: &str, value: &T) -> String {
    let json = serde_json::to_vec(value).expect("domain types always serialize to JSON");
    let digest = Sha256::digest(&json);
    format!("{prefix}{}", &hex::encode(digest)[..16])
}

/// The model a unit serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Short name used in tables and matrix keys.
    pub name: String,
    /// What the server loads (hub id or local path), substituted for `{model.path}`.
    pub path: String,
    /// Parameters in billions, for fit pruning; `None` when unknown (never pruned).
    pub params_b: Option<f64>,
    /// `tokenizer.json` path for exact-length prompts.
    pub tokenizer: Option<String>,
}

/// The GPUs a unit needs on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRequirement {
    /// Normalised GPU type, e.g. `H100-80GB`; `cpu` for CPU-only units.
    pub gpu_type: String,
    /// Memory per GPU in GB.
    pub memory_gb: f64,
    /// GPUs of that type on one host.
    pub count: u32,
    /// Price per GPU-hour, when the matrix gives one.
    pub price_per_hour: Option<f64>,
    /// How the engine lays the unit out over its GPUs, when the matrix has `layouts`;
    /// `None`: tensor parallelism over all of them. Left out of the serialised form when
    /// `None`, so adding it changed no id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// Tensor, pipeline, data and expert parallelism of a unit: `tp × pp × dp` GPUs, experts
/// sharded over `ep` of the `tp × dp` (docs/matrix.md#layouts).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layout {
    /// Tensor-parallel size.
    pub tp: u32,
    /// Pipeline-parallel size.
    pub pp: u32,
    /// Data-parallel size (replicas).
    pub dp: u32,
    /// Expert-parallel size (1: experts are tensor-parallel like the rest).
    pub ep: u32,
    /// Requests the engine runs at once (vLLM's `--max-num-seqs`); `None`: its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_seqs: Option<u32>,
    /// Context length it serves (vLLM's `--max-model-len`); `None`: the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    /// KV-cache precision; `None`: the engine's default (the model's dtype).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<KvCacheDtype>,
    /// Speculative decoding; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<Speculative>,
}

/// Speculative decoding: a method proposes `tokens` tokens per step, which the model
/// verifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Speculative {
    /// How tokens are proposed.
    pub method: SpeculativeMethod,
    /// The draft model's path, for methods that have one (EAGLE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_model: Option<String>,
    /// Tokens proposed per step.
    pub tokens: u32,
}

/// A speculative decoding method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeculativeMethod {
    /// EAGLE draft heads (a draft model).
    Eagle,
    /// EAGLE-3 draft heads (a draft model).
    Eagle3,
    /// Prompt-lookup n-grams (no draft model).
    Ngram,
    /// The model's own multi-token-prediction layers (DeepSeek-V3; no draft model).
    Mtp,
}

impl SpeculativeMethod {
    /// The matrix spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SpeculativeMethod::Eagle => "eagle",
            SpeculativeMethod::Eagle3 => "eagle3",
            SpeculativeMethod::Ngram => "ngram",
            SpeculativeMethod::Mtp => "mtp",
        }
    }

    /// Whether the method needs a draft model.
    pub fn needs_draft(self) -> bool {
        matches!(self, SpeculativeMethod::Eagle | SpeculativeMethod::Eagle3)
    }
}

/// A KV-cache precision an engine can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheDtype {
    /// The model's own dtype.
    Auto,
    /// 8-bit floating point.
    Fp8,
}

impl KvCacheDtype {
    /// The matrix spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::Fp8 => "fp8",
        }
    }
}

impl Layout {
    /// GPUs the layout uses.
    pub fn gpus(&self) -> u64 {
        u64::from(self.tp) * u64::from(self.pp) * u64::from(self.dp)
    }
}

impl fmt::Display for Layout {
    /// `tp4 pp2 seqs256 len8192 kv-fp8`: the sizes other than 1 after `tp`, then the engine
    /// settings given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tp{}", self.tp)?;
        for (name, size) in [("pp", self.pp), ("dp", self.dp), ("ep", self.ep)] {
            if size > 1 {
                write!(f, " {name}{size}")?;
            }
        }
        if let Some(n) = self.max_num_seqs {
            write!(f, " seqs{n}")?;
        }
        if let Some(n) = self.max_model_len {
            write!(f, " len{n}")?;
        }
        if let Some(kv) = self.kv_cache_dtype {
            write!(f, " kv-{}", kv.as_str())?;
        }
        if let Some(spec) = &self.speculative {
            write!(f, " spec-{}x{}", spec.method.as_str(), spec.tokens)?;
        }
        Ok(())
    }
}

/// The `gpu_type` of CPU-only units.
pub const CPU_GPU_TYPE: &str = "cpu";

impl GpuRequirement {
    /// True for CPU-only units (`gpu_type` is `cpu`, in any case): they need a free CPU
    /// slot of an agent and no GPU.
    pub fn is_cpu(&self) -> bool {
        self.gpu_type.eq_ignore_ascii_case(CPU_GPU_TYPE)
    }
}

/// How a server is launched and probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkSpec {
    /// Framework name, e.g. `vllm`.
    pub name: String,
    /// Command template with `{placeholders}`, validated at submit time.
    pub command: String,
    /// Health path, e.g. `/health`.
    pub health_path: String,
    /// Prometheus metrics path, when the framework has one.
    pub metrics_path: Option<String>,
    /// How long to wait for health, in milliseconds.
    pub startup_timeout_ms: u64,
    /// Extra environment for the server.
    pub env: BTreeMap<String, String>,
    /// Container image: the server runs in a container of it (docs/containers.md).
    pub image: Option<String>,
    /// How the container is pulled and run; set exactly when `image` is. Left out of the
    /// serialized form when absent, so the ids of units without an image do not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
}

/// How a framework's container is pulled and run (the matrix's `container` block, with its
/// defaults applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// When the image is pulled.
    pub pull: PullPolicy,
    /// How long a pull may take, in milliseconds.
    pub pull_timeout_ms: u64,
    /// How the server is reached.
    pub network: ContainerNetwork,
    /// `/dev/shm` size in a private IPC namespace, e.g. `16g`; `None` = the host's IPC
    /// namespace.
    pub shm_size: Option<String>,
    /// Extra options of the runtime's `create`, placed before the image.
    pub run_options: Vec<String>,
}

/// Default [`ContainerSpec::pull_timeout_ms`]: 30 minutes (an engine image is 10–20 GB).
pub const DEFAULT_PULL_TIMEOUT_MS: u64 = 30 * 60 * 1000;

impl Default for ContainerSpec {
    fn default() -> ContainerSpec {
        ContainerSpec {
            pull: PullPolicy::IfMissing,
            pull_timeout_ms: DEFAULT_PULL_TIMEOUT_MS,
            network: ContainerNetwork::Host,
            shm_size: None,
            run_options: Vec::new(),
        }
    }
}

/// When a framework's image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Before every launch.
    Always,
    /// When the host does not have the image.
    IfMissing,
    /// Never: the host must have it.
    Never,
}

impl PullPolicy {
    /// Every policy with its matrix spelling.
    pub const ALL: [(PullPolicy, &'static str); 3] = [
        (PullPolicy::Always, "always"),
        (PullPolicy::IfMissing, "if-missing"),
        (PullPolicy::Never, "never"),
    ];
}

/// How a container's server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerNetwork {
    /// The host's network namespace.
    Host,
    /// A network of its own with the unit's port published.
    Publish,
}

impl ContainerNetwork {
    /// Every mode with its matrix spelling.
    pub const ALL: [(ContainerNetwork, &'static str); 2] = [
        (ContainerNetwork::Host, "host"),
        (ContainerNetwork::Publish, "publish"),
    ];
}

/// The quantization a unit serves with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationSpec {
    /// Name, e.g. `fp8`.
    pub name: String,
    /// Bits per weight, for fit pruning.
    pub bits: f64,
    /// Arguments for `{quant.args}`, resolved for the unit's framework (empty when none).
    pub args: String,
}

/// One complete server configuration: the identity of a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitConfig {
    /// Model served.
    pub model: ModelSpec,
    /// GPUs needed.
    pub gpu: GpuRequirement,
    /// Server framework.
    pub framework: FrameworkSpec,
    /// Quantization.
    pub quantization: QuantizationSpec,
    /// Arguments appended to the rendered command (from `include` entries).
    pub extra_args: String,
    /// Labels an agent must carry to take this unit.
    pub labels: BTreeMap<String, String>,
}

impl UnitConfig {
    /// The unit's stable id (hash of this canonical config).
    pub fn unit_id(&self) -> UnitId {
        UnitId(stable_hash("u-", self))
    }

    /// Human label, e.g. `llama-3.1-8b / H100-80GB x2 / vllm / fp8`, with the layout when
    /// it has one: `… / H100-80GB x8 (tp4 pp2) / …`.
    pub fn label(&self) -> String {
        let layout = self
            .gpu
            .layout
            .as_ref()
            .map_or_else(String::new, |l| format!(" ({l})"));
        format!(
            "{} / {} x{}{layout} / {} / {}",
            self.model.name,
            self.gpu.gpu_type,
            self.gpu.count,
            self.framework.name,
            self.quantization.name
        )
    }
}

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatasetSpec {
    /// Random prompts of exact token lengths.
    Random {
        /// Prompt length in tokens.
        input_tokens: u32,
        /// Requested output length in tokens.
        output_tokens: u32,
    },
    /// Prompts built from `prefixes` shared prefixes of `prefix_tokens` tokens, each
    /// followed by a suffix of its own of `suffix_tokens` tokens.
    SharedPrefix {
        /// How many distinct prefixes.
        prefixes: u32,
        /// Each prefix's length in tokens.
        prefix_tokens: u32,
        /// Each prompt's own suffix length in tokens.
        suffix_tokens: u32,
        /// Requested output length in tokens.
        output_tokens: u32,
        /// How a prompt's prefix is chosen.
        distribution: PrefixDistribution,
    },
    /// ShareGPT-format JSON file.
    Sharegpt {
        /// Path to the file.
        path: String,
        /// Requested output length; `None` = the dataset's own reply lengths.
        output_tokens: Option<u32>,
    },
    /// A timestamped request trace to replay (Mooncake JSON Lines, or CSV/JSON Lines of
    /// timestamp, input and output lengths).
    Trace {
        /// Path to the file.
        path: String,
        /// Tokens per hash id.
        block_tokens: u32,
        /// Keep requests from this timestamp on, ms.
        start_ms: Option<u64>,
        /// Keep requests before this timestamp, ms.
        end_ms: Option<u64>,
    },
    /// Multi-turn conversations: from a ShareGPT or OpenAI-messages file (`path`), or
    /// synthetic (`turns`, `input_tokens`, `output_tokens`).
    Conversations {
        /// The file; `None` for synthetic conversations.
        path: Option<String>,
        /// File: keep at most this many user turns per conversation.
        max_turns: Option<u32>,
        /// Synthetic: user turns per conversation.
        turns: Option<Sampled>,
        /// Synthetic: each user message's length in tokens.
        input_tokens: Option<Sampled>,
        /// Synthetic: the first user message's length, when it differs.
        first_input_tokens: Option<Sampled>,
        /// Each turn's output length; required for synthetic, for a file `None` = the
        /// recorded replies' lengths.
        output_tokens: Option<Sampled>,
        /// Seconds between an answer and the next turn.
        think_time_s: Sampled,
    },
    /// JSON Lines of prompts or chat messages.
    Jsonl {
        /// Path to the file.
        path: String,
        /// Requested output length; `None` = per-line `max_tokens` or the default.
        output_tokens: Option<u32>,
    },
}

impl DatasetSpec {
    /// The matrix spelling of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DatasetSpec::Random { .. } => "random",
            DatasetSpec::SharedPrefix { .. } => "shared_prefix",
            DatasetSpec::Sharegpt { .. } => "sharegpt",
            DatasetSpec::Jsonl { .. } => "jsonl",
            DatasetSpec::Trace { .. } => "trace",
            DatasetSpec::Conversations { .. } => "conversations",
        }
    }

    /// Whether the prompts are generated (and so can be salted per step), not read from a
    /// file.
    pub fn is_generated(&self) -> bool {
        matches!(
            self,
            DatasetSpec::Random { .. }
                | DatasetSpec::SharedPrefix { .. }
                | DatasetSpec::Trace { .. }
                | DatasetSpec::Conversations { path: None, .. }
        )
    }
}

/// API flavour of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// An external harness command.
    Command,
}

/// Arrival process for rate mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Exponential gaps.
    Poisson,
    /// Gamma-distributed gaps (see `burstiness`).
    Gamma,
    /// Equal gaps.
    Constant,
}

/// One load point of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadPoint {
    /// Fixed number of requests in flight.
    Concurrency(u32),
    /// Requests per second; `f64::INFINITY` sends all at once.
    Rate {
        /// Requests per second.
        rps: f64,
        /// Arrival process.
        arrival: Arrival,
        /// Gamma shape (1.0 = Poisson); only for `Gamma`.
        burstiness: Option<f64>,
    },
    /// A trace's own arrivals, this many times faster.
    TimeScale(f64),
    /// A capacity search: the step runs probes at loads it chooses (docs/capacity.md).
    Search(SearchLoad),
}

/// A capacity search of a workload: bounds, budget, goal, and the arrival process of rate
/// probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchLoad {
    /// What is varied, the bounds and the budget.
    pub spec: evalctl_results::search::SearchSpec,
    /// What a probe must show to pass.
    pub goal: evalctl_results::probe::Goal,
    /// Arrival process of rate probes.
    pub arrival: Arrival,
    /// Gamma shape, with `Gamma` arrivals.
    pub burstiness: Option<f64>,
}

impl fmt::Display for LoadPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadPoint::Concurrency(n) => write!(f, "c={n}"),
            LoadPoint::Rate { rps, .. } if rps.is_infinite() => f.write_str("rate=inf"),
            LoadPoint::Rate { rps, .. } => write!(f, "rate={rps}"),
            LoadPoint::TimeScale(x) => write!(f, "x{x}"),
            LoadPoint::Search(search) => {
                let axis = match search.spec.axis {
                    evalctl_results::search::SearchAxis::Concurrency => "c",
                    evalctl_results::search::SearchAxis::Rate => "rate",
                };
                write!(f, "search {axis}={}..{}", search.spec.min, search.spec.max)
            }
        }
    }
}

/// When a step stops sending requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCondition {
    /// After this many measured requests.
    Requests(u64),
    /// After this long, in milliseconds.
    DurationMs(u64),
}

/// Service level objectives for goodput.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Time per output token, ms.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency, ms.
    pub e2el_ms: Option<f64>,
}

/// A workload as steps run it (one load point is chosen per step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Workload name from the matrix.
    pub name: String,
    /// API flavour.
    pub api: Api,
    /// Prompt source; `None` for `command` workloads.
    pub dataset: Option<DatasetSpec>,
    /// Seed for prompts and arrivals.
    pub seed: u64,
    /// When to stop.
    pub stop: StopCondition,
    /// Requests before measuring.
    pub warmup: u64,
    /// Objectives for goodput.
    pub slo: Slo,
    /// Harness command template for `command` workloads.
    pub command: Option<String>,
    /// Metric name → JSON pointer into the harness output, for `command` workloads.
    pub metrics: BTreeMap<String, String>,
    /// How a warm server's prefix cache is kept out of each step; `None` = the default
    /// (`reset`). Left out of the serialised form when `None`, so adding it changed no id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache: Option<PrefixCachePolicy>,
    /// How the agent reads a `command` workload's output beyond its `metrics` pointers;
    /// `None`: by the pointers only. Left out of the serialised form when `None`, so adding
    /// it changed no id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessOutput>,
}

/// A harness whose output the agent parses into accuracy scores itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HarnessOutput {
    /// lm-evaluation-harness's results JSON (an `api: lm-eval` workload).
    LmEval,
}

impl HarnessOutput {
    /// The name on the wire (`WorkloadSpec.harness`).
    pub fn as_str(self) -> &'static str {
        match self {
            HarnessOutput::LmEval => "lm-eval",
        }
    }
}

/// One step of a unit: a workload at one load point, one repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    /// Stable id.
    pub id: StepId,
    /// Position in the unit's run order, from 0.
    pub index: u32,
    /// The workload.
    pub workload: WorkloadSpec,
    /// The load point.
    pub load: LoadPoint,
    /// Repeat number, from 0.
    pub repeat: u32,
}

impl StepSpec {
    /// Builds a step, deriving its id from the unit id and the step's content.
    pub fn new(
        unit: &UnitId,
        index: u32,
        workload: WorkloadSpec,
        load: LoadPoint,
        repeat: u32,
    ) -> Self {
        let id = StepId(stable_hash("s-", &(unit, &workload, &load, repeat)));
        StepSpec {
            id,
            index,
            workload,
            load,
            repeat,
        }
    }

    /// Human label, e.g. `chat c=16 #0`.
    pub fn label(&self) -> String {
        format!("{} {} #{}", self.workload.name, self.load, self.repeat)
    }
}

/// A unit of work: one server configuration and the steps run on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Stable id (hash of `config`).
    pub id: UnitId,
    /// Server configuration.
    pub config: UnitConfig,
    /// Steps in run order.
    pub steps: Vec<StepSpec>,
}

/// Why a combination did not become a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropKind {
    /// Matched an `exclude` entry.
    Excluded,
    /// Weights do not fit in the GPUs' memory.
    Pruned,
}

impl fmt::Display for DropKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropKind::Excluded => "excluded",
            DropKind::Pruned => "pruned",
        })
    }
}

/// A combination the expansion dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    /// Label of the combination, as [`UnitConfig::label`] writes it.
    pub label: String,
    /// Excluded or pruned.
    pub kind: DropKind,
    /// Why, e.g. `weights need 168.0 GB, 1 x H100-80GB has 80 GB`.
    pub reason: String,
}

/// Campaign-level settings from the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignSpec {
    /// Campaign name (unique in a coordinator).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts a unit gets for its own failures.
    pub max_attempts: u32,
}

/// The result of expanding a matrix file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expansion {
    /// Campaign settings.
    pub campaign: CampaignSpec,
    /// Units in a deterministic order.
    pub units: Vec<Unit>,
    /// Combinations dropped by `exclude` or fit pruning.
    pub dropped: Vec<Dropped>,
}

impl Expansion {
    /// Total steps over all units.
    pub fn step_count(&self) -> usize {
        self.units.iter().map(|u| u.steps.len()).sum()
    }

    /// Capacity search steps, and the most probe runs they can add between them (each
    /// search adds its probe runs as steps while it runs; docs/capacity.md).
    pub fn search_bounds(&self) -> (usize, u64) {
        self.units
            .iter()
            .flat_map(|u| &u.steps)
            .filter_map(|s| match &s.load {
                LoadPoint::Search(search) => Some(u64::from(search.spec.max_runs())),
                _ => None,
            })
            .fold((0, 0), |(n, runs), r| (n + 1, runs + r))
    }

    /// Refuses an expansion with no unit to run: stored, it would succeed at once and pass
    /// for a benchmark that ran. `allow_empty` (`--allow-empty`) lets it through.
    pub fn check_not_empty(&self, allow_empty: bool) -> Result<(), EmptyCampaign> {
        if allow_empty || !self.units.is_empty() {
            return Ok(());
        }
        let count = |kind: DropKind| self.dropped.iter().filter(|d| d.kind == kind).count();
        Err(EmptyCampaign {
            campaign: self.campaign.name.clone(),
            excluded: count(DropKind::Excluded),
            pruned: count(DropKind::Pruned),
        })
    }
}

/// A campaign whose matrix leaves nothing to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "campaign `{campaign}` has nothing to run: {excluded} combinations excluded by `exclude`, \
     {pruned} pruned because their weights do not fit (hint: `evalctl submit --dry-run` lists \
     them; fix the matrix, or pass --allow-empty to store it anyway)"
)]
pub struct EmptyCampaign {
    /// The campaign.
    pub campaign: String,
    /// Combinations an `exclude` entry removed.
    pub excluded: usize,
    /// Combinations fit pruning removed.
    pub pruned: usize,
}

// ---- agents and leases ----

/// A GPU an agent reported when it registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentGpu {
    /// Index on the host (what `CUDA_VISIBLE_DEVICES` takes).
    pub index: u32,
    /// The GPU's UUID.
    pub uuid: String,
    /// Normalised type, e.g. `H100-80GB`; matched against units' `gpu.gpu_type`
    /// ignoring case.
    pub gpu_type: String,
    /// Name as the driver reports it.
    pub name: String,
    /// Memory in GB. Rows written before registrations were checked may hold `null` (a NaN
    /// or infinite report); they read as 0, so one bad report cannot break every reader.
    #[serde(deserialize_with = "null_as_zero")]
    pub memory_gb: f64,
}

/// A JSON number, or `null` read as 0.
fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(0.0))
}

/// What an agent announces about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    /// Stable id.
    pub id: AgentId,
    /// Host name.
    pub hostname: String,
    /// GPUs of the host.
    pub gpus: Vec<AgentGpu>,
    /// Labels units may require (`key = value`).
    pub labels: BTreeMap<String, String>,
    /// Frameworks the host can launch; empty = any.
    pub frameworks: Vec<String>,
    /// Agent version.
    pub version: String,
    /// NVIDIA driver version, empty when unknown.
    pub driver_version: String,
    /// CUDA version, empty when unknown.
    pub cuda_version: String,
}

#[cfg(test)]
impl AgentRegistration {
    /// A CPU-only agent `id` on host `hostname`, for tests.
    pub(crate) fn cpu_only(id: &str, hostname: &str) -> AgentRegistration {
        AgentRegistration {
            id: AgentId(id.to_owned()),
            hostname: hostname.to_owned(),
            gpus: vec![],
            labels: Default::default(),
            frameworks: vec![],
            version: "0".into(),
            driver_version: String::new(),
            cuda_version: String::new(),
        }
    }
}

/// An agent asking for work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Who asks.
    pub agent: AgentId,
    /// GPU indices the agent has free now (GPUs its live leases hold are never granted
    /// again, whatever it sends).
    pub free_gpu_indices: Vec<u32>,
    /// Configurations the agent has a warm server for (unit ids = config hashes).
    pub warm_configs: Vec<UnitId>,
    /// CPU-only units the agent can start now; 0 = none.
    pub cpu_slots_free: u32,
}

/// One finished step, as an agent reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedResult {
    /// The step.
    pub step_id: StepId,
    /// Step metrics (a JSON document).
    pub result_json: String,
    /// The environment the step ran in (a JSON document).
    pub environment_json: String,
    /// zstd-compressed JSON Lines of per-request records; empty when none.
    pub records_zstd: Vec<u8>,
    /// Records (lines) in `records_zstd`.
    pub record_count: u64,
    /// zstd-compressed JSON Lines of the step's raw telemetry samples; empty when none.
    pub telemetry_zstd: Vec<u8>,
    /// Samples (lines) in `telemetry_zstd`.
    pub telemetry_count: u64,
    /// When the step finished, Unix ms (the agent's clock).
    pub finished_at_ms: i64,
}

/// A batch of step results. Idempotency key of each result: (unit, step, attempt,
/// sequence).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultBatch {
    /// The lease the results were produced under (finds the unit).
    pub lease: LeaseId,
    /// The lease's epoch (fencing token).
    pub epoch: u64,
    /// The unit, as the agent knows it (checked against the lease's unit).
    pub unit: UnitId,
    /// Attempt number the lease carried.
    pub attempt: u32,
    /// The agent's sequence number of the batch within the attempt.
    pub sequence: u64,
    /// The results.
    pub results: Vec<ReportedResult>,
}

/// Why an agent gives a lease back without failing its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The host is being preempted (spot interruption).
    Preempted,
    /// Anything else the agent says: `drain`, `shutdown`, `partition`, …
    Other(String),
}

impl ReleaseReason {
    /// `preempted` is a preemption; any other text is a plain release.
    pub fn parse(reason: &str) -> ReleaseReason {
        if reason == "preempted" {
            ReleaseReason::Preempted
        } else {
            ReleaseReason::Other(reason.to_owned())
        }
    }
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseReason::Preempted => f.write_str("preempted"),
            ReleaseReason::Other(reason) => f.write_str(reason),
        }
    }
}
