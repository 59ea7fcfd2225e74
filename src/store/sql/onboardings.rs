//! Onboardings, their steps and their event logs: creation, the one transactional change,
//! reads, and the watchdog's scans.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Transaction;

use super::db::{Sql, SqlDb, sql};
use super::{SqlBackend, feed, locking, records};
use crate::domain::{AccountId, OnboardingId, OnboardingState, ProviderKind, TenantId, UnixMs};
use crate::store::cache::OnboardingCache;
use crate::store::{
    ChangeNotice, ChangeOutcome, EventRecord, NewOnboarding, OnboardingChange, OnboardingFilter, OnboardingRecord,
    Onboardings, Page, PageRequest, StepRecord, StoreError, StoreResult,
};

/// An `onboardings` row. A new column is a field here and in the conversion below, and a
/// bound value in [`bind_changeable`] (with its place in the two statements it lists).
#[derive(sqlx::FromRow)]
struct OnboardingRow {
    id: String,
    tenant_id: String,
    account_id: String,
    provider: String,
    state: String,
    desired_state: Option<String>,
    state_reason: String,
    provider_status: String,
    reference: String,
    details_json: String,
    engine_json: String,
    external_key: Option<String>,
    secret_key_id: Option<String>,
    secret: Option<Vec<u8>>,
    sequence: i64,
    state_deadline_ms: Option<i64>,
    expire_ms: Option<i64>,
    created_ms: i64,
    updated_ms: i64,
}

impl TryFrom<OnboardingRow> for OnboardingRecord {
    type Error = StoreError;
    fn try_from(r: OnboardingRow) -> StoreResult<Self> {
        Ok(Self {
            id: super::id(r.id)?,
            tenant_id: super::id(r.tenant_id)?,
            account_id: super::id(r.account_id)?,
            provider: super::provider(r.provider)?,
            state: super::state(r.state)?,
            desired_state: super::opt_state(r.desired_state)?,
            state_reason: r.state_reason,
            provider_status: r.provider_status,
            reference: r.reference,
            details_json: r.details_json,
            engine_json: r.engine_json,
            external_key: r.external_key,
            secret: super::opt_sealed(r.secret_key_id, r.secret)?,
            sequence: r.sequence,
            state_deadline_ms: r.state_deadline_ms,
            expire_ms: r.expire_ms,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        })
    }
}

/// An `onboarding_events` row.
#[derive(sqlx::FromRow)]
struct EventRow {
    onboarding_id: String,
    sequence: i64,
    kind: String,
    state: String,
    previous_state: String,
    reason: String,
    provider_status: String,
    step: Option<String>,
    data_json: String,
    created_ms: i64,
}

impl TryFrom<EventRow> for EventRecord {
    type Error = StoreError;
    fn try_from(r: EventRow) -> StoreResult<Self> {
        Ok(Self {
            onboarding_id: super::id(r.onboarding_id)?,
            sequence: r.sequence,
            kind: r.kind.parse().map_err(StoreError::Corrupt)?,
            state: super::state(r.state)?,
            previous_state: super::state(r.previous_state)?,
            reason: r.reason,
            provider_status: r.provider_status,
            step: r.step,
            data_json: r.data_json,
            created_ms: r.created_ms,
        })
    }
}

/// The columns of `pipeline_steps` as [`StepRow`] reads them: prefixed `s_`, so that a join
/// with `onboardings` ([`PIPELINE`]) reads them under the same names as a plain read.
macro_rules! step_columns {
    () => {
        "onboarding_id AS s_onboarding_id, name AS s_name, position AS s_position, state AS s_state, \
         attempts AS s_attempts, max_attempts AS s_max_attempts, next_run_ms AS s_next_run_ms, \
         lease_owner AS s_lease_owner, lease_until_ms AS s_lease_until_ms, last_error AS s_last_error, \
         last_error_code AS s_last_error_code, provider_stage_json AS s_provider_stage_json, \
         data_json AS s_data_json, deadline_ms AS s_deadline_ms, started_ms AS s_started_ms, \
         finished_ms AS s_finished_ms, created_ms AS s_created_ms, updated_ms AS s_updated_ms"
    };
}
pub(super) use step_columns;

