//! `AgentService`: what agents on GPU hosts call. docs/leases.md describes the protocol
//! (each RPC and the statuses it answers with); the store enforces its rules.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_server::AgentService;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::convert;
use super::status::{chain, is_refusal, store_error};
use crate::domain::{
    AgentId, AgentRegistration, LeaseId, LeaseRequest, ReleaseReason, ReportedResult, ResultBatch,
    StepId, UnitId,
};
use crate::events::{CampaignEvent, EventBus};
use crate::store::{BatchOutcome, LeaseEnd, PendingWrite, Store, StoreError, UnitRef};
use crate::work::WorkSignal;

/// Longest an `AcquireLease` call waits for work, whatever `wait_ms` asks.
pub const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(30);

/// Longest id (agent, lease, unit, step) accepted, in bytes.
const MAX_ID_BYTES: usize = 256;
/// Most GPUs an agent may register, and GPU indices it may offer.
const MAX_GPUS: usize = 1024;
/// Most labels or frameworks an agent may register.
const MAX_LABELS: usize = 256;
/// Most warm configurations an `AcquireLease` may name.
const MAX_WARM_CONFIGS: usize = 64;
/// Most leases one heartbeat may report.
const MAX_HEARTBEAT_LEASES: usize = 4096;
/// Most results in one batch.
const MAX_BATCH_RESULTS: usize = 4096;
/// A `Fail` error longer than this is cut (its head is kept), in bytes.
const MAX_ERROR_BYTES: usize = 16 * 1024;
/// A `Fail` log tail longer than this is cut (its end is kept), in bytes.
const MAX_LOG_TAIL_BYTES: usize = 256 * 1024;
/// Records of one result may decompress to at most this many bytes.
const MAX_RECORDS_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Record blobs at least this large are counted on the blocking pool.
const LARGE_RECORDS_BYTES: usize = 256 * 1024;
/// Batches of one `ReportResults` stream queued in the store and not acknowledged yet;
/// the stream reads no further batch until the oldest is answered.
const RESULTS_IN_FLIGHT: usize = 32;
/// Acknowledgements waiting for the agent to read them.
const ACK_BUFFER: usize = 16;

/// The agent service over a store, an event bus and the work signal.
#[derive(Clone)]
pub struct AgentApi {
    store: Store,
    events: EventBus,
    work: WorkSignal,
    lease_ttl: Duration,
    shutdown: CancellationToken,
}

