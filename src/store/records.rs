//! Row types exchanged with the store. Secrets are stored only as [`Sealed`] ciphertext or
//! as hashes; nothing here holds a plaintext credential.

use crate::domain::{
    AccountId, ApiKeyId, EventKind, OnboardingId, OnboardingState, Patch, ProviderKind, StepState, TenantId, UnixMs,
};

/// Ciphertext of a secret with the id of the key that sealed it (for rotation).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Which encryption key.
    pub key_id: String,
    /// nonce || ciphertext || tag.
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed(key_id={}, {} bytes)", self.key_id, self.blob.len())
    }
}

/// A tenant: one calling service.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    /// The tenant's resource id (`tenants/{id}`), chosen when the tenant is created.
    pub id: TenantId,
    /// Unique human name.
    pub name: String,
    /// When the row was created, Unix milliseconds.
    pub created_ms: UnixMs,
}

/// An API key: only its SHA-256 hash is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    /// The key's id, shown in listings and logs in place of the key itself.
    pub id: ApiKeyId,
    /// The tenant the key authenticates as.
    pub tenant_id: TenantId,
    /// SHA-256 of the full key.
    pub hash: Vec<u8>,
    /// The first characters of the key, to recognise it in listings.
    pub prefix: String,
    /// When the row was created, Unix milliseconds.
    pub created_ms: UnixMs,
    /// Revoked at, if revoked.
    pub revoked_ms: Option<UnixMs>,
}

/// A tenant's provider account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRecord {
    /// Id, unique per tenant... and globally (webhook URLs name it).
    pub id: AccountId,
    /// The tenant that owns the account; every read is scoped by it.
    pub tenant_id: TenantId,
    /// Which provider's API the account talks to; fixed once created.
    pub provider: ProviderKind,
    /// The caller's name for the account, shown in listings (not unique).
    pub display_name: String,
    /// Provider options (region, project, endpoint override), JSON.
    pub options_json: String,
    /// Sealed credentials JSON.
    pub credentials: Sealed,
    /// Sealed per-account webhook path secret.
    pub webhook_secret: Sealed,
    /// Whether it targets the built-in simulator.
    pub sandbox: bool,
    /// Last `CheckAccount` / token status and similar provider-side facts, JSON.
    pub status_json: String,
    /// When the row was created, Unix milliseconds.
    pub created_ms: UnixMs,
    /// When the row was last written, Unix milliseconds.
    pub updated_ms: UnixMs,
}

/// The remembered outcome of a create with a `request_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    /// The tenant the key belongs to: the same `request_id` of two tenants never collides.
    pub tenant_id: TenantId,
    /// The caller's `request_id`.
    pub key: String,
    /// Which RPC (a key reused for another RPC is refused).
    pub operation: String,
    /// SHA-256 of the canonical request, to detect a different request under the same key.
    pub request_hash: Vec<u8>,
    /// The resource name(s) created, comma-separated.
    pub resource: String,
    /// When the row was created, Unix milliseconds.
    pub created_ms: UnixMs,
}

/// One onboarding row.
#[derive(Debug, Clone, PartialEq)]
pub struct OnboardingRecord {
    /// The onboarding's resource id (a time-ordered `new_id`), assigned at create.
    pub id: OnboardingId,
    /// The tenant that created it; every read is scoped by it.
    pub tenant_id: TenantId,
    /// The account whose credentials every provider call of the onboarding uses.
    pub account_id: AccountId,
    /// The account's provider, copied here so lists filter and dispatch without a join.
    pub provider: ProviderKind,
    /// Observed canonical state.
    pub state: OnboardingState,
    /// Desired state when it differs from the observed one (e.g. `CANCELLED` requested).
    pub desired_state: Option<OnboardingState>,
    /// Why it is in this state.
    pub state_reason: String,
    /// The provider's raw status (stage, token status...), as the provider spells it.
    pub provider_status: String,
    /// Caller's reference, carried end to end.
    pub reference: String,
    /// The public details, JSON (`domain::OnboardingDetails` of the provider).
    pub details_json: String,
    /// The engine's own bookkeeping, JSON (`core::engine::EngineState`): never shown to callers.
    pub engine_json: String,
    /// Provider-side lookup key (app id, channel id, link token, phone) once known.
    pub external_key: Option<String>,
    /// Sealed provider secret for this onboarding (app token, channel token), once known.
    pub secret: Option<Sealed>,
    /// The latest event sequence.
    pub sequence: i64,
    /// When the current state must have moved on (watchdog).
    pub state_deadline_ms: Option<UnixMs>,
    /// When the link / channel / trial expires, where the provider has one.
    pub expire_ms: Option<UnixMs>,
    /// When the row was created, Unix milliseconds.
    pub created_ms: UnixMs,
    /// When the row was last written, Unix milliseconds.
    pub updated_ms: UnixMs,
}

