//! End-to-end tests: real `evalctl-coordinator` and `evalctl` processes on loopback,
//! real SQLite files, real signals. One test binary; helpers live in `harness/`.

mod accuracy;
mod agents;
mod capacity;
mod chaos;
mod cli_errors;
mod compare;
mod containers;
mod control_plane;
mod gpu_proof;
mod layering;
mod llamacpp;
mod notifications;
mod preflight;
mod report;
mod results_export;
mod results_fixture;
mod schedules;
mod security;
mod spot;
mod starts;
mod store_health;
mod supervisor;
mod tls_errors;
mod workloads;