impl AgentApi {
    /// A service granting leases of `lease_ttl` from `store`, publishing progress to
    /// `events` and waking long polls on `work`; long polls and result streams end when
    /// `shutdown` is cancelled.
    pub fn new(
        store: Store,
        events: EventBus,
        work: WorkSignal,
        lease_ttl: Duration,
        shutdown: CancellationToken,
    ) -> AgentApi {
        AgentApi {
            store,
            events,
            work,
            lease_ttl,
            shutdown,
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Publishes an event of `unit`; `detail` is only formatted when someone watches
    /// (at thousands of grants a second, text nobody reads is wasted work).
    fn publish(&self, unit: &UnitRef, kind: &str, detail: impl FnOnce() -> String) {
        if !self.events.has_subscribers() {
            return;
        }
        let detail = detail();
        self.events.publish(CampaignEvent {
            campaign_id: unit.campaign.to_string(),
            kind: kind.to_owned(),
            unit_id: Some(unit.unit.to_string()),
            unit_label: Some(unit.label.clone()),
            detail,
        });
    }

    /// Validates and queues one result batch; the answer is awaited in stream order.
    async fn queue_batch(&self, batch: pb::ResultBatch) -> Result<InFlight, Status> {
        let template = pb::ResultAck {
            unit_id: batch.unit_id.clone(),
            attempt: batch.attempt,
            sequence: batch.sequence,
            accepted: false,
            error: String::new(),
        };
        let batch = match result_batch(batch).await {
            Ok(batch) => batch,
            Err(error) => {
                return Ok(InFlight::Refused(pb::ResultAck {
                    error: format!("invalid batch: {error}"),
                    ..template
                }));
            }
        };
        let pending = self.store.queue_results(batch).await.map_err(store_error)?;
        Ok(InFlight::Queued(template, pending))
    }

    /// The acknowledgement of a stored (or refused) batch; a store failure ends the
    /// stream so the agent sends the batch again on a new one.
    fn answer(
        &self,
        template: pb::ResultAck,
        outcome: Result<BatchOutcome, StoreError>,
    ) -> Result<pb::ResultAck, Status> {
        match outcome {
            Ok(outcome) => {
                for stored in &outcome.stored {
                    self.publish(&outcome.unit, "step_finished", || {
                        format!(
                            "step {} ({}) stored from agent {}: {} of {} steps done",
                            stored.index,
                            stored.step,
                            outcome.agent,
                            outcome.steps_done,
                            outcome.steps_total
                        )
                    });
                }
                debug!(
                    campaign = %outcome.unit.campaign,
                    unit = %outcome.unit.unit,
                    agent = %outcome.agent,
                    sequence = template.sequence,
                    stored = outcome.stored.len(),
                    already_stored = outcome.already_stored,
                    duplicate = outcome.duplicate,
                    "result batch stored"
                );
                Ok(pb::ResultAck {
                    accepted: true,
                    ..template
                })
            }
            Err(err) if is_refusal(&err) => {
                let error = chain(&err);
                info!(unit = %template.unit_id, sequence = template.sequence, %error, "result batch refused");
                Ok(pb::ResultAck { error, ..template })
            }
            Err(err) => Err(store_error(err)),
        }
    }
}

/// A batch of a `ReportResults` stream waiting for its acknowledgement.
enum InFlight {
    /// Refused before reaching the store.
    Refused(pb::ResultAck),
    /// Queued in the store; the acknowledgement template and the store's answer.
    Queued(pb::ResultAck, PendingWrite<BatchOutcome>),
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::ResultAck, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let agent = registration(req)?;
        let registered = self
            .store
            .register_agent(&agent)
            .await
            .map_err(store_error)?;
        info!(
            agent = %agent.id,
            hostname = %agent.hostname,
            gpus = agent.gpus.len(),
            version = %agent.version,
            new = registered.new,
            live_leases = registered.live_leases.len(),
            drain_requested = registered.drain_requested,
            "agent registered"
        );
        self.work.notify();
        Ok(Response::new(pb::RegisterResponse {
            lease_ttl_ms: self.ttl_ms(),
            heartbeat_interval_ms: self.ttl_ms() / 3,
        }))
    }

    async fn acquire_lease(
        &self,
        request: Request<pb::AcquireLeaseRequest>,
    ) -> Result<Response<pb::AcquireLeaseResponse>, Status> {
        let req = request.into_inner();
        id("agent_id", &req.agent_id)?;
        at_most("free_gpu_indices", req.free_gpu_indices.len(), MAX_GPUS)?;
        at_most("warm_configs", req.warm_configs.len(), MAX_WARM_CONFIGS)?;
        for warm in &req.warm_configs {
            id("warm_configs", warm)?;
        }
        let lease_request = LeaseRequest {
            agent: AgentId(req.agent_id),
            free_gpu_indices: req.free_gpu_indices,
            warm_configs: req.warm_configs.into_iter().map(UnitId).collect(),
            cpu_slots_free: req.cpu_slots_free,
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_ACQUIRE_WAIT);
        // Subscribed before looking, so work that appears while we look wakes us.
        let mut work = self.work.subscribe();
        loop {
            let asked = std::time::Instant::now();
            let granted = self
                .store
                .acquire_lease(&lease_request, self.lease_ttl)
                .await
                .map_err(store_error)?;
            if let Some(granted) = granted {
                crate::metrics::observe_lease_grant(asked.elapsed());
                info!(
                    campaign = %granted.unit.campaign,
                    unit = %granted.unit.unit,
                    lease = %granted.lease,
                    agent = %granted.agent,
                    epoch = granted.epoch,
                    attempt = granted.attempt,
                    gpus = ?granted.gpu_indices,
                    "lease granted"
                );
                self.publish(&granted.unit, "unit_leased", || {
                    format!(
                        "agent {}, attempt {}, epoch {}, GPUs {:?}, {} of {} steps done",
                        granted.agent,
                        granted.attempt,
                        granted.epoch,
                        granted.gpu_indices,
                        granted.finished_steps.len(),
                        granted.steps.len()
                    )
                });
                // There may be more work: the next waiter looks too.
                self.work.pass_on();
                return Ok(Response::new(pb::AcquireLeaseResponse {
                    lease: Some(convert::lease(&granted)),
                }));
            }
            tokio::select! {
                _ = work.wait() => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.shutdown.cancelled() => break,
            }
        }
        Ok(Response::new(pb::AcquireLeaseResponse { lease: None }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        id("agent_id", &req.agent_id)?;
        at_most("leases", req.leases.len(), MAX_HEARTBEAT_LEASES)?;
        let mut leases = Vec::with_capacity(req.leases.len());
        for progress in req.leases {
            id("leases.lease_id", &progress.lease_id)?;
            leases.push((LeaseId(progress.lease_id), progress.epoch));
        }
        let agent = AgentId(req.agent_id);
        let reply = self
            .store
            .heartbeat(&agent, &leases, req.draining, self.lease_ttl)
            .await
            .map_err(store_error)?;
        if !reply.revoked.is_empty() {
            info!(agent = %agent, revoked = ?reply.revoked, "heartbeat revoked leases");
        }
        Ok(Response::new(pb::HeartbeatResponse {
            valid_lease_ids: reply.valid.iter().map(ToString::to_string).collect(),
            revoked_lease_ids: reply.revoked.iter().map(ToString::to_string).collect(),
            drain: reply.drain,
            lease_ttl_ms: self.ttl_ms(),
        }))
    }

    type ReportResultsStream = AckStream;

    async fn report_results(
        &self,
        request: Request<Streaming<pb::ResultBatch>>,
    ) -> Result<Response<Self::ReportResultsStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let api = self.clone();
        tokio::spawn(async move { api.results_loop(inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let req = request.into_inner();
        let (lease, epoch) = fenced(&req.lease_id, req.epoch)?;
        let unit = self
            .store
            .complete(&lease, epoch)
            .await
            .map_err(store_error)?;
        info!(campaign = %unit.campaign, unit = %unit.unit, lease = %lease, "unit succeeded");
        self.publish(&unit, "unit_succeeded", || format!("lease {lease}"));
        // The lease's GPUs are free again; they are the completing agent's, which asks
        // again itself, so one waiter looking is enough.
        self.work.pass_on();
        Ok(Response::new(pb::CompleteResponse {}))
    }

    async fn fail(
        &self,
        request: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let req = request.into_inner();
        let (lease, epoch) = fenced(&req.lease_id, req.epoch)?;
        let error = if req.error.is_empty() {
            "the agent reported a failure without a message".to_owned()
        } else {
            head(&req.error, MAX_ERROR_BYTES)
        };
        let log_tail = tail(&req.log_tail, MAX_LOG_TAIL_BYTES);
        let outcome = self
            .store
            .fail(&lease, epoch, &error, &log_tail)
            .await
            .map_err(store_error)?;
        let unit = &outcome.unit;
        if outcome.will_retry {
            info!(campaign = %unit.campaign, unit = %unit.unit, lease = %lease, attempts = outcome.attempts, %error, "unit failed; will retry");
            self.publish(unit, "unit_retrying", || {
                format!(
                    "attempt {} of {} failed: {error}",
                    outcome.attempts, outcome.max_attempts
                )
            });
        } else {
            warn!(campaign = %unit.campaign, unit = %unit.unit, lease = %lease, attempts = outcome.attempts, %error, "unit failed");
            self.publish(unit, "unit_failed", || {
                format!("failed after {} attempts: {error}", outcome.attempts)
            });
        }
        self.work.notify();
        Ok(Response::new(pb::FailResponse {
            will_retry: outcome.will_retry,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let req = request.into_inner();
        let (lease, epoch) = fenced(&req.lease_id, req.epoch)?;
        id("reason", &req.reason)?;
        let reason = ReleaseReason::parse(&req.reason);
        let outcome = self
            .store
            .release(&lease, epoch, &reason)
            .await
            .map_err(store_error)?;
        let unit = &outcome.unit;
        info!(campaign = %unit.campaign, unit = %unit.unit, lease = %lease, %reason, gave_up = outcome.gave_up, "lease released");
        let kind = match outcome.end {
            LeaseEnd::Preempted => "unit_preempted",
            _ => "unit_released",
        };
        self.publish(unit, kind, || format!("lease {lease}: {reason}"));
        if outcome.gave_up {
            self.publish(unit, "unit_failed", || {
                format!(
                    "gave up after {} infrastructure failures",
                    crate::store::MAX_INFRA_ATTEMPTS
                )
            });
        }
        self.work.notify();
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}

impl AgentApi {
    /// Feeds one `ReportResults` call: batches are queued in the store in arrival order
    /// and acknowledged in that order once committed. At most [`RESULTS_IN_FLIGHT`]
    /// batches wait for their commit and [`ACK_BUFFER`] acknowledgements for the agent:
    /// past that the stream stops reading, so a slow agent or store pushes back.
    async fn results_loop(
        self,
        mut inbound: Streaming<pb::ResultBatch>,
        tx: mpsc::Sender<Result<pb::ResultAck, Status>>,
    ) {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut reading = true;
        loop {
            if !reading && in_flight.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                // The oldest batch's answer first: acknowledgements keep stream order.
                answered = oldest(&mut in_flight), if !in_flight.is_empty() => {
                    in_flight.pop_front();
                    let answer = match answered {
                        Answered::Refused(ack) => Ok(ack),
                        Answered::Stored(template, outcome) => self.answer(template, outcome),
                    };
                    let failed = answer.is_err();
                    if tx.send(answer).await.is_err() || failed {
                        return;
                    }
                }
                message = inbound.message(), if reading && in_flight.len() < RESULTS_IN_FLIGHT => {
                    match message {
                        Ok(Some(batch)) => match self.queue_batch(batch).await {
                            Ok(queued) => in_flight.push_back(queued),
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        },
                        Ok(None) => reading = false,
                        Err(status) => {
                            debug!(code = ?status.code(), message = status.message(), "result stream ended by the agent");
                            reading = false;
                        }
                    }
                }
                _ = self.shutdown.cancelled(), if reading => reading = false,
                _ = tx.closed() => return,
            }
        }
    }
}

/// What became of the oldest in-flight batch.
enum Answered {
    /// Refused before reaching the store: its acknowledgement.
    Refused(pb::ResultAck),
    /// The store answered: the acknowledgement template and the outcome.
    Stored(pb::ResultAck, Result<BatchOutcome, StoreError>),
}

/// Waits for the oldest in-flight batch's answer (forever when there is none).
fn oldest(in_flight: &mut VecDeque<InFlight>) -> impl Future<Output = Answered> + '_ {
    std::future::poll_fn(move |cx| match in_flight.front_mut() {
        None => Poll::Pending,
        Some(InFlight::Refused(ack)) => Poll::Ready(Answered::Refused(ack.clone())),
        Some(InFlight::Queued(template, pending)) => Pin::new(pending)
            .poll(cx)
            .map(|outcome| Answered::Stored(template.clone(), outcome)),
    })
}

// ---- validation ----

/// An id field: not empty, not absurdly long.
fn id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "field `{field}` is empty"
        )));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "field `{field}` is {} bytes long; at most {MAX_ID_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// A repeated field with at most `max` entries.
fn at_most(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::invalid_argument(format!(
            "field `{field}` has {len} entries; at most {max}"
        )));
    }
    Ok(())
}

/// The lease and epoch of a fenced call.
fn fenced(lease: &str, epoch: u64) -> Result<(LeaseId, u64), Status> {
    id("lease_id", lease)?;
    if epoch == 0 {
        return Err(Status::invalid_argument(
            "field `epoch` is 0; a lease's epoch starts at 1 (hint: send the epoch of the lease)",
        ));
    }
    Ok((LeaseId(lease.to_owned()), epoch))
}

/// A registration from the wire, checked.
fn registration(req: pb::RegisterRequest) -> Result<AgentRegistration, Status> {
    id("agent_id", &req.agent_id)?;
    for (field, value) in [
        ("hostname", &req.hostname),
        ("version", &req.version),
        ("driver_version", &req.driver_version),
        ("cuda_version", &req.cuda_version),
    ] {
        if value.len() > MAX_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "field `{field}` is {} bytes long; at most {MAX_ID_BYTES}",
                value.len()
            )));
        }
    }
    at_most("gpus", req.gpus.len(), MAX_GPUS)?;
    at_most("labels", req.labels.len(), MAX_LABELS)?;
    at_most("frameworks", req.frameworks.len(), MAX_LABELS)?;
    let mut indices = HashSet::new();
    for gpu in &req.gpus {
        if !indices.insert(gpu.index) {
            return Err(Status::invalid_argument(format!(
                "field `gpus` lists GPU index {} twice",
                gpu.index
            )));
        }
        id("gpus.gpu_type", &gpu.gpu_type)?;
    }
    for (key, value) in &req.labels {
        id("labels", key)?;
        if value.len() > MAX_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "field `labels`: the value of `{key}` is longer than {MAX_ID_BYTES} bytes"
            )));
        }
    }
    for framework in &req.frameworks {
        id("frameworks", framework)?;
    }
    Ok(AgentRegistration {
        id: AgentId(req.agent_id),
        hostname: req.hostname,
        gpus: req.gpus.into_iter().map(convert::agent_gpu).collect(),
        labels: req.labels.into_iter().collect(),
        frameworks: req.frameworks,
        version: req.version,
        driver_version: req.driver_version,
        cuda_version: req.cuda_version,
    })
}

