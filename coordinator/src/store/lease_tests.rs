//! Tests of agents, leases and results through the store's public API, on a clock the
//! test moves by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::error::SqlContext;
use super::*;
use crate::domain::{
    AgentGpu, Api, CampaignSpec, DatasetSpec, FrameworkSpec, GpuRequirement, LoadPoint, ModelSpec,
    QuantizationSpec, ReportedResult, Slo, StepId, StepSpec, StopCondition, Unit, UnitConfig,
    WorkloadSpec,
};

const TTL: Duration = Duration::from_secs(30);
const T0: i64 = 1_700_000_000_000;

// ---- fixtures ----

/// A clock the test moves.
#[derive(Clone)]
struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    fn new() -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(T0)))
    }

    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Env {
    store: Store,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let reading = clock.clone();
    let store = Store::open_with_clock(
        &dir.path().join("coordinator.sqlite"),
        Clock::from_fn(move || reading.now()),
    )
    .await
    .unwrap();
    Env {
        store,
        clock,
        _dir: dir,
    }
}

/// A unit config; `labels` as `k=v` pairs.
fn config(
    model: &str,
    gpu_type: &str,
    count: u32,
    framework: &str,
    labels: &[(&str, &str)],
) -> UnitConfig {
    UnitConfig {
        model: ModelSpec {
            name: model.to_owned(),
            path: format!("org/{model}"),
            params_b: Some(8.0),
            tokenizer: None,
        },
        gpu: GpuRequirement {
            gpu_type: gpu_type.to_owned(),
            memory_gb: 80.0,
            count,
            price_per_hour: None,
            layout: None,
        },
        framework: FrameworkSpec {
            name: framework.to_owned(),
            command: format!("{framework} serve {{model.path}} --port {{port}}"),
            health_path: "/health".to_owned(),
            metrics_path: None,
            startup_timeout_ms: 60_000,
            env: BTreeMap::new(),
            image: None,
            container: None,
        },
        quantization: QuantizationSpec {
            name: "bf16".to_owned(),
            bits: 16.0,
            args: String::new(),
        },
        extra_args: String::new(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A unit with `steps` steps (concurrency 1, 2, 3, …).
fn unit_of(config: UnitConfig, steps: u32) -> Unit {
    let id = config.unit_id();
    let workload = WorkloadSpec {
        name: "chat".to_owned(),
        api: Api::Chat,
        dataset: Some(DatasetSpec::Random {
            input_tokens: 128,
            output_tokens: 32,
        }),
        seed: 1,
        stop: StopCondition::Requests(10),
        warmup: 0,
        slo: Slo::default(),
        command: None,
        metrics: BTreeMap::new(),
        prefix_cache: None,
        harness: None,
    };
    let steps = (0..steps)
        .map(|i| StepSpec::new(&id, i, workload.clone(), LoadPoint::Concurrency(i + 1), 0))
        .collect();
    Unit { id, config, steps }
}

/// An H100 unit of `model` on `count` GPUs with two steps.
fn h100(model: &str, count: u32) -> Unit {
    unit_of(config(model, "H100-80GB", count, "vllm", &[]), 2)
}

async fn submit(
    env: &Env,
    name: &str,
    priority: i32,
    max_attempts: u32,
    units: Vec<Unit>,
) -> CampaignId {
    let expansion = Expansion {
        campaign: CampaignSpec {
            name: name.to_owned(),
            description: None,
            priority,
            max_attempts,
        },
        units,
        dropped: vec![],
    };
    let id = env
        .store
        .submit(&expansion, "", "alice")
        .await
        .unwrap()
        .campaign_id;
    // Campaigns are ordered by age: the next one is younger.
    env.clock.advance(Duration::from_secs(1));
    id
}

fn gpus(gpu_type: &str, n: u32) -> Vec<AgentGpu> {
    (0..n)
        .map(|index| AgentGpu {
            index,
            uuid: format!("GPU-{index:04}"),
            gpu_type: gpu_type.to_owned(),
            name: format!("NVIDIA {gpu_type}"),
            memory_gb: 80.0,
        })
        .collect()
}

fn agent(id: &str, gpus: Vec<AgentGpu>) -> AgentRegistration {
    AgentRegistration {
        id: AgentId(id.to_owned()),
        hostname: format!("{id}.lab"),
        gpus,
        labels: BTreeMap::new(),
        frameworks: vec![],
        version: "0.1.0".to_owned(),
        driver_version: "550.54".to_owned(),
        cuda_version: "12.4".to_owned(),
    }
}

fn ask(agent: &str, free: &[u32]) -> LeaseRequest {
    LeaseRequest {
        agent: AgentId(agent.to_owned()),
        free_gpu_indices: free.to_vec(),
        warm_configs: vec![],
        cpu_slots_free: 0,
    }
}

async fn acquire(env: &Env, request: &LeaseRequest) -> Option<GrantedLease> {
    env.store.acquire_lease(request, TTL).await.unwrap()
}

async fn must_acquire(env: &Env, request: &LeaseRequest) -> GrantedLease {
    acquire(env, request).await.expect("a unit is granted")
}

fn result(step: &StepId, records: &[u8]) -> ReportedResult {
    ReportedResult {
        step_id: step.clone(),
        result_json: format!("{{\"step\":\"{step}\"}}"),
        environment_json: "{\"host\":\"a1.lab\"}".to_owned(),
        records_zstd: records.to_vec(),
        record_count: u64::from(!records.is_empty()),
        telemetry_zstd: Vec::new(),
        telemetry_count: 0,
        finished_at_ms: T0,
    }
}

fn batch(lease: &GrantedLease, sequence: u64, steps: &[usize]) -> ResultBatch {
    ResultBatch {
        lease: lease.lease.clone(),
        epoch: lease.epoch,
        unit: lease.unit.unit.clone(),
        attempt: lease.attempt,
        sequence,
        results: steps
            .iter()
            .map(|&i| result(&lease.steps[i].id, b"zstd-bytes"))
            .collect(),
    }
}

/// Stores results for every step of the lease.
async fn finish_steps(env: &Env, lease: &GrantedLease, sequence: u64) {
    let all: Vec<usize> = (0..lease.steps.len()).collect();
    env.store
        .store_results(batch(lease, sequence, &all))
        .await
        .unwrap();
}

async fn unit_row(env: &Env, campaign: &CampaignId, unit: &UnitId) -> UnitRow {
    env.store
        .units(campaign)
        .await
        .unwrap()
        .into_iter()
        .find(|u| &u.id == unit)
        .expect("the unit exists")
}

async fn count(env: &Env, sql: &'static str) -> i64 {
    env.store
        .read(move |conn| {
            conn.query_row(sql, [], |r| r.get(0))
                .sql("count")
                .map_err(StoreError::from)
        })
        .await
        .unwrap()
}

async fn infra_attempts(env: &Env, unit: &UnitId) -> u32 {
    let unit = unit.clone();
    env.store
        .read(move |conn| {
            conn.query_row(
                "SELECT infra_attempts FROM units WHERE unit_id = ?1",
                [unit.as_str()],
                |r| r.get(0),
            )
            .sql("read infra attempts")
            .map_err(StoreError::from)
        })
        .await
        .unwrap()
}

fn stale(err: StoreError) -> (u64, u64) {
    match err {
        StoreError::StaleEpoch { epoch, current, .. } => (epoch, current),
        other => panic!("expected a stale epoch, got {other}"),
    }
}

// ---- matching ----

#[tokio::test]
async fn gpu_units_take_the_lowest_free_gpus_of_their_type_on_disjoint_indices() {
    let env = env().await;
    // No model sizes: the units rank by GPU count.
    let a = h100_sized("a", 4, None);
    let b = h100_sized("b", 4, None);
    let c = h100_sized("c", 2, None);
    let d = unit_of(config("d", "A100-80GB", 1, "vllm", &[]), 1);
    submit(
        &env,
        "c1",
        0,
        3,
        vec![a.clone(), b.clone(), c.clone(), d.clone()],
    )
    .await;
    // The type matches ignoring case.
    env.store
        .register_agent(&agent("a1", gpus("h100-80gb", 8)))
        .await
        .unwrap();
    let all: Vec<u32> = (0..8).collect();

    let first = must_acquire(&env, &ask("a1", &all)).await;
    assert_eq!(
        (&first.unit.unit, &first.gpu_indices[..]),
        (&a.id, &[0, 1, 2, 3][..])
    );
    // The agent still offers every GPU; those of its live lease are not granted again.
    let second = must_acquire(&env, &ask("a1", &all)).await;
    assert_eq!(
        (&second.unit.unit, &second.gpu_indices[..]),
        (&b.id, &[4, 5, 6, 7][..])
    );
    assert!(
        acquire(&env, &ask("a1", &all)).await.is_none(),
        "all 8 GPUs are held"
    );

    // Only offered GPUs count.
    finish_steps(&env, &first, 1).await;
    env.store.complete(&first.lease, first.epoch).await.unwrap();
    assert!(acquire(&env, &ask("a1", &[2])).await.is_none(), "c needs 2");
    let third = must_acquire(&env, &ask("a1", &[3, 1, 2])).await;
    assert_eq!(
        (&third.unit.unit, &third.gpu_indices[..]),
        (&c.id, &[1, 2][..])
    );
    assert_eq!(third.config.gpu.count, 2);
    assert_eq!(third.steps.len(), 2);
    assert_eq!(third.attempt, 1);
    assert_eq!(third.expires_at_ms, env.clock.now() + 30_000);

    // No A100 on this host: the A100 unit stays pending.
    assert!(acquire(&env, &ask("a1", &all)).await.is_none());
    env.store
        .register_agent(&agent("a2", gpus("A100-80GB", 1)))
        .await
        .unwrap();
    let fourth = must_acquire(&env, &ask("a2", &[0])).await;
    assert_eq!(
        (&fourth.unit.unit, &fourth.gpu_indices[..]),
        (&d.id, &[0][..])
    );

    let listed = env.store.list_agents().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id.as_str(), "a1");
    assert_eq!(
        listed[0].leases,
        vec![second.lease.clone(), third.lease.clone()]
    );
    assert_eq!(listed[0].gpus.len(), 8);
    assert_eq!(listed[0].state, AgentState::Active);
    assert_eq!(listed[0].driver_version, "550.54");
}

#[tokio::test]
async fn cpu_units_need_a_free_cpu_slot_and_get_no_gpu() {
    let env = env().await;
    let cpu = unit_of(config("tiny", "cpu", 1, "llamacpp", &[]), 1);
    submit(&env, "cpu", 0, 3, vec![cpu.clone()]).await;
    env.store
        .register_agent(&agent("laptop", vec![]))
        .await
        .unwrap();
    assert!(
        acquire(&env, &ask("laptop", &[])).await.is_none(),
        "no CPU slot offered"
    );
    let lease = must_acquire(
        &env,
        &LeaseRequest {
            cpu_slots_free: 1,
            ..ask("laptop", &[])
        },
    )
    .await;
    assert_eq!(lease.unit.unit, cpu.id);
    assert!(lease.gpu_indices.is_empty());
}

#[tokio::test]
async fn labels_and_frameworks_must_match() {
    let env = env().await;
    let zoned = unit_of(config("m", "H100-80GB", 1, "vllm", &[("zone", "a")]), 1);
    submit(&env, "labels", 0, 3, vec![zoned.clone()]).await;
    let try_with = |labels: &[(&str, &str)], frameworks: &[&str]| {
        let mut a = agent("a1", gpus("H100-80GB", 1));
        a.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        a.frameworks = frameworks.iter().map(|f| (*f).to_owned()).collect();
        a
    };
    for (labels, frameworks) in [
        (&[][..], &[][..]),
        (&[("zone", "b")][..], &[][..]),
        (&[("zone", "a"), ("rack", "1")][..], &["sglang"][..]),
    ] {
        env.store
            .register_agent(&try_with(labels, frameworks))
            .await
            .unwrap();
        assert!(
            acquire(&env, &ask("a1", &[0])).await.is_none(),
            "labels {labels:?}, frameworks {frameworks:?}"
        );
    }
    env.store
        .register_agent(&try_with(
            &[("zone", "a"), ("rack", "1")],
            &["sglang", "VLLM"],
        ))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!(lease.unit.unit, zoned.id);
}

#[tokio::test]
async fn units_an_agent_cannot_run_do_not_hide_the_ones_it_can() {
    let env = env().await;
    // 300 units only zone b can run, submitted before the one this agent can run.
    let mut units: Vec<Unit> = (0..300)
        .map(|i| {
            unit_of(
                config(&format!("b{i}"), "H100-80GB", 1, "vllm", &[("zone", "b")]),
                1,
            )
        })
        .collect();
    units.extend((0..50).map(|i| unit_of(config(&format!("x{i}"), "MI300X", 1, "vllm", &[]), 1)));
    let runnable = unit_of(config("free", "H100-80GB", 1, "vllm", &[]), 1);
    units.push(runnable.clone());
    submit(&env, "big", 0, 3, units).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!(lease.unit.unit, runnable.id);
}

#[tokio::test]
async fn draining_agents_get_nothing() {
    let env = env().await;
    submit(&env, "c", 0, 3, vec![h100("a", 1), h100("b", 1)]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 2)))
        .await
        .unwrap();
    env.store
        .register_agent(&agent("a2", gpus("H100-80GB", 2)))
        .await
        .unwrap();

    // Drained by an operator: kept across registrations, told in heartbeats.
    let running = must_acquire(&env, &ask("a1", &[0])).await;
    let leases = env
        .store
        .drain_agent(&AgentId("a1".into()), "bob")
        .await
        .unwrap();
    assert_eq!(leases, vec![running.lease.clone()]);
    assert!(acquire(&env, &ask("a1", &[1])).await.is_none());
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 2)))
        .await
        .unwrap();
    assert!(
        acquire(&env, &ask("a1", &[1])).await.is_none(),
        "still drained"
    );
    let reply = env
        .store
        .heartbeat(
            &AgentId("a1".into()),
            &[(running.lease.clone(), running.epoch)],
            false,
            TTL,
        )
        .await
        .unwrap();
    assert!(reply.drain);
    assert_eq!(
        reply.valid,
        vec![running.lease.clone()],
        "running leases continue"
    );
    let audit = env.store.audit(1).await.unwrap();
    assert_eq!(
        (
            audit[0].actor.as_str(),
            audit[0].action.as_str(),
            audit[0].target.as_str()
        ),
        ("bob", "drain", "agent/a1")
    );
    let err = env
        .store
        .drain_agent(&AgentId("nobody".into()), "bob")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AgentNotFound { .. }), "{err}");

    // Draining itself (SIGTERM): until it registers again.
    env.store
        .heartbeat(&AgentId("a2".into()), &[], true, TTL)
        .await
        .unwrap();
    assert!(acquire(&env, &ask("a2", &[0])).await.is_none());
    let states: Vec<AgentState> = env
        .store
        .list_agents()
        .await
        .unwrap()
        .iter()
        .map(|a| a.state)
        .collect();
    assert_eq!(states, [AgentState::Draining, AgentState::Drained]);
    env.store
        .register_agent(&agent("a2", gpus("H100-80GB", 2)))
        .await
        .unwrap();
    assert!(acquire(&env, &ask("a2", &[0])).await.is_some());
}

