//! End-to-end tests of matrix expansion: text in, [`Expansion`] or [`MatrixError`] out.
//! Per-stage tests live next to each stage; the fixture files are tested from
//! `coordinator/tests/matrix_files.rs`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::domain::{
    Api, Arrival, DatasetSpec, DropKind, Expansion, HarnessOutput, LoadPoint, PrefixCachePolicy,
    PrefixDistribution, Sampled, StopCondition,
};

use super::{MAX_STEPS, MAX_UNITS, MatrixError, expand_with_env};

/// Two models, one GPU type with counts [1, 2], two preset frameworks, two quantizations
/// and one workload with two load points: 16 combinations, 6 of them pruned.
const BASE: &str = "\
campaign: t
models:
  - { name: small, path: org/small, params_b: 8 }
  - { name: big, path: org/big, params_b: 70 }
gpus:
  - { type: H100-80GB, memory_gb: 80, counts: [1, 2] }
frameworks:
  - { name: vllm }
  - { name: sglang }
quantizations:
  - { name: bf16, bits: 16 }
  - { name: fp8, bits: 8 }
workloads:
  - name: chat
    dataset: { kind: random, input_tokens: 128, output_tokens: 64 }
    load: { concurrency: [1, 8] }
    requests: 10
";

fn test_env() -> BTreeMap<String, String> {
    [("HOME", "/home/t"), ("MODELS", "/mnt/models")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn expand(yaml: &str) -> Expansion {
    match expand_with_env("t.yaml", yaml, &test_env()) {
        Ok(e) => e,
        Err(err) => panic!("expected the matrix to expand, got: {err}\n{yaml}"),
    }
}

fn fail(yaml: &str) -> MatrixError {
    match expand_with_env("t.yaml", yaml, &test_env()) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(err) => err,
    }
}

fn labels(e: &Expansion) -> Vec<String> {
    e.units.iter().map(|u| u.config.label()).collect()
}

fn dropped(e: &Expansion, kind: DropKind) -> Vec<String> {
    e.dropped
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| d.label.clone())
        .collect()
}

fn assert_err(err: &MatrixError, line_col: (usize, usize), fragment: &str) {
    assert_eq!(err.line_col(), Some(line_col), "{err}");
    assert!(
        err.to_string().contains(fragment),
        "`{fragment}` not in: {err}"
    );
}

#[test]
fn base_matrix_expands_in_file_order_with_pruning() {
    let e = expand(BASE);
    assert_eq!(e.campaign.name, "t");
    assert_eq!(e.campaign.priority, 0);
    assert_eq!(e.campaign.max_attempts, 3);
    assert_eq!(
        labels(&e),
        vec![
            "small / H100-80GB x1 / vllm / bf16",
            "small / H100-80GB x1 / vllm / fp8",
            "small / H100-80GB x1 / sglang / bf16",
            "small / H100-80GB x1 / sglang / fp8",
            "small / H100-80GB x2 / vllm / bf16",
            "small / H100-80GB x2 / vllm / fp8",
            "small / H100-80GB x2 / sglang / bf16",
            "small / H100-80GB x2 / sglang / fp8",
            "big / H100-80GB x2 / vllm / fp8",
            "big / H100-80GB x2 / sglang / fp8",
        ]
    );
    assert_eq!(
        dropped(&e, DropKind::Pruned),
        vec![
            "big / H100-80GB x1 / vllm / bf16",
            "big / H100-80GB x1 / vllm / fp8",
            "big / H100-80GB x1 / sglang / bf16",
            "big / H100-80GB x1 / sglang / fp8",
            "big / H100-80GB x2 / vllm / bf16",
            "big / H100-80GB x2 / sglang / bf16",
        ]
    );
    assert_eq!(
        e.dropped[0].reason,
        "weights need 168.0 GB (70B × 16 bit × 1.2), 1 × H100-80GB has 80 GB"
    );
    assert_eq!(e.step_count(), 20);
    for unit in &e.units {
        assert_eq!(unit.id, unit.config.unit_id());
    }
    let mut ids: Vec<_> = e.units.iter().map(|u| u.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), e.units.len(), "unit ids are unique");
}

#[test]
fn exclude_by_a_single_key() {
    let e = expand(&format!("{BASE}exclude:\n  - {{ framework: sglang }}\n"));
    assert!(
        labels(&e).iter().all(|l| l.contains("/ vllm /")),
        "{:?}",
        labels(&e)
    );
    assert_eq!(e.units.len(), 5);
    let excluded = dropped(&e, DropKind::Excluded);
    assert_eq!(excluded.len(), 8);
    assert!(excluded.iter().all(|l| l.contains("/ sglang /")));
    assert_eq!(
        e.dropped[0].reason,
        "excluded by exclude[0] (framework=sglang)"
    );
}

#[test]
fn exclude_by_two_keys() {
    let e = expand(&format!(
        "{BASE}exclude:\n  - {{ model: small, quantization: bf16 }}\n"
    ));
    let excluded = dropped(&e, DropKind::Excluded);
    assert_eq!(
        excluded,
        vec![
            "small / H100-80GB x1 / vllm / bf16",
            "small / H100-80GB x1 / sglang / bf16",
            "small / H100-80GB x2 / vllm / bf16",
            "small / H100-80GB x2 / sglang / bf16",
        ]
    );
    assert_eq!(e.units.len(), 6);
}

#[test]
fn exclude_by_gpu_count() {
    let e = expand(&format!(
        "{BASE}exclude:\n  - {{ gpu.count: 2, framework: vllm }}\n  - {{ gpu: H100-80GB, gpu.count: 1, model: small }}\n"
    ));
    assert_eq!(
        labels(&e),
        vec![
            "small / H100-80GB x2 / sglang / bf16",
            "small / H100-80GB x2 / sglang / fp8",
            "big / H100-80GB x2 / sglang / fp8",
        ]
    );
    let reasons: Vec<_> = e
        .dropped
        .iter()
        .filter(|d| d.kind == DropKind::Excluded)
        .map(|d| d.reason.as_str())
        .collect();
    assert!(reasons.contains(&"excluded by exclude[0] (gpu.count=2, framework=vllm)"));
    assert!(reasons.contains(&"excluded by exclude[1] (model=small, gpu=H100-80GB, gpu.count=1)"));
    // Excluded combinations are not pruned as well.
    assert_eq!(dropped(&e, DropKind::Pruned).len(), 5);
}

#[test]
fn include_extends_matching_combinations() {
    let e = expand(&format!(
        "{BASE}include:
  - {{ framework: vllm, extra_args: --enforce-eager, labels: {{ pool: a }} }}
  - {{ model: small, framework: vllm, quantization: fp8, env: {{ VLLM_X: '1' }}, labels: {{ pool: b }} }}
  - {{ model: small, workloads: [chat] }}
"
    ));
    assert_eq!(e.units.len(), 10, "includes that match add no units");
    for unit in &e.units {
        let c = &unit.config;
        if c.framework.name == "vllm" {
            assert_eq!(c.extra_args, "--enforce-eager", "{}", c.label());
            let pool = if c.model.name == "small" && c.quantization.name == "fp8" {
                "b"
            } else {
                "a"
            };
            assert_eq!(
                c.labels.get("pool").map(String::as_str),
                Some(pool),
                "{}",
                c.label()
            );
            let has_env = c.framework.env.contains_key("VLLM_X");
            assert_eq!(has_env, pool == "b", "{}", c.label());
        } else {
            assert_eq!(c.extra_args, "");
            assert!(c.labels.is_empty());
        }
    }
}

#[test]
fn include_adds_a_new_combination_after_the_others() {
    let e = expand(&format!(
        "{BASE}exclude:
  - {{ model: small, gpu.count: 2 }}
include:
  - {{ model: big, gpu: H100-80GB, gpu.count: 4, framework: vllm, quantization: bf16, labels: {{ tp: '4' }} }}
  - {{ model: small, gpu: H100-80GB, gpu.count: 2, framework: sglang, quantization: fp8 }}
"
    ));
    let l = labels(&e);
    assert_eq!(l[l.len() - 2], "big / H100-80GB x4 / vllm / bf16");
    assert_eq!(l[l.len() - 1], "small / H100-80GB x2 / sglang / fp8");
    assert_eq!(e.units[l.len() - 2].config.labels["tp"], "4");
    // The second include re-adds an excluded combination: it is no longer listed as dropped.
    let excluded = dropped(&e, DropKind::Excluded);
    assert_eq!(excluded.len(), 3);
    assert!(!excluded.contains(&"small / H100-80GB x2 / sglang / fp8".to_owned()));
}

#[test]
fn include_naming_too_few_dimensions_is_an_error() {
    let yaml = format!("{BASE}include:\n  - {{ model: big, gpu.count: 4, framework: vllm }}\n");
    let err = fail(&yaml);
    assert_err(&err, (19, 5), "include[0] matches no combination");
    assert!(
        err.to_string()
            .contains("does not name `gpu`, `quantization`"),
        "{err}"
    );
}

