//! Migration 0005 on rows written by the 0004 schema, on both backends: the engine's
//! bookkeeping under `details_json._engine` moves to `engine_json`, the public details stay.

use std::sync::Arc;

use crate::core::engine::EngineState;
use crate::domain::{OnboardingDetails, OnboardingId, OnboardingState, ProviderKind};
use crate::store::{Store, testing};

/// Rows as the 0004 schema's code wrote them: a Gupshup onboarding with a sealed request, a
/// handle, a stall mark and a callback time under `_engine`; an Exotel one without `_engine`;
/// a Whapi one whose `_engine` is not an object (never read as bookkeeping). `blob` renders
/// bytes as the backend's literal.
fn rows_0004(blob: fn(&[u8]) -> String) -> String {
    let b = blob(b"sealed");
    format!(
        r#"INSERT INTO tenants (id, name, created_ms) VALUES ('t', 'tenant', 1);
        INSERT INTO accounts (id, tenant_id, provider, display_name, options_json, credentials_key_id, credentials,
            webhook_key_id, webhook_secret, sandbox, status_json, created_ms, updated_ms)
            VALUES ('t.a', 't', 'gupshup', 'A', '{{}}', 'k', {b}, 'k', {b}, TRUE, '{{}}', 1, 1);
        INSERT INTO onboardings (id, tenant_id, account_id, provider, state, state_reason, provider_status,
            reference, details_json, external_key, sequence, created_ms, updated_ms) VALUES
            ('t.g', 't', 't.a', 'gupshup', 'PENDING', 'r', '', 'ref-g',
             '{{"app_name":"shop","phone":"+15551112222","app_id":"app-1","provider_fields":{{"status":"LIVE"}},"_engine":{{"request":{{"k":"key-1","b":"AAEC"}},"handle":{{"external_key":"app-1","data":{{"name":"shop"}}}},"stalled_from":"PROVISIONING","last_callback_ms":42}}}}',
             'app-1', 1, 1, 1),
            ('t.e', 't', 't.a', 'exotel', 'AWAITING_CUSTOMER', 'r', '', 'ref-e',
             '{{"token":"tok","customers_remaining":5}}', NULL, 1, 1, 1),
            ('t.w', 't', 't.a', 'whapi', 'PENDING', 'r', '', 'ref-w',
             '{{"go_live":true,"_engine":"junk"}}', NULL, 1, 1, 1);"#
    )
}

/// What the store reads back once 0005 converted [`rows_0004`].
async fn check_migrated(store: &Arc<dyn Store>) {
    let get = |id: &str| {
        let id = OnboardingId::parse(id).unwrap();
        let store = store.clone();
        async move { store.onboarding_unscoped(&id).await.unwrap().expect("row kept") }
    };
    let g = get("t.g").await;
    assert!(!g.details_json.contains("_engine"), "moved out of the details: {}", g.details_json);
    let engine = EngineState::parse(&g.engine_json).unwrap();
    assert_eq!(engine.request.as_ref().map(|r| (r.key_id.as_str(), r.blob.as_str())), Some(("key-1", "AAEC")));
    let handle = engine.handle.as_ref().expect("handle moved");
    assert_eq!((handle.external_key.as_str(), handle.data["name"].as_str()), ("app-1", Some("shop")));
    assert_eq!(engine.stalled_from, Some(OnboardingState::Provisioning));
    assert_eq!(engine.last_callback_ms, Some(42));
    let Ok(OnboardingDetails::Gupshup(d)) = OnboardingDetails::parse(ProviderKind::Gupshup, &g.details_json) else {
        panic!("gupshup details read: {}", g.details_json)
    };
    assert_eq!((d.app_name.as_deref(), d.app_id.as_ref().map(|a| a.as_str())), (Some("shop"), Some("app-1")));
    assert_eq!(d.phone.as_ref().map(|p| p.as_str()), Some("+15551112222"));
    assert_eq!(d.provider_fields.and_then(|f| f.get("status").cloned()).as_deref(), Some("LIVE"));

    let e = get("t.e").await;
    assert_eq!(EngineState::parse(&e.engine_json).unwrap(), EngineState::default(), "nothing to move");
    let Ok(OnboardingDetails::Exotel(x)) = OnboardingDetails::parse(ProviderKind::Exotel, &e.details_json) else {
        panic!("exotel details read: {}", e.details_json)
    };
    assert_eq!((x.token.as_deref(), x.customers_remaining), (Some("tok"), Some(5)));

    let w = get("t.w").await;
    assert!(!w.details_json.contains("_engine"), "a non-object `_engine` is dropped: {}", w.details_json);
    assert_eq!(EngineState::parse(&w.engine_json).unwrap(), EngineState::default());
    let Ok(OnboardingDetails::Whapi(wd)) = OnboardingDetails::parse(ProviderKind::Whapi, &w.details_json) else {
        panic!("whapi details read: {}", w.details_json)
    };
    assert_eq!(wd.go_live, Some(true));
}

#[tokio::test]
async fn sqlite_0005_moves_the_engine_state_out_of_the_details() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    {
        use std::str::FromStr;
        let options =
            sqlx::sqlite::SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true).foreign_keys(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
        sqlx::migrate!("./migrations/sqlite").run_to(4, &pool).await.unwrap();
        let rows = rows_0004(|b| format!("X'{}'", hex::encode(b)));
        sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::connect(&url).await.unwrap());
    check_migrated(&store).await;
}

#[tokio::test]
async fn postgres_0005_moves_the_engine_state_out_of_the_details() {
    let Some(base) = testing::pg_base_url() else {
        return;
    };
    let url = crate::store::postgres::create_test_schema(&base).await.unwrap();
    {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        sqlx::migrate!("./migrations/postgres").run_to(4, &pool).await.unwrap();
        let rows = rows_0004(|b| format!("'\\x{}'::bytea", hex::encode(b)));
        sqlx::raw_sql(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let store: Arc<dyn Store> = Arc::new(crate::store::postgres::PgStore::connect(&url).await.unwrap());
    check_migrated(&store).await;
    testing::drop_pg(&url).await;
}
