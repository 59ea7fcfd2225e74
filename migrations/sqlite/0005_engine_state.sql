-- The engine's own bookkeeping (sealed request, provider handle, where a stall came from, last
-- callback time) gets its own column: until 0004 it lived under the `_engine` key of
-- details_json, beside the public details callers read.
ALTER TABLE onboardings ADD COLUMN engine_json TEXT NOT NULL DEFAULT '{}';

UPDATE onboardings
SET engine_json = json_extract(details_json, '$._engine'),
    details_json = json_remove(details_json, '$._engine')
WHERE json_valid(details_json) AND json_type(details_json, '$._engine') = 'object';

-- A non-object `_engine` was never read as bookkeeping: dropped.
UPDATE onboardings
SET details_json = json_remove(details_json, '$._engine')
WHERE json_valid(details_json) AND json_type(details_json, '$._engine') IS NOT NULL;
