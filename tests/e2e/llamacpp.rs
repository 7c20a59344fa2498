//! A real inference server in the loop: llama.cpp's `llama-server` on CPU with the tiny
//! generated Llama models, launched by a real agent for units leased by a real coordinator.
//!
//! `scripts/setup-llamacpp.sh` installs both into `$EVALCTL_CACHE` (default
//! `~/.cache/evalctl`); `scripts/test.sh` runs it first. Where either is missing the test
//! fails and says how to install it: a test of the real server must never pass without one.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use evalctl_tests::{
    AgentProcess, CoordinatorProcess, cache_dir, evalctl, eventually, group_alive, json_stdout,
    processes_with, unique_suffix,
};
use serde_json::Value;

const SETUP_HINT: &str = "run scripts/setup-llamacpp.sh (scripts/test.sh does): it builds \
     llama-server and generates the tiny models into $EVALCTL_CACHE (default ~/.cache/evalctl) \
     once (about 20 minutes on two cores) and takes a second after that";

/// The tiny model the test serves, in both quantizations of `matrices/cpu-llamacpp.yaml`.
const MODEL: &str = "tiny-llama-0.5m";
const QUANTS: [&str; 2] = ["f16", "q8_0"];
/// Requests per step, prompt and output lengths: small, so the test stays fast on 2 cores.
const REQUESTS: u64 = 8;
const INPUT_TOKENS: u64 = 32;
const OUTPUT_TOKENS: u64 = 16;

/// Where `scripts/setup-llamacpp.sh` put llama-server and the models.
struct Installed {
    server: PathBuf,
    models: PathBuf,
}

/// Finds llama-server (the cache's, else one on PATH) and the models, or fails the test
/// with what is missing and how to install it.
fn installed() -> Installed {
    let cache = cache_dir();
    let in_cache = cache.join("bin/llama-server");
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("llama-server"))
                .find(|p| p.is_file())
        })
    };
    let server = if in_cache.is_file() {
        in_cache
    } else {
        on_path().unwrap_or_else(|| {
            panic!(
                "llama-server not found in {} nor on PATH; {SETUP_HINT}",
                cache.join("bin").display()
            )
        })
    };
    let models = cache.join("models");
    for quant in QUANTS {
        let file = models.join(format!("{MODEL}-{quant}.gguf"));
        assert!(
            file.is_file(),
            "model {} not found; {SETUP_HINT}",
            file.display()
        );
    }
    for path in [&server, &models] {
        assert!(
            !path.to_string_lossy().contains(char::is_whitespace),
            "{} contains whitespace; set EVALCTL_CACHE to a path without any and {SETUP_HINT}",
            path.display()
        );
    }
    Installed { server, models }
}

/// One unit per quantization; steps: chat at concurrency 1 and 4, completions at 2.
fn matrix(campaign: &str, marker: &str, installed: &Installed) -> String {
    // `--alias` names the served model after the marker, so the test finds the server
    // processes by their command line and sees the name the agent learnt from /v1/models.
    let command = format!(
        "{server} -m {{model.path}} --host {{host}} --port {{port}} --metrics --threads 2 \
         --ctx-size 1024 --parallel 4 --alias {marker} {{quant.args}}",
        server = installed.server.display()
    );
    let workload = |name: &str, api: &str, load: &str| {
        format!(
            "  - name: {name}\n    api: {api}\n    \
             dataset: {{ kind: random, input_tokens: {INPUT_TOKENS}, output_tokens: {OUTPUT_TOKENS} }}\n    \
             load: {{ concurrency: [{load}] }}\n    requests: {REQUESTS}\n    warmup: 1\n"
        )
    };
    format!(
        "campaign: {campaign}\nmax_attempts: 1\n\
         models:\n  - name: {MODEL}\n    path: {models}/{MODEL}-{{quant.name}}.gguf\n    params_b: 0.00054\n\
         frameworks:\n  - name: llamacpp\n    command: {command}\n    startup_timeout: 1m\n\
         quantizations:\n  - {{ name: f16, bits: 16 }}\n  - {{ name: q8_0, bits: 8.5 }}\n\
         workloads:\n{chat}{completions}",
        models = installed.models.display(),
        chat = workload("chat", "chat", "1, 4"),
        completions = workload("text", "completions", "2"),
    )
}

