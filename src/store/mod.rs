//! Persistence port: one trait per area ([`Tenants`], [`Accounts`], [`Onboardings`],
//! [`WorkQueue`], [`WebhookInbox`], [`RateSlots`], [`ChangeFeed`], [`Deliveries`]) and [`Store`], their sum, which
//! the service passes around as one `Arc<dyn Store>`. Two sqlx backends (SQLite, the embedded
//! default, and PostgreSQL for more than one replica), chosen by the URL scheme, share one
//! implementation of every area (`sql/`).
//!
//! Contract every backend keeps (checked by the shared conformance suite):
//! - Every write that changes an onboarding appends its event with the next per-onboarding
//!   `sequence` in the same transaction ([`Onboardings::apply_change`]), and its outbox row
//!   (delivery fan-out, [`Deliveries`]); a stale `expect_sequence` changes nothing and returns
//!   [`StoreError::Conflict`].
//! - Tenant-scoped reads never return another tenant's rows (they return `None`).
//! - Unique keys (idempotency key, webhook dedupe key, account id) are enforced by the
//!   database, so they hold across replicas. Account and onboarding ids are per tenant: the
//!   key is `{tenant}.{id}` (see [`crate::domain::AccountId::scoped`]).

pub mod records;
pub mod records_delivery;

pub mod cache;
#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
mod migration_tests;
pub mod postgres;
pub mod rate_log;
mod sql;
pub mod sqlite;
#[cfg(test)]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{AccountId, ApiKeyId, OnboardingId, OnboardingState, ProviderKind, TenantId, UnixMs};
use crate::error::{AppError, ErrorCode};
pub use records::*;
pub use records_delivery::*;

/// What [`RateSlots::rate_acquire`] answers: the rate limiter's own grant type (its port,
/// [`RateLog`], is what the store implements for it).
pub use crate::providers::http::ratelimit::RateGrant;
use crate::providers::http::ratelimit::RateLog;

/// What can go wrong in the store, in terms the core can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (or belongs to another tenant).
    #[error("not found: {0}")]
    NotFound(String),
    /// A unique key already holds a row.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Optimistic concurrency check failed; re-read and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data that does not parse (a bug or a manual edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else from the driver.
    #[error("store error: {0}")]
    Other(String),
}

/// The store's failures in the service's closed error vocabulary. It lives here, not in
/// `crate::error`, so the error table depends on nothing above it and the adapters, which
/// use the table, do not reach the store through it.
impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::not_found(what),
            StoreError::AlreadyExists(what) => {
                tracing::debug!(error = %what, "unique key taken");
                AppError::new(ErrorCode::AlreadyExists, "already exists")
            }
            StoreError::Conflict(what) => {
                AppError::new(ErrorCode::Aborted, format!("concurrent change, retry: {what}"))
            }
            // The database's own text stays in the log: it may quote caller input or name
            // tables and constraints, none of which is the caller's business.
            StoreError::Unavailable(what) => {
                tracing::warn!(error = %what, "store unavailable");
                AppError::new(ErrorCode::Unavailable, "store unavailable, retry")
                    .with_retry_after(Duration::from_secs(1))
            }
            StoreError::Corrupt(what) => {
                tracing::error!(error = %what, "corrupt stored data");
                AppError::internal("corrupt stored data")
            }
            StoreError::Other(what) => {
                tracing::error!(error = %what, "unexpected store error");
                AppError::internal("internal store error")
            }
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound("row".into()),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::AlreadyExists(db.message().to_string())
            }
            // PostgreSQL class 08 (connection exception) and 57P (operator intervention:
            // shutdown, crash recovery): the server is going away, not the query at fault.
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Corrupt(e.to_string()),
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// What every store method returns: a [`StoreError`] is a closed set the core maps to codes.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (WAL): one process.
    Sqlite,
    /// PostgreSQL: many replicas.
    Postgres,
}

/// Pagination is a domain type, shared with core and the edges.
pub use crate::domain::page::{Page, PageRequest};