#[tokio::test]
async fn unknown_agents_are_told_to_register() {
    let env = env().await;
    submit(&env, "c", 0, 3, vec![h100("a", 1)]).await;
    let err = env
        .store
        .acquire_lease(&ask("ghost", &[0]), TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AgentNotFound { .. }), "{err}");
    assert!(err.to_string().contains("call Register first"), "{err}");
    let err = env
        .store
        .heartbeat(&AgentId("ghost".into()), &[], false, TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AgentNotFound { .. }), "{err}");
}

// ---- preference ----

#[tokio::test]
async fn warm_configs_first_then_priority_then_age() {
    let env = env().await;
    let (x, y) = (h100("x", 1), h100("y", 1));
    let z = h100("z", 1);
    let w = h100("w", 1);
    let old = submit(&env, "old", 0, 3, vec![x.clone(), y.clone()]).await;
    submit(&env, "urgent", 5, 3, vec![z.clone()]).await;
    submit(&env, "urgent-later", 5, 3, vec![w.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 8)))
        .await
        .unwrap();
    let all: Vec<u32> = (0..8).collect();
    // Warm beats priority; ids of units that are not pending are ignored.
    let first = must_acquire(
        &env,
        &LeaseRequest {
            warm_configs: vec![UnitId("u-unknown".into()), y.id.clone()],
            ..ask("a1", &all)
        },
    )
    .await;
    assert_eq!(first.unit.unit, y.id);
    assert_eq!(first.unit.campaign, old);
    assert_eq!(first.unit.label, y.config.label());
    let order: Vec<UnitId> = {
        let mut out = Vec::new();
        while let Some(lease) = acquire(&env, &ask("a1", &all)).await {
            out.push(lease.unit.unit);
        }
        out
    };
    assert_eq!(order, [z.id.clone(), w.id.clone(), x.id.clone()]);
}

