//! Matrix files on disk: every shipped matrix in `matrices/` expands, the malformed fixtures
//! in `tests/fixtures/matrix/` fail at the exact line and column with a useful message, and
//! `matrices/nightly-h100.yaml` expands to what plain arithmetic over its dimensions says.

use std::path::{Path, PathBuf};

use evalctl_coordinator::domain::{DropKind, Expansion};
use evalctl_coordinator::matrix::{self, MatrixError};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures/matrix").join(name)
}

fn shipped(name: &str) -> PathBuf {
    manifest_dir().join("../matrices").join(name)
}

fn expand(path: &Path) -> Expansion {
    matrix::expand_file(path).unwrap_or_else(|err| panic!("{} must expand: {err}", path.display()))
}

/// Expands a malformed fixture and checks where and what the error says.
fn assert_fails(name: &str, line: usize, column: usize, fragments: &[&str]) {
    let path = fixture(name);
    let err = match matrix::expand_file(&path) {
        Ok(_) => panic!("{name} must not expand"),
        Err(err) => err,
    };
    let text = err.to_string();
    assert_eq!(err.line_col(), Some((line, column)), "{name}: {text}");
    assert!(
        text.starts_with(&format!("{}:{line}:{column}: ", path.display())),
        "{name}: the message must start with FILE:LINE:COL: {text}"
    );
    for fragment in fragments {
        assert!(
            text.contains(fragment),
            "{name}: `{fragment}` not in: {text}"
        );
    }
}

#[test]
fn every_shipped_matrix_expands() {
    let dir = manifest_dir().join("../matrices");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("matrices/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let expansion = expand(&path);
        assert!(
            !expansion.units.is_empty(),
            "{} has no units",
            path.display()
        );
        assert!(
            expansion.step_count() > 0,
            "{} has no steps",
            path.display()
        );
        seen += 1;
    }
    assert!(
        seen >= 4,
        "expected at least the four shipped matrices, found {seen}"
    );
}

#[test]
fn valid_fixtures_expand() {
    for name in [
        "valid_minimal.yaml",
        "valid_anchors.yaml",
        "valid_command_workload.yaml",
    ] {
        let expansion = expand(&fixture(name));
        assert!(!expansion.units.is_empty(), "{name}");
    }
    let anchors = expand(&fixture("valid_anchors.yaml"));
    let unit = &anchors.units[0];
    let workloads: Vec<_> = unit.steps.iter().map(|s| s.label()).collect();
    assert_eq!(
        workloads,
        ["short c=1 #0", "short c=4 #0", "long c=1 #0", "long c=4 #0"]
    );
}

#[test]
fn quickstart_is_small_cpu_and_simulated() {
    let e = expand(&shipped("quickstart.yaml"));
    assert_eq!(e.campaign.name, "quickstart");
    assert_eq!(e.units.len(), 2);
    for unit in &e.units {
        assert_eq!(unit.config.gpu.gpu_type, "cpu");
        assert_eq!(unit.config.framework.name, "sim");
        assert!(
            unit.config
                .framework
                .command
                .starts_with("evalctl-agent sim-server")
        );
        assert_eq!(unit.steps.len(), 2);
    }
}

#[test]
fn cpu_llamacpp_selects_a_gguf_file_per_quantization() {
    let e = expand(&shipped("cpu-llamacpp.yaml"));
    assert_eq!(e.units.len(), 4);
    for unit in &e.units {
        let path = &unit.config.model.path;
        let expected_end = format!(
            "/models/{}-{}.gguf",
            unit.config.model.name, unit.config.quantization.name
        );
        assert!(path.ends_with(&expected_end), "{path}");
        assert!(
            !path.contains('$') && !path.starts_with('~'),
            "{path} is expanded"
        );
    }
}

