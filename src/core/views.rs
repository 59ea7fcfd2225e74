//! The read models core hands to the edges (gRPC, streams): what callers may see of an
//! onboarding, its events and its steps, with everything stored as JSON already parsed, so
//! the edges convert plain values and never name a store record. Each view is built once
//! where its row is read (or, for `GetOnboarding`, where the converted answer is cached:
//! [`super::read_cache`]).

use std::collections::HashMap;

use crate::domain::{
    AccountId, EventKind, OnboardingDetails, OnboardingId, OnboardingState, ProviderKind, StepState, UnixMs,
};
use crate::store::{EventRecord, OnboardingFilter, OnboardingRecord, StepRecord};

/// An onboarding as callers see it: no engine state, secret or provider lookup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardingView {
    /// The onboarding's id (`onboardings/{id}` in resource names).
    pub id: OnboardingId,
    /// The account it runs on.
    pub account_id: AccountId,
    /// The BSP whose pipeline drives it (its account's provider).
    pub provider: ProviderKind,
    /// Observed canonical state.
    pub state: OnboardingState,
    /// Desired state when it differs from the observed one (e.g. `CANCELLED` requested).
    pub desired_state: Option<OnboardingState>,
    /// Why it is in this state.
    pub state_reason: String,
    /// The provider's raw status, as the provider spells it.
    pub provider_status: String,
    /// Caller's reference.
    pub reference: String,
    /// The latest event sequence.
    pub sequence: i64,
    /// When the current state must have moved on (watchdog).
    pub state_deadline_ms: Option<UnixMs>,
    /// When the link / channel / trial expires, where the provider has one.
    pub expire_ms: Option<UnixMs>,
    /// When `CreateOnboarding` stored it (Unix ms).
    pub created_ms: UnixMs,
    /// When its state, status or details last changed (Unix ms).
    pub updated_ms: UnixMs,
    /// The public details, parsed (empty when the stored ones do not parse: logged).
    pub details: OnboardingDetails,
}

/// The stored details of `o`, or empty ones when they do not parse: a read shows what it
/// can, and the row itself is left as it is.
fn details_of(o: &OnboardingRecord) -> OnboardingDetails {
    OnboardingDetails::parse(o.provider, &o.details_json).unwrap_or_else(|e| {
        tracing::warn!(onboarding = %o.id, error = %e, "Stored details do not parse; shown empty.");
        OnboardingDetails::empty(o.provider)
    })
}

impl From<&OnboardingRecord> for OnboardingView {
    fn from(o: &OnboardingRecord) -> Self {
        Self {
            id: o.id.clone(),
            account_id: o.account_id.clone(),
            provider: o.provider,
            state: o.state,
            desired_state: o.desired_state,
            state_reason: o.state_reason.clone(),
            provider_status: o.provider_status.clone(),
            reference: o.reference.clone(),
            sequence: o.sequence,
            state_deadline_ms: o.state_deadline_ms,
            expire_ms: o.expire_ms,
            created_ms: o.created_ms,
            updated_ms: o.updated_ms,
            details: details_of(o),
        }
    }
}

impl From<OnboardingRecord> for OnboardingView {
    fn from(o: OnboardingRecord) -> Self {
        let details = details_of(&o);
        Self {
            id: o.id,
            account_id: o.account_id,
            provider: o.provider,
            state: o.state,
            desired_state: o.desired_state,
            state_reason: o.state_reason,
            provider_status: o.provider_status,
            reference: o.reference,
            sequence: o.sequence,
            state_deadline_ms: o.state_deadline_ms,
            expire_ms: o.expire_ms,
            created_ms: o.created_ms,
            updated_ms: o.updated_ms,
            details,
        }
    }
}

