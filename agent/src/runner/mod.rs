//! The agent's lease loop: register with the coordinator, take leases while GPUs or CPU
//! slots are free, run each leased unit, and keep the coordinator informed.
//!
//! | module | job |
//! |---|---|
//! | [`config`] | settings: TOML file, defaults |
//! | [`unit`] | one lease: server, steps, then complete / fail / release |
//! | [`step`] | a step description → load-generator plan → step result |
//! | [`capacity`] | capacity search steps: the next probe from the stored runs, the verdict |
//! | [`prefix_cache`] | keeps a warm server's prefix cache out of a step: reset, salt or keep |
//! | [`harness`] | harness steps (`api: command`): an external program's JSON metrics |
//! | [`servers`] | launching servers and keeping them warm between units |
//! | [`outbox`] | streams the state's outbox to the coordinator, deletes what is acked |
//! | [`heartbeat`] | renews leases, learns revocations and drain orders |
//! | [`probe`] | asks a running server for its model name and version |
//! | [`environment`] | what every step result records about where it ran |
//!
//! Tasks and their order at shutdown: the lease loop stops taking leases; each unit task
//! stops its step (partial records are discarded), waits up to `flush_timeout` for its
//! results to be acknowledged, releases its lease and stops its server; then the heartbeat
//! and outbox tasks end. Heartbeats never pause while the agent drains or shuts down.
//!
//! Delivery: a finished step is written to the state (step finished + outbox batch, one
//! transaction) before anything is sent, and a batch leaves the outbox only when the
//! coordinator acknowledged it. A `kill -9` at any moment therefore loses nothing: the next
//! start re-sends the outbox, ends the server process groups the previous life left, and
//! resumes every lease the coordinator still counts as this agent's.

pub mod capacity;
pub mod config;
pub mod environment;
pub mod harness;
pub mod heartbeat;
pub mod outbox;
pub mod prefix_cache;
pub mod probe;
pub mod servers;
pub mod step;
pub mod unit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

pub use config::{AgentConfig, FileConfig};
/// The GPU source [`run`] takes, and how a binary finds the host's (NVML, a simulated spec,
/// or none).
pub use evalctl_telemetry::{GpuSource, detect as detect_gpus};

use evalctl_proto::client::{self, BearerToken};
use evalctl_telemetry::Inventory;

use crate::launcher;
use crate::launcher::container::{self, NoRuntime, Runtime};
use crate::preemption::{self, WatchConfig};
use crate::state::AgentState;

/// Largest gRPC message either way; results carry compressed per-request records.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long the container runtime's version may take to answer at start.
const RUNTIME_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent stopped on an error it cannot work around.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory could not be opened.
    #[error("failed to open the agent state in `{dir}`")]
    State {
        /// The directory.
        dir: std::path::PathBuf,
        /// The cause.
        #[source]
        source: crate::state::StateError,
    },
    /// The coordinator does not serve the agent protocol.
    #[error("the coordinator at {url} does not serve the agent service: {message}")]
    Incompatible {
        /// The URL.
        url: String,
        /// What it answered.
        message: String,
    },
    /// The coordinator refused the agent's credentials.
    #[error("the coordinator at {url} refused this agent: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// What it answered.
        message: String,
    },
    /// The TLS setup between agent and coordinator cannot work: the coordinator's
    /// certificate is not trusted, it refused the agent's certificate, or an `http://` URL
    /// points at its TLS port. Retrying would not help.
    #[error(
        "failed to connect to the coordinator at {url}: {description}; a TLS setup error does \
         not go away by retrying, so the agent stops (hint: {hint})"
    )]
    Tls {
        /// The URL.
        url: String,
        /// What is wrong, naming the files given.
        description: String,
        /// What to change.
        hint: String,
        /// What is wrong.
        problem: evalctl_proto::client::TlsProblem,
    },
    /// The coordinator URL, TLS files or token cannot be used.
    #[error("failed to set up the connection to the coordinator at {url}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: evalctl_proto::client::ClientError,
    },
}

/// The agent's client of the coordinator: one HTTP/2 connection, the bearer token on every
/// call.
pub type CoordinatorClient = AgentServiceClient<InterceptedService<Channel, BearerToken>>;

/// Why a unit task is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The coordinator no longer counts the lease as this agent's (expired, re-leased,
    /// cancelled): stop at once and tell the coordinator nothing.
    Revoked,
    /// The agent shuts down: flush, release the lease, stop the server.
    Shutdown,
    /// The host is being preempted: flush, release the lease as `preempted`.
    Preempted,
}

