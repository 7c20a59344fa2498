//! One module per `evalctl` subcommand.

pub mod agents;
pub mod audit;
pub mod baseline;
pub mod bench;
pub mod compare;
pub mod control;
pub mod export;
pub mod local;
pub mod plan;
pub mod recommend;
pub mod report;
pub mod results;
pub mod schedule;
pub mod status;
pub mod submit;
pub mod token;
pub mod watch;
