//! Checks the entries of a [`MatrixFile`] against each other and resolves them into what
//! expansion needs: names are unique, every reference (`exclude`, `include`, a
//! quantization's `args`, an include's `workloads`) names a defined entry, presets are
//! applied, placeholders are valid for their field, and path fields are expanded.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{
    CampaignSpec, DatasetSpec, FrameworkSpec, HarnessOutput, Layout, LoadPoint, WorkloadSpec,
};

use super::error::{Errors, MatrixError, did_you_mean, quoted_list};
use super::fit::{self, Architecture};
use super::layout::PARALLEL;
use super::lm_eval::{self, ExpandedPaths, LmEvalEntry};
use super::model::{
    At, Dim, DimValue, FrameworkEntry, GpuEntry, IncludeEntry, MatchEntry, MatrixFile, ModelEntry,
    QuantEntry, WorkloadEntry,
};
use super::paths::{self, Env, ExpandError};
use super::placeholders::{self, HARNESS, MODEL_PATH, SERVER};
use super::presets::{self, DEFAULT_HEALTH, DEFAULT_STARTUP_TIMEOUT_MS, Preset};
use super::yaml::{Pos, Source};

/// A matrix whose entries are checked and resolved.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Position of the top-level mapping.
    pub pos: Pos,
    /// Campaign settings.
    pub campaign: CampaignSpec,
    /// Steps per workload load point.
    pub repeats: u32,
    /// Models.
    pub models: Vec<Model>,
    /// GPU types.
    pub gpus: Vec<GpuEntry>,
    /// Frameworks, presets applied.
    pub frameworks: Vec<FrameworkSpec>,
    /// Each framework's command for CPU units (by framework index): its command without
    /// its preset's tensor-parallel flag (see [`presets::cpu_command`]).
    pub cpu_commands: Vec<String>,
    /// Quantizations.
    pub quants: Vec<Quant>,
    /// Workloads and their load points, in file order.
    pub workloads: Vec<(WorkloadSpec, Vec<LoadPoint>)>,
    /// Exclude entries.
    pub exclude: Vec<Matcher>,
    /// Include entries.
    pub include: Vec<Include>,
    /// `layouts` (empty: every unit tensor parallel over all its GPUs).
    pub layouts: Vec<At<Layout>>,
    /// Each framework's preset (by framework index), for writing layouts into commands.
    pub presets: Vec<Option<&'static Preset>>,
}

/// A model, its paths expanded.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    /// Name.
    pub name: String,
    /// Path, environment expanded; may still hold `{quant.name}`.
    pub path: String,
    /// Parameters in billions.
    pub params_b: Option<f64>,
    /// Tokenizer path, environment expanded.
    pub tokenizer: Option<String>,
    /// What its KV cache holds per token: the matrix's `arch`, else the `config.json` of
    /// its path when that is a local model directory.
    pub arch: Option<Architecture>,
    /// Routed experts, when known to be a mixture of experts (from the same places);
    /// `Some(0)`: known to be dense.
    pub experts: Option<u32>,
}

/// A quantization with its `{quant.args}` for each framework (by framework index).
#[derive(Debug, Clone)]
pub(crate) struct Quant {
    /// Name.
    pub name: String,
    /// Bits per weight.
    pub bits: f64,
    /// Bits per KV-cache element.
    pub kv_bits: f64,
    /// Resolved arguments, one per framework.
    pub args: Vec<String>,
}

/// The value of one dimension, by index into its list (or the count itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DimRef {
    /// Index into `models`.
    Model(usize),
    /// Index into `gpus`.
    Gpu(usize),
    /// GPU count.
    GpuCount(u32),
    /// Index into `frameworks`.
    Framework(usize),
    /// Index into `quantizations`.
    Quantization(usize),
}

/// The dimension keys of an exclude or include entry, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    /// Where the entry is.
    pub pos: Pos,
    /// Index in its list.
    pub index: usize,
    /// Resolved values, in file order.
    pub dims: Vec<DimRef>,
    /// `model=a, gpu.count=2`, for messages.
    pub text: String,
}