/// Expected expansion of matrices/nightly-h100.yaml, computed from its dimensions with plain
/// arithmetic. Keep in step with the file.
#[test]
fn nightly_h100_matches_independent_arithmetic() {
    let models = [
        ("llama-3.1-8b", 8.0),
        ("llama-3.3-70b", 70.6),
        ("llama-3.1-405b", 405.0),
    ];
    let gpus: [(&str, f64, &[u32]); 2] = [
        ("H100-80GB", 80.0, &[1, 2, 4, 8]),
        ("H200-141GB", 141.0, &[1, 8]),
    ];
    let frameworks = ["vllm", "sglang", "tgi"];
    let quants = [("bf16", 16.0), ("fp8", 8.0), ("int4", 4.0)];
    let chat_steps = 3; // concurrency [1, 16, 64] × repeats 1
    let rate_steps = 4; // rate [2, 8, 32, inf] × repeats 1

    let mut units = Vec::new();
    let mut pruned = Vec::new();
    let mut excluded = 0;
    let mut steps = 0;
    let mut visit = |model: &str,
                     params: f64,
                     gpu: &str,
                     memory: f64,
                     count: u32,
                     fw: &str,
                     quant: &str,
                     bits: f64| {
        let label = format!("{model} / {gpu} x{count} / {fw} / {quant}");
        let need_gb = params * bits / 8.0 * 1.2;
        if need_gb > memory * f64::from(count) {
            pruned.push(label);
        } else {
            steps += if model == "llama-3.1-405b" {
                chat_steps
            } else {
                chat_steps + rate_steps
            };
            units.push(label);
        }
    };
    for (model, params) in models {
        for (gpu, memory, counts) in gpus {
            for &count in counts {
                for fw in frameworks {
                    for (quant, bits) in quants {
                        let is_excluded = (model == "llama-3.1-8b" && (count == 4 || count == 8))
                            || (fw == "tgi" && gpu == "H200-141GB");
                        if is_excluded {
                            excluded += 1;
                        } else {
                            visit(model, params, gpu, memory, count, fw, quant, bits);
                        }
                    }
                }
            }
        }
    }
    // The include entry that adds a combination the cross product lacks.
    visit(
        "llama-3.3-70b",
        70.6,
        "H200-141GB",
        141.0,
        2,
        "vllm",
        "fp8",
        8.0,
    );

    let e = expand(&shipped("nightly-h100.yaml"));
    let actual_units: Vec<_> = e.units.iter().map(|u| u.config.label()).collect();
    let actual_pruned: Vec<_> = e
        .dropped
        .iter()
        .filter(|d| d.kind == DropKind::Pruned)
        .map(|d| d.label.clone())
        .collect();
    let actual_excluded = e
        .dropped
        .iter()
        .filter(|d| d.kind == DropKind::Excluded)
        .count();

    assert_eq!(actual_units, units);
    assert_eq!(e.units.len(), 77);
    assert_eq!(e.step_count(), steps);
    assert_eq!(actual_pruned, pruned);
    assert_eq!(actual_excluded, excluded);
    assert_eq!(
        actual_excluded + actual_pruned.len() + actual_units.len(),
        3 * 6 * 3 * 3 + 1
    );

    let first_pruned = e
        .dropped
        .iter()
        .find(|d| d.kind == DropKind::Pruned)
        .expect("some are pruned");
    assert_eq!(
        first_pruned.label,
        "llama-3.3-70b / H100-80GB x1 / vllm / bf16"
    );
    assert_eq!(
        first_pruned.reason,
        "weights need 169.4 GB (70.6B × 16 bit × 1.2), 1 × H100-80GB has 80 GB"
    );
    for unit in &e.units {
        let is_vllm = unit.config.framework.name == "vllm";
        assert_eq!(
            unit.config.extra_args == "--no-enable-prefix-caching",
            is_vllm,
            "{}",
            unit.config.label()
        );
    }
}

#[test]
fn unknown_top_level_key_suggests_the_right_one() {
    assert_fails(
        "unknown_top_level_key.yaml",
        1,
        1,
        &[
            "unknown key at the top level: `campain`",
            "(hint: did you mean `campaign`?)",
        ],
    );
}

#[test]
fn unknown_nested_key() {
    assert_fails(
        "unknown_nested_key.yaml",
        9,
        7,
        &[
            "unknown key in `workloads[0].dataset`: `inpt_tokens`",
            "did you mean `input_tokens`?",
        ],
    );
}

#[test]
fn wrong_type() {
    assert_fails(
        "wrong_type.yaml",
        2,
        10,
        &["`repeats`: expected an integer, found the string `two`"],
    );
}

#[test]
fn missing_required_field() {
    assert_fails(
        "missing_field.yaml",
        3,
        5,
        &["missing required key `path` in `models[0]`"],
    );
}

