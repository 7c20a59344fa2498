-- Runs of capacity-search probes finished under a lease, each written in the same transaction
-- as its step's outbox batch: with the probes the lease brought, what a restarted agent
-- plans the search's next probe from (docs/capacity.md). `facts` is the probe's
-- `ProbeFacts` JSON, as in its step document.
CREATE TABLE probe_runs (
    lease_id    TEXT NOT NULL REFERENCES leases (lease_id) ON DELETE CASCADE,
    step_id     TEXT NOT NULL,
    search_step TEXT NOT NULL,
    facts       TEXT NOT NULL,
    PRIMARY KEY (lease_id, step_id)
) STRICT;
