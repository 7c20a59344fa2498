-- 0013_notifications: the durable outbox of notifications (docs/notifications.md).
--
-- An event is written once per sink it goes to, in the transaction that records that the
-- event happened (`notified_events`, keyed by what happened: a campaign's end, an agent
-- lost at a heartbeat time, ...), so no event is lost or raised twice across restarts. A
-- delivery worker sends due rows and marks them delivered after the receiver's 2xx (or
-- the SMTP server's acceptance); failures are retried with backoff until the row gives up.
-- Receivers see `event_id` and can drop a repeat (delivery is at least once).
CREATE TABLE notified_events (
    dedupe_key  TEXT PRIMARY KEY,   -- e.g. "ended:42", "agent_lost:gpu-7:1765000000000"
    event_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at_ms       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE notifications (
    event_id           TEXT NOT NULL,
    sink               TEXT NOT NULL,   -- a sink's name in the coordinator's config
    kind               TEXT NOT NULL,
    payload_json       TEXT NOT NULL,
    created_at_ms      INTEGER NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms    INTEGER,
    gave_up_at_ms      INTEGER,
    last_error         TEXT,
    PRIMARY KEY (event_id, sink)
) STRICT, WITHOUT ROWID;

CREATE INDEX notifications_due ON notifications (next_attempt_at_ms)
    WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL;

-- The sinks a schedule's campaigns notify, besides those configured for everything.
ALTER TABLE schedules ADD COLUMN notify TEXT NOT NULL DEFAULT '';

-- What happened before notifications existed is not announced: campaigns that have ended
-- and agents already lost count as announced.
INSERT INTO notified_events (dedupe_key, event_id, kind, at_ms)
SELECT 'ended:' || c.campaign_key, 'before-notifications', 'campaign_finished', 0
FROM campaigns c
WHERE NOT EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key
                  AND u.state IN ('pending', 'leased'));
INSERT INTO notified_events (dedupe_key, event_id, kind, at_ms)
SELECT 'agent_lost:' || a.id || ':' || a.last_heartbeat_ms, 'before-notifications', 'agent_lost', 0
FROM agents a WHERE a.state = 'lost';
