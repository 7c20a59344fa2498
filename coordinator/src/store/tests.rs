//! Tests of the store through its public API, with raw SQL where a test needs states that
//! later work (leases, results) will write.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::connection::{BUSY_TIMEOUT, Pragmas, read_pragmas};
use super::error::SqlContext;
use super::*;
use crate::domain::{
    Api, CampaignSpec, DatasetSpec, DropKind, FrameworkSpec, GpuRequirement, LoadPoint, ModelSpec,
    QuantizationSpec, Slo, StepSpec, StopCondition, Unit, UnitConfig, WorkloadSpec,
};
use evalctl_common::sqlite::SqliteError;

// ---- fixtures ----

fn workload(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.to_owned(),
        api: Api::Chat,
        dataset: Some(DatasetSpec::Random {
            input_tokens: 1024,
            output_tokens: 256,
        }),
        seed: 7,
        stop: StopCondition::Requests(300),
        warmup: 10,
        slo: Slo {
            ttft_ms: Some(500.0),
            tpot_ms: Some(50.0),
            e2el_ms: None,
        },
        command: None,
        metrics: BTreeMap::new(),
        prefix_cache: None,
        harness: None,
    }
}

fn config(model: &str, gpus: u32) -> UnitConfig {
    UnitConfig {
        model: ModelSpec {
            name: model.to_owned(),
            path: format!("org/{model}"),
            params_b: Some(8.0),
            tokenizer: None,
        },
        gpu: GpuRequirement {
            gpu_type: "H100-80GB".to_owned(),
            memory_gb: 80.0,
            count: gpus,
            price_per_hour: None,
            layout: None,
        },
        framework: FrameworkSpec {
            name: "vllm".to_owned(),
            command: "vllm serve {model.path} --port {port} --tensor-parallel-size {gpu.count}"
                .to_owned(),
            health_path: "/health".to_owned(),
            metrics_path: Some("/metrics".to_owned()),
            startup_timeout_ms: 1_200_000,
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
        labels: BTreeMap::new(),
    }
}

/// A unit running `workloads` at concurrency 1 and 16 each.
fn unit(model: &str, gpus: u32, workloads: &[&str]) -> Unit {
    let config = config(model, gpus);
    let id = config.unit_id();
    let mut steps = Vec::new();
    for name in workloads {
        for c in [1, 16] {
            let index = steps.len() as u32;
            steps.push(StepSpec::new(
                &id,
                index,
                workload(name),
                LoadPoint::Concurrency(c),
                0,
            ));
        }
    }
    Unit { id, config, steps }
}

fn expansion(name: &str, units: Vec<Unit>, dropped: Vec<Dropped>) -> Expansion {
    Expansion {
        campaign: CampaignSpec {
            name: name.to_owned(),
            description: Some(format!("{name} campaign")),
            priority: 0,
            max_attempts: 3,
        },
        units,
        dropped,
    }
}

fn pruned(label: &str) -> Dropped {
    Dropped {
        label: label.to_owned(),
        kind: DropKind::Pruned,
        reason: "weights need 168.0 GB, 1 x H100-80GB has 80 GB".to_owned(),
    }
}

async fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("nested/dir/coordinator.sqlite"))
        .await
        .expect("store opens")
}

/// Runs raw SQL on the writer (states that later lease and result work will write).
async fn exec(store: &Store, sql: &str) {
    let sql = sql.to_owned();
    store
        .write(move |conn, _| {
            conn.execute_batch(&sql)
                .sql("run test SQL")
                .map_err(StoreError::from)
        })
        .await
        .expect("test SQL runs");
}

/// SQL for a unit's `unit_key` (tests have one campaign per unit id).
fn key(unit: &Unit) -> String {
    format!("(SELECT unit_key FROM units WHERE unit_id = '{}')", unit.id)
}

async fn unit_row(store: &Store, campaign: &CampaignId, unit: &UnitId) -> UnitRow {
    store
        .units(campaign)
        .await
        .unwrap()
        .into_iter()
        .find(|u| &u.id == unit)
        .expect("unit is stored")
}

async fn step_states(store: &Store, campaign: &CampaignId, unit: &UnitId) -> Vec<StepState> {
    store
        .unit_steps(campaign, unit)
        .await
        .unwrap()
        .iter()
        .map(|s| s.state)
        .collect()
}

// ---- connections ----

#[test]
fn the_store_and_its_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(open(&dir));
    send_sync(&store);
    let exp = expansion("c", vec![], vec![]);
    let id = CampaignId("x".into());
    send(store.submit(&exp, "", "ci"));
    send(store.list_campaigns());
    send(store.campaign("c"));
    send(store.units(&id));
    send(store.cancel(&id, "ci", "x"));
    send(store.checkpoint());
}

