//! The agent's local state: one SQLite file, `<state_dir>/agent.sqlite`.
//!
//! It holds what must survive `kill -9`: the agent's id, the leases it holds (whole, so a
//! restart resumes without the coordinator), the steps it finished, the result batches the
//! coordinator has not acknowledged yet (the outbox), and the server process groups it
//! started. The rules:
//!
//! - **A step is finished exactly when its batch is in the outbox.** [`AgentState::finish_step`]
//!   writes both in one transaction and assigns the batch its sequence number, unique and
//!   increasing for the agent's whole life.
//! - **A batch leaves the outbox only when acknowledged** ([`AgentState::ack`]); removing its
//!   lease does not remove it.
//! - Durability: WAL with `synchronous = FULL`, so a commit is on disk before it returns —
//!   a power cut does not lose an outbox batch either.
//!
//! The file is opened by one process at a time: an exclusive `flock` on
//! `<state_dir>/agent.lock` is held while the [`AgentState`] lives. Operations are a few small
//! statements each, run synchronously on one connection behind a mutex; async callers call
//! them directly. All of the agent's SQL lives in this module.

mod error;
mod migrations;

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use evalctl_common::lock::{FileLock, LockError};
use evalctl_common::sqlite;
use evalctl_proto::v1::{Lease, ResultBatch};
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use error::SqlContext as _;
pub use error::StateError;

use crate::launcher::ServerRecord;

/// The database file's name in the state directory.
pub const STATE_FILE: &str = "agent.sqlite";

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's local state. See the module docs.
#[derive(Debug)]
pub struct AgentState {
    inner: Mutex<Inner>,
    path: PathBuf,
    /// Held for the life of the state; dropping it unlocks.
    _lock: FileLock,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    agent_id: String,
}

