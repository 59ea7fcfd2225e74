-- Caller-chosen account and onboarding ids are unique per tenant, not globally: every row's
-- key becomes `{tenant_id}.{id}` ('.' is in neither), so the one-column references (events,
-- steps, webhook inbox, work claims) stay unambiguous. Keys written from now on already have
-- that form; this converts the rows written before.
--
-- A migrated account keeps its old id in `legacy_id`: providers were told a webhook URL that
-- names it. Secrets sealed before stay bound to the old id (the openers try both).

-- Children point at the new keys before their parents have them; checked at commit.
PRAGMA defer_foreign_keys = ON;

UPDATE onboarding_events
SET onboarding_id = (SELECT o.tenant_id FROM onboardings o WHERE o.id = onboarding_events.onboarding_id) || '.' || onboarding_id
WHERE instr(onboarding_id, '.') = 0;

UPDATE pipeline_steps
SET onboarding_id = (SELECT o.tenant_id FROM onboardings o WHERE o.id = pipeline_steps.onboarding_id) || '.' || onboarding_id
WHERE instr(onboarding_id, '.') = 0;

-- Events of accounts deleted since keep their old account id: nothing routes to them.
UPDATE webhook_events
SET account_id = (SELECT a.tenant_id FROM accounts a WHERE a.id = webhook_events.account_id) || '.' || account_id
WHERE instr(account_id, '.') = 0 AND EXISTS (SELECT 1 FROM accounts a WHERE a.id = webhook_events.account_id);

-- An onboarding's account always belongs to the same tenant.
UPDATE onboardings
SET id = tenant_id || '.' || id,
    account_id = CASE WHEN instr(account_id, '.') = 0 THEN tenant_id || '.' || account_id ELSE account_id END
WHERE instr(id, '.') = 0;

ALTER TABLE accounts ADD COLUMN legacy_id TEXT;
UPDATE accounts SET legacy_id = id, id = tenant_id || '.' || id WHERE instr(id, '.') = 0;
CREATE UNIQUE INDEX accounts_legacy ON accounts(legacy_id);
