//! End-to-end tests: real `evalctl-coordinator` and `evalctl` processes on loopback,
//! real SQLite files, real signals. One test binary; helpers live in `harness/`.

mod agents;
mod cli_errors;
mod control_plane;
mod spot;
