-- Issue 21, target 8: ListOnboardings filtered by state walked `onboardings_tenant`
-- (tenant_id, id) and skipped the rows of other states, so a page of a rare state read as
-- many of the tenant's rows as came before its last match: its cost grew with the table.
-- This index serves the filter in page order (`id`), whatever the state's share.
CREATE INDEX onboardings_tenant_state ON onboardings(tenant_id, state, id);
