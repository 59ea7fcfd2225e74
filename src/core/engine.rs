//! The pipeline engine (design §4, §5): runs each onboarding's steps as durable jobs.
//!
//! - A step is claimed under a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL), renewed while
//!   the adapter works; a crashed replica's lease lapses and any replica takes the step over.
//!   Adapters make every step safe to repeat (creates reconcile first), so a takeover never
//!   creates twice.
//! - Every state change is one `apply_change` transaction with its event (sequence, raw
//!   provider status); a poll that observed nothing new only reschedules its step.
//! - Retryable errors back off (exponential, jittered, honouring `Retry-After`) up to the
//!   step's attempt bound, then the onboarding is `STALLED`; rejected credentials give
//!   `REAUTH_REQUIRED`; other errors `FAILED`, each with the provider's raw code.
//! - A watchdog moves onboardings past their state deadline to `STALLED` and writes trial /
//!   link expiry warnings; `RetryPipeline` restarts a stalled pipeline.
//! - Webhook events stored by the ingress are applied by a worker of their own
//!   ([`super::callbacks`]), in batches, each event in the transaction that marks it
//!   processed; stale (out-of-order) events are recorded but move nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::Core;
use super::context::{ENGINE_KEY, stored_handle};
use crate::domain::{EventKind, OnboardingId, OnboardingState, Patch, StepState, UnixMs, now_ms};
use crate::error::AppError;
use crate::providers::{
    Progress, Provider, ProviderError, ProviderHandle, StartRequest, StepOutcome, StepRun, StepSpec,
};
use crate::store::{
    CreateIntent, EventRecord, NewEvent, OnboardingChange, OnboardingRecord, ResourceBinding, StepRecord, StoreError,
};

/// How many times a change is re-read and re-applied when a concurrent writer (a callback,
/// an RPC) moved the onboarding's sequence first.
pub(super) const CONFLICT_RETRIES: usize = 8;

/// `2026-11-21T10:00:00Z`.
fn rfc3339(ms: UnixMs) -> String {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: 0 }.to_string()
}

/// A remaining time as people say it: minutes under two hours, hours under two days.
fn humanize(d: Duration) -> String {
    let mins = d.as_secs() / 60;
    match mins {
        0..120 => format!("{mins} min"),
        120..2880 => format!("{} h", mins / 60),
        _ => format!("{} days", mins / 1440),
    }
}

/// Progress order of the main path; side states rank by where they usually occur.
pub(super) fn rank(s: OnboardingState) -> u8 {
    match s {
        OnboardingState::Pending => 0,
        OnboardingState::AwaitingCustomer => 1,
        OnboardingState::Provisioning | OnboardingState::PendingReview => 2,
        OnboardingState::Live => 3,
        _ => 0,
    }
}

/// Serialises a JSON value to text (never fails for `Value`).
fn json(v: &serde_json::Value) -> String {
    v.to_string()
}

pub(super) fn details_map(o: &OnboardingRecord) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(&o.details_json) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

pub(super) fn engine_field(details: &serde_json::Map<String, serde_json::Value>, key: &str) -> serde_json::Value {
    details.get(ENGINE_KEY).and_then(|e| e.get(key)).cloned().unwrap_or(serde_json::Value::Null)
}

pub(super) fn set_engine_field(
    details: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    v: serde_json::Value,
) {
    let e = details.entry(ENGINE_KEY).or_insert_with(|| serde_json::json!({}));
    if !e.is_object() {
        *e = serde_json::json!({});
    }
    if let Some(m) = e.as_object_mut() {
        m.insert(key.to_string(), v);
    }
}

/// The step records for a new onboarding: the first enabled step not in `done` is `READY`
/// now; disabled ones are `SKIPPED`; steps in `done` (e.g. a batch-minted link) start
/// `SUCCEEDED`.
pub fn initial_steps(id: &OnboardingId, specs: &[StepSpec], done: &[&str], now: UnixMs) -> Vec<StepRecord> {
    let mut first = true;
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut r = blank_step(id, spec, i, now);
            if !spec.enabled {
                r.state = StepState::Skipped;
            } else if done.contains(&spec.name) {
                r.state = StepState::Succeeded;
                r.started_ms = Some(now);
                r.finished_ms = Some(now);
            } else if first {
                first = false;
                r.state = StepState::Ready;
                r.next_run_ms = Some(now);
                r.deadline_ms = Some(now.saturating_add(spec.deadline.as_millis() as i64));
            }
            r
        })
        .collect()
}

fn blank_step(id: &OnboardingId, spec: &StepSpec, position: usize, now: UnixMs) -> StepRecord {
    StepRecord {
        onboarding_id: id.clone(),
        name: spec.name.to_string(),
        position: position as i32,
        state: StepState::Pending,
        attempts: 0,
        max_attempts: spec.max_attempts as i32,
        next_run_ms: None,
        lease_owner: None,
        lease_until_ms: None,
        last_error: None,
        last_error_code: None,
        provider_stage_json: "{}".into(),
        data_json: "{}".into(),
        deadline_ms: None,
        started_ms: None,
        finished_ms: None,
        created_ms: now,
        updated_ms: now,
    }
}

