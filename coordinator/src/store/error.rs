//! The store's error type, and the helpers that attach what the store was doing to the
//! errors of SQLite and of JSON columns.

use std::path::PathBuf;
use std::sync::Arc;

use evalctl_common::sqlite::SqliteError;

/// What can go wrong in the store.
///
/// Messages say what failed ("failed to …") and never repeat their source; print the chain
/// to see the SQLite or I/O cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database's directory could not be created.
    #[error("failed to create directory `{}`", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Opening, migrating or querying the database failed (boxed: results of the store pass
    /// through every call, and SQLite's errors are large).
    #[error(transparent)]
    Sqlite(Box<SqliteError>),

    /// The transaction holding a batch of writes could not commit; none of them is stored.
    #[error("failed to commit a batch of writes")]
    Commit {
        /// The SQLite error, shared by every write of the batch.
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// A JSON column could not be encoded or decoded.
    #[error("failed to {action}")]
    Json {
        /// What the store was doing, e.g. `decode unit config`.
        action: &'static str,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },

    /// A column held a value the store never writes.
    #[error("failed to read {column}: unexpected value `{value}`")]
    BadValue {
        /// The column, e.g. `units.state`.
        column: &'static str,
        /// The value found.
        value: String,
    },

    /// The caller stopped sending a submission's units before the end (an encoding error
    /// or a panic); nothing of it is stored.
    #[error("failed to submit the campaign: its units stopped arriving")]
    SubmitAbandoned,

    /// The writer thread has stopped (it panicked, or the store is being dropped).
    #[error("failed to reach the store's writer thread: it has stopped")]
    WriterStopped,

    /// The writer thread could not be started.
    #[error("failed to start the store's writer thread")]
    SpawnWriter {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// No agent with this id has registered.
    #[error("agent {agent} is not registered (hint: call Register first)")]
    AgentNotFound {
        /// The agent id asked for.
        agent: String,
    },

    /// No lease with this id exists.
    #[error("lease {lease} does not exist")]
    LeaseNotFound {
        /// The lease id asked for.
        lease: String,
    },

    /// A write carried an epoch other than the unit's current one: the unit was leased
    /// again since (or the caller's epoch is wrong). Nothing was written.
    #[error(
        "stale epoch {epoch} for unit {unit} (lease {lease}): the unit was re-leased at epoch \
         {current}"
    )]
    StaleEpoch {
        /// The lease the write named.
        lease: String,
        /// The unit of that lease.
        unit: String,
        /// The epoch the write carried.
        epoch: u64,
        /// The unit's current epoch.
        current: u64,
    },

    /// The lease carries the unit's current epoch but has ended, so the write it asked
    /// for (complete, fail, release) no longer applies.
    #[error("lease {lease} of unit {unit} has ended ({reason})")]
    LeaseEnded {
        /// The lease.
        lease: String,
        /// Its unit.
        unit: String,
        /// How it ended: `expired`, `cancelled`, `succeeded`, …
        reason: String,
    },

    /// Results for a unit that was cancelled with its campaign.
    #[error("unit {unit} was cancelled (lease {lease}); its results are no longer wanted")]
    UnitCancelled {
        /// The lease the results came under.
        lease: String,
        /// The unit.
        unit: String,
    },

    /// A batch names another unit than its lease's.
    #[error("lease {lease} is for unit {expected}, not {got}")]
    UnitMismatch {
        /// The lease.
        lease: String,
        /// The lease's unit.
        expected: String,
        /// The unit the batch named.
        got: String,
    },

    /// A result names a step the unit does not have.
    #[error("unit {unit} has no step {step}")]
    UnknownStep {
        /// The unit.
        unit: String,
        /// The step id.
        step: String,
    },

    /// A result names a step that would be a run of a capacity search's probe, but does not
    /// match the search it names.
    #[error("unit {unit}: probe run {step} refused: {reason}")]
    BadProbe {
        /// The unit.
        unit: String,
        /// The step id.
        step: String,
        /// What does not match.
        reason: String,
    },

    /// `complete` while some steps have no stored result.
    #[error(
        "unit {unit} cannot complete: {missing} of {total} steps have no stored result \
         (hint: send their results first, or release the lease)"
    )]
    StepsMissing {
        /// The unit.
        unit: String,
        /// Steps without a stored result.
        missing: u64,
        /// Steps of the unit.
        total: u64,
    },

    /// A live token already has the name asked for.
    #[error(
        "a live token named `{name}` exists ({token_id}) (hint: pick another name, or revoke it first)"
    )]
    TokenNameTaken {
        /// The name.
        name: String,
        /// The live token that has it.
        token_id: String,
    },

    /// A task on tokio's blocking pool (a read, or opening the database) panicked or was
    /// cancelled.
    #[error("failed to run a blocking store task")]
    BlockingTask {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl From<SqliteError> for StoreError {
    fn from(err: SqliteError) -> StoreError {
        StoreError::Sqlite(Box::new(err))
    }
}

/// Attaches what the store was doing to a rusqlite error.
pub(crate) use evalctl_common::sqlite::SqlContext;

/// Decodes a JSON column.
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    text: &str,
    action: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { action, source })
}
