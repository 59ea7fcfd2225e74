//! Row types of outbound delivery (issue 19): destinations, the deliveries fanned out from the
//! event outbox, and what a sender reports back. Kept apart from `records.rs` so the delivery
//! area reads as one unit. Signing secrets are only ever [`Sealed`] here.

use super::Sealed;
use crate::domain::{AccountId, EventKind, OnboardingId, ProviderKind, TenantId, UnixMs};

/// Where a destination's events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// Signed HTTPS POSTs to `url`.
    Webhook,
    /// JetStream publishes on `subject` (servers from configuration).
    Nats,
}

impl SinkKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Nats => "nats",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(Self::Webhook),
            "nats" => Some(Self::Nats),
            _ => None,
        }
    }
}

/// A service notice about the tenant's destinations, pushed beside the onboarding events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// The service disabled a destination (`wa.onboard.destination.disabled`).
    DestinationDisabled,
}

impl NoticeKind {
    /// Every kind.
    pub const ALL: [NoticeKind; 1] = [NoticeKind::DestinationDisabled];

    /// The wire name, as filters name it (`destination_disabled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DestinationDisabled => "destination_disabled",
        }
    }

    /// Parses [`NoticeKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which events a destination receives: each list empty means "any". The event types a
/// caller names are one list split in two, onboarding event kinds and notice kinds; naming
/// any of either restricts both (a filter naming only `destination_disabled` gets no
/// onboarding events).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Event kinds.
    pub kinds: Vec<EventKind>,
    /// Notice kinds.
    pub notices: Vec<NoticeKind>,
    /// Providers of the onboarding.
    pub providers: Vec<ProviderKind>,
    /// Accounts of the onboarding.
    pub accounts: Vec<AccountId>,
}

impl DeliveryFilter {
    /// Whether an event of `kind` of an onboarding of `provider` under `account` passes.
    pub fn matches(&self, kind: EventKind, provider: ProviderKind, account: &AccountId) -> bool {
        (self.names_no_type() || self.kinds.contains(&kind))
            && (self.providers.is_empty() || self.providers.contains(&provider))
            && (self.accounts.is_empty() || self.accounts.contains(account))
    }

    /// Whether a notice of `kind` passes: provider and account filters do not apply (a notice
    /// is about the tenant's destinations, not one onboarding).
    pub fn admits_notice(&self, kind: NoticeKind) -> bool {
        self.names_no_type() || self.notices.contains(&kind)
    }

    fn names_no_type(&self) -> bool {
        self.kinds.is_empty() && self.notices.is_empty()
    }

