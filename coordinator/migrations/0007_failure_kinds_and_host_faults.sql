-- 0007_failure_kinds_and_host_faults: the coordinator reacts to the kind of a unit's failure.
--
-- `units.failure_kind` keeps how the agent classified the unit's last failure (NULL when it
-- did not): `out_of_memory` is shown as "does not fit" rather than as a failure.
--
-- `agent_faults` lists what an agent's host lacks: the program of a framework or the files
-- of a model, found when a server failed to start for want of them. The scheduler gives that
-- agent no unit needing them until it registers again (a restart, after the engine or the
-- model was installed). A fault names the configuration part by its JSON, so it holds in
-- every campaign, not just the one that found it.
ALTER TABLE units ADD COLUMN failure_kind TEXT
    CHECK (failure_kind IS NULL OR failure_kind = 'bad_argument' OR
           failure_kind = 'port_in_use' OR failure_kind = 'out_of_memory' OR
           failure_kind = 'missing_model' OR failure_kind = 'missing_engine' OR
           failure_kind = 'unrecognised');

CREATE TABLE agent_faults (
    agent_id   TEXT NOT NULL REFERENCES agents (id),
    -- 'framework' (its program is missing) or 'model' (its files are missing).
    kind       TEXT NOT NULL CHECK (kind = 'framework' OR kind = 'model'),
    spec_json  TEXT NOT NULL,
    -- The part's name, for listings.
    name       TEXT NOT NULL,
    -- The failure that showed it (the server's own line).
    error      TEXT NOT NULL,
    found_at_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, kind, spec_json)
) STRICT;
