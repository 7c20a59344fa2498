-- 0008_image_unavailable: a failure kind for a framework's container image that the agent's
-- host could not have (a failed pull, `pull: never` without the image, no container runtime).
-- It is a fault of that host for the framework, like a missing engine.
--
-- SQLite cannot change a column's CHECK in place: the column is rebuilt with the wider check,
-- its values copied, and the old one dropped.
ALTER TABLE units ADD COLUMN failure_kind_0008 TEXT
    CHECK (failure_kind_0008 IS NULL OR failure_kind_0008 IN (
        'bad_argument', 'port_in_use', 'out_of_memory', 'missing_model', 'missing_engine',
        'image_unavailable', 'unrecognised'));
UPDATE units SET failure_kind_0008 = failure_kind;
ALTER TABLE units DROP COLUMN failure_kind;
ALTER TABLE units RENAME COLUMN failure_kind_0008 TO failure_kind;
