//! `AgentService` over real gRPC: a coordinator served on `127.0.0.1:0` with a temporary
//! database, called with the generated clients.

use std::path::Path;
use std::time::{Duration, Instant};

use evalctl_coordinator::config::Config;
use evalctl_coordinator::server::{Coordinator, ServeError};
use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_client::AgentServiceClient;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

// ---- harness ----

/// A coordinator serving in this process.
struct Running {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    async fn start(data_dir: &Path, lease_ttl: Duration) -> Running {
        let mut config = Config::with_data_dir(data_dir);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.lease_ttl = lease_ttl;
        config.shutdown_grace = Duration::from_secs(2);
        let coordinator = Coordinator::bind(config).await.expect("coordinator binds");
        let addr = coordinator.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(coordinator.serve(stop.clone().cancelled_owned()));
        Running { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("coordinator stops cleanly");
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::connect(self.url()).await.unwrap()
    }

    async fn campaigns(&self) -> CampaignServiceClient<Channel> {
        CampaignServiceClient::connect(self.url()).await.unwrap()
    }
}

/// Polls `$cond` (an async expression) until it holds, or fails after 10 s.
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if $cond {
                break;
            }
            assert!(Instant::now() < deadline, $($msg)+);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }};
}

/// `models` H100 units with two steps each.
fn matrix(campaign: &str, models: usize) -> String {
    let mut yaml = format!("campaign: {campaign}\nmax_attempts: 2\nmodels:\n");
    for m in 0..models {
        yaml.push_str(&format!(
            "  - {{ name: m{m}, path: org/m{m}, params_b: 1 }}\n"
        ));
    }
    yaml.push_str(
        "gpus:
  - { type: H100-80GB, memory_gb: 80, counts: [1] }
frameworks:
  - name: vllm
    command: vllm serve {model.path} --port {port} --tensor-parallel-size {gpu.count}
    health: /health
quantizations:
  - { name: bf16, bits: 16 }
workloads:
  - name: chat
    api: chat
    dataset: { kind: random, input_tokens: 128, output_tokens: 32 }
    load: { concurrency: [1, 8] }
    requests: 10
",
    );
    yaml
}

