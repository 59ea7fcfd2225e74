//! [`InMemoryProvider`]: an in-process fake that honours the [`Provider`] contract, with
//! scripted faults and counters. For engine tests and as the reference the conformance suite
//! is checked against; not a simulator of any real provider's wire format.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    CallContext, CallbackEvent, CancelOutcome, CredentialsCheck, Observation, PipelineStep, Provider, ProviderError,
    ProviderHandle, StartOutcome, StartPayload, StartRequest, StepOutcome, StepRun, StepSpec, step_of,
};
use crate::domain::{Capability, OnboardingState, ProviderKind};

/// Raw statuses a new onboarding walks through by default, one step per poll.
pub const DEFAULT_STATUSES: [&str; 3] = ["INITIAL", "PROVISIONING", "LIVE"];

/// The fake's pipeline: create, then wait for live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryStep {
    /// Creates the resource (reconciling on the idempotency key first).
    Start,
    /// Polls until `LIVE` or a terminal state.
    AwaitLive,
}

impl PipelineStep for MemoryStep {
    const ALL: &'static [Self] = &[Self::Start, Self::AwaitLive];

    fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::AwaitLive => "await_live",
        }
    }

    fn display_name(self) -> &'static str {
        match self {
            Self::Start => "Create the onboarding at the provider",
            Self::AwaitLive => "Wait for the onboarding to go live",
        }
    }
}

/// An in-memory provider. Configure with the `with_*` builders, script faults with
/// [`InMemoryProvider::fail_next`] and [`InMemoryProvider::unknown_outcome_next_creates`].
#[derive(Debug)]
pub struct InMemoryProvider {
    kind: ProviderKind,
    capabilities: Vec<Capability>,
    statuses: Vec<String>,
    poll_interval: std::time::Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    fail_next: VecDeque<ProviderError>,
    unknown_outcome_creates: u32,
    resources: BTreeMap<String, Resource>,
    by_idempotency_key: HashMap<String, String>,
    creates: u64,
    polls: u64,
}

#[derive(Debug)]
struct Resource {
    idempotency_key: String,
    status: usize,
    cancelled: bool,
}

/// Callback wire format of the fake (what [`InMemoryProvider::render_callback`] writes).
#[derive(Serialize, Deserialize)]
struct WireBody {
    events: Vec<WireEvent>,
}

#[derive(Serialize, Deserialize)]
struct WireEvent {
    id: String,
    key: String,
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
}

