//! The watchdog passes: onboardings past their state deadline go to `STALLED`, and expiries
//! are announced before they happen.

use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::{self, StepPlan, Stop};
use crate::core::Core;
use crate::core::context::engine_state;
use crate::core::pipeline_rows::parked;
use crate::domain::{EventKind, OnboardingState, StepState, UnixMs};
use crate::error::{AppError, ErrorCode};
use crate::store::{NewEvent, OnboardingChange, StepRecord};

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

impl Core {
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
            let end = Stop {
                state: OnboardingState::Stalled,
                why,
                raw: String::new(),
                step: step.as_deref(),
                attrs: BTreeMap::new(),
                rows,
            };
            // One onboarding's unreadable engine state must not stop the pass for the others.
            let engine = match engine_state(&o) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(onboarding = %o.id, error = %e.message, "Cannot stall an onboarding.");
                    continue;
                }
            };
            match self.perform(StepPlan::stopped(plan::stop(&o, &engine, &steps, change, end))).await {
                Ok(()) => n += 1,
                Err(e) if e.code == ErrorCode::Aborted => {}
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
                    Err(e) if e.code == ErrorCode::Aborted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }
}
