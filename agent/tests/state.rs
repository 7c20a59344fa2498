//! The agent's local state (`agent.sqlite`): what survives a restart, the outbox rules, and a
//! writer SIGKILLed mid-stream never leaving a finished step without its batch or the reverse.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evalctl_agent::launcher::ServerRecord;
use evalctl_agent::state::{AgentState, LaunchIntent, StateError};
use evalctl_proto::v1::{Lease, ResultBatch, StepResult, StepSpec};
use proptest::prelude::*;

fn lease(id: &str, epoch: u64) -> Lease {
    Lease {
        lease_id: id.to_owned(),
        campaign: "nightly".into(),
        unit_id: format!("unit-of-{id}"),
        epoch,
        steps: (0..3)
            .map(|i| StepSpec {
                step_id: format!("{id}-s{i}"),
                index: i,
                ..StepSpec::default()
            })
            .collect(),
        gpu_indices: vec![0, 1],
        expires_at_ms: 1_700_000_000_000,
        attempt: 2,
        config_hash: "abc".into(),
        ..Lease::default()
    }
}

fn batch(lease: &Lease, step_id: &str) -> ResultBatch {
    ResultBatch {
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
        unit_id: lease.unit_id.clone(),
        attempt: lease.attempt,
        sequence: 0,
        results: vec![StepResult {
            unit_id: lease.unit_id.clone(),
            step_id: step_id.to_owned(),
            result_json: format!("{{\"step\":\"{step_id}\"}}"),
            ..StepResult::default()
        }],
    }
}

fn server(pgid: i32) -> ServerRecord {
    ServerRecord {
        pgid,
        start_time_ticks: 123_456 + pgid as u64,
        command: format!("vllm serve '/models/my model' --port {pgid}"),
        log_path: PathBuf::from(format!("/var/log/evalctl/u{pgid}.log")),
        unit_id: format!("u{pgid}"),
    }
}

fn sequences(state: &AgentState) -> Vec<u64> {
    state.outbox().unwrap().iter().map(|b| b.sequence).collect()
}

#[test]
fn reopening_keeps_id_leases_steps_outbox_and_servers() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("nested/state");
    let (a, b) = (lease("la", 3), lease("lb", 1));
    let (id, outbox) = {
        let state = AgentState::open(&state_dir).unwrap();
        let id = state.agent_id();
        assert!(uuid_like(&id), "{id}");
        state.put_lease(&a).unwrap();
        state.put_lease(&b).unwrap();
        state
            .finish_step("la", "la-s0", batch(&a, "la-s0"))
            .unwrap();
        state
            .finish_step("lb", "lb-s0", batch(&b, "lb-s0"))
            .unwrap();
        state
            .finish_step("la", "la-s1", batch(&a, "la-s1"))
            .unwrap();
        state.record_server(&server(4242)).unwrap();
        state.record_server(&server(77)).unwrap();
        (id, state.outbox().unwrap())
    };
    assert!(state_dir.join("agent.sqlite").is_file());

    let state = AgentState::open(&state_dir).unwrap();
    assert_eq!(state.agent_id(), id, "the agent id is stable");
    assert_eq!(
        state.leases().unwrap(),
        vec![a, b],
        "whole leases, in order"
    );
    assert_eq!(
        state.finished_steps("la").unwrap(),
        HashSet::from(["la-s0".to_owned(), "la-s1".to_owned()])
    );
    assert_eq!(
        state.finished_steps("lb").unwrap(),
        HashSet::from(["lb-s0".to_owned()])
    );
    assert_eq!(state.outbox().unwrap(), outbox);
    assert_eq!(state.outbox_len().unwrap(), 3);
    assert_eq!(state.servers().unwrap(), vec![server(77), server(4242)]);
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|&c| c == '-').count() == 4
}

#[test]
fn a_configured_agent_id_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let state = AgentState::open(dir.path()).unwrap();
        state.set_agent_id("gpu-host-7").unwrap();
        assert_eq!(state.agent_id(), "gpu-host-7");
    }
    let state = AgentState::open(dir.path()).unwrap();
    assert_eq!(state.agent_id(), "gpu-host-7");
}

#[test]
fn finish_step_stores_step_and_batch_together_with_increasing_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let l = lease("l1", 5);
    let first = {
        let state = AgentState::open(dir.path()).unwrap();
        state.put_lease(&l).unwrap();
        let mut sent = batch(&l, "l1-s0");
        sent.sequence = 999; // ignored: the state assigns it
        let stored = state.finish_step("l1", "l1-s0", sent.clone()).unwrap();
        assert_ne!(stored.sequence, 999);
        assert_eq!(
            ResultBatch {
                sequence: 0,
                ..stored.clone()
            },
            ResultBatch {
                sequence: 0,
                ..sent
            },
            "only the sequence changes"
        );
        assert!(state.finished_steps("l1").unwrap().contains("l1-s0"));
        assert_eq!(state.outbox().unwrap(), vec![stored.clone()]);
        // Acked batches do not give their numbers back.
        state.ack(stored.sequence).unwrap();
        stored
    };
    let state = AgentState::open(dir.path()).unwrap();
    let second = state
        .finish_step("l1", "l1-s1", batch(&l, "l1-s1"))
        .unwrap();
    assert!(
        second.sequence > first.sequence,
        "{} after {}",
        second.sequence,
        first.sequence
    );
    let third = state
        .finish_step("l1", "l1-s2", batch(&l, "l1-s2"))
        .unwrap();
    assert!(third.sequence > second.sequence);
    assert_eq!(sequences(&state), vec![second.sequence, third.sequence]);
}

