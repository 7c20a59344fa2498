//! The `evalctl-agent sim-server` subcommand as a process: its first line, its answers, a
//! graceful SIGTERM and its flag errors. (The server itself is tested in the sim-server crate.)

#[allow(
    dead_code,
    reason = "the simulator's test client; this binary uses a part of it"
)]
#[path = "../sim-server/tests/support/http.rs"]
mod sim_http;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use sim_http::HttpClient;

#[test]
fn binary_prints_address_serves_and_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evalctl-agent"))
        .args([
            "sim-server",
            "--port",
            "0",
            "--model",
            "bin-model",
            "--decode-ms-per-token",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn evalctl-agent");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read first line");
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .to_owned();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = HttpClient::new();
        let url = format!("http://{addr}");
        assert_eq!(
            client.get(&format!("{url}/health")).await.status,
            StatusCode::OK
        );
        let models = client.get(&format!("{url}/v1/models")).await.json();
        assert_eq!(models["data"][0]["id"], "bin-model");
        let reply = client
            .post(
                &format!("{url}/v1/completions"),
                json!({"prompt": "a", "max_tokens": 4, "stream": true}).to_string(),
            )
            .await;
        assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
    });
    drop(rt);

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("evalctl-agent did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn binary_rejects_bad_flags_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_evalctl-agent"))
        .args(["sim-server", "--port", "0", "--tokens-per-chunk", "0"])
        .output()
        .expect("run evalctl-agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tokens_per_chunk must be at least 1"),
        "{stderr}"
    );
}