async fn submit(c: &Running, campaign: &str, models: usize) -> pb::SubmitResponse {
    c.campaigns()
        .await
        .submit(pb::SubmitRequest {
            matrix_yaml: matrix(campaign, models),
            source_name: "test.yaml".into(),
            dry_run: false,
            submitted_by: "test".into(),
            allow_empty: false,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn register(c: &Running, agent: &str, gpus: u32) -> pb::RegisterResponse {
    c.agents()
        .await
        .register(pb::RegisterRequest {
            agent_id: agent.into(),
            hostname: format!("{agent}.lab"),
            gpus: (0..gpus)
                .map(|index| pb::GpuInfo {
                    index,
                    uuid: format!("GPU-{index}"),
                    gpu_type: "H100-80GB".into(),
                    name: "NVIDIA H100 80GB HBM3".into(),
                    memory_gb: 80.0,
                })
                .collect(),
            version: "0.1.0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn ask(agent: &str, free: &[u32], wait_ms: u64) -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest {
        agent_id: agent.into(),
        free_gpu_indices: free.to_vec(),
        warm_configs: vec![],
        wait_ms,
        cpu_slots_free: 0,
    }
}

async fn acquire(c: &Running, agent: &str, free: &[u32]) -> Option<pb::Lease> {
    c.agents()
        .await
        .acquire_lease(ask(agent, free, 0))
        .await
        .unwrap()
        .into_inner()
        .lease
}

fn records(lines: usize) -> Vec<u8> {
    let text: String = (0..lines)
        .map(|i| format!("{{\"request\":{i}}}\n"))
        .collect();
    zstd::encode_all(text.as_bytes(), 3).unwrap()
}

/// A step document of `version` (major, minor) for step `i`, with `extra` fields appended.
fn document(i: usize, (major, minor): (u32, u32), extra: &str) -> String {
    format!(
        "{{\"schema\":{major},\"schema_minor\":{minor},\"simulated\":true,\"step_label\":\"step {i}\",\
         \"metrics\":null,\"tokenization\":null,\"connections_opened\":1,\"served_model\":\"m\",\
         \"started_at_ms\":0,\"finished_at_ms\":{i}{extra}}}"
    )
}

/// A step document of the version this build writes.
fn current_document(i: usize) -> String {
    let v = evalctl_results::SchemaVersion::CURRENT;
    document(i, (v.major, v.minor), "")
}

fn batch(lease: &pb::Lease, sequence: u64, steps: &[usize]) -> pb::ResultBatch {
    pb::ResultBatch {
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
        unit_id: lease.unit_id.clone(),
        attempt: lease.attempt,
        sequence,
        results: steps
            .iter()
            .map(|&i| pb::StepResult {
                step_id: lease.steps[i].step_id.clone(),
                step_index: lease.steps[i].index,
                result_json: current_document(i),
                environment_json: "{\"host\":\"gpu-1.lab\"}".into(),
                records_zstd: records(3),
                finished_at_ms: 1,
                ..Default::default()
            })
            .collect(),
    }
}

/// Sends `batches` on one `ReportResults` stream and returns their acknowledgements.
async fn report(c: &Running, batches: Vec<pb::ResultBatch>) -> Vec<pb::ResultAck> {
    let n = batches.len();
    let mut acks = c
        .agents()
        .await
        .report_results(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(ack) = acks.next().await {
        out.push(ack.unwrap());
    }
    assert_eq!(out.len(), n, "one acknowledgement per batch");
    out
}

async fn units(c: &Running, campaign: &str) -> Vec<pb::UnitSummary> {
    c.campaigns()
        .await
        .list_units(pb::ListUnitsRequest {
            campaign: campaign.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .units
}

async fn heartbeat(c: &Running, agent: &str, leases: &[&pb::Lease]) -> pb::HeartbeatResponse {
    c.agents()
        .await
        .heartbeat(pb::HeartbeatRequest {
            agent_id: agent.into(),
            leases: leases
                .iter()
                .map(|l| pb::LeaseProgress {
                    lease_id: l.lease_id.clone(),
                    epoch: l.epoch,
                    ..Default::default()
                })
                .collect(),
            draining: false,
        })
        .await
        .unwrap()
        .into_inner()
}

// ---- tests ----

#[tokio::test]
async fn a_unit_runs_from_lease_to_success_and_watch_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Running::start(dir.path(), Duration::from_secs(30)).await;
    let registered = register(&c, "gpu-1", 2).await;
    assert_eq!(
        (registered.lease_ttl_ms, registered.heartbeat_interval_ms),
        (30_000, 10_000)
    );
    let submitted = submit(&c, "nightly", 2).await;
    let mut watch = c
        .campaigns()
        .await
        .watch(pb::WatchRequest {
            campaign: "nightly".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().kind, "snapshot");

    let lease = acquire(&c, "gpu-1", &[0, 1]).await.expect("a lease");
    assert_eq!(
        lease.unit_id, submitted.unit_list[0].unit_id,
        "oldest first"
    );
    assert_eq!(lease.config_hash, lease.unit_id);
    assert_eq!(lease.campaign, submitted.campaign_id);
    assert_eq!((lease.epoch, lease.attempt), (1, 1));
    assert_eq!(lease.gpu_indices, [0]);
    assert_eq!(lease.steps.len(), 2);
    assert!(lease.finished_step_ids.is_empty());
    assert_eq!(
        lease.config.as_ref().unwrap().gpu.as_ref().unwrap().count,
        1
    );

    let mut unknown_step = batch(&lease, 4, &[1]);
    unknown_step.results[0].step_id = "s-not-a-step".into();
    let mut empty = batch(&lease, 5, &[]);
    empty.results.clear();
    let acks = report(
        &c,
        vec![
            batch(&lease, 1, &[0]),
            batch(&lease, 1, &[0]),
            batch(&lease, 2, &[0, 1]),
            unknown_step,
            empty,
        ],
    )
    .await;
    let summary: Vec<(u64, bool)> = acks.iter().map(|a| (a.sequence, a.accepted)).collect();
    assert_eq!(
        summary,
        [(1, true), (1, true), (2, true), (4, false), (5, false)]
    );
    assert!(acks[3].error.contains("s-not-a-step"), "{}", acks[3].error);
    assert!(
        acks[4].error.contains("`results` is empty"),
        "{}",
        acks[4].error
    );
    assert_eq!(acks[0].unit_id, lease.unit_id);

    let mut agents = c.agents().await;
    agents
        .complete(pb::CompleteRequest {
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
        })
        .await
        .unwrap();
    // Its answer lost, the agent completes again: acknowledged.
    agents
        .complete(pb::CompleteRequest {
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
        })
        .await
        .unwrap();

    let mut kinds = Vec::new();
    while !kinds.iter().any(|k| k == "unit_succeeded") {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        kinds.push(event.kind);
    }
    // Timer refreshes ("progress") may come in between.
    kinds.retain(|k| k != "progress");
    assert_eq!(
        kinds,
        [
            "unit_leased",
            "step_finished",
            "step_finished",
            "unit_succeeded"
        ]
    );

    let units = units(&c, "nightly").await;
    assert_eq!(units[0].state, pb::UnitState::Succeeded as i32);
    assert_eq!(units[0].steps_succeeded, 2);

    let results: Vec<pb::StepResult> = c
        .campaigns()
        .await
        .results(pb::ResultsRequest {
            campaign: "nightly".into(),
            include_records: true,
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let order: Vec<(&str, u32)> = results
        .iter()
        .map(|r| (r.unit_id.as_str(), r.step_index))
        .collect();
    assert_eq!(
        order,
        [(lease.unit_id.as_str(), 0), (lease.unit_id.as_str(), 1)]
    );
    let first = &results[0];
    assert_eq!(first.campaign, submitted.campaign_id);
    assert_eq!(first.agent_id, "gpu-1");
    assert_eq!(first.attempt, 1);
    assert_eq!(first.result_json, current_document(0));
    assert_eq!(first.environment_json, "{\"host\":\"gpu-1.lab\"}");
    assert_eq!(first.step.as_ref().unwrap().step_id, lease.steps[0].step_id);
    assert_eq!(first.unit.as_ref().unwrap(), lease.config.as_ref().unwrap());
    assert_eq!(zstd::decode_all(&first.records_zstd[..]).unwrap().len(), 42);
    c.stop().await;
}

#[tokio::test]
async fn refusals_answer_with_statuses_that_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let c = Running::start(dir.path(), Duration::from_secs(30)).await;
    submit(&c, "c", 1).await;
    let mut agents = c.agents().await;

    let err = agents
        .acquire_lease(ask("ghost", &[0], 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message()
            .contains("agent ghost is not registered (hint: call Register first)"),
        "{}",
        err.message()
    );
    let err = agents.acquire_lease(ask("", &[0], 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`agent_id`"), "{}", err.message());
    let mut too_warm = ask("gpu-1", &[0], 0);
    too_warm.warm_configs = vec!["u-1".into(); 65];
    let err = agents.acquire_lease(too_warm).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`warm_configs`"),
        "{}",
        err.message()
    );

    register(&c, "gpu-1", 1).await;
    let old = acquire(&c, "gpu-1", &[0]).await.unwrap();
    let err = agents
        .complete(pb::CompleteRequest {
            lease_id: old.lease_id.clone(),
            epoch: old.epoch,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("2 of 2 steps have no stored result"),
        "{}",
        err.message()
    );
    agents
        .release(pb::ReleaseRequest {
            lease_id: old.lease_id.clone(),
            epoch: old.epoch,
            reason: "shutdown".into(),
        })
        .await
        .unwrap();
    let new = acquire(&c, "gpu-1", &[0]).await.unwrap();
    assert_eq!(new.epoch, 2);
    let err = agents
        .fail(pb::FailRequest {
            lease_id: old.lease_id.clone(),
            epoch: old.epoch,
            error: "late".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    for part in [
        old.lease_id.as_str(),
        old.unit_id.as_str(),
        "stale epoch 1",
        "epoch 2",
    ] {
        assert!(
            err.message().contains(part),
            "{} names {part}",
            err.message()
        );
    }
    let acks = report(&c, vec![batch(&old, 1, &[0])]).await;
    assert!(!acks[0].accepted);
    assert!(acks[0].error.contains("stale epoch 1"), "{}", acks[0].error);

    let err = agents
        .complete(pb::CompleteRequest {
            lease_id: "no-such-lease".into(),
            epoch: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = agents
        .complete(pb::CompleteRequest {
            lease_id: new.lease_id.clone(),
            epoch: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`epoch`"), "{}", err.message());

    let failed = agents
        .fail(pb::FailRequest {
            lease_id: new.lease_id.clone(),
            epoch: new.epoch,
            error: "server exited with status 1".into(),
            log_tail: "Traceback …".into(),
            failure_class: pb::FailureClass::Unspecified.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(failed.will_retry, "max_attempts 2, one spent");
    let units = units(&c, "c").await;
    assert_eq!(units[0].state, pb::UnitState::Pending as i32);
    assert_eq!(units[0].attempts, 1);
    assert_eq!(units[0].last_error, "server exited with status 1");
    c.stop().await;
}

#[tokio::test]
async fn acquire_long_polls_until_work_arrives_or_the_wait_ends() {
    let dir = tempfile::tempdir().unwrap();
    let c = Running::start(dir.path(), Duration::from_secs(30)).await;
    register(&c, "gpu-1", 1).await;

    let started = Instant::now();
    let empty = c
        .agents()
        .await
        .acquire_lease(ask("gpu-1", &[0], 300))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.lease.is_none());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    let mut agents = c.agents().await;
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        agents
            .acquire_lease(ask("gpu-1", &[0], 20_000))
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the call waits for work");
    submit(&c, "late", 1).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the submit wakes the waiting call")
        .unwrap();
    assert!(answer.lease.is_some());
    assert!(started.elapsed() < Duration::from_secs(5));
    c.stop().await;
}

#[tokio::test]
async fn leases_without_heartbeats_expire_and_heartbeated_ones_live_on() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(1);
    let c = Running::start(dir.path(), ttl).await;
    submit(&c, "c", 2).await;
    register(&c, "steady", 1).await;
    register(&c, "silent", 1).await;
    let kept = acquire(&c, "steady", &[0]).await.unwrap();
    let lost = acquire(&c, "silent", &[0]).await.unwrap();
    // Finish one step of the lost lease: it is kept through the expiry.
    assert!(report(&c, vec![batch(&lost, 1, &[0])]).await[0].accepted);

    let started = Instant::now();
    while started.elapsed() < ttl * 5 / 2 {
        let reply = heartbeat(&c, "steady", &[&kept]).await;
        assert_eq!(reply.valid_lease_ids, vec![kept.lease_id.clone()]);
        assert_eq!(reply.lease_ttl_ms, 1000);
        tokio::time::sleep(ttl / 5).await;
    }
    let reply = heartbeat(&c, "silent", &[&lost]).await;
    assert_eq!(reply.revoked_lease_ids, vec![lost.lease_id.clone()]);
    let state_of = |units: &[pb::UnitSummary], id: &str| {
        units.iter().find(|u| u.unit_id == id).map(|u| u.state)
    };
    let now = units(&c, "c").await;
    assert_eq!(
        state_of(&now, &kept.unit_id),
        Some(pb::UnitState::Leased as i32)
    );
    assert_eq!(
        state_of(&now, &lost.unit_id),
        Some(pb::UnitState::Pending as i32)
    );

    let again = acquire(&c, "silent", &[0]).await.unwrap();
    assert_eq!(again.unit_id, lost.unit_id);
    assert_eq!((again.epoch, again.attempt), (2, 2));
    assert_eq!(again.finished_step_ids, [lost.steps[0].step_id.clone()]);

    // An agent that stops heartbeating is listed as lost.
    assert_eventually!(
        c.campaigns()
            .await
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents
            .iter()
            .any(|a| a.agent_id == "steady" && a.state == "lost"),
        "steady is marked lost"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_restarted_coordinator_keeps_leases_whose_agents_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(1);
    let first = Running::start(dir.path(), ttl).await;
    submit(&first, "c", 1).await;
    register(&first, "gpu-1", 1).await;
    let lease = acquire(&first, "gpu-1", &[0]).await.unwrap();
    first.stop().await;

    // Down for longer than the TTL.
    tokio::time::sleep(ttl * 2).await;
    let second = Running::start(dir.path(), ttl).await;
    // Let the startup sweep run.
    tokio::time::sleep(ttl / 4).await;
    let reply = heartbeat(&second, "gpu-1", &[&lease]).await;
    assert_eq!(reply.valid_lease_ids, vec![lease.lease_id.clone()]);
    assert!(reply.revoked_lease_ids.is_empty());
    // Silent from now on: it expires within a TTL and a sweep.
    assert_eventually!(
        units(&second, "c").await[0].state == pb::UnitState::Pending as i32,
        "the lease expires once its agent is silent"
    );
    second.stop().await;
}

#[tokio::test]
async fn drain_cancel_and_agents_reach_agents_through_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let c = Running::start(dir.path(), Duration::from_secs(30)).await;
    submit(&c, "c", 3).await;
    register(&c, "gpu-1", 2).await;
    register(&c, "gpu-2", 1).await;
    let a = acquire(&c, "gpu-1", &[0, 1]).await.unwrap();

    let mut campaigns = c.campaigns().await;
    let listed = campaigns
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].agent_id, "gpu-1");
    assert_eq!(listed[0].hostname, "gpu-1.lab");
    assert_eq!(listed[0].gpus.len(), 2);
    assert_eq!(listed[0].lease_ids, vec![a.lease_id.clone()]);
    assert_eq!(listed[0].state, "active");

    let drained = campaigns
        .drain(pb::DrainRequest {
            agent_id: "gpu-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drained.draining);
    let reply = heartbeat(&c, "gpu-1", &[&a]).await;
    assert!(reply.drain);
    assert_eq!(reply.valid_lease_ids, vec![a.lease_id.clone()]);
    assert!(
        acquire(&c, "gpu-1", &[1]).await.is_none(),
        "a drained agent gets nothing"
    );
    let err = campaigns
        .drain(pb::DrainRequest {
            agent_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let b = acquire(&c, "gpu-2", &[0]).await.unwrap();
    campaigns
        .cancel(pb::CancelRequest {
            campaign: "c".into(),
            reason: "wrong build".into(),
        })
        .await
        .unwrap();
    let reply = heartbeat(&c, "gpu-2", &[&b]).await;
    assert_eq!(reply.revoked_lease_ids, vec![b.lease_id.clone()]);
    assert!(!reply.drain);

    let channel = Channel::from_shared(c.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "evalctl.v1.AgentService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    c.stop().await;
}

/// Agents and coordinator upgrade one at a time: a document of a newer minor version is stored
/// exactly as sent (its unknown fields kept for newer readers) and an older minor is accepted.
/// A major version this coordinator does not know ends the stream with FAILED_PRECONDITION and
/// no acknowledgement, so the agent keeps the batch for a coordinator that can store it; a
/// document of a known version whose fields do not have their shape is refused for good.
#[tokio::test]
async fn step_documents_are_checked_against_the_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let c = Running::start(dir.path(), Duration::from_secs(30)).await;
    submit(&c, "versions", 1).await;
    register(&c, "gpu-1", 1).await;
    let lease = acquire(&c, "gpu-1", &[0]).await.expect("a lease");
    let current = evalctl_results::SchemaVersion::CURRENT;
    let with_document = |sequence: u64, step: usize, json: String| {
        let mut b = batch(&lease, sequence, &[step]);
        b.results[0].result_json = json;
        b
    };

    let next_major = document(0, (current.major + 1, 0), "");
    let mut acks = c
        .agents()
        .await
        .report_results(tokio_stream::iter(vec![with_document(1, 0, next_major)]))
        .await
        .unwrap()
        .into_inner();
    let status = acks
        .message()
        .await
        .expect_err("the stream ends without an ack");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let want = format!(
        "failed to accept a step document of schema {}.0: this build reads schema {}.x only",
        current.major + 1,
        current.major
    );
    assert!(status.message().contains(&want), "{}", status.message());
    assert!(
        status.message().contains("field `result_json`"),
        "{}",
        status.message()
    );

    let wrong_shape = document(0, (current.major, current.minor), "")
        .replace("\"connections_opened\":1", "\"connections_opened\":\"one\"");
    let acks = report(
        &c,
        vec![
            with_document(2, 0, wrong_shape),
            with_document(3, 0, "{\"metrics\":{}}".into()),
        ],
    )
    .await;
    assert!(acks.iter().all(|a| !a.accepted), "{acks:?}");
    assert!(
        acks[0]
            .error
            .contains("field `connections_opened` does not match the schema"),
        "{}",
        acks[0].error
    );
    assert!(
        acks[1].error.contains("schema version"),
        "{}",
        acks[1].error
    );

    let newer_minor = document(
        0,
        (current.major, current.minor + 1),
        ",\"kv_cache_hit_rate\":0.93",
    );
    let older_minor = document(1, (current.major, 0), "");
    let acks = report(
        &c,
        vec![
            with_document(4, 0, newer_minor.clone()),
            with_document(5, 1, older_minor.clone()),
        ],
    )
    .await;
    assert!(acks.iter().all(|a| a.accepted), "{acks:?}");

    let stored: Vec<String> = c
        .campaigns()
        .await
        .results(pb::ResultsRequest {
            campaign: "versions".into(),
            include_records: false,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().result_json)
        .collect()
        .await;
    assert_eq!(stored, [newer_minor, older_minor], "stored as sent");
    c.stop().await;
}

/// A second coordinator on the same database refuses to start and names the first one's
/// process; once the first has stopped, a coordinator starts there again.
#[tokio::test]
async fn a_second_coordinator_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Running::start(dir.path(), Duration::from_secs(30)).await;
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let err = Coordinator::bind(config)
        .await
        .err()
        .expect("the second coordinator is refused");
    let text = evalctl_common::error_chain(&err);
    assert!(matches!(err, ServeError::Locked { .. }), "{text}");
    assert!(
        text.contains("another evalctl-coordinator serves it"),
        "{text}"
    );
    assert!(
        text.contains(&format!("is held by process {}", std::process::id())),
        "{text}"
    );
    first.stop().await;
    let again = Running::start(dir.path(), Duration::from_secs(30)).await;
    again.stop().await;
}

/// A matrix whose excludes remove every combination is refused at submit, dry runs
/// included, with the reason; `allow_empty` stores it anyway.
#[tokio::test]
async fn a_campaign_with_nothing_to_run_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Running::start(dir.path(), Duration::from_secs(30)).await;
    let empty = format!(
        "{}exclude:\n  - {{ framework: vllm }}\n",
        matrix("empty", 2)
    );
    let request = |dry_run: bool, allow_empty: bool| pb::SubmitRequest {
        matrix_yaml: empty.clone(),
        source_name: "empty.yaml".into(),
        dry_run,
        submitted_by: "test".into(),
        allow_empty,
    };
    for dry_run in [true, false] {
        let err = c
            .campaigns()
            .await
            .submit(request(dry_run, false))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(
                "campaign `empty` has nothing to run: 2 combinations excluded by `exclude`, 0 pruned"
            ),
            "{}",
            err.message()
        );
        assert!(err.message().contains("--allow-empty"), "{}", err.message());
    }
    let listed = c
        .campaigns()
        .await
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.campaigns.is_empty(), "nothing stored: {listed:?}");

    let stored = c
        .campaigns()
        .await
        .submit(request(false, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stored.units, stored.dropped.len()), (0, 2));
    c.stop().await;
}

/// A GPU report with NaN, infinite or negative memory is refused naming the field, and
/// nothing of it is stored: listing agents keeps working for everyone.
#[tokio::test]
async fn a_registration_with_garbage_gpu_memory_is_refused_and_blinds_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let c = Running::start(dir.path(), Duration::from_secs(30)).await;
    register(&c, "good", 1).await;
    for memory_gb in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -80.0, 0.0] {
        let err = c
            .agents()
            .await
            .register(pb::RegisterRequest {
                agent_id: "bad".into(),
                gpus: vec![pb::GpuInfo {
                    index: 0,
                    uuid: "GPU-0".into(),
                    gpu_type: "H100-80GB".into(),
                    name: "NVIDIA H100 80GB HBM3".into(),
                    memory_gb,
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{memory_gb}: {err:?}");
        assert!(
            err.message().contains("field `gpus.memory_gb`"),
            "{}",
            err.message()
        );
    }
    let agents = c
        .campaigns()
        .await
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    let ids: Vec<&str> = agents.iter().map(|a| a.agent_id.as_str()).collect();
    assert_eq!(ids, ["good"]);
    c.stop().await;
}
