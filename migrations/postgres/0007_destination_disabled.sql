-- When a destination was disabled and the receiver's last HTTP status then (issue 19, item 4),
-- written by the same statement as `enabled` and `disabled_reason`; NULL while enabled.
ALTER TABLE delivery_destinations ADD COLUMN disabled_ms BIGINT;
ALTER TABLE delivery_destinations ADD COLUMN disabled_status INTEGER;