/// A lease the agent holds, as the other tasks see it.
#[derive(Debug)]
pub struct LeaseSlot {
    /// The lease.
    pub lease_id: String,
    /// Its fencing token.
    pub epoch: u64,
    /// GPUs it occupies.
    pub gpu_indices: Vec<u32>,
    /// Steps finished in this lease so far.
    pub steps_finished: AtomicU32,
    /// Index of the running step.
    pub current_step: AtomicU32,
    /// Cancelled when the unit must stop; `reason` says why.
    pub stop: CancellationToken,
    reason: OnceLock<StopReason>,
    /// The coordinator confirmed the lease's end (complete, fail or release): a heartbeat
    /// that then finds it gone reports nothing unusual.
    ended: AtomicBool,
}

impl LeaseSlot {
    fn new(lease: &pb::Lease) -> LeaseSlot {
        LeaseSlot {
            lease_id: lease.lease_id.clone(),
            epoch: lease.epoch,
            gpu_indices: lease.gpu_indices.clone(),
            steps_finished: AtomicU32::new(0),
            current_step: AtomicU32::new(0),
            stop: CancellationToken::new(),
            reason: OnceLock::new(),
            ended: AtomicBool::new(false),
        }
    }

    /// Records that the coordinator confirmed the lease's end.
    pub fn mark_ended(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// Whether the coordinator confirmed the lease's end.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// Asks the unit to stop; the first reason given wins.
    pub fn stop_with(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.stop.cancel();
    }

    /// Why the unit was asked to stop, once it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }
}

/// What every task of the agent shares.
pub struct Ctx {
    /// Effective configuration.
    pub config: AgentConfig,
    /// This agent's id.
    pub agent_id: String,
    /// Host name.
    pub hostname: String,
    /// The host's GPUs.
    pub inventory: Inventory,
    /// The source of GPU facts and samples (telemetry of each step).
    pub gpus: Arc<dyn GpuSource>,
    /// Local state: leases, finished steps, outbox, server process groups.
    pub state: Arc<AgentState>,
    /// Coordinator client (cheap to clone; one HTTP/2 connection).
    pub client: CoordinatorClient,
    /// Held leases by id.
    pub leases: Mutex<HashMap<String, Arc<LeaseSlot>>>,
    /// Woken when a batch enters the outbox.
    pub outbox_changed: Notify,
    /// Bumped whenever acknowledgements removed batches from the outbox.
    pub acked: watch::Sender<u64>,
    /// Woken when a lease ends (GPUs or a CPU slot became free).
    pub capacity: Notify,
    /// The coordinator asked this agent to drain.
    pub draining: AtomicBool,
    /// Servers kept warm between units.
    pub warm: tokio::sync::Mutex<servers::WarmPool>,
    /// Lease TTL and heartbeat interval the coordinator asked for.
    pub timing: Mutex<Timing>,
    /// The container runtime for frameworks with an `image`, found at start.
    pub container_runtime: Result<Runtime, NoRuntime>,
}

/// Lease timing set by the coordinator at registration.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Lease time to live.
    pub lease_ttl: Duration,
    /// Heartbeat interval (at most a third of the TTL).
    pub heartbeat_interval: Duration,
}

impl Ctx {
    /// A snapshot of the held leases.
    pub fn slots(&self) -> Vec<Arc<LeaseSlot>> {
        self.leases
            .lock()
            .expect("lease map lock")
            .values()
            .cloned()
            .collect()
    }

    /// GPU indices and CPU slots not held by a lease.
    fn free_capacity(&self) -> (Vec<u32>, u32) {
        let leases = self.leases.lock().expect("lease map lock");
        let busy: Vec<u32> = leases
            .values()
            .flat_map(|s| s.gpu_indices.iter().copied())
            .collect();
        let cpu_busy = leases.values().filter(|s| s.gpu_indices.is_empty()).count() as u32;
        let free = self
            .inventory
            .gpus
            .iter()
            .map(|g| g.index)
            .filter(|i| !busy.contains(i))
            .collect();
        (free, self.config.cpu_slots.saturating_sub(cpu_busy))
    }

    fn timing(&self) -> Timing {
        *self.timing.lock().expect("timing lock")
    }
}