/// A wake-up sent when an onboarding's event log grows. Subscribers re-read the log from
/// the store, so a missed notification costs latency, never data.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeNotice {
    /// Which onboarding.
    pub onboarding_id: OnboardingId,
    /// Its latest sequence.
    pub sequence: i64,
    /// The event just committed at `sequence` (with the step it names, as written by the same
    /// transaction), when this replica wrote it: local subscribers use it instead of reading
    /// it back. `None` in notices from other replicas, or when the change did not write the
    /// step its event names.
    pub committed: Option<Committed>,
}

/// An event as committed, with the step it names as that transaction left it.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The event.
    pub event: Arc<EventRecord>,
    /// The step the event names, if it names one.
    pub step: Option<Arc<StepRecord>>,
}

impl ChangeNotice {
    /// A bare notice: the onboarding moved to `sequence`; readers read the events.
    pub fn moved(onboarding_id: OnboardingId, sequence: i64) -> Self {
        Self { onboarding_id, sequence, committed: None }
    }

    /// The notice for a committed `event`, carrying it when every part of it is at hand:
    /// `written` are the steps the same transaction wrote.
    pub fn committed(event: &EventRecord, written: &[StepRecord]) -> Self {
        let step = match &event.step {
            None => Some(None),
            Some(name) => written.iter().find(|s| &s.name == name).map(|s| Some(Arc::new(s.clone()))),
        };
        Self {
            onboarding_id: event.onboarding_id.clone(),
            sequence: event.sequence,
            committed: step.map(|step| Committed { event: Arc::new(event.clone()), step }),
        }
    }
}

/// The persistence port: every area below, on one backend. The service passes one
/// `Arc<dyn Store>` around; a caller names the area trait it uses only where it calls a
/// concrete store type (methods of a `dyn Store` need no import).
#[async_trait]
pub trait Store:
    Tenants + Accounts + Onboardings + WorkQueue + WebhookInbox + RateSlots + ChangeFeed + Deliveries + Notices + 'static
{
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Cheap round trip, for health.
    async fn ping(&self) -> StoreResult<()>;

    /// PostgreSQL: vacuums and analyzes the service's tables past autovacuum's default
    /// thresholds (dead rows over 50 + 20 % of the live ones; rows changed since the last
    /// analysis over 50 + 10 %), skipping any another session holds, and returns the
    /// commands run. The queue tables (outbox, deliveries, inbox, steps) go from empty to
    /// tens of thousands of rows and back in a minute: until analyzed they are planned from
    /// default selectivities (and prepared plans are not replanned), and until vacuumed every
    /// scan steps over their dead rows. Autovacuum gets there after its naptime (a minute), or
    /// never where it is off. SQLite: nothing (its planner needs no statistics for these
    /// queries, and freed pages are reused).
    async fn maintain_tables(&self) -> StoreResult<Vec<String>>;
}

/// Tenants, their API keys (hashes only) and the remembered outcomes of their requests
/// (`request_id` idempotency records, written beside the account or onboarding they created).
#[async_trait]
pub trait Tenants: Send + Sync {
    /// Creates a tenant; `AlreadyExists` if the name is taken.
    async fn create_tenant(&self, tenant: &TenantRecord) -> StoreResult<()>;
    /// A tenant by its unique name.
    async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantRecord>>;
    /// A tenant by id.
    async fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>>;
    /// All tenants, by name.
    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>>;
    /// Stores an API key (hash only).
    async fn add_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;
    /// The active (not revoked) key with this hash.
    async fn api_key_by_hash(&self, hash: &[u8]) -> StoreResult<Option<ApiKeyRecord>>;
    /// A tenant's keys, revoked ones included.
    async fn list_api_keys(&self, tenant: &TenantId) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Marks a key revoked; false if there is no such active key.
    async fn revoke_api_key(&self, id: &ApiKeyId, at: UnixMs) -> StoreResult<bool>;

    /// The stored outcome of an earlier request with this key, if any.
    async fn idempotency(&self, tenant: &TenantId, key: &str) -> StoreResult<Option<IdempotencyRecord>>;
}

