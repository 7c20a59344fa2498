//! TLS, tokens and roles with the real binaries: certificates from `gen-certs`, a token
//! bootstrapped on the database file, a coordinator with mutual TLS, the CLI and an agent
//! that run a campaign end to end over TLS with tokens; an agent whose certificate names
//! another agent refused; what happened read back with `evalctl audit` and `token list`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use evalctl_tests::{
    AgentProcess, CoordinatorProcess, binary, evalctl, eventually, json_stdout, unique_suffix,
};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

fn run_ok(mut command: Command) -> String {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_ok_output(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "command failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn matrix(dir: &Path, name: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "campaign: {name}\nmodels:\n  - {{ name: tls-sim, path: sim }}\n\
             frameworks:\n  - name: sim\nquantizations:\n  - {{ name: bf16, bits: 16 }}\n\
             workloads:\n  - name: chat\n    api: chat\n    \
             dataset: {{ kind: random, input_tokens: 16, output_tokens: 8 }}\n    \
             load: {{ concurrency: [1, 2] }}\n    requests: 4\n\
             include:\n  - {{ framework: sim, extra_args: --decode-ms-per-token 1 }}\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn an_agent_with_tls_and_a_token_runs_a_campaign_and_refusals_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    let cert = |name: &str| certs.join(name).display().to_string();

    // A lab PKI and an operator token created on the database file (the bootstrap).
    let mut gen_certs = Command::new(binary("evalctl-coordinator"));
    gen_certs.args(["gen-certs", "--out"]).arg(&certs).args([
        "--hosts",
        "localhost,127.0.0.1",
        "--agents",
        "node1",
    ]);
    run_ok(gen_certs);
    let operator_file = dir.path().join("operator.token");
    let mut bootstrap = Command::new(binary("evalctl-coordinator"));
    bootstrap
        .args([
            "token",
            "create",
            "admin",
            "--role",
            "operator",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--secret-file")
        .arg(&operator_file);
    run_ok(bootstrap);

    let coordinator = CoordinatorProcess::start_with(
        &data,
        &[
            "--tls-cert",
            &cert("server.pem"),
            "--tls-key",
            &cert("server-key.pem"),
            "--tls-client-ca",
            &cert("ca.pem"),
        ],
    );
    let url = format!("https://127.0.0.1:{}", coordinator.addr().port());
    let ca = cert("ca.pem");
    let operator = [
        "--ca-file",
        &ca,
        "--token-file",
        operator_file.to_str().unwrap(),
    ];

    // Refusals: no token, a wrong token, plain text against TLS.
    let refused = evalctl(Some(&url), &["status", "--ca-file", &ca]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("missing bearer token"), "{stderr}");
    let wrong = format!("evt_{}", "0".repeat(64));
    let refused = evalctl(Some(&url), &["status", "--ca-file", &ca, "--token", &wrong]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("invalid or revoked token"), "{stderr}");

    // The operator makes an agent token and a viewer token with the CLI.
    let mut args = vec!["token", "create", "node1", "--role", "agent", "--json"];
    args.extend(operator);
    let agent_token = json_stdout(&evalctl(Some(&url), &args))["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut args = vec!["token", "create", "viewer", "--role", "viewer", "--json"];
    args.extend(operator);
    let viewer_token = json_stdout(&evalctl(Some(&url), &args))["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    let name = format!("tls-{}", unique_suffix());
    let matrix = matrix(dir.path(), &name);
    let denied = evalctl(
        Some(&url),
        &[
            "submit",
            &matrix,
            "--ca-file",
            &ca,
            "--token",
            &viewer_token,
        ],
    );
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("has role viewer") && stderr.contains("operator"),
        "{stderr}"
    );
    let mut args = vec!["submit", matrix.as_str(), "--json"];
    args.extend(operator);
    json_stdout(&evalctl(Some(&url), &args));

    // An agent without its client certificate never registers; with it (and the agent id
    // its certificate names), it runs the campaign to its end.
    let token_file = dir.path().join("agent.token");
    std::fs::write(&token_file, format!("{agent_token}\n")).unwrap();
    let agent = AgentProcess::start(
        &url,
        &dir.path().join("agent"),
        &[
            "--agent-id",
            "node1",
            "--ca-file",
            &ca,
            "--token-file",
            token_file.to_str().unwrap(),
            "--client-cert",
            &cert("agent-node1.pem"),
            "--client-key",
            &cert("agent-node1-key.pem"),
        ],
    );
    let mut state = String::new();
    eventually(Duration::from_secs(90), "the campaign to end", || {
        let status = evalctl(
            Some(&url),
            &[
                "status",
                &name,
                "--json",
                "--ca-file",
                &ca,
                "--token",
                &viewer_token,
            ],
        );
        state = json_stdout(&status)["campaign"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        state != "active"
    });
    assert_eq!(state, "succeeded", "agent log:\n{}", agent.log());
    drop(agent);

    let mut no_cert = Command::new(binary("evalctl-agent"));
    no_cert
        .args(["run", "--coordinator", &url, "--state-dir"])
        .arg(dir.path().join("agent2"))
        .args(["--ca-file", &ca, "--token", &agent_token]);
    let output = no_cert
        .output()
        .expect("run an agent without a certificate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("client certificate"),
        "an agent without a client certificate is refused:\n{stderr}"
    );

    // node1's certificate may not register as another agent.
    let mut impostor = Command::new(binary("evalctl-agent"));
    impostor
        .args([
            "run",
            "--coordinator",
            &url,
            "--agent-id",
            "node2",
            "--state-dir",
        ])
        .arg(dir.path().join("agent3"))
        .args(["--ca-file", &ca, "--token", &agent_token])
        .args(["--client-cert", &cert("agent-node1.pem")])
        .args(["--client-key", &cert("agent-node1-key.pem")]);
    let output = impostor.output().expect("run an agent under another id");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("DNS:node1")
            && stderr.contains("agent id `node2`"),
        "an agent whose certificate names another agent is refused:\n{stderr}"
    );

    // The audit log, for operators only: the impostor is recorded under its token's name,
    // with the certificate's names and the agent id it asked for.
    let refused = evalctl(
        Some(&url),
        &["audit", "--ca-file", &ca, "--token", &viewer_token],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("ListAudit needs the operator role"),
        "{stderr}"
    );
    let mut identity = serde_json::Value::Null;
    eventually(
        Duration::from_secs(10),
        "the impostor's audit entry",
        || {
            let mut args = vec![
                "audit", "--actor", "node1", "--action", "refused", "--since", "10m", "--json",
            ];
            args.extend(operator);
            let entries = json_stdout(&evalctl(Some(&url), &args));
            match entries
                .as_array()
                .and_then(|a| a.iter().find(|e| e["detail"]["reason"] == "agent_identity"))
            {
                Some(entry) => {
                    identity = entry.clone();
                    true
                }
                None => false,
            }
        },
    );
    assert_eq!(identity["detail"]["agent_id"], "node2", "{identity:#}");
    assert_eq!(identity["detail"]["certificate_names"], "DNS:node1");
    assert_eq!(identity["target"], "rpc/evalctl.v1.AgentService/Register");
    let mut args = vec!["audit", "--actor", "viewer", "--action", "refused"];
    args.extend(operator);
    let table = run_ok_output(&evalctl(Some(&url), &args));
    assert!(
        table.contains("rpc/evalctl.v1.CampaignService/Submit"),
        "the viewer's refused submit:\n{table}"
    );

    // Tokens show when they were last used.
    let mut args = vec!["token", "list", "--json"];
    args.extend(operator);
    let tokens = json_stdout(&evalctl(Some(&url), &args));
    let node1 = tokens
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "node1"))
        .expect("the agent token is listed");
    assert!(
        node1["last_used_ms"].as_i64().is_some_and(|ms| ms > 0),
        "{tokens:#}"
    );
    let mut on_file = Command::new(binary("evalctl-coordinator"));
    on_file.args(["token", "list", "--data-dir"]).arg(&data);
    let listed = run_ok(on_file);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("\tnode1\t") && l.contains("last used 20")),
        "{listed}"
    );

    // Revoking the viewer token stops it at once.
    let mut args = vec!["token", "revoke", "viewer", "--json"];
    args.extend(operator);
    json_stdout(&evalctl(Some(&url), &args));
    let refused = evalctl(
        Some(&url),
        &["status", "--ca-file", &ca, "--token", &viewer_token],
    );
    assert!(!refused.status.success());

    // SIGHUP reloads the certificate files.
    signal::kill(Pid::from_raw(coordinator.pid() as i32), Signal::SIGHUP).unwrap();
    eventually(Duration::from_secs(10), "the TLS reload", || {
        coordinator
            .log()
            .contains("TLS certificate and key reloaded")
    });
    let mut args = vec!["status", "--json"];
    args.extend(operator);
    json_stdout(&evalctl(Some(&url), &args));
}
