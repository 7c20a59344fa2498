//! Runs the coordinator: opens the store, binds the gRPC listener (TLS or plain text) and
//! the metrics endpoint, serves the campaign, agent and token services behind the
//! authorization layer with the lease reaper beside them until the shutdown signal, then
//! drains in-flight calls under a grace timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use evalctl_common::lock::{FileLock, LockError};
use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_server::AgentServiceServer;
use evalctl_proto::v1::campaign_service_server::CampaignServiceServer;
use evalctl_proto::v1::schedule_service_server::ScheduleServiceServer;
use evalctl_proto::v1::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::{AuthLayer, AuthSettings, Authenticator};
use crate::config::{Config, ConfigError};
use crate::connections::{Admission, CallCountLayer};
use crate::events::EventBus;
use crate::grpc::status::chain;
use crate::grpc::{AgentApi, CampaignApi, ScheduleApi, TokenApi};
use crate::limits::MAX_HEADER_LIST_BYTES;
pub use crate::limits::MAX_MESSAGE_BYTES;
use crate::metrics::{self, Metrics};
use crate::notify::Notifier;
use crate::reaper::Reaper;
use crate::schedule::Scheduler;
use crate::store::{Store, StoreError};
use crate::tls::{self, ServerTls, TlsError};
use crate::work::WorkSignal;

/// How often an HTTP/2 ping checks that a connection's peer is still there.
const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is closed.
const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// File descriptors kept for the database, logs and the metrics endpoint beyond the
/// connection cap.
const RESERVED_FDS: u64 = 256;

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is not acceptable.
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
    /// The TLS certificate, key or client CA could not be used.
    #[error("failed to set up TLS")]
    Tls(#[source] TlsError),
    /// The database could not be opened or migrated.
    #[error("failed to open database `{path}`")]
    Store {
        /// Database file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Another coordinator serves the same database.
    #[error(
        "failed to start on database `{}`: another evalctl-coordinator serves it (hint: stop \
         that coordinator, or give this one its own --data-dir)",
        database.display()
    )]
    Locked {
        /// Database file.
        database: std::path::PathBuf,
        /// Who holds the lock.
        #[source]
        source: LockError,
    },
    /// The database's lock file could not be created or locked.
    #[error("failed to lock database `{}`", database.display())]
    Lock {
        /// Database file.
        database: std::path::PathBuf,
        /// The cause.
        #[source]
        source: LockError,
    },
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("failed to build the gRPC reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The gRPC server failed while serving.
    #[error("gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Takes `<database>.lock` (creating the database's directory), so that a second coordinator
/// on the same database refuses to start, naming the first one's process id.
fn serve_lock(database: &Path) -> Result<FileLock, ServeError> {
    let lock_error = |source| ServeError::Lock {
        database: database.to_owned(),
        source,
    };
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    if let Some(parent) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| {
            lock_error(LockError::Io {
                path: path.clone(),
                source,
            })
        })?;
    }
    FileLock::acquire(&path).map_err(|source| match source {
        LockError::Held { .. } => ServeError::Locked {
            database: database.to_owned(),
            source,
        },
        LockError::Io { .. } => lock_error(source),
    })
}

/// A coordinator with its store open and its listeners bound, ready to serve.
pub struct Coordinator {
    config: Config,
    /// `<database>.lock`, held while this coordinator exists and serves.
    lock: FileLock,
    store: Store,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls: Option<Arc<ServerTls>>,
    /// SIGHUP, registered at bind time when TLS is on (so an early SIGHUP cannot kill the
    /// process with the default action).
    reload_signal: Option<Signal>,
}

