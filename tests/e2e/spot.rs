//! Spot interruptions: a preemption notice from each cloud's (fake) metadata service, or a
//! SIGTERM on a spot host, makes the agent stop its step, deliver its results and release
//! its lease as preempted; another agent resumes the unit at its first unfinished step at
//! once (long before the 30 s lease TTL), and every step ends up stored exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use evalctl_tests::{
    AgentProcess, Cloud, CoordinatorProcess, FakeMetadata, evalctl, eventually, json_stdout,
    processes_with, unique_suffix,
};
use serde_json::Value;

/// One unit of four slow steps (a few seconds each), so a notice lands mid-campaign.
fn matrix(name: &str, marker: &str) -> String {
    format!(
        "campaign: {name}\nrepeats: 4\nmodels:\n  - {{ name: {marker}, path: sim }}\n\
         frameworks:\n  - name: sim\nquantizations:\n  - {{ name: bf16, bits: 16 }}\n\
         workloads:\n  - name: chat\n    api: chat\n    \
         dataset: {{ kind: random, input_tokens: 16, output_tokens: 24 }}\n    \
         load: {{ concurrency: [2] }}\n    requests: 8\n\
         include:\n  - {{ framework: sim, extra_args: --decode-ms-per-token 15 }}\n"
    )
}

fn status(url: &str, campaign: &str) -> Value {
    json_stdout(&evalctl(Some(url), &["status", campaign, "--json"]))
}

fn results(url: &str, campaign: &str) -> Vec<Value> {
    json_stdout(&evalctl(Some(url), &["results", campaign, "--json"]))
        .as_array()
        .expect("results array")
        .clone()
}

fn unit_state(url: &str, campaign: &str) -> String {
    status(url, campaign)["units"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs a campaign on a spot agent, interrupts it with `interrupt`, resumes on another
/// agent; returns the notice-to-release time.
fn preempt_and_resume(
    cloud: Cloud,
    interrupt: impl FnOnce(&mut AgentProcess, &FakeMetadata) -> Instant,
) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    // The default 30 s TTL: only a release, not an expiry, can hand the unit over quickly.
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let metadata = FakeMetadata::start(cloud);
    let mut spot = AgentProcess::start(
        &url,
        &dir.path().join("spot"),
        &[
            "--spot-provider",
            cloud.provider(),
            "--metadata-url",
            metadata.url(),
            "--metadata-poll",
            "100ms",
        ],
    );
    let suffix = unique_suffix();
    let name = format!("spot-{}-{suffix}", cloud.provider());
    let marker = format!("spot{}", suffix.replace('-', "x"));
    let path = dir.path().join("m.yaml");
    std::fs::write(&path, matrix(&name, &marker)).unwrap();
    json_stdout(&evalctl(
        Some(&url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));

    eventually(Duration::from_secs(60), "the first step result", || {
        !results(&url, &name).is_empty()
    });
    assert!(
        metadata.served() > 0,
        "the agent never asked the metadata service"
    );
    let noticed = interrupt(&mut spot, &metadata);
    eventually(Duration::from_secs(20), "the lease to be released", || {
        unit_state(&url, &name) != "running"
    });
    let release = noticed.elapsed();
    assert!(
        spot.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        spot.log()
    );
    assert!(
        metadata.refused().is_empty(),
        "the agent sent requests the real service refuses: {:?}",
        metadata.refused()
    );
    let done_by_spot: BTreeSet<String> = results(&url, &name)
        .iter()
        .map(|r| r["step_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!done_by_spot.is_empty() && done_by_spot.len() < 4);
    // The spot agent's server is gone before it exits.
    assert!(processes_with(&marker).is_empty());

    let started = Instant::now();
    let mut other = AgentProcess::start(&url, &dir.path().join("other"), &[]);
    eventually(Duration::from_secs(60), "the campaign to finish", || {
        status(&url, &name)["campaign"]["state"] == "succeeded"
    });
    // Resumed at once (the TTL is 30 s), at the first unfinished step.
    assert!(started.elapsed() < Duration::from_secs(25));
    let stored = results(&url, &name);
    assert_eq!(stored.len(), 4, "{stored:?}");
    let ids: BTreeSet<&str> = stored
        .iter()
        .map(|r| r["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "a step stored twice: {stored:?}");
    let spot_id = stored
        .iter()
        .find(|r| done_by_spot.contains(r["step_id"].as_str().unwrap()))
        .map(|r| r["agent_id"].clone())
        .unwrap();
    for r in &stored {
        let by_spot = r["agent_id"] == spot_id;
        assert_eq!(
            by_spot,
            done_by_spot.contains(r["step_id"].as_str().unwrap()),
            "a step finished before the preemption ran again: {r}"
        );
    }
    let campaign = &status(&url, &name)["campaign"];
    assert_eq!(campaign["preemptions"], 1, "{campaign}");
    assert!(campaign["preemption_lost_s"].as_f64().unwrap() >= 0.0);
    // Attempts spent: none of the unit's own.
    assert_eq!(status(&url, &name)["units"][0]["attempts"], 0);
    other.terminate(Duration::from_secs(20));
    assert!(processes_with(&marker).is_empty());
    release
}

fn notice(cloud: Cloud) {
    let release = preempt_and_resume(cloud, |_, metadata| metadata.preempt());
    eprintln!(
        "{} notice to lease release: {} ms",
        cloud.provider(),
        release.as_millis()
    );
    // Target 2 s; the bound leaves room for a loaded CI machine (the poll interval is 100 ms).
    assert!(release < Duration::from_secs(5), "{release:?}");
}

#[test]
fn an_aws_spot_notice_releases_the_lease_and_another_agent_resumes() {
    notice(Cloud::Aws);
}

#[test]
fn a_gcp_preemption_releases_the_lease_and_another_agent_resumes() {
    notice(Cloud::Gcp);
}

#[test]
fn an_azure_preempt_event_releases_the_lease_and_another_agent_resumes() {
    notice(Cloud::Azure);
}

#[test]
fn sigterm_on_a_spot_host_releases_the_lease_as_preempted() {
    let release = preempt_and_resume(Cloud::Aws, |agent, _| {
        let at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        at
    });
    eprintln!("SIGTERM to lease release: {} ms", release.as_millis());
    assert!(release < Duration::from_secs(5), "{release:?}");
}