#[tokio::test]
async fn pragmas_read_back_on_writer_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let busy_ms = BUSY_TIMEOUT.as_millis() as i64;
    let writer = store
        .write(|conn, _| {
            read_pragmas(conn)
                .sql("read pragmas")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(
        writer,
        Pragmas {
            journal_mode: "wal".into(),
            synchronous: 1, // NORMAL
            foreign_keys: 1,
            busy_timeout_ms: busy_ms,
            query_only: 0,
            temp_store: 2, // MEMORY
            wal_autocheckpoint: 0,
        }
    );
    let reader = store
        .read(|conn| {
            read_pragmas(conn)
                .sql("read pragmas")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(reader.journal_mode, "wal");
    assert_eq!(reader.foreign_keys, 1);
    assert_eq!(reader.busy_timeout_ms, busy_ms);
    assert_eq!(reader.query_only, 1);
    assert_eq!(reader.temp_store, 2);

    let write_from_reader = store
        .read(|conn| {
            conn.execute("DELETE FROM audit_log", [])
                .sql("write on a reader")
                .map_err(StoreError::from)
        })
        .await;
    assert!(write_from_reader.is_err(), "readers are read-only");
}

#[tokio::test]
async fn foreign_keys_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let orphan = store
        .write(|conn, now| {
            conn.execute(
                "INSERT INTO units (campaign_key, unit_id, position, label, model_spec,
                     gpu_spec, framework_spec, quantization_spec, extra_args, labels_json,
                     created_at_ms, updated_at_ms)
                 VALUES (999, 'u-1', 0, 'x', 1, 2, 3, 4, '', '{}', ?1, ?1)",
                [now],
            )
            .sql("insert an orphan unit")
            .map_err(StoreError::from)
        })
        .await;
    assert!(orphan.is_err());
}

// ---- submit and read back ----

#[tokio::test]
async fn submit_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = unit("llama-8b", 1, &["chat", "long"]);
    let b = unit("llama-8b", 2, &["chat"]);
    let exp = expansion(
        "nightly",
        vec![a.clone(), b.clone()],
        vec![pruned("llama-70b / H100-80GB x1 / vllm / bf16")],
    );

    let out = store
        .submit(&exp, "campaign: nightly\n", "alice")
        .await
        .unwrap();
    assert!(out.created);
    assert_eq!(
        (
            out.units_added,
            out.units_kept,
            out.steps_added,
            out.steps_kept
        ),
        (2, 0, 6, 0)
    );

    let info = store.campaign("nightly").await.unwrap().expect("by name");
    assert_eq!(info.id, out.campaign_id);
    assert_eq!(
        store.campaign(out.campaign_id.as_str()).await.unwrap(),
        Some(info.clone())
    );
    assert_eq!(store.campaign("other").await.unwrap(), None);
    assert_eq!(info.name, "nightly");
    assert_eq!(info.description.as_deref(), Some("nightly campaign"));
    assert_eq!(info.state, CampaignState::Active);
    assert_eq!((info.priority, info.max_attempts), (0, 3));
    assert_eq!(info.submitted_by, "alice");
    assert_eq!(info.created_at_ms, info.updated_at_ms);
    assert_eq!(
        info.units,
        StateCounts {
            pending: 2,
            total: 2,
            ..StateCounts::default()
        }
    );
    assert_eq!(
        info.steps,
        StateCounts {
            pending: 6,
            total: 6,
            ..StateCounts::default()
        }
    );
    assert_eq!((info.dropped, info.preemptions), (1, 0));

    let units = store.units(&out.campaign_id).await.unwrap();
    assert_eq!(units.len(), 2);
    assert_eq!(units[0].id, a.id, "units in expansion order");
    assert_eq!(units[0].config, a.config);
    assert_eq!(units[0].label, a.config.label());
    assert_eq!(units[0].state, UnitState::Pending);
    assert_eq!((units[0].steps_total, units[0].steps_succeeded), (4, 0));
    assert_eq!((units[0].attempts, units[0].epoch), (0, 0));
    assert_eq!(
        (units[0].agent_id.clone(), units[0].last_error.clone()),
        (None, None)
    );
    assert_eq!(units[1].id, b.id);
    assert_eq!(units[1].steps_total, 2);

    let steps = store.unit_steps(&out.campaign_id, &a.id).await.unwrap();
    let specs: Vec<StepSpec> = steps.iter().map(|s| s.spec.clone()).collect();
    assert_eq!(specs, a.steps, "steps come back as submitted, in run order");
    assert!(steps.iter().all(|s| s.state == StepState::Pending));

    assert_eq!(store.dropped(&out.campaign_id).await.unwrap(), exp.dropped);

    // Each distinct workload is stored once per campaign.
    let workloads: i64 = store
        .read(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM specs WHERE kind = 'workload'",
                [],
                |r| r.get(0),
            )
            .sql("count workloads")
            .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(workloads, 2);

    let audit = store.audit(10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "alice");
    assert_eq!(audit[0].action, "submit");
    assert_eq!(audit[0].target, "campaign/nightly");
    let detail: serde_json::Value = serde_json::from_str(&audit[0].detail).unwrap();
    assert_eq!(detail["units_added"], 2);
    assert_eq!(detail["campaign_id"], out.campaign_id.as_str());
}

