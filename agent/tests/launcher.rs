//! The server launcher against real processes: `sh -c` scripts and `sleep` as servers, and the
//! real simulated server. Every test stops what it starts (a `RunningServer` that is dropped
//! unstopped kills its group, so a failing assertion leaves nothing behind either).

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evalctl_agent::launcher::{
    self, LaunchError, LaunchSpec, OrphanOutcome, RenderedCommand, RunningServer,
    SERVER_PLACEHOLDERS, ServerRecord, StopOutcome, TemplateError, TemplateValues, group_alive,
    process_start_time, render_command,
};
use tokio_util::sync::CancellationToken;

const SIM_PRESET: &str = "evalctl-agent sim-server --port {port} --model {model.name}";
const VLLM_PRESET: &str = "vllm serve {model.path} --host {host} --port {port} \
                           --tensor-parallel-size {gpu.count} {quant.args}";

fn values() -> TemplateValues {
    TemplateValues {
        model_name: "llama-3.1-8b".into(),
        model_path: "/models/Llama 3.1 8B".into(),
        model_tokenizer: "/models/Llama 3.1 8B/tokenizer.json".into(),
        host: "127.0.0.1".into(),
        port: 8123,
        gpu_count: 2,
        gpu_type: "H100-80GB".into(),
        gpu_indices: vec![2, 3],
        quant_name: "fp8".into(),
        quant_bits: 8.0,
        quant_args: "--quantization fp8 --kv-cache-dtype 'fp8 e4m3'".into(),
        framework_name: "vllm".into(),
        unit_id: "u-1234".into(),
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[test]
fn renders_every_placeholder() {
    let template = SERVER_PLACEHOLDERS
        .iter()
        .map(|p| format!("{p}={{{p}}}"))
        .collect::<Vec<_>>()
        .join(" ");
    let rendered = render_command(&format!("serve {template}"), "", &values()).unwrap();
    assert_eq!(
        rendered.argv,
        argv(&[
            "serve",
            "model.name=llama-3.1-8b",
            "model.path=/models/Llama 3.1 8B",
            "model.tokenizer=/models/Llama 3.1 8B/tokenizer.json",
            "port=8123",
            "host=127.0.0.1",
            "gpu.count=2",
            "gpu.type=H100-80GB",
            "gpu.indices=2,3",
            "quant.name=fp8",
            "quant.bits=8",
            // Unquoted list placeholder inside a word: split as a shell splits `$x`.
            "quant.args=--quantization",
            "fp8",
            "--kv-cache-dtype",
            "fp8 e4m3",
            "framework.name=vllm",
            "unit.id=u-1234",
        ])
    );
}

#[test]
fn the_vllm_preset_keeps_the_model_path_whole_and_splits_quant_args() {
    let rendered = render_command(
        VLLM_PRESET,
        "--max-model-len 8192 --served-model-name 'my model'",
        &values(),
    )
    .unwrap();
    assert_eq!(
        rendered.argv,
        argv(&[
            "vllm",
            "serve",
            "/models/Llama 3.1 8B",
            "--host",
            "127.0.0.1",
            "--port",
            "8123",
            "--tensor-parallel-size",
            "2",
            "--quantization",
            "fp8",
            "--kv-cache-dtype",
            "fp8 e4m3",
            "--max-model-len",
            "8192",
            "--served-model-name",
            "my model",
        ])
    );
    assert_eq!(
        rendered.display(),
        "vllm serve '/models/Llama 3.1 8B' --host 127.0.0.1 --port 8123 \
         --tensor-parallel-size 2 --quantization fp8 --kv-cache-dtype 'fp8 e4m3' \
         --max-model-len 8192 --served-model-name 'my model'"
    );

    // No quantization arguments and no extra arguments: nothing is added, not an empty word.
    let bare = TemplateValues {
        quant_args: String::new(),
        ..values()
    };
    let rendered = render_command(VLLM_PRESET, "", &bare).unwrap();
    assert_eq!(rendered.argv.last().map(String::as_str), Some("2"));
    assert_eq!(rendered.argv.len(), 9);
}

#[test]
fn extra_args_take_placeholders_and_quotes() {
    let rendered = render_command(
        "llama-server -m {model.path}",
        "--alias {model.name} --chat-template \"{{% if x %}}\" --dev {gpu.indices}",
        &values(),
    )
    .unwrap();
    assert_eq!(
        rendered.argv,
        argv(&[
            "llama-server",
            "-m",
            "/models/Llama 3.1 8B",
            "--alias",
            "llama-3.1-8b",
            "--chat-template",
            "{% if x %}",
            "--dev",
            "2,3",
        ])
    );
}

#[test]
fn double_braces_are_literal_and_values_are_not_reinterpreted() {
    let tricky = TemplateValues {
        model_path: "it's {port} $HOME \"q\"".into(),
        ..values()
    };
    let rendered = render_command(
        "sh -c 'echo {{\"a\": 1}}' {model.path} env OLLAMA_HOST={host}:{port}",
        "",
        &tricky,
    )
    .unwrap();
    assert_eq!(
        rendered.argv,
        argv(&[
            "sh",
            "-c",
            "echo {\"a\": 1}",
            "it's {port} $HOME \"q\"",
            "env",
            "OLLAMA_HOST=127.0.0.1:8123",
        ])
    );
}

#[test]
fn bad_templates_name_the_placeholder_and_the_template() {
    let err = render_command("serve {model.nme} --port {port}", "", &values()).unwrap_err();
    assert!(
        matches!(
            &err,
            TemplateError::UnknownPlaceholder { name, template, .. }
                if name == "model.nme" && template == "serve {model.nme} --port {port}"
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "failed to render `serve {model.nme} --port {port}`: unknown placeholder `{model.nme}`"
        ),
        "{text}"
    );
    assert!(text.contains("{model.name} {model.path}"), "{text}");

    let err = render_command("serve", "--x {oops}", &values()).unwrap_err();
    assert!(err.to_string().contains("`--x {oops}`"), "{err}");

    type Expected = fn(&TemplateError) -> bool;
    let cases: &[(&str, Expected)] = &[
        ("serve {port", |e| {
            matches!(e, TemplateError::Unclosed { offset: 6, .. })
        }),
        ("serve port}", |e| {
            matches!(e, TemplateError::Unmatched { offset: 10, .. })
        }),
        ("serve 'x", |e| {
            matches!(e, TemplateError::UnterminatedQuote { quote: '\'', .. })
        }),
        ("serve \\", |e| {
            matches!(e, TemplateError::TrailingBackslash { .. })
        }),
        ("   ", |e| matches!(e, TemplateError::Empty { .. })),
    ];
    for (template, expected) in cases {
        let err = render_command(template, "", &values()).unwrap_err();
        assert!(expected(&err), "{template:?}: {err:?}");
        assert!(err.to_string().contains(&format!("`{template}`")), "{err}");
    }

    let broken = TemplateValues {
        quant_args: "--x 'unclosed".into(),
        ..values()
    };
    let err = render_command(VLLM_PRESET, "", &broken).unwrap_err();
    assert!(
        matches!(err, TemplateError::BadValue { ref name, .. } if name == "quant.args"),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Launching

fn spec(dir: &Path, argv: Vec<String>) -> LaunchSpec {
    let port = launcher::free_port("127.0.0.1").unwrap();
    LaunchSpec {
        command: RenderedCommand { argv },
        env: BTreeMap::new(),
        cuda_visible_devices: None,
        host: "127.0.0.1".into(),
        port,
        health_path: "/health".into(),
        startup_timeout: Duration::from_secs(20),
        log_path: dir.join("logs/unit/server.log"),
        stop_grace: Duration::from_secs(3),
        supervisor: PathBuf::from(env!("CARGO_BIN_EXE_evalctl-agent")),
        teardown: Vec::new(),
    }
}

fn sh(script: &str) -> Vec<String> {
    argv(&["sh", "-c", script])
}

fn sim_server(port: u16, extra: &[&str]) -> Vec<String> {
    let mut argv = argv(&[
        env!("CARGO_BIN_EXE_evalctl-agent"),
        "sim-server",
        "--host",
        "127.0.0.1",
        "--port",
    ]);
    argv.push(port.to_string());
    argv.extend(extra.iter().map(|e| (*e).to_owned()));
    argv
}

/// The process is gone or a zombie (dead, waiting for a reaper).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next();
            matches!(state, Some("Z" | "X"))
        }
    }
}

async fn stop_and_check_gone(server: &mut RunningServer) -> StopOutcome {
    let pgid = server.record().pgid;
    let outcome = server.stop().await;
    assert!(
        !group_alive(pgid),
        "group {pgid} still alive after stop: {outcome:?}"
    );
    outcome
}

#[tokio::test]
async fn the_sim_server_becomes_healthy_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), Vec::new());
    spec.command = sim_server(spec.port, &["--model", "m"]).into();
    let mut server = launcher::spawn(&spec).await.unwrap();
    assert_eq!(server.base_url(), format!("http://127.0.0.1:{}", spec.port));
    let started = Instant::now();
    server
        .wait_healthy(&CancellationToken::new())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(server.try_exit().is_none());

    let record = server.record();
    assert_eq!(
        record.start_time_ticks,
        process_start_time(record.pgid).unwrap()
    );
    assert_eq!(record.command, server.command_line());
    assert_eq!(record.log_path, spec.log_path);
    assert!(group_alive(record.pgid));

    let outcome = stop_and_check_gone(&mut server).await;
    assert!(
        matches!(outcome, StopOutcome::Terminated { status: Some(_) }),
        "{outcome:?}"
    );
    assert_eq!(server.stop().await, outcome, "stop is idempotent");
    assert!(process_gone(record.pgid));
}