/// A `pipeline_steps` row, read through [`step_columns!`].
#[derive(sqlx::FromRow)]
pub(super) struct StepRow {
    #[sqlx(rename = "s_onboarding_id")]
    onboarding_id: String,
    #[sqlx(rename = "s_name")]
    name: String,
    #[sqlx(rename = "s_position")]
    position: i32,
    #[sqlx(rename = "s_state")]
    state: String,
    #[sqlx(rename = "s_attempts")]
    attempts: i32,
    #[sqlx(rename = "s_max_attempts")]
    max_attempts: i32,
    #[sqlx(rename = "s_next_run_ms")]
    next_run_ms: Option<i64>,
    #[sqlx(rename = "s_lease_owner")]
    lease_owner: Option<String>,
    #[sqlx(rename = "s_lease_until_ms")]
    lease_until_ms: Option<i64>,
    #[sqlx(rename = "s_last_error")]
    last_error: Option<String>,
    #[sqlx(rename = "s_last_error_code")]
    last_error_code: Option<String>,
    #[sqlx(rename = "s_provider_stage_json")]
    provider_stage_json: String,
    #[sqlx(rename = "s_data_json")]
    data_json: String,
    #[sqlx(rename = "s_deadline_ms")]
    deadline_ms: Option<i64>,
    #[sqlx(rename = "s_started_ms")]
    started_ms: Option<i64>,
    #[sqlx(rename = "s_finished_ms")]
    finished_ms: Option<i64>,
    #[sqlx(rename = "s_created_ms")]
    created_ms: i64,
    #[sqlx(rename = "s_updated_ms")]
    updated_ms: i64,
}

impl TryFrom<StepRow> for StepRecord {
    type Error = StoreError;
    fn try_from(r: StepRow) -> StoreResult<Self> {
        Ok(Self {
            onboarding_id: super::id(r.onboarding_id)?,
            name: r.name,
            position: r.position,
            state: super::step_state(r.state)?,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            next_run_ms: r.next_run_ms,
            lease_owner: r.lease_owner,
            lease_until_ms: r.lease_until_ms,
            last_error: r.last_error,
            last_error_code: r.last_error_code,
            provider_stage_json: r.provider_stage_json,
            data_json: r.data_json,
            deadline_ms: r.deadline_ms,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        })
    }
}

/// The step of one [`PIPELINE`] row: `None` in the one row the outer join gives an onboarding
/// without steps (NULL step columns).
struct JoinedStep(Option<StepRow>);

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for JoinedStep
where
    StepRow: sqlx::FromRow<'r, R>,
    &'r str: sqlx::ColumnIndex<R>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let name: Option<String> = row.try_get("s_name")?;
        Ok(Self(name.map(|_| StepRow::from_row(row)).transpose()?))
    }
}

/// An onboarding and its steps in one statement: one row per step (or one row with NULL step
/// columns), steps in [`Onboardings::steps`] order.
pub(super) const PIPELINE: &str = concat!(
    "SELECT o.*, ",
    "s.onboarding_id AS s_onboarding_id, s.name AS s_name, s.position AS s_position, ",
    "s.state AS s_state, s.attempts AS s_attempts, s.max_attempts AS s_max_attempts, ",
    "s.next_run_ms AS s_next_run_ms, s.lease_owner AS s_lease_owner, ",
    "s.lease_until_ms AS s_lease_until_ms, s.last_error AS s_last_error, ",
    "s.last_error_code AS s_last_error_code, ",
    "s.provider_stage_json AS s_provider_stage_json, s.data_json AS s_data_json, ",
    "s.deadline_ms AS s_deadline_ms, s.started_ms AS s_started_ms, ",
    "s.finished_ms AS s_finished_ms, s.created_ms AS s_created_ms, ",
    "s.updated_ms AS s_updated_ms",
    " FROM onboardings o LEFT JOIN pipeline_steps s ON s.onboarding_id = o.id WHERE o.id = $1 ",
    "ORDER BY s.position, s.name"
);

/// The row a change reads before writing it: locked on PostgreSQL.
pub(super) const ROW_FOR_CHANGE: [&str; 2] = locking!("SELECT * FROM onboardings WHERE id = $1", " FOR UPDATE", "");

/// Appends `e` to the log of an onboarding of `tenant`, with its outbox row (issue 19: the
/// delivery fan-out reads the outbox, so an event committed is an event delivered).
async fn insert_event<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    e: &EventRecord,
    tenant: &TenantId,
) -> StoreResult<()> {
    let query = sql::<DB>(
        "INSERT INTO onboarding_events (onboarding_id, sequence, kind, state, previous_state, \
         reason, provider_status, step, data_json, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    );
    bind_event(query, e).execute(&mut *tx).await?;
    super::deliveries::insert_outbox(tx, &e.onboarding_id, e.sequence, tenant).await
}

/// Binds the 10 columns of an `onboarding_events` row in table order (the single insert and
/// the bulk insert write the same ones).
fn bind_event<DB: SqlDb>(query: Sql<DB>, e: &EventRecord) -> Sql<DB> {
    query
        .bind(e.onboarding_id.as_str())
        .bind(e.sequence)
        .bind(e.kind.as_str())
        .bind(e.state.as_str())
        .bind(e.previous_state.as_str())
        .bind(e.reason.as_str())
        .bind(e.provider_status.as_str())
        .bind(e.step.as_deref())
        .bind(e.data_json.as_str())
        .bind(e.created_ms)
}

/// Writes `steps`, and returns the one named `named` as stored (for the change notice), if
/// among them.
async fn write_steps<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    onboarding: &OnboardingId,
    steps: &[StepRecord],
    named: Option<&str>,
) -> StoreResult<Option<StepRecord>> {
    let mut found = None;
    for step in steps {
        let created_ms = upsert_step(tx, onboarding, step).await?;
        if named == Some(step.name.as_str()) {
            found = Some(StepRecord { created_ms, ..step.clone() });
        }
    }
    Ok(found)
}

