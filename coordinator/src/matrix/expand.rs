//! Expansion of a resolved matrix into units and steps, following GitHub Actions' matrix
//! semantics for `exclude` and `include`, then fit pruning.
//!
//! 1. The cross product of models × GPU types × GPU counts × frameworks × quantizations,
//!    in file order along each dimension (models outermost).
//! 2. `exclude`: a combination matching every key of an entry is dropped.
//! 3. `include`, entry by entry: its extension values (`extra_args`, `env`, `labels`,
//!    `workloads`) are added to every original combination matching all its dimension
//!    keys, replacing what an earlier include added; an entry that matches none adds a new
//!    combination (which must then name all five dimensions). Combinations that includes
//!    add are not matched by later entries.
//! 4. Fit pruning ([`super::fit`]): weights of `params_b × bits / 8 × 1.2` GB, and the KV
//!    cache of the unit's workloads where the model's architecture is known, must fit in
//!    `memory_gb × count`.
//! 5. Each survivor is a unit; its steps are workloads × load points × repeats.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{
    DropKind, Dropped, Expansion, GpuRequirement, Layout, LoadPoint, ModelSpec, QuantizationSpec,
    StepSpec, Unit, UnitConfig, UnitId, WorkloadSpec,
};

use super::error::{Errors, MatrixError, quoted_list};
use super::fit::{self, FitInput, KvDemand};
use super::layout;
use super::model::{CPU, Dim};
use super::placeholders;
use super::validate::{DimRef, Include, Matcher, Resolved};
use super::yaml::Pos;
use super::{MAX_STEPS, MAX_UNITS};

/// Most combinations the cross product may have before `exclude`.
pub(crate) const MAX_COMBINATIONS: usize = 1_000_000;

/// Matrices with at least this many units build them on several threads.
const PARALLEL_UNITS: usize = 4096;

/// Most threads used to build units.
const MAX_THREADS: usize = 8;

/// One point of the matrix, by index into each dimension's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Combo {
    model: usize,
    gpu: usize,
    count: u32,
    framework: usize,
    quant: usize,
}

impl Combo {
    fn value(&self, dim: Dim) -> DimRef {
        match dim {
            Dim::Model => DimRef::Model(self.model),
            Dim::Gpu => DimRef::Gpu(self.gpu),
            Dim::GpuCount => DimRef::GpuCount(self.count),
            Dim::Framework => DimRef::Framework(self.framework),
            Dim::Quantization => DimRef::Quantization(self.quant),
        }
    }

    fn matches(&self, matcher: &Matcher) -> bool {
        matcher.dims.iter().all(|d| self.value(dim_of(*d)) == *d)
    }
}

fn dim_of(value: DimRef) -> Dim {
    match value {
        DimRef::Model(_) => Dim::Model,
        DimRef::Gpu(_) => Dim::Gpu,
        DimRef::GpuCount(_) => Dim::GpuCount,
        DimRef::Framework(_) => Dim::Framework,
        DimRef::Quantization(_) => Dim::Quantization,
    }
}

/// What include entries added to a combination.
#[derive(Debug, Clone, Default)]
struct Extras {
    extra_args: Option<String>,
    env: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    workloads: Option<Vec<usize>>,
}

impl Extras {
    fn apply(&mut self, include: &Include) {
        if let Some(e) = &include.extra_args {
            self.extra_args = Some(e.clone());
        }
        if let Some(e) = &include.env {
            self.env = Some(e.clone());
        }
        if let Some(l) = &include.labels {
            self.labels = Some(l.clone());
        }
        if let Some(w) = &include.workloads {
            self.workloads = Some(w.clone());
        }
    }
}

/// A combination on its way to becoming a unit.
#[derive(Debug, Clone)]
struct Candidate {
    combo: Combo,
    extras: Extras,
    /// Where it came from: the include entry that added it, or the top of the file.
    origin: Pos,
    /// Its layout, when the matrix has `layouts`.
    layout: Option<Layout>,
    /// Its framework's command with the layout written in (set by [`with_layouts`]).
    command: String,
}