#[tokio::test]
async fn the_sim_preset_runs_the_sibling_agent_binary() {
    // `evalctl-agent` resolves to the binary built with these tests, not to one on PATH.
    let resolved = launcher::resolve_program(launcher::AGENT_PROGRAM);
    assert_eq!(
        resolved.canonicalize().unwrap(),
        PathBuf::from(env!("CARGO_BIN_EXE_evalctl-agent"))
            .canonicalize()
            .unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), Vec::new());
    let values = TemplateValues {
        port: spec.port,
        model_name: "sim-model".into(),
        ..TemplateValues::default()
    };
    spec.command = render_command(SIM_PRESET, "--host 127.0.0.1", &values).unwrap();
    assert_eq!(
        spec.command.display(),
        format!(
            "evalctl-agent sim-server --port {} --model sim-model --host 127.0.0.1",
            spec.port
        )
    );
    let mut server = launcher::spawn(&spec).await.unwrap();
    server
        .wait_healthy(&CancellationToken::new())
        .await
        .unwrap();
    stop_and_check_gone(&mut server).await;
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
}

#[tokio::test]
async fn a_server_that_exits_at_startup_fails_with_its_exit_code_and_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        sh("echo 'loading weights'; echo 'torch.OutOfMemoryError: CUDA out of memory' >&2; exit 3"),
    );
    let mut server = launcher::spawn(&spec).await.unwrap();
    let started = Instant::now();
    let err = server
        .wait_healthy(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit noticed promptly"
    );
    let LaunchError::Exited {
        status,
        ref log_tail,
        ..
    } = err
    else {
        panic!("expected Exited, got {err:?}");
    };
    assert_eq!(status.code(), Some(3));
    assert!(log_tail.contains("loading weights"), "{log_tail}");
    assert!(log_tail.contains("CUDA out of memory"), "{log_tail}");
    assert_eq!(err.log_tail(), Some(log_tail.as_str()));
    let text = err.to_string();
    assert!(
        text.starts_with("failed to start the server: it exited (exit status: 3)"),
        "{text}"
    );
    assert!(text.contains("CUDA out of memory"), "{text}");
    assert_eq!(server.try_exit().map(|s| s.code()), Some(Some(3)));
    let outcome = stop_and_check_gone(&mut server).await;
    assert!(
        matches!(outcome, StopOutcome::AlreadyExited { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_listens_times_out_with_the_last_probe_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(
        dir.path(),
        sh("echo 'compiling CUDA graphs'; exec sleep 60"),
    );
    spec.startup_timeout = Duration::from_millis(1200);
    let mut server = launcher::spawn(&spec).await.unwrap();
    let started = Instant::now();
    let err = server
        .wait_healthy(&CancellationToken::new())
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let LaunchError::Unhealthy {
        ref last_probe,
        ref log_tail,
        ..
    } = err
    else {
        panic!("expected Unhealthy, got {err:?}");
    };
    assert!(last_probe.starts_with("failed to connect"), "{last_probe}");
    assert!(log_tail.contains("compiling CUDA graphs"), "{log_tail}");
    assert!(
        err.to_string()
            .contains("did not answer 200 within 1s 200ms"),
        "{err}"
    );
    // Still running: the caller decides to stop it.
    assert!(server.try_exit().is_none());
    let outcome = stop_and_check_gone(&mut server).await;
    assert!(
        matches!(outcome, StopOutcome::Terminated { status: Some(s) } if s.signal() == Some(15)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_server_answering_503_times_out_with_that_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), Vec::new());
    spec.command = sim_server(spec.port, &["--startup-delay", "60s"]).into();
    spec.startup_timeout = Duration::from_secs(4);
    let mut server = launcher::spawn(&spec).await.unwrap();
    let err = server
        .wait_healthy(&CancellationToken::new())
        .await
        .unwrap_err();
    let LaunchError::Unhealthy { ref last_probe, .. } = err else {
        panic!("expected Unhealthy, got {err:?}");
    };
    assert_eq!(last_probe, "HTTP 503");
    stop_and_check_gone(&mut server).await;
}

#[tokio::test]
async fn cancelling_the_health_wait_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = launcher::spawn(&spec(dir.path(), argv(&["sleep", "60"])))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let err = server.wait_healthy(&cancel).await.unwrap_err();
    assert!(matches!(err, LaunchError::Cancelled), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    stop_and_check_gone(&mut server).await;
}

#[tokio::test]
async fn stop_kills_the_whole_group_including_a_grandchild_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let script = format!(
        "trap '' TERM; sleep 1000 & echo $! > '{}'; echo started; wait",
        pid_file.display()
    );
    let mut spec = spec(dir.path(), sh(&script));
    spec.stop_grace = Duration::from_millis(500);
    let mut server = launcher::spawn(&spec).await.unwrap();
    let grandchild = wait_for_pid_file(&pid_file).await;
    let pgid = server.record().pgid;
    assert_ne!(grandchild, pgid);
    assert!(!process_gone(grandchild));

    let started = Instant::now();
    let outcome = stop_and_check_gone(&mut server).await;
    assert!(
        matches!(outcome, StopOutcome::Killed { status: Some(s) } if s.signal() == Some(9)),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the grace was given"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(process_gone(grandchild), "grandchild {grandchild} survived");
    assert_eq!(server.stop().await, outcome);
}

#[tokio::test]
async fn when_the_leader_exits_its_supervisor_ends_what_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("worker.pid");
    let script = format!("sleep 1000 & echo $! > '{}'; exit 0", pid_file.display());
    let mut server = launcher::spawn(&spec(dir.path(), sh(&script)))
        .await
        .unwrap();
    let worker = wait_for_pid_file(&pid_file).await;
    let pgid = server.record().pgid;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.try_exit().is_none() {
        assert!(Instant::now() < deadline, "the leader did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The exit is reported once the worker is gone too, with the leader's status.
    assert_eq!(server.try_exit().map(|s| s.code()), Some(Some(0)));
    assert!(
        process_gone(worker),
        "the worker {worker} outlived its leader"
    );
    assert!(!group_alive(pgid));
    let outcome = stop_and_check_gone(&mut server).await;
    assert!(
        matches!(outcome, StopOutcome::AlreadyExited { status: Some(s) } if s.code() == Some(0)),
        "{outcome:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("logs/unit/server.log")).unwrap();
    assert!(
        log.contains("the server exited and left processes running; they were terminated"),
        "{log}"
    );
}

#[tokio::test]
async fn stop_ends_a_grandchild_that_left_the_group_with_setsid() {
    // A server whose helper starts its own session (and so its own process group), as
    // some frameworks' daemons do: a group signal does not reach it; its supervisor does.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > \"{}\"; exec sleep 1000' & wait",
        pid_file.display()
    );
    let mut server = launcher::spawn(&spec(dir.path(), sh(&script)))
        .await
        .unwrap();
    let grandchild = wait_for_pid_file(&pid_file).await;
    let pgid = server.record().pgid;
    assert_ne!(process_group(grandchild), pgid, "setsid left the group");
    let started = Instant::now();
    let outcome = stop_and_check_gone(&mut server).await;
    let took = started.elapsed();
    assert!(
        matches!(outcome, StopOutcome::Terminated { .. }),
        "{outcome:?}"
    );
    assert!(process_gone(grandchild), "grandchild {grandchild} survived");
    eprintln!("stop ended a setsid grandchild in {took:?}");
}

#[tokio::test]
async fn the_teardown_runs_before_the_tree_ends_on_stop_and_on_the_agents_death() {
    // A container's server process is only the runtime's client: the supervisor runs the
    // teardown (`stop`, `rm`) however the server ends. Here each teardown command notes
    // that it ran and whether the server was still alive then (it must be: the teardown
    // comes first, so a client that proxies signals never ends the container on its own).
    let dir = tempfile::tempdir().unwrap();
    for agent_dies in [false, true] {
        let marks = dir.path().join(format!("teardown-{agent_dies}"));
        let pid_file = dir.path().join(format!("server-{agent_dies}.pid"));
        let mut spec = spec(
            dir.path(),
            sh(&format!(
                "echo $$ > '{}'; exec sleep 1000",
                pid_file.display()
            )),
        );
        let note = |word: &str| {
            argv(&[
                "sh",
                "-c",
                &format!(
                    "if kill -0 $(cat '{}'); then echo {word} alive; else echo {word} gone; fi >> '{}'",
                    pid_file.display(),
                    marks.display()
                ),
            ])
        };
        spec.teardown = vec![note("stop"), note("rm")];
        let mut server = launcher::spawn(&spec).await.unwrap();
        wait_for_pid_file(&pid_file).await;
        let pgid = server.record().pgid;
        if agent_dies {
            drop(server);
            eventually(|| process_gone(pgid), "the server is gone").await;
        } else {
            stop_and_check_gone(&mut server).await;
        }
        let ran = std::fs::read_to_string(&marks).unwrap_or_default();
        assert_eq!(ran, "stop alive\nrm alive\n", "agent dies: {agent_dies}");
    }
}

#[tokio::test]
async fn a_dropped_link_ends_the_whole_tree_as_an_agents_death_does() {
    // Dropping an unstopped server closes the agent's end of the link, which is what the
    // kernel does when the agent dies: the supervisor then ends the server and everything
    // below it, a `setsid` grandchild included, and exits.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > \"{}\"; exec sleep 1000' & exec sleep 1000",
        pid_file.display()
    );
    let server = launcher::spawn(&spec(dir.path(), sh(&script)))
        .await
        .unwrap();
    let grandchild = wait_for_pid_file(&pid_file).await;
    let pgid = server.record().pgid;
    let supervisor = supervisor_of(pgid);
    let started = Instant::now();
    drop(server);
    eventually(
        || process_gone(pgid) && process_gone(grandchild) && process_gone(supervisor),
        "the server, its grandchild and the supervisor are gone",
    )
    .await;
    eprintln!("a closed link ended the tree in {:?}", started.elapsed());
    let log = std::fs::read_to_string(dir.path().join("logs/unit/server.log")).unwrap();
    assert!(log.contains("the agent's link closed"), "{log}");
}

#[tokio::test]
async fn the_supervisor_exits_as_its_server_did() {
    // Exit codes and signals reach the agent as if the server were its own child.
    let dir = tempfile::tempdir().unwrap();
    for (script, code, signal) in [
        ("exit 0", Some(0), None),
        ("exit 3", Some(3), None),
        ("exit 255", Some(255), None),
        ("kill -TERM $$", None, Some(15)),
        ("kill -KILL $$", None, Some(9)),
        ("kill -SEGV $$", None, Some(11)),
    ] {
        let mut server = launcher::spawn(&spec(dir.path(), sh(script)))
            .await
            .unwrap();
        let err = server
            .wait_healthy(&CancellationToken::new())
            .await
            .unwrap_err();
        let LaunchError::Exited { status, .. } = err else {
            panic!("{script}: expected Exited, got {err:?}");
        };
        assert_eq!((status.code(), status.signal()), (code, signal), "{script}");
        assert!(
            !status.core_dumped(),
            "{script}: the supervisor dumps no core"
        );
        stop_and_check_gone(&mut server).await;
    }
}

#[tokio::test]
async fn the_server_starts_with_no_signal_blocked() {
    // The supervisor blocks the signals it reads from a signalfd; its server must not inherit
    // that mask, or SIGTERM would never reach it.
    let dir = tempfile::tempdir().unwrap();
    let mut server = launcher::spawn(&spec(
        dir.path(),
        // Not through a shell: dash resets the mask itself when it forks.
        argv(&["grep", "SigBlk", "/proc/self/status"]),
    ))
    .await
    .unwrap();
    let _ = server.wait_healthy(&CancellationToken::new()).await;
    stop_and_check_gone(&mut server).await;
    let log = std::fs::read_to_string(dir.path().join("logs/unit/server.log")).unwrap();
    assert!(log.contains("SigBlk:\t0000000000000000"), "{log}");
}

#[tokio::test]
async fn dropping_an_unstopped_server_ends_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = launcher::spawn(&spec(dir.path(), argv(&["sleep", "1000"])))
        .await
        .unwrap();
    let pgid = server.record().pgid;
    assert!(group_alive(pgid));
    drop(server);
    eventually(|| !group_alive(pgid), "the dropped server's group is gone").await;
}

#[tokio::test]
async fn the_log_captures_stdout_and_stderr_and_appends_across_launches() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), sh("echo to-stdout; echo to-stderr >&2; exit 0"));
    assert!(!spec.log_path.parent().unwrap().exists());
    for _ in 0..2 {
        let mut server = launcher::spawn(&spec).await.unwrap();
        assert_eq!(server.log_path(), spec.log_path);
        let err = server
            .wait_healthy(&CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, LaunchError::Exited { .. }), "{err:?}");
        stop_and_check_gone(&mut server).await;
    }
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert_eq!(log.matches("to-stdout\n").count(), 2, "{log}");
    assert_eq!(log.matches("to-stderr\n").count(), 2, "{log}");
    assert_eq!(
        log.matches("evalctl-agent: starting: sh -c ").count(),
        2,
        "{log}"
    );

    // Environment: the framework's variables and the GPUs.
    spec.command = sh("echo \"cvd=[$CUDA_VISIBLE_DEVICES] foo=[$FOO]\"").into();
    spec.env.insert("FOO".into(), "bar baz".into());
    spec.cuda_visible_devices = Some("2,3".into());
    spec.log_path = dir.path().join("env.log");
    let mut server = launcher::spawn(&spec).await.unwrap();
    let _ = server.wait_healthy(&CancellationToken::new()).await;
    stop_and_check_gone(&mut server).await;
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert!(log.contains("cvd=[2,3] foo=[bar baz]"), "{log}");

    // `None` leaves CUDA_VISIBLE_DEVICES as the agent has it.
    spec.cuda_visible_devices = None;
    spec.log_path = dir.path().join("env-none.log");
    let mut server = launcher::spawn(&spec).await.unwrap();
    let _ = server.wait_healthy(&CancellationToken::new()).await;
    stop_and_check_gone(&mut server).await;
    let inherited = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert!(log.contains(&format!("cvd=[{inherited}]")), "{log}");
}

