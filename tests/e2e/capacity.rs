//! Capacity at the SLO across deployments (docs/capacity.md): one campaign of five
//! simulated deployments, each with a rate search, through the real coordinator, agent and
//! CLI. The simulator's `--max-num-seqs` sets each deployment's capacity (a request holds a
//! slot for about 34 ms: about 29 requests/s per slot), so the verdicts are known in kind:
//! one slot already misses the goal at `min`, two and three find a capacity inside the
//! range, four still meet it at `max`, and a server that refuses every prompt (its context
//! is shorter than the prompts) stops its search on server errors, with no capacity.
//! `evalctl recommend` ranks them by cost per million tokens, and by TOPSIS, checked
//! against pymcdm on the same matrix.

use std::path::PathBuf;
use std::process::Command;

use evalctl_tests::{CoordinatorProcess, evalctl, json_stdout};
use serde_json::Value;

use super::results_fixture::{run_local, stderr};

const MATRIX: &str = r#"
campaign: capacity-e2e
models: [{ name: sim-1b, path: sim-1b, params_b: 1 }]
gpus: [{ type: cpu, counts: [1], price_per_hour: 3.6 }]
frameworks: [{ name: sim }]
quantizations:
  - { name: seqs1, bits: 16 }
  - { name: seqs2, bits: 16 }
  - { name: seqs3, bits: 16 }
  - { name: seqs4, bits: 16 }
  - { name: short, bits: 16 }
workloads:
  - name: chat
    api: completions
    dataset: { kind: random, input_tokens: 32, output_tokens: 8 }
    load:
      search: { over: rate, min: 36, max: 100, goal: "p90 of ttft <= 60ms", precision: 5% }
      arrival: constant
    duration: 1s
include:
  - { quantization: seqs1, extra_args: --max-num-seqs 1 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: seqs2, extra_args: --max-num-seqs 2 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: seqs3, extra_args: --max-num-seqs 3 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: seqs4, extra_args: --max-num-seqs 4 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: short, extra_args: --max-num-seqs 4 --max-model-len 16 }
"#;

fn deployment<'a>(rows: &'a [Value], quantization: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["config"].as_str().unwrap().ends_with(quantization))
        .unwrap_or_else(|| panic!("no row for {quantization}: {rows:?}"))
}

