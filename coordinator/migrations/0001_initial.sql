-- 0001_initial: every table of the coordinator's store (DESIGN.md, "Storage").
--
-- Conventions:
-- - Timestamps are Unix epoch milliseconds in `*_ms` columns.
-- - JSON columns hold compact serde_json of the domain types.
-- - Public ids are the domain's strings: `campaigns.id` (UUID), `units.unit_id` (config
--   hash), `steps.step_id`, agent and lease ids. Rows refer to a campaign or a unit by its
--   integer `campaign_key` / `unit_key` (the rowid): a 100,000-unit campaign has 300,000
--   unit and step rows, and a 36-byte UUID in each of them and their indexes was a third of
--   the database and of the time to insert it.
-- - Configurations are stored once per campaign in `specs` (model, GPU, framework,
--   quantization, workload, load point) and referenced by id; a unit or step row holds
--   only what is its own. The `*_spec` columns carry no FOREIGN KEY clause: the store
--   writes them in the same statement batch as the specs they name, and checking six
--   parent rows for every unit and step made inserting a large campaign 40% slower.
-- - Tables are STRICT, so a wrong type is an error rather than a silent conversion.
-- - CHECKs list allowed values as `col = 'a' OR col = 'b' OR …`, not `col IN ('a', 'b', …)`:
--   SQLite evaluates an IN list of three or more values by building an ephemeral index on
--   every INSERT and UPDATE, which made inserting a large campaign several times slower.
-- - Nothing is deleted except a campaign's `dropped` list, which each submission replaces.

-- One row per campaign; the name is unique so resubmitting a matrix extends its campaign.
CREATE TABLE campaigns (
    campaign_key    INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,       -- UUID, the public id
    name            TEXT NOT NULL UNIQUE,
    description     TEXT,
    priority        INTEGER NOT NULL,           -- higher runs first
    max_attempts    INTEGER NOT NULL CHECK (max_attempts >= 0),
    source_yaml     TEXT NOT NULL,              -- the matrix file of the latest submission
    submitted_by    TEXT NOT NULL,              -- actor of the first submission
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    cancelled_at_ms INTEGER,                    -- NULL unless cancelled
    cancel_reason   TEXT
) STRICT;

-- Each distinct part of a configuration, stored once per campaign: the domain type of
-- `kind` as JSON (ModelSpec, GpuRequirement, FrameworkSpec, QuantizationSpec, WorkloadSpec,
-- LoadPoint).
CREATE TABLE specs (
    spec_id      INTEGER PRIMARY KEY,
    campaign_key INTEGER NOT NULL REFERENCES campaigns (campaign_key),
    kind         TEXT NOT NULL
                 CHECK (kind = 'model' OR kind = 'gpu' OR kind = 'framework' OR
                        kind = 'quantization' OR kind = 'workload' OR kind = 'load'),
    spec_json    TEXT NOT NULL,
    UNIQUE (campaign_key, kind, spec_json)
) STRICT;

-- A unit: one server configuration of a campaign. `unit_id` is the hash of its
-- configuration, so the same configuration has the same id in every campaign. The
-- configuration is the four specs plus `extra_args` and `labels_json`.
CREATE TABLE units (
    unit_key          INTEGER PRIMARY KEY,
    campaign_key      INTEGER NOT NULL REFERENCES campaigns (campaign_key),
    unit_id           TEXT NOT NULL,
    position          INTEGER NOT NULL,         -- order of first submission in the campaign
    config_hash       TEXT GENERATED ALWAYS AS (unit_id) VIRTUAL,
    label             TEXT NOT NULL,
    model_spec        INTEGER NOT NULL,
    gpu_spec          INTEGER NOT NULL,
    framework_spec    INTEGER NOT NULL,
    quantization_spec INTEGER NOT NULL,
    extra_args        TEXT NOT NULL,
    labels_json       TEXT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state = 'pending' OR state = 'leased' OR state = 'succeeded' OR
                             state = 'failed' OR state = 'cancelled'),
    attempts          INTEGER NOT NULL DEFAULT 0, -- the unit's own failures count here
    infra_attempts    INTEGER NOT NULL DEFAULT 0, -- preemption, agent lost, lease expired
    epoch             INTEGER NOT NULL DEFAULT 0, -- fencing token, grows on every lease
    last_error        TEXT,
    log_tail          TEXT,
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    UNIQUE (campaign_key, unit_id)
) STRICT;

-- The scheduler's and the status counts' query: units of a campaign in a state.
CREATE INDEX units_by_state ON units (campaign_key, state);

-- Steps of a unit, run in `idx` order on one warm server.
CREATE TABLE steps (
    unit_key      INTEGER NOT NULL REFERENCES units (unit_key),
    step_id       TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    workload_spec INTEGER NOT NULL,
    load_spec     INTEGER NOT NULL,
    repeat        INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state = 'pending' OR state = 'succeeded' OR state = 'failed' OR
                         state = 'cancelled'),
    PRIMARY KEY (unit_key, step_id)
) STRICT, WITHOUT ROWID;

-- Combinations the expansion dropped, in expansion order; replaced on every submission.
CREATE TABLE dropped (
    campaign_key INTEGER NOT NULL REFERENCES campaigns (campaign_key),
    position     INTEGER NOT NULL,
    label        TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind = 'excluded' OR kind = 'pruned'),
    reason       TEXT NOT NULL,
    PRIMARY KEY (campaign_key, position)
) STRICT, WITHOUT ROWID;

