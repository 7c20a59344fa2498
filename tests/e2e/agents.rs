//! Coordinator + agents + simulated servers, all real processes on loopback: a campaign run
//! by several agents, and the faults of the lease protocol (SIGKILLed agents and
//! coordinator, servers that crash or never get healthy, a network partition). Every test
//! ends by checking that each step has exactly one stored result and that no server process
//! is left behind.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use evalctl_tests::{
    AgentProcess, CoordinatorProcess, Proxy, evalctl, eventually, json_stdout, processes_with,
    unique_suffix,
};
use serde_json::Value;

/// A campaign of simulated units: `models` units, one step per concurrency in `loads` times
/// `repeats`. Every server's command line carries `marker` (in its model names), so the
/// test can find its processes.
struct SimCampaign {
    name: String,
    marker: String,
    models: usize,
    loads: Vec<u32>,
    repeats: u32,
    requests: u32,
    output_tokens: u32,
    decode_ms: f64,
    max_attempts: u32,
    /// Extra YAML appended to `frameworks:` (more framework entries).
    extra_frameworks: String,
}

impl SimCampaign {
    fn new(prefix: &str) -> SimCampaign {
        let suffix = unique_suffix();
        SimCampaign {
            name: format!("{prefix}-{suffix}"),
            marker: format!("m{}", suffix.replace('-', "x")),
            models: 1,
            loads: vec![1],
            repeats: 1,
            requests: 6,
            output_tokens: 8,
            decode_ms: 1.0,
            max_attempts: 3,
            extra_frameworks: String::new(),
        }
    }

    fn steps(&self) -> usize {
        self.models * self.loads.len() * self.repeats as usize
    }

    fn yaml(&self) -> String {
        let models: String = (0..self.models)
            .map(|i| format!("  - {{ name: {}-{i}, path: sim }}\n", self.marker))
            .collect();
        let loads: Vec<String> = self.loads.iter().map(u32::to_string).collect();
        format!(
            "campaign: {name}\nmax_attempts: {attempts}\nrepeats: {repeats}\nmodels:\n{models}\
             frameworks:\n  - name: sim\n{extra}\
             quantizations:\n  - {{ name: bf16, bits: 16 }}\n\
             workloads:\n  - name: chat\n    api: chat\n    \
             dataset: {{ kind: random, input_tokens: 16, output_tokens: {out} }}\n    \
             load: {{ concurrency: [{loads}] }}\n    requests: {requests}\n\
             include:\n  - {{ framework: sim, extra_args: --decode-ms-per-token {ms} --prefill-us-per-token 10 }}\n",
            name = self.name,
            attempts = self.max_attempts,
            repeats = self.repeats,
            extra = self.extra_frameworks,
            out = self.output_tokens,
            loads = loads.join(", "),
            requests = self.requests,
            ms = self.decode_ms,
        )
    }