/// Filters for listing onboardings.
#[derive(Debug, Clone, Default)]
pub struct OnboardingFilter {
    /// Only this provider.
    pub provider: Option<ProviderKind>,
    /// Only this state.
    pub state: Option<OnboardingState>,
    /// Only this caller reference.
    pub reference: Option<String>,
    /// Only this account.
    pub account_id: Option<AccountId>,
}

/// One entry of an onboarding's append-only event log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Which onboarding.
    pub onboarding_id: OnboardingId,
    /// Monotonic per onboarding, from 1, gap-free.
    pub sequence: i64,
    /// What happened.
    pub kind: EventKind,
    /// State after the event.
    pub state: OnboardingState,
    /// State before the event.
    pub previous_state: OnboardingState,
    /// Human-readable cause of the event (no secrets), shown to callers.
    pub reason: String,
    /// Raw provider status at the time.
    pub provider_status: String,
    /// The step concerned, if any.
    pub step: Option<String>,
    /// Extra attributes (never secrets), JSON object.
    pub data_json: String,
    /// When the store appended the event, Unix milliseconds.
    pub created_ms: UnixMs,
}

/// The event part of a change; the store assigns the sequence and the states.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// Human-readable cause of the event (no secrets), shown to callers.
    pub reason: String,
    /// The step concerned, if any.
    pub step: Option<String>,
    /// Extra attributes (never secrets), JSON object; `{}` when empty.
    pub data_json: String,
}

impl NewEvent {
    /// An event of `kind` for `reason`, about no step, without attributes.
    pub fn new(kind: EventKind, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into(), step: None, data_json: "{}".into() }
    }

    /// The same event, about `step`.
    pub fn at_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }

    /// The same event about `step`, if any.
    pub fn at_opt_step(mut self, step: Option<String>) -> Self {
        self.step = step;
        self
    }

    /// The same event with these attributes (a JSON object; never secrets). Attributes that
    /// do not serialise (they are maps of strings and numbers) leave the event without any.
    pub fn with_attributes(mut self, attributes: &impl serde::Serialize) -> Self {
        self.data_json = serde_json::to_string(attributes).unwrap_or_else(|_| "{}".into());
        self
    }
}

/// One pipeline step row; also the durable job.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Which onboarding.
    pub onboarding_id: OnboardingId,
    /// Step key (`link_app`...).
    pub name: String,
    /// Order within the pipeline, from 0.
    pub position: i32,
    /// Where the step is in its lifecycle (pending, running, succeeded, failed...).
    pub state: StepState,
    /// Attempts made.
    pub attempts: i32,
    /// Bound on attempts before `FAILED`.
    pub max_attempts: i32,
    /// When it should run next (due when `<= now`).
    pub next_run_ms: Option<UnixMs>,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease lapses and another worker may take the step over; `None` when unleased.
    pub lease_until_ms: Option<UnixMs>,
    /// Last error message (no secrets).
    pub last_error: Option<String>,
    /// Last error's raw provider code.
    pub last_error_code: Option<String>,
    /// Raw provider stage values, JSON object.
    pub provider_stage_json: String,
    /// Step-specific durable data (e.g. "create sent at", for reconciliation), JSON.
    pub data_json: String,
    /// When it must have finished (watchdog), if bounded.
    pub deadline_ms: Option<UnixMs>,
    /// When the first attempt started; `None` until it runs.
    pub started_ms: Option<UnixMs>,
    /// When it reached a final state; `None` while it can still run.
    pub finished_ms: Option<UnixMs>,
    /// When the step row was first written (with its onboarding's pipeline), Unix milliseconds.
    pub created_ms: UnixMs,
    /// Last write to the row (attempt, lease, result), Unix milliseconds.
    pub updated_ms: UnixMs,
}

