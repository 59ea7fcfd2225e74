//! Row helpers the step engine ([`super::engine`]) and the webhook worker
//! ([`super::callbacks`]) share: the onboarding's details blob and the engine's bookkeeping in
//! it, step rows parked or skipped, the conflict retry bound and the change log line. Both
//! plan changes from these; neither reaches into the other for them.

use super::context::ENGINE_KEY;
use crate::domain::{StepState, UnixMs};
use crate::store::{EventRecord, OnboardingRecord, StepRecord};

/// How many times a change is re-read and re-applied when a concurrent writer (a callback,
/// an RPC) moved the onboarding's sequence first.
pub(crate) const CONFLICT_RETRIES: usize = 8;

/// The onboarding's details as a JSON object (empty when the stored text is not one).
pub(crate) fn details_map(o: &OnboardingRecord) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(&o.details_json) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// One field of the engine's own bookkeeping in `details` (`Null` when absent).
pub(crate) fn engine_field(details: &serde_json::Map<String, serde_json::Value>, key: &str) -> serde_json::Value {
    details.get(ENGINE_KEY).and_then(|e| e.get(key)).cloned().unwrap_or(serde_json::Value::Null)
}

/// Sets one field of the engine's own bookkeeping in `details` (replacing a non-object).
pub(crate) fn set_engine_field(
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