#[tokio::test]
async fn list_is_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock_ms = Arc::new(std::sync::atomic::AtomicI64::new(1_000));
    let ticks = Arc::clone(&clock_ms);
    let store = Store::open_with_clock(
        &dir.path().join("db.sqlite"),
        Clock::from_fn(move || ticks.fetch_add(1, Ordering::Relaxed)),
    )
    .await
    .unwrap();
    for name in ["first", "second", "third"] {
        store
            .submit(
                &expansion(name, vec![unit(name, 1, &["chat"])], vec![]),
                "",
                "ci",
            )
            .await
            .unwrap();
    }
    let names: Vec<String> = store
        .list_campaigns()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["third", "second", "first"]);
    let first = store.campaign("first").await.unwrap().unwrap();
    assert_eq!(
        first.created_at_ms, 1_000,
        "timestamps come from the store's clock"
    );
}

#[tokio::test]
async fn units_keep_expansion_order_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    // More units than one chunk of the encoder, in an order unrelated to their ids.
    let units: Vec<Unit> = (0..4100)
        .map(|i| unit(&format!("model-{i}"), 1, &["chat"]))
        .collect();
    let out = store
        .submit(&expansion("big", units.clone(), vec![]), "", "ci")
        .await
        .unwrap();
    assert_eq!((out.units_added, out.steps_added), (4100, 8200));
    let ids: Vec<UnitId> = store
        .units(&out.campaign_id)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    let expected: Vec<UnitId> = units.iter().map(|u| u.id.clone()).collect();
    assert_eq!(ids, expected);

    // New units of a resubmission come after the existing ones, in their expansion order.
    let mut more: Vec<Unit> = (0..3)
        .map(|i| unit(&format!("late-{i}"), 2, &["chat"]))
        .collect();
    more.extend(units.iter().take(10).cloned());
    let again = store
        .submit(&expansion("big", more.clone(), vec![]), "", "ci")
        .await
        .unwrap();
    assert_eq!((again.units_added, again.units_kept), (3, 10));
    let ids: Vec<UnitId> = store
        .units(&out.campaign_id)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(ids.len(), 4103);
    assert_eq!(&ids[..4100], &expected[..]);
    assert_eq!(
        &ids[4100..],
        &[more[0].id.clone(), more[1].id.clone(), more[2].id.clone()]
    );
}

#[tokio::test]
async fn a_unit_listed_twice_is_stored_once_with_all_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = unit("llama-8b", 1, &["chat"]);
    let a_more = unit("llama-8b", 1, &["chat", "long"]);
    let out = store
        .submit(&expansion("dup", vec![a.clone(), a_more], vec![]), "", "ci")
        .await
        .unwrap();
    assert_eq!(
        (
            out.units_added,
            out.units_kept,
            out.steps_added,
            out.steps_kept
        ),
        (1, 1, 4, 2)
    );
    assert_eq!(
        store
            .unit_steps(&out.campaign_id, &a.id)
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn an_abandoned_submission_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let exp = expansion(
        "c",
        vec![unit("m", 1, &["chat"]), unit("m", 2, &["chat"])],
        vec![],
    );
    // Every piece but the final `Done`, as when encoding fails half-way.
    let (all, encoded) = std::sync::mpsc::channel();
    submit::encode(&exp, &all).unwrap();
    drop(all);
    let (pieces, received) = std::sync::mpsc::channel();
    for piece in encoded.iter() {
        if !matches!(piece, submit::Piece::Done) {
            pieces.send(piece).unwrap();
        }
    }
    drop(pieces);
    let header = submit::Header::new(&exp, "", "alice");
    let err = store
        .write(move |conn, now_ms| submit::submit(conn, now_ms, &header, &received))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SubmitAbandoned), "{err}");
    assert!(store.list_campaigns().await.unwrap().is_empty());
    assert!(store.audit(10).await.unwrap().is_empty());
}

// ---- resubmission ----

