//! The audit log: who did what, appended in the same transaction as the write it records,
//! and read back newest first, filtered and in pages (`evalctl audit`).

use rusqlite::Connection;
use rusqlite::types::Value;

use super::error::{SqlContext, StoreError};
use super::rows::AuditEntry;

/// Which audit entries to read: every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries by this actor (a token's name, `unauthenticated`, `local:USER`, …).
    pub actor: Option<String>,
    /// Only entries of this action (`submit`, `refused`, `token_create`, …).
    pub action: Option<String>,
    /// Only entries at or after this time, Unix ms.
    pub since_ms: Option<i64>,
    /// Only entries at or before this time, Unix ms.
    pub until_ms: Option<i64>,
    /// Only entries older than this one (the cursor of the previous page).
    pub before_id: Option<i64>,
    /// Most entries returned.
    pub limit: usize,
}

/// One page of the audit log, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// The `before_id` of the next page; `None` when no older entry matches.
    pub next_before_id: Option<i64>,
}

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
    page(
        conn,
        &AuditFilter {
            limit,
            ..AuditFilter::default()
        },
    )
    .map(|page| page.entries)
}

/// The newest entries that match `filter`, at most `filter.limit`, and the cursor of the
/// next page.
pub(crate) fn page(conn: &Connection, filter: &AuditFilter) -> Result<AuditPage, StoreError> {
    let mut sql =
        String::from("SELECT audit_id, at_ms, actor, action, target, detail FROM audit_log");
    let mut params: Vec<Value> = Vec::new();
    let mut clause = |condition: &str, value: Value| {
        sql.push_str(if params.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        params.push(value);
        sql.push_str(&condition.replace('?', &format!("?{}", params.len())));
    };
    if let Some(actor) = &filter.actor {
        clause("actor = ?", Value::Text(actor.clone()));
    }
    if let Some(action) = &filter.action {
        clause("action = ?", Value::Text(action.clone()));
    }
    if let Some(since) = filter.since_ms {
        clause("at_ms >= ?", Value::Integer(since));
    }
    if let Some(until) = filter.until_ms {
        clause("at_ms <= ?", Value::Integer(until));
    }
    if let Some(before) = filter.before_id {
        clause("audit_id < ?", Value::Integer(before));
    }
    // One more than asked: whether there is a next page.
    let wanted = filter.limit.saturating_add(1);
    params.push(Value::Integer(i64::try_from(wanted).unwrap_or(i64::MAX)));
    sql.push_str(&format!(" ORDER BY audit_id DESC LIMIT ?{}", params.len()));

    let mut stmt = conn.prepare_cached(&sql).sql("read the audit log")?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |r| {
            Ok(AuditEntry {
                audit_id: r.get(0)?,
                at_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: r.get(5)?,
            })
        })
        .sql("read the audit log")?;
    let mut entries = rows
        .collect::<Result<Vec<_>, _>>()
        .sql("read the audit log")?;
    let next_before_id = if entries.len() > filter.limit {
        entries.truncate(filter.limit);
        entries.last().map(|e| e.audit_id)
    } else {
        None
    };
    Ok(AuditPage {
        entries,
        next_before_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    async fn store_with_entries() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        for (actor, action) in [
            ("alice", "submit"),
            ("bob", "cancel"),
            ("unauthenticated", "refused"),
            ("alice", "refused"),
            ("alice", "submit"),
        ] {
            store
                .record_audit(actor, action, "campaign/c", serde_json::json!({}))
                .await
                .unwrap();
        }
        (dir, store)
    }

    #[tokio::test]
    async fn filters_combine_and_pages_follow_the_cursor() {
        let (_dir, store) = store_with_entries().await;
        let all = store
            .audit_page(AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(all.entries.len(), 5);
        assert_eq!(all.next_before_id, None);
        assert!(
            all.entries
                .windows(2)
                .all(|w| w[0].audit_id > w[1].audit_id),
            "newest first"
        );

        let alice = |action: Option<&str>, limit| AuditFilter {
            actor: Some("alice".into()),
            action: action.map(str::to_owned),
            limit,
            ..AuditFilter::default()
        };
        let page = store.audit_page(alice(None, 100)).await.unwrap();
        assert_eq!(page.entries.len(), 3);
        assert!(page.entries.iter().all(|e| e.actor == "alice"));
        let page = store.audit_page(alice(Some("submit"), 100)).await.unwrap();
        assert_eq!(page.entries.len(), 2);
        assert!(page.entries.iter().all(|e| e.action == "submit"));

        // Pages of one: every entry once, in order, then no cursor.
        let mut seen = Vec::new();
        let mut filter = alice(None, 1);
        loop {
            let page = store.audit_page(filter.clone()).await.unwrap();
            seen.extend(page.entries.iter().map(|e| e.audit_id));
            match page.next_before_id {
                Some(cursor) => filter.before_id = Some(cursor),
                None => break,
            }
        }
        let expected: Vec<i64> = store
            .audit_page(alice(None, 100))
            .await
            .unwrap()
            .entries
            .iter()
            .map(|e| e.audit_id)
            .collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn time_bounds_are_inclusive() {
        let (_dir, store) = store_with_entries().await;
        let all = store.audit(100).await.unwrap();
        let newest = all[0].at_ms;
        let only = |since_ms, until_ms| AuditFilter {
            since_ms,
            until_ms,
            limit: 100,
            ..AuditFilter::default()
        };
        let page = store
            .audit_page(only(Some(newest), Some(newest)))
            .await
            .unwrap();
        assert!(page.entries.iter().all(|e| e.at_ms == newest));
        assert!(!page.entries.is_empty());
        let page = store
            .audit_page(only(Some(newest + 1), None))
            .await
            .unwrap();
        assert!(page.entries.is_empty());
        let page = store
            .audit_page(only(None, Some(newest - 1)))
            .await
            .unwrap();
        assert!(page.entries.iter().all(|e| e.at_ms < newest));
    }
}