/// A result batch from the wire, checked, with its records counted (which also checks
/// that they are zstd). The error says what is wrong with it.
async fn result_batch(batch: pb::ResultBatch) -> Result<ResultBatch, String> {
    let field_error = |status: Status| status.message().to_owned();
    id("lease_id", &batch.lease_id).map_err(field_error)?;
    id("unit_id", &batch.unit_id).map_err(field_error)?;
    if batch.epoch == 0 {
        return Err("field `epoch` is 0; a lease's epoch starts at 1".to_owned());
    }
    if batch.results.is_empty() {
        return Err("field `results` is empty".to_owned());
    }
    at_most("results", batch.results.len(), MAX_BATCH_RESULTS).map_err(field_error)?;
    let mut results = Vec::with_capacity(batch.results.len());
    for result in batch.results {
        id("results.step_id", &result.step_id).map_err(field_error)?;
        let step = result.step_id;
        if serde_json::from_str::<serde::de::IgnoredAny>(&result.result_json).is_err() {
            return Err(format!(
                "result of step {step}: field `result_json` is not a JSON document"
            ));
        }
        let environment_json = if result.environment_json.is_empty() {
            "{}".to_owned()
        } else if serde_json::from_str::<serde::de::IgnoredAny>(&result.environment_json).is_err() {
            return Err(format!(
                "result of step {step}: field `environment_json` is not a JSON document"
            ));
        } else {
            result.environment_json
        };
        let (records_zstd, record_count) = count_records(result.records_zstd)
            .await
            .map_err(|e| format!("result of step {step}: field `records_zstd`: {e}"))?;
        let (telemetry_zstd, telemetry_count) = count_records(result.telemetry_zstd)
            .await
            .map_err(|e| format!("result of step {step}: field `telemetry_zstd`: {e}"))?;
        results.push(ReportedResult {
            step_id: StepId(step),
            result_json: result.result_json,
            environment_json,
            records_zstd,
            record_count,
            telemetry_zstd,
            telemetry_count,
            finished_at_ms: result.finished_at_ms,
        });
    }
    Ok(ResultBatch {
        lease: LeaseId(batch.lease_id),
        epoch: batch.epoch,
        unit: UnitId(batch.unit_id),
        attempt: batch.attempt,
        sequence: batch.sequence,
        results,
    })
}

