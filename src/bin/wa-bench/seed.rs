//! Seeding: many live Gupshup onboardings written straight into the server's store (same
//! database, same schema, through the library's `Store`), each with its own app id so a
//! Gupshup callback routes to it.

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use wa_onboard::domain::{
    AccountId, AppId, E164, GupshupDetails, OnboardingDetails, OnboardingId, OnboardingState, ProviderKind, WabaId,
    now_ms,
};
use wa_onboard::store::{NewEvent, NewOnboarding, OnboardingRecord, Sealed};

/// The bench's Gupshup account (made by `suites::webhook_url`).
pub(crate) const ACCOUNT: &str = "bench-gupshup";

/// One seeded onboarding.
#[derive(Debug, Clone)]
pub(crate) struct Seeded {
    /// Its id.
    pub id: OnboardingId,
    /// Its Gupshup app id (the callback routing key).
    pub app_id: String,
}

/// Inserts `n` live onboardings for the `dev` tenant on [`ACCOUNT`].
pub(crate) async fn seed(url: &str, n: usize) -> Result<Vec<Seeded>> {
    let store = wa_onboard::store::open(url).await.context("open the store to seed")?;
    let tenant = store.tenant_by_name("dev").await?.ok_or_else(|| anyhow!("no dev tenant (start the server first)"))?;
    let account = AccountId::scoped(&tenant.id, ACCOUNT).map_err(|e| anyhow!("{}", e.0))?;
    let rows: Vec<Seeded> = (0..n)
        .map(|_| Seeded { id: OnboardingId::fresh(&tenant.id), app_id: uuid::Uuid::new_v4().to_string() })
        .collect();
    let results: Vec<Result<()>> = futures::stream::iter(rows.iter().enumerate())
        .map(|(i, s)| {
            let store = store.clone();
            let tenant = tenant.id.clone();
            let account = account.clone();
            async move {
                let now = now_ms();
                let details = OnboardingDetails::from(GupshupDetails {
                    app_name: Some(format!("BenchApp{i}")),
                    waba_id: WabaId::parse(format!("1049961223{i:05}")).ok(),
                    phone: E164::parse(&format!("+9198{i:08}")).ok(),
                    app_id: AppId::parse(s.app_id.clone()).ok(),
                    storage_region: Some("IN".into()),
                    ..GupshupDetails::default()
                });
                let o = OnboardingRecord {
                    id: s.id.clone(),
                    tenant_id: tenant,
                    account_id: account,
                    provider: ProviderKind::Gupshup,
                    state: OnboardingState::Live,
                    desired_state: None,
                    state_reason: "live (seeded by wa-bench)".into(),
                    provider_status: "docker-status-event:live".into(),
                    reference: format!("bench-{i}"),
                    details_json: details.to_json().map_err(|e| anyhow!("seed onboarding {i}: {e}"))?,
                    engine_json: "{}".into(),
                    external_key: Some(s.app_id.clone()),
                    secret: None::<Sealed>,
                    sequence: 0,
                    state_deadline_ms: None,
                    expire_ms: None,
                    created_ms: now,
                    updated_ms: now,
                };
                store
                    .create_onboarding(&NewOnboarding {
                        onboarding: o,
                        steps: vec![],
                        event: NewEvent::new(wa_onboard::domain::EventKind::Created, "seeded by wa-bench"),
                        idempotency: None,
                    })
                    .await
                    .map(drop)
                    .map_err(|e| anyhow!("seed onboarding {i}: {e}"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    if url.starts_with("postgres") {
        // A production table has statistics (autovacuum analyses it as it grows); this one was
        // filled a moment ago, and without them the planner takes 10,000 rows for a handful
        // and sorts the tenant's rows for every page instead of walking `(tenant_id, id)`.
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await.context("connect to analyse")?;
        sqlx::query("ANALYZE onboardings").execute(&mut conn).await.context("ANALYZE onboardings")?;
        conn.close().await.ok();
    }
    Ok(rows)
}
