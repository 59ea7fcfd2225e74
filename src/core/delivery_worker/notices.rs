//! The worker's verdicts on destinations and its notice deliveries (issue 19, item 4). An
//! attempt's outcome may disable its destination (410 Gone, failing too long); the disable is
//! one store transaction that also writes a `wa.onboard.destination.disabled` notice and its
//! deliveries to the tenant's other enabled destinations, which this module then sends under
//! leases like events: signed the same way, retried on the same schedule, at least once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::{DEAD_LETTERS, DELIVERIES, DELIVERY_ATTEMPT, DeliveryWorker, Tried, rfc3339};
use crate::delivery::cloudevent::{CloudEvent, EventParts, EventType};
use crate::delivery::retry::Decision;
use crate::domain::{UnixMs, new_id, now_ms};
use crate::error::AppError;
use crate::store::{
    DeliveryState, DestinationDisable, DestinationRecord, DisableCause, NoticeDeliveryRecord, NoticeDeliveryUpdate,
    NoticeRecord, SinkKind, notice_event_id,
};

/// `{provider}` of a notice's NATS subject: a notice belongs to no provider.
const NO_PROVIDER: &str = "none";

/// What a decision writes on the delivery: its state, when it is next due, and the outcome
/// label of [`DELIVERIES`].
pub(super) fn settle(decision: Decision, now: UnixMs) -> (DeliveryState, UnixMs, &'static str) {
    match decision {
        Decision::Delivered => (DeliveryState::Delivered, now, "delivered"),
        Decision::RetryAfter(wait) => {
            (DeliveryState::Pending, now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)), "retry")
        }
        Decision::DeadLetter => (DeliveryState::Dead, now, "dead"),
        // Kept pending: it goes out if the caller enables the destination again.
        Decision::DisableDestination => (DeliveryState::Pending, now, "disabled"),
    }
}

/// Whether a destination failing since `since` has failed for `limit` at `now`.
fn failing_too_long(since: Option<UnixMs>, now: UnixMs, limit: Duration) -> bool {
    let limit = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    since.is_some_and(|since| now.saturating_sub(since) >= limit)
}

/// The `DestinationDisabledEvent` of a notice in proto JSON (lowerCamelCase, enums by name).
pub(super) fn notice_json(n: &NoticeRecord) -> serde_json::Value {
    serde_json::json!({
        "destination": format!("destinations/{}", n.destination_id),
        "displayName": n.display_name,
        "reason": format!("DISABLED_REASON_{}", n.cause.as_str()),
        "message": n.message,
        "httpStatus": n.http_status.unwrap_or(0),
        "disableTime": rfc3339(n.created_ms),
    })
}

/// The CloudEvent of a notice: id `notices/<id>`, subject the disabled destination.
pub(super) fn notice_event(n: &NoticeRecord, source: &str) -> Result<CloudEvent, AppError> {
    CloudEvent::new(EventParts {
        id: n.event_id(),
        source: source.to_string(),
        kind: EventType::DestinationDisabled,
        subject: format!("destinations/{}", n.destination_id),
        time_ms: n.created_ms,
        reference: None,
        data: notice_json(n),
    })
    .map_err(|e| AppError::internal(format!("cloud event of {}: {e}", n.event_id())))
}

impl DeliveryWorker {
    /// What an attempt's outcome (recorded already) says about its destination: a success
    /// clears the failing time, a 410 disables it, a failure starts or continues the failing
    /// time and disables it once that lasts `disable_after`.
    pub(super) async fn judge_destination(
        &self,
        dest: &DestinationRecord,
        t: &Tried,
        event_id: &str,
        now: UnixMs,
    ) -> Result<(), AppError> {
        let store = &self.core.store;
        match t.decision {
            Decision::Delivered => {
                if dest.failing_since_ms.is_some() {
                    store.note_destination_health(&dest.id, true, now).await?;
                }
            }
            Decision::DisableDestination => {
                let message = format!("the receiver answered 410 Gone to event {event_id}");
                self.disable(dest, DisableCause::Gone, message, t.status, now).await?;
            }
            Decision::RetryAfter(_) | Decision::DeadLetter => {
                let since = store.note_destination_health(&dest.id, false, now).await?;
                if failing_too_long(since, now, self.settings.disable_after) {
                    let last = t.error.clone().or(t.status.map(|s| format!("HTTP {s}"))).unwrap_or_default();
                    let message = format!(
                        "every attempt failed for more than {} s (last: {last})",
                        self.settings.disable_after.as_secs()
                    );
                    self.disable(dest, DisableCause::FailingTooLong, message, t.status, now).await?;
                }
            }
        }
        Ok(())
    }

    /// Disables `dest` with its notice (nothing if another replica did it first).
    async fn disable(
        &self,
        dest: &DestinationRecord,
        cause: DisableCause,
        message: String,
        status: Option<u16>,
        now: UnixMs,
    ) -> Result<(), AppError> {
        let disable = DestinationDisable {
            destination_id: dest.id.clone(),
            cause,
            message,
            last_status: status.map(i32::from),
            at_ms: now,
            notice_id: new_id::<String>(),
        };
        if let Some(notice) = self.core.store.disable_destination(&disable).await? {
            tracing::warn!(
                destination = %dest.id,
                cause = cause.as_str(),
                reason = %notice.message,
                event_id = %notice.event_id(),
                "destination disabled"
            );
        }
        Ok(())
    }