#[tokio::test]
async fn resubmit_keeps_existing_rows_and_adds_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = unit("llama-8b", 1, &["chat"]);
    let b = unit("llama-8b", 2, &["chat"]);
    let first = store
        .submit(
            &expansion("nightly", vec![a.clone(), b.clone()], vec![pruned("x")]),
            "v1",
            "alice",
        )
        .await
        .unwrap();
    let id = first.campaign_id.clone();
    let before = store.campaign("nightly").await.unwrap().unwrap();

    // A finished: unit and steps succeeded, with a stored result and an attempt.
    exec(
        &store,
        &format!(
            "UPDATE units SET state = 'succeeded', attempts = 1, epoch = 4
                 WHERE unit_key = {a};
             UPDATE steps SET state = 'succeeded' WHERE unit_key = {a};
             INSERT INTO step_results (unit_key, step_id, result_json, environment_json,
                 agent_id, attempt, epoch, finished_at_ms)
             VALUES ({a}, '{s}', '{{}}', '{{}}', 'agent-1', 1, 4, 1);",
            a = key(&a),
            s = a.steps[0].id,
        ),
    )
    .await;

    // Resubmit: A unchanged, B gains a workload, C is new; new settings and dropped list.
    let b2 = unit("llama-8b", 2, &["chat", "long"]);
    let c = unit("llama-8b", 4, &["chat"]);
    let mut exp = expansion("nightly", vec![a.clone(), b2.clone(), c.clone()], vec![]);
    exp.campaign.priority = 5;
    exp.campaign.max_attempts = 7;
    exp.campaign.description = Some("extended".into());
    let out = store.submit(&exp, "v2", "bob").await.unwrap();
    assert_eq!(out.campaign_id, id);
    assert!(!out.created);
    assert_eq!(
        (
            out.units_added,
            out.units_kept,
            out.steps_added,
            out.steps_kept
        ),
        (1, 2, 4, 4)
    );

    let ra = unit_row(&store, &id, &a.id).await;
    assert_eq!(
        ra.state,
        UnitState::Succeeded,
        "a finished unit stays finished"
    );
    assert_eq!((ra.attempts, ra.epoch, ra.steps_succeeded), (1, 4, 2));
    assert_eq!(
        step_states(&store, &id, &a.id).await,
        [StepState::Succeeded, StepState::Succeeded]
    );
    let rb = unit_row(&store, &id, &b.id).await;
    assert_eq!((rb.state, rb.steps_total), (UnitState::Pending, 4));
    assert_eq!(unit_row(&store, &id, &c.id).await.state, UnitState::Pending);
    let results: i64 = store
        .read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM step_results", [], |r| r.get(0))
                .sql("count results")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(results, 1);

    let info = store.campaign("nightly").await.unwrap().unwrap();
    assert_eq!((info.priority, info.max_attempts), (5, 7));
    assert_eq!(info.description.as_deref(), Some("extended"));
    assert_eq!(info.submitted_by, "alice", "the first submitter stays");
    assert_eq!(info.created_at_ms, before.created_at_ms);
    assert_eq!(info.dropped, 0, "the dropped list is replaced");
    assert_eq!((info.units.total, info.units.succeeded), (3, 1));
    let source: String = store
        .read(move |conn| {
            conn.query_row("SELECT source_yaml FROM campaigns", [], |r| r.get(0))
                .sql("read source")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(source, "v2");

    // The same matrix again adds nothing.
    let again = store.submit(&exp, "v2", "bob").await.unwrap();
    assert_eq!(
        (
            again.units_added,
            again.units_kept,
            again.steps_added,
            again.steps_kept
        ),
        (0, 3, 0, 8)
    );
    let actions: Vec<String> = store
        .audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["resubmit", "resubmit", "submit"]);
}

#[tokio::test]
async fn a_succeeded_unit_that_gains_steps_runs_again_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = unit("llama-8b", 1, &["chat"]);
    let id = store
        .submit(&expansion("nightly", vec![a.clone()], vec![]), "", "alice")
        .await
        .unwrap()
        .campaign_id;
    exec(
        &store,
        "UPDATE units SET state = 'succeeded'; UPDATE steps SET state = 'succeeded';",
    )
    .await;
    assert_eq!(
        store.campaign("nightly").await.unwrap().unwrap().state,
        CampaignState::Succeeded
    );

    let a2 = unit("llama-8b", 1, &["chat", "long"]);
    assert_eq!(a2.id, a.id);
    let out = store
        .submit(&expansion("nightly", vec![a2], vec![]), "", "alice")
        .await
        .unwrap();
    assert_eq!((out.units_kept, out.steps_added, out.steps_kept), (1, 2, 2));
    assert_eq!(unit_row(&store, &id, &a.id).await.state, UnitState::Pending);
    assert_eq!(
        step_states(&store, &id, &a.id).await,
        [
            StepState::Succeeded,
            StepState::Succeeded,
            StepState::Pending,
            StepState::Pending
        ]
    );
    assert_eq!(
        store.campaign("nightly").await.unwrap().unwrap().state,
        CampaignState::Active
    );
}

/// Decision: a unit missing from a resubmitted expansion stays, with its state and
/// results. Results are never deleted, and a matrix edited down must not erase what ran.
#[tokio::test]
async fn resubmit_without_a_unit_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = unit("llama-8b", 1, &["chat"]);
    let b = unit("llama-8b", 2, &["chat"]);
    let id = store
        .submit(
            &expansion("nightly", vec![a.clone(), b.clone()], vec![]),
            "",
            "alice",
        )
        .await
        .unwrap()
        .campaign_id;
    exec(
        &store,
        &format!(
            "UPDATE units SET state = 'succeeded' WHERE unit_key = {b};
             UPDATE steps SET state = 'succeeded' WHERE unit_key = {b};
             INSERT INTO step_results (unit_key, step_id, result_json, environment_json,
                 agent_id, attempt, epoch, finished_at_ms)
             VALUES ({b}, '{s}', '{{}}', '{{}}', 'agent-1', 1, 1, 1);",
            b = key(&b),
            s = b.steps[0].id,
        ),
    )
    .await;

    let out = store
        .submit(&expansion("nightly", vec![a.clone()], vec![]), "", "alice")
        .await
        .unwrap();
    assert_eq!((out.units_added, out.units_kept), (0, 1));
    let units = store.units(&id).await.unwrap();
    assert_eq!(units.len(), 2, "the removed unit is kept");
    let rb = unit_row(&store, &id, &b.id).await;
    assert_eq!((rb.state, rb.steps_succeeded), (UnitState::Succeeded, 2));
    let results: i64 = store
        .read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM step_results", [], |r| r.get(0))
                .sql("count results")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(results, 1);
}

