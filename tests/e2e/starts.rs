//! Cold starts (docs/telemetry.md#cold-starts): a simulated server that listens at once,
//! answers 503 for 1.5 s and logs its (simulated) weight loading at the end of that delay
//! is recorded with its three phases in that order, once per start, and the report's
//! "Cold starts" section counts it once.

use evalctl_tests::{CoordinatorProcess, evalctl, json_stdout};

use super::results_fixture::{run_local_ok, stderr};

const MATRIX: &str = r#"
campaign: starts-e2e
models:
  - { name: sim-slow, path: sim-slow, params_b: 1 }
frameworks:
  - name: sim
quantizations:
  - { name: bf16, bits: 16 }
workloads:
  - name: chat
    api: chat
    dataset: { kind: random, input_tokens: 16, output_tokens: 4 }
    load: { concurrency: [1, 2] }
    requests: 4
include:
  - { model: sim-slow, extra_args: --startup-delay 1500ms }
"#;

#[test]
fn a_start_is_split_into_port_weights_and_ready_and_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    run_local_ok(dir.path(), "starts.yaml", MATRIX, &[]);
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    let results = json_stdout(&evalctl(Some(&url), &["results", "starts-e2e", "--json"]));
    let results = results.as_array().expect("results");
    assert_eq!(results.len(), 2, "{results:?}");
    let starts: Vec<&serde_json::Value> = results
        .iter()
        .map(|r| &r["environment"]["server_start"])
        .collect();
    // Both steps ran on the one server the unit started.
    assert_eq!(starts[0], starts[1]);
    let start = starts[0];
    assert_eq!(start["reused"], false, "{start}");
    let phase = |name: &str| {
        start[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: {start}"))
    };
    let (listening, weights, ready) = (
        phase("listening_s"),
        phase("weights_loaded_s"),
        phase("ready_s"),
    );
    assert!(
        listening < 1.5,
        "the port opens before the delay ends: {start}"
    );
    assert!((1.5..=ready).contains(&weights), "{start}");
    assert!(ready < 30.0, "{start}");

    let page = dir.path().join("report.html");
    let out = evalctl(
        Some(&url),
        &["report", "starts-e2e", "-o", page.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let html = std::fs::read_to_string(page).unwrap();
    let section = &html[html.find(r#"id="starts""#).expect("cold starts section")..];
    let row = &section[section.find("<td>sim</td>").expect("a sim row")..];
    assert!(
        row.starts_with("<td>sim</td><td>sim-slow</td><td class=\"num\">1</td>"),
        "{row:.200}"
    );
}
