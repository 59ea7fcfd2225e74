-- Outbound delivery (issue 19). Destinations: where a tenant's events go, with the signing
-- secret sealed like account credentials.
CREATE TABLE delivery_destinations (
    id                        TEXT PRIMARY KEY,
    tenant_id                 TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name                      TEXT NOT NULL,
    enabled                   BOOLEAN NOT NULL,
    disabled_reason           TEXT NOT NULL,
    filter_json               TEXT NOT NULL,
    sink                      TEXT NOT NULL,
    url                       TEXT NOT NULL,
    header_names_json         TEXT NOT NULL,
    -- The extra headers sealed like credentials (values may be credentials); NULL: none.
    headers_key_id            TEXT,
    headers                   BYTEA,
    subject                   TEXT NOT NULL,
    secret_key_id             TEXT NOT NULL,
    secret                    BYTEA NOT NULL,
    previous_secret_key_id    TEXT,
    previous_secret           BYTEA,
    previous_secret_until_ms  BIGINT,
    failing_since_ms          BIGINT,
    created_ms                BIGINT NOT NULL,
    updated_ms                BIGINT NOT NULL
);
CREATE INDEX delivery_destinations_tenant ON delivery_destinations (tenant_id, id);

-- The transactional outbox: one small row per event, written by the event's own transaction
-- (no foreign key, to keep that insert cheap), consumed by the dispatcher's fan-out.
CREATE TABLE event_outbox (
    onboarding_id  TEXT NOT NULL,
    sequence       BIGINT NOT NULL,
    tenant_id      TEXT NOT NULL,
    PRIMARY KEY (onboarding_id, sequence)
);

-- One event for one destination. The key makes fan-out and replay idempotent.
CREATE TABLE deliveries (
    destination_id   TEXT NOT NULL REFERENCES delivery_destinations(id) ON DELETE CASCADE,
    onboarding_id    TEXT NOT NULL,
    sequence         BIGINT NOT NULL,
    tenant_id        TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_ms  BIGINT NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_until_ms   BIGINT,
    created_ms       BIGINT NOT NULL,
    delivered_ms     BIGINT,
    PRIMARY KEY (destination_id, onboarding_id, sequence),
    FOREIGN KEY (onboarding_id, sequence) REFERENCES onboarding_events (onboarding_id, sequence) ON DELETE CASCADE
);
-- The sender's scan: pending ones by due time.
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_ms);