/// An include entry, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Include {
    /// Its dimension keys.
    pub matcher: Matcher,
    /// `extra_args`.
    pub extra_args: Option<String>,
    /// `env`.
    pub env: Option<BTreeMap<String, String>>,
    /// `labels`.
    pub labels: Option<BTreeMap<String, String>>,
    /// `workloads`, as indices into the workload list.
    pub workloads: Option<Vec<usize>>,
}

/// Checks `file` and resolves it. The checks run in this order: names, models,
/// frameworks, quantizations, workloads, `exclude`, `include`; the first that fails is the
/// error.
pub(crate) fn validate(
    errors: &Errors,
    source: &Source<'_>,
    env: &dyn Env,
    file: MatrixFile,
) -> Result<Resolved, MatrixError> {
    let v = Validator {
        errors,
        source,
        env,
    };
    v.names_are_unique(&file)?;
    let models = file
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| v.model(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let (frameworks, framework_presets) = v.frameworks(&file)?;
    let quants = v.quantizations(&file, &frameworks, &framework_presets)?;
    let cpu_commands = frameworks
        .iter()
        .zip(&framework_presets)
        .map(|(f, preset)| presets::cpu_command(&f.command, *preset))
        .collect();
    let workloads = file
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| v.workload(i, w, file.seed))
        .collect::<Result<Vec<_>, _>>()?;
    let exclude = file
        .exclude
        .iter()
        .map(|e| v.matcher("exclude", &file, e))
        .collect::<Result<Vec<_>, _>>()?;
    let include = file
        .include
        .iter()
        .map(|entry| v.include(&file, entry))
        .collect::<Result<Vec<_>, _>>()?;
    let layouts = file
        .layouts
        .iter()
        .enumerate()
        .map(|(i, l)| v.layout(i, l))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Resolved {
        pos: file.pos,
        campaign: CampaignSpec {
            name: file.campaign.value.clone(),
            description: file.description.clone(),
            priority: file.priority,
            max_attempts: file.max_attempts,
        },
        repeats: file.repeats,
        models,
        gpus: file.gpus,
        frameworks,
        cpu_commands,
        quants,
        workloads,
        exclude,
        include,
        layouts,
        presets: framework_presets.clone(),
    })
}

/// Framework `f` as units carry it: `command`, with health and metrics paths and the
/// startup timeout from the entry, else from its preset, else the defaults.
fn framework_spec(f: &FrameworkEntry, command: String, preset: Option<&Preset>) -> FrameworkSpec {
    FrameworkSpec {
        name: f.name.value.clone(),
        command,
        health_path: f
            .health
            .as_ref()
            .map(|h| h.value.clone())
            .or_else(|| preset.map(|p| p.health.to_owned()))
            .unwrap_or_else(|| DEFAULT_HEALTH.to_owned()),
        metrics_path: f
            .metrics
            .as_ref()
            .map(|m| m.value.clone())
            .or_else(|| preset.and_then(|p| p.metrics.map(str::to_owned))),
        startup_timeout_ms: f
            .startup_timeout_ms
            .or_else(|| preset.map(|p| p.startup_timeout_ms))
            .unwrap_or(DEFAULT_STARTUP_TIMEOUT_MS),
        env: f.env.clone(),
        image: f.image.clone(),
        container: f.container.clone(),
    }
}

/// The checks, with what they need: the file's error context, its text (to point into a
/// value) and the environment (to expand paths).
struct Validator<'a> {
    errors: &'a Errors,
    source: &'a Source<'a>,
    env: &'a dyn Env,
}