impl Coordinator {
    /// Checks the configuration, loads TLS, opens (and migrates) the store and binds the
    /// listeners.
    pub async fn bind(config: Config) -> Result<Coordinator, ServeError> {
        config.check_transport().map_err(ServeError::Config)?;
        config.check_lease_ttl().map_err(ServeError::Config)?;
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(
                ServerTls::load(files.clone()).map_err(ServeError::Tls)?,
            )),
            None => None,
        };
        let mut config = config;
        config.connections.max_connections =
            fit_connections_to_fd_limit(config.connections.max_connections);
        let lock = serve_lock(&config.database)?;
        let store = Store::open(&config.database)
            .await
            .map_err(|source| ServeError::Store {
                path: config.database.clone(),
                source,
            })?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let reload_signal = if tls.is_some() {
            match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(err) => {
                    warn!(error = %err, "cannot listen for SIGHUP; TLS files will not be reloaded");
                    None
                }
            }
        } else {
            None
        };
        Ok(Coordinator {
            config,
            lock,
            store,
            listener,
            metrics_listener,
            tls,
            reload_signal,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The metrics endpoint's address, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The TLS configuration, when TLS is on ([`ServerTls::reload`] swaps in new files).
    pub fn tls(&self) -> Option<Arc<ServerTls>> {
        self.tls.clone()
    }

    /// The store, for in-process callers (`evalctl local`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The lease time to live agents are told.
    pub fn lease_ttl(&self) -> std::time::Duration {
        self.config.lease_ttl
    }

    /// Serves the campaign, agent and token services (with health and reflection) and runs
    /// the lease reaper until `shutdown` completes, then gives in-flight calls
    /// `config.shutdown_grace` to finish and checkpoints the database.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Coordinator {
            config,
            lock: _lock,
            store,
            listener,
            metrics_listener,
            tls,
            reload_signal,
        } = self;
        let addr = listener.local_addr().ok();
        let stop = CancellationToken::new();
        let events = EventBus::default();
        let work = WorkSignal::new();
        let metrics = Arc::new(Metrics::new());
        let auth = Arc::new(Authenticator::new(
            store.clone(),
            AuthSettings {
                open_without_tokens: config.open_without_tokens(),
                agent_client_cert: tls.as_ref().is_some_and(|t| t.mutual()),
                submit_rate: config.submit_rate,
                agent_cert_map: Arc::new(config.agent_cert_map.clone()),
            },
        ));
        announce_security(&config, &auth).await;

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<CampaignServiceServer<CampaignApi>>()
            .await;
        health_reporter
            .set_serving::<AgentServiceServer<AgentApi>>()
            .await;
        tokio::spawn(report_store_health(
            store.clone(),
            health_reporter.clone(),
            stop.clone(),
        ));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(ServeError::Reflection)?;
        let campaigns = CampaignServiceServer::new(CampaignApi::new(
            store.clone(),
            events.clone(),
            work.clone(),
            stop.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let agents = AgentServiceServer::new(AgentApi::new(
            store.clone(),
            events.clone(),
            work.clone(),
            config.lease_ttl,
            stop.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let scheduler = Scheduler::new(store.clone(), work.clone());
        let schedules =
            ScheduleServiceServer::new(ScheduleApi::new(store.clone(), scheduler.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let scheduler = tokio::spawn(scheduler.run(stop.clone()));
        let notifier =
            tokio::spawn(Notifier::new(store.clone(), config.notify.clone()).run(stop.clone()));
        let tokens = TokenServiceServer::new(TokenApi::new(store.clone(), Arc::clone(&auth)))
            .max_decoding_message_size(64 * 1024)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let reaper = tokio::spawn(
            Reaper::new(
                store.clone(),
                events.clone(),
                work.clone(),
                config.lease_ttl,
            )
            .run(stop.clone()),
        );
        if let Some(listener) = metrics_listener {
            info!(endpoint = %metrics::describe(listener.local_addr().ok()), "serving metrics");
            tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&metrics),
                store.clone(),
                stop.clone(),
            ));
        }
        if let (Some(tls), Some(hangups)) = (tls.clone(), reload_signal) {
            tokio::spawn(reload_on_sighup(tls, hangups, stop.clone()));
        }

        let server_stop = stop.clone();
        let admission = Admission::new(config.connections);
        let incoming = tls::incoming::incoming(
            listener,
            tls.clone(),
            admission,
            Arc::clone(&metrics),
            stop.clone(),
        );
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
                // A peer that vanished (power loss, a network partition) while a call is
                // open is noticed within these, and its connection freed.
                .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
                .layer(CallCountLayer)
                .layer(AuthLayer::new(Arc::clone(&auth), Arc::clone(&metrics)))
                .add_service(health_service)
                .add_service(reflection)
                .add_service(campaigns)
                .add_service(agents)
                .add_service(tokens)
                .add_service(schedules)
                .serve_with_incoming_shutdown(incoming, server_stop.cancelled_owned()),
        );
        info!(
            addr = ?addr,
            tls = tls.is_some(),
            mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()),
            database = %config.database.display(),
            lease_ttl = ?config.lease_ttl,
            "coordinator serving"
        );

        let mut server = server;
        tokio::select! {
            _ = shutdown => info!("shutdown requested; draining in-flight calls"),
            finished = &mut server => {
                stop.cancel();
                let _ = reaper.await;
                let _ = scheduler.await;
                let _ = notifier.await;
                return finished_result(finished);
            }
        }
        stop.cancel();
        if let Err(err) = reaper.await {
            warn!(error = %err, "the lease reaper task failed");
        }
        if let Err(err) = scheduler.await {
            warn!(error = %err, "the scheduler task failed");
        }
        if let Err(err) = notifier.await {
            warn!(error = %err, "the notifier task failed");
        }
        let outcome = match tokio::time::timeout(config.shutdown_grace, &mut server).await {
            Ok(finished) => finished_result(finished),
            Err(_) => {
                warn!(
                    grace = ?config.shutdown_grace,
                    "calls still in flight after the shutdown grace; closing them"
                );
                server.abort();
                Ok(())
            }
        };
        if let Err(err) = store.checkpoint().await {
            warn!(error = %chain(&err), "final WAL checkpoint failed");
        }
        info!("coordinator stopped");
        outcome
    }
}