    /// The stored form: `{"kinds":[...],"notices":[...],"providers":[...],"accounts":[...]}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "kinds": self.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "notices": self.notices.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "providers": self.providers.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "accounts": self.accounts.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// Parses [`DeliveryFilter::to_json`]; the error says what does not parse.
    pub fn from_json(s: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Stored {
            #[serde(default)]
            kinds: Vec<String>,
            #[serde(default)]
            notices: Vec<String>,
            #[serde(default)]
            providers: Vec<String>,
            #[serde(default)]
            accounts: Vec<String>,
        }
        let stored: Stored = serde_json::from_str(s).map_err(|e| format!("delivery filter: {e}"))?;
        Ok(Self {
            kinds: stored.kinds.iter().map(|k| k.parse()).collect::<Result<_, _>>()?,
            notices: stored
                .notices
                .iter()
                .map(|k| NoticeKind::parse(k).ok_or_else(|| format!("delivery filter notice '{k}'")))
                .collect::<Result<_, _>>()?,
            providers: stored
                .providers
                .iter()
                .map(|p| p.parse().map_err(|e| format!("delivery filter provider: {e:?}")))
                .collect::<Result<_, _>>()?,
            accounts: stored
                .accounts
                .into_iter()
                .map(|a| AccountId::try_from(a).map_err(|e| format!("delivery filter account: {e}")))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A tenant's delivery destination.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRecord {
    /// Id (globally unique, generated).
    pub id: String,
    /// Owner.
    pub tenant_id: TenantId,
    /// Human name.
    pub name: String,
    /// Whether events are fanned out to it and sent.
    pub enabled: bool,
    /// Why it was disabled, in words (by the caller or by the worker: a 410, failing too
    /// long); empty when enabled.
    pub disabled_reason: String,
    /// Why it was disabled, typed; `None` while enabled.
    pub disabled_cause: Option<DisableCause>,
    /// The notice the worker's disable wrote (`None` while enabled or when the caller
    /// disabled it).
    pub disabled_notice_id: Option<String>,
    /// Which events it receives.
    pub filter: DeliveryFilter,
    /// Webhook or NATS.
    pub sink: SinkKind,
    /// The webhook URL (empty for NATS).
    pub url: String,
    /// The names of the extra webhook headers (shown to the caller).
    pub header_names: Vec<String>,
    /// The extra webhook headers, a JSON object of strings, sealed (values may be
    /// credentials); `None` without headers.
    pub headers: Option<Sealed>,
    /// The NATS subject template (empty for webhooks).
    pub subject: String,
    /// The current signing secret, sealed.
    pub secret: Sealed,
    /// The secret before the last rotation, still signing until `previous_secret_until_ms`.
    pub previous_secret: Option<Sealed>,
    /// End of the rotation overlap.
    pub previous_secret_until_ms: Option<UnixMs>,
    /// Since when every attempt failed (cleared by a success), for disable-after.
    pub failing_since_ms: Option<UnixMs>,
    /// When it was disabled (by the caller or the worker); `None` while enabled.
    pub disabled_ms: Option<UnixMs>,
    /// The receiver's last HTTP status when the worker disabled it (`None`: a transport
    /// error, or disabled by the caller).
    pub disabled_status: Option<i32>,
    /// Created at.
    pub created_ms: UnixMs,
    /// Last changed at.
    pub updated_ms: UnixMs,
}

/// Why a destination is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableCause {
    /// The receiver answered 410 Gone.
    Gone,
    /// Every attempt failed for longer than `delivery.disable_after_secs`.
    FailingTooLong,
    /// The caller disabled it.
    ByCaller,
}

impl DisableCause {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gone => "GONE",
            Self::FailingTooLong => "FAILING_TOO_LONG",
            Self::ByCaller => "BY_CALLER",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Gone, Self::FailingTooLong, Self::ByCaller].into_iter().find(|c| c.as_str() == s)
    }
}

/// What the worker's disable of a destination writes, in one transaction: the destination's
/// disabled fields and a notice fanned out to the tenant's other enabled destinations.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationDisable {
    /// Which destination.
    pub destination_id: String,
    /// Why, typed (the worker's: `Gone` or `FailingTooLong`).
    pub cause: DisableCause,
    /// Why, in words.
    pub message: String,
    /// The receiver's last HTTP status, if any.
    pub last_status: Option<i32>,
    /// When.
    pub at_ms: UnixMs,
    /// The id of the notice to write (generated by the caller).
    pub notice_id: String,
}

/// A notice the service wrote about a tenant's destination (the one kind so far: it was
/// disabled); sent to the tenant's other destinations as a CloudEvent with id
/// [`NoticeRecord::event_id`].
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeRecord {
    /// Id (generated).
    pub id: String,
    /// Owner.
    pub tenant_id: TenantId,
    /// The destination it is about.
    pub destination_id: String,
    /// That destination's name then.
    pub display_name: String,
    /// Why it was disabled.
    pub cause: DisableCause,
    /// Why, in words.
    pub message: String,
    /// The receiver's last HTTP status, if any.
    pub http_status: Option<i32>,
    /// When.
    pub created_ms: UnixMs,
}

impl NoticeRecord {
    /// Its kind.
    pub fn kind(&self) -> NoticeKind {
        NoticeKind::DestinationDisabled
    }

    /// The stable CloudEvent id of the notice: `notices/<id>`.
    pub fn event_id(&self) -> String {
        notice_event_id(&self.id)
    }
}

