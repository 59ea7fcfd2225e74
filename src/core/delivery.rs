//! Outbound delivery use cases (issue 19): a tenant's destinations, their signing secrets
//! (generated here, sealed at rest, shown once), deliveries and replays. The sending itself is
//! the delivery worker's; this module is what the `DeliveryService` RPCs call.

use std::time::Duration;

use crate::delivery::guard::EgressPolicy;
use crate::delivery::nats::SubjectTemplate;
use crate::delivery::signing::{SigningKeys, SigningSecret};
use crate::delivery::webhook::ExtraHeaders;
use crate::domain::{Secret, UnixMs, new_id, now_ms};
use crate::error::AppError;
use crate::store::{
    DeliveryFilter, DeliveryQuery, DeliveryRecord, DestinationRecord, DisableCause, Page, PageRequest, RedeliverFrom,
    ReplayCursor, Sealed, SinkKind,
};

use super::{Caller, Core};

/// The longest rotation overlap: a week is enough for any receiver to deploy a new secret.
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Events of the log one `RedeliverEvents` call looks at when the caller names no bound.
pub const REDELIVER_DEFAULT: u32 = 10_000;
/// The most events of the log one call may look at.
pub const REDELIVER_MAX: u32 = 100_000;
/// Events per replay transaction: short enough that a replay never holds the writer long.
pub const REDELIVER_CHUNK: u32 = 500;

/// What one `RedeliverEvents` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Deliveries queued.
    pub queued: u64,
    /// Where the next call goes on, when this one stopped at its bound.
    pub next: Option<ReplayCursor>,
}

/// Where a destination sends.
#[derive(Clone, PartialEq)]
pub enum SinkSpec {
    /// A signed webhook.
    Webhook {
        /// The receiver.
        url: String,
        /// Extra headers (values may be credentials: not in `Debug`).
        headers: Vec<(String, String)>,
    },
    /// A JetStream subject template.
    Nats {
        /// With `{tenant}`, `{provider}`, `{type}`.
        subject: String,
    },
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Webhook { url, headers } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("headers", &headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
                .finish(),
            Self::Nats { subject } => f.debug_struct("Nats").field("subject", subject).finish(),
        }
    }
}

/// A destination to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDestination {
    /// Human name.
    pub name: String,
    /// Whether it sends.
    pub enabled: bool,
    /// Which events.
    pub filter: DeliveryFilter,
    /// Where.
    pub sink: SinkSpec,
}

/// The fields an update changes (each `Some` is in the mask).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationPatch {
    /// New name.
    pub name: Option<String>,
    /// New enabled flag (enabling clears the disabled reason and the failing time).
    pub enabled: Option<bool>,
    /// New filter.
    pub filter: Option<DeliveryFilter>,
    /// New webhook URL.
    pub url: Option<String>,
    /// New webhook headers.
    pub headers: Option<Vec<(String, String)>>,
    /// New NATS subject.
    pub subject: Option<String>,
}

/// The AAD binding a sealed signing secret to its destination.
fn aad_signing(id: &str) -> String {
    format!("delivery-signing:{id}")
}

/// The AAD binding sealed extra headers to their destination.
fn aad_headers(id: &str) -> String {
    format!("delivery-headers:{id}")
}

/// Checks a webhook URL against the egress policy.
fn check_url(policy: &EgressPolicy, field: &str, url: &str) -> Result<(), AppError> {
    policy.check_url(url).map(drop).map_err(|e| AppError::invalid(field, e.to_string()))
}

fn check_headers(field: &str, headers: &[(String, String)]) -> Result<(), AppError> {
    ExtraHeaders::parse(headers).map(drop).map_err(|e| AppError::invalid(field, e.to_string()))
}

fn check_subject(field: &str, subject: &str) -> Result<(), AppError> {
    SubjectTemplate::parse(subject).map(drop).map_err(|e| AppError::invalid(field, e.to_string()))
}

impl Core {
    /// Writes `headers` into `d`: their names in clear, the whole set sealed.
    fn set_headers(&self, d: &mut DestinationRecord, headers: &[(String, String)]) -> Result<(), AppError> {
        d.header_names = headers.iter().map(|(k, _)| k.clone()).collect();
        d.headers = if headers.is_empty() {
            None
        } else {
            let map: serde_json::Map<String, serde_json::Value> =
                headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            let plain = serde_json::Value::Object(map).to_string();
            let sealed = self
                .cipher
                .seal(plain.as_bytes(), &aad_headers(&d.id))
                .map_err(|e| AppError::internal(format!("cannot encrypt headers: {e}")))?;
            Some(sealed)
        };
        Ok(())
    }

