//! The engine's decisions, in pure code: what a finished step run (or a stop) writes. No store,
//! no clock, no randomness: the runner ([`super::runner`]) reads the rows, brings the time and
//! a random draw, and performs the [`StepPlan`]; the state rules themselves live in
//! [`crate::domain::OnboardingState`] (`rank`, `polled_into`, `enters`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::state::EngineState;
use crate::core::pipeline_rows::skip_rest;
use crate::domain::{
    EventKind, OnboardingDetails, OnboardingId, OnboardingState, Patch, ProviderKind, StepState, UnixMs,
};
use crate::error::AppError;
use crate::providers::{Progress, ProviderError, StepOutcome, StepSpec};
use crate::store::{NewEvent, OnboardingChange, OnboardingRecord, Sealed, StepRecord};

/// The rows a step run is judged on, as the runner just read them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ran<'a> {
    /// The onboarding, fresh (its sequence guards the change).
    pub onboarding: &'a OnboardingRecord,
    /// Its public details, parsed once by the runner.
    pub details: &'a OnboardingDetails,
    /// Its engine state, parsed once by the runner.
    pub engine: &'a EngineState,
    /// All its step rows, fresh.
    pub steps: &'a [StepRecord],
    /// The row of the step that ran (one of `steps`).
    pub current: &'a StepRecord,
    /// The adapter's pipeline for this onboarding.
    pub specs: &'a [StepSpec],
    /// The spec of the step that ran (one of `specs`).
    pub spec: &'a StepSpec,
    /// The adapter's provider, named in reasons.
    pub provider: ProviderKind,
}

/// What the adapter's `run_step` came to, with what the runner had to prepare for it.
#[derive(Debug, Clone)]
pub(crate) enum StepResult {
    /// It answered; a secret it returned is already sealed (sealing needs the key).
    Outcome {
        /// The adapter's outcome (boxed: it is much larger than an error).
        outcome: Box<StepOutcome>,
        /// `outcome.secret`, sealed.
        sealed: Option<Sealed>,
    },
    /// It failed.
    Error(ProviderError),
}

/// Exponential backoff with full jitter, capped, from a random `draw` the runner makes: the
/// delay is uniform in `[cap / 2, cap]` (at least 1 ms wide), as before the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// First retry's cap (`engine.retry_base_ms`).
    pub base_ms: u64,
    /// Largest cap (`engine.retry_max_ms`).
    pub max_ms: u64,
    /// A uniformly random number; 0 gives the shortest delay (tests).
    pub draw: u64,
}

impl Backoff {
    /// The delay before retry `attempt` (1 = after the first attempt).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let cap = self.base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20)).min(self.max_ms);
        let (lo, hi) = (cap / 2, cap.max(1));
        // hi >= lo always; the span cannot overflow since lo <= u64::MAX / 2.
        Duration::from_millis(lo + self.draw % (hi - lo + 1))
    }
}

/// What the runner must do for one step run.
#[derive(Debug, Clone)]
pub(crate) enum StepPlan {
    /// Nothing observable changed: put the step row back on its schedule, with no event.
    Reschedule(StepRecord),
    /// Write this change (guarded by the onboarding's sequence: on a conflict the runner
    /// re-reads and plans again), then wake the engine if `wake` (more steps may be due).
    Write {
        /// The change, with its event.
        change: OnboardingChange,
        /// Whether to wake the engine after writing.
        wake: bool,
    },
    /// Nothing to write (the state machine refuses the stop the run calls for).
    Nothing,
    /// The rows to write cannot be encoded: nothing is written, the runner reports this.
    Corrupt(AppError),
}

impl StepPlan {
    /// A change to write; the wake follows from its event's kind.
    pub(crate) fn write(change: OnboardingChange) -> Self {
        let wake = change.event.kind.wakes_engine();
        Self::Write { change, wake }
    }

    /// What a [`stop`] comes to: its change, nothing (refused), or the encoding error.
    pub(crate) fn stopped(stop: Result<Option<OnboardingChange>, AppError>) -> Self {
        match stop {
            Ok(change) => change.map_or(Self::Nothing, Self::write),
            Err(e) => Self::Corrupt(e),
        }
    }
}

/// A stop (`FAILED`, `STALLED`, `REAUTH_REQUIRED`...) for [`stop`].
#[derive(Debug, Clone)]
pub(crate) struct Stop<'a> {
    /// The state to end in.
    pub state: OnboardingState,
    /// Why, for the state reason and the event.
    pub why: String,
    /// The provider's raw code (recorded as the raw status when not empty).
    pub raw: String,
    /// The step the stop is about, if any.
    pub step: Option<&'a str>,
    /// Event attributes.
    pub attrs: BTreeMap<String, String>,
    /// Step rows already decided (the step that failed).
    pub rows: Vec<StepRecord>,
}

/// Decides what a step run writes.
pub(crate) fn plan(ran: &Ran<'_>, result: &StepResult, backoff: &Backoff, now: UnixMs) -> StepPlan {
    match result {
        StepResult::Outcome { outcome, sealed } => plan_outcome(ran, outcome, sealed.as_ref(), now),
        StepResult::Error(e) => plan_error(ran, e, backoff, now),
    }
}