/// Runs the agent until `shutdown` is cancelled (or, after a drain order, until its last
/// unit ended). Returns after releasing leases and stopping servers.
pub async fn run(
    config: AgentConfig,
    gpus: Arc<dyn GpuSource>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let state = AgentState::open(&config.state_dir).map_err(|source| AgentError::State {
        dir: config.state_dir.clone(),
        source,
    })?;
    if let Some(id) = &config.agent_id {
        state.set_agent_id(id).map_err(|source| AgentError::State {
            dir: config.state_dir.clone(),
            source,
        })?;
    }
    let agent_id = state.agent_id();
    end_orphan_servers(&state, config.stop_grace).await;
    let probe = config.container.clone();
    let container_runtime =
        tokio::task::spawn_blocking(move || Runtime::detect(&probe, RUNTIME_PROBE_TIMEOUT))
            .await
            .unwrap_or_else(|err| {
                Err(NoRuntime {
                    tried: format!("the runtime probe failed: {err}"),
                })
            });
    match &container_runtime {
        Ok(runtime) => {
            info!(runtime = %runtime.describe(), "container runtime found");
            end_orphan_containers(runtime, &agent_id, config.stop_grace).await;
        }
        Err(err) => {
            debug!(error = %err, "no container runtime; frameworks with an image cannot run here")
        }
    }

    let connect_error = |source| AgentError::Connect {
        url: config.coordinator.clone(),
        source,
    };
    let token = client::read_token(config.auth.token.as_deref(), config.token_file.as_deref())
        .map_err(connect_error)?;
    let bearer = BearerToken::new(token.as_deref()).map_err(connect_error)?;
    let channel = client::endpoint(&config.coordinator, &config.auth)
        .map_err(connect_error)?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let client = AgentServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let inventory = gpus.inventory();
    info!(
        agent = %agent_id,
        coordinator = %config.coordinator,
        gpus = inventory.gpus.len(),
        gpu_source = %inventory.source,
        cpu_slots = config.cpu_slots,
        "agent starting"
    );
    let ctx = Arc::new(Ctx {
        agent_id,
        hostname: hostname(),
        inventory,
        gpus,
        state: Arc::new(state),
        client,
        leases: Mutex::new(HashMap::new()),
        outbox_changed: Notify::new(),
        acked: watch::Sender::new(0),
        capacity: Notify::new(),
        draining: AtomicBool::new(false),
        warm: tokio::sync::Mutex::new(servers::WarmPool::default()),
        timing: Mutex::new(Timing {
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
        }),
        container_runtime,
        config,
    });

    // `stop` ends the lease loop: the shutdown signal, or a preemption notice. On a spot
    // host (a provider configured) a shutdown signal counts as a preemption too.
    let stop = CancellationToken::new();
    let agent_reason = Arc::new(OnceLock::new());
    let signal_reason = if ctx.config.preemption.is_some() {
        StopReason::Preempted
    } else {
        StopReason::Shutdown
    };
    tokio::spawn(stop_on(
        shutdown.clone(),
        ctx.config.preemption.clone(),
        signal_reason,
        stop.clone(),
        Arc::clone(&agent_reason),
    ));
    let shutdown = stop;

    // Background tasks outlive the units: they stop only after the units flushed.
    let background_stop = CancellationToken::new();
    let outbox_task = tokio::spawn(outbox::run(Arc::clone(&ctx), background_stop.clone()));
    match register(&ctx, &shutdown).await {
        Ok(true) => {}
        registered => {
            background_stop.cancel();
            let _ = outbox_task.await;
            return registered.map(|_| ());
        }
    }
    let heartbeat_task = tokio::spawn(heartbeat::run(Arc::clone(&ctx), background_stop.clone()));

    let mut units = JoinSet::new();
    resume_leases(&ctx, &mut units, &shutdown).await;
    acquire_loop(&ctx, &mut units, &shutdown).await;

    // Shutdown, preemption or drained: stop the units, let them flush and release.
    let reason = agent_reason.get().copied().unwrap_or(StopReason::Shutdown);
    if shutdown.is_cancelled() {
        // Say so at once: the coordinator stops offering this agent work.
        ctx.draining.store(true, Ordering::Relaxed);
        let _ = heartbeat::beat(&ctx, &background_stop).await;
    }
    for slot in ctx.slots() {
        slot.stop_with(reason);
    }
    while let Some(joined) = units.join_next().await {
        if let Err(err) = joined {
            error!(error = %err, "a unit task failed");
        }
    }
    for session in ctx.warm.lock().await.take_all() {
        servers::retire(&ctx, session).await;
    }
    outbox::flush(&ctx, ctx.config.flush_timeout).await;
    background_stop.cancel();
    let _ = heartbeat_task.await;
    let _ = outbox_task.await;
    info!(
        unacked = ctx.state.outbox_len().unwrap_or(0),
        "agent stopped"
    );
    Ok(())
}

