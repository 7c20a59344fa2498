-- 0006_audit_and_token_use: `evalctl audit` and tokens' last use (docs/security.md).
--
-- `last_used_ms` is when the token last authenticated a call. The coordinator writes it at
-- most once a minute per token (a heartbeat every few seconds must not mean a write each),
-- so it may lag the truth by that much; NULL while the token was never used.
ALTER TABLE api_tokens ADD COLUMN last_used_ms INTEGER;

-- `evalctl audit` filters by actor, by action and by time, newest first, and pages by
-- `audit_id` (an entry's position: larger is newer). One index per filter keeps a page one
-- seek however long the log grows.
CREATE INDEX audit_log_by_actor ON audit_log (actor, audit_id);
CREATE INDEX audit_log_by_action ON audit_log (action, audit_id);
CREATE INDEX audit_log_by_time ON audit_log (at_ms);
