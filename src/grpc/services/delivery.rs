//! `delivery` handlers (issue 19): typed requests (every field violation at once, the
//! limits table's first), tenant-scoped calls into `core::delivery`, conversions.

use std::time::Duration;

use tonic::Request;

use super::{Res, Services, ok};
use crate::core::Caller;
use crate::core::delivery::{DestinationPatch, NewDestination, REDELIVER_DEFAULT, SinkSpec};
use crate::domain::{EventKind, OnboardingId};
use crate::error::{AppError, Violations, quote};
use crate::grpc::auth::caller;
use crate::grpc::convert::{
    DEFAULT_PAGE, page_request, page_token, parse_name, provider_from_pb, provider_to_pb, ts, ts_opt,
};
use crate::grpc::limits::{self, Limited};
use crate::grpc::pb;
use crate::grpc::requests::{account_name, onboarding_name};
use crate::store::{
    DeliveryFilter, DeliveryQuery, DeliveryRecord, DeliveryState, DestinationRecord, DisableCause, NoticeKind,
    RedeliverFrom, ReplayCursor, SinkKind, notice_event_id,
};

/// The fields `UpdateDestination`'s mask may name.
const UPDATE_FIELDS: [&str; 6] =
    ["display_name", "enabled", "filter", "webhook.url", "webhook.headers", "nats.subject"];

/// The default rotation overlap.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

// ----- limits -----

/// Checks one string of `message.field` at `path` (a field without a row fails closed).
fn str_at(v: &mut Violations, message: &str, field: &str, path: &str, value: &str) {
    match limits::limit(message, field) {
        Some(l) => {
            l.check(v, path, value);
        }
        None => v.add(path, "has no limit defined (a bug: report it)"),
    }
}

/// Checks a list: its length, then the first entry over its limit (one violation per field).
fn list_at<'a>(
    v: &mut Violations,
    message: &str,
    field: &str,
    path: &str,
    items: impl ExactSizeIterator<Item = &'a str>,
) {
    let Some(l) = limits::limit(message, field) else {
        return v.add(path, "has no limit defined (a bug: report it)");
    };
    if !l.check_entries(v, path, items.len()) {
        return;
    }
    if let Some(each) = limits::limit(message, &format!("{field}[]")) {
        let bad: Vec<String> = items.filter_map(|i| each.problem(i)).take(1).collect();
        for problem in bad {
            v.add(path, format!("an entry {problem}"));
        }
    }
}

fn destination_limits(v: &mut Violations, path: &str, d: &pb::Destination) {
    str_at(v, "Destination", "display_name", &format!("{path}.display_name"), &d.display_name);
    if let Some(f) = &d.filter {
        let p = format!("{path}.filter");
        list_at(
            v,
            "DeliveryFilter",
            "event_types",
            &format!("{p}.event_types"),
            f.event_types.iter().map(String::as_str),
        );
        if let Some(l) = limits::limit("DeliveryFilter", "providers") {
            l.check_entries(v, &format!("{p}.providers"), f.providers.len());
        }
        list_at(v, "DeliveryFilter", "accounts", &format!("{p}.accounts"), f.accounts.iter().map(String::as_str));
    }
    match &d.sink {
        Some(pb::destination::Sink::Webhook(w)) => {
            str_at(v, "WebhookSink", "url", &format!("{path}.webhook.url"), &w.url);
            let headers = format!("{path}.webhook.headers");
            if let Some(l) = limits::limit("WebhookSink", "headers")
                && l.check_entries(v, &headers, w.headers.len())
            {
                let key = limits::limit("WebhookSink", "headers{key}");
                let value = limits::limit("WebhookSink", "headers{value}");
                let bad_key = w.headers.keys().find_map(|k| key.and_then(|l| l.problem(k)));
                let bad_value = w.headers.values().find_map(|x| value.and_then(|l| l.problem(x)));
                for problem in bad_key.into_iter().chain(bad_value) {
                    v.add(&headers, format!("an entry {problem}"));
                }
            }
        }
        Some(pb::destination::Sink::Nats(n)) => {
            str_at(v, "NatsSink", "subject", &format!("{path}.nats.subject"), &n.subject);
        }
        None => {}
    }
}