/// The CloudEvent id of notice `id`.
pub fn notice_event_id(id: &str) -> String {
    format!("notices/{id}")
}

/// One notice for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeDeliveryRecord {
    /// The receiving destination.
    pub destination_id: String,
    /// Which notice.
    pub notice_id: String,
    /// Their tenant.
    pub tenant_id: TenantId,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts started (a claim counts one).
    pub attempts: i32,
    /// Not claimed before this.
    pub next_attempt_ms: UnixMs,
    /// The last HTTP status answered, if any.
    pub last_status: Option<i32>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Who holds it now.
    pub lease_owner: Option<String>,
    /// Until when.
    pub lease_until_ms: Option<UnixMs>,
    /// Fanned out at (the disable's time).
    pub created_ms: UnixMs,
    /// Acknowledged at.
    pub delivered_ms: Option<UnixMs>,
}

/// What a sender reports for a notice delivery it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeDeliveryUpdate {
    /// The receiving destination.
    pub destination_id: String,
    /// Which notice.
    pub notice_id: String,
    /// Delivered, dead, or still pending (a retry at `next_attempt_ms`).
    pub state: DeliveryState,
    /// When to try again (pending).
    pub next_attempt_ms: UnixMs,
    /// The HTTP status answered, if any.
    pub last_status: Option<i32>,
    /// The failure, if any.
    pub last_error: Option<String>,
    /// When this outcome was learnt.
    pub at_ms: UnixMs,
}

/// Where a replay goes on from: the last event a previous chunk looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCursor {
    /// Its onboarding.
    pub onboarding_id: OnboardingId,
    /// Its sequence.
    pub sequence: i64,
}

/// What one replay chunk (one transaction) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayChunk {
    /// Deliveries queued (filter-matching events).
    pub queued: u64,
    /// Events of the log looked at.
    pub scanned: u32,
    /// The last event looked at; `None` when none was.
    pub last: Option<ReplayCursor>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Still to be sent (or being sent, under a lease).
    Pending,
    /// Acknowledged by the receiver.
    Delivered,
    /// Given up after the last attempt (replayable with redeliver).
    Dead,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Dead => "DEAD",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(Self::Pending),
            "DELIVERED" => Some(Self::Delivered),
            "DEAD" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// One event for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    /// Which destination.
    pub destination_id: String,
    /// Its tenant (the onboarding's).
    pub tenant_id: TenantId,
    /// Which onboarding's event.
    pub onboarding_id: OnboardingId,
    /// The event's sequence in that onboarding's log.
    pub sequence: i64,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts started (a claim counts one).
    pub attempts: i32,
    /// Not claimed before this.
    pub next_attempt_ms: UnixMs,
    /// The last HTTP status answered, if any.
    pub last_status: Option<i32>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Who holds it now.
    pub lease_owner: Option<String>,
    /// Until when.
    pub lease_until_ms: Option<UnixMs>,
    /// Fanned out at (about the event's commit).
    pub created_ms: UnixMs,
    /// Acknowledged at.
    pub delivered_ms: Option<UnixMs>,
}

impl DeliveryRecord {
    /// The stable event id every attempt and every destination sends (`webhook-id`,
    /// `Nats-Msg-Id`, the CloudEvent `id`): the same for a replay, so receivers dedupe.
    pub fn event_id(&self) -> String {
        event_id(&self.onboarding_id, self.sequence)
    }
}

/// The stable id of an onboarding's event: `<onboarding>/<sequence>`.
pub fn event_id(onboarding: &OnboardingId, sequence: i64) -> String {
    format!("{onboarding}/{sequence}")
}

