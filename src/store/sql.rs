//! The SQL both backends share. sqlx-sqlite accepts PostgreSQL's numbered `$N` placeholders,
//! so one SQL text serves both databases; [`impl_sql_store!`] expands the one [`Store`]
//! implementation for each pool type, with the few dialect differences passed in (row locks
//! exist only on PostgreSQL) or supplied by the backend as inherent methods:
//!
//! - `fn reader(&self) -> &Pool<DB>` and `fn writer(&self) -> &Pool<DB>` (SQLite keeps one
//!   writer connection so write transactions never race for the lock);
//! - `async fn lock_rate_key(conn, key)`: serialises one rate-limit key inside a transaction;
//! - `async fn publish(&self, notice)` and `fn bus(&self)`: change notification, called after
//!   the commit of every write that changes an onboarding row (its sequence grows);
//! - `fn caches(&self) -> Option<&Caches>`: where reads of one onboarding or account go
//!   through, when the backend can keep such caches exactly coherent (its `publish`
//!   invalidates onboardings, account writes invalidate accounts; see [`super::cache`]).
//!
//! [`Store`]: super::Store

use std::time::Duration;

use super::{ChangeNotice, Page, StoreError, StoreResult};
use crate::domain::{IdError, OnboardingId, OnboardingState, ProviderKind, StepState};

/// The terminal states, bound into `overdue_onboardings` (a test keeps this in step with
/// [`OnboardingState::is_terminal`]).
pub(crate) const TERMINAL_STATES: [OnboardingState; 3] =
    [OnboardingState::Failed, OnboardingState::Expired, OnboardingState::Cancelled];

/// Parses a stored id.
pub(crate) fn id<T: TryFrom<String, Error = IdError>>(s: String) -> StoreResult<T> {
    T::try_from(s).map_err(|e| StoreError::Corrupt(format!("stored id: {e}")))
}

/// Parses a stored provider name.
pub(crate) fn provider(s: String) -> StoreResult<ProviderKind> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("stored provider: {e:?}")))
}

/// Parses a stored onboarding state.
pub(crate) fn state(s: String) -> StoreResult<OnboardingState> {
    s.parse().map_err(StoreError::Corrupt)
}

/// Parses an optional stored onboarding state.
pub(crate) fn opt_state(s: Option<String>) -> StoreResult<Option<OnboardingState>> {
    s.map(state).transpose()
}

/// Parses a stored step state.
pub(crate) fn step_state(s: String) -> StoreResult<StepState> {
    s.parse().map_err(StoreError::Corrupt)
}

/// Parses a stored webhook status.
pub(crate) fn webhook_status(s: String) -> StoreResult<super::WebhookStatus> {
    super::WebhookStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("unknown webhook status '{s}'")))
}

/// A sealed value stored as two nullable columns: both or neither.
pub(crate) fn opt_sealed(key_id: Option<String>, blob: Option<Vec<u8>>) -> StoreResult<Option<super::Sealed>> {
    match (key_id, blob) {
        (Some(key_id), Some(blob)) => Ok(Some(super::Sealed { key_id, blob })),
        (None, None) => Ok(None),
        _ => Err(StoreError::Corrupt("sealed value with only one of key id and blob".into())),
    }
}

/// Milliseconds of a duration, saturating.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The SQL `LIMIT` for a keyset page: one more row than asked, to know whether more follow.
/// The SQL of `list_onboardings`: `$1` tenant, `$2` the keyset bound (`''` on the first page:
/// every id is greater), then one placeholder per filter present, then the limit. Absent
/// filters are left out rather than written `($n IS NULL OR column = $n)`: PostgreSQL's generic
/// plan for such a catch-all cannot use an index for them (it scanned by primary key and
/// filtered the whole table for a reference), and an always-present bound lets
/// `(tenant_id, id)` serve both the bound and the order. At most 16 texts, each prepared once
/// per connection.
pub(crate) fn list_onboardings_sql(filter: &super::OnboardingFilter) -> String {
    use std::fmt::Write as _;
    let mut sql = String::from("SELECT * FROM onboardings WHERE tenant_id = $1 AND id > $2");
    let mut n = 2;
    for (present, column) in [
        (filter.provider.is_some(), "provider"),
        (filter.state.is_some(), "state"),
        (filter.reference.is_some(), "reference"),
        (filter.account_id.is_some(), "account_id"),
    ] {
        if present {
            n += 1;
            let _ = write!(sql, " AND {column} = ${n}");
        }
    }
    let _ = write!(sql, " ORDER BY id LIMIT ${}", n + 1);
    sql
}

/// Webhook events per insert statement: 10 bound values each, well under both backends'
/// bind-parameter limits (SQLite 32,766, PostgreSQL 65,535).
pub(crate) const WEBHOOK_INSERT_CHUNK: usize = 256;

/// The multi-row webhook insert for `rows` events (only numbered placeholders are formatted
/// in; every value is bound). Returns the ids of the rows stored.
pub(crate) fn insert_webhooks_sql(rows: usize) -> String {
    const COLUMNS: usize = 10;
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=COLUMNS).map(|c| format!("${}", r * COLUMNS + c)).collect();
            format!("({})", marks.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO webhook_events (id, provider, account_id, dedupe_key, body, status, note, lease_owner, \
         lease_until_ms, received_ms) VALUES {} ON CONFLICT (provider, account_id, dedupe_key) DO NOTHING RETURNING id",
        values.join(", ")
    )
}

pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.max(1)) + 1
}

/// Cuts the extra row fetched by [`page_limit`] and derives the next page token (the last id).
pub(crate) fn page<T>(mut items: Vec<T>, limit: u32, id_of: impl Fn(&T) -> String) -> Page<T> {
    let limit = limit.max(1) as usize;
    let next_page_token = if items.len() > limit {
        items.truncate(limit);
        items.last().map(id_of)
    } else {
        None
    };
    Page { items, next_page_token }
}

/// Maps a migration failure.
pub(crate) fn migrate_err(e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => e.into(),
        other => StoreError::Other(format!("migration failed: {other}")),
    }
}

/// The columns of `pipeline_steps`, in the order [`impl_sql_store!`]'s step parser reads them.
pub(crate) const STEP_COLUMNS: [&str; 18] = [
    "onboarding_id",
    "name",
    "position",
    "state",
    "attempts",
    "max_attempts",
    "next_run_ms",
    "lease_owner",
    "lease_until_ms",
    "last_error",
    "last_error_code",
    "provider_stage_json",
    "data_json",
    "deadline_ms",
    "started_ms",
    "finished_ms",
    "created_ms",
    "updated_ms",
];

/// The same columns as [`PIPELINE`] names them, beside the onboarding's own.
pub(crate) const JOINED_STEP_COLUMNS: [&str; 18] = [
    "s_onboarding_id",
    "s_name",
    "s_position",
    "s_state",
    "s_attempts",
    "s_max_attempts",
    "s_next_run_ms",
    "s_lease_owner",
    "s_lease_until_ms",
    "s_last_error",
    "s_last_error_code",
    "s_provider_stage_json",
    "s_data_json",
    "s_deadline_ms",
    "s_started_ms",
    "s_finished_ms",
    "s_created_ms",
    "s_updated_ms",
];

/// An onboarding and its steps in one statement: one row per step (or one row with NULL step
/// columns), steps in `Store::steps` order.
pub(crate) const PIPELINE: &str = concat!(
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

/// Ids bound in one `IN (...)` list: well under both backends' bind-parameter limits.
pub(crate) const IN_CHUNK: usize = 500;

/// `$from, $from+1, ...`: `n` numbered placeholders for an `IN (...)` list.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    let marks: Vec<String> = (from..from + n).map(|i| format!("${i}")).collect();
    marks.join(", ")
}

/// Cross-replica notification payload: `onboarding_id:sequence:origin`. The origin (the
/// sending store instance) lets a replica skip its own notices, which it already delivered
/// locally.
pub(crate) fn notice_payload(notice: &ChangeNotice, origin: &str) -> String {
    format!("{}:{}:{}", notice.onboarding_id.as_str(), notice.sequence, origin)
}

