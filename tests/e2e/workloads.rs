//! The workloads of docs/matrix.md against the simulated server with its prefix cache:
//! shared-prefix prompts and the prefix-cache policies that keep one step's cache out of
//! the next.

use evalctl_tests::json_stdout;

use super::results_fixture::{run_local, stderr};

/// Three workloads with the same prompts (the file's seed), each run twice, in this order:
/// `reset` empties the cache before each step, `keep` runs on what `reset` left cached,
/// `salt` gets prompts of its own per step. Prefill is slow enough (0.2 ms a token) for a
/// cached prefix to show in TTFT.
const MATRIX: &str = r#"
campaign: shared-prefix-e2e
repeats: 2
models: [{ name: sim-1b, path: sim-1b, params_b: 1 }]
frameworks: [{ name: sim }]
quantizations: [{ name: bf16, bits: 16 }]
workloads:
  - name: reset
    api: completions
    dataset: { kind: shared_prefix, prefixes: 4, prefix_tokens: 256, suffix_tokens: 16, output_tokens: 4 }
    load: { concurrency: [1] }
    requests: 20
    warmup: 4
  - name: keep
    api: completions
    dataset: { kind: shared_prefix, prefixes: 4, prefix_tokens: 256, suffix_tokens: 16, output_tokens: 4 }
    prefix_cache: keep
    load: { concurrency: [1] }
    requests: 20
    warmup: 4
  - name: salt
    api: completions
    dataset: { kind: shared_prefix, prefixes: 4, prefix_tokens: 256, suffix_tokens: 16, output_tokens: 4 }
    prefix_cache: salt
    load: { concurrency: [1] }
    requests: 20
    warmup: 4
include:
  - { model: sim-1b, extra_args: --enable-prefix-caching --prefill-us-per-token 200 }
"#;

#[test]
fn shared_prefix_steps_see_the_hit_rate_their_prompts_imply() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_local(dir.path(), "shared-prefix.yaml", MATRIX, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = json_stdout(&output);
    let log = stderr(&output);
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "a normal run logged:\n{log}"
    );
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 6, "{report}");
    let step = |workload: &str, repeat: u32| {
        let label = format!("{workload} @ c=1 #{repeat}");
        results
            .iter()
            .map(|r| &r["result"])
            .find(|r| r["step_label"] == label.as_str())
            .unwrap_or_else(|| panic!("no step {label}: {report}"))
    };
    let cache = |r: &serde_json::Value| r["workload"]["prefix_cache"].clone();
    let rate = |r: &serde_json::Value, key: &str| {
        cache(r)[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key}: {r}"))
    };

    for repeat in 0..2 {
        let reset = step("reset", repeat);
        assert_eq!(reset["workload"]["dataset"], "shared_prefix", "{reset}");
        let lengths = &reset["workload"]["lengths"];
        assert_eq!(lengths["target"], 256, "{reset}");
        assert_eq!(lengths["suffix_target"], 16, "{reset}");
        assert_eq!(lengths["missed"], 0, "{reset}");
        assert_eq!(cache(reset)["policy"], "reset");
        assert_eq!(cache(reset)["reset_by"], "/reset_prefix_cache");
        assert_eq!(cache(reset)["salted"], false);
        // 24 requests on 4 prefixes of 16 whole blocks: the simulator's cache hits exactly
        // what the prompts imply, on both repeats (the reset emptied it in between).
        let expected = rate(reset, "expected_hit_rate");
        assert!(expected > 0.7, "{reset}");
        assert!(
            (rate(reset, "server_hit_rate") - expected).abs() < 1e-9,
            "{reset}"
        );
        assert_eq!(
            cache(reset)["server_hit_rate_from"],
            "sim:prefix_cache_hits_total/sim:prefix_cache_queries_total"
        );

        // `keep` sends the prompts `reset` left cached: nearly every token hits.
        let keep = step("keep", repeat);
        assert_eq!(cache(keep)["policy"], "keep");
        assert!(cache(keep)["reset_by"].is_null(), "{keep}");
        assert!(cache(keep)["expected_hit_rate"].is_null(), "{keep}");
        assert!(rate(keep, "server_hit_rate") > 0.9, "{keep}");
        let ttft = |r: &serde_json::Value| r["metrics"]["ttft_ms"]["mean"].as_f64().unwrap();
        assert!(
            ttft(keep) < ttft(reset),
            "cached prefixes skip prefill: keep {} ms, reset {} ms",
            ttft(keep),
            ttft(reset)
        );

        // `salt` makes prompts no earlier step sent: the cache starts empty for them.
        let salt = step("salt", repeat);
        assert_eq!(cache(salt)["policy"], "salt");
        assert_eq!(cache(salt)["salted"], true);
        assert!(cache(salt)["reset_by"].is_null(), "{salt}");
        assert!(
            (rate(salt, "server_hit_rate") - rate(salt, "expected_hit_rate")).abs() < 1e-9,
            "{salt}"
        );
    }
}

