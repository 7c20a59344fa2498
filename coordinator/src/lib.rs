//! evalctl coordinator: expands matrix files into units, stores campaigns, leases units
//! to agents and serves the `CampaignService` and `AgentService` gRPC APIs.

pub mod domain;
pub mod matrix;
pub mod args;
pub mod config;
pub mod events;
pub mod logging;
pub mod signal;
pub mod store;
pub mod grpc;
pub mod server;