impl AgentState {
    /// Opens (creating the directory and the file if needed) the state in `state_dir`, brings
    /// its schema up to date, and generates the agent id on first use.
    pub fn open(state_dir: &Path) -> Result<AgentState, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StateError::CreateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let lock = lock(state_dir)?;
        let path = state_dir.join(STATE_FILE);
        let mut conn = open_connection(&path)?;
        migrations::SCHEMA.migrate(&mut conn)?;
        let agent_id = load_or_create_agent_id(&conn)?;
        Ok(AgentState {
            inner: Mutex::new(Inner { conn, agent_id }),
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic mid-operation rolled its transaction back when it unwound.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's id: generated once (a UUID v4) or set with [`AgentState::set_agent_id`],
    /// and the same after every restart.
    pub fn agent_id(&self) -> String {
        self.lock().agent_id.clone()
    }

    /// Sets the agent id (when configured explicitly); it stays until set again.
    pub fn set_agent_id(&self, id: &str) -> Result<(), StateError> {
        if id.trim().is_empty() {
            return Err(StateError::Invalid {
                what: "agent id",
                value: id.to_owned(),
            });
        }
        let mut inner = self.lock();
        inner
            .conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('agent_id', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [id],
            )
            .sql("store the agent id")?;
        inner.agent_id = id.to_owned();
        Ok(())
    }

    /// Stores a lease (or replaces the stored one with the same id: a new epoch, a new
    /// expiry). Its finished steps are kept.
    pub fn put_lease(&self, lease: &Lease) -> Result<(), StateError> {
        let epoch = to_sql_int("lease epoch", lease.epoch)?;
        self.lock()
            .conn
            .execute(
                "INSERT INTO leases (lease_id, unit_id, epoch, lease) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (lease_id) DO UPDATE SET unit_id = excluded.unit_id, \
                 epoch = excluded.epoch, lease = excluded.lease",
                params![lease.lease_id, lease.unit_id, epoch, lease.encode_to_vec()],
            )
            .sql("store the lease")?;
        Ok(())
    }

    /// The stored leases, in the order they were first stored.
    pub fn leases(&self) -> Result<Vec<Lease>, StateError> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT lease FROM leases ORDER BY rowid")
            .sql("read the leases")?;
        let blobs = stmt
            .query_map([], |row| row.get::<_, Vec<u8>>(0))
            .sql("read the leases")?
            .collect::<Result<Vec<_>, _>>()
            .sql("read the leases")?;
        blobs
            .iter()
            .map(|blob| {
                Lease::decode(blob.as_slice()).map_err(|source| StateError::Decode {
                    what: "lease",
                    source,
                })
            })
            .collect()
    }

    /// Forgets a lease and its finished steps. Its batches stay in the outbox until acked.
    /// Removing an unknown lease is fine.
    pub fn remove_lease(&self, lease_id: &str) -> Result<(), StateError> {
        self.lock()
            .conn
            .execute("DELETE FROM leases WHERE lease_id = ?1", [lease_id])
            .sql("remove the lease")?;
        Ok(())
    }

    /// Marks `step_id` finished under `lease_id` and enqueues `batch` in the outbox, in one
    /// transaction; assigns the batch its `sequence` (unique and increasing over the agent's
    /// life) and returns it. The lease must be stored ([`StateError::UnknownLease`]) and the
    /// step not finished yet ([`StateError::StepAlreadyFinished`]); on any error nothing is
    /// stored.
    pub fn finish_step(
        &self,
        lease_id: &str,
        step_id: &str,
        batch: ResultBatch,
    ) -> Result<ResultBatch, StateError> {
        self.finish(lease_id, step_id, batch, None)
    }

    /// [`finish_step`](Self::finish_step) for a run of a capacity search's probe: also
    /// records the run (`facts_json`, its `ProbeFacts`) under its search step, in the same
    /// transaction, for [`probe_runs`](Self::probe_runs).
    pub fn finish_probe(
        &self,
        lease_id: &str,
        step_id: &str,
        batch: ResultBatch,
        search_step: &str,
        facts_json: &str,
    ) -> Result<ResultBatch, StateError> {
        self.finish(lease_id, step_id, batch, Some((search_step, facts_json)))
    }

    /// The probe runs finished under `lease_id` for `search_step`: their `ProbeFacts` JSON,
    /// by step id.
    pub fn probe_runs(
        &self,
        lease_id: &str,
        search_step: &str,
    ) -> Result<Vec<(String, String)>, StateError> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached(
                "SELECT step_id, facts FROM probe_runs WHERE lease_id = ?1 AND search_step = ?2
                 ORDER BY rowid",
            )
            .sql("read the probe runs")?;
        let runs = stmt
            .query_map([lease_id, search_step], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .sql("read the probe runs")?
            .collect::<Result<Vec<(String, String)>, _>>()
            .sql("read the probe runs")?;
        Ok(runs)
    }

    fn finish(
        &self,
        lease_id: &str,
        step_id: &str,
        mut batch: ResultBatch,
        probe: Option<(&str, &str)>,
    ) -> Result<ResultBatch, StateError> {
        const ACTION: &str = "finish the step";
        // The stored blob's own sequence is ignored (the column is the truth); encode it
        // without one so the blob is the same whatever the caller put there.
        batch.sequence = 0;
        let encoded = batch.encode_to_vec();
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql(ACTION)?;
        let known = tx
            .query_row(
                "SELECT 1 FROM leases WHERE lease_id = ?1",
                [lease_id],
                |_| Ok(()),
            )
            .optional()
            .sql(ACTION)?
            .is_some();
        if !known {
            return Err(StateError::UnknownLease {
                lease_id: lease_id.to_owned(),
                step_id: step_id.to_owned(),
            });
        }
        let done = tx
            .query_row(
                "SELECT 1 FROM finished_steps WHERE lease_id = ?1 AND step_id = ?2",
                [lease_id, step_id],
                |_| Ok(()),
            )
            .optional()
            .sql(ACTION)?
            .is_some();
        if done {
            return Err(StateError::StepAlreadyFinished {
                lease_id: lease_id.to_owned(),
                step_id: step_id.to_owned(),
            });
        }
        tx.execute(
            "INSERT INTO outbox (lease_id, step_id, batch) VALUES (?1, ?2, ?3)",
            params![lease_id, step_id, encoded],
        )
        .sql(ACTION)?;
        let sequence = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO finished_steps (lease_id, step_id, sequence) VALUES (?1, ?2, ?3)",
            params![lease_id, step_id, sequence],
        )
        .sql(ACTION)?;
        if let Some((search_step, facts)) = probe {
            tx.execute(
                "INSERT INTO probe_runs (lease_id, step_id, search_step, facts)
                 VALUES (?1, ?2, ?3, ?4)",
                params![lease_id, step_id, search_step, facts],
            )
            .sql(ACTION)?;
        }
        tx.commit().sql(ACTION)?;
        batch.sequence = from_sql_int("outbox.sequence", sequence)?;
        Ok(batch)
    }

