//! The shipped deployment files: every YAML and JSON file in `deploy/` parses, Kubernetes
//! manifests name their kind, the dashboard and scrape config only use series the
//! coordinator exports, the Slurm script is valid shell, and both systemd units pass
//! `systemd-analyze verify` (scripts/verify-systemd.sh; skipped where it is missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use evalctl_coordinator::config::Config;
use evalctl_coordinator::metrics::Metrics;
use evalctl_coordinator::store::Store;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn deploy_files(extensions: &[&str]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files(&root().join("deploy"), &mut all);
    all.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
    });
    all.sort();
    all
}

#[test]
fn every_yaml_and_json_file_in_deploy_parses() {
    let yaml = deploy_files(&["yaml", "yml"]);
    let json = deploy_files(&["json"]);
    assert!(yaml.len() >= 6, "{yaml:?}");
    assert!(!json.is_empty());
    for path in &yaml {
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        if path.components().any(|c| c.as_os_str() == "kubernetes") {
            assert!(
                value["apiVersion"].is_string() && value["kind"].is_string(),
                "{} is not a Kubernetes object",
                path.display()
            );
        }
    }
    for path in &json {
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    }
}

/// The `evalctl_*` series names a text uses.
fn series(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("evalctl_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn dashboards_and_alerts_use_series_the_coordinator_exports() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Config::with_data_dir(dir.path()).database)
        .await
        .unwrap();
    let metrics = Metrics::new();
    metrics.called("Submit");
    metrics.answered("Submit", Duration::from_millis(3));
    metrics.refused("Submit", "missing_token");
    evalctl_coordinator::metrics::observe_lease_grant(Duration::from_micros(300));
    let exported = metrics.render(&store).await.unwrap();
    let known: Vec<String> = series(&exported);
    let mut checked = 0;
    for path in deploy_files(&["json", "yml", "yaml"]) {
        let text = std::fs::read_to_string(&path).unwrap();
        for name in series(&text) {
            if name == "evalctl" || name.starts_with("evalctl_coordinator") {
                continue; // job and label names, not series
            }
            assert!(
                known.contains(&name),
                "{} uses {name}, which the coordinator does not export:\n{exported}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} series references found");
}

#[test]
fn the_slurm_script_is_valid_shell() {
    let script = root().join("deploy/slurm/evalctl-agent.sbatch");
    let status = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success(), "bash -n {}", script.display());
}

fn unit_value(unit: &str, key: &str) -> String {
    let text = std::fs::read_to_string(root().join("systemd").join(unit)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{unit} has no {key}"))
        .to_owned()
}

#[test]
fn stop_timeouts_outlast_the_shutdown_graces() {
    let coordinator =
        humantime::parse_duration(&unit_value("evalctl-coordinator.service", "TimeoutStopSec"))
            .unwrap();
    let defaults = Config::with_data_dir(Path::new("/var/lib/evalctl"));
    assert!(coordinator > defaults.shutdown_grace * 2, "{coordinator:?}");
    let agent =
        humantime::parse_duration(&unit_value("evalctl-agent.service", "TimeoutStopSec")).unwrap();
    // The agent's flush timeout and server stop grace are 10 s each by default.
    assert!(agent > Duration::from_secs(20) * 2, "{agent:?}");
    assert_eq!(unit_value("evalctl-agent.service", "KillMode"), "mixed");
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let output = Command::new("bash")
        .arg(root().join("scripts/verify-systemd.sh"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "verify-systemd.sh failed:\n{text}");
    if text.contains("skipped") {
        eprintln!("{text}");
    } else {
        assert!(text.contains("evalctl-coordinator.service ok"), "{text}");
        assert!(text.contains("evalctl-agent.service ok"), "{text}");
    }
}