/// A Mooncake-format trace: 50 requests stamped with one millisecond, then 100 more over
/// 2 s, prompts of 1 to 3 blocks of 64 tokens from shared first blocks.
fn mooncake_trace() -> String {
    let mut lines = Vec::new();
    for i in 0..150u64 {
        let timestamp = if i < 50 { 1000 } else { 1000 + (i - 50) * 20 };
        let blocks = 1 + i % 3;
        let input = (blocks - 1) * 64 + 1 + (i * 7) % 64;
        let ids: Vec<u64> = std::iter::once(i % 4)
            .chain((1..blocks).map(|b| 100 + i * 3 + b))
            .collect();
        lines.push(format!(
            r#"{{"timestamp": {timestamp}, "input_length": {input}, "output_length": 4, "hash_ids": {ids:?}}}"#
        ));
    }
    lines.join("\n") + "\n"
}

#[test]
fn a_mooncake_trace_replays_at_each_time_scale_and_a_bad_one_is_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("mooncake.jsonl");
    std::fs::write(&trace, mooncake_trace()).unwrap();
    let matrix = format!(
        r#"
campaign: trace-e2e
max_attempts: 1
models: [{{ name: sim-1b, path: sim-1b, params_b: 1 }}]
frameworks: [{{ name: sim }}]
quantizations: [{{ name: bf16, bits: 16 }}]
workloads:
  - name: replay
    api: completions
    dataset: {{ kind: trace, path: {}, block_tokens: 64 }}
    load: {{ time_scale: [2, 10] }}
include:
  - {{ model: sim-1b, extra_args: --enable-prefix-caching --prefill-us-per-token 20 --decode-ms-per-token 2 }}
"#,
        trace.display()
    );
    let output = run_local(&dir.path().join("ok"), "trace.yaml", &matrix, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = json_stdout(&output);
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{report}");
    for (r, scale) in results.iter().zip([2.0, 10.0]) {
        let doc = &r["result"];
        assert_eq!(doc["step_label"], format!("replay @ x{scale} #0"), "{doc}");
        let m = &doc["metrics"];
        assert_eq!(
            (m["completed"].as_u64(), m["failed"].as_u64()),
            (Some(150), Some(0)),
            "{doc}"
        );
        // 1.98 s of trace at the scale: the last request is sent then.
        let duration = m["duration_s"].as_f64().unwrap();
        assert!(
            (1.98 / scale..1.98 / scale + 1.0).contains(&duration),
            "x{scale}: {duration} s"
        );
        assert!(
            m["client_lag_ms"]["p99"].as_f64().is_some(),
            "lag reported: {doc}"
        );
        // The shared first blocks hit the simulator's cache.
        let cache = &doc["workload"]["prefix_cache"];
        assert_eq!(cache["reset_by"], "/reset_prefix_cache", "{doc}");
        assert!(cache["server_hit_rate"].as_f64().unwrap() > 0.2, "{doc}");
    }

    // A hash id list that does not fit its input length: the step fails naming the line.
    let mut bad = mooncake_trace();
    bad.push_str(
        r#"{"timestamp": 5000, "input_length": 200, "output_length": 4, "hash_ids": [1]}"#,
    );
    std::fs::write(&trace, bad).unwrap();
    let output = run_local(&dir.path().join("bad"), "trace.yaml", &matrix, &[]);
    assert!(!output.status.success(), "a bad trace fails the campaign");
    // `evalctl local` prints the unit's failure with the step's error.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    let want = format!(
        "{}:151: hash_ids: 1 ids for an input_length of 200: blocks of 64 tokens need 4",
        trace.display()
    );
    assert!(text.contains(&want), "no `{want}` in:\n{text}");
}

/// Two conversations of three user turns, ShareGPT-shaped; the recorded replies are not
/// sent (the server's own answers are), `output_tokens` fixes the answers' length.
const CHATS: &str = r#"[
  {"id": "a", "conversations": [
    {"from": "human", "value": "plan a trip to the lakes for three days in the summer"},
    {"from": "gpt", "value": "day one: the northern shore"},
    {"from": "human", "value": "and if it rains"},
    {"from": "gpt", "value": "museums"},
    {"from": "human", "value": "which museum first"},
    {"from": "gpt", "value": "the old mill"}
  ]},
  {"id": "b", "conversations": [
    {"from": "system", "value": "answer briefly"},
    {"from": "human", "value": "what is a prefix cache"},
    {"from": "gpt", "value": "kept attention state"},
    {"from": "human", "value": "why does it help chat"},
    {"from": "gpt", "value": "history repeats"},
    {"from": "human", "value": "thanks"}
  ]}
]"#;

