//! The matrix file as typed values, each carrying the position it came from so that
//! checks after reading (references, duplicates, placeholders) can point at the file.
//!
//! [`super::decode`] builds these from the YAML tree; [`super::validate`] checks them
//! against each other; [`super::expand`] turns them into units.

use std::collections::BTreeMap;
use std::fmt;

use crate::domain::{
    Api, ContainerSpec, DatasetSpec, Layout, LoadPoint, PrefixCachePolicy, Slo, StopCondition,
};

use super::fit::Architecture;
use super::lm_eval::LmEvalEntry;
use super::yaml::Pos;

/// A value and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct At<T> {
    /// The value.
    pub value: T,
    /// Its position.
    pub pos: Pos,
    /// Byte range of its source text, for strings (to point inside them).
    pub span: Option<(usize, usize)>,
}

impl<T> At<T> {
    /// A value at `pos` with no source range.
    pub(crate) fn new(value: T, pos: Pos) -> Self {
        At {
            value,
            pos,
            span: None,
        }
    }
}

/// The whole matrix file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MatrixFile {
    /// Position of the top-level mapping.
    pub pos: Pos,
    /// `campaign`.
    pub campaign: At<String>,
    /// `description`.
    pub description: Option<String>,
    /// `priority`.
    pub priority: i32,
    /// `repeats`.
    pub repeats: u32,
    /// `max_attempts`.
    pub max_attempts: u32,
    /// `seed`.
    pub seed: u64,
    /// `models`.
    pub models: Vec<ModelEntry>,
    /// `gpus`; one implicit `cpu` entry when the file has none.
    pub gpus: Vec<GpuEntry>,
    /// `frameworks`.
    pub frameworks: Vec<FrameworkEntry>,
    /// `quantizations`.
    pub quantizations: Vec<QuantEntry>,
    /// `workloads`.
    pub workloads: Vec<WorkloadEntry>,
    /// `layouts`: how units spread over their GPUs (none: tensor parallel over all).
    pub layouts: Vec<At<Layout>>,
    /// `exclude`.
    pub exclude: Vec<MatchEntry>,
    /// `include`.
    pub include: Vec<IncludeEntry>,
}

/// One entry of `models`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelEntry {
    /// Position of the entry.
    pub pos: Pos,
    /// `name`.
    pub name: At<String>,
    /// `path` (may hold `${VAR}`, `~` and `{quant.name}`).
    pub path: At<String>,
    /// `params_b`.
    pub params_b: Option<f64>,
    /// `tokenizer` (may hold `${VAR}` and `~`).
    pub tokenizer: Option<At<String>>,
    /// `arch`: what the KV cache holds per token.
    pub arch: Option<Architecture>,
    /// `arch.experts`: routed experts of a mixture-of-experts model.
    pub experts: Option<u32>,
}

/// One entry of `gpus`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GpuEntry {
    /// Position of the entry.
    pub pos: Pos,
    /// `type`; `cpu` for CPU-only units.
    pub gpu_type: At<String>,
    /// `memory_gb` (optional only for `cpu`).
    pub memory_gb: Option<f64>,
    /// `counts`.
    pub counts: Vec<At<u32>>,
    /// `price_per_hour`.
    pub price_per_hour: Option<f64>,
}

/// The GPU type of CPU-only units.
pub(crate) const CPU: &str = "cpu";

/// One entry of `frameworks`, as written (presets not yet applied).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FrameworkEntry {
    /// Position of the entry.
    pub pos: Pos,
    /// `name`.
    pub name: At<String>,
    /// `preset`.
    pub preset: Option<At<String>>,
    /// `command`.
    pub command: Option<At<String>>,
    /// `health`.
    pub health: Option<At<String>>,
    /// `metrics`.
    pub metrics: Option<At<String>>,
    /// `startup_timeout`, in milliseconds.
    pub startup_timeout_ms: Option<u64>,
    /// `env`.
    pub env: BTreeMap<String, String>,
    /// `image`.
    pub image: Option<String>,
    /// `container`, defaults applied; set exactly when `image` is.
    pub container: Option<ContainerSpec>,
}

