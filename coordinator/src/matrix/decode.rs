//! Reads the YAML tree into the typed [`MatrixFile`]: the shape of the file. Every mapping
//! rejects keys it does not know (with a "did you mean" hint), every value is checked for
//! its type and range, required keys must be present, and each error points at the key or
//! value at fault. Checks across entries (names, references, placeholders) come after, in
//! [`super::validate`].

use std::collections::BTreeMap;

use evalctl_results::search::SearchAxis;

use crate::domain::{
    Api, Arrival, ContainerNetwork, ContainerSpec, DatasetSpec, KvCacheDtype, Layout, LoadPoint,
    PrefixCachePolicy, PrefixDistribution, PullPolicy, Sampled, Slo, Speculative,
    SpeculativeMethod, StopCondition,
};

use super::error::{Errors, MatrixError, quoted_list};
use super::fit::Architecture;
use super::lm_eval::LmEvalEntry;
use super::model::{
    At, CPU, Dim, DimValue, FrameworkEntry, GpuEntry, IncludeEntry, MatchEntry, MatrixFile,
    ModelEntry, QuantEntry, WorkloadEntry,
};
use super::yaml::{Key, Node, Pos, Source, Value};

mod lm_eval;
mod search;

const TOP_KEYS: &[&str] = &[
    "campaign",
    "description",
    "priority",
    "repeats",
    "max_attempts",
    "seed",
    "models",
    "gpus",
    "frameworks",
    "quantizations",
    "workloads",
    "layouts",
    "exclude",
    "include",
];
const LAYOUT_KEYS: &[&str] = &[
    "tp",
    "pp",
    "dp",
    "ep",
    "max_num_seqs",
    "max_model_len",
    "kv_cache_dtype",
    "speculative",
];
const SPECULATIVE_KEYS: &[&str] = &["method", "draft_model", "tokens"];
const SPECULATIVE_METHODS: &[(SpeculativeMethod, &str)] = &[
    (SpeculativeMethod::Eagle, "eagle"),
    (SpeculativeMethod::Eagle3, "eagle3"),
    (SpeculativeMethod::Ngram, "ngram"),
    (SpeculativeMethod::Mtp, "mtp"),
];
/// Tokens a speculative method proposes per step when the layout names none.
const DEFAULT_SPECULATIVE_TOKENS: u32 = 3;
const KV_CACHE_DTYPES: &[(KvCacheDtype, &str)] =
    &[(KvCacheDtype::Auto, "auto"), (KvCacheDtype::Fp8, "fp8")];
const MODEL_KEYS: &[&str] = &["name", "path", "params_b", "tokenizer", "arch"];
const ARCH_KEYS: &[&str] = &[
    "layers",
    "kv_heads",
    "head_dim",
    "kv_lora_rank",
    "rope_head_dim",
    "experts",
];
const GPU_KEYS: &[&str] = &["type", "memory_gb", "counts", "price_per_hour"];
const FRAMEWORK_KEYS: &[&str] = &[
    "name",
    "preset",
    "command",
    "health",
    "metrics",
    "startup_timeout",
    "env",
    "image",
    "container",
];
const CONTAINER_KEYS: &[&str] = &["pull", "pull_timeout", "network", "shm_size", "run_options"];
/// Options of a container `create` that evalctl sets itself, with the key that sets each.
const MANAGED_RUN_OPTIONS: &[(&str, &str)] = &[
    (
        "--name",
        "evalctl names each container after its unit and launch",
    ),
    (
        "--entrypoint",
        "the framework's `command` is the entrypoint",
    ),
    ("--network", "set `container.network`"),
    ("--net", "set `container.network`"),
    ("--publish", "set `container.network: publish`"),
    ("-p", "set `container.network: publish`"),
    (
        "--ipc",
        "the host's IPC namespace is the default; `container.shm_size` makes a private one",
    ),
    ("--shm-size", "set `container.shm_size`"),
    ("--gpus", "the unit's GPUs are passed from its lease"),
    ("--rm", "evalctl removes each container itself"),
    ("--detach", "evalctl attaches to each container for its log"),
    ("-d", "evalctl attaches to each container for its log"),
];
const QUANT_KEYS: &[&str] = &["name", "bits", "kv_bits", "args"];
const WORKLOAD_KEYS: &[&str] = &[
    "name",
    "api",
    "dataset",
    "load",
    "requests",
    "duration",
    "warmup",
    "slo",
    "seed",
    "command",
    "metrics",
    "prefix_cache",
    "lm_eval",
];
const COMMAND_ONLY_KEYS: &[&str] = &["command", "metrics"];
const NOT_FOR_COMMAND_KEYS: &[&str] = &["dataset", "requests", "warmup", "slo", "prefix_cache"];
const RANDOM_KEYS: &[&str] = &["kind", "input_tokens", "output_tokens"];
const FILE_DATASET_KEYS: &[&str] = &["kind", "path", "output_tokens"];
const SHARED_PREFIX_KEYS: &[&str] = &[
    "kind",
    "prefixes",
    "prefix_tokens",
    "suffix_tokens",
    "output_tokens",
    "distribution",
    "zipf_exponent",
];
const TRACE_KEYS: &[&str] = &["kind", "path", "block_tokens", "start", "end"];
const CONVERSATION_FILE_KEYS: &[&str] =
    &["kind", "path", "max_turns", "output_tokens", "think_time"];
const CONVERSATION_SYNTHETIC_KEYS: &[&str] = &[
    "kind",
    "turns",
    "input_tokens",
    "first_input_tokens",
    "output_tokens",
    "think_time",
];
const SAMPLED_KEYS: &[&str] = &["min", "max", "mean", "stddev", "distribution"];
const DATASET_KINDS: &[&str] = &[
    "random",
    "shared_prefix",
    "sharegpt",
    "jsonl",
    "trace",
    "conversations",
];
/// What a sampled matrix value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampledUnit {
    /// Turns or tokens: numbers of at least 1.
    Count,
    /// Think times: durations of at least zero.
    Seconds,
}

/// Tokens per hash id when a trace names none (Mooncake's block).
const DEFAULT_TRACE_BLOCK_TOKENS: u32 = 512;
/// Requests a trace workload replays when it names neither `requests` nor `duration`: the
/// agent prepares at most this many prompts.
pub(crate) const MAX_TRACE_REQUESTS: u64 = 10_000;
const PREFIX_CACHE_POLICIES: &[(PrefixCachePolicy, &str)] = &[
    (PrefixCachePolicy::Reset, "reset"),
    (PrefixCachePolicy::Salt, "salt"),
    (PrefixCachePolicy::Keep, "keep"),
];
/// The Zipf exponent when `distribution: zipf` names none.
const DEFAULT_ZIPF_EXPONENT: f64 = 1.0;
const LOAD_KEYS: &[&str] = &[
    "concurrency",
    "rate",
    "time_scale",
    "search",
    "arrival",
    "burstiness",
];
const SLO_KEYS: &[&str] = &["ttft_ms", "tpot_ms", "e2el_ms"];
const APIS: &[&str] = &["chat", "completions", "command", "lm-eval"];
const ARRIVALS: &[&str] = &["poisson", "gamma", "constant"];
const EXTENSION_KEYS: &[&str] = &["extra_args", "env", "labels", "workloads"];

/// A size as container runtimes take it: digits and an optional unit (`b`, `k`, `m`, `g`).
fn is_size(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| "bkmgBKMG".contains(c));
    !digits.is_empty()
        && text.len() - digits.len() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