/// Expands a resolved matrix.
pub(crate) fn expand(errors: &Errors, r: &Resolved) -> Result<Expansion, MatrixError> {
    let counts_total: usize = r.gpus.iter().map(|g| g.counts.len()).sum();
    let combinations = r
        .models
        .len()
        .saturating_mul(counts_total)
        .saturating_mul(r.frameworks.len())
        .saturating_mul(r.quants.len());
    if combinations > MAX_COMBINATIONS {
        return Err(errors.hinted(
            r.pos,
            format!(
                "the matrix has {combinations} combinations before `exclude` ({} models × {counts_total} GPU configurations × {} frameworks × {} quantizations); the limit is {MAX_COMBINATIONS}",
                r.models.len(),
                r.frameworks.len(),
                r.quants.len()
            ),
            Some("split the campaign into several matrix files"),
        ));
    }

    // 1–2: the cross product, minus exclusions.
    let mut candidates: Vec<Candidate> = Vec::with_capacity(combinations);
    let mut dropped: Vec<(Combo, Dropped)> = Vec::new();
    for model in 0..r.models.len() {
        for (gpu, entry) in r.gpus.iter().enumerate() {
            for count in &entry.counts {
                for framework in 0..r.frameworks.len() {
                    for quant in 0..r.quants.len() {
                        let combo = Combo {
                            model,
                            gpu,
                            count: count.value,
                            framework,
                            quant,
                        };
                        match r.exclude.iter().find(|e| combo.matches(e)) {
                            Some(e) => dropped.push((
                                combo,
                                Dropped {
                                    label: label(r, &combo, None),
                                    kind: DropKind::Excluded,
                                    reason: format!(
                                        "excluded by exclude[{}] ({})",
                                        e.index, e.text
                                    ),
                                },
                            )),
                            None => candidates.push(Candidate {
                                combo,
                                extras: Extras::default(),
                                origin: r.pos,
                                layout: None,
                                command: String::new(),
                            }),
                        }
                    }
                }
            }
        }
    }

    // 3: includes extend the original combinations or add new ones.
    let originals = candidates.len();
    for include in &r.include {
        let mut matched = false;
        for candidate in &mut candidates[..originals] {
            if candidate.combo.matches(&include.matcher) {
                candidate.extras.apply(include);
                matched = true;
            }
        }
        if matched {
            continue;
        }
        let combo = new_combo(errors, include)?;
        dropped.retain(|(c, d)| !(d.kind == DropKind::Excluded && *c == combo));
        let mut extras = Extras::default();
        extras.apply(include);
        candidates.push(Candidate {
            combo,
            extras,
            origin: include.matcher.pos,
            layout: None,
            command: String::new(),
        });
    }

    // 3b: layouts, each written into the framework's command.
    let candidates = with_layouts(r, candidates, &mut dropped);

    // 4: fit pruning.
    let mut survivors = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        match misfit(r, &candidate) {
            Some(reason) => dropped.push((
                candidate.combo,
                Dropped {
                    label: label(r, &candidate.combo, candidate.layout.as_ref()),
                    kind: DropKind::Pruned,
                    reason,
                },
            )),
            None => survivors.push(candidate),
        }
    }

    // 5: units and steps, within the limits.
    let step_total = survivors.iter().fold(0usize, |total, c| {
        total.saturating_add(steps_per_unit(r, &c.extras))
    });
    if survivors.len() > MAX_UNITS || step_total > MAX_STEPS {
        return Err(errors.hinted(
            r.pos,
            format!(
                "the matrix expands to {} units and {step_total} steps; the limits are {MAX_UNITS} units and {MAX_STEPS} steps",
                survivors.len()
            ),
            Some("narrow a dimension, add `exclude` entries, lower `repeats`, or split the campaign"),
        ));
    }

    let model_paths: Vec<Vec<String>> = r
        .models
        .iter()
        .map(|m| {
            r.quants
                .iter()
                .map(|q| {
                    placeholders::render(&m.path, |name| {
                        (name == "quant.name").then(|| q.name.clone())
                    })
                })
                .collect()
        })
        .collect();

    let units = build_units(r, &model_paths, &survivors);
    let mut seen: HashMap<&UnitId, usize> = HashMap::with_capacity(units.len());
    for (i, unit) in units.iter().enumerate() {
        if let Some(&first) = seen.get(&unit.id) {
            let first_pos = survivors[first].origin;
            let first = if first_pos == r.pos {
                "the cross product".to_owned()
            } else {
                format!("the include entry at {first_pos}")
            };
            return Err(errors.hinted(
                survivors[i].origin,
                format!(
                    "duplicate unit `{}`: the same configuration as a unit from {first}",
                    unit.config.label()
                ),
                Some("give the include entry different `extra_args`, `env` or `labels`, or remove it"),
            ));
        }
        seen.insert(&unit.id, i);
    }

    Ok(Expansion {
        campaign: r.campaign.clone(),
        units,
        dropped: dropped.into_iter().map(|(_, d)| d).collect(),
    })
}

