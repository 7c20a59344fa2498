//! Issue 17, item 6: a TLS setup that cannot work is said plainly, by the CLI and the agent,
//! with the exit codes the docs give: an `http://` URL against the TLS port, a coordinator
//! certificate from another CA than `--ca-file`, an agent certificate from another CA than
//! the coordinator's client CA. Real coordinator with mutual TLS on loopback, certificates
//! from `gen-certs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use evalctl_tests::{AgentProcess, CoordinatorProcess, binary, evalctl};

/// The CLI's and the agent's exit code for a TLS setup that cannot work.
const EXIT_TLS: i32 = 3;

/// A lab PKI written by `gen-certs` into `dir`: `ca.pem`, `server.pem`, `agent-node1.pem`, …
fn pki(dir: &Path) -> PathBuf {
    let output = Command::new(binary("evalctl-coordinator"))
        .args(["gen-certs", "--out"])
        .arg(dir)
        .args(["--hosts", "localhost,127.0.0.1", "--agents", "node1"])
        .output()
        .expect("run gen-certs");
    assert!(
        output.status.success(),
        "gen-certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir.to_owned()
}

/// A coordinator serving TLS with certificates of `pki`, its client CA too.
fn tls_coordinator(data: &Path, pki: &Path) -> CoordinatorProcess {
    let file = |name: &str| pki.join(name).display().to_string();
    CoordinatorProcess::start_with(
        data,
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server-key.pem"),
            "--tls-client-ca",
            &file("ca.pem"),
        ],
    )
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn issue_17_the_cli_says_when_an_http_url_meets_the_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(&dir.path().join("pki"));
    let coordinator = tls_coordinator(&dir.path().join("data"), &ours);
    let port = coordinator.addr().port();
    let output = evalctl(Some(&format!("http://127.0.0.1:{port}")), &["status"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(EXIT_TLS), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: failed to connect to the coordinator at http://127.0.0.1:{port}: it speaks \
             TLS, and the URL asks for plain text (`http://`)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("(hint: use `https://127.0.0.1:{port}`")),
        "{err}"
    );
    assert!(!err.contains("operation was canceled"), "{err}");
}

#[test]
fn issue_17_the_cli_names_the_ca_file_a_coordinator_certificate_is_not_signed_by() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(&dir.path().join("pki"));
    let other = pki(&dir.path().join("other-pki"));
    let coordinator = tls_coordinator(&dir.path().join("data"), &ours);
    let url = format!("https://127.0.0.1:{}", coordinator.addr().port());
    let wrong_ca = other.join("ca.pem");
    let output = evalctl(
        Some(&url),
        &["status", "--ca-file", wrong_ca.to_str().unwrap()],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(EXIT_TLS), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: failed to connect to the coordinator at {url}: its TLS certificate is not \
             signed by the CA in `{}` (--ca-file)",
            wrong_ca.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("(hint: pass --ca-file (or EVALCTL_CA_FILE) the CA that signed"),
        "{err}"
    );
    assert!(!err.contains("start one with"), "{err}");

    // The right CA works.
    let right_ca = ours.join("ca.pem");
    let output = evalctl(
        Some(&url),
        &["status", "--ca-file", right_ca.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn issue_17_an_agent_stops_on_a_tls_setup_error_with_its_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(&dir.path().join("pki"));
    let other = pki(&dir.path().join("other-pki"));
    let coordinator = tls_coordinator(&dir.path().join("data"), &ours);
    let port = coordinator.addr().port();
    let https = format!("https://127.0.0.1:{port}");
    let file = |pki: &Path, name: &str| pki.join(name).display().to_string();
    let identity = |pki: &Path| {
        vec![
            "--client-cert".to_owned(),
            file(pki, "agent-node1.pem"),
            "--client-key".to_owned(),
            file(pki, "agent-node1-key.pem"),
        ]
    };
    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        (
            "a client certificate of another CA",
            https.clone(),
            [
                vec!["--ca-file".to_owned(), file(&ours, "ca.pem")],
                identity(&other),
            ]
            .concat(),
            "it refused this client's certificate",
        ),
        (
            "a coordinator certificate of another CA",
            https.clone(),
            [
                vec!["--ca-file".to_owned(), file(&other, "ca.pem")],
                identity(&ours),
            ]
            .concat(),
            "its TLS certificate is not signed by the CA in",
        ),
        (
            "http:// to the TLS port",
            format!("http://127.0.0.1:{port}"),
            identity(&ours),
            "it speaks TLS, and the URL asks for plain text",
        ),
    ];
    for (i, (what, url, flags, expected)) in cases.into_iter().enumerate() {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let started = Instant::now();
        let mut agent = AgentProcess::spawn(&url, &dir.path().join(format!("agent-{i}")), &flags);
        let status = agent.wait_exit(Duration::from_secs(60));
        let took = started.elapsed();
        let log = agent.log();
        assert_eq!(status.code(), Some(EXIT_TLS), "{what}: {status}\n{log}");
        assert!(log.contains(expected), "{what}:\n{log}");
        assert!(
            log.contains("a TLS setup error does not go away by retrying, so the agent stops"),
            "{what}:\n{log}"
        );
        assert!(log.contains("(hint: "), "{what}:\n{log}");
        eprintln!("{what}: the agent exited {EXIT_TLS} after {took:?}");
    }
}
