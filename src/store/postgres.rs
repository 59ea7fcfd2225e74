//! PostgreSQL backend: for more than one replica. Work is claimed with
//! `FOR UPDATE SKIP LOCKED`, rate limits are serialised per key with transaction-scoped
//! advisory locks, and change notices cross replicas through `LISTEN/NOTIFY` on a channel
//! named after the schema (so schemas sharing a server never hear each other).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, Postgres};
use sqlx::{AssertSqlSafe, Connection, Row, Transaction};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::cache::{Caches, OnboardingCache};
use super::sql::db::sql;
use super::sql::{self, SqlBackend, feed};
use super::{Backend, ChangeNotice, StoreError, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Pool size per replica.
const POOL_SIZE: u32 = 10;
/// How long a query waits for a connection before the store reports `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Listener reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Onboarding rows kept for API reads ([`SqlBackend::api_read_cache`]).
const API_READ_ENTRIES: usize = super::cache::DEFAULT_ENTRIES;
/// How long a row stays in the API read cache without a notice: the bound on a read lagging
/// another replica's commit whose notice was lost (that replica died between its commit and
/// its `NOTIFY`). A notice that arrives (the usual case) ends the lag at once.
pub const API_READ_MAX_AGE: Duration = Duration::from_secs(1);
/// Prefix of the schemas made by [`create_test_schema`].
const TEST_SCHEMA_PREFIX: &str = "wa_test_";

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    bus: broadcast::Sender<ChangeNotice>,
    channel: String,
    /// This instance's id in notification payloads, to skip our own notices coming back.
    origin: String,
    listener: JoinHandle<()>,
    /// Onboardings for API reads: invalidated by this replica's writes before they return and
    /// by other replicas' notices as they arrive (see [`super::cache`]).
    api_reads: Arc<OnboardingCache>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects to `url` (a `search_path` may be set with `options=-c search_path=...`),
    /// runs the migrations and starts listening for other replicas' change notices.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("bad PostgreSQL URL '{}': {e}", super::redact_url(url))))?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await.map_err(sql::migrate_err)?;
        let schema: Option<String> = sqlx::query("SELECT current_schema()").fetch_one(&pool).await?.try_get(0)?;
        let channel = channel_name(schema.as_deref().unwrap_or("none"));
        let origin = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let (bus, _) = broadcast::channel(1024);

        // The listener has its own connection; it is listening before `connect` returns, so
        // no notice sent after that is missed.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);
        let listener = start_listener(&listener_pool, &channel).await?;
        let api_reads = Arc::new(OnboardingCache::with_max_age(API_READ_ENTRIES, API_READ_MAX_AGE));
        let heard = Heard { origin: origin.clone(), bus: bus.clone(), api_reads: api_reads.clone() };
        let listener = tokio::spawn(listen_loop(listener, listener_pool, channel.clone(), heard));
        Ok(Self { pool, bus, channel, origin, listener, api_reads })
    }
}

impl SqlBackend for PgStore {
    type Db = Postgres;
    const BACKEND: Backend = Backend::Postgres;
    const ROW_LOCKS: bool = true;

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// Serialises `rate_acquire` for one key across replicas until the transaction ends.
    async fn lock_rate_key(tx: &mut Transaction<'static, Postgres>, key: &str) -> StoreResult<()> {
        sql::<Postgres>("SELECT pg_advisory_xact_lock(hashtext($1))").bind(key).execute(tx).await?;
        Ok(())
    }

    /// No exact cache: another replica's write reaches this one only through an asynchronous
    /// `NOTIFY`, so a cached row could be served after that write was acknowledged.
    fn caches(&self) -> Option<&Caches> {
        None
    }

    /// The lagging cache, for API reads only.
    fn api_read_cache(&self) -> Option<&OnboardingCache> {
        Some(&self.api_reads)
    }

