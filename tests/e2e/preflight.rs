//! The preflight: `evalctl local --check MATRIX` and `evalctl-agent doctor` reading the
//! listing of `evalctl submit --dry-run --json`, run as the real binaries on this host.

use std::process::{Command, Stdio};

use evalctl_tests::{binary, evalctl, json_stdout};
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A matrix of two CPU units: the simulator (present: it is evalctl-agent itself) and an
/// engine whose program no host has, with a model file that is missing.
fn matrix(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("preflight.yaml");
    std::fs::write(
        &path,
        "campaign: preflight\n\
         models:\n  - { name: tiny, path: /nonexistent/tiny.gguf }\n\
         gpus:\n  - { type: cpu, counts: [1] }\n\
         frameworks:\n  - name: sim\n  - name: ghost\n    command: ghost-engine-xyz serve {model.path} --port {port}\n\
         quantizations:\n  - { name: bf16, bits: 16 }\n\
         workloads:\n  - name: chat\n    api: chat\n    dataset: { kind: random, input_tokens: 8, output_tokens: 4 }\n    load: { concurrency: [1] }\n    requests: 2\n",
    )
    .unwrap();
    path
}

#[test]
fn local_check_names_what_is_missing_and_exits_8_without_running_anything() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = matrix(dir.path());
    let data = dir.path().join("data");
    let out = evalctl(
        None,
        &[
            "local",
            "--check",
            matrix.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(8),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("FAIL  engine  ghost (1 unit): `ghost-engine-xyz` is not on PATH"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  model   /nonexistent/tiny.gguf (1 unit): not found on this host"),
        "{stdout}"
    );
    assert!(stdout.contains("ok    engine  sim (1 unit)"), "{stdout}");
    assert!(stdout.contains("Not ready: 2 problem(s)"), "{stdout}");
    assert!(!data.join("coordinator.sqlite").exists(), "nothing ran");

    // The quickstart needs only the simulator: ready.
    let quickstart = evalctl(
        None,
        &["local", "--check", "matrices/quickstart.yaml", "--json"],
    );
    assert_eq!(
        quickstart.status.code(),
        Some(0),
        "{}",
        text(&quickstart.stdout)
    );
    let report: Value = serde_json::from_slice(&quickstart.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["level"] != "fail"),
        "{report}"
    );
}

#[test]
fn agent_doctor_reads_the_dry_run_listing_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = matrix(dir.path());
    let listing = json_stdout(&evalctl(
        None,
        &["submit", "--dry-run", "--json", matrix.to_str().unwrap()],
    ));
    let ghost = listing["unit_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["framework"] == "ghost")
        .unwrap()
        .clone();
    // The listing carries the command as the agent renders it.
    assert_eq!(
        ghost["argv"],
        serde_json::json!([
            "ghost-engine-xyz",
            "serve",
            "/nonexistent/tiny.gguf",
            "--port",
            "8000"
        ]),
        "{ghost}"
    );
    assert_eq!(ghost["gpu_type"], "cpu", "{ghost}");

    let mut doctor = Command::new(binary("evalctl-agent"))
        .args(["doctor", "-", "--json", "--state-dir"])
        .arg(dir.path().join("agent"))
        .env_remove("EVALCTL_AGENT_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = doctor.stdin.take().unwrap();
        stdin.write_all(listing.to_string().as_bytes()).unwrap();
    }
    let out = doctor.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the preflight found problems"),
        "{}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failing: Vec<(&str, &str)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "fail")
        .map(|f| (f["area"].as_str().unwrap(), f["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(
        failing,
        [("engine", "ghost"), ("model", "/nonexistent/tiny.gguf")],
        "{report}"
    );
}
