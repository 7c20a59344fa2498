//! One leased unit from start to end: a healthy server, every unfinished step in order, then
//! `Complete` once every result is acknowledged, `Fail` when the unit's own work failed, or
//! `Release` when the agent stops. A revoked lease stops at once and tells nobody.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use evalctl_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span, warn};

use super::servers::{self, LOG_TAIL_BYTES, Session};
use super::step::{self, ResultContext, Target};
use super::{Ctx, LeaseSlot, StopReason, capacity, environment, harness, outbox, prefix_cache};

use evalctl_loadgen as loadgen;
use evalctl_results::document::ProbeFacts;
use evalctl_results::probe::Goal;
use evalctl_results::search::SearchAxis;
use evalctl_results::settle::{NextRun, ProbeRun};
use evalctl_results::{STEP_DOCUMENT_SCHEMA, STEP_DOCUMENT_SCHEMA_MINOR, StepDocument};
use evalctl_telemetry as telemetry;

/// Calls to the coordinator about a lease's end are retried this long on transport errors.
const END_CALL_PATIENCE: Duration = Duration::from_secs(15);
/// How often a running step checks that its server is still alive.
const SERVER_CHECK: Duration = Duration::from_millis(250);

/// How a unit's run ended, before the coordinator is told.
enum Ending {
    /// Every step has a result.
    Finished,
    /// The unit's own failure (server, template, every request failing).
    Failed {
        error: String,
        log_tail: String,
        /// What kind of failure it was, when the agent could tell.
        class: pb::FailureClass,
    },
    /// The agent asked the unit to stop (the slot says why).
    Stopped,
}

/// Runs `lease` to its end (also a lease resumed after a restart: its finished steps are
/// skipped).
pub async fn run(ctx: &Arc<Ctx>, lease: pb::Lease, slot: &LeaseSlot) {
    let span =
        info_span!("unit", lease = %lease.lease_id, unit = %lease.unit_id, epoch = lease.epoch);
    async {
        let mut session = None;
        let ending = execute(ctx, &lease, slot, &mut session).await;
        finish(ctx, &lease, slot, ending, session).await;
    }
    .instrument(span)
    .await;
}