/// What a sender reports for a delivery it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryUpdate {
    /// Which destination.
    pub destination_id: String,
    /// Which onboarding.
    pub onboarding_id: OnboardingId,
    /// Which event.
    pub sequence: i64,
    /// Delivered, dead, or still pending (a retry at `next_attempt_ms`).
    pub state: DeliveryState,
    /// When to try again (pending).
    pub next_attempt_ms: UnixMs,
    /// The HTTP status answered, if any.
    pub last_status: Option<i32>,
    /// The failure, if any.
    pub last_error: Option<String>,
    /// When this outcome was learnt.
    pub at_ms: UnixMs,
    /// Claimed in a run behind its head but never sent (an earlier event of the run did not
    /// get through, or the run ran out of time): only the lease is released and the claim's
    /// attempt undone; `state` and the rest are ignored.
    pub unattempted: bool,
}

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq)]
pub enum RedeliverFrom {
    /// Every event of the tenant committed at or after this time.
    Time(UnixMs),
    /// The events of one onboarding from this sequence on.
    Sequence {
        /// Which onboarding.
        onboarding_id: OnboardingId,
        /// The first sequence replayed.
        sequence: i64,
    },
}

/// What one fan-out pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Outbox rows consumed.
    pub events: u64,
    /// Delivery rows written.
    pub deliveries: u64,
}

/// A page request over one destination's deliveries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryQuery {
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
    /// Max items, already clamped.
    pub limit: u32,
    /// The event id (`<onboarding>/<sequence>`) of the last item of the previous page.
    pub after: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::new_id;

    #[test]
    fn filters_match_and_round_trip() {
        let a: AccountId = new_id();
        let any = DeliveryFilter::default();
        assert!(any.matches(EventKind::Created, ProviderKind::Whapi, &a));
        let f = DeliveryFilter {
            kinds: vec![EventKind::StateChanged],
            notices: vec![],
            providers: vec![ProviderKind::Whapi],
            accounts: vec![a.clone()],
        };
        assert!(f.matches(EventKind::StateChanged, ProviderKind::Whapi, &a));
        assert!(!f.matches(EventKind::Created, ProviderKind::Whapi, &a));
        assert!(!f.matches(EventKind::StateChanged, ProviderKind::Whapi, &new_id()));
        assert_eq!(DeliveryFilter::from_json(&f.to_json()).unwrap(), f);
        assert_eq!(DeliveryFilter::from_json("{}").unwrap(), any);
        assert!(DeliveryFilter::from_json(r#"{"kinds":["nope"]}"#).is_err());
        assert!(DeliveryFilter::from_json(r#"{"notices":["nope"]}"#).is_err());
    }

    #[test]
    fn notices_pass_filters_that_name_no_type_or_name_them() {
        let n = NoticeKind::DestinationDisabled;
        let a: AccountId = new_id();
        assert!(DeliveryFilter::default().admits_notice(n));
        // Provider and account filters are about onboardings: notices pass them.
        let scoped =
            DeliveryFilter { providers: vec![ProviderKind::Whapi], accounts: vec![a.clone()], ..Default::default() };
        assert!(scoped.admits_notice(n));
        let kinds = DeliveryFilter { kinds: vec![EventKind::StateChanged], ..Default::default() };
        assert!(!kinds.admits_notice(n));
        // Naming only the notice type: notices, and no onboarding event.
        let only = DeliveryFilter { notices: vec![n], ..Default::default() };
        assert!(only.admits_notice(n));
        assert!(!only.matches(EventKind::StateChanged, ProviderKind::Whapi, &a));
        let both = DeliveryFilter { kinds: vec![EventKind::StateChanged], notices: vec![n], ..Default::default() };
        assert!(both.admits_notice(n) && both.matches(EventKind::StateChanged, ProviderKind::Whapi, &a));
        assert_eq!(DeliveryFilter::from_json(&both.to_json()).unwrap(), both);
        for k in NoticeKind::ALL {
            assert_eq!(NoticeKind::parse(k.as_str()), Some(k));
            assert!(k.as_str().parse::<EventKind>().is_err(), "a notice name is not an event type");
        }
        for c in [DisableCause::Gone, DisableCause::FailingTooLong, DisableCause::ByCaller] {
            assert_eq!(DisableCause::parse(c.as_str()), Some(c));
        }
    }

    #[test]
    fn stored_names_round_trip() {
        for s in [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Dead] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        for s in [SinkKind::Webhook, SinkKind::Nats] {
            assert_eq!(SinkKind::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("x"), None);
    }
}