#[tokio::test]
async fn units_in_state_lists_only_that_state_in_submission_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let units: Vec<Unit> = (1..=4).map(|g| unit("llama-8b", g, &["chat"])).collect();
    let id = store
        .submit(&expansion("nightly", units.clone(), vec![]), "", "alice")
        .await
        .unwrap()
        .campaign_id;
    exec(
        &store,
        &format!(
            "UPDATE units SET state = 'leased', epoch = 1 WHERE unit_key IN ({}, {});",
            key(&units[3]),
            key(&units[1]),
        ),
    )
    .await;

    let leased = store.units_in_state(&id, UnitState::Leased).await.unwrap();
    let ids: Vec<&UnitId> = leased.iter().map(|u| &u.id).collect();
    assert_eq!(ids, vec![&units[1].id, &units[3].id]);
    assert!(leased.iter().all(|u| u.state == UnitState::Leased));
    assert_eq!(leased[0], unit_row(&store, &id, &units[1].id).await);
    let pending = store.units_in_state(&id, UnitState::Pending).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(
        store
            .units_in_state(&id, UnitState::Failed)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---- cancel and retry ----

#[tokio::test]
async fn cancel_and_retry_move_units_and_leave_audit_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let failed = unit("m-failed", 1, &["chat"]);
    let leased = unit("m-leased", 1, &["chat"]);
    let pending = unit("m-pending", 1, &["chat"]);
    let done = unit("m-done", 1, &["chat"]);
    let id = store
        .submit(
            &expansion(
                "nightly",
                vec![
                    failed.clone(),
                    leased.clone(),
                    pending.clone(),
                    done.clone(),
                ],
                vec![],
            ),
            "",
            "alice",
        )
        .await
        .unwrap()
        .campaign_id;
    exec(
        &store,
        &format!(
            "UPDATE units SET state = 'failed', attempts = 3, infra_attempts = 1,
                 last_error = 'server crashed' WHERE unit_key = {f};
             UPDATE steps SET state = 'failed' WHERE unit_key = {f} AND idx = 0;
             UPDATE units SET state = 'succeeded' WHERE unit_key = {d};
             UPDATE steps SET state = 'succeeded' WHERE unit_key = {d};
             INSERT INTO agents (id, hostname, gpus_json, labels_json, frameworks_json, version,
                 registered_at_ms, last_heartbeat_ms)
             VALUES ('agent-1', 'gpu-host-1', '[]', '{{}}', '[]', '0.1.0', 1, 1);
             UPDATE units SET state = 'leased', epoch = 1 WHERE unit_key = {l};
             UPDATE steps SET state = 'succeeded' WHERE unit_key = {l} AND idx = 0;
             INSERT INTO leases (lease_id, unit_key, agent_id, epoch, gpu_indices_json,
                 granted_at_ms, expires_at_ms)
             VALUES ('lease-1', {l}, 'agent-1', 1, '[0]', 1, 99999999999999);
             INSERT INTO unit_history (campaign_key, unit_key, attempt, epoch, lease_id,
                 agent_id, started_at_ms)
             SELECT campaign_key, unit_key, 1, 1, 'lease-1', 'agent-1', 1
             FROM units WHERE unit_key = {l};
             INSERT INTO unit_history (campaign_key, unit_key, attempt, epoch, lease_id,
                 agent_id, started_at_ms, ended_at_ms, outcome)
             SELECT campaign_key, unit_key, 1, 1, 'lease-0', 'agent-1', 1, 2, 'preempted'
             FROM units WHERE unit_key = {f};",
            f = key(&failed),
            d = key(&done),
            l = key(&leased),
        ),
    )
    .await;
    let rl = unit_row(&store, &id, &leased.id).await;
    assert_eq!(
        (
            rl.state,
            rl.agent_id.as_deref(),
            rl.epoch,
            rl.steps_succeeded
        ),
        (UnitState::Leased, Some("agent-1"), 1, 1)
    );
    assert_eq!(
        store
            .campaign("nightly")
            .await
            .unwrap()
            .unwrap()
            .preemptions,
        1
    );

    // Cancel: the pending and the leased unit.
    let cancelled = store.cancel(&id, "bob", "wrong model").await.unwrap();
    assert_eq!(cancelled, 2);
    let info = store.campaign("nightly").await.unwrap().unwrap();
    assert_eq!(info.state, CampaignState::Cancelled);
    assert_eq!(
        (
            info.units.cancelled,
            info.units.failed,
            info.units.succeeded
        ),
        (2, 1, 1)
    );
    assert_eq!(
        unit_row(&store, &id, &failed.id).await.state,
        UnitState::Failed
    );
    assert_eq!(
        unit_row(&store, &id, &done.id).await.state,
        UnitState::Succeeded
    );
    let rl = unit_row(&store, &id, &leased.id).await;
    assert_eq!((rl.state, rl.agent_id), (UnitState::Cancelled, None));
    assert_eq!(
        step_states(&store, &id, &leased.id).await,
        [StepState::Succeeded, StepState::Cancelled],
        "finished steps keep their state"
    );
    assert_eq!(
        step_states(&store, &id, &pending.id).await,
        [StepState::Cancelled, StepState::Cancelled]
    );
    let (lease_end, history_outcome): (Option<String>, Option<String>) = store
        .read(move |conn| {
            Ok((
                conn.query_row("SELECT end_reason FROM leases", [], |r| r.get(0))
                    .sql("read lease")?,
                conn.query_row(
                    "SELECT outcome FROM unit_history WHERE lease_id = 'lease-1'",
                    [],
                    |r| r.get(0),
                )
                .sql("read history")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(lease_end.as_deref(), Some("cancelled"));
    assert_eq!(history_outcome.as_deref(), Some("cancelled"));

    // Cancelling again cancels nothing, keeps the first reason, and is audited.
    assert_eq!(store.cancel(&id, "carol", "again").await.unwrap(), 0);
    let reason: String = store
        .read(|conn| {
            conn.query_row("SELECT cancel_reason FROM campaigns", [], |r| r.get(0))
                .sql("read reason")
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(reason, "wrong model");

    // Retry: the failed unit runs again with fresh attempts; the campaign is active.
    assert_eq!(store.retry_failed(&id, "dave").await.unwrap(), 1);
    let rf = unit_row(&store, &id, &failed.id).await;
    assert_eq!(rf.state, UnitState::Pending);
    assert_eq!(rf.attempts, 0);
    assert_eq!(
        rf.last_error.as_deref(),
        Some("server crashed"),
        "kept for the record"
    );
    assert_eq!(
        step_states(&store, &id, &failed.id).await,
        [StepState::Pending, StepState::Pending]
    );
    let info = store.campaign("nightly").await.unwrap().unwrap();
    assert_eq!(info.state, CampaignState::Active);
    assert_eq!(info.units.cancelled, 2, "cancelled units stay cancelled");
    assert_eq!(store.retry_failed(&id, "dave").await.unwrap(), 0);

    let audit = store.audit(10).await.unwrap();
    let summary: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("dave", "retry_failed"),
            ("dave", "retry_failed"),
            ("carol", "cancel"),
            ("bob", "cancel"),
            ("alice", "submit"),
        ]
    );
    let detail: serde_json::Value = serde_json::from_str(&audit[3].detail).unwrap();
    assert_eq!(detail["units_cancelled"], 2);
    assert_eq!(detail["reason"], "wrong model");
    assert_eq!(audit[3].target, "campaign/nightly");
    assert_eq!(store.audit(2).await.unwrap().len(), 2);

    // Unknown campaigns change nothing.
    let nobody = CampaignId("no-such-campaign".into());
    assert_eq!(store.cancel(&nobody, "bob", "x").await.unwrap(), 0);
    assert_eq!(store.retry_failed(&nobody, "bob").await.unwrap(), 0);
    assert_eq!(store.audit(100).await.unwrap().len(), 5);
}

#[tokio::test]
async fn resubmitting_a_cancelled_campaign_runs_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = unit("llama-8b", 1, &["chat"]);
    let b = unit("llama-8b", 2, &["chat"]);
    let exp = expansion("nightly", vec![a.clone(), b.clone()], vec![]);
    let id = store.submit(&exp, "", "alice").await.unwrap().campaign_id;
    exec(
        &store,
        &format!(
            "UPDATE units SET state = 'succeeded' WHERE unit_key = {a};
             UPDATE steps SET state = 'succeeded' WHERE unit_key = {a};",
            a = key(&a)
        ),
    )
    .await;
    assert_eq!(store.cancel(&id, "bob", "pause").await.unwrap(), 1);
    assert_eq!(
        store.campaign("nightly").await.unwrap().unwrap().state,
        CampaignState::Cancelled
    );

    let out = store.submit(&exp, "", "alice").await.unwrap();
    assert_eq!((out.units_added, out.units_kept), (0, 2));
    let info = store.campaign("nightly").await.unwrap().unwrap();
    assert_eq!(info.state, CampaignState::Active);
    assert_eq!((info.units.succeeded, info.units.pending), (1, 1));
    assert_eq!(
        step_states(&store, &id, &b.id).await,
        [StepState::Pending, StepState::Pending]
    );
}

// ---- the writer ----

/// Holds the writer on a blocking operation until `release` is sent, so that what is sent
/// meanwhile queues up and runs as one batch.
async fn hold_writer(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (started, running) = oneshot::channel();
    let held = store.clone();
    tokio::spawn(async move {
        held.write(move |_, _| {
            let _ = started.send(());
            let _ = wait.recv();
            Ok(())
        })
        .await
        .unwrap();
    });
    running.await.unwrap();
    release
}

async fn wait_for_queue(store: &Store, queued: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let sender = store.sender();
    while sender.max_capacity() - sender.capacity() < queued {
        assert!(Instant::now() < deadline, "operations did not queue up");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_together_and_a_failing_op_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let release = hold_writer(&store).await;

    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let exp = expansion(
                &format!("c{i}"),
                vec![unit(&format!("m{i}"), 1, &["chat"])],
                vec![],
            );
            store.submit(&exp, "", "alice").await
        }));
    }
    let failing = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(|conn, now| {
                    conn.execute(
                        "INSERT INTO audit_log (at_ms, actor, action, target, detail)
                         VALUES (?1, 'x', 'doomed', 'x', '{}')",
                        [now],
                    )
                    .sql("insert")?;
                    // Violates the units CHECK constraint: the whole op rolls back.
                    conn.execute("UPDATE units SET state = 'running'", [])
                        .sql("break a constraint")?;
                    Ok(())
                })
                .await
        })
    };
    wait_for_queue(&store, 21).await;
    release.send(()).unwrap();

    for t in tasks {
        assert!(t.await.unwrap().unwrap().created);
    }
    let err = failing.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Sqlite(e) if matches!(**e, SqliteError::Sql {
                action: "break a constraint",
                ..
            })
        ),
        "{err}"
    );
    assert!(
        store.inner.stats.largest_batch.load(Ordering::Relaxed) >= 21,
        "the queued operations ran as one batch"
    );
    assert_eq!(store.list_campaigns().await.unwrap().len(), 20);
    let audit = store.audit(100).await.unwrap();
    assert_eq!(audit.len(), 20);
    assert!(
        audit.iter().all(|e| e.action == "submit"),
        "the failed op left nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_of_different_campaigns_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let units = (1..=3)
                .map(|g| unit(&format!("m{i}"), g, &["chat"]))
                .collect();
            store
                .submit(&expansion(&format!("c{i}"), units, vec![]), "", "ci")
                .await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap().unwrap();
        assert_eq!((out.units_added, out.steps_added), (3, 6));
    }
    let campaigns = store.list_campaigns().await.unwrap();
    assert_eq!(campaigns.len(), 64);
    assert!(
        campaigns
            .iter()
            .all(|c| c.units.total == 3 && c.steps.total == 6)
    );
    assert!(store.inner.stats.batches.load(Ordering::Relaxed) <= 64);
}