impl InMemoryProvider {
    /// A fake for `kind` declaring every flow capability of that provider's API (it has no
    /// ports, so it advertises none of theirs).
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            capabilities: kind.capabilities().to_vec(),
            statuses: DEFAULT_STATUSES.iter().map(|s| s.to_string()).collect(),
            poll_interval: std::time::Duration::from_millis(50),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Declares exactly these flow capabilities (port capabilities are dropped: the fake has
    /// no ports).
    pub fn with_capabilities(mut self, capabilities: impl Into<Vec<Capability>>) -> Self {
        self.capabilities = capabilities.into();
        self
    }

    /// How often the engine polls a waiting onboarding of this fake.
    pub fn with_poll_interval(mut self, d: std::time::Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Raw statuses a new onboarding walks through, one per poll; the last one sticks.
    /// Ignored when empty.
    pub fn with_statuses<S: Into<String>>(mut self, statuses: impl IntoIterator<Item = S>) -> Self {
        let statuses: Vec<String> = statuses.into_iter().map(Into::into).collect();
        if !statuses.is_empty() {
            self.statuses = statuses;
        }
        self
    }

    /// The next `n` network calls (check, the `start` and `await_live` steps, cancel) fail with `error`, doing nothing.
    pub fn fail_next(&self, n: usize, error: ProviderError) {
        let mut inner = self.lock();
        inner.fail_next.extend(std::iter::repeat_n(error, n));
    }

    /// The next `n` creates happen but report [`ProviderError::UnknownOutcome`].
    pub fn unknown_outcome_next_creates(&self, n: u32) {
        self.lock().unknown_outcome_creates += n;
    }

    /// Resources created so far (reconciled starts do not count).
    pub fn creates(&self) -> u64 {
        self.lock().creates
    }

    /// Successful polls so far.
    pub fn polls(&self) -> u64 {
        self.lock().polls
    }

    /// The customer finishes: the resource jumps to the last scripted status. False when
    /// unknown.
    pub fn finish_customer(&self, external_key: &str) -> bool {
        let last = self.statuses.len().saturating_sub(1);
        match self.lock().resources.get_mut(external_key) {
            Some(r) => {
                r.status = last;
                true
            }
            None => false,
        }
    }

    /// A callback body [`Provider::parse_callback`] understands: one event.
    pub fn render_callback(&self, event_id: &str, external_key: &str, raw_status: &str) -> Vec<u8> {
        let body = WireBody {
            events: vec![WireEvent {
                id: event_id.into(),
                key: external_key.into(),
                status: raw_status.into(),
                at: None,
            }],
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Like [`InMemoryProvider::render_callback`], with the time the provider says the event
    /// happened (to test out-of-order delivery).
    pub fn render_callback_at(&self, event_id: &str, external_key: &str, raw_status: &str, at_ms: i64) -> Vec<u8> {
        let body = WireBody {
            events: vec![WireEvent {
                id: event_id.into(),
                key: external_key.into(),
                status: raw_status.into(),
                at: Some(at_ms),
            }],
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The canonical hint for a raw status of the fake.
    pub fn map_status(raw: &str) -> Option<OnboardingState> {
        match raw {
            "INITIAL" | "AWAITING" => Some(OnboardingState::AwaitingCustomer),
            "PROVISIONING" => Some(OnboardingState::Provisioning),
            "REVIEW" => Some(OnboardingState::PendingReview),
            "LIVE" => Some(OnboardingState::Live),
            "FAILED" => Some(OnboardingState::Failed),
            "EXPIRED" => Some(OnboardingState::Expired),
            "CANCELLED" => Some(OnboardingState::Cancelled),
            _ => None,
        }
    }

    /// What the `start` step does: creates the resource, or finds the one an earlier attempt
    /// with the same idempotency key made (`reconciled`). Public so engine tests can act as a
    /// worker that performed the create and died before recording it.
    pub fn start(&self, req: &StartRequest) -> Result<StartOutcome, ProviderError> {
        let mut inner = self.lock();
        Self::scripted_failure(&mut inner)?;
        self.validate(req)?;
        // Reconcile first: an earlier attempt may have created it.
        if let Some(key) = inner.by_idempotency_key.get(&req.idempotency_key).cloned()
            && let Some(r) = inner.resources.get(&key)
        {
            return Ok(StartOutcome {
                handle: self.handle(&key, &r.idempotency_key),
                observation: self.observe(r),
                reconciled: true,
            });
        }
        inner.creates += 1;
        let key = format!("mem-{}-{}", self.kind, inner.creates);
        let r = Resource { idempotency_key: req.idempotency_key.clone(), status: 0, cancelled: false };
        let outcome = StartOutcome {
            handle: self.handle(&key, &r.idempotency_key),
            observation: self.observe(&r),
            reconciled: false,
        };
        inner.resources.insert(key.clone(), r);
        inner.by_idempotency_key.insert(req.idempotency_key.clone(), key);
        if inner.unknown_outcome_creates > 0 {
            inner.unknown_outcome_creates -= 1;
            return Err(ProviderError::UnknownOutcome { raw: "timeout".into() });
        }
        Ok(outcome)
    }

    /// What the `await_live` step reads: the resource's status, one scripted status further.
    fn poll(&self, handle: &ProviderHandle) -> Result<Observation, ProviderError> {
        let mut inner = self.lock();
        Self::scripted_failure(&mut inner)?;
        let last = self.statuses.len().saturating_sub(1);
        let Some(r) = inner.resources.get_mut(&handle.external_key) else {
            return Err(ProviderError::NotFound { raw: "404".into() });
        };
        if !r.cancelled {
            r.status = (r.status + 1).min(last);
        }
        let obs = self.observe(r);
        inner.polls += 1;
        Ok(obs)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // State stays consistent across a panic elsewhere: every update is a single step.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn scripted_failure(inner: &mut Inner) -> Result<(), ProviderError> {
        match inner.fail_next.pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn observe(&self, r: &Resource) -> Observation {
        let raw = if r.cancelled {
            "CANCELLED".to_string()
        } else {
            self.statuses.get(r.status).cloned().unwrap_or_default()
        };
        let state = Self::map_status(&raw);
        Observation { reason: format!("in-memory status {raw}"), raw_status: raw, fields: BTreeMap::new(), state }
    }

    fn handle(&self, external_key: &str, idempotency_key: &str) -> ProviderHandle {
        ProviderHandle {
            external_key: external_key.to_string(),
            data: serde_json::json!({ "idempotency_key": idempotency_key, "kind": self.kind.as_str() }),
        }
    }

    fn validate(&self, req: &StartRequest) -> Result<(), ProviderError> {
        let invalid = |field: &str, message: &str| ProviderError::Invalid {
            field: Some(field.to_string()),
            message: message.to_string(),
            raw: "400".into(),
        };
        if req.payload.kind() != self.kind {
            return Err(invalid("request", "payload is for another provider"));
        }
        if req.idempotency_key.is_empty() {
            return Err(invalid("request_id", "must not be empty"));
        }
        match &req.payload {
            StartPayload::Gupshup(g) if !(6..=150).contains(&g.app_name.chars().count()) => {
                Err(invalid("gupshup.app_name", "must be 6 to 150 characters"))
            }
            StartPayload::Whapi(w) if w.channel_name.trim().is_empty() => {
                Err(invalid("whapi.channel_name", "must not be empty"))
            }
            StartPayload::Digital99(d) if d.display_name.trim().is_empty() => {
                Err(invalid("digital99.display_name", "must not be empty"))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Provider for InMemoryProvider {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn poll_interval(&self) -> std::time::Duration {
        self.poll_interval
    }

    fn flow_capabilities(&self) -> &[Capability] {
        &self.capabilities
    }

    async fn check_credentials(&self, ctx: &CallContext) -> Result<CredentialsCheck, ProviderError> {
        Self::scripted_failure(&mut self.lock())?;
        if ctx.credentials.provider() != self.kind {
            return Err(ProviderError::Unauthenticated { raw: "wrong_provider".into() });
        }
        Ok(CredentialsCheck { summary: format!("in-memory {} account", self.kind), fields: BTreeMap::new() })
    }

    fn pipeline(&self, _req: &StartRequest) -> Vec<StepSpec> {
        vec![
            MemoryStep::Start.spec().entering(OnboardingState::Pending),
            MemoryStep::AwaitLive.spec().deadline(std::time::Duration::from_secs(24 * 3600)),
        ]
    }

    async fn run_step(&self, _ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        match step_of::<MemoryStep>(self.kind, run)? {
            MemoryStep::Start => {
                let out = self.start(&run.request)?;
                let mut step = StepOutcome::done(out.observation).handle(out.handle);
                if out.reconciled {
                    step = step.attribute("reconciled", "true");
                }
                Ok(step)
            }
            MemoryStep::AwaitLive => {
                let handle = run.handle.as_ref().ok_or_else(|| ProviderError::Precondition {
                    raw: String::new(),
                    message: "await_live ran before start recorded a handle".into(),
                })?;
                let obs = self.poll(handle)?;
                Ok(match obs.state {
                    Some(s) if s == OnboardingState::Live || s.is_terminal() => StepOutcome::done(obs),
                    // A callback already made it LIVE and the status view lags: done (the
                    // engine keeps the state LIVE).
                    _ if run.state == OnboardingState::Live => StepOutcome::done(obs),
                    _ => StepOutcome::wait(self.poll_interval, obs),
                })
            }
        }
    }

    fn parse_callback(&self, body: &[u8]) -> Result<Vec<CallbackEvent>, ProviderError> {
        let wire: WireBody = serde_json::from_slice(body)
            .map_err(|e| ProviderError::Malformed { message: format!("callback body: {:?}", e.classify()) })?;
        wire.events
            .into_iter()
            .map(|e| {
                if e.id.is_empty() || e.key.is_empty() {
                    return Err(ProviderError::Malformed { message: "callback event without id or key".into() });
                }
                Ok(CallbackEvent {
                    dedupe_key: format!("{}:{}", self.kind, e.id),
                    external_key: e.key,
                    state: Self::map_status(&e.status),
                    raw_status: e.status,
                    fields: BTreeMap::new(),
                    occurred_ms: e.at,
                })
            })
            .collect()
    }

    async fn cancel(&self, _ctx: &CallContext, handle: &ProviderHandle) -> Result<CancelOutcome, ProviderError> {
        if !self.capabilities.contains(&Capability::Cancel) {
            return Err(ProviderError::NotSupported { capability: Capability::Cancel });
        }
        let mut inner = self.lock();
        Self::scripted_failure(&mut inner)?;
        let Some(r) = inner.resources.get_mut(&handle.external_key) else {
            return Err(ProviderError::NotFound { raw: "404".into() });
        };
        let finished = r.cancelled
            || Self::map_status(self.statuses.get(r.status).map(String::as_str).unwrap_or_default())
                .is_some_and(OnboardingState::is_finished);
        if finished {
            return Err(ProviderError::Precondition {
                raw: "already_finished".into(),
                message: "the onboarding is already finished".into(),
            });
        }
        r.cancelled = true;
        Ok(CancelOutcome { raw_status: "CANCELLED".into(), refunded_days: 0 })
    }
}