impl Limited for pb::CreateDestinationRequest {
    fn check_limits(&self, v: &mut Violations) {
        if let Some(d) = &self.destination {
            destination_limits(v, "destination", d);
        }
    }
}

impl Limited for pb::UpdateDestinationRequest {
    fn check_limits(&self, v: &mut Violations) {
        if let Some(d) = &self.destination {
            destination_limits(v, "destination", d);
        }
        let paths = self.update_mask.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default();
        list_at(v, "UpdateDestinationRequest", "update_mask", "update_mask", paths.iter().map(String::as_str));
    }
}

impl Limited for pb::GetDestinationRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_at(v, "GetDestinationRequest", "name", "name", &self.name);
    }
}

impl Limited for pb::ListDestinationsRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_at(v, "ListDestinationsRequest", "page_token", "page_token", &self.page_token);
    }
}

impl Limited for pb::DeleteDestinationRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_at(v, "DeleteDestinationRequest", "name", "name", &self.name);
    }
}

impl Limited for pb::RotateDestinationSecretRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_at(v, "RotateDestinationSecretRequest", "name", "name", &self.name);
    }
}

impl Limited for pb::ListDeliveriesRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_at(v, "ListDeliveriesRequest", "parent", "parent", &self.parent);
        str_at(v, "ListDeliveriesRequest", "page_token", "page_token", &self.page_token);
    }
}

impl Limited for pb::RedeliverEventsRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_at(v, "RedeliverEventsRequest", "parent", "parent", &self.parent);
        str_at(v, "RedeliverEventsRequest", "page_token", "page_token", &self.page_token);
        if let Some(pb::redeliver_events_request::Start::FromSequence(s)) = &self.start {
            str_at(v, "RedeliverFromSequence", "onboarding", "from_sequence.onboarding", &s.onboarding);
        }
    }
}

// ----- parsing -----

/// `destinations/{id}`: ids are ours (lowercase hex), so anything else names nothing.
fn destination_name(field: &str, name: &str) -> Result<String, AppError> {
    parse_name(field, name, "destinations", |s| {
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(s.to_string())
        } else {
            Err(crate::domain::IdError("must be letters and digits".into()))
        }
    })
}

/// The filter, or violations at `path`.
fn filter_from_pb(v: &mut Violations, caller: &Caller, path: &str, f: Option<pb::DeliveryFilter>) -> DeliveryFilter {
    let Some(f) = f else { return DeliveryFilter::default() };
    let mut out = DeliveryFilter::default();
    for t in &f.event_types {
        match (t.parse::<EventKind>(), NoticeKind::parse(t)) {
            (Ok(k), _) if !out.kinds.contains(&k) => out.kinds.push(k),
            (_, Some(n)) if !out.notices.contains(&n) => out.notices.push(n),
            (Ok(_), _) | (_, Some(_)) => {}
            _ => v.add(format!("{path}.event_types"), format!("unknown event type {}", quote(t))),
        }
    }
    for p in &f.providers {
        match provider_from_pb(*p) {
            Some(p) if !out.providers.contains(&p) => out.providers.push(p),
            Some(_) => {}
            None => v.add(format!("{path}.providers"), "must name a provider"),
        }
    }
    for a in &f.accounts {
        match account_name(&caller.tenant, &format!("{path}.accounts"), a) {
            Ok(id) if !out.accounts.contains(&id) => out.accounts.push(id),
            Ok(_) => {}
            Err(e) => v.add(format!("{path}.accounts"), e.message),
        }
    }
    out
}

fn headers_of(w: &pb::WebhookSink) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = w.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    h.sort();
    h
}

