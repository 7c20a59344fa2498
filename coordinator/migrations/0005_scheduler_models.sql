-- 0005_scheduler_models: the scheduler's walk finds a shape's largest model first.
--
-- The grant prefers the unit with the longest estimated steps, its model's size over the
-- square root of its GPU count. Within a shape (GPU part, framework part, labels) the GPU
-- count is fixed, so the longest is the unit of the largest model. `model_size` keeps the
-- model's `params_b` on the unit (0 when not given), and this index lists each shape's
-- pending units largest model first, then in position order: a grant still costs one seek
-- per shape. It replaces `units_runnable` (the same key without the size).
ALTER TABLE units ADD COLUMN model_size REAL NOT NULL DEFAULT 0;
UPDATE units SET model_size = COALESCE(
        (SELECT json_extract(spec_json, '$.params_b') FROM specs
         WHERE spec_id = units.model_spec), 0)
    WHERE state = 'pending' OR state = 'leased';
CREATE INDEX units_runnable_by_size ON units (campaign_key, gpu_spec, framework_spec,
    labels_json, model_size DESC, position) WHERE state = 'pending';
DROP INDEX units_runnable;