    /// Claims due notice deliveries with the free sending slots and starts them; how many.
    pub(super) async fn notice_pass(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        finished: &Arc<Notify>,
    ) -> Result<usize, AppError> {
        let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
        if free == 0 {
            return Ok(0);
        }
        let claimed = self.core.store.claim_notice_deliveries(&self.owner, now_ms(), self.settings.lease, free).await?;
        let n = claimed.len();
        for d in claimed {
            let Ok(slot) = slots.clone().acquire_owned().await else { break };
            let (me, finished) = (self.clone(), finished.clone());
            tokio::spawn(async move {
                me.notice_attempt(&d).await;
                drop(slot);
                finished.notify_one();
            });
        }
        Ok(n)
    }

    /// One attempt of a notice delivery, its outcome written back.
    #[tracing::instrument(skip_all, fields(destination = %d.destination_id, event_id = %notice_event_id(&d.notice_id), attempt = d.attempts))]
    async fn notice_attempt(&self, d: &NoticeDeliveryRecord) {
        if let Err(e) = self.try_notice_attempt(d).await {
            // The lease lapses and the notice is tried again; nothing is lost.
            tracing::warn!(error = %e.message, "notice attempt not completed");
        }
    }

    async fn try_notice_attempt(&self, d: &NoticeDeliveryRecord) -> Result<(), AppError> {
        let store = &self.core.store;
        // Deleted meanwhile (its notice deliveries go with it).
        let Some(dest) = store.destination_unscoped(&d.destination_id).await? else { return Ok(()) };
        let Some(notice) = store.notice_unscoped(&d.notice_id).await? else { return Ok(()) };
        let cloud = notice_event(&notice, &self.settings.source)?;
        let started = Instant::now();
        let attempt = u32::try_from(d.attempts.max(1)).unwrap_or(1);
        let tried = match dest.sink {
            SinkKind::Webhook => {
                let (keys, headers) = self.webhook_secrets(&dest)?;
                self.send_webhook(&dest, &keys, &headers, &cloud, attempt).await
            }
            SinkKind::Nats => self.publish_nats(&dest, NO_PROVIDER, &cloud, attempt).await,
        };
        ::metrics::histogram!(DELIVERY_ATTEMPT, "sink" => dest.sink.as_str()).record(started.elapsed().as_secs_f64());
        let now = now_ms();
        let (state, next, outcome) = settle(tried.decision, now);
        let update = NoticeDeliveryUpdate {
            destination_id: d.destination_id.clone(),
            notice_id: d.notice_id.clone(),
            state,
            next_attempt_ms: next,
            last_status: tried.status.map(i32::from),
            last_error: tried.error.clone(),
            at_ms: now,
        };
        if !store.finish_notice_delivery(&update, &self.owner).await? {
            return Ok(());
        }
        ::metrics::counter!(DELIVERIES, "outcome" => outcome).increment(1);
        if tried.decision == Decision::DeadLetter {
            ::metrics::counter!(DEAD_LETTERS).increment(1);
        }
        self.judge_destination(&dest, &tried, &notice.event_id(), now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    #[test]
    fn settling_and_failing_too_long() {
        assert_eq!(settle(Decision::Delivered, 5), (DeliveryState::Delivered, 5, "delivered"));
        assert_eq!(settle(Decision::RetryAfter(Duration::from_secs(2)), 5), (DeliveryState::Pending, 2005, "retry"));
        assert_eq!(settle(Decision::DeadLetter, 5), (DeliveryState::Dead, 5, "dead"));
        assert_eq!(settle(Decision::DisableDestination, 5), (DeliveryState::Pending, 5, "disabled"));
        let limit = Duration::from_secs(10);
        assert!(!failing_too_long(None, 100_000, limit));
        assert!(!failing_too_long(Some(95_000), 104_999, limit));
        assert!(failing_too_long(Some(95_000), 105_000, limit));
    }

    #[test]
    fn the_notice_event_is_typed_and_proto_json() {
        let n = NoticeRecord {
            id: "n1".into(),
            tenant_id: TenantId::parse("t").expect("tenant"),
            destination_id: "d1".into(),
            display_name: "billing".into(),
            cause: DisableCause::Gone,
            message: "the receiver answered 410 Gone to event x".into(),
            http_status: Some(410),
            created_ms: 1_500,
        };
        let body = notice_event(&n, "/wa-onboard").expect("event").to_json();
        assert_eq!(body["id"], "notices/n1");
        assert_eq!(body["type"], "wa.onboard.destination.disabled");
        assert_eq!(body["subject"], "destinations/d1");
        assert_eq!(body["time"], "1970-01-01T00:00:01.500Z");
        assert!(body.get("reference").is_none());
        assert_eq!(
            body["data"],
            serde_json::json!({
                "destination": "destinations/d1",
                "displayName": "billing",
                "reason": "DISABLED_REASON_GONE",
                "message": "the receiver answered 410 Gone to event x",
                "httpStatus": 410,
                "disableTime": "1970-01-01T00:00:01.500Z",
            })
        );
    }
}