#[test]
fn include_restricts_workloads() {
    let yaml = BASE.replace(
        "    requests: 10\n",
        "    requests: 10\n  - name: long\n    dataset: { kind: random, input_tokens: 4096, output_tokens: 64 }\n    load: { rate: [1, inf] }\n    duration: 90s\n",
    );
    let e = expand(&format!(
        "{yaml}include:\n  - {{ model: big, workloads: [long] }}\n"
    ));
    for unit in &e.units {
        let names: Vec<_> = unit
            .steps
            .iter()
            .map(|s| s.workload.name.as_str())
            .collect();
        if unit.config.model.name == "big" {
            assert_eq!(names, vec!["long", "long"]);
        } else {
            assert_eq!(names, vec!["chat", "chat", "long", "long"]);
        }
    }
    let err = fail(&format!(
        "{yaml}include:\n  - {{ model: big, workloads: [lng] }}\n"
    ));
    assert!(err.to_string().contains("did you mean `long`?"), "{err}");
}

#[test]
fn identical_include_entries_are_duplicate_units() {
    let entry =
        "  - { model: big, gpu: H100-80GB, gpu.count: 4, framework: vllm, quantization: bf16 }\n";
    let err = fail(&format!("{BASE}include:\n{entry}{entry}"));
    assert_err(
        &err,
        (20, 5),
        "duplicate unit `big / H100-80GB x4 / vllm / bf16`",
    );
}