/// Cancels `stop` on the shutdown signal or on a preemption notice, recording why.
async fn stop_on(
    shutdown: CancellationToken,
    watch: Option<WatchConfig>,
    signal_reason: StopReason,
    stop: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
) {
    let watcher_stop = stop.clone();
    let notice = async {
        match &watch {
            Some(config) => preemption::watch(config, &watcher_stop).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {
            let _ = reason.set(signal_reason);
            if signal_reason == StopReason::Preempted {
                warn!("shutdown signal on a spot host: treating it as a preemption");
            }
        }
        Some(notice) = notice => {
            let _ = reason.set(StopReason::Preempted);
            warn!(provider = %notice.provider, detail = %notice.detail, "preempted: stopping steps, delivering results, releasing leases");
        }
        _ = stop.cancelled() => {}
    }
    stop.cancel();
}

/// Registers until the coordinator answers or `shutdown` fires (then returns false). A
/// coordinator without the agent service is an error: retrying would not help.
async fn register(ctx: &Ctx, shutdown: &CancellationToken) -> Result<bool, AgentError> {
    let request = pb::RegisterRequest {
        agent_id: ctx.agent_id.clone(),
        hostname: ctx.hostname.clone(),
        gpus: ctx
            .inventory
            .gpus
            .iter()
            .map(|g| pb::GpuInfo {
                index: g.index,
                uuid: g.uuid.clone(),
                gpu_type: g.gpu_type.clone(),
                name: g.name.clone(),
                memory_gb: g.memory_gb,
            })
            .collect(),
        labels: ctx.config.labels.clone().into_iter().collect(),
        frameworks: ctx.config.frameworks.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        driver_version: ctx.inventory.driver_version.clone().unwrap_or_default(),
        cuda_version: ctx.inventory.cuda_version.clone().unwrap_or_default(),
    };
    let mut backoff = Backoff::new();
    loop {
        let mut client = ctx.client.clone();
        let call = client.register(request.clone());
        let answer = tokio::select! {
            answer = call => answer,
            _ = shutdown.cancelled() => return Ok(false),
        };
        match answer {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                return Err(AgentError::Incompatible {
                    url: ctx.config.coordinator.clone(),
                    message: status.message().to_owned(),
                });
            }
            // A token or certificate the coordinator refuses will not become valid by
            // retrying: stop, and say why.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                return Err(AgentError::Refused {
                    url: ctx.config.coordinator.clone(),
                    message: status.message().to_owned(),
                });
            }
            Ok(response) => {
                let response = response.into_inner();
                let lease_ttl = Duration::from_millis(response.lease_ttl_ms.max(1_000));
                let heartbeat_interval = Duration::from_millis(response.heartbeat_interval_ms)
                    .clamp(Duration::from_millis(100), lease_ttl / 3);
                *ctx.timing.lock().expect("timing lock") = Timing {
                    lease_ttl,
                    heartbeat_interval,
                };
                info!(agent = %ctx.agent_id, ?lease_ttl, ?heartbeat_interval, "registered");
                return Ok(true);
            }
            Err(status) => {
                if let Some(problem) = tls_setup_problem(&ctx.config.coordinator, &status).await {
                    let url = ctx.config.coordinator.clone();
                    return Err(AgentError::Tls {
                        description: problem.describe(&ctx.config.auth),
                        hint: problem.hint(&url),
                        url,
                        problem,
                    });
                }
                warn!(
                    code = ?status.code(),
                    message = status.message(),
                    "registration failed; retrying"
                );
                if !backoff.wait(shutdown).await {
                    return Ok(false);
                }
            }
        }
    }
}

/// The TLS problem behind a failed call, if it has one: a certificate error in its chain,
/// or a call to an `http://` URL that failed on the connection to a port speaking TLS.
async fn tls_setup_problem(
    url: &str,
    status: &tonic::Status,
) -> Option<evalctl_proto::client::TlsProblem> {
    if let Some(problem) = client::tls_problem(status) {
        return Some(problem);
    }
    (client::is_connection_failure(status) && client::serves_tls(url).await)
        .then_some(evalctl_proto::client::TlsProblem::PlainTextToTls)
}

