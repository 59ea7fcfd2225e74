//! The webhook worker (design §5): applies the provider events the ingress stored.
//!
//! - Hot path: the ingress stores each event already leased to this replica and hands it
//!   over through [`Handoff`], an in-process queue this worker drains at once, so no claim
//!   write sits between the 2xx and the change. The queue is memory only: after a crash the
//!   events are still pending in the store and come back through the claim path once their
//!   lease lapses.
//! - Recovery path: every engine tick the worker claims pending events whose lease lapsed or
//!   that were stored unleased (by an API-only replica, or while the queue was full).
//! - A batch is planned in memory (each account, onboarding and step list read once per
//!   batch; several events of one onboarding chained on each other) and written in one
//!   transaction ([`crate::store::Store::apply_changes`]), each change marking its event
//!   processed; notices go out after the commit. A change whose onboarding moved meanwhile is
//!   planned again on fresh rows, in order, so per-onboarding callback order holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Core;
use super::context::engine_state;
use super::engine::EngineState;
use super::pipeline_rows::{CONFLICT_RETRIES, log_change, skip_unfinished};
use crate::domain::{AccountId, EventKind, OnboardingId, OnboardingState, Patch, StepState, UnixMs, now_ms};
use crate::error::AppError;
use crate::providers::{CallbackEvent, Provider};
use crate::store::{
    ChangeOutcome, NewEvent, OnboardingChange, OnboardingRecord, StepRecord, StoreError, WebhookEventRecord,
    WebhookStatus,
};

/// Most events planned and written together (one write transaction).
const BATCH: usize = 256;
/// Most events waiting in the hand-off queue (their bodies are in memory); past it the
/// ingress stores events unleased and the claim path takes them.
const HANDOFF_CAPACITY: usize = 10_000;

/// One stored webhook event to apply, with its provider event when the ingress already
/// parsed the body.
#[derive(Debug, Clone)]
pub struct Handed {
    /// The stored row.
    pub record: WebhookEventRecord,
    /// The provider event it holds, if already parsed.
    pub callback: Option<CallbackEvent>,
}

impl Handed {
    /// A claimed row (its body is parsed again when planned).
    pub fn claimed(record: WebhookEventRecord) -> Self {
        Self { record, callback: None }
    }
}

/// Events the ingress stored leased to this replica, waiting for its webhook worker.
#[derive(Debug, Default)]
pub struct Handoff {
    queue: Mutex<VecDeque<Handed>>,
    wake: tokio::sync::Notify,
}

impl Handoff {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Handed>> {
        // A panic while holding the lock leaves a valid queue: keep using it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the ingress may hand more events over (else it stores them unleased).
    pub fn has_room(&self) -> bool {
        self.queue().len() < HANDOFF_CAPACITY
    }

    /// Queues events for the worker and wakes it.
    pub fn push(&self, events: Vec<Handed>) {
        self.queue().extend(events);
        self.wake.notify_one();
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.queue().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self, max: usize) -> Vec<Handed> {
        let mut q = self.queue();
        let n = q.len().min(max);
        q.drain(..n).collect()
    }
}

/// What a batch came to, per event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WebhookReport {
    /// Changes written (one event each).
    pub applied: usize,
    /// Events finished without a change (ignored or malformed).
    pub finished: usize,
    /// Events another worker had processed already (not applied again).
    pub already_processed: usize,
    /// Changes not written because their onboarding moved meanwhile; planned again.
    pub conflicts: usize,
    /// Events left pending under their lease (an error; the claim path retries them).
    pub deferred: usize,
}

impl std::ops::AddAssign for WebhookReport {
    fn add_assign(&mut self, o: Self) {
        self.applied += o.applied;
        self.finished += o.finished;
        self.already_processed += o.already_processed;
        self.conflicts += o.conflicts;
        self.deferred += o.deferred;
    }
}

/// A batch planned on the rows read for it, ready to write.
#[derive(Debug, Default)]
pub struct WebhookPlan {
    /// Changes in event order, each with the event it consumes.
    changes: Vec<(Handed, OnboardingChange)>,
    /// Events done without a change, with their status and note.
    finished: Vec<(Handed, WebhookStatus, String)>,
    /// Events that cannot be planned now.
    deferred: usize,
}

impl WebhookPlan {
    /// How many changes it would write.
    pub fn changes(&self) -> usize {
        self.changes.len()
    }
}

