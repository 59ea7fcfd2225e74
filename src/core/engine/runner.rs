//! The step runner: claims nothing itself ([`super`] does), runs one claimed step through its
//! adapter under a renewed lease, judges what a create call found, then reads fresh rows, asks
//! the pure planner ([`super::plan`]) what to write and performs that plan.

use std::collections::BTreeMap;

use rand::Rng;

use super::plan::{self, Backoff, Ran, StepPlan, StepResult, Stop};
use crate::core::Core;
use crate::core::context::engine_state;
use crate::core::pipeline_rows::{CONFLICT_RETRIES, details_of, log_change};
use crate::domain::{EventKind, OnboardingState, StepState, now_ms};
use crate::error::{AppError, ErrorCode};
use crate::providers::{Provider, ProviderError, StepRun};
use crate::store::{
    CreateIntent, NewEvent, OnboardingChange, OnboardingRecord, ResourceBinding, StepRecord, StoreError,
};

/// What a finished adapter call came to, before the create judgement and sealing.
enum RunResult {
    // Boxed: an outcome with typed details is far larger than an error.
    Outcome(Box<crate::providers::StepOutcome>),
    Error(ProviderError),
}

impl Core {
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
        let engine = engine_state(&o)?;
        let request = self.open_request(&o, &engine)?;
        if o.desired_state == Some(OnboardingState::Cancelled) {
            return self.cancel_now(&o, &*provider, &ctx).await.map(|_| ());
        }
        let specs = provider.pipeline(&request);
        let Some(spec) = specs.iter().find(|s| s.name == step.name).cloned() else {
            let reason = format!("{} has no step '{}' any more", provider.kind(), step.name);
            return self.fail_onboarding(&o, Some(&step.name), OnboardingState::Failed, &reason, "", None).await;
        };
        // Step data carries marks such as "create sent at": running on an empty object
        // instead would repeat a create, so data that does not parse is an error like any
        // corrupt row: logged, retried when the lease lapses, ended by the state's watchdog.
        let data = serde_json::from_str(&step.data_json).map_err(|e| {
            AppError::internal(format!("onboardings/{} step {}: stored step data does not parse: {e}", o.id, step.name))
        })?;
        let run = StepRun {
            name: step.name.clone(),
            onboarding_id: o.id.clone(),
            request: request.clone(),
            handle: engine.handle.clone(),
            secret: self.onboarding_secret(&o)?,
            data,
            attempt: step.attempts.max(1) as u32,
            state: o.state,
            details: details_of(&o)?,
            was_stalled: engine.stalled_from.is_some(),
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
        let result = match result {
            RunResult::Outcome(outcome) => {
                let sealed = outcome.secret.as_ref().map(|s| self.seal_onboarding_secret(&o.id, s)).transpose()?;
                StepResult::Outcome { outcome, sealed }
            }
            RunResult::Error(e) => StepResult::Error(e),
        };
        for _ in 0..CONFLICT_RETRIES {
            let Some(fresh) = self.store.onboarding_unscoped(&o.id).await? else { return Ok(()) };
            let steps = self.store.steps(&o.id).await?;
            let Some(current) = steps.iter().find(|s| s.name == step.name) else { return Ok(()) };
            let (details, engine) = (details_of(&fresh)?, engine_state(&fresh)?);
            let ran = Ran {
                onboarding: &fresh,
                details: &details,
                engine: &engine,
                steps: &steps,
                current,
                specs: &specs,
                spec: &spec,
                provider: provider.kind(),
            };
            let decided = plan::plan(&ran, &result, &self.backoff(), now_ms());
            match self.perform(decided).await {
                Err(AppError { code: ErrorCode::Aborted, .. }) => continue,
                other => return other,
            }
        }
        Err(AppError::unavailable(format!("onboardings/{}: too many concurrent changes", o.id)))
    }

    /// Performs a step plan. Returns `Aborted` on a sequence conflict (re-read and plan again).
    pub(super) async fn perform(&self, plan: StepPlan) -> Result<(), AppError> {
        match plan {
            StepPlan::Reschedule(step) => {
                self.store.release_step(&step, &self.worker_id).await?;
                Ok(())
            }
            StepPlan::Write { change, wake } => match self.store.apply_change(&change).await {
                Ok(ev) => {
                    log_change(&ev);
                    if wake {
                        self.wake_engine();
                    }
                    Ok(())
                }
                Err(StoreError::Conflict(m)) => Err(AppError::new(ErrorCode::Aborted, m)),
                Err(e) => Err(e.into()),
            },
            StepPlan::Nothing => Ok(()),
            StepPlan::Corrupt(e) => Err(e),
        }
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
            RunResult::Outcome(out) => *out,
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
            return Ok(RunResult::Outcome(Box::new(out)));
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
            return Ok(RunResult::Outcome(Box::new(out)));
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
            Ok(o) => RunResult::Outcome(Box::new(o)),
            Err(e) => RunResult::Error(e),
        }
    }

    /// Ends an onboarding (its account or its step is gone) in `state`, failing `step`.
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
        let mut all = Vec::new();
        if let Some(name) = step {
            all = self.store.steps(&o.id).await?;
            if let Some(mut s) = all.iter().find(|s| s.name == name).cloned() {
                s.state = StepState::Failed;
                s.lease_owner = None;
                s.lease_until_ms = None;
                s.finished_ms = Some(now);
                s.last_error = Some(why.to_string());
                s.updated_ms = now;
                rows.push(s);
            }
        }
        let change = OnboardingChange {
            webhook_event_id: webhook.map(str::to_string),
            ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), now)
        };
        let end = Stop { state, why: why.to_string(), raw: raw.to_string(), step, attrs: BTreeMap::new(), rows };
        let engine = engine_state(o)?;
        self.perform(StepPlan::stopped(plan::stop(o, &engine, &all, change, end))).await
    }

    /// Releases a step whose onboarding no longer needs it, in `state`.
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

    /// The retry pacing from the settings, with a fresh random draw.
    pub(super) fn backoff(&self) -> Backoff {
        Backoff {
            base_ms: self.settings.engine.retry_base_ms,
            max_ms: self.settings.engine.retry_max_ms,
            draw: rand::rng().random(),
        }
    }
}
