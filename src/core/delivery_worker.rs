//! The delivery worker (issue 19): on every replica, a loop that fans the event outbox out
//! into deliveries and sends the due ones under leases (any replica may send any delivery; a
//! crashed sender's lease lapses and another takes it over). Each attempt builds the
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

/// Outcomes written per transaction at most.
const FINISH_BATCH: usize = 256;

/// An attempt's outcome on its way to the store, and where the verdict (written, or the
/// lease was lost) goes back.
type Waiting = (DeliveryUpdate, oneshot::Sender<Result<bool, String>>);

/// Hands outcomes to the worker's one writer of outcomes, which writes every outcome ready
/// at that moment in one transaction: under load, one write per batch instead of one per
/// attempt (on SQLite the writer is shared with the ingress and the engine).
#[derive(Clone)]
struct Finisher(mpsc::UnboundedSender<Waiting>);

impl Finisher {
    /// Writes `update` (batched with others); false if the lease was lost meanwhile.
    async fn finish(&self, update: DeliveryUpdate) -> Result<bool, AppError> {
        let (reply, verdict) = oneshot::channel();
        self.0.send((update, reply)).map_err(|_| AppError::internal("the delivery outcome writer stopped"))?;
        verdict
            .await
            .map_err(|_| AppError::internal("the delivery outcome writer stopped"))?
            .map_err(|e| AppError::internal(format!("record delivery outcomes: {e}")))
    }
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
            let busy = match self.pass(&slots, &finished, &finisher).await {
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
        let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
        // The writer ends once the attempts' handles are gone.
        drop(finisher);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }

    /// Writes outcomes as they come: the first one waiting, plus every other already
    /// waiting (up to [`FINISH_BATCH`]), in one transaction.
    async fn write_outcomes(self: Arc<Self>, mut pending: mpsc::UnboundedReceiver<Waiting>) {
        while let Some(first) = pending.recv().await {
            let mut batch = vec![first];
            while batch.len() < FINISH_BATCH {
                match pending.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let (updates, replies): (Vec<DeliveryUpdate>, Vec<_>) = batch.into_iter().unzip();
            match self.core.store.finish_deliveries(&updates, &self.owner).await {
                Ok(done) => {
                    for (reply, written) in replies.into_iter().zip(done) {
                        let _ = reply.send(Ok(written));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for reply in replies {
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
        finished: &Arc<tokio::sync::Notify>,
        finisher: &Finisher,
    ) -> Result<usize, AppError> {
        let now = now_ms();
        let stats = self.core.store.dispatch_outbox(now, DISPATCH_BATCH).await?;
        let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
        let claimed = if free == 0 {
            Vec::new()
        } else {
            self.core.store.claim_deliveries(&self.owner, now, self.settings.lease, free).await?
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
        for d in claimed {
            let Ok(slot) = slots.clone().acquire_owned().await else { break };
            let dest = destinations.get(&d.destination_id).cloned().flatten();
            let (me, finished, finisher) = (self.clone(), finished.clone(), finisher.clone());
            tokio::spawn(async move {
                me.attempt(&d, dest, &finisher).await;
                drop(slot);
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

    /// One attempt of `d`, its outcome written back.
    #[tracing::instrument(skip_all, fields(destination = %d.destination_id, event_id = %d.event_id(), attempt = d.attempts))]
    async fn attempt(&self, d: &DeliveryRecord, dest: Option<Arc<DestinationRecord>>, finisher: &Finisher) {
        if let Err(e) = self.try_attempt(d, dest, finisher).await {
            // Not the receiver's fault (a store outage, a corrupt row): the lease lapses and
            // the delivery is tried again; nothing is lost.
            tracing::warn!(error = %e.message, "delivery attempt not completed");
        }
    }

    async fn try_attempt(
        &self,
        d: &DeliveryRecord,
        dest: Option<Arc<DestinationRecord>>,
        finisher: &Finisher,
    ) -> Result<(), AppError> {
        let store = &self.core.store;
        // Deleted since the claim: its deliveries went with it.
        let Some(dest) = dest else { return Ok(()) };
        let event =
            store.events(&d.onboarding_id, d.sequence - 1, 1).await?.into_iter().find(|e| e.sequence == d.sequence);
        let onboarding = store.onboarding_unscoped(&d.onboarding_id).await?;
        let (Some(event), Some(onboarding)) = (event, onboarding) else {
            // The onboarding was deleted with its log: nothing left to send.
            let update = self.update(d, DeliveryState::Dead, now_ms(), None, Some("the event no longer exists".into()));
            finisher.finish(update).await?;
            return Ok(());
        };
        let cloud = CloudEvent::new(EventParts {
            id: d.event_id(),
            source: self.settings.source.clone(),
            kind: event.kind.into(),
            subject: format!("onboardings/{}", onboarding.id.name()),
            time_ms: event.created_ms,
            reference: (!onboarding.reference.is_empty()).then(|| onboarding.reference.clone()),
            data: event_json(&event),
        })
        .map_err(|e| AppError::internal(format!("cloud event of {}: {e}", d.event_id())))?;
        let started = Instant::now();
        let attempt = u32::try_from(d.attempts.max(1)).unwrap_or(1);
        let tried = match dest.sink {
            SinkKind::Webhook => self.send_webhook(&dest, &cloud, attempt).await?,
            SinkKind::Nats => self.publish_nats(&dest, &onboarding.provider.to_string(), &cloud, attempt).await,
        };
        ::metrics::histogram!(DELIVERY_ATTEMPT, "sink" => dest.sink.as_str()).record(started.elapsed().as_secs_f64());
        self.apply(d, &dest, &event, tried, finisher).await
    }

    async fn send_webhook(
        &self,
        dest: &DestinationRecord,
        cloud: &CloudEvent,
        attempt: u32,
    ) -> Result<Tried, AppError> {
        let keys = self.core.destination_signing_keys(dest)?;
        let headers = ExtraHeaders::parse(&self.core.destination_headers(dest)?)
            .map_err(|e| AppError::internal(format!("stored headers of destination {}: {e}", dest.id)))?;
        let request = WebhookRequest {
            url: &dest.url,
            extra_headers: &headers,
            keys: &keys,
            event: cloud,
            timestamp: now_ms().div_euclid(1000),
        };
        let result = self.webhook.send(&request).await;
        Ok(Tried {
            decision: self.settings.retry.decide(attempt, result.outcome(), rand::random::<f64>()),
            status: result.status,
            error: result.error.map(|e| e.message),
        })
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
        }
    }

    async fn apply(
        &self,
        d: &DeliveryRecord,
        dest: &DestinationRecord,
        event: &EventRecord,
        t: Tried,
        finisher: &Finisher,
    ) -> Result<(), AppError> {
        let now = now_ms();
        let (state, next, outcome) = notices::settle(t.decision, now);
        let update = self.update(d, state, next, t.status, t.error.clone());
        if !finisher.finish(update).await? {
            // The lease lapsed (or a replay reset it): the other holder's outcome stands.
            return Ok(());
        }
        ::metrics::counter!(DELIVERIES, "outcome" => outcome).increment(1);
        match t.decision {
            Decision::Delivered => {
                let latency = Duration::from_millis(u64::try_from(now - event.created_ms).unwrap_or(0));
                ::metrics::histogram!(DELIVERY_LATENCY, "sink" => dest.sink.as_str()).record(latency.as_secs_f64());
            }
            Decision::DeadLetter => ::metrics::counter!(DEAD_LETTERS).increment(1),
            Decision::RetryAfter(_) | Decision::DisableDestination => {}
        }
        self.judge_destination(dest, &t, &d.event_id(), now).await
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
