-- The engine's own bookkeeping (sealed request, provider handle, where a stall came from, last
-- callback time) gets its own column: until 0004 it lived under the `_engine` key of
-- details_json, beside the public details callers read.
ALTER TABLE onboardings ADD COLUMN engine_json TEXT NOT NULL DEFAULT '{}';

UPDATE onboardings
SET engine_json = CASE WHEN jsonb_typeof(details_json::jsonb -> '_engine') = 'object'
                       THEN (details_json::jsonb -> '_engine')::text ELSE '{}' END,
    details_json = (details_json::jsonb - '_engine')::text
WHERE details_json LIKE '%"\_engine"%' AND details_json::jsonb ? '_engine';