/// Every result of a real llama.cpp step: all requests done with output tokens, TTFT and
/// throughput in a plausible range for a tiny model on CPU, and the environment naming the
/// real server.
fn assert_real_result(r: &Value, marker: &str) {
    let doc = &r["result"];
    let m = &doc["metrics"];
    assert_eq!(doc["simulated"], false, "{r}");
    assert_eq!(m["completed"].as_u64(), Some(REQUESTS), "{r}");
    assert_eq!(m["failed"].as_u64(), Some(0), "{r}");
    // ignore_eos: llama.cpp generates exactly max_tokens, and says so in its usage chunk.
    assert_eq!(
        m["total_output_tokens"].as_u64(),
        Some(REQUESTS * OUTPUT_TOKENS),
        "{r}"
    );
    assert!(
        m["output_tokens_from_usage"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    // Prompt lengths were counted by the server's own /tokenize; the server's count of what
    // it processed adds the BOS token and, for chat, the template.
    assert_eq!(doc["tokenization"], "server_tokenize", "{r}");
    let input = m["total_input_tokens"].as_u64().unwrap_or(0);
    assert!(
        input >= REQUESTS * INPUT_TOKENS,
        "{input} input tokens: {r}"
    );
    // The agent scraped llama-server's Prometheus endpoint during the step; its count of
    // generated tokens covers the measured ones (and the warmup's).
    let predicted =
        doc["telemetry"]["server"]["series"]["llamacpp:tokens_predicted_total"]["delta"]
            .as_f64()
            .unwrap_or(0.0);
    assert!(
        predicted >= (REQUESTS * OUTPUT_TOKENS) as f64,
        "llamacpp:tokens_predicted_total grew by {predicted}: {r}"
    );
    for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
        let p50 = m[metric]["p50"].as_f64().unwrap_or(-1.0);
        assert!(p50 > 0.0 && p50 < 10_000.0, "{metric} p50 {p50}: {r}");
    }
    let ttft = m["ttft_ms"]["p50"].as_f64().unwrap_or(0.0);
    let e2el = m["e2el_ms"]["p50"].as_f64().unwrap_or(0.0);
    assert!(ttft <= e2el, "TTFT {ttft} ms after E2EL {e2el} ms: {r}");
    let throughput = m["output_token_throughput"].as_f64().unwrap_or(0.0);
    assert!(
        throughput > 10.0,
        "output throughput {throughput} tok/s is implausibly low for this model: {r}"
    );
    assert_eq!(doc["served_model"], marker, "{r}");
    let env = &r["environment"];
    assert_eq!(env["framework"], "llamacpp", "{r}");
    let command = env["launch_command"].as_str().unwrap_or_default();
    assert!(
        command.contains("llama-server") && command.contains(&format!("{MODEL}-")),
        "{r}"
    );
}

#[test]
fn a_campaign_runs_against_a_real_llama_cpp_server_and_leaves_no_server_behind() {
    let installed = installed();
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let mut agent = AgentProcess::start(&url, &dir.path().join("agent"), &[]);

    let suffix = unique_suffix();
    let campaign = format!("llamacpp-{suffix}");
    let marker = format!("llamacpp-e2e-{}", suffix.replace('-', "x"));
    let path = dir.path().join("llamacpp.yaml");
    std::fs::write(&path, matrix(&campaign, &marker, &installed)).unwrap();
    let submitted = json_stdout(&evalctl(
        Some(&url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));
    assert_eq!(submitted["units"], 2, "{submitted}");
    assert_eq!(submitted["steps"], 6, "{submitted}");

    // Follow the campaign; note every llama-server process seen, to check afterwards that
    // each one's process group is gone.
    let mut servers = BTreeSet::new();
    let started = Instant::now();
    let mut state = String::new();
    eventually(Duration::from_secs(120), "the campaign to end", || {
        servers.extend(processes_with(&marker));
        let status = json_stdout(&evalctl(Some(&url), &["status", &campaign, "--json"]));
        state = status["campaign"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        state != "active"
    });
    let status = json_stdout(&evalctl(Some(&url), &["status", &campaign, "--json"]));
    assert_eq!(
        state,
        "succeeded",
        "campaign ended {state} after {:?}: {status}\nagent log:\n{}",
        started.elapsed(),
        agent.log()
    );
    assert!(!servers.is_empty(), "no llama-server process was seen");

    let results = json_stdout(&evalctl(Some(&url), &["results", &campaign, "--json"]));
    let results = results.as_array().expect("results array");
    assert_eq!(results.len(), 6, "{results:?}");
    let steps: BTreeSet<&str> = results
        .iter()
        .filter_map(|r| r["step_id"].as_str())
        .collect();
    assert_eq!(steps.len(), 6, "a step has two results: {results:?}");
    for r in results {
        assert_real_result(r, &marker);
    }
    // Both quantizations ran, each on its own GGUF file.
    let commands: BTreeSet<&str> = results
        .iter()
        .filter_map(|r| r["environment"]["launch_command"].as_str())
        .collect();
    for quant in QUANTS {
        let file = format!("{MODEL}-{quant}.gguf");
        assert!(
            commands.iter().any(|c| c.contains(&file)),
            "no step ran on {file}: {commands:?}"
        );
    }

    assert!(
        agent.terminate(Duration::from_secs(20)).success(),
        "{}",
        agent.log()
    );
    // llama-server leads its own process group (pgid = pid); the agent ended each group.
    eventually(
        Duration::from_secs(10),
        "every llama-server process group to end",
        || servers.iter().all(|pgid| !group_alive(*pgid)) && processes_with(&marker).is_empty(),
    );
}
