//! evalctl agent: runs on a GPU host, leases units from the coordinator, launches
//! inference servers, drives load at them, samples telemetry and streams results back.

pub mod client;
pub mod launcher;
pub mod loadgen;
pub mod preemption;
pub mod result;
pub mod runner;
pub mod signal;
pub mod sim_server;
pub mod state;
pub mod telemetry;