/// Builds the units of `survivors`, in order. Hashing the unit and step ids dominates the
/// time of large matrices, so big ones are split over the available cores.
fn build_units(r: &Resolved, model_paths: &[Vec<String>], survivors: &[Candidate]) -> Vec<Unit> {
    let build = |candidate: &Candidate| {
        let config = unit_config(r, model_paths, candidate);
        let id = config.unit_id();
        let steps = steps(r, &id, &candidate.extras);
        Unit { id, config, steps }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_THREADS);
    if threads < 2 || survivors.len() < PARALLEL_UNITS {
        return survivors.iter().map(build).collect();
    }
    let chunk = survivors.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = survivors
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(build).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The combination an include entry adds; it must name every dimension.
fn new_combo(errors: &Errors, include: &Include) -> Result<Combo, MatrixError> {
    let matcher = &include.matcher;
    let get = |dim: Dim| matcher.dims.iter().copied().find(|d| dim_of(*d) == dim);
    let missing: Vec<&str> = Dim::ALL
        .into_iter()
        .filter(|d| get(*d).is_none())
        .map(Dim::key)
        .collect();
    match (
        get(Dim::Model),
        get(Dim::Gpu),
        get(Dim::GpuCount),
        get(Dim::Framework),
        get(Dim::Quantization),
    ) {
        (
            Some(DimRef::Model(model)),
            Some(DimRef::Gpu(gpu)),
            Some(DimRef::GpuCount(count)),
            Some(DimRef::Framework(framework)),
            Some(DimRef::Quantization(quant)),
        ) => Ok(Combo {
            model,
            gpu,
            count,
            framework,
            quant,
        }),
        _ => Err(errors.hinted(
            matcher.pos,
            format!(
                "include[{}] matches no combination (after `exclude`), so it would add a new one, but it does not name {}",
                matcher.index,
                quoted_list(missing.iter().copied())
            ),
            Some(format!(
                "a new combination needs all of {}; to extend existing ones, make its keys match them",
                quoted_list(Dim::ALL.iter().map(|d| d.key()))
            )),
        )),
    }
}

/// Each candidate once per layout of the matrix that uses its GPUs and that its framework
/// can run, with the layout written into its command; the others are dropped with the
/// reason. CPU units and matrices without `layouts` keep the framework's command (with
/// `{parallel.*}` for tensor parallelism over all GPUs).
fn with_layouts(
    r: &Resolved,
    candidates: Vec<Candidate>,
    dropped: &mut Vec<(Combo, Dropped)>,
) -> Vec<Candidate> {
    let mut out = Vec::with_capacity(candidates.len() * r.layouts.len().max(1));
    for candidate in candidates {
        let Combo {
            gpu,
            count,
            framework,
            ..
        } = candidate.combo;
        let cpu = r.gpus[gpu].gpu_type.value == CPU;
        let base = if cpu {
            // Engines refuse a tensor-parallel size of 0, which `{gpu.count}` is on CPU units.
            &r.cpu_commands[framework]
        } else {
            &r.frameworks[framework].command
        };
        let preset = r.presets[framework];
        if r.layouts.is_empty() || cpu {
            let command =
                layout::command(base, preset, None, count).unwrap_or_else(|_| base.clone());
            out.push(Candidate {
                command,
                ..candidate
            });
            continue;
        }
        for entry in &r.layouts {
            let l = &entry.value;
            let drop = |reason: String| {
                (
                    candidate.combo,
                    Dropped {
                        label: label(r, &candidate.combo, Some(l)),
                        kind: DropKind::Pruned,
                        reason,
                    },
                )
            };
            if l.gpus() != u64::from(count) {
                dropped.push(drop(format!(
                    "layout {l} uses {} GPUs (tp × pp × dp), the unit has {count}",
                    l.gpus()
                )));
                continue;
            }
            let model = &r.models[candidate.combo.model];
            if l.ep > 1 && model.experts == Some(0) {
                dropped.push(drop(format!(
                    "layout {l} shards experts, and {} is a dense model (no `experts`)",
                    model.name
                )));
                continue;
            }
            match layout::command(base, preset, Some(l), count) {
                Ok(command) => out.push(Candidate {
                    layout: Some(l.clone()),
                    command,
                    combo: candidate.combo,
                    extras: candidate.extras.clone(),
                    origin: candidate.origin,
                }),
                Err(reason) => dropped.push(drop(format!(
                    "framework `{}` cannot run layout {l}: {reason}",
                    r.frameworks[framework].name
                ))),
            }
        }
    }
    out
}

/// Why a candidate does not fit, or `None` when it does (or cannot be judged): its
/// weights and the KV cache its workloads need ([`fit`]).
fn misfit(r: &Resolved, candidate: &Candidate) -> Option<String> {
    let (combo, extras) = (&candidate.combo, &candidate.extras);
    let model = &r.models[combo.model];
    let gpu = &r.gpus[combo.gpu];
    let quant = &r.quants[combo.quant];
    // The largest demand of the unit's workloads, in tokens held at once.
    let demand = unit_workloads(r, extras)
        .filter_map(|(w, load)| KvDemand::of(w, load))
        .max_by(|a, b| {
            (f64::from(a.concurrency) * f64::from(a.tokens))
                .total_cmp(&(f64::from(b.concurrency) * f64::from(b.tokens)))
        });
    fit::misfit(&FitInput {
        params_b: model.params_b?,
        bits: quant.bits,
        kv_bits: quant.kv_bits,
        arch: model.arch,
        memory_gb: gpu.memory_gb?,
        count: combo.count,
        layout: candidate.layout.as_ref(),
        gpu_type: &gpu.gpu_type.value,
        demand,
    })
}

/// The label [`UnitConfig::label`] gives the combination's unit.
fn label(r: &Resolved, combo: &Combo, layout: Option<&Layout>) -> String {
    let layout = layout.map_or_else(String::new, |l| format!(" ({l})"));
    format!(
        "{} / {} x{}{layout} / {} / {}",
        r.models[combo.model].name,
        r.gpus[combo.gpu].gpu_type.value,
        combo.count,
        r.frameworks[combo.framework].name,
        r.quants[combo.quant].name
    )
}

fn unit_config(r: &Resolved, model_paths: &[Vec<String>], candidate: &Candidate) -> UnitConfig {
    let Combo {
        model,
        gpu,
        count,
        framework,
        quant,
    } = candidate.combo;
    let m = &r.models[model];
    let g = &r.gpus[gpu];
    let q = &r.quants[quant];
    let mut framework_spec = r.frameworks[framework].clone();
    framework_spec.command = candidate.command.clone();
    if let Some(env) = &candidate.extras.env {
        framework_spec
            .env
            .extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    UnitConfig {
        model: ModelSpec {
            name: m.name.clone(),
            path: model_paths[model][quant].clone(),
            params_b: m.params_b,
            tokenizer: m.tokenizer.clone(),
        },
        gpu: GpuRequirement {
            gpu_type: g.gpu_type.value.clone(),
            // Only `cpu` entries may omit memory_gb; their units need no GPU memory.
            memory_gb: g.memory_gb.unwrap_or(0.0),
            count,
            price_per_hour: g.price_per_hour,
            layout: candidate.layout.clone(),
        },
        framework: framework_spec,
        quantization: QuantizationSpec {
            name: q.name.clone(),
            bits: q.bits,
            args: q.args[framework].clone(),
        },
        extra_args: candidate.extras.extra_args.clone().unwrap_or_default(),
        labels: candidate.extras.labels.clone().unwrap_or_default(),
    }
}

/// The workloads a unit runs, in file order.
fn unit_workloads<'r>(
    r: &'r Resolved,
    extras: &'r Extras,
) -> impl Iterator<Item = &'r (WorkloadSpec, Vec<LoadPoint>)> {
    r.workloads
        .iter()
        .enumerate()
        .filter(move |(i, _)| extras.workloads.as_ref().is_none_or(|w| w.contains(i)))
        .map(|(_, w)| w)
}

fn steps_per_unit(r: &Resolved, extras: &Extras) -> usize {
    unit_workloads(r, extras)
        .map(|(_, load)| load.len())
        .sum::<usize>()
        .saturating_mul(r.repeats as usize)
}

fn steps(r: &Resolved, unit: &UnitId, extras: &Extras) -> Vec<StepSpec> {
    let mut steps = Vec::with_capacity(steps_per_unit(r, extras));
    let mut index = 0u32;
    for (workload, load) in unit_workloads(r, extras) {
        for point in load {
            for repeat in 0..r.repeats {
                steps.push(StepSpec::new(
                    unit,
                    index,
                    workload.clone(),
                    point.clone(),
                    repeat,
                ));
                index += 1;
            }
        }
    }
    steps
}
