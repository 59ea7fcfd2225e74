//! The delivery worker (issue 19): on every replica, a loop that fans the event outbox out
//! into deliveries and sends the due ones under leases (any replica may send any delivery; a
//! crashed sender's lease lapses and another takes it over). A claim takes each due queue's
//! head with the run of pending rows behind it ([`RUN`]), which one task sends in order,
//! stopping at the first that does not get through. Each attempt builds the
//! CloudEvent from the log, signs it (webhooks) or sets `Nats-Msg-Id` (JetStream), and applies
//! the retry policy's decision: delivered, retry later, dead letter, or (410 Gone, failing too
//! long) disable the destination with its reason.

mod notices;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use super::Core;
use crate::delivery::cloudevent::{CloudEvent, EventParts};
use crate::delivery::guard::RequestLimits;
use crate::delivery::nats::{JetStreamPublisher, SubjectTemplate};
use crate::delivery::retry::{Decision, FailureKind, Outcome, RetryPolicy};
use crate::delivery::signing::SigningKeys;
use crate::delivery::webhook::{ExtraHeaders, WebhookRequest, WebhookSender};
use crate::domain::{UnixMs, now_ms};
use crate::error::AppError;
use crate::store::{DeliveryRecord, DeliveryState, DeliveryUpdate, DestinationRecord, EventRecord, SinkKind};

/// Deliveries by outcome (`delivered`, `retry`, `dead`, `disabled`).
pub const DELIVERIES: &str = "wa_onboard_deliveries_total";
/// Commit-to-acknowledged latency of delivered events.
pub const DELIVERY_LATENCY: &str = "wa_onboard_delivery_latency_seconds";
/// One attempt's duration, by sink.
pub const DELIVERY_ATTEMPT: &str = "wa_onboard_delivery_attempt_duration_seconds";
/// Pending deliveries per destination, and outbox rows (`destination="outbox"`).
pub const DELIVERY_BACKLOG: &str = "wa_onboard_delivery_backlog";
/// Deliveries dead-lettered.
pub const DEAD_LETTERS: &str = "wa_onboard_delivery_dead_letters_total";

/// Outbox rows fanned out per transaction.
const DISPATCH_BATCH: u32 = 500;

/// Outcomes written per transaction at most (more when one run alone is longer).
const FINISH_BATCH: usize = 256;

/// Rows of one queue (destination and onboarding) claimed behind its head at most: after an
/// outage each queue's backlog goes out in runs, one claim, one event read and one outcome
/// write per run instead of per event, sent in order by one task.
const RUN: u32 = 32;

/// Runs whose outcomes may be waiting for the writer, per sending slot: sending slots are
/// freed when the sends are done, not when the outcome is written, so this bounds the leased
/// work in flight when the store is slower than the receivers.
const WAITING_PER_SLOT: u32 = 4;

/// A run's outcomes on their way to the store, and where the verdicts (written, or the lease
/// was lost) go back, one per update.
type Waiting = (Vec<DeliveryUpdate>, oneshot::Sender<Result<Vec<bool>, String>>);

/// Hands outcomes to the worker's one writer of outcomes, which writes every outcome ready
/// at that moment in one transaction: under load, one write per batch instead of one per
/// attempt (on SQLite the writer is shared with the ingress and the engine).
#[derive(Clone)]
struct Finisher(mpsc::UnboundedSender<Waiting>);

impl Finisher {
    /// Writes `updates` in order (batched with others); per update, false if its lease was
    /// lost meanwhile.
    async fn finish(&self, updates: Vec<DeliveryUpdate>) -> Result<Vec<bool>, AppError> {
        let (reply, verdict) = oneshot::channel();
        self.0.send((updates, reply)).map_err(|_| AppError::internal("the delivery outcome writer stopped"))?;
        verdict
            .await
            .map_err(|_| AppError::internal("the delivery outcome writer stopped"))?
            .map_err(|e| AppError::internal(format!("record delivery outcomes: {e}")))
    }
}