#[tokio::test]
async fn spawn_failures_name_the_program_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let err = launcher::spawn(&spec(dir.path(), argv(&["evalctl-no-such-server", "--x"])))
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::Spawn { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("failed to start `evalctl-no-such-server`"),
        "{text}"
    );
    assert!(text.contains("not on the agent's PATH"), "{text}");
    assert!(std::error::Error::source(&err).is_some());

    let script = dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let err = launcher::spawn(&spec(dir.path(), vec![script.display().to_string()]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not executable"), "{err}");

    let err = launcher::spawn(&spec(dir.path(), Vec::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::EmptyCommand), "{err:?}");
}

#[tokio::test]
async fn a_missing_or_wrong_supervisor_fails_the_launch_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), argv(&["sleep", "1000"]));
    spec.supervisor = dir.path().join("no-such-evalctl-agent");
    let err = launcher::spawn(&spec).await.unwrap_err();
    assert!(matches!(err, LaunchError::Supervisor { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("failed to start the server's supervisor `"),
        "{text}"
    );
    assert!(text.contains("supervises every server"), "{text}");

    // A program that is no supervisor exits without a word.
    spec.supervisor = PathBuf::from("false");
    let err = launcher::spawn(&spec).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "failed to start the server: its supervisor `false` exited (exit status: 1) \
             without starting it"
        ),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Orphans

/// A process group started the way a previous agent would have, killed when dropped.
struct Orphan {
    child: std::process::Child,
}

impl Orphan {
    fn start(script: &str) -> Orphan {
        let child = std::process::Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Orphan { child }
    }

    fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    fn record(&self, start_time_ticks: u64) -> ServerRecord {
        ServerRecord {
            pgid: self.pgid(),
            start_time_ticks,
            command: "sh -c …".into(),
            log_path: PathBuf::from("/dev/null"),
            unit_id: "u".into(),
        }
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pgid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Not every orphan leads its group: kill it by pid too, so a failed test ends
        // instead of waiting for its `sleep 1000`.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` runs with `token` in its environment (it has exec'd: a child between fork
/// and exec still has its parent's).
fn carries(pid: i32, token: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|&b| b == 0)
            .any(|entry| entry == format!("{}={token}", launcher::LAUNCH_TOKEN_ENV).as_bytes())
    })
}

