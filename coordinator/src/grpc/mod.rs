//! The coordinator's gRPC layer: service implementations and the conversions between
//! wire messages and domain types. Nothing outside this module sees prost types.

pub mod agent;
mod agent_binding;
mod agent_convert;
mod audit;
pub mod campaign;
pub mod convert;
pub mod schedules;
pub mod status;
pub mod tokens;

pub use agent::AgentApi;
pub use campaign::CampaignApi;
pub use schedules::ScheduleApi;
pub use tokens::TokenApi;