#[test]
fn repeats_multiply_steps_in_order() {
    let e = expand(&format!("repeats: 3\nseed: 42\n{BASE}"));
    let unit = &e.units[0];
    let steps: Vec<_> = unit
        .steps
        .iter()
        .map(|s| (s.index, s.load.clone(), s.repeat))
        .collect();
    assert_eq!(
        steps,
        vec![
            (0, LoadPoint::Concurrency(1), 0),
            (1, LoadPoint::Concurrency(1), 1),
            (2, LoadPoint::Concurrency(1), 2),
            (3, LoadPoint::Concurrency(8), 0),
            (4, LoadPoint::Concurrency(8), 1),
            (5, LoadPoint::Concurrency(8), 2),
        ]
    );
    assert_eq!(e.step_count(), 60);
    assert_eq!(
        unit.steps[0].workload.seed, 42,
        "workloads inherit the campaign seed"
    );
    let mut ids: Vec<_> = e
        .units
        .iter()
        .flat_map(|u| u.steps.iter().map(|s| s.id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60, "step ids are unique");
    // Repeats change steps, not units.
    let once = expand(BASE);
    assert_eq!(
        once.units.iter().map(|u| &u.id).collect::<Vec<_>>(),
        e.units.iter().map(|u| &u.id).collect::<Vec<_>>()
    );
}

#[test]
fn pruning_keeps_an_exact_fit_and_drops_just_over() {
    // 50B × 16 bit / 8 × 1.2 = 120 GB on 1 × 120 GB: fits exactly.
    let yaml = "\
campaign: fit
models:
  - { name: exact, path: a, params_b: 50 }
  - { name: over, path: b, params_b: 50.1 }
  - { name: unknown, path: c }
gpus:
  - { type: X-120GB, memory_gb: 120, counts: [1] }
frameworks: [{ name: sim }]
quantizations: [{ name: bf16, bits: 16 }]
workloads:
  - { name: w, dataset: { kind: random, input_tokens: 1, output_tokens: 1 }, load: { concurrency: [1] }, requests: 1 }
";
    let e = expand(yaml);
    assert_eq!(
        labels(&e),
        vec![
            "exact / X-120GB x1 / sim / bf16",
            "unknown / X-120GB x1 / sim / bf16"
        ]
    );
    assert_eq!(e.dropped.len(), 1);
    assert_eq!(e.dropped[0].label, "over / X-120GB x1 / sim / bf16");
    assert_eq!(e.dropped[0].kind, DropKind::Pruned);
    assert_eq!(
        e.dropped[0].reason,
        "weights need 120.2 GB (50.1B × 16 bit × 1.2), 1 × X-120GB has 120 GB"
    );
}

#[test]
fn fit_counts_the_kv_cache_of_the_workloads_by_plain_arithmetic() {
    // A 70B dense model (GQA) and a 671B MoE with latent attention (DeepSeek-V3's shape),
    // in bf16 and fp8 (with an fp8 KV cache), on 4 and 8 × H100 and H200; every request
    // holds 2048 + 1024 tokens, 256 at once.
    let yaml = "\
campaign: plan
models:
  - { name: dense-70b, path: a, params_b: 70, arch: { layers: 80, kv_heads: 8, head_dim: 128 } }
  - { name: moe-671b, path: b, params_b: 671, arch: { layers: 61, kv_lora_rank: 512, rope_head_dim: 64 } }
gpus:
  - { type: H100-80GB, memory_gb: 80, counts: [4, 8] }
  - { type: H200-141GB, memory_gb: 141, counts: [4, 8] }
frameworks: [{ name: sim }]
quantizations:
  - { name: bf16, bits: 16 }
  - { name: fp8, bits: 8, kv_bits: 8 }
workloads:
  - { name: long, dataset: { kind: random, input_tokens: 2048, output_tokens: 1024 }, load: { concurrency: [16, 256] }, requests: 1 }
";
    let e = expand(yaml);
    let tokens = 256.0 * (2048.0 + 1024.0);
    let mut expected_units = Vec::new();
    let mut expected_pruned = Vec::new();
    for (model, params, kv_elements) in [
        ("dense-70b", 70.0, 80.0 * 2.0 * 8.0 * 128.0),
        ("moe-671b", 671.0, 61.0 * (512.0 + 64.0)),
    ] {
        for (gpu, memory) in [("H100-80GB", 80.0), ("H200-141GB", 141.0)] {
            for count in [4.0, 8.0] {
                for (quant, bits) in [("bf16", 16.0), ("fp8", 8.0)] {
                    let have = memory * count;
                    let weights = params * bits / 8.0 * 1.2;
                    let kv = kv_elements * bits / 8.0 * tokens / 1e9;
                    let label = format!("{model} / {gpu} x{count} / sim / {quant}");
                    if weights > have {
                        expected_pruned.push((label, "weights need".to_owned()));
                    } else if weights + kv > have {
                        expected_pruned.push((label, format!("needs {kv:.1} GB")));
                    } else {
                        expected_units.push(label);
                    }
                }
            }
        }
    }
    assert_eq!(labels(&e), expected_units);
    let pruned: Vec<(&str, &str)> = e
        .dropped
        .iter()
        .map(|d| (d.label.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(pruned.len(), expected_pruned.len(), "{pruned:#?}");
    for ((label, reason), (expected_label, fragment)) in pruned.iter().zip(&expected_pruned) {
        assert_eq!(label, expected_label);
        assert!(reason.contains(fragment.as_str()), "{label}: {reason}");
    }
    // The 70B in bf16 on 4 × H100: its 168 GB of weights fit, the 257.7 GB of KV do not.
    let kv_only = e
        .dropped
        .iter()
        .find(|d| d.label == "dense-70b / H100-80GB x4 / sim / bf16")
        .expect("pruned for its KV cache");
    assert!(
        kv_only.reason.starts_with(
            "weights fit (168.0 GB of 320 GB) but the KV cache does not: c=256 × 3072 tokens"
        ) && kv_only.reason.contains("needs 257.7 GB, 152.0 GB are left"),
        "{}",
        kv_only.reason
    );

    let bad = fail(&yaml.replace("kv_heads: 8, head_dim: 128", "kv_heads: 8"));
    assert!(
        bad.to_string()
            .contains("`models[0].arch` needs `layers` with either"),
        "{bad}"
    );
}

#[test]
fn layouts_expand_with_engine_flags_and_pruning_a_test_recomputes() {
    // A 70B dense model and a 671B MoE (DeepSeek-V3's shape) on 8 × H100 and 8 × H200, on
    // vLLM, SGLang and TGI, in bf16 and fp8, over five layouts.
    let yaml = "\
campaign: layouts
models:
  - { name: llama-70b, path: a, params_b: 70.6, arch: { layers: 80, kv_heads: 8, head_dim: 128 } }
  - { name: deepseek-671b, path: b, params_b: 671, arch: { layers: 61, kv_lora_rank: 512, rope_head_dim: 64, experts: 256 } }
gpus:
  - { type: H100-80GB, memory_gb: 80, counts: [8] }
  - { type: H200-141GB, memory_gb: 141, counts: [8] }
frameworks: [{ name: vllm }, { name: sglang }, { name: tgi }]
quantizations:
  - { name: bf16, bits: 16 }
  - { name: fp8, bits: 8, kv_bits: 8 }
layouts:
  - { tp: 8 }
  - { tp: 4, pp: 2 }
  - { tp: 8, ep: 8 }
  - { tp: 4, dp: 2, ep: 8 }
  - { tp: 2, pp: 2 }
workloads:
  - { name: chat, dataset: { kind: random, input_tokens: 2048, output_tokens: 1024 }, load: { concurrency: [64] }, requests: 1 }
";
    let e = expand(yaml);
    let tokens = 64.0 * 3072.0;
    let layouts = [
        (8, 1, 1, 1),
        (4, 2, 1, 1),
        (8, 1, 1, 8),
        (4, 1, 2, 8),
        (2, 2, 1, 1),
    ];
    let (mut units, mut pruned) = (Vec::new(), BTreeMap::new());
    for (model, params, kv_elements, moe) in [
        ("llama-70b", 70.6, 80.0 * 2.0 * 8.0 * 128.0, false),
        ("deepseek-671b", 671.0, 61.0 * 576.0, true),
    ] {
        for (gpu, memory) in [("H100-80GB", 80.0), ("H200-141GB", 141.0)] {
            for framework in ["vllm", "sglang", "tgi"] {
                for (quant, bits) in [("bf16", 16.0), ("fp8", 8.0)] {
                    for (tp, pp, dp, ep) in layouts {
                        let mut name = format!("tp{tp}");
                        for (axis, size) in [("pp", pp), ("dp", dp), ("ep", ep)] {
                            if size > 1 {
                                name.push_str(&format!(" {axis}{size}"));
                            }
                        }
                        let label = format!("{model} / {gpu} x8 ({name}) / {framework} / {quant}");
                        let replica = params * bits / 8.0 * 1.2;
                        let kv = kv_elements * bits / 8.0 * tokens / 1e9;
                        let reason = if tp * pp * dp != 8 {
                            Some("uses 4 GPUs")
                        } else if ep > 1 && !moe {
                            Some("is a dense model")
                        } else if framework == "tgi" && pp > 1 {
                            Some("no pipeline parallelism")
                        } else if framework == "tgi" && dp > 1 {
                            Some("no data parallelism")
                        } else if framework == "tgi" && ep > 1 {
                            Some("no expert parallelism")
                        } else if replica > memory * f64::from(tp * pp) {
                            Some("weights need")
                        } else if replica * f64::from(dp) + kv > memory * 8.0 {
                            Some("the KV cache does not")
                        } else {
                            None
                        };
                        match reason {
                            Some(r) => {
                                pruned.insert(label, r);
                            }
                            None => units.push(label),
                        }
                    }
                }
            }
        }
    }
    let mut got_units = labels(&e);
    got_units.sort();
    units.sort();
    assert_eq!(got_units, units);
    let got: BTreeMap<&str, &str> = e
        .dropped
        .iter()
        .map(|d| (d.label.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(got.len(), pruned.len(), "{got:#?}");
    for (label, fragment) in &pruned {
        let reason = got
            .get(label.as_str())
            .unwrap_or_else(|| panic!("{label} not pruned"));
        assert!(reason.contains(fragment), "{label}: {reason}");
    }
    // The engines' own flags.
    let command = |label: &str| {
        e.units
            .iter()
            .find(|u| u.config.label() == label)
            .unwrap_or_else(|| panic!("no unit {label}"))
            .config
            .framework
            .command
            .clone()
    };
    let vllm = command("deepseek-671b / H200-141GB x8 (tp8 ep8) / vllm / fp8");
    assert!(
        vllm.contains("--tensor-parallel-size 8 ") && vllm.ends_with(" --enable-expert-parallel"),
        "{vllm}"
    );
    // Two replicas of the 671B in fp8 need 805.2 GB each, more than 4 × H200.
    let replicas = &got["deepseek-671b / H200-141GB x8 (tp4 dp2 ep8) / vllm / fp8"];
    assert!(
        replicas.starts_with("weights need 805.2 GB (671B × 8 bit × 1.2), 4 × H200-141GB (one of 2 replicas) has 564 GB"),
        "{replicas}"
    );
    let sglang = command("llama-70b / H200-141GB x8 (tp4 pp2) / sglang / bf16");
    assert!(
        sglang.contains("--tp-size 4 ") && sglang.ends_with("--pp-size 2"),
        "{sglang}"
    );

    let err = fail(&yaml.replace("{ tp: 8, ep: 8 }", "{ tp: 8, ep: 3 }"));
    assert!(
        err.to_string()
            .contains("`layouts[2].ep` (3) must divide tp × dp (8)"),
        "{err}"
    );
    let err = fail(&yaml.replace("{ tp: 2, pp: 2 }", "{ tp: 8 }"));
    assert!(
        err.to_string()
            .contains("`layouts[4]` (tp8) is listed twice"),
        "{err}"
    );
}

#[test]
fn omitted_gpus_mean_cpu_units() {
    let yaml = "\
campaign: cpu
models: [{ name: m, path: m, params_b: 1000 }]
frameworks: [{ name: sim }]
quantizations: [{ name: q, bits: 16 }]
workloads:
  - { name: w, dataset: { kind: random, input_tokens: 1, output_tokens: 1 }, load: { concurrency: [1] }, requests: 1 }
";
    let e = expand(yaml);
    assert_eq!(
        labels(&e),
        vec!["m / cpu x1 / sim / q"],
        "CPU units without memory_gb are never pruned"
    );
    let gpu = &e.units[0].config.gpu;
    assert_eq!(
        (gpu.gpu_type.as_str(), gpu.memory_gb, gpu.count),
        ("cpu", 0.0, 1)
    );
    // With memory_gb, CPU units are pruned like GPU units.
    let with_memory = yaml.replace(
        "frameworks:",
        "gpus: [{ type: CPU, memory_gb: 64 }]\nframeworks:",
    );
    let e = expand(&with_memory);
    assert!(e.units.is_empty());
    assert_eq!(
        e.dropped[0].reason,
        "weights need 2400.0 GB (1000B × 16 bit × 1.2), 1 × cpu has 64 GB"
    );
}

#[test]
fn cpu_units_run_presets_without_their_tensor_parallel_flag() {
    // A CPU unit renders `{gpu.count}` as 0, and vLLM refuses `--tensor-parallel-size 0`.
    let yaml = BASE
        .replace(
            "  - { type: H100-80GB, memory_gb: 80, counts: [1, 2] }\n",
            "  - { type: H100-80GB, memory_gb: 80, counts: [2] }\n  - { type: cpu }\n",
        )
        .replace(
            "  - { name: sglang }\n",
            "  - { name: vllm-eager, preset: vllm, command: 'vllm serve {model.path} --port {port} --tensor-parallel-size={gpu.count} --enforce-eager' }
  - { name: custom, command: 'srv --port {port} --tp {gpu.count}' }
",
        )
        .replace("  - { name: big, path: org/big, params_b: 70 }\n", "");
    let e = expand(&yaml);
    let command = |label: &str| {
        e.units
            .iter()
            .find(|u| u.config.label() == label)
            .unwrap_or_else(|| panic!("no unit {label} in {:?}", labels(&e)))
            .config
            .framework
            .command
            .clone()
    };
    // GPU units keep the preset's command as it always was, so their ids do not change.
    assert_eq!(
        command("small / H100-80GB x2 / vllm / bf16"),
        "vllm serve {model.path} --host {host} --port {port} --tensor-parallel-size {gpu.count} {quant.args}"
    );
    assert_eq!(
        command("small / cpu x1 / vllm / bf16"),
        "vllm serve {model.path} --host {host} --port {port} {quant.args}"
    );
    // An entry's own command loses its preset's flag too, in either spelling.
    assert_eq!(
        command("small / cpu x1 / vllm-eager / fp8"),
        "vllm serve {model.path} --port {port} --enforce-eager"
    );
    // A framework without a preset is the user's own: its command is left as written.
    assert_eq!(
        command("small / cpu x1 / custom / bf16"),
        "srv --port {port} --tp {gpu.count}"
    );
    for unit in &e.units {
        assert_eq!(unit.id, unit.config.unit_id());
    }
}

#[test]
fn presets_fill_fields_and_entries_override_them() {
    let yaml = BASE.replace(
        "  - { name: sglang }\n",
        "  - { name: sglang, health: /ready, startup_timeout: 45m, env: { SGL: 1 }, image: lmsys/sglang:v1 }
  - { name: vllm-eager, preset: vllm, command: 'vllm serve {model.path} --port {port} --enforce-eager {quant.args}' }
  - { name: custom, command: 'srv --port {port}' }
",
    );
    let e = expand(&yaml);
    let fw = |name: &str| {
        e.units
            .iter()
            .map(|u| &u.config.framework)
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no unit with framework {name}"))
            .clone()
    };
    let vllm = fw("vllm");
    assert_eq!(
        vllm.command,
        "vllm serve {model.path} --host {host} --port {port} --tensor-parallel-size {gpu.count} {quant.args}"
    );
    assert_eq!(vllm.health_path, "/health");
    assert_eq!(vllm.metrics_path.as_deref(), Some("/metrics"));
    assert_eq!(vllm.startup_timeout_ms, 20 * 60 * 1000);
    let sglang = fw("sglang");
    assert!(
        sglang.command.contains("--tp-size {gpu.count}"),
        "{}",
        sglang.command
    );
    assert_eq!(sglang.health_path, "/ready");
    assert_eq!(sglang.startup_timeout_ms, 45 * 60 * 1000);
    assert_eq!(sglang.env["SGL"], "1");
    assert_eq!(sglang.image.as_deref(), Some("lmsys/sglang:v1"));
    let eager = fw("vllm-eager");
    assert_eq!(
        eager.command,
        "vllm serve {model.path} --port {port} --enforce-eager {quant.args}"
    );
    assert_eq!(
        eager.startup_timeout_ms,
        20 * 60 * 1000,
        "preset default kept"
    );
    let custom = fw("custom");
    assert_eq!(custom.health_path, "/health");
    assert_eq!(custom.metrics_path, None);
    assert_eq!(custom.startup_timeout_ms, 10 * 60 * 1000);

    let err = fail(&BASE.replace("  - { name: sglang }\n", "  - { name: sglng }\n"));
    assert_err(
        &err,
        (9, 13),
        "framework `sglng` has no `command` and is not a built-in preset",
    );
    assert!(
        err.to_string()
            .contains("did you mean the preset `sglang`?"),
        "{err}"
    );
    let err = fail(&BASE.replace("  - { name: sglang }\n", "  - { name: s, preset: vlm }\n"));
    assert_err(&err, (9, 24), "unknown `frameworks[1].preset` `vlm`");
    assert!(err.to_string().contains("did you mean `vllm`?"), "{err}");
}

#[test]
fn quantization_args_per_framework() {
    let yaml = BASE
        .replace("  - { name: sglang }\n", "  - { name: tgi }\n  - { name: llamacpp }\n")
        .replace(
            "  - { name: fp8, bits: 8 }\n",
            "  - { name: fp8, bits: 8, args: { tgi: '--quantize fp8 --dtype bfloat16' } }\n  - { name: int4, bits: 4 }\n",
        );
    let e = expand(&yaml);
    let args = |framework: &str, quant: &str| {
        e.units
            .iter()
            .find(|u| u.config.framework.name == framework && u.config.quantization.name == quant)
            .map(|u| u.config.quantization.args.clone())
            .unwrap_or_else(|| panic!("no unit {framework}/{quant}"))
    };
    assert_eq!(args("vllm", "bf16"), "--dtype bfloat16");
    assert_eq!(args("vllm", "fp8"), "--quantization fp8");
    assert_eq!(args("vllm", "int4"), "");
    assert_eq!(args("tgi", "bf16"), "--dtype bfloat16");
    assert_eq!(
        args("tgi", "fp8"),
        "--quantize fp8 --dtype bfloat16",
        "explicit args win"
    );
    assert_eq!(args("tgi", "int4"), "--quantize awq");
    assert_eq!(args("llamacpp", "fp8"), "");

    let err = fail(&BASE.replace(
        "{ name: fp8, bits: 8 }",
        "{ name: fp8, bits: 8, args: { vlm: x } }",
    ));
    assert_err(
        &err,
        (12, 35),
        "unknown framework in `quantizations[1].args`: `vlm`",
    );
    let err = fail(
        &BASE
            .replace("  - { name: sglang }\n", "  - { name: sim }\n")
            .replace(
                "{ name: fp8, bits: 8 }",
                "{ name: fp8, bits: 8, args: { sim: --fp8 } }",
            ),
    );
    assert_err(&err, (12, 35), "has no `{quant.args}` placeholder");
}

#[test]
fn placeholder_errors_point_into_the_string() {
    let yaml = BASE.replace(
        "  - { name: sglang }\n",
        "  - name: mine\n    command: srv --port {port} --tp {gpu.cnt}\n",
    );
    let err = fail(&yaml);
    assert_err(&err, (10, 37), "unknown placeholder `{gpu.cnt}`");
    assert!(
        err.to_string().contains("did you mean `{gpu.count}`?"),
        "{err}"
    );
    assert!(
        err.to_string().contains("{model.name} {model.path}"),
        "{err}"
    );

    let err = fail(&BASE.replace("path: org/small", "path: 'org/small-{quant}'"));
    assert_err(
        &err,
        (3, 37),
        "unknown placeholder `{quant}`; valid here: {quant.name}",
    );

    let err = fail(&format!(
        "{BASE}include:\n  - {{ extra_args: '--x {{port' }}\n"
    ));
    assert_err(&err, (19, 24), "unclosed `{`");

    let harness = "\
campaign: h
models: [{ name: m, path: m }]
frameworks: [{ name: sim }]
quantizations: [{ name: q, bits: 16 }]
workloads:
  - name: eval
    api: command
    command: lm_eval --base_url {url} --out {output}
";
    let err = fail(harness);
    assert_err(
        &err,
        (8, 45),
        "unknown placeholder `{output}`; valid here: {url} {model.path} {model.name} {model.served} {out}",
    );
}

#[test]
fn model_paths_expand_environment_and_quant_name() {
    let yaml = BASE
        .replace("path: org/small", "path: '${MODELS}/small-{quant.name}'")
        .replace("path: org/big", "path: '${NOT_SET:-~/m}/big'");
    let e = expand(&yaml);
    let paths: Vec<_> = e
        .units
        .iter()
        .map(|u| u.config.model.path.as_str())
        .collect();
    assert_eq!(paths[0], "/mnt/models/small-bf16");
    assert_eq!(paths[1], "/mnt/models/small-fp8");
    assert_eq!(paths[8], "/home/t/m/big");
    let err = fail(&BASE.replace("path: org/small", "path: '${NOT_SET}/x'"));
    assert_err(&err, (3, 27), "environment variable `NOT_SET` is not set");
}

#[test]
fn durations_and_stop_conditions() {
    let yaml = BASE
        .replace(
            "  - { name: sglang }\n",
            "  - { name: sglang, startup_timeout: 1h 30m }\n",
        )
        .replace("    requests: 10\n", "    duration: 90s\n    warmup: 5\n");
    let e = expand(&yaml);
    let unit = e
        .units
        .iter()
        .find(|u| u.config.framework.name == "sglang")
        .unwrap();
    assert_eq!(unit.config.framework.startup_timeout_ms, 90 * 60 * 1000);
    assert_eq!(
        unit.steps[0].workload.stop,
        StopCondition::DurationMs(90_000)
    );
    assert_eq!(unit.steps[0].workload.warmup, 5);

    let err = fail(&BASE.replace("requests: 10", "duration: 20 minutes please"));
    assert_err(
        &err,
        (17, 15),
        "`workloads[0].duration`: invalid duration `20 minutes please`",
    );
    let err = fail(&BASE.replace(
        "  - { name: sglang }",
        "  - { name: sglang, startup_timeout: 600 }",
    ));
    assert_err(
        &err,
        (9, 38),
        "expected a duration, found the integer `600` without a unit",
    );
    let err = fail(&BASE.replace("requests: 10", "duration: 0s"));
    assert_err(&err, (17, 15), "must be longer than zero");
}

#[test]
fn rate_sweeps_with_inf_and_arrivals() {
    let yaml = BASE.replace(
        "load: { concurrency: [1, 8] }",
        "load: { rate: [2, 8.5, inf], arrival: gamma, burstiness: 0.5 }",
    );
    let e = expand(&yaml);
    let loads: Vec<_> = e.units[0].steps.iter().map(|s| s.load.clone()).collect();
    let rate = |rps| LoadPoint::Rate {
        rps,
        arrival: Arrival::Gamma,
        burstiness: Some(0.5),
    };
    assert_eq!(loads, vec![rate(2.0), rate(8.5), rate(f64::INFINITY)]);
    assert_eq!(e.units[0].steps[2].label(), "chat rate=inf #0");

    let e = expand(&BASE.replace("load: { concurrency: [1, 8] }", "load: { rate: [.inf] }"));
    assert_eq!(
        e.units[0].steps[0].load,
        LoadPoint::Rate {
            rps: f64::INFINITY,
            arrival: Arrival::Poisson,
            burstiness: None
        }
    );
    let err = fail(&BASE.replace(
        "load: { concurrency: [1, 8] }",
        "load: { rate: [2], arrival: gamma }",
    ));
    assert_err(&err, (16, 11), "needs `burstiness`");
    let err = fail(&BASE.replace("load: { concurrency: [1, 8] }", "load: { rate: [2, 0] }"));
    assert_err(
        &err,
        (16, 23),
        "`workloads[0].load.rate[1]` must be greater than 0, found 0",
    );
    let err = fail(&BASE.replace(
        "load: { concurrency: [1, 8] }",
        "load: { concurrency: [1], arrival: poisson }",
    ));
    assert_err(&err, (16, 31), "is only used with `rate`");
}

#[test]
fn datasets_and_command_workloads() {
    let yaml = "\
campaign: ds
seed: 7
models: [{ name: m, path: m, tokenizer: '~/tok.json' }]
frameworks: [{ name: sim }]
quantizations: [{ name: q, bits: 16 }]
workloads:
  - name: share
    api: completions
    dataset: { kind: sharegpt, path: '${MODELS}/sharegpt.json' }
    load: { concurrency: [4] }
    requests: 100
    slo: { ttft_ms: 500, e2el_ms: 2000 }
    seed: 3
  - name: eval
    api: command
    command: lm_eval --base_url {url} --model {model.name} --output {out}
    metrics: { accuracy: /results/gsm8k/acc }
";
    let e = expand(yaml);
    assert_eq!(
        e.units[0].config.model.tokenizer.as_deref(),
        Some("/home/t/tok.json")
    );
    let steps = &e.units[0].steps;
    assert_eq!(steps.len(), 2);
    let share = &steps[0].workload;
    assert_eq!(share.api, Api::Completions);
    assert_eq!(
        share.dataset,
        Some(DatasetSpec::Sharegpt {
            path: "/mnt/models/sharegpt.json".into(),
            output_tokens: None
        })
    );
    assert_eq!(share.seed, 3);
    assert_eq!(share.slo.ttft_ms, Some(500.0));
    assert_eq!(share.slo.tpot_ms, None);
    let eval = &steps[1].workload;
    assert_eq!(eval.api, Api::Command);
    assert_eq!(eval.dataset, None);
    assert_eq!(eval.seed, 7);
    assert_eq!(eval.stop, StopCondition::DurationMs(60 * 60 * 1000));
    assert_eq!(eval.metrics["accuracy"], "/results/gsm8k/acc");
    assert_eq!(steps[1].load, LoadPoint::Concurrency(1));

    let err = fail(&yaml.replace(
        "    metrics: { accuracy: /results/gsm8k/acc }\n",
        "    requests: 5\n",
    ));
    assert_err(
        &err,
        (17, 5),
        "`workloads[1].requests` is not used with `api: command`",
    );
    let err = fail(&yaml.replace("kind: sharegpt, path", "kind: sharegpt, file"));
    assert_err(
        &err,
        (9, 32),
        "unknown key in `workloads[0].dataset`: `file`",
    );
}

#[test]
fn an_lm_eval_workload_is_a_harness_command_written_from_its_settings() {
    let yaml = "\
campaign: acc
models: [{ name: m, path: m }]
frameworks: [{ name: sim }]
quantizations: [{ name: q, bits: 16 }]
workloads:
  - name: arith
    api: lm-eval
    lm_eval:
      tasks: [evalctl_arith, gsm8k]
      include_path: ${MODELS}/tasks
      limit: 50
      num_fewshot: 3
      endpoint: chat
      args: --log_samples
    seed: 4
";
    let e = expand(yaml);
    let steps = &e.units[0].steps;
    assert_eq!(steps.len(), 1);
    let w = &steps[0].workload;
    assert_eq!(w.api, Api::Command);
    assert_eq!(w.harness, Some(HarnessOutput::LmEval));
    assert_eq!(w.stop, StopCondition::DurationMs(60 * 60 * 1000));
    assert_eq!(
        w.command.as_deref(),
        Some(
            "env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model local-chat-completions \
             --model_args model={model.served},base_url={url}/v1/chat/completions,num_concurrent=8,\
             max_retries=3,tokenized_requests=False,tokenizer_backend=none \
             --tasks evalctl_arith,gsm8k --include_path /mnt/models/tasks --limit 50 \
             --num_fewshot 3 --apply_chat_template --seed 4 --output_path {out} --log_samples"
        )
    );

    let err = fail(&yaml.replace(
        "      endpoint: chat\n",
        "      endpoint: chat\n      tokenizer: /m\n",
    ));
    assert_err(
        &err,
        (14, 7),
        "`workloads[0].lm_eval.tokenizer` is only used with `endpoint: completions`",
    );
    let err = fail(&yaml.replace("    seed: 4\n", "    load: { concurrency: [4] }\n"));
    assert_err(
        &err,
        (15, 5),
        "`workloads[0].load` is not used with `api: lm-eval`",
    );
    let err = fail(&yaml.replace("    seed: 4\n", "    command: lm_eval {out}\n"));
    assert_err(
        &err,
        (15, 5),
        "`workloads[0].command` is not used with `api: lm-eval`",
    );
    let err = fail(&yaml.replace("api: lm-eval", "api: command\n    command: x {out}"));
    assert_err(
        &err,
        (9, 5),
        "`workloads[0].lm_eval` is only used with `api: lm-eval`",
    );
    let err = fail(&yaml.replace("tasks: [evalctl_arith, gsm8k]", "tasks: [\"a,b\"]"));
    assert_err(
        &err,
        (9, 15),
        "`workloads[0].lm_eval.tasks[0]`: `a,b` is not one task name",
    );
    let err = fail(&yaml.replace("--log_samples", "--x {model.nam}"));
    assert!(
        err.to_string()
            .contains("unknown placeholder `{model.nam}`"),
        "{err}"
    );
    let err = fail(&yaml.replace("    lm_eval:\n", "    lm_evals:\n"));
    assert!(err.to_string().contains("did you mean `lm_eval`"), "{err}");
}

#[test]
fn shared_prefix_datasets_and_the_prefix_cache_policy() {
    let yaml = "\
campaign: sp
models: [{ name: m, path: m }]
frameworks: [{ name: sim }]
quantizations: [{ name: q, bits: 16 }]
workloads:
  - name: docs
    api: completions
    dataset: { kind: shared_prefix, prefixes: 8, prefix_tokens: 512, suffix_tokens: 64, output_tokens: 32, distribution: zipf, zipf_exponent: 1.2 }
    prefix_cache: salt
    load: { concurrency: [1] }
    requests: 10
  - name: plain
    dataset: { kind: shared_prefix, prefixes: 2, prefix_tokens: 16, suffix_tokens: 4, output_tokens: 4 }
    load: { concurrency: [1] }
    requests: 10
";
    let e = expand(yaml);
    let steps = &e.units[0].steps;
    assert_eq!(
        steps[0].workload.dataset,
        Some(DatasetSpec::SharedPrefix {
            prefixes: 8,
            prefix_tokens: 512,
            suffix_tokens: 64,
            output_tokens: 32,
            distribution: PrefixDistribution::Zipf { exponent: 1.2 },
        })
    );
    assert_eq!(
        steps[0].workload.prefix_cache,
        Some(PrefixCachePolicy::Salt)
    );
    let Some(DatasetSpec::SharedPrefix { distribution, .. }) = &steps[1].workload.dataset else {
        panic!("a shared-prefix dataset")
    };
    assert_eq!(*distribution, PrefixDistribution::Uniform);
    assert_eq!(steps[1].workload.prefix_cache, None, "the default");

    let err = fail(&yaml.replace("output_tokens: 4 }", "output_tokens: 4, zipf_exponent: 2 }"));
    assert_err(
        &err,
        (13, 105),
        "`workloads[1].dataset.zipf_exponent` is only used with `distribution: zipf`",
    );
    let err = fail(&yaml.replace("prefixes: 2,", "prefixes: 0,"));
    assert_err(
        &err,
        (13, 47),
        "`workloads[1].dataset.prefixes` must be at least 1",
    );
    let err = fail(&yaml.replace("distribution: zipf,", "distribution: pareto,"));
    assert_err(
        &err,
        (8, 122),
        "unknown `workloads[0].dataset.distribution` value",
    );
    let err = fail(&yaml.replace("prefix_cache: salt", "prefix_cache: flush"));
    assert_err(&err, (9, 19), "unknown `workloads[0].prefix_cache` value");
    // A file's prompts cannot be salted.
    let err = fail(&yaml.replace(
        "{ kind: shared_prefix, prefixes: 8, prefix_tokens: 512, suffix_tokens: 64, output_tokens: 32, distribution: zipf, zipf_exponent: 1.2 }",
        "{ kind: jsonl, path: p.jsonl }",
    ));
    assert_err(
        &err,
        (9, 5),
        "`workloads[0].prefix_cache: salt` needs generated prompts",
    );
}

#[test]
fn conversation_datasets_from_files_or_synthetic() {
    let yaml = "\
campaign: mt
models: [{ name: m, path: m }]
frameworks: [{ name: sim }]
quantizations: [{ name: q, bits: 16 }]
workloads:
  - name: chats
    dataset: { kind: conversations, path: /data/chats.json, max_turns: 6, think_time: { mean: 2s, distribution: exponential } }
    load: { concurrency: [4] }
    requests: 40
  - name: synthetic
    dataset: { kind: conversations, turns: { min: 2, max: 6 }, input_tokens: { mean: 120, stddev: 40 }, first_input_tokens: 1000, output_tokens: 64, think_time: 500ms }
    prefix_cache: salt
    load: { rate: [0.5] }
    duration: 1m
";
    let e = expand(yaml);
    let steps = &e.units[0].steps;
    assert_eq!(
        steps[0].workload.dataset,
        Some(DatasetSpec::Conversations {
            path: Some("/data/chats.json".into()),
            max_turns: Some(6),
            turns: None,
            input_tokens: None,
            first_input_tokens: None,
            output_tokens: None,
            think_time_s: Sampled::Exponential { mean: 2.0 },
        })
    );
    assert_eq!(
        steps[1].workload.dataset,
        Some(DatasetSpec::Conversations {
            path: None,
            max_turns: None,
            turns: Some(Sampled::Uniform { min: 2.0, max: 6.0 }),
            input_tokens: Some(Sampled::Normal {
                mean: 120.0,
                stddev: 40.0
            }),
            first_input_tokens: Some(Sampled::fixed(1000.0)),
            output_tokens: Some(Sampled::fixed(64.0)),
            think_time_s: Sampled::fixed(0.5),
        })
    );

    let bad = |from: &str, to: &str| fail(&yaml.replace(from, to));
    let err = bad("max_turns: 6,", "turns: 6,");
    assert_err(
        &err,
        (7, 61),
        "`workloads[0].dataset.turns` describes synthetic conversations",
    );
    let err = bad("turns: { min: 2, max: 6 }, ", "max_turns: 3, ");
    assert_err(
        &err,
        (11, 37),
        "`workloads[1].dataset.max_turns` cuts the conversations of a file",
    );
    let err = bad("output_tokens: 64, ", "");
    assert_err(
        &err,
        (11, 14),
        "missing required key `output_tokens` in `workloads[1].dataset`",
    );
    let err = bad("{ min: 2, max: 6 }", "{ min: 6, max: 2 }");
    assert_err(
        &err,
        (11, 44),
        "`workloads[1].dataset.turns`: max (2) must not be below min (6)",
    );
    let err = bad("{ mean: 120, stddev: 40 }", "{ mean: 120 }");
    assert_err(
        &err,
        (11, 78),
        "`workloads[1].dataset.input_tokens`: which distribution?",
    );
    let err = bad(
        "{ mean: 120, stddev: 40 }",
        "{ mean: 120, min: 3, distribution: normal }",
    );
    assert_err(
        &err,
        (11, 91),
        "`workloads[1].dataset.input_tokens.min` is not a parameter of a normal distribution",
    );
    let err = bad("think_time: 500ms", "think_time: 5");
    assert_err(
        &err,
        (11, 162),
        "`workloads[1].dataset.think_time`: expected a duration",
    );
    let err = bad("first_input_tokens: 1000", "first_input_tokens: 0.5");
    assert_err(
        &err,
        (11, 125),
        "`workloads[1].dataset.first_input_tokens` must be at least 1",
    );
    // A file's conversations cannot be salted; conversations do not follow a trace's clock.
    let err = fail(&yaml.replace("load: { concurrency: [4] }", "load: { time_scale: [2] }"));
    assert_err(&err, (8, 5), "`time_scale` replays a trace");
    let err = fail(&yaml.replace(
        "    load: { concurrency: [4] }",
        "    prefix_cache: salt\n    load: { concurrency: [4] }",
    ));
    assert_err(&err, (8, 5), "needs generated prompts");
}

#[test]
fn trace_datasets_replay_at_time_scales() {
    let yaml = "\
campaign: tr
models: [{ name: m, path: m }]
frameworks: [{ name: sim }]
quantizations: [{ name: q, bits: 16 }]
workloads:
  - name: replay
    api: completions
    dataset: { kind: trace, path: /data/mooncake.jsonl, block_tokens: 256, start: 1m, end: 2m }
    load: { time_scale: [1, 10] }
";
    let e = expand(yaml);
    let steps = &e.units[0].steps;
    assert_eq!(steps.len(), 2);
    assert_eq!(
        steps[0].workload.dataset,
        Some(DatasetSpec::Trace {
            path: "/data/mooncake.jsonl".into(),
            block_tokens: 256,
            start_ms: Some(60_000),
            end_ms: Some(120_000),
        })
    );
    assert_eq!(steps[1].load, LoadPoint::TimeScale(10.0));
    assert_eq!(steps[1].load.to_string(), "x10");
    assert_eq!(
        steps[0].workload.stop,
        StopCondition::Requests(super::decode::MAX_TRACE_REQUESTS),
        "the whole trace, up to the bound"
    );

    let err = fail(&yaml.replace(
        "load: { time_scale: [1, 10] }",
        "load: { concurrency: [1] }",
    ));
    assert_err(
        &err,
        (9, 5),
        "`workloads[0].load` of a trace dataset must be `time_scale`",
    );
    let err = fail(&yaml.replace(
        "{ kind: trace, path: /data/mooncake.jsonl, block_tokens: 256, start: 1m, end: 2m }",
        "{ kind: random, input_tokens: 8, output_tokens: 8 }",
    ));
    assert_err(&err, (9, 5), "`time_scale` replays a trace");
    let err = fail(&yaml.replace("time_scale: [1, 10] }", "time_scale: [1], rate: [2] }"));
    assert_err(&err, (9, 30), "gives `time_scale` and `rate`");
    let err = fail(&yaml.replace("end: 2m", "end: 30s"));
    assert_err(&err, (8, 87), "`workloads[0].dataset.end` must come after");
    let err = fail(&yaml.replace("    load:", "    warmup: 5\n    load:"));
    assert_err(
        &err,
        (9, 5),
        "`workloads[0].warmup` is not used with a trace",
    );
    let err = fail(&yaml.replace("time_scale: [1, 10]", "time_scale: [0]"));
    assert_err(
        &err,
        (9, 26),
        "`workloads[0].load.time_scale[0]` must be greater than 0",
    );
}

#[test]
fn size_limits_name_the_counts() {
    // One unit with 2,001 load points × 1,000 repeats = 2,001,000 steps.
    let points: Vec<String> = (1..=2001).map(|c| c.to_string()).collect();
    let yaml = format!(
        "campaign: big\nrepeats: 1000\nmodels: [{{ name: m, path: m }}]\nframeworks: [{{ name: sim }}]\nquantizations: [{{ name: q, bits: 16 }}]\nworkloads:\n  - {{ name: w, dataset: {{ kind: random, input_tokens: 1, output_tokens: 1 }}, load: {{ concurrency: [{}] }}, requests: 1 }}\n",
        points.join(", ")
    );
    let err = fail(&yaml);
    assert_err(
        &err,
        (1, 1),
        &format!(
            "expands to 1 units and 2001000 steps; the limits are {MAX_UNITS} units and {MAX_STEPS} steps"
        ),
    );

    // 501 models × 400 quantizations = 200,400 units.
    let mut yaml = String::from("campaign: wide\nmodels:\n");
    for m in 0..501 {
        yaml.push_str(&format!("  - {{ name: m{m}, path: m }}\n"));
    }
    yaml.push_str("frameworks: [{ name: sim }]\nquantizations:\n");
    for q in 0..400 {
        yaml.push_str(&format!("  - {{ name: q{q}, bits: 16 }}\n"));
    }
    yaml.push_str("workloads:\n  - { name: w, dataset: { kind: random, input_tokens: 1, output_tokens: 1 }, load: { concurrency: [1] }, requests: 1 }\n");
    let err = fail(&yaml);
    assert!(
        err.to_string()
            .contains("expands to 200400 units and 200400 steps"),
        "{err}"
    );

    // The cross product itself is bounded before anything is built.
    let yaml = yaml.replace("frameworks: [{ name: sim }]", "frameworks: [{ name: sim }, { name: vllm }, { name: tgi }, { name: sglang }, { name: trtllm }]");
    let err = fail(&yaml);
    assert!(
        err.to_string()
            .contains("the matrix has 1002000 combinations before `exclude`"),
        "{err}"
    );
}

#[test]
fn dropped_labels_match_unit_labels() {
    let e = expand(&format!("{BASE}exclude:\n  - {{ model: small }}\n"));
    let all = expand(BASE);
    for d in &e.dropped {
        if d.kind == DropKind::Excluded {
            assert!(labels(&all).contains(&d.label), "{}", d.label);
        }
    }
}

// ---- property tests --------------------------------------------------------------------

/// A YAML value as a structure, rendered with a chosen key order.
#[derive(Debug, Clone)]
enum Y {
    Scalar(String),
    Seq(Vec<Y>),
    Map(Vec<(&'static str, Y)>),
}

fn s(v: impl ToString) -> Y {
    Y::Scalar(v.to_string())
}

/// Renders `y` in block style at `indent`, shuffling every mapping's keys with `order`
/// (a stream of numbers; empty = file order). Flow style for short leaf lists.
fn render(y: &Y, indent: usize, order: &mut impl Iterator<Item = usize>, out: &mut String) {
    let pad = " ".repeat(indent);
    match y {
        Y::Scalar(v) => {
            out.push(' ');
            out.push_str(v);
            out.push('\n');
        }
        Y::Seq(items) if items.iter().all(|i| matches!(i, Y::Scalar(_))) => {
            let items: Vec<_> = items
                .iter()
                .map(|i| match i {
                    Y::Scalar(v) => v.clone(),
                    _ => unreachable!(),
                })
                .collect();
            out.push_str(&format!(" [{}]\n", items.join(", ")));
        }
        Y::Seq(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&format!("{pad}- "));
                let mut inner = String::new();
                render(item, indent + 2, order, &mut inner);
                // The first line of a mapping item follows the dash.
                out.push_str(inner.trim_start());
            }
        }
        Y::Map(entries) => {
            let mut entries = entries.clone();
            // Fisher-Yates with the supplied numbers.
            for i in (1..entries.len()).rev() {
                if let Some(r) = order.next() {
                    entries.swap(i, r % (i + 1));
                }
            }
            if indent > 0 || !out.is_empty() {
                out.push('\n');
            }
            for (key, value) in entries {
                out.push_str(&format!("{pad}{key}:"));
                render(&value, indent + 2, order, out);
            }
        }
    }
}

fn to_yaml(y: &Y, order: &[usize]) -> String {
    let mut out = String::new();
    let mut it = order
        .iter()
        .copied()
        .cycle()
        .take(if order.is_empty() { 0 } else { 10_000 });
    render(y, 0, &mut it, &mut out);
    out
}

#[derive(Debug, Clone)]
struct Shape {
    models: Vec<(u8, Option<u16>)>,
    gpus: Vec<(u16, Vec<u32>)>,
    frameworks: Vec<&'static str>,
    quants: Vec<u8>,
    concurrency: Vec<u32>,
    rate: Vec<u16>,
    repeats: u32,
    seed: u64,
    exclude_framework: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::collection::vec((any::<u8>(), prop::option::of(1u16..500)), 1..4),
        prop::collection::vec(
            (
                16u16..200,
                prop::sample::subsequence(vec![1u32, 2, 4, 8], 1..=4),
            ),
            0..3,
        ),
        prop::sample::subsequence(
            vec!["vllm", "sglang", "tgi", "llamacpp", "trtllm", "sim"],
            1..=3,
        ),
        prop::sample::subsequence(vec![4u8, 8, 16], 1..=3),
        prop::sample::subsequence(vec![1u32, 4, 16, 64], 1..=4),
        prop::sample::subsequence(vec![1u16, 5, 20], 0..=3),
        1u32..3,
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                models,
                gpus,
                frameworks,
                quants,
                concurrency,
                rate,
                repeats,
                seed,
                exclude_framework,
            )| Shape {
                models,
                gpus,
                frameworks,
                quants,
                concurrency,
                rate,
                repeats,
                seed,
                exclude_framework,
            },
        )
}

fn matrix(shape: &Shape) -> Y {
    let models = shape
        .models
        .iter()
        .enumerate()
        .map(|(i, (tag, params))| {
            let mut m = vec![
                ("name", s(format!("m{i}-{tag}"))),
                ("path", s(format!("org/m{i}"))),
            ];
            if let Some(p) = params {
                m.push(("params_b", s(p)));
            }
            Y::Map(m)
        })
        .collect();
    let quants = shape
        .quants
        .iter()
        .map(|bits| Y::Map(vec![("name", s(format!("q{bits}"))), ("bits", s(bits))]))
        .collect();
    let mut workloads = vec![Y::Map(vec![
        ("name", s("chat")),
        ("api", s("chat")),
        (
            "dataset",
            Y::Map(vec![
                ("kind", s("random")),
                ("input_tokens", s(128)),
                ("output_tokens", s(32)),
            ]),
        ),
        (
            "load",
            Y::Map(vec![(
                "concurrency",
                Y::Seq(shape.concurrency.iter().map(s).collect()),
            )]),
        ),
        ("requests", s(20)),
        ("warmup", s(2)),
    ])];
    if !shape.rate.is_empty() {
        let mut rates: Vec<Y> = shape.rate.iter().map(s).collect();
        rates.push(s("inf"));
        workloads.push(Y::Map(vec![
            ("name", s("sweep")),
            (
                "dataset",
                Y::Map(vec![
                    ("kind", s("random")),
                    ("input_tokens", s(64)),
                    ("output_tokens", s(16)),
                ]),
            ),
            (
                "load",
                Y::Map(vec![("rate", Y::Seq(rates)), ("arrival", s("poisson"))]),
            ),
            ("duration", s("30s")),
            ("slo", Y::Map(vec![("ttft_ms", s(200)), ("tpot_ms", s(20))])),
        ]));
    }
    let mut top = vec![
        ("campaign", s("prop")),
        ("repeats", s(shape.repeats)),
        ("seed", s(shape.seed)),
        ("models", Y::Seq(models)),
        (
            "frameworks",
            Y::Seq(
                shape
                    .frameworks
                    .iter()
                    .map(|f| Y::Map(vec![("name", s(f))]))
                    .collect(),
            ),
        ),
        ("quantizations", Y::Seq(quants)),
        ("workloads", Y::Seq(workloads)),
    ];
    if !shape.gpus.is_empty() {
        let gpus = shape
            .gpus
            .iter()
            .enumerate()
            .map(|(i, (memory, counts))| {
                Y::Map(vec![
                    ("type", s(format!("G{i}-{memory}GB"))),
                    ("memory_gb", s(memory)),
                    ("counts", Y::Seq(counts.iter().map(s).collect())),
                    ("price_per_hour", s("1.5")),
                ])
            })
            .collect();
        top.push(("gpus", Y::Seq(gpus)));
    }
    if shape.exclude_framework && shape.frameworks.len() > 1 {
        top.push((
            "exclude",
            Y::Seq(vec![Y::Map(vec![
                ("framework", s(shape.frameworks[0])),
                ("quantization", s(format!("q{}", shape.quants[0]))),
            ])]),
        ));
    }
    // Extends the last framework's combinations (the exclude above takes from the first).
    top.push((
        "include",
        Y::Seq(vec![Y::Map(vec![
            ("framework", s(shape.frameworks[shape.frameworks.len() - 1])),
            ("labels", Y::Map(vec![("pool", s("a")), ("zone", s("b"))])),
            ("env", Y::Map(vec![("A_VAR", s("1")), ("B_VAR", s("two"))])),
        ])]),
    ));
    Y::Map(top)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn expansion_is_deterministic(shape in shape()) {
        let yaml = to_yaml(&matrix(&shape), &[]);
        let first = expand(&yaml);
        let second = expand(&yaml);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn ids_do_not_depend_on_key_order(shape in shape(), order in prop::collection::vec(any::<usize>(), 1..64)) {
        let y = matrix(&shape);
        let canonical = expand(&to_yaml(&y, &[]));
        let shuffled_text = to_yaml(&y, &order);
        let shuffled = expand(&shuffled_text);
        let ids = |e: &Expansion| -> Vec<(String, Vec<String>)> {
            e.units
                .iter()
                .map(|u| (u.id.to_string(), u.steps.iter().map(|s| s.id.to_string()).collect()))
                .collect()
        };
        prop_assert_eq!(ids(&canonical), ids(&shuffled), "{}", shuffled_text);
        prop_assert_eq!(canonical, shuffled);
    }
}

#[test]
fn the_example_in_docs_matrix_md_expands_as_described() {
    let docs = include_str!("../../../docs/matrix.md");
    let start = docs
        .find("```yaml\ncampaign:")
        .expect("docs/matrix.md has a complete example")
        + "```yaml\n".len();
    let end = start + docs[start..].find("```").expect("the example block ends");
    let e = expand(&docs[start..end]);
    assert_eq!(
        labels(&e),
        vec![
            "llama-3.1-8b / H100-80GB x1 / vllm / bf16",
            "llama-3.1-8b / H100-80GB x1 / vllm / fp8",
            "llama-3.1-8b / H100-80GB x2 / vllm / bf16",
        ]
    );
    assert_eq!(e.step_count(), 9);
    assert_eq!(e.units[1].config.quantization.args, "--quantization fp8");
}

#[test]
fn a_nul_in_any_value_is_refused_where_it_is() {
    let yaml = BASE.replace(
        "  - { name: vllm }",
        "  - { name: vllm, env: { HF_HOME: \"/cache\\0/x\" } }",
    );
    let err = fail(&yaml);
    let text = err.to_string();
    assert!(text.starts_with("t.yaml:"), "{text}");
    assert!(text.contains("NUL"), "{text}");
    assert_eq!(err.line_col().map(|(line, _)| line), Some(8), "{text}");
}

#[test]
fn a_matrix_over_the_parser_budget_is_explained_in_words() {
    // More values than the parser's node budget allows.
    let mut yaml = String::from("campaign: big\nlabels:\n");
    for i in 0..300_000 {
        yaml.push_str(&format!("  - {i}\n"));
    }
    let text = fail(&yaml).to_string();
    assert!(text.contains("too large"), "{text}");
    assert!(
        !text.contains("Nodes {") && !text.contains("{ nodes"),
        "no Rust debug text: {text}"
    );
}

#[test]
fn reading_a_matrix_file_checks_its_size_and_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; crate::limits::MAX_MATRIX_BYTES + 10]).unwrap();
    let err = super::read_file(&big).unwrap_err();
    assert!(matches!(err, MatrixError::TooLarge { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("big.yaml") && text.contains("4194304"),
        "{text}"
    );

    let latin1 = dir.path().join("latin1.yaml");
    std::fs::write(&latin1, b"campaign: t\nnotes: caf\xe9 au lait\n").unwrap();
    let err = super::read_file(&latin1).unwrap_err();
    assert_eq!(err.line_col(), Some((2, 11)), "{err}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");

    let fine = dir.path().join("fine.yaml");
    std::fs::write(&fine, "campaign: t # café\n").unwrap();
    assert_eq!(super::read_file(&fine).unwrap(), "campaign: t # café\n");
    let err = super::read_file(&dir.path().join("missing.yaml")).unwrap_err();
    assert!(matches!(err, MatrixError::Read { .. }), "{err:?}");
}

#[test]
fn container_settings_get_defaults_and_bad_ones_are_named() {
    use crate::domain::{ContainerNetwork, ContainerSpec, PullPolicy};
    let with = |sglang: &str| BASE.replace("  - { name: sglang }\n", sglang);
    let e = expand(&with(
        "  - { name: sglang, image: lmsys/sglang:v1, container: { pull: always, pull_timeout: 10m, \
         network: publish, shm_size: 32g, run_options: [--ulimit, memlock=-1] } }\n  - { name: tgi, image: tgi:3 }\n",
    ));
    let container = |name: &str| {
        e.units
            .iter()
            .find(|u| u.config.framework.name == name)
            .and_then(|u| u.config.framework.container.clone())
    };
    assert_eq!(
        container("sglang"),
        Some(ContainerSpec {
            pull: PullPolicy::Always,
            pull_timeout_ms: 10 * 60 * 1000,
            network: ContainerNetwork::Publish,
            shm_size: Some("32g".into()),
            run_options: vec!["--ulimit".into(), "memlock=-1".into()],
        })
    );
    assert_eq!(container("tgi"), Some(ContainerSpec::default()));
    assert_eq!(container("vllm"), None);
    // No image, no container settings: the ids of such units are what they were.
    let plain = e
        .units
        .iter()
        .find(|u| u.config.framework.name == "vllm")
        .unwrap();
    assert!(
        !serde_json::to_string(&plain.config)
            .unwrap()
            .contains("container")
    );

    let cases = [
        (
            "  - { name: sglang, container: { pull: never } }\n",
            "`frameworks[1].container` needs an `image` to run",
        ),
        (
            "  - { name: sglang, image: i, container: { pull: sometimes } }\n",
            "`frameworks[1].container.pull` value",
        ),
        (
            "  - { name: sglang, image: i, container: { network: bridge } }\n",
            "`frameworks[1].container.network` value",
        ),
        (
            "  - { name: sglang, image: i, container: { shm_size: lots } }\n",
            "expected a size such as `16g`, found `lots`",
        ),
        (
            "  - { name: sglang, image: i, container: { run_options: [--ipc=host] } }\n",
            "`frameworks[1].container.run_options[0]`: `--ipc` is set by evalctl",
        ),
        (
            "  - { name: sglang, image: i, container: { run_options: [--gpus, all] } }\n",
            "`--gpus` is set by evalctl",
        ),
        (
            "  - { name: sglang, image: i, container: { ipc: host } }\n",
            "ipc",
        ),
    ];
    for (entry, fragment) in cases {
        let err = fail(&with(entry));
        assert!(
            err.to_string().contains(fragment),
            "`{fragment}` not in: {err}"
        );
    }
}

/// A CPU matrix whose one workload's `load` (and extra workload keys) is given.
fn search_matrix(load: &str, extra: &str) -> String {
    format!(
        "campaign: s
models: [{{ name: m, path: m }}]
frameworks: [{{ name: sim }}]
quantizations: [{{ name: bf16, bits: 16 }}]
workloads:
  - name: chat
    dataset: {{ kind: random, input_tokens: 32, output_tokens: 8 }}
    load: {load}
{extra}"
    )
}

#[test]
fn a_search_is_one_step_with_its_bounds_goal_and_arrival() {
    use evalctl_results::probe::Goal;
    use evalctl_results::search::SearchAxis;
    let e = expand(&search_matrix(
        r#"{ search: { over: rate, min: 1, max: 64, goal: "p90 of ttft <= 500ms and tpot <= 50ms", max_probes: 10, precision: "2%" }, arrival: constant }"#,
        "    duration: 30s\n",
    ));
    let steps = &e.units[0].steps;
    assert_eq!(steps.len(), 1);
    let LoadPoint::Search(search) = &steps[0].load else {
        panic!("{:?}", steps[0].load)
    };
    assert_eq!(search.spec.axis, SearchAxis::Rate);
    assert_eq!((search.spec.min, search.spec.max), (1.0, 64.0));
    assert_eq!(
        (
            search.spec.max_probes,
            search.spec.precision,
            search.spec.max_repeats
        ),
        (10, 0.02, 2)
    );
    assert_eq!(search.arrival, Arrival::Constant);
    let Goal::Percentile { percentile, limits } = search.goal else {
        panic!("{:?}", search.goal)
    };
    assert_eq!(
        (percentile, limits.ttft_ms, limits.tpot_ms),
        (90.0, Some(500.0), Some(50.0))
    );
    assert_eq!(steps[0].label(), "chat search rate=1..64 #0");
    // 10 loads, each run at most 1 + 2 times.
    assert_eq!(e.search_bounds(), (1, 30));

    // A goodput goal counts the workload's SLO.
    let e = expand(&search_matrix(
        r#"{ search: { over: concurrency, min: 1, max: 64, goal: "goodput >= 95%" } }"#,
        "    requests: 200\n    slo: { ttft_ms: 300 }\n",
    ));
    let LoadPoint::Search(search) = &e.units[0].steps[0].load else {
        panic!()
    };
    assert!(
        matches!(search.goal, Goal::Attainment { fraction, slo } if fraction == 0.95 && slo.ttft_ms == Some(300.0)),
        "{:?}",
        search.goal
    );
}

#[test]
fn search_mistakes_name_their_field() {
    let cases = [
        (
            r#"{ search: { over: rate, min: 1, max: 64, goal: "p90 of ttft <= 1s" }, rate: [1] }"#,
            "    requests: 100\n",
            "gives `search` and `rate`",
        ),
        (
            r#"{ search: { over: speed, min: 1, max: 64, goal: "p90 of ttft <= 1s" } }"#,
            "    requests: 100\n",
            "over",
        ),
        (
            r#"{ search: { over: rate, min: 8, max: 4, goal: "p90 of ttft <= 1s" } }"#,
            "    requests: 100\n",
            "must not be below",
        ),
        (
            r#"{ search: { over: rate, min: 1, max: 64, goal: "fast" } }"#,
            "    requests: 100\n",
            "`workloads[0].load.search.goal`: `fast` is not a goal",
        ),
        (
            r#"{ search: { over: rate, min: 1, max: 64, goal: "goodput >= 95%" } }"#,
            "    requests: 100\n",
            "the workload has none",
        ),
        (
            r#"{ search: { over: rate, min: 1, max: 64, goal: "p90 of ttft <= 1s" } }"#,
            "    requests: 10\n",
            "needs at least 25",
        ),
        (
            r#"{ search: { over: rate, min: 1, max: 64, goal: "p90 of ttft <= 1s" } }"#,
            "    duration: 10s\n",
            "sends 10 requests",
        ),
        (
            r#"{ search: { over: concurrency, min: 1, max: 64, goal: "p90 of ttft <= 1s" }, arrival: poisson }"#,
            "    requests: 100\n",
            "only used with a rate search",
        ),
        (
            r#"{ search: { over: concurrency, min: 1.5, max: 64, goal: "p90 of ttft <= 1s" } }"#,
            "    requests: 100\n",
            "integer",
        ),
        (
            r#"{ search: { over: rate, min: 1, max: 64, goal: "p90 of ttft <= 1s", precision: 2 } }"#,
            "    requests: 100\n",
            "share between 0 and 1",
        ),
    ];
    for (load, extra, want) in cases {
        let err = fail(&search_matrix(load, extra)).to_string();
        assert!(err.contains(want), "{load}: {err}");
    }
}
