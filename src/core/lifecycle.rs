//! Onboarding lifecycle use cases: create (one, or a batch of hosted links), cancel, retry,
//! submit a verification code. The engine does the provider work; these write the intent
//! durably and wake it.

use std::collections::BTreeMap;

use super::claims::ClaimKey;
use super::views::OnboardingView;
use super::{Caller, Core};
use crate::domain::{
    AccountId, EventKind, ExotelDetails, OnboardingDetails, OnboardingId, OnboardingState, Patch, StepState, new_id,
    now_ms,
};
use crate::error::{AppError, ErrorCode};
use crate::providers::{CallContext, HostedLinkOps, Provider, ProviderHandle, StartPayload, StartRequest};
use crate::store::{
    AccountRecord, NewEvent, NewOnboarding, OnboardingChange, OnboardingRecord, StepRecord, StoreError,
};

const OP_CREATE: &str = "CreateOnboarding";
const OP_LINKS: &str = "CreateOnboardingLinks";
/// Operation name of `CancelOnboarding` request claims.
const OP_CANCEL: &str = "CancelOnboarding";

/// Step of hosted-link pipelines that a batch mint has already done.
const STEP_MINT_LINK: &str = crate::providers::exotel::ExotelStep::MintLink.as_str();
/// Step of 99digital pipelines that waits for the caller's verification code.
const STEP_VERIFY_NUMBER: &str = crate::providers::digital99::Digital99Step::VerifyNumber.as_str();

/// The rows of a new onboarding and the idempotency key they answer, for
/// [`Core::insert_onboarding`].
struct NewRows<'a> {
    /// The onboarding.
    o: OnboardingRecord,
    /// Its pipeline steps.
    steps: Vec<StepRecord>,
    /// The idempotency record written with it, when keyed.
    idem: Option<crate::store::IdempotencyRecord>,
    /// The caller's `request_id`.
    key: Option<&'a str>,
    /// The operation the key is recorded for.
    op: &'a str,
    /// The request's keyed fingerprint.
    hash: &'a [u8],
}

/// What one batch of hosted links is minted with, for [`Core::mint_batch`].
struct MintBatch<'a> {
    /// The account.
    account: &'a AccountRecord,
    /// Its adapter.
    provider: &'a dyn Provider,
    /// The context to call it with.
    ctx: &'a CallContext,
    /// The adapter's batch capability.
    links: &'a dyn HostedLinkOps,
    /// Links to mint.
    count: u32,
    /// The caller's reference for every link.
    reference: &'a str,
}

/// A caller's request to start one onboarding.
#[derive(Debug, Clone)]
pub struct NewOnboardingRequest {
    /// Account to act for.
    pub account: AccountId,
    /// Caller-chosen id, if any.
    pub onboarding_id: Option<OnboardingId>,
    /// Caller's reference, carried end to end.
    pub reference: String,
    /// The caller's `request_id`: a retry with it returns the first call's onboarding.
    pub request_id: Option<String>,
    /// What to create, in the account's provider's terms (validated before anything is stored).
    pub payload: StartPayload,
}

/// Details as stored text, an error (not an empty object) if they cannot be encoded.
fn details_text(d: &OnboardingDetails) -> Result<String, AppError> {
    d.to_json().map_err(|e| AppError::internal(e.to_string()))
}