/// Re-registers after the coordinator forgot this agent (a fresh database).
pub(crate) async fn reregister(ctx: &Ctx, shutdown: &CancellationToken) {
    warn!(agent = %ctx.agent_id, "the coordinator does not know this agent; registering again");
    if let Err(err) = register(ctx, shutdown).await {
        error!(error = %err, "registering again failed");
    }
}

/// Ends server process groups a previous life of the agent left running: the recorded
/// ones, and those of launches it died before recording.
async fn end_orphan_servers(state: &AgentState, grace: Duration) {
    end_unrecorded_launches(state, grace).await;
    let records = match state.servers() {
        Ok(records) => records,
        Err(err) => {
            warn!(error = %err, "failed to read recorded servers");
            return;
        }
    };
    if records.is_empty() {
        return;
    }
    for (record, outcome) in records
        .iter()
        .zip(launcher::end_orphans(&records, grace).await)
    {
        info!(pgid = record.pgid, unit = %record.unit_id, ?outcome, "server left by a previous run");
        if let Err(err) = state.forget_server(record.pgid) {
            warn!(pgid = record.pgid, error = %err, "failed to forget a server record");
        }
    }
}

/// Removes the containers a previous life left (labelled with this agent's id).
async fn end_orphan_containers(runtime: &Runtime, agent_id: &str, grace: Duration) {
    match container::reap::end_orphans(runtime, agent_id, grace).await {
        Ok(ended) => {
            for (name, outcome) in ended {
                match outcome {
                    Ok(()) => info!(container = %name, "container left by a previous run removed"),
                    Err(err) => {
                        warn!(container = %name, error = %err, "failed to remove a container left by a previous run")
                    }
                }
            }
        }
        Err(err) => warn!(error = %err, "failed to list containers left by a previous run"),
    }
}

/// Ends what a previous life started but died before recording (see
/// [`crate::state::LaunchIntent`]), and forgets those launches.
async fn end_unrecorded_launches(state: &AgentState, grace: Duration) {
    let launches = match state.launches() {
        Ok(launches) => launches,
        Err(err) => {
            warn!(error = %err, "failed to read recorded launches");
            return;
        }
    };
    for launch in launches {
        let outcomes = launcher::end_launch(
            &launch.token,
            &launch.command,
            &launch.log_path,
            &launch.unit_id,
            grace,
        )
        .await;
        info!(unit = %launch.unit_id, command = %launch.command, ?outcomes, "launch left unrecorded by a previous run");
        if outcomes.iter().all(launcher::OrphanOutcome::is_settled)
            && let Err(err) = state.forget_launch(&launch.token)
        {
            warn!(error = %err, "failed to forget a launch record");
        }
    }
}

/// Leases the previous life held: ask the coordinator which are still this agent's, resume
/// those at their first unfinished step, forget the rest.
async fn resume_leases(ctx: &Arc<Ctx>, units: &mut JoinSet<()>, shutdown: &CancellationToken) {
    let stored = match ctx.state.leases() {
        Ok(leases) => leases,
        Err(err) => {
            error!(error = %err, "failed to read stored leases; they will expire at the coordinator");
            return;
        }
    };
    if stored.is_empty() {
        return;
    }
    {
        let mut map = ctx.leases.lock().expect("lease map lock");
        for lease in &stored {
            map.insert(lease.lease_id.clone(), Arc::new(LeaseSlot::new(lease)));
        }
    }
    let mut backoff = Backoff::new();
    let valid = loop {
        match heartbeat::beat(ctx, shutdown).await {
            Ok(valid) => break valid,
            Err(status) => {
                warn!(
                    message = status.message(),
                    "cannot confirm stored leases yet; retrying"
                );
                if !backoff.wait(shutdown).await {
                    return;
                }
            }
        }
    };
    for lease in stored {
        if valid.contains(&lease.lease_id) {
            info!(lease = %lease.lease_id, unit = %lease.unit_id, "resuming a lease after restart");
            start_unit(ctx, units, lease);
        } else {
            info!(lease = %lease.lease_id, unit = %lease.unit_id, "a stored lease is no longer this agent's; forgetting it");
            forget_lease(ctx, &lease.lease_id);
        }
    }
}

