//! Schema migrations: numbered `.sql` files compiled in with `include_str!`, applied in
//! order, each in its own immediate transaction, and tracked by `PRAGMA user_version` (the
//! number of the last migration applied).
//!
//! A store declares its [`Schema`] once; to change it, add the next numbered file and a line
//! to its list, and never edit a migration that has shipped. [`check_directory`] is what a
//! store's test calls to keep the list and the directory in step.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::sqlite::SqliteError;

/// One schema migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number; `user_version` after it ran.
    pub version: u32,
    /// File name without `.sql`, e.g. `0001_initial`.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// A store's schema: its migrations and how its messages name it.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// What the file is, in messages: "the database", "the agent state".
    pub file: &'static str,
    /// Who writes it, in messages: "coordinator", "agent".
    pub program: &'static str,
    /// What a user can do with a file a newer build wrote.
    pub newer_hint: &'static str,
    /// Every migration, in order; `version` is the position from 1.
    pub migrations: &'static [Migration],
}

impl Schema {
    /// The schema version this build writes.
    pub fn latest_version(&self) -> u32 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// Brings the file to the latest schema; returns how many migrations ran.
    ///
    /// Each migration runs in an immediate transaction that re-reads `user_version` first,
    /// so two processes opening the same file at once cannot apply one twice. A file newer
    /// than this build is refused before anything is written.
    pub fn migrate(&self, conn: &mut Connection) -> Result<usize, SqliteError> {
        let known = self.latest_version();
        let mut applied = 0;
        for migration in self.migrations {
            let failed = |source| SqliteError::Migrate {
                file: self.file,
                name: migration.name,
                source,
            };
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(failed)?;
            let version = user_version(&tx).map_err(failed)?;
            if version > known {
                return Err(SqliteError::SchemaTooNew {
                    file: self.file,
                    program: self.program,
                    hint: self.newer_hint,
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
                file = self.file,
                "applied schema migration"
            );
            applied += 1;
        }
        Ok(applied)
    }
}

/// `PRAGMA user_version`.
pub fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// The tables of the file, by name: what a store's migration test compares.
pub fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// The tables with rows that break a foreign key (`PRAGMA foreign_key_check`); empty when
/// the file is consistent.
pub fn foreign_key_violations(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// Checks `migrations` against the `.sql` files of `dir`: every file listed, in order,
/// numbered from 1 by position, named `NNNN_…`, and compiled in with the text on disk.
/// Returns what differs; for a store's tests.
pub fn check_directory(migrations: &[Migration], dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".sql") {
            files.push(name);
        }
    }
    files.sort();
    let listed: Vec<String> = migrations
        .iter()
        .map(|m| format!("{}.sql", m.name))
        .collect();
    if files != listed {
        return Err(format!(
            "{} holds {files:?} but the list has {listed:?}: every file is listed, in order",
            dir.display()
        ));
    }
    for (i, m) in migrations.iter().enumerate() {
        if m.version as usize != i + 1 {
            return Err(format!("{} is number {} in the list", m.name, i + 1));
        }
        if !m.name.starts_with(&format!("{:04}_", m.version)) {
            return Err(format!("{} is numbered {}", m.name, m.version));
        }
        let path = dir.join(format!("{}.sql", m.name));
        let on_disk =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if on_disk != m.sql {
            return Err(format!(
                "{} differs from the compiled-in text",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_SCHEMA: Schema = Schema {
        file: "the test file",
        program: "test",
        newer_hint: "run the newer test",
        migrations: &[
            Migration {
                version: 1,
                name: "0001_one",
                sql: "CREATE TABLE one (id INTEGER PRIMARY KEY);",
            },
            Migration {
                version: 2,
                name: "0002_two",
                sql: "CREATE TABLE two (id INTEGER PRIMARY KEY);",
            },
        ],
    };

    fn tables(conn: &Connection) -> Vec<String> {
        table_names(conn).unwrap()
    }

    #[test]
    fn apply_in_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(TEST_SCHEMA.migrate(&mut conn).unwrap(), 2);
        assert_eq!(user_version(&conn).unwrap(), 2);
        assert_eq!(tables(&conn), ["one", "two"]);
        drop(conn);
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(TEST_SCHEMA.migrate(&mut conn).unwrap(), 0);
    }

    #[test]
    fn an_old_file_gets_only_the_new_migrations() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(TEST_SCHEMA.migrations[0].sql).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        assert_eq!(TEST_SCHEMA.migrate(&mut conn).unwrap(), 1);
        assert_eq!(tables(&conn), ["one", "two"]);
    }

    #[test]
    fn a_newer_file_is_refused_with_the_hint() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 3).unwrap();
        let err = TEST_SCHEMA.migrate(&mut conn).unwrap_err();
        assert!(
            matches!(
                err,
                SqliteError::SchemaTooNew {
                    found: 3,
                    known: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "failed to open the test file: its schema version 3 is newer than the 2 this test \
             knows (hint: run the newer test)"
        );
        assert!(tables(&conn).is_empty(), "nothing was written");
    }

    #[test]
    fn a_failing_migration_names_itself_and_leaves_the_version() {
        const BAD: Schema = Schema {
            migrations: &[Migration {
                version: 1,
                name: "0001_bad",
                sql: "CREATE TABLE;",
            }],
            ..TEST_SCHEMA
        };
        let mut conn = Connection::open_in_memory().unwrap();
        let err = BAD.migrate(&mut conn).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to apply migration `0001_bad` to the test file"
        );
        assert_eq!(user_version(&conn).unwrap(), 0);
    }

    #[test]
    fn the_directory_check_finds_a_missing_file_and_edited_text() {
        let dir = tempfile::tempdir().unwrap();
        for m in TEST_SCHEMA.migrations {
            std::fs::write(dir.path().join(format!("{}.sql", m.name)), m.sql).unwrap();
        }
        check_directory(TEST_SCHEMA.migrations, dir.path()).unwrap();
        std::fs::write(dir.path().join("0002_two.sql"), "edited").unwrap();
        let err = check_directory(TEST_SCHEMA.migrations, dir.path()).unwrap_err();
        assert!(err.contains("differs"), "{err}");
        std::fs::write(dir.path().join("0003_three.sql"), "").unwrap();
        let err = check_directory(TEST_SCHEMA.migrations, dir.path()).unwrap_err();
        assert!(err.contains("every file is listed"), "{err}");
    }
}
