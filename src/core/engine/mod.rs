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
//!
//! Layout: this file holds the loop (claim, spawn, watchdog cadence) and the rows of a new
//! onboarding; [`plan`] decides in pure code what a step run writes; `runner` performs it;
//! `watchdog` and `cancel` hold those passes and RPC halves.

mod cancel;
pub(crate) mod plan;
mod runner;
mod state;
mod watchdog;

#[cfg(test)]
mod plan_tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::Instrument;

pub use self::plan::{first_deadline, initial_steps};
pub use self::state::{EngineState, SealedRequest};
use super::Core;
use super::pipeline_rows::log_change;
// `capabilities/channels.rs` still reaches this helper through the engine.
pub(crate) use super::pipeline_rows::skip_unfinished;
use crate::domain::{StepState, now_ms};
use crate::error::AppError;
use crate::providers::{Provider, ProviderHandle, StartRequest};
use crate::store::{OnboardingChange, OnboardingRecord, StepRecord, StoreError};

impl Core {
    /// How long a claimed step (or webhook event) stays leased without a renewal.
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
        let mut engine = EngineState { request: Some(self.seal_request(&o.id, request)?), ..EngineState::default() };
        if let Some((h, _)) = preset {
            engine.handle = Some(h.clone());
            o.external_key = Some(h.external_key.clone());
        }
        o.engine_json = engine.to_json()?;
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
