//! Inference servers of the agent: launching one for a lease, and keeping it warm after its
//! unit for a next unit with the same server configuration (a vLLM cold start costs
//! minutes; a campaign sweeping workloads over one configuration should pay it once).

use std::collections::BTreeMap;
use std::sync::Arc;

use evalctl_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Ctx;
use super::probe;
use crate::launcher::container::image::{self, ImageError, ImageIdentity};
use crate::launcher::container::plan::{ContainerPlan, UnitContainer, container_name};
use crate::launcher::container::{CLI_TIMEOUT, DEFAULT_PULL_TIMEOUT, labels};
use crate::launcher::{
    self, Diagnosis, FailureClass, LaunchSpec, RenderedCommand, RunningServer, TemplateValues,
};
use crate::state::LaunchIntent;

pub use crate::launcher::LOG_TAIL_BYTES;

/// A healthy server and what the agent learned about it.
#[derive(Debug)]
pub struct Session {
    /// The server.
    pub server: RunningServer,
    /// Hash of the configuration it serves (the unit id).
    pub config_hash: String,
    /// GPU indices it was started on.
    pub gpu_indices: Vec<u32>,
    /// Model name requests carry.
    pub served_model: String,
    /// Version the server reports.
    pub framework_version: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` it got.
    pub cuda_visible_devices: Option<String>,
    /// The exact launch command, shell-quoted: for a container, its `create`.
    pub launch_command: String,
    /// The container's image and runtime, for a framework with an `image`.
    pub container: Option<ContainerFacts>,
    /// How it started.
    pub start: launcher::StartPhases,
    /// The unit it was started for (a later unit reusing it paid no start).
    pub launched_for: String,
}

/// What a containerised server ran on.
#[derive(Debug, Clone)]
pub struct ContainerFacts {
    /// The image as the framework names it.
    pub image: String,
    /// Its id and digest.
    pub identity: ImageIdentity,
    /// The runtime, e.g. `podman 4.3.1`.
    pub runtime: String,
    /// The container's name.
    pub name: String,
}

/// How the server's process is started: the framework's command itself, or the container
/// runtime's client attached to the container that runs it.
struct Prepared {
    command: RenderedCommand,
    env: BTreeMap<String, String>,
    cuda_visible_devices: Option<String>,
    teardown: Vec<Vec<String>>,
    launch_command: String,
    container: Option<ContainerFacts>,
}

/// A server that could not be brought up: the unit fails with this.
#[derive(Debug)]
pub struct LaunchFailure {
    /// What went wrong.
    pub error: String,
    /// The end of the server's log, when it got that far.
    pub log_tail: String,
    /// The launch was stopped by the agent (shutdown, revoked lease), not by the server.
    pub cancelled: bool,
    /// What kind of failure it was, when the log or the OS error tell.
    pub diagnosis: Option<Diagnosis>,
}

/// Servers kept running after their unit.
#[derive(Debug, Default)]
pub struct WarmPool {
    sessions: Vec<Session>,
}

impl WarmPool {
    /// Configuration hashes of the warm servers (sent with lease requests).
    pub fn configs(&self) -> Vec<String> {
        self.sessions
            .iter()
            .map(|s| s.config_hash.clone())
            .collect()
    }

    /// Takes the warm server of `config_hash` on exactly `gpu_indices`, if any.
    fn take(&mut self, config_hash: &str, gpu_indices: &[u32]) -> Option<Session> {
        let at = self
            .sessions
            .iter()
            .position(|s| s.config_hash == config_hash && s.gpu_indices == gpu_indices)?;
        Some(self.sessions.swap_remove(at))
    }

    /// Removes the servers a new server on `gpu_indices` would compete with: those sharing a
    /// GPU, or for a CPU unit (no GPUs) every CPU server.
    fn take_conflicting(&mut self, gpu_indices: &[u32]) -> Vec<Session> {
        let (conflicting, kept) = std::mem::take(&mut self.sessions)
            .into_iter()
            .partition(|s| {
                if gpu_indices.is_empty() {
                    s.gpu_indices.is_empty()
                } else {
                    s.gpu_indices.iter().any(|i| gpu_indices.contains(i))
                }
            });
        self.sessions = kept;
        conflicting
    }

    /// Removes every warm server.
    pub fn take_all(&mut self) -> Vec<Session> {
        std::mem::take(&mut self.sessions)
    }

    /// Keeps a server for later.
    pub fn put(&mut self, session: Session) {
        self.sessions.push(session);
    }
}

/// A healthy server for `lease`: the warm one of its configuration when there is one and it
/// still answers, else a fresh launch (after stopping warm servers it would compete with).
pub async fn obtain(
    ctx: &Arc<Ctx>,
    lease: &pb::Lease,
    stop: &CancellationToken,
) -> Result<Session, LaunchFailure> {
    let warm = ctx
        .warm
        .lock()
        .await
        .take(&lease.config_hash, &lease.gpu_indices);
    if let Some(mut session) = warm {
        let alive = session.server.try_exit().is_none();
        if alive && health_ok(&session, lease).await {
            info!(lease = %lease.lease_id, unit = %lease.unit_id, "reusing the warm server");
            return Ok(session);
        }
        warn!(unit = %lease.unit_id, "the warm server stopped answering; launching a new one");
        retire(ctx, session).await;
    }
    let conflicting = ctx.warm.lock().await.take_conflicting(&lease.gpu_indices);
    for session in conflicting {
        retire(ctx, session).await;
    }
    launch(ctx, lease, stop).await
}

fn health_url(session: &Session, lease: &pb::Lease) -> String {
    let health = lease
        .config
        .as_ref()
        .and_then(|c| c.framework.as_ref())
        .map_or("/health", |f| f.health_path.as_str());
    format!("{}{health}", session.server.base_url())
}

/// The server's health endpoint answers 2xx (whatever the body).
async fn health_ok(session: &Session, lease: &pb::Lease) -> bool {
    let url = health_url(session, lease);
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri)).await,
        Ok(Ok(response)) if response.status().is_success()
    )
}

/// Stops a server and forgets its process group.
pub async fn retire(ctx: &Ctx, mut session: Session) {
    let pgid = session.server.record().pgid;
    let outcome = session.server.stop().await;
    info!(pgid, ?outcome, config = %session.config_hash, "server stopped");
    if let Err(err) = ctx.state.forget_server(pgid) {
        warn!(pgid, error = %err, "failed to forget the server's process group");
    }
}

async fn launch(
    ctx: &Arc<Ctx>,
    lease: &pb::Lease,
    stop: &CancellationToken,
) -> Result<Session, LaunchFailure> {
    let fail = |error: String| LaunchFailure {
        error,
        log_tail: String::new(),
        cancelled: false,
        diagnosis: None,
    };
    let config = lease
        .config
        .as_ref()
        .ok_or_else(|| fail("the lease carries no unit configuration".into()))?;
    let framework = config.framework.clone().unwrap_or_default();
    let host = ctx.config.server_host.clone();
    let port = launcher::free_port(&host)
        .map_err(|e| fail(format!("failed to find a free port on {host}: {e}")))?;
    let values = TemplateValues::for_unit(&lease.unit_id, config, &host, port, &lease.gpu_indices);
    let log_path = ctx
        .config
        .log_dir()
        .join(format!("{}-a{}.log", lease.unit_id, lease.attempt));
    // Recorded before the spawn, with its token in the server's environment (and on its
    // container's labels): a crash before the process group is recorded below still leaves
    // the next life a way to find what this started.
    let token = uuid::Uuid::new_v4().simple().to_string();
    let prepared = if framework.image.is_empty() {
        let command = launcher::render_command(&framework.command, &config.extra_args, &values)
            .map_err(|e| fail(format!("failed to render the server command: {e}")))?;
        let cuda_visible_devices = (!lease.gpu_indices.is_empty()).then(|| {
            lease
                .gpu_indices
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        });
        Prepared {
            launch_command: command.display(),
            command,
            env: framework.env.clone().into_iter().collect(),
            cuda_visible_devices,
            teardown: Vec::new(),
            container: None,
        }
    } else {
        prepare_container(ctx, lease, &host, port, &log_path, &token, stop).await?
    };
    let mut spec = LaunchSpec {
        command: prepared.command,
        env: prepared.env,
        cuda_visible_devices: prepared.cuda_visible_devices.clone(),
        host,
        port,
        health_path: framework.health_path.clone(),
        startup_timeout: std::time::Duration::from_millis(framework.startup_timeout_ms.max(1_000)),
        log_path,
        stop_grace: ctx.config.stop_grace,
        supervisor: ctx.config.supervisor.clone(),
        teardown: prepared.teardown,
    };
    info!(
        lease = %lease.lease_id,
        unit = %lease.unit_id,
        command = %prepared.launch_command,
        log = %spec.log_path.display(),
        "launching the server"
    );
    let launch = LaunchIntent {
        token,
        unit_id: lease.unit_id.clone(),
        command: spec.command.display(),
        log_path: spec.log_path.clone(),
    };
    spec.env
        .insert(launcher::LAUNCH_TOKEN_ENV.to_owned(), launch.token.clone());
    ctx.state.record_launch(&launch).map_err(|err| {
        fail(format!(
            "failed to record the launch in the agent state: {err}"
        ))
    })?;
    let mut server = match launcher::spawn(&spec).await {
        Ok(server) => server,
        Err(e) => {
            let _ = ctx.state.forget_launch(&launch.token);
            return Err(LaunchFailure {
                diagnosis: e.diagnosis(),
                ..fail(evalctl_common::error_chain(&e))
            });
        }
    };
    let mut record = server.record();
    record.unit_id = lease.unit_id.clone();
    if let Err(err) = ctx.state.record_launched_server(&record, &launch.token) {
        // Without the record a crash would leave the server orphaned: do not run it.
        server.stop().await;
        let _ = ctx.state.forget_launch(&launch.token);
        return Err(fail(format!(
            "failed to record the server's process group in the agent state: {err}"
        )));
    }
    let start = match server.wait_healthy(stop).await {
        Ok(start) => start,
        Err(err) => {
            let log_tail = err
                .log_tail()
                .map_or_else(|| server.log_tail(LOG_TAIL_BYTES), str::to_owned);
            let cancelled = stop.is_cancelled();
            server.stop().await;
            let _ = ctx.state.forget_server(record.pgid);
            return Err(LaunchFailure {
                error: err.summary(),
                diagnosis: launcher::diagnosis::diagnose(&log_tail),
                log_tail,
                cancelled,
            });
        }
    };
    let base_url = server.base_url();
    let served_model = probe::served_model(&base_url)
        .await
        .unwrap_or_else(|| values.model_path.clone());
    let framework_version = probe::framework_version(&base_url).await;
    info!(unit = %lease.unit_id, %base_url, %served_model, "server healthy");
    Ok(Session {
        server,
        config_hash: lease.config_hash.clone(),
        gpu_indices: lease.gpu_indices.clone(),
        served_model,
        framework_version,
        cuda_visible_devices: prepared.cuda_visible_devices,
        launch_command: prepared.launch_command,
        container: prepared.container,
        start,
        launched_for: lease.unit_id.clone(),
    })
}

/// The pull phase, the image's identity and the container's `create`, for a framework with
/// an `image`; the server process is then the runtime's `start --attach`, and the
/// supervisor's teardown stops and removes the container.
async fn prepare_container(
    ctx: &Ctx,
    lease: &pb::Lease,
    host: &str,
    port: u16,
    log_path: &std::path::Path,
    token: &str,
    stop: &CancellationToken,
) -> Result<Prepared, LaunchFailure> {
    let failure = |error: String, class: Option<FailureClass>, log_tail: String| LaunchFailure {
        diagnosis: class.map(|class| Diagnosis {
            class,
            line: error.lines().next().unwrap_or_default().to_owned(),
        }),
        error,
        log_tail,
        cancelled: false,
    };
    let config = lease.config.as_ref().cloned().unwrap_or_default();
    let framework = config.framework.clone().unwrap_or_default();
    let runtime = ctx.container_runtime.as_ref().map_err(|err| {
        failure(
            format!(
                "framework `{}` runs image `{}`: {err}",
                framework.name, framework.image
            ),
            Some(FailureClass::ImageUnavailable),
            String::new(),
        )
    })?;
    let spec = framework.container.clone().unwrap_or_default();
    let pull_timeout = match spec.pull_timeout_ms {
        0 => DEFAULT_PULL_TIMEOUT,
        ms => std::time::Duration::from_millis(ms),
    };
    if let Err(err) = image::ensure(
        runtime,
        &framework.image,
        spec.pull(),
        pull_timeout,
        log_path,
        stop,
    )
    .await
    {
        let class = match err {
            ImageError::Cancelled { .. } => {
                return Err(LaunchFailure {
                    cancelled: true,
                    ..failure(err.to_string(), None, String::new())
                });
            }
            ImageError::Inspect { .. } | ImageError::PullIo { .. } => None,
            _ => Some(FailureClass::ImageUnavailable),
        };
        return Err(failure(
            evalctl_common::error_chain(&err),
            class,
            launcher::read_tail(log_path, LOG_TAIL_BYTES).unwrap_or_default(),
        ));
    }
    let identity = image::identity(runtime, &framework.image)
        .await
        .map_err(|err| failure(evalctl_common::error_chain(&err), None, String::new()))?;
    let name = container_name(&lease.unit_id, token);
    let unit = UnitContainer {
        config: &config,
        unit_id: &lease.unit_id,
        host,
        port,
        gpu_indices: &lease.gpu_indices,
        name: name.clone(),
        labels: [
            (labels::AGENT, ctx.agent_id.as_str()),
            (labels::UNIT, lease.unit_id.as_str()),
            (labels::LEASE, lease.lease_id.as_str()),
            (labels::LAUNCH, token),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        hub_cache: ctx.config.container.hub_cache(),
    };
    let plan = ContainerPlan::for_unit(runtime.kind, &runtime.run_options, &unit)
        .map_err(|err| failure(evalctl_common::error_chain(&err), None, String::new()))?;
    let create = runtime.argv(&plan.create_args());
    let launch_command = RenderedCommand::from(create).display();
    launcher::append_log_line(
        log_path,
        &format!("creating the container: {launch_command}"),
    );
    if let Err(err) = runtime.output(&plan.create_args(), CLI_TIMEOUT).await {
        let stderr = err.stderr().to_owned();
        launcher::append_log_line(log_path, &format!("create failed: {stderr}"));
        let error = match err.exit_code() {
            Some(code) => format!(
                "the container runtime refused to create the server's container (exit \
                 status {code})"
            ),
            None => format!(
                "failed to create the server's container: {}",
                evalctl_common::error_chain(&err)
            ),
        };
        return Err(LaunchFailure {
            error,
            diagnosis: launcher::diagnosis::diagnose(&stderr),
            log_tail: launcher::read_tail(log_path, LOG_TAIL_BYTES).unwrap_or_default(),
            cancelled: false,
        });
    }
    info!(container = %name, image = %framework.image, id = %identity.id, "container created");
    Ok(Prepared {
        command: RenderedCommand::from(runtime.argv(&plan.start_args())),
        env: BTreeMap::new(),
        cuda_visible_devices: None,
        teardown: ContainerPlan::teardown_args(&name, ctx.config.stop_grace)
            .iter()
            .map(|args| runtime.argv(args))
            .collect(),
        launch_command,
        container: Some(ContainerFacts {
            image: framework.image.clone(),
            identity,
            runtime: runtime.describe(),
            name,
        }),
    })
}
