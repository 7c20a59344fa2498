//! Helpers of the load generator's integration tests.

pub mod scripted_server;