/// Longest name the matrix accepts.
const MAX_NAME_LEN: usize = 128;
/// Largest `bits` value.
const MAX_BITS: f64 = 64.0;
/// How long an `api: command` harness may run when the workload gives no `duration`.
pub(crate) const DEFAULT_HARNESS_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// Reads the whole file.
pub(crate) fn decode(
    errors: &Errors,
    source: &Source<'_>,
    root: &Node,
) -> Result<MatrixFile, MatrixError> {
    let d = Decoder { errors, source };
    if !matches!(root.value, Value::Map(_)) {
        return Err(errors.at(
            root.pos,
            format!(
                "expected a mapping with `campaign`, `models`, `frameworks`, … at the top level, found {}",
                root.describe()
            ),
        ));
    }
    let top = d.fields(root, "", TOP_KEYS)?;

    let campaign = d.name(&top.field("campaign"), top.req("campaign")?)?;
    let description = top
        .get("description")
        .map(|n| d.string(&top.field("description"), n))
        .transpose()?;
    let priority = top
        .get("priority")
        .map(|n| {
            d.int(
                &top.field("priority"),
                n,
                i128::from(i32::MIN),
                i128::from(i32::MAX),
            )
        })
        .transpose()?
        .map_or(0, |p| i32::try_from(p).unwrap_or_default());
    let repeats = top
        .get("repeats")
        .map(|n| d.uint32(&top.field("repeats"), n, 1))
        .transpose()?
        .unwrap_or(1);
    let max_attempts = top
        .get("max_attempts")
        .map(|n| d.uint32(&top.field("max_attempts"), n, 1))
        .transpose()?
        .unwrap_or(3);
    let seed = top
        .get("seed")
        .map(|n| d.uint64(&top.field("seed"), n, 0))
        .transpose()?
        .unwrap_or(0);

    let models = d.entries(&top, "models", true, |path, n| d.model(path, n))?;
    let gpus = match top.get("gpus") {
        None => vec![GpuEntry {
            pos: root.pos,
            gpu_type: At::new(CPU.to_owned(), root.pos),
            memory_gb: None,
            counts: vec![At::new(1, root.pos)],
            price_per_hour: None,
        }],
        Some(_) => d.entries(&top, "gpus", true, |path, n| d.gpu(path, n))?,
    };
    let frameworks = d.entries(&top, "frameworks", true, |path, n| d.framework(path, n))?;
    let quantizations = d.entries(&top, "quantizations", true, |path, n| {
        d.quantization(path, n)
    })?;
    let workloads = d.entries(&top, "workloads", true, |path, n| d.workload(path, n))?;
    let layouts = d.entries(&top, "layouts", false, |path, n| d.layout(path, n))?;
    if let Some((i, dup)) = layouts
        .iter()
        .enumerate()
        .find(|(i, l)| layouts[..*i].iter().any(|e| e.value == l.value))
    {
        return Err(errors.at(
            dup.pos,
            format!("`layouts[{i}]` ({}) is listed twice", dup.value),
        ));
    }
    let exclude = d.indexed_entries(&top, "exclude", |path, i, n| d.exclude(path, i, n))?;
    let include = d.indexed_entries(&top, "include", |path, i, n| d.include(path, i, n))?;

    Ok(MatrixFile {
        pos: root.pos,
        campaign,
        description: description.map(|d| d.value),
        priority,
        repeats,
        max_attempts,
        seed,
        models,
        gpus,
        frameworks,
        quantizations,
        workloads,
        layouts,
        exclude,
        include,
    })
}

/// The keys of one mapping, checked against the keys it may have.
struct Fields<'a> {
    path: String,
    pos: Pos,
    entries: &'a [(Key, Node)],
    errors: &'a Errors,
}

impl<'a> Fields<'a> {
    /// `path.key` (or `key` at the top level).
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The entry for `key`, null values included.
    fn entry(&self, key: &str) -> Option<&'a (Key, Node)> {
        self.entries.iter().find(|(k, _)| k.name == key)
    }

    /// The value of `key`; absent and `null` are the same.
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entry(key).map(|(_, v)| v).filter(|v| !v.is_null())
    }

    /// Where `key` is written, if it is.
    fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entry(key).map(|(k, _)| k.pos)
    }

    /// The value of a required key.
    fn req(&self, key: &str) -> Result<&'a Node, MatrixError> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    /// "missing required key" at the key (when written as null) or at the mapping.
    fn missing(&self, key: &str) -> MatrixError {
        let place = if self.path.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in `{}`", self.path)
        };
        let pos = self.key_pos(key).unwrap_or(self.pos);
        self.errors
            .at(pos, format!("missing required key `{key}` {place}"))
    }
}

struct Decoder<'a> {
    errors: &'a Errors,
    source: &'a Source<'a>,
}

