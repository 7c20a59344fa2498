-- 0011_schedules: schedules that submit a campaign of their series at each firing of a
-- cron pattern (docs/schedules.md).
--
-- Exactly one campaign per firing: a firing is first claimed (its row inserted, keyed by
-- schedule and instant, in the transaction that moves the schedule's `fired_through_ms`),
-- then its campaign is submitted under a name made from the firing (resubmitting a name
-- adds nothing), then the row records the outcome. A coordinator killed between any two
-- of these finishes the claimed firing when it starts again.
CREATE TABLE schedules (
    schedule_key     INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    matrix_yaml      TEXT NOT NULL,               -- submitted at each firing
    source_name      TEXT NOT NULL,               -- the matrix file's name, for errors
    cron             TEXT NOT NULL,
    timezone         TEXT NOT NULL,               -- IANA name
    catch_up         TEXT NOT NULL CHECK (catch_up IN ('once', 'skip')),
    overlap          TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'cancel')),
    paused           INTEGER NOT NULL CHECK (paused IN (0, 1)),
    fired_through_ms INTEGER NOT NULL,            -- every firing at or before this is handled
    created_by       TEXT NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
) STRICT;

-- One row per firing handled: run, skipped, or missed while the coordinator was down.
CREATE TABLE schedule_firings (
    schedule_key  INTEGER NOT NULL REFERENCES schedules (schedule_key) ON DELETE CASCADE,
    fire_at_ms    INTEGER NOT NULL,               -- the firing's instant (run-now: when asked)
    campaign_name TEXT NOT NULL,
    outcome       TEXT NOT NULL
                  CHECK (outcome IN ('claimed', 'submitted', 'skipped_overlap', 'missed', 'failed')),
    detail        TEXT,                           -- why skipped or failed
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (schedule_key, fire_at_ms)
) STRICT, WITHOUT ROWID;

-- The series a campaign belongs to (the schedule's name); NULL for campaigns submitted by hand.
ALTER TABLE campaigns ADD COLUMN series TEXT;
CREATE INDEX campaigns_by_series ON campaigns (series, created_at_ms) WHERE series IS NOT NULL;