fn create_from_pb(caller: &Caller, r: pb::CreateDestinationRequest) -> Result<NewDestination, AppError> {
    let mut v = limits::collect(&r);
    let Some(d) = r.destination else { return Err(AppError::invalid("destination", "is required")) };
    let filter = filter_from_pb(&mut v, caller, "destination.filter", d.filter);
    let sink = match d.sink {
        Some(pb::destination::Sink::Webhook(w)) if w.url.is_empty() => {
            v.add("destination.webhook.url", "is required");
            None
        }
        Some(pb::destination::Sink::Webhook(w)) => Some(SinkSpec::Webhook { headers: headers_of(&w), url: w.url }),
        Some(pb::destination::Sink::Nats(n)) if n.subject.is_empty() => {
            v.add("destination.nats.subject", "is required");
            None
        }
        Some(pb::destination::Sink::Nats(n)) => Some(SinkSpec::Nats { subject: n.subject }),
        None => {
            v.add("destination.sink", "is required: set webhook or nats");
            None
        }
    };
    v.finish()?;
    let sink = sink.ok_or_else(|| AppError::invalid("destination.sink", "is required"))?;
    // proto3 cannot tell an unset `enabled` from false: a new destination is enabled.
    Ok(NewDestination { name: d.display_name, enabled: true, filter, sink })
}

fn update_from_pb(caller: &Caller, r: pb::UpdateDestinationRequest) -> Result<(String, DestinationPatch), AppError> {
    let mut v = limits::collect(&r);
    let Some(d) = r.destination else { return Err(AppError::invalid("destination", "is required")) };
    let id = destination_name("destination.name", &d.name).map_err(|e| v.add("destination.name", e.message)).ok();
    let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        v.add("update_mask", format!("is required: name the fields to change ({})", UPDATE_FIELDS.join(", ")));
    }
    let (webhook, nats) = match &d.sink {
        Some(pb::destination::Sink::Webhook(w)) => (Some(w), None),
        Some(pb::destination::Sink::Nats(n)) => (None, Some(n)),
        None => (None, None),
    };
    let mut patch = DestinationPatch::default();
    for p in &paths {
        match p.strip_prefix("destination.").unwrap_or(p) {
            "display_name" => patch.name = Some(d.display_name.clone()),
            "enabled" => patch.enabled = Some(d.enabled),
            "filter" => patch.filter = Some(filter_from_pb(&mut v, caller, "destination.filter", d.filter.clone())),
            "webhook.url" => match webhook {
                Some(w) if !w.url.is_empty() => patch.url = Some(w.url.clone()),
                _ => v.add("destination.webhook.url", "is required when the mask names it"),
            },
            "webhook.headers" => patch.headers = Some(webhook.map(headers_of).unwrap_or_default()),
            "nats.subject" => match nats {
                Some(n) if !n.subject.is_empty() => patch.subject = Some(n.subject.clone()),
                _ => v.add("destination.nats.subject", "is required when the mask names it"),
            },
            _ => v.add("update_mask", format!("unknown field {} (expected {})", quote(p), UPDATE_FIELDS.join(", "))),
        }
    }
    v.finish()?;
    let id = id.ok_or_else(|| AppError::invalid("destination.name", "is required"))?;
    Ok((id, patch))
}

fn overlap_from_pb(d: Option<prost_types::Duration>) -> Result<Duration, AppError> {
    let Some(d) = d else { return Ok(DEFAULT_OVERLAP) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(AppError::invalid("overlap", "must not be negative"));
    }
    Ok(Duration::from_secs(d.seconds as u64) + Duration::from_nanos(d.nanos as u64))
}

fn state_from_pb(s: i32) -> Result<Option<DeliveryState>, AppError> {
    match pb::DeliveryState::try_from(s) {
        Ok(pb::DeliveryState::Unspecified) => Ok(None),
        Ok(pb::DeliveryState::Pending) => Ok(Some(DeliveryState::Pending)),
        Ok(pb::DeliveryState::Delivered) => Ok(Some(DeliveryState::Delivered)),
        Ok(pb::DeliveryState::Dead) => Ok(Some(DeliveryState::Dead)),
        Err(_) => Err(AppError::invalid("state", "is not a delivery state")),
    }
}

