//! Conformance: the store as a whole (health, backend), and what only one backend has: migrations of old rows, URLs, PostgreSQL replicas and locks.

use super::rates::{stamp_of, taken};
use super::*;

pub(super) async fn check_ping_and_backend(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let _ = store.backend();
}

/// Rows as the code before migration 0003 wrote them (ids global, keys bare), for the
/// migration tests; `blob` spells a byte-string literal in the backend's SQL.
fn pre_0003_rows(blob: fn(&[u8]) -> String) -> String {
    let b = blob(&sealed("hook").blob);
    format!(
        "INSERT INTO tenants VALUES ('t-one', 'one', 1), ('t-two', 'two', 1);
         INSERT INTO accounts VALUES ('x', 't-one', 'whapi', 'X', '{{}}', 'k', {b}, 'k', {b}, TRUE, '{{}}', 1, 1),
                                     ('z', 't-two', 'whapi', 'Z', '{{}}', 'k', {b}, 'k', {b}, TRUE, '{{}}', 1, 1);
         INSERT INTO onboardings (id, tenant_id, account_id, provider, state, state_reason, provider_status,
             reference, details_json, external_key, sequence, created_ms, updated_ms)
             VALUES ('y', 't-one', 'x', 'whapi', 'PENDING', 'r', '', 'ref-y', '{{}}', 'chan-1', 2, 1, 1);
         INSERT INTO onboarding_events VALUES ('y', 1, 'created', 'PENDING', 'PENDING', 'r', '', NULL, '{{}}', 1),
                                              ('y', 2, 'callback', 'PENDING', 'PENDING', 'r', '', 'first', '{{}}', 2);
         INSERT INTO pipeline_steps (onboarding_id, name, position, state, attempts, max_attempts,
             provider_stage_json, data_json, created_ms, updated_ms)
             VALUES ('y', 'first', 0, 'READY', 0, 5, '{{}}', '{{}}', 1, 1);
         INSERT INTO webhook_events VALUES ('w1', 'whapi', 'x', 'd1', {b}, 'PENDING', NULL, NULL, NULL, 1);"
    )
}

/// What the store reads back after migration 0003 converted [`pre_0003_rows`].
async fn check_pre_0003_rows(store: &Arc<dyn Store>) {
    let t1 = TenantId::parse("t-one").unwrap();
    let x = AccountId::scoped(&t1, "x").unwrap();
    let y = OnboardingId::scoped(&t1, "y").unwrap();
    let a = store.account(&t1, &x).await.unwrap().expect("account under its per-tenant key");
    assert_eq!((a.id.as_str(), a.display_name.as_str()), ("t-one.x", "X"));
    assert_eq!(a.webhook_secret.blob, sealed("hook").blob);
    // The webhook URL providers were told (bare id) and the new form both route to it.
    assert_eq!(store.webhook_account(&AccountId::parse("x").unwrap()).await.unwrap().map(|a| a.id), Some(x.clone()));
    assert_eq!(store.webhook_account(&x).await.unwrap().map(|a| a.id), Some(x.clone()));
    let z = store.webhook_account(&AccountId::parse("z").unwrap()).await.unwrap().unwrap();
    assert_eq!((z.id.as_str(), z.tenant_id.as_str()), ("t-two.z", "t-two"));
    let o = store.onboarding(&t1, &y).await.unwrap().expect("onboarding under its per-tenant key");
    assert_eq!((o.account_id.clone(), o.sequence, o.reference.as_str()), (x.clone(), 2, "ref-y"));
    let events = store.events(&y, 0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.onboarding_id.clone(), e.sequence)).collect::<Vec<_>>(),
        vec![(y.clone(), 1), (y.clone(), 2)]
    );
    assert_eq!(store.steps(&y).await.unwrap().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["first"]);
    assert_eq!(by_key(store, &x, "chan-1").await.unwrap().map(|o| o.id), Some(y.clone()));
    assert_eq!(store.webhook_event("w1").await.unwrap().unwrap().account_id, x);
    // The references still hold: the events and steps go with their onboarding, and the
    // migrated ids stay taken within their tenant only.
    store.apply_change(&change(&y, "after")).await.unwrap();
    let again = AccountRecord { id: x.clone(), ..account_rec(&t1, ProviderKind::Whapi) };
    assert!(matches!(store.insert_account(&again, None).await, Err(StoreError::AlreadyExists(_))));
    let t2 = TenantId::parse("t-two").unwrap();
    let theirs = AccountRecord { id: AccountId::scoped(&t2, "x").unwrap(), ..account_rec(&t2, ProviderKind::Whapi) };
    store.insert_account(&theirs, None).await.unwrap();
}