/// The pymcdm venv scripts/setup-pymcdm.sh makes.
fn pymcdm_python() -> PathBuf {
    let cache = std::env::var_os("EVALCTL_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/evalctl"),
        PathBuf::from,
    );
    let python = cache.join("pymcdm-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-pymcdm.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

#[test]
fn searches_find_each_deployments_capacity_and_recommend_ranks_them() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_local(dir.path(), "capacity.yaml", MATRIX, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "a normal run logged:\n{log}"
    );
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    let rec = json_stdout(&evalctl(
        Some(&url),
        &["recommend", "capacity-e2e", "--json"],
    ));
    assert_eq!(rec["capacity"]["ranked_by"], "cost", "{rec}");
    let rows = rec["capacity"]["workloads"][0]["deployments"]
        .as_array()
        .expect("deployments")
        .clone();
    assert_eq!(rows.len(), 5, "{rec}");

    // One slot: misses at min, plainly.
    let one = deployment(&rows, "seqs1");
    assert_eq!(one["stopped"], "lowest_fails", "{one}");
    assert_eq!(
        (one["capacity"].is_null(), one["probes"].as_u64()),
        (true, Some(1))
    );
    // Two and three slots: a capacity inside the range, bracketed within 5% (or the
    // repeats' inconclusive load), in at most 8 probes.
    let mut found = Vec::new();
    for q in ["seqs2", "seqs3"] {
        let row = deployment(&rows, q);
        assert_eq!(row["stopped"], "precision_reached", "{row}");
        let capacity = row["capacity"].as_f64().unwrap();
        let failing = row["first_failing"].as_f64().unwrap();
        assert!(failing / capacity <= 1.05 + 1e-9, "{row}");
        assert!(row["probes"].as_u64().unwrap() <= 8, "{row}");
        assert!(row["output_tok_s"].as_f64().unwrap() > 0.0, "{row}");
        found.push(capacity);
    }
    assert!(
        (45.0..75.0).contains(&found[0])
            && (70.0..100.0).contains(&found[1])
            && found[1] > found[0],
        "two slots {}, three slots {}",
        found[0],
        found[1]
    );
    // Four slots: still meets the goal at max.
    let four = deployment(&rows, "seqs4");
    assert_eq!(
        (four["stopped"].as_str(), four["capacity"].as_f64()),
        (Some("highest_passes"), Some(100.0)),
        "{four}"
    );
    // Prompts longer than the context: the server fails them, the search says so.
    let short = deployment(&rows, "short");
    assert_eq!(short["stopped"], "server_failed", "{short}");
    assert!(short["capacity"].is_null(), "{short}");
    assert!(
        short["unranked_because"]
            .as_str()
            .unwrap()
            .contains("server failed"),
        "{short}"
    );

    // Ranked by cost per million tokens at the capacity: more capacity, less cost.
    let ranked: Vec<&str> = rows
        .iter()
        .filter(|r| r["rank"].is_u64())
        .map(|r| r["config"].as_str().unwrap())
        .collect();
    assert_eq!(ranked.len(), 3, "{rows:?}");
    assert!(
        ranked[0].ends_with("seqs4") && ranked[2].ends_with("seqs2"),
        "{ranked:?}"
    );
    for r in rows.iter().filter(|r| r["rank"].is_u64()) {
        let (tok_s, cost) = (
            r["output_tok_s"].as_f64().unwrap(),
            r["cost_per_million_tokens"].as_f64().unwrap(),
        );
        assert!(
            (cost - 3.6 / 3600.0 / tok_s * 1e6).abs() < 1e-6 * cost,
            "{r}"
        );
    }

    // TOPSIS with weights, against pymcdm's TOPSIS (vector normalisation) on the same
    // matrix: cost (a cost criterion), throughput per GPU and capacity (benefits).
    let topsis = json_stdout(&evalctl(
        Some(&url),
        &[
            "recommend",
            "capacity-e2e",
            "--json",
            "--rank",
            "topsis",
            "--weights",
            "cost=0.5,throughput=0.2,capacity=0.3",
        ],
    ));
    let rows: Vec<Value> = topsis["capacity"]["workloads"][0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rank"].is_u64())
        .cloned()
        .collect();
    assert_eq!(rows.len(), 3, "{topsis}");
    let matrix: Vec<[f64; 3]> = rows
        .iter()
        .map(|r| {
            [
                r["cost_per_million_tokens"].as_f64().unwrap(),
                r["output_tok_s_per_gpu"].as_f64().unwrap(),
                r["capacity"].as_f64().unwrap(),
            ]
        })
        .collect();
    let script = format!(
        "import json, numpy as np\n\
         from pymcdm.methods import TOPSIS\n\
         from pymcdm import normalizations\n\
         m = np.array({matrix:?})\n\
         s = TOPSIS(normalizations.vector_normalization)(m, np.array([0.5, 0.2, 0.3]), np.array([-1, 1, 1]))\n\
         print(json.dumps(list(s)))\n"
    );
    let out = Command::new(pymcdm_python())
        .args(["-c", &script])
        .output()
        .expect("run pymcdm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<f64> = serde_json::from_slice(&out.stdout).expect("pymcdm scores");
    for (row, want) in rows.iter().zip(&expected) {
        let got = row["score"].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-9,
            "{}: evalctl {got}, pymcdm {want}",
            row["config"]
        );
    }
    // Ranked by score, best first.
    let scores: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // `evalctl results` lists each search's verdict under its step table.
    let results = evalctl(Some(&url), &["results", "capacity-e2e"]);
    let listed = String::from_utf8_lossy(&results.stdout);
    assert!(
        listed.contains("Capacity searches")
            && listed.contains(
                "seqs1 chat @ search rate=36..100 #0: capacity - (first failing 36.0 req/s)"
            ),
        "{listed}"
    );

    // The human table says the same.
    let text = evalctl(Some(&url), &["recommend", "capacity-e2e"]);
    let table = String::from_utf8_lossy(&text.stdout);
    assert!(
        table.contains("capacity at SLO (p90 ttft ≤ 60 ms)")
            && table.contains("the lowest load already misses the goal")
            && table.contains("the server failed requests"),
        "{table}"
    );
}
