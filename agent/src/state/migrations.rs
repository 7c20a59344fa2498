//! Schema migrations of the agent state: numbered `.sql` files in
//! `agent/src/state/migrations/`, compiled in with `include_str!`, applied in order in one
//! transaction each and tracked by `PRAGMA user_version` (the number of the last one applied).
//!
//! To change the schema, add the next numbered file and a line to [`MIGRATIONS`]; never edit
//! a migration that has shipped. A test checks the list against the directory.

use evalctl_common::migrations::{Migration, Schema};

/// Every migration, in order; `version` is the position from 1.
const MIGRATIONS: &[Migration] = &[
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
    Migration {
        version: 3,
        name: "0003_probe_runs",
        sql: include_str!("migrations/0003_probe_runs.sql"),
    },
];

/// The agent state's schema.
pub(crate) const SCHEMA: Schema = Schema {
    file: "the agent state",
    program: "agent",
    newer_hint: "run the newer agent, or move the state directory away",
    migrations: MIGRATIONS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use evalctl_common::migrations::{check_directory, table_names, user_version};
    use evalctl_common::sqlite::SqliteError;
    use rusqlite::Connection;

    fn tables(conn: &Connection) -> Vec<String> {
        table_names(conn).unwrap()
    }

    #[test]
    fn list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/state/migrations");
        check_directory(MIGRATIONS, &dir).unwrap();
    }

    #[test]
    fn apply_on_a_fresh_file_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 0);
        assert_eq!(SCHEMA.migrate(&mut conn).unwrap(), MIGRATIONS.len());
        assert_eq!(user_version(&conn).unwrap(), SCHEMA.latest_version());
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
        assert_eq!(SCHEMA.migrate(&mut conn).unwrap(), 0);
        assert_eq!(tables(&conn), after);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("agent.sqlite")).unwrap();
        SCHEMA.migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA.latest_version() + 1)
            .unwrap();
        let err = SCHEMA.migrate(&mut conn).unwrap_err();
        assert!(matches!(err, SqliteError::SchemaTooNew { .. }), "{err}");
    }
}
