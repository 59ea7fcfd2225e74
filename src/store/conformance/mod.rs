//! The store conformance suite: every check runs on both backends and, over the metered
//! wrapper production puts around the store (`telemetry::store::MeteredStore`), on both again
//! (the [`stores`] a check runs on), so no backend or wrapper can drift from the contract. One
//! module per store area; a new implementation adds its store to [`stores`] and a line to
//! [`conformance_suite!`]'s expansion.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::domain::{EventKind, Patch, StepState, new_id, now_ms};

mod accounts;
mod backends;
mod deliveries;
mod feed;
mod inbox;
mod onboardings;
mod rates;
mod tenants;
mod work;

// ----- fixtures -----

async fn tenant(store: &Arc<dyn Store>) -> TenantId {
    let id: TenantId = new_id();
    let rec = TenantRecord { id: id.clone(), name: format!("tenant-{id}"), created_ms: now_ms() };
    store.create_tenant(&rec).await.unwrap();
    id
}

fn sealed(tag: &str) -> Sealed {
    // Every byte value, so an encoding that mangles binary data shows.
    let mut blob: Vec<u8> = (0..=255u8).collect();
    blob.extend_from_slice(tag.as_bytes());
    Sealed { key_id: format!("k-{tag}"), blob }
}

fn account_rec(tenant: &TenantId, provider: ProviderKind) -> AccountRecord {
    let id: AccountId = new_id();
    AccountRecord {
        id: id.clone(),
        tenant_id: tenant.clone(),
        provider,
        display_name: format!("acct {id}"),
        options_json: r#"{"region":"in"}"#.into(),
        credentials: sealed("cred"),
        webhook_secret: sealed("hook"),
        sandbox: true,
        status_json: "{}".into(),
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

async fn account(store: &Arc<dyn Store>, tenant: &TenantId, provider: ProviderKind) -> AccountRecord {
    let rec = account_rec(tenant, provider);
    store.insert_account(&rec, None).await.unwrap();
    rec
}

/// A step row for tests (also used by the stream cache's tests).
pub(crate) fn step(
    id: &OnboardingId,
    name: &str,
    position: i32,
    state: StepState,
    next_run_ms: Option<UnixMs>,
) -> StepRecord {
    StepRecord {
        onboarding_id: id.clone(),
        name: name.into(),
        position,
        state,
        attempts: 0,
        max_attempts: 5,
        next_run_ms,
        lease_owner: None,
        lease_until_ms: None,
        last_error: None,
        last_error_code: None,
        provider_stage_json: "{}".into(),
        data_json: "{}".into(),
        deadline_ms: None,
        started_ms: None,
        finished_ms: None,
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

fn new_onboarding(
    account: &AccountRecord,
    reference: &str,
    steps: &[(&str, StepState, Option<UnixMs>)],
) -> NewOnboarding {
    let id: OnboardingId = new_id();
    let steps =
        steps.iter().enumerate().map(|(i, (name, state, next))| step(&id, name, i as i32, *state, *next)).collect();
    NewOnboarding {
        onboarding: OnboardingRecord {
            id,
            tenant_id: account.tenant_id.clone(),
            account_id: account.id.clone(),
            provider: account.provider,
            state: OnboardingState::Pending,
            desired_state: None,
            state_reason: "accepted".into(),
            provider_status: "".into(),
            reference: reference.into(),
            details_json: r#"{"k":1}"#.into(),
            engine_json: r#"{"e":1}"#.into(),
            external_key: None,
            secret: None,
            sequence: 1,
            state_deadline_ms: None,
            expire_ms: None,
            created_ms: 1_000,
            updated_ms: 1_000,
        },
        steps,
        event: NewEvent::new(EventKind::Created, "accepted"),
        idempotency: None,
    }
}

async fn onboarding(store: &Arc<dyn Store>, account: &AccountRecord, reference: &str) -> OnboardingRecord {
    let new = new_onboarding(account, reference, &[("first", StepState::Pending, None)]);
    store.create_onboarding(&new).await.unwrap();
    new.onboarding
}

/// The onboarding of `account` with one provider-side key.
async fn by_key(store: &Arc<dyn Store>, account: &AccountId, key: &str) -> StoreResult<Option<OnboardingRecord>> {
    let mut found = store.onboardings_by_external_keys(account, &[key.to_string()]).await?;
    assert!(found.len() <= 1, "one per key");
    Ok(found.pop())
}

/// A bare change of `id`; `label` is its event's reason, which the checks read back (the store
/// does not interpret the event kind).
fn change(id: &OnboardingId, label: &str) -> OnboardingChange {
    OnboardingChange::new(id, NewEvent::new(EventKind::Callback, label), 2_000)
}

fn webhook(account: &AccountRecord, dedupe: &str, received_ms: UnixMs) -> WebhookEventRecord {
    WebhookEventRecord {
        id: new_id::<OnboardingId>().to_string(),
        provider: account.provider,
        account_id: account.id.clone(),
        dedupe_key: dedupe.into(),
        body: b"{\"event\":1}\x00\xff".to_vec(),
        status: WebhookStatus::Pending,
        note: None,
        lease_owner: None,
        lease_until_ms: None,
        received_ms,
    }
}

fn page(limit: u32, after: Option<String>) -> PageRequest {
    PageRequest { limit, after }
}

/// The stores each check runs on: a fresh one per check, dropped (its schema too) after it.
mod stores {
    use std::future::Future;

    use super::*;
    use crate::store::testing;
    use crate::telemetry::store::MeteredStore;

    /// SQLite on a temporary file.
    pub(super) async fn sqlite<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Store>) -> F) {
        let (store, _dir) = testing::sqlite_store().await;
        check(store).await;
    }

    /// PostgreSQL in a fresh schema.
    pub(super) async fn postgres<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Store>) -> F) {
        let Some((store, url)) = testing::pg_store().await else { return };
        check(store).await;
        testing::drop_pg(&url).await;
    }

    /// The metered wrapper over SQLite.
    pub(super) async fn metered_sqlite<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Store>) -> F) {
        sqlite(|store| check(MeteredStore::wrap(store))).await;
    }

    /// The metered wrapper over PostgreSQL.
    pub(super) async fn metered_postgres<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Store>) -> F) {
        postgres(|store| check(MeteredStore::wrap(store))).await;
    }
}

