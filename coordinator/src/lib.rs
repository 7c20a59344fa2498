//! evalctl coordinator: expands matrix files into units, stores campaigns, leases units
//! to agents and serves the `CampaignService` and `AgentService` gRPC APIs.

pub mod args;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod logging;
pub mod matrix;
pub mod reaper;
pub mod server;
pub mod signal;
pub mod store;
pub mod work;