/// Parses [`notice_payload`]; the origin is optional (`onboarding_id:sequence` also parses).
pub(crate) fn parse_notice_payload(payload: &str) -> Option<(ChangeNotice, Option<&str>)> {
    let mut parts = payload.splitn(3, ':');
    let onboarding_id = OnboardingId::parse(parts.next()?).ok()?;
    let sequence = parts.next()?.parse().ok()?;
    Some((ChangeNotice::moved(onboarding_id, sequence), parts.next()))
}

/// Expands the shared `impl Store` for one backend. Arguments: the store type, its sqlx
/// database, row and connection types, the [`Backend`](super::Backend) value, and the two
/// lock clauses (`" FOR UPDATE"` and `" FOR UPDATE SKIP LOCKED"` on PostgreSQL, `""` on
/// SQLite, where the single writer connection already serialises writers).
macro_rules! impl_sql_store {
    (
        store: $store:ty,
        db: $db:ty,
        row: $row:ty,
        conn: $conn:ty,
        backend: $backend:expr,
        for_update: $for_update:literal,
        skip_locked: $skip_locked:literal $(,)?
    ) => {
        impl $store {
            fn tenant_from(r: &$row) -> $crate::store::StoreResult<$crate::store::TenantRecord> {
                Ok($crate::store::TenantRecord {
                    id: sql::id(r.try_get("id")?)?,
                    name: r.try_get("name")?,
                    created_ms: r.try_get("created_ms")?,
                })
            }

            fn api_key_from(r: &$row) -> $crate::store::StoreResult<$crate::store::ApiKeyRecord> {
                Ok($crate::store::ApiKeyRecord {
                    id: sql::id(r.try_get("id")?)?,
                    tenant_id: sql::id(r.try_get("tenant_id")?)?,
                    hash: r.try_get("hash")?,
                    prefix: r.try_get("prefix")?,
                    created_ms: r.try_get("created_ms")?,
                    revoked_ms: r.try_get("revoked_ms")?,
                })
            }

            fn account_from(r: &$row) -> $crate::store::StoreResult<$crate::store::AccountRecord> {
                Ok($crate::store::AccountRecord {
                    id: sql::id(r.try_get("id")?)?,
                    tenant_id: sql::id(r.try_get("tenant_id")?)?,
                    provider: sql::provider(r.try_get("provider")?)?,
                    display_name: r.try_get("display_name")?,
                    options_json: r.try_get("options_json")?,
                    credentials: $crate::store::Sealed {
                        key_id: r.try_get("credentials_key_id")?,
                        blob: r.try_get("credentials")?,
                    },
                    webhook_secret: $crate::store::Sealed {
                        key_id: r.try_get("webhook_key_id")?,
                        blob: r.try_get("webhook_secret")?,
                    },
                    sandbox: r.try_get("sandbox")?,
                    status_json: r.try_get("status_json")?,
                    created_ms: r.try_get("created_ms")?,
                    updated_ms: r.try_get("updated_ms")?,
                })
            }

            /// An account row of an outer join: every column is read whether or not the row
            /// matched, so a miss decodes what a hit decodes ([`Store::webhook_account`]).
            fn account_joined(r: &$row) -> $crate::store::StoreResult<Option<$crate::store::AccountRecord>> {
                let id: Option<String> = r.try_get("id")?;
                let tenant_id: Option<String> = r.try_get("tenant_id")?;
                let provider: Option<String> = r.try_get("provider")?;
                let display_name: Option<String> = r.try_get("display_name")?;
                let options_json: Option<String> = r.try_get("options_json")?;
                let credentials_key_id: Option<String> = r.try_get("credentials_key_id")?;
                let credentials: Option<Vec<u8>> = r.try_get("credentials")?;
                let webhook_key_id: Option<String> = r.try_get("webhook_key_id")?;
                let webhook_secret: Option<Vec<u8>> = r.try_get("webhook_secret")?;
                let sandbox: Option<bool> = r.try_get("sandbox")?;
                let status_json: Option<String> = r.try_get("status_json")?;
                let created_ms: Option<i64> = r.try_get("created_ms")?;
                let updated_ms: Option<i64> = r.try_get("updated_ms")?;
                let (Some(id), Some(tenant_id), Some(provider)) = (id, tenant_id, provider) else {
                    return Ok(None);
                };
                let missing = || $crate::store::StoreError::Corrupt("account row with NULL columns".into());
                Ok(Some($crate::store::AccountRecord {
                    id: sql::id(id)?,
                    tenant_id: sql::id(tenant_id)?,
                    provider: sql::provider(provider)?,
                    display_name: display_name.ok_or_else(missing)?,
                    options_json: options_json.ok_or_else(missing)?,
                    credentials: $crate::store::Sealed {
                        key_id: credentials_key_id.ok_or_else(missing)?,
                        blob: credentials.ok_or_else(missing)?,
                    },
                    webhook_secret: $crate::store::Sealed {
                        key_id: webhook_key_id.ok_or_else(missing)?,
                        blob: webhook_secret.ok_or_else(missing)?,
                    },
                    sandbox: sandbox.ok_or_else(missing)?,
                    status_json: status_json.ok_or_else(missing)?,
                    created_ms: created_ms.ok_or_else(missing)?,
                    updated_ms: updated_ms.ok_or_else(missing)?,
                }))
            }

            fn idempotency_from(r: &$row) -> $crate::store::StoreResult<$crate::store::IdempotencyRecord> {
                Ok($crate::store::IdempotencyRecord {
                    tenant_id: sql::id(r.try_get("tenant_id")?)?,
                    key: r.try_get("key")?,
                    operation: r.try_get("operation")?,
                    request_hash: r.try_get("request_hash")?,
                    resource: r.try_get("resource")?,
                    created_ms: r.try_get("created_ms")?,
                })
            }

            fn onboarding_from(r: &$row) -> $crate::store::StoreResult<$crate::store::OnboardingRecord> {
                Ok($crate::store::OnboardingRecord {
                    id: sql::id(r.try_get("id")?)?,
                    tenant_id: sql::id(r.try_get("tenant_id")?)?,
                    account_id: sql::id(r.try_get("account_id")?)?,
                    provider: sql::provider(r.try_get("provider")?)?,
                    state: sql::state(r.try_get("state")?)?,
                    desired_state: sql::opt_state(r.try_get("desired_state")?)?,
                    state_reason: r.try_get("state_reason")?,
                    provider_status: r.try_get("provider_status")?,
                    reference: r.try_get("reference")?,
                    details_json: r.try_get("details_json")?,
                    engine_json: r.try_get("engine_json")?,
                    external_key: r.try_get("external_key")?,
                    secret: sql::opt_sealed(r.try_get("secret_key_id")?, r.try_get("secret")?)?,
                    sequence: r.try_get("sequence")?,
                    state_deadline_ms: r.try_get("state_deadline_ms")?,
                    expire_ms: r.try_get("expire_ms")?,
                    created_ms: r.try_get("created_ms")?,
                    updated_ms: r.try_get("updated_ms")?,
                })
            }

            fn event_from(r: &$row) -> $crate::store::StoreResult<$crate::store::EventRecord> {
                Ok($crate::store::EventRecord {
                    onboarding_id: sql::id(r.try_get("onboarding_id")?)?,
                    sequence: r.try_get("sequence")?,
                    kind: r.try_get::<String, _>("kind")?.parse().map_err(StoreError::Corrupt)?,
                    state: sql::state(r.try_get("state")?)?,
                    previous_state: sql::state(r.try_get("previous_state")?)?,
                    reason: r.try_get("reason")?,
                    provider_status: r.try_get("provider_status")?,
                    step: r.try_get("step")?,
                    data_json: r.try_get("data_json")?,
                    created_ms: r.try_get("created_ms")?,
                })
            }

            fn step_from(r: &$row) -> $crate::store::StoreResult<$crate::store::StepRecord> {
                Self::step_named(r, &sql::STEP_COLUMNS)
            }

            /// A step from the columns named `c` (in [`sql::STEP_COLUMNS`] order), so a join
            /// can read a step under other names.
            fn step_named(r: &$row, c: &[&str; 18]) -> $crate::store::StoreResult<$crate::store::StepRecord> {
                Ok($crate::store::StepRecord {
                    onboarding_id: sql::id(r.try_get(c[0])?)?,
                    name: r.try_get(c[1])?,
                    position: r.try_get(c[2])?,
                    state: sql::step_state(r.try_get(c[3])?)?,
                    attempts: r.try_get(c[4])?,
                    max_attempts: r.try_get(c[5])?,
                    next_run_ms: r.try_get(c[6])?,
                    lease_owner: r.try_get(c[7])?,
                    lease_until_ms: r.try_get(c[8])?,
                    last_error: r.try_get(c[9])?,
                    last_error_code: r.try_get(c[10])?,
                    provider_stage_json: r.try_get(c[11])?,
                    data_json: r.try_get(c[12])?,
                    deadline_ms: r.try_get(c[13])?,
                    started_ms: r.try_get(c[14])?,
                    finished_ms: r.try_get(c[15])?,
                    created_ms: r.try_get(c[16])?,
                    updated_ms: r.try_get(c[17])?,
                })
            }

            fn webhook_from(r: &$row) -> $crate::store::StoreResult<$crate::store::WebhookEventRecord> {
                Ok($crate::store::WebhookEventRecord {
                    id: r.try_get("id")?,
                    provider: sql::provider(r.try_get("provider")?)?,
                    account_id: sql::id(r.try_get("account_id")?)?,
                    dedupe_key: r.try_get("dedupe_key")?,
                    body: r.try_get("body")?,
                    status: sql::webhook_status(r.try_get("status")?)?,
                    note: r.try_get("note")?,
                    lease_owner: r.try_get("lease_owner")?,
                    lease_until_ms: r.try_get("lease_until_ms")?,
                    received_ms: r.try_get("received_ms")?,
                })
            }

            /// At most one row by text keys (bound in order), from the reader pool.
            async fn find<T>(
                &self,
                sql: &'static str,
                keys: &[&str],
                from: fn(&$row) -> $crate::store::StoreResult<T>,
            ) -> $crate::store::StoreResult<Option<T>> {
                let mut query = sqlx::query(sql);
                for key in keys {
                    query = query.bind(*key);
                }
                let row = query.fetch_optional(self.reader()).await?;
                row.as_ref().map(from).transpose()
            }

            fn all<T>(
                rows: Vec<$row>,
                from: fn(&$row) -> $crate::store::StoreResult<T>,
            ) -> $crate::store::StoreResult<Vec<T>> {
                rows.iter().map(from).collect()
            }

            async fn insert_idempotency(
                conn: &mut $conn,
                k: &$crate::store::IdempotencyRecord,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO idempotency_keys (tenant_id, key, operation, request_hash, resource, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(k.tenant_id.as_str())
                .bind(k.key.as_str())
                .bind(k.operation.as_str())
                .bind(k.request_hash.as_slice())
                .bind(k.resource.as_str())
                .bind(k.created_ms)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            async fn insert_event(
                conn: &mut $conn,
                e: &$crate::store::EventRecord,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO onboarding_events (onboarding_id, sequence, kind, state, previous_state, \
                     reason, provider_status, step, data_json, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
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
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// Writes `steps`, and returns the one named `named` as stored (for the change
            /// notice), if among them.
            async fn write_steps(
                conn: &mut $conn,
                onboarding: &$crate::domain::OnboardingId,
                steps: &[$crate::store::StepRecord],
                named: Option<&str>,
            ) -> $crate::store::StoreResult<Option<$crate::store::StepRecord>> {
                let mut found = None;
                for step in steps {
                    let created_ms = Self::upsert_step(conn, onboarding, step).await?;
                    if named == Some(step.name.as_str()) {
                        found = Some($crate::store::StepRecord { created_ms, ..step.clone() });
                    }
                }
                Ok(found)
            }

            /// Inserts or replaces a step (matched by onboarding and name; `created_ms` kept).
            /// Returns the stored `created_ms`.
            async fn upsert_step(
                conn: &mut $conn,
                onboarding: &$crate::domain::OnboardingId,
                s: &$crate::store::StepRecord,
            ) -> $crate::store::StoreResult<i64> {
                let row = sqlx::query(
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
                )
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
                .fetch_one(&mut *conn)
                .await?;
                Ok(row.try_get("created_ms")?)
            }

            /// Publishes after a commit. The write already happened, so a failed notification
            /// is only logged: subscribers re-read the log and catch up on the next notice.
            /// Writes one new onboarding (idempotency record first, then the row, its steps and
            /// its first event) inside `tx`.
            async fn insert_new_onboarding(
                tx: &mut $conn,
                new: &$crate::store::NewOnboarding,
            ) -> $crate::store::StoreResult<($crate::store::EventRecord, $crate::store::ChangeNotice)> {
                let o = &new.onboarding;
                if let Some(k) = &new.idempotency {
                    // First, so a duplicate key fails before anything else is written (the
                    // transaction is rolled back when `tx` drops).
                    Self::insert_idempotency(tx, k).await?;
                }
                sqlx::query(
                    "INSERT INTO onboardings (id, tenant_id, account_id, provider, state, desired_state, \
                     state_reason, provider_status, reference, details_json, external_key, secret_key_id, secret, \
                     sequence, state_deadline_ms, expire_ms, created_ms, updated_ms, engine_json) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $14, $15, $16, $17, $18)",
                )
                .bind(o.id.as_str())
                .bind(o.tenant_id.as_str())
                .bind(o.account_id.as_str())
                .bind(o.provider.as_str())
                .bind(o.state.as_str())
                .bind(o.desired_state.map(|s| s.as_str()))
                .bind(o.state_reason.as_str())
                .bind(o.provider_status.as_str())
                .bind(o.reference.as_str())
                .bind(o.details_json.as_str())
                .bind(o.external_key.as_deref())
                .bind(o.secret.as_ref().map(|s| s.key_id.as_str()))
                .bind(o.secret.as_ref().map(|s| s.blob.as_slice()))
                .bind(o.state_deadline_ms)
                .bind(o.expire_ms)
                .bind(o.created_ms)
                .bind(o.updated_ms)
                .bind(o.engine_json.as_str())
                .execute(&mut *tx)
                .await?;
                let step = Self::write_steps(tx, &o.id, &new.steps, new.event.step.as_deref()).await?;
                let event = $crate::store::EventRecord {
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
                Self::insert_event(tx, &event).await?;
                let notice = $crate::store::ChangeNotice::committed(&event, step.as_slice());
                Ok((event, notice))
            }

            /// Applies one change inside `tx` (see `Store::apply_changes`). Every check comes
            /// before the first write, so a change reported not applied wrote nothing.
            async fn apply_in(
                tx: &mut $conn,
                change: &$crate::store::OnboardingChange,
            ) -> $crate::store::StoreResult<($crate::store::ChangeOutcome, Option<$crate::store::ChangeNotice>)> {
                use $crate::store::ChangeOutcome;
                let id = change
                    .onboarding_id
                    .as_ref()
                    .ok_or_else(|| $crate::store::StoreError::Other("a change without an onboarding id".into()))?;
                let row = sqlx::query(concat!("SELECT * FROM onboardings WHERE id = $1", $for_update))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok((ChangeOutcome::NotFound(format!("onboarding {id}")), None));
                };
                let old = Self::onboarding_from(&row)?;
                if let Some(expected) = change.expect_sequence
                    && expected != old.sequence
                {
                    let m = format!("onboarding {id} is at sequence {}, not {expected}", old.sequence);
                    return Ok((ChangeOutcome::Conflict(m), None));
                }
                if let Some(webhook) = &change.webhook_event_id {
                    // Only a pending event: one already processed (its lease lapsed and another
                    // worker applied it) must not be applied twice.
                    let done = sqlx::query(
                        "UPDATE webhook_events SET status = 'PROCESSED', lease_owner = NULL, lease_until_ms = NULL \
                         WHERE id = $1 AND status = 'PENDING'",
                    )
                    .bind(webhook.as_str())
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        let exists = sqlx::query("SELECT id FROM webhook_events WHERE id = $1")
                            .bind(webhook.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                        let outcome = match exists {
                            Some(_) => ChangeOutcome::AlreadyProcessed(format!("webhook event {webhook} already processed")),
                            None => ChangeOutcome::NotFound(format!("webhook event {webhook}")),
                        };
                        return Ok((outcome, None));
                    }
                }
                let new = change.applied_to(&old);
                let done = sqlx::query(
                    "UPDATE onboardings SET state = $2, desired_state = $3, state_reason = $4, provider_status = $5, \
                     details_json = $6, external_key = $7, secret_key_id = $8, secret = $9, state_deadline_ms = $10, \
                     expire_ms = $11, sequence = $12, updated_ms = $13, \
                     expiry_warned_secs = CASE WHEN $15 IS NOT NULL THEN $15 WHEN $16 THEN NULL \
                     ELSE expiry_warned_secs END, engine_json = $17 WHERE id = $1 AND sequence = $14",
                )
                .bind(id.as_str())
                .bind(new.state.as_str())
                .bind(new.desired_state.map(|s| s.as_str()))
                .bind(new.state_reason.as_str())
                .bind(new.provider_status.as_str())
                .bind(new.details_json.as_str())
                .bind(new.external_key.as_deref())
                .bind(new.secret.as_ref().map(|s| s.key_id.as_str()))
                .bind(new.secret.as_ref().map(|s| s.blob.as_slice()))
                .bind(new.state_deadline_ms)
                .bind(new.expire_ms)
                .bind(new.sequence)
                .bind(new.updated_ms)
                .bind(old.sequence)
                .bind(change.expiry_warned_secs)
                .bind(new.expire_ms != old.expire_ms)
                .bind(new.engine_json.as_str())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    // The row is locked (or the writer single): cannot happen short of a bug.
                    // An error, not an outcome: the webhook mark above must roll back too.
                    return Err($crate::store::StoreError::Conflict(format!("onboarding {id} changed concurrently")));
                }
                let step = Self::write_steps(tx, id, &change.steps, change.event.step.as_deref()).await?;
                for name in &change.wake_steps {
                    sqlx::query(
                        "UPDATE pipeline_steps SET next_run_ms = $3, updated_ms = $3 \
                         WHERE onboarding_id = $1 AND name = $2 AND state = 'WAITING'",
                    )
                    .bind(id.as_str())
                    .bind(name.as_str())
                    .bind(change.at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                let event = $crate::store::EventRecord {
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
                Self::insert_event(tx, &event).await?;
                let notice = $crate::store::ChangeNotice::committed(&event, step.as_slice());
                Ok((ChangeOutcome::Applied(event), Some(notice)))
            }

            /// One row by its id (`sql` binds it as `$1`), through the backend's cache
            /// `pick` chooses, if it keeps caches; shared, so a cache hit copies nothing.
            async fn row_by_id<K, T>(
                &self,
                pick: fn(&$crate::store::cache::Caches) -> &$crate::store::cache::RowCache<K, T>,
                sql: &'static str,
                id: &K,
                from: fn(&$row) -> $crate::store::StoreResult<T>,
            ) -> $crate::store::StoreResult<Option<std::sync::Arc<T>>>
            where
                K: AsRef<str> + std::hash::Hash + Eq + Clone,
                T: $crate::store::cache::Versioned,
            {
                let key = [id.as_ref()];
                let load = self.find(sql, &key, from);
                match self.caches() {
                    Some(c) => pick(c).read_through(id, load).await,
                    None => Ok(load.await?.map(std::sync::Arc::new)),
                }
            }

            /// The onboarding `id` whatever its tenant, through the backend's cache if any.
            async fn onboarding_row(
                &self,
                id: &$crate::domain::OnboardingId,
            ) -> $crate::store::StoreResult<Option<std::sync::Arc<$crate::store::OnboardingRecord>>> {
                self.row_by_id(|c| &c.onboardings, "SELECT * FROM onboardings WHERE id = $1", id, Self::onboarding_from)
                    .await
            }

            /// The account `id` whatever its tenant, through the backend's cache if any.
            async fn account_row(
                &self,
                id: &$crate::domain::AccountId,
            ) -> $crate::store::StoreResult<Option<$crate::store::AccountRecord>> {
                let row = self.row_by_id(|c| &c.accounts, "SELECT * FROM accounts WHERE id = $1", id, Self::account_from);
                Ok(row.await?.map(std::sync::Arc::unwrap_or_clone))
            }

            /// Forgets a written account, after the write's commit and before it returns.
            fn account_written(&self, id: &$crate::domain::AccountId) {
                if let Some(c) = self.caches() {
                    c.accounts.invalidate(id);
                }
            }

            async fn publish_after_commit(&self, notice: &$crate::store::ChangeNotice) {
                if let Err(error) = self.publish(notice).await {
                    tracing::warn!(%error, onboarding_id = %notice.onboarding_id, "change notification failed");
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> $crate::store::Backend {
                $backend
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn create_tenant(&self, t: &$crate::store::TenantRecord) -> $crate::store::StoreResult<()> {
                sqlx::query("INSERT INTO tenants (id, name, created_ms) VALUES ($1, $2, $3)")
                    .bind(t.id.as_str())
                    .bind(t.name.as_str())
                    .bind(t.created_ms)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn tenant_by_name(
                &self,
                name: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::TenantRecord>> {
                self.find("SELECT * FROM tenants WHERE name = $1", &[name], Self::tenant_from).await
            }

            async fn tenant(
                &self,
                id: &$crate::domain::TenantId,
            ) -> $crate::store::StoreResult<Option<$crate::store::TenantRecord>> {
                self.find("SELECT * FROM tenants WHERE id = $1", &[id.as_str()], Self::tenant_from).await
            }

            async fn list_tenants(&self) -> $crate::store::StoreResult<Vec<$crate::store::TenantRecord>> {
                let rows = sqlx::query("SELECT * FROM tenants ORDER BY name").fetch_all(self.reader()).await?;
                Self::all(rows, Self::tenant_from)
            }

            async fn add_api_key(&self, k: &$crate::store::ApiKeyRecord) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant_id, hash, prefix, created_ms, revoked_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(k.id.as_str())
                .bind(k.tenant_id.as_str())
                .bind(k.hash.as_slice())
                .bind(k.prefix.as_str())
                .bind(k.created_ms)
                .bind(k.revoked_ms)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn api_key_by_hash(
                &self,
                hash: &[u8],
            ) -> $crate::store::StoreResult<Option<$crate::store::ApiKeyRecord>> {
                let row = sqlx::query("SELECT * FROM api_keys WHERE hash = $1 AND revoked_ms IS NULL")
                    .bind(hash)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(Self::api_key_from).transpose()
            }

            async fn list_api_keys(
                &self,
                tenant: &$crate::domain::TenantId,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ApiKeyRecord>> {
                let rows = sqlx::query("SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_ms, id")
                    .bind(tenant.as_str())
                    .fetch_all(self.reader())
                    .await?;
                Self::all(rows, Self::api_key_from)
            }

            async fn revoke_api_key(
                &self,
                id: &$crate::domain::ApiKeyId,
                at: $crate::domain::UnixMs,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query("UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL")
                    .bind(id.as_str())
                    .bind(at)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn insert_account(
                &self,
                a: &$crate::store::AccountRecord,
                idempotency: Option<&$crate::store::IdempotencyRecord>,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer().begin().await?;
                if let Some(k) = idempotency {
                    Self::insert_idempotency(&mut tx, k).await?;
                }
                sqlx::query(
                    "INSERT INTO accounts (id, tenant_id, provider, display_name, options_json, \
                     credentials_key_id, credentials, webhook_key_id, webhook_secret, sandbox, status_json, \
                     created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(a.id.as_str())
                .bind(a.tenant_id.as_str())
                .bind(a.provider.as_str())
                .bind(a.display_name.as_str())
                .bind(a.options_json.as_str())
                .bind(a.credentials.key_id.as_str())
                .bind(a.credentials.blob.as_slice())
                .bind(a.webhook_secret.key_id.as_str())
                .bind(a.webhook_secret.blob.as_slice())
                .bind(a.sandbox)
                .bind(a.status_json.as_str())
                .bind(a.created_ms)
                .bind(a.updated_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn account(
                &self,
                tenant: &$crate::domain::TenantId,
                id: &$crate::domain::AccountId,
            ) -> $crate::store::StoreResult<Option<$crate::store::AccountRecord>> {
                // By primary key, then scoped: another tenant's id reads as absent.
                Ok(self.account_row(id).await?.filter(|a| a.tenant_id == *tenant))
            }

            async fn account_unscoped(
                &self,
                id: &$crate::domain::AccountId,
            ) -> $crate::store::StoreResult<Option<$crate::store::AccountRecord>> {
                self.account_row(id).await
            }

            async fn webhook_account(
                &self,
                segment: &$crate::domain::AccountId,
            ) -> $crate::store::StoreResult<Option<$crate::store::AccountRecord>> {
                // One statement for both forms (keys hold a '.', legacy ids never do). An outer
                // join, so a miss also returns (and decodes) one row, as a hit does.
                let key = [segment.as_str()];
                let sql = "SELECT a.* FROM (SELECT CAST($1 AS TEXT) AS want) w \
                           LEFT JOIN accounts a ON a.id = w.want OR a.legacy_id = w.want";
                Ok(self.find(sql, &key, Self::account_joined).await?.flatten())
            }

            async fn list_accounts(
                &self,
                tenant: &$crate::domain::TenantId,
                provider: Option<$crate::domain::ProviderKind>,
                page: &$crate::store::PageRequest,
            ) -> $crate::store::StoreResult<$crate::store::Page<$crate::store::AccountRecord>> {
                let rows = sqlx::query(
                    "SELECT * FROM accounts WHERE tenant_id = $1 AND ($2 IS NULL OR provider = $2) \
                     AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4",
                )
                .bind(tenant.as_str())
                .bind(provider.map(|p| p.as_str()))
                .bind(page.after.as_deref())
                .bind(sql::page_limit(page.limit))
                .fetch_all(self.reader())
                .await?;
                Ok(sql::page(Self::all(rows, Self::account_from)?, page.limit, |a| a.id.as_str().to_string()))
            }

            async fn update_account(&self, a: &$crate::store::AccountRecord) -> $crate::store::StoreResult<()> {
                let done = sqlx::query(
                    "UPDATE accounts SET display_name = $3, options_json = $4, credentials_key_id = $5, \
                     credentials = $6, webhook_key_id = $7, webhook_secret = $8, sandbox = $9, \
                     status_json = $10, updated_ms = $11 WHERE tenant_id = $1 AND id = $2",
                )
                .bind(a.tenant_id.as_str())
                .bind(a.id.as_str())
                .bind(a.display_name.as_str())
                .bind(a.options_json.as_str())
                .bind(a.credentials.key_id.as_str())
                .bind(a.credentials.blob.as_slice())
                .bind(a.webhook_secret.key_id.as_str())
                .bind(a.webhook_secret.blob.as_slice())
                .bind(a.sandbox)
                .bind(a.status_json.as_str())
                .bind(a.updated_ms)
                .execute(self.writer())
                .await?;
                self.account_written(&a.id);
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound(format!("account {}", a.id)));
                }
                Ok(())
            }

            async fn delete_account(
                &self,
                tenant: &$crate::domain::TenantId,
                id: &$crate::domain::AccountId,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query("DELETE FROM accounts WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .execute(self.writer())
                    .await?;
                self.account_written(id);
                Ok(done.rows_affected() > 0)
            }

            async fn idempotency(
                &self,
                tenant: &$crate::domain::TenantId,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::IdempotencyRecord>> {
                self.find(
                    "SELECT * FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
                    &[tenant.as_str(), key],
                    Self::idempotency_from,
                )
                .await
            }

            async fn create_onboarding(
                &self,
                new: &$crate::store::NewOnboarding,
            ) -> $crate::store::StoreResult<$crate::store::EventRecord> {
                let mut created = self.create_onboardings(std::slice::from_ref(new)).await?;
                created.pop().ok_or_else(|| $crate::store::StoreError::Other("nothing created".into()))
            }

            async fn create_onboardings(
                &self,
                batch: &[$crate::store::NewOnboarding],
            ) -> $crate::store::StoreResult<Vec<$crate::store::EventRecord>> {
                let mut tx = self.writer().begin().await?;
                let mut events = Vec::with_capacity(batch.len());
                let mut notices = Vec::with_capacity(batch.len());
                for new in batch {
                    let (event, notice) = Self::insert_new_onboarding(&mut tx, new).await?;
                    events.push(event);
                    notices.push(notice);
                }
                tx.commit().await?;
                for notice in &notices {
                    self.publish_after_commit(notice).await;
                }
                Ok(events)
            }

            async fn onboarding(
                &self,
                tenant: &$crate::domain::TenantId,
                id: &$crate::domain::OnboardingId,
            ) -> $crate::store::StoreResult<Option<$crate::store::OnboardingRecord>> {
                Ok(self.onboarding_shared(tenant, id).await?.map(std::sync::Arc::unwrap_or_clone))
            }

            async fn pipeline(
                &self,
                tenant: &$crate::domain::TenantId,
                id: &$crate::domain::OnboardingId,
            ) -> $crate::store::StoreResult<Option<($crate::store::OnboardingRecord, Vec<$crate::store::StepRecord>)>> {
                // One statement, so one snapshot on both backends (a step's outcome and the
                // onboarding fields the same change wrote are seen together) and one round trip.
                let rows = sqlx::query(sql::PIPELINE).bind(id.as_str()).fetch_all(self.reader()).await?;
                let Some(first) = rows.first() else {
                    return Ok(None);
                };
                let o = Self::onboarding_from(first)?;
                if o.tenant_id != *tenant {
                    return Ok(None);
                }
                let mut steps = Vec::with_capacity(rows.len());
                for r in &rows {
                    // No step: the one row the outer join gives, with NULL step columns.
                    if r.try_get::<Option<String>, _>("s_name")?.is_some() {
                        steps.push(Self::step_named(r, &sql::JOINED_STEP_COLUMNS)?);
                    }
                }
                Ok(Some((o, steps)))
            }

            async fn onboarding_shared(
                &self,
                tenant: &$crate::domain::TenantId,
                id: &$crate::domain::OnboardingId,
            ) -> $crate::store::StoreResult<Option<std::sync::Arc<$crate::store::OnboardingRecord>>> {
                // By primary key, then scoped: another tenant's id reads as absent.
                Ok(self.onboarding_row(id).await?.filter(|o| o.tenant_id == *tenant))
            }

            async fn onboarding_unscoped(
                &self,
                id: &$crate::domain::OnboardingId,
            ) -> $crate::store::StoreResult<Option<$crate::store::OnboardingRecord>> {
                Ok(self.onboarding_row(id).await?.map(std::sync::Arc::unwrap_or_clone))
            }

            async fn onboarding_by_resource(
                &self,
                tenant: &$crate::domain::TenantId,
                provider: $crate::domain::ProviderKind,
                external_key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::OnboardingRecord>> {
                self.find(
                    "SELECT * FROM onboardings WHERE tenant_id = $1 AND provider = $2 AND external_key = $3 \
                     ORDER BY id DESC LIMIT 1",
                    &[tenant.as_str(), provider.as_str(), external_key],
                    Self::onboarding_from,
                )
                .await
            }

            async fn onboardings_by_external_keys(
                &self,
                account: &$crate::domain::AccountId,
                external_keys: &[String],
            ) -> $crate::store::StoreResult<Vec<$crate::store::OnboardingRecord>> {
                // The newest per key: ids are time-ordered.
                let mut newest: std::collections::HashMap<String, $crate::store::OnboardingRecord> =
                    std::collections::HashMap::new();
                for chunk in external_keys.chunks(sql::IN_CHUNK) {
                    let sql = format!(
                        "SELECT * FROM onboardings WHERE account_id = $1 AND external_key IN ({})",
                        sql::placeholders(2, chunk.len())
                    );
                    // Only numbered placeholders are formatted in; the keys are bound.
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.as_str());
                    for key in chunk {
                        query = query.bind(key.as_str());
                    }
                    for row in query.fetch_all(self.reader()).await? {
                        let o = Self::onboarding_from(&row)?;
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

            async fn list_onboardings(
                &self,
                tenant: &$crate::domain::TenantId,
                filter: &$crate::store::OnboardingFilter,
                page: &$crate::store::PageRequest,
            ) -> $crate::store::StoreResult<$crate::store::Page<$crate::store::OnboardingRecord>> {
                // Placeholders in the order `list_onboardings_sql` numbers them.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql::list_onboardings_sql(filter)))
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
                let rows = query.bind(sql::page_limit(page.limit)).fetch_all(self.reader()).await?;
                Ok(sql::page(Self::all(rows, Self::onboarding_from)?, page.limit, |o| o.id.as_str().to_string()))
            }

            async fn count_onboardings(
                &self,
            ) -> $crate::store::StoreResult<Vec<($crate::domain::ProviderKind, $crate::domain::OnboardingState, i64)>> {
                let rows = sqlx::query(
                    "SELECT provider, state, COUNT(*) AS n FROM onboardings GROUP BY provider, state ORDER BY provider, state",
                )
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| Ok((sql::provider(r.try_get("provider")?)?, sql::state(r.try_get("state")?)?, r.try_get("n")?)))
                    .collect()
            }

            async fn apply_change(
                &self,
                change: &$crate::store::OnboardingChange,
            ) -> $crate::store::StoreResult<$crate::store::EventRecord> {
                let mut tx = self.writer().begin().await?;
                // Not applied: `tx` drops uncommitted, rolling back (nothing was written anyway).
                match Self::apply_in(&mut tx, change).await? {
                    ($crate::store::ChangeOutcome::Applied(event), notice) => {
                        tx.commit().await?;
                        if let Some(notice) = &notice {
                            self.publish_after_commit(notice).await;
                        }
                        Ok(event)
                    }
                    ($crate::store::ChangeOutcome::Conflict(m) | $crate::store::ChangeOutcome::AlreadyProcessed(m), _) => {
                        Err($crate::store::StoreError::Conflict(m))
                    }
                    ($crate::store::ChangeOutcome::NotFound(m), _) => Err($crate::store::StoreError::NotFound(m)),
                }
            }

            async fn apply_changes(
                &self,
                changes: &[$crate::store::OnboardingChange],
            ) -> $crate::store::StoreResult<Vec<$crate::store::ChangeOutcome>> {
                if changes.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.writer().begin().await?;
                let mut outcomes = Vec::with_capacity(changes.len());
                let mut notices = Vec::with_capacity(changes.len());
                // Onboardings with a change not applied: their later changes were computed on
                // top of it, so they are not applied either.
                let mut blocked = std::collections::HashSet::new();
                for change in changes {
                    if let Some(id) = &change.onboarding_id
                        && blocked.contains(id)
                    {
                        outcomes.push($crate::store::ChangeOutcome::Conflict(format!(
                            "an earlier change of onboarding {id} in this batch was not applied"
                        )));
                        continue;
                    }
                    let (outcome, notice) = Self::apply_in(&mut tx, change).await?;
                    notices.extend(notice);
                    if !matches!(outcome, $crate::store::ChangeOutcome::Applied(_))
                        && let Some(id) = &change.onboarding_id
                    {
                        blocked.insert(id);
                    }
                    outcomes.push(outcome);
                }
                tx.commit().await?;
                for notice in &notices {
                    self.publish_after_commit(notice).await;
                }
                Ok(outcomes)
            }

            async fn events(
                &self,
                id: &$crate::domain::OnboardingId,
                after: i64,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::EventRecord>> {
                let rows = sqlx::query(
                    "SELECT * FROM onboarding_events WHERE onboarding_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
                )
                .bind(id.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                Self::all(rows, Self::event_from)
            }

            async fn steps(
                &self,
                id: &$crate::domain::OnboardingId,
            ) -> $crate::store::StoreResult<Vec<$crate::store::StepRecord>> {
                let rows = sqlx::query("SELECT * FROM pipeline_steps WHERE onboarding_id = $1 ORDER BY position, name")
                    .bind(id.as_str())
                    .fetch_all(self.reader())
                    .await?;
                Self::all(rows, Self::step_from)
            }

            async fn steps_of(
                &self,
                ids: &[$crate::domain::OnboardingId],
            ) -> $crate::store::StoreResult<Vec<$crate::store::StepRecord>> {
                let mut out = Vec::new();
                for chunk in ids.chunks(sql::IN_CHUNK) {
                    let sql = format!(
                        "SELECT * FROM pipeline_steps WHERE onboarding_id IN ({}) ORDER BY onboarding_id, position, name",
                        sql::placeholders(1, chunk.len())
                    );
                    // Only numbered placeholders are formatted in; the ids are bound.
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in chunk {
                        query = query.bind(id.as_str());
                    }
                    out.extend(Self::all(query.fetch_all(self.reader()).await?, Self::step_from)?);
                }
                Ok(out)
            }

            async fn latest_sequences(
                &self,
                ids: &[$crate::domain::OnboardingId],
            ) -> $crate::store::StoreResult<Vec<($crate::domain::OnboardingId, i64)>> {
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(sql::IN_CHUNK) {
                    let sql = format!("SELECT id, sequence FROM onboardings WHERE id IN ({})", sql::placeholders(1, chunk.len()));
                    // Only numbered placeholders are formatted in; the ids are bound.
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in chunk {
                        query = query.bind(id.as_str());
                    }
                    for r in query.fetch_all(self.reader()).await? {
                        out.push((sql::id(r.try_get("id")?)?, r.try_get("sequence")?));
                    }
                }
                Ok(out)
            }

            async fn claim_steps(
                &self,
                worker: &str,
                now: $crate::domain::UnixMs,
                lease: std::time::Duration,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::StepRecord>> {
                // READY with no next-run time is due now; WAITING with none waits for a callback.
                // A RUNNING step whose lease lapsed was abandoned by a crashed worker.
                let rows = sqlx::query(concat!(
                    "UPDATE pipeline_steps SET state = 'RUNNING', lease_owner = $1, lease_until_ms = $2, \
                     attempts = CASE WHEN state = 'WAITING' THEN attempts ELSE attempts + 1 END, \
                     started_ms = COALESCE(started_ms, $3), updated_ms = $3 \
                     WHERE (onboarding_id, name) IN (SELECT onboarding_id, name FROM pipeline_steps \
                     WHERE (state = 'READY' AND (next_run_ms IS NULL OR next_run_ms <= $3)) \
                     OR (state = 'WAITING' AND next_run_ms <= $3) \
                     OR (state = 'RUNNING' AND (lease_until_ms IS NULL OR lease_until_ms <= $3)) \
                     ORDER BY COALESCE(next_run_ms, 0), onboarding_id, position LIMIT $4",
                    $skip_locked,
                    ") RETURNING *"
                ))
                .bind(worker)
                .bind(now.saturating_add(sql::ms(lease)))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(self.writer())
                .await?;
                let mut steps = Self::all(rows, Self::step_from)?;
                steps.sort_by(|a, b| (&a.onboarding_id, a.position).cmp(&(&b.onboarding_id, b.position)));
                Ok(steps)
            }

            async fn renew_lease(
                &self,
                id: &$crate::domain::OnboardingId,
                step: &str,
                worker: &str,
                until: $crate::domain::UnixMs,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE pipeline_steps SET lease_until_ms = $4 \
                     WHERE onboarding_id = $1 AND name = $2 AND lease_owner = $3 AND state = 'RUNNING'",
                )
                .bind(id.as_str())
                .bind(step)
                .bind(worker)
                .bind(until)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn release_step(
                &self,
                step: &$crate::store::StepRecord,
                worker: &str,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE pipeline_steps SET state = $4, attempts = $5, next_run_ms = $6, lease_owner = NULL, \
                     lease_until_ms = NULL, last_error = $7, last_error_code = $8, provider_stage_json = $9, \
                     data_json = $10, updated_ms = $11 \
                     WHERE onboarding_id = $1 AND name = $2 AND lease_owner = $3 AND state = 'RUNNING'",
                )
                .bind(step.onboarding_id.as_str())
                .bind(step.name.as_str())
                .bind(worker)
                .bind(step.state.as_str())
                .bind(step.attempts)
                .bind(step.next_run_ms)
                .bind(step.last_error.as_deref())
                .bind(step.last_error_code.as_deref())
                .bind(step.provider_stage_json.as_str())
                .bind(step.data_json.as_str())
                .bind(step.updated_ms)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn overdue_onboardings(
                &self,
                now: $crate::domain::UnixMs,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::OnboardingRecord>> {
                let [t1, t2, t3] = sql::TERMINAL_STATES;
                let rows = sqlx::query(
                    "SELECT * FROM onboardings WHERE state_deadline_ms IS NOT NULL AND state_deadline_ms < $1 \
                     AND state NOT IN ($3, $4, $5) ORDER BY state_deadline_ms, id LIMIT $2",
                )
                .bind(now)
                .bind(i64::from(limit))
                .bind(t1.as_str())
                .bind(t2.as_str())
                .bind(t3.as_str())
                .fetch_all(self.reader())
                .await?;
                Self::all(rows, Self::onboarding_from)
            }

            async fn expiring_onboardings(
                &self,
                now: $crate::domain::UnixMs,
                threshold_secs: i64,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::OnboardingRecord>> {
                let [t1, t2, t3] = sql::TERMINAL_STATES;
                let window = threshold_secs.saturating_mul(1000);
                let rows = sqlx::query(
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
                .fetch_all(self.reader())
                .await?;
                Self::all(rows, Self::onboarding_from)
            }

            async fn insert_webhook_event(
                &self,
                e: &$crate::store::WebhookEventRecord,
            ) -> $crate::store::StoreResult<bool> {
                let stored = self.insert_webhook_events(std::slice::from_ref(e)).await?;
                Ok(stored.first().copied().unwrap_or(false))
            }

            async fn insert_webhook_events(
                &self,
                events: &[$crate::store::WebhookEventRecord],
            ) -> $crate::store::StoreResult<Vec<bool>> {
                if events.is_empty() {
                    return Ok(Vec::new());
                }
                // One multi-row statement per chunk: on SQLite every statement is a round trip
                // to the connection's worker thread, so a row each would cost the writer far more
                // than the rows themselves. Rows that hit an existing dedupe key (or one earlier
                // in the same statement) are skipped and not returned.
                let mut stored = std::collections::HashSet::new();
                let mut tx = self.writer().begin().await?;
                for chunk in events.chunks(sql::WEBHOOK_INSERT_CHUNK) {
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql::insert_webhooks_sql(chunk.len())));
                    for e in chunk {
                        query = query
                            .bind(e.id.as_str())
                            .bind(e.provider.as_str())
                            .bind(e.account_id.as_str())
                            .bind(e.dedupe_key.as_str())
                            .bind(e.body.as_slice())
                            .bind(e.status.as_str())
                            .bind(e.note.as_deref())
                            .bind(e.lease_owner.as_deref())
                            .bind(e.lease_until_ms)
                            .bind(e.received_ms);
                    }
                    for row in query.fetch_all(&mut *tx).await? {
                        stored.insert(row.try_get::<String, _>("id")?);
                    }
                }
                tx.commit().await?;
                Ok(events.iter().map(|e| stored.contains(&e.id)).collect())
            }

            async fn claim_webhook_events(
                &self,
                worker: &str,
                now: $crate::domain::UnixMs,
                lease: std::time::Duration,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::WebhookEventRecord>> {
                let rows = sqlx::query(concat!(
                    "UPDATE webhook_events SET lease_owner = $1, lease_until_ms = $2 \
                     WHERE id IN (SELECT id FROM webhook_events WHERE status = 'PENDING' \
                     AND (lease_until_ms IS NULL OR lease_until_ms <= $3) ORDER BY received_ms, id LIMIT $4",
                    $skip_locked,
                    ") RETURNING *"
                ))
                .bind(worker)
                .bind(now.saturating_add(sql::ms(lease)))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(self.writer())
                .await?;
                let mut events = Self::all(rows, Self::webhook_from)?;
                events.sort_by(|a, b| (a.received_ms, &a.id).cmp(&(b.received_ms, &b.id)));
                Ok(events)
            }

            async fn finish_webhook_event(
                &self,
                id: &str,
                status: $crate::store::WebhookStatus,
                note: Option<&str>,
            ) -> $crate::store::StoreResult<()> {
                let done = sqlx::query(
                    "UPDATE webhook_events SET status = $2, note = $3, lease_owner = NULL, lease_until_ms = NULL WHERE id = $1",
                )
                .bind(id)
                .bind(status.as_str())
                .bind(note)
                .execute(self.writer())
                .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound(format!("webhook event {id}")));
                }
                Ok(())
            }

            async fn webhook_event(
                &self,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::WebhookEventRecord>> {
                self.find("SELECT * FROM webhook_events WHERE id = $1", &[id], Self::webhook_from).await
            }

            async fn rate_acquire(
                &self,
                key: &str,
                limit: u32,
                window: std::time::Duration,
                now: Option<$crate::domain::UnixMs>,
            ) -> $crate::store::StoreResult<$crate::store::RateGrant> {
                if limit == 0 {
                    return Ok($crate::store::RateGrant::Wait(window));
                }
                let window_ms = sql::ms(window);
                let mut tx = self.writer().begin().await?;
                Self::lock_rate_key(&mut tx, key).await?;
                // Read after the writer and the key's lock are ours (see the trait).
                let now = now.unwrap_or_else($crate::domain::now_ms);
                sqlx::query("DELETE FROM rate_slots WHERE key = $1 AND at_ms <= $2")
                    .bind(key)
                    .bind(now.saturating_sub(window_ms))
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query("SELECT COUNT(*) AS n, MIN(at_ms) AS oldest FROM rate_slots WHERE key = $1")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
                let taken: i64 = row.try_get("n")?;
                let oldest: Option<i64> = row.try_get("oldest")?;
                let grant = if taken < i64::from(limit) {
                    let row = sqlx::query("INSERT INTO rate_slots (key, at_ms) VALUES ($1, $2) RETURNING seq")
                        .bind(key)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                    $crate::store::RateGrant::Taken(row.try_get("seq")?)
                } else {
                    let free_at = oldest.unwrap_or(now).saturating_add(window_ms);
                    // Clamped to the window: callers' clocks are not perfectly monotonic
                    // across replicas, and no slot can be held longer than one window.
                    let wait_ms = u64::try_from(free_at.saturating_sub(now).min(window_ms)).unwrap_or(0).max(1);
                    $crate::store::RateGrant::Wait(std::time::Duration::from_millis(wait_ms))
                };
                tx.commit().await?;
                Ok(grant)
            }

            async fn rate_restamp(
                &self,
                key: &str,
                slot: i64,
                now: Option<$crate::domain::UnixMs>,
            ) -> $crate::store::StoreResult<()> {
                let now = now.unwrap_or_else($crate::domain::now_ms);
                sqlx::query("UPDATE rate_slots SET at_ms = $3 WHERE key = $1 AND seq = $2 AND at_ms < $3")
                    .bind(key)
                    .bind(slot)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn claim_request(
                &self,
                claim: &$crate::store::RequestClaim,
                now: $crate::domain::UnixMs,
            ) -> $crate::store::StoreResult<Option<$crate::store::RequestClaim>> {
                // The holder can release between the upsert and the read: then claim again.
                for _ in 0..3 {
                    // New, or taken over from a lapsed lease; a live claim is left alone.
                    let won = sqlx::query(
                        "INSERT INTO request_claims (tenant_id, key, operation, request_hash, owner, lease_until_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (tenant_id, key) DO UPDATE SET operation = excluded.operation, \
                         request_hash = excluded.request_hash, owner = excluded.owner, \
                         lease_until_ms = excluded.lease_until_ms \
                         WHERE request_claims.lease_until_ms <= $7",
                    )
                    .bind(claim.tenant_id.as_str())
                    .bind(claim.key.as_str())
                    .bind(claim.operation.as_str())
                    .bind(claim.request_hash.as_slice())
                    .bind(claim.owner.as_str())
                    .bind(claim.lease_until_ms)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                    if won.rows_affected() > 0 {
                        return Ok(None);
                    }
                    let row = sqlx::query("SELECT * FROM request_claims WHERE tenant_id = $1 AND key = $2")
                        .bind(claim.tenant_id.as_str())
                        .bind(claim.key.as_str())
                        .fetch_optional(self.writer())
                        .await?;
                    if let Some(r) = row {
                        return Ok(Some($crate::store::RequestClaim {
                            tenant_id: sql::id(r.try_get("tenant_id")?)?,
                            key: r.try_get("key")?,
                            operation: r.try_get("operation")?,
                            request_hash: r.try_get("request_hash")?,
                            owner: r.try_get("owner")?,
                            lease_until_ms: r.try_get("lease_until_ms")?,
                        }));
                    }
                }
                Err($crate::store::StoreError::Conflict(format!("request claim '{}' keeps changing hands", claim.key)))
            }

            async fn release_request(
                &self,
                tenant: &$crate::domain::TenantId,
                key: &str,
                owner: &str,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query("DELETE FROM request_claims WHERE tenant_id = $1 AND key = $2 AND owner = $3")
                    .bind(tenant.as_str())
                    .bind(key)
                    .bind(owner)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn bind_resource(
                &self,
                b: &$crate::store::ResourceBinding,
            ) -> $crate::store::StoreResult<$crate::domain::OnboardingId> {
                // The primary key decides between racing binders, on every replica.
                sqlx::query(
                    "INSERT INTO resource_bindings (scope, resource, onboarding_id, created_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (scope, resource) DO NOTHING",
                )
                .bind(b.scope.as_str())
                .bind(b.resource.as_str())
                .bind(b.onboarding_id.as_str())
                .bind(b.created_ms)
                .execute(self.writer())
                .await?;
                let holder: String =
                    sqlx::query("SELECT onboarding_id FROM resource_bindings WHERE scope = $1 AND resource = $2")
                        .bind(b.scope.as_str())
                        .bind(b.resource.as_str())
                        .fetch_one(self.writer())
                        .await?
                        .try_get("onboarding_id")?;
                sql::id(holder)
            }

            async fn resource_binding(
                &self,
                scope: &str,
                resource: &str,
            ) -> $crate::store::StoreResult<Option<$crate::domain::OnboardingId>> {
                let row = sqlx::query("SELECT onboarding_id FROM resource_bindings WHERE scope = $1 AND resource = $2")
                    .bind(scope)
                    .bind(resource)
                    .fetch_optional(self.reader())
                    .await?;
                row.map(|r| r.try_get::<String, _>("onboarding_id").map_err(Into::into).and_then(sql::id)).transpose()
            }

            async fn begin_create_intent(
                &self,
                i: &$crate::store::CreateIntent,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.writer().begin().await?;
                let before: Option<i64> =
                    sqlx::query("SELECT pending FROM create_intents WHERE onboarding_id = $1 AND step = $2")
                        .bind(i.onboarding_id.as_str())
                        .bind(i.step.as_str())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get("pending"))
                        .transpose()?;
                sqlx::query(
                    "INSERT INTO create_intents (onboarding_id, step, scope, subject, pending, calls, created_ms, updated_ms) \
                     VALUES ($1, $2, $3, $4, 1, 1, $5, $5) \
                     ON CONFLICT (onboarding_id, step) DO UPDATE SET scope = excluded.scope, \
                     subject = excluded.subject, pending = 1, calls = create_intents.calls + 1, \
                     updated_ms = excluded.updated_ms",
                )
                .bind(i.onboarding_id.as_str())
                .bind(i.step.as_str())
                .bind(i.scope.as_str())
                .bind(i.subject.as_str())
                .bind(i.at_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(before == Some(1))
            }

            async fn resolve_create_intent(
                &self,
                onboarding: &$crate::domain::OnboardingId,
                step: &str,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query("UPDATE create_intents SET pending = 0 WHERE onboarding_id = $1 AND step = $2")
                    .bind(onboarding.as_str())
                    .bind(step)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn pending_create_intents(
                &self,
                scope: &str,
                subject: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::OnboardingId>> {
                let rows = sqlx::query(
                    "SELECT DISTINCT onboarding_id FROM create_intents \
                     WHERE scope = $1 AND subject = $2 AND pending = 1 ORDER BY onboarding_id",
                )
                .bind(scope)
                .bind(subject)
                .fetch_all(self.writer())
                .await?;
                rows.iter().map(|r| sql::id(r.try_get("onboarding_id")?)).collect()
            }

            async fn notify(&self, notice: &$crate::store::ChangeNotice) -> $crate::store::StoreResult<()> {
                self.publish(notice).await
            }

            fn subscribe(&self) -> tokio::sync::broadcast::Receiver<$crate::store::ChangeNotice> {
                self.bus().subscribe()
            }
        }
    };
}

pub(crate) use impl_sql_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_match_the_domain() {
        let terminal: Vec<OnboardingState> = OnboardingState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, TERMINAL_STATES);
    }

    #[test]
    fn notice_payload_round_trips() {
        let notice = ChangeNotice::moved(OnboardingId::parse("abc-1").unwrap(), 42);
        let payload = notice_payload(&notice, "origin1");
        assert_eq!(payload, "abc-1:42:origin1");
        assert_eq!(parse_notice_payload(&payload), Some((notice.clone(), Some("origin1"))));
        assert_eq!(parse_notice_payload("abc-1:42"), Some((notice, None)));
        assert_eq!(parse_notice_payload("abc-1"), None);
        assert_eq!(parse_notice_payload("Bad Id:1"), None);
        assert_eq!(parse_notice_payload("abc-1:x"), None);
    }

    #[test]
    fn list_sql_names_only_the_filters_given() {
        use crate::store::OnboardingFilter;
        assert_eq!(
            list_onboardings_sql(&OnboardingFilter::default()),
            "SELECT * FROM onboardings WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let some =
            OnboardingFilter { state: Some(OnboardingState::Live), reference: Some("r".into()), ..Default::default() };
        assert_eq!(
            list_onboardings_sql(&some),
            "SELECT * FROM onboardings WHERE tenant_id = $1 AND id > $2 AND state = $3 AND reference = $4 ORDER BY id LIMIT $5"
        );
        let all = OnboardingFilter {
            provider: Some(ProviderKind::Whapi),
            state: Some(OnboardingState::Live),
            reference: Some("r".into()),
            account_id: Some(crate::domain::new_id()),
        };
        assert!(
            list_onboardings_sql(&all).ends_with(
                "AND provider = $3 AND state = $4 AND reference = $5 AND account_id = $6 ORDER BY id LIMIT $7"
            )
        );
    }

    #[test]
    fn paging_cuts_the_extra_row() {
        let p = page(vec![1, 2, 3], 2, |i| i.to_string());
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next_page_token.as_deref(), Some("2"));
        let p = page(vec![1, 2], 2, |i| i.to_string());
        assert_eq!(p.next_page_token, None);
        assert_eq!(page_limit(2), 3);
    }
}