async fn execute(
    ctx: &Arc<Ctx>,
    lease: &pb::Lease,
    slot: &LeaseSlot,
    session: &mut Option<Session>,
) -> Ending {
    let stopped = || Ending::Stopped;
    let mut finished: HashSet<String> = lease.finished_step_ids.iter().cloned().collect();
    match ctx.state.finished_steps(&lease.lease_id) {
        Ok(local) => finished.extend(local),
        Err(err) => warn!(error = %err, "failed to read finished steps from the state"),
    }
    let pending: Vec<&pb::StepSpec> = {
        let mut steps: Vec<&pb::StepSpec> = lease.steps.iter().collect();
        steps.sort_by_key(|s| s.index);
        steps
            .into_iter()
            .filter(|s| !finished.contains(&s.step_id))
            .collect()
    };
    slot.steps_finished.store(
        (lease.steps.len() - pending.len()) as u32,
        Ordering::Relaxed,
    );
    if pending.is_empty() {
        return Ending::Finished;
    }
    info!(
        steps = lease.steps.len(),
        pending = pending.len(),
        first = pending[0].index,
        "running the unit"
    );

    let started = tokio::select! {
        started = servers::obtain(ctx, lease, &slot.stop) => started,
        _ = slot.stop.cancelled() => return stopped(),
    };
    let server = match started {
        Ok(server) => server,
        Err(failure) if failure.cancelled || slot.stop.is_cancelled() => return stopped(),
        Err(failure) => {
            // The engine's own line, and what kind of failure it shows, go with the error:
            // `status`, the report and the events show the error, and the coordinator
            // reacts to the kind.
            let (error, class) = match &failure.diagnosis {
                // The error already quotes the line (the agent's own findings, such as a
                // container image it could not have): name the kind only.
                Some(diagnosis) if failure.error.contains(&diagnosis.line) => (
                    format!(
                        "the server did not start: {} ({})",
                        failure.error,
                        crate::launcher::diagnosis::label(diagnosis.class)
                    ),
                    diagnosis.class,
                ),
                Some(diagnosis) => (
                    format!(
                        "the server did not start: {} ({})",
                        failure.error,
                        diagnosis.describe()
                    ),
                    diagnosis.class,
                ),
                None => (
                    format!("the server did not start: {}", failure.error),
                    pb::FailureClass::Unspecified,
                ),
            };
            return Ending::Failed {
                class,
                error,
                log_tail: failure.log_tail,
            };
        }
    };
    let session = session.insert(server);
    let environment_json = match serde_json::to_string(&environment::describe(ctx, lease, session))
    {
        Ok(json) => json,
        Err(err) => {
            return Ending::Failed {
                class: pb::FailureClass::Unspecified,
                error: format!("failed to encode the environment: {err}"),
                log_tail: String::new(),
            };
        }
    };
    let model = lease.config.as_ref().and_then(|c| c.model.as_ref());
    let target = Target {
        base_url: session.server.base_url(),
        served_model: session.served_model.clone(),
        tokenizer_json: model
            .map(|m| m.tokenizer.clone())
            .filter(|t| !t.is_empty())
            .map(Into::into),
    };
    let simulated = lease
        .config
        .as_ref()
        .and_then(|c| c.framework.as_ref())
        .is_some_and(|f| f.name == "sim");

    for spec in pending {
        if slot.stop.is_cancelled() {
            return stopped();
        }
        slot.current_step.store(spec.index, Ordering::Relaxed);
        let label = step::label(spec);
        let is_harness = spec.workload.as_ref().is_some_and(|w| w.api == "command");
        let run = StepRun {
            ctx,
            lease,
            target: &target,
            environment_json: &environment_json,
            simulated,
            slot,
        };
        let result = if is_harness {
            harness_step(ctx, lease, spec, session, &environment_json, slot).await
        } else if let Some(search) = capacity::of(spec) {
            match search {
                Ok(search) => search_step(&run, spec, &search, session).await,
                Err(message) => Err(Ending::Failed {
                    class: pb::FailureClass::Unspecified,
                    error: format!("step {label}: {message}"),
                    log_tail: String::new(),
                }),
            }
        } else {
            load_step(&run, spec, session, None)
                .await
                .map(|(result, _)| result)
        };
        let result = match result {
            Ok(result) => result,
            Err(ending) => return ending,
        };
        if let Err(ending) = finish_step(ctx, lease, spec, result, None) {
            return ending;
        }
        slot.steps_finished.fetch_add(1, Ordering::Relaxed);
        info!(step = %label, index = spec.index, "step finished");
    }
    Ending::Finished
}

/// What every step of a lease runs with.
struct StepRun<'a> {
    ctx: &'a Ctx,
    lease: &'a pb::Lease,
    target: &'a Target,
    environment_json: &'a str,
    simulated: bool,
    slot: &'a LeaseSlot,
}

/// Stores a finished step's result durably (state + outbox, one transaction) and wakes the
/// outbox; a probe run's facts are recorded with it.
fn finish_step(
    ctx: &Ctx,
    lease: &pb::Lease,
    spec: &pb::StepSpec,
    result: pb::StepResult,
    probe: Option<(&str, &str)>,
) -> Result<(), Ending> {
    let label = step::label(spec);
    let batch = pb::ResultBatch {
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
        unit_id: lease.unit_id.clone(),
        attempt: lease.attempt,
        sequence: 0,
        results: vec![result],
    };
    let stored = match probe {
        None => ctx.state.finish_step(&lease.lease_id, &spec.step_id, batch),
        Some((search_step, facts_json)) => ctx.state.finish_probe(
            &lease.lease_id,
            &spec.step_id,
            batch,
            search_step,
            facts_json,
        ),
    };
    if let Err(err) = stored {
        // The result cannot be made durable: stop rather than report what could be lost.
        error!(step = %label, error = %err, "failed to store the step result in the outbox");
        return Err(Ending::Failed {
            class: pb::FailureClass::Unspecified,
            error: format!("step {label}: failed to store the result locally: {err}"),
            log_tail: String::new(),
        });
    }
    ctx.outbox_changed.notify_one();
    Ok(())
}