/// Takes leases while there is room, until shutdown or a finished drain.
async fn acquire_loop(ctx: &Arc<Ctx>, units: &mut JoinSet<()>, shutdown: &CancellationToken) {
    let mut backoff = Backoff::new();
    loop {
        while let Some(joined) = units.try_join_next() {
            if let Err(err) = joined {
                error!(error = %err, "a unit task failed");
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        let capacity_freed = ctx.capacity.notified();
        if ctx.draining.load(Ordering::Relaxed) {
            if ctx.slots().is_empty() {
                info!("drained: every unit ended");
                return;
            }
            tokio::select! {
                _ = capacity_freed => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let (free_gpus, cpu_free) = ctx.free_capacity();
        if free_gpus.is_empty() && cpu_free == 0 {
            tokio::select! {
                _ = capacity_freed => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let wait = ctx.config.acquire_wait;
        let mut request = tonic::Request::new(pb::AcquireLeaseRequest {
            agent_id: ctx.agent_id.clone(),
            free_gpu_indices: free_gpus,
            warm_configs: ctx.warm.lock().await.configs(),
            wait_ms: wait.as_millis() as u64,
            cpu_slots_free: cpu_free,
        });
        request.set_timeout(wait + Duration::from_secs(10));
        let mut client = ctx.client.clone();
        let call = client.acquire_lease(request);
        let answer = tokio::select! {
            answer = call => answer,
            _ = shutdown.cancelled() => return,
        };
        match answer {
            Ok(response) => {
                backoff.reset();
                if let Some(lease) = response.into_inner().lease {
                    if let Err(err) = ctx.state.put_lease(&lease) {
                        // Without the stored lease a crash could not resume it; give it back.
                        error!(error = %err, lease = %lease.lease_id, "failed to store the lease; releasing it");
                        unit::release(ctx, &lease, "shutdown").await;
                        continue;
                    }
                    info!(
                        lease = %lease.lease_id,
                        unit = %lease.unit_id,
                        epoch = lease.epoch,
                        attempt = lease.attempt,
                        gpus = ?lease.gpu_indices,
                        "lease granted"
                    );
                    ctx.leases
                        .lock()
                        .expect("lease map lock")
                        .insert(lease.lease_id.clone(), Arc::new(LeaseSlot::new(&lease)));
                    start_unit(ctx, units, lease);
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                reregister(ctx, shutdown).await;
            }
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "lease request failed");
                if !backoff.wait(shutdown).await {
                    return;
                }
            }
        }
    }
}

fn start_unit(ctx: &Arc<Ctx>, units: &mut JoinSet<()>, lease: pb::Lease) {
    let slot = ctx
        .leases
        .lock()
        .expect("lease map lock")
        .get(&lease.lease_id)
        .cloned();
    let Some(slot) = slot else {
        return;
    };
    let ctx = Arc::clone(ctx);
    units.spawn(async move {
        unit::run(&ctx, lease, &slot).await;
        forget_lease(&ctx, &slot.lease_id);
    });
}

/// Drops a lease from memory (the unit task decided about the stored copy) and wakes the
/// lease loop: its GPUs or CPU slot are free.
fn forget_lease(ctx: &Ctx, lease_id: &str) {
    ctx.leases.lock().expect("lease map lock").remove(lease_id);
    ctx.capacity.notify_one();
}

/// Host name for registration and results.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Exponential backoff between retries of a call to the coordinator: 200 ms doubling to 5 s,
/// each wait drawn between half and all of that ("equal jitter"), so a fleet that lost its
/// coordinator at the same moment does not come back in lockstep.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(200),
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(200);
    }

    /// The wait before the next retry, and the step after it.
    fn draw(&mut self) -> Duration {
        let delay = self.next.mul_f64(rand::random_range(0.5..=1.0));
        self.next = (self.next * 2).min(Duration::from_secs(5));
        delay
    }

    /// Sleeps the current delay; false when `stop` fired first.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.draw();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_waits_between_half_and_all_of_a_doubling_step_capped_at_5s() {
        let mut backoff = Backoff::new();
        let mut step = Duration::from_millis(200);
        let mut draws = Vec::new();
        for _ in 0..10 {
            let delay = backoff.draw();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            draws.push(delay);
            step = (step * 2).min(Duration::from_secs(5));
        }
        assert!(draws[9] <= Duration::from_secs(5) && draws[9] >= Duration::from_millis(2500));
        // Agents that start retrying together spread out: 20 first draws are not all alike.
        let firsts: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| Backoff::new().draw()).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
        backoff.reset();
        assert!(backoff.draw() <= Duration::from_millis(200));
    }
}