#[test]
fn finish_step_refuses_unknown_leases_and_repeated_steps_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = AgentState::open(dir.path()).unwrap();
    let l = lease("l1", 1);
    let err = state
        .finish_step("l1", "l1-s0", batch(&l, "l1-s0"))
        .unwrap_err();
    assert!(matches!(err, StateError::UnknownLease { .. }), "{err}");
    assert_eq!(state.outbox_len().unwrap(), 0);

    state.put_lease(&l).unwrap();
    state
        .finish_step("l1", "l1-s0", batch(&l, "l1-s0"))
        .unwrap();
    let err = state
        .finish_step("l1", "l1-s0", batch(&l, "l1-s0"))
        .unwrap_err();
    assert!(
        matches!(err, StateError::StepAlreadyFinished { .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("failed to finish step `l1-s0`"),
        "{err}"
    );
    assert_eq!(state.outbox_len().unwrap(), 1);
}

#[test]
fn ack_removes_exactly_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let state = AgentState::open(dir.path()).unwrap();
    let l = lease("l1", 1);
    state.put_lease(&l).unwrap();
    let seqs: Vec<u64> = (0..3)
        .map(|i| {
            let step = format!("l1-s{i}");
            state
                .finish_step("l1", &step, batch(&l, &step))
                .unwrap()
                .sequence
        })
        .collect();
    state.ack(seqs[1]).unwrap();
    assert_eq!(sequences(&state), vec![seqs[0], seqs[2]]);
    state.ack(seqs[1]).unwrap(); // twice is fine
    state.ack(123_456).unwrap(); // unknown is fine
    assert_eq!(state.outbox_len().unwrap(), 2);
    // Acking does not unfinish the step.
    assert_eq!(state.finished_steps("l1").unwrap().len(), 3);
}

#[test]
fn remove_lease_forgets_its_steps_but_not_its_unacked_batches() {
    let dir = tempfile::tempdir().unwrap();
    let state = AgentState::open(dir.path()).unwrap();
    let (a, b) = (lease("la", 1), lease("lb", 1));
    state.put_lease(&a).unwrap();
    state.put_lease(&b).unwrap();
    state
        .finish_step("la", "la-s0", batch(&a, "la-s0"))
        .unwrap();
    state
        .finish_step("lb", "lb-s0", batch(&b, "lb-s0"))
        .unwrap();
    state.remove_lease("la").unwrap();
    state.remove_lease("no-such-lease").unwrap();
    assert_eq!(state.leases().unwrap(), vec![b]);
    assert!(state.finished_steps("la").unwrap().is_empty());
    assert_eq!(state.finished_steps("lb").unwrap().len(), 1);
    assert_eq!(
        state.outbox_len().unwrap(),
        2,
        "a batch leaves only when acked"
    );

    // The same lease id again starts with no finished steps.
    state.put_lease(&a).unwrap();
    assert!(state.finished_steps("la").unwrap().is_empty());
}

#[test]
fn put_lease_replaces_the_lease_and_keeps_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let state = AgentState::open(dir.path()).unwrap();
    let old = lease("l1", 1);
    state.put_lease(&old).unwrap();
    state
        .finish_step("l1", "l1-s0", batch(&old, "l1-s0"))
        .unwrap();
    let renewed = Lease {
        epoch: 2,
        expires_at_ms: old.expires_at_ms + 30_000,
        ..old
    };
    state.put_lease(&renewed).unwrap();
    assert_eq!(state.leases().unwrap(), vec![renewed]);
    assert_eq!(state.finished_steps("l1").unwrap().len(), 1);
}

#[test]
fn servers_are_recorded_replaced_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let state = AgentState::open(dir.path()).unwrap();
    state.record_server(&server(10)).unwrap();
    state.record_server(&server(20)).unwrap();
    let replaced = ServerRecord {
        start_time_ticks: 1,
        ..server(10)
    };
    state.record_server(&replaced).unwrap();
    assert_eq!(state.servers().unwrap(), vec![replaced, server(20)]);
    state.forget_server(10).unwrap();
    state.forget_server(99).unwrap();
    assert_eq!(state.servers().unwrap(), vec![server(20)]);
}