#[tokio::test]
async fn among_warm_units_the_higher_priority_wins() {
    let env = env().await;
    let low = h100("low", 1);
    let high = h100("high", 1);
    submit(&env, "low", 0, 3, vec![low.clone()]).await;
    submit(&env, "high", 9, 3, vec![high.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(
        &env,
        &LeaseRequest {
            warm_configs: vec![low.id.clone(), high.id.clone()],
            ..ask("a1", &[0])
        },
    )
    .await;
    assert_eq!(lease.unit.unit, high.id);
}

// ---- fencing ----

#[tokio::test]
async fn the_epoch_grows_on_every_lease_and_stale_writes_are_refused() {
    let env = env().await;
    let u = h100("m", 1);
    let campaign = submit(&env, "c", 0, 3, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    env.store
        .register_agent(&agent("a2", gpus("H100-80GB", 1)))
        .await
        .unwrap();

    let old = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!(old.epoch, 1);
    env.clock.advance(TTL + Duration::from_secs(1));
    assert_eq!(env.store.expire_leases(TTL).await.unwrap().len(), 1);
    let new = must_acquire(&env, &ask("a2", &[0])).await;
    assert_eq!(new.epoch, 2);
    assert_eq!(new.attempt, 2);
    assert_eq!(unit_row(&env, &campaign, &u.id).await.epoch, 2);

    let err = env
        .store
        .store_results(batch(&old, 1, &[0]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(stale(err), (1, 2));
    for part in [
        old.lease.as_str(),
        u.id.as_str(),
        "stale epoch 1",
        "epoch 2",
    ] {
        assert!(text.contains(part), "{text} names {part}");
    }
    assert_eq!(count(&env, "SELECT COUNT(*) FROM step_results").await, 0);
    assert_eq!(
        stale(env.store.complete(&old.lease, old.epoch).await.unwrap_err()),
        (1, 2)
    );
    assert_eq!(
        stale(
            env.store
                .fail(&old.lease, 1, "boom", "", FailureKind::Unrecognised)
                .await
                .unwrap_err()
        ),
        (1, 2)
    );
    assert_eq!(
        stale(
            env.store
                .release(&old.lease, 1, &ReleaseReason::Preempted)
                .await
                .unwrap_err()
        ),
        (1, 2)
    );
    // The new lease with the old epoch is refused too.
    assert_eq!(
        stale(env.store.complete(&new.lease, 1).await.unwrap_err()),
        (1, 2)
    );
    let reply = env
        .store
        .heartbeat(&AgentId("a1".into()), &[(old.lease.clone(), 1)], false, TTL)
        .await
        .unwrap();
    assert_eq!(
        (reply.valid, reply.revoked),
        (vec![], vec![old.lease.clone()])
    );
    // The agent holding the new lease is unaffected.
    let r = unit_row(&env, &campaign, &u.id).await;
    assert_eq!(
        (r.state, r.agent_id.as_deref()),
        (UnitState::Leased, Some("a2"))
    );
    let err = env
        .store
        .complete(&LeaseId("no-such-lease".into()), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseNotFound { .. }), "{err}");
}

#[tokio::test]
async fn heartbeats_renew_only_the_agents_own_live_leases() {
    let env = env().await;
    let (a, b) = (h100("a", 1), h100("b", 1));
    let campaign = submit(&env, "c", 0, 3, vec![a.clone(), b.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    env.store
        .register_agent(&agent("a2", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let mine = must_acquire(&env, &ask("a1", &[0])).await;
    let theirs = must_acquire(&env, &ask("a2", &[0])).await;

    // Renewed every 20 s for 100 s: never expires.
    for _ in 0..5 {
        env.clock.advance(Duration::from_secs(20));
        let reply = env
            .store
            .heartbeat(
                &AgentId("a1".into()),
                &[
                    (mine.lease.clone(), mine.epoch),
                    (theirs.lease.clone(), theirs.epoch),
                    (LeaseId("made-up".into()), 1),
                ],
                false,
                TTL,
            )
            .await
            .unwrap();
        assert_eq!(reply.valid, vec![mine.lease.clone()]);
        assert_eq!(
            reply.revoked,
            vec![theirs.lease.clone(), LeaseId("made-up".into())]
        );
        assert!(!reply.drain);
        let expired = env.store.expire_leases(TTL).await.unwrap();
        // a2 never heartbeats: its lease expires once, a1's never.
        assert!(expired.iter().all(|e| e.lease == theirs.lease));
    }
    let history = env.store.unit_history(&campaign, &b.id).await.unwrap();
    assert_eq!(history[0].outcome, Some(LeaseEnd::Expired));
    assert!(
        history[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("lease expired: agent a2 sent no heartbeat for 40.0s"),
        "{history:?}"
    );

    // Cancel revokes through the next heartbeat; results are refused.
    env.store.cancel(&campaign, "bob", "enough").await.unwrap();
    let reply = env
        .store
        .heartbeat(
            &AgentId("a1".into()),
            &[(mine.lease.clone(), mine.epoch)],
            false,
            TTL,
        )
        .await
        .unwrap();
    assert_eq!(reply.revoked, vec![mine.lease.clone()]);
    let err = env
        .store
        .store_results(batch(&mine, 1, &[0]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnitCancelled { .. }), "{err}");
    let err = env
        .store
        .complete(&mine.lease, mine.epoch)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseEnded { reason, .. } if reason == "cancelled"),
        "{err}"
    );
}

#[tokio::test]
async fn a_heartbeat_after_being_lost_makes_the_agent_active_again() {
    let env = env().await;
    env.store
        .register_agent(&agent("a1", vec![]))
        .await
        .unwrap();
    env.clock.advance(TTL + Duration::from_secs(1));
    let lost = env.store.mark_lost_agents(TTL).await.unwrap();
    assert_eq!(lost, vec![AgentId("a1".into())]);
    assert!(
        env.store.mark_lost_agents(TTL).await.unwrap().is_empty(),
        "idempotent"
    );
    assert_eq!(
        env.store.list_agents().await.unwrap()[0].state,
        AgentState::Lost
    );
    env.store
        .heartbeat(&AgentId("a1".into()), &[], false, TTL)
        .await
        .unwrap();
    let listed = env.store.list_agents().await.unwrap();
    assert_eq!(listed[0].state, AgentState::Active);
    assert_eq!(listed[0].last_heartbeat_ms, env.clock.now());
}

// ---- results ----

#[tokio::test]
async fn a_repeated_batch_and_a_repeated_step_are_stored_once() {
    let env = env().await;
    let u = unit_of(config("m", "H100-80GB", 1, "vllm", &[]), 3);
    let campaign = submit(&env, "c", 0, 3, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;

    let first = env
        .store
        .store_results(batch(&lease, 7, &[0]))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.stored.len(), 1);
    assert_eq!((first.steps_done, first.steps_total), (1, 3));
    assert_eq!(first.agent.as_str(), "a1");
    // The same batch again (its ack was lost): acknowledged, nothing applied.
    let again = env
        .store
        .store_results(batch(&lease, 7, &[0]))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert!(again.stored.is_empty());
    // The same step in a new batch (the agent re-sent it after a restart): skipped.
    let overlap = env
        .store
        .store_results(batch(&lease, 8, &[0, 1]))
        .await
        .unwrap();
    assert!(!overlap.duplicate);
    assert_eq!(overlap.stored.len(), 1);
    assert_eq!(overlap.stored[0].index, 1);
    assert_eq!(overlap.already_stored, 1);
    assert_eq!(count(&env, "SELECT COUNT(*) FROM step_results").await, 2);
    assert_eq!(count(&env, "SELECT COUNT(*) FROM request_records").await, 2);
    assert_eq!(count(&env, "SELECT COUNT(*) FROM result_batches").await, 3);

    // A step the unit lacks refuses the whole batch.
    let mut bad = batch(&lease, 9, &[2]);
    bad.results.push(result(&StepId("s-not-mine".into()), b""));
    let err = env.store.store_results(bad).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownStep { .. }), "{err}");
    assert!(err.to_string().contains("s-not-mine"), "{err}");
    assert_eq!(count(&env, "SELECT COUNT(*) FROM step_results").await, 2);
    // A batch naming another unit than its lease's.
    let mut wrong = batch(&lease, 10, &[2]);
    wrong.unit = UnitId("u-other".into());
    let err = env.store.store_results(wrong).await.unwrap_err();
    assert!(matches!(err, StoreError::UnitMismatch { .. }), "{err}");

    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!(row.steps_succeeded, 2);
    // Results stored under the lease are what a new lease skips.
    env.store
        .release(
            &lease.lease,
            lease.epoch,
            &ReleaseReason::Other("shutdown".into()),
        )
        .await
        .unwrap();
    let next = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!(
        next.finished_steps,
        vec![u.steps[0].id.clone(), u.steps[1].id.clone()]
    );
}

#[tokio::test]
async fn complete_is_refused_while_steps_lack_results() {
    let env = env().await;
    let u = h100("m", 1);
    let campaign = submit(&env, "c", 0, 3, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    env.store
        .store_results(batch(&lease, 1, &[0]))
        .await
        .unwrap();
    let err = env
        .store
        .complete(&lease.lease, lease.epoch)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StepsMissing {
                missing: 1,
                total: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("1 of 2 steps have no stored result"),
        "{err}"
    );
    assert_eq!(
        unit_row(&env, &campaign, &u.id).await.state,
        UnitState::Leased
    );

    env.store
        .store_results(batch(&lease, 2, &[1]))
        .await
        .unwrap();
    let done = env.store.complete(&lease.lease, lease.epoch).await.unwrap();
    assert_eq!(done.unit, u.id);
    // A repeated complete (its answer was lost) is acknowledged.
    env.store.complete(&lease.lease, lease.epoch).await.unwrap();
    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!((row.state, row.agent_id), (UnitState::Succeeded, None));
    let history = env.store.unit_history(&campaign, &u.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, Some(LeaseEnd::Succeeded));
    assert_eq!(history[0].lease.as_ref(), Some(&lease.lease));
    assert_eq!(
        env.store.campaign("c").await.unwrap().unwrap().state,
        CampaignState::Succeeded
    );
    // Another lease attempt on a finished unit is not possible: nothing is pending.
    assert!(acquire(&env, &ask("a1", &[0])).await.is_none());
}

#[tokio::test]
async fn a_failure_that_would_repeat_everywhere_fails_the_unit_at_once() {
    for (kind, error) in [
        (
            FailureKind::BadArgument,
            "bad argument: error: unrecognized arguments: --x",
        ),
        (
            FailureKind::BadDataset,
            "failed to parse dataset `chats.json` at line 5: conversations[2].value: a user turn with no text",
        ),
    ] {
        let env = env().await;
        let u = h100("m", 1);
        let campaign = submit(&env, "c", 0, 3, vec![u.clone()]).await;
        env.store
            .register_agent(&agent("a1", gpus("H100-80GB", 1)))
            .await
            .unwrap();
        let lease = must_acquire(&env, &ask("a1", &[0])).await;
        let out = env
            .store
            .fail(&lease.lease, lease.epoch, error, "", kind)
            .await
            .unwrap();
        assert!(!out.will_retry, "{kind:?}");
        assert_eq!((out.attempts, out.max_attempts), (1, 3), "{kind:?}");
        assert_eq!(out.reaction, Reaction::FailedAtOnce, "{kind:?}");
        let row = unit_row(&env, &campaign, &u.id).await;
        assert_eq!(
            (row.state, row.attempts),
            (UnitState::Failed, 1),
            "{kind:?}"
        );
        assert_eq!(row.failure_kind, Some(kind), "stored: {kind:?}");
        assert!(acquire(&env, &ask("a1", &[0])).await.is_none());
    }
}

#[tokio::test]
async fn fail_retries_until_max_attempts_then_fails_with_the_last_error() {
    let env = env().await;
    let u = h100("m", 1);
    let campaign = submit(&env, "c", 0, 2, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();

    let first = must_acquire(&env, &ask("a1", &[0])).await;
    env.store
        .store_results(batch(&first, 1, &[0]))
        .await
        .unwrap();
    let out = env
        .store
        .fail(
            &first.lease,
            first.epoch,
            "server crashed",
            "CUDA OOM",
            FailureKind::Unrecognised,
        )
        .await
        .unwrap();
    assert!(out.will_retry);
    assert_eq!((out.attempts, out.max_attempts), (1, 2));
    // Repeated: acknowledged with the same answer, nothing spent.
    assert!(
        env.store
            .fail(
                &first.lease,
                first.epoch,
                "server crashed",
                "",
                FailureKind::Unrecognised,
            )
            .await
            .unwrap()
            .will_retry
    );
    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!(
        (row.state, row.attempts, row.steps_succeeded),
        (UnitState::Pending, 1, 1)
    );

    let second = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!((second.attempt, second.epoch), (2, 2));
    assert_eq!(
        second.finished_steps,
        vec![u.steps[0].id.clone()],
        "finished steps kept"
    );
    let out = env
        .store
        .fail(
            &second.lease,
            second.epoch,
            "health timeout",
            "no /health after 20m",
            FailureKind::Unrecognised,
        )
        .await
        .unwrap();
    assert!(!out.will_retry);
    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!((row.state, row.attempts), (UnitState::Failed, 2));
    assert_eq!(row.last_error.as_deref(), Some("health timeout"));
    let log_tail: Option<String> = env
        .store
        .read(|conn| {
            conn.query_row("SELECT log_tail FROM units", [], |r| r.get(0))
                .sql("read log tail")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(log_tail.as_deref(), Some("no /health after 20m"));
    let steps: Vec<StepState> = env
        .store
        .unit_steps(&campaign, &u.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(steps, [StepState::Succeeded, StepState::Failed]);
    let history = env.store.unit_history(&campaign, &u.id).await.unwrap();
    let outcomes: Vec<_> = history
        .iter()
        .map(|h| (h.attempt, h.outcome, h.error.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, Some(LeaseEnd::Failed), Some("server crashed")),
            (2, Some(LeaseEnd::Failed), Some("health timeout")),
        ]
    );
    assert!(acquire(&env, &ask("a1", &[0])).await.is_none());
    // Retry gives it fresh attempts.
    assert_eq!(env.store.retry_failed(&campaign, "bob").await.unwrap(), 1);
    assert_eq!(must_acquire(&env, &ask("a1", &[0])).await.attempt, 1);
}

#[tokio::test]
async fn preemption_does_not_count_against_max_attempts() {
    let env = env().await;
    let u = h100("m", 1);
    let campaign = submit(&env, "c", 0, 1, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    for i in 1..=3u32 {
        let lease = must_acquire(&env, &ask("a1", &[0])).await;
        assert_eq!(lease.attempt, i);
        let out = env
            .store
            .release(&lease.lease, lease.epoch, &ReleaseReason::Preempted)
            .await
            .unwrap();
        assert_eq!((out.end, out.gave_up), (LeaseEnd::Preempted, false));
    }
    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!((row.state, row.attempts), (UnitState::Pending, 0));
    assert_eq!(infra_attempts(&env, &u.id).await, 3);
    assert_eq!(
        env.store.campaign("c").await.unwrap().unwrap().preemptions,
        3
    );
    let history = env.store.unit_history(&campaign, &u.id).await.unwrap();
    assert_eq!(history[0].error.as_deref(), Some("preempted on agent a1"));
    // Its one own attempt is still there.
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    let out = env
        .store
        .fail(
            &lease.lease,
            lease.epoch,
            "boom",
            "",
            FailureKind::Unrecognised,
        )
        .await
        .unwrap();
    assert!(!out.will_retry);
}

#[tokio::test]
async fn infrastructure_endings_are_capped() {
    let env = env().await;
    let u = h100("m", 1);
    let campaign = submit(&env, "c", 0, 3, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    for i in 1..=MAX_INFRA_ATTEMPTS {
        let lease = must_acquire(&env, &ask("a1", &[0])).await;
        let out = env
            .store
            .release(
                &lease.lease,
                lease.epoch,
                &ReleaseReason::Other("drain".into()),
            )
            .await
            .unwrap();
        assert_eq!(out.end, LeaseEnd::Released);
        assert_eq!(out.gave_up, i == MAX_INFRA_ATTEMPTS, "release {i}");
    }
    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!(row.state, UnitState::Failed);
    assert_eq!(
        row.last_error.as_deref(),
        Some("gave up after 20 infrastructure failures (last: drain on agent a1)")
    );
    assert!(acquire(&env, &ask("a1", &[0])).await.is_none());
}

#[tokio::test]
async fn expiry_sends_the_unit_back_with_its_finished_steps() {
    let env = env().await;
    let u = unit_of(config("m", "H100-80GB", 1, "vllm", &[]), 3);
    let campaign = submit(&env, "c", 0, 3, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    env.store
        .store_results(batch(&lease, 1, &[0]))
        .await
        .unwrap();

    env.clock.advance(TTL);
    assert!(
        env.store.expire_leases(TTL).await.unwrap().is_empty(),
        "not past it yet"
    );
    env.clock.advance(Duration::from_millis(1));
    let expired = env.store.expire_leases(TTL).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!((&expired[0].lease, expired[0].epoch), (&lease.lease, 1));
    assert_eq!(
        expired[0].error,
        "lease expired: agent a1 sent no heartbeat for 30.0s"
    );
    assert!(
        env.store.expire_leases(TTL).await.unwrap().is_empty(),
        "idempotent"
    );
    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!(
        (row.state, row.attempts, row.steps_succeeded),
        (UnitState::Pending, 0, 1)
    );
    assert_eq!(infra_attempts(&env, &u.id).await, 1);

    // Results of the expired lease still carry the unit's current epoch: accepted.
    env.store
        .store_results(batch(&lease, 2, &[1]))
        .await
        .unwrap();
    // But it cannot complete any more.
    let err = env
        .store
        .complete(&lease.lease, lease.epoch)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseEnded { reason, .. } if reason == "expired"),
        "{err}"
    );

    let again = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!((again.epoch, again.attempt), (2, 2));
    assert_eq!(
        again.finished_steps,
        vec![u.steps[0].id.clone(), u.steps[1].id.clone()]
    );
    let history = env.store.unit_history(&campaign, &u.id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].outcome, Some(LeaseEnd::Expired));
    assert_eq!(history[0].ended_at_ms, Some(T0 + 1_000 + 30_001));
    assert_eq!((history[1].outcome, history[1].epoch), (None, 2));
}

#[tokio::test]
async fn a_restart_gives_live_leases_a_full_ttl() {
    let env = env().await;
    submit(&env, "c", 0, 3, vec![h100("m", 1)]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    // The coordinator was down for two minutes.
    env.clock.advance(Duration::from_secs(120));
    assert_eq!(env.store.resume_leases(TTL).await.unwrap(), 1);
    assert!(env.store.expire_leases(TTL).await.unwrap().is_empty());
    env.clock.advance(Duration::from_secs(20));
    let reply = env
        .store
        .heartbeat(
            &AgentId("a1".into()),
            &[(lease.lease.clone(), 1)],
            false,
            TTL,
        )
        .await
        .unwrap();
    assert_eq!(reply.valid, vec![lease.lease.clone()]);
    env.clock.advance(Duration::from_secs(29));
    assert!(env.store.expire_leases(TTL).await.unwrap().is_empty());
    env.clock.advance(Duration::from_secs(2));
    assert_eq!(env.store.expire_leases(TTL).await.unwrap().len(), 1);
}

#[tokio::test]
async fn registering_again_keeps_live_leases() {
    let env = env().await;
    submit(&env, "c", 0, 3, vec![h100("m", 1)]).await;
    let first = env
        .store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    assert!(first.new);
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    let again = env
        .store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    assert!(!again.new);
    assert_eq!(again.live_leases, vec![lease.lease.clone()]);
    let reply = env
        .store
        .heartbeat(
            &AgentId("a1".into()),
            &[(lease.lease.clone(), 1)],
            false,
            TTL,
        )
        .await
        .unwrap();
    assert_eq!(reply.valid, vec![lease.lease]);
}

#[tokio::test]
async fn results_stream_in_unit_position_then_step_order() {
    let env = env().await;
    // More results than one page holds.
    let units: Vec<Unit> = (0..150).map(|i| h100(&format!("m{i:03}"), 1)).collect();
    let campaign = submit(&env, "c", 0, 3, units.clone()).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 150)))
        .await
        .unwrap();
    let all: Vec<u32> = (0..150).collect();
    let mut by_unit: BTreeMap<UnitId, GrantedLease> = BTreeMap::new();
    while let Some(lease) = acquire(&env, &ask("a1", &all)).await {
        by_unit.insert(lease.unit.unit.clone(), lease);
    }
    assert_eq!(by_unit.len(), 150);
    // Stored out of order: units from last to first, each unit's steps in reverse.
    for (i, u) in units.iter().enumerate().rev() {
        let lease = &by_unit[&u.id];
        env.store
            .store_results(batch(lease, i as u64 * 2, &[1]))
            .await
            .unwrap();
        env.store
            .store_results(batch(lease, i as u64 * 2 + 1, &[0]))
            .await
            .unwrap();
    }
    let mut pages = env.store.results(&campaign, true).await.unwrap().unwrap();
    let mut got = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next_page().await.unwrap() {
        page_count += 1;
        got.extend(page);
    }
    assert!(page_count >= 2, "{page_count} pages");
    let order: Vec<(UnitId, u32)> = got
        .iter()
        .map(|r| (r.unit.unit.clone(), r.step.index))
        .collect();
    let expected: Vec<(UnitId, u32)> = units
        .iter()
        .flat_map(|u| [(u.id.clone(), 0), (u.id.clone(), 1)])
        .collect();
    assert_eq!(order, expected);
    assert_eq!(got[0].records_zstd.as_deref(), Some(&b"zstd-bytes"[..]));
    assert_eq!(got[0].config, units[0].config);
    assert_eq!(got[0].step, units[0].steps[0]);
    assert_eq!(got[0].agent.as_str(), "a1");
    let mut without = env.store.results(&campaign, false).await.unwrap().unwrap();
    assert!(
        without.next_page().await.unwrap().unwrap()[0]
            .records_zstd
            .is_none()
    );
    assert!(
        env.store
            .results(&CampaignId("nope".into()), false)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn telemetry_is_stored_once_per_result_and_read_back_with_the_records() {
    let env = env().await;
    let campaign = submit(&env, "c", 0, 3, vec![h100("m", 1)]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    let mut with = result(&lease.steps[0].id, b"records");
    with.telemetry_zstd = b"telemetry-zstd".to_vec();
    with.telemetry_count = 42;
    let without = result(&lease.steps[1].id, b"records");
    let batch = ResultBatch {
        results: vec![with.clone(), without],
        ..batch(&lease, 0, &[])
    };
    env.store.store_results(batch.clone()).await.unwrap();
    // A repeated batch stores nothing twice.
    env.store.store_results(batch).await.unwrap();
    assert_eq!(
        count(
            &env,
            "SELECT COUNT(*) FROM telemetry_samples WHERE gpu_index = -1 AND chunk = 0 \
             AND sample_count = 42 AND codec = 'zstd'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&env, "SELECT COUNT(*) FROM telemetry_samples").await,
        1
    );

    let mut pages = env.store.results(&campaign, true).await.unwrap().unwrap();
    let got = pages.next_page().await.unwrap().unwrap();
    assert_eq!(
        got[0].telemetry_zstd.as_deref(),
        Some(&b"telemetry-zstd"[..])
    );
    assert_eq!(got[1].telemetry_zstd, None, "a step without telemetry");
    let mut pages = env.store.results(&campaign, false).await.unwrap().unwrap();
    let got = pages.next_page().await.unwrap().unwrap();
    assert!(
        got.iter().all(|r| r.telemetry_zstd.is_none()),
        "only with the records"
    );
}

/// Grants per second from a 100,000-unit campaign (one GPU type, 8 counts, 5 frameworks),
/// each grant completed at once so the queue stays as long. Run with `cargo test -p
/// evalctl-coordinator --release --lib store::lease_tests::grant_rate -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing, run by hand"]
async fn grant_rate_timing() {
    let env = env().await;
    let units: Vec<Unit> = (0..100_000u32)
        .map(|i| {
            unit_of(
                config(
                    &format!("m{}", i / 40),
                    "H100-80GB",
                    1 << (i % 4),
                    &format!("fw{}", (i / 4) % 10),
                    &[],
                ),
                1,
            )
        })
        .collect();
    submit(&env, "big", 0, 3, units).await;
    let agents = 64;
    for a in 0..agents {
        env.store
            .register_agent(&agent(&format!("a{a}"), gpus("H100-80GB", 8)))
            .await
            .unwrap();
    }
    let grants = 4_000;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for a in 0..agents {
        let store = env.store.clone();
        tasks.push(tokio::spawn(async move {
            let request = ask(&format!("a{a}"), &[0, 1, 2, 3, 4, 5, 6, 7]);
            for _ in 0..grants / agents {
                let lease = store.acquire_lease(&request, TTL).await.unwrap().unwrap();
                store
                    .release(
                        &lease.lease,
                        lease.epoch,
                        &ReleaseReason::Other("bench".into()),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{grants} grants (+ as many releases) from 100,000 units by {agents} agents: {elapsed:.2?}, {:.0} grants/s",
        grants as f64 / elapsed.as_secs_f64()
    );
}

/// An H100 unit of `model` on `count` GPUs with two steps; the model has `params_b`.
fn h100_sized(model: &str, count: u32, params_b: Option<f64>) -> Unit {
    let mut config = config(model, "H100-80GB", count, "vllm", &[]);
    config.model.params_b = params_b;
    unit_of(config, 2)
}

#[tokio::test]
async fn the_longest_unit_goes_first_and_a_configuration_running_elsewhere_waits() {
    let env = env().await;
    let (small, big) = (h100("small", 1), h100_sized("big", 4, Some(70.0)));
    // `small` (8B on 1 GPU) comes first in the matrix; `big` (70B on 4 GPUs) has the
    // longer estimated steps: 70 / √4 = 35 against 8 / √1 = 8.
    submit(&env, "a", 0, 3, vec![small.clone(), big.clone()]).await;
    for host in ["h1", "h2", "h3"] {
        env.store
            .register_agent(&agent(host, gpus("H100-80GB", 8)))
            .await
            .unwrap();
    }
    let all: Vec<u32> = (0..8).collect();
    let first = must_acquire(&env, &ask("h1", &all)).await;
    assert_eq!(first.unit.unit, big.id, "longest first");
    // A second campaign of the same priority repeats `big`'s configuration. It is
    // running on h1, which will find it warm: h2 takes other work first.
    submit(&env, "b", 0, 3, vec![big.clone()]).await;
    let second = must_acquire(&env, &ask("h2", &all)).await;
    assert_eq!(second.unit.unit, small.id);
    // Nothing else is left but the twin: a host with nothing warm still gets it.
    let third = must_acquire(&env, &ask("h3", &all)).await;
    assert_eq!(third.unit.unit, big.id);
    assert_ne!(third.unit.campaign, first.unit.campaign);
}

#[tokio::test]
async fn the_estimate_orders_units_and_without_sizes_the_most_gpus_go_first() {
    let env = env().await;
    // The same 47B model on 4 GPUs and on 2: 47 / √2 > 47 / √4, so the 2-GPU unit's steps
    // are the longer ones and it goes first although it is later in the matrix.
    let (wide, narrow) = (
        h100_sized("mixtral", 4, Some(47.0)),
        h100_sized("mixtral", 2, Some(47.0)),
    );
    // Units without `params_b` rank by GPU count.
    let (one, two) = (h100_sized("x", 1, None), h100_sized("y", 2, None));
    submit(&env, "sized", 0, 3, vec![wide.clone(), narrow.clone()]).await;
    submit(&env, "unsized", 0, 3, vec![one.clone(), two.clone()]).await;
    let all: Vec<u32> = (0..8).collect();
    let mut order = Vec::new();
    // Each grant goes to an empty host of its own, so every unit fits every time.
    for host in ["h1", "h2", "h3", "h4"] {
        env.store
            .register_agent(&agent(host, gpus("H100-80GB", 8)))
            .await
            .unwrap();
        order.push(must_acquire(&env, &ask(host, &all)).await.unit.unit);
    }
    assert_eq!(order, vec![narrow.id, wide.id, two.id, one.id]);
}

mod schedule_sim;

// ---- failure kinds and host faults ----

/// Fails the lease with a classified failure.
async fn fail_as(env: &Env, lease: &GrantedLease, kind: FailureKind, error: &str) -> FailOutcome {
    env.store
        .fail(&lease.lease, lease.epoch, error, "last lines", kind)
        .await
        .unwrap()
}

#[tokio::test]
async fn out_of_memory_stores_the_unit_as_not_fitting_without_retrying() {
    let env = env().await;
    let u = h100("m", 1);
    let campaign = submit(&env, "c", 0, 3, vec![u.clone()]).await;
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let lease = must_acquire(&env, &ask("a1", &[0])).await;
    let out = fail_as(
        &env,
        &lease,
        FailureKind::OutOfMemory,
        "out of memory: torch.OutOfMemoryError: CUDA out of memory",
    )
    .await;
    assert_eq!(out.reaction, Reaction::DoesNotFit);
    assert!(!out.will_retry);
    let row = unit_row(&env, &campaign, &u.id).await;
    assert_eq!(row.state, UnitState::Failed);
    assert_eq!(row.failure_kind, Some(FailureKind::OutOfMemory));
    assert!(acquire(&env, &ask("a1", &[0])).await.is_none());
}

#[tokio::test]
async fn a_missing_engine_sends_the_unit_to_another_agent_and_spares_its_attempts() {
    let env = env().await;
    let vllm = h100("m", 1);
    let sglang = unit_of(config("m", "H100-80GB", 1, "sglang", &[]), 2);
    let campaign = submit(&env, "c", 0, 1, vec![vllm.clone(), sglang.clone()]).await;
    for host in ["a1", "a2"] {
        env.store
            .register_agent(&agent(host, gpus("H100-80GB", 1)))
            .await
            .unwrap();
    }
    let first = must_acquire(&env, &ask("a1", &[0])).await;
    let missing = first.unit.unit.clone();
    let out = fail_as(
        &env,
        &first,
        FailureKind::MissingEngine,
        "engine not installed: `vllm`: No such file or directory",
    )
    .await;
    assert!(out.will_retry, "another agent may run it");
    assert_eq!(
        out.reaction,
        Reaction::HostFault {
            also_failed: vec![]
        }
    );
    // max_attempts is 1, yet the unit is pending: the host's fault is not the unit's.
    let row = unit_row(&env, &campaign, &missing).await;
    assert_eq!((row.state, row.attempts), (UnitState::Pending, 0));
    assert_eq!(row.failure_kind, Some(FailureKind::MissingEngine));

    // a1 gets the other framework's unit, never the one it lacks the engine for.
    let other = must_acquire(&env, &ask("a1", &[0])).await;
    assert_ne!(other.unit.unit, missing);
    finish_steps(&env, &other, 1).await;
    env.store.complete(&other.lease, other.epoch).await.unwrap();
    assert!(acquire(&env, &ask("a1", &[0])).await.is_none());
    // a2 takes it.
    let retried = must_acquire(&env, &ask("a2", &[0])).await;
    assert_eq!(retried.unit.unit, missing);

    // The fault is listed with the agent and forgotten when it registers again.
    let agents = env.store.list_agents().await.unwrap();
    let a1 = agents.iter().find(|a| a.id.as_str() == "a1").unwrap();
    assert_eq!(a1.faults.len(), 1);
    let fault = &a1.faults[0];
    let lacked = if missing == vllm.id { "vllm" } else { "sglang" };
    assert_eq!(
        (fault.kind.as_str(), fault.name.as_str()),
        ("framework", lacked)
    );
    assert!(fault.error.contains("No such file"), "{}", fault.error);
    env.store
        .register_agent(&agent("a1", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    let agents = env.store.list_agents().await.unwrap();
    assert!(agents.iter().all(|a| a.faults.is_empty()));
}

#[tokio::test]
async fn a_missing_engine_no_agent_has_fails_every_unit_needing_it() {
    let env = env().await;
    let (a, b) = (h100("a", 1), h100("b", 1));
    let sglang = unit_of(config("a", "H100-80GB", 1, "sglang", &[]), 2);
    let first_campaign = submit(&env, "c1", 0, 3, vec![a.clone(), sglang.clone()]).await;
    let second_campaign = submit(&env, "c2", 0, 3, vec![b.clone()]).await;
    env.store
        .register_agent(&agent("only", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    // A drained agent does not count as one that could run it.
    env.store
        .register_agent(&agent("drained", gpus("H100-80GB", 1)))
        .await
        .unwrap();
    env.store
        .drain_agent(&AgentId("drained".into()), "alice")
        .await
        .unwrap();
    let mut lease = must_acquire(&env, &ask("only", &[0])).await;
    while lease.unit.unit == sglang.id {
        finish_steps(&env, &lease, 1).await;
        env.store.complete(&lease.lease, lease.epoch).await.unwrap();
        lease = must_acquire(&env, &ask("only", &[0])).await;
    }
    let out = fail_as(
        &env,
        &lease,
        FailureKind::MissingEngine,
        "engine not installed: bash: vllm: command not found",
    )
    .await;
    assert!(!out.will_retry);
    let Reaction::HostFault { also_failed } = &out.reaction else {
        panic!("{:?}", out.reaction);
    };
    // The other vLLM unit, in the other campaign, fails with it; the SGLang unit is not
    // touched.
    assert_eq!(also_failed.len(), 1, "{also_failed:?}");
    let other = &also_failed[0];
    for (campaign, unit) in [
        (&lease.unit.campaign, &lease.unit.unit),
        (&other.campaign, &other.unit),
    ] {
        let row = unit_row(&env, campaign, unit).await;
        assert_eq!(row.state, UnitState::Failed);
        assert_eq!(row.failure_kind, Some(FailureKind::MissingEngine));
        let error = row.last_error.unwrap();
        assert!(error.starts_with("no agent can run it: "), "{error}");
        assert!(error.contains("command not found"), "{error}");
    }
    assert_ne!(lease.unit.campaign, other.campaign);
    let steps_left: i64 = count(
        &env,
        "SELECT COUNT(*) FROM steps WHERE state = 'pending'
         AND unit_key IN (SELECT unit_key FROM units WHERE state = 'failed')",
    )
    .await;
    assert_eq!(steps_left, 0, "the failed units' steps failed too");
    let _ = (first_campaign, second_campaign);
    // What is left to run is the SGLang unit, if it did not run first.
    if let Some(left) = acquire(&env, &ask("only", &[0])).await {
        assert_eq!(left.unit.unit, sglang.id);
    }
}

#[tokio::test]
async fn a_missing_model_keeps_the_agent_off_that_model_only() {
    let env = env().await;
    // Same shape (GPU, framework, labels), two models: the walk steps past the unit of
    // the model the host lacks to the next unit of the shape.
    let (big, small) = (
        h100_sized("big", 1, Some(70.0)),
        h100_sized("small", 1, Some(8.0)),
    );
    let campaign = submit(&env, "c", 0, 3, vec![small.clone(), big.clone()]).await;
    for host in ["a1", "a2"] {
        env.store
            .register_agent(&agent(host, gpus("H100-80GB", 1)))
            .await
            .unwrap();
    }
    let first = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!(first.unit.unit, big.id, "largest model first");
    let out = fail_as(
        &env,
        &first,
        FailureKind::MissingModel,
        "model files not found: OSError: org/big does not appear to have a file named config.json",
    )
    .await;
    assert!(out.will_retry);
    let next = must_acquire(&env, &ask("a1", &[0])).await;
    assert_eq!(next.unit.unit, small.id, "a1 skips the model it lacks");
    let row = unit_row(&env, &campaign, &big.id).await;
    assert_eq!((row.state, row.attempts), (UnitState::Pending, 0));
    let retried = must_acquire(&env, &ask("a2", &[0])).await;
    assert_eq!(retried.unit.unit, big.id);
}

#[tokio::test]
async fn an_unavailable_image_is_a_fault_of_the_host_for_the_framework() {
    let env = env().await;
    let vllm = h100("m", 1);
    let campaign = submit(&env, "c", 0, 1, vec![vllm]).await;
    for host in ["a1", "a2"] {
        env.store
            .register_agent(&agent(host, gpus("H100-80GB", 1)))
            .await
            .unwrap();
    }
    let first = must_acquire(&env, &ask("a1", &[0])).await;
    let unit = first.unit.unit.clone();
    let out = fail_as(
        &env,
        &first,
        FailureKind::ImageUnavailable,
        "failed to pull image `vllm/vllm-openai:v0.11.0` (exit status: 125): connection refused",
    )
    .await;
    assert!(out.will_retry, "another agent may have or pull the image");
    assert_eq!(
        out.reaction,
        Reaction::HostFault {
            also_failed: vec![]
        }
    );
    let row = unit_row(&env, &campaign, &unit).await;
    assert_eq!((row.state, row.attempts), (UnitState::Pending, 0));
    assert_eq!(row.failure_kind, Some(FailureKind::ImageUnavailable));
    // The host that could not have the image gets no unit of that framework; another does.
    assert!(acquire(&env, &ask("a1", &[0])).await.is_none());
    assert_eq!(must_acquire(&env, &ask("a2", &[0])).await.unit.unit, unit);
}
