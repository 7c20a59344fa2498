//! Schema migrations: numbered `.sql` files in `coordinator/migrations/`, compiled in with
//! `include_str!` and applied in order, each in its own transaction, tracked by
//! `PRAGMA user_version` (the number of the last migration applied).
//!
//! To change the schema, add the next numbered file and a line to [`MIGRATIONS`]; never edit
//! a migration that has shipped. A test checks the list against the directory.

use evalctl_common::migrations::{Migration, Schema};

/// Every migration, in order; `version` is the position from 1.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_agent_protocol",
        sql: include_str!("../../migrations/0002_agent_protocol.sql"),
    },
    Migration {
        version: 3,
        name: "0003_tokens",
        sql: include_str!("../../migrations/0003_tokens.sql"),
    },
    Migration {
        version: 4,
        name: "0004_scheduler",
        sql: include_str!("../../migrations/0004_scheduler.sql"),
    },
    Migration {
        version: 5,
        name: "0005_scheduler_models",
        sql: include_str!("../../migrations/0005_scheduler_models.sql"),
    },
    Migration {
        version: 6,
        name: "0006_audit_and_token_use",
        sql: include_str!("../../migrations/0006_audit_and_token_use.sql"),
    },
    Migration {
        version: 7,
        name: "0007_failure_kinds_and_host_faults",
        sql: include_str!("../../migrations/0007_failure_kinds_and_host_faults.sql"),
    },
    Migration {
        version: 8,
        name: "0008_image_unavailable",
        sql: include_str!("../../migrations/0008_image_unavailable.sql"),
    },
    Migration {
        version: 9,
        name: "0009_bad_dataset",
        sql: include_str!("../../migrations/0009_bad_dataset.sql"),
    },
    Migration {
        version: 10,
        name: "0010_search_probes",
        sql: include_str!("../../migrations/0010_search_probes.sql"),
    },
    Migration {
        version: 11,
        name: "0011_schedules",
        sql: include_str!("../../migrations/0011_schedules.sql"),
    },
    Migration {
        version: 12,
        name: "0012_series_verdicts",
        sql: include_str!("../../migrations/0012_series_verdicts.sql"),
    },
    Migration {
        version: 13,
        name: "0013_notifications",
        sql: include_str!("../../migrations/0013_notifications.sql"),
    },
];

/// The coordinator database's schema.
pub(crate) const SCHEMA: Schema = Schema {
    file: "database",
    program: "coordinator",
    newer_hint: "run the newer coordinator, or restore a backup",
    migrations: MIGRATIONS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use evalctl_common::migrations::{
        check_directory, foreign_key_violations, table_names, user_version,
    };
    use evalctl_common::sqlite::SqliteError;
    use rusqlite::Connection;

    fn tables(conn: &Connection) -> Vec<String> {
        table_names(conn).unwrap()
    }

    #[test]
    fn list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        check_directory(MIGRATIONS, &dir).unwrap();
    }

    #[test]
    fn apply_in_order_on_a_fresh_database_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 0);

        // One by one, as an old database meets each new build.
        for m in MIGRATIONS {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(m.sql).unwrap();
            tx.pragma_update(None, "user_version", m.version).unwrap();
            tx.commit().unwrap();
            assert_eq!(user_version(&conn).unwrap(), m.version);
        }
        let after_steps = tables(&conn);
        drop(conn);

        // All at once on a fresh file gives the same schema.
        let fresh = dir.path().join("fresh.sqlite");
        let mut conn = Connection::open(&fresh).unwrap();
        assert_eq!(SCHEMA.migrate(&mut conn).unwrap(), MIGRATIONS.len());
        assert_eq!(user_version(&conn).unwrap(), SCHEMA.latest_version());
        assert_eq!(tables(&conn), after_steps);
        for table in [
            "campaigns",
            "specs",
            "units",
            "steps",
            "dropped",
            "step_results",
            "request_records",
            "telemetry_samples",
            "agents",
            "leases",
            "result_batches",
            "unit_history",
            "audit_log",
            "api_tokens",
            "agent_faults",
        ] {
            assert!(
                after_steps.iter().any(|t| t == table),
                "missing table {table}"
            );
        }
        assert!(foreign_key_violations(&conn).unwrap().is_empty());
        drop(conn);

        // Reopening applies nothing.
        let mut conn = Connection::open(&fresh).unwrap();
        assert_eq!(SCHEMA.migrate(&mut conn).unwrap(), 0);
        assert_eq!(user_version(&conn).unwrap(), SCHEMA.latest_version());
        assert_eq!(tables(&conn), after_steps);
    }

    /// The store writes every failure kind the coordinator knows: the column's CHECK must
    /// list each (a kind added without a migration fails every `Fail` carrying it).
    #[test]
    fn every_failure_kind_passes_the_units_check() {
        let mut conn = Connection::open_in_memory().unwrap();
        SCHEMA.migrate(&mut conn).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'units'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        for kind in crate::store::rows::FailureKind::ALL {
            assert!(
                sql.contains(&format!("'{}'", kind.as_str())),
                "units.failure_kind does not accept `{}`: {sql}",
                kind.as_str()
            );
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("db.sqlite")).unwrap();
        SCHEMA.migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA.latest_version() + 1)
            .unwrap();
        let err = SCHEMA.migrate(&mut conn).unwrap_err();
        assert!(matches!(err, SqliteError::SchemaTooNew { .. }), "{err}");
    }
}