/// A parsed `RedeliverEvents` call.
struct Replay {
    /// The destination.
    id: String,
    /// Where the replay starts.
    from: RedeliverFrom,
    /// Where this call goes on (from the page token).
    after: Option<ReplayCursor>,
    /// Events this call looks at.
    max_events: u32,
    /// What the tokens of this replay are bound to (destination and start).
    token_kind: String,
}

/// The page-token kind of a replay: bound to its destination and start, so a token does not
/// continue another replay.
fn replay_token_kind(parent: &str, from: &RedeliverFrom) -> String {
    match from {
        RedeliverFrom::Time(ms) => format!("redeliver@{parent}@t{ms}"),
        RedeliverFrom::Sequence { onboarding_id, sequence } => {
            format!("redeliver@{parent}@s{}/{sequence}", onboarding_id.as_str())
        }
    }
}

fn redeliver_from_pb(caller: &Caller, r: &pb::RedeliverEventsRequest) -> Result<Replay, AppError> {
    let mut v = limits::collect(r);
    let max_events = match r.max_events {
        0 => Some(REDELIVER_DEFAULT),
        n if (1..=crate::core::delivery::REDELIVER_MAX as i32).contains(&n) => Some(n as u32),
        _ => {
            v.add("max_events", format!("must be between 0 and {}", crate::core::delivery::REDELIVER_MAX));
            None
        }
    };
    let id = destination_name("parent", &r.parent).map_err(|e| v.add("parent", e.message)).ok();
    let from = match &r.start {
        Some(pb::redeliver_events_request::Start::StartTime(t)) => {
            Some(RedeliverFrom::Time(t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos / 1_000_000))))
        }
        Some(pb::redeliver_events_request::Start::FromSequence(s)) => {
            let o: Option<OnboardingId> = onboarding_name(&caller.tenant, "from_sequence.onboarding", &s.onboarding)
                .map_err(|e| v.add("from_sequence.onboarding", e.message))
                .ok();
            if s.sequence < 1 {
                v.add("from_sequence.sequence", "must be at least 1");
            }
            o.map(|onboarding_id| RedeliverFrom::Sequence { onboarding_id, sequence: s.sequence })
        }
        None => {
            v.add("start", "is required: set start_time or from_sequence");
            None
        }
    };
    let token_kind = from.as_ref().map(|f| replay_token_kind(&r.parent, f)).unwrap_or_default();
    let after = match &from {
        Some(_) if !r.page_token.is_empty() => {
            page_request(&mut v, &token_kind, 0, &r.page_token, 1).after.and_then(|a| {
                let cursor = a.rsplit_once('/').and_then(|(o, s)| {
                    Some(ReplayCursor {
                        onboarding_id: OnboardingId::try_from(o.to_string()).ok()?,
                        sequence: s.parse().ok()?,
                    })
                });
                if cursor.is_none() {
                    v.add("page_token", "is not a token returned by this replay");
                }
                cursor
            })
        }
        _ => None,
    };
    v.finish()?;
    match (id, from, max_events) {
        (Some(id), Some(from), Some(max_events)) => Ok(Replay { id, from, after, max_events, token_kind }),
        _ => Err(AppError::invalid("parent", "is required")),
    }
}

// ----- conversions -----

