//! One module per `evalctl` subcommand.

pub mod bench;
pub mod control;
pub mod status;
pub mod submit;
pub mod watch;
