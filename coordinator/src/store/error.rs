//! The store's error type.

use std::path::PathBuf;
use std::sync::Arc;

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

    /// The database file could not be opened.
    #[error("failed to open database `{}`", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// A connection setting could not be applied or did not take effect.
    #[error("failed to set `PRAGMA {pragma}`")]
    Pragma {
        /// The pragma, e.g. `journal_mode = WAL`.
        pragma: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// SQLite accepted a pragma but kept another value (e.g. WAL on a file system without
    /// shared memory).
    #[error("failed to set `PRAGMA {pragma}`: SQLite kept `{actual}`")]
    PragmaIgnored {
        /// The pragma, e.g. `journal_mode = WAL`.
        pragma: &'static str,
        /// The value SQLite reports instead.
        actual: String,
    },

    /// A schema migration failed; the database stays at the previous version.
    #[error("failed to apply migration `{name}`")]
    Migrate {
        /// Migration name, e.g. `0001_initial`.
        name: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer coordinator.
    #[error(
        "failed to open database: its schema version {found} is newer than the {known} this \
         coordinator knows (hint: run the newer coordinator, or restore a backup)"
    )]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: u32,
        /// The newest version this build has migrations for.
        known: u32,
    },

    /// A statement failed.
    #[error("failed to {action}")]
    Sql {
        /// What the store was doing, e.g. `insert units`.
        action: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

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

    /// A task on tokio's blocking pool (a read, or opening the database) panicked or was
    /// cancelled.
    #[error("failed to run a blocking store task")]
    BlockingTask {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Attaches what the store was doing to a rusqlite error.
pub(crate) trait SqlContext<T> {
    /// Maps the error to [`StoreError::Sql`] with `action`.
    fn sql(self, action: &'static str) -> Result<T, StoreError>;
}

impl<T> SqlContext<T> for Result<T, rusqlite::Error> {
    fn sql(self, action: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sql { action, source })
    }
}
