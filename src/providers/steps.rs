//! The pipeline contract between the engine and an adapter: the adapter declares its ordered
//! steps ([`StepSpec`]) and runs one at a time ([`super::Provider::run_step`]); the engine owns
//! everything durable (leases, attempts, backoff, deadlines, events, persistence).
//!
//! A step is re-run after any failure or crash, possibly on another replica, so every
//! `run_step` arm must be safe to repeat: creates reconcile first (look the resource up by
//! the onboarding's idempotency key), reads are plain reads.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{OnboardingDetails, OnboardingId, OnboardingState, ProviderKind, Secret, UnixMs};

use super::{Observation, ProviderError, ProviderHandle, StartRequest};

/// One adapter's step vocabulary: an enum whose variants are the steps of its
/// [`super::Provider::pipeline`], matched exhaustively by its [`super::Provider::run_step`]
/// (through [`step_of`]), so a step added to one is a compile error in the other. The names
/// are stored (step rows, `GetPipeline`) and must never change.
pub trait PipelineStep: Copy + Eq + Sized + 'static {
    /// Every step, in pipeline order.
    const ALL: &'static [Self];

    /// The stored name.
    fn name(self) -> &'static str;

    /// What the step does, in words (`PipelineStep.display_name` in `GetPipeline`).
    fn display_name(self) -> &'static str;

    /// The step a stored name stands for, if this pipeline has it.
    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// A [`StepSpec`] for this step with the defaults of [`StepSpec::new`].
    fn spec(self) -> StepSpec {
        StepSpec::new(self.name())
    }
}

/// The step `run` names in `provider`'s pipeline `S`; a name it does not have (a row written
/// by another version, or a bug) is [`ProviderError::UnknownStep`], never a panic.
pub fn step_of<S: PipelineStep>(provider: ProviderKind, run: &StepRun) -> Result<S, ProviderError> {
    S::parse(&run.name).ok_or_else(|| ProviderError::UnknownStep { provider, step: run.name.clone() })
}

/// The display name of `provider`'s step stored as `step`, when its pipeline has that step.
/// Each provider's step enum knows its own words; this only routes to it.
pub fn display_name(provider: ProviderKind, step: &str) -> Option<&'static str> {
    fn of<S: PipelineStep>(step: &str) -> Option<&'static str> {
        S::parse(step).map(S::display_name)
    }
    match provider {
        ProviderKind::Gupshup => of::<super::gupshup::GupshupStep>(step),
        ProviderKind::Exotel => of::<super::exotel::ExotelStep>(step),
        ProviderKind::Whapi => of::<super::whapi::WhapiStep>(step),
        ProviderKind::Digital99 => of::<super::digital99::Digital99Step>(step),
    }
}

/// One step of a provider's pipeline, as declared by the adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    /// Stable key (`link_app`, `provisioning`...): stored, shown in `GetPipeline`, and passed
    /// back in [`StepRun::name`].
    pub name: &'static str,
    /// Canonical state the onboarding enters when this step starts, if it is further along
    /// than the current one (e.g. `PROVISIONING` for a provisioning poll). `None`: unchanged.
    pub enter_state: Option<OnboardingState>,
    /// Attempts before the step (and the onboarding) fails. Waiting polls do not count.
    pub max_attempts: u32,
    /// How long the step may stay unfinished before the watchdog stalls the onboarding.
    pub deadline: Duration,
    /// False when this request does not need the step (e.g. no subscription asked for): it is
    /// stored as `SKIPPED`.
    pub enabled: bool,
    /// When false (a wait on the customer, e.g. a code to be submitted), the step is not
    /// polled: it runs when something wakes it (a callback, an RPC) or at its deadline.
    pub polled: bool,
}

impl StepSpec {
    /// A step with defaults: 8 attempts, a 10-minute deadline, enabled, polled.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            enter_state: None,
            max_attempts: 8,
            deadline: Duration::from_secs(600),
            enabled: true,
            polled: true,
        }
    }

    /// Sets the state entered when the step starts.
    pub fn entering(mut self, state: OnboardingState) -> Self {
        self.enter_state = Some(state);
        self
    }

    /// Sets the attempt bound.
    pub fn attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the deadline.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Enables or disables (skips) the step.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Marks the step as woken only by events, never polled.
    pub fn not_polled(mut self) -> Self {
        self.polled = false;
        self
    }
}

/// Everything the adapter gets to run one step.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// Which step ([`StepSpec::name`]).
    pub name: String,
    /// The onboarding.
    pub onboarding_id: OnboardingId,
    /// The request the onboarding was created with (stable across retries; its
    /// `idempotency_key` is what creates reconcile on).
    pub request: StartRequest,
    /// The provider-side resource, once an earlier step made it.
    pub handle: Option<ProviderHandle>,
    /// The onboarding's provider secret (app token, channel token), once known.
    pub secret: Option<Secret>,
    /// This step's durable data from earlier attempts (`{}` at first); e.g. a verification
    /// code submitted through the API, or "create sent at" for reconciliation.
    pub data: serde_json::Value,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// The onboarding's current canonical state.
    pub state: OnboardingState,
    /// The onboarding's public details so far.
    pub details: OnboardingDetails,
    /// Whether the onboarding was ever stalled or waiting for credentials: its restart
    /// counted attempts afresh, so attempt 1 may follow a create an earlier run sent.
    pub was_stalled: bool,
}