impl Validator<'_> {
    /// Rejects a name defined twice in one list: models, GPU types, frameworks,
    /// quantizations and workloads, in that order.
    fn names_are_unique(&self, file: &MatrixFile) -> Result<(), MatrixError> {
        self.unique("model", file.models.iter().map(|m| &m.name))?;
        self.unique("GPU type", file.gpus.iter().map(|g| &g.gpu_type))?;
        self.unique("framework", file.frameworks.iter().map(|f| &f.name))?;
        self.unique("quantization", file.quantizations.iter().map(|q| &q.name))?;
        self.unique("workload", file.workloads.iter().map(|w| &w.name))
    }

    /// Model `i` with its paths expanded; the expanded path's placeholders must be ones a
    /// model path may hold.
    fn model(&self, i: usize, m: &ModelEntry) -> Result<Model, MatrixError> {
        let field = format!("models[{i}].path");
        let path = self.expand_path(&field, &m.path)?;
        placeholders::check(
            self.errors,
            self.source,
            &field,
            &At {
                value: path.clone(),
                ..m.path.clone()
            },
            MODEL_PATH,
        )?;
        let tokenizer = m
            .tokenizer
            .as_ref()
            .map(|t| self.expand_path(&format!("models[{i}].tokenizer"), t))
            .transpose()?;
        let (arch, experts) = match m.arch {
            Some(arch) => (Some(arch), Some(m.experts.unwrap_or(0))),
            None => match local_config(&path) {
                Some(config) => (
                    Architecture::from_config(&config),
                    Some(fit::experts_in_config(&config).unwrap_or(0)),
                ),
                None => (None, None),
            },
        };
        Ok(Model {
            name: m.name.value.clone(),
            path,
            params_b: m.params_b,
            tokenizer,
            arch,
            experts,
        })
    }

    /// The frameworks with their presets applied, and each one's preset (by framework
    /// index), checked framework by framework.
    fn frameworks(
        &self,
        file: &MatrixFile,
    ) -> Result<(Vec<FrameworkSpec>, Vec<Option<&'static Preset>>), MatrixError> {
        let mut frameworks = Vec::with_capacity(file.frameworks.len());
        let mut framework_presets = Vec::with_capacity(file.frameworks.len());
        for (i, f) in file.frameworks.iter().enumerate() {
            let preset = self.framework_preset(i, f)?;
            let command = self.framework_command(i, f, preset)?;
            frameworks.push(framework_spec(f, command, preset));
            framework_presets.push(preset);
        }
        Ok((frameworks, framework_presets))
    }

    /// The preset of framework `i`: the one its `preset` names, which must be a built-in
    /// preset, else the built-in preset of its name, if there is one.
    fn framework_preset(
        &self,
        i: usize,
        f: &FrameworkEntry,
    ) -> Result<Option<&'static Preset>, MatrixError> {
        Ok(match &f.preset {
            Some(p) => Some(presets::preset(&p.value).ok_or_else(|| {
                self.errors.unknown(
                    p.pos,
                    &format!("`frameworks[{i}].preset`"),
                    &p.value,
                    presets::names(),
                )
            })?),
            None => presets::preset(&f.name.value),
        })
    }

    /// The command of framework `i`: its `command`, whose placeholders must be ones a
    /// server command may hold, else its preset's. A framework with neither is refused,
    /// with a hint naming the preset its name is close to, if any.
    fn framework_command(
        &self,
        i: usize,
        f: &FrameworkEntry,
        preset: Option<&Preset>,
    ) -> Result<String, MatrixError> {
        match (&f.command, preset) {
            (Some(c), _) => {
                let names: Vec<&str> = SERVER.iter().chain(PARALLEL).copied().collect();
                placeholders::check(
                    self.errors,
                    self.source,
                    &format!("frameworks[{i}].command"),
                    c,
                    &names,
                )?;
                Ok(c.value.clone())
            }
            (None, Some(p)) => Ok(p.command.to_owned()),
            (None, None) => {
                let hint = match presets::names()
                    .find(|p| did_you_mean(&f.name.value, [*p]).is_some())
                {
                    Some(p) => format!("did you mean the preset `{p}`? otherwise add `command:`"),
                    None => format!(
                        "add `command:`, or `preset:` naming one of {}",
                        quoted_list(presets::names())
                    ),
                };
                Err(self.errors.hinted(
                    f.name.pos,
                    format!(
                        "framework `{}` has no `command` and is not a built-in preset",
                        f.name.value
                    ),
                    Some(hint),
                ))
            }
        }
    }

    /// The quantizations with their `{quant.args}` for each framework, checked
    /// quantization by quantization (see [`Validator::quant_args`]).
    fn quantizations(
        &self,
        file: &MatrixFile,
        frameworks: &[FrameworkSpec],
        framework_presets: &[Option<&Preset>],
    ) -> Result<Vec<Quant>, MatrixError> {
        let framework_index: HashMap<&str, usize> = file
            .frameworks
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.value.as_str(), i))
            .collect();
        let mut quants = Vec::with_capacity(file.quantizations.len());
        for (qi, q) in file.quantizations.iter().enumerate() {
            let explicit = self.quant_args(file, qi, q, &framework_index, frameworks)?;
            let args = (0..frameworks.len())
                .map(|fi| {
                    explicit.get(&fi).cloned().unwrap_or_else(|| {
                        framework_presets[fi]
                            .and_then(|p| p.quant_args(&q.name.value))
                            .unwrap_or_default()
                            .to_owned()
                    })
                })
                .collect();
            quants.push(Quant {
                name: q.name.value.clone(),
                bits: q.bits,
                kv_bits: q.kv_bits.unwrap_or(DEFAULT_KV_BITS),
                args,
            });
        }
        Ok(quants)
    }

    /// The arguments quantization `qi` gives explicitly, by framework index: each key of
    /// its `args` must name a framework, and non-empty arguments need a `{quant.args}`
    /// placeholder in that framework's command (or they would be dropped).
    fn quant_args(
        &self,
        file: &MatrixFile,
        qi: usize,
        q: &QuantEntry,
        framework_index: &HashMap<&str, usize>,
        frameworks: &[FrameworkSpec],
    ) -> Result<HashMap<usize, String>, MatrixError> {
        let mut explicit: HashMap<usize, String> = HashMap::new();
        for (name, args) in &q.args {
            let Some(&fi) = framework_index.get(name.value.as_str()) else {
                return Err(self.errors.unknown(
                    name.pos,
                    &format!("framework in `quantizations[{qi}].args`:"),
                    &name.value,
                    file.frameworks.iter().map(|f| f.name.value.as_str()),
                ));
            };
            if !args.trim().is_empty() && !placeholders::uses(&frameworks[fi].command, "quant.args")
            {
                return Err(self.errors.hinted(
                    name.pos,
                    format!(
                        "`quantizations[{qi}].args.{}` is set, but the command of framework `{}` has no `{{quant.args}}` placeholder, so the arguments would be dropped",
                        name.value, name.value
                    ),
                    Some("add `{quant.args}` to the framework's command"),
                ));
            }
            explicit.insert(fi, args.trim().to_owned());
        }
        Ok(explicit)
    }

    /// Workload `i` with its load points: its `command`'s placeholders must be ones a
    /// harness command may hold, and its dataset path is expanded. `seed` is the file's,
    /// for a workload without its own.
    fn workload(
        &self,
        i: usize,
        w: &WorkloadEntry,
        seed: u64,
    ) -> Result<(WorkloadSpec, Vec<LoadPoint>), MatrixError> {
        let args = w.lm_eval.as_ref().and_then(|l| l.args.as_ref());
        if let Some(args) = args {
            placeholders::check(
                self.errors,
                self.source,
                &format!("workloads[{i}].lm_eval.args"),
                args,
                HARNESS,
            )?;
        }
        if let Some(command) = &w.command {
            placeholders::check(
                self.errors,
                self.source,
                &format!("workloads[{i}].command"),
                command,
                HARNESS,
            )?;
        }
        let dataset = w.dataset.as_ref().map(|d| self.dataset(i, d)).transpose()?;
        let seed = w.seed.unwrap_or(seed);
        let command = match &w.lm_eval {
            Some(lm_eval) => Some(lm_eval.command(&self.lm_eval_paths(i, lm_eval)?, seed)),
            None => w.command.as_ref().map(|c| c.value.clone()),
        };
        let spec = WorkloadSpec {
            name: w.name.value.clone(),
            api: w.api,
            dataset,
            seed,
            stop: w.stop.clone(),
            warmup: w.warmup,
            slo: w.slo.clone(),
            command,
            metrics: w.metrics.clone(),
            prefix_cache: w.prefix_cache,
            harness: w.lm_eval.as_ref().map(|_| HarnessOutput::LmEval),
        };
        Ok((spec, w.load.clone()))
    }

    /// Layout `i` with its draft model's path expanded.
    fn layout(&self, i: usize, l: &At<Layout>) -> Result<At<Layout>, MatrixError> {
        let mut layout = l.clone();
        if let Some(spec) = &mut layout.value.speculative
            && let Some(draft) = &spec.draft_model
        {
            let at = At {
                value: draft.clone(),
                pos: l.pos,
                span: None,
            };
            spec.draft_model =
                Some(self.expand_path(&format!("layouts[{i}].speculative.draft_model"), &at)?);
        }
        Ok(layout)
    }

    /// The paths of workload `i`'s `lm_eval` settings, expanded.
    fn lm_eval_paths(&self, i: usize, lm_eval: &LmEvalEntry) -> Result<ExpandedPaths, MatrixError> {
        let expand = |key: &str, path: &Option<At<String>>| {
            path.as_ref()
                .map(|p| self.expand_path(&format!("workloads[{i}].lm_eval.{key}"), p))
                .transpose()
        };
        Ok(ExpandedPaths {
            program: expand("program", &lm_eval.program)?
                .unwrap_or_else(|| lm_eval::DEFAULT_PROGRAM.to_owned()),
            include_path: expand("include_path", &lm_eval.include_path)?,
            tokenizer: expand("tokenizer", &lm_eval.tokenizer)?,
        })
    }

    /// The dataset of workload `i` with its path (for a file dataset) expanded.
    fn dataset(&self, i: usize, d: &At<DatasetSpec>) -> Result<DatasetSpec, MatrixError> {
        let expand = |path: &String| {
            self.expand_path(
                &format!("workloads[{i}].dataset.path"),
                &At {
                    value: path.clone(),
                    pos: d.pos,
                    span: d.span,
                },
            )
        };
        Ok(match &d.value {
            DatasetSpec::Random { .. } | DatasetSpec::SharedPrefix { .. } => d.value.clone(),
            DatasetSpec::Sharegpt {
                path,
                output_tokens,
            } => DatasetSpec::Sharegpt {
                path: expand(path)?,
                output_tokens: *output_tokens,
            },
            DatasetSpec::Jsonl {
                path,
                output_tokens,
            } => DatasetSpec::Jsonl {
                path: expand(path)?,
                output_tokens: *output_tokens,
            },
            DatasetSpec::Trace {
                path,
                block_tokens,
                start_ms,
                end_ms,
            } => DatasetSpec::Trace {
                path: expand(path)?,
                block_tokens: *block_tokens,
                start_ms: *start_ms,
                end_ms: *end_ms,
            },
            DatasetSpec::Conversations {
                path: Some(path), ..
            } => {
                let mut spec = d.value.clone();
                if let DatasetSpec::Conversations { path: p, .. } = &mut spec {
                    *p = Some(expand(path)?);
                }
                spec
            }
            DatasetSpec::Conversations { path: None, .. } => d.value.clone(),
        })
    }

    /// An include entry resolved: its `extra_args`' placeholders must be ones a server
    /// command may hold, then its `workloads` and its dimension keys must name defined
    /// entries.
    fn include(&self, file: &MatrixFile, entry: &IncludeEntry) -> Result<Include, MatrixError> {
        let index = entry.matcher.index;
        if let Some(extra) = &entry.extra_args {
            placeholders::check(
                self.errors,
                self.source,
                &format!("include[{index}].extra_args"),
                extra,
                SERVER,
            )?;
        }
        let workloads = entry
            .workloads
            .as_ref()
            .map(|names| self.include_workloads(file, index, names))
            .transpose()?;
        Ok(Include {
            matcher: self.matcher("include", file, &entry.matcher)?,
            extra_args: entry.extra_args.as_ref().map(|e| e.value.trim().to_owned()),
            env: entry.env.clone(),
            labels: entry.labels.clone(),
            workloads,
        })
    }

    /// The `workloads` of include entry `index`, as indices into the workload list; each
    /// must name a defined workload.
    fn include_workloads(
        &self,
        file: &MatrixFile,
        index: usize,
        names: &[At<String>],
    ) -> Result<Vec<usize>, MatrixError> {
        names
            .iter()
            .map(|n| {
                file.workloads
                    .iter()
                    .position(|w| w.name.value == n.value)
                    .ok_or_else(|| {
                        self.errors.unknown(
                            n.pos,
                            &format!("workload in `include[{index}].workloads`:"),
                            &n.value,
                            file.workloads.iter().map(|w| w.name.value.as_str()),
                        )
                    })
            })
            .collect()
    }

    /// Rejects the second use of a name in one list.
    fn unique<'n>(
        &self,
        what: &str,
        names: impl Iterator<Item = &'n At<String>>,
    ) -> Result<(), MatrixError> {
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for name in names {
            if let Some(first) = seen.insert(name.value.as_str(), name.pos) {
                return Err(self.errors.at(
                    name.pos,
                    format!(
                        "duplicate {what} `{}` (first defined at {first})",
                        name.value
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Expands `${VAR}`, `${VAR:-default}` and `~` in a path field.
    fn expand_path(&self, field: &str, text: &At<String>) -> Result<String, MatrixError> {
        paths::expand(&text.value, self.env).map_err(|e| match e {
            ExpandError::Unset { name, .. } => self.errors.hinted(
                self.source
                    .find_in(text.pos, text.span, &format!("${{{name}")),
                format!("`{field}`: environment variable `{name}` is not set"),
                Some(format!(
                    "set it, or give a default: `${{{name}:-/some/path}}`"
                )),
            ),
            ExpandError::Malformed { offset } => self.errors.hinted(
                self.source.find_in(
                    text.pos,
                    text.span,
                    text.value.get(offset..offset + 2).unwrap_or("${"),
                ),
                format!("`{field}`: malformed `${{…}}` reference"),
                Some("write `${NAME}` or `${NAME:-default}`"),
            ),
            ExpandError::NoHome => self.errors.at(
                text.pos,
                format!("`{field}` starts with `~`, but HOME is not set"),
            ),
        })
    }

    /// Resolves the names of an exclude or include entry.
    fn matcher(
        &self,
        list: &str,
        file: &MatrixFile,
        entry: &MatchEntry,
    ) -> Result<Matcher, MatrixError> {
        let mut dims = Vec::with_capacity(entry.dims.len());
        for (dim, value) in &entry.dims {
            let field = format!("`{list}[{}].{dim}`", entry.index);
            let find = |names: Vec<&str>, what: &str| -> Result<usize, MatrixError> {
                let DimValue::Name(name) = &value.value else {
                    unreachable!("only gpu.count holds a count")
                };
                names.iter().position(|n| n == name).ok_or_else(|| {
                    self.errors.unknown(
                        value.pos,
                        &format!("{what} in {field}:"),
                        name,
                        names.iter().copied(),
                    )
                })
            };
            dims.push(match dim {
                Dim::Model => DimRef::Model(find(
                    file.models.iter().map(|m| m.name.value.as_str()).collect(),
                    "model",
                )?),
                Dim::Gpu => DimRef::Gpu(find(
                    file.gpus
                        .iter()
                        .map(|g| g.gpu_type.value.as_str())
                        .collect(),
                    "GPU type",
                )?),
                Dim::GpuCount => match value.value {
                    DimValue::Count(c) => DimRef::GpuCount(c),
                    DimValue::Name(_) => unreachable!("gpu.count is read as a count"),
                },
                Dim::Framework => DimRef::Framework(find(
                    file.frameworks
                        .iter()
                        .map(|f| f.name.value.as_str())
                        .collect(),
                    "framework",
                )?),
                Dim::Quantization => DimRef::Quantization(find(
                    file.quantizations
                        .iter()
                        .map(|q| q.name.value.as_str())
                        .collect(),
                    "quantization",
                )?),
            });
        }
        Ok(Matcher {
            pos: entry.pos,
            index: entry.index,
            dims,
            text: entry.describe(),
        })
    }
}

/// Bits per KV-cache element when a quantization gives no `kv_bits` (fp16/bf16 caches).
const DEFAULT_KV_BITS: f64 = 16.0;

/// `path/config.json`, when `path` is a local model directory (read where the matrix is
/// expanded; a hub id or a path only the agents have gives `None`).
fn local_config(path: &str) -> Option<serde_json::Value> {
    if path.contains('{') {
        return None;
    }
    let text = std::fs::read(std::path::Path::new(path).join("config.json")).ok()?;
    serde_json::from_slice(&text).ok()
}