/// Raises the soft limit on open files to the hard limit (as much as the connection cap
/// needs), and returns the connection cap that fits under it: each connection is a file
/// descriptor, and running out of them would fail the store and the log too, not only new
/// connections.
fn fit_connections_to_fd_limit(max_connections: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_FDS);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max_connections;
    };
    let mut limit = soft;
    if soft < wanted {
        let raised = wanted.min(hard);
        if setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() {
            limit = raised;
        }
    }
    let fits = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    if fits < max_connections {
        warn!(
            max_connections,
            open_files_limit = limit,
            effective = fits,
            "the open-files limit is too low for --max-connections; capping connections \
             at {fits} (hint: raise LimitNOFILE in the service unit, or ulimit -n)"
        );
        return fits.max(1);
    }
    max_connections
}

/// Says how callers are authenticated, and warns where that is weak.
async fn announce_security(config: &Config, auth: &Authenticator) {
    let enforced = match auth.enforced().await {
        Ok(enforced) => enforced,
        Err(refusal) => {
            warn!(refusal = refusal.kind(), "failed to read the token table");
            true
        }
    };
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        warn!(
            listen = %config.listen,
            "serving PLAIN TEXT off loopback (--insecure): traffic and tokens can be read \
             and altered on the network"
        );
    }
    if !enforced {
        if config.listen.ip().is_loopback() {
            info!("no API token exists: callers on this host need none until one is created");
        } else {
            warn!(
                "no API token exists and --insecure is set: ANYONE who reaches {} may do \
                 everything",
                config.listen
            );
        }
    } else if !config.open_without_tokens() {
        match auth.store().token_table().await {
            Ok(table) if table.live.is_empty() => warn!(
                "no live API token: every call is refused until an operator creates one \
                 (hint: evalctl-coordinator token create admin --role operator)"
            ),
            _ => {}
        }
    }
}

/// How often the gRPC health service looks at whether the store writes.
const STORE_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the gRPC health service's answer true: the campaign and agent services are
/// NOT_SERVING while the store cannot write (their calls would fail or stall), SERVING again
/// once it can.
async fn report_store_health(
    store: Store,
    reporter: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut serving = true;
    let mut ticks = tokio::time::interval(STORE_HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let writable = store.health().writable;
        if writable == serving {
            continue;
        }
        serving = writable;
        if writable {
            reporter
                .set_serving::<CampaignServiceServer<CampaignApi>>()
                .await;
            reporter.set_serving::<AgentServiceServer<AgentApi>>().await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
        } else {
            reporter
                .set_not_serving::<CampaignServiceServer<CampaignApi>>()
                .await;
            reporter
                .set_not_serving::<AgentServiceServer<AgentApi>>()
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
}

/// Re-reads the TLS files on every SIGHUP until `stop`.
async fn reload_on_sighup(tls: Arc<ServerTls>, mut hangups: Signal, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        match tls.reload() {
            Ok(()) => info!("SIGHUP: TLS certificate and key reloaded"),
            Err(err) => error!(
                error = %chain(&err),
                "SIGHUP: failed to reload TLS files; keeping the current ones"
            ),
        }
    }
}

fn finished_result(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match joined {
        Ok(result) => result.map_err(ServeError::Transport),
        Err(join) if join.is_cancelled() => Ok(()),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}