#[tokio::test]
async fn checkpoint_truncates_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .submit(
            &expansion("c", vec![unit("m", 1, &["chat"])], vec![]),
            "",
            "ci",
        )
        .await
        .unwrap();
    let wal = store.path().with_extension("sqlite-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    store.checkpoint().await.unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
    assert!(store.campaign("c").await.unwrap().is_some());
}

// ---- durability ----

#[tokio::test]
async fn reopen_after_drop_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let a = unit("llama-8b", 1, &["chat"]);
    let b = unit("llama-8b", 2, &["chat", "long"]);
    let (campaigns, units, steps, dropped, audit) = {
        let store = Store::open(&path).await.unwrap();
        let exp = expansion("nightly", vec![a.clone(), b.clone()], vec![pruned("x")]);
        let id = store.submit(&exp, "", "alice").await.unwrap().campaign_id;
        store
            .submit(&expansion("other", vec![a.clone()], vec![]), "", "alice")
            .await
            .unwrap();
        store.cancel(&id, "bob", "done for today").await.unwrap();
        (
            store.list_campaigns().await.unwrap(),
            store.units(&id).await.unwrap(),
            store.unit_steps(&id, &b.id).await.unwrap(),
            store.dropped(&id).await.unwrap(),
            store.audit(100).await.unwrap(),
        )
    };
    assert!(
        !path.with_extension("sqlite-wal").exists(),
        "a dropped store checkpoints and removes its WAL"
    );
    let store = Store::open(&path).await.unwrap();
    let id = campaigns[1].id.clone();
    assert_eq!(store.list_campaigns().await.unwrap(), campaigns);
    assert_eq!(store.units(&id).await.unwrap(), units);
    assert_eq!(store.unit_steps(&id, &b.id).await.unwrap(), steps);
    assert_eq!(store.dropped(&id).await.unwrap(), dropped);
    assert_eq!(store.audit(100).await.unwrap(), audit);
    assert_eq!(audit.len(), 3);
}