/// Conversations through the whole pipeline: synthetic ones held at a concurrency and a
/// ShareGPT file's at a rate of new conversations, against the simulator's prefix cache.
/// Later turns carry the history and prefill only what is new, so their TTFT drops below
/// the first turns'. A file with an empty user turn fails its step naming file, line and
/// field.
#[test]
fn conversations_hold_their_history_and_later_turns_hit_the_prefix_cache() {
    let dir = tempfile::tempdir().unwrap();
    let chats = dir.path().join("chats.json");
    std::fs::write(&chats, CHATS).unwrap();
    let matrix = format!(
        r#"
campaign: multi-turn-e2e
max_attempts: 1
models: [{{ name: sim-1b, path: sim-1b, params_b: 1 }}]
frameworks: [{{ name: sim }}]
quantizations: [{{ name: bf16, bits: 16 }}]
workloads:
  - name: synthetic
    dataset: {{ kind: conversations, turns: 3, input_tokens: 32, first_input_tokens: 400, output_tokens: 16, think_time: 10ms }}
    load: {{ concurrency: [2] }}
    requests: 12
  - name: chats
    dataset: {{ kind: conversations, path: {}, output_tokens: 8 }}
    load: {{ rate: [5] }}
    requests: 6
include:
  - {{ model: sim-1b, extra_args: --enable-prefix-caching --prefill-us-per-token 200 }}
"#,
        chats.display()
    );
    let output = run_local(&dir.path().join("ok"), "multi-turn.yaml", &matrix, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "a normal run logged:\n{log}"
    );
    let report = json_stdout(&output);
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{report}");
    let step = |label: &str| {
        results
            .iter()
            .map(|r| &r["result"])
            .find(|r| r["step_label"] == label)
            .unwrap_or_else(|| panic!("no step {label}: {report}"))
    };

    let synthetic = step("synthetic @ c=2 #0");
    assert_eq!(synthetic["workload"]["dataset"], "conversations");
    let m = &synthetic["metrics"];
    assert_eq!(
        (m["completed"].as_u64(), m["failed"].as_u64()),
        (Some(12), Some(0))
    );
    let turns = &m["turns"];
    let p50 = |figures: &serde_json::Value| figures["ttft_ms"]["p50"].as_f64().unwrap();
    // First turns prefill 400 tokens (80 ms); later ones what is new since the last
    // cached block (about 48 tokens: 10 ms).
    assert!(p50(&turns["first"]) > 75.0, "{turns}");
    assert!(p50(&turns["later"]) < 30.0, "{turns}");
    assert_eq!(
        turns["by_position"].as_array().map(Vec::len),
        Some(3),
        "{turns}"
    );
    // The history grows by each answer and follow-up: 400, then 448, then 496 tokens.
    let inputs: Vec<f64> = turns["by_position"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["mean_input_tokens"].as_f64().unwrap())
        .collect();
    assert_eq!(inputs, [400.0, 448.0, 496.0], "{turns}");
    let hit = synthetic["workload"]["prefix_cache"]["server_hit_rate"]
        .as_f64()
        .unwrap();
    assert!(hit > 0.5, "{synthetic}");

    let chats_step = step("chats @ rate=5 #0");
    let turns = &chats_step["metrics"]["turns"];
    assert_eq!(chats_step["metrics"]["completed"], 6, "{chats_step}");
    assert_eq!(turns["conversations"], 2, "{turns}");
    assert_eq!(turns["mean_turns"], 3.0, "{turns}");

    // An empty user turn: refused before the step sends anything, by line and field, and
    // not retried (the campaign's default of 3 attempts would refuse it 3 times).
    let bad = CHATS.replace("\"and if it rains\"", "\"  \"");
    std::fs::write(&chats, bad).unwrap();
    let matrix = matrix.replace("max_attempts: 1\n", "");
    let bad_dir = dir.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad_matrix = bad_dir.join("multi-turn.yaml");
    std::fs::write(&bad_matrix, &matrix).unwrap();
    // Without --json, `evalctl local` prints the campaign's events, the unit's failure
    // with its reaction among them.
    let output = evalctl_tests::evalctl(
        None,
        &[
            "local",
            bad_matrix.to_str().unwrap(),
            "--data-dir",
            bad_dir.to_str().unwrap(),
        ],
    );
    assert!(!output.status.success(), "a bad file fails the campaign");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    let want = format!(
        "failed to parse dataset `{}` at line 5: conversations[2].value: a user turn with no text",
        chats.display()
    );
    assert!(text.contains(&want), "no `{want}` in:\n{text}");
    assert!(
        text.contains("failed without retrying (a dataset file is malformed"),
        "{text}"
    );
    assert!(!text.contains("attempt 1 of 3 failed"), "retried: {text}");
}
