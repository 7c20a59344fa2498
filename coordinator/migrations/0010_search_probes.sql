-- 0010_search_probes: the steps a capacity search creates while it runs (docs/capacity.md).
-- A probe run's row is added when its first result arrives, with the id of its search step
-- in `search_step`; the rows a submission plans have none. A lease sends its unit's planned
-- steps, and the stored probe runs apart, for the agent to plan each search's next probe.
ALTER TABLE steps ADD COLUMN search_step TEXT;
