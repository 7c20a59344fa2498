//! Submitting, inspecting, steering and surviving a SIGKILL of the coordinator.

use std::time::Duration;

use evalctl_tests::{CoordinatorProcess, evalctl, json_stdout, workspace_root};
use serde_json::Value;

fn quickstart() -> String {
    workspace_root()
        .join("matrices/quickstart.yaml")
        .display()
        .to_string()
}

fn unit_ids(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["units"]
        .as_array()
        .expect("units array")
        .iter()
        .map(|u| u["unit_id"].as_str().expect("unit id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn campaign_survives_coordinator_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    let submitted = json_stdout(&evalctl(Some(&url), &["submit", &quickstart(), "--json"]));
    let campaign = submitted["campaign"].as_str().unwrap().to_owned();
    let units = submitted["units"].as_u64().unwrap();
    let steps = submitted["steps"].as_u64().unwrap();
    assert!(units > 0 && steps > 0, "{submitted}");
    assert_eq!(submitted["units_added"], units);
    assert_eq!(submitted["steps_added"], steps);

    let before = json_stdout(&evalctl(Some(&url), &["status", &campaign, "--json"]));
    assert_eq!(unit_ids(&before).len() as u64, units);

    coordinator.kill9();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    let after = json_stdout(&evalctl(Some(&url), &["status", &campaign, "--json"]));
    assert_eq!(
        unit_ids(&after),
        unit_ids(&before),
        "units changed across SIGKILL"
    );
    assert_eq!(after["campaign"]["units"]["total"], units);
    assert_eq!(after["campaign"]["steps"]["total"], steps);
    assert_eq!(after["campaign"]["units"]["pending"], units);
    assert_eq!(after["campaign"]["state"], "active");

    let list = json_stdout(&evalctl(Some(&url), &["status", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn resubmitting_keeps_units_and_adds_only_what_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    let first = json_stdout(&evalctl(Some(&url), &["submit", &quickstart(), "--json"]));
    let again = json_stdout(&evalctl(Some(&url), &["submit", &quickstart(), "--json"]));
    assert_eq!(again["campaign_id"], first["campaign_id"]);
    assert_eq!(again["units_added"], 0);
    assert_eq!(again["steps_added"], 0);
    assert_eq!(again["units_kept"], first["units"]);
    assert_eq!(again["steps_kept"], first["steps"]);

    // A grown matrix: one more repeat adds steps to every existing unit, no new unit.
    let text = std::fs::read_to_string(quickstart()).unwrap();
    let grown = if text.contains("repeats:") {
        text.replacen("repeats:", "repeats: 2 #", 1)
    } else {
        format!("repeats: 2\n{text}")
    };
    let grown_path = dir.path().join("grown.yaml");
    std::fs::write(&grown_path, grown).unwrap();
    let third = json_stdout(&evalctl(
        Some(&url),
        &["submit", grown_path.to_str().unwrap(), "--json"],
    ));
    assert_eq!(third["units_added"], 0, "{third}");
    assert_eq!(third["units_kept"], first["units"]);
    assert_eq!(third["steps_kept"], first["steps"]);
    assert_eq!(
        third["steps_added"].as_u64().unwrap(),
        third["steps"].as_u64().unwrap() - first["steps"].as_u64().unwrap()
    );
}

#[test]
fn watch_ends_when_the_campaign_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let submitted = json_stdout(&evalctl(Some(&url), &["submit", &quickstart(), "--json"]));
    let campaign = submitted["campaign"].as_str().unwrap().to_owned();

    let watch_url = url.clone();
    let watch_campaign = campaign.clone();
    let watcher =
        std::thread::spawn(move || evalctl(Some(&watch_url), &["watch", &watch_campaign]));
    // Give the watcher its snapshot before cancelling; if it arrives later it sees a
    // cancelled snapshot and ends the same way.
    std::thread::sleep(Duration::from_millis(300));
    let cancelled = json_stdout(&evalctl(Some(&url), &["cancel", &campaign, "--json"]));
    assert_eq!(cancelled["units_cancelled"], submitted["units"]);

    let output = watcher.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(6), "watch output:\n{stdout}");
    assert!(
        stdout.contains("snapshot") || stdout.contains("cancelled"),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap_or("").contains("cancelled"),
        "{stdout}"
    );

    let status = json_stdout(&evalctl(Some(&url), &["status", &campaign, "--json"]));
    assert_eq!(status["campaign"]["state"], "cancelled");
    assert_eq!(status["campaign"]["units"]["cancelled"], submitted["units"]);
}

#[test]
fn coordinator_stops_gracefully_on_sigterm_and_reports_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let serving = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "evalctl.v1.CampaignService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let status = coordinator.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert!(
        coordinator.log().contains("coordinator stopped"),
        "{}",
        coordinator.log()
    );
}

#[test]
fn a_submission_without_user_variables_names_the_os_user() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let output = std::process::Command::new(evalctl_tests::binary("evalctl"))
        .args(["submit", &quickstart()])
        .env("EVALCTL_COORDINATOR", coordinator.url())
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .expect("run evalctl submit");
    assert!(output.status.success(), "{output:?}");
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let me = String::from_utf8_lossy(&me.stdout).trim().to_owned();
    let listed = json_stdout(&evalctl(Some(&coordinator.url()), &["--json", "status"]));
    assert_eq!(listed[0]["submitted_by"], me.as_str(), "{listed}");
}
