-- Issue 19, item 4: a destination the service disables says why in a typed column, and the
-- disable pushes a `wa.onboard.destination.disabled` event to the tenant's other destinations.
-- `disabled_cause`: GONE, FAILING_TOO_LONG or BY_CALLER; NULL while enabled.
-- `disabled_notice_id`: the notice the service's disable wrote; NULL otherwise.
ALTER TABLE delivery_destinations ADD COLUMN disabled_cause TEXT;
ALTER TABLE delivery_destinations ADD COLUMN disabled_notice_id TEXT;
-- Rows disabled before this migration: their free-text reason tells the cause.
UPDATE delivery_destinations SET disabled_cause = CASE
    WHEN disabled_reason LIKE '%410 Gone%' THEN 'GONE'
    WHEN disabled_reason LIKE 'every attempt failed%' THEN 'FAILING_TOO_LONG'
    ELSE 'BY_CALLER' END
  WHERE NOT enabled;

-- The tenant notices: one row per service-side disable, written in the disabling
-- transaction (durable like the event log). No foreign key to the destination: the notice
-- outlives a deleted destination.
CREATE TABLE destination_notices (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    destination_id  TEXT NOT NULL,
    display_name    TEXT NOT NULL,
    cause           TEXT NOT NULL,
    message         TEXT NOT NULL,
    http_status     INTEGER,
    created_ms      BIGINT NOT NULL
);

-- One notice for one (other, enabled) destination of the tenant, fanned out in the same
-- transaction; sent under leases like `deliveries` (no per-onboarding order to keep).
CREATE TABLE notice_deliveries (
    destination_id   TEXT NOT NULL REFERENCES delivery_destinations(id) ON DELETE CASCADE,
    notice_id        TEXT NOT NULL REFERENCES destination_notices(id) ON DELETE CASCADE,
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
    PRIMARY KEY (destination_id, notice_id)
);
CREATE INDEX notice_deliveries_due ON notice_deliveries (state, next_attempt_ms);
