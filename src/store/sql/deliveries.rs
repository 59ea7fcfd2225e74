//! Outbound delivery: destinations, the outbox's fan-out and the leased deliveries.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Transaction;

use super::db::{Sql, SqlDb, sql};
use super::{SqlBackend, locking, records};
use crate::domain::{AccountId, EventKind, OnboardingId, ProviderKind, TenantId, UnixMs};
use crate::store::{
    Deliveries, DeliveryFilter, DeliveryQuery, DeliveryRecord, DeliveryState, DeliveryUpdate, DestinationRecord,
    DisableCause, DispatchStats, Page, PageRequest, RedeliverFrom, ReplayChunk, ReplayCursor, Sealed, SinkKind,
    StoreError, StoreResult,
};

/// A `delivery_destinations` row.
#[derive(sqlx::FromRow)]
pub(super) struct DestinationRow {
    id: String,
    tenant_id: String,
    name: String,
    enabled: bool,
    disabled_reason: String,
    filter_json: String,
    sink: String,
    url: String,
    header_names_json: String,
    headers_key_id: Option<String>,
    headers: Option<Vec<u8>>,
    subject: String,
    secret_key_id: String,
    secret: Vec<u8>,
    previous_secret_key_id: Option<String>,
    previous_secret: Option<Vec<u8>>,
    previous_secret_until_ms: Option<i64>,
    failing_since_ms: Option<i64>,
    created_ms: i64,
    updated_ms: i64,
    disabled_ms: Option<i64>,
    disabled_status: Option<i32>,
    disabled_cause: Option<String>,
    disabled_notice_id: Option<String>,
}

impl TryFrom<DestinationRow> for DestinationRecord {
    type Error = StoreError;
    fn try_from(r: DestinationRow) -> StoreResult<Self> {
        Ok(Self {
            id: r.id,
            tenant_id: super::id(r.tenant_id)?,
            name: r.name,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            disabled_cause: r
                .disabled_cause
                .map(|c| {
                    DisableCause::parse(&c).ok_or_else(|| StoreError::Corrupt(format!("unknown disable cause '{c}'")))
                })
                .transpose()?,
            disabled_notice_id: r.disabled_notice_id,
            filter: DeliveryFilter::from_json(&r.filter_json).map_err(StoreError::Corrupt)?,
            sink: SinkKind::parse(&r.sink).ok_or_else(|| StoreError::Corrupt(format!("unknown sink '{}'", r.sink)))?,
            url: r.url,
            header_names: serde_json::from_str(&r.header_names_json)
                .map_err(|e| StoreError::Corrupt(format!("destination header names: {e}")))?,
            headers: super::opt_sealed(r.headers_key_id, r.headers)?,
            subject: r.subject,
            secret: Sealed { key_id: r.secret_key_id, blob: r.secret },
            previous_secret: super::opt_sealed(r.previous_secret_key_id, r.previous_secret)?,
            previous_secret_until_ms: r.previous_secret_until_ms,
            failing_since_ms: r.failing_since_ms,
            disabled_ms: r.disabled_ms,
            disabled_status: r.disabled_status,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        })
    }
}

/// A `deliveries` row.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    destination_id: String,
    tenant_id: String,
    onboarding_id: String,
    sequence: i64,
    state: String,
    attempts: i32,
    next_attempt_ms: i64,
    last_status: Option<i32>,
    last_error: Option<String>,
    lease_owner: Option<String>,
    lease_until_ms: Option<i64>,
    created_ms: i64,
    delivered_ms: Option<i64>,
}

