//! Store latency: a [`Store`] decorator that times every call of every area.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{AccountId, ApiKeyId, OnboardingId, OnboardingState, ProviderKind, TenantId, UnixMs};
use crate::store::{
    AccountRecord, Accounts, ApiKeyRecord, Backend, ChangeFeed, ChangeNotice, ChangeOutcome, CreateIntent, Deliveries,
    DeliveryQuery, DeliveryRecord, DeliveryUpdate, DestinationRecord, DispatchStats, EventRecord, IdempotencyRecord,
    NewOnboarding, OnboardingChange, OnboardingFilter, OnboardingRecord, Onboardings, Page, PageRequest, RateGrant,
    RateSlots, RedeliverFrom, ReplayChunk, ReplayCursor, RequestClaim, ResourceBinding, StepRecord, Store, StoreResult,
    TenantRecord, Tenants, WebhookEventRecord, WebhookInbox, WebhookStatus, WorkQueue,
};
use crate::store::{DestinationDisable, NoticeDeliveryRecord, NoticeDeliveryUpdate, NoticeRecord, Notices};

/// Times every call of the wrapped store ([`super::metrics::STORE_DURATION`]).
pub struct MeteredStore {
    inner: Arc<dyn Store>,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Self { inner })
    }
}

async fn timed<T>(
    operation: &'static super::metrics::StoreOp,
    f: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    let started = Instant::now();
    let r = f.await;
    operation.record(r.is_ok(), started.elapsed());
    r
}

/// The [`super::metrics::StoreOp`] of an operation name, one static per call site.
macro_rules! op {
    ($name:literal) => {{
        static OP: super::metrics::StoreOp = super::metrics::StoreOp::new($name);
        &OP
    }};
}

#[async_trait]
impl Store for MeteredStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    async fn ping(&self) -> StoreResult<()> {
        timed(op!("ping"), self.inner.ping()).await
    }

    async fn maintain_tables(&self) -> StoreResult<Vec<String>> {
        timed(op!("maintain_tables"), self.inner.maintain_tables()).await
    }
}

#[async_trait]
impl Tenants for MeteredStore {
    async fn create_tenant(&self, tenant: &TenantRecord) -> StoreResult<()> {
        timed(op!("create_tenant"), self.inner.create_tenant(tenant)).await
    }

    async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantRecord>> {
        timed(op!("tenant_by_name"), self.inner.tenant_by_name(name)).await
    }

    async fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        timed(op!("tenant"), self.inner.tenant(id)).await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        timed(op!("list_tenants"), self.inner.list_tenants()).await
    }

    async fn add_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()> {
        timed(op!("add_api_key"), self.inner.add_api_key(key)).await
    }

    async fn api_key_by_hash(&self, hash: &[u8]) -> StoreResult<Option<ApiKeyRecord>> {
        timed(op!("api_key_by_hash"), self.inner.api_key_by_hash(hash)).await
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> StoreResult<Vec<ApiKeyRecord>> {
        timed(op!("list_api_keys"), self.inner.list_api_keys(tenant)).await
    }

    async fn revoke_api_key(&self, id: &ApiKeyId, at: UnixMs) -> StoreResult<bool> {
        timed(op!("revoke_api_key"), self.inner.revoke_api_key(id, at)).await
    }

    async fn idempotency(&self, tenant: &TenantId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        timed(op!("idempotency"), self.inner.idempotency(tenant, key)).await
    }
}

#[async_trait]
impl Accounts for MeteredStore {
    async fn insert_account(
        &self,
        account: &AccountRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> StoreResult<()> {
        timed(op!("insert_account"), self.inner.insert_account(account, idempotency)).await
    }

    async fn account(&self, tenant: &TenantId, id: &AccountId) -> StoreResult<Option<AccountRecord>> {
        timed(op!("account"), self.inner.account(tenant, id)).await
    }

    async fn account_unscoped(&self, id: &AccountId) -> StoreResult<Option<AccountRecord>> {
        timed(op!("account_unscoped"), self.inner.account_unscoped(id)).await
    }

    async fn webhook_account(&self, segment: &AccountId) -> StoreResult<Option<AccountRecord>> {
        timed(op!("webhook_account"), self.inner.webhook_account(segment)).await
    }

    async fn list_accounts(
        &self,
        tenant: &TenantId,
        provider: Option<ProviderKind>,
        page: &PageRequest,
    ) -> StoreResult<Page<AccountRecord>> {
        timed(op!("list_accounts"), self.inner.list_accounts(tenant, provider, page)).await
    }

    async fn update_account(&self, account: &AccountRecord) -> StoreResult<()> {
        timed(op!("update_account"), self.inner.update_account(account)).await
    }

    async fn delete_account(&self, tenant: &TenantId, id: &AccountId) -> StoreResult<bool> {
        timed(op!("delete_account"), self.inner.delete_account(tenant, id)).await
    }
}

#[async_trait]
impl Onboardings for MeteredStore {
    async fn create_onboarding(&self, new: &NewOnboarding) -> StoreResult<EventRecord> {
        timed(op!("create_onboarding"), self.inner.create_onboarding(new)).await
    }