/// Runs a capacity search step: its probe runs, each stored as a step of its own, then the
/// verdict as the search step's result.
async fn search_step(
    run: &StepRun<'_>,
    spec: &pb::StepSpec,
    search: &capacity::Search,
    session: &mut Session,
) -> Result<pb::StepResult, Ending> {
    let label = step::label(spec);
    let failed = |error: String| Ending::Failed {
        class: pb::FailureClass::Unspecified,
        error: format!("step {label}: {error}"),
        log_tail: String::new(),
    };
    let started_at_ms = now_ms();
    loop {
        let local = run
            .ctx
            .state
            .probe_runs(&run.lease.lease_id, &spec.step_id)
            .map_err(|err| failed(format!("failed to read its probe runs: {err}")))?;
        let runs = capacity::stored_runs(run.lease, &local, &spec.step_id).map_err(failed)?;
        match capacity::next(search, &runs) {
            NextRun::Run { load, run: repeat } => {
                let probe = capacity::probe_step(spec, search.spec.axis, load, repeat);
                let of = ProbeOf {
                    search_step: &spec.step_id,
                    axis: search.spec.axis,
                    goal: &search.goal,
                    load,
                    run: repeat,
                };
                let (result, facts) = load_step(run, &probe, session, Some(&of)).await?;
                let facts = facts.ok_or_else(|| failed("a probe run was not judged".into()))?;
                info!(
                    step = %step::label(&probe),
                    outcome = facts.run.judgment.outcome.word(),
                    reason = facts.run.judgment.reason.as_deref().unwrap_or(""),
                    "probe run judged"
                );
                let facts_json = serde_json::to_string(&facts)
                    .map_err(|err| failed(format!("failed to encode a probe's facts: {err}")))?;
                finish_step(
                    run.ctx,
                    run.lease,
                    &probe,
                    result,
                    Some((&spec.step_id, &facts_json)),
                )?;
            }
            NextRun::Done(verdict) => {
                info!(
                    step = %label,
                    capacity = ?verdict.capacity,
                    first_failing = ?verdict.first_failing,
                    probes = verdict.probes,
                    runs = verdict.runs,
                    stopped = verdict.stopped.describe(),
                    "capacity search finished"
                );
                let document = capacity::verdict_document(
                    label.clone(),
                    run.simulated,
                    search,
                    &runs,
                    verdict,
                    started_at_ms,
                    now_ms(),
                );
                let context = ResultContext {
                    lease: run.lease,
                    step: spec,
                    agent_id: &run.ctx.agent_id,
                    simulated: run.simulated,
                    served_model: &session.served_model,
                    environment_json: run.environment_json,
                    started_at_ms,
                    finished_at_ms: document.finished_at_ms,
                };
                let json = serde_json::to_string(&document)
                    .map_err(|err| failed(format!("failed to encode the verdict: {err}")))?;
                return Ok(step::protocol_result(&context, json, Vec::new()));
            }
        }
    }
}

/// The search a load step is a probe run of.
struct ProbeOf<'a> {
    search_step: &'a str,
    axis: SearchAxis,
    goal: &'a Goal,
    load: f64,
    run: u32,
}

