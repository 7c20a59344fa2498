//! The audit log: who did what, appended in the same transaction as the write it records.

use rusqlite::Connection;

use super::error::{SqlContext, StoreError};
use super::rows::AuditEntry;

/// Appends an entry; `detail` is a JSON object.
pub(crate) fn append(
    conn: &Connection,
    at_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| stmt.execute((at_ms, actor, action, target, detail.to_string())))
    .sql("append to the audit log")?;
    Ok(())
}

/// The newest `limit` entries, newest first.
pub(crate) fn recent(conn: &Connection, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT at_ms, actor, action, target, detail FROM audit_log ORDER BY audit_id DESC LIMIT ?1",
        )
        .sql("read the audit log")?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok(AuditEntry {
                at_ms: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                target: r.get(3)?,
                detail: r.get(4)?,
            })
        })
        .sql("read the audit log")?;
    rows.collect::<Result<_, _>>()
        .sql("read the audit log")
        .map_err(StoreError::from)
}
