-- 0004_scheduler: the scheduler's look-up of a configuration that runs right now.
--
-- The same server configuration (`unit_id`) can be pending in one campaign while it runs
-- in another (a nightly sweep and an accuracy run of the same models). The host running it
-- will find it warm when it is done, so the scheduler prefers other work over starting a
-- second cold copy elsewhere. Only leased units are in this index: it is as small as the
-- set of running units.
CREATE INDEX units_leased_by_config ON units (unit_id) WHERE state = 'leased';