    /// A destination's extra headers, opened.
    pub fn destination_headers(&self, d: &DestinationRecord) -> Result<Vec<(String, String)>, AppError> {
        let Some(sealed) = &d.headers else { return Ok(Vec::new()) };
        let plain = self
            .cipher
            .open(sealed, &aad_headers(&d.id))
            .map_err(|e| AppError::internal(format!("cannot decrypt headers of destination {}: {e}", d.id)))?;
        let map: std::collections::BTreeMap<String, String> = serde_json::from_slice(&plain)
            .map_err(|e| AppError::internal(format!("stored headers of destination {}: {e}", d.id)))?;
        Ok(map.into_iter().collect())
    }

    fn seal_signing(&self, id: &str, secret: &SigningSecret) -> Result<Sealed, AppError> {
        self.cipher
            .seal_secret(secret.expose(), &aad_signing(id))
            .map_err(|e| AppError::internal(format!("cannot encrypt signing secret: {e}")))
    }

    fn open_signing(&self, id: &str, sealed: &Sealed) -> Result<SigningSecret, AppError> {
        let text = self
            .cipher
            .open_secret(sealed, &aad_signing(id))
            .map_err(|e| AppError::internal(format!("cannot decrypt signing secret of destination {id}: {e}")))?;
        SigningSecret::parse(&text).map_err(|e| AppError::internal(format!("stored signing secret of {id}: {e}")))
    }

    /// The keys a destination signs with at `now`: the current secret, and the previous one
    /// while its overlap lasts.
    pub fn destination_signing_keys(&self, d: &DestinationRecord) -> Result<SigningKeys, AppError> {
        let current = self.open_signing(&d.id, &d.secret)?;
        match (&d.previous_secret, d.previous_secret_until_ms) {
            // `rotate` is called on the keys before the rotation, with the stored current one.
            (Some(prev), Some(until)) => Ok(SigningKeys::new(self.open_signing(&d.id, prev)?).rotate(current, until)),
            _ => Ok(SigningKeys::new(current)),
        }
    }

