//! Runs the coordinator: opens the store, binds the gRPC listener, serves the campaign
//! and agent services with the lease reaper beside them until the shutdown signal, then
//! drains in-flight calls under a grace timeout.

use std::future::Future;
use std::net::SocketAddr;

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::agent_service_server::AgentServiceServer;
use evalctl_proto::v1::campaign_service_server::CampaignServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::events::EventBus;
use crate::grpc::{AgentApi, CampaignApi};
use crate::reaper::Reaper;
use crate::store::{Store, StoreError};
use crate::work::WorkSignal;

/// Largest message the coordinator decodes or encodes (a matrix file, a result batch with
/// its records travel in one message).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is not acceptable.
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
    /// The database could not be opened or migrated.
    #[error("failed to open database `{path}`")]
    Store {
        /// Database file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
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

/// A coordinator with its store open and its listener bound, ready to serve.
pub struct Coordinator {
    config: Config,
    store: Store,
    listener: TcpListener,
}

impl Coordinator {
    /// Checks the configuration, opens (and migrates) the store and binds the listener.
    pub async fn bind(config: Config) -> Result<Coordinator, ServeError> {
        config.check_transport().map_err(ServeError::Config)?;
        config.check_lease_ttl().map_err(ServeError::Config)?;
        let store = Store::open(&config.database)
            .await
            .map_err(|source| ServeError::Store {
                path: config.database.clone(),
                source,
            })?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Coordinator {
            config,
            store,
            listener,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The store, for in-process callers (`evalctl local`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The lease time to live agents are told.
    pub fn lease_ttl(&self) -> std::time::Duration {
        self.config.lease_ttl
    }

    /// Serves the campaign and agent services (with health and reflection) and runs the
    /// lease reaper until `shutdown` completes, then gives in-flight calls
    /// `config.shutdown_grace` to finish and checkpoints the database.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Coordinator {
            config,
            store,
            listener,
        } = self;
        let addr = listener.local_addr().ok();
        let stop = CancellationToken::new();
        let events = EventBus::default();
        let work = WorkSignal::new();

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<CampaignServiceServer<CampaignApi>>()
            .await;
        health_reporter
            .set_serving::<AgentServiceServer<AgentApi>>()
            .await;
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
        let reaper = tokio::spawn(
            Reaper::new(
                store.clone(),
                events.clone(),
                work.clone(),
                config.lease_ttl,
            )
            .run(stop.clone()),
        );

        let server_stop = stop.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(campaigns)
                .add_service(agents)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    server_stop.cancelled_owned(),
                ),
        );
        info!(
            addr = ?addr,
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
                return finished_result(finished);
            }
        }
        stop.cancel();
        if let Err(err) = reaper.await {
            warn!(error = %err, "the lease reaper task failed");
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
            warn!(error = %crate::grpc::status::chain(&err), "final WAL checkpoint failed");
        }
        info!("coordinator stopped");
        outcome
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
