//! evalctl coordinator: expands matrix files into units, stores campaigns, leases units
//! to agents and serves the `CampaignService`, `AgentService` and `TokenService` gRPC APIs
//! behind TLS, bearer tokens and roles.

pub mod args;
pub mod auth;
pub mod config;
pub mod connections;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod limits;
pub mod logging;
pub mod matrix;
pub mod metrics;
pub mod notify;
pub mod reaper;
pub mod schedule;
pub mod series;
pub mod server;
pub mod store;
pub mod ticker;
pub mod tls;
pub mod work;
