//! One module per `evalctl` subcommand.

pub mod agents;
pub mod bench;
pub mod control;
pub mod local;
pub mod results;
pub mod status;
pub mod submit;
pub mod watch;
