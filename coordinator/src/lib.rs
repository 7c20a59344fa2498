//! evalctl coordinator: expands matrix files into units, stores campaigns, leases units
//! to agents and serves the `CampaignService` and `AgentService` gRPC APIs.

pub mod domain;
