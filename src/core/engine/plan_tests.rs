//! Table-driven tests of the pure planner: each row is an onboarding state, the step that ran
//! and what it came to, and the state, event kind and step rows the plan must write.

use std::time::Duration;

use super::plan::{self, Backoff, Ran, StepPlan, StepResult, Stop};
use super::state::EngineState;
use crate::domain::{
    AccountId, EventKind, GupshupDetails, OnboardingDetails, OnboardingId, OnboardingState, Patch, ProviderKind,
    StepState, TenantId, WhapiDetails,
};
use crate::domain::{UnixMs, new_id};
use crate::providers::{Observation, ProviderError, StepOutcome, StepSpec};
use crate::store::{NewEvent, OnboardingChange, OnboardingRecord, StepRecord};

use EventKind::*;
use OnboardingState::*;
use StepState as S;

const NOW: UnixMs = 1_000_000;
/// The shortest backoff: 500 ms after the first attempt.
const BACKOFF: Backoff = Backoff { base_ms: 1_000, max_ms: 60_000, draw: 0 };

/// Create, wait for the customer's scan, wait for provisioning.
fn specs() -> Vec<StepSpec> {
    vec![
        StepSpec::new("create").entering(Pending).attempts(3),
        StepSpec::new("scan").entering(AwaitingCustomer).deadline(Duration::from_secs(3600)),
        StepSpec::new("provision").entering(Provisioning),
    ]
}

fn onboarding(state: OnboardingState) -> OnboardingRecord {
    OnboardingRecord {
        id: new_id::<OnboardingId>(),
        tenant_id: new_id::<TenantId>(),
        account_id: AccountId::parse("acc").unwrap(),
        provider: ProviderKind::Whapi,
        state,
        desired_state: None,
        state_reason: "before".into(),
        provider_status: "OLD".into(),
        reference: String::new(),
        details_json: "{}".into(),
        engine_json: "{}".into(),
        external_key: None,
        secret: None,
        sequence: 7,
        state_deadline_ms: Some(NOW + 5),
        expire_ms: None,
        created_ms: 1,
        updated_ms: 1,
    }
}

/// The pipeline's rows while `running` runs (its attempt `attempts`): earlier steps done,
/// later ones pending.
fn rows(o: &OnboardingRecord, running: &str, attempts: i32) -> Vec<StepRecord> {
    let mut before = true;
    plan::initial_steps(&o.id, &specs(), &[], 1)
        .into_iter()
        .map(|mut r| {
            if r.name == running {
                before = false;
                r.state = S::Running;
                r.attempts = attempts;
                r.lease_owner = Some("me".into());
            } else {
                r.state = if before { S::Succeeded } else { S::Pending };
                r.next_run_ms = None;
            }
            r
        })
        .collect()
}

fn obs(raw: &str, state: Option<OnboardingState>) -> Observation {
    Observation { raw_status: raw.into(), state, ..Default::default() }
}

fn done(raw: &str, state: Option<OnboardingState>) -> StepOutcome {
    StepOutcome::done(obs(raw, state))
}

fn wait(raw: &str, state: Option<OnboardingState>) -> StepOutcome {
    StepOutcome::wait(Duration::from_secs(30), obs(raw, state))
}

/// Plans `result` of step `step` (attempt `attempts`) of an onboarding in `state`.
fn run(state: OnboardingState, step: &str, attempts: i32, result: StepResult) -> (OnboardingRecord, StepPlan) {
    let o = onboarding(state);
    let steps = rows(&o, step, attempts);
    let specs = specs();
    let current = steps.iter().find(|s| s.name == step).unwrap();
    let spec = specs.iter().find(|s| s.name == step).unwrap();
    let details = OnboardingDetails::parse(o.provider, &o.details_json).unwrap();
    let engine = EngineState::parse(&o.engine_json).unwrap();
    let ran = Ran {
        onboarding: &o,
        details: &details,
        engine: &engine,
        steps: &steps,
        current,
        specs: &specs,
        spec,
        provider: ProviderKind::Whapi,
    };
    let plan = plan::plan(&ran, &result, &BACKOFF, NOW);
    (o, plan)
}