    async fn create_onboardings(&self, batch: &[NewOnboarding]) -> StoreResult<Vec<EventRecord>> {
        timed(op!("create_onboardings"), self.inner.create_onboardings(batch)).await
    }

    async fn onboarding(&self, tenant: &TenantId, id: &OnboardingId) -> StoreResult<Option<OnboardingRecord>> {
        timed(op!("onboarding"), self.inner.onboarding(tenant, id)).await
    }

    async fn pipeline(
        &self,
        tenant: &TenantId,
        id: &OnboardingId,
    ) -> StoreResult<Option<(OnboardingRecord, Vec<StepRecord>)>> {
        timed(op!("pipeline"), self.inner.pipeline(tenant, id)).await
    }

    async fn onboarding_shared(
        &self,
        tenant: &TenantId,
        id: &OnboardingId,
    ) -> StoreResult<Option<Arc<OnboardingRecord>>> {
        timed(op!("onboarding_shared"), self.inner.onboarding_shared(tenant, id)).await
    }

    async fn onboarding_unscoped(&self, id: &OnboardingId) -> StoreResult<Option<OnboardingRecord>> {
        timed(op!("onboarding_unscoped"), self.inner.onboarding_unscoped(id)).await
    }

    async fn onboardings_by_external_keys(
        &self,
        account: &AccountId,
        external_keys: &[String],
    ) -> StoreResult<Vec<OnboardingRecord>> {
        timed(op!("onboardings_by_external_keys"), self.inner.onboardings_by_external_keys(account, external_keys))
            .await
    }

    async fn onboarding_by_resource(
        &self,
        tenant: &TenantId,
        provider: ProviderKind,
        external_key: &str,
    ) -> StoreResult<Option<OnboardingRecord>> {
        timed(op!("onboarding_by_resource"), self.inner.onboarding_by_resource(tenant, provider, external_key)).await
    }