/// Runs a load-generator step; its result, or how the unit ends instead.
/// A probe run (`probe`) is judged on its records rather than failed when every request
/// failed, and its facts come back with its result.
async fn load_step(
    run: &StepRun<'_>,
    spec: &pb::StepSpec,
    session: &mut Session,
    probe: Option<&ProbeOf<'_>>,
) -> Result<(pb::StepResult, Option<ProbeFacts>), Ending> {
    let StepRun {
        ctx,
        lease,
        target,
        environment_json,
        simulated,
        slot,
    } = *run;
    let label = step::label(spec);
    let workload = spec.workload.as_ref();
    let dataset_spec = workload.and_then(|w| w.dataset.as_ref());
    let dataset_kind = dataset_spec.map_or("", |d| d.kind.as_str());
    let generated = dataset_spec.is_some_and(step::is_generated);
    let policy = match prefix_cache::policy(workload.map_or("", |w| w.prefix_cache.as_str())) {
        Ok(policy) => policy,
        Err(message) => {
            return Err(Ending::Failed {
                class: pb::FailureClass::Unspecified,
                error: format!("step {label}: {message}"),
                log_tail: String::new(),
            });
        }
    };
    let cache = prefix_cache::prepare(policy, &target.base_url, generated).await;
    let salt = cache.salt.then(|| prefix_cache::salt(&spec.step_id));
    let plan = match step::plan(spec, target, salt).await {
        Ok(plan) => plan,
        Err(err) => {
            // A malformed file fails the same way on every attempt: no retries.
            let class = if err.is_bad_dataset() {
                pb::FailureClass::BadDataset
            } else {
                pb::FailureClass::Unspecified
            };
            return Err(Ending::Failed {
                class,
                error: evalctl_common::error_chain(&err),
                log_tail: session.server.log_tail(LOG_TAIL_BYTES),
            });
        }
    };
    let dataset = plan.dataset.clone();
    info!(step = %label, index = spec.index, "step started");
    let started_at_ms = now_ms();
    // GPU, host and server telemetry for the step's span; dropped (stopped) on an early return.
    let framework = lease.config.as_ref().and_then(|c| c.framework.as_ref());
    let recorder = telemetry::StepRecorder::start(
        Arc::clone(&ctx.gpus),
        &lease.gpu_indices,
        ctx.config.telemetry_rate_hz,
        framework.map(|f| telemetry::MetricsEndpoint {
            base_url: &target.base_url,
            path: &f.metrics_path,
        }),
    )
    .await;
    let run = loadgen::run_step(plan, |_| {});
    let mut run = std::pin::pin!(run);
    let mut check = tokio::time::interval(SERVER_CHECK);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = slot.stop.cancelled() => {
                info!(step = %label, "step stopped; its partial records are discarded");
                return Err(Ending::Stopped);
            }
            _ = check.tick() => {
                if let Some(status) = session.server.try_exit() {
                    return Err(Ending::Failed {
                        class: pb::FailureClass::Unspecified,
                        error: format!("the server exited during step {label} ({status})"),
                        log_tail: session.server.log_tail(LOG_TAIL_BYTES),
                    });
                }
            }
        }
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            return Err(Ending::Failed {
                class: pb::FailureClass::Unspecified,
                error: format!("step {label}: {}", evalctl_common::error_chain(&err)),
                log_tail: session.server.log_tail(LOG_TAIL_BYTES),
            });
        }
    };
    let facts = match probe {
        None => None,
        Some(of) => match judge(of, &outcome.records) {
            Ok(facts) => Some(facts),
            Err(message) => {
                return Err(Ending::Failed {
                    class: pb::FailureClass::Unspecified,
                    error: format!("probe {label}: {message}"),
                    log_tail: String::new(),
                });
            }
        },
    };
    if let Some(reason) = step::failure(&outcome).filter(|_| probe.is_none()) {
        return Err(Ending::Failed {
            class: pb::FailureClass::Unspecified,
            error: format!("step {label}: {reason}"),
            log_tail: session.server.log_tail(LOG_TAIL_BYTES),
        });
    }
    let finished_at_ms = now_ms();
    let recorded = recorder
        .finish(telemetry::Throughput {
            output_tokens: Some(outcome.metrics.total_output_tokens),
            duration_s: Some(outcome.metrics.duration_s),
        })
        .await;
    let context = ResultContext {
        lease,
        step: spec,
        agent_id: &ctx.agent_id,
        simulated,
        served_model: &session.served_model,
        environment_json,
        started_at_ms,
        finished_at_ms,
    };
    let workload_facts = prefix_cache::facts(
        dataset_kind,
        &cache,
        &dataset,
        &outcome.records,
        recorded.as_ref().and_then(|t| t.summary.server.as_ref()),
    );
    let result = match step::result(
        &context,
        &outcome,
        recorded,
        Some(workload_facts),
        facts.clone(),
    ) {
        Ok(result) => result,
        Err(err) => {
            return Err(Ending::Failed {
                class: pb::FailureClass::Unspecified,
                error: format!("step {label}: failed to encode the result: {err}"),
                log_tail: String::new(),
            });
        }
    };
    let m = &outcome.metrics;
    info!(
        step = %label,
        completed = m.completed,
        failed = m.failed,
        output_tok_s = format_args!("{:.1}", m.output_token_throughput),
        ttft_p50_ms = format_args!("{:.2}", m.ttft_ms.map_or(f64::NAN, |s| s.p50)),
        "load step measured"
    );
    Ok((result, facts))
}

/// Judges a probe run's records against its search's goal.
fn judge(
    of: &ProbeOf<'_>,
    records: &[evalctl_results::RequestRecord],
) -> Result<ProbeFacts, String> {
    let judgment = evalctl_results::probe::judge(records, of.goal, of.axis == SearchAxis::Rate)?;
    Ok(ProbeFacts {
        search_step: of.search_step.to_owned(),
        axis: of.axis,
        run: ProbeRun {
            load: of.load,
            run: of.run,
            judgment,
        },
    })
}