impl Core {
    /// Creates an onboarding and queues its pipeline. Idempotent with `request_id`; input the
    /// adapter would refuse is `INVALID_ARGUMENT` before anything is stored or sent.
    pub async fn create_onboarding(
        &self,
        caller: &Caller,
        req: NewOnboardingRequest,
    ) -> Result<OnboardingView, AppError> {
        let account = self
            .store
            .account(&caller.tenant, &req.account)
            .await?
            .ok_or_else(|| AppError::not_found(format!("accounts/{}", req.account)))?;
        if req.payload.kind() != account.provider {
            return Err(AppError::invalid(
                "request",
                format!(
                    "is a {} request but accounts/{} is a {} account",
                    req.payload.kind(),
                    account.id,
                    account.provider
                ),
            ));
        }
        let (provider, ctx) = self.provider_for(&account)?;
        let id = req.onboarding_id.clone().unwrap_or_else(|| OnboardingId::fresh(&caller.tenant));
        let request = StartRequest {
            onboarding_id: id.clone(),
            idempotency_key: id.as_str().to_string(),
            reference: req.reference.clone(),
            payload: req.payload.clone(),
        };
        provider.validate_start(&ctx, &request).map_err(|e| AppError::from((account.provider, e)))?;
        // Keyed fingerprint: the payload may hold subscription header secrets. A payload that
        // does not encode is an error: fingerprinting `null` would make different requests
        // replay each other.
        let payload = serde_json::to_value(&req.payload)
            .map_err(|e| AppError::internal(format!("cannot encode the request for its fingerprint: {e}")))?;
        let canonical = serde_json::json!({
            "account": account.id.as_str(),
            "id": req.onboarding_id.as_ref().map(OnboardingId::as_str),
            "reference": req.reference,
            "payload": payload,
        })
        .to_string();
        let hash = self.fingerprint(&[canonical.as_bytes()]);
        let key = req.request_id.as_deref();
        if let Some(resource) = self.replay(&caller.tenant, key, OP_CREATE, &hash).await? {
            return self.onboarding_by_name(caller, &resource).await.map(OnboardingView::from);
        }
        let now = now_ms();
        let mut o = OnboardingRecord {
            id: id.clone(),
            tenant_id: caller.tenant.clone(),
            account_id: account.id.clone(),
            provider: account.provider,
            state: OnboardingState::Pending,
            desired_state: None,
            state_reason: "accepted".into(),
            provider_status: String::new(),
            reference: req.reference.clone(),
            details_json: details_text(&req.payload.initial_details())?,
            engine_json: String::new(),
            external_key: None,
            secret: None,
            sequence: 1,
            state_deadline_ms: None,
            expire_ms: None,
            created_ms: now,
            updated_ms: now,
        };
        let steps = self.new_onboarding_rows(&mut o, &*provider, &request, None)?;
        let idem = self.idempotency_record(&caller.tenant, key, OP_CREATE, hash.clone(), format!("onboardings/{id}"));
        self.insert_onboarding(caller, NewRows { o, steps, idem, key, op: OP_CREATE, hash: &hash })
            .await
            .map(OnboardingView::from)
    }

