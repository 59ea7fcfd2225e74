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

/// Which events a destination receives: each list empty means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Event kinds.
    pub kinds: Vec<EventKind>,
    /// Providers of the onboarding.
    pub providers: Vec<ProviderKind>,
    /// Accounts of the onboarding.
    pub accounts: Vec<AccountId>,
}

impl DeliveryFilter {
    /// Whether an event of `kind` of an onboarding of `provider` under `account` passes.
    pub fn matches(&self, kind: EventKind, provider: ProviderKind, account: &AccountId) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && (self.providers.is_empty() || self.providers.contains(&provider))
            && (self.accounts.is_empty() || self.accounts.contains(account))
    }

    /// The stored form: `{"kinds":[...],"providers":[...],"accounts":[...]}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "kinds": self.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
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
            providers: Vec<String>,
            #[serde(default)]
            accounts: Vec<String>,
        }
        let stored: Stored = serde_json::from_str(s).map_err(|e| format!("delivery filter: {e}"))?;
        Ok(Self {
            kinds: stored.kinds.iter().map(|k| k.parse()).collect::<Result<_, _>>()?,
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
    /// Why it was disabled (by the caller or by the worker: a 410, failing too long); empty
    /// when enabled.
    pub disabled_reason: String,
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
            providers: vec![ProviderKind::Whapi],
            accounts: vec![a.clone()],
        };
        assert!(f.matches(EventKind::StateChanged, ProviderKind::Whapi, &a));
        assert!(!f.matches(EventKind::Created, ProviderKind::Whapi, &a));
        assert!(!f.matches(EventKind::StateChanged, ProviderKind::Whapi, &new_id()));
        assert_eq!(DeliveryFilter::from_json(&f.to_json()).unwrap(), f);
        assert_eq!(DeliveryFilter::from_json("{}").unwrap(), any);
        assert!(DeliveryFilter::from_json(r#"{"kinds":["nope"]}"#).is_err());
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
