//! The SQL both backends share, one module per store area ([`tenants`], [`accounts`],
//! [`onboardings`], [`work`], [`inbox`], [`rates`], [`feed`], [`deliveries`]). sqlx-sqlite accepts
//! PostgreSQL's numbered `$N` placeholders, so one SQL text serves both databases; each area
//! trait is implemented once, generically, for every [`SqlBackend`] (the SQLite and the
//! PostgreSQL store), over the two databases' common operations ([`db::SqlDb`]). What differs
//! between the backends is what [`SqlBackend`] asks of them: their pools, row locks, the
//! rate-key lock, caches and change notification.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Pool, Transaction};
use tokio::sync::broadcast;

use super::cache::{Caches, OnboardingCache, RowCache, Versioned};
use super::{Backend, ChangeNotice, Page, Store, StoreError, StoreResult};
use crate::domain::{IdError, OnboardingState, ProviderKind, StepState};
use db::sql;

pub(crate) mod accounts;
pub(crate) mod db;
pub(crate) mod deliveries;
pub(crate) mod feed;
pub(crate) mod inbox;
pub(crate) mod notices;
pub(crate) mod onboardings;
pub(crate) mod rates;
pub(crate) mod tenants;
pub(crate) mod work;

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

/// The SQL `LIMIT` for a keyset page: one more row than asked, to know whether more follow.
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

/// Ids bound in one `IN (...)` list: well under both backends' bind-parameter limits.
pub(crate) const IN_CHUNK: usize = 500;

/// `$from, $from+1, ...`: `n` numbered placeholders for an `IN (...)` list.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    let marks: Vec<String> = (from..from + n).map(|i| format!("${i}")).collect();
    marks.join(", ")
}

/// Bound values one statement may carry on both backends: SQLite's limit (PostgreSQL's is
/// 65,535).
pub(crate) const MAX_BINDS: usize = 32_766;

/// Rows of `cols` bound values per statement of a multi-row write on `DB`
/// ([`db::SqlDb::STATEMENT_BINDS`], never above [`MAX_BINDS`]).
pub(crate) const fn rows_per_statement<DB: db::SqlDb>(cols: usize) -> usize {
    let binds = if DB::STATEMENT_BINDS < MAX_BINDS { DB::STATEMENT_BINDS } else { MAX_BINDS };
    binds / cols
}

/// `($1, .., $cols<tail>), ($cols+1, ..<tail>), ...`: `rows` tuples of `cols` numbered
/// placeholders each, every tuple ending in the literal `tail` (constant columns, e.g. `", 1"`),
/// for a multi-row `VALUES`.
pub(crate) fn value_tuples(rows: usize, cols: usize, tail: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(rows * (cols * 7 + tail.len() + 4));
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 1..=cols {
            if c > 1 {
                s.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(s, "${}", r * cols + c);
        }
        s.push_str(tail);
        s.push(')');
    }
    s
}

