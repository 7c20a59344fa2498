//! evalctl agent: runs on a GPU host, leases units from the coordinator, launches
//! inference servers, drives load at them (`evalctl-loadgen`), samples telemetry
//! (`evalctl-telemetry`) and streams results back (`evalctl-results` documents).
//!
//! | module | job |
//! |---|---|
//! | [`cli`] | the `evalctl-agent` command line |
//! | [`runner`] | registration, the lease loop, steps, outbox and heartbeats |
//! | [`launcher`] | command templates, server process groups, health waits, orphans |
//! | [`state`] | the local SQLite state: leases, finished steps, unacknowledged results |
//! | [`preemption`] | spot preemption notices (AWS, GCP, Azure) |
//!
//! Architecture invariant: the agent meets the coordinator only on the wire
//! (`evalctl-proto`); it links no coordinator code.

pub mod cli;
pub mod doctor;
pub mod launcher;
pub mod preemption;
pub mod runner;
pub mod state;
