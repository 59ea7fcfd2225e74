-- The smallest expiry-warning threshold (seconds) already announced for the current
-- expire_ms; NULL when none. Reset whenever expire_ms changes (e.g. a channel extended).
ALTER TABLE onboardings ADD COLUMN expiry_warned_secs BIGINT;
CREATE INDEX onboardings_expire ON onboardings(expire_ms) WHERE expire_ms IS NOT NULL;