/// Runs a harness step (`api: command`); its result, or how the unit ends instead.
async fn harness_step(
    ctx: &Ctx,
    lease: &pb::Lease,
    spec: &pb::StepSpec,
    session: &mut Session,
    environment_json: &str,
    slot: &LeaseSlot,
) -> Result<pb::StepResult, Ending> {
    let label = step::label(spec);
    let model = lease
        .config
        .as_ref()
        .and_then(|c| c.model.clone())
        .unwrap_or_default();
    let base_url = session.server.base_url();
    let work_dir = ctx.config.state_dir.join("harness");
    let run = harness::HarnessRun {
        step: spec,
        base_url: &base_url,
        model_path: &model.path,
        model_name: &model.name,
        served_model: &session.served_model,
        work_dir: &work_dir,
        stem: format!("{}-{}-a{}", lease.unit_id, spec.step_id, lease.attempt),
    };
    info!(step = %label, index = spec.index, "harness step started");
    let started_at_ms = now_ms();
    let outcome = match harness::run(&run, &slot.stop).await {
        Ok(outcome) => outcome,
        Err(harness::HarnessError::Cancelled) => return Err(Ending::Stopped),
        Err(harness::HarnessError::Failed { error, log_tail }) => {
            return Err(Ending::Failed {
                class: pb::FailureClass::Unspecified,
                error: format!("step {label}: {error}"),
                log_tail,
            });
        }
    };
    if let Some(status) = session.server.try_exit() {
        return Err(Ending::Failed {
            class: pb::FailureClass::Unspecified,
            error: format!("the server exited during step {label} ({status})"),
            log_tail: session.server.log_tail(LOG_TAIL_BYTES),
        });
    }
    let document = StepDocument {
        schema: STEP_DOCUMENT_SCHEMA,
        schema_minor: STEP_DOCUMENT_SCHEMA_MINOR,
        simulated: false,
        step_label: label.clone(),
        metrics: None,
        harness_metrics: outcome.metrics,
        scores: outcome.scores,
        tokenization: None,
        connections_opened: 0,
        served_model: session.served_model.clone(),
        started_at_ms,
        finished_at_ms: now_ms(),
        telemetry: None,
        workload: None,
        probe: None,
        search: None,
    };
    let context = ResultContext {
        lease,
        step: spec,
        agent_id: &ctx.agent_id,
        simulated: false,
        served_model: &session.served_model,
        environment_json,
        started_at_ms,
        finished_at_ms: document.finished_at_ms,
    };
    let result_json = serde_json::to_string(&document).map_err(|e| Ending::Failed {
        class: pb::FailureClass::Unspecified,
        error: format!("step {label}: failed to encode the result: {e}"),
        log_tail: String::new(),
    })?;
    info!(step = %label, command = %outcome.command, "harness step finished");
    Ok(step::protocol_result(&context, result_json, Vec::new()))
}

/// Tells the coordinator how the unit ended and cleans up.
async fn finish(
    ctx: &Arc<Ctx>,
    lease: &pb::Lease,
    slot: &LeaseSlot,
    ending: Ending,
    session: Option<Session>,
) {
    let mut keep_server = false;
    let mut forget_stored_lease = true;
    match ending {
        Ending::Finished => {
            // Complete only once the coordinator holds every result.
            if outbox::wait_delivered(ctx, &lease.lease_id, &slot.stop).await {
                match complete(ctx, lease).await {
                    Ok(()) => {
                        slot.mark_ended();
                        keep_server = true;
                    }
                    // A resubmission added steps while the unit ran: give the lease back so
                    // the unit is leased again with its whole step list.
                    Err(status) if status.message().contains("cannot complete") => {
                        keep_server = release(ctx, lease, "steps-added").await;
                        if keep_server {
                            slot.mark_ended();
                        }
                    }
                    Err(_) => {}
                }
            } else {
                forget_stored_lease = !stop_and_release(ctx, lease, slot).await;
            }
        }
        Ending::Failed {
            error,
            log_tail,
            class,
        } => {
            warn!(%error, "unit failed");
            // Results of the steps that did finish are kept: deliver them first.
            let flush = CancellationToken::new();
            let deadline = tokio::time::sleep(ctx.config.flush_timeout);
            tokio::select! {
                _ = outbox::wait_delivered(ctx, &lease.lease_id, &flush) => {}
                _ = deadline => {}
                _ = slot.stop.cancelled() => {}
            }
            if slot.stop_reason() != Some(StopReason::Revoked)
                && fail(ctx, lease, &error, &log_tail, class).await
            {
                slot.mark_ended();
            }
        }
        Ending::Stopped => {
            forget_stored_lease = !stop_and_release(ctx, lease, slot).await;
        }
    }
    if let Some(session) = session {
        if keep_server && ctx.config.keep_warm && slot.stop_reason().is_none() {
            ctx.warm.lock().await.put(session);
        } else {
            servers::retire(ctx, session).await;
        }
    }
    if forget_stored_lease && let Err(err) = ctx.state.remove_lease(&lease.lease_id) {
        warn!(error = %err, "failed to forget the lease in the state");
    }
}

