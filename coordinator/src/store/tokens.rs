//! API tokens: creating, listing and revoking them, and the table the authenticator
//! caches. Only the SHA-256 of a secret is stored (migration `0003_tokens`); when a token
//! was last used is kept since `0006_audit_and_token_use`.

use rusqlite::{Connection, OptionalExtension};

use super::Store;
use super::audit;
use super::error::{SqlContext, StoreError};
use crate::auth::Role;

/// A stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public handle, e.g. `tok_3fa9c2e1b0d4`.
    pub token_id: String,
    /// Name given at creation (unique among live tokens), e.g. `ci` or `gpu-node-07`.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// Created at, Unix ms.
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// Revoked at, Unix ms; `None` while it is live.
    pub revoked_ms: Option<i64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When it last authenticated a call, Unix ms (recorded at most once a minute);
    /// `None` while it was never used.
    pub last_used_ms: Option<i64>,
}

/// A token the authenticator can match a presented secret against.
#[derive(Debug, Clone)]
pub struct AuthToken {
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// The token.
    pub row: TokenRow,
}

/// What the authenticator needs from the store in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    /// Whether any token was ever created (revoked ones count): from then on tokens are
    /// enforced, even on loopback.
    pub any_created: bool,
    /// The live tokens.
    pub live: Vec<AuthToken>,
}

const COLUMNS: &str = "token_id, name, role, created_ms, created_by, revoked_ms, revoked_by, \
     secret_sha256, last_used_ms";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRow, Vec<u8>)> {
    let role: String = r.get(2)?;
    let role = role.parse::<Role>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok((
        TokenRow {
            token_id: r.get(0)?,
            name: r.get(1)?,
            role,
            created_ms: r.get(3)?,
            created_by: r.get(4)?,
            revoked_ms: r.get(5)?,
            revoked_by: r.get(6)?,
            last_used_ms: r.get(8)?,
        },
        r.get(7)?,
    ))
}

fn create(
    conn: &Connection,
    now_ms: i64,
    token_id: &str,
    name: &str,
    role: Role,
    secret_sha256: &[u8; 32],
    actor: &str,
) -> Result<TokenRow, StoreError> {
    let taken: Option<String> = conn
        .prepare_cached("SELECT token_id FROM api_tokens WHERE name = ?1 AND revoked_ms IS NULL")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .sql("look up a token name")?;
    if let Some(existing) = taken {
        return Err(StoreError::TokenNameTaken {
            name: name.to_owned(),
            token_id: existing,
        });
    }
    conn.prepare_cached(
        "INSERT INTO api_tokens (token_id, name, role, secret_sha256, created_ms, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute((
            token_id,
            name,
            role.as_str(),
            &secret_sha256[..],
            now_ms,
            actor,
        ))
    })
    .sql("insert a token")?;
    audit::append(
        conn,
        now_ms,
        actor,
        "token_create",
        &format!("token/{token_id}"),
        &serde_json::json!({ "name": name, "role": role.as_str() }),
    )?;
    Ok(TokenRow {
        token_id: token_id.to_owned(),
        name: name.to_owned(),
        role,
        created_ms: now_ms,
        created_by: actor.to_owned(),
        revoked_ms: None,
        revoked_by: None,
        last_used_ms: None,
    })
}

fn revoke(
    conn: &Connection,
    now_ms: i64,
    id_or_name: &str,
    actor: &str,
) -> Result<Option<TokenRow>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_tokens
             WHERE token_id = ?1 OR (name = ?1 AND revoked_ms IS NULL)
             ORDER BY revoked_ms IS NULL DESC LIMIT 1"
        ))
        .and_then(|mut s| s.query_row([id_or_name], row).optional())
        .sql("look up a token")?;
    let Some((mut token, _)) = found else {
        return Ok(None);
    };
    if token.revoked_ms.is_none() {
        conn.prepare_cached(
            "UPDATE api_tokens SET revoked_ms = ?2, revoked_by = ?3
             WHERE token_id = ?1 AND revoked_ms IS NULL",
        )
        .and_then(|mut s| s.execute((&token.token_id, now_ms, actor)))
        .sql("revoke a token")?;
        token.revoked_ms = Some(now_ms);
        token.revoked_by = Some(actor.to_owned());
    }
    audit::append(
        conn,
        now_ms,
        actor,
        "token_revoke",
        &format!("token/{}", token.token_id),
        &serde_json::json!({ "name": token.name, "role": token.role.as_str() }),
    )?;
    Ok(Some(token))
}

/// Records that the token authenticated a call now; never moves the time backwards.
fn touch(conn: &Connection, now_ms: i64, token_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE api_tokens SET last_used_ms = ?2
         WHERE token_id = ?1 AND (last_used_ms IS NULL OR last_used_ms < ?2)",
    )
    .and_then(|mut s| s.execute((token_id, now_ms)))
    .sql("record a token's use")?;
    Ok(())
}

fn list(conn: &Connection) -> Result<Vec<TokenRow>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY token_key"
        ))
        .sql("list tokens")?;
    let rows = stmt.query_map([], row).sql("list tokens")?;
    rows.map(|r| r.map(|(token, _)| token))
        .collect::<Result<_, _>>()
        .sql("list tokens")
        .map_err(StoreError::from)
}

