//! Capacity at the SLO across deployments (docs/capacity.md): one campaign of five
//! simulated deployments, each with a rate search, through the real coordinator, agent and
//! CLI. The simulator's `--max-num-seqs` sets each deployment's capacity (a request holds a
//! slot for about 34 ms: about 29 requests/s per slot), so the verdicts are known in kind:
//! one slot already misses the goal at `min`, two and three find a capacity inside the
//! range, four still meet it at `max`, and a server that refuses every prompt (its context
//! is shorter than the prompts) stops its search on server errors, with no capacity.
//! The two capacities inside the range are checked against a dense sweep of the same
//! servers (listed rates 2 req/s apart, judged by each step's own p90 TTFT): the search
//! must land within its 5% precision of the sweep's answer, give or take one sweep step.
//! The search comes out a little lower (3–5% here): it judges the steady window, which
//! leaves out the quiet start that flatters a whole step's p90.
//! `evalctl recommend` ranks them by cost per million tokens, and by TOPSIS, checked
//! against pymcdm on the same matrix.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use evalctl_tests::{
    AgentProcess, CoordinatorProcess, evalctl, eventually, json_stdout, processes_with,
    unique_suffix,
};
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
      search: { over: rate, min: 36, max: 120, goal: "p90 of ttft <= 60ms", precision: 5% }
      arrival: constant
    duration: 1s
  - name: sweep2
    api: completions
    dataset: { kind: random, input_tokens: 32, output_tokens: 8 }
    load:
      rate: [50, 52, 54, 56, 58, 60, 62, 64, 66, 68, 70, 72, 74, 76, 78, 80]
      arrival: constant
    duration: 1s
  - name: sweep3
    api: completions
    dataset: { kind: random, input_tokens: 32, output_tokens: 8 }
    load:
      rate: [80, 82, 84, 86, 88, 90, 92, 94, 96, 98, 100, 102, 104, 106, 108, 110, 112, 114, 116, 118, 120]
      arrival: constant
    duration: 1s
include:
  - { quantization: seqs1, workloads: [chat], extra_args: --max-num-seqs 1 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: seqs2, workloads: [chat, sweep2], extra_args: --max-num-seqs 2 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: seqs3, workloads: [chat, sweep3], extra_args: --max-num-seqs 3 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: seqs4, workloads: [chat], extra_args: --max-num-seqs 4 --decode-ms-per-token 4 --prefill-us-per-token 40 }
  - { quantization: short, workloads: [chat], extra_args: --max-num-seqs 4 --max-model-len 16 }
"#;

fn deployment<'a>(rows: &'a [Value], quantization: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["config"].as_str().unwrap().ends_with(quantization))
        .unwrap_or_else(|| panic!("no row for {quantization}: {rows:?}"))
}

/// Spacing of the `sweep2` and `sweep3` workloads' rates, req/s: each sweeps its
/// deployment's side of the range densely, and must see the goal met then missed.
const SWEEP_STEP: f64 = 2.0;