/// A successful run: merge what it reported, then wait (poll again) or finish the step and
/// start the next one (entering its state), end the pipeline, or end the onboarding.
fn plan_outcome(ran: &Ran<'_>, out: &StepOutcome, sealed: Option<&Sealed>, now: UnixMs) -> StepPlan {
    let (o, current, steps, specs) = (ran.onboarding, ran.current, ran.steps, ran.specs);
    let obs = &out.observation;
    let mut details = ran.details.clone();
    // An adapter's patch for another provider's details (a bug) is refused, and said so in
    // the event, rather than written over the onboarding's.
    let refused = out.details.clone().and_then(|p| details.merge(p).err());
    if !obs.fields.is_empty() {
        details.set_provider_fields(obs.fields.clone());
    }
    let mut change = OnboardingChange {
        expect_sequence: Some(o.sequence),
        ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), now)
    };
    if let Some(h) = &out.handle {
        let engine = EngineState { handle: Some(h.clone()), ..ran.engine.clone() };
        change.engine_json = match engine.to_json() {
            Ok(j) => Some(j),
            Err(e) => return StepPlan::Corrupt(e),
        };
        change.external_key = Some(h.external_key.clone());
    }
    change.secret = sealed.cloned();
    if let Some(e) = out.expire_ms {
        change.expire_ms = Patch::Set(e);
    }
    let mut state = o.state;
    let mut reason = o.state_reason.clone();
    if let Some(s) = o.state.polled_into(obs.state) {
        state = s;
        reason = if obs.reason.is_empty() {
            format!("{} reported {}", ran.provider, obs.raw_status)
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
        step.data_json = d.to_string();
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
                && details == *ran.details
                && out.handle.is_none()
                && out.secret.is_none()
                && out.expire_ms.is_none_or(|e| Some(e) == o.expire_ms)
                && step.provider_stage_json == current.provider_stage_json;
            if quiet {
                return StepPlan::Reschedule(step);
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
                    && state.enters(enter)
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
    if let Some(e) = refused {
        attrs.insert("details_refused".into(), e.to_string());
    }
    if state != o.state {
        change.state = Some(state);
        change.state_reason = Some(reason.clone());
    }
    if !obs.raw_status.is_empty() {
        change.provider_status = Some(obs.raw_status.clone());
    }
    change.details_json = match details.to_json() {
        Ok(j) => Some(j),
        Err(e) => return StepPlan::Corrupt(AppError::internal(format!("onboardings/{}: {e}", o.id))),
    };
    change.steps = changed_steps;
    change.event = NewEvent::new(kind, if state != o.state { reason } else { obs.reason.clone() })
        .at_step(current.name.clone())
        .with_attributes(&attrs);
    StepPlan::write(change)
}

/// A failed run: retry later, or end in the state the error calls for.
fn plan_error(ran: &Ran<'_>, e: &ProviderError, backoff: &Backoff, now: UnixMs) -> StepPlan {
    let (o, current, kind) = (ran.onboarding, ran.current, ran.provider);
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
    if e.is_retryable() && (queued || attempts < ran.spec.max_attempts) {
        let delay = match e {
            ProviderError::RateLimited { retry_after: Some(d), .. } => *d,
            _ => backoff.delay(attempts),
        };
        step.state = StepState::Ready;
        step.next_run_ms = Some(now.saturating_add(delay.as_millis() as i64));
        attrs.insert("retry_in_ms".into(), delay.as_millis().to_string());
        change.steps = vec![step];
        change.event = NewEvent::new(EventKind::StepRetry, format!("{message}; retrying"))
            .at_step(current.name.clone())
            .with_attributes(&attrs);
        return StepPlan::write(change);
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
    let end = Stop { state, why, raw, step: Some(&current.name), attrs, rows: vec![step] };
    StepPlan::stopped(stop(o, ran.engine, ran.steps, change, end))
}

/// Moves an onboarding to a stopping state with the stop's step rows; later steps of a
/// terminal state are skipped (from `all_steps`, the onboarding's rows; only read then).
/// `None` when the state machine refuses the move. `change` brings the id, time, sequence
/// guard and webhook event; `engine` is `o`'s engine state. An error only when the engine
/// state cannot be encoded.
pub(crate) fn stop(
    o: &OnboardingRecord,
    engine: &EngineState,
    all_steps: &[StepRecord],
    mut change: OnboardingChange,
    end: Stop<'_>,
) -> Result<Option<OnboardingChange>, AppError> {
    if !o.state.can_transition(end.state) {
        return Ok(None);
    }
    let mut steps = end.rows;
    if end.state.is_terminal()
        && let Some(name) = end.step
    {
        steps.extend(skip_rest(all_steps, name, change.at_ms));
    }
    if matches!(end.state, OnboardingState::Stalled | OnboardingState::ReauthRequired) {
        // RetryPipeline goes back to where the onboarding was.
        let engine = EngineState { stalled_from: Some(o.state), ..engine.clone() };
        change.engine_json = Some(engine.to_json()?);
    }
    change.state = Some(end.state);
    change.state_reason = Some(end.why.clone());
    change.state_deadline_ms = Patch::Clear;
    change.steps = steps;
    if !end.raw.is_empty() {
        change.provider_status = Some(end.raw);
    }
    change.event = NewEvent::new(EventKind::StateChanged, end.why)
        .at_opt_step(end.step.map(str::to_string))
        .with_attributes(&end.attrs);
    Ok(Some(change))
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

/// A step row not started yet.
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

/// The next enabled step after `name` that is not done.
fn next_step<'a>(steps: &[StepRecord], specs: &'a [StepSpec], name: &str) -> Option<&'a StepSpec> {
    let pos = specs.iter().position(|s| s.name == name)?;
    specs[pos + 1..]
        .iter()
        .find(|spec| spec.enabled && steps.iter().find(|s| s.name == spec.name).is_none_or(|s| !s.state.is_done()))
}
