-- A request_id claimed before its provider call (CreateOnboardingLinks, CreateSubscription):
-- concurrent calls with the same key wait for the owner's stored outcome instead of calling the
-- provider again. Deleted once the outcome is stored or the call failed; a claim whose owner
-- died is taken over once lease_until_ms has passed.
CREATE TABLE request_claims (
    tenant_id      TEXT NOT NULL,
    key            TEXT NOT NULL,
    operation      TEXT NOT NULL,
    request_hash   BLOB NOT NULL,
    owner          TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- A provider resource (a Gupshup app) held by exactly one onboarding, of any tenant: scope is
-- a keyed fingerprint of the provider identity the resource id is unique under (the partner
-- login), so two onboardings can never hold the same app.
CREATE TABLE resource_bindings (
    scope         TEXT NOT NULL,
    resource      TEXT NOT NULL,
    onboarding_id TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    PRIMARY KEY (scope, resource)
);

-- A create call an onboarding's step is about to send (the Gupshup link of a phone), written
-- before the call: pending (1) until its answer is known, so a later "already exists" can be
-- told apart as our own lost attempt or a resource someone else made.
CREATE TABLE create_intents (
    onboarding_id TEXT NOT NULL,
    step          TEXT NOT NULL,
    scope         TEXT NOT NULL,
    subject       TEXT NOT NULL,
    pending       BIGINT NOT NULL,
    calls         BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL,
    PRIMARY KEY (onboarding_id, step)
);
CREATE INDEX create_intents_subject ON create_intents(scope, subject);
