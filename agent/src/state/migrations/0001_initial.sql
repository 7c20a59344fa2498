-- The agent's local state: its identity, the leases it holds, the steps it finished, the
-- result batches not yet acknowledged by the coordinator (the outbox), and the server
-- process groups it started.

-- Key/value facts about this agent; `agent_id` is generated once.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Leases held, with the whole lease (prost-encoded `evalctl.v1.Lease`) so a restarted agent
-- can resume without the coordinator sending it again.
CREATE TABLE leases (
    lease_id TEXT PRIMARY KEY,
    unit_id  TEXT NOT NULL,
    epoch    INTEGER NOT NULL,
    lease    BLOB NOT NULL
) STRICT;

-- Result batches waiting for their ack. `sequence` is the batch's sequence number, unique and
-- increasing for the agent's whole life (AUTOINCREMENT never hands out a number twice, even
-- after the rows are deleted). The encoded batch's own `sequence` field is not used: the
-- column is the truth. Rows outlive their lease: a batch leaves only when acknowledged.
CREATE TABLE outbox (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    lease_id TEXT NOT NULL,
    step_id  TEXT NOT NULL,
    batch    BLOB NOT NULL
) STRICT;

-- Steps finished under a lease, each written in the same transaction as its outbox batch.
CREATE TABLE finished_steps (
    lease_id TEXT NOT NULL REFERENCES leases (lease_id) ON DELETE CASCADE,
    step_id  TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    PRIMARY KEY (lease_id, step_id)
) STRICT;

-- Server process groups started and not yet stopped: a restarted agent ends those still
-- running. A group is identified by its id and its leader's start time (clock ticks), so a
-- reused pid is never mistaken for a server.
CREATE TABLE servers (
    pgid             INTEGER PRIMARY KEY,
    start_time_ticks INTEGER NOT NULL,
    command          TEXT NOT NULL,
    log_path         BLOB NOT NULL,
    unit_id          TEXT NOT NULL
) STRICT;
