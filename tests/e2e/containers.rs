//! Servers in containers, with real Podman: the simulated server's image (imported from the
//! built binary, see the harness) runs a campaign through coordinator and agent; the image's
//! id and digest reach results and exports; the container is torn down after its unit and
//! when the agent is killed, and a restarted agent reaps what its dead supervisors left;
//! pulls fail as image faults; every shipped matrix's container units are accepted by
//! `podman create`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use evalctl_tests::{
    AgentProcess, CoordinatorProcess, Podman, SIM_IMAGE, evalctl, eventually, json_stdout,
    unique_suffix, workspace_root,
};
use serde_json::Value;

const AGENT_LABEL: &str = "evalctl.agent";

/// A campaign of one containerised sim unit: `repeats` steps of `requests` requests, each
/// token taking `decode_ms`; `container` is the framework's `container` block (YAML flow).
fn matrix(name: &str, image: &str, container: &str, repeats: u32, decode_ms: u32) -> String {
    format!(
        "campaign: {name}\nrepeats: {repeats}\nmax_attempts: 3\n\
         models:\n  - {{ name: tiny, path: sim }}\n\
         frameworks:\n  - {{ name: sim, image: \"{image}\", container: {container} }}\n\
         quantizations:\n  - {{ name: bf16, bits: 16 }}\n\
         workloads:\n  - name: chat\n    api: chat\n    \
         dataset: {{ kind: random, input_tokens: 16, output_tokens: 16 }}\n    \
         load: {{ concurrency: [2] }}\n    requests: 8\n\
         include:\n  - {{ framework: sim, extra_args: --decode-ms-per-token {decode_ms} }}\n"
    )
}