/// One test module per store of [`stores`], each with one test per check.
macro_rules! conformance_suite {
    ($($area:ident::$check:ident),* $(,)?) => {
        conformance_suite!(@on sqlite_suite, sqlite, $($area::$check),*);
        conformance_suite!(@on postgres_suite, postgres, $($area::$check),*);
        conformance_suite!(@on metered_sqlite_suite, metered_sqlite, $($area::$check),*);
        conformance_suite!(@on metered_postgres_suite, metered_postgres, $($area::$check),*);
    };
    (@on $suite:ident, $store:ident, $($area:ident::$check:ident),*) => {
        mod $suite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::stores::$store(super::$area::$check).await;
                }
            )*
        }
    };
}

conformance_suite!(
    backends::check_ping_and_backend,
    tenants::check_tenants,
    tenants::check_api_keys,
    tenants::check_idempotency,
    accounts::check_accounts,
    accounts::check_ids_per_tenant,
    accounts::check_account_listing,
    onboardings::check_create_onboarding,
    onboardings::check_create_onboardings_is_atomic,
    onboardings::check_create_onboardings_in_bulk,
    onboardings::check_onboarding_reads,
    onboardings::check_latest_sequences,
    onboardings::check_bulk_reads,
    onboardings::check_onboarding_reads_follow_writes,
    onboardings::check_pipeline,
    onboardings::check_list_onboardings,
    onboardings::check_count_onboardings,
    onboardings::check_apply_change,
    onboardings::check_apply_change_stale,
    onboardings::check_apply_change_wakes_steps_by_name,
    onboardings::check_apply_change_concurrent,
    onboardings::check_apply_change_marks_webhook,
    onboardings::check_apply_change_refuses_a_processed_webhook,
    onboardings::check_apply_changes_batch,
    onboardings::check_overdue,
    onboardings::check_expiring,
    work::check_claim_steps,
    work::check_claim_steps_disjoint,
    work::check_request_claims,
    work::check_resource_bindings,
    work::check_create_intents,
    inbox::check_webhook_events,
    inbox::check_insert_webhook_events,
    inbox::check_maintain_tables,
    rates::check_rate_acquire,
    rates::check_rate_acquire_stamps_with_the_store_clock,
    rates::check_rate_restamp,
    feed::check_notify_subscribe,
    deliveries::check_destinations,
    deliveries::check_fan_out,
    deliveries::check_fan_out_in_chunks,
    deliveries::check_fan_out_after_a_replay_raced_the_outbox,
    deliveries::check_claim_order,
    deliveries::check_claims_with_blocked_backlog,
    deliveries::check_claim_runs,
    deliveries::check_lease_expiry,
    deliveries::check_dead_letter_and_redeliver,
    deliveries::check_redeliver_in_chunks,
    deliveries::check_disable_writes_a_notice,
);