#[tokio::test]
async fn end_orphans_ends_matching_groups_and_leaves_reused_pids_alone() {
    let polite = Orphan::start("sleep 1000 & wait");
    let stubborn = Orphan::start("trap '' TERM; sleep 1000 & wait");
    let reused = Orphan::start("sleep 1000 & wait");
    let gone = {
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let pid = done.id() as i32;
        done.wait().unwrap();
        pid
    };
    let ticks = |o: &Orphan| process_start_time(o.pgid()).unwrap();
    eventually(
        || {
            [&polite, &stubborn, &reused]
                .iter()
                .all(|o| launcher_members(o.pgid()) >= 2)
        },
        "the orphans' sleeps started",
    )
    .await;
    let records = vec![
        polite.record(ticks(&polite)),
        stubborn.record(ticks(&stubborn)),
        // The pid is there but started at another time: as if reused by an unrelated process.
        reused.record(ticks(&reused) + 1),
        ServerRecord {
            pgid: gone,
            ..polite.record(1)
        },
        ServerRecord {
            pgid: 1,
            ..polite.record(1)
        },
    ];
    let started = Instant::now();
    let outcomes = launcher::end_orphans(&records, Duration::from_millis(500)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "groups are ended concurrently"
    );
    assert_eq!(
        outcomes,
        vec![
            OrphanOutcome::Terminated,
            OrphanOutcome::Killed,
            OrphanOutcome::PidReused {
                start_time_ticks: ticks(&reused)
            },
            OrphanOutcome::Gone,
            OrphanOutcome::Invalid,
        ]
    );
    assert!(!group_alive(polite.pgid()));
    assert!(!group_alive(stubborn.pgid()));
    assert!(group_alive(reused.pgid()), "a reused pid is never killed");
    assert!(outcomes.iter().all(OrphanOutcome::is_settled));
}