    /// The steps finished under `lease_id` (empty for an unknown lease).
    pub fn finished_steps(&self, lease_id: &str) -> Result<HashSet<String>, StateError> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT step_id FROM finished_steps WHERE lease_id = ?1")
            .sql("read the finished steps")?;
        let steps = stmt
            .query_map([lease_id], |row| row.get(0))
            .sql("read the finished steps")?
            .collect::<Result<HashSet<String>, _>>()
            .sql("read the finished steps")?;
        Ok(steps)
    }

    /// The unacknowledged batches in sequence order, each with its `sequence` set.
    pub fn outbox(&self) -> Result<Vec<ResultBatch>, StateError> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT sequence, batch FROM outbox ORDER BY sequence")
            .sql("read the outbox")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .sql("read the outbox")?
            .collect::<Result<Vec<_>, _>>()
            .sql("read the outbox")?;
        rows.into_iter()
            .map(|(sequence, blob)| {
                let mut batch =
                    ResultBatch::decode(blob.as_slice()).map_err(|source| StateError::Decode {
                        what: "result batch",
                        source,
                    })?;
                batch.sequence = from_sql_int("outbox.sequence", sequence)?;
                Ok(batch)
            })
            .collect()
    }

    /// How many batches wait for their ack.
    pub fn outbox_len(&self) -> Result<usize, StateError> {
        let count: i64 = self
            .lock()
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |row| row.get(0))
            .sql("count the outbox")?;
        usize::try_from(count).map_err(|_| StateError::BadValue {
            column: "count(outbox)",
            value: count.to_string(),
        })
    }

    /// Deletes the batch `sequence` once the coordinator acknowledged it (stored, or refused
    /// for good). Acking an unknown sequence is fine.
    pub fn ack(&self, sequence: u64) -> Result<(), StateError> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(()); // never assigned
        };
        self.lock()
            .conn
            .execute("DELETE FROM outbox WHERE sequence = ?1", [sequence])
            .sql("delete the acknowledged batch")?;
        Ok(())
    }

    /// Records a started server (replacing a record with the same pgid).
    pub fn record_server(&self, rec: &ServerRecord) -> Result<(), StateError> {
        insert_server(&self.lock().conn, rec)
    }

    /// Records a server about to be started, before the spawn: see [`LaunchIntent`].
    pub fn record_launch(&self, launch: &LaunchIntent) -> Result<(), StateError> {
        self.lock()
            .conn
            .execute(
                "INSERT OR REPLACE INTO launches (token, unit_id, command, log_path) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    launch.token,
                    launch.unit_id,
                    launch.command,
                    launch.log_path.as_os_str().as_bytes()
                ],
            )
            .sql("record the launch")?;
        Ok(())
    }

    /// Records the server a launch started and forgets the launch, in one transaction: at
    /// every moment one of the two names the server.
    pub fn record_launched_server(
        &self,
        rec: &ServerRecord,
        token: &str,
    ) -> Result<(), StateError> {
        const ACTION: &str = "record the started server";
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql(ACTION)?;
        insert_server(&tx, rec)?;
        tx.execute("DELETE FROM launches WHERE token = ?1", [token])
            .sql(ACTION)?;
        tx.commit().sql(ACTION)?;
        Ok(())
    }

    /// Forgets a launch (its spawn failed, or a later life ended what it started).
    /// Forgetting an unknown one is fine.
    pub fn forget_launch(&self, token: &str) -> Result<(), StateError> {
        self.lock()
            .conn
            .execute("DELETE FROM launches WHERE token = ?1", [token])
            .sql("forget the launch")?;
        Ok(())
    }

    /// The launches not followed by a recorded server, by token.
    pub fn launches(&self) -> Result<Vec<LaunchIntent>, StateError> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT token, unit_id, command, log_path FROM launches ORDER BY token")
            .sql("read the launches")?;
        let rows = stmt
            .query_map([], |row| {
                Ok(LaunchIntent {
                    token: row.get(0)?,
                    unit_id: row.get(1)?,
                    command: row.get(2)?,
                    log_path: PathBuf::from(OsString::from_vec(row.get::<_, Vec<u8>>(3)?)),
                })
            })
            .sql("read the launches")?
            .collect::<Result<Vec<_>, _>>()
            .sql("read the launches")?;
        Ok(rows)
    }

    /// Forgets a server once it is stopped. Forgetting an unknown one is fine.
    pub fn forget_server(&self, pgid: i32) -> Result<(), StateError> {
        self.lock()
            .conn
            .execute("DELETE FROM servers WHERE pgid = ?1", [pgid])
            .sql("forget the server")?;
        Ok(())
    }

    /// The recorded servers, by pgid.
    pub fn servers(&self) -> Result<Vec<ServerRecord>, StateError> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached(
                "SELECT pgid, start_time_ticks, command, log_path, unit_id FROM servers \
                 ORDER BY pgid",
            )
            .sql("read the servers")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, i32>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })
            .sql("read the servers")?
            .collect::<Result<Vec<_>, _>>()
            .sql("read the servers")?;
        rows.into_iter()
            .map(|(pgid, ticks, command, log_path, unit_id)| {
                Ok(ServerRecord {
                    pgid,
                    start_time_ticks: from_sql_int("servers.start_time_ticks", ticks)?,
                    command,
                    log_path: PathBuf::from(OsString::from_vec(log_path)),
                    unit_id,
                })
            })
            .collect()
    }
}