/// The onboarding a callback names: its account and provider-side key.
type Resource = (AccountId, String);

impl Core {
    /// Applies handed-over and claimed webhook events until `shutdown` flips.
    pub(super) async fn run_webhook_worker(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let tick = std::time::Duration::from_millis(self.settings.engine.tick_ms);
        let mut next_claim = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut batch = self.webhook_handoff.take(BATCH);
            let room = BATCH - batch.len();
            if room > 0 && tokio::time::Instant::now() >= next_claim {
                match self.claim_webhooks(room).await {
                    Ok(claimed) => {
                        // A full claim: more may be waiting, so claim again at once.
                        next_claim = tokio::time::Instant::now()
                            + if claimed.len() == room { std::time::Duration::ZERO } else { tick };
                        batch.extend(claimed);
                    }
                    Err(e) => {
                        next_claim = tokio::time::Instant::now() + tick;
                        tracing::debug!(error = %e.message, "Engine cannot claim webhook events.");
                    }
                }
            }
            if !batch.is_empty() {
                self.apply_webhooks(batch).await;
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = self.webhook_handoff.wake.notified() => {}
                _ = tokio::time::sleep_until(next_claim) => {}
                _ = shutdown.changed() => {}
            }
        }
        // What was handed over is leased to this replica: apply it rather than leave it for
        // the lease to lapse.
        let rest = self.webhook_handoff.take(usize::MAX);
        if !rest.is_empty() {
            self.apply_webhooks(rest).await;
        }
    }

    async fn claim_webhooks(&self, limit: usize) -> Result<Vec<Handed>, AppError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let claimed = self.store.claim_webhook_events(&self.worker_id, now_ms(), self.lease(), limit).await?;
        Ok(claimed.into_iter().map(Handed::claimed).collect())
    }

    /// One pass of the recovery path: claims pending webhook events whose lease lapsed (or
    /// that nobody leased) and applies them. Returns how many were claimed.
    pub async fn webhook_tick(&self) -> Result<usize, AppError> {
        let claimed = self.claim_webhooks(BATCH).await?;
        let n = claimed.len();
        self.apply_webhooks(claimed).await;
        Ok(n)
    }

    /// Applies stored webhook events, in batches, planning again what conflicted. Events
    /// that cannot be applied now stay pending under their lease.
    pub async fn apply_webhooks(&self, mut events: Vec<Handed>) -> WebhookReport {
        let mut report = WebhookReport::default();
        while !events.is_empty() {
            // Each batch settles before the next starts, so a re-planned event never falls
            // behind a later event of its onboarding.
            let rest = events.split_off(events.len().min(BATCH));
            let mut pending = std::mem::replace(&mut events, rest);
            for _ in 0..CONFLICT_RETRIES {
                if pending.is_empty() {
                    break;
                }
                let plan = self.plan_webhooks(pending).await;
                let (done, again) = self.commit_webhooks(plan).await;
                report += done;
                pending = again;
            }
            if !pending.is_empty() {
                tracing::warn!(
                    events = pending.len(),
                    "Webhook events not applied after repeated concurrent changes; they will be retried."
                );
                report.deferred += pending.len();
            }
        }
        report
    }

    /// Plans a batch: reads what it needs once (accounts, onboardings, steps, concurrently)
    /// and computes each event's change on top of the previous ones of its onboarding.
    pub async fn plan_webhooks(&self, events: Vec<Handed>) -> WebhookPlan {
        let now = now_ms();
        let mut plan = WebhookPlan::default();
        let mut adapters: HashMap<AccountId, Option<Arc<dyn Provider>>> = HashMap::new();
        let mut parsed: Vec<(Handed, Arc<dyn Provider>, CallbackEvent)> = Vec::with_capacity(events.len());
        let mut seen = HashSet::new();
        for ev in events {
            // The same row twice (handed over, then claimed again after its lease lapsed):
            // once is enough; the store refuses a second application anyway.
            if !seen.insert(ev.record.id.clone()) {
                continue;
            }
            let account_id = ev.record.account_id.clone();
            let adapter = match adapters.get(&account_id) {
                Some(a) => a.clone(),
                None => match self.adapter_of(&account_id).await {
                    Ok(a) => adapters.entry(account_id).or_insert(a).clone(),
                    Err(e) => {
                        self.defer(&mut plan, &ev, &e.message);
                        continue;
                    }
                },
            };
            let Some(adapter) = adapter else {
                plan.finished.push((ev, WebhookStatus::Ignored, "account deleted".into()));
                continue;
            };
            let cb = match &ev.callback {
                Some(cb) => cb.clone(),
                None => match adapter.parse_callback(&ev.record.body) {
                    Err(e) => {
                        plan.finished.push((ev, WebhookStatus::Malformed, e.to_string()));
                        continue;
                    }
                    Ok(list) => match list.into_iter().find(|c| c.dedupe_key == ev.record.dedupe_key) {
                        Some(cb) => cb,
                        None => {
                            plan.finished.push((ev, WebhookStatus::Ignored, "event not in body".into()));
                            continue;
                        }
                    },
                },
            };
            parsed.push((ev, adapter, cb));
        }

        // Resources whose reads failed, or with an event that could not be planned: their
        // later events wait too, so they are never applied out of order.
        let mut blocked: HashSet<Resource> = HashSet::new();
        let resources: HashSet<Resource> =
            parsed.iter().map(|(ev, _, cb)| (ev.record.account_id.clone(), cb.external_key.clone())).collect();
        // One read per account for the onboardings, one for all their steps: a batch costs the
        // store's readers a few round trips, not two per onboarding.
        let mut keys_by_account: HashMap<AccountId, Vec<String>> = HashMap::new();
        for (account, key) in &resources {
            keys_by_account.entry(account.clone()).or_default().push(key.clone());
        }
        let mut onboardings: HashMap<Resource, Option<OnboardingRecord>> = HashMap::new();
        for (account, keys) in keys_by_account {
            match self.store.onboardings_by_external_keys(&account, &keys).await {
                Ok(found) => {
                    let mut found: HashMap<String, OnboardingRecord> =
                        found.into_iter().filter_map(|o| o.external_key.clone().map(|k| (k, o))).collect();
                    for key in keys {
                        let o = found.remove(&key);
                        onboardings.insert((account.clone(), key), o);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the onboardings of webhook events; they will be retried.");
                    blocked.extend(keys.into_iter().map(|k| (account.clone(), k)));
                }
            }
        }
        // The callback rules read the steps of any onboarding not finished yet.
        let open: Vec<OnboardingId> =
            onboardings.values().flatten().filter(|o| !o.state.is_terminal()).map(|o| o.id.clone()).collect();
        let mut steps: HashMap<OnboardingId, Vec<StepRecord>> = HashMap::new();
        let mut unread: HashSet<OnboardingId> = HashSet::new();
        if !open.is_empty() {
            match self.store.steps_of(&open).await {
                Ok(all) => {
                    for id in &open {
                        steps.entry(id.clone()).or_default();
                    }
                    for s in all {
                        steps.entry(s.onboarding_id.clone()).or_default().push(s);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read steps for webhook events; they will be retried.");
                    unread.extend(open);
                }
            }
        }

        for (ev, adapter, cb) in parsed {
            let resource = (ev.record.account_id.clone(), cb.external_key.clone());
            if blocked.contains(&resource) {
                self.defer(&mut plan, &ev, "an earlier event of its onboarding is not applied yet");
                continue;
            }
            let Some(found) = onboardings.get(&resource) else {
                self.defer(&mut plan, &ev, "its onboarding was not read");
                continue;
            };
            let Some(o) = found.clone() else {
                plan.finished.push((ev, WebhookStatus::Ignored, "no onboarding for this resource".into()));
                continue;
            };
            if unread.contains(&o.id) {
                blocked.insert(resource);
                self.defer(&mut plan, &ev, "its steps were not read");
                continue;
            }
            // A finished onboarding has no steps read: the callback rules need none for it.
            let rows = steps.entry(o.id.clone()).or_default();
            match self.callback_change(&o, adapter.as_ref(), &cb, &ev.record.id, rows, now) {
                Ok(change) => {
                    // The next event of this onboarding builds on this one.
                    onboardings.insert(resource, Some(change.applied_to(&o)));
                    for s in &change.steps {
                        match rows.iter_mut().find(|r| r.name == s.name) {
                            Some(r) => *r = s.clone(),
                            None => rows.push(s.clone()),
                        }
                    }
                    plan.changes.push((ev, change));
                }
                Err(e) => {
                    blocked.insert(resource);
                    self.defer(&mut plan, &ev, &e.message);
                }
            }
        }
        plan
    }

    /// Writes a planned batch: the changes in one transaction, then the events finished
    /// without one. Returns what happened and the events to plan again (in order).
    pub async fn commit_webhooks(&self, plan: WebhookPlan) -> (WebhookReport, Vec<Handed>) {
        let mut report = WebhookReport { deferred: plan.deferred, ..Default::default() };
        let (events, changes): (Vec<Handed>, Vec<OnboardingChange>) = plan.changes.into_iter().unzip();
        let outcomes = self.write_changes(&changes).await;
        let mut retry = Vec::new();
        let mut wake = false;
        // Onboardings with a change that failed outright: their later events wait for the
        // claim path too, behind it.
        let mut stuck: HashSet<&OnboardingId> = HashSet::new();
        for ((ev, change), outcome) in events.into_iter().zip(&changes).zip(outcomes) {
            let id = change.onboarding_id.as_ref();
            match outcome {
                Ok(ChangeOutcome::Applied(e)) => {
                    log_change(&e);
                    wake |= e.kind.wakes_engine();
                    report.applied += 1;
                }
                Ok(ChangeOutcome::AlreadyProcessed(_)) => report.already_processed += 1,
                Ok(ChangeOutcome::Conflict(_) | ChangeOutcome::NotFound(_))
                    if !id.is_some_and(|i| stuck.contains(i)) =>
                {
                    report.conflicts += 1;
                    retry.push(ev);
                }
                Ok(_) => report.deferred += 1,
                Err(e) => {
                    tracing::warn!(webhook_event = %ev.record.id, error = %e, "Webhook event not applied; it will be retried.");
                    stuck.extend(id);
                    report.deferred += 1;
                }
            }
        }
        for (ev, status, note) in plan.finished {
            match self.store.finish_webhook_event(&ev.record.id, status, Some(&note)).await {
                Ok(()) => report.finished += 1,
                Err(e) => {
                    tracing::warn!(webhook_event = %ev.record.id, error = %e, "Webhook event not finished; it will be retried.");
                    report.deferred += 1;
                }
            }
        }
        if wake {
            self.wake_engine();
        }
        (report, retry)
    }

    /// The batch in one transaction; when that fails for another reason than an outage, one
    /// change at a time, so one bad change does not hold back the others.
    async fn write_changes(&self, changes: &[OnboardingChange]) -> Vec<Result<ChangeOutcome, StoreError>> {
        let error = match self.store.apply_changes(changes).await {
            Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
            Err(e) if changes.len() <= 1 || matches!(e, StoreError::Unavailable(_)) => e,
            Err(e) => {
                tracing::warn!(error = %e, changes = changes.len(), "Webhook batch not written; writing its changes one by one.");
                let mut out = Vec::with_capacity(changes.len());
                let mut blocked = HashSet::new();
                for c in changes {
                    if c.onboarding_id.as_ref().is_some_and(|id| blocked.contains(id)) {
                        out.push(Ok(ChangeOutcome::Conflict("an earlier change of its onboarding failed".into())));
                        continue;
                    }
                    let r =
                        self.store.apply_changes(std::slice::from_ref(c)).await.and_then(|mut v| {
                            v.pop().ok_or_else(|| StoreError::Other("no outcome for a change".into()))
                        });
                    if !matches!(r, Ok(ChangeOutcome::Applied(_)))
                        && let Some(id) = &c.onboarding_id
                    {
                        blocked.insert(id);
                    }
                    out.push(r);
                }
                return out;
            }
        };
        let message = error.to_string();
        let mut out = vec![Err(error)];
        out.extend((1..changes.len()).map(|_| Err(StoreError::Unavailable(message.clone()))));
        out
    }

    /// The adapter for an account's callbacks; `None` when the account was deleted.
    async fn adapter_of(&self, id: &AccountId) -> Result<Option<Arc<dyn Provider>>, AppError> {
        let Some(account) = self.store.account_unscoped(id).await? else {
            return Ok(None);
        };
        Ok(Some(self.provider_for(&account)?.0))
    }

    fn defer(&self, plan: &mut WebhookPlan, ev: &Handed, why: &str) {
        tracing::warn!(webhook_event = %ev.record.id, reason = why, "Webhook event not applied; it will be retried.");
        plan.deferred += 1;
    }

    /// The change a callback makes to its onboarding, marking the event processed: a state
    /// hint moves the onboarding when allowed and not stale; the waiting step is woken to
    /// confirm with the provider. `steps` are the onboarding's current rows.
    fn callback_change(
        &self,
        o: &OnboardingRecord,
        provider: &dyn Provider,
        cb: &CallbackEvent,
        webhook_id: &str,
        steps: &[StepRecord],
        now: UnixMs,
    ) -> Result<OnboardingChange, AppError> {
        let mut engine = engine_state(o)?;
        let last = engine.last_callback_ms;
        let stale = matches!((cb.occurred_ms, last), (Some(at), Some(last)) if at < last);
        let mut attrs: std::collections::BTreeMap<String, String> = cb.fields.clone();
        attrs.insert("event".into(), cb.raw_status.clone());
        let mut change = OnboardingChange {
            expect_sequence: Some(o.sequence),
            webhook_event_id: Some(webhook_id.to_string()),
            ..OnboardingChange::new(&o.id, NewEvent::new(EventKind::StateChanged, String::new()), now)
        };
        let mut kind = EventKind::Callback;
        // The adapter's own explanation (e.g. Whapi "the phone was logged out") when it has one.
        let mut reason = match cb.fields.get("reason").filter(|r| !r.is_empty()) {
            Some(why) => format!("{why} ({} callback {})", o.provider, cb.raw_status),
            None => format!("{} callback {}", o.provider, cb.raw_status),
        };
        if stale {
            attrs.insert("stale".into(), "true".into());
            reason = format!("{reason} (older than an event already applied; state unchanged)");
        } else {
            if let Some(at) = cb.occurred_ms {
                engine.last_callback_ms = Some(at);
                change.engine_json = Some(engine.to_json()?);
            }
            change.provider_status = Some(cb.raw_status.clone());
            if let Some(s) = cb.state
                && s != o.state
                && o.state.can_transition(s)
                && !matches!(o.state, OnboardingState::Stalled | OnboardingState::ReauthRequired)
            {
                change.state = Some(s);
                change.state_reason = Some(reason.clone());
                kind = EventKind::StateChanged;
                if s.is_terminal() {
                    change.steps = skip_unfinished(steps.to_vec(), now);
                    change.state_deadline_ms = Patch::Clear;
                } else if s.rank() < o.state.rank() {
                    // Moved back (a Whapi phone logged out of a live channel): reopen the step
                    // that waits in that state, so the next login is noticed and confirmed.
                    if let Some(step) = self.reopen_for(o, &engine, provider, s, steps, now)? {
                        change.state_deadline_ms = Patch::replace(step.deadline_ms);
                        change.steps.push(step);
                    }
                }
            }
            if !o.state.is_terminal()
                && change.steps.is_empty()
                && let Some(w) = steps.iter().find(|s| s.state == StepState::Waiting)
            {
                // Wake the waiting step so the adapter confirms and moves on at once. By name
                // only: a copy of the row read for this plan would overwrite data its own run
                // wrote since (its idempotency markers), which the sequence does not guard.
                change.wake_steps.push(w.name.clone());
            }
        }
        change.event = NewEvent::new(kind, reason).with_attributes(&attrs);
        Ok(change)
    }

    /// The finished polled step of `o`'s pipeline that waits in `state`, made due again with a
    /// fresh attempt budget and deadline; None when the pipeline has no such step.
    fn reopen_for(
        &self,
        o: &OnboardingRecord,
        engine: &EngineState,
        provider: &dyn Provider,
        state: OnboardingState,
        steps: &[StepRecord],
        now: UnixMs,
    ) -> Result<Option<StepRecord>, AppError> {
        let request = self.open_request(o, engine)?;
        let Some(spec) =
            provider.pipeline(&request).into_iter().find(|s| s.enabled && s.polled && s.enter_state == Some(state))
        else {
            return Ok(None);
        };
        let Some(mut step) = steps.iter().find(|s| s.name == spec.name).cloned() else {
            return Ok(None);
        };
        if !step.state.is_done() {
            return Ok(None);
        }
        step.state = StepState::Waiting;
        step.attempts = 0;
        step.next_run_ms = Some(now);
        step.deadline_ms = Some(now.saturating_add(spec.deadline.as_millis() as i64));
        step.finished_ms = None;
        step.lease_owner = None;
        step.lease_until_ms = None;
        step.data_json = "{}".into();
        step.updated_ms = now;
        Ok(Some(step))
    }
}