fn outcome(o: StepOutcome) -> StepResult {
    StepResult::Outcome { outcome: Box::new(o), sealed: None }
}

/// What a plan writes, reduced to what the tables compare: the onboarding's state after it,
/// the event kind (`None`: rescheduled without one) and the step rows it writes.
fn summary(o: &OnboardingRecord, plan: &StepPlan) -> (OnboardingState, Option<EventKind>, Vec<(String, S)>) {
    match plan {
        StepPlan::Reschedule(s) => (o.state, None, vec![(s.name.clone(), s.state)]),
        StepPlan::Write { change, wake } => {
            assert_eq!(*wake, change.event.kind.wakes_engine(), "the wake follows the event");
            assert_eq!(change.expect_sequence, Some(o.sequence), "guarded by the sequence it read");
            let steps = change.steps.iter().map(|s| (s.name.clone(), s.state)).collect();
            (change.state.unwrap_or(o.state), Some(change.event.kind), steps)
        }
        StepPlan::Nothing => (o.state, None, Vec::new()),
        StepPlan::Corrupt(e) => panic!("nothing here fails to encode: {e:?}"),
    }
}

/// The typed details and engine state `change` leaves `o` with.
fn after(o: &OnboardingRecord, change: &OnboardingChange) -> (WhapiDetails, EngineState) {
    let row = change.applied_to(o);
    let OnboardingDetails::Whapi(d) = OnboardingDetails::parse(row.provider, &row.details_json).unwrap() else {
        panic!("whapi details")
    };
    (d, EngineState::parse(&row.engine_json).unwrap())
}

fn expect_steps(list: &[(&str, S)]) -> Vec<(String, S)> {
    list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
}