/// Provider accounts: sealed credentials and webhook secrets, per tenant.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Inserts an account and, when given, its idempotency record, in one transaction;
    /// `AlreadyExists` (nothing written) if the id or the idempotency key is taken.
    async fn insert_account(&self, account: &AccountRecord, idempotency: Option<&IdempotencyRecord>)
    -> StoreResult<()>;
    /// One of the tenant's accounts.
    async fn account(&self, tenant: &TenantId, id: &AccountId) -> StoreResult<Option<AccountRecord>>;
    /// An account by id regardless of tenant: only for the webhook ingress, which then
    /// authenticates the call with the account's webhook secret.
    async fn account_unscoped(&self, id: &AccountId) -> StoreResult<Option<AccountRecord>>;
    /// The account a webhook URL names by `segment`: its key, or the id of an account written
    /// before ids were per tenant (migration 0003 keeps it). Never through a cache: a URL for
    /// no account must cost the same read as one for an account.
    async fn webhook_account(&self, segment: &AccountId) -> StoreResult<Option<AccountRecord>>;
    /// The tenant's accounts, by id, optionally for one provider.
    async fn list_accounts(
        &self,
        tenant: &TenantId,
        provider: Option<ProviderKind>,
        page: &PageRequest,
    ) -> StoreResult<Page<AccountRecord>>;
    /// Updates mutable account fields (display name, options, sealed credentials, check
    /// results, token status).
    async fn update_account(&self, account: &AccountRecord) -> StoreResult<()>;
    /// Deletes an account; false if none.
    async fn delete_account(&self, tenant: &TenantId, id: &AccountId) -> StoreResult<bool>;
}

