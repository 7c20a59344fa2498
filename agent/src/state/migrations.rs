//! Schema migrations of the agent state: numbered `.sql` files in
//! `agent/src/state/migrations/`, compiled in with `include_str!`, applied in order in one
//! transaction each and tracked by `PRAGMA user_version` (the number of the last one applied).
//!
//! To change the schema, add the next numbered file and a line to [`MIGRATIONS`]; never edit
//! a migration that has shipped. A test checks the list against the directory.

use rusqlite::{Connection, TransactionBehavior};

use super::error::StateError;

/// A schema migration.
pub(crate) struct Migration {
    /// Its number; `user_version` after it ran.
    pub version: u32,
    /// File name without `.sql`.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, in order; `version` is the position from 1.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_launches",
        sql: include_str!("migrations/0002_launches.sql"),
    },
];

/// The schema version this build writes.
pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the file to the latest schema; returns how many migrations ran.
pub(crate) fn migrate(conn: &mut Connection) -> Result<usize, StateError> {
    let known = latest_version();
    let mut applied = 0;
    for migration in MIGRATIONS {
        let failed = |source| StateError::Migrate {
            name: migration.name,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        let version = user_version(&tx).map_err(failed)?;
        if version > known {
            return Err(StateError::SchemaTooNew {
                found: version,
                known,
            });
        }
        if version >= migration.version {
            continue;
        }
        tx.execute_batch(migration.sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", migration.version)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(
            migration = migration.name,
            "applied agent state schema migration"
        );
        applied += 1;
    }
    Ok(applied)
}

/// `PRAGMA user_version`.
pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state/migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(
            files, listed,
            "every file in migrations/ is listed, in order"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
            let on_disk = std::fs::read_to_string(dir.join(format!("{}.sql", m.name))).unwrap();
            assert_eq!(on_disk, m.sql);
        }
    }

    #[test]
    fn apply_on_a_fresh_file_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len());
        assert_eq!(user_version(&conn).unwrap(), latest_version());
        let after = tables(&conn);
        for table in [
            "meta",
            "leases",
            "outbox",
            "finished_steps",
            "servers",
            "launches",
        ] {
            assert!(after.iter().any(|t| t == table), "missing table {table}");
        }
        drop(conn);
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(tables(&conn), after);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("agent.sqlite")).unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", latest_version() + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(matches!(err, StateError::SchemaTooNew { .. }), "{err}");
    }
}