-- The one stored result of a step (results travel at least once, are stored exactly once).
CREATE TABLE step_results (
    result_id        INTEGER PRIMARY KEY,
    unit_key         INTEGER NOT NULL,
    step_id          TEXT NOT NULL,
    result_json      TEXT NOT NULL,             -- step metrics
    environment_json TEXT NOT NULL,             -- GPUs, driver, framework, command, host, agent
    agent_id         TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    finished_at_ms   INTEGER NOT NULL,
    UNIQUE (unit_key, step_id),
    FOREIGN KEY (unit_key, step_id) REFERENCES steps (unit_key, step_id)
) STRICT;

-- Raw per-request records of a step result, zstd-compressed, possibly in several chunks.
CREATE TABLE request_records (
    result_id    INTEGER NOT NULL REFERENCES step_results (result_id),
    chunk        INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    codec        TEXT NOT NULL DEFAULT 'zstd',
    data         BLOB NOT NULL,
    PRIMARY KEY (result_id, chunk)
) STRICT, WITHOUT ROWID;

-- Telemetry samples of a step result per GPU, zstd-compressed, possibly in several chunks.
CREATE TABLE telemetry_samples (
    result_id    INTEGER NOT NULL REFERENCES step_results (result_id),
    gpu_index    INTEGER NOT NULL,              -- -1 for host samples
    chunk        INTEGER NOT NULL,
    sample_count INTEGER NOT NULL,
    codec        TEXT NOT NULL DEFAULT 'zstd',
    data         BLOB NOT NULL,
    PRIMARY KEY (result_id, gpu_index, chunk)
) STRICT, WITHOUT ROWID;

-- Registered agents.
CREATE TABLE agents (
    id                TEXT PRIMARY KEY NOT NULL,
    hostname          TEXT NOT NULL,
    gpus_json         TEXT NOT NULL,            -- type, memory, UUID, index per GPU
    labels_json       TEXT NOT NULL,
    frameworks_json   TEXT NOT NULL,
    version           TEXT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'active'
                      CHECK (state = 'active' OR state = 'draining' OR state = 'drained' OR
                             state = 'lost'),
    registered_at_ms  INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL
) STRICT;

-- Leases of units to agents. A lease is live while `ended_at_ms` is NULL.
CREATE TABLE leases (
    lease_id         TEXT PRIMARY KEY NOT NULL,
    unit_key         INTEGER NOT NULL REFERENCES units (unit_key),
    agent_id         TEXT NOT NULL REFERENCES agents (id),
    epoch            INTEGER NOT NULL,
    gpu_indices_json TEXT NOT NULL,
    granted_at_ms    INTEGER NOT NULL,
    expires_at_ms    INTEGER NOT NULL,
    ended_at_ms      INTEGER,
    end_reason       TEXT CHECK (end_reason = 'succeeded' OR end_reason = 'failed' OR
                                 end_reason = 'expired' OR end_reason = 'preempted' OR
                                 end_reason = 'released' OR end_reason = 'cancelled')
) STRICT;

-- The expiry sweep's query.
CREATE INDEX leases_by_expiry ON leases (expires_at_ms) WHERE ended_at_ms IS NULL;
-- At most one live lease per unit; also the lookup of a unit's live lease.
CREATE UNIQUE INDEX leases_live_by_unit ON leases (unit_key) WHERE ended_at_ms IS NULL;
-- An agent's live leases (heartbeats, reconciliation after a partition).
CREATE INDEX leases_live_by_agent ON leases (agent_id) WHERE ended_at_ms IS NULL;

-- Idempotency keys of applied result batches: a batch seen again is acknowledged, not applied.
CREATE TABLE result_batches (
    unit_key      INTEGER NOT NULL REFERENCES units (unit_key),
    step_id       TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    sequence      INTEGER NOT NULL,
    applied_at_ms INTEGER NOT NULL,
    PRIMARY KEY (unit_key, step_id, attempt, sequence)
) STRICT, WITHOUT ROWID;

-- One row per attempt of a unit: opened when leased, closed with an outcome.
CREATE TABLE unit_history (
    history_id    INTEGER PRIMARY KEY,
    campaign_key  INTEGER NOT NULL REFERENCES campaigns (campaign_key),
    unit_key      INTEGER NOT NULL REFERENCES units (unit_key),
    attempt       INTEGER NOT NULL,
    epoch         INTEGER NOT NULL,
    lease_id      TEXT,
    agent_id      TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms   INTEGER,
    outcome       TEXT CHECK (outcome = 'succeeded' OR outcome = 'failed' OR
                              outcome = 'expired' OR outcome = 'preempted' OR
                              outcome = 'released' OR outcome = 'cancelled'),
    error         TEXT
) STRICT;

CREATE INDEX unit_history_by_unit ON unit_history (unit_key);
-- Per-campaign outcomes (preemption counts) and open attempts (`outcome` IS NULL).
CREATE INDEX unit_history_by_campaign ON unit_history (campaign_key, outcome);

-- Who did what: every write of an operator (submit, cancel, retry, drain) appends a row.
CREATE TABLE audit_log (
    audit_id INTEGER PRIMARY KEY,
    at_ms    INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    detail   TEXT NOT NULL                      -- compact JSON object
) STRICT;
