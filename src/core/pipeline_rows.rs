//! Row helpers the step engine ([`super::engine`]) and the webhook worker
//! ([`super::callbacks`]) share: the onboarding's typed details, step rows parked or skipped,
//! the conflict retry bound and the change log line. Both plan changes from these; neither
//! reaches into the other for them.

use crate::domain::{OnboardingDetails, StepState, UnixMs};
use crate::error::AppError;
use crate::store::{EventRecord, OnboardingRecord, StepRecord};

/// How many times a change is re-read and re-applied when a concurrent writer (a callback,
/// an RPC) moved the onboarding's sequence first.
pub(crate) const CONFLICT_RETRIES: usize = 8;

/// The onboarding's public details, parsed (stored text that does not parse is an error:
/// writing back an empty value would wipe them).
pub(crate) fn details_of(o: &OnboardingRecord) -> Result<OnboardingDetails, AppError> {
    OnboardingDetails::parse(o.provider, &o.details_json)
        .map_err(|e| AppError::internal(format!("onboardings/{}: {e}", o.id)))
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
pub(crate) fn skip_rest(steps: &[StepRecord], name: &str, now: UnixMs) -> Vec<StepRecord> {
    let pos = steps.iter().find(|s| s.name == name).map_or(-1, |s| s.position);
    skip_unfinished(steps.iter().filter(|s| s.position > pos).cloned().collect(), now)
}

/// Logs a change that was written.
pub(crate) fn log_change(ev: &EventRecord) {
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