/// A new onboarding with everything written alongside it.
#[derive(Debug, Clone)]
pub struct NewOnboarding {
    /// The row (sequence is set to 1 by the store).
    pub onboarding: OnboardingRecord,
    /// Its pipeline steps (from `initial_steps`), written in the same transaction.
    pub steps: Vec<StepRecord>,
    /// The first event (`created`).
    pub event: NewEvent,
    /// The idempotency record, when the caller sent a `request_id`.
    pub idempotency: Option<IdempotencyRecord>,
}

/// One atomic change to an onboarding. Built with [`OnboardingChange::new`] and struct
/// update syntax: every field but the id, the event and the time is "unchanged" by default.
#[derive(Debug, Clone)]
pub struct OnboardingChange {
    /// The onboarding to change, always set by [`OnboardingChange::new`]; the store refuses a
    /// change without one (and the whole batch it is in).
    pub onboarding_id: Option<OnboardingId>,
    /// If set, the change applies only if the stored sequence still equals this.
    pub expect_sequence: Option<i64>,
    /// New state (None = unchanged). The store does not judge transitions; core does.
    pub state: Option<OnboardingState>,
    /// New desired state.
    pub desired_state: Patch<OnboardingState>,
    /// New human-readable reason for the state (None = unchanged).
    pub state_reason: Option<String>,
    /// New raw provider status.
    pub provider_status: Option<String>,
    /// New details JSON.
    pub details_json: Option<String>,
    /// New engine state JSON.
    pub engine_json: Option<String>,
    /// New external key.
    pub external_key: Option<String>,
    /// New sealed secret.
    pub secret: Option<Sealed>,
    /// New watchdog deadline of the current state: set when a state with a bound is entered,
    /// cleared when the state has none.
    pub state_deadline_ms: Patch<UnixMs>,
    /// New expiry. A different expiry forgets the warnings already
    /// sent for the old one (unless `expiry_warned_secs` is set too).
    pub expire_ms: Patch<UnixMs>,
    /// Records that the expiry warning for this threshold (seconds) was sent.
    pub expiry_warned_secs: Option<i64>,
    /// Steps to insert or replace (matched by name).
    pub steps: Vec<StepRecord>,
    /// Steps to make due now if they are still `WAITING` (matched by name), touching nothing
    /// else of them: a callback wakes a step without writing back a copy of it, which could
    /// undo what the step's own run wrote meanwhile (its data is not guarded by the sequence).
    pub wake_steps: Vec<String>,
    /// The event to append.
    pub event: NewEvent,
    /// A webhook event this change consumes; marked `PROCESSED` in the same transaction.
    pub webhook_event_id: Option<String>,
    /// When the change happens.
    pub at_ms: UnixMs,
}

impl OnboardingChange {
    /// A change of onboarding `id` at `at_ms` that appends `event` and changes nothing else.
    pub fn new(id: &OnboardingId, event: NewEvent, at_ms: UnixMs) -> Self {
        Self {
            onboarding_id: Some(id.clone()),
            expect_sequence: None,
            state: None,
            desired_state: Patch::Keep,
            state_reason: None,
            provider_status: None,
            details_json: None,
            engine_json: None,
            external_key: None,
            secret: None,
            state_deadline_ms: Patch::Keep,
            expire_ms: Patch::Keep,
            expiry_warned_secs: None,
            steps: Vec::new(),
            wake_steps: Vec::new(),
            event,
            webhook_event_id: None,
            at_ms,
        }
    }

