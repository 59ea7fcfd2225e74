//! Cancel and retry: `CancelOnboarding` at the provider (then `CANCELLED`), and
//! `RetryPipeline` restarting a stalled pipeline at its first unfinished step.

use std::collections::BTreeMap;

use crate::core::Core;
use crate::core::context::{engine_state, stored_handle};
use crate::core::pipeline_rows::skip_unfinished;
use crate::domain::{EventKind, OnboardingState, Patch, StepState, now_ms};
use crate::error::{AppError, ErrorCode};
use crate::providers::{Provider, ProviderCapabilities, ProviderError};
use crate::store::{NewEvent, OnboardingChange, OnboardingRecord};

impl Core {
    /// Cancels at the provider (when there is something to cancel) and records `CANCELLED`.
    /// Returns the refunded days.
    pub(crate) async fn cancel_now(
        &self,
        o: &OnboardingRecord,
        provider: &dyn Provider,
        ctx: &crate::providers::CallContext,
    ) -> Result<u32, AppError> {
        let handle = stored_handle(o)?;
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
        let engine = engine_state(o)?;
        let request = self.open_request(o, &engine)?;
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
        let back_to = engine
            .stalled_from
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
            if e.code == ErrorCode::Aborted {
                AppError::new(ErrorCode::Aborted, "the onboarding changed meanwhile; retry")
            } else {
                e
            }
        })
    }
}