    async fn destination_record(&self, caller: &Caller, id: &str) -> Result<DestinationRecord, AppError> {
        self.store
            .destination(&caller.tenant, id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("destination {id}")))
    }

    /// Creates a destination; returns it with its signing secret (shown this once).
    pub async fn create_destination(
        &self,
        caller: &Caller,
        new: NewDestination,
    ) -> Result<(DestinationRecord, Secret), AppError> {
        let (sink, url, headers, subject) = match &new.sink {
            SinkSpec::Webhook { url, headers } => {
                check_url(&self.settings.delivery.egress, "destination.webhook.url", url)?;
                check_headers("destination.webhook.headers", headers)?;
                (SinkKind::Webhook, url.clone(), headers.clone(), String::new())
            }
            SinkSpec::Nats { subject } => {
                check_subject("destination.nats.subject", subject)?;
                (SinkKind::Nats, String::new(), Vec::new(), subject.clone())
            }
        };
        let id = new_id::<crate::domain::OnboardingId>().to_string();
        let secret = SigningSecret::generate();
        let now = now_ms();
        let disabled = !new.enabled;
        let mut record = DestinationRecord {
            secret: self.seal_signing(&id, &secret)?,
            id,
            tenant_id: caller.tenant.clone(),
            name: new.name,
            enabled: new.enabled,
            disabled_reason: if disabled { "disabled by the caller".into() } else { String::new() },
            disabled_cause: disabled.then_some(DisableCause::ByCaller),
            disabled_notice_id: None,
            filter: new.filter,
            sink,
            url,
            header_names: Vec::new(),
            headers: None,
            subject,
            previous_secret: None,
            previous_secret_until_ms: None,
            failing_since_ms: None,
            disabled_ms: disabled.then_some(now),
            disabled_status: None,
            created_ms: now,
            updated_ms: now,
        };
        self.set_headers(&mut record, &headers)?;
        self.store.create_destination(&record).await?;
        Ok((record, secret.expose().clone()))
    }

    /// One of the caller's destinations.
    pub async fn get_destination(&self, caller: &Caller, id: &str) -> Result<DestinationRecord, AppError> {
        self.destination_record(caller, id).await
    }

    /// The caller's destinations.
    pub async fn list_destinations(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<DestinationRecord>, AppError> {
        Ok(self.store.list_destinations(&caller.tenant, page).await?)
    }

    /// Changes the patched fields of one of the caller's destinations.
    pub async fn update_destination(
        &self,
        caller: &Caller,
        id: &str,
        patch: DestinationPatch,
    ) -> Result<DestinationRecord, AppError> {
        let mut d = self.destination_record(caller, id).await?;
        let read_at = d.updated_ms;
        let wrong_sink = |field: &str| AppError::invalid(field, "names a field of the other sink");
        if let Some(name) = patch.name {
            d.name = name;
        }
        if let Some(enabled) = patch.enabled {
            if enabled && !d.enabled {
                d.disabled_reason.clear();
                d.disabled_cause = None;
                d.disabled_notice_id = None;
                d.failing_since_ms = None;
                d.disabled_ms = None;
                d.disabled_status = None;
            }
            if !enabled && d.enabled {
                d.disabled_reason = "disabled by the caller".into();
                d.disabled_cause = Some(DisableCause::ByCaller);
                d.disabled_notice_id = None;
                d.disabled_ms = Some(now_ms());
                d.disabled_status = None;
            }
            d.enabled = enabled;
        }
        if let Some(filter) = patch.filter {
            d.filter = filter;
        }
        if let Some(url) = patch.url {
            if d.sink != SinkKind::Webhook {
                return Err(wrong_sink("update_mask"));
            }
            check_url(&self.settings.delivery.egress, "destination.webhook.url", &url)?;
            d.url = url;
        }
        if let Some(headers) = patch.headers {
            if d.sink != SinkKind::Webhook {
                return Err(wrong_sink("update_mask"));
            }
            check_headers("destination.webhook.headers", &headers)?;
            self.set_headers(&mut d, &headers)?;
        }
        if let Some(subject) = patch.subject {
            if d.sink != SinkKind::Nats {
                return Err(wrong_sink("update_mask"));
            }
            check_subject("destination.nats.subject", &subject)?;
            d.subject = subject;
        }
        // Strictly later than the version read, so the next writer's check sees the change.
        d.updated_ms = now_ms().max(read_at + 1);
        self.store.update_destination(&d, read_at).await?;
        Ok(d)
    }

    /// Deletes one of the caller's destinations and its deliveries.
    pub async fn delete_destination(&self, caller: &Caller, id: &str) -> Result<(), AppError> {
        if self.store.delete_destination(&caller.tenant, id).await? {
            Ok(())
        } else {
            Err(AppError::not_found(format!("destination {id}")))
        }
    }

    /// A new signing secret; the current one keeps signing for `overlap` (at most
    /// [`MAX_OVERLAP`]). Returns the destination and the new secret (shown this once).
    pub async fn rotate_destination_secret(
        &self,
        caller: &Caller,
        id: &str,
        overlap: Duration,
    ) -> Result<(DestinationRecord, Secret), AppError> {
        if overlap > MAX_OVERLAP {
            return Err(AppError::invalid("overlap", "must be at most 7 days"));
        }
        let mut d = self.destination_record(caller, id).await?;
        let read_at = d.updated_ms;
        let next = SigningSecret::generate();
        let now = now_ms().max(read_at + 1);
        let until: UnixMs = now.saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX));
        let current = std::mem::replace(&mut d.secret, self.seal_signing(&d.id, &next)?);
        (d.previous_secret, d.previous_secret_until_ms) =
            if overlap.is_zero() { (None, None) } else { (Some(current), Some(until)) };
        d.updated_ms = now;
        self.store.update_destination(&d, read_at).await?;
        Ok((d, next.expose().clone()))
    }

    /// One of the caller's destinations' deliveries.
    pub async fn list_deliveries(
        &self,
        caller: &Caller,
        id: &str,
        query: &DeliveryQuery,
    ) -> Result<Page<DeliveryRecord>, AppError> {
        // NOT_FOUND for another tenant's destination, not an empty list.
        self.destination_record(caller, id).await?;
        Ok(self.store.list_deliveries(&caller.tenant, id, query).await?)
    }

    /// Replays events to one of the caller's destinations: at most `max_events` events of
    /// the log after `after` (1 to [`REDELIVER_MAX`]), in transactions of
    /// [`REDELIVER_CHUNK`]; how many were queued, and where to go on if it stopped at the
    /// bound.
    pub async fn redeliver_events(
        &self,
        caller: &Caller,
        id: &str,
        from: &RedeliverFrom,
        after: Option<ReplayCursor>,
        max_events: u32,
    ) -> Result<Replayed, AppError> {
        if !(1..=REDELIVER_MAX).contains(&max_events) {
            return Err(AppError::invalid("max_events", format!("must be between 0 and {REDELIVER_MAX}")));
        }
        if let RedeliverFrom::Sequence { onboarding_id, .. } = from
            && self.store.onboarding(&caller.tenant, onboarding_id).await?.is_none()
        {
            return Err(AppError::not_found(format!("onboarding {}", onboarding_id.name())));
        }
        let (mut left, mut after, mut queued) = (max_events, after, 0);
        while left > 0 {
            let ask = left.min(REDELIVER_CHUNK);
            let chunk = self.store.redeliver(&caller.tenant, id, from, after.as_ref(), ask, now_ms()).await?;
            queued += chunk.queued;
            if chunk.scanned < ask {
                return Ok(Replayed { queued, next: None });
            }
            left -= ask;
            after = chunk.last;
        }
        Ok(Replayed { queued, next: after })
    }
}