/// One claimed run: consecutive pending rows of one queue, in sequence order.
type Run = Vec<DeliveryRecord>;

/// Splits claimed rows (sorted by destination, onboarding, sequence) into runs.
fn runs(claimed: Vec<DeliveryRecord>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for d in claimed {
        match out.last_mut() {
            Some(run) if run[0].destination_id == d.destination_id && run[0].onboarding_id == d.onboarding_id => {
                run.push(d)
            }
            _ => out.push(vec![d]),
        }
    }
    out
}

/// What the worker is configured with (`app.rs` builds it from `delivery.*`).
#[derive(Debug, Clone)]
pub struct DeliveryWorkerSettings {
    /// Deliveries sent at once.
    pub concurrency: u32,
    /// Idle time between passes when nothing woke the worker.
    pub tick: Duration,
    /// How long a claimed delivery stays ours (longer than an attempt's timeout).
    pub lease: Duration,
    /// Retries and dead letters.
    pub retry: RetryPolicy,
    /// Timeout and response cap of webhook attempts.
    pub limits: RequestLimits,
    /// A destination failing this long is disabled.
    pub disable_after: Duration,
    /// NATS servers; empty: NATS deliveries retry until configured.
    pub nats_urls: Vec<String>,
    /// The CloudEvents `source` of every event.
    pub source: String,
}

/// What one attempt ended with.
struct Tried {
    /// What the policy decided.
    decision: Decision,
    /// The HTTP status, if any.
    status: Option<u16>,
    /// The failure, if any.
    error: Option<String>,
}

/// The worker of one replica.
pub struct DeliveryWorker {
    core: Core,
    settings: DeliveryWorkerSettings,
    webhook: WebhookSender,
    /// Connected on first use, so a replica without NATS destinations never connects.
    nats: Mutex<Option<Arc<JetStreamPublisher>>>,
    owner: String,
}

impl DeliveryWorker {
    /// A worker sending through the core's egress policy.
    pub fn new(core: Core, settings: DeliveryWorkerSettings) -> Result<Self, AppError> {
        let webhook = WebhookSender::new(core.settings.delivery.egress.clone(), settings.limits)
            .map_err(|e| AppError::internal(format!("delivery HTTP client: {e}")))?;
        let owner = format!("{}/delivery", core.worker_id);
        Ok(Self { core, settings, webhook, nats: Mutex::new(None), owner })
    }

