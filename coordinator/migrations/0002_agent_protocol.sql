-- 0002_agent_protocol: what the agent protocol (register, lease, heartbeat, results) needs
-- beyond the tables of 0001.

-- Driver and CUDA versions an agent reports when it registers ('' when unknown).
ALTER TABLE agents ADD COLUMN driver_version TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN cuda_version TEXT NOT NULL DEFAULT '';

-- Two reasons an agent gets no new leases, kept apart because they end differently:
-- - `drain_requested`: an operator drained the agent. It survives re-registration (a
--   restarted agent stays drained) and reaches the agent in every heartbeat reply.
-- - `self_draining`: the agent said so in its last heartbeat (SIGTERM, spot notice). A
--   new registration (the agent's next life) clears it.
-- `agents.state` stays the summary: 'lost' while heartbeats are missing, else 'draining'
-- when either flag is set, else 'active'.
ALTER TABLE agents ADD COLUMN drain_requested INTEGER NOT NULL DEFAULT 0
    CHECK (drain_requested = 0 OR drain_requested = 1);
ALTER TABLE agents ADD COLUMN self_draining INTEGER NOT NULL DEFAULT 0
    CHECK (self_draining = 0 OR self_draining = 1);

-- The scheduler's walk over runnable units. Only pending units are in it, so it is as
-- small as the queue. Its key groups a campaign's pending units by their matching
-- "shape" (GPU part, framework part, labels), each shape in position order, so a grant
-- seeks to the oldest unit of each shape the agent can run instead of scanning the units
-- it cannot.
CREATE INDEX units_runnable ON units (campaign_key, gpu_spec, framework_spec, labels_json,
    position) WHERE state = 'pending';

-- The same pending units in position order: the scheduler first looks at a campaign's
-- oldest few, which fit the asking agent in the common case of a uniform fleet, before it
-- walks the shapes above. `campaign_key` first also finds the campaigns that have runnable
-- work with one seek each.
CREATE INDEX units_runnable_by_age ON units (campaign_key, position) WHERE state = 'pending';
