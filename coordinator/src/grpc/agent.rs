//! `AgentService`: what agents on GPU hosts call. docs/leases.md describes the protocol
//! (each RPC and the statuses it answers with); the store enforces its rules. Under mutual
//! TLS each handler first checks the agent id or lease its call names against the client
//! certificate (`agent_binding`).

use std::collections::VecDeque;
use std::future::Future;
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

use super::agent_binding::Binding;
use super::agent_convert::{self, Failure, Heartbeat, Refusal};
use super::convert;
use super::status::{chain, is_refusal, store_error};
use crate::domain::LeaseId;
use crate::events::{CampaignEvent, EventBus};
use crate::limits;
use crate::store::{
    BatchOutcome, FailureKind, LeaseEnd, PendingWrite, Reaction, Store, StoreError, UnitRef,
};
use crate::work::WorkSignal;

/// Longest an `AcquireLease` call waits for work, whatever `wait_ms` asks.
pub const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(30);

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
    async fn queue_batch(
        &self,
        binding: &mut Binding,
        batch: pb::ResultBatch,
    ) -> Result<InFlight, Status> {
        let template = pb::ResultAck {
            unit_id: batch.unit_id.clone(),
            attempt: batch.attempt,
            sequence: batch.sequence,
            accepted: false,
            error: String::new(),
        };
        // The lease's agent first: a batch this certificate may not send is not unpacked.
        // (An overlong lease id is refused by the conversion.)
        if batch.lease_id.len() <= limits::MAX_SHORT_FIELD {
            let lease = LeaseId(batch.lease_id.clone());
            binding.check_lease(&self.store, &lease).await?;
        }
        let batch = match agent_convert::result_batch(batch).await {
            Ok(batch) => batch,
            Err(Refusal::ForGood(error)) => {
                return Ok(InFlight::Refused(pb::ResultAck {
                    error: format!("invalid batch: {error}"),
                    ..template
                }));
            }
            Err(Refusal::NotNow(status)) => return Err(status),
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
        let binding = Binding::of(&request, "Register");
        let agent = agent_convert::registration(request.into_inner())?;
        binding.check_agent(&self.store, &agent.id)?;
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
        let binding = Binding::of(&request, "AcquireLease");
        let (lease_request, wait) = agent_convert::lease_request(request.into_inner())?;
        binding.check_agent(&self.store, &lease_request.agent)?;
        let deadline = tokio::time::Instant::now() + wait.min(MAX_ACQUIRE_WAIT);
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
        let binding = Binding::of(&request, "Heartbeat");
        let Heartbeat {
            agent,
            leases,
            draining,
        } = agent_convert::heartbeat(request.into_inner())?;
        binding.check_agent(&self.store, &agent)?;
        let reply = self
            .store
            .heartbeat(&agent, &leases, draining, self.lease_ttl)
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
        let binding = Binding::of(&request, "ReportResults");
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let api = self.clone();
        tokio::spawn(async move { api.results_loop(binding, inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let mut binding = Binding::of(&request, "Complete");
        let req = request.into_inner();
        let (lease, epoch) = agent_convert::fenced(&req.lease_id, req.epoch)?;
        binding.check_lease(&self.store, &lease).await?;
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
        let mut binding = Binding::of(&request, "Fail");
        let Failure {
            lease,
            epoch,
            error,
            log_tail,
            class,
        } = agent_convert::failure(request.into_inner())?;
        binding.check_lease(&self.store, &lease).await?;
        let kind = failure_kind(class);
        let outcome = self
            .store
            .fail(&lease, epoch, &error, &log_tail, kind)
            .await
            .map_err(store_error)?;
        let unit = &outcome.unit;
        if outcome.will_retry {
            info!(campaign = %unit.campaign, unit = %unit.unit, lease = %lease, attempts = outcome.attempts, kind = kind.as_str(), %error, "unit failed; will retry");
            self.publish(unit, "unit_retrying", || match &outcome.reaction {
                Reaction::HostFault { .. } => format!(
                    "the agent's host cannot run it ({error}); it will not be given units needing the same until it registers again, and the unit waits for another agent"
                ),
                _ => format!(
                    "attempt {} of {} failed: {error}",
                    outcome.attempts, outcome.max_attempts
                ),
            });
        } else {
            warn!(campaign = %unit.campaign, unit = %unit.unit, lease = %lease, attempts = outcome.attempts, kind = kind.as_str(), %error, "unit failed");
            self.publish(unit, "unit_failed", || match &outcome.reaction {
                Reaction::FailedAtOnce if kind == FailureKind::BadDataset => format!(
                    "failed without retrying (a dataset file is malformed, as it would be on every attempt): {error}"
                ),
                Reaction::FailedAtOnce => format!(
                    "failed without retrying (the engine refused its command line, as it would on any agent): {error}"
                ),
                Reaction::DoesNotFit => format!(
                    "does not fit: the server ran out of memory (not retried): {error}"
                ),
                Reaction::HostFault { .. } => {
                    format!("failed: no other agent can run it: {error}")
                }
                Reaction::Counted => {
                    format!("failed after {} attempts: {error}", outcome.attempts)
                }
            });
            if let Reaction::HostFault { also_failed } = &outcome.reaction {
                for other in also_failed {
                    self.publish(other, "unit_failed", || {
                        format!(
                            "failed without running: no agent can run it ({error}, found by unit {})",
                            unit.unit
                        )
                    });
                }
            }
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
        let mut binding = Binding::of(&request, "Release");
        let (lease, epoch, reason) = agent_convert::release(request.into_inner())?;
        binding.check_lease(&self.store, &lease).await?;
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
        mut binding: Binding,
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
                        Ok(Some(batch)) => match self.queue_batch(&mut binding, batch).await {
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

/// The store's spelling of the agent's classification.
fn failure_kind(class: pb::FailureClass) -> FailureKind {
    match class {
        pb::FailureClass::Unspecified => FailureKind::Unrecognised,
        pb::FailureClass::BadArgument => FailureKind::BadArgument,
        pb::FailureClass::PortInUse => FailureKind::PortInUse,
        pb::FailureClass::OutOfMemory => FailureKind::OutOfMemory,
        pb::FailureClass::MissingModel => FailureKind::MissingModel,
        pb::FailureClass::MissingEngine => FailureKind::MissingEngine,
        pb::FailureClass::ImageUnavailable => FailureKind::ImageUnavailable,
        pb::FailureClass::BadDataset => FailureKind::BadDataset,
    }
}