/// The capacity of deployment `quantization` by the dense sweep, judged from its steps'
/// own metrics (not by the search's rule): the highest swept rate below the first one whose
/// p90 TTFT exceeds 60 ms or that failed requests, and that first missing rate.
fn swept_capacity(results: &[Value], quantization: &str) -> (f64, f64) {
    let mut sweep: Vec<(f64, bool)> = results
        .iter()
        .filter(|r| {
            r["unit"].as_str().unwrap().ends_with(quantization)
                && r["result"]["step_label"]
                    .as_str()
                    .unwrap()
                    .starts_with("sweep")
        })
        .map(|r| {
            let label = r["result"]["step_label"].as_str().unwrap();
            let rate: f64 = label
                .split("rate=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no rate in {label}"));
            let metrics = &r["result"]["metrics"];
            let meets = metrics["failed"].as_u64() == Some(0)
                && metrics["ttft_ms"]["p90"].as_f64().unwrap() <= 60.0;
            (rate, meets)
        })
        .collect();
    sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(sweep.len() >= 16, "{quantization}: {sweep:?}");
    let first_missed = sweep
        .iter()
        .position(|(_, meets)| !meets)
        .unwrap_or_else(|| panic!("{quantization} meets the goal at every swept rate"));
    assert!(first_missed > 0, "{quantization} misses at the lowest rate");
    (sweep[first_missed - 1].0, sweep[first_missed].0)
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
    // The dry run says how many probe runs the searches can add: 8 loads × 3 runs each.
    let dry = json_stdout(&evalctl(
        None,
        &[
            "submit",
            dir.path().join("capacity.yaml").to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(
        (
            dry["capacity_searches"].as_u64(),
            dry["probe_runs_at_most"].as_u64()
        ),
        (Some(5), Some(5 * 8 * 3)),
        "{dry}"
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
    let rows_by_cost = rows.clone();

    // One slot: misses at min, plainly.
    let one = deployment(&rows, "seqs1");
    assert_eq!(one["stopped"], "lowest_fails", "{one}");
    assert_eq!(
        (one["capacity"].is_null(), one["probes"].as_u64()),
        (true, Some(1))
    );
    // Two and three slots: a capacity inside the range, bracketed within 5% (or the
    // repeats' inconclusive load), in at most 8 probes, and within 5% of what the dense
    // sweep of the same server finds.
    let listed = stored(&url, "capacity-e2e");
    let mut found = Vec::new();
    for q in ["seqs2", "seqs3"] {
        let row = deployment(&rows, q);
        let (swept, first_missed) = swept_capacity(&listed, q);
        let capacity = row["capacity"].as_f64().unwrap();
        eprintln!(
            "{q}: search capacity {capacity} (first failing {}, {} probes, {} runs); \
             dense sweep: {swept} req/s meets the goal, {first_missed} misses it",
            row["first_failing"], row["probes"], row["runs"]
        );
        assert!(
            (capacity - swept).abs() <= 0.05 * swept + SWEEP_STEP,
            "{q}: the search found {capacity} req/s, the sweep {swept}"
        );
        assert_eq!(row["stopped"], "precision_reached", "{row}");
        let failing = row["first_failing"].as_f64().unwrap();
        assert!(failing / capacity <= 1.05 + 1e-9, "{row}");
        assert!(row["probes"].as_u64().unwrap() <= 8, "{row}");
        assert!(row["output_tok_s"].as_f64().unwrap() > 0.0, "{row}");
        found.push(capacity);
    }
    assert!(
        (45.0..75.0).contains(&found[0])
            && (75.0..120.0).contains(&found[1])
            && found[1] > found[0],
        "two slots {}, three slots {}",
        found[0],
        found[1]
    );
    // Four slots: still meets the goal at max.
    let four = deployment(&rows, "seqs4");
    assert_eq!(
        (four["stopped"].as_str(), four["capacity"].as_f64()),
        (Some("highest_passes"), Some(120.0)),
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
                "seqs1 chat @ search rate=36..120 #0: capacity - (first failing 36.0 req/s)"
            ),
        "{listed}"
    );

    // The report's capacity section charts the three capacities and their three costs, and
    // tables all five searches.
    let report = dir.path().join("report.html");
    let out = evalctl(
        Some(&url),
        &["report", "capacity-e2e", "-o", report.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(&report).unwrap();
    let section = &page[page
        .find(r#"<h2 id="capacity">"#)
        .expect("capacity section")..];
    let section = &section[..section[4..].find("<h2").map_or(section.len(), |i| i + 4)];
    assert_eq!(
        section.matches(r#"<rect class="bar""#).count(),
        6,
        "{section}"
    );
    assert!(
        section.contains("the lowest load already misses the goal")
            && section.contains("the server failed requests"),
        "{section}"
    );

    // The export: every probe run under its search, and one verdict row per search that
    // agrees with recommend's.
    let export = dir.path().join("steps.jsonl");
    let out = evalctl(
        Some(&url),
        &["export", "capacity-e2e", "-o", export.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let exported: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdicts: Vec<&Value> = exported
        .iter()
        .filter(|r| !r["search_stopped"].is_null())
        .collect();
    assert_eq!(verdicts.len(), 5);
    for verdict in verdicts {
        let probes = exported
            .iter()
            .filter(|r| r["search_step"] == verdict["step_id"] && !r["probe_outcome"].is_null())
            .count();
        assert_eq!(
            probes as u64,
            verdict["search_runs"].as_u64().unwrap(),
            "{verdict}"
        );
        let row = deployment(&rows_by_cost, verdict["quantization"].as_str().unwrap());
        assert_eq!(verdict["search_capacity"], row["capacity"], "{verdict}");
    }

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

/// Stored results of `campaign`, as `evalctl results --json` prints them.
fn stored(url: &str, campaign: &str) -> Vec<Value> {
    json_stdout(&evalctl(Some(url), &["results", campaign, "--json"]))
        .as_array()
        .expect("results array")
        .clone()
}

/// Step ids of the stored probe runs.
fn probe_ids(results: &[Value]) -> BTreeSet<String> {
    results
        .iter()
        .filter(|r| !r["result"]["probe"].is_null())
        .map(|r| r["step_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_search_killed_midway_resumes_on_another_agent_without_repeating_a_stored_probe() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start_with(dir.path(), &["--lease-ttl", "3s"]);
    let url = coordinator.url();
    let suffix = unique_suffix();
    let name = format!("capacity-kill-{suffix}");
    let marker = format!("capkill{}", suffix.replace('-', "x"));
    let matrix = format!(
        "campaign: {name}
models: [{{ name: {marker}, path: sim }}]
frameworks: [{{ name: sim }}]
quantizations: [{{ name: bf16, bits: 16 }}]
workloads:
  - name: chat
    api: completions
    dataset: {{ kind: random, input_tokens: 32, output_tokens: 8 }}
    load:
      search: {{ over: rate, min: 36, max: 140, goal: \"p90 of ttft <= 60ms\", precision: 5% }}
      arrival: constant
    duration: 1s
include:
  - {{ framework: sim, extra_args: --max-num-seqs 3 --decode-ms-per-token 4 --prefill-us-per-token 40 }}
"
    );
    let path = dir.path().join("m.yaml");
    std::fs::write(&path, matrix).unwrap();
    json_stdout(&evalctl(
        Some(&url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));

    let mut first = AgentProcess::start(&url, &dir.path().join("first"), &[]);
    eventually(Duration::from_secs(90), "three stored probe runs", || {
        probe_ids(&stored(&url, &name)).len() >= 3
    });
    first.kill9_with_servers();
    let before = probe_ids(&stored(&url, &name));
    assert!(
        processes_with(&marker).is_empty(),
        "the killed agent's server outlived it"
    );

    // A fresh host: it knows only what the coordinator stored and sends with the lease.
    let mut second = AgentProcess::start(&url, &dir.path().join("second"), &[]);
    eventually(Duration::from_secs(120), "the campaign to finish", || {
        json_stdout(&evalctl(Some(&url), &["status", &name, "--json"]))["campaign"]["state"]
            == "succeeded"
    });
    let results = stored(&url, &name);
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "a step stored twice: {ids:?}"
    );
    let verdict = results
        .iter()
        .find_map(|r| r["result"]["search"].as_object())
        .expect("the search's verdict");
    let runs = verdict["verdict"]["runs"].as_u64().unwrap() as usize;
    let after = probe_ids(&results);
    assert_eq!(after.len(), runs, "every run the verdict counts is stored");
    assert!(before.is_subset(&after) && after.len() > before.len());
    assert_eq!(
        verdict["verdict"]["stopped"], "precision_reached",
        "{verdict:?}"
    );
    // The second agent ran only the probes not stored when the first died (and at most
    // the one that was in flight): each run it judged was stored as its own.
    let second_log = second.log();
    let judged = second_log.matches("probe run judged").count();
    let by_second = results
        .iter()
        .filter(|r| {
            !r["result"]["probe"].is_null() && !before.contains(r["step_id"].as_str().unwrap())
        })
        .count();
    assert_eq!(
        judged, by_second,
        "the second agent repeated a stored probe:\n{second_log}"
    );
    assert_eq!(judged, runs - before.len());
    eprintln!(
        "search killed after {} stored probe runs; resumed: {judged} more, {runs} in all, capacity {}",
        before.len(),
        verdict["verdict"]["capacity"]
    );
    second.terminate(Duration::from_secs(20));
    assert!(processes_with(&marker).is_empty());
}