fn destination_to_pb(d: &DestinationRecord) -> pb::Destination {
    let sink = match d.sink {
        SinkKind::Webhook => pb::destination::Sink::Webhook(pb::WebhookSink {
            url: d.url.clone(),
            headers: Default::default(),
            header_names: d.header_names.clone(),
        }),
        SinkKind::Nats => pb::destination::Sink::Nats(pb::NatsSink { subject: d.subject.clone() }),
    };
    pb::Destination {
        name: format!("destinations/{}", d.id),
        display_name: d.name.clone(),
        enabled: d.enabled,
        disabled_reason: d.disabled_reason.clone(),
        disabled_reason_code: d.disabled_cause.map_or(pb::DisabledReason::Unspecified, cause_to_pb) as i32,
        disabled_event_id: d.disabled_notice_id.as_deref().map(notice_event_id).unwrap_or_default(),
        filter: Some(pb::DeliveryFilter {
            event_types: d
                .filter
                .kinds
                .iter()
                .map(|k| k.as_str().to_string())
                .chain(d.filter.notices.iter().map(|n| n.as_str().to_string()))
                .collect(),
            providers: d.filter.providers.iter().map(|p| provider_to_pb(*p) as i32).collect(),
            accounts: d.filter.accounts.iter().map(|a| format!("accounts/{}", a.name())).collect(),
        }),
        sink: Some(sink),
        failing_since_time: ts_opt(d.failing_since_ms),
        disable_time: ts_opt(d.disabled_ms),
        disabled_http_status: d.disabled_status.unwrap_or(0),
        previous_secret_expire_time: ts_opt(d.previous_secret_until_ms),
        create_time: Some(ts(d.created_ms)),
        update_time: Some(ts(d.updated_ms)),
    }
}

fn cause_to_pb(c: DisableCause) -> pb::DisabledReason {
    match c {
        DisableCause::Gone => pb::DisabledReason::Gone,
        DisableCause::FailingTooLong => pb::DisabledReason::FailingTooLong,
        DisableCause::ByCaller => pb::DisabledReason::ByCaller,
    }
}

fn delivery_to_pb(d: &DeliveryRecord) -> pb::Delivery {
    let state = match d.state {
        DeliveryState::Pending => pb::DeliveryState::Pending,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Dead => pb::DeliveryState::Dead,
    };
    pb::Delivery {
        event_id: d.event_id(),
        onboarding: format!("onboardings/{}", d.onboarding_id.name()),
        sequence: d.sequence,
        state: state as i32,
        attempts: d.attempts,
        last_http_status: d.last_status.unwrap_or(0),
        last_error: d.last_error.clone().unwrap_or_default(),
        next_attempt_time: (d.state == DeliveryState::Pending).then(|| ts(d.next_attempt_ms)),
        create_time: Some(ts(d.created_ms)),
        delivered_time: ts_opt(d.delivered_ms),
    }
}

#[tonic::async_trait]
impl pb::delivery_service_server::DeliveryService for Services {
    async fn create_destination(
        &self,
        req: Request<pb::CreateDestinationRequest>,
    ) -> Res<pb::CreateDestinationResponse> {
        let caller = caller(&req)?;
        let new = create_from_pb(&caller, req.into_inner())?;
        ok(self.core.create_destination(&caller, new).await.map(|(d, secret)| pb::CreateDestinationResponse {
            destination: Some(destination_to_pb(&d)),
            signing_secret: secret.expose().to_string(),
        }))
    }