/// What a backend supplies for the shared SQL: every area trait is implemented for each
/// type implementing this (`SqliteStore`, `PgStore`).
pub(crate) trait SqlBackend: Send + Sync + 'static {
    /// Its database.
    type Db: db::SqlDb;
    /// Which backend it is.
    const BACKEND: Backend;
    /// Whether rows can be locked (`FOR UPDATE`, `SKIP LOCKED`): PostgreSQL. On SQLite the one
    /// writer connection already serialises writers.
    const ROW_LOCKS: bool;

    /// The pool reads go to.
    fn reader(&self) -> &Pool<Self::Db>;
    /// The pool writes go to (SQLite keeps one writer connection, so write transactions
    /// never race for the lock).
    fn writer(&self) -> &Pool<Self::Db>;
    /// Serialises one rate-limit key until `tx` ends.
    fn lock_rate_key<'c>(
        tx: &'c mut Transaction<'static, Self::Db>,
        key: &'c str,
    ) -> impl Future<Output = StoreResult<()>> + Send + 'c;
    /// Where reads of one onboarding or account go through, when the backend can keep such
    /// caches exactly coherent (its `publish` invalidates onboardings, account writes
    /// invalidate accounts; see [`super::cache`]).
    fn caches(&self) -> Option<&Caches>;
    /// Where API reads of one onboarding (`onboarding_shared`, never a read a write decides
    /// on) go through: the exact cache where there is one, else one that may lag another
    /// replica's commit by its notice (PostgreSQL; see [`super::cache`]).
    fn api_read_cache(&self) -> Option<&OnboardingCache> {
        self.caches().map(|c| &c.onboardings)
    }
    /// Change notification, called after the commit of every write that changes an
    /// onboarding row (its sequence grows).
    fn publish(&self, notice: &ChangeNotice) -> impl Future<Output = StoreResult<()>> + Send;
    /// [`Self::publish`] of every notice of one committed write, in order, in one round trip
    /// where other replicas must be told (a bulk create would otherwise pay one per row).
    fn publish_all(&self, notices: &[ChangeNotice]) -> impl Future<Output = StoreResult<()>> + Send;
    /// This process's notices.
    fn bus(&self) -> &broadcast::Sender<ChangeNotice>;

    /// The spelling of a statement for this backend: `texts[1]` locks rows, `texts[0]` does
    /// not ([`locking!`]).
    fn locking(texts: [&'static str; 2]) -> &'static str {
        texts[usize::from(Self::ROW_LOCKS)]
    }
}

/// Both spellings of one statement, without and with the row lock `$lock` between `$head`
/// and `$tail`, for [`SqlBackend::locking`].
macro_rules! locking {
    ($head:expr, $lock:literal, $tail:expr $(,)?) => {
        [concat!($head, $tail), concat!($head, $lock, $tail)]
    };
}
pub(crate) use locking;

#[async_trait]
impl<B: SqlBackend> Store for B {
    fn backend(&self) -> Backend {
        B::BACKEND
    }

    async fn ping(&self) -> StoreResult<()> {
        sql::<B::Db>("SELECT 1").execute(self.reader()).await?;
        Ok(())
    }

    async fn maintain_tables(&self) -> StoreResult<Vec<String>> {
        if B::BACKEND != Backend::Postgres {
            return Ok(Vec::new());
        }
        let due = sql::<B::Db>(DUE_MAINTENANCE).all::<(String, bool, bool)>(self.writer()).await?;
        let mut done = Vec::with_capacity(due.len());
        for (table, vacuum, analyze) in due {
            // `quote_ident` made the name; only catalog names of our own schema get here.
            // Outside a transaction (VACUUM refuses one), on a pooled connection.
            let text = match (vacuum, analyze) {
                (true, true) => format!("VACUUM (SKIP_LOCKED, ANALYZE) {table}"),
                (true, false) => format!("VACUUM (SKIP_LOCKED) {table}"),
                _ => format!("ANALYZE (SKIP_LOCKED) {table}"),
            };
            sql::<B::Db>(sqlx::AssertSqlSafe(text.clone())).execute(self.writer()).await?;
            done.push(text);
        }
        Ok(done)
    }
}

/// PostgreSQL: the tables of the service's schema past autovacuum's default thresholds, by
/// anyone's last pass (autovacuum's counts too), quoted: whether to vacuum (dead rows over
/// 50 + 20 % of the live ones) and whether to analyze (rows changed since the last analysis
/// over 50 + 10 %).
const DUE_MAINTENANCE: &str = "SELECT name, due_vacuum, due_analyze FROM (SELECT quote_ident(relname) AS name, \
     n_dead_tup > 50 + 0.2 * n_live_tup AS due_vacuum, n_mod_since_analyze > 50 + 0.1 * n_live_tup AS due_analyze \
     FROM pg_stat_user_tables WHERE schemaname = current_schema()) s WHERE due_vacuum OR due_analyze ORDER BY name";

/// One row by its id (`text` binds it as `$1`), decoded as `R`, through `cache` if any;
/// shared, so a cache hit copies nothing.
pub(crate) async fn row_by_id<B, K, R, T>(
    backend: &B,
    cache: Option<&RowCache<K, T>>,
    text: &'static str,
    id: &K,
) -> StoreResult<Option<Arc<T>>>
where
    B: SqlBackend,
    K: AsRef<str> + Hash + Eq + Clone + Sync,
    R: db::Rec + TryInto<T, Error = StoreError>,
    T: Versioned + Send + Sync,
{
    let load = async {
        let row = sql::<B::Db>(text).bind(id.as_ref()).optional::<R>(backend.reader()).await?;
        row.map(TryInto::try_into).transpose()
    };
    match cache {
        Some(c) => c.read_through(id, load).await,
        None => Ok(load.await?.map(Arc::new)),
    }
}

/// Converts decoded rows into records.
pub(crate) fn records<R: TryInto<T, Error = StoreError>, T>(rows: Vec<R>) -> StoreResult<Vec<T>> {
    rows.into_iter().map(TryInto::try_into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_tuples_number_every_placeholder_once() {
        assert_eq!(value_tuples(2, 3, ""), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(value_tuples(2, 1, ", 1"), "($1, 1), ($2, 1)");
        assert_eq!(value_tuples(0, 3, ""), "");
        assert!(rows_per_statement::<sqlx::Postgres>(18) * 18 <= MAX_BINDS);
        assert!(rows_per_statement::<sqlx::Sqlite>(18) * 18 <= 1_000);
    }

    #[test]
    fn terminal_states_match_the_domain() {
        let terminal: Vec<OnboardingState> = OnboardingState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, TERMINAL_STATES);
    }

    #[test]
    fn only_postgres_locks_rows() {
        use crate::store::postgres::PgStore;
        use crate::store::sqlite::SqliteStore;
        for texts in
            [work::CLAIM_STEPS, inbox::CLAIM, onboardings::ROW_FOR_CHANGE, deliveries::OUTBOX_ROWS, deliveries::CLAIM]
        {
            assert!(!SqliteStore::locking(texts).contains("FOR UPDATE"), "{}", texts[0]);
            assert!(PgStore::locking(texts).contains("FOR UPDATE"), "{}", texts[1]);
        }
        assert!(PgStore::locking(work::CLAIM_STEPS).contains("SKIP LOCKED"));
        assert!(PgStore::locking(deliveries::OUTBOX_ROWS).contains("SKIP LOCKED"));
        assert!(PgStore::locking(deliveries::CLAIM).contains("SKIP LOCKED"));
    }

    /// The pipeline join names every step column as plain step reads do, so one row type
    /// decodes both.
    #[test]
    fn the_pipeline_join_reads_steps_under_the_same_names() {
        let aliases = |text: &str| -> Vec<String> {
            text.split(" AS ").skip(1).map(|rest| rest.split([',', ' ']).next().unwrap_or("").to_string()).collect()
        };
        let plain = aliases(onboardings::step_columns!());
        assert_eq!(plain.len(), 18);
        assert_eq!(aliases(onboardings::PIPELINE), plain);
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