/// One entry of `quantizations`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantEntry {
    /// Position of the entry.
    pub pos: Pos,
    /// `name`.
    pub name: At<String>,
    /// `bits`.
    pub bits: f64,
    /// `kv_bits`: bits per KV-cache element (16 when absent).
    pub kv_bits: Option<f64>,
    /// `args`: framework name → arguments, in file order.
    pub args: Vec<(At<String>, String)>,
}

/// One entry of `workloads`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkloadEntry {
    /// Position of the entry.
    pub pos: Pos,
    /// `name`.
    pub name: At<String>,
    /// `api`.
    pub api: Api,
    /// `dataset` (paths not yet expanded); `None` for `api: command`.
    pub dataset: Option<At<DatasetSpec>>,
    /// `load`, one point per value.
    pub load: Vec<LoadPoint>,
    /// `requests` / `duration`.
    pub stop: StopCondition,
    /// `warmup`.
    pub warmup: u64,
    /// `slo`.
    pub slo: Slo,
    /// `seed`.
    pub seed: Option<u64>,
    /// `command`.
    pub command: Option<At<String>>,
    /// `metrics`.
    pub metrics: BTreeMap<String, String>,
    /// `prefix_cache`.
    pub prefix_cache: Option<PrefixCachePolicy>,
    /// `lm_eval`, for `api: lm-eval` (whose `api` reads [`Api::Command`]: its command is
    /// written from these settings).
    pub lm_eval: Option<LmEvalEntry>,
}

/// A matrix dimension, as `exclude` and `include` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Dim {
    /// `model`.
    Model,
    /// `gpu` (the GPU type).
    Gpu,
    /// `gpu.count`.
    GpuCount,
    /// `framework`.
    Framework,
    /// `quantization`.
    Quantization,
}

impl Dim {
    /// All dimensions, in the order of a unit label.
    pub(crate) const ALL: [Dim; 5] = [
        Dim::Model,
        Dim::Gpu,
        Dim::GpuCount,
        Dim::Framework,
        Dim::Quantization,
    ];

    /// The key that names the dimension in the file.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Dim::Model => "model",
            Dim::Gpu => "gpu",
            Dim::GpuCount => "gpu.count",
            Dim::Framework => "framework",
            Dim::Quantization => "quantization",
        }
    }

    /// The dimension a key names.
    pub(crate) fn from_key(key: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.key() == key)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The value an `exclude`/`include` entry gives a dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DimValue {
    /// A name (model, GPU type, framework, quantization).
    Name(String),
    /// A GPU count.
    Count(u32),
}

impl fmt::Display for DimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DimValue::Name(n) => f.write_str(n),
            DimValue::Count(c) => write!(f, "{c}"),
        }
    }
}

/// The dimension keys of an `exclude` or `include` entry, in file order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MatchEntry {
    /// Position of the entry.
    pub pos: Pos,
    /// Index in its list.
    pub index: usize,
    /// Dimension → value.
    pub dims: Vec<(Dim, At<DimValue>)>,
}

impl MatchEntry {
    /// `model=a, gpu.count=2`, in dimension order whatever the order in the file (the
    /// text goes into `Dropped::reason`, which must not depend on key order).
    pub(crate) fn describe(&self) -> String {
        let mut dims: Vec<_> = self.dims.iter().collect();
        dims.sort_by_key(|(d, _)| *d);
        dims.iter()
            .map(|(d, v)| format!("{d}={}", v.value))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One entry of `include`: dimension keys plus the values it adds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IncludeEntry {
    /// The dimension keys.
    pub matcher: MatchEntry,
    /// `extra_args`.
    pub extra_args: Option<At<String>>,
    /// `env`.
    pub env: Option<BTreeMap<String, String>>,
    /// `labels`.
    pub labels: Option<BTreeMap<String, String>>,
    /// `workloads`.
    pub workloads: Option<Vec<At<String>>>,
}