const CRASH_DB: &str = "EVALCTL_STORE_TEST_CRASH_DB";

/// Child half of `a_submit_survives_sigkill`: submits, says so, and waits to be killed.
#[tokio::test]
#[ignore = "run by a_submit_survives_sigkill in a child process"]
async fn sigkill_child() {
    let Ok(path) = std::env::var(CRASH_DB) else {
        return;
    };
    let store = Store::open(Path::new(&path)).await.unwrap();
    let exp = expansion("survivor", vec![unit("llama-8b", 1, &["chat"])], vec![]);
    store.submit(&exp, "", "alice").await.unwrap();
    println!("SUBMITTED");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_submit_survives_sigkill() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command as Process, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "store::tests::sigkill_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let submitted = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("SUBMITTED"));
    child.kill().unwrap(); // SIGKILL: no destructors, no checkpoint, no close.
    child.wait().unwrap();
    assert!(submitted, "the child submitted");

    let wal = path.with_extension("sqlite-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the commit is only in the WAL"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let info = runtime.block_on(async {
        let store = Store::open(&path).await.unwrap();
        store.campaign("survivor").await.unwrap()
    });
    let info = info.expect("the campaign survived");
    assert_eq!(info.units.total, 1);
}

// ---- size ----

/// Inserting a 100,000-unit campaign (2 steps per unit) into a fresh store. Prints the times;
/// `EVALCTL_STORE_TIMING_UNITS` and `EVALCTL_STORE_TIMING_RUNS` change size and repeats. Run
/// with `cargo test -p evalctl-coordinator --release --lib store::tests::insert_100k --
/// --ignored --nocapture`.
#[test]
#[ignore = "timing, run by hand"]
fn insert_100k_units_timing() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let units = env("EVALCTL_STORE_TIMING_UNITS", 100_000);
    let runs = env("EVALCTL_STORE_TIMING_RUNS", 1);
    let exp = expansion(
        "big",
        (0..units)
            .map(|i| unit(&format!("model-{}", i / 8), 1 << (i % 8), &["chat"]))
            .collect(),
        vec![],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(async {
            let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
            let started = Instant::now();
            let out = store.submit(&exp, "", "bench").await.unwrap();
            let insert = started.elapsed();
            assert_eq!(out.units_added as usize, units);
            let started = Instant::now();
            let again = store.submit(&exp, "", "bench").await.unwrap();
            assert_eq!(again.units_kept as usize, units);
            let resubmit = started.elapsed();
            let started = Instant::now();
            let info = store.campaign("big").await.unwrap().unwrap();
            assert_eq!(info.units.total as usize, units);
            let campaign = started.elapsed();
            let started = Instant::now();
            assert_eq!(store.units(&info.id).await.unwrap().len(), units);
            let read_units = started.elapsed();
            let bytes = std::fs::metadata(store.path()).unwrap().len()
                + std::fs::metadata(store.path().with_extension("sqlite-wal"))
                    .unwrap()
                    .len();
            println!(
                "{units} units, {} steps: submit {insert:.2?}, resubmit {resubmit:.2?}, \
                 campaign() {campaign:.2?}, units() {read_units:.2?}, database + WAL {} MB",
                out.steps_added,
                bytes / 1_000_000
            );
        });
    }
}