fn submit(url: &str, dir: &Path, yaml: &str) {
    let path = dir.join(format!("m-{}.yaml", unique_suffix()));
    std::fs::write(&path, yaml).unwrap();
    json_stdout(&evalctl(
        Some(url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));
}

fn status(url: &str, campaign: &str) -> Value {
    json_stdout(&evalctl(Some(url), &["status", campaign, "--json"]))
}

fn campaign_state(url: &str, campaign: &str) -> String {
    status(url, campaign)["campaign"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn results(url: &str, campaign: &str) -> Vec<Value> {
    json_stdout(&evalctl(Some(url), &["results", campaign, "--json"]))
        .as_array()
        .expect("results array")
        .clone()
}

/// An agent using `podman`'s store, with a fixed id (its containers' label).
fn agent(url: &str, dir: &Path, podman: &Podman, id: &str) -> AgentProcess {
    let config = podman.agent_config(&dir.join(format!("{id}.toml")));
    AgentProcess::start(
        url,
        &dir.join(id),
        &["--config", config.to_str().unwrap(), "--agent-id", id],
    )
}

#[test]
fn a_containerised_server_runs_its_unit_and_the_image_is_recorded() {
    let podman = Podman::new();
    podman.import_sim_image(&[]);
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let id = format!("ctr-{}", unique_suffix());
    let mut agent = agent(&url, dir.path(), &podman, &id);
    let name = format!("ctr-run-{}", unique_suffix());
    submit(
        &url,
        dir.path(),
        &matrix(&name, SIM_IMAGE, "{ pull: never }", 2, 1),
    );
    eventually(Duration::from_secs(90), "the campaign to finish", || {
        matches!(campaign_state(&url, &name).as_str(), "succeeded" | "failed")
    });
    assert_eq!(
        campaign_state(&url, &name),
        "succeeded",
        "{}\n{}",
        status(&url, &name),
        agent.log()
    );

    // Every step records the image, its id and the runtime; the launch command is the
    // container's `create`.
    let image_id = podman.ok(&["image", "inspect", "--format", "{{.Id}}", SIM_IMAGE]);
    let stored = results(&url, &name);
    assert_eq!(stored.len(), 2, "{stored:?}");
    for result in &stored {
        let env = &result["environment"];
        assert_eq!(env["image"], SIM_IMAGE, "{env}");
        assert_eq!(
            env["image_id"],
            format!("sha256:{}", image_id.trim()),
            "{env}"
        );
        assert!(
            env["image_digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{env}"
        );
        assert!(
            env["container_runtime"]
                .as_str()
                .is_some_and(|r| r.starts_with("podman ")),
            "{env}"
        );
        let launch = env["launch_command"].as_str().unwrap();
        assert!(launch.contains(" create --name evalctl-"), "{launch}");
        assert!(
            launch.contains(&format!("--label {AGENT_LABEL}={id}")),
            "{launch}"
        );
        assert!(launch.contains("--entrypoint evalctl-agent"), "{launch}");
        assert!(env["cuda_visible_devices"].is_null(), "{env}");
    }
    // And the exports carry them.
    let csv = dir.path().join("steps.csv");
    let out = evalctl(
        Some(&url),
        &[
            "export",
            &name,
            "--format",
            "csv",
            "--output",
            csv.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let column = header
        .iter()
        .position(|c| *c == "image_id")
        .expect("image_id column");
    let row: Vec<&str> = text.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row[column], format!("sha256:{}", image_id.trim()));

    // A second campaign of the same configuration reuses the warm server: no second pull
    // phase or container, and its steps name the same container's `create`.
    let again = format!("ctr-again-{}", unique_suffix());
    submit(
        &url,
        dir.path(),
        &matrix(&again, SIM_IMAGE, "{ pull: never }", 1, 1),
    );
    eventually(
        Duration::from_secs(60),
        "the second campaign to finish",
        || campaign_state(&url, &again) == "succeeded",
    );
    assert!(
        agent.log().contains("reusing the warm server"),
        "{}",
        agent.log()
    );
    let server_logs: String = std::fs::read_dir(agent.state_dir().join("logs"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect();
    assert_eq!(
        server_logs
            .matches("evalctl-agent: creating the container")
            .count(),
        1,
        "{server_logs}"
    );
    assert_eq!(
        results(&url, &again)[0]["environment"]["launch_command"],
        stored[0]["environment"]["launch_command"]
    );

    // Stopping the agent stops the warm server and removes its container.
    agent.terminate(Duration::from_secs(30));
    assert_no_containers(&podman, &id);
    let log = agent.log();
    assert!(
        !log.contains(" WARN "),
        "a normal run logged a warning:\n{log}"
    );
}

fn assert_no_containers(podman: &Podman, agent_id: &str) {
    assert_eq!(
        podman.containers_labelled(AGENT_LABEL, agent_id),
        Vec::<String>::new(),
        "containers of agent {agent_id} are left"
    );
}

/// The running container of `agent_id`, once there is one.
fn running_container(podman: &Podman, agent_id: &str) -> String {
    let mut name = String::new();
    eventually(
        Duration::from_secs(60),
        "the unit's container to run",
        || {
            let out = podman.ok(&[
                "ps",
                "--filter",
                &format!("label={AGENT_LABEL}={agent_id}"),
                "--format",
                "{{.Names}}",
            ]);
            name = out.lines().next().unwrap_or_default().trim().to_owned();
            !name.is_empty()
        },
    );
    name
}

#[test]
fn kill9_of_the_agent_leaves_no_container_and_the_unit_resumes() {
    let podman = Podman::new();
    podman.import_sim_image(&[]);
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start_with(dir.path(), &["--lease-ttl", "4s"]);
    let url = coordinator.url();
    let id = format!("ctr-{}", unique_suffix());
    let name = format!("ctr-kill-{}", unique_suffix());
    // Four steps of about 2 s each.
    submit(
        &url,
        dir.path(),
        &matrix(&name, SIM_IMAGE, "{ pull: never }", 4, 60),
    );

    // A plain kill -9: the supervisor sees the agent's link close and tears the container
    // down by itself, before any restart.
    let mut first = agent(&url, dir.path(), &podman, &id);
    let container = running_container(&podman, &id);
    first.kill9();
    eventually(
        Duration::from_secs(30),
        "the supervisor to remove the container",
        || {
            !podman
                .containers_labelled(AGENT_LABEL, &id)
                .contains(&container)
        },
    );

    // The agent and its supervisors killed together (the host's OOM killer, a cgroup kill):
    // the container outlives them, and the restarted agent reaps it by its label.
    let mut second = agent(&url, dir.path(), &podman, &id);
    let container = running_container(&podman, &id);
    second.kill9_with_supervisors();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        podman
            .containers_labelled(AGENT_LABEL, &id)
            .contains(&container),
        "the container should outlive its killed supervisor"
    );
    let mut third = agent(&url, dir.path(), &podman, &id);
    eventually(
        Duration::from_secs(30),
        "the restarted agent to reap the container",
        || {
            !podman
                .containers_labelled(AGENT_LABEL, &id)
                .contains(&container)
        },
    );
    assert!(
        third
            .log()
            .contains("container left by a previous run removed"),
        "{}",
        third.log()
    );

    eventually(Duration::from_secs(120), "the campaign to finish", || {
        matches!(campaign_state(&url, &name).as_str(), "succeeded" | "failed")
    });
    assert_eq!(campaign_state(&url, &name), "succeeded", "{}", third.log());
    let stored = results(&url, &name);
    let ids: BTreeSet<&str> = stored
        .iter()
        .map(|r| r["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert_eq!(ids.len(), 4, "a step stored twice: {stored:?}");
    third.terminate(Duration::from_secs(30));
    assert_no_containers(&podman, &id);
}

#[test]
fn images_that_cannot_be_had_fail_as_image_faults_and_refused_options_fail_at_once() {
    let podman = Podman::new();
    podman.import_sim_image(&[]);
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let id = format!("ctr-{}", unique_suffix());
    let agent = agent(&url, dir.path(), &podman, &id);

    // Not on the host, and never pulled.
    let never = format!("ctr-never-{}", unique_suffix());
    submit(
        &url,
        dir.path(),
        &matrix(
            &never,
            "localhost/evalctl-absent:1",
            "{ pull: never }",
            1,
            1,
        ),
    );
    // A pull from a registry that is not there (a closed loopback port).
    let pull = format!("ctr-pull-{}", unique_suffix());
    submit(
        &url,
        dir.path(),
        &matrix(
            &pull,
            "127.0.0.1:9/absent/image:1",
            "{ pull: always, pull_timeout: 60s }",
            1,
            1,
        ),
    );
    // An option Podman's `create` refuses.
    let refused = format!("ctr-refused-{}", unique_suffix());
    submit(
        &url,
        dir.path(),
        &matrix(
            &refused,
            SIM_IMAGE,
            "{ run_options: [--no-such-option] }",
            1,
            1,
        ),
    );
    for campaign in [&never, &pull, &refused] {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while campaign_state(&url, campaign) != "failed" {
            assert!(
                std::time::Instant::now() < deadline,
                "campaign {campaign} did not fail: {}\n{}",
                status(&url, campaign),
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let unit = |campaign: &str| status(&url, campaign)["units"][0].clone();
    let never_unit = unit(&never);
    assert_eq!(
        never_unit["failure_class"], "image_unavailable",
        "{never_unit}"
    );
    assert!(
        never_unit["last_error"]
            .as_str()
            .unwrap()
            .contains("is not on this host, and its pull policy is `never`"),
        "{never_unit}"
    );
    let pull_unit = unit(&pull);
    assert_eq!(
        pull_unit["failure_class"], "image_unavailable",
        "{pull_unit}"
    );
    assert!(
        pull_unit["last_error"]
            .as_str()
            .unwrap()
            .contains("failed to pull image `127.0.0.1:9/absent/image:1`"),
        "{pull_unit}"
    );
    let refused_unit = unit(&refused);
    assert_eq!(
        refused_unit["failure_class"], "bad_argument",
        "{refused_unit}"
    );
    assert_eq!(refused_unit["attempts"], 1, "{refused_unit}");
    // The pull's progress is in the unit's server log, between evalctl's lines.
    let logs = std::fs::read_dir(agent.state_dir().join("logs")).unwrap();
    let all: String = logs
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect();
    assert!(
        all.contains("evalctl-agent: pulling image 127.0.0.1:9/absent/image:1"),
        "{all}"
    );
    assert!(all.contains("evalctl-agent: pull failed"), "{all}");
    assert_no_containers(&podman, &id);
}

#[test]
fn every_shipped_container_unit_is_accepted_by_podman_create() {
    let podman = Podman::new();
    let mut checked = 0;
    let mut images = BTreeSet::new();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(workspace_root().join("matrices")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let plan = json_stdout(&evalctl(
            None,
            &["submit", "--dry-run", "--json", path.to_str().unwrap()],
        ));
        for unit in plan["unit_list"].as_array().unwrap() {
            if let Some(argv) = unit["container_create"]["podman"].as_array() {
                images.insert(unit["image"].as_str().unwrap().to_owned());
                units.push((
                    path.display().to_string(),
                    argv.iter()
                        .map(|a| a.as_str().unwrap().to_owned())
                        .collect::<Vec<_>>(),
                ));
            }
        }
    }
    assert!(!units.is_empty(), "no shipped matrix has a container unit");
    // The images themselves are not pulled (no network): the simulator's image stands in
    // under each name, which is all `create` needs to judge the options.
    let tags: Vec<&str> = images.iter().map(String::as_str).collect();
    podman.import_sim_image(&tags);
    for (file, argv) in &units {
        assert_eq!(argv[0], "podman");
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        let out = podman.run(&args);
        assert!(
            out.status.success(),
            "{file}: podman refused {argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = &argv[argv.iter().position(|a| a == "--name").unwrap() + 1];
        let inspect = json_stdout(&podman.run(&["inspect", name]));
        let config = &inspect[0]["Config"];
        assert_eq!(config["Labels"][AGENT_LABEL], "AGENT", "{file}: {config}");
        // The framework's program is the entrypoint (Podman 4 shows it as a string, later
        // versions as a list) and its arguments are the command.
        let at = argv.iter().position(|a| a == "--entrypoint").unwrap();
        let entrypoint = &argv[at + 1];
        assert!(
            config["Entrypoint"] == serde_json::json!(entrypoint)
                || config["Entrypoint"] == serde_json::json!([entrypoint]),
            "{file}: {config}"
        );
        assert_eq!(config["Image"], argv[at + 2], "{file}: {config}");
        assert_eq!(
            config["Cmd"],
            serde_json::json!(argv[at + 3..]),
            "{file}: {config}"
        );
        podman.ok(&["rm", "--force", name]);
        checked += 1;
    }
    eprintln!("podman create accepted {checked} container units of the shipped matrices");
}
