-- 0003_tokens: bearer tokens for the gRPC API (docs/security.md).
--
-- A token is shown once, when it is created; only the SHA-256 of its secret is kept. The
-- secret is 32 random bytes, so a plain hash is enough: there is nothing to guess.
-- `token_id` is the public handle `evalctl token list|revoke` use. A revoked token keeps
-- its row (who created and revoked it stays on record), and the coordinator keeps
-- enforcing tokens once any row exists, so revoking the last token never opens the API.
CREATE TABLE api_tokens (
    token_key INTEGER PRIMARY KEY,
    token_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('operator', 'viewer', 'agent')),
    secret_sha256 BLOB NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_ms INTEGER,
    revoked_by TEXT
) STRICT;

-- A name names one live token, so `evalctl token revoke NAME` is unambiguous.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_ms IS NULL;