mod sqlite_only {
    use super::*;

    /// Migration 0003 converts rows written with global ids (0001-0002 schema).
    #[tokio::test]
    async fn migration_0003_scopes_existing_ids() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        {
            use std::str::FromStr;
            let options =
                sqlx::sqlite::SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true).foreign_keys(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
            sqlx::migrate!("./migrations/sqlite").run_to(2, &pool).await.unwrap();
            let rows = pre_0003_rows(|b| format!("X'{}'", hex::encode(b)));
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
            pool.close().await;
        }
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::connect(&url).await.unwrap());
        check_pre_0003_rows(&store).await;
    }

    #[tokio::test]
    async fn backend_is_sqlite() {
        let (store, _dir) = crate::store::testing::sqlite_store().await;
        assert_eq!(store.backend(), Backend::Sqlite);
    }

    #[tokio::test]
    async fn in_memory_url_works() {
        let store = open("sqlite::memory:").await.unwrap();
        let t = tenant(&store).await;
        let a = account(&store, &t, ProviderKind::Whapi).await;
        let o = onboarding(&store, &a, "r").await;
        store.apply_change(&change(&o.id, "x")).await.unwrap();
        assert_eq!(store.onboarding(&t, &o.id).await.unwrap().unwrap().sequence, 2);
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let t = {
            let store = open(&url).await.unwrap();
            tenant(&store).await
        };
        migrate(&url).await.unwrap();
        let store = open(&url).await.unwrap();
        assert!(store.tenant(&t).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn unparsable_stored_enum_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let store = open(&url).await.unwrap();
        let t = tenant(&store).await;
        let a = account(&store, &t, ProviderKind::Whapi).await;
        let o = onboarding(&store, &a, "r").await;
        let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("UPDATE onboardings SET state = 'BOGUS'").execute(&raw).await.unwrap();
        assert!(matches!(store.onboarding(&t, &o.id).await, Err(StoreError::Corrupt(_))));
    }

    /// A state-filtered page walks `(tenant_id, state, id)` in page order, so its cost does not
    /// grow with the rows of other states (issue 21, target 8; migration 0010).
    #[tokio::test]
    async fn a_state_filtered_page_reads_by_the_state_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let _store = open(&url).await.unwrap();
        let filter = OnboardingFilter { state: Some(OnboardingState::Provisioning), ..OnboardingFilter::default() };
        let text = format!("EXPLAIN QUERY PLAN {}", crate::store::sql::list_onboardings_sql(&filter));
        let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
        let plan: Vec<String> = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(text))
            .bind("t")
            .bind("")
            .bind("PROVISIONING")
            .bind(51_i64)
            .fetch_all(&raw)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.3)
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("onboardings_tenant_state (tenant_id=? AND state=? AND id>?)"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }

    #[tokio::test]
    async fn unknown_scheme_is_refused() {
        assert!(matches!(open("mysql://x").await, Err(StoreError::Other(_))));
    }
}

mod postgres_only {
    use super::*;
    use crate::store::postgres::PgStore;
    use crate::store::testing;
    use sqlx::Connection;

    /// Migration 0003 converts rows written with global ids (0001-0002 schema).
    #[tokio::test]
    async fn migration_0003_scopes_existing_ids() {
        let Some(base) = testing::pg_base_url() else {
            return;
        };
        let url = crate::store::postgres::create_test_schema(&base).await.unwrap();
        {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
            sqlx::migrate!("./migrations/postgres").run_to(2, &pool).await.unwrap();
            let rows = pre_0003_rows(|b| format!("'\\x{}'::bytea", hex::encode(b)));
            sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
            pool.close().await;
        }
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
        check_pre_0003_rows(&store).await;
        testing::drop_pg(&url).await;
    }

