//! The agent state's error type.

use std::path::PathBuf;

use evalctl_common::sqlite::SqliteError;

/// What can go wrong with the agent's state file.
///
/// Messages say what failed ("failed to …") and never repeat their source; print the chain to
/// see the SQLite or I/O cause.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created.
    #[error("failed to create the state directory `{}`", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The lock file could not be opened or locked.
    #[error("failed to lock the state directory with `{}`", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Another process (or another `AgentState` in this one) holds the state directory.
    #[error(
        "failed to open the agent state in `{}`: another evalctl-agent uses it ({holder}) \
         (hint: stop that agent, or give each agent its own `state_dir`)",
        path.display()
    )]
    Busy {
        /// The state directory.
        path: PathBuf,
        /// Who holds it: "process 1234".
        holder: String,
    },

    /// Opening, migrating or querying the SQLite file failed.
    #[error(transparent)]
    Sqlite(#[from] SqliteError),

    /// A stored protobuf message does not decode.
    #[error("failed to decode a stored {what}")]
    Decode {
        /// The message, e.g. `lease`.
        what: &'static str,
        /// The prost error.
        #[source]
        source: prost::DecodeError,
    },

    /// A column held a value the state never writes.
    #[error("failed to read {column}: unexpected value `{value}`")]
    BadValue {
        /// The column, e.g. `servers.start_time_ticks`.
        column: &'static str,
        /// The value found.
        value: String,
    },

    /// A value cannot be stored (out of SQLite's integer range, an empty id).
    #[error("failed to store {what}: `{value}` is not valid")]
    Invalid {
        /// What was being stored, e.g. `agent id`.
        what: &'static str,
        /// The value.
        value: String,
    },

    /// `finish_step` for a lease the state does not hold (never put, or removed).
    #[error("failed to finish step `{step_id}`: lease `{lease_id}` is not in the agent state")]
    UnknownLease {
        /// The lease.
        lease_id: String,
        /// The step.
        step_id: String,
    },

    /// `finish_step` for a step already finished under the lease; nothing was stored.
    #[error("failed to finish step `{step_id}`: it is already finished under lease `{lease_id}`")]
    StepAlreadyFinished {
        /// The lease.
        lease_id: String,
        /// The step.
        step_id: String,
    },
}

/// Attaches what the state was doing to a rusqlite error.
pub(crate) use evalctl_common::sqlite::SqlContext;
