//! Opening SQLite files with checked settings, and the errors of SQLite work that every store
//! of evalctl shares (the coordinator's database, the agent's state file).
//!
//! SQLite ignores a pragma it does not know without a word, and keeps its old journal mode
//! when a file system cannot do WAL; [`enable_wal`] reads the mode back, and each store reads
//! every setting back in a test.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, ToSql};

/// What can go wrong opening, migrating or querying a SQLite file.
///
/// Messages say what failed ("failed to …") and never repeat their source; print the chain to
/// see SQLite's own words. Each store wraps this in its own error type.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The file could not be opened.
    #[error("failed to open {file} `{}`", path.display())]
    Open {
        /// What the file is, e.g. "database" or "the agent state".
        file: &'static str,
        /// The file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// A connection setting could not be applied.
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
        /// The pragma.
        pragma: &'static str,
        /// The value SQLite reports instead.
        actual: String,
    },

    /// A schema migration failed; the file stays at the previous version.
    #[error("failed to apply migration `{name}` to {file}")]
    Migrate {
        /// What the file is, e.g. "the database".
        file: &'static str,
        /// Migration name, e.g. `0001_initial`.
        name: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// The file was written by a newer build.
    #[error(
        "failed to open {file}: its schema version {found} is newer than the {known} this \
         {program} knows (hint: {hint})"
    )]
    SchemaTooNew {
        /// What the file is.
        file: &'static str,
        /// Who writes it, e.g. "coordinator".
        program: &'static str,
        /// What the user can do.
        hint: &'static str,
        /// `PRAGMA user_version` of the file.
        found: u32,
        /// The newest version this build has migrations for.
        known: u32,
    },

    /// A statement failed.
    #[error("failed to {action}")]
    Sql {
        /// What the store was doing, e.g. `store the lease`.
        action: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
}

/// Attaches what the store was doing to a rusqlite error.
pub trait SqlContext<T> {
    /// Maps the error to [`SqliteError::Sql`] with `action`.
    fn sql(self, action: &'static str) -> Result<T, SqliteError>;
}

impl<T> SqlContext<T> for Result<T, rusqlite::Error> {
    fn sql(self, action: &'static str) -> Result<T, SqliteError> {
        self.map_err(|source| SqliteError::Sql { action, source })
    }
}

/// Opens `path` with `flags`; `file` names it in the error ("database", "the agent state").
pub fn open(path: &Path, flags: OpenFlags, file: &'static str) -> Result<Connection, SqliteError> {
    Connection::open_with_flags(path, flags).map_err(|source| SqliteError::Open {
        file,
        path: path.to_owned(),
        source,
    })
}

/// Opens `path` for reading and writing, creating it when absent, for one thread.
pub fn open_read_write(path: &Path, file: &'static str) -> Result<Connection, SqliteError> {
    open(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        file,
    )
}

/// Switches the file to write-ahead logging and checks that SQLite did.
pub fn enable_wal(conn: &Connection) -> Result<(), SqliteError> {
    const PRAGMA: &str = "journal_mode = WAL";
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(pragma_failed(PRAGMA))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::PragmaIgnored {
            pragma: PRAGMA,
            actual: mode,
        });
    }
    Ok(())
}

/// Sets `PRAGMA name = value`; `pragma` is how errors write it (`synchronous = FULL`).
pub fn set_pragma(
    conn: &Connection,
    pragma: &'static str,
    name: &str,
    value: impl ToSql,
) -> Result<(), SqliteError> {
    conn.pragma_update(None, name, value)
        .map_err(pragma_failed(pragma))
}

/// Maps the error of setting `pragma` to [`SqliteError::Pragma`].
pub fn pragma_failed(pragma: &'static str) -> impl FnOnce(rusqlite::Error) -> SqliteError {
    move |source| SqliteError::Pragma { pragma, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_and_pragmas_take_effect_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_read_write(&dir.path().join("x.sqlite"), "the test file").unwrap();
        enable_wal(&conn).unwrap();
        set_pragma(&conn, "synchronous = FULL", "synchronous", "FULL").unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap();
        assert_eq!(sync, 2);

        let missing = dir.path().join("no/such/dir/x.sqlite");
        let err = open_read_write(&missing, "the test file").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to open the test file `"),
            "{err}"
        );
    }

    #[test]
    fn an_in_memory_file_keeps_its_journal_mode_and_says_so() {
        let conn = Connection::open_in_memory().unwrap();
        let err = enable_wal(&conn).unwrap_err();
        assert!(
            matches!(&err, SqliteError::PragmaIgnored { actual, .. } if actual == "memory"),
            "{err}"
        );
    }

    #[test]
    fn sql_context_names_the_action() {
        let conn = Connection::open_in_memory().unwrap();
        let err = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .sql("store the thing")
            .unwrap_err();
        assert_eq!(err.to_string(), "failed to store the thing");
        assert!(std::error::Error::source(&err).is_some());
    }
}