impl TryFrom<DeliveryRow> for DeliveryRecord {
    type Error = StoreError;
    fn try_from(r: DeliveryRow) -> StoreResult<Self> {
        Ok(Self {
            destination_id: r.destination_id,
            tenant_id: super::id(r.tenant_id)?,
            onboarding_id: super::id(r.onboarding_id)?,
            sequence: r.sequence,
            state: DeliveryState::parse(&r.state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state '{}'", r.state)))?,
            attempts: r.attempts,
            next_attempt_ms: r.next_attempt_ms,
            last_status: r.last_status,
            last_error: r.last_error,
            lease_owner: r.lease_owner,
            lease_until_ms: r.lease_until_ms,
            created_ms: r.created_ms,
            delivered_ms: r.delivered_ms,
        })
    }
}

/// An event with what a filter matches on: `(onboarding, sequence, kind, provider, account)`.
type EventKey = (String, i64, String, String, String);

/// Whether a destination's filter lets the event of `key` through (an unparsable stored
/// kind or provider is corrupt).
fn passes(filter: &DeliveryFilter, key: &EventKey) -> StoreResult<bool> {
    let kind: EventKind = key.2.parse().map_err(StoreError::Corrupt)?;
    let provider: ProviderKind = super::provider(key.3.clone())?;
    let account: AccountId = super::id(key.4.clone())?;
    Ok(filter.matches(kind, provider, &account))
}

/// Outbox rows to fan out, locked (and skipped when another dispatcher holds them) on
/// PostgreSQL.
pub(super) const OUTBOX_ROWS: [&str; 2] =
    locking!("SELECT onboarding_id, sequence, tenant_id FROM event_outbox LIMIT $1", " FOR UPDATE SKIP LOCKED", "");

/// Leases due deliveries to `$1` until `$2` (`$3` now, `$4` the limit); see
/// [`Deliveries::claim_deliveries`] for the ordering rule the two probes keep. The scan
/// walks only the rows flagged `head` (migration 0008, index `deliveries_heads`) in claim
/// order, so a claim costs about its limit, not the backlog: after an outage the blocked rows
/// behind each failing head are the oldest due ones, and checking each of them made every
/// claim O(backlog). The flag is a hint; the probes still decide.
///
/// Two shapes keep the plan bounded whatever the statistics say (a queue grows from empty
/// in seconds; autoanalyze follows a minute later at best, never where autovacuum is off):
/// - The candidates are a `MATERIALIZED` CTE, computed once. In `UPDATE .. WHERE k IN
///   (SELECT .. LIMIT .. FOR UPDATE SKIP LOCKED)` PostgreSQL may run the subquery again for
///   every outer row: one claim did so 203 times (20.8 million buffer hits, 4.3 s) and leased
///   121 rows for a limit of 16.
/// - The order rule and the outbox gap are scalar subqueries, not `NOT EXISTS`: PostgreSQL
///   turns a `NOT EXISTS` into an anti-join, and planned from missing statistics that join
///   scanned the whole inner table for every head (11,149 pending rows a head). A scalar
///   subquery stays a probe of the head's own queue.
pub(super) const CLAIM: [&str; 2] = locking!(
    "WITH c AS MATERIALIZED (SELECT d.destination_id, d.onboarding_id, d.sequence \
     FROM deliveries d WHERE d.state = 'PENDING' AND d.head AND d.next_attempt_ms <= $3 \
     AND (d.lease_until_ms IS NULL OR d.lease_until_ms <= $3) \
     AND (SELECT t.enabled FROM delivery_destinations t WHERE t.id = d.destination_id) \
     AND d.sequence = (SELECT MIN(p.sequence) FROM deliveries p WHERE p.destination_id = d.destination_id \
     AND p.onboarding_id = d.onboarding_id AND p.state = 'PENDING') \
     AND COALESCE((SELECT MIN(x.sequence) FROM event_outbox x WHERE x.onboarding_id = d.onboarding_id), d.sequence) \
     >= d.sequence \
     ORDER BY d.next_attempt_ms, d.onboarding_id, d.sequence LIMIT $4",
    " FOR UPDATE OF d SKIP LOCKED",
    ") UPDATE deliveries SET lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1 \
     WHERE (destination_id, onboarding_id, sequence) IN (SELECT destination_id, onboarding_id, sequence FROM c) \
     RETURNING *",
);

/// PostgreSQL, inside the claim's transaction: plan the claim generically, then the
/// followers' statements as usual again (see `claim_deliveries`).
const CLAIM_PLAN: &str = "SET LOCAL plan_cache_mode = force_generic_plan";
const FOLLOWERS_PLAN: &str = "SET LOCAL plan_cache_mode = auto";

/// Leases the run behind each claimed head (`run > 1`): for each head of a
/// `VALUES (destination, onboarding, sequence)` list spliced between the two halves, the
/// next `$4 - 1` pending rows of its queue in sequence order, but only the unbroken prefix of
/// them that is due, unleased and has no lower sequence still in the outbox (a gap would
/// send a later event before an earlier one). They count an attempt each, like the head; a
/// sender that stops early releases the rest ([`DeliveryUpdate::unattempted`]). `$1` the
/// worker, `$2` the lease's end, `$3` now. Not a head: no other claim can take them while
/// the head is pending, and the lease keeps them ours once it is not.
const FOLLOWERS_HEAD: &str = "UPDATE deliveries SET lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1 \
     WHERE state = 'PENDING' AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
     AND (destination_id, onboarding_id, sequence) IN (SELECT r.destination_id, r.onboarding_id, r.sequence \
     FROM (SELECT f.destination_id, f.onboarding_id, f.sequence, \
     ROW_NUMBER() OVER w AS rn, \
     SUM(CASE WHEN f.next_attempt_ms <= $3 AND (f.lease_until_ms IS NULL OR f.lease_until_ms <= $3) \
     AND NOT EXISTS (SELECT 1 FROM event_outbox x WHERE x.onboarding_id = f.onboarding_id \
     AND x.sequence < f.sequence) THEN 0 ELSE 1 END) OVER w AS blocked \
     FROM deliveries f JOIN (";
const FOLLOWERS_TAIL: &str = ") h ON f.destination_id = h.column1 AND f.onboarding_id = h.column2 \
     AND f.sequence > h.column3 WHERE f.state = 'PENDING' \
     WINDOW w AS (PARTITION BY f.destination_id, f.onboarding_id ORDER BY f.sequence \
     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) r WHERE r.rn < $4 AND r.blocked = 0) RETURNING *";

/// [`FOLLOWERS_HEAD`] and [`FOLLOWERS_TAIL`] as PostgreSQL runs them: the same rows, in a
/// shape its planner cannot turn into a scan of every pending row. Each head's next `$4 - 1`
/// rows are a `LATERAL` probe of its own queue (a limited lateral subquery stays a per-head
/// index scan), and the result is a `MATERIALIZED` CTE, computed once. Planned from no
/// statistics, the plain join scanned every pending row for every head, and the `IN`
/// subquery ran again for each of 1,326 outer rows (1.77 million buffers, 6.7 s, one claim).
/// SQLite has no `LATERAL`, and its planner already probes the queue by the join's key.
const FOLLOWERS_PG_HEAD: &str = "WITH r AS MATERIALIZED (SELECT s.destination_id, s.onboarding_id, s.sequence \
     FROM (SELECT f.destination_id, f.onboarding_id, f.sequence, \
     SUM(CASE WHEN f.next_attempt_ms <= $3 AND (f.lease_until_ms IS NULL OR f.lease_until_ms <= $3) \
     AND NOT EXISTS (SELECT 1 FROM event_outbox x WHERE x.onboarding_id = f.onboarding_id \
     AND x.sequence < f.sequence) THEN 0 ELSE 1 END) OVER (PARTITION BY f.destination_id, f.onboarding_id \
     ORDER BY f.sequence ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS blocked FROM (";
const FOLLOWERS_PG_TAIL: &str = ") h CROSS JOIN LATERAL (SELECT g.destination_id, g.onboarding_id, g.sequence, \
     g.next_attempt_ms, g.lease_until_ms FROM deliveries g WHERE g.destination_id = h.column1 \
     AND g.onboarding_id = h.column2 AND g.sequence > h.column3 AND g.state = 'PENDING' \
     ORDER BY g.sequence LIMIT $4 - 1) f) s WHERE s.blocked = 0) \
     UPDATE deliveries SET lease_owner = $1, lease_until_ms = $2, attempts = attempts + 1 \
     WHERE state = 'PENDING' AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
     AND (destination_id, onboarding_id, sequence) IN (SELECT destination_id, onboarding_id, sequence FROM r) \
     RETURNING *";

/// The `head` of a new row `($d, $o, $s)` that is the lowest of its queue in its fan-out
/// batch: whether no lower sequence of the queue is pending. The batch's other rows of that
/// queue are not heads (this one is lower and pending). Evaluated per row inside the insert's
/// `VALUES`, so it stays a probe of that queue's key (see [`CLAIM`] for why not a join).
fn head_probe(d: usize, o: usize, s: usize) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.destination_id = ${d} AND p.onboarding_id = ${o} \
         AND p.state = 'PENDING' AND p.sequence < ${s})"
    )
}

/// Writes the outcomes of sent rows: `$1` the worker, then a
/// `(destination, onboarding, sequence, state, next_attempt_ms, last_status, last_error,
/// delivered_ms)` VALUES list between the two halves; only rows still leased to the worker
/// and pending; returns the keys written.
const FINISH_SENT: &str = "UPDATE deliveries SET state = v.column4, next_attempt_ms = v.column5, \
     last_status = v.column6, last_error = v.column7, delivered_ms = v.column8, lease_owner = NULL, \
     lease_until_ms = NULL FROM";
const FINISH_SENT_WHERE: &str = "WHERE deliveries.destination_id = v.column1 AND deliveries.onboarding_id = v.column2 \
     AND deliveries.sequence = v.column3 AND deliveries.lease_owner = $1 AND deliveries.state = 'PENDING' \
     RETURNING deliveries.destination_id, deliveries.onboarding_id, deliveries.sequence";

/// Gives back rows of a run that were never sent (a `(destination, onboarding, sequence)`
/// VALUES list appended): the lease goes and the claim's attempt with it; nothing else
/// changes.
const FINISH_RELEASED: &str = "UPDATE deliveries SET attempts = attempts - 1, lease_owner = NULL, \
     lease_until_ms = NULL WHERE lease_owner = $1 AND state = 'PENDING' \
     AND (destination_id, onboarding_id, sequence) IN";

/// Flags the lowest pending row of each queue of a `(destination, onboarding)` VALUES list
/// (spliced between the two halves) as its head, after its head left `PENDING` (delivered,
/// dead): one statement for all the queues a finish advanced, not one each.
const NEXT_HEADS: &str = "UPDATE deliveries SET head = TRUE FROM (";
const NEXT_HEADS_WHERE: &str = ") AS v WHERE deliveries.destination_id = v.column1 \
     AND deliveries.onboarding_id = v.column2 AND deliveries.state = 'PENDING' AND NOT deliveries.head \
     AND deliveries.sequence = (SELECT MIN(p.sequence) FROM deliveries p \
     WHERE p.destination_id = v.column1 AND p.onboarding_id = v.column2 AND p.state = 'PENDING')";

/// PostgreSQL only: serialises the fan-out and the finishing of the same queues across
/// transactions (and replicas) until the transaction ends. Without it, a fan-out that sees the
/// queue's head still pending leaves its new row unflagged while a finish that does not yet
/// see that row flags nothing, and the queue would stall. `$1`: the queue keys, one a line;
/// taken in hash order, so two transactions never wait on each other in a cycle. (SQLite's one
/// writer connection already serialises them.)
const LOCK_QUEUES: &str = "SELECT pg_advisory_xact_lock(19, h) FROM (SELECT DISTINCT hashtext(k) AS h \
     FROM unnest(string_to_array($1, E'\\n')) AS u(k)) s ORDER BY h";

/// Runs [`NEXT_HEADS`] for `queues` (`(destination, onboarding)`), a chunk per statement.
async fn flag_next_heads<B: SqlBackend>(
    tx: &mut Transaction<'static, B::Db>,
    queues: &[(&str, &str)],
) -> StoreResult<()> {
    for chunk in queues.chunks(super::rows_per_statement::<B::Db>(2)) {
        let text = format!("{NEXT_HEADS}{}{NEXT_HEADS_WHERE}", pairs(1, chunk.len()));
        let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text));
        for (destination, onboarding) in chunk {
            q = q.bind(*destination).bind(*onboarding);
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Takes [`LOCK_QUEUES`] for the `(destination, onboarding)` queues given (PostgreSQL).
async fn lock_queues<B: SqlBackend>(
    tx: &mut Transaction<'static, B::Db>,
    queues: impl Iterator<Item = (&str, &str)>,
) -> StoreResult<()> {
    if !B::ROW_LOCKS {
        return Ok(());
    }
    let mut keys: Vec<String> = queues.map(|(d, o)| format!("{d}/{o}")).collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    sql::<B::Db>(LOCK_QUEUES).bind(keys.join("\n")).execute(&mut *tx).await?;
    Ok(())
}

/// The event and onboarding columns a filter matches on, for the events of a
/// `(onboarding_id, sequence) IN (...)` list appended to it.
const EVENT_KEYS: &str = "SELECT e.onboarding_id, e.sequence, e.kind, o.provider, o.account_id \
     FROM onboarding_events e JOIN onboardings o ON o.id = e.onboarding_id \
     WHERE (e.onboarding_id, e.sequence) IN";

/// `(onboarding, sequence)` pairs per statement: 2 values each, well under both backends'
/// bind-parameter limits.
const PAIR_CHUNK: usize = 500;

/// `(destination, onboarding, sequence)` triples per statement (followers, released rows).
const TRIPLE_CHUNK: usize = 300;

/// `VALUES ($from, $from+1), ...`: `n` numbered pairs for a row-value `IN` list.
fn pairs(from: usize, n: usize) -> String {
    let rows: Vec<String> = (0..n).map(|i| format!("(${}, ${})", from + 2 * i, from + 2 * i + 1)).collect();
    format!("VALUES {}", rows.join(", "))
}

/// `VALUES ($from, $from+1, $from+2), ...`: `n` numbered triples.
fn triples_from(from: usize, n: usize) -> String {
    let rows: Vec<String> =
        (0..n).map(|i| format!("(${}, ${}, ${})", from + 3 * i, from + 3 * i + 1, from + 3 * i + 2)).collect();
    format!("VALUES {}", rows.join(", "))
}

/// The tenant's enabled destinations, read inside the fan-out's transaction.
pub(super) async fn enabled_destinations<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    tenant: &str,
) -> StoreResult<Vec<DestinationRecord>> {
    let rows = sql::<DB>("SELECT * FROM delivery_destinations WHERE tenant_id = $1 AND enabled ORDER BY id")
        .bind(tenant.to_string())
        .all::<DestinationRow>(&mut *tx)
        .await?;
    records(rows)
}

/// The stored form of a destination's header names: a JSON array.
fn header_names(d: &DestinationRecord) -> String {
    serde_json::Value::from(d.header_names.clone()).to_string()
}

/// The keyset bound of a deliveries page token (`<onboarding>/<sequence>`).
fn delivery_after(token: Option<&str>) -> StoreResult<(String, i64)> {
    let Some(token) = token else { return Ok((String::new(), 0)) };
    let (onboarding, sequence) =
        token.rsplit_once('/').ok_or_else(|| StoreError::Other(format!("bad deliveries page token '{token}'")))?;
    let sequence = sequence.parse().map_err(|_| StoreError::Other(format!("bad deliveries page token '{token}'")))?;
    Ok((onboarding.to_string(), sequence))
}

/// Binds a destination's changeable columns, `$3` to `$23` of both the `INSERT` of
/// `create_destination` and the `UPDATE` of `update_destination` (after the id and the
/// tenant): a new column is one bind here and the next placeholder in each text.
fn bind_changeable<DB: SqlDb>(query: Sql<DB>, d: &DestinationRecord) -> Sql<DB> {
    query
        .bind(d.name.as_str())
        .bind(d.enabled)
        .bind(d.disabled_reason.as_str())
        .bind(d.filter.to_json())
        .bind(d.sink.as_str())
        .bind(d.url.as_str())
        .bind(d.subject.as_str())
        .bind(d.secret.key_id.as_str())
        .bind(d.secret.blob.as_slice())
        .bind(d.previous_secret.as_ref().map(|s| s.key_id.as_str()))
        .bind(d.previous_secret.as_ref().map(|s| s.blob.as_slice()))
        .bind(d.previous_secret_until_ms)
        .bind(d.failing_since_ms)
        .bind(d.updated_ms)
        .bind(header_names(d))
        .bind(d.headers.as_ref().map(|s| s.key_id.as_str()))
        .bind(d.headers.as_ref().map(|s| s.blob.as_slice()))
        .bind(d.disabled_ms)
        .bind(d.disabled_status)
        .bind(d.disabled_cause.map(DisableCause::as_str))
        .bind(d.disabled_notice_id.as_deref())
}

#[async_trait]
impl<B: SqlBackend> Deliveries for B {
    async fn create_destination(&self, d: &DestinationRecord) -> StoreResult<()> {
        let q = sql::<B::Db>(
            "INSERT INTO delivery_destinations (id, tenant_id, name, enabled, disabled_reason, filter_json, sink, \
             url, subject, secret_key_id, secret, previous_secret_key_id, previous_secret, \
             previous_secret_until_ms, failing_since_ms, updated_ms, header_names_json, headers_key_id, headers, \
             disabled_ms, disabled_status, disabled_cause, disabled_notice_id, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
             $22, $23, $24)",
        )
        .bind(d.id.as_str())
        .bind(d.tenant_id.as_str());
        bind_changeable(q, d).bind(d.created_ms).execute(self.writer()).await?;
        Ok(())
    }