fn table(conn: &Connection) -> Result<TokenTable, StoreError> {
    let any_created: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM api_tokens)")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .sql("count tokens")?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE revoked_ms IS NULL"
        ))
        .sql("read live tokens")?;
    let mut live = Vec::new();
    for found in stmt.query_map([], row).sql("read live tokens")? {
        let (token, hash) = found.sql("read live tokens")?;
        let secret_sha256 =
            <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| StoreError::BadValue {
                column: "api_tokens.secret_sha256",
                value: format!("{} bytes", hash.len()),
            })?;
        live.push(AuthToken {
            secret_sha256,
            row: token,
        });
    }
    Ok(TokenTable { any_created, live })
}

impl Store {
    /// Stores a new token under `token_id` with the SHA-256 of its secret; appends a
    /// `token_create` audit entry. [`StoreError::TokenNameTaken`] when a live token has
    /// the name.
    pub async fn create_token(
        &self,
        token_id: &str,
        name: &str,
        role: Role,
        secret_sha256: [u8; 32],
        actor: &str,
    ) -> Result<TokenRow, StoreError> {
        let (token_id, name, actor) = (token_id.to_owned(), name.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| {
            create(conn, now_ms, &token_id, &name, role, &secret_sha256, &actor)
        })
        .await
    }

    /// Revokes the token with this id, or the live token with this name; `None` when there
    /// is none. Revoking a revoked token changes nothing. Appends a `token_revoke` audit
    /// entry.
    pub async fn revoke_token(
        &self,
        id_or_name: &str,
        actor: &str,
    ) -> Result<Option<TokenRow>, StoreError> {
        let (id_or_name, actor) = (id_or_name.to_owned(), actor.to_owned());
        self.write(move |conn, now_ms| revoke(conn, now_ms, &id_or_name, &actor))
            .await
    }

    /// Records that the token with this id authenticated a call now (`last_used_ms`). The
    /// authenticator calls it at most once a minute per token.
    pub async fn record_token_use(&self, token_id: &str) -> Result<(), StoreError> {
        let token_id = token_id.to_owned();
        self.write(move |conn, now_ms| touch(conn, now_ms, &token_id))
            .await
    }

    /// Every token, live and revoked, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.read(list).await
    }

    /// The live tokens with their hashes, and whether any token was ever created.
    pub async fn token_table(&self) -> Result<TokenTable, StoreError> {
        self.read(table).await
    }

    /// Appends an audit entry for something that is not itself a store write (e.g. a
    /// refused call); `detail` is a JSON object.
    pub async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let (actor, action, target) = (actor.to_owned(), action.to_owned(), target.to_owned());
        self.write(move |conn, now_ms| {
            audit::append(conn, now_ms, &actor, &action, &target, &detail)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token;

    #[tokio::test]
    async fn create_list_revoke_and_the_auth_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        assert!(!store.token_table().await.unwrap().any_created);

        let a = token::generate();
        let row = store
            .create_token(&a.token_id, "ci", Role::Operator, a.hash, "bootstrap")
            .await
            .unwrap();
        assert_eq!(row.role, Role::Operator);
        let b = token::generate();
        let err = store
            .create_token(&b.token_id, "ci", Role::Viewer, b.hash, "bootstrap")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TokenNameTaken { .. }), "{err}");

        let table = store.token_table().await.unwrap();
        assert!(table.any_created);
        assert_eq!(table.live.len(), 1);
        assert_eq!(table.live[0].secret_sha256, a.hash);

        let revoked = store.revoke_token("ci", "alice").await.unwrap().unwrap();
        assert_eq!(revoked.token_id, a.token_id);
        assert_eq!(revoked.revoked_by.as_deref(), Some("alice"));
        assert!(
            store
                .revoke_token("nobody", "alice")
                .await
                .unwrap()
                .is_none()
        );
        // Revoking again by id is harmless.
        let again = store
            .revoke_token(&a.token_id, "bob")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.revoked_by.as_deref(), Some("alice"));

        let table = store.token_table().await.unwrap();
        assert!(table.any_created, "revoked tokens keep tokens enforced");
        assert!(table.live.is_empty());
        // The name is free again once its token is revoked.
        store
            .create_token(&b.token_id, "ci", Role::Viewer, b.hash, "alice")
            .await
            .unwrap();
        let listed = store.list_tokens().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|t| t.last_used_ms.is_none()));
        let actions: Vec<String> = store
            .audit(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            [
                "token_create",
                "token_revoke",
                "token_revoke",
                "token_create"
            ]
        );
    }

    #[tokio::test]
    async fn a_token_use_is_recorded_and_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        let a = token::generate();
        store
            .create_token(&a.token_id, "node1", Role::Agent, a.hash, "bootstrap")
            .await
            .unwrap();
        store.record_token_use(&a.token_id).await.unwrap();
        let first = store.list_tokens().await.unwrap()[0].last_used_ms;
        assert!(first.is_some_and(|ms| ms > 0), "{first:?}");
        store.record_token_use("tok_unknown").await.unwrap();
        store.record_token_use(&a.token_id).await.unwrap();
        let second = store.list_tokens().await.unwrap()[0].last_used_ms;
        assert!(second >= first, "{first:?} then {second:?}");
        let table = store.token_table().await.unwrap();
        assert_eq!(table.live[0].row.token_id, a.token_id);
    }
}