#[test]
fn a_launch_is_recorded_until_its_server_is_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let launch = |token: &str| LaunchIntent {
        token: token.into(),
        unit_id: "u1".into(),
        command: "sim-server --port 1".into(),
        log_path: PathBuf::from("/tmp/u1-a1.log"),
    };
    {
        let state = AgentState::open(dir.path()).unwrap();
        state.record_launch(&launch("a")).unwrap();
        state.record_launch(&launch("b")).unwrap();
        // "a" got as far as a recorded server; "b" did not (a crash after its spawn).
        state.record_launched_server(&server(10), "a").unwrap();
    }
    let state = AgentState::open(dir.path()).unwrap();
    assert_eq!(state.launches().unwrap(), vec![launch("b")]);
    assert_eq!(state.servers().unwrap(), vec![server(10)]);
    state.forget_launch("b").unwrap();
    state.forget_launch("unknown").unwrap();
    assert!(state.launches().unwrap().is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Finish,
    /// Ack the n-th (modulo) batch of the current outbox.
    Ack(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Finish),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The outbox lists exactly the unacked batches, in the order they were stored, and that
    /// order is sequence order — across acks and restarts.
    #[test]
    fn outbox_order_is_sequence_order(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let l = lease("l1", 1);
        let mut state = AgentState::open(dir.path()).unwrap();
        state.put_lease(&l).unwrap();
        let mut model: Vec<ResultBatch> = Vec::new();
        let mut last_sequence = 0;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Finish => {
                    let step = format!("step-{i}");
                    let stored = state.finish_step("l1", &step, batch(&l, &step)).unwrap();
                    prop_assert!(stored.sequence > last_sequence);
                    last_sequence = stored.sequence;
                    model.push(stored);
                }
                Op::Ack(n) if !model.is_empty() => {
                    let acked = model.remove(n % model.len());
                    state.ack(acked.sequence).unwrap();
                }
                Op::Ack(_) => {}
                Op::Reopen => {
                    drop(state);
                    state = AgentState::open(dir.path()).unwrap();
                }
            }
            let outbox = state.outbox().unwrap();
            prop_assert_eq!(&outbox, &model);
            prop_assert!(outbox.windows(2).all(|w| w[0].sequence < w[1].sequence));
            prop_assert_eq!(state.outbox_len().unwrap(), model.len());
        }
    }
}

/// Set in the re-executed test binary: the state directory the child writes to.
const CHILD_ENV: &str = "EVALCTL_STATE_TEST_CHILD_DIR";
const CHILD_LEASE: &str = "crash-lease";

/// Not a test of its own: the writer the SIGKILL test runs in a child process. Without
/// [`CHILD_ENV`] it returns at once.
#[test]
fn sigkill_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let state = AgentState::open(Path::new(&dir)).unwrap();
    let l = lease(CHILD_LEASE, 1);
    state.put_lease(&l).unwrap();
    let mut n = state.finished_steps(CHILD_LEASE).unwrap().len();
    // A large-ish result so a kill often lands inside a write.
    let padding = "x".repeat(64 * 1024);
    loop {
        let step = format!("step-{n}");
        let mut b = batch(&l, &step);
        b.results[0].environment_json = padding.clone();
        state.finish_step(CHILD_LEASE, &step, b).unwrap();
        // Printed only once the commit returned: the parent holds us to it.
        println!("finished {step}");
        n += 1;
    }
}

#[test]
fn a_writer_killed_at_any_moment_leaves_steps_and_batches_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut reported: Vec<String> = Vec::new();
    for round in 0..12 {
        let mut child = Command::new(&exe)
            .args([
                "sigkill_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A reader thread, so a silent child cannot hang the test.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(step) = line.strip_prefix("finished ")
                    && tx.send(step.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        // Kill after a different number of commits each round, at a different point of the
        // next one.
        let target = 2 + (round * 5) % 13;
        let deadline = Instant::now() + Duration::from_secs(20);
        for _ in 0..target {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(step) => reported.push(step),
                Err(err) => {
                    let _ = child.kill();
                    panic!("child stopped reporting ({err}): {:?}", child.wait());
                }
            }
        }
        std::thread::sleep(Duration::from_micros(250 * (round as u64 % 5)));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
        // Steps the child reported before dying count too; the pipe closed with it.
        reader.join().unwrap();
        reported.extend(rx.try_iter());
    }

    let state = AgentState::open(dir.path()).unwrap();
    let finished = state.finished_steps(CHILD_LEASE).unwrap();
    let outbox = state.outbox().unwrap();
    let batched: HashSet<String> = outbox
        .iter()
        .map(|b| {
            assert_eq!(b.lease_id, CHILD_LEASE);
            assert_eq!(b.results.len(), 1);
            b.results[0].step_id.clone()
        })
        .collect();
    assert_eq!(batched.len(), outbox.len(), "one batch per step");
    assert_eq!(
        finished, batched,
        "every finished step has its batch and every batch its finished step"
    );
    for step in &reported {
        assert!(
            finished.contains(step),
            "{step} was reported stored but is gone"
        );
    }
    assert!(finished.len() >= reported.len());
    assert!(outbox.windows(2).all(|w| w[0].sequence < w[1].sequence));
}
