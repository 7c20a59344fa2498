-- 0009_bad_dataset: a failure kind for a workload's dataset file that the agent refused (a
-- line, field or conversation it cannot mean, or nothing usable): the same file is refused on
-- every attempt, so the unit fails at once.
--
-- SQLite cannot change a column's CHECK in place: the column is rebuilt with the wider check,
-- its values copied, and the old one dropped.
ALTER TABLE units ADD COLUMN failure_kind_0009 TEXT
    CHECK (failure_kind_0009 IS NULL OR failure_kind_0009 IN (
        'bad_argument', 'port_in_use', 'out_of_memory', 'missing_model', 'missing_engine',
        'image_unavailable', 'bad_dataset', 'unrecognised'));
UPDATE units SET failure_kind_0009 = failure_kind;
ALTER TABLE units DROP COLUMN failure_kind;
ALTER TABLE units RENAME COLUMN failure_kind_0009 TO failure_kind;
