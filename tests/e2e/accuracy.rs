//! Accuracy as a result (docs/accuracy.md): lm-evaluation-harness (`api: lm-eval`, the real
//! lm-eval from scripts/setup-lm-eval.sh, offline) runs the shipped arithmetic task against
//! simulated servers answering it at known rates. A bf16 deployment answers 80 % right and
//! a faster int4 one 50 %: lm-eval measures those rates within their standard errors,
//! `evalctl results`, the scores export and the report show both, `recommend --min` drops
//! the int4 deployment it would otherwise rank first, and `compare` flags a campaign whose
//! bf16 deployment fell to 50 % as a regression (exit code 7).

use std::path::{Path, PathBuf};

use evalctl_tests::{CoordinatorProcess, cache_dir, evalctl, json_stdout, workspace_root};
use serde_json::Value;

use super::results_fixture::{parse_csv, run_local_ok, stderr};

/// Questions each lm-eval run asks (`limit`).
const QUESTIONS: f64 = 50.0;
/// The score the shipped task reports.
const SCORE: &str = "evalctl_arith/exact_match,strict-match";

/// The lm-eval program scripts/setup-lm-eval.sh installs.
fn lm_eval() -> PathBuf {
    let program = cache_dir().join("lm-eval-venv/bin/lm_eval");
    assert!(
        program.exists(),
        "{} is missing: run scripts/setup-lm-eval.sh (scripts/test.sh does)",
        program.display()
    );
    program
}

/// One model served in bf16 and in int4 (twice as fast to decode), each answering the
/// task at its own accuracy; a chat load step and an lm-eval step on each, over `endpoint`.
fn matrix(campaign: &str, bf16: f64, int4: f64, endpoint: &str) -> String {
    let tasks = workspace_root().join("datasets/lm-eval/evalctl_arith");
    format!(
        r#"
campaign: {campaign}
models:
  - {{ name: sim-acc, path: sim-acc, params_b: 1 }}
frameworks:
  - name: sim
quantizations:
  - {{ name: bf16, bits: 16 }}
  - {{ name: int4, bits: 4 }}
workloads:
  - name: chat
    api: chat
    dataset: {{ kind: random, input_tokens: 64, output_tokens: 16 }}
    load: {{ concurrency: [2] }}
    requests: 16
  - name: arith
    api: lm-eval
    lm_eval:
      tasks: [evalctl_arith]
      include_path: {tasks}
      limit: {QUESTIONS}
      endpoint: {endpoint}
      concurrency: 4
      program: {program}
    duration: 5m
include:
  - {{ quantization: bf16, extra_args: --accuracy {bf16} --decode-ms-per-token 4 }}
  - {{ quantization: int4, extra_args: --accuracy {int4} --decode-ms-per-token 2 }}
"#,
        tasks = tasks.display(),
        program = lm_eval().display(),
    )
}

/// The stored score of the deployment in quantization `quant`: value and standard error.
fn score_of(results: &Value, quant: &str) -> (f64, f64) {
    let step = results
        .as_array()
        .expect("results")
        .iter()
        .find(|r| {
            r["unit"].as_str().is_some_and(|u| u.ends_with(quant))
                && r["result"]["scores"].is_array()
        })
        .unwrap_or_else(|| panic!("no scored step of {quant}: {results}"));
    let score = &step["result"]["scores"][0];
    assert_eq!(score["name"], SCORE, "{score}");
    assert_eq!(score["samples"], 50, "{score}");
    (
        score["value"].as_f64().expect("value"),
        score["stderr"].as_f64().expect("stderr"),
    )
}

fn run(url: &str, args: &[&str]) -> std::process::Output {
    evalctl(Some(url), args)
}