    /// Part of the suite so that `cargo test` fails loudly without a database.
    #[tokio::test]
    async fn server_is_reachable() {
        let Some(base) = testing::pg_base_url() else {
            return;
        };
        // A schema of its own: migrating the shared database's public schema would tie it to
        // whichever branch's migrations ran last.
        let url = crate::store::postgres::create_test_schema(&base).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL test server {} unreachable: {e}. Set {}=skip to opt out.",
                redact_url(&base),
                testing::PG_URL_ENV
            )
        });
        let store = PgStore::connect(&url).await.unwrap();
        store.ping().await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        drop(store);
        testing::drop_pg(&url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notices_cross_replicas() {
        let Some((first, url)) = testing::pg_store().await else {
            return;
        };
        let second = PgStore::connect(&url).await.unwrap();
        let mut rx = first.subscribe();
        let notice = ChangeNotice::moved(new_id(), 3);
        second.notify(&notice).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap(), notice);

        // A change written through one replica wakes the other.
        let t = tenant(&first).await;
        let a = account(&first, &t, ProviderKind::Gupshup).await;
        let o = onboarding(&first, &a, "r").await;
        let mut rx2 = second.subscribe();
        first.apply_change(&change(&o.id, "x")).await.unwrap();
        // From another replica: a bare notice (its readers read the event).
        let wanted = ChangeNotice::moved(o.id.clone(), 2);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            // The creation notice (sequence 1) may still be on its way.
            loop {
                let n = rx2.recv().await.unwrap();
                if n.sequence != 1 {
                    return n;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, wanted);

        // Another schema on the same server hears nothing.
        let Some((other, other_url)) = testing::pg_store().await else {
            return;
        };
        let mut rx3 = other.subscribe();
        first.notify(&notice).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), rx3.recv()).await.is_err(), "schemas are isolated");
        drop(second);
        testing::drop_pg(&url).await;
        testing::drop_pg(&other_url).await;
    }

    /// A state-filtered page walks `(tenant_id, state, id)` on PostgreSQL too, on a table
    /// with statistics where the state is a tenth of the rows (as the growth bench seeds it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_filtered_page_reads_by_the_state_index() {
        let Some((store, url)) = testing::pg_store().await else {
            return;
        };
        let t = tenant(&store).await;
        let a = account(&store, &t, ProviderKind::Gupshup).await;
        let batch: Vec<NewOnboarding> = (0..5_000_usize)
            .map(|i| {
                let mut new = new_onboarding(&a, &format!("r{i}"), &[]);
                new.onboarding.state =
                    if i.is_multiple_of(10) { OnboardingState::Provisioning } else { OnboardingState::Live };
                new
            })
            .collect();
        store.create_onboardings(&batch).await.unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("ANALYZE onboardings").execute(&mut conn).await.unwrap();
        let filter = OnboardingFilter { state: Some(OnboardingState::Provisioning), ..OnboardingFilter::default() };
        // The generic plan: what a prepared statement runs whatever its values.
        sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
        let text = format!("EXPLAIN {}", crate::store::sql::list_onboardings_sql(&filter));
        let plan: Vec<String> = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(text))
            .bind(t.as_str())
            .bind("")
            .bind("PROVISIONING")
            .bind(51_i64)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("Index Scan using onboardings_tenant_state"), "{plan}");
        assert!(!plan.contains("Sort"), "no sort: {plan}");
        conn.close().await.ok();
        testing::drop_pg(&url).await;
    }

    /// A bulk create tells the other replicas with one statement, yet they hear one notice
    /// per onboarding, in batch order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_create_notices_cross_replicas() {
        let Some((first, url)) = testing::pg_store().await else {
            return;
        };
        let second: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
        let t = tenant(&first).await;
        let a = account(&first, &t, ProviderKind::Gupshup).await;
        let mut rx = second.subscribe();
        let batch: Vec<NewOnboarding> = (0..500).map(|i| new_onboarding(&a, &format!("r{i}"), &[])).collect();
        first.create_onboardings(&batch).await.unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), async {
            let mut heard = Vec::new();
            while heard.len() < batch.len() {
                heard.push(rx.recv().await.unwrap());
            }
            heard
        })
        .await
        .expect("every notice of the batch reaches the other replica");
        let wanted: Vec<ChangeNotice> = batch.iter().map(|n| ChangeNotice::moved(n.onboarding.id.clone(), 1)).collect();
        assert_eq!(heard, wanted);
        for n in [&batch[0], &batch[499]] {
            let read = second.onboarding_shared(&t, &n.onboarding.id).await.unwrap();
            assert_eq!(read.map(|o| o.sequence), Some(1));
        }
        drop(second);
        testing::drop_pg(&url).await;
    }

    /// API reads (`onboarding_shared`) go through a cache on PostgreSQL: the replica that wrote
    /// reads its write at once (invalidated before the write returns), another replica reads it
    /// once the write's notice reached it (invalidated before the notice is delivered), and the
    /// reads writes decide on (`onboarding_unscoped`) never lag.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_reads_follow_own_writes_and_other_replicas_notices() {
        let Some((a, url)) = testing::pg_store().await else {
            return;
        };
        let b: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
        let t = tenant(&a).await;
        let acc = account(&a, &t, ProviderKind::Gupshup).await;
        let o = onboarding(&a, &acc, "r").await;
        let read = |s: &Arc<dyn Store>| {
            let (s, t, id) = (s.clone(), t.clone(), o.id.clone());
            async move { s.onboarding_shared(&t, &id).await.unwrap().unwrap().sequence }
        };
        let sequence_of = |e: EventRecord| e.sequence;
        assert_eq!(read(&a).await, o.sequence);
        assert_eq!(read(&b).await, o.sequence);
        // Both cached now; a write through A is read back through A at once.
        let second = sequence_of(a.apply_change(&change(&o.id, "via a")).await.unwrap());
        assert_eq!(read(&a).await, second, "read-your-writes on the replica that wrote");
        assert_eq!(read(&a).await, second);

        // A write through B reaches A's readers with its notice.
        let mut heard = a.subscribe();
        let third = sequence_of(b.apply_change(&change(&o.id, "via b")).await.unwrap());
        assert_eq!(read(&b).await, third);
        tokio::time::timeout(Duration::from_secs(10), async { while heard.recv().await.unwrap().sequence != third {} })
            .await
            .expect("B's notice reaches A");
        assert_eq!(read(&a).await, third, "read after the notice arrived");
        // The engine's read is never cached on PostgreSQL.
        let fourth = sequence_of(b.apply_change(&change(&o.id, "again via b")).await.unwrap());
        assert_eq!(a.onboarding_unscoped(&o.id).await.unwrap().unwrap().sequence, fourth);
        assert_eq!(a.onboarding(&t, &o.id).await.unwrap().unwrap().sequence, fourth);
        drop(b);
        testing::drop_pg(&url).await;
    }

    /// A caller that queued behind another replica holding the key's lock stamps its slot when
    /// it gets the lock, not when it asked: the queueing must not shorten the slot's hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_slot_is_stamped_after_the_key_lock() {
        let Some((store, url)) = testing::pg_store().await else {
            return;
        };
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock(hashtext('held'))").execute(&mut other).await.unwrap();
        let window = Duration::from_secs(600);
        let asked = now_ms();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { store.rate_acquire("held", 1, window, None).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiting.is_finished(), "queued behind the lock");
        let released = now_ms();
        sqlx::query("SELECT pg_advisory_unlock(hashtext('held'))").execute(&mut other).await.unwrap();
        assert!(taken(waiting.await.unwrap()));
        let stamp = stamp_of(&store, "held", window, now_ms()).await;
        assert!(stamp >= released, "stamped {stamp}: asked at {asked}, lock released at {released}");
        drop(other);
        testing::drop_pg(&url).await;
    }

    #[tokio::test]
    async fn unparsable_stored_enum_is_corrupt() {
        let Some((store, url)) = testing::pg_store().await else {
            return;
        };
        let t = tenant(&store).await;
        let a = account(&store, &t, ProviderKind::Whapi).await;
        let raw = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query("UPDATE accounts SET provider = 'twilio'").execute(&raw).await.unwrap();
        assert!(matches!(store.account(&t, &a.id).await, Err(StoreError::Corrupt(_))));
        raw.close().await;
        testing::drop_pg(&url).await;
    }

    #[tokio::test]
    async fn outage_is_unavailable_quickly() {
        let started = std::time::Instant::now();
        // Port 1 on loopback: nothing listens.
        match PgStore::connect("postgres://postgres@127.0.0.1:1/test").await {
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("connected to nothing"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn test_schemas_are_created_and_dropped() {
        let Some(base) = testing::pg_base_url() else {
            return;
        };
        let url = crate::store::postgres::create_test_schema(&base).await.unwrap();
        assert!(url.contains("search_path"));
        let store = PgStore::connect(&url).await.unwrap();
        tenant(&(Arc::new(store) as Arc<dyn Store>)).await;
        crate::store::postgres::drop_schema(&url).await.unwrap();
        // Refuses anything that is not a test schema.
        assert!(crate::store::postgres::drop_schema(&base).await.is_err());
    }
}