    async fn list_onboardings(
        &self,
        tenant: &TenantId,
        filter: &OnboardingFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<OnboardingRecord>> {
        timed(op!("list_onboardings"), self.inner.list_onboardings(tenant, filter, page)).await
    }

    async fn count_onboardings(&self) -> StoreResult<Vec<(ProviderKind, OnboardingState, i64)>> {
        timed(op!("count_onboardings"), self.inner.count_onboardings()).await
    }

    async fn apply_change(&self, change: &OnboardingChange) -> StoreResult<EventRecord> {
        timed(op!("apply_change"), self.inner.apply_change(change)).await
    }

    async fn apply_changes(&self, changes: &[OnboardingChange]) -> StoreResult<Vec<ChangeOutcome>> {
        timed(op!("apply_changes"), self.inner.apply_changes(changes)).await
    }

    async fn events(&self, id: &OnboardingId, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        timed(op!("events"), self.inner.events(id, after, limit)).await
    }

    async fn steps(&self, id: &OnboardingId) -> StoreResult<Vec<StepRecord>> {
        timed(op!("steps"), self.inner.steps(id)).await
    }

    async fn latest_sequences(&self, ids: &[OnboardingId]) -> StoreResult<Vec<(OnboardingId, i64)>> {
        timed(op!("latest_sequences"), self.inner.latest_sequences(ids)).await
    }

    async fn events_marker(&self) -> StoreResult<Option<i64>> {
        timed(op!("events_marker"), self.inner.events_marker()).await
    }

    async fn steps_of(&self, ids: &[OnboardingId]) -> StoreResult<Vec<StepRecord>> {
        timed(op!("steps_of"), self.inner.steps_of(ids)).await
    }

    async fn overdue_onboardings(&self, now: UnixMs, limit: u32) -> StoreResult<Vec<OnboardingRecord>> {
        timed(op!("overdue_onboardings"), self.inner.overdue_onboardings(now, limit)).await
    }

    async fn expiring_onboardings(
        &self,
        now: UnixMs,
        threshold_secs: i64,
        limit: u32,
    ) -> StoreResult<Vec<OnboardingRecord>> {
        timed(op!("expiring_onboardings"), self.inner.expiring_onboardings(now, threshold_secs, limit)).await
    }
}

#[async_trait]
impl WorkQueue for MeteredStore {
    async fn claim_steps(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<StepRecord>> {
        timed(op!("claim_steps"), self.inner.claim_steps(worker, now, lease, limit)).await
    }

    async fn renew_lease(&self, id: &OnboardingId, step: &str, worker: &str, until: UnixMs) -> StoreResult<bool> {
        timed(op!("renew_lease"), self.inner.renew_lease(id, step, worker, until)).await
    }

    async fn release_step(&self, step: &StepRecord, worker: &str) -> StoreResult<bool> {
        timed(op!("release_step"), self.inner.release_step(step, worker)).await
    }

    async fn claim_request(&self, claim: &RequestClaim, now: UnixMs) -> StoreResult<Option<RequestClaim>> {
        timed(op!("claim_request"), self.inner.claim_request(claim, now)).await
    }

    async fn release_request(&self, tenant: &TenantId, key: &str, owner: &str) -> StoreResult<bool> {
        timed(op!("release_request"), self.inner.release_request(tenant, key, owner)).await
    }

    async fn bind_resource(&self, binding: &ResourceBinding) -> StoreResult<OnboardingId> {
        timed(op!("bind_resource"), self.inner.bind_resource(binding)).await
    }

    async fn resource_binding(&self, scope: &str, resource: &str) -> StoreResult<Option<OnboardingId>> {
        timed(op!("resource_binding"), self.inner.resource_binding(scope, resource)).await
    }

    async fn begin_create_intent(&self, intent: &CreateIntent) -> StoreResult<bool> {
        timed(op!("begin_create_intent"), self.inner.begin_create_intent(intent)).await
    }

    async fn resolve_create_intent(&self, onboarding: &OnboardingId, step: &str) -> StoreResult<()> {
        timed(op!("resolve_create_intent"), self.inner.resolve_create_intent(onboarding, step)).await
    }

    async fn pending_create_intents(&self, scope: &str, subject: &str) -> StoreResult<Vec<OnboardingId>> {
        timed(op!("pending_create_intents"), self.inner.pending_create_intents(scope, subject)).await
    }
}

#[async_trait]
impl WebhookInbox for MeteredStore {
    async fn insert_webhook_event(&self, event: &WebhookEventRecord) -> StoreResult<bool> {
        timed(op!("insert_webhook_event"), self.inner.insert_webhook_event(event)).await
    }

    async fn insert_webhook_events(&self, events: &[WebhookEventRecord]) -> StoreResult<Vec<bool>> {
        timed(op!("insert_webhook_events"), self.inner.insert_webhook_events(events)).await
    }

    async fn claim_webhook_events(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<WebhookEventRecord>> {
        timed(op!("claim_webhook_events"), self.inner.claim_webhook_events(worker, now, lease, limit)).await
    }

    async fn finish_webhook_event(&self, id: &str, status: WebhookStatus, note: Option<&str>) -> StoreResult<()> {
        timed(op!("finish_webhook_event"), self.inner.finish_webhook_event(id, status, note)).await
    }

    async fn webhook_event(&self, id: &str) -> StoreResult<Option<WebhookEventRecord>> {
        timed(op!("webhook_event"), self.inner.webhook_event(id)).await
    }
}

#[async_trait]
impl RateSlots for MeteredStore {
    async fn rate_acquire(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        now: Option<UnixMs>,
    ) -> StoreResult<RateGrant> {
        timed(op!("rate_acquire"), self.inner.rate_acquire(key, limit, window, now)).await
    }