/// Binds the 18 columns of a `pipeline_steps` row in table order (the upsert and the bulk
/// insert write the same ones).
fn bind_step<DB: SqlDb>(query: Sql<DB>, onboarding: &OnboardingId, s: &StepRecord) -> Sql<DB> {
    query
        .bind(onboarding.as_str())
        .bind(s.name.as_str())
        .bind(s.position)
        .bind(s.state.as_str())
        .bind(s.attempts)
        .bind(s.max_attempts)
        .bind(s.next_run_ms)
        .bind(s.lease_owner.as_deref())
        .bind(s.lease_until_ms)
        .bind(s.last_error.as_deref())
        .bind(s.last_error_code.as_deref())
        .bind(s.provider_stage_json.as_str())
        .bind(s.data_json.as_str())
        .bind(s.deadline_ms)
        .bind(s.started_ms)
        .bind(s.finished_ms)
        .bind(s.created_ms)
        .bind(s.updated_ms)
}

/// Inserts or replaces a step (matched by onboarding and name; `created_ms` kept). Returns the
/// stored `created_ms`.
async fn upsert_step<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    onboarding: &OnboardingId,
    s: &StepRecord,
) -> StoreResult<i64> {
    let query = sql::<DB>(
        "INSERT INTO pipeline_steps (onboarding_id, name, position, state, attempts, max_attempts, \
         next_run_ms, lease_owner, lease_until_ms, last_error, last_error_code, \
         provider_stage_json, data_json, deadline_ms, started_ms, finished_ms, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (onboarding_id, name) DO UPDATE SET position = excluded.position, \
         state = excluded.state, attempts = excluded.attempts, max_attempts = excluded.max_attempts, \
         next_run_ms = excluded.next_run_ms, lease_owner = excluded.lease_owner, \
         lease_until_ms = excluded.lease_until_ms, last_error = excluded.last_error, \
         last_error_code = excluded.last_error_code, provider_stage_json = excluded.provider_stage_json, \
         data_json = excluded.data_json, deadline_ms = excluded.deadline_ms, \
         started_ms = excluded.started_ms, finished_ms = excluded.finished_ms, \
         updated_ms = excluded.updated_ms RETURNING created_ms",
    );
    let (created_ms,): (i64,) = bind_step(query, onboarding, s).one(tx).await?;
    Ok(created_ms)
}

/// Binds the columns a change can write, in this order: `state`, `desired_state`,
/// `state_reason`, `provider_status`, `details_json`, `external_key`, `secret_key_id`, `secret`,
/// `state_deadline_ms`, `expire_ms`, `engine_json`: the last eleven placeholders of both the `INSERT` of
/// [`insert_rows`] and the `UPDATE` of [`apply_in`], so a new such column is one bind
/// appended here and one column with the next placeholder appended to each text.
fn bind_changeable<DB: SqlDb>(query: Sql<DB>, o: &OnboardingRecord) -> Sql<DB> {
    query
        .bind(o.state.as_str())
        .bind(o.desired_state.map(|s| s.as_str()))
        .bind(o.state_reason.as_str())
        .bind(o.provider_status.as_str())
        .bind(o.details_json.as_str())
        .bind(o.external_key.as_deref())
        .bind(o.secret.as_ref().map(|s| s.key_id.as_str()))
        .bind(o.secret.as_ref().map(|s| s.blob.as_slice()))
        .bind(o.state_deadline_ms)
        .bind(o.expire_ms)
        .bind(o.engine_json.as_str())
}