/// A JSON object's members as text (strings bare, anything else as JSON); anything but an
/// object is no members. Stored attribute and stage maps are written by us as objects, so
/// this only matters for rows written by hand.
pub(crate) fn json_fields(json: &str) -> HashMap<String, String> {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, text)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One entry of an onboarding's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    /// The onboarding whose log holds the event.
    pub onboarding_id: OnboardingId,
    /// Monotonic per onboarding, from 1, gap-free.
    pub sequence: i64,
    /// What happened (the closed event vocabulary, `OnboardingEvent.type`).
    pub kind: EventKind,
    /// State after the event.
    pub state: OnboardingState,
    /// State before the event.
    pub previous_state: OnboardingState,
    /// Why it happened, in words for people (no secrets).
    pub reason: String,
    /// Raw provider status at the time.
    pub provider_status: String,
    /// The step concerned, if any.
    pub step: Option<String>,
    /// Extra attributes (never secrets), parsed.
    pub attributes: HashMap<String, String>,
    /// When the event was committed (Unix ms).
    pub created_ms: UnixMs,
}

impl From<EventRecord> for EventView {
    fn from(e: EventRecord) -> Self {
        Self {
            attributes: json_fields(&e.data_json),
            onboarding_id: e.onboarding_id,
            sequence: e.sequence,
            kind: e.kind,
            state: e.state,
            previous_state: e.previous_state,
            reason: e.reason,
            provider_status: e.provider_status,
            step: e.step,
            created_ms: e.created_ms,
        }
    }
}

impl From<&EventRecord> for EventView {
    fn from(e: &EventRecord) -> Self {
        Self::from(e.clone())
    }
}

/// One step of an onboarding's pipeline, as callers see it (no lease, no step data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepView {
    /// Step key (`link_app`...).
    pub name: String,
    /// What the step does, in the words of its provider's step enum (the key with spaces
    /// for a step its pipeline does not know).
    pub display_name: String,
    /// Order within the pipeline, from 0.
    pub position: i32,
    /// Where the step is (pending, running, waiting, succeeded...).
    pub state: StepState,
    /// Attempts made so far, counting the one running.
    pub attempts: i32,
    /// Bound on attempts before `FAILED`.
    pub max_attempts: i32,
    /// Last error message (no secrets).
    pub last_error: Option<String>,
    /// Last error's raw provider code.
    pub last_error_code: Option<String>,
    /// Raw provider stage values, parsed.
    pub provider_stage: HashMap<String, String>,
    /// When it should run next.
    pub next_run_ms: Option<UnixMs>,
    /// When it must have finished (watchdog), if bounded.
    pub deadline_ms: Option<UnixMs>,
    /// When its first attempt started; `None` before any.
    pub started_ms: Option<UnixMs>,
    /// When it reached a final state; `None` while it can still run.
    pub finished_ms: Option<UnixMs>,
}

impl StepView {
    /// The view of `s`, a step of a `provider` onboarding (`None`: not known, which only
    /// changes the display name).
    pub fn new(provider: Option<ProviderKind>, s: &StepRecord) -> Self {
        let display_name = provider
            .and_then(|p| crate::providers::steps::display_name(p, &s.name))
            .map_or_else(|| s.name.replace('_', " "), str::to_owned);
        Self {
            name: s.name.clone(),
            display_name,
            position: s.position,
            state: s.state,
            attempts: s.attempts,
            max_attempts: s.max_attempts,
            last_error: s.last_error.clone(),
            last_error_code: s.last_error_code.clone(),
            provider_stage: json_fields(&s.provider_stage_json),
            next_run_ms: s.next_run_ms,
            deadline_ms: s.deadline_ms,
            started_ms: s.started_ms,
            finished_ms: s.finished_ms,
        }
    }

    /// The views of an onboarding's steps.
    pub fn all(provider: ProviderKind, steps: &[StepRecord]) -> Vec<Self> {
        steps.iter().map(|s| Self::new(Some(provider), s)).collect()
    }
}