/// The first deadline of a new onboarding: its first runnable step's.
pub fn first_deadline(steps: &[StepRecord]) -> Option<UnixMs> {
    steps.iter().find(|s| s.state == StepState::Ready).and_then(|s| s.deadline_ms)
}

/// Logs a change the engine wrote.
pub(super) fn log_change(ev: &EventRecord) {
    tracing::info!(
        onboarding = %ev.onboarding_id,
        sequence = ev.sequence,
        kind = %ev.kind,
        state = %ev.state,
        previous = %ev.previous_state,
        step = ev.step.as_deref().unwrap_or(""),
        "Onboarding changed."
    );
}

/// What to do with a finished step run, decided before touching the store.
enum RunResult {
    Outcome(StepOutcome),
    Error(ProviderError),
}

impl Core {
    pub(super) fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.engine.lease_secs)
    }

    /// Wakes this replica's engine (new work was just written).
    pub fn wake_engine(&self) {
        self.engine_wake.notify_one();
    }

    /// Runs the engine until `shutdown` flips: step worker, webhook worker and watchdog.
    pub async fn run_engine(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        // Its own task: step claims, the watchdog and expiry passes never delay a callback.
        let webhooks = tokio::spawn(self.clone().run_webhook_worker(shutdown.clone()));
        let tick = Duration::from_millis(self.settings.engine.tick_ms);
        let permits = Arc::new(Semaphore::new(self.settings.engine.concurrency));
        let mut last_watchdog = tokio::time::Instant::now();
        let mut store_down_logged = false;
        tracing::info!(worker = %self.worker_id, "Pipeline engine started.");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut busy = false;
            match self.claim_and_spawn(&permits).await {
                Ok(n) => {
                    busy |= n > 0;
                    store_down_logged = false;
                }
                Err(e) => {
                    if !store_down_logged {
                        tracing::warn!(error = %e.message, "Engine cannot claim steps; retrying.");
                        store_down_logged = true;
                    }
                }
            }
            if last_watchdog.elapsed() >= tick * 2 {
                last_watchdog = tokio::time::Instant::now();
                if let Err(e) = self.watchdog_tick(now_ms()).await {
                    tracing::debug!(error = %e.message, "Watchdog pass failed.");
                }
                if let Err(e) = self.expiry_tick(now_ms()).await {
                    tracing::debug!(error = %e.message, "Expiry warning pass failed.");
                }
            }
            if busy {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = self.engine_wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Let running steps finish (bounded by their own HTTP timeouts) so leases are released.
        let _ = tokio::time::timeout(
            Duration::from_secs(self.settings.server.shutdown_grace_secs),
            permits.acquire_many(self.settings.engine.concurrency as u32),
        )
        .await;
        let _ = webhooks.await;
        tracing::info!("Pipeline engine stopped.");
    }

    /// Claims what this replica has room for and runs each step on its own task.
    async fn claim_and_spawn(&self, permits: &Arc<Semaphore>) -> Result<usize, AppError> {
        let room = permits.available_permits();
        if room == 0 {
            return Ok(0);
        }
        let steps = self.store.claim_steps(&self.worker_id, now_ms(), self.lease(), room as u32).await?;
        let n = steps.len();
        for step in steps {
            let Ok(permit) = Arc::clone(permits).acquire_owned().await else { break };
            let core = self.clone();
            tokio::spawn(async move {
                let (id, name) = (step.onboarding_id.clone(), step.name.clone());
                let span =
                    tracing::info_span!("step", onboarding = %id, step = %name, provider = tracing::field::Empty);
                if let Err(e) = core.process_step(step).instrument(span).await {
                    tracing::warn!(onboarding = %id, step = %name, error = %e.message, "Step processing failed; its lease will lapse and it will be retried.");
                }
                drop(permit);
            });
        }
        Ok(n)
    }

    /// Runs one claimed step and records what happened.
    pub(crate) async fn process_step(&self, step: StepRecord) -> Result<(), AppError> {
        let Some(o) = self.store.onboarding_unscoped(&step.onboarding_id).await? else {
            return Ok(());
        };
        tracing::Span::current().record("provider", tracing::field::display(o.provider));
        if o.state.is_terminal() {
            return self.finish_orphan_step(step, StepState::Skipped, "the onboarding is already finished").await;
        }
        let Some(account) = self.store.account_unscoped(&o.account_id).await? else {
            return self
                .fail_onboarding(&o, Some(&step.name), OnboardingState::Failed, "its account was deleted", "", None)
                .await;
        };
        // A replica that cannot decrypt (wrong key) or lacks the adapter must not fail the
        // onboarding for everyone: the error leaves the lease to lapse, so a healthy replica
        // (or this one, fixed) takes the step; the watchdog bounds how long that can last.
        let (provider, ctx) = self.provider_for(&account)?;
        let request = self.open_request(&o)?;
        if o.desired_state == Some(OnboardingState::Cancelled) {
            return self.cancel_now(&o, &*provider, &ctx).await.map(|_| ());
        }
        let specs = provider.pipeline(&request);
        let Some(spec) = specs.iter().find(|s| s.name == step.name).cloned() else {
            let reason = format!("{} has no step '{}' any more", provider.kind(), step.name);
            return self.fail_onboarding(&o, Some(&step.name), OnboardingState::Failed, &reason, "", None).await;
        };
        let details = details_map(&o);
        let handle = stored_handle(&o);
        let run = StepRun {
            name: step.name.clone(),
            onboarding_id: o.id.clone(),
            request: request.clone(),
            handle,
            secret: self.onboarding_secret(&o)?,
            data: serde_json::from_str(&step.data_json).unwrap_or_else(|_| serde_json::json!({})),
            attempt: step.attempts.max(1) as u32,
            state: o.state,
            details: details.clone(),
        };
        // A create the provider may later report as existing to anyone: on record before the
        // call, so a later "already exists" can be told apart as our own lost attempt.
        let intent = match provider.create_scope(&ctx, &run) {
            Some(scope) => {
                let intent = CreateIntent {
                    onboarding_id: o.id.clone(),
                    step: step.name.clone(),
                    scope: hex::encode(self.fingerprint(&[b"create-scope", scope.identity.as_bytes()])),
                    subject: scope.subject,
                    at_ms: now_ms(),
                };
                let earlier_pending = self.store.begin_create_intent(&intent).await?;
                Some((intent, earlier_pending))
            }
            None => None,
        };
        let mut result = self.run_with_lease(&*provider, &ctx, &run).await;
        // Someone else took the step over (our lease lapsed): their result wins.
        let until = now_ms().saturating_add(self.lease().as_millis() as i64);
        if !self.store.renew_lease(&o.id, &step.name, &self.worker_id, until).await? {
            tracing::warn!(onboarding = %o.id, step = %step.name, "Lease lost while the step ran; dropping its result.");
            return Ok(());
        }
        if let Some((intent, earlier_pending)) = &intent {
            result = self.judge_create(intent, *earlier_pending, result).await?;
        }
        for _ in 0..CONFLICT_RETRIES {
            let Some(fresh) = self.store.onboarding_unscoped(&o.id).await? else { return Ok(()) };
            let steps = self.store.steps(&o.id).await?;
            let Some(current) = steps.iter().find(|s| s.name == step.name).cloned() else { return Ok(()) };
            let applied = match &result {
                RunResult::Outcome(out) => {
                    self.apply_outcome(&fresh, &current, &steps, &specs, &*provider, out.clone()).await
                }
                RunResult::Error(e) => self.apply_error(&fresh, &current, &spec, provider.kind(), e).await,
            };
            match applied {
                Err(AppError { code: crate::error::ErrorCode::Aborted, .. }) => continue,
                other => return other,
            }
        }
        Err(AppError::unavailable(format!("onboardings/{}: too many concurrent changes", o.id)))
    }

    /// Decides what a recorded create call produced may be this onboarding's, and binds it.
    ///
    /// A resource the call created is bound to this onboarding. One it found (Gupshup's 409
    /// names the phone's app to anyone who asks) is handed over only when it is provably ours:
    /// already bound to this onboarding, or bound to none while an earlier call of ours is the
    /// only pending one for the subject (its answer was lost after it created). Anything else
    /// (bound to another onboarding of any tenant, created outside the service, or two lost
    /// attempts that could both have made it) is refused as a conflict, naming no owner, and
    /// the adapter never gets to touch it. The bind is one unique key, so racing onboardings
    /// cannot both win.
    async fn judge_create(
        &self,
        intent: &CreateIntent,
        earlier_pending: bool,
        result: RunResult,
    ) -> Result<RunResult, AppError> {
        let id = &intent.onboarding_id;
        let out = match result {
            RunResult::Outcome(out) => out,
            RunResult::Error(e) => {
                // Sent and maybe acted on: stays pending. Certainly not created (refused, or
                // never sent): pending only if an earlier call still is.
                let maybe_created = matches!(e, ProviderError::UnknownOutcome { .. } | ProviderError::Retryable { .. });
                if !maybe_created && !earlier_pending {
                    self.store.resolve_create_intent(id, &intent.step).await?;
                }
                return Ok(RunResult::Error(e));
            }
        };
        let Some(handle) = &out.handle else {
            self.store.resolve_create_intent(id, &intent.step).await?;
            return Ok(RunResult::Outcome(out));
        };
        let resource = handle.external_key.clone();
        let holder = self.store.resource_binding(&intent.scope, &resource).await?;
        let mut ours = match &holder {
            Some(h) => h == id,
            None if !out.found => true,
            None => {
                let others = self.store.pending_create_intents(&intent.scope, &intent.subject).await?;
                earlier_pending && others.iter().all(|o| o == id)
            }
        };
        if ours && holder.is_none() {
            let binding = ResourceBinding {
                scope: intent.scope.clone(),
                resource,
                onboarding_id: id.clone(),
                created_ms: now_ms(),
            };
            ours = self.store.bind_resource(&binding).await? == *id;
        }
        self.store.resolve_create_intent(id, &intent.step).await?;
        if ours {
            return Ok(RunResult::Outcome(out));
        }
        tracing::warn!(onboarding = %id, step = %intent.step, "Refused a provider resource that is not this onboarding's.");
        Ok(RunResult::Error(ProviderError::Conflict {
            raw: "409".into(),
            message: "the app for this phone already exists and belongs to another onboarding".into(),
        }))
    }

    /// Calls the adapter while a background task keeps the lease alive.
    async fn run_with_lease(
        &self,
        provider: &dyn Provider,
        ctx: &crate::providers::CallContext,
        run: &StepRun,
    ) -> RunResult {
        let lease = self.lease();
        let (store, id, name, worker) =
            (self.store.clone(), run.onboarding_id.clone(), run.name.clone(), self.worker_id.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let until = now_ms().saturating_add(lease.as_millis() as i64);
                match store.renew_lease(&id, &name, &worker, until).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => tracing::debug!(error = %e, "Lease renewal failed; retrying."),
                }
            }
        });
        let started = std::time::Instant::now();
        let r = provider.run_step(ctx, run).await;
        crate::telemetry::metrics::step_run(provider.kind(), &run.name, r.is_ok(), started.elapsed());
        renewer.abort();
        match r {
            Ok(o) => RunResult::Outcome(o),
            Err(e) => RunResult::Error(e),
        }
    }

    /// Records a step's successful run. Returns `Aborted` on a sequence conflict (re-read
    /// and retry).
    #[allow(clippy::too_many_arguments)]
    async fn apply_outcome(
        &self,
        o: &OnboardingRecord,
        current: &StepRecord,
        steps: &[StepRecord],
        specs: &[StepSpec],
        provider: &dyn Provider,
        out: StepOutcome,
    ) -> Result<(), AppError> {
        let now = now_ms();
        let obs = &out.observation;
        let mut details = details_map(o);
        let old_details = details.clone();
        for (k, v) in &out.details {
            if !k.starts_with('_') {
                details.insert(k.clone(), v.clone());
            }
        }
        if !obs.fields.is_empty() {
            details.insert("provider_fields".into(), serde_json::to_value(&obs.fields).unwrap_or_default());
        }
        let mut change = OnboardingChange {
            expect_sequence: Some(o.sequence),
            ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), now)
        };
        if let Some(h) = &out.handle {
            set_engine_field(&mut details, "handle", serde_json::to_value(h).unwrap_or_default());
            change.external_key = Some(h.external_key.clone());
        }
        if let Some(s) = &out.secret {
            change.secret = Some(self.seal_onboarding_secret(&o.id, s)?);
        }
        if let Some(e) = out.expire_ms {
            change.expire_ms = Patch::Set(e);
        }
        let mut state = o.state;
        let mut reason = o.state_reason.clone();
        // A poll that lags behind a live event must not undo it: a step's observation never
        // moves LIVE back to an earlier waiting state (callbacks, which are ordered by the
        // provider's own timestamps, still can: a logout does).
        let lagging = o.state == OnboardingState::Live && obs.state.is_some_and(|s| !s.is_terminal() && rank(s) < 3);
        if let Some(s) = obs.state
            && s != o.state
            && o.state.can_transition(s)
            && !lagging
        {
            state = s;
            reason = if obs.reason.is_empty() {
                format!("{} reported {}", provider.kind(), obs.raw_status)
            } else {
                obs.reason.clone()
            };
        }
        let mut step = current.clone();
        step.lease_owner = None;
        step.lease_until_ms = None;
        step.updated_ms = now;
        step.last_error = None;
        step.last_error_code = None;
        if !obs.fields.is_empty() {
            step.provider_stage_json = serde_json::to_string(&obs.fields).unwrap_or_else(|_| "{}".into());
        }
        if let Some(d) = &out.data {
            step.data_json = json(d);
        }
        let mut changed_steps = Vec::new();
        let kind;
        match out.progress {
            Progress::Wait(after) if !state.is_terminal() => {
                step.state = StepState::Waiting;
                // A found resource just bound continues the same attempt (its second half
                // finishes the step); a poll that waits starts the count afresh.
                if !out.found {
                    step.attempts = 0;
                }
                step.next_run_ms = Some(now.saturating_add(after.as_millis() as i64));
                let quiet = state == o.state
                    && obs.raw_status == o.provider_status
                    && details == old_details
                    && out.handle.is_none()
                    && out.secret.is_none()
                    && out.expire_ms.is_none_or(|e| Some(e) == o.expire_ms)
                    && step.provider_stage_json == current.provider_stage_json;
                if quiet {
                    // Nothing observable changed: reschedule without an event.
                    self.store.release_step(&step, &self.worker_id).await?;
                    return Ok(());
                }
                kind = EventKind::or_state_change(EventKind::ProviderStatus, o.state, state);
                changed_steps.push(step);
            }
            _ => {
                step.state = if state == OnboardingState::Failed { StepState::Failed } else { StepState::Succeeded };
                step.next_run_ms = None;
                step.finished_ms = Some(now);
                changed_steps.push(step);
                if state.is_terminal() {
                    changed_steps.extend(skip_rest(steps, &current.name, now));
                    change.state_deadline_ms = Patch::Clear;
                    kind = EventKind::StateChanged;
                } else if let Some(next) = next_step(steps, specs, &current.name) {
                    let mut n = steps.iter().find(|s| s.name == next.name).cloned().unwrap_or_else(|| {
                        blank_step(&o.id, next, specs.iter().position(|s| s.name == next.name).unwrap_or(0), now)
                    });
                    n.state = StepState::Ready;
                    n.attempts = 0;
                    n.next_run_ms = Some(now);
                    let deadline = now.saturating_add(next.deadline.as_millis() as i64);
                    n.deadline_ms = Some(deadline);
                    n.updated_ms = now;
                    changed_steps.push(n);
                    if let Some(enter) = next.enter_state
                        && enter != state
                        && rank(enter) >= rank(state)
                        && state != OnboardingState::Live
                        && state.can_transition(enter)
                    {
                        state = enter;
                        reason = format!("step {} started", next.name);
                    }
                    change.state_deadline_ms =
                        if state == OnboardingState::Live { Patch::Clear } else { Patch::Set(deadline) };
                    kind = EventKind::or_state_change(EventKind::StepSucceeded, o.state, state);
                } else {
                    // Pipeline complete.
                    change.state_deadline_ms = Patch::Clear;
                    kind = EventKind::or_state_change(EventKind::PipelineCompleted, o.state, state);
                }
            }
        }
        let mut attrs: BTreeMap<String, String> = out.attributes.clone();
        attrs.insert("step_state".into(), changed_steps[0].state.as_str().into());
        if state != o.state {
            change.state = Some(state);
            change.state_reason = Some(reason.clone());
        }
        if !obs.raw_status.is_empty() {
            change.provider_status = Some(obs.raw_status.clone());
        }
        change.details_json = Some(serde_json::Value::Object(details).to_string());
        change.steps = changed_steps;
        change.event = NewEvent::new(kind, if state != o.state { reason } else { obs.reason.clone() })
            .at_step(current.name.clone())
            .with_attributes(&attrs);
        self.apply(change).await
    }

    /// Records a failed step run: retry later, or end in the state the error calls for.
    async fn apply_error(
        &self,
        o: &OnboardingRecord,
        current: &StepRecord,
        spec: &StepSpec,
        kind: crate::domain::ProviderKind,
        e: &ProviderError,
    ) -> Result<(), AppError> {
        let now = now_ms();
        let raw = e.raw().to_string();
        let message = e.to_string();
        let mut step = current.clone();
        step.lease_owner = None;
        step.lease_until_ms = None;
        step.updated_ms = now;
        step.last_error = Some(message.clone());
        step.last_error_code = Some(raw.clone());
        let attempts = current.attempts.max(1) as u32;
        // Waiting for our own rate-limit slot sent nothing: not an attempt, however long the
        // queue (Whapi allows 20 channels per 30 min).
        let queued = matches!(e, ProviderError::RateLimited { raw, .. } if raw == crate::providers::http::QUEUED);
        if queued {
            step.attempts = current.attempts.saturating_sub(1);
        }
        let mut change = OnboardingChange {
            expect_sequence: Some(o.sequence),
            ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), now)
        };
        let mut attrs =
            BTreeMap::from([("error_code".to_string(), raw.clone()), ("attempt".to_string(), attempts.to_string())]);
        if e.is_retryable() && (queued || attempts < spec.max_attempts) {
            let delay = match e {
                ProviderError::RateLimited { retry_after: Some(d), .. } => *d,
                _ => self.backoff(attempts),
            };
            step.state = StepState::Ready;
            step.next_run_ms = Some(now.saturating_add(delay.as_millis() as i64));
            attrs.insert("retry_in_ms".into(), delay.as_millis().to_string());
            change.steps = vec![step];
            change.event = NewEvent::new(EventKind::StepRetry, format!("{message}; retrying"))
                .at_step(current.name.clone())
                .with_attributes(&attrs);
            return self.apply(change).await;
        }
        let (state, step_state, why) = match e {
            ProviderError::Unauthenticated { .. } => (
                OnboardingState::ReauthRequired,
                StepState::Stalled,
                format!("{kind} rejected the account's credentials; update the account, then RetryPipeline"),
            ),
            // Issue 17 point 15: the same fix (new credentials), with the adapter's reason.
            ProviderError::CredentialExpired { message, .. } => {
                (OnboardingState::ReauthRequired, StepState::Stalled, format!("{kind}: {message}, then RetryPipeline"))
            }
            _ if e.is_retryable() => (
                OnboardingState::Stalled,
                StepState::Stalled,
                format!("step {} gave up after {attempts} attempts: {message}", current.name),
            ),
            _ => (OnboardingState::Failed, StepState::Failed, format!("step {} failed: {message}", current.name)),
        };
        step.state = step_state;
        step.next_run_ms = None;
        step.finished_ms = Some(now);
        self.end_in(o, change, vec![step], state, &why, &raw, Some(&current.name), attrs).await
    }

    /// Moves an onboarding to a stopping state (`FAILED`, `STALLED`, `REAUTH_REQUIRED`...)
    /// with the given step rows; later steps of a terminal state are skipped.
    #[allow(clippy::too_many_arguments)]
    async fn end_in(
        &self,
        o: &OnboardingRecord,
        mut change: OnboardingChange,
        mut steps: Vec<StepRecord>,
        state: OnboardingState,
        why: &str,
        raw: &str,
        step: Option<&str>,
        attrs: BTreeMap<String, String>,
    ) -> Result<(), AppError> {
        if !o.state.can_transition(state) {
            return Ok(());
        }
        if state.is_terminal()
            && let Some(name) = step
        {
            let all = self.store.steps(&o.id).await?;
            steps.extend(skip_rest(&all, name, change.at_ms));
        }
        if matches!(state, OnboardingState::Stalled | OnboardingState::ReauthRequired) {
            let mut details = details_map(o);
            set_engine_field(&mut details, "stalled_from", serde_json::json!(o.state.as_str()));
            change.details_json = Some(serde_json::Value::Object(details).to_string());
        }
        change.state = Some(state);
        change.state_reason = Some(why.to_string());
        change.state_deadline_ms = Patch::Clear;
        change.steps = steps;
        if !raw.is_empty() {
            change.provider_status = Some(raw.to_string());
        }
        change.event = NewEvent::new(EventKind::StateChanged, why.to_string())
            .at_opt_step(step.map(str::to_string))
            .with_attributes(&attrs);
        self.apply(change).await
    }

    async fn fail_onboarding(
        &self,
        o: &OnboardingRecord,
        step: Option<&str>,
        state: OnboardingState,
        why: &str,
        raw: &str,
        webhook: Option<&str>,
    ) -> Result<(), AppError> {
        let now = now_ms();
        let mut rows = Vec::new();
        if let Some(name) = step
            && let Some(mut s) = self.store.steps(&o.id).await?.into_iter().find(|s| s.name == name)
        {
            s.state = StepState::Failed;
            s.lease_owner = None;
            s.lease_until_ms = None;
            s.finished_ms = Some(now);
            s.last_error = Some(why.to_string());
            s.updated_ms = now;
            rows.push(s);
        }
        let change = OnboardingChange {
            webhook_event_id: webhook.map(str::to_string),
            ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), now)
        };
        self.end_in(o, change, rows, state, why, raw, step, BTreeMap::new()).await
    }

    async fn finish_orphan_step(&self, mut step: StepRecord, state: StepState, why: &str) -> Result<(), AppError> {
        let now = now_ms();
        step.state = state;
        step.lease_owner = None;
        step.lease_until_ms = None;
        step.finished_ms = Some(now);
        step.last_error = Some(why.to_string());
        step.updated_ms = now;
        self.store.release_step(&step, &self.worker_id).await?;
        Ok(())
    }

    /// Exponential backoff with full jitter, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.engine.retry_base_ms;
        let cap = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20)).min(self.settings.engine.retry_max_ms);
        Duration::from_millis(rand::rng().random_range(cap / 2..=cap.max(1)))
    }

    /// Applies a change; a stale sequence becomes `Aborted` so callers re-read and retry.
    pub(crate) async fn apply(&self, change: OnboardingChange) -> Result<(), AppError> {
        match self.store.apply_change(&change).await {
            Ok(ev) => {
                log_change(&ev);
                if ev.kind.wakes_engine() {
                    self.wake_engine();
                }
                Ok(())
            }
            Err(StoreError::Conflict(m)) => Err(AppError::new(crate::error::ErrorCode::Aborted, m)),
            Err(e) => Err(e.into()),
        }
    }

    // ----- cancel and retry -----

    /// Cancels at the provider (when there is something to cancel) and records `CANCELLED`.
    /// Returns the refunded days.
    pub(crate) async fn cancel_now(
        &self,
        o: &OnboardingRecord,
        provider: &dyn Provider,
        ctx: &crate::providers::CallContext,
    ) -> Result<u32, AppError> {
        let handle = stored_handle(o);
        let mut refunded = 0;
        let mut raw = String::new();
        if let Some(h) = &handle
            && provider.capabilities().contains(&crate::domain::Capability::Cancel)
        {
            match provider.cancel(ctx, h).await {
                Ok(c) => {
                    refunded = c.refunded_days;
                    raw = c.raw_status;
                }
                Err(ProviderError::NotFound { .. }) => raw = "NOT_FOUND".into(),
                Err(e) => return Err((provider.kind(), e).into()),
            }
        }
        let now = now_ms();
        let rows = skip_unfinished(self.store.steps(&o.id).await?, now);
        let attrs = BTreeMap::from([("refunded_days".to_string(), refunded.to_string())]);
        let change = OnboardingChange {
            state: Some(OnboardingState::Cancelled),
            desired_state: Patch::Clear,
            state_reason: Some("cancelled by the caller".into()),
            provider_status: (!raw.is_empty()).then_some(raw),
            state_deadline_ms: Patch::Clear,
            steps: rows,
            ..OnboardingChange::new(
                &o.id,
                NewEvent::new(EventKind::StateChanged, "cancelled by the caller").with_attributes(&attrs),
                now,
            )
        };
        self.store.apply_change(&change).await?;
        Ok(refunded)
    }

    /// Restarts a stalled (or re-auth) pipeline at its first unfinished step.
    pub(crate) async fn restart_pipeline(&self, o: &OnboardingRecord) -> Result<(), AppError> {
        let account = self
            .store
            .account_unscoped(&o.account_id)
            .await?
            .ok_or_else(|| AppError::precondition(format!("the account of onboardings/{} was deleted", o.id)))?;
        let (provider, _) = self.provider_for(&account)?;
        let request = self.open_request(o)?;
        let specs = provider.pipeline(&request);
        let steps = self.store.steps(&o.id).await?;
        let now = now_ms();
        let Some(first) = steps.iter().find(|s| !s.state.is_done()).cloned() else {
            return Err(AppError::precondition(format!("onboardings/{} has no unfinished step to retry", o.id)));
        };
        let spec = specs.iter().find(|s| s.name == first.name);
        let deadline = now.saturating_add(spec.map_or(600_000, |s| s.deadline.as_millis() as i64));
        let mut s = first.clone();
        s.state = StepState::Ready;
        s.attempts = 0;
        s.next_run_ms = Some(now);
        s.lease_owner = None;
        s.lease_until_ms = None;
        s.finished_ms = None;
        s.deadline_ms = Some(deadline);
        s.updated_ms = now;
        let details = details_map(o);
        let back_to = engine_field(&details, "stalled_from")
            .as_str()
            .and_then(|v| v.parse::<OnboardingState>().ok())
            .filter(|st| !st.is_terminal() && *st != OnboardingState::Stalled && *st != OnboardingState::ReauthRequired)
            .or(spec.and_then(|s| s.enter_state))
            .unwrap_or(OnboardingState::Pending);
        let change = OnboardingChange {
            expect_sequence: Some(o.sequence),
            state: Some(back_to),
            state_reason: Some(format!("pipeline restarted at step {}", first.name)),
            state_deadline_ms: Patch::Set(deadline),
            steps: vec![s],
            ..OnboardingChange::new(
                &o.id,
                NewEvent::new(EventKind::PipelineRestarted, format!("RetryPipeline restarted step {}", first.name))
                    .at_step(first.name.clone()),
                now,
            )
        };
        self.apply(change).await.map_err(|e| {
            if e.code == crate::error::ErrorCode::Aborted {
                AppError::new(crate::error::ErrorCode::Aborted, "the onboarding changed meanwhile; retry")
            } else {
                e
            }
        })
    }

    // ----- watchdog -----

    /// Stalls onboardings past their state deadline (one watchdog pass at `now`).
    pub async fn watchdog_tick(&self, now: UnixMs) -> Result<usize, AppError> {
        let overdue = self.store.overdue_onboardings(now, 100).await?;
        let mut n = 0;
        for o in overdue {
            if o.state.is_terminal() || matches!(o.state, OnboardingState::Stalled | OnboardingState::ReauthRequired) {
                continue;
            }
            let steps = self.store.steps(&o.id).await?;
            let stuck = steps.iter().find(|s| !s.state.is_done()).cloned();
            let rows: Vec<StepRecord> = stuck.iter().map(|s| parked(s.clone(), StepState::Stalled, now)).collect();
            let step = stuck.as_ref().map(|s| s.name.clone());
            let why = format!(
                "no progress in state {} before its deadline{}; RetryPipeline restarts it",
                o.state,
                step.as_deref().map(|s| format!(" (step {s})")).unwrap_or_default()
            );
            let change = OnboardingChange {
                expect_sequence: Some(o.sequence),
                ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), now)
            };
            match self
                .end_in(&o, change, rows, OnboardingState::Stalled, &why, "", step.as_deref(), BTreeMap::new())
                .await
            {
                Ok(()) => n += 1,
                Err(e) if e.code == crate::error::ErrorCode::Aborted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Announces expiries before they happen: an `expiry_warning` event (state unchanged, so
    /// every stream shows it) when an onboarding's `expire_time` comes within one of the
    /// configured `engine.expiry_warnings_secs`. Once per threshold and expiry: a new expiry
    /// (a channel extended) re-arms them. Thresholds at least as long as the whole lifetime
    /// are skipped (a 24 h link gets no "24 h left" warning at birth), and when several are
    /// crossed at once only the smallest is announced.
    pub async fn expiry_tick(&self, now: UnixMs) -> Result<usize, AppError> {
        let mut thresholds = self.settings.engine.expiry_warnings_secs.clone();
        thresholds.sort_unstable();
        thresholds.dedup();
        let mut n = 0;
        for threshold in thresholds {
            let threshold = i64::try_from(threshold).unwrap_or(i64::MAX);
            for o in self.store.expiring_onboardings(now, threshold, 100).await? {
                let Some(expire) = o.expire_ms else { continue };
                let left = Duration::from_millis(u64::try_from(expire - now).unwrap_or(0));
                let at = rfc3339(expire);
                let data = serde_json::json!({
                    "expire_time": at,
                    "remaining_secs": left.as_secs().to_string(),
                    "threshold_secs": threshold.to_string(),
                });
                let change = OnboardingChange {
                    expect_sequence: Some(o.sequence),
                    expiry_warned_secs: Some(threshold),
                    ..OnboardingChange::new(
                        &o.id,
                        NewEvent::new(EventKind::ExpiryWarning, format!("expires in {} (at {at})", humanize(left)))
                            .with_attributes(&data),
                        now,
                    )
                };
                match self.apply(change).await {
                    Ok(()) => n += 1,
                    // Changed meanwhile: the next pass sees it again if it is still due.
                    Err(e) if e.code == crate::error::ErrorCode::Aborted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    /// Creates the onboarding rows for a start request: steps from the adapter's pipeline,
    /// the sealed request, and the first event; the engine is woken to run the first step.
    pub(crate) fn new_onboarding_rows(
        &self,
        o: &mut OnboardingRecord,
        provider: &dyn Provider,
        request: &StartRequest,
        preset: Option<(&ProviderHandle, &[&str])>,
    ) -> Result<Vec<StepRecord>, AppError> {
        let specs = provider.pipeline(request);
        let done: &[&str] = preset.map(|(_, d)| d).unwrap_or(&[]);
        let steps = initial_steps(&o.id, &specs, done, o.created_ms);
        let mut details = details_map(o);
        set_engine_field(&mut details, "request", self.seal_request(&o.id, request)?);
        if let Some((h, _)) = preset {
            set_engine_field(&mut details, "handle", serde_json::to_value(h).unwrap_or_default());
            o.external_key = Some(h.external_key.clone());
        }
        o.details_json = serde_json::Value::Object(details).to_string();
        o.state_deadline_ms = first_deadline(&steps);
        if let Some(first) = steps.iter().find(|s| s.state == StepState::Ready)
            && let Some(spec) = specs.iter().find(|s| s.name == first.name)
            && let Some(enter) = spec.enter_state
        {
            o.state = enter;
        }
        Ok(steps)
    }
}

/// The next enabled step after `name` that is not done.
fn next_step<'a>(steps: &[StepRecord], specs: &'a [StepSpec], name: &str) -> Option<&'a StepSpec> {
    let pos = specs.iter().position(|s| s.name == name)?;
    specs[pos + 1..]
        .iter()
        .find(|spec| spec.enabled && steps.iter().find(|s| s.name == spec.name).is_none_or(|s| !s.state.is_done()))
}

/// `s` stopped in `state` at `now`: no longer due, no longer leased.
pub(crate) fn parked(mut s: StepRecord, state: StepState, now: UnixMs) -> StepRecord {
    s.state = state;
    s.next_run_ms = None;
    s.lease_owner = None;
    s.lease_until_ms = None;
    s.updated_ms = now;
    s
}

/// Every step not done yet, marked skipped (the onboarding ended).
pub(crate) fn skip_unfinished(steps: Vec<StepRecord>, now: UnixMs) -> Vec<StepRecord> {
    steps.into_iter().filter(|s| !s.state.is_done()).map(|s| parked(s, StepState::Skipped, now)).collect()
}

/// Every step after `name` that is not done, marked skipped.
fn skip_rest(steps: &[StepRecord], name: &str, now: UnixMs) -> Vec<StepRecord> {
    let pos = steps.iter().find(|s| s.name == name).map_or(-1, |s| s.position);
    skip_unfinished(steps.iter().filter(|s| s.position > pos).cloned().collect(), now)
}
