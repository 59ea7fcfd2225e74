//! Seeding: many Gupshup onboardings written straight into the server's store (same database,
//! same schema) through the library's own bulk path, `Store::create_onboardings`, in big
//! batches: the statements the service itself runs, not hand-written SQL. Each has its own app
//! id so a Gupshup callback routes to it.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use wa_onboard::domain::{
    AccountId, AppId, E164, GupshupDetails, OnboardingDetails, OnboardingId, OnboardingState, ProviderKind, StepState,
    TenantId, WabaId, now_ms,
};
use wa_onboard::store::{NewEvent, NewOnboarding, OnboardingRecord, Sealed, StepRecord, Store};

/// The bench's Gupshup account (made by `suites::webhook_url`).
pub(crate) const ACCOUNT: &str = "bench-gupshup";

/// Onboardings per `create_onboardings` call (one transaction).
const BATCH: usize = 1000;

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
    let rows = seed_into(&store, 0, n, 0).await?;
    analyse(url).await?;
    Ok(rows)
}

/// The dev tenant and the bench account's id (the server must have started once).
pub(crate) async fn bench_account(store: &Arc<dyn Store>) -> Result<(TenantId, AccountId)> {
    let tenant = store.tenant_by_name("dev").await?.ok_or_else(|| anyhow!("no dev tenant (start the server first)"))?;
    let account = AccountId::scoped(&tenant.id, ACCOUNT).map_err(|e| anyhow!("{}", e.0))?;
    Ok((tenant.id, account))
}

/// Inserts onboardings number `first .. first + n` (the number makes phone, WABA id and
/// reference unique). Every `waiting_every`-th (0: none) is mid-pipeline instead of live:
/// `PROVISIONING`, its first two steps succeeded, the third `WAITING` on a poll a day away
/// and the fourth not started, as a real Gupshup onboarding waits for the provider.
pub(crate) async fn seed_into(
    store: &Arc<dyn Store>,
    first: usize,
    n: usize,
    waiting_every: usize,
) -> Result<Vec<Seeded>> {
    let (tenant, account) = bench_account(store).await?;
    let rows: Vec<(usize, Seeded)> = (first..first + n)
        .map(|i| (i, Seeded { id: OnboardingId::fresh(&tenant), app_id: uuid::Uuid::new_v4().to_string() }))
        .collect();
    // Two batches in flight: PostgreSQL overlaps one's round trips with the other's work;
    // SQLite's single writer takes them in turn.
    let results: Vec<Result<()>> = futures::stream::iter(rows.chunks(BATCH))
        .map(|chunk| {
            let store = store.clone();
            let batch: Result<Vec<NewOnboarding>> = chunk
                .iter()
                .map(|(i, s)| new_onboarding(&tenant, &account, *i, s, waiting_every > 0 && i % waiting_every == 0))
                .collect();
            async move { store.create_onboardings(&batch?).await.map(drop).map_err(|e| anyhow!("seed a batch: {e}")) }
        })
        .buffer_unordered(2)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(rows.into_iter().map(|(_, s)| s).collect())
}

/// Gives freshly filled tables the state production ones settle in, so a size's figures are
/// not taken while the database is still digesting the seeding: statistics and a vacuum on
/// PostgreSQL (else autovacuum walks the new million rows, and the checkpoint flushes their
/// pages, in the middle of the measurement), the WAL folded into the database on SQLite.
pub(crate) async fn analyse(url: &str) -> Result<()> {
    use sqlx::Connection as _;
    if url.starts_with("postgres") {
        // Without statistics the planner takes 10,000 rows for a handful and sorts the
        // tenant's rows for every page instead of walking `(tenant_id, id)`.
        let mut conn = sqlx::PgConnection::connect(url).await.context("connect to analyse")?;
        for table in ["onboardings", "pipeline_steps", "onboarding_events", "event_outbox"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}")))
                .execute(&mut conn)
                .await
                .with_context(|| format!("VACUUM (ANALYZE) {table}"))?;
        }
        sqlx::query("CHECKPOINT").execute(&mut conn).await.context("CHECKPOINT")?;
        conn.close().await.ok();
    } else if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.context("connect to checkpoint")?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await.context("wal_checkpoint")?;
        conn.close().await.ok();
    }
    Ok(())
}

fn new_onboarding(
    tenant: &TenantId,
    account: &AccountId,
    i: usize,
    s: &Seeded,
    waiting: bool,
) -> Result<NewOnboarding> {
    let now = now_ms();
    let details = OnboardingDetails::from(GupshupDetails {
        app_name: Some(format!("BenchApp{i}")),
        waba_id: WabaId::parse(format!("1049961{i:08}")).ok(),
        phone: E164::parse(&format!("+9198{i:08}")).ok(),
        app_id: AppId::parse(s.app_id.clone()).ok(),
        storage_region: Some("IN".into()),
        ..GupshupDetails::default()
    });
    let (state, reason, status) = if waiting {
        (OnboardingState::Provisioning, "provisioning (seeded by wa-bench)", "docker-status-event:provisioning")
    } else {
        (OnboardingState::Live, "live (seeded by wa-bench)", "docker-status-event:live")
    };
    let o = OnboardingRecord {
        id: s.id.clone(),
        tenant_id: tenant.clone(),
        account_id: account.clone(),
        provider: ProviderKind::Gupshup,
        state,
        desired_state: None,
        state_reason: reason.into(),
        provider_status: status.into(),
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
    let steps = if waiting { waiting_steps(&s.id, now) } else { Vec::new() };
    Ok(NewOnboarding {
        onboarding: o,
        steps,
        event: NewEvent::new(wa_onboard::domain::EventKind::Created, "seeded by wa-bench"),
        idempotency: None,
    })
}

/// The Gupshup pipeline of an onboarding waiting for the provider: nothing due for a day.
fn waiting_steps(id: &OnboardingId, now: i64) -> Vec<StepRecord> {
    let step = |position: i32, name: &str, state: StepState, next_run_ms: Option<i64>| StepRecord {
        onboarding_id: id.clone(),
        name: name.into(),
        position,
        state,
        attempts: i32::from(state != StepState::Pending),
        max_attempts: 8,
        next_run_ms,
        lease_owner: None,
        lease_until_ms: None,
        last_error: None,
        last_error_code: None,
        provider_stage_json: "{}".into(),
        data_json: "{}".into(),
        deadline_ms: None,
        started_ms: (state != StepState::Pending).then_some(now),
        finished_ms: (state == StepState::Succeeded).then_some(now),
        created_ms: now,
        updated_ms: now,
    };
    vec![
        step(0, "link_app", StepState::Succeeded, None),
        step(1, "fetch_app_token", StepState::Succeeded, None),
        step(2, "provisioning", StepState::Waiting, Some(now + 86_400_000)),
        step(3, "subscribe", StepState::Pending, None),
    ]
}