/// Which onboardings `ListOnboardings` returns (every one set must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnboardingQuery {
    /// Only this provider.
    pub provider: Option<ProviderKind>,
    /// Only this state.
    pub state: Option<OnboardingState>,
    /// Only this caller reference.
    pub reference: Option<String>,
    /// Only this account.
    pub account_id: Option<AccountId>,
}

impl From<&OnboardingQuery> for OnboardingFilter {
    fn from(q: &OnboardingQuery) -> Self {
        Self { provider: q.provider, state: q.state, reference: q.reference.clone(), account_id: q.account_id.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TenantId, new_id};

    fn record(details_json: &str) -> OnboardingRecord {
        OnboardingRecord {
            id: new_id(),
            tenant_id: new_id::<TenantId>(),
            account_id: AccountId::parse("acc").unwrap(),
            provider: ProviderKind::Gupshup,
            state: OnboardingState::Live,
            desired_state: Some(OnboardingState::Cancelled),
            state_reason: "live".into(),
            provider_status: "LIVE".into(),
            reference: "ref".into(),
            details_json: details_json.into(),
            engine_json: r#"{"handle":"secret-ish"}"#.into(),
            external_key: Some("app-1".into()),
            secret: None,
            sequence: 3,
            state_deadline_ms: Some(9),
            expire_ms: None,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    #[test]
    fn an_onboarding_view_carries_parsed_details_and_the_public_fields() {
        let r = record(r#"{"app_name":"one","app_id":"a1"}"#);
        let v = OnboardingView::from(&r);
        match &v.details {
            OnboardingDetails::Gupshup(g) => {
                assert_eq!(g.app_name.as_deref(), Some("one"));
                assert_eq!(g.app_id.as_ref().map(|a| a.as_str()), Some("a1"));
            }
            other => panic!("unexpected details {other:?}"),
        }
        assert_eq!((v.sequence, v.desired_state, v.state_deadline_ms), (3, Some(OnboardingState::Cancelled), Some(9)));
        assert_eq!(OnboardingView::from(r.clone()), v, "by value and by reference agree");
    }

    #[test]
    fn details_that_do_not_parse_are_shown_empty() {
        let v = OnboardingView::from(record("[1,2]"));
        assert_eq!(v.details, OnboardingDetails::empty(ProviderKind::Gupshup));
    }

    #[test]
    fn event_attributes_are_parsed_once_into_text() {
        let e = EventRecord {
            onboarding_id: new_id(),
            sequence: 4,
            kind: EventKind::StepSucceeded,
            state: OnboardingState::Live,
            previous_state: OnboardingState::Provisioning,
            reason: "r".into(),
            provider_status: "LIVE".into(),
            step: Some("link_app".into()),
            data_json: r#"{"a":"x","n":2,"o":{"k":true}}"#.into(),
            created_ms: 5,
        };
        let v = EventView::from(&e);
        assert_eq!(v.attributes.get("a").map(String::as_str), Some("x"));
        assert_eq!(v.attributes.get("n").map(String::as_str), Some("2"));
        assert_eq!(v.attributes.get("o").map(String::as_str), Some(r#"{"k":true}"#));
        assert!(EventView::from(EventRecord { data_json: "not json".into(), ..e }).attributes.is_empty());
    }

    #[test]
    fn a_step_view_takes_its_display_name_from_the_provider() {
        let mut s = crate::store::conformance::step(&new_id(), "link_app", 0, StepState::Running, None);
        s.provider_stage_json = r#"{"stage":"LIVE"}"#.into();
        let v = StepView::new(Some(ProviderKind::Gupshup), &s);
        assert_eq!(v.display_name, "Link the WABA and phone to a new Gupshup app");
        assert_eq!(v.provider_stage.get("stage").map(String::as_str), Some("LIVE"));
        assert_eq!(StepView::new(Some(ProviderKind::Exotel), &s).display_name, "link app", "not an Exotel step");
        assert_eq!(StepView::new(None, &s).display_name, "link app");
    }
}