    fn submit(&self, url: &str, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.yaml", self.name));
        std::fs::write(&path, self.yaml()).expect("write matrix");
        let submitted = json_stdout(&evalctl(
            Some(url),
            &["submit", path.to_str().unwrap(), "--json"],
        ));
        assert_eq!(
            submitted["steps"].as_u64(),
            Some(self.steps() as u64),
            "{submitted}"
        );
        path
    }
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

/// Waits until the campaign left `active` and returns its state.
fn wait_ended(url: &str, campaign: &str, timeout: Duration) -> String {
    let mut state = String::new();
    eventually(timeout, "the campaign to end", || {
        state = status(url, campaign)["campaign"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        state != "active"
    });
    state
}

/// Each step of the campaign has exactly one result, with metrics from real requests.
fn assert_one_result_per_step(url: &str, campaign: &SimCampaign) -> Vec<Value> {
    let stored = results(url, &campaign.name);
    let ids: Vec<(String, String)> = stored
        .iter()
        .map(|r| {
            (
                r["unit_id"].as_str().unwrap().to_owned(),
                r["step_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "a step has two results: {ids:?}");
    assert_eq!(stored.len(), campaign.steps(), "results: {ids:?}");
    for r in &stored {
        let metrics = &r["result"]["metrics"];
        assert_eq!(
            metrics["completed"].as_u64(),
            Some(u64::from(campaign.requests)),
            "{r}"
        );
        assert!(metrics["ttft_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["result"]["simulated"], true, "{r}");
        assert!(
            r["environment"]["launch_command"]
                .as_str()
                .unwrap()
                .contains("sim-server"),
            "{r}"
        );
    }
    stored
}

fn assert_no_servers_left(marker: &str) {
    eventually(
        Duration::from_secs(10),
        "every server process to end",
        || processes_with(marker).is_empty(),
    );
}

/// Agent id from an agent's state: the one its results carry.
fn agent_of(result: &Value) -> String {
    result["agent_id"].as_str().unwrap().to_owned()
}

#[test]
fn three_agents_run_a_thirty_step_campaign_with_one_result_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let mut agents: Vec<AgentProcess> = (0..3)
        .map(|i| AgentProcess::start(&url, &dir.path().join(format!("agent-{i}")), &[]))
        .collect();

    let mut campaign = SimCampaign::new("three-agents");
    campaign.models = 6;
    campaign.loads = vec![1, 2, 4, 8, 16];
    campaign.submit(&url, dir.path());
    assert_eq!(campaign.steps(), 30);

    let state = wait_ended(&url, &campaign.name, Duration::from_secs(120));
    assert_eq!(state, "succeeded");
    let stored = assert_one_result_per_step(&url, &campaign);
    let agent_ids: BTreeSet<String> = stored.iter().map(agent_of).collect();
    assert!(
        agent_ids.len() >= 2,
        "one agent did everything: {agent_ids:?}"
    );

    let listed = json_stdout(&evalctl(Some(&url), &["agents", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    for agent in &mut agents {
        assert!(
            agent.terminate(Duration::from_secs(20)).success(),
            "{}",
            agent.log()
        );
    }
    assert_no_servers_left(&campaign.marker);
}

/// A unit whose steps take a few seconds each, so a test can act between them.
fn slow_campaign(prefix: &str) -> SimCampaign {
    let mut campaign = SimCampaign::new(prefix);
    campaign.loads = vec![2];
    campaign.repeats = 4;
    campaign.requests = 8;
    campaign.output_tokens = 24;
    campaign.decode_ms = 15.0;
    campaign
}

#[test]
fn a_killed_agents_unit_is_finished_by_another_and_its_unsupervised_orphan_ended_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start_with(dir.path(), &["--lease-ttl", "3s"]);
    let url = coordinator.url();
    let state_a = dir.path().join("agent-a");
    let mut agent_a = AgentProcess::start(&url, &state_a, &[]);
    let campaign = slow_campaign("kill-agent");
    campaign.submit(&url, dir.path());

    eventually(Duration::from_secs(60), "the first step result", || {
        !results(&url, &campaign.name).is_empty()
    });
    let orphans = processes_with(&campaign.marker);
    assert!(!orphans.is_empty(), "agent A's server should be running");
    // The agent and its server's supervisor die, the server lives on: an orphan that only
    // the restart-time reaper can end (a plain kill -9 of the agent leaves none; see
    // supervisor.rs).
    agent_a.kill9_with_supervisors();
    let orphans = processes_with(&campaign.marker);
    assert!(
        !orphans.is_empty(),
        "agent A's server should outlive its supervisor"
    );
    let first = results(&url, &campaign.name);
    let finished_by_a: BTreeSet<String> = first
        .iter()
        .map(|r| r["step_id"].as_str().unwrap().to_owned())
        .collect();

    // (a) Another agent takes the unit once the lease expires and runs only what is left.
    let mut agent_b = AgentProcess::start(&url, &dir.path().join("agent-b"), &[]);
    assert_eq!(
        wait_ended(&url, &campaign.name, Duration::from_secs(90)),
        "succeeded"
    );
    let stored = assert_one_result_per_step(&url, &campaign);
    let agent_a_id = agent_of(&first[0]);
    for r in &stored {
        let step = r["step_id"].as_str().unwrap();
        if finished_by_a.contains(step) {
            assert_eq!(agent_of(r), agent_a_id, "a finished step was re-run: {r}");
        } else {
            assert_ne!(agent_of(r), agent_a_id, "{r}");
        }
    }
    assert!(agent_b.log().contains("lease granted"), "{}", agent_b.log());

    // (g) The killed agent's server outlived it and its supervisor; restarting the agent
    // ends it.
    assert!(
        orphans
            .iter()
            .all(|pid| Path::new(&format!("/proc/{pid}")).exists()),
        "the orphan server should still run after SIGKILL of its agent and supervisor"
    );
    let mut agent_a = AgentProcess::start(&url, &state_a, &[]);
    eventually(
        Duration::from_secs(15),
        "the orphan server to be ended",
        || {
            orphans
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        },
    );
    assert!(
        agent_a.log().contains("server left by a previous run"),
        "{}",
        agent_a.log()
    );
    agent_a.terminate(Duration::from_secs(20));
    agent_b.terminate(Duration::from_secs(20));
    assert_no_servers_left(&campaign.marker);
}

#[test]
fn an_agent_restarted_before_the_ttl_resumes_its_lease_and_resends_its_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    // The agent reaches the coordinator through a proxy, so the test can hold results back.
    let proxy = Proxy::start(coordinator.addr());
    let state = dir.path().join("agent");
    let mut agent = AgentProcess::start(&proxy.url(), &state, &[]);
    let campaign = slow_campaign("restart-agent");
    campaign.submit(&url, dir.path());

    eventually(Duration::from_secs(60), "the first step result", || {
        !results(&url, &campaign.name).is_empty()
    });
    // Cut the link: the next finished step stays in the outbox, unacknowledged.
    proxy.cut();
    let finished_before = agent.log().matches("step finished").count();
    eventually(
        Duration::from_secs(30),
        "a step finished during the cut",
        || agent.log().matches("step finished").count() > finished_before,
    );
    let orphans = processes_with(&campaign.marker);
    agent.kill9();
    let stored_during_cut = results(&url, &campaign.name).len();
    proxy.heal();

    // Well before the 30 s TTL: the lease is still this agent's.
    let mut agent = AgentProcess::start(&proxy.url(), &state, &[]);
    assert_eq!(
        wait_ended(&url, &campaign.name, Duration::from_secs(90)),
        "succeeded"
    );
    let log = agent.log();
    assert!(log.contains("resuming a lease after restart"), "{log}");
    assert!(log.contains("server left by a previous run"), "{log}");
    assert!(
        orphans
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
        "the old server process group should be gone"
    );
    let stored = assert_one_result_per_step(&url, &campaign);
    assert!(stored_during_cut < stored.len());
    // One agent, one attempt: the resumed lease is the same lease.
    assert!(stored.iter().all(|r| r["attempt"] == 1), "{stored:?}");
    let agents: BTreeSet<String> = stored.iter().map(agent_of).collect();
    assert_eq!(agents.len(), 1, "{agents:?}");
    agent.terminate(Duration::from_secs(20));
    assert_no_servers_left(&campaign.marker);
}

#[test]
fn a_campaign_completes_across_a_coordinator_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let mut coordinator = CoordinatorProcess::start(&data);
    let url = coordinator.url();
    let addr = coordinator.addr().to_string();
    let mut agents: Vec<AgentProcess> = (0..2)
        .map(|i| AgentProcess::start(&url, &dir.path().join(format!("agent-{i}")), &[]))
        .collect();
    let mut campaign = SimCampaign::new("kill-coordinator");
    campaign.models = 4;
    campaign.loads = vec![1, 4, 8];
    campaign.requests = 8;
    campaign.output_tokens = 16;
    campaign.decode_ms = 5.0;
    campaign.submit(&url, dir.path());

    eventually(Duration::from_secs(60), "a few step results", || {
        results(&url, &campaign.name).len() >= 3
    });
    coordinator.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let coordinator = CoordinatorProcess::start_on(&addr, &data, &[]);
    assert_eq!(coordinator.url(), url);
    assert_eq!(
        wait_ended(&url, &campaign.name, Duration::from_secs(120)),
        "succeeded"
    );
    assert_one_result_per_step(&url, &campaign);
    for agent in &mut agents {
        agent.terminate(Duration::from_secs(20));
    }
    assert_no_servers_left(&campaign.marker);
}

#[test]
fn servers_that_crash_or_never_get_healthy_fail_their_units_with_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let mut agent = AgentProcess::start(&url, &dir.path().join("agent"), &[]);
    let mut campaign = SimCampaign::new("bad-servers");
    campaign.max_attempts = 2;
    campaign.extra_frameworks = format!(
        "  - name: crashes\n    command: sh -c 'echo {marker}-boom on port {{port}} >&2; exit 3'\n\
         \x20 - name: hangs\n    command: sh -c 'echo {marker}-waiting {{port}}; exec sleep 600'\n    startup_timeout: 2s\n\
         \x20 - name: bad-flag\n    command: evalctl-agent sim-server --port {{port}} --model {{model.name}} --no-such-flag\n",
        marker = campaign.marker
    );
    // Four units: sim (succeeds), crashes, hangs, bad-flag (the real simulator, whose
    // argument parser refuses the flag); the include adds sim args to sim only.
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, campaign.yaml()).unwrap();
    let submitted = json_stdout(&evalctl(
        Some(&url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));
    assert_eq!(submitted["units"], 4, "{submitted}");

    assert_eq!(
        wait_ended(&url, &campaign.name, Duration::from_secs(90)),
        "failed"
    );
    let detail = status(&url, &campaign.name);
    let units: HashMap<String, &Value> = detail["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["label"].as_str().unwrap().to_owned(), u))
        .collect();
    let by_framework = |framework: &str| {
        units
            .iter()
            .find(|(label, _)| label.contains(&format!("/ {framework} /")))
            .map(|(_, u)| *u)
            .unwrap_or_else(|| panic!("no {framework} unit in {detail}"))
    };
    let sim = by_framework("sim");
    assert_eq!(sim["state"], "succeeded", "{sim}");
    let crashed = by_framework("crashes");
    assert_eq!(crashed["state"], "failed", "{crashed}");
    assert_eq!(crashed["attempts"], 2, "{crashed}");
    let error = crashed["last_error"].as_str().unwrap();
    assert!(error.contains("exit"), "{error}");
    let hung = by_framework("hangs");
    assert_eq!(hung["state"], "failed", "{hung}");
    assert_eq!(hung["attempts"], 2, "{hung}");
    let error = hung["last_error"].as_str().unwrap();
    assert!(
        error.contains("health") || error.contains("healthy"),
        "{error}"
    );
    // A refused command line fails once, not max_attempts times, with the engine's line.
    let refused = by_framework("bad-flag");
    assert_eq!(refused["state"], "failed", "{refused}");
    assert_eq!(refused["attempts"], 1, "{refused}");
    let error = refused["last_error"].as_str().unwrap();
    assert!(
        error.contains("(bad argument: error: unexpected argument '--no-such-flag' found)"),
        "{error}"
    );

    // The log tails are stored with the units and shown by `status`.
    let crashed_tail = crashed["log_tail"].as_str().unwrap();
    assert!(
        crashed_tail.contains(&format!("{}-boom on port", campaign.marker)),
        "{crashed_tail}"
    );
    let hung_tail = hung["log_tail"].as_str().unwrap();
    assert!(
        hung_tail.contains(&format!("{}-waiting", campaign.marker)),
        "{hung_tail}"
    );
    let human = evalctl(Some(&url), &["status", &campaign.name]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("Server log of failed unit"), "{text}");
    assert!(
        text.contains(&format!("{}-boom on port", campaign.marker)),
        "{text}"
    );
    assert!(
        text.contains("bad argument: error: unexpected argument"),
        "{text}"
    );
    agent.terminate(Duration::from_secs(20));
    assert_no_servers_left(&campaign.marker);
}

#[test]
fn a_partitioned_agent_stops_its_stale_unit_when_the_link_heals() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start_with(dir.path(), &["--lease-ttl", "3s"]);
    let url = coordinator.url();
    let proxy = Proxy::start(coordinator.addr());
    let mut agent_a = AgentProcess::start(&proxy.url(), &dir.path().join("agent-a"), &[]);
    // Enough steps (about 1.4 s each) that A is still running its stale unit when the link
    // heals: the lease expires 3 s into the partition and B takes the unit then.
    let mut campaign = slow_campaign("partition");
    campaign.repeats = 10;
    campaign.submit(&url, dir.path());

    eventually(Duration::from_secs(60), "the first step result", || {
        !results(&url, &campaign.name).is_empty()
    });
    let a_servers = processes_with(&campaign.marker);
    proxy.cut();
    // Another agent takes the unit once A's lease expired.
    let mut agent_b = AgentProcess::start(&url, &dir.path().join("agent-b"), &[]);
    eventually(Duration::from_secs(60), "agent B to take the unit", || {
        agent_b.log().contains("lease granted")
    });
    assert!(agent_a.running());
    assert!(
        !agent_a.log().contains("step finished step=chat @ c=2 #9"),
        "A finished its unit before the link healed; its log:\n{}",
        agent_a.log()
    );
    proxy.heal();

    // A learns from its next heartbeat that the lease is gone and stops the unit, while B
    // finishes it. (On a timeout the panic shows A's log.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !agent_a.log().contains("revoked") {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 30s waiting for agent A to stop its stale unit; its log:\n{}",
            agent_a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eventually(Duration::from_secs(15), "agent A's server to stop", || {
        a_servers
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    assert_eq!(
        wait_ended(&url, &campaign.name, Duration::from_secs(120)),
        "succeeded"
    );
    let stored = assert_one_result_per_step(&url, &campaign);
    let b_id = agent_of(stored.last().unwrap());
    assert!(stored.iter().any(|r| agent_of(r) == b_id));
    agent_a.terminate(Duration::from_secs(20));
    agent_b.terminate(Duration::from_secs(20));
    assert_no_servers_left(&campaign.marker);
}

#[test]
fn a_warm_server_is_reused_by_the_next_unit_with_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let mut agent = AgentProcess::start(&url, &dir.path().join("agent"), &[]);
    // Two campaigns of the same configuration (a nightly run and its re-run): the unit ids
    // are equal, so the second unit finds the first one's server warm.
    let first = SimCampaign::new("warm-a");
    first.submit(&url, dir.path());
    assert_eq!(
        wait_ended(&url, &first.name, Duration::from_secs(60)),
        "succeeded"
    );
    let mut second = SimCampaign::new("warm-b");
    second.marker = first.marker.clone();
    second.submit(&url, dir.path());
    assert_eq!(
        wait_ended(&url, &second.name, Duration::from_secs(60)),
        "succeeded"
    );
    let log = agent.log();
    assert_eq!(log.matches("launching the server").count(), 1, "{log}");
    assert!(log.contains("reusing the warm server"), "{log}");
    assert_one_result_per_step(&url, &second);
    agent.terminate(Duration::from_secs(20));
    assert_no_servers_left(&first.marker);
}

#[test]
fn steps_added_by_a_resubmission_while_a_unit_runs_are_run_too() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let mut agent = AgentProcess::start(&url, &dir.path().join("agent"), &[]);
    let mut campaign = slow_campaign("extend");
    campaign.repeats = 2;
    campaign.submit(&url, dir.path());
    eventually(Duration::from_secs(60), "the unit to start", || {
        agent.log().contains("step started")
    });
    // The same campaign with a second load point: the running unit gains two steps.
    campaign.loads = vec![2, 4];
    campaign.submit(&url, dir.path());
    assert_eq!(
        wait_ended(&url, &campaign.name, Duration::from_secs(90)),
        "succeeded"
    );
    assert_one_result_per_step(&url, &campaign);
    assert_eq!(campaign.steps(), 4);
    // The agent gave the lease back at once rather than letting it expire.
    let log = agent.log();
    assert!(log.contains("steps-added"), "{log}");
    agent.terminate(Duration::from_secs(20));
    assert_no_servers_left(&campaign.marker);
}

#[test]
fn evalctl_local_runs_the_quickstart_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = evalctl_tests::workspace_root().join("matrices/quickstart.yaml");
    let output = evalctl(
        None,
        &[
            "local",
            matrix.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--json",
        ],
    );
    let report = json_stdout(&output);
    assert_eq!(report["state"], "succeeded", "{report}");
    // A normal run says nothing alarming (the CLI logs warnings and errors only).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "a normal run logged:\n{stderr}"
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{report}");
    for r in results {
        let m = &r["result"]["metrics"];
        assert_eq!(m["completed"], 24, "{r}");
        for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
            assert!(m[metric]["p99"].as_f64().unwrap() > 0.0, "{metric}: {r}");
        }
        assert!(m["output_token_throughput"].as_f64().unwrap() > 0.0, "{r}");
    }
    // A second run resumes: nothing left to do, the same results.
    let again = json_stdout(&evalctl(
        None,
        &[
            "local",
            matrix.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(again["results"].as_array().unwrap().len(), 4, "{again}");
    assert_no_servers_left("--model sim-1b");
    assert_no_servers_left("--model sim-8b");
}

#[test]
fn a_missing_engine_sends_its_unit_to_another_agent_and_out_of_memory_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    // Agent B is paused (no heartbeats) while A runs into the fault: a long lease TTL keeps
    // B from being declared lost meanwhile on a slow machine.
    let coordinator = CoordinatorProcess::start_with(dir.path(), &["--lease-ttl", "120s"]);
    let url = coordinator.url();
    let mut campaign = SimCampaign::new("host-faults");
    // `remote-engine` is the simulator under another program name, installed on agent B's
    // PATH only; `oom` dies as PyTorch does when the weights do not fit.
    let engine = format!("{}-engine", campaign.marker);
    campaign.extra_frameworks = format!(
        "  - name: remote-engine\n    command: {engine} sim-server --port {{port}} --model {{model.name}}\n\
         \x20 - name: oom\n    command: 'sh -c \"echo {marker} loading; echo torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB >&2; exit 1\"'\n",
        marker = campaign.marker
    );
    let path = dir.path().join("faults.yaml");
    std::fs::write(&path, campaign.yaml()).unwrap();

    // Agent B has the engine (the simulator linked under the engine's name on its PATH).
    // It registers, then is paused past its acquire wait, so it holds no lease and asks for
    // none: it is the other active agent the unit can wait for.
    let bin = dir.path().join("b-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(evalctl_tests::binary("evalctl-agent"), bin.join(&engine)).unwrap();
    let search_path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut b =
        AgentProcess::start_with_env(&url, &dir.path().join("b"), &[], &[("PATH", &search_path)]);
    b.pause();
    std::thread::sleep(Duration::from_secs(3));
    let submitted = json_stdout(&evalctl(
        Some(&url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));
    assert_eq!(submitted["units"], 3, "{submitted}");

    // Agent A lacks the engine: its host is faulted for that framework and the unit waits
    // for B, with no attempt spent. The OOM unit does not fit, tried once.
    let mut a = AgentProcess::start(&url, &dir.path().join("a"), &[]);
    let unit_of = |detail: &Value, framework: &str| -> Value {
        detail["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| {
                u["label"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("/ {framework} /"))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {framework} unit in {detail}"))
    };
    let faulted = |agents: &Value| -> Option<Value> {
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|agent| !agent["lacking"].as_array().unwrap().is_empty())
            .cloned()
    };
    eventually(
        Duration::from_secs(60),
        "agent A to be found lacking the engine and the OOM unit to end",
        || {
            let detail = status(&url, &campaign.name);
            let agents = json_stdout(&evalctl(Some(&url), &["agents", "--json"]));
            faulted(&agents).is_some() && unit_of(&detail, "oom")["state"] == "does not fit"
        },
    );
    let agents = json_stdout(&evalctl(Some(&url), &["agents", "--json"]));
    let a_listed = faulted(&agents).unwrap();
    let fault = &a_listed["lacking"][0];
    assert_eq!(fault["kind"], "framework", "{agents}");
    assert_eq!(fault["name"], "remote-engine", "{agents}");
    assert!(
        fault["error"].as_str().unwrap().contains(&engine),
        "{agents}"
    );
    let detail = status(&url, &campaign.name);
    let waiting = unit_of(&detail, "remote-engine");
    assert_eq!(waiting["state"], "pending", "{waiting}");
    assert_eq!(waiting["attempts"], 0, "{waiting}");
    let oom = unit_of(&detail, "oom");
    assert_eq!(oom["tries"], 1, "not retried: {oom}");
    assert!(
        oom["last_error"]
            .as_str()
            .unwrap()
            .contains("out of memory: torch.OutOfMemoryError: CUDA out of memory"),
        "{oom}"
    );
    let human = String::from_utf8_lossy(&evalctl(Some(&url), &["status", &campaign.name]).stdout)
        .into_owned();
    assert!(human.contains("does not fit"), "{human}");
    let listing = String::from_utf8_lossy(&evalctl(Some(&url), &["agents"]).stdout).into_owned();
    assert!(
        listing.contains("lacks framework remote-engine"),
        "{listing}"
    );

    // B goes on and runs the unit; the campaign ends.
    b.resume();
    assert_eq!(
        wait_ended(&url, &campaign.name, Duration::from_secs(60)),
        "failed",
        "the OOM unit counts as failed in the campaign's state"
    );
    let detail = status(&url, &campaign.name);
    let ran = unit_of(&detail, "remote-engine");
    assert_eq!(ran["state"], "succeeded", "{ran}");
    assert_eq!(unit_of(&detail, "sim")["state"], "succeeded", "{detail}");
    let b_id = json_stdout(&evalctl(Some(&url), &["agents", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|agent| agent["agent_id"].as_str().unwrap().to_owned())
        .find(|id| *id != a_listed["agent_id"].as_str().unwrap())
        .expect("agent B is listed");
    let remote_results: Vec<Value> = results(&url, &campaign.name)
        .into_iter()
        .filter(|r| r.to_string().contains("remote-engine"))
        .collect();
    assert!(!remote_results.is_empty());
    for result in &remote_results {
        assert_eq!(agent_of(result), b_id, "{result}");
    }

    // The report lists the OOM unit as not fitting, apart from failures.
    let page = dir.path().join("report.html");
    evalctl(
        Some(&url),
        &["report", &campaign.name, "-o", page.to_str().unwrap()],
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<h3>Does not fit</h3>"), "{html}");
    assert!(html.contains("<td>does not fit</td>"), "{html}");
    a.terminate(Duration::from_secs(20));
    b.terminate(Duration::from_secs(20));
    assert_no_servers_left(&campaign.marker);
}