    async fn rate_restamp(&self, key: &str, slot: i64, now: Option<UnixMs>) -> StoreResult<()> {
        timed(op!("rate_restamp"), self.inner.rate_restamp(key, slot, now)).await
    }
}

#[async_trait]
impl ChangeFeed for MeteredStore {
    async fn notify(&self, notice: &ChangeNotice) -> StoreResult<()> {
        timed(op!("notify"), self.inner.notify(notice)).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ChangeNotice> {
        self.inner.subscribe()
    }
}

#[async_trait]
impl Deliveries for MeteredStore {
    async fn create_destination(&self, destination: &DestinationRecord) -> StoreResult<()> {
        timed(op!("create_destination"), self.inner.create_destination(destination)).await
    }

    async fn destination(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<DestinationRecord>> {
        timed(op!("destination"), self.inner.destination(tenant, id)).await
    }

    async fn destination_unscoped(&self, id: &str) -> StoreResult<Option<DestinationRecord>> {
        timed(op!("destination_unscoped"), self.inner.destination_unscoped(id)).await
    }

    async fn list_destinations(&self, tenant: &TenantId, page: &PageRequest) -> StoreResult<Page<DestinationRecord>> {
        timed(op!("list_destinations"), self.inner.list_destinations(tenant, page)).await
    }

    async fn update_destination(&self, destination: &DestinationRecord, expect_updated_ms: UnixMs) -> StoreResult<()> {
        timed(op!("update_destination"), self.inner.update_destination(destination, expect_updated_ms)).await
    }

    async fn delete_destination(&self, tenant: &TenantId, id: &str) -> StoreResult<bool> {
        timed(op!("delete_destination"), self.inner.delete_destination(tenant, id)).await
    }

    async fn note_destination_health(&self, id: &str, ok: bool, at: UnixMs) -> StoreResult<Option<UnixMs>> {
        timed(op!("note_destination_health"), self.inner.note_destination_health(id, ok, at)).await
    }

    async fn dispatch_outbox(&self, now: UnixMs, limit: u32) -> StoreResult<DispatchStats> {
        timed(op!("dispatch_outbox"), self.inner.dispatch_outbox(now, limit)).await
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
        run: u32,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        timed(op!("claim_deliveries"), self.inner.claim_deliveries(worker, now, lease, limit, run)).await
    }

    async fn finish_delivery(&self, update: &DeliveryUpdate, worker: &str) -> StoreResult<bool> {
        timed(op!("finish_delivery"), self.inner.finish_delivery(update, worker)).await
    }

    async fn finish_deliveries(&self, updates: &[DeliveryUpdate], worker: &str) -> StoreResult<Vec<bool>> {
        timed(op!("finish_deliveries"), self.inner.finish_deliveries(updates, worker)).await
    }

    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        destination: &str,
        query: &DeliveryQuery,
    ) -> StoreResult<Page<DeliveryRecord>> {
        timed(op!("list_deliveries"), self.inner.list_deliveries(tenant, destination, query)).await
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
        timed(op!("redeliver"), self.inner.redeliver(tenant, destination, from, after, limit, now)).await
    }

    async fn delivery_backlog(&self) -> StoreResult<(i64, Vec<(String, i64)>)> {
        timed(op!("delivery_backlog"), self.inner.delivery_backlog()).await
    }
}

#[async_trait]
impl Notices for MeteredStore {
    async fn disable_destination(&self, disable: &DestinationDisable) -> StoreResult<Option<NoticeRecord>> {
        timed(op!("disable_destination"), self.inner.disable_destination(disable)).await
    }

    async fn notice_unscoped(&self, id: &str) -> StoreResult<Option<NoticeRecord>> {
        timed(op!("notice_unscoped"), self.inner.notice_unscoped(id)).await
    }

    async fn claim_notice_deliveries(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<NoticeDeliveryRecord>> {
        timed(op!("claim_notice_deliveries"), self.inner.claim_notice_deliveries(worker, now, lease, limit)).await
    }

    async fn finish_notice_delivery(&self, update: &NoticeDeliveryUpdate, worker: &str) -> StoreResult<bool> {
        timed(op!("finish_notice_delivery"), self.inner.finish_notice_delivery(update, worker)).await
    }

    async fn notice_deliveries(&self, tenant: &TenantId, notice_id: &str) -> StoreResult<Vec<NoticeDeliveryRecord>> {
        timed(op!("notice_deliveries"), self.inner.notice_deliveries(tenant, notice_id)).await
    }
}