/// Writes a batch of new onboardings inside `tx`: idempotency records first, then the rows,
/// their steps, their first events and their outbox entries, each table in multi-row
/// statements chunked under [`super::MAX_BINDS`] (a statement is a round trip, to the server
/// or to SQLite's worker thread, so one per row made a bulk create cost its row count in
/// round trips). What it stores is what writing the rows one by one stored.
async fn insert_new_onboardings<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    batch: &[NewOnboarding],
) -> StoreResult<(Vec<EventRecord>, Vec<ChangeNotice>)> {
    // First, so a duplicate key fails before anything else is written (the transaction is
    // rolled back when `tx` drops).
    let keys: Vec<&crate::store::IdempotencyRecord> = batch.iter().filter_map(|n| n.idempotency.as_ref()).collect();
    super::tenants::insert_idempotencies(tx, &keys).await?;
    insert_rows(tx, batch).await?;
    // Each onboarding's steps as the one-by-one upserts left them: a name given twice is
    // stored once, with the last one's fields and the first one's `created_ms`.
    let steps: Vec<(&OnboardingId, Vec<StepRecord>)> =
        batch.iter().map(|n| (&n.onboarding.id, stored_steps(&n.steps))).collect();
    let flat: Vec<(&OnboardingId, &StepRecord)> =
        steps.iter().flat_map(|(id, list)| list.iter().map(move |s| (*id, s))).collect();
    insert_steps(tx, &flat).await?;
    let mut events = Vec::with_capacity(batch.len());
    let mut notices = Vec::with_capacity(batch.len());
    for (new, (_, stored)) in batch.iter().zip(&steps) {
        let o = &new.onboarding;
        let event = EventRecord {
            onboarding_id: o.id.clone(),
            sequence: 1,
            kind: new.event.kind,
            state: o.state,
            previous_state: o.state,
            reason: new.event.reason.clone(),
            provider_status: o.provider_status.clone(),
            step: new.event.step.clone(),
            data_json: new.event.data_json.clone(),
            created_ms: o.created_ms,
        };
        notices.push(ChangeNotice::committed(&event, stored));
        events.push(event);
    }
    insert_events(tx, &events, batch).await?;
    Ok((events, notices))
}

/// `steps` as upserting them one by one stores them (see [`insert_new_onboardings`]).
fn stored_steps(steps: &[StepRecord]) -> Vec<StepRecord> {
    let mut out: Vec<StepRecord> = Vec::with_capacity(steps.len());
    for s in steps {
        // A handful of steps per onboarding: a scan is cheaper than a map.
        match out.iter_mut().find(|kept| kept.name == s.name) {
            Some(kept) => *kept = StepRecord { created_ms: kept.created_ms, ..s.clone() },
            None => out.push(s.clone()),
        }
    }
    out
}

