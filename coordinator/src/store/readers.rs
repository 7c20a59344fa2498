//! Read connections: a small pool of read-only connections, used on tokio's blocking pool.
//!
//! In WAL mode readers never block the writer nor each other, and each read runs in its own
//! transaction so it sees one consistent snapshot, including every write whose answer has
//! already arrived.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::connection::open_reader;
use super::error::{SqlContext as _, StoreError};

/// Reads that run at once; more wait for a connection.
pub(crate) const READERS: usize = 4;

/// Read-only connections, opened on first use and kept.
pub(crate) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReaderPool {
    pub(crate) fn new(path: PathBuf) -> Arc<ReaderPool> {
        Arc::new(ReaderPool {
            path,
            idle: Mutex::new(Vec::with_capacity(READERS)),
            permits: Semaphore::new(READERS),
        })
    }

    /// Runs `f` on a read connection inside a read transaction.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the reader semaphore is never closed");
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let out = snapshot(&conn, f);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|source| StoreError::BlockingTask { source })?
    }

    /// Closes the idle connections (the store is being dropped): the writer's connection
    /// is then the last one, and closing it checkpoints and removes the WAL file.
    pub(crate) fn close_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(conn);
    }
}

/// Runs `f` inside `BEGIN … COMMIT` so all its statements see the same snapshot.
fn snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn
        .unchecked_transaction()
        .sql("begin a read transaction")?;
    let out = f(&tx)?;
    // Ends the read transaction; a read-only transaction has nothing to commit.
    tx.commit().sql("end a read transaction")?;
    Ok(out)
}