impl Decoder<'_> {
    /// Opens a mapping, rejecting keys not in `allowed`.
    fn fields<'n>(
        &'n self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Result<Fields<'n>, MatrixError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.type_error(path, node, "a mapping"));
        };
        for (key, _) in entries {
            if !allowed.contains(&key.name.as_str()) {
                let place = if path.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in `{path}`")
                };
                return Err(self.errors.unknown(
                    key.pos,
                    &format!("key {place}:"),
                    &key.name,
                    allowed.iter().copied(),
                ));
            }
        }
        Ok(Fields {
            path: path.to_owned(),
            pos: node.pos,
            entries,
            errors: self.errors,
        })
    }

    fn type_error(&self, path: &str, node: &Node, expected: &str) -> MatrixError {
        let what = if path.is_empty() {
            String::new()
        } else {
            format!("`{path}`: ")
        };
        self.errors.at(
            node.pos,
            format!("{what}expected {expected}, found {}", node.describe()),
        )
    }

    /// A list under `key` of `top`, each entry read by `read`; `required` lists must be
    /// present and non-empty.
    fn entries<T>(
        &self,
        top: &Fields<'_>,
        key: &str,
        required: bool,
        mut read: impl FnMut(&str, &Node) -> Result<T, MatrixError>,
    ) -> Result<Vec<T>, MatrixError> {
        let node = if required {
            top.req(key)?
        } else {
            match top.get(key) {
                Some(n) => n,
                None => return Ok(Vec::new()),
            }
        };
        let items = self.list(key, node)?;
        if required && items.is_empty() {
            let hint = (key == "gpus").then_some("omit `gpus` for CPU-only units");
            return Err(self.errors.hinted(
                node.pos,
                format!("`{key}` must list at least one entry"),
                hint,
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| read(&format!("{key}[{i}]"), item))
            .collect()
    }

    /// An optional list whose reader needs the entry's index.
    fn indexed_entries<T>(
        &self,
        top: &Fields<'_>,
        key: &str,
        mut read: impl FnMut(&str, usize, &Node) -> Result<T, MatrixError>,
    ) -> Result<Vec<T>, MatrixError> {
        let Some(node) = top.get(key) else {
            return Ok(Vec::new());
        };
        self.list(key, node)?
            .iter()
            .enumerate()
            .map(|(i, item)| read(&format!("{key}[{i}]"), i, item))
            .collect()
    }

    fn list<'n>(&self, path: &str, node: &'n Node) -> Result<&'n [Node], MatrixError> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.type_error(path, node, "a list")),
        }
    }

    fn string(&self, path: &str, node: &Node) -> Result<At<String>, MatrixError> {
        match &node.value {
            Value::Str(s) => Ok(At {
                value: s.clone(),
                pos: node.pos,
                span: node.span,
            }),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => Err(self.errors.hinted(
                node.pos,
                format!("`{path}`: expected a string, found {}", node.describe()),
                Some("quote the value to make it a string"),
            )),
            _ => Err(self.type_error(path, node, "a string")),
        }
    }

    fn nonempty_string(&self, path: &str, node: &Node) -> Result<At<String>, MatrixError> {
        let s = self.string(path, node)?;
        if s.value.trim().is_empty() {
            return Err(self
                .errors
                .at(node.pos, format!("`{path}` must not be empty")));
        }
        Ok(s)
    }

    /// A name: letters, digits, `.`, `_` and `-`.
    fn name(&self, path: &str, node: &Node) -> Result<At<String>, MatrixError> {
        let s = match &node.value {
            // Plain numbers are fine as names (`name: 7b` is a string anyway).
            Value::Int(_) | Value::Float(_) => At {
                value: self.raw_text(node),
                pos: node.pos,
                span: node.span,
            },
            _ => self.string(path, node)?,
        };
        let bad = s
            .value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
        if s.value.is_empty() || s.value.len() > MAX_NAME_LEN || bad.is_some() {
            let found = match bad {
                Some(c) => format!("`{}` contains `{c}`", s.value),
                None if s.value.is_empty() => "it is empty".to_owned(),
                None => format!("it is longer than {MAX_NAME_LEN} characters"),
            };
            return Err(self.errors.at(
                node.pos,
                format!(
                    "`{path}` must be a name of letters, digits, `.`, `_` and `-` ([A-Za-z0-9._-]+, at most {MAX_NAME_LEN}); {found}"
                ),
            ));
        }
        Ok(s)
    }

    /// The source text of a scalar (its value's text when the source is unknown).
    fn raw_text(&self, node: &Node) -> String {
        match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            Value::Float(x) => node
                .span
                .and_then(|(a, b)| self.source_text(a, b))
                .unwrap_or_else(|| x.to_string()),
            Value::Seq(_) | Value::Map(_) => String::new(),
        }
    }

    fn source_text(&self, start: usize, end: usize) -> Option<String> {
        self.source
            .text()
            .get(start..end)
            .map(|t| t.trim().to_owned())
    }

    fn int(&self, path: &str, node: &Node, min: i128, max: i128) -> Result<i128, MatrixError> {
        let Value::Int(i) = node.value else {
            return Err(self.type_error(path, node, "an integer"));
        };
        if i < min {
            return Err(self.errors.at(
                node.pos,
                format!("`{path}` must be at least {min}, found {i}"),
            ));
        }
        if i > max {
            return Err(self.errors.at(
                node.pos,
                format!("`{path}` must be at most {max}, found {i}"),
            ));
        }
        Ok(i)
    }

    fn uint32(&self, path: &str, node: &Node, min: u32) -> Result<u32, MatrixError> {
        let i = self.int(path, node, i128::from(min), i128::from(u32::MAX))?;
        Ok(u32::try_from(i).expect("range checked"))
    }

    fn uint64(&self, path: &str, node: &Node, min: u64) -> Result<u64, MatrixError> {
        let i = self.int(path, node, i128::from(min), i128::from(u64::MAX))?;
        Ok(u64::try_from(i).expect("range checked"))
    }

    /// A finite number greater than zero (or at least zero when `allow_zero`).
    fn positive(&self, path: &str, node: &Node, allow_zero: bool) -> Result<f64, MatrixError> {
        let x = match node.value {
            #[expect(clippy::cast_precision_loss, reason = "matrix numbers are small")]
            Value::Int(i) => i as f64,
            Value::Float(x) => x,
            _ => return Err(self.type_error(path, node, "a number")),
        };
        let ok = x.is_finite() && (x > 0.0 || (allow_zero && x == 0.0));
        if !ok {
            let bound = if allow_zero {
                "at least 0"
            } else {
                "greater than 0"
            };
            return Err(self.errors.at(
                node.pos,
                format!("`{path}` must be {bound}, found {}", self.raw_text(node)),
            ));
        }
        Ok(x)
    }

    fn duration_ms(&self, path: &str, node: &Node) -> Result<u64, MatrixError> {
        let (duration, text) = self.duration(
            path,
            node,
            "a duration such as `20m`",
            "write a number with a unit, e.g. `90s`, `20m` or `1h 30m`",
        )?;
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err(self.errors.at(
                node.pos,
                format!("`{path}` must be longer than zero, found `{text}`"),
            ));
        }
        Ok(ms)
    }

    /// A mapping of strings to scalars (numbers and booleans kept as written).
    fn string_map(
        &self,
        path: &str,
        node: &Node,
        key_rule: Option<fn(&str) -> bool>,
    ) -> Result<BTreeMap<String, String>, MatrixError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.type_error(path, node, "a mapping"));
        };
        let mut out = BTreeMap::new();
        for (key, value) in entries {
            if let Some(rule) = key_rule
                && !rule(&key.name)
            {
                return Err(self.errors.at(
                    key.pos,
                    format!(
                        "`{path}`: `{}` is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                        key.name
                    ),
                ));
            }
            let text = match &value.value {
                Value::Str(s) => s.clone(),
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => self.raw_text(value),
                _ => {
                    return Err(self.type_error(
                        &format!("{path}.{}", key.name),
                        value,
                        "a string",
                    ));
                }
            };
            out.insert(key.name.clone(), text);
        }
        Ok(out)
    }

    fn model(&self, path: &str, node: &Node) -> Result<ModelEntry, MatrixError> {
        let f = self.fields(node, path, MODEL_KEYS)?;
        Ok(ModelEntry {
            pos: node.pos,
            name: self.name(&f.field("name"), f.req("name")?)?,
            path: self.nonempty_string(&f.field("path"), f.req("path")?)?,
            params_b: f
                .get("params_b")
                .map(|n| self.positive(&f.field("params_b"), n, false))
                .transpose()?,
            tokenizer: f
                .get("tokenizer")
                .map(|n| self.nonempty_string(&f.field("tokenizer"), n))
                .transpose()?,
            arch: f
                .get("arch")
                .map(|n| self.arch(&f.field("arch"), n))
                .transpose()?,
            experts: match f.get("arch") {
                Some(n) => {
                    let arch = self.fields(n, &f.field("arch"), ARCH_KEYS)?;
                    arch.get("experts")
                        .map(|e| self.uint32(&arch.field("experts"), e, 1))
                        .transpose()?
                }
                None => None,
            },
        })
    }

    /// One entry of `layouts`: `tp`, `pp`, `dp` and `ep`, each 1 when absent (experts are
    /// sharded over part of the `tp × dp` GPUs, so `ep` must divide that), and the engine
    /// settings `max_num_seqs`, `max_model_len` and `kv_cache_dtype`.
    fn layout(&self, path: &str, node: &Node) -> Result<At<Layout>, MatrixError> {
        let f = self.fields(node, path, LAYOUT_KEYS)?;
        let size = |key: &str| {
            f.get(key)
                .map(|n| self.uint32(&f.field(key), n, 1))
                .transpose()
                .map(|v| v.unwrap_or(1))
        };
        let setting = |key: &str| {
            f.get(key)
                .map(|n| self.uint32(&f.field(key), n, 1))
                .transpose()
        };
        let layout = Layout {
            tp: size("tp")?,
            pp: size("pp")?,
            dp: size("dp")?,
            ep: size("ep")?,
            max_num_seqs: setting("max_num_seqs")?,
            max_model_len: setting("max_model_len")?,
            kv_cache_dtype: f
                .get("kv_cache_dtype")
                .map(|n| self.choice(&f.field("kv_cache_dtype"), n, KV_CACHE_DTYPES))
                .transpose()?,
            speculative: f
                .get("speculative")
                .map(|n| self.speculative(&f.field("speculative"), n))
                .transpose()?,
        };
        let span = u64::from(layout.tp) * u64::from(layout.dp);
        if span % u64::from(layout.ep) != 0 {
            return Err(self.errors.hinted(
                f.key_pos("ep").unwrap_or(node.pos),
                format!(
                    "`{}` ({}) must divide tp × dp ({span}): experts are sharded over those GPUs",
                    f.field("ep"),
                    layout.ep
                ),
                Some("e.g. `{ tp: 8, ep: 8 }` or `{ tp: 4, dp: 2, ep: 8 }`"),
            ));
        }
        Ok(At::new(layout, node.pos))
    }

    /// A layout's `speculative`: `method`, `draft_model` (for EAGLE, and only then) and
    /// `tokens` per step.
    fn speculative(&self, path: &str, node: &Node) -> Result<Speculative, MatrixError> {
        let f = self.fields(node, path, SPECULATIVE_KEYS)?;
        let method = self.choice(&f.field("method"), f.req("method")?, SPECULATIVE_METHODS)?;
        let draft_model = f
            .get("draft_model")
            .map(|n| self.nonempty_string(&f.field("draft_model"), n))
            .transpose()?;
        match (method.needs_draft(), &draft_model) {
            (true, None) => return Err(f.missing("draft_model")),
            (false, Some(d)) => {
                return Err(self.errors.at(
                    d.pos,
                    format!(
                        "`{}`: `{}` proposes tokens without a draft model",
                        f.field("draft_model"),
                        method.as_str()
                    ),
                ));
            }
            _ => {}
        }
        Ok(Speculative {
            method,
            draft_model: draft_model.map(|d| d.value),
            tokens: f
                .get("tokens")
                .map(|n| self.uint32(&f.field("tokens"), n, 1))
                .transpose()?
                .unwrap_or(DEFAULT_SPECULATIVE_TOKENS),
        })
    }

    /// A model's `arch`: `layers` with `kv_heads` and `head_dim` (attention), or with
    /// `kv_lora_rank` and `rope_head_dim` (multi-head latent attention).
    fn arch(&self, path: &str, node: &Node) -> Result<Architecture, MatrixError> {
        let f = self.fields(node, path, ARCH_KEYS)?;
        let value = |key: &str| {
            f.get(key)
                .map(|n| self.uint32(&f.field(key), n, 1))
                .transpose()
        };
        let layers = self.uint32(&f.field("layers"), f.req("layers")?, 1)?;
        match (
            value("kv_heads")?,
            value("head_dim")?,
            value("kv_lora_rank")?,
            value("rope_head_dim")?,
        ) {
            (Some(kv_heads), Some(head_dim), None, None) => Ok(Architecture::Attention {
                layers,
                kv_heads,
                head_dim,
            }),
            (None, None, Some(kv_lora_rank), Some(rope_head_dim)) => Ok(Architecture::Latent {
                layers,
                kv_lora_rank,
                rope_head_dim,
            }),
            _ => Err(self.errors.hinted(
                node.pos,
                format!(
                    "`{path}` needs `layers` with either `kv_heads` and `head_dim`, or `kv_lora_rank` and `rope_head_dim`"
                ),
                Some("e.g. `arch: { layers: 80, kv_heads: 8, head_dim: 128 }`"),
            )),
        }
    }

    fn gpu(&self, path: &str, node: &Node) -> Result<GpuEntry, MatrixError> {
        let f = self.fields(node, path, GPU_KEYS)?;
        let mut gpu_type = self.name(&f.field("type"), f.req("type")?)?;
        let is_cpu = gpu_type.value.eq_ignore_ascii_case(CPU);
        if is_cpu {
            gpu_type.value = CPU.to_owned();
        }
        let memory_gb = match f.get("memory_gb") {
            Some(n) => Some(self.positive(&f.field("memory_gb"), n, false)?),
            None if is_cpu => None,
            None => {
                return Err(f.missing("memory_gb"));
            }
        };
        let counts = match f.get("counts") {
            Some(n) => {
                let items = self.list(&f.field("counts"), n)?;
                if items.is_empty() {
                    return Err(self.errors.at(
                        n.pos,
                        format!("`{}` must list at least one GPU count", f.field("counts")),
                    ));
                }
                let mut counts: Vec<At<u32>> = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let count = self.uint32(&format!("{}[{i}]", f.field("counts")), item, 1)?;
                    if counts.iter().any(|c| c.value == count) {
                        return Err(self.errors.at(
                            item.pos,
                            format!("`{}`: count {count} is listed twice", f.field("counts")),
                        ));
                    }
                    counts.push(At::new(count, item.pos));
                }
                counts
            }
            None if is_cpu => vec![At::new(1, node.pos)],
            None => return Err(f.missing("counts")),
        };
        Ok(GpuEntry {
            pos: node.pos,
            gpu_type,
            memory_gb,
            counts,
            price_per_hour: f
                .get("price_per_hour")
                .map(|n| self.positive(&f.field("price_per_hour"), n, true))
                .transpose()?,
        })
    }

    fn framework(&self, path: &str, node: &Node) -> Result<FrameworkEntry, MatrixError> {
        let f = self.fields(node, path, FRAMEWORK_KEYS)?;
        let url_path = |key: &str| -> Result<Option<At<String>>, MatrixError> {
            let Some(n) = f.get(key) else { return Ok(None) };
            let s = self.nonempty_string(&f.field(key), n)?;
            if !s.value.starts_with('/') {
                return Err(self.errors.hinted(
                    n.pos,
                    format!(
                        "`{}` must be a URL path starting with `/`, found `{}`",
                        f.field(key),
                        s.value
                    ),
                    Some(format!("write `/{}`", s.value)),
                ));
            }
            Ok(Some(s))
        };
        Ok(FrameworkEntry {
            pos: node.pos,
            name: self.name(&f.field("name"), f.req("name")?)?,
            preset: f
                .get("preset")
                .map(|n| self.string(&f.field("preset"), n))
                .transpose()?,
            command: f
                .get("command")
                .map(|n| self.nonempty_string(&f.field("command"), n))
                .transpose()?,
            health: url_path("health")?,
            metrics: url_path("metrics")?,
            startup_timeout_ms: f
                .get("startup_timeout")
                .map(|n| self.duration_ms(&f.field("startup_timeout"), n))
                .transpose()?,
            env: f
                .get("env")
                .map(|n| self.string_map(&f.field("env"), n, Some(is_env_name)))
                .transpose()?
                .unwrap_or_default(),
            image: f
                .get("image")
                .map(|n| self.nonempty_string(&f.field("image"), n))
                .transpose()?
                .map(|s| s.value),
            container: match (f.get("image"), f.get("container")) {
                (Some(_), Some(n)) => Some(self.container(&f.field("container"), n)?),
                (Some(_), None) => Some(ContainerSpec::default()),
                (None, Some(n)) => {
                    return Err(self.errors.hinted(
                        n.pos,
                        format!("`{}` needs an `image` to run", f.field("container")),
                        Some("add `image:` to the framework, or remove `container:`"),
                    ));
                }
                (None, None) => None,
            },
        })
    }

    /// A framework's `container` block, defaults applied.
    fn container(&self, path: &str, node: &Node) -> Result<ContainerSpec, MatrixError> {
        let f = self.fields(node, path, CONTAINER_KEYS)?;
        let mut spec = ContainerSpec::default();
        if let Some(n) = f.get("pull") {
            spec.pull = self.choice(&f.field("pull"), n, &PullPolicy::ALL)?;
        }
        if let Some(n) = f.get("pull_timeout") {
            spec.pull_timeout_ms = self.duration_ms(&f.field("pull_timeout"), n)?;
        }
        if let Some(n) = f.get("network") {
            spec.network = self.choice(&f.field("network"), n, &ContainerNetwork::ALL)?;
        }
        if let Some(n) = f.get("shm_size") {
            let size = match &n.value {
                Value::Int(_) => self.raw_text(n),
                _ => self.nonempty_string(&f.field("shm_size"), n)?.value,
            };
            if !is_size(&size) {
                return Err(self.errors.hinted(
                    n.pos,
                    format!(
                        "`{}`: expected a size such as `16g`, found `{size}`",
                        f.field("shm_size")
                    ),
                    Some("a number of bytes with an optional unit b, k, m or g"),
                ));
            }
            spec.shm_size = Some(size);
        }
        if let Some(n) = f.get("run_options") {
            for (i, item) in self.list(&f.field("run_options"), n)?.iter().enumerate() {
                let item_path = format!("{}[{i}]", f.field("run_options"));
                let option = self.nonempty_string(&item_path, item)?.value;
                let flag = option.split('=').next().unwrap_or_default();
                if let Some((_, why)) = MANAGED_RUN_OPTIONS.iter().find(|(name, _)| *name == flag) {
                    return Err(self.errors.hinted(
                        item.pos,
                        format!("`{item_path}`: `{flag}` is set by evalctl"),
                        Some(*why),
                    ));
                }
                spec.run_options.push(option);
            }
        }
        Ok(spec)
    }

    /// One of `choices`, by its spelling.
    fn choice<T: Copy>(
        &self,
        path: &str,
        node: &Node,
        choices: &[(T, &'static str)],
    ) -> Result<T, MatrixError> {
        let s = self.string(path, node)?;
        choices
            .iter()
            .find(|(_, name)| *name == s.value)
            .map(|(value, _)| *value)
            .ok_or_else(|| {
                self.errors.unknown(
                    node.pos,
                    &format!("`{path}` value"),
                    &s.value,
                    choices.iter().map(|(_, name)| *name),
                )
            })
    }

    fn quantization(&self, path: &str, node: &Node) -> Result<QuantEntry, MatrixError> {
        let f = self.fields(node, path, QUANT_KEYS)?;
        let name = self.name(&f.field("name"), f.req("name")?)?;
        let bits_node = f.req("bits")?;
        let bits = self.positive(&f.field("bits"), bits_node, false)?;
        if bits > MAX_BITS {
            return Err(self.errors.at(
                bits_node.pos,
                format!(
                    "`{}` must be at most {MAX_BITS}, found {bits}",
                    f.field("bits")
                ),
            ));
        }
        let mut args = Vec::new();
        if let Some(n) = f.get("args") {
            let Value::Map(entries) = &n.value else {
                return Err(self.type_error(
                    &f.field("args"),
                    n,
                    "a mapping of framework name to arguments",
                ));
            };
            for (key, value) in entries {
                let text = match &value.value {
                    Value::Null => String::new(),
                    _ => {
                        self.string(&format!("{}.{}", f.field("args"), key.name), value)?
                            .value
                    }
                };
                args.push((At::new(key.name.clone(), key.pos), text));
            }
        }
        let kv_bits = match f.get("kv_bits") {
            Some(n) => {
                let kv = self.positive(&f.field("kv_bits"), n, false)?;
                if kv > MAX_BITS {
                    return Err(self.errors.at(
                        n.pos,
                        format!(
                            "`{}` must be at most {MAX_BITS}, found {kv}",
                            f.field("kv_bits")
                        ),
                    ));
                }
                Some(kv)
            }
            None => None,
        };
        Ok(QuantEntry {
            pos: node.pos,
            name,
            bits,
            kv_bits,
            args,
        })
    }

    fn workload(&self, path: &str, node: &Node) -> Result<WorkloadEntry, MatrixError> {
        let f = self.fields(node, path, WORKLOAD_KEYS)?;
        let name = self.name(&f.field("name"), f.req("name")?)?;
        let mut is_lm_eval = false;
        let api = match f.get("api") {
            None => Api::Chat,
            Some(n) => {
                let s = self.string(&f.field("api"), n)?;
                match s.value.as_str() {
                    "chat" => Api::Chat,
                    "completions" => Api::Completions,
                    "command" => Api::Command,
                    "lm-eval" => {
                        is_lm_eval = true;
                        Api::Command
                    }
                    other => {
                        return Err(self.errors.unknown(
                            n.pos,
                            &format!("`{}` value", f.field("api")),
                            other,
                            APIS.iter().copied(),
                        ));
                    }
                }
            }
        };
        let is_command = api == Api::Command;
        let lm_eval = self.lm_eval_settings(&f, is_lm_eval)?;
        let api_name = if is_lm_eval { "lm-eval" } else { "command" };
        let misplaced = if is_command {
            NOT_FOR_COMMAND_KEYS.iter().find(|k| f.get(k).is_some())
        } else {
            COMMAND_ONLY_KEYS.iter().find(|k| f.get(k).is_some())
        };
        if let Some(key) = misplaced {
            let pos = f.key_pos(key).unwrap_or(node.pos);
            let message = if is_command {
                format!("`{}` is not used with `api: {api_name}`", f.field(key))
            } else {
                format!("`{}` is only used with `api: command`", f.field(key))
            };
            return Err(self.errors.at(pos, message));
        }

        let dataset = if is_command {
            None
        } else {
            Some(self.dataset(&f.field("dataset"), f.req("dataset")?)?)
        };
        let prefix_cache = f
            .get("prefix_cache")
            .map(|n| self.choice(&f.field("prefix_cache"), n, PREFIX_CACHE_POLICIES))
            .transpose()?;
        if let (Some(PrefixCachePolicy::Salt), Some(d)) = (prefix_cache, &dataset)
            && !d.value.is_generated()
        {
            return Err(self.errors.hinted(
                f.key_pos("prefix_cache").unwrap_or(node.pos),
                format!(
                    "`{}: salt` needs generated prompts, and `{}` is read from a file whose prompts evalctl does not change",
                    f.field("prefix_cache"),
                    f.field("dataset"),
                ),
                Some("use `reset` (the server empties its cache) or `keep`"),
            ));
        }
        // A trace dataset and a `time_scale` load go together, and a trace has no warmup.
        let is_trace = matches!(
            dataset.as_ref().map(|d| &d.value),
            Some(DatasetSpec::Trace { .. })
        );
        if is_trace && let Some(pos) = f.get("warmup").and(f.key_pos("warmup")) {
            return Err(self.errors.hinted(
                pos,
                format!(
                    "`{}` is not used with a trace: it replays its requests as recorded",
                    f.field("warmup")
                ),
                Some("remove `warmup`, or cut the start of the trace with the dataset's `start`"),
            ));
        }
        let load = match f.get("load") {
            Some(n) => self.load(&f.field("load"), n)?,
            None if is_command => vec![LoadPoint::Concurrency(1)],
            None => return Err(f.missing("load")),
        };
        let scaled = load.iter().any(|p| matches!(p, LoadPoint::TimeScale(_)));
        if scaled != is_trace {
            let message = if is_trace {
                format!(
                    "`{}` of a trace dataset must be `time_scale`: the trace says when requests arrive",
                    f.field("load")
                )
            } else {
                format!(
                    "`{}`: `time_scale` replays a trace; `{}` is not one",
                    f.field("load.time_scale"),
                    f.field("dataset")
                )
            };
            return Err(self.errors.hinted(
                f.key_pos("load").unwrap_or(node.pos),
                message,
                Some("e.g. `dataset: { kind: trace, path: mooncake.jsonl }` with `load: { time_scale: [1, 10] }`"),
            ));
        }
        let stop = match (f.get("requests"), f.get("duration")) {
            (Some(_), Some(_)) => {
                let pos = f.key_pos("duration").unwrap_or(node.pos);
                return Err(self.errors.hinted(
                    pos,
                    format!("`{path}` gives both `requests` and `duration`; a workload stops on exactly one"),
                    Some("remove one of them"),
                ));
            }
            (Some(n), None) => StopCondition::Requests(self.uint64(&f.field("requests"), n, 1)?),
            (None, Some(n)) => {
                StopCondition::DurationMs(self.duration_ms(&f.field("duration"), n)?)
            }
            (None, None) if is_command => StopCondition::DurationMs(DEFAULT_HARNESS_TIMEOUT_MS),
            (None, None) if is_trace => StopCondition::Requests(MAX_TRACE_REQUESTS),
            (None, None) => {
                return Err(self.errors.hinted(
                    node.pos,
                    format!("`{path}` needs `requests` or `duration` to know when to stop"),
                    Some("add e.g. `requests: 200` or `duration: 2m`"),
                ));
            }
        };
        let command = if is_command && !is_lm_eval {
            Some(self.nonempty_string(&f.field("command"), f.req("command")?)?)
        } else {
            None
        };
        let metrics = match f.get("metrics") {
            None => BTreeMap::new(),
            Some(n) => {
                let map = self.string_map(&f.field("metrics"), n, None)?;
                if let Value::Map(entries) = &n.value {
                    for (key, value) in entries {
                        let pointer = &map[&key.name];
                        if !is_json_pointer(pointer) {
                            return Err(self.errors.hinted(
                                value.pos,
                                format!(
                                    "`{}.{}`: `{pointer}` is not a JSON pointer",
                                    f.field("metrics"),
                                    key.name
                                ),
                                Some("a JSON pointer is empty or starts with `/`, e.g. `/results/accuracy`"),
                            ));
                        }
                    }
                }
                map
            }
        };
        let slo = match f.get("slo") {
            None => Slo::default(),
            Some(n) => self.slo(&f.field("slo"), n)?,
        };
        let load = match load.as_slice() {
            [LoadPoint::Search(search)] => {
                let field = f.field("load.search");
                let pos = f.key_pos("load").unwrap_or(node.pos);
                vec![LoadPoint::Search(self.search_in_workload(
                    &field,
                    pos,
                    search.clone(),
                    is_command,
                    &stop,
                    &slo,
                )?)]
            }
            _ => load,
        };
        Ok(WorkloadEntry {
            pos: node.pos,
            name,
            api,
            dataset,
            load,
            stop,
            warmup: f
                .get("warmup")
                .map(|n| self.uint64(&f.field("warmup"), n, 0))
                .transpose()?
                .unwrap_or(0),
            slo,
            seed: f
                .get("seed")
                .map(|n| self.uint64(&f.field("seed"), n, 0))
                .transpose()?,
            command,
            metrics,
            prefix_cache,
            lm_eval,
        })
    }

    /// The `lm_eval` settings of an `api: lm-eval` workload, which takes no `command` (it is
    /// written from them) and one step (lm-eval keeps `concurrency` requests in flight
    /// itself); `lm_eval` on any other workload is an error.
    fn lm_eval_settings(
        &self,
        f: &Fields<'_>,
        is_lm_eval: bool,
    ) -> Result<Option<LmEvalEntry>, MatrixError> {
        if !is_lm_eval {
            return match f.key_pos("lm_eval") {
                Some(pos) => Err(self.errors.hinted(
                    pos,
                    format!("`{}` is only used with `api: lm-eval`", f.field("lm_eval")),
                    Some("add `api: lm-eval`"),
                )),
                None => Ok(None),
            };
        }
        for (key, hint) in [
            (
                "command",
                "`api: lm-eval` writes its command from `lm_eval`; use `api: command` to run your own",
            ),
            (
                "load",
                "lm-eval keeps `lm_eval.concurrency` requests in flight; it runs as one step",
            ),
        ] {
            if let Some(pos) = f.key_pos(key) {
                return Err(self.errors.hinted(
                    pos,
                    format!("`{}` is not used with `api: lm-eval`", f.field(key)),
                    Some(hint),
                ));
            }
        }
        Ok(Some(self.lm_eval(&f.field("lm_eval"), f.req("lm_eval")?)?))
    }

    fn dataset(&self, path: &str, node: &Node) -> Result<At<DatasetSpec>, MatrixError> {
        if !matches!(node.value, Value::Map(_)) {
            return Err(self.type_error(
                path,
                node,
                "a mapping with `kind: random | shared_prefix | sharegpt | jsonl | trace | conversations`",
            ));
        }
        let Value::Map(entries) = &node.value else {
            unreachable!("checked above")
        };
        // Unknown keys are reported against the kind's own list, so read `kind` first.
        let Some(kind_node) = entries
            .iter()
            .find(|(k, _)| k.name == "kind")
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
        else {
            return Err(self.errors.hinted(
                node.pos,
                format!("missing required key `kind` in `{path}`"),
                Some("one of `random`, `shared_prefix`, `sharegpt`, `jsonl`, `trace`, `conversations`"),
            ));
        };
        let kind = self.string(&format!("{path}.kind"), kind_node)?;
        let spec = match kind.value.as_str() {
            "random" => {
                let f = self.fields(node, path, RANDOM_KEYS)?;
                DatasetSpec::Random {
                    input_tokens: self.uint32(
                        &f.field("input_tokens"),
                        f.req("input_tokens")?,
                        1,
                    )?,
                    output_tokens: self.uint32(
                        &f.field("output_tokens"),
                        f.req("output_tokens")?,
                        1,
                    )?,
                }
            }
            "shared_prefix" => self.shared_prefix(path, node)?,
            "trace" => self.trace(path, node)?,
            "conversations" => self.conversations(path, node)?,
            "sharegpt" | "jsonl" => {
                let f = self.fields(node, path, FILE_DATASET_KEYS)?;
                let file = self.nonempty_string(&f.field("path"), f.req("path")?)?;
                let output_tokens = f
                    .get("output_tokens")
                    .map(|n| self.uint32(&f.field("output_tokens"), n, 1))
                    .transpose()?;
                let spec = if kind.value == "sharegpt" {
                    DatasetSpec::Sharegpt {
                        path: file.value.clone(),
                        output_tokens,
                    }
                } else {
                    DatasetSpec::Jsonl {
                        path: file.value.clone(),
                        output_tokens,
                    }
                };
                return Ok(At {
                    value: spec,
                    pos: file.pos,
                    span: file.span,
                });
            }
            other => {
                return Err(self.errors.unknown(
                    kind_node.pos,
                    &format!("`{path}.kind`"),
                    other,
                    DATASET_KINDS.iter().copied(),
                ));
            }
        };
        Ok(At::new(spec, node.pos))
    }

    fn shared_prefix(&self, path: &str, node: &Node) -> Result<DatasetSpec, MatrixError> {
        let f = self.fields(node, path, SHARED_PREFIX_KEYS)?;
        let count = |key: &str| self.uint32(&f.field(key), f.req(key)?, 1);
        let zipf = f
            .get("distribution")
            .map(|n| {
                self.choice(
                    &f.field("distribution"),
                    n,
                    &[(false, "uniform"), (true, "zipf")],
                )
            })
            .transpose()?
            .unwrap_or(false);
        let distribution = match (zipf, f.get("zipf_exponent")) {
            (true, exponent) => PrefixDistribution::Zipf {
                exponent: exponent
                    .map(|n| self.positive(&f.field("zipf_exponent"), n, false))
                    .transpose()?
                    .unwrap_or(DEFAULT_ZIPF_EXPONENT),
            },
            (false, None) => PrefixDistribution::Uniform,
            (false, Some(_)) => {
                return Err(self.errors.hinted(
                    f.key_pos("zipf_exponent").unwrap_or(node.pos),
                    format!(
                        "`{}` is only used with `distribution: zipf`",
                        f.field("zipf_exponent")
                    ),
                    Some("add `distribution: zipf`, or remove `zipf_exponent`"),
                ));
            }
        };
        Ok(DatasetSpec::SharedPrefix {
            prefixes: count("prefixes")?,
            prefix_tokens: count("prefix_tokens")?,
            suffix_tokens: count("suffix_tokens")?,
            output_tokens: count("output_tokens")?,
            distribution,
        })
    }

    /// Conversations from a file (`path`) or synthetic (`turns`, `input_tokens`,
    /// `output_tokens`); each key is checked against its own list, so a synthetic key
    /// beside a path is named as the mistake it is.
    fn conversations(&self, path: &str, node: &Node) -> Result<DatasetSpec, MatrixError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.type_error(path, node, "a mapping"));
        };
        let from_file = entries.iter().any(|(k, _)| k.name == "path");
        if from_file {
            if let Some((key, _)) = entries.iter().find(|(k, _)| {
                CONVERSATION_SYNTHETIC_KEYS.contains(&k.name.as_str())
                    && !CONVERSATION_FILE_KEYS.contains(&k.name.as_str())
            }) {
                return Err(self.errors.hinted(
                    key.pos,
                    format!(
                        "`{path}.{}` describes synthetic conversations, and `{path}` reads them from `path`",
                        key.name
                    ),
                    Some("remove `path` for synthetic conversations, or this key to read the file"),
                ));
            }
        } else if let Some((key, _)) = entries.iter().find(|(k, _)| k.name == "max_turns") {
            return Err(self.errors.hinted(
                key.pos,
                format!("`{path}.max_turns` cuts the conversations of a file, and `{path}` names no `path`"),
                Some("give synthetic conversations their length with `turns`"),
            ));
        }
        let keys = if from_file {
            CONVERSATION_FILE_KEYS
        } else {
            CONVERSATION_SYNTHETIC_KEYS
        };
        let f = self.fields(node, path, keys)?;
        let tokens = |key: &str| {
            f.get(key)
                .map(|n| self.sampled(&f.field(key), n, SampledUnit::Count))
                .transpose()
        };
        let think_time_s = f
            .get("think_time")
            .map(|n| self.sampled(&f.field("think_time"), n, SampledUnit::Seconds))
            .transpose()?
            .unwrap_or(Sampled::fixed(0.0));
        if from_file {
            let file = self.nonempty_string(&f.field("path"), f.req("path")?)?;
            return Ok(DatasetSpec::Conversations {
                path: Some(file.value.clone()),
                max_turns: f
                    .get("max_turns")
                    .map(|n| self.uint32(&f.field("max_turns"), n, 1))
                    .transpose()?,
                turns: None,
                input_tokens: None,
                first_input_tokens: None,
                output_tokens: tokens("output_tokens")?,
                think_time_s,
            });
        }
        let required = |key: &str| {
            f.req(key)
                .map_err(|_| {
                    self.errors.hinted(
                        node.pos,
                        format!("missing required key `{key}` in `{path}`"),
                        Some("synthetic conversations need `turns`, `input_tokens` and `output_tokens`; or give a `path` to read them from a file"),
                    )
                })
                .and_then(|n| self.sampled(&f.field(key), n, SampledUnit::Count))
        };
        Ok(DatasetSpec::Conversations {
            path: None,
            max_turns: None,
            turns: Some(required("turns")?),
            input_tokens: Some(required("input_tokens")?),
            first_input_tokens: tokens("first_input_tokens")?,
            output_tokens: Some(required("output_tokens")?),
            think_time_s,
        })
    }

    /// A value drawn per use: a plain value, or `{min, max}` (uniform), `{mean, stddev}`
    /// (normal) or `{mean, distribution: exponential}`; counts are numbers of at least 1,
    /// seconds are durations (`2s`, `500ms`) of at least zero.
    fn sampled(&self, path: &str, node: &Node, unit: SampledUnit) -> Result<Sampled, MatrixError> {
        let value = |path: &str, node: &Node| match unit {
            SampledUnit::Count => self.at_least_one(path, node),
            SampledUnit::Seconds => self.seconds(path, node),
        };
        if !matches!(node.value, Value::Map(_)) {
            return Ok(Sampled::fixed(value(path, node)?));
        }
        let f = self.fields(node, path, SAMPLED_KEYS)?;
        let has = |key: &str| f.get(key).is_some();
        let named = f
            .get("distribution")
            .map(|n| {
                self.choice(
                    &f.field("distribution"),
                    n,
                    &[
                        ("uniform", "uniform"),
                        ("normal", "normal"),
                        ("exponential", "exponential"),
                    ],
                )
            })
            .transpose()?;
        let kind = match named {
            Some(kind) => kind,
            None if has("min") || has("max") => "uniform",
            None if has("stddev") => "normal",
            None => {
                return Err(self.errors.hinted(
                    node.pos,
                    format!("`{path}`: which distribution?"),
                    Some("give `{min, max}` (uniform), `{mean, stddev}` (normal) or `{mean, distribution: exponential}`"),
                ));
            }
        };
        let (needs, refuses): (&[&str], &[&str]) = match kind {
            "uniform" => (&["min", "max"], &["mean", "stddev"]),
            "normal" => (&["mean", "stddev"], &["min", "max"]),
            _ => (&["mean"], &["min", "max", "stddev"]),
        };
        if let Some(key) = refuses.iter().find(|k| has(k)) {
            return Err(self.errors.at(
                f.key_pos(key).unwrap_or(node.pos),
                format!(
                    "`{}` is not a parameter of a {kind} distribution (it takes {})",
                    f.field(key),
                    needs.join(" and ")
                ),
            ));
        }
        let get = |key: &str| value(&f.field(key), f.req(key)?);
        let sampled = match kind {
            "uniform" => Sampled::Uniform {
                min: get("min")?,
                max: get("max")?,
            },
            "normal" => Sampled::Normal {
                mean: get("mean")?,
                stddev: self.positive_or_seconds(&f.field("stddev"), f.req("stddev")?, unit)?,
            },
            _ => Sampled::Exponential { mean: get("mean")? },
        };
        let floor = match unit {
            SampledUnit::Count => 1.0,
            SampledUnit::Seconds => 0.0,
        };
        sampled
            .validate(floor)
            .map_err(|m| self.errors.at(node.pos, format!("`{path}`: {m}")))?;
        Ok(sampled)
    }

    /// A number of at least 1 (a count; a mean may be fractional).
    fn at_least_one(&self, path: &str, node: &Node) -> Result<f64, MatrixError> {
        let x = self.positive(path, node, false)?;
        if x < 1.0 {
            return Err(self.errors.at(
                node.pos,
                format!("`{path}` must be at least 1, found {}", self.raw_text(node)),
            ));
        }
        Ok(x)
    }

    /// A spread: a number ≥ 0 for counts, a duration for seconds.
    fn positive_or_seconds(
        &self,
        path: &str,
        node: &Node,
        unit: SampledUnit,
    ) -> Result<f64, MatrixError> {
        match unit {
            SampledUnit::Count => self.positive(path, node, true),
            SampledUnit::Seconds => self.seconds(path, node),
        }
    }

    /// A duration of zero or more, in seconds (`0s`, `500ms`, `2s`).
    fn seconds(&self, path: &str, node: &Node) -> Result<f64, MatrixError> {
        let (duration, _) = self.duration(
            path,
            node,
            "a duration such as `2s`",
            "write a number with a unit, e.g. `500ms` or `2s`",
        )?;
        Ok(duration.as_secs_f64())
    }

    /// A duration string (`90s`, `1h 30m`) and its text; `expected` and `hint` word the
    /// errors for the field at hand.
    fn duration(
        &self,
        path: &str,
        node: &Node,
        expected: &str,
        hint: &str,
    ) -> Result<(std::time::Duration, String), MatrixError> {
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(_) | Value::Float(_) => {
                return Err(self.errors.hinted(
                    node.pos,
                    format!(
                        "`{path}`: expected a duration, found {} without a unit",
                        node.describe()
                    ),
                    Some(hint),
                ));
            }
            _ => return Err(self.type_error(path, node, expected)),
        };
        let duration = humantime::parse_duration(text.trim()).map_err(|e| {
            self.errors.hinted(
                node.pos,
                format!("`{path}`: invalid duration `{text}`: {e}"),
                Some(hint),
            )
        })?;
        Ok((duration, text))
    }

    fn trace(&self, path: &str, node: &Node) -> Result<DatasetSpec, MatrixError> {
        let f = self.fields(node, path, TRACE_KEYS)?;
        let file = self.nonempty_string(&f.field("path"), f.req("path")?)?;
        let block_tokens = f
            .get("block_tokens")
            .map(|n| self.uint32(&f.field("block_tokens"), n, 1))
            .transpose()?
            .unwrap_or(DEFAULT_TRACE_BLOCK_TOKENS);
        let at = |key: &str| {
            f.get(key)
                .map(|n| self.duration_ms(&f.field(key), n))
                .transpose()
        };
        let (start_ms, end_ms) = (at("start")?, at("end")?);
        if let (Some(start), Some(end)) = (start_ms, end_ms)
            && end <= start
        {
            return Err(self.errors.at(
                f.key_pos("end").unwrap_or(node.pos),
                format!(
                    "`{}` must come after `{}` (the window is [start, end) of the trace's timestamps)",
                    f.field("end"),
                    f.field("start")
                ),
            ));
        }
        Ok(DatasetSpec::Trace {
            path: file.value.clone(),
            block_tokens,
            start_ms,
            end_ms,
        })
    }

    fn load(&self, path: &str, node: &Node) -> Result<Vec<LoadPoint>, MatrixError> {
        let f = self.fields(node, path, LOAD_KEYS)?;
        if let Some(n) = f.get("search") {
            if let Some(other) = ["concurrency", "rate", "time_scale"]
                .into_iter()
                .find(|k| f.get(k).is_some())
            {
                return Err(self.errors.hinted(
                    f.key_pos(other).unwrap_or(node.pos),
                    format!("`{path}` gives `search` and `{other}`"),
                    Some("a search chooses its own loads between `min` and `max`; list loads in a second workload"),
                ));
            }
            let search = self.search(&f.field("search"), n, Arrival::Poisson, None)?;
            let search = if search.spec.axis == SearchAxis::Rate {
                let (arrival, burstiness) = self.arrival(path, node, &f)?;
                crate::domain::SearchLoad {
                    arrival,
                    burstiness,
                    ..search
                }
            } else {
                if let Some(key) = ["arrival", "burstiness"]
                    .into_iter()
                    .find(|k| f.get(k).is_some())
                {
                    return Err(self.errors.at(
                        f.key_pos(key).unwrap_or(node.pos),
                        format!("`{}` is only used with a rate search", f.field(key)),
                    ));
                }
                search
            };
            return Ok(vec![LoadPoint::Search(search)]);
        }
        if let Some(n) = f.get("time_scale") {
            if let Some(other) = ["concurrency", "rate", "arrival", "burstiness"]
                .into_iter()
                .find(|k| f.get(k).is_some())
            {
                return Err(self.errors.hinted(
                    f.key_pos(other).unwrap_or(node.pos),
                    format!("`{path}` gives `time_scale` and `{other}`"),
                    Some(
                        "a trace arrives on its own clock: `time_scale` sweeps its speed-up alone",
                    ),
                ));
            }
            let field = f.field("time_scale");
            let items = self.nonempty_list(&field, n)?;
            let mut points = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let point =
                    LoadPoint::TimeScale(self.positive(&format!("{field}[{i}]"), item, false)?);
                if points.contains(&point) {
                    return Err(self.errors.at(
                        item.pos,
                        format!("`{field}`: {} is listed twice", self.raw_text(item)),
                    ));
                }
                points.push(point);
            }
            return Ok(points);
        }
        match (f.get("concurrency"), f.get("rate")) {
            (Some(_), Some(_)) => Err(self.errors.hinted(
                f.key_pos("rate").unwrap_or(node.pos),
                format!("`{path}` gives both `concurrency` and `rate`"),
                Some("sweep one of them per workload; add a second workload for the other"),
            )),
            (None, None) => Err(self.errors.hinted(
                node.pos,
                format!("`{path}` needs `concurrency` or `rate`"),
                Some("e.g. `load: { concurrency: [1, 16] }`, `load: { rate: [2, 8, inf] }`, or `load: { time_scale: [1, 10] }` for a trace"),
            )),
            (Some(n), None) => {
                for key in ["arrival", "burstiness"] {
                    if let Some(pos) = f.get(key).and(f.key_pos(key)) {
                        return Err(self
                            .errors
                            .at(pos, format!("`{}` is only used with `rate`", f.field(key))));
                    }
                }
                let field = f.field("concurrency");
                let items = self.nonempty_list(&field, n)?;
                let mut points = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let c = self.uint32(&format!("{field}[{i}]"), item, 1)?;
                    let point = LoadPoint::Concurrency(c);
                    if points.contains(&point) {
                        return Err(self
                            .errors
                            .at(item.pos, format!("`{field}`: {c} is listed twice")));
                    }
                    points.push(point);
                }
                Ok(points)
            }
            (None, Some(n)) => {
                let (arrival, burstiness) = self.arrival(path, node, &f)?;
                let field = f.field("rate");
                let items = self.nonempty_list(&field, n)?;
                let mut points = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let rps = self.rate(&format!("{field}[{i}]"), item)?;
                    let point = LoadPoint::Rate {
                        rps,
                        arrival,
                        burstiness,
                    };
                    if points.contains(&point) {
                        return Err(self.errors.at(
                            item.pos,
                            format!("`{field}`: {} is listed twice", self.raw_text(item)),
                        ));
                    }
                    points.push(point);
                }
                Ok(points)
            }
        }
    }

    /// The `arrival` (and `burstiness`) of a rate load.
    fn arrival(
        &self,
        path: &str,
        node: &Node,
        f: &Fields<'_>,
    ) -> Result<(Arrival, Option<f64>), MatrixError> {
        let arrival = match f.get("arrival") {
            None => Arrival::Poisson,
            Some(a) => {
                let s = self.string(&f.field("arrival"), a)?;
                match s.value.as_str() {
                    "poisson" => Arrival::Poisson,
                    "gamma" => Arrival::Gamma,
                    "constant" => Arrival::Constant,
                    other => {
                        return Err(self.errors.unknown(
                            a.pos,
                            &format!("`{}` value", f.field("arrival")),
                            other,
                            ARRIVALS.iter().copied(),
                        ));
                    }
                }
            }
        };
        let burstiness = match (f.get("burstiness"), arrival) {
            (Some(b), Arrival::Gamma) => Some(self.positive(&f.field("burstiness"), b, false)?),
            (Some(_), _) => {
                return Err(self.errors.at(
                    f.key_pos("burstiness").unwrap_or(node.pos),
                    format!(
                        "`{}` is only used with `arrival: gamma`",
                        f.field("burstiness")
                    ),
                ));
            }
            (None, Arrival::Gamma) => {
                return Err(self.errors.hinted(
                    node.pos,
                    format!("`{path}` with `arrival: gamma` needs `burstiness`"),
                    Some("the gamma shape: 1.0 behaves like poisson, lower is burstier"),
                ));
            }
            (None, _) => None,
        };
        Ok((arrival, burstiness))
    }

    fn nonempty_list<'n>(&self, path: &str, node: &'n Node) -> Result<&'n [Node], MatrixError> {
        let items = self.list(path, node)?;
        if items.is_empty() {
            return Err(self
                .errors
                .at(node.pos, format!("`{path}` must list at least one value")));
        }
        Ok(items)
    }

    /// Requests per second: a number greater than zero, or `inf`.
    fn rate(&self, path: &str, node: &Node) -> Result<f64, MatrixError> {
        if let Value::Str(s) = &node.value
            && matches!(
                s.to_ascii_lowercase().as_str(),
                "inf" | ".inf" | "+.inf" | "infinity"
            )
        {
            return Ok(f64::INFINITY);
        }
        match node.value {
            Value::Int(_) | Value::Float(_) => self.positive(path, node, false),
            _ => Err(self.type_error(
                path,
                node,
                "requests per second (a number greater than 0, or `inf`)",
            )),
        }
    }

    fn slo(&self, path: &str, node: &Node) -> Result<Slo, MatrixError> {
        let f = self.fields(node, path, SLO_KEYS)?;
        let ms = |key: &str| {
            f.get(key)
                .map(|n| self.positive(&f.field(key), n, false))
                .transpose()
        };
        Ok(Slo {
            ttft_ms: ms("ttft_ms")?,
            tpot_ms: ms("tpot_ms")?,
            e2el_ms: ms("e2el_ms")?,
        })
    }

    /// The dimension keys of an exclude or include entry; `extra` keys are left to the caller.
    fn match_entry(
        &self,
        path: &str,
        index: usize,
        node: &Node,
        extra: &[&str],
    ) -> Result<MatchEntry, MatrixError> {
        let allowed: Vec<&str> = Dim::ALL
            .iter()
            .map(|d| d.key())
            .chain(extra.iter().copied())
            .collect();
        let f = self.fields(node, path, &allowed)?;
        let mut dims = Vec::new();
        for (key, value) in f.entries {
            let Some(dim) = Dim::from_key(&key.name) else {
                continue;
            };
            let field = f.field(&key.name);
            let v = match dim {
                Dim::GpuCount => DimValue::Count(self.uint32(&field, value, 1)?),
                _ => DimValue::Name(self.name(&field, value)?.value),
            };
            dims.push((
                dim,
                At {
                    value: v,
                    pos: value.pos,
                    span: value.span,
                },
            ));
        }
        if dims.is_empty() && f.entries.is_empty() {
            return Err(self.errors.hinted(
                node.pos,
                format!("`{path}` is empty"),
                Some(format!(
                    "name at least one of {}",
                    quoted_list(Dim::ALL.iter().map(|d| d.key()))
                )),
            ));
        }
        Ok(MatchEntry {
            pos: node.pos,
            index,
            dims,
        })
    }

    fn exclude(&self, path: &str, index: usize, node: &Node) -> Result<MatchEntry, MatrixError> {
        self.match_entry(path, index, node, &[])
    }

    fn include(&self, path: &str, index: usize, node: &Node) -> Result<IncludeEntry, MatrixError> {
        let matcher = self.match_entry(path, index, node, EXTENSION_KEYS)?;
        let f = self.fields(
            node,
            path,
            &[Dim::ALL.map(|d| d.key()).as_slice(), EXTENSION_KEYS].concat(),
        )?;
        let workloads = match f.get("workloads") {
            None => None,
            Some(n) => {
                let field = f.field("workloads");
                let items = self.nonempty_list(&field, n)?;
                Some(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.name(&format!("{field}[{i}]"), item))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
        };
        Ok(IncludeEntry {
            matcher,
            extra_args: f
                .get("extra_args")
                .map(|n| self.string(&f.field("extra_args"), n))
                .transpose()?,
            env: f
                .get("env")
                .map(|n| self.string_map(&f.field("env"), n, Some(is_env_name)))
                .transpose()?,
            labels: f
                .get("labels")
                .map(|n| self.string_map(&f.field("labels"), n, None))
                .transpose()?,
            workloads,
        })
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 6901: empty, or `/`-separated tokens where `~` is followed by `0` or `1`.
fn is_json_pointer(pointer: &str) -> bool {
    if pointer.is_empty() {
        return true;
    }
    pointer.starts_with('/')
        && pointer
            .split('~')
            .skip(1)
            .all(|rest| rest.starts_with('0') || rest.starts_with('1'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_and_json_pointers() {
        assert!(is_env_name("CUDA_VISIBLE_DEVICES"));
        assert!(is_env_name("_X1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
        assert!(is_json_pointer(""));
        assert!(is_json_pointer("/results/acc"));
        assert!(is_json_pointer("/a~1b/c~0d"));
        assert!(!is_json_pointer("results"));
        assert!(!is_json_pointer("/a~2"));
    }
}