#[tokio::test]
async fn end_launch_ends_what_carries_the_token_and_nothing_else() {
    // A crash fell between the spawn and the record: only the token in the environment
    // says what the launch started. Its group (leader and a child), and a process that
    // left for a group of its own, carry it; a look-alike without the token does not.
    let token = format!("t{}", std::process::id());
    let with_token = |script: &str, own_group: bool| {
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", script])
            .env(launcher::LAUNCH_TOKEN_ENV, &token)
            .stdout(std::process::Stdio::null());
        if own_group {
            command.process_group(0);
        }
        Orphan {
            child: command.spawn().unwrap(),
        }
    };
    let server = with_token("sleep 1000 & wait", true);
    let bystander = Orphan::start("sleep 1000 & wait");
    // `setsid` puts its sleep in a new session and group led by a process whose
    // environment carries the token; it stands for a worker that left the server's group.
    let mut wanderer_parent = std::process::Command::new("setsid")
        .args(["sleep", "1000"])
        .env(launcher::LAUNCH_TOKEN_ENV, &token)
        .spawn()
        .unwrap();
    let wanderer = wanderer_parent.id() as i32;
    // In the test's own group, whose leader carries no token: killed on its own.
    let mut loose = with_token("exec sleep 1000", false);
    let loose_pid = loose.child.id() as i32;
    eventually(
        || {
            launcher_members(server.pgid()) >= 2
                && launcher_members(bystander.pgid()) >= 2
                && carries(wanderer, &token)
                && carries(loose_pid, &token)
        },
        "the processes started",
    )
    .await;

    let outcomes = launcher::end_launch(
        &token,
        "sh -c …",
        Path::new("/dev/null"),
        "u",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(
        outcomes.iter().all(OrphanOutcome::is_settled),
        "{outcomes:?}"
    );
    assert!(!group_alive(server.pgid()), "the launch's group is ended");
    let _ = wanderer_parent.wait();
    assert!(
        process_start_time(wanderer).is_err(),
        "the carrier in a group of its own is ended too"
    );
    let _ = loose.child.wait();
    assert!(
        process_start_time(loose_pid).is_err(),
        "a carrier in a group it does not lead is killed"
    );
    assert!(
        group_alive(bystander.pgid()),
        "a process without the token is left alone"
    );
    assert!(
        launcher::end_launch(
            &token,
            "",
            Path::new("/dev/null"),
            "u",
            Duration::from_millis(100)
        )
        .await
        .is_empty(),
        "nothing carries the token any more"
    );
}

/// The process group of a live process.
fn process_group(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// The parent of a live process (for a server, its supervisor).
fn supervisor_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Live members of a group, counted from /proc.
fn launcher_members(pgid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
                    .split_whitespace()
                    .collect();
                fields.get(2) == Some(&pgid.to_string().as_str()) && fields[0] != "Z"
            })
        })
        .count()
}

async fn eventually(mut check: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "not true after 5s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_pid_file(path: &Path) -> i32 {
    let mut pid = None;
    eventually(
        || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            pid.is_some()
        },
        "the pid file is written",
    )
    .await;
    pid.unwrap()
}