    async fn destination(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<DestinationRecord>> {
        let row = sql::<B::Db>("SELECT * FROM delivery_destinations WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant.as_str())
            .optional::<DestinationRow>(self.reader())
            .await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn destination_unscoped(&self, id: &str) -> StoreResult<Option<DestinationRecord>> {
        let row = sql::<B::Db>("SELECT * FROM delivery_destinations WHERE id = $1")
            .bind(id)
            .optional::<DestinationRow>(self.reader())
            .await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn list_destinations(&self, tenant: &TenantId, page: &PageRequest) -> StoreResult<Page<DestinationRecord>> {
        let rows =
            sql::<B::Db>("SELECT * FROM delivery_destinations WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(tenant.as_str())
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(super::page_limit(page.limit))
                .all::<DestinationRow>(self.reader())
                .await?;
        Ok(super::page(records(rows)?, page.limit, |d: &DestinationRecord| d.id.clone()))
    }

    async fn update_destination(&self, d: &DestinationRecord, expect_updated_ms: UnixMs) -> StoreResult<()> {
        let q = sql::<B::Db>(
            "UPDATE delivery_destinations SET name = $3, enabled = $4, disabled_reason = $5, filter_json = $6, \
             sink = $7, url = $8, subject = $9, secret_key_id = $10, secret = $11, \
             previous_secret_key_id = $12, previous_secret = $13, previous_secret_until_ms = $14, \
             failing_since_ms = $15, updated_ms = $16, header_names_json = $17, headers_key_id = $18, headers = $19, \
             disabled_ms = $20, disabled_status = $21, disabled_cause = $22, disabled_notice_id = $23 \
             WHERE id = $1 AND tenant_id = $2 AND updated_ms = $24",
        )
        .bind(d.id.as_str())
        .bind(d.tenant_id.as_str());
        let done = bind_changeable(q, d).bind(expect_updated_ms).execute(self.writer()).await?;
        if done == 0 {
            return match self.destination(&d.tenant_id, &d.id).await? {
                Some(_) => Err(StoreError::Conflict(format!("destination {} changed meanwhile", d.id))),
                None => Err(StoreError::NotFound(format!("destination {}", d.id))),
            };
        }
        Ok(())
    }

    async fn delete_destination(&self, tenant: &TenantId, id: &str) -> StoreResult<bool> {
        // The deliveries go with it (ON DELETE CASCADE).
        let done = sql::<B::Db>("DELETE FROM delivery_destinations WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant.as_str())
            .execute(self.writer())
            .await?;
        Ok(done > 0)
    }

    async fn note_destination_health(&self, id: &str, ok: bool, at: UnixMs) -> StoreResult<Option<UnixMs>> {
        let query = if ok {
            sql::<B::Db>(
                "UPDATE delivery_destinations SET failing_since_ms = NULL WHERE id = $1 RETURNING failing_since_ms",
            )
            .bind(id)
        } else {
            // Read first: a destination already failing keeps its time, and writing it again
            // on every failed attempt made its row the one every sender queued on during an
            // outage (41,664 updates in a 60 s outage, 1.2 ms each, the database's top
            // statement).
            let known = sql::<B::Db>("SELECT failing_since_ms FROM delivery_destinations WHERE id = $1")
                .bind(id)
                .optional::<(Option<i64>,)>(self.reader())
                .await?;
            match known {
                None => return Ok(None),
                Some((Some(since),)) => return Ok(Some(since)),
                Some((None,)) => {}
            }
            sql::<B::Db>(
                "UPDATE delivery_destinations SET failing_since_ms = COALESCE(failing_since_ms, $2) WHERE id = $1 \
                 RETURNING failing_since_ms",
            )
            .bind(id)
            .bind(at)
        };
        let row = query.optional::<(Option<i64>,)>(self.writer()).await?;
        Ok(row.and_then(|(since,)| since))
    }

    async fn dispatch_outbox(&self, now: UnixMs, limit: u32) -> StoreResult<DispatchStats> {
        let mut tx = B::Db::begin(self.writer()).await?;
        let rows =
            sql::<B::Db>(B::locking(OUTBOX_ROWS)).bind(i64::from(limit)).all::<(String, i64, String)>(&mut tx).await?;
        if rows.is_empty() {
            B::Db::commit(tx).await?;
            return Ok(DispatchStats::default());
        }
        // Read once per tenant per pass: a burst of one tenant's events costs one read.
        let mut destinations: HashMap<String, Vec<DestinationRecord>> = HashMap::new();
        for (_, _, tenant) in &rows {
            if !destinations.contains_key(tenant) {
                let found = enabled_destinations(&mut tx, tenant).await?;
                destinations.insert(tenant.clone(), found);
            }
        }
        // The filter keys of the events some destination may want, a chunk per statement.
        let wanted: Vec<&(String, i64, String)> =
            rows.iter().filter(|(_, _, t)| destinations.get(t).is_some_and(|d| !d.is_empty())).collect();
        let mut keys: Vec<EventKey> = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(PAIR_CHUNK) {
            let text = format!("{EVENT_KEYS} ({})", pairs(1, chunk.len()));
            let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text));
            for (onboarding, sequence, _) in chunk {
                q = q.bind(onboarding.as_str()).bind(*sequence);
            }
            keys.extend(q.all::<EventKey>(&mut tx).await?);
        }
        // One row per (destination, event) that passes; onboardings deleted with their log
        // have no key and get none.
        let tenant_of: HashMap<(&str, i64), &str> =
            wanted.iter().map(|(o, s, t)| ((o.as_str(), *s), t.as_str())).collect();
        let mut inserts: Vec<(&str, &str, i64, &str)> = Vec::new();
        for key in &keys {
            let Some(tenant) = tenant_of.get(&(key.0.as_str(), key.1)) else { continue };
            for d in destinations.get(*tenant).map(Vec::as_slice).unwrap_or_default() {
                if passes(&d.filter, key)? {
                    inserts.push((d.id.as_str(), key.0.as_str(), key.1, tenant));
                }
            }
        }
        let mut stats = DispatchStats::default();
        lock_queues::<B>(&mut tx, inserts.iter().map(|(d, o, _, _)| (*d, *o))).await?;
        let mut inserted: HashSet<(String, String, i64)> = HashSet::new();
        // Each queue's lowest new row may be its head; the rest of the batch's rows of that
        // queue are not.
        let mut lowest: HashMap<(&str, &str), i64> = HashMap::new();
        for (destination, onboarding, sequence, _) in &inserts {
            let low = lowest.entry((*destination, *onboarding)).or_insert(*sequence);
            *low = (*low).min(*sequence);
        }
        // 4 values a row (plus the time), as many rows as suit the backend.
        for chunk in inserts.chunks(super::rows_per_statement::<B::Db>(4)) {
            let values: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(r, (destination, onboarding, sequence, _))| {
                    let b = r * 4;
                    let head = if lowest.get(&(*destination, *onboarding)) == Some(sequence) {
                        head_probe(b + 2, b + 3, b + 4)
                    } else {
                        "FALSE".to_owned()
                    };
                    format!("(${}, ${}, ${}, ${}, 'PENDING', 0, $1, $1, {head})", b + 2, b + 3, b + 4, b + 5)
                })
                .collect();
            let text = format!(
                "INSERT INTO deliveries (destination_id, onboarding_id, sequence, tenant_id, state, attempts, \
                 next_attempt_ms, created_ms, head) VALUES {} \
                 ON CONFLICT (destination_id, onboarding_id, sequence) DO NOTHING \
                 RETURNING destination_id, onboarding_id, sequence",
                values.join(", ")
            );
            let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text)).bind(now);
            for (destination, onboarding, sequence, tenant) in chunk {
                q = q.bind(*destination).bind(*onboarding).bind(*sequence).bind(*tenant);
            }
            inserted.extend(q.all::<(String, String, i64)>(&mut tx).await?);
        }
        stats.deliveries = inserted.len() as u64;
        // A row that was there already (a replay raced the outbox) may have been the one the
        // queue's head was computed for: flag those queues' lowest pending rows instead. Rare,
        // so looked for only when some row was not written.
        if inserted.len() < inserts.len() {
            let mut conflicted: Vec<(&str, &str)> = inserts
                .iter()
                .filter(|(d, o, s, _)| !inserted.contains(&((*d).to_owned(), (*o).to_owned(), *s)))
                .map(|(d, o, _, _)| (*d, *o))
                .collect();
            conflicted.sort_unstable();
            conflicted.dedup();
            flag_next_heads::<B>(&mut tx, &conflicted).await?;
        }
        for chunk in rows.chunks(PAIR_CHUNK) {
            let text =
                format!("DELETE FROM event_outbox WHERE (onboarding_id, sequence) IN ({})", pairs(1, chunk.len()));
            let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text));
            for (onboarding, sequence, _) in chunk {
                q = q.bind(onboarding.as_str()).bind(*sequence);
            }
            stats.events += q.execute(&mut tx).await?;
        }
        B::Db::commit(tx).await?;
        Ok(stats)
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
        run: u32,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        let until = now.saturating_add(super::ms(lease));
        let mut tx = B::Db::begin(self.writer()).await?;
        if B::BACKEND == crate::store::Backend::Postgres {
            // The generic plan walks `deliveries_heads` in claim order and stops at the
            // limit. A custom plan, costed from statistics that lag the newest
            // `next_attempt_ms`, expects a few due heads and sorts all of them after
            // probing each: under delivery load (pg_stat_statements) that made the claim
            // 117 ms on average and about 93 % of the database's time. The followers'
            // statements must not keep it: generically planned, they took 8.8 s on average
            // under the same load (up to 559 s), and a drain stalled.
            sql::<B::Db>(CLAIM_PLAN).execute(&mut tx).await?;
        }
        let rows = sql::<B::Db>(B::locking(CLAIM))
            .bind(worker)
            .bind(until)
            .bind(now)
            .bind(i64::from(limit))
            .all::<DeliveryRow>(&mut tx)
            .await?;
        let mut claimed: Vec<DeliveryRecord> = records(rows)?;
        // Only a head on its first attempt brings its run: one being retried has failed
        // before and likely fails again, and leasing then releasing the rows behind it on
        // every retry of an outage rewrote them all (PostgreSQL's table bloated with the
        // dead versions, and a 60 s outage drained at a third of a 20 s one's rate).
        let heads: Vec<(String, String, i64)> = claimed
            .iter()
            .filter(|d| d.attempts <= 1)
            .map(|d| (d.destination_id.clone(), d.onboarding_id.as_str().to_owned(), d.sequence))
            .collect();
        if run > 1 && !heads.is_empty() {
            let (head, tail) = if B::BACKEND == crate::store::Backend::Postgres {
                sql::<B::Db>(FOLLOWERS_PLAN).execute(&mut tx).await?;
                (FOLLOWERS_PG_HEAD, FOLLOWERS_PG_TAIL)
            } else {
                (FOLLOWERS_HEAD, FOLLOWERS_TAIL)
            };
            for chunk in heads.chunks(TRIPLE_CHUNK) {
                let text = format!("{head}{}{tail}", triples_from(5, chunk.len()));
                let mut q =
                    sql::<B::Db>(sqlx::AssertSqlSafe(text)).bind(worker).bind(until).bind(now).bind(i64::from(run));
                for (destination, onboarding, sequence) in chunk {
                    q = q.bind(destination.as_str()).bind(onboarding.as_str()).bind(*sequence);
                }
                claimed.extend(records::<DeliveryRow, DeliveryRecord>(q.all::<DeliveryRow>(&mut tx).await?)?);
            }
        }
        B::Db::commit(tx).await?;
        claimed.sort_by(|a, b| {
            (&a.destination_id, &a.onboarding_id, a.sequence).cmp(&(&b.destination_id, &b.onboarding_id, b.sequence))
        });
        Ok(claimed)
    }

    async fn finish_delivery(&self, u: &DeliveryUpdate, worker: &str) -> StoreResult<bool> {
        let done = self.finish_deliveries(std::slice::from_ref(u), worker).await?;
        Ok(done.first().copied().unwrap_or(false))
    }

    async fn finish_deliveries(&self, updates: &[DeliveryUpdate], worker: &str) -> StoreResult<Vec<bool>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = B::Db::begin(self.writer()).await?;
        let leaving = |u: &&DeliveryUpdate| u.state != DeliveryState::Pending && !u.unattempted;
        lock_queues::<B>(
            &mut tx,
            updates.iter().filter(leaving).map(|u| (u.destination_id.as_str(), u.onboarding_id.as_str())),
        )
        .await?;
        // One statement per chunk of sent rows and one per chunk of released ones (not one
        // per row: on PostgreSQL each statement is a round trip, and a run finishes 32 rows).
        let (released, sent): (Vec<&DeliveryUpdate>, Vec<&DeliveryUpdate>) =
            updates.iter().partition(|u| u.unattempted);
        let mut written: HashSet<(String, String, i64)> = HashSet::new();
        // 8 values a row (plus the worker), as many rows as suit the backend.
        for chunk in sent.chunks(super::rows_per_statement::<B::Db>(8)) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let b = 2 + r * 8;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        b,
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7
                    )
                })
                .collect();
            let text = format!("{FINISH_SENT} (VALUES {}) AS v {FINISH_SENT_WHERE}", values.join(", "));
            let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text)).bind(worker);
            for u in chunk {
                let delivered = (u.state == DeliveryState::Delivered).then_some(u.at_ms);
                q = q
                    .bind(u.destination_id.as_str())
                    .bind(u.onboarding_id.as_str())
                    .bind(u.sequence)
                    .bind(u.state.as_str())
                    .bind(u.next_attempt_ms)
                    .bind(u.last_status)
                    .bind(u.last_error.as_deref())
                    .bind(delivered);
            }
            written.extend(q.all::<(String, String, i64)>(&mut tx).await?);
        }
        for chunk in released.chunks(TRIPLE_CHUNK) {
            let text = format!(
                "{FINISH_RELEASED} ({}) RETURNING destination_id, onboarding_id, sequence",
                triples_from(2, chunk.len())
            );
            let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text)).bind(worker);
            for u in chunk {
                q = q.bind(u.destination_id.as_str()).bind(u.onboarding_id.as_str()).bind(u.sequence);
            }
            written.extend(q.all::<(String, String, i64)>(&mut tx).await?);
        }
        // In the batch's order; a row named twice was written once (the first).
        let mut done = Vec::with_capacity(updates.len());
        // Queues whose head left PENDING: their next pending sequence becomes the head, once
        // per queue after all the batch's updates (a run finishes several rows of one queue).
        let mut advanced: Vec<(&str, &str)> = Vec::new();
        for u in updates {
            // The store key (`as_str`), not `Display` (which shows a scoped id's name only).
            let ok = written.remove(&(u.destination_id.clone(), u.onboarding_id.as_str().to_owned(), u.sequence));
            if ok && !u.unattempted && u.state != DeliveryState::Pending {
                let queue = (u.destination_id.as_str(), u.onboarding_id.as_str());
                if !advanced.contains(&queue) {
                    advanced.push(queue);
                }
            }
            done.push(ok);
        }
        flag_next_heads::<B>(&mut tx, &advanced).await?;
        B::Db::commit(tx).await?;
        Ok(done)
    }

    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        destination: &str,
        query: &DeliveryQuery,
    ) -> StoreResult<Page<DeliveryRecord>> {
        let (after_onboarding, after_sequence) = delivery_after(query.after.as_deref())?;
        let head = "SELECT * FROM deliveries WHERE tenant_id = $1 AND destination_id = $2 \
             AND (onboarding_id > $3 OR (onboarding_id = $3 AND sequence > $4))";
        let text = match query.state {
            Some(_) => format!("{head} AND state = $6 ORDER BY onboarding_id, sequence LIMIT $5"),
            None => format!("{head} ORDER BY onboarding_id, sequence LIMIT $5"),
        };
        let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text))
            .bind(tenant.as_str())
            .bind(destination)
            .bind(after_onboarding)
            .bind(after_sequence)
            .bind(super::page_limit(query.limit));
        if let Some(state) = query.state {
            q = q.bind(state.as_str());
        }
        let rows = q.all::<DeliveryRow>(self.reader()).await?;
        Ok(super::page(records(rows)?, query.limit, DeliveryRecord::event_id))
    }

    async fn redeliver(
        &self,
        tenant: &TenantId,
        destination: &str,
        from: &RedeliverFrom,
        after: Option<&ReplayCursor>,
        limit: u32,
        now: UnixMs,
    ) -> StoreResult<ReplayChunk> {
        let mut tx = B::Db::begin(self.writer()).await?;
        let row = sql::<B::Db>("SELECT * FROM delivery_destinations WHERE id = $1 AND tenant_id = $2")
            .bind(destination)
            .bind(tenant.as_str())
            .optional::<DestinationRow>(&mut tx)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("destination {destination}")));
        };
        let d = DestinationRecord::try_from(row)?;
        // Keyset after the previous chunk's last event ('' / 0: from the start).
        let (after_onboarding, after_sequence) =
            after.map_or((String::new(), 0), |c| (c.onboarding_id.as_str().to_string(), c.sequence));
        let keys = match from {
            RedeliverFrom::Time(since) => {
                sql::<B::Db>(
                    "SELECT e.onboarding_id, e.sequence, e.kind, o.provider, o.account_id \
                     FROM onboarding_events e JOIN onboardings o ON o.id = e.onboarding_id \
                     WHERE o.tenant_id = $1 AND e.created_ms >= $2 \
                     AND (e.onboarding_id > $3 OR (e.onboarding_id = $3 AND e.sequence > $4)) \
                     ORDER BY e.onboarding_id, e.sequence LIMIT $5",
                )
                .bind(tenant.as_str())
                .bind(*since)
                .bind(after_onboarding)
                .bind(after_sequence)
                .bind(i64::from(limit))
                .all::<EventKey>(&mut tx)
                .await?
            }
            RedeliverFrom::Sequence { onboarding_id, sequence } => {
                sql::<B::Db>(
                    "SELECT e.onboarding_id, e.sequence, e.kind, o.provider, o.account_id \
                     FROM onboarding_events e JOIN onboardings o ON o.id = e.onboarding_id \
                     WHERE o.tenant_id = $1 AND e.onboarding_id = $2 AND e.sequence >= $3 AND e.sequence > $4 \
                     ORDER BY e.sequence LIMIT $5",
                )
                .bind(tenant.as_str())
                .bind(onboarding_id.as_str())
                .bind(*sequence)
                .bind(after_sequence)
                .bind(i64::from(limit))
                .all::<EventKey>(&mut tx)
                .await?
            }
        };
        let mut wanted: Vec<&EventKey> = Vec::with_capacity(keys.len());
        for key in &keys {
            if passes(&d.filter, key)? {
                wanted.push(key);
            }
        }
        let mut queued = 0;
        // A lease in flight is dropped: its sender's outcome no longer applies (its finish
        // finds no lease), and the replay sends the same event id again.
        // 2 values a row (plus 3 shared), as many rows as suit the backend.
        for chunk in wanted.chunks(super::rows_per_statement::<B::Db>(2)) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| format!("($2, ${}, ${}, $3, 'PENDING', 0, $1, $1)", 4 + 2 * r, 5 + 2 * r))
                .collect();
            let text = format!(
                "INSERT INTO deliveries (destination_id, onboarding_id, sequence, tenant_id, state, attempts, \
                 next_attempt_ms, created_ms) VALUES {} \
                 ON CONFLICT (destination_id, onboarding_id, sequence) DO UPDATE SET state = 'PENDING', \
                 attempts = 0, next_attempt_ms = excluded.next_attempt_ms, lease_owner = NULL, \
                 lease_until_ms = NULL, delivered_ms = NULL, head = TRUE",
                values.join(", ")
            );
            let mut q = sql::<B::Db>(sqlx::AssertSqlSafe(text)).bind(now).bind(d.id.as_str()).bind(tenant.as_str());
            for key in chunk {
                q = q.bind(key.0.as_str()).bind(key.1);
            }
            queued += q.execute(&mut tx).await?;
        }
        B::Db::commit(tx).await?;
        let last = match keys.last() {
            Some(k) => Some(ReplayCursor { onboarding_id: super::id(k.0.clone())?, sequence: k.1 }),
            None => None,
        };
        Ok(ReplayChunk { queued, scanned: u32::try_from(keys.len()).unwrap_or(u32::MAX), last })
    }

    async fn delivery_backlog(&self) -> StoreResult<(i64, Vec<(String, i64)>)> {
        let (outbox,): (i64,) = sql::<B::Db>("SELECT COUNT(*) FROM event_outbox").one(self.reader()).await?;
        let pending = sql::<B::Db>(
            "SELECT destination_id, COUNT(*) FROM deliveries WHERE state = 'PENDING' GROUP BY destination_id \
             ORDER BY destination_id",
        )
        .all::<(String, i64)>(self.reader())
        .await?;
        Ok((outbox, pending))
    }
}

/// Writes the outbox row of an event inside the event's transaction (see
/// [`super::onboardings`]): the one extra insert on the hot path, made only when the tenant
/// has an enabled destination. Tenants that receive no pushes (most) then cost an indexed
/// existence check instead of a row per event, and their outbox cannot grow without a
/// dispatcher to empty it. A destination receives what is committed after it exists (earlier
/// events through `RedeliverEvents`).
pub(super) async fn insert_outbox<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    onboarding: &OnboardingId,
    sequence: i64,
    tenant: &TenantId,
) -> StoreResult<()> {
    sql::<DB>(
        "INSERT INTO event_outbox (onboarding_id, sequence, tenant_id) SELECT $1, $2, $3 \
         WHERE EXISTS (SELECT 1 FROM delivery_destinations WHERE tenant_id = $3 AND enabled)",
    )
    .bind(onboarding.as_str())
    .bind(sequence)
    .bind(tenant.as_str())
    .execute(tx)
    .await?;
    Ok(())
}