    /// Runs until `shutdown`: fan-out, then as many claims as there are free sending slots,
    /// each attempt its own task (a slow receiver holds its slot, not the others'); when a
    /// pass found nothing, a wait for a change notice, a finished attempt or the tick. At
    /// shutdown, attempts in flight get a few seconds to record their outcome (an abandoned
    /// one is retried under the same event id once its lease lapses).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.settings.concurrency.max(1) as usize));
        let waiting =
            Arc::new(tokio::sync::Semaphore::new((self.settings.concurrency.max(1) * WAITING_PER_SLOT) as usize));
        let finished = Arc::new(tokio::sync::Notify::new());
        let (outcomes, pending) = mpsc::unbounded_channel();
        let writer = tokio::spawn(self.clone().write_outcomes(pending));
        let finisher = Finisher(outcomes);
        let mut feed = self.core.store.subscribe();
        // Due at the first pass: the gauge exists from startup, not 10 s later.
        let mut backlog_at = Instant::now().checked_sub(Duration::from_secs(10)).unwrap_or_else(Instant::now);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let busy = match self.pass(&slots, &waiting, &finished, &finisher).await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(error = %e.message, "delivery pass failed");
                    false
                }
            };
            if backlog_at.elapsed() >= Duration::from_secs(10) {
                backlog_at = Instant::now();
                self.report_backlog().await;
            }
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.tick) => {}
                    // A lagged receiver is a wake-up too.
                    _ = feed.recv() => {}
                    _ = finished.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        let all = self.settings.concurrency.max(1);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _sends = slots.acquire_many(all).await;
            let _writes = waiting.acquire_many(all * WAITING_PER_SLOT).await;
        })
        .await;
        // The writer ends once the attempts' handles are gone.
        drop(finisher);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }

    /// Writes outcomes as they come: the first run waiting, plus every other already waiting
    /// (up to [`FINISH_BATCH`] rows), in one transaction.
    async fn write_outcomes(self: Arc<Self>, mut pending: mpsc::UnboundedReceiver<Waiting>) {
        while let Some(first) = pending.recv().await {
            let mut rows = first.0.len();
            let mut batch = vec![first];
            while rows < FINISH_BATCH {
                match pending.try_recv() {
                    Ok(next) => {
                        rows += next.0.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let mut updates = Vec::with_capacity(rows);
            let mut replies = Vec::with_capacity(batch.len());
            for (u, reply) in batch {
                replies.push((u.len(), reply));
                updates.extend(u);
            }
            match self.core.store.finish_deliveries(&updates, &self.owner).await {
                Ok(done) => {
                    let mut done = done.into_iter();
                    for (n, reply) in replies {
                        let _ = reply.send(Ok(done.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (_, reply) in replies {
                        let _ = reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }

    /// One fan-out and one round of claims; how much it started.
    async fn pass(
        self: &Arc<Self>,
        slots: &Arc<tokio::sync::Semaphore>,
        waiting: &Arc<tokio::sync::Semaphore>,
        finished: &Arc<tokio::sync::Notify>,
        finisher: &Finisher,
    ) -> Result<usize, AppError> {
        let now = now_ms();
        let stats = self.core.store.dispatch_outbox(now, DISPATCH_BATCH).await?;
        let free = slots.available_permits().min(waiting.available_permits());
        let free = u32::try_from(free).unwrap_or(u32::MAX);
        let claimed = if free == 0 {
            Vec::new()
        } else {
            self.core.store.claim_deliveries(&self.owner, now, self.settings.lease, free, RUN).await?
        };
        let n = claimed.len();
        // One read per destination per pass, not one per attempt (read after the claim, so
        // as fresh as the claim itself).
        let mut destinations: HashMap<String, Option<Arc<DestinationRecord>>> = HashMap::new();
        for d in &claimed {
            if !destinations.contains_key(&d.destination_id) {
                let found = self.core.store.destination_unscoped(&d.destination_id).await?;
                destinations.insert(d.destination_id.clone(), found.map(Arc::new));
            }
        }
        for run in runs(claimed) {
            let Ok(slot) = slots.clone().acquire_owned().await else { break };
            let Ok(write) = waiting.clone().acquire_owned().await else { break };
            let dest = destinations.get(&run[0].destination_id).cloned().flatten();
            let (me, finished, finisher) = (self.clone(), finished.clone(), finisher.clone());
            tokio::spawn(async move {
                me.send_run(&run, dest, slot, &finished, &finisher).await;
                drop(write);
                // The next sequence of the same onboarding may be due now.
                finished.notify_one();
            });
        }
        // Notices after the events: they take the slots left.
        let notices = self.notice_pass(slots, finished).await?;
        Ok(usize::try_from(stats.events).unwrap_or(usize::MAX) + n + notices)
    }

    async fn report_backlog(&self) {
        let Ok((outbox, pending)) = self.core.store.delivery_backlog().await else { return };
        ::metrics::gauge!(DELIVERY_BACKLOG, "destination" => "outbox").set(outbox as f64);
        for (destination, n) in pending {
            ::metrics::gauge!(DELIVERY_BACKLOG, "destination" => destination).set(n as f64);
        }
    }

    /// Sends one run in order, its outcomes written back together. The sending slot is
    /// freed as soon as the sends are done (the write is bounded by the waiting permit).
    #[tracing::instrument(skip_all, fields(destination = %run[0].destination_id, event_id = %run[0].event_id(), events = run.len()))]
    async fn send_run(
        &self,
        run: &[DeliveryRecord],
        dest: Option<Arc<DestinationRecord>>,
        slot: tokio::sync::OwnedSemaphorePermit,
        finished: &tokio::sync::Notify,
        finisher: &Finisher,
    ) {
        if let Err(e) = self.try_run(run, dest, slot, finished, finisher).await {
            // Not the receiver's fault (a store outage, a corrupt row): the leases lapse and
            // the deliveries are tried again; nothing is lost.
            tracing::warn!(error = %e.message, "delivery attempt not completed");
        }
    }

    /// The events of a run, by sequence: one read for the run's span (a destination whose
    /// filter skips most events would make the span long: then one read per row).
    async fn run_events(&self, run: &[DeliveryRecord]) -> Result<HashMap<i64, EventRecord>, AppError> {
        let store = &self.core.store;
        let (first, last) = (run[0].sequence, run[run.len() - 1].sequence);
        let span = u32::try_from(last - first + 1).unwrap_or(u32::MAX);
        let mut events = HashMap::with_capacity(run.len());
        if span <= 4 * RUN {
            for e in store.events(&run[0].onboarding_id, first - 1, span).await? {
                events.insert(e.sequence, e);
            }
        } else {
            for d in run {
                if let Some(e) = store.events(&d.onboarding_id, d.sequence - 1, 1).await?.into_iter().next() {
                    events.insert(e.sequence, e);
                }
            }
        }
        events.retain(|seq, _| run.iter().any(|d| d.sequence == *seq));
        Ok(events)
    }

    async fn try_run(
        &self,
        run: &[DeliveryRecord],
        dest: Option<Arc<DestinationRecord>>,
        slot: tokio::sync::OwnedSemaphorePermit,
        finished: &tokio::sync::Notify,
        finisher: &Finisher,
    ) -> Result<(), AppError> {
        // Deleted since the claim: its deliveries went with it.
        let Some(dest) = dest else { return Ok(()) };
        let events = self.run_events(run).await?;
        let onboarding = self.core.store.onboarding_unscoped(&run[0].onboarding_id).await?;
        let signing = match dest.sink {
            SinkKind::Webhook => Some(self.webhook_secrets(&dest)?),
            SinkKind::Nats => None,
        };
        let started = Instant::now();
        // A run must end well inside its lease: past half of it, the rest is given back.
        let budget = (self.settings.lease / 2).saturating_sub(self.settings.limits.timeout);
        let mut updates = Vec::with_capacity(run.len());
        // The attempts made, beside their updates: (index in `updates`, decision, created).
        let mut attempts: Vec<(usize, Decision, UnixMs)> = Vec::with_capacity(run.len());
        let mut last: Option<(Tried, String)> = None;
        for (i, d) in run.iter().enumerate() {
            let stop = last.as_ref().is_some_and(|(t, _)| t.decision != Decision::Delivered)
                || (i > 0 && started.elapsed() >= budget);
            if stop {
                updates.extend(run[i..].iter().map(|d| self.released(d)));
                break;
            }
            let (Some(event), Some(onboarding)) = (events.get(&d.sequence), onboarding.as_ref()) else {
                // The onboarding was deleted with its log: nothing left to send.
                updates.push(self.update(
                    d,
                    DeliveryState::Dead,
                    now_ms(),
                    None,
                    Some("the event no longer exists".into()),
                ));
                continue;
            };
            let cloud = CloudEvent::new(EventParts {
                id: d.event_id(),
                source: self.settings.source.clone(),
                kind: event.kind.into(),
                subject: format!("onboardings/{}", onboarding.id.name()),
                time_ms: event.created_ms,
                reference: (!onboarding.reference.is_empty()).then(|| onboarding.reference.clone()),
                data: event_json(event),
            })
            .map_err(|e| AppError::internal(format!("cloud event of {}: {e}", d.event_id())))?;
            let sent = Instant::now();
            let attempt = u32::try_from(d.attempts.max(1)).unwrap_or(1);
            let tried = match &signing {
                Some((keys, headers)) => self.send_webhook(&dest, keys, headers, &cloud, attempt).await,
                None => self.publish_nats(&dest, &onboarding.provider.to_string(), &cloud, attempt).await,
            };
            ::metrics::histogram!(DELIVERY_ATTEMPT, "sink" => dest.sink.as_str()).record(sent.elapsed().as_secs_f64());
            let (state, next, _) = notices::settle(tried.decision, now_ms());
            attempts.push((updates.len(), tried.decision, event.created_ms));
            updates.push(self.update(d, state, next, tried.status, tried.error.clone()));
            last = Some((tried, d.event_id()));
        }
        drop(slot);
        finished.notify_one();
        let written = finisher.finish(updates).await?;
        let now = now_ms();
        for (i, decision, created_ms) in &attempts {
            if !written.get(*i).copied().unwrap_or(false) {
                // The lease lapsed (or a replay reset it): the other holder's outcome stands.
                continue;
            }
            let (_, _, outcome) = notices::settle(*decision, now);
            ::metrics::counter!(DELIVERIES, "outcome" => outcome).increment(1);
            match decision {
                Decision::Delivered => {
                    let latency = Duration::from_millis(u64::try_from(now - created_ms).unwrap_or(0));
                    ::metrics::histogram!(DELIVERY_LATENCY, "sink" => dest.sink.as_str()).record(latency.as_secs_f64());
                }
                Decision::DeadLetter => ::metrics::counter!(DEAD_LETTERS).increment(1),
                Decision::RetryAfter(_) | Decision::DisableDestination => {}
            }
        }
        // The destination is judged by the run's last attempt, if its outcome was written.
        let last_written = attempts.last().is_some_and(|(i, _, _)| written.get(*i).copied().unwrap_or(false));
        match last {
            Some((tried, event_id)) if last_written => self.judge_destination(&dest, &tried, &event_id, now).await,
            _ => Ok(()),
        }
    }

    /// The signing keys and extra headers of a webhook destination, opened once per run.
    fn webhook_secrets(&self, dest: &DestinationRecord) -> Result<(SigningKeys, ExtraHeaders), AppError> {
        let keys = self.core.destination_signing_keys(dest)?;
        let headers = ExtraHeaders::parse(&self.core.destination_headers(dest)?)
            .map_err(|e| AppError::internal(format!("stored headers of destination {}: {e}", dest.id)))?;
        Ok((keys, headers))
    }

    async fn send_webhook(
        &self,
        dest: &DestinationRecord,
        keys: &SigningKeys,
        headers: &ExtraHeaders,
        cloud: &CloudEvent,
        attempt: u32,
    ) -> Tried {
        let request = WebhookRequest {
            url: &dest.url,
            extra_headers: headers,
            keys,
            event: cloud,
            timestamp: now_ms().div_euclid(1000),
        };
        let result = self.webhook.send(&request).await;
        Tried {
            decision: self.settings.retry.decide(attempt, result.outcome(), rand::random::<f64>()),
            status: result.status,
            error: result.error.map(|e| e.message),
        }
    }

    async fn publish_nats(&self, dest: &DestinationRecord, provider: &str, cloud: &CloudEvent, attempt: u32) -> Tried {
        let failed = |kind: FailureKind, message: String| Tried {
            decision: self.settings.retry.decide(attempt, Outcome::Failed(kind), rand::random::<f64>()),
            status: None,
            error: Some(message),
        };
        let subject = match SubjectTemplate::parse(&dest.subject)
            .and_then(|t| t.render_type(dest.tenant_id.as_str(), provider, cloud.kind().token()))
        {
            Ok(s) => s,
            Err(e) => return failed(FailureKind::Other, e.to_string()),
        };
        let publisher = match self.publisher().await {
            Ok(p) => p,
            Err(e) => return failed(FailureKind::Connect, e),
        };
        match publisher.publish(&subject, cloud.id(), Bytes::from(cloud.to_body())).await {
            Ok(_) => Tried { decision: Decision::Delivered, status: None, error: None },
            Err(e) => failed(FailureKind::Other, e.to_string()),
        }
    }

    /// The JetStream publisher, connected on first use (and again after a failed connect).
    async fn publisher(&self) -> Result<Arc<JetStreamPublisher>, String> {
        let mut slot = self.nats.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        if self.settings.nats_urls.is_empty() {
            return Err("no NATS servers configured (delivery.nats_urls)".into());
        }
        let p = Arc::new(
            JetStreamPublisher::connect(&self.settings.nats_urls, self.settings.limits.timeout)
                .await
                .map_err(|e| e.to_string())?,
        );
        *slot = Some(p.clone());
        Ok(p)
    }

    fn update(
        &self,
        d: &DeliveryRecord,
        state: DeliveryState,
        next: UnixMs,
        status: Option<u16>,
        error: Option<String>,
    ) -> DeliveryUpdate {
        DeliveryUpdate {
            destination_id: d.destination_id.clone(),
            onboarding_id: d.onboarding_id.clone(),
            sequence: d.sequence,
            state,
            next_attempt_ms: next,
            last_status: status.map(i32::from),
            last_error: error,
            at_ms: now_ms(),
            unattempted: false,
        }
    }

    /// Gives back a row of a run that was not sent.
    fn released(&self, d: &DeliveryRecord) -> DeliveryUpdate {
        DeliveryUpdate { unattempted: true, ..self.update(d, DeliveryState::Pending, d.next_attempt_ms, None, None) }
    }
}

/// The `OnboardingEvent` of `e` in proto JSON (lowerCamelCase names, int64 as a string, enums
/// by name, RFC 3339 times), mapped by hand: `core` does not depend on the generated types.
pub fn event_json(e: &EventRecord) -> serde_json::Value {
    let attributes: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&e.data_json)
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| {
                        let text = match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, serde_json::Value::String(text))
                    })
                    .collect()
            })
            .unwrap_or_default();
    let time = rfc3339(e.created_ms);
    let mut event = serde_json::json!({
        "onboarding": format!("onboardings/{}", e.onboarding_id.name()),
        "sequence": e.sequence.to_string(),
        "type": e.kind.as_str(),
        "state": format!("ONBOARDING_STATE_{}", e.state.as_str()),
        "previousState": format!("ONBOARDING_STATE_{}", e.previous_state.as_str()),
        "reason": e.reason,
        "providerStatus": { "code": e.provider_status, "observeTime": time },
        "time": time,
    });
    if let Some(step) = &e.step {
        event["step"] = serde_json::Value::String(step.clone());
    }
    if !attributes.is_empty() {
        event["attributes"] = serde_json::Value::Object(attributes);
    }
    event
}

fn rfc3339(ms: UnixMs) -> String {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, OnboardingId, OnboardingState, TenantId};

    #[test]
    fn the_event_is_proto_json() {
        let t = TenantId::parse("t").expect("tenant");
        let e = EventRecord {
            onboarding_id: OnboardingId::scoped(&t, "o1").expect("id"),
            sequence: 7,
            kind: EventKind::StateChanged,
            state: OnboardingState::Live,
            previous_state: OnboardingState::Provisioning,
            reason: "live".into(),
            provider_status: "LIVE".into(),
            step: Some("link".into()),
            data_json: r#"{"a":1,"b":"x"}"#.into(),
            created_ms: 1_500,
        };
        let j = event_json(&e);
        assert_eq!(j["onboarding"], "onboardings/o1");
        assert_eq!(j["sequence"], "7");
        assert_eq!(j["state"], "ONBOARDING_STATE_LIVE");
        assert_eq!(j["previousState"], "ONBOARDING_STATE_PROVISIONING");
        assert_eq!(j["time"], "1970-01-01T00:00:01.500Z");
        assert_eq!(j["attributes"], serde_json::json!({"a": "1", "b": "x"}));
        assert_eq!(j["step"], "link");
        assert_eq!(j["providerStatus"]["code"], "LIVE");
    }
}
