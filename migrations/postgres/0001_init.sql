-- wa-onboard schema (PostgreSQL). Times are BIGINT milliseconds since the Unix epoch.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    hash        BYTEA NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id);

-- Account ids are global (webhook URLs name them without the tenant).
CREATE TABLE accounts (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    provider            TEXT NOT NULL,
    display_name        TEXT NOT NULL,
    options_json        TEXT NOT NULL,
    credentials_key_id  TEXT NOT NULL,
    credentials         BYTEA NOT NULL,
    webhook_key_id      TEXT NOT NULL,
    webhook_secret      BYTEA NOT NULL,
    sandbox             BOOLEAN NOT NULL,
    status_json         TEXT NOT NULL,
    created_ms          BIGINT NOT NULL,
    updated_ms          BIGINT NOT NULL
);
CREATE INDEX accounts_tenant ON accounts(tenant_id, id);

CREATE TABLE idempotency_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    operation     TEXT NOT NULL,
    request_hash  BYTEA NOT NULL,
    resource      TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE onboardings (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    account_id         TEXT NOT NULL,
    provider           TEXT NOT NULL,
    state              TEXT NOT NULL,
    desired_state      TEXT,
    state_reason       TEXT NOT NULL,
    provider_status    TEXT NOT NULL,
    reference          TEXT NOT NULL,
    details_json       TEXT NOT NULL,
    external_key       TEXT,
    secret_key_id      TEXT,
    secret             BYTEA,
    sequence           BIGINT NOT NULL,
    state_deadline_ms  BIGINT,
    expire_ms          BIGINT,
    created_ms         BIGINT NOT NULL,
    updated_ms         BIGINT NOT NULL
);
CREATE INDEX onboardings_tenant ON onboardings(tenant_id, id);
CREATE INDEX onboardings_reference ON onboardings(tenant_id, reference);
CREATE INDEX onboardings_external ON onboardings(account_id, external_key);
CREATE INDEX onboardings_deadline ON onboardings(state_deadline_ms) WHERE state_deadline_ms IS NOT NULL;

-- Append-only: rows are inserted, never updated or deleted (except with their onboarding).
CREATE TABLE onboarding_events (
    onboarding_id    TEXT NOT NULL REFERENCES onboardings(id) ON DELETE CASCADE,
    sequence         BIGINT NOT NULL,
    kind             TEXT NOT NULL,
    state            TEXT NOT NULL,
    previous_state   TEXT NOT NULL,
    reason           TEXT NOT NULL,
    provider_status  TEXT NOT NULL,
    step             TEXT,
    data_json        TEXT NOT NULL,
    created_ms       BIGINT NOT NULL,
    PRIMARY KEY (onboarding_id, sequence)
);

CREATE TABLE pipeline_steps (
    onboarding_id        TEXT NOT NULL REFERENCES onboardings(id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    position             INTEGER NOT NULL,
    state                TEXT NOT NULL,
    attempts             INTEGER NOT NULL,
    max_attempts         INTEGER NOT NULL,
    next_run_ms          BIGINT,
    lease_owner          TEXT,
    lease_until_ms       BIGINT,
    last_error           TEXT,
    last_error_code      TEXT,
    provider_stage_json  TEXT NOT NULL,
    data_json            TEXT NOT NULL,
    deadline_ms          BIGINT,
    started_ms           BIGINT,
    finished_ms          BIGINT,
    created_ms           BIGINT NOT NULL,
    updated_ms           BIGINT NOT NULL,
    PRIMARY KEY (onboarding_id, name)
);
CREATE INDEX pipeline_steps_due ON pipeline_steps(state, next_run_ms);

CREATE TABLE webhook_events (
    id              TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    account_id      TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL,
    body            BYTEA NOT NULL,
    status          TEXT NOT NULL,
    note            TEXT,
    lease_owner     TEXT,
    lease_until_ms  BIGINT,
    received_ms     BIGINT NOT NULL,
    UNIQUE (provider, account_id, dedupe_key)
);
CREATE INDEX webhook_events_pending ON webhook_events(status, received_ms);

-- Sliding-log rate limiter shared by replicas: one row per granted slot.
CREATE TABLE rate_slots (
    key      TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    seq      BIGSERIAL,
    PRIMARY KEY (key, at_ms, seq)
);
