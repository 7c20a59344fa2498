//! Opening SQLite connections with the store's settings.
//!
//! SQLite ignores a pragma it does not know without a word, so every setting here is read
//! back by a test, and `journal_mode` is checked at open.

use std::path::Path;
use std::time::Duration;

use evalctl_common::sqlite;
use rusqlite::{Connection, OpenFlags};

use super::error::StoreError;

/// How the database file is named in errors.
const FILE: &str = "database";

/// How long a connection waits for a lock held by another connection before `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache of the writer, in KiB: more than the ~30 MB a 100,000-unit campaign writes,
/// so such a transaction never spills dirty pages to the WAL before its commit.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Page cache of each reader, in KiB.
const READER_CACHE_KIB: i64 = 16 * 1024;

/// Opens (creating if needed) the database for the writer thread.
///
/// Durability: `journal_mode = WAL` with `synchronous = NORMAL`. A commit appends its pages
/// to the WAL with `write(2)` before `COMMIT` returns, and SQLite fsyncs only at checkpoints.
/// The written pages are in the operating system's page cache from that moment, so a
/// process that dies right after (`kill -9`, a panic, OOM) loses nothing: the next open
/// replays the WAL. Only a power loss or kernel crash can lose the last commits, and even
/// then the database stays consistent. That is the trade the coordinator wants: a commit
/// costs no fsync, which is what lets it batch thousands of writes per second.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = sqlite::open_read_write(path, FILE)?;
    sqlite::enable_wal(&conn)?;
    sqlite::set_pragma(&conn, "synchronous = NORMAL", "synchronous", "NORMAL")?;
    // The writer checkpoints after answering, not inside COMMIT (see `writer`).
    sqlite::set_pragma(&conn, "wal_autocheckpoint = 0", "wal_autocheckpoint", 0)?;
    sqlite::set_pragma(&conn, "cache_size", "cache_size", -WRITER_CACHE_KIB)?;
    common(&conn)?;
    Ok(conn)
}

/// Opens a read-only connection to a database the writer has created and migrated.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = sqlite::open(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        FILE,
    )?;
    sqlite::set_pragma(&conn, "query_only = ON", "query_only", true)?;
    sqlite::set_pragma(&conn, "cache_size", "cache_size", -READER_CACHE_KIB)?;
    common(&conn)?;
    Ok(conn)
}

/// Settings of every connection.
fn common(conn: &Connection) -> Result<(), StoreError> {
    sqlite::set_pragma(conn, "foreign_keys = ON", "foreign_keys", true)?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite::pragma_failed("busy_timeout"))?;
    sqlite::set_pragma(conn, "temp_store = MEMORY", "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The settings a test reads back from a connection.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pragmas {
    pub journal_mode: String,
    pub synchronous: i64,
    pub foreign_keys: i64,
    pub busy_timeout_ms: i64,
    pub query_only: i64,
    pub temp_store: i64,
    pub wal_autocheckpoint: i64,
}

#[cfg(test)]
pub(crate) fn read_pragmas(conn: &Connection) -> rusqlite::Result<Pragmas> {
    let get = |name: &str| conn.pragma_query_value(None, name, |row| row.get::<_, i64>(0));
    Ok(Pragmas {
        journal_mode: conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?,
        synchronous: get("synchronous")?,
        foreign_keys: get("foreign_keys")?,
        busy_timeout_ms: get("busy_timeout")?,
        query_only: get("query_only")?,
        temp_store: get("temp_store")?,
        wal_autocheckpoint: get("wal_autocheckpoint")?,
    })
}