/// For a stopped unit: a revoked lease is dropped; otherwise results are flushed (up to the
/// flush timeout) and the lease released. Returns true when the lease should stay stored
/// (a shutdown whose release did not reach the coordinator: the next start resumes it if it
/// is still valid).
async fn stop_and_release(ctx: &Ctx, lease: &pb::Lease, slot: &LeaseSlot) -> bool {
    let reason = slot.stop_reason().unwrap_or(StopReason::Shutdown);
    match reason {
        StopReason::Revoked => {
            info!("lease revoked by the coordinator; unit stopped");
            false
        }
        StopReason::Shutdown | StopReason::Preempted => {
            let never = CancellationToken::new();
            let _ = tokio::time::timeout(
                ctx.config.flush_timeout,
                outbox::wait_delivered(ctx, &lease.lease_id, &never),
            )
            .await;
            let why = if reason == StopReason::Preempted {
                "preempted"
            } else {
                "shutdown"
            };
            let released = release(ctx, lease, why).await;
            if released {
                slot.mark_ended();
            }
            !released
        }
    }
}

/// Completes the lease.
async fn complete(ctx: &Ctx, lease: &pb::Lease) -> Result<(), tonic::Status> {
    let request = pb::CompleteRequest {
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
    };
    match call_with_patience(|| {
        let mut client = ctx.client.clone();
        let request = request.clone();
        async move { client.complete(request).await }
    })
    .await
    {
        Ok(_) => {
            info!("unit complete");
            Ok(())
        }
        Err(status) => {
            warn!(code = ?status.code(), message = status.message(), "the coordinator refused completion");
            Err(status)
        }
    }
}

/// Reports the unit's own failure; true when the coordinator took the report.
async fn fail(
    ctx: &Ctx,
    lease: &pb::Lease,
    error: &str,
    log_tail: &str,
    class: pb::FailureClass,
) -> bool {
    let request = pb::FailRequest {
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
        error: error.to_owned(),
        log_tail: log_tail.to_owned(),
        failure_class: class.into(),
    };
    match call_with_patience(|| {
        let mut client = ctx.client.clone();
        let request = request.clone();
        async move { client.fail(request).await }
    })
    .await
    {
        Ok(response) => {
            info!(
                will_retry = response.into_inner().will_retry,
                "failure reported"
            );
            true
        }
        Err(status) => {
            warn!(
                code = ?status.code(),
                message = status.message(),
                "failed to report the unit's failure; the lease will expire"
            );
            false
        }
    }
}

/// Gives the lease back; true when the coordinator took it.
pub async fn release(ctx: &Ctx, lease: &pb::Lease, reason: &str) -> bool {
    let request = pb::ReleaseRequest {
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
        reason: reason.to_owned(),
    };
    match call_with_patience(|| {
        let mut client = ctx.client.clone();
        let request = request.clone();
        async move { client.release(request).await }
    })
    .await
    {
        Ok(_) => {
            info!(reason, "lease released");
            true
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            // Not ours any more: nothing to give back.
            info!(
                message = status.message(),
                "lease already ended at the coordinator"
            );
            true
        }
        Err(status) => {
            warn!(code = ?status.code(), message = status.message(), "failed to release the lease");
            false
        }
    }
}

/// Retries `call` on transport-level failures (coordinator restarting) for a while.
async fn call_with_patience<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + END_CALL_PATIENCE;
    let mut delay = Duration::from_millis(200);
    loop {
        match call().await {
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ) && tokio::time::Instant::now() + delay < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            answer => return answer,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