#[tokio::test]
async fn heartbeats_that_change_nothing_but_times_share_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (store, now) = super::store_with_test_clock(&dir.path().join("db.sqlite"), 1_000_000).await;
    let ids: Vec<AgentId> = (0..50).map(|i| AgentId(format!("a{i:02}"))).collect();
    for id in &ids {
        store
            .register_agent(&AgentRegistration::cpu_only(&id.0, &id.0))
            .await
            .unwrap();
    }
    let ttl = Duration::from_secs(30);
    now.fetch_add(5_000, Ordering::SeqCst);
    let batches = store.inner.stats.batches.load(Ordering::Relaxed);
    for id in &ids {
        let reply = store.heartbeat(id, &[], false, ttl).await.unwrap();
        assert!(!reply.drain);
    }
    // At most the one flush the first heartbeat queued; none per heartbeat.
    assert!(store.inner.stats.batches.load(Ordering::Relaxed) - batches <= 1);
    let listed = store.list_agents().await.unwrap();
    assert!(
        listed.iter().all(|a| a.last_heartbeat_ms == 1_005_000),
        "{listed:?}"
    );

    // The lost-agent check writes the pending heartbeats first: nobody is lost 34 s after
    // registering, 29 s after the heartbeat.
    now.fetch_add(29_000, Ordering::SeqCst);
    assert!(store.mark_lost_agents(ttl).await.unwrap().is_empty());
    // A drain still reaches the agent through its next heartbeat.
    store.drain_agent(&ids[0], "op").await.unwrap();
    assert!(
        store
            .heartbeat(&ids[0], &[], false, ttl)
            .await
            .unwrap()
            .drain
    );
}

/// A row written before registrations were checked, with a GPU whose memory was NaN (stored
/// as JSON `null`), still reads: its memory is 0 and every other agent lists as before.
#[tokio::test]
async fn an_agent_row_with_a_null_gpu_memory_still_reads() {
    use crate::domain::{AgentGpu, AgentId, AgentRegistration};

    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let registration = |id: &str| AgentRegistration {
        id: AgentId(id.into()),
        hostname: id.into(),
        gpus: vec![AgentGpu {
            index: 0,
            uuid: format!("GPU-{id}"),
            gpu_type: "H100-80GB".into(),
            name: "NVIDIA H100".into(),
            memory_gb: 80.0,
        }],
        labels: Default::default(),
        frameworks: vec![],
        version: "0".into(),
        driver_version: String::new(),
        cuda_version: String::new(),
    };
    for id in ["good", "old"] {
        store.register_agent(&registration(id)).await.unwrap();
    }
    exec(
        &store,
        "UPDATE agents SET gpus_json = replace(gpus_json, '80.0', 'null') WHERE id = 'old'",
    )
    .await;
    let listed = store.list_agents().await.unwrap();
    let memory: Vec<(String, f64)> = listed
        .iter()
        .map(|a| (a.id.to_string(), a.gpus[0].memory_gb))
        .collect();
    assert_eq!(memory, [("good".into(), 80.0), ("old".into(), 0.0)]);
}
