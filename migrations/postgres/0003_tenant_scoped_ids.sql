-- Caller-chosen account and onboarding ids are unique per tenant, not globally: every row's
-- key becomes `{tenant_id}.{id}` ('.' is in neither), so the one-column references (events,
-- steps, webhook inbox, work claims) stay unambiguous. Keys written from now on already have
-- that form; this converts the rows written before.
--
-- A migrated account keeps its old id in `legacy_id`: providers were told a webhook URL that
-- names it. Secrets sealed before stay bound to the old id (the openers try both).

-- The references are not deferrable: lifted while the keys move, then put back as they were.
ALTER TABLE onboarding_events DROP CONSTRAINT onboarding_events_onboarding_id_fkey;
ALTER TABLE pipeline_steps DROP CONSTRAINT pipeline_steps_onboarding_id_fkey;

UPDATE onboarding_events e SET onboarding_id = o.tenant_id || '.' || e.onboarding_id
FROM onboardings o WHERE o.id = e.onboarding_id AND strpos(e.onboarding_id, '.') = 0;

UPDATE pipeline_steps s SET onboarding_id = o.tenant_id || '.' || s.onboarding_id
FROM onboardings o WHERE o.id = s.onboarding_id AND strpos(s.onboarding_id, '.') = 0;

-- Events of accounts deleted since keep their old account id: nothing routes to them.
UPDATE webhook_events w SET account_id = a.tenant_id || '.' || w.account_id
FROM accounts a WHERE a.id = w.account_id AND strpos(w.account_id, '.') = 0;

-- An onboarding's account always belongs to the same tenant.
UPDATE onboardings
SET id = tenant_id || '.' || id,
    account_id = CASE WHEN strpos(account_id, '.') = 0 THEN tenant_id || '.' || account_id ELSE account_id END
WHERE strpos(id, '.') = 0;

ALTER TABLE onboarding_events ADD CONSTRAINT onboarding_events_onboarding_id_fkey
    FOREIGN KEY (onboarding_id) REFERENCES onboardings(id) ON DELETE CASCADE;
ALTER TABLE pipeline_steps ADD CONSTRAINT pipeline_steps_onboarding_id_fkey
    FOREIGN KEY (onboarding_id) REFERENCES onboardings(id) ON DELETE CASCADE;

ALTER TABLE accounts ADD COLUMN legacy_id TEXT;
UPDATE accounts SET legacy_id = id, id = tenant_id || '.' || id WHERE strpos(id, '.') = 0;
CREATE UNIQUE INDEX accounts_legacy ON accounts(legacy_id);