    /// Inserts a new onboarding; on a unique-key race, returns the winner of the same
    /// `request_id` or `ALREADY_EXISTS` for a taken id.
    async fn insert_onboarding(&self, caller: &Caller, rows: NewRows<'_>) -> Result<OnboardingRecord, AppError> {
        let NewRows { o, steps, idem, key, op, hash } = rows;
        let new = NewOnboarding {
            onboarding: o.clone(),
            steps,
            event: NewEvent::new(EventKind::Created, "onboarding accepted")
                .with_attributes(&serde_json::json!({"reference": o.reference})),
            idempotency: idem,
        };
        match self.store.create_onboarding(&new).await {
            Ok(_) => {
                tracing::info!(onboarding = %o.id, provider = %o.provider, account = %o.account_id, "Onboarding created.");
                self.wake_engine();
                self.get_onboarding(caller, &o.id).await
            }
            Err(StoreError::AlreadyExists(_)) => {
                if let Some(resource) = self.replay(&caller.tenant, key, op, hash).await? {
                    return self.onboarding_by_name(caller, resource.split(',').next().unwrap_or_default()).await;
                }
                Err(AppError::new(ErrorCode::AlreadyExists, format!("onboardings/{} already exists", o.id.name()))
                    .with_violation("onboarding_id", "already taken"))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn onboarding_by_name(&self, caller: &Caller, name: &str) -> Result<OnboardingRecord, AppError> {
        let id = name
            .strip_prefix("onboardings/")
            .and_then(|s| OnboardingId::parse(s).ok())
            // Written as a key (`{tenant}.{id}`), or as a bare id before ids were per tenant.
            .and_then(|id| OnboardingId::scoped(&caller.tenant, id.name()).ok())
            .ok_or_else(|| AppError::internal(format!("stored resource name '{name}' does not parse")))?;
        self.get_onboarding(caller, &id).await
    }

    /// Mints `count` hosted links in one provider call and creates one onboarding per link,
    /// each already `AWAITING_CUSTOMER`. Idempotent with `request_id` (the record is written
    /// with the last onboarding, so a replay only answers once the whole batch is stored).
    pub async fn create_links(
        &self,
        caller: &Caller,
        account_id: &AccountId,
        count: u32,
        reference: &str,
        request_id: Option<&str>,
    ) -> Result<(Vec<OnboardingView>, String), AppError> {
        let (rows, batch) = self.create_link_rows(caller, account_id, count, reference, request_id).await?;
        Ok((rows.into_iter().map(OnboardingView::from).collect(), batch))
    }

    /// [`Core::create_links`], answering the stored rows.
    async fn create_link_rows(
        &self,
        caller: &Caller,
        account_id: &AccountId,
        count: u32,
        reference: &str,
        request_id: Option<&str>,
    ) -> Result<(Vec<OnboardingRecord>, String), AppError> {
        let account = self
            .store
            .account(&caller.tenant, account_id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("accounts/{account_id}")))?;
        let (provider, ctx) = self.provider_for(&account)?;
        let links = provider.hosted_links().ok_or_else(|| {
            AppError::precondition(format!(
                "CreateOnboardingLinks needs a provider with batch hosted links; accounts/{account_id} is {}",
                account.provider
            ))
        })?;
        let max = links.max_batch();
        if !(1..=max).contains(&count) {
            return Err(AppError::invalid(
                "count",
                format!(
                    "must be between 1 and {max} ({} mints at most {max} links per call)",
                    account.provider.display_name()
                ),
            ));
        }
        let canonical = serde_json::json!({"account": account_id.as_str(), "count": count, "reference": reference});
        let hash = self.fingerprint(&[canonical.to_string().as_bytes()]);
        let Some(rid) = request_id else {
            let batch = MintBatch { account: &account, provider: &*provider, ctx: &ctx, links, count, reference };
            return self.mint_batch(caller, batch, None, &hash).await;
        };
        // Claimed before the mint: concurrent calls with this key wait for one batch instead of
        // each minting its own (links the provider keeps live for 24 h that nobody tracks).
        let key = ClaimKey { tenant: &caller.tenant, key: rid.to_string(), operation: OP_LINKS, hash: &hash };
        self.once_per_key(
            key,
            || self.stored_batch(caller, rid, &hash),
            || {
                let batch = MintBatch { account: &account, provider: &*provider, ctx: &ctx, links, count, reference };
                self.mint_batch(caller, batch, Some(rid), &hash)
            },
        )
        .await
    }

    /// The batch an earlier call with this `request_id` stored, if any.
    async fn stored_batch(
        &self,
        caller: &Caller,
        request_id: &str,
        hash: &[u8],
    ) -> Result<Option<(Vec<OnboardingRecord>, String)>, AppError> {
        let Some(resource) = self.replay(&caller.tenant, Some(request_id), OP_LINKS, hash).await? else {
            return Ok(None);
        };
        let mut names = resource.split(',');
        let batch = names.next().unwrap_or_default().trim_start_matches("batches/").to_string();
        let mut out = Vec::new();
        for n in names {
            out.push(self.onboarding_by_name(caller, n).await?);
        }
        Ok(Some((out, batch)))
    }

    /// Mints one batch and stores its onboardings (with the idempotency record, when keyed).
    async fn mint_batch(
        &self,
        caller: &Caller,
        batch: MintBatch<'_>,
        request_id: Option<&str>,
        hash: &[u8],
    ) -> Result<(Vec<OnboardingRecord>, String), AppError> {
        let MintBatch { account, provider, ctx, links, count, reference } = batch;
        let account_id = &account.id;
        let hash = hash.to_vec();
        let minted = links.mint_links(ctx, count).await.map_err(|e| AppError::from((account.provider, e)))?;
        let batch: String = new_id();
        let now = now_ms();
        let mut prepared = Vec::new();
        for link in &minted {
            let id = OnboardingId::fresh(&caller.tenant);
            let request = StartRequest {
                onboarding_id: id.clone(),
                idempotency_key: id.as_str().to_string(),
                reference: reference.to_string(),
                payload: links.link_payload(),
            };
            let handle = ProviderHandle {
                external_key: link.token.clone(),
                data: serde_json::json!({"onboarding_url": link.url, "batch_id": batch}),
            };
            // The adapter's details of a freshly minted link (the same ones its single-link
            // step reports), plus the batch, which only we know.
            let details = ExotelDetails { batch_id: Some(batch.clone()), ..link.details.clone() };
            let mut o = OnboardingRecord {
                id: id.clone(),
                tenant_id: caller.tenant.clone(),
                account_id: account.id.clone(),
                provider: account.provider,
                state: OnboardingState::AwaitingCustomer,
                desired_state: None,
                state_reason: "link minted; waiting for the business to sign up".into(),
                provider_status: link.provider_status.clone(),
                reference: reference.to_string(),
                details_json: details_text(&details.into())?,
                engine_json: String::new(),
                external_key: None,
                secret: None,
                sequence: 1,
                state_deadline_ms: None,
                expire_ms: link.expire_ms,
                created_ms: now,
                updated_ms: now,
            };
            let steps = self.new_onboarding_rows(&mut o, provider, &request, Some((&handle, &[STEP_MINT_LINK])))?;
            o.state = OnboardingState::AwaitingCustomer;
            prepared.push((o, steps));
        }
        let names: Vec<String> = std::iter::once(format!("batches/{batch}"))
            .chain(prepared.iter().map(|(o, _)| format!("onboardings/{}", o.id)))
            .collect();
        let last = prepared.len().saturating_sub(1);
        let mut batch_rows = Vec::with_capacity(prepared.len());
        let mut ids = Vec::with_capacity(prepared.len());
        for (i, (o, steps)) in prepared.into_iter().enumerate() {
            let idem = if i == last {
                self.idempotency_record(&caller.tenant, request_id, OP_LINKS, hash.clone(), names.join(","))
            } else {
                None
            };
            ids.push(o.id.clone());
            batch_rows.push(NewOnboarding {
                onboarding: o,
                steps,
                event: NewEvent::new(EventKind::Created, "hosted link minted")
                    .with_attributes(&serde_json::json!({"batch_id": batch, "reference": reference})),
                idempotency: idem,
            });
        }
        // One transaction: a crash (or a lost race on the request id) never leaves part of a
        // batch behind for a replay to duplicate.
        if let Err(e) = self.store.create_onboardings(&batch_rows).await {
            if matches!(e, crate::store::StoreError::AlreadyExists(_))
                && let Some(rid) = request_id
                && let Some(stored) = self.stored_batch(caller, rid, &hash).await?
            {
                return Ok(stored);
            }
            return Err(e.into());
        }
        let mut out = Vec::new();
        for id in &ids {
            out.push(self.get_onboarding(caller, id).await?);
        }
        self.wake_engine();
        tracing::info!(account = %account_id, count = out.len(), batch = %batch, "Hosted links minted.");
        Ok((out, batch))
    }

    /// Cancels an onboarding: records the intent, cancels at the provider, records
    /// `CANCELLED`. If the provider is unreachable the intent stays and the engine finishes
    /// the cancel later (`UNAVAILABLE` to the caller, who may retry). Returns the record and
    /// the refunded days; once cancelled, every later call (a retry) answers the days the
    /// cancellation refunded. With a `request_id`, concurrent calls carrying it wait for one
    /// cancel at the provider instead of racing it there (where the second finds nothing left
    /// to refund).
    pub async fn cancel_onboarding(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        request_id: Option<&str>,
    ) -> Result<(OnboardingView, u32), AppError> {
        let (o, days) = self.cancel_onboarding_row(caller, id, request_id).await?;
        Ok((OnboardingView::from(o), days))
    }

    /// [`Core::cancel_onboarding`], answering the stored row.
    async fn cancel_onboarding_row(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        request_id: Option<&str>,
    ) -> Result<(OnboardingRecord, u32), AppError> {
        let Some(rid) = request_id else { return self.cancel_onboarding_now(caller, id).await };
        let key = ClaimKey {
            tenant: &caller.tenant,
            key: format!("onboardings/{id}/cancel\n{rid}"),
            operation: OP_CANCEL,
            hash: id.as_str().as_bytes(),
        };
        let stored = || async {
            let o = self.get_onboarding(caller, id).await?;
            if o.state != OnboardingState::Cancelled {
                return Ok(None);
            }
            let days = self.refunded_on_cancel(&o).await?;
            Ok(Some((o, days)))
        };
        self.once_per_key(key, stored, || self.cancel_onboarding_now(caller, id)).await
    }

    /// The days the cancellation of `o` (already `CANCELLED`) refunded, as its event recorded
    /// them (the engine's or a `DeleteChannel`'s alike); 0 when it recorded none.
    async fn refunded_on_cancel(&self, o: &OnboardingRecord) -> Result<u32, AppError> {
        let mut days = 0;
        self.each_event(&o.id, |e| {
            if e.state == OnboardingState::Cancelled && e.previous_state != OnboardingState::Cancelled {
                let d: serde_json::Value = serde_json::from_str(&e.data_json).unwrap_or_default();
                days = match &d["refunded_days"] {
                    serde_json::Value::Number(n) => n.as_u64(),
                    serde_json::Value::String(s) => s.parse().ok(),
                    _ => None,
                }
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0);
            }
        })
        .await?;
        Ok(days)
    }

    /// [`Core::cancel_onboarding`] without a request claim.
    async fn cancel_onboarding_now(
        &self,
        caller: &Caller,
        id: &OnboardingId,
    ) -> Result<(OnboardingRecord, u32), AppError> {
        let o = self.get_onboarding(caller, id).await?;
        if o.state == OnboardingState::Cancelled {
            let days = self.refunded_on_cancel(&o).await?;
            return Ok((o, days));
        }
        if o.state.is_finished() {
            return Err(AppError::precondition(format!("onboardings/{id} is already finished ({})", o.state)));
        }
        let account = self
            .store
            .account_unscoped(&o.account_id)
            .await?
            .ok_or_else(|| AppError::precondition(format!("the account of onboardings/{id} was deleted")))?;
        let (provider, ctx) = self.provider_for(&account)?;
        if o.desired_state != Some(OnboardingState::Cancelled) {
            // Durable intent first, so a crash or provider outage cannot lose the cancel; the
            // waiting step is woken so the engine acts on it soon.
            let now = now_ms();
            let steps: Vec<StepRecord> = self
                .store
                .steps(id)
                .await?
                .into_iter()
                .filter(|s| s.state == StepState::Waiting)
                .map(|mut s| {
                    s.next_run_ms = Some(now);
                    s
                })
                .collect();
            let change = OnboardingChange {
                desired_state: Patch::Set(OnboardingState::Cancelled),
                steps,
                ..OnboardingChange::new(
                    id,
                    NewEvent::new(EventKind::CancelRequested, "cancel requested by the caller"),
                    now,
                )
            };
            self.store.apply_change(&change).await?;
        }
        let fresh = self.get_onboarding(caller, id).await?;
        match self.cancel_now(&fresh, &*provider, &ctx).await {
            Ok(days) => Ok((self.get_onboarding(caller, id).await?, days)),
            Err(e) if e.code == ErrorCode::FailedPrecondition || e.code == ErrorCode::InvalidArgument => {
                // The provider refuses (finished): drop the intent so the engine does not retry.
                let change = OnboardingChange {
                    desired_state: Patch::Clear,
                    ..OnboardingChange::new(id, NewEvent::new(EventKind::CancelRefused, e.message.clone()), now_ms())
                };
                self.store.apply_change(&change).await?;
                Err(e)
            }
            Err(e) => {
                self.wake_engine();
                Err(e)
            }
        }
    }

    /// Restarts a `STALLED` or `REAUTH_REQUIRED` onboarding at its first unfinished step.
    pub async fn retry_pipeline(&self, caller: &Caller, id: &OnboardingId) -> Result<OnboardingView, AppError> {
        let o = self.get_onboarding(caller, id).await?;
        if !matches!(o.state, OnboardingState::Stalled | OnboardingState::ReauthRequired) {
            return Err(AppError::precondition(format!(
                "onboardings/{id} is {}; only STALLED or REAUTH_REQUIRED pipelines can be retried",
                o.state
            )));
        }
        self.restart_pipeline(&o).await?;
        self.wake_engine();
        self.get_onboarding(caller, id).await.map(OnboardingView::from)
    }

    /// Hands a verification code to the waiting `verify_number` step and wakes it. The code
    /// is kept only in that step's private data, never in events.
    pub async fn submit_verification_code(
        &self,
        caller: &Caller,
        id: &OnboardingId,
        code: &str,
    ) -> Result<OnboardingView, AppError> {
        let o = self.get_onboarding(caller, id).await?;
        let account = self
            .store
            .account_unscoped(&o.account_id)
            .await?
            .ok_or_else(|| AppError::precondition(format!("the account of onboardings/{id} was deleted")))?;
        let (provider, _) = self.provider_for(&account)?;
        let verification = provider
            .verification()
            .ok_or_else(|| AppError::precondition(format!("{} onboardings take no verification code", o.provider)))?;
        verification.validate_code(code).map_err(|e| AppError::from((o.provider, e)))?;
        let Some(mut step) = self
            .store
            .steps(id)
            .await?
            .into_iter()
            .find(|s| s.name == STEP_VERIFY_NUMBER && matches!(s.state, StepState::Waiting | StepState::Ready))
        else {
            return Err(AppError::precondition(format!("onboardings/{id} is not waiting for a verification code")));
        };
        let now = now_ms();
        // The step's durable data (what reconciliation needs) is kept: a row that does not
        // parse is an error, not a reason to replace it with just the code.
        let mut data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&step.data_json)
            .map_err(|e| AppError::internal(format!("onboardings/{id} step {STEP_VERIFY_NUMBER} data: {e}")))?;
        data.insert("code".into(), code.into());
        step.data_json = serde_json::Value::Object(data).to_string();
        step.next_run_ms = Some(now);
        step.updated_ms = now;
        let attrs = BTreeMap::from([("code_length".to_string(), code.len().to_string())]);
        let change = OnboardingChange {
            expect_sequence: Some(o.sequence),
            steps: vec![step],
            ..OnboardingChange::new(
                id,
                NewEvent::new(EventKind::VerificationCodeSubmitted, "verification code submitted")
                    .at_step(STEP_VERIFY_NUMBER)
                    .with_attributes(&attrs),
                now,
            )
        };
        self.store.apply_change(&change).await.map_err(|e| match e {
            StoreError::Conflict(_) => AppError::new(ErrorCode::Aborted, "the onboarding changed meanwhile; retry"),
            other => other.into(),
        })?;
        self.wake_engine();
        self.get_onboarding(caller, id).await.map(OnboardingView::from)
    }
}