/// Counts the JSON Lines in a zstd blob (0 for an empty blob), large blobs on the
/// blocking pool; an error for a blob that is not zstd.
async fn count_records(blob: Vec<u8>) -> Result<(Vec<u8>, u64), String> {
    if blob.is_empty() {
        return Ok((blob, 0));
    }
    if blob.len() < LARGE_RECORDS_BYTES {
        let count = count_lines(&blob)?;
        return Ok((blob, count));
    }
    tokio::task::spawn_blocking(move || count_lines(&blob).map(|count| (blob, count)))
        .await
        .map_err(|e| format!("failed to count records: {e}"))?
}

fn count_lines(blob: &[u8]) -> Result<u64, String> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(blob)
        .map_err(|e| format!("not zstd data: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut total, mut last) = (0u64, 0u64, b'\n');
    loop {
        let n = decoder
            .read(&mut buf)
            .map_err(|e| format!("not valid zstd data: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_RECORDS_BYTES {
            return Err(format!(
                "records decompress to more than {MAX_RECORDS_BYTES} bytes"
            ));
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    if last != b'\n' {
        lines += 1;
    }
    Ok(lines)
}

/// The first `max` bytes of `text` (at a character boundary), marked when cut.
fn head(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

/// The last `max` bytes of `text` (at a character boundary), marked when cut.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("({start} bytes cut) …{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd_of(text: &str) -> Vec<u8> {
        zstd::encode_all(text.as_bytes(), 3).unwrap()
    }

    #[tokio::test]
    async fn records_are_counted_by_line_and_must_be_zstd() {
        assert_eq!(count_records(Vec::new()).await.unwrap().1, 0);
        assert_eq!(count_records(zstd_of("{}\n{}\n{}\n")).await.unwrap().1, 3);
        assert_eq!(count_records(zstd_of("{}\n{}")).await.unwrap().1, 2);
        let big: String = (0..100_000).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        assert_eq!(count_records(zstd_of(&big)).await.unwrap().1, 100_000);
        let err = count_records(b"{\"not\": \"zstd\"}\n".to_vec())
            .await
            .unwrap_err();
        assert!(err.contains("zstd"), "{err}");
    }

    #[test]
    fn long_texts_are_cut_at_character_boundaries() {
        assert_eq!(head("short", 10), "short");
        assert_eq!(head("ééé", 3), "é… (4 bytes cut)");
        assert_eq!(tail("ééé", 3), "(4 bytes cut) …é");
        assert_eq!(tail("abcdef", 2), "(4 bytes cut) …ef");
    }
}