#[test]
fn outcomes() {
    // (case, state, step, outcome, expected state, expected event kind, expected step rows)
    type Row = (
        &'static str,
        OnboardingState,
        &'static str,
        StepOutcome,
        OnboardingState,
        Option<EventKind>,
        Vec<(&'static str, S)>,
    );
    let table: Vec<Row> = vec![
        (
            "a done step starts the next, which enters its state",
            Pending,
            "create",
            done("CREATED", None),
            AwaitingCustomer,
            Some(StateChanged),
            vec![("create", S::Succeeded), ("scan", S::Ready)],
        ),
        (
            "the next step's state already entered: a step event",
            AwaitingCustomer,
            "create",
            done("CREATED", None),
            AwaitingCustomer,
            Some(StepSucceeded),
            vec![("create", S::Succeeded), ("scan", S::Ready)],
        ),
        (
            "a step never enters a state behind the current one",
            Provisioning,
            "create",
            done("CREATED", None),
            Provisioning,
            Some(StepSucceeded),
            vec![("create", S::Succeeded), ("scan", S::Ready)],
        ),
        (
            "a live onboarding enters no state when a step starts",
            Live,
            "scan",
            done("OK", None),
            Live,
            Some(StepSucceeded),
            vec![("scan", S::Succeeded), ("provision", S::Ready)],
        ),
        (
            "a poll that saw nothing new reschedules without an event",
            AwaitingCustomer,
            "scan",
            wait("OLD", None),
            AwaitingCustomer,
            None,
            vec![("scan", S::Waiting)],
        ),
        (
            "a poll with a new raw status records it",
            AwaitingCustomer,
            "scan",
            wait("QR_SHOWN", None),
            AwaitingCustomer,
            Some(ProviderStatus),
            vec![("scan", S::Waiting)],
        ),
        (
            "a poll that observed a new state moves there",
            AwaitingCustomer,
            "scan",
            wait("SCANNED", Some(Provisioning)),
            Provisioning,
            Some(StateChanged),
            vec![("scan", S::Waiting)],
        ),
        (
            "a lagging poll does not undo LIVE",
            Live,
            "scan",
            wait("QR", Some(AwaitingCustomer)),
            Live,
            Some(ProviderStatus),
            vec![("scan", S::Waiting)],
        ),
        (
            "a poll cannot make a move the machine refuses",
            Provisioning,
            "scan",
            wait("OLD", Some(Pending)),
            Provisioning,
            None,
            vec![("scan", S::Waiting)],
        ),
        (
            "a terminal observation ends the pipeline even while waiting",
            AwaitingCustomer,
            "scan",
            wait("EXPIRED", Some(Expired)),
            Expired,
            Some(StateChanged),
            vec![("scan", S::Succeeded), ("provision", S::Skipped)],
        ),
        (
            "a failure observed fails the step and skips the rest",
            AwaitingCustomer,
            "scan",
            done("REJECTED", Some(Failed)),
            Failed,
            Some(StateChanged),
            vec![("scan", S::Failed), ("provision", S::Skipped)],
        ),
        (
            "the last step done completes the pipeline",
            Live,
            "provision",
            done("LIVE", None),
            Live,
            Some(PipelineCompleted),
            vec![("provision", S::Succeeded)],
        ),
        (
            "the last step going live is a state change",
            Provisioning,
            "provision",
            done("LIVE", Some(Live)),
            Live,
            Some(StateChanged),
            vec![("provision", S::Succeeded)],
        ),
    ];
    for (case, state, step, out, to, kind, steps) in table {
        let (o, plan) = run(state, step, 1, outcome(out));
        assert_eq!(summary(&o, &plan), (to, kind, expect_steps(&steps)), "{case}");
    }
}

#[test]
fn errors() {
    let rate_limited = |after: Option<u64>, raw: &str| ProviderError::RateLimited {
        retry_after: after.map(Duration::from_millis),
        raw: raw.into(),
    };
    let unavailable = || ProviderError::Retryable { raw: "503".into(), message: "down".into() };
    // (case, state, step, attempt, error, expected state, kind, step rows, retry delay ms)
    type Row = (
        &'static str,
        OnboardingState,
        i32,
        ProviderError,
        OnboardingState,
        Option<EventKind>,
        Vec<(&'static str, S)>,
        Option<i64>,
    );
    let table: Vec<Row> = vec![
        (
            "Retry-After is honoured",
            Pending,
            1,
            rate_limited(Some(5_000), "429"),
            Pending,
            Some(StepRetry),
            vec![("create", S::Ready)],
            Some(5_000),
        ),
        (
            "a transient error backs off",
            Pending,
            1,
            unavailable(),
            Pending,
            Some(StepRetry),
            vec![("create", S::Ready)],
            Some(500),
        ),
        (
            "the attempt bound stalls the onboarding",
            Pending,
            3,
            unavailable(),
            Stalled,
            Some(StateChanged),
            vec![("create", S::Stalled)],
            None,
        ),
        (
            "our own rate-limit queue is not an attempt",
            Pending,
            3,
            rate_limited(None, crate::providers::http::QUEUED),
            Pending,
            Some(StepRetry),
            vec![("create", S::Ready)],
            Some(2_000),
        ),
        (
            "rejected credentials need re-auth",
            Pending,
            1,
            ProviderError::Unauthenticated { raw: "401".into() },
            ReauthRequired,
            Some(StateChanged),
            vec![("create", S::Stalled)],
            None,
        ),
        (
            "a refusal fails the onboarding and skips the rest",
            Pending,
            1,
            ProviderError::Invalid { field: None, message: "bad".into(), raw: "400".into() },
            Failed,
            Some(StateChanged),
            vec![("create", S::Failed), ("scan", S::Skipped), ("provision", S::Skipped)],
            None,
        ),
        (
            "an onboarding that ended meanwhile is left alone",
            Cancelled,
            1,
            ProviderError::Invalid { field: None, message: "bad".into(), raw: "400".into() },
            Cancelled,
            None,
            vec![],
            None,
        ),
    ];
    for (case, state, attempt, e, to, kind, steps, delay) in table {
        let (o, plan) = run(state, "create", attempt, StepResult::Error(e));
        assert_eq!(summary(&o, &plan), (to, kind, expect_steps(&steps)), "{case}");
        if let StepPlan::Write { change, .. } = &plan {
            let step = &change.steps[0];
            assert_eq!(step.next_run_ms.map(|t| t - NOW), delay, "{case}: retry delay");
            assert!(step.lease_owner.is_none(), "{case}: lease released");
            if to != state && to != Failed {
                assert_eq!(after(&o, change).1.stalled_from, Some(state), "{case}: where it stalled from");
            }
        }
    }
}

#[test]
fn a_queued_retry_gives_its_attempt_back() {
    let e = ProviderError::RateLimited { retry_after: None, raw: crate::providers::http::QUEUED.into() };
    let (_, plan) = run(Pending, "create", 3, StepResult::Error(e));
    let StepPlan::Write { change, .. } = plan else { panic!("a retry is written") };
    assert_eq!(change.steps[0].attempts, 2);
}

#[test]
fn a_done_step_records_what_the_adapter_reported() {
    let out = done("CREATED", None)
        .handle(crate::providers::ProviderHandle { external_key: "ch-1".into(), data: serde_json::json!({}) })
        .with_details(WhapiDetails { mode: Some(crate::domain::ChannelMode::Trial), ..WhapiDetails::default() })
        .with_details(WhapiDetails { go_live: Some(true), ..WhapiDetails::default() })
        .attribute("reconciled", "true");
    let (o, plan) = run(Pending, "create", 1, outcome(out));
    let StepPlan::Write { change, wake } = plan else { panic!("a change is written") };
    assert!(wake);
    assert_eq!(change.external_key.as_deref(), Some("ch-1"));
    assert_eq!(change.provider_status.as_deref(), Some("CREATED"));
    assert_eq!(change.state_reason.as_deref(), Some("step scan started"));
    assert_eq!(change.state_deadline_ms, Patch::Set(NOW + 3_600_000), "the next step's deadline");
    let (details, engine) = after(&o, &change);
    assert_eq!(
        (details.mode, details.go_live),
        (Some(crate::domain::ChannelMode::Trial), Some(true)),
        "both patches merged"
    );
    assert_eq!(engine.handle.map(|h| h.external_key).as_deref(), Some("ch-1"));
    let attrs: serde_json::Value = serde_json::from_str(&change.event.data_json).unwrap();
    assert_eq!(attrs["reconciled"], "true");
    assert_eq!(attrs["step_state"], "SUCCEEDED");
    assert_eq!(change.event.step.as_deref(), Some("create"));
}

#[test]
fn details_merge_over_the_stored_ones_and_raw_fields_replace() {
    let mut o = onboarding(AwaitingCustomer);
    o.details_json = r#"{"channel_id":"ch-1","go_live":true,"provider_fields":{"old":"1"}}"#.into();
    o.engine_json = r#"{"stalled_from":"PENDING"}"#.into();
    let steps = rows(&o, "scan", 1);
    let specs = specs();
    let (details, engine) =
        (OnboardingDetails::parse(o.provider, &o.details_json).unwrap(), EngineState::parse(&o.engine_json).unwrap());
    let ran = Ran {
        onboarding: &o,
        details: &details,
        engine: &engine,
        steps: &steps,
        current: &steps[1],
        specs: &specs,
        spec: &specs[1],
        provider: ProviderKind::Whapi,
    };
    let mut observed = obs("NEW", None);
    observed.fields.insert("status".into(), "QR".into());
    let out = StepOutcome::wait(Duration::from_secs(30), observed)
        .with_details(WhapiDetails { mode: Some(crate::domain::ChannelMode::Trial), ..WhapiDetails::default() });
    let StepPlan::Write { change, .. } = plan::plan(&ran, &outcome(out), &BACKOFF, NOW) else {
        panic!("new details and status are news")
    };
    assert_eq!(change.engine_json, None, "the engine state is untouched without a handle");
    let (d, e) = after(&o, &change);
    assert_eq!(d.channel_id.as_ref().map(|c| c.as_str()), Some("ch-1"), "kept");
    assert_eq!(d.go_live, Some(true), "kept");
    assert_eq!(d.mode, Some(crate::domain::ChannelMode::Trial), "set");
    let fields: Vec<_> = d.provider_fields.unwrap().into_keys().collect();
    assert_eq!(fields, vec!["status".to_string()], "the last observation's fields replace the old ones");
    assert_eq!(e.stalled_from, Some(Pending));
}

#[test]
fn a_patch_for_another_provider_is_refused_and_said_so() {
    let out = done("CREATED", None).with_details(GupshupDetails { app_token_ready: Some(true), ..Default::default() });
    let (o, plan) = run(Pending, "create", 1, outcome(out));
    let StepPlan::Write { change, .. } = plan else { panic!("a change is written") };
    assert_eq!(after(&o, &change).0, WhapiDetails::default(), "nothing of it stored");
    let attrs: serde_json::Value = serde_json::from_str(&change.event.data_json).unwrap();
    assert!(attrs["details_refused"].as_str().unwrap().contains("gupshup"), "{attrs}");
}

#[test]
fn a_poll_that_waits_starts_its_count_afresh_unless_it_found_a_resource() {
    let (_, plan) = run(AwaitingCustomer, "scan", 4, outcome(wait("OLD", None)));
    let StepPlan::Reschedule(step) = plan else { panic!("quiet") };
    assert_eq!((step.attempts, step.next_run_ms), (0, Some(NOW + 30_000)));
    let found = wait("OLD", None)
        .handle(crate::providers::ProviderHandle { external_key: "app".into(), data: serde_json::json!({}) })
        .found();
    let (_, plan) = run(AwaitingCustomer, "scan", 4, outcome(found));
    let StepPlan::Write { change, .. } = plan else { panic!("a handle is news") };
    assert_eq!(change.steps[0].attempts, 4);
}

#[test]
fn backoff_grows_capped_and_jittered() {
    let b = |draw| Backoff { base_ms: 1_000, max_ms: 8_000, draw };
    assert_eq!(b(0).delay(1), Duration::from_millis(500));
    assert_eq!(b(500).delay(1), Duration::from_millis(1_000), "the cap itself");
    assert_eq!(b(501).delay(1), Duration::from_millis(500), "wraps into the range");
    assert_eq!(b(0).delay(3), Duration::from_millis(2_000));
    assert_eq!(b(0).delay(30), Duration::from_millis(4_000), "capped at max");
    for draw in [0, 1, 7, u64::MAX] {
        let d = Backoff { base_ms: 0, max_ms: 0, draw }.delay(1);
        assert!(d <= Duration::from_millis(1), "a zero base still gives a tiny delay");
    }
}

#[test]
fn a_stop_is_refused_from_a_terminal_state_and_stalls_keep_later_steps() {
    let change =
        |o: &OnboardingRecord| OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), NOW);
    let stop = |state, step| Stop {
        state,
        why: "why".into(),
        raw: String::new(),
        step,
        attrs: Default::default(),
        rows: Vec::new(),
    };
    let engine = EngineState::default();
    let o = onboarding(Failed);
    assert!(
        plan::stop(&o, &engine, &rows(&o, "create", 1), change(&o), stop(Stalled, Some("create"))).unwrap().is_none()
    );
    let o = onboarding(Provisioning);
    let stalled =
        plan::stop(&o, &engine, &rows(&o, "scan", 1), change(&o), stop(Stalled, Some("scan"))).unwrap().unwrap();
    assert!(stalled.steps.is_empty(), "a stall skips nothing: RetryPipeline resumes");
    assert_eq!(stalled.provider_status, None, "no raw code, no raw status");
    assert_eq!(stalled.state_deadline_ms, Patch::Clear);
    let failed =
        plan::stop(&o, &engine, &rows(&o, "scan", 1), change(&o), stop(Failed, Some("scan"))).unwrap().unwrap();
    assert_eq!(
        expect_steps(&[("provision", S::Skipped)]),
        failed.steps.iter().map(|s| (s.name.clone(), s.state)).collect::<Vec<_>>()
    );
}