    async fn get_destination(&self, req: Request<pb::GetDestinationRequest>) -> Res<pb::Destination> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = destination_name("name", &req.get_ref().name)?;
        ok(self.core.get_destination(&caller, &id).await.map(|d| destination_to_pb(&d)))
    }

    async fn list_destinations(&self, req: Request<pb::ListDestinationsRequest>) -> Res<pb::ListDestinationsResponse> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let mut v = limits::collect(r);
        let page = page_request(&mut v, "destinations", r.page_size, &r.page_token, DEFAULT_PAGE);
        v.finish()?;
        ok(self.core.list_destinations(&caller, &page).await.map(|p| pb::ListDestinationsResponse {
            destinations: p.items.iter().map(destination_to_pb).collect(),
            next_page_token: page_token("destinations", p.next_page_token),
        }))
    }

    async fn update_destination(&self, req: Request<pb::UpdateDestinationRequest>) -> Res<pb::Destination> {
        let caller = caller(&req)?;
        let (id, patch) = update_from_pb(&caller, req.into_inner())?;
        ok(self.core.update_destination(&caller, &id, patch).await.map(|d| destination_to_pb(&d)))
    }

    async fn delete_destination(&self, req: Request<pb::DeleteDestinationRequest>) -> Res<()> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = destination_name("name", &req.get_ref().name)?;
        ok(self.core.delete_destination(&caller, &id).await)
    }

    async fn rotate_destination_secret(
        &self,
        req: Request<pb::RotateDestinationSecretRequest>,
    ) -> Res<pb::RotateDestinationSecretResponse> {
        let caller = caller(&req)?;
        limits::checked(req.get_ref())?;
        let id = destination_name("name", &req.get_ref().name)?;
        let overlap = overlap_from_pb(req.get_ref().overlap)?;
        ok(self.core.rotate_destination_secret(&caller, &id, overlap).await.map(|(d, secret)| {
            pb::RotateDestinationSecretResponse {
                destination: Some(destination_to_pb(&d)),
                signing_secret: secret.expose().to_string(),
            }
        }))
    }

    async fn list_deliveries(&self, req: Request<pb::ListDeliveriesRequest>) -> Res<pb::ListDeliveriesResponse> {
        let caller = caller(&req)?;
        let r = req.get_ref();
        let mut v = limits::collect(r);
        let id = destination_name("parent", &r.parent).map_err(|e| v.add("parent", e.message)).ok();
        // Tokens are bound to this destination's list.
        let kind = format!("deliveries@{}", r.parent);
        let page = page_request(&mut v, &kind, r.page_size, &r.page_token, DEFAULT_PAGE);
        let state = state_from_pb(r.state).map_err(|e| v.add("state", e.message)).ok().flatten();
        v.finish()?;
        let id = id.ok_or_else(|| AppError::invalid("parent", "is required"))?;
        let query = DeliveryQuery { state, limit: page.limit, after: page.after };
        ok(self.core.list_deliveries(&caller, &id, &query).await.map(|p| pb::ListDeliveriesResponse {
            deliveries: p.items.iter().map(delivery_to_pb).collect(),
            next_page_token: page_token(&kind, p.next_page_token),
        }))
    }

    async fn redeliver_events(&self, req: Request<pb::RedeliverEventsRequest>) -> Res<pb::RedeliverEventsResponse> {
        let caller = caller(&req)?;
        let r = redeliver_from_pb(&caller, req.get_ref())?;
        ok(self.core.redeliver_events(&caller, &r.id, &r.from, r.after, r.max_events).await.map(|done| {
            pb::RedeliverEventsResponse {
                queued: i64::try_from(done.queued).unwrap_or(i64::MAX),
                next_page_token: page_token(
                    &r.token_kind,
                    done.next.map(|c| format!("{}/{}", c.onboarding_id.as_str(), c.sequence)),
                ),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    fn caller() -> Caller {
        Caller { tenant: TenantId::parse("t").expect("tenant id") }
    }

    #[test]
    fn create_reports_every_violation() {
        let r = pb::CreateDestinationRequest {
            destination: Some(pb::Destination {
                display_name: "x".repeat(201),
                filter: Some(pb::DeliveryFilter {
                    event_types: vec!["nope".into()],
                    providers: vec![0],
                    accounts: vec!["bad".into()],
                }),
                ..Default::default()
            }),
        };
        let e = create_from_pb(&caller(), r).expect_err("refused");
        let fields: Vec<&str> = e.violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "destination.display_name",
                "destination.filter.event_types",
                "destination.filter.providers",
                "destination.filter.accounts",
                "destination.sink"
            ]
        );
    }

    #[test]
    fn a_valid_create_is_typed() {
        let mut headers = std::collections::HashMap::new();
        headers.insert("x-b".to_string(), "2".to_string());
        let r = pb::CreateDestinationRequest {
            destination: Some(pb::Destination {
                display_name: "d".into(),
                filter: Some(pb::DeliveryFilter {
                    event_types: vec!["state_changed".into(), "state_changed".into()],
                    providers: vec![pb::Provider::Whapi as i32],
                    accounts: vec!["accounts/a1".into()],
                }),
                sink: Some(pb::destination::Sink::Webhook(pb::WebhookSink {
                    url: "https://example.com/h".into(),
                    headers,
                    header_names: vec![],
                })),
                ..Default::default()
            }),
        };
        let n = create_from_pb(&caller(), r).expect("valid");
        assert_eq!(n.filter.kinds, vec![EventKind::StateChanged]);
        assert!(n.filter.notices.is_empty());
        assert_eq!(n.filter.accounts[0].as_str(), "t.a1");
        assert!(n.enabled);
        assert_eq!(
            n.sink,
            SinkSpec::Webhook { url: "https://example.com/h".into(), headers: vec![("x-b".into(), "2".into())] }
        );
    }

    #[test]
    fn update_masks_and_names() {
        let r = pb::UpdateDestinationRequest {
            destination: Some(pb::Destination { name: "destinations/abc".into(), enabled: true, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into(), "destination.display_name".into()],
            }),
        };
        let (id, patch) = update_from_pb(&caller(), r).expect("valid");
        assert_eq!(id, "abc");
        assert_eq!((patch.enabled, patch.name.as_deref()), (Some(true), Some("")));
        let bad = pb::UpdateDestinationRequest {
            destination: Some(pb::Destination { name: "destinations/../x".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["secret".into(), "webhook.url".into()] }),
        };
        let e = update_from_pb(&caller(), bad).expect_err("refused");
        let fields: Vec<&str> = e.violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["destination.name", "update_mask", "destination.webhook.url"]);
    }

    #[test]
    fn redeliver_needs_a_start() {
        let r = pb::RedeliverEventsRequest { parent: "destinations/abc".into(), ..Default::default() };
        assert!(redeliver_from_pb(&caller(), &r).is_err());
        let r = pb::RedeliverEventsRequest {
            parent: "destinations/abc".into(),
            start: Some(pb::redeliver_events_request::Start::FromSequence(pb::RedeliverFromSequence {
                onboarding: "onboardings/o1".into(),
                sequence: 3,
            })),
            ..Default::default()
        };
        let replay = redeliver_from_pb(&caller(), &r).expect("valid");
        assert_eq!(replay.id, "abc");
        assert!(matches!(replay.from, RedeliverFrom::Sequence { sequence: 3, .. }));
        assert_eq!((replay.max_events, replay.after), (REDELIVER_DEFAULT, None));
        // A token continues the replay it came from, and no other.
        let token = page_token(&replay.token_kind, Some("t.o1/7".into()));
        let next = redeliver_from_pb(&caller(), &pb::RedeliverEventsRequest { page_token: token.clone(), ..r.clone() })
            .expect("valid");
        assert_eq!(next.after.map(|c| (c.onboarding_id.as_str().to_string(), c.sequence)), Some(("t.o1".into(), 7)));
        let other = pb::RedeliverEventsRequest {
            parent: "destinations/abc".into(),
            start: Some(pb::redeliver_events_request::Start::StartTime(prost_types::Timestamp::default())),
            page_token: token,
            ..Default::default()
        };
        let e = redeliver_from_pb(&caller(), &other).err().expect("refused");
        assert_eq!(e.violations[0].0, "page_token");
        let too_many = pb::RedeliverEventsRequest { max_events: 100_001, ..r };
        assert!(redeliver_from_pb(&caller(), &too_many).is_err());
        assert_eq!(overlap_from_pb(None).unwrap(), DEFAULT_OVERLAP);
        assert!(overlap_from_pb(Some(prost_types::Duration { seconds: -1, nanos: 0 })).is_err());
    }
}