/// Onboardings with their steps and append-only event logs: creation, reads, the one
/// transactional change ([`Onboardings::apply_change`]) and the watchdog's scans.
#[async_trait]
pub trait Onboardings: Send + Sync {
    /// Creates an onboarding with its steps and its first event (sequence 1), and the
    /// idempotency record when given, all in one transaction. If the idempotency key is
    /// already taken, nothing is written and `AlreadyExists` is returned (the caller reads
    /// the winner's record).
    async fn create_onboarding(&self, new: &NewOnboarding) -> StoreResult<EventRecord>;
    /// Creates several onboardings (e.g. one batch of hosted links) as [`Onboardings::create_onboarding`]
    /// does, all in ONE transaction: a crash or an error leaves none of them.
    async fn create_onboardings(&self, batch: &[NewOnboarding]) -> StoreResult<Vec<EventRecord>>;
    /// One of the tenant's onboardings.
    async fn onboarding(&self, tenant: &TenantId, id: &OnboardingId) -> StoreResult<Option<OnboardingRecord>>;
    /// One of the tenant's onboardings with its steps (as [`Onboardings::steps`] orders them), read
    /// in one snapshot, so a change's step outcome and onboarding fields are seen together.
    /// Not through any cache: for snapshots that read the steps anyway (`GetPipeline`, the
    /// first message of a stream).
    async fn pipeline(
        &self,
        tenant: &TenantId,
        id: &OnboardingId,
    ) -> StoreResult<Option<(OnboardingRecord, Vec<StepRecord>)>>;
    /// [`Onboardings::onboarding`], shared: where the backend caches rows, the cached one itself (no
    /// copy), so a caller that only reads it (a `GetOnboarding` answer) copies nothing. For API
    /// reads only: on PostgreSQL it may lag another replica's commit by that commit's change
    /// notice (exact for this replica's own writes; see [`cache`]), so no write may be decided
    /// on it.
    async fn onboarding_shared(
        &self,
        tenant: &TenantId,
        id: &OnboardingId,
    ) -> StoreResult<Option<Arc<OnboardingRecord>>>;
    /// An onboarding regardless of tenant: for the engine and the ingress only.
    async fn onboarding_unscoped(&self, id: &OnboardingId) -> StoreResult<Option<OnboardingRecord>>;
    /// The onboardings of `account` whose provider-side keys (app id, channel id, link token,
    /// phone) are among `external_keys`, in one read: at most one per key, the newest (a key
    /// reused after a cancelled attempt names the latest one), in no particular order. Keys
    /// without one are left out.
    async fn onboardings_by_external_keys(
        &self,
        account: &AccountId,
        external_keys: &[String],
    ) -> StoreResult<Vec<OnboardingRecord>>;
    /// The tenant's onboarding of `provider` whose provider-side key is `external_key` (e.g.
    /// a Whapi channel id), for RPCs that name provider resources.
    async fn onboarding_by_resource(
        &self,
        tenant: &TenantId,
        provider: ProviderKind,
        external_key: &str,
    ) -> StoreResult<Option<OnboardingRecord>>;
    /// The tenant's onboardings, newest id last (ids are time-ordered), filtered.
    async fn list_onboardings(
        &self,
        tenant: &TenantId,
        filter: &OnboardingFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<OnboardingRecord>>;
    /// Counts onboardings per (provider, state), for metrics.
    async fn count_onboardings(&self) -> StoreResult<Vec<(ProviderKind, OnboardingState, i64)>>;
    /// Applies one change in one transaction: onboarding fields, step upserts, the event
    /// (with the next sequence), and marks a webhook event processed when given. Returns the
    /// event written. `Conflict` when `expect_sequence` is stale or the webhook event was
    /// already processed; `NotFound` when the onboarding or the webhook event does not exist.
    async fn apply_change(&self, change: &OnboardingChange) -> StoreResult<EventRecord>;
    /// Applies several changes in ONE transaction, in order, each as [`Onboardings::apply_change`]
    /// would, and publishes their notices after the commit; one outcome per change. A change
    /// that cannot apply (stale `expect_sequence`, missing onboarding, or a webhook event no
    /// longer pending) writes nothing, and every later change of the same onboarding in the
    /// batch is then not applied either ([`ChangeOutcome::Conflict`]): it was computed on top of
    /// the one that failed. Any other error rolls the whole batch back.
    async fn apply_changes(&self, changes: &[OnboardingChange]) -> StoreResult<Vec<ChangeOutcome>>;
    /// Events with `sequence > after`, ascending, at most `limit`.
    async fn events(&self, id: &OnboardingId, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>>;
    /// The onboarding's steps in pipeline order.
    async fn steps(&self, id: &OnboardingId) -> StoreResult<Vec<StepRecord>>;
    /// The current sequence of each of `ids` that exists, in no particular order (one query
    /// per few hundred ids), so stream fan-out can reconcile every watched onboarding at once.
    async fn latest_sequences(&self, ids: &[OnboardingId]) -> StoreResult<Vec<(OnboardingId, i64)>>;
    /// A value that differs whenever an event was committed since it was last read, or `None`
    /// where there is no such cheap marker: stream reconciliation skips its bulk read of
    /// [`Onboardings::latest_sequences`] while it is unchanged. SQLite: the event table's
    /// largest rowid (one writer, so it grows in commit order, and events are never deleted).
    /// PostgreSQL has none: ids are handed out before commit, so a smaller one can commit
    /// after a larger one was seen.
    async fn events_marker(&self) -> StoreResult<Option<i64>> {
        Ok(None)
    }
    /// The steps of several onboardings in one read, by onboarding, then as [`Onboardings::steps`]
    /// orders them.
    async fn steps_of(&self, ids: &[OnboardingId]) -> StoreResult<Vec<StepRecord>>;
    /// Onboardings not in a terminal state whose `state_deadline_ms` is before `now`.
    async fn overdue_onboardings(&self, now: UnixMs, limit: u32) -> StoreResult<Vec<OnboardingRecord>>;
    /// Onboardings not in a terminal state that expire within `threshold_secs` of `now` (and
    /// not before `now`), whose expiry was set more than `threshold_secs` ahead of their
    /// creation, and that have not been warned at this threshold or a smaller one.
    async fn expiring_onboardings(
        &self,
        now: UnixMs,
        threshold_secs: i64,
        limit: u32,
    ) -> StoreResult<Vec<OnboardingRecord>>;
}

/// Durable work: step leases for the engine, request claims (one provider call per
/// `request_id`), resource bindings and create intents (calls whose answer may be lost).
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Claims up to `limit` steps that are `READY` or `WAITING` with `next_run_ms <= now`, or
    /// `RUNNING` with an expired lease, setting `RUNNING`, `lease_owner = worker`,
    /// `lease_until_ms = now + lease`, and `attempts + 1` for non-waiting ones. On PostgreSQL
    /// this uses `FOR UPDATE SKIP LOCKED` so replicas never claim the same step.
    async fn claim_steps(&self, worker: &str, now: UnixMs, lease: Duration, limit: u32)
    -> StoreResult<Vec<StepRecord>>;
    /// Extends a lease the worker still holds; false if it was lost.
    async fn renew_lease(&self, id: &OnboardingId, step: &str, worker: &str, until: UnixMs) -> StoreResult<bool>;
    /// Writes a step the worker still leases, without an event (a poll that observed nothing
    /// new), releasing the lease; false (nothing written) if the lease was lost.
    async fn release_step(&self, step: &StepRecord, worker: &str) -> StoreResult<bool>;

    /// Claims `claim.key` for its owner unless a live claim holds it: `None` when the claim
    /// is now `claim`'s (new, or taken over from one whose lease ended before `now`), else the
    /// live holder (possibly for another operation or request hash).
    async fn claim_request(&self, claim: &RequestClaim, now: UnixMs) -> StoreResult<Option<RequestClaim>>;
    /// Drops the claim if `owner` still holds it; false if it did not.
    async fn release_request(&self, tenant: &TenantId, key: &str, owner: &str) -> StoreResult<bool>;
    /// Binds a resource to an onboarding unless it is bound already; returns the onboarding
    /// holding it now (`binding.onboarding_id` when this call bound it or had bound it).
    async fn bind_resource(&self, binding: &ResourceBinding) -> StoreResult<OnboardingId>;
    /// The onboarding holding a resource, if any.
    async fn resource_binding(&self, scope: &str, resource: &str) -> StoreResult<Option<OnboardingId>>;
    /// Records that the intent's step is about to send its create call (pending until
    /// [`WorkQueue::resolve_create_intent`]). Returns whether an earlier call of the same step was
    /// still pending: its answer was never learnt, so it may have created.
    async fn begin_create_intent(&self, intent: &CreateIntent) -> StoreResult<bool>;
    /// The answer to the step's create call is known (created, found, or refused).
    async fn resolve_create_intent(&self, onboarding: &OnboardingId, step: &str) -> StoreResult<()>;
    /// The onboardings whose create call for `subject` under `scope` is pending.
    async fn pending_create_intents(&self, scope: &str, subject: &str) -> StoreResult<Vec<OnboardingId>>;
}

/// The webhook inbox: provider callbacks stored under their dedupe key before the 2xx,
/// then claimed and finished by the webhook worker.
#[async_trait]
pub trait WebhookInbox: Send + Sync {
    /// Stores an inbound webhook event. Returns false (and stores nothing) when an event
    /// with the same `(provider, account_id, dedupe_key)` exists.
    async fn insert_webhook_event(&self, event: &WebhookEventRecord) -> StoreResult<bool>;
    /// Stores several inbound webhook events in one transaction (the ingress's group commit):
    /// per event, in order, whether it was stored (false: its dedupe key exists, stored
    /// before or earlier in `events`). All or nothing: an error stores none of them.
    async fn insert_webhook_events(&self, events: &[WebhookEventRecord]) -> StoreResult<Vec<bool>>;
    /// Webhook events not yet processed, oldest first, claimed under a lease.
    async fn claim_webhook_events(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<WebhookEventRecord>>;
    /// Marks a webhook event done (processed, ignored or rejected) with a note.
    async fn finish_webhook_event(&self, id: &str, status: WebhookStatus, note: Option<&str>) -> StoreResult<()>;
    /// A webhook event by id (for inspection and tests).
    async fn webhook_event(&self, id: &str) -> StoreResult<Option<WebhookEventRecord>>;
}

/// The shared sliding logs of the provider rate limits (every replica on one database
/// shares them); [`rate_log::StoreRateLog`] offers them to the HTTP rate limiter's port.
#[async_trait]
pub trait RateSlots: Send + Sync {
    /// Takes one slot of `limit` per `window` for `key` (sliding log shared by every replica).
    /// The slot is stamped `now` when given (tests), else with the clock read once the key's
    /// lock is held: time spent queueing for the writer must not age the slot, or it would
    /// leave the window before the call it admits reaches the provider.
    async fn rate_acquire(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        now: Option<UnixMs>,
    ) -> StoreResult<RateGrant>;
    /// Moves a taken slot's stamp forward to `now` (the store's clock when `None`), never
    /// back: called once the provider answered the call the slot admitted, by when it has
    /// counted it. An unknown or already expired slot is left alone.
    async fn rate_restamp(&self, key: &str, slot: i64, now: Option<UnixMs>) -> StoreResult<()>;
}

/// Change notification: a wake-up per committed onboarding write, to this process and (on
/// PostgreSQL) to every replica.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Publishes that an onboarding's log grew (to this process and, on PostgreSQL, to every
    /// replica through `NOTIFY`).
    async fn notify(&self, notice: &ChangeNotice) -> StoreResult<()>;
    /// Subscribes to notices from every replica. The receiver lags rather than blocks.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ChangeNotice>;
}

/// Outbound delivery (issue 19): destinations, the event outbox every event write fills in its
/// own transaction ([`Onboardings::apply_change`], [`Onboardings::create_onboarding`]), its
/// fan-out into one delivery per matching destination, and the leased sending of deliveries
/// in per-(destination, onboarding) sequence order.
#[async_trait]
pub trait Deliveries: Send + Sync {
    /// Stores a new destination; `AlreadyExists` if the id is taken.
    async fn create_destination(&self, destination: &DestinationRecord) -> StoreResult<()>;
    /// One of the tenant's destinations.
    async fn destination(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<DestinationRecord>>;
    /// A destination whatever its tenant: for the sender only.
    async fn destination_unscoped(&self, id: &str) -> StoreResult<Option<DestinationRecord>>;
    /// The tenant's destinations, by id.
    async fn list_destinations(&self, tenant: &TenantId, page: &PageRequest) -> StoreResult<Page<DestinationRecord>>;
    /// Writes every mutable field of one of the tenant's destinations, if it is still as
    /// read (`updated_ms` = `expect_updated_ms`: a worker's disable in between is not
    /// overwritten); `NotFound` if it is not theirs, `Conflict` if it changed.
    async fn update_destination(&self, destination: &DestinationRecord, expect_updated_ms: UnixMs) -> StoreResult<()>;
    /// Deletes one of the tenant's destinations with its deliveries; false if none.
    async fn delete_destination(&self, tenant: &TenantId, id: &str) -> StoreResult<bool>;
    /// Records an attempt's verdict on the destination's health: a success clears
    /// `failing_since_ms`, a failure sets it unless set. Returns it as now stored.
    async fn note_destination_health(&self, id: &str, ok: bool, at: UnixMs) -> StoreResult<Option<UnixMs>>;

    /// Fans up to `limit` outbox rows out, each into one pending delivery per enabled
    /// destination of its tenant whose filter matches, deleting the rows in the same
    /// transaction (idempotent: a delivery that exists is left alone). On PostgreSQL the rows
    /// are taken `FOR UPDATE SKIP LOCKED`, so replicas dispatch disjoint rows.
    async fn dispatch_outbox(&self, now: UnixMs, limit: u32) -> StoreResult<DispatchStats>;
    /// Leases up to `limit` due pending deliveries of enabled destinations to `worker` (a
    /// lapsed lease is taken over), counting an attempt each. A delivery is due only when no
    /// lower sequence of the same destination and onboarding is still pending or still in the
    /// outbox, so each onboarding's events go out in order. With `run > 1`, each claimed
    /// head on its first attempt (not a retry) brings up to `run - 1` of the pending rows right behind it in its queue (the
    /// unbroken prefix of them that is due and unleased), leased and counted the same way, so
    /// one sender can send a backlog in order without a claim per event. Sorted by
    /// destination, onboarding, sequence.
    async fn claim_deliveries(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
        run: u32,
    ) -> StoreResult<Vec<DeliveryRecord>>;
    /// Writes the outcome of an attempt `worker` still leases, releasing the lease; false
    /// (nothing written) if the lease was lost.
    async fn finish_delivery(&self, update: &DeliveryUpdate, worker: &str) -> StoreResult<bool>;
    /// [`Deliveries::finish_delivery`] for many attempts in one transaction (the sender
    /// batches the outcomes that are ready, one write instead of one per attempt); whether
    /// each was written, in order. A delivered or dead-lettered head makes the next pending
    /// sequence of its destination and onboarding claimable.
    async fn finish_deliveries(&self, updates: &[DeliveryUpdate], worker: &str) -> StoreResult<Vec<bool>>;
    /// One of the tenant's destinations' deliveries, by onboarding then sequence.
    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        destination: &str,
        query: &DeliveryQuery,
    ) -> StoreResult<Page<DeliveryRecord>>;
    /// One chunk of a replay to one of the tenant's destinations, in one transaction: the
    /// first `limit` events of the log from `from` on and after `after` (by onboarding, then
    /// sequence) are looked at, and each matching one gets a pending delivery due `now` (a
    /// delivered or dead one is reset), written in multi-row statements. `NotFound` if the
    /// destination is not the tenant's. A replay is complete when a chunk looks at fewer
    /// than `limit` events.
    async fn redeliver(
        &self,
        tenant: &TenantId,
        destination: &str,
        from: &RedeliverFrom,
        after: Option<&ReplayCursor>,
        limit: u32,
        now: UnixMs,
    ) -> StoreResult<ReplayChunk>;
    /// The backlog, for metrics: outbox rows not yet fanned out, and pending deliveries per
    /// destination.
    async fn delivery_backlog(&self) -> StoreResult<(i64, Vec<(String, i64)>)>;
}

/// Service notices about destinations (issue 19, item 4): the worker's disable of a
/// destination writes its disabled fields, a notice and one pending notice delivery per other
/// enabled destination of the tenant whose filter admits it, in one transaction; the
/// notice deliveries are then sent under leases like event deliveries.
#[async_trait]
pub trait Notices: Send + Sync {
    /// Disables an enabled destination (the worker's verdict: a 410, failing too long) with
    /// its typed cause, message, time and last HTTP status, and writes the notice and its
    /// deliveries, all in one transaction. Returns the notice; `None` (nothing written) if
    /// the destination is missing or already disabled (a second replica's verdict).
    async fn disable_destination(&self, disable: &DestinationDisable) -> StoreResult<Option<NoticeRecord>>;
    /// A notice whatever its tenant: for the sender only.
    async fn notice_unscoped(&self, id: &str) -> StoreResult<Option<NoticeRecord>>;
    /// Leases up to `limit` due pending notice deliveries of enabled destinations to
    /// `worker` (a lapsed lease is taken over), counting an attempt each.
    async fn claim_notice_deliveries(
        &self,
        worker: &str,
        now: UnixMs,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<NoticeDeliveryRecord>>;
    /// Writes the outcome of a notice attempt `worker` still leases; false if the lease was
    /// lost.
    async fn finish_notice_delivery(&self, update: &NoticeDeliveryUpdate, worker: &str) -> StoreResult<bool>;
    /// The deliveries of one of the tenant's notices, by destination.
    async fn notice_deliveries(&self, tenant: &TenantId, notice_id: &str) -> StoreResult<Vec<NoticeDeliveryRecord>>;
}

/// Opens the store named by `url` (`sqlite:...` or `postgres://...`) and runs migrations.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else {
        Err(StoreError::Other(format!(
            "unsupported database URL scheme in '{}': use sqlite:PATH or postgres://...",
            redact_url(url)
        )))
    }
}

/// Runs the migrations of the database named by `url` (what `open` also does at start), for
/// the `migrate` subcommand.
pub async fn migrate(url: &str) -> StoreResult<()> {
    open(url).await.map(drop)
}

/// The URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".into(),
    }
}