/// What to do after the step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The step is done; the next one runs.
    Done,
    /// Not yet: run this step again after the delay (a poll), without counting an attempt.
    Wait(Duration),
}

/// The result of one [`super::Provider::run_step`] call. The engine persists all of it in one
/// transaction with the event it writes.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// Done or wait.
    pub progress: Progress,
    /// The provider's status now (recorded as the raw status; its `state`, when set, moves
    /// the onboarding if the state machine allows; terminal states end the pipeline).
    pub observation: Observation,
    /// Set or replace the provider handle (after a create).
    pub handle: Option<ProviderHandle>,
    /// Set the onboarding's provider secret (sealed by the engine before it is stored).
    pub secret: Option<Secret>,
    /// Replace this step's durable data.
    pub data: Option<serde_json::Value>,
    /// Public details learned, merged into the onboarding's ([`OnboardingDetails::merge`]:
    /// what is set replaces, the rest stays). Never secrets.
    pub details: Option<OnboardingDetails>,
    /// The resource's expiry (link, trial), when the provider has one.
    pub expire_ms: Option<UnixMs>,
    /// Also recorded in the event's attributes (e.g. `reconciled=true`). Never secrets.
    pub attributes: BTreeMap<String, String>,
    /// The handle names a resource this call found already there (a Gupshup 409), not one it
    /// created: the engine hands it over only if it is provably this onboarding's.
    pub found: bool,
}

/// A create call a step is about to send, declared so the engine records it before the call
/// ([`super::Provider::create_scope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateScope {
    /// The provider identity the created resource's id is unique under (partner login and
    /// API base). May name the account's login: the engine stores only a keyed fingerprint.
    pub identity: String,
    /// What the call creates for (a phone number): calls for the same subject under the
    /// same identity compete for one resource.
    pub subject: String,
}

impl StepOutcome {
    /// The step is done with this observation.
    pub fn done(observation: Observation) -> Self {
        Self::with(Progress::Done, observation)
    }

    /// Poll again after `after`.
    pub fn wait(after: Duration, observation: Observation) -> Self {
        Self::with(Progress::Wait(after), observation)
    }

    fn with(progress: Progress, observation: Observation) -> Self {
        Self {
            progress,
            observation,
            handle: None,
            secret: None,
            data: None,
            details: None,
            expire_ms: None,
            attributes: BTreeMap::new(),
            found: false,
        }
    }

    /// Marks the handle as found, not created (see [`StepOutcome::found`]).
    pub fn found(mut self) -> Self {
        self.found = true;
        self
    }

    /// Sets the handle.
    pub fn handle(mut self, h: ProviderHandle) -> Self {
        self.handle = Some(h);
        self
    }

    /// Sets the provider secret.
    pub fn secret(mut self, s: Secret) -> Self {
        self.secret = Some(s);
        self
    }

    /// Adds public details: merged over those already in this outcome. A patch of another
    /// provider than an earlier one replaces it (the engine then refuses the outcome's details
    /// as not the onboarding's provider).
    pub fn with_details(mut self, patch: impl Into<OnboardingDetails>) -> Self {
        let patch = patch.into();
        self.details = Some(match self.details.take() {
            Some(mut d) => match d.merge(patch.clone()) {
                Ok(()) => d,
                Err(_) => patch,
            },
            None => patch,
        });
        self
    }

    /// The details as their stored JSON object (`{}` when none), for tests to compare.
    #[cfg(test)]
    pub(crate) fn details_view(&self) -> serde_json::Value {
        self.details.as_ref().and_then(|d| serde_json::to_value(d).ok()).unwrap_or_else(|| serde_json::json!({}))
    }

    /// Adds an event attribute.
    pub fn attribute(mut self, k: &str, v: impl Into<String>) -> Self {
        self.attributes.insert(k.to_string(), v.into());
        self
    }

    /// Sets the expiry.
    pub fn expires(mut self, at: UnixMs) -> Self {
        self.expire_ms = Some(at);
        self
    }

    /// Replaces the step's durable data.
    pub fn data(mut self, d: serde_json::Value) -> Self {
        self.data = Some(d);
        self
    }
}

#[cfg(test)]
mod display_tests {
    use super::*;

    fn names<S: PipelineStep>() -> Vec<(&'static str, &'static str)> {
        S::ALL.iter().map(|s| (s.name(), s.display_name())).collect()
    }

    #[test]
    fn every_step_of_every_provider_has_a_display_name() {
        let pipelines = [
            (ProviderKind::Gupshup, names::<super::super::gupshup::GupshupStep>()),
            (ProviderKind::Exotel, names::<super::super::exotel::ExotelStep>()),
            (ProviderKind::Whapi, names::<super::super::whapi::WhapiStep>()),
            (ProviderKind::Digital99, names::<super::super::digital99::Digital99Step>()),
        ];
        for (kind, steps) in pipelines {
            for (name, shown) in &steps {
                assert!(!shown.trim().is_empty(), "{kind} {name}");
                assert_ne!(shown, name, "{kind} {name}: a display name says more than the key");
                assert_eq!(display_name(kind, name), Some(*shown), "{kind} {name} routes to its enum");
            }
            let mut distinct: Vec<_> = steps.iter().map(|(_, d)| *d).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), steps.len(), "{kind}: display names are distinct");
        }
        assert_eq!(display_name(ProviderKind::Gupshup, "mint_link"), None, "another provider's step");
        assert_eq!(display_name(ProviderKind::Exotel, "nope"), None);
    }
}