    /// Forgets the row for this replica's readers, delivers locally at once, then tells the
    /// other replicas.
    async fn publish(&self, notice: &ChangeNotice) -> StoreResult<()> {
        // Before the write returns: read-your-writes on this replica.
        self.api_reads.invalidate(&notice.onboarding_id);
        // No receiver is not an error: nobody is watching right now.
        let _ = self.bus.send(notice.clone());
        sql::<Postgres>("SELECT pg_notify($1, $2)")
            .bind(self.channel.as_str())
            .bind(feed::notice_payload(notice, &self.origin))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// [`Self::publish`] of each, in order, with one `pg_notify` statement for them all: the
    /// other replicas hear the same per-onboarding notices in the same order, and a bulk
    /// create pays one round trip instead of one per row.
    async fn publish_all(&self, notices: &[ChangeNotice]) -> StoreResult<()> {
        if notices.is_empty() {
            return Ok(());
        }
        let mut payloads = Vec::with_capacity(notices.len());
        for notice in notices {
            // Before the write returns: read-your-writes on this replica.
            self.api_reads.invalidate(&notice.onboarding_id);
            // No receiver is not an error: nobody is watching right now.
            let _ = self.bus.send(notice.clone());
            payloads.push(feed::notice_payload(notice, &self.origin));
        }
        // A function scan yields the array in order, so the notifications go out in order.
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(self.channel.as_str())
            .bind(payloads)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn bus(&self) -> &broadcast::Sender<ChangeNotice> {
        &self.bus
    }
}

/// `wa_onboard_<schema>`, cut to PostgreSQL's 63-byte identifier limit.
fn channel_name(schema: &str) -> String {
    let mut name = format!("wa_onboard_{schema}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

async fn start_listener(pool: &PgPool, channel: &str) -> StoreResult<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// Where the listener hands other replicas' notices.
struct Heard {
    /// This store's origin (its own notices come back and are skipped).
    origin: String,
    bus: broadcast::Sender<ChangeNotice>,
    api_reads: Arc<OnboardingCache>,
}

/// Forwards other replicas' notices to the local bus, and invalidates their rows in the API
/// read cache first (so a reader woken by the notice reads the change), until the store is
/// dropped. `try_recv` reconnects by itself after a dropped connection; when that fails too,
/// the listener is rebuilt with backoff. Notices sent meanwhile are lost, which costs watchers
/// latency only, and the API read cache is emptied once listening again.
async fn listen_loop(listener: PgListener, pool: PgPool, channel: String, heard: Heard) {
    let Heard { origin, bus, api_reads } = heard;
    let mut listener = Some(listener);
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut current = match listener.take() {
            Some(l) => l,
            None => match start_listener(&pool, &channel).await {
                Ok(l) => {
                    // Listening again; what changed while not is unknown.
                    api_reads.invalidate_all();
                    l
                }
                Err(error) => {
                    tracing::warn!(%error, "change listener cannot reconnect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        loop {
            match current.try_recv().await {
                Ok(Some(n)) => {
                    backoff = BACKOFF_MIN;
                    match feed::parse_notice_payload(n.payload()) {
                        Some((_, Some(from))) if from == origin => {}
                        Some((notice, _)) => {
                            api_reads.invalidate(&notice.onboarding_id);
                            let _ = bus.send(notice);
                        }
                        None => {
                            // Whose row changed is unknown: forget them all.
                            api_reads.invalidate_all();
                            tracing::warn!(payload = n.payload(), "unparsable change notice");
                        }
                    }
                }
                // Reconnected after a lost connection: notices of the gap are lost.
                Ok(None) => api_reads.invalidate_all(),
                Err(error) => {
                    tracing::warn!(%error, "change listener lost its connection");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

// ----- test schemas -----

static SCHEMA_COUNTER: AtomicU64 = AtomicU64::new(0);
static STALE_SWEEP: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn admin_connection(url: &str) -> StoreResult<PgConnection> {
    match tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect(url)).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer from {} within {ACQUIRE_TIMEOUT:?}",
            super::redact_url(url)
        ))),
    }
}

/// For tests (unit and `tests/`): creates a fresh schema `wa_test_<pid>_<n>` on the server
/// at `base_url` and returns a URL whose connections use it as `search_path`, so tests run
/// in parallel on one database without seeing each other. The first call in a process also
/// drops schemas left by test processes that no longer run. Pair with [`drop_schema`].
pub async fn create_test_schema(base_url: &str) -> StoreResult<String> {
    let mut conn = admin_connection(base_url).await?;
    STALE_SWEEP
        .get_or_try_init(|| async {
            drop_stale_test_schemas(&mut conn).await?;
            Ok::<(), StoreError>(())
        })
        .await?;
    let schema =
        format!("{TEST_SCHEMA_PREFIX}{}_{}", std::process::id(), SCHEMA_COUNTER.fetch_add(1, Ordering::Relaxed));
    // A schema of this name can only be a leftover of a dead process that had our pid.
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).execute(&mut conn).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&mut conn).await?;
    let _ = conn.close().await;
    let mut url = url::Url::parse(base_url).map_err(|e| StoreError::Other(format!("bad PostgreSQL URL: {e}")))?;
    url.query_pairs_mut().append_pair("options", &format!("-c search_path={schema}"));
    Ok(url.to_string())
}

/// Drops the test schema that `url` (from [`create_test_schema`]) points at. Refuses any
/// schema not named like a test schema.
pub async fn drop_schema(url: &str) -> StoreResult<()> {
    let mut conn = admin_connection(url).await?;
    let schema: Option<String> = sqlx::query("SELECT current_schema()").fetch_one(&mut conn).await?.try_get(0)?;
    let schema = schema.unwrap_or_default();
    if !is_test_schema(&schema) {
        return Err(StoreError::Other(format!("refusing to drop schema '{schema}': not a test schema")));
    }
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}

/// `wa_test_<digits>_<digits>`: also what makes a name safe to splice into DDL.
fn is_test_schema(name: &str) -> bool {
    test_schema_pid(name).is_some()
}

fn test_schema_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(TEST_SCHEMA_PREFIX)?.split_once('_')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Drops test schemas whose process is gone (`/proc/<pid>` missing; the test server is
/// assumed to be shared by processes of this machine only).
async fn drop_stale_test_schemas(conn: &mut PgConnection) -> StoreResult<()> {
    let rows = sqlx::query("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)")
        .bind(TEST_SCHEMA_PREFIX)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        let name: String = row.try_get(0)?;
        let Some(pid) = test_schema_pid(&name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Another process may be sweeping the same leftovers.
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {name} CASCADE"))).execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_schema_names() {
        assert_eq!(test_schema_pid("wa_test_123_4"), Some(123));
        assert!(!is_test_schema("public"));
        assert!(!is_test_schema("wa_test_123"));
        assert!(!is_test_schema("wa_test_1_2; DROP TABLE x"));
        assert!(!is_test_schema("wa_test__1"));
    }

    #[test]
    fn channel_names_fit() {
        assert_eq!(channel_name("public"), "wa_onboard_public");
        assert_eq!(channel_name(&"x".repeat(100)).len(), 63);
    }
}