/// Records a started server (replacing a record of the same process group).
fn insert_server(conn: &Connection, rec: &ServerRecord) -> Result<(), StateError> {
    let ticks = to_sql_int("server start time", rec.start_time_ticks)?;
    conn.execute(
        "INSERT OR REPLACE INTO servers (pgid, start_time_ticks, command, log_path, unit_id) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            rec.pgid,
            ticks,
            rec.command,
            rec.log_path.as_os_str().as_bytes(),
            rec.unit_id
        ],
    )
    .sql("record the server")?;
    Ok(())
}

/// A server about to be started, recorded before its spawn (migration 0002). The spawn
/// puts `token` in the server's environment ([`crate::launcher::LAUNCH_TOKEN_ENV`]); once
/// the server's process group is recorded the launch is forgotten. A launch still recorded
/// when the agent starts means a crash fell between the two: the processes carrying the
/// token are what it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchIntent {
    /// Unique per launch.
    pub token: String,
    /// The unit it was for.
    pub unit_id: String,
    /// The launch command, shell-quoted.
    pub command: String,
    /// The server's log file.
    pub log_path: PathBuf,
}

/// Takes the exclusive lock on `<state_dir>/agent.lock`.
fn lock(state_dir: &Path) -> Result<FileLock, StateError> {
    FileLock::acquire(&state_dir.join(LOCK_FILE)).map_err(|err| match err {
        LockError::Held { holder, .. } => StateError::Busy {
            path: state_dir.to_owned(),
            holder: holder.map_or_else(|| "another process".to_owned(), |p| format!("process {p}")),
        },
        LockError::Io { path, source } => StateError::Lock { path, source },
    })
}

/// Opens the database with the state's settings; `journal_mode` is checked, the rest are read
/// back by a test (SQLite ignores an unknown pragma without a word).
fn open_connection(path: &Path) -> Result<Connection, StateError> {
    let conn = sqlite::open_read_write(path, "the agent state")?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite::pragma_failed("busy_timeout"))?;
    sqlite::enable_wal(&conn)?;
    // The outbox holds results that exist nowhere else: every commit reaches the disk.
    sqlite::set_pragma(&conn, "synchronous = FULL", "synchronous", "FULL")?;
    sqlite::set_pragma(&conn, "foreign_keys = ON", "foreign_keys", true)?;
    Ok(conn)
}

fn load_or_create_agent_id(conn: &Connection) -> Result<String, StateError> {
    let fresh = uuid::Uuid::new_v4().to_string();
    // Inserts only when absent, then reads whichever is stored.
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('agent_id', ?1) ON CONFLICT (key) DO NOTHING",
        [&fresh],
    )
    .sql("store the agent id")?;
    conn.query_row("SELECT value FROM meta WHERE key = 'agent_id'", [], |row| {
        row.get(0)
    })
    .sql("read the agent id")
    .map_err(StateError::from)
}

fn to_sql_int(what: &'static str, value: u64) -> Result<i64, StateError> {
    i64::try_from(value).map_err(|_| StateError::Invalid {
        what,
        value: value.to_string(),
    })
}

fn from_sql_int(column: &'static str, value: i64) -> Result<u64, StateError> {
    u64::try_from(value).map_err(|_| StateError::BadValue {
        column,
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pragmas_take_effect() {
        let dir = tempfile::tempdir().unwrap();
        let state = AgentState::open(dir.path()).unwrap();
        let inner = state.lock();
        let conn = &inner.conn;
        let get = |name: &str| {
            conn.pragma_query_value(None, name, |row| row.get::<_, i64>(0))
                .unwrap()
        };
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(get("synchronous"), 2, "FULL");
        assert_eq!(get("foreign_keys"), 1);
        assert_eq!(get("busy_timeout"), BUSY_TIMEOUT.as_millis() as i64);
        assert_eq!(
            i64::from(migrations::SCHEMA.latest_version()),
            get("user_version")
        );
        assert!(
            evalctl_common::migrations::foreign_key_violations(conn)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = AgentState::open(dir.path()).unwrap();
        let err = AgentState::open(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("another evalctl-agent"), "{err}");
        let holder = format!("(process {})", std::process::id());
        assert!(err.to_string().contains(&holder), "{err}");
        drop(state);
        AgentState::open(dir.path()).unwrap();
    }

    #[test]
    fn out_of_range_values_are_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let state = AgentState::open(dir.path()).unwrap();
        let lease = Lease {
            lease_id: "l".into(),
            epoch: u64::MAX,
            ..Lease::default()
        };
        assert!(matches!(
            state.put_lease(&lease).unwrap_err(),
            StateError::Invalid { .. }
        ));
        assert!(matches!(
            state.set_agent_id(" ").unwrap_err(),
            StateError::Invalid { .. }
        ));
        state.ack(u64::MAX).unwrap();
    }
}