    /// The row `old` becomes when this change applies (the next sequence, `updated_ms` at the
    /// change): what the store writes, and what the engine chains the next change of a batch on.
    pub fn applied_to(&self, old: &OnboardingRecord) -> OnboardingRecord {
        OnboardingRecord {
            state: self.state.unwrap_or(old.state),
            desired_state: self.desired_state.apply(old.desired_state),
            state_reason: self.state_reason.clone().unwrap_or_else(|| old.state_reason.clone()),
            provider_status: self.provider_status.clone().unwrap_or_else(|| old.provider_status.clone()),
            details_json: self.details_json.clone().unwrap_or_else(|| old.details_json.clone()),
            engine_json: self.engine_json.clone().unwrap_or_else(|| old.engine_json.clone()),
            external_key: self.external_key.clone().or_else(|| old.external_key.clone()),
            secret: self.secret.clone().or_else(|| old.secret.clone()),
            sequence: old.sequence + 1,
            state_deadline_ms: self.state_deadline_ms.apply(old.state_deadline_ms),
            expire_ms: self.expire_ms.apply(old.expire_ms),
            updated_ms: self.at_ms,
            ..old.clone()
        }
    }
}

/// What became of one change of [`Onboardings::apply_changes`](super::Onboardings::apply_changes).
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    /// Written; the event appended.
    Applied(EventRecord),
    /// Not written: `expect_sequence` is stale, or an earlier change of the same onboarding in
    /// the batch was not written. Re-read and recompute.
    Conflict(String),
    /// Not written: the onboarding does not exist.
    NotFound(String),
    /// Not written: its webhook event is no longer pending (another worker already processed
    /// it after this one's lease lapsed), so applying it again would apply it twice.
    AlreadyProcessed(String),
}

/// Processing state of an inbound webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookStatus {
    /// Stored, not yet processed.
    Pending,
    /// Applied to its onboarding.
    Processed,
    /// Understood but nothing to do (unknown app, stale event).
    Ignored,
    /// Could not be parsed; kept for inspection.
    Malformed,
}

impl WebhookStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processed => "PROCESSED",
            Self::Ignored => "IGNORED",
            Self::Malformed => "MALFORMED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Processed, Self::Ignored, Self::Malformed].into_iter().find(|w| w.as_str() == s)
    }
}

/// An inbound provider callback as received.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEventRecord {
    /// Our id of the stored callback (a `new_id`), distinct from the provider's event id.
    pub id: String,
    /// The provider named in the webhook path, which decides how the body is parsed.
    pub provider: ProviderKind,
    /// Account whose URL it came to.
    pub account_id: AccountId,
    /// Dedupe key (provider event id, or a hash of the body).
    pub dedupe_key: String,
    /// Raw body.
    pub body: Vec<u8>,
    /// Processing state.
    pub status: WebhookStatus,
    /// Why it was ignored / malformed.
    pub note: Option<String>,
    /// Lease holder while processing.
    pub lease_owner: Option<String>,
    /// When the processing lease lapses and another worker may apply the event.
    pub lease_until_ms: Option<UnixMs>,
    /// When the ingress stored it (before answering 2xx), Unix milliseconds.
    pub received_ms: UnixMs,
}

/// A `request_id` claimed before its provider call: concurrent calls with the same key wait
/// for the owner's stored outcome instead of calling the provider again.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestClaim {
    /// Owner tenant.
    pub tenant_id: TenantId,
    /// The claimed key (the caller's `request_id`, scoped by the use case).
    pub key: String,
    /// Which RPC claimed it.
    pub operation: String,
    /// Keyed hash of the canonical request (another request under the same key is refused).
    pub request_hash: Vec<u8>,
    /// Who holds it (one call in one process).
    pub owner: String,
    /// Until when: past it, the owner is presumed dead and another call takes the claim over.
    pub lease_until_ms: UnixMs,
}

/// A provider resource bound to the one onboarding that holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceBinding {
    /// The provider identity the resource id is unique under (a keyed fingerprint).
    pub scope: String,
    /// The provider's id of the resource (a Gupshup app id).
    pub resource: String,
    /// The onboarding holding it.
    pub onboarding_id: OnboardingId,
    /// When the binding was written, Unix milliseconds.
    pub created_ms: UnixMs,
}

/// A create call an onboarding's step is about to send, recorded before the call.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateIntent {
    /// The onboarding whose step sends the create.
    pub onboarding_id: OnboardingId,
    /// The step that sends it (its pipeline key).
    pub step: String,
    /// The provider identity the call runs under (a keyed fingerprint).
    pub scope: String,
    /// What the call creates for (a Gupshup phone number).
    pub subject: String,
    /// When the intent was recorded, just before the call, Unix milliseconds.
    pub at_ms: UnixMs,
}