#[test]
fn bad_duration() {
    assert_fails(
        "bad_duration.yaml",
        5,
        22,
        &[
            "`frameworks[0].startup_timeout`: invalid duration `20 parsecs`",
            "e.g. `90s`, `20m`",
        ],
    );
}

#[test]
fn unknown_placeholder() {
    assert_fails(
        "unknown_placeholder.yaml",
        5,
        32,
        &[
            "`frameworks[0].command`: unknown placeholder `{model.nam}`",
            "{gpu.indices}",
            "did you mean `{model.name}`?",
        ],
    );
}

#[test]
fn exclude_naming_an_unknown_framework() {
    assert_fails(
        "exclude_unknown_framework.yaml",
        9,
        18,
        &[
            "unknown framework in `exclude[1].framework`: `tensorrt`; expected one of `vllm`, `sglang`",
        ],
    );
}

#[test]
fn duplicate_model_name() {
    assert_fails(
        "duplicate_model_name.yaml",
        4,
        13,
        &["duplicate model `llama` (first defined at 3:13)"],
    );
}

#[test]
fn requests_and_duration_together() {
    assert_fails(
        "requests_and_duration.yaml",
        10,
        5,
        &["`workloads[0]` gives both `requests` and `duration`"],
    );
}

#[test]
fn empty_gpu_counts() {
    assert_fails(
        "empty_counts.yaml",
        4,
        47,
        &["`gpus[0].counts` must list at least one GPU count"],
    );
}

#[test]
fn bad_campaign_name() {
    assert_fails(
        "bad_campaign_name.yaml",
        1,
        11,
        &[
            "`campaign` must be a name of letters, digits",
            "`nightly h100` contains ` `",
        ],
    );
}

#[test]
fn yaml_syntax_error() {
    let err = matrix::expand_file(&fixture("yaml_syntax_error.yaml")).unwrap_err();
    assert!(matches!(err, MatrixError::Syntax { .. }), "{err:?}");
    assert_fails("yaml_syntax_error.yaml", 3, 11, &["invalid YAML:"]);
}

#[test]
fn negative_bits() {
    assert_fails(
        "negative_bits.yaml",
        6,
        27,
        &["`quantizations[1].bits` must be greater than 0, found -4"],
    );
}

#[test]
fn include_adding_a_combination_needs_all_dimensions() {
    assert_fails(
        "include_missing_dimensions.yaml",
        9,
        5,
        &[
            "include[0] matches no combination",
            "does not name `gpu`, `framework`, `quantization`",
        ],
    );
}

#[test]
fn unknown_preset() {
    assert_fails(
        "unknown_preset.yaml",
        4,
        27,
        &[
            "unknown `frameworks[0].preset` `sglan`",
            "did you mean `sglang`?",
        ],
    );
}

#[test]
fn duplicate_key_in_a_mapping() {
    assert_fails(
        "duplicate_key.yaml",
        10,
        5,
        &["duplicate key `name` (first given at 6:5)"],
    );
}

#[test]
fn unknown_api() {
    assert_fails(
        "unknown_api.yaml",
        7,
        10,
        &[
            "unknown `workloads[0].api` value `chatt`",
            "did you mean `chat`?",
        ],
    );
}

#[test]
fn unset_environment_variable_in_a_path() {
    assert_fails(
        "unset_env_var.yaml",
        4,
        11,
        &[
            "environment variable `EVALCTL_TEST_UNSET_VARIABLE_4F2A` is not set",
            "${EVALCTL_TEST_UNSET_VARIABLE_4F2A:-",
        ],
    );
}

#[test]
fn zero_rate() {
    assert_fails(
        "rate_zero.yaml",
        9,
        17,
        &["`workloads[0].load.rate[1]` must be greater than 0, found 0"],
    );
}

#[test]
fn missing_file_names_the_path() {
    let err = matrix::expand_file(Path::new("/nonexistent/evalctl/m.yaml")).unwrap_err();
    assert!(matches!(err, MatrixError::Read { .. }), "{err:?}");
    assert_eq!(err.line_col(), None);
    assert!(
        err.to_string().contains("/nonexistent/evalctl/m.yaml"),
        "{err}"
    );
}