#[test]
fn lm_eval_measures_known_accuracies_and_every_view_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    run_local_ok(
        dir.path(),
        "base.yaml",
        &matrix("acc-base", 0.8, 0.5, "chat"),
        &[],
    );
    run_local_ok(
        dir.path(),
        "drop.yaml",
        &matrix("acc-drop", 0.5, 0.5, "completions"),
        &[],
    );
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    // lm-eval measured each rate, within the standard error it reported.
    let base = json_stdout(&run(&url, &["results", "acc-base", "--json"]));
    for (quant, expected) in [("bf16", 0.8), ("int4", 0.5)] {
        let (value, stderr) = score_of(&base, quant);
        let binomial = (expected * (1.0 - expected) / (QUESTIONS - 1.0)).sqrt();
        assert!((stderr - binomial).abs() < 1e-6, "{quant}: stderr {stderr}");
        assert!(
            (value - expected).abs() <= stderr,
            "{quant}: {value} ± {stderr}"
        );
    }
    let drop = json_stdout(&run(&url, &["results", "acc-drop", "--json"]));
    assert!((score_of(&drop, "bf16").0 - 0.5).abs() <= score_of(&drop, "bf16").1);
    let table = run(&url, &["results", "acc-base"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("Accuracy (harness scores") && text.contains("0.800 ± 0.057"),
        "{text}"
    );

    // compare: the bf16 drop from 0.8 to 0.5 is a regression; int4 did not move.
    let compared = run(&url, &["compare", "acc-base", "acc-drop", "--json"]);
    assert_eq!(compared.status.code(), Some(7), "{}", stderr(&compared));
    let report: Value = serde_json::from_slice(&compared.stdout).expect("JSON");
    let changes = report["accuracy"].as_array().expect("accuracy changes");
    let verdict = |quant: &str| {
        changes
            .iter()
            .find(|c| c["config"].as_str().is_some_and(|k| k.ends_with(quant)))
            .map(|c| c["verdict"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no {quant} change: {report}"))
    };
    assert_eq!(verdict("bf16"), "regression", "{report}");
    assert_eq!(verdict("int4"), "unchanged", "{report}");
    let same = run(&url, &["compare", "acc-base", "acc-base"]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));

    // recommend: int4 serves faster and ranks first, until --min drops it.
    let slo = "ttft_p90=60s";
    let ranked = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["recommend", "acc-base", "--slo", slo, "--json"];
        args.extend_from_slice(extra);
        let out = json_stdout(&run(&url, &args));
        out["rankings"][0]["ranked"]
            .as_array()
            .expect("ranked")
            .iter()
            .map(|r| r["config"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let all = ranked(&[]);
    assert!(all.len() == 2 && all[0].ends_with("int4"), "{all:?}");
    let bounded = ranked(&["--min", "evalctl_arith/exact_match=0.7"]);
    assert!(
        bounded.len() == 1 && bounded[0].ends_with("bf16"),
        "{bounded:?}"
    );
    let unknown = run(
        &url,
        &[
            "recommend",
            "acc-base",
            "--slo",
            slo,
            "--min",
            "mmlu/acc=0.5",
        ],
    );
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains(SCORE), "{}", stderr(&unknown));

    // The report's accuracy table and chart show both deployments.
    let page = report_page(&url, dir.path());
    let section = &page[page.find(r#"id="accuracy""#).expect("accuracy section")..];
    for shown in [
        "cpu x1 / sim / bf16",
        "cpu x1 / sim / int4",
        "0.800 ± 0.057 (n=50)",
        "0.500 ± 0.071 (n=50)",
    ] {
        assert!(
            section.contains(shown),
            "{shown} not in the accuracy section"
        );
    }

    // The scores export: one typed row per score.
    let csv = dir.path().join("scores.csv");
    let out = run(
        &url,
        &[
            "export",
            "acc-base",
            "--scores",
            "-o",
            csv.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = parse_csv(&std::fs::read_to_string(&csv).unwrap());
    let column = |name: &str| rows[0].iter().position(|c| c == name).expect(name);
    assert_eq!(rows.len(), 1 + 2, "{rows:?}");
    for row in &rows[1..] {
        assert_eq!(row[column("task")], "evalctl_arith");
        assert_eq!(row[column("metric")], "exact_match");
        assert_eq!(row[column("filter")], "strict-match");
        assert_eq!(row[column("samples")], "50");
    }
}

fn report_page(url: &str, dir: &Path) -> String {
    let file = dir.join("report.html");
    let out = run(url, &["report", "acc-base", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read_to_string(file).unwrap()
}