/// The `onboardings` rows of a batch, at sequence 1.
async fn insert_rows<DB: SqlDb>(tx: &mut Transaction<'static, DB>, batch: &[NewOnboarding]) -> StoreResult<()> {
    const COLUMNS: usize = 18;
    for chunk in batch.chunks(super::rows_per_statement::<DB>(COLUMNS)) {
        let text = format!(
            "INSERT INTO onboardings (id, tenant_id, account_id, provider, reference, created_ms, updated_ms, \
             state, desired_state, state_reason, provider_status, details_json, external_key, secret_key_id, secret, \
             state_deadline_ms, expire_ms, engine_json, sequence) VALUES {}",
            super::value_tuples(chunk.len(), COLUMNS, ", 1")
        );
        // Only numbered placeholders are formatted in; every value is bound.
        let mut query = sql::<DB>(sqlx::AssertSqlSafe(text));
        for new in chunk {
            let o = &new.onboarding;
            query = query
                .bind(o.id.as_str())
                .bind(o.tenant_id.as_str())
                .bind(o.account_id.as_str())
                .bind(o.provider.as_str())
                .bind(o.reference.as_str())
                .bind(o.created_ms)
                .bind(o.updated_ms);
            query = bind_changeable(query, o);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// New steps (their onboardings are new in this transaction, so none exists yet: a plain
/// insert stores what the upsert of [`upsert_step`] would).
async fn insert_steps<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    steps: &[(&OnboardingId, &StepRecord)],
) -> StoreResult<()> {
    const COLUMNS: usize = 18;
    for chunk in steps.chunks(super::rows_per_statement::<DB>(COLUMNS)) {
        let text = format!(
            "INSERT INTO pipeline_steps (onboarding_id, name, position, state, attempts, max_attempts, \
             next_run_ms, lease_owner, lease_until_ms, last_error, last_error_code, \
             provider_stage_json, data_json, deadline_ms, started_ms, finished_ms, created_ms, updated_ms) VALUES {}",
            super::value_tuples(chunk.len(), COLUMNS, "")
        );
        // Only numbered placeholders are formatted in; every value is bound.
        let mut query = sql::<DB>(sqlx::AssertSqlSafe(text));
        for (onboarding, s) in chunk {
            query = bind_step(query, onboarding, s);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// The first events of a batch (`events[i]` of `batch[i]`), and their outbox entries where
/// the tenant has an enabled destination (as [`insert_event`] writes them one by one).
async fn insert_events<DB: SqlDb>(
    tx: &mut Transaction<'static, DB>,
    events: &[EventRecord],
    batch: &[NewOnboarding],
) -> StoreResult<()> {
    const COLUMNS: usize = 10;
    for chunk in events.chunks(super::rows_per_statement::<DB>(COLUMNS)) {
        let text = format!(
            "INSERT INTO onboarding_events (onboarding_id, sequence, kind, state, previous_state, \
             reason, provider_status, step, data_json, created_ms) VALUES {}",
            super::value_tuples(chunk.len(), COLUMNS, "")
        );
        // Only numbered placeholders are formatted in; every value is bound.
        let mut query = sql::<DB>(sqlx::AssertSqlSafe(text));
        for e in chunk {
            query = bind_event(query, e);
        }
        query.execute(&mut *tx).await?;
    }
    const OUTBOX_COLUMNS: usize = 3;
    let rows: Vec<(&EventRecord, &TenantId)> =
        events.iter().zip(batch).map(|(e, n)| (e, &n.onboarding.tenant_id)).collect();
    for chunk in rows.chunks(super::rows_per_statement::<DB>(OUTBOX_COLUMNS)) {
        // `column1..3`: the names both backends give the columns of a `VALUES` list.
        let text = format!(
            "INSERT INTO event_outbox (onboarding_id, sequence, tenant_id) \
             SELECT v.column1, v.column2, v.column3 FROM (VALUES {}) AS v \
             WHERE EXISTS (SELECT 1 FROM delivery_destinations d WHERE d.tenant_id = v.column3 AND d.enabled)",
            super::value_tuples(chunk.len(), OUTBOX_COLUMNS, "")
        );
        // Only numbered placeholders are formatted in; every value is bound.
        let mut query = sql::<DB>(sqlx::AssertSqlSafe(text));
        for (e, tenant) in chunk {
            query = query.bind(e.onboarding_id.as_str()).bind(e.sequence).bind(tenant.as_str());
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Applies one change inside `tx` (see [`Onboardings::apply_changes`]). Every check comes
/// before the first write, so a change reported not applied wrote nothing.
async fn apply_in<B: SqlBackend>(
    tx: &mut Transaction<'static, B::Db>,
    change: &OnboardingChange,
) -> StoreResult<(ChangeOutcome, Option<ChangeNotice>)> {
    let id =
        change.onboarding_id.as_ref().ok_or_else(|| StoreError::Other("a change without an onboarding id".into()))?;
    let row = sql::<B::Db>(B::locking(ROW_FOR_CHANGE)).bind(id.as_str()).optional::<OnboardingRow>(&mut *tx).await?;
    let Some(row) = row else {
        return Ok((ChangeOutcome::NotFound(format!("onboarding {id}")), None));
    };
    let old = OnboardingRecord::try_from(row)?;
    if let Some(expected) = change.expect_sequence
        && expected != old.sequence
    {
        let m = format!("onboarding {id} is at sequence {}, not {expected}", old.sequence);
        return Ok((ChangeOutcome::Conflict(m), None));
    }
    if let Some(webhook) = &change.webhook_event_id {
        // Only a pending event: one already processed (its lease lapsed and another worker
        // applied it) must not be applied twice.
        let done = sql::<B::Db>(
            "UPDATE webhook_events SET status = 'PROCESSED', lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND status = 'PENDING'",
        )
        .bind(webhook.as_str())
        .execute(&mut *tx)
        .await?;
        if done == 0 {
            let exists = sql::<B::Db>("SELECT id FROM webhook_events WHERE id = $1")
                .bind(webhook.as_str())
                .optional::<(String,)>(&mut *tx)
                .await?;
            let outcome = match exists {
                Some(_) => ChangeOutcome::AlreadyProcessed(format!("webhook event {webhook} already processed")),
                None => ChangeOutcome::NotFound(format!("webhook event {webhook}")),
            };
            return Ok((outcome, None));
        }
    }
    let new = change.applied_to(&old);
    let update = sql::<B::Db>(
        "UPDATE onboardings SET sequence = $2, updated_ms = $3, \
         expiry_warned_secs = CASE WHEN $5 IS NOT NULL THEN $5 WHEN $6 THEN NULL ELSE expiry_warned_secs END, \
         state = $7, desired_state = $8, state_reason = $9, provider_status = $10, details_json = $11, \
         external_key = $12, secret_key_id = $13, secret = $14, state_deadline_ms = $15, expire_ms = $16, engine_json = $17 \
         WHERE id = $1 AND sequence = $4",
    )
    .bind(id.as_str())
    .bind(new.sequence)
    .bind(new.updated_ms)
    .bind(old.sequence)
    .bind(change.expiry_warned_secs)
    .bind(new.expire_ms != old.expire_ms);
    let done = bind_changeable(update, &new).execute(&mut *tx).await?;
    if done != 1 {
        // The row is locked (or the writer single): cannot happen short of a bug. An error,
        // not an outcome: the webhook mark above must roll back too.
        return Err(StoreError::Conflict(format!("onboarding {id} changed concurrently")));
    }
    let step = write_steps(tx, id, &change.steps, change.event.step.as_deref()).await?;
    for name in &change.wake_steps {
        sql::<B::Db>(
            "UPDATE pipeline_steps SET next_run_ms = $3, updated_ms = $3 \
             WHERE onboarding_id = $1 AND name = $2 AND state = 'WAITING'",
        )
        .bind(id.as_str())
        .bind(name.as_str())
        .bind(change.at_ms)
        .execute(&mut *tx)
        .await?;
    }
    let event = EventRecord {
        onboarding_id: id.clone(),
        sequence: new.sequence,
        kind: change.event.kind,
        state: new.state,
        previous_state: old.state,
        reason: change.event.reason.clone(),
        provider_status: new.provider_status,
        step: change.event.step.clone(),
        data_json: change.event.data_json.clone(),
        created_ms: change.at_ms,
    };
    insert_event(tx, &event, &old.tenant_id).await?;
    let notice = ChangeNotice::committed(&event, step.as_slice());
    Ok((ChangeOutcome::Applied(event), Some(notice)))
}

/// The onboarding `id` whatever its tenant, through `cache` if any.
async fn onboarding_row<B: SqlBackend>(
    backend: &B,
    cache: Option<&OnboardingCache>,
    id: &OnboardingId,
) -> StoreResult<Option<Arc<OnboardingRecord>>> {
    super::row_by_id::<B, _, OnboardingRow, _>(backend, cache, "SELECT * FROM onboardings WHERE id = $1", id).await
}

/// The cache fences of one write's rows ([`OnboardingCache::writing`]), from before its
/// transaction until after its notices; [`WriteFence::done`] once those went out, else (an
/// error, a cancelled future) the rows are left abandoned.
struct WriteFence<'a> {
    fences: Vec<crate::store::cache::Writing<'a, OnboardingId, OnboardingRecord>>,
}

impl<'a> WriteFence<'a> {
    fn new(cache: Option<&'a OnboardingCache>, changes: &[OnboardingChange]) -> Self {
        let fences = match cache {
            Some(c) => changes.iter().filter_map(|ch| ch.onboarding_id.as_ref()).map(|id| c.writing(id)).collect(),
            None => Vec::new(),
        };
        Self { fences }
    }

    /// The write committed (or changed nothing) and its notices went out.
    fn done(self) {
        self.fences.into_iter().for_each(crate::store::cache::Writing::done);
    }
}

/// The onboarding `id` of `tenant` (another tenant's reads as absent), through `cache` if any.
async fn tenant_onboarding<B: SqlBackend>(
    backend: &B,
    cache: Option<&OnboardingCache>,
    tenant: &TenantId,
    id: &OnboardingId,
) -> StoreResult<Option<Arc<OnboardingRecord>>> {
    // By primary key, then scoped.
    Ok(onboarding_row(backend, cache, id).await?.filter(|o| o.tenant_id == *tenant))
}

#[async_trait]
impl<B: SqlBackend> Onboardings for B {
    async fn create_onboarding(&self, new: &NewOnboarding) -> StoreResult<EventRecord> {
        let mut created = self.create_onboardings(std::slice::from_ref(new)).await?;
        created.pop().ok_or_else(|| StoreError::Other("nothing created".into()))
    }

    async fn create_onboardings(&self, batch: &[NewOnboarding]) -> StoreResult<Vec<EventRecord>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = B::Db::begin(self.writer()).await?;
        let (events, notices) = insert_new_onboardings(&mut tx, batch).await?;
        B::Db::commit(tx).await?;
        feed::publish_all_after_commit(self, &notices).await;
        Ok(events)
    }

    async fn onboarding(&self, tenant: &TenantId, id: &OnboardingId) -> StoreResult<Option<OnboardingRecord>> {
        // The exact cache only: callers decide writes on this read.
        let cache = self.caches().map(|c| &c.onboardings);
        Ok(tenant_onboarding(self, cache, tenant, id).await?.map(Arc::unwrap_or_clone))
    }

    async fn pipeline(
        &self,
        tenant: &TenantId,
        id: &OnboardingId,
    ) -> StoreResult<Option<(OnboardingRecord, Vec<StepRecord>)>> {
        // One statement, so one snapshot on both backends (a step's outcome and the onboarding
        // fields the same change wrote are seen together) and one round trip.
        let rows = sql::<B::Db>(PIPELINE).bind(id.as_str()).rows(self.reader()).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let o = OnboardingRecord::try_from(B::Db::decode::<OnboardingRow>(first)?)?;
        if o.tenant_id != *tenant {
            return Ok(None);
        }
        let mut steps = Vec::with_capacity(rows.len());
        for r in &rows {
            if let JoinedStep(Some(step)) = B::Db::decode(r)? {
                steps.push(step.try_into()?);
            }
        }
        Ok(Some((o, steps)))
    }

    async fn onboarding_shared(
        &self,
        tenant: &TenantId,
        id: &OnboardingId,
    ) -> StoreResult<Option<Arc<OnboardingRecord>>> {
        tenant_onboarding(self, self.api_read_cache(), tenant, id).await
    }

    async fn onboarding_unscoped(&self, id: &OnboardingId) -> StoreResult<Option<OnboardingRecord>> {
        // The exact cache only: the engine decides writes on this read.
        Ok(onboarding_row(self, self.caches().map(|c| &c.onboardings), id).await?.map(Arc::unwrap_or_clone))
    }

    async fn onboardings_by_external_keys(
        &self,
        account: &AccountId,
        external_keys: &[String],
    ) -> StoreResult<Vec<OnboardingRecord>> {
        // The newest per key: ids are time-ordered.
        let mut newest: HashMap<String, OnboardingRecord> = HashMap::new();
        for chunk in external_keys.chunks(super::IN_CHUNK) {
            let text = format!(
                "SELECT * FROM onboardings WHERE account_id = $1 AND external_key IN ({})",
                super::placeholders(2, chunk.len())
            );
            // Only numbered placeholders are formatted in; the keys are bound.
            let mut query = sql::<B::Db>(sqlx::AssertSqlSafe(text)).bind(account.as_str());
            for key in chunk {
                query = query.bind(key.as_str());
            }
            for row in query.all::<OnboardingRow>(self.reader()).await? {
                let o = OnboardingRecord::try_from(row)?;
                let Some(key) = o.external_key.clone() else { continue };
                match newest.get(&key) {
                    Some(kept) if kept.id.as_str() >= o.id.as_str() => {}
                    _ => {
                        newest.insert(key, o);
                    }
                }
            }
        }
        Ok(newest.into_values().collect())
    }

    async fn onboarding_by_resource(
        &self,
        tenant: &TenantId,
        provider: ProviderKind,
        external_key: &str,
    ) -> StoreResult<Option<OnboardingRecord>> {
        let row = sql::<B::Db>(
            "SELECT * FROM onboardings WHERE tenant_id = $1 AND provider = $2 AND external_key = $3 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(tenant.as_str())
        .bind(provider.as_str())
        .bind(external_key)
        .optional::<OnboardingRow>(self.reader());
        row.await?.map(TryInto::try_into).transpose()
    }

    async fn list_onboardings(
        &self,
        tenant: &TenantId,
        filter: &OnboardingFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<OnboardingRecord>> {
        // Placeholders in the order `list_onboardings_sql` numbers them.
        let mut query = sql::<B::Db>(sqlx::AssertSqlSafe(super::list_onboardings_sql(filter)))
            .bind(tenant.as_str())
            .bind(page.after.as_deref().unwrap_or(""));
        for value in [
            filter.provider.map(|p| p.as_str()),
            filter.state.map(|s| s.as_str()),
            filter.reference.as_deref(),
            filter.account_id.as_ref().map(|a| a.as_str()),
        ]
        .into_iter()
        .flatten()
        {
            query = query.bind(value);
        }
        let rows = query.bind(super::page_limit(page.limit)).all::<OnboardingRow>(self.reader()).await?;
        Ok(super::page(records(rows)?, page.limit, |o: &OnboardingRecord| o.id.as_str().to_string()))
    }

    async fn count_onboardings(&self) -> StoreResult<Vec<(ProviderKind, OnboardingState, i64)>> {
        let rows = sql::<B::Db>(
            "SELECT provider, state, COUNT(*) AS n FROM onboardings GROUP BY provider, state ORDER BY provider, state",
        )
        .all::<(String, String, i64)>(self.reader())
        .await?;
        rows.into_iter().map(|(p, s, n)| Ok((super::provider(p)?, super::state(s)?, n))).collect()
    }

    async fn apply_change(&self, change: &OnboardingChange) -> StoreResult<EventRecord> {
        let fence = WriteFence::new(self.api_read_cache(), std::slice::from_ref(change));
        let applied = async {
            let mut tx = B::Db::begin(self.writer()).await?;
            let outcome = apply_in::<B>(&mut tx, change).await?;
            Ok::<_, StoreError>((tx, outcome))
        };
        // Failed before the commit: `tx` dropped uncommitted, rolling back; nothing written.
        let (tx, outcome) = match applied.await {
            Ok(v) => v,
            Err(e) => {
                fence.done();
                return Err(e);
            }
        };
        match outcome {
            (ChangeOutcome::Applied(event), notice) => {
                // An error here leaves the fence abandoned: the commit may have landed.
                B::Db::commit(tx).await?;
                if let Some(notice) = &notice {
                    feed::publish_after_commit(self, notice).await;
                }
                fence.done();
                Ok(event)
            }
            (ChangeOutcome::Conflict(m) | ChangeOutcome::AlreadyProcessed(m), _) => {
                fence.done();
                Err(StoreError::Conflict(m))
            }
            (ChangeOutcome::NotFound(m), _) => {
                fence.done();
                Err(StoreError::NotFound(m))
            }
        }
    }

    async fn apply_changes(&self, changes: &[OnboardingChange]) -> StoreResult<Vec<ChangeOutcome>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let fence = WriteFence::new(self.api_read_cache(), changes);
        let mut tx = B::Db::begin(self.writer()).await?;
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut notices = Vec::with_capacity(changes.len());
        // Onboardings with a change not applied: their later changes were computed on top of
        // it, so they are not applied either.
        let mut blocked = HashSet::new();
        for change in changes {
            if let Some(id) = &change.onboarding_id
                && blocked.contains(id)
            {
                outcomes.push(ChangeOutcome::Conflict(format!(
                    "an earlier change of onboarding {id} in this batch was not applied"
                )));
                continue;
            }
            let (outcome, notice) = apply_in::<B>(&mut tx, change).await?;
            notices.extend(notice);
            if !matches!(outcome, ChangeOutcome::Applied(_))
                && let Some(id) = &change.onboarding_id
            {
                blocked.insert(id);
            }
            outcomes.push(outcome);
        }
        B::Db::commit(tx).await?;
        feed::publish_all_after_commit(self, &notices).await;
        fence.done();
        Ok(outcomes)
    }

    async fn events(&self, id: &OnboardingId, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows = sql::<B::Db>(
            "SELECT * FROM onboarding_events WHERE onboarding_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .all::<EventRow>(self.reader());
        records(rows.await?)
    }

    async fn steps(&self, id: &OnboardingId) -> StoreResult<Vec<StepRecord>> {
        let text = concat!(
            "SELECT ",
            step_columns!(),
            " FROM pipeline_steps WHERE onboarding_id = $1 ORDER BY position, name"
        );
        records(sql::<B::Db>(text).bind(id.as_str()).all::<StepRow>(self.reader()).await?)
    }

    async fn latest_sequences(&self, ids: &[OnboardingId]) -> StoreResult<Vec<(OnboardingId, i64)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(super::IN_CHUNK) {
            let text =
                format!("SELECT id, sequence FROM onboardings WHERE id IN ({})", super::placeholders(1, chunk.len()));
            // Only numbered placeholders are formatted in; the ids are bound.
            let mut query = sql::<B::Db>(sqlx::AssertSqlSafe(text));
            for id in chunk {
                query = query.bind(id.as_str());
            }
            for (id, sequence) in query.all::<(String, i64)>(self.reader()).await? {
                out.push((super::id(id)?, sequence));
            }
        }
        Ok(out)
    }

    async fn events_marker(&self) -> StoreResult<Option<i64>> {
        if B::BACKEND != crate::store::Backend::Sqlite {
            return Ok(None);
        }
        // The rowid b-tree's last entry: one page walk, however many events are stored.
        let row =
            sql::<B::Db>("SELECT MAX(rowid) FROM onboarding_events").optional::<(Option<i64>,)>(self.reader()).await?;
        Ok(Some(row.and_then(|(m,)| m).unwrap_or(0)))
    }

    async fn steps_of(&self, ids: &[OnboardingId]) -> StoreResult<Vec<StepRecord>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(super::IN_CHUNK) {
            let text = format!(
                concat!(
                    "SELECT ",
                    step_columns!(),
                    " FROM pipeline_steps WHERE onboarding_id IN ({}) ORDER BY onboarding_id, position, name"
                ),
                super::placeholders(1, chunk.len())
            );
            // Only numbered placeholders are formatted in; the ids are bound.
            let mut query = sql::<B::Db>(sqlx::AssertSqlSafe(text));
            for id in chunk {
                query = query.bind(id.as_str());
            }
            out.extend(records::<_, StepRecord>(query.all::<StepRow>(self.reader()).await?)?);
        }
        Ok(out)
    }

    async fn overdue_onboardings(&self, now: UnixMs, limit: u32) -> StoreResult<Vec<OnboardingRecord>> {
        let [t1, t2, t3] = super::TERMINAL_STATES;
        let rows = sql::<B::Db>(
            "SELECT * FROM onboardings WHERE state_deadline_ms IS NOT NULL AND state_deadline_ms < $1 \
             AND state NOT IN ($3, $4, $5) ORDER BY state_deadline_ms, id LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(t1.as_str())
        .bind(t2.as_str())
        .bind(t3.as_str())
        .all::<OnboardingRow>(self.reader());
        records(rows.await?)
    }

    async fn expiring_onboardings(
        &self,
        now: UnixMs,
        threshold_secs: i64,
        limit: u32,
    ) -> StoreResult<Vec<OnboardingRecord>> {
        let [t1, t2, t3] = super::TERMINAL_STATES;
        let window = threshold_secs.saturating_mul(1000);
        let rows = sql::<B::Db>(
            "SELECT * FROM onboardings WHERE expire_ms IS NOT NULL AND expire_ms > $1 \
             AND expire_ms <= $1 + $2 AND expire_ms - created_ms > $2 \
             AND (expiry_warned_secs IS NULL OR expiry_warned_secs > $3) \
             AND state NOT IN ($5, $6, $7) ORDER BY expire_ms, id LIMIT $4",
        )
        .bind(now)
        .bind(window)
        .bind(threshold_secs)
        .bind(i64::from(limit))
        .bind(t1.as_str())
        .bind(t2.as_str())
        .bind(t3.as_str())
        .all::<OnboardingRow>(self.reader());
        records(rows.await?)
    }
}
