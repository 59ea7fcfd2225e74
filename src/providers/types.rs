//! Domain types in and out of [`super::Provider`]. No wire types: each adapter keeps its own
//! private model and converts at its boundary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ext::SubscriptionSpec;
use crate::domain::account::{AccountOptions, Credentials};
use crate::domain::{
    AccountId, Digital99Details, E164, GupshupDetails, OnboardingDetails, OnboardingId, OnboardingState, ProviderKind,
    RequestedSubscription, Secret, UnixMs, WabaId, WhapiDetails,
};

/// Everything an adapter needs to act for one account, built by the engine per call.
///
/// `Debug` is safe: credentials and the webhook URL are redacted.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The account acted for.
    pub account_id: AccountId,
    /// Decrypted credentials; must match the adapter's kind.
    pub credentials: Credentials,
    /// Non-secret account options.
    pub options: AccountOptions,
    /// The account's ingress URL (`/webhooks/{provider}/{account}/{secret}`). A [`Secret`]
    /// because the path embeds the webhook secret: expose only when registering it.
    pub webhook_url: Secret,
    /// Provider API base URL, resolved from options, config or the in-process simulator.
    pub base_url: String,
}

/// What to create at the provider. The engine keeps it sealed (it can hold subscription
/// header secrets) and hands it to every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    /// Which onboarding the start is for; every retry of the start carries the same one.
    pub onboarding_id: OnboardingId,
    /// Stable across retries of this onboarding's start. Adapters embed or index it so a
    /// repeated start finds the resource made by an earlier attempt instead of making another.
    pub idempotency_key: String,
    /// Caller's reference, passed where the provider has a field for it.
    pub reference: String,
    /// Provider-specific input; its kind must match the adapter's.
    pub payload: StartPayload,
}

/// Provider-specific start input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum StartPayload {
    /// Link a WABA and phone to a new Gupshup app.
    Gupshup(GupshupStart),
    /// Mint one Exotel hosted link (Exotel takes no input).
    Exotel,
    /// Create a Whapi channel for the customer to connect.
    Whapi(WhapiStart),
    /// Create a 99digital onboarding link for a number.
    Digital99(Digital99Start),
}

impl StartPayload {
    /// The provider this payload is for.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Self::Gupshup(_) => ProviderKind::Gupshup,
            Self::Exotel => ProviderKind::Exotel,
            Self::Whapi(_) => ProviderKind::Whapi,
            Self::Digital99(_) => ProviderKind::Digital99,
        }
    }

    /// The public details a new onboarding starts with: what its request asked for, as
    /// callers read it back.
    pub fn initial_details(&self) -> OnboardingDetails {
        match self {
            Self::Gupshup(g) => GupshupDetails {
                app_name: Some(g.app_name.clone()),
                waba_id: Some(g.waba_id.clone()),
                phone: Some(g.phone.clone()),
                storage_region: Some(g.storage_region.clone().unwrap_or_default()),
                subscribe_on_live: Some(g.subscribe_on_live.is_some()),
                // The requested subscription as callers may read it back: header names only,
                // their values are secrets kept in the sealed request.
                subscription: g.subscribe_on_live.as_ref().map(|spec| RequestedSubscription {
                    url: spec.url.clone(),
                    events: spec.events.clone(),
                    tag: spec.tag.clone(),
                    version: i64::from(spec.version),
                    mode: spec.mode,
                    active: spec.active,
                    header_names: spec.headers.keys().cloned().collect(),
                }),
                ..GupshupDetails::default()
            }
            .into(),
            Self::Exotel => OnboardingDetails::empty(ProviderKind::Exotel),
            Self::Whapi(w) => WhapiDetails {
                go_live: Some(w.go_live),
                extend_days: Some(i64::from(w.extend_days)),
                ..WhapiDetails::default()
            }
            .into(),
            Self::Digital99(d) => Digital99Details {
                phone: Some(d.phone.clone()),
                business_name: Some(d.business_name.clone()),
                display_name: Some(d.display_name.clone()),
                coexistence: Some(d.coexistence),
                ..Digital99Details::default()
            }
            .into(),
        }
    }
}

/// Gupshup app linking input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GupshupStart {
    /// App name, unique across Gupshup.
    pub app_name: String,
    /// WABA id from Embedded Signup.
    pub waba_id: WabaId,
    /// Phone to link.
    pub phone: E164,
    /// `storageRegion`; `None`: the account default.
    pub storage_region: Option<String>,
    /// Subscription to create once the app is live (`subscribe_on_live`); `None`: none.
    #[serde(default)]
    pub subscribe_on_live: Option<SubscriptionSpec>,
}

/// Whapi channel input. Going live and extending days are later pipeline steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhapiStart {
    /// Channel name shown in the Whapi panel.
    pub channel_name: String,
    /// Project; `None`: the account's `project_id`.
    pub project_id: Option<String>,
    /// Switch the channel from trial to live once connected.
    #[serde(default)]
    pub go_live: bool,
    /// Days to add after going live (0: none).
    #[serde(default)]
    pub extend_days: u32,
}

/// How a verification code reaches the business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMethod {
    /// Text message.
    Sms,
    /// Voice call.
    Voice,
}

/// 99digital link input. Number registration, when needed, is an earlier pipeline step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digital99Start {
    /// The business's WhatsApp number; registering it, when needed, is an earlier step.
    pub phone: E164,
    /// Business name.
    pub business_name: String,
    /// WhatsApp display name.
    pub display_name: String,
    /// Contact email of the business (99digital `business_email`; sent empty when absent).
    pub business_email: Option<String>,
    /// Company registration id.
    pub business_id: Option<String>,
    /// Postal address of the business (99digital `business_address`; sent empty when absent).
    pub business_address: Option<String>,
    /// Coexistence with the WhatsApp Business app.
    pub coexistence: bool,
    /// Register and verify the number first, sending the code this way; `None`: the number
    /// is already registered.
    #[serde(default)]
    pub register_number: Option<VerifyMethod>,
}

/// How to find the provider-side resource again; the engine stores it verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderHandle {
    /// The key callbacks carry (app id, channel id, link token, phone digits); indexed by the
    /// store to route callbacks to the onboarding.
    pub external_key: String,
    /// Adapter-private extra data (e.g. a link URL, the app name). Opaque to the engine.
    pub data: serde_json::Value,
}

/// One reading of provider status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// The provider's own status, recorded on every transition.
    pub raw_status: String,
    /// Raw fields worth keeping (URLs, expiry, counters), provider naming.
    pub fields: BTreeMap<String, String>,
    /// Canonical state the raw status maps to; `None` when it says nothing new.
    pub state: Option<OnboardingState>,
    /// Human reason for the state, no secrets.
    pub reason: String,
}

/// What a create made (or found): the in-memory fake's [`super::InMemoryProvider::start`].
#[derive(Debug, Clone, PartialEq)]
pub struct StartOutcome {
    /// How to find it again.
    pub handle: ProviderHandle,
    /// Its status right after the call.
    pub observation: Observation,
    /// True when an earlier attempt had already created it and this call only found it.
    pub reconciled: bool,
}

/// One event decoded from a callback body.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackEvent {
    /// Unique per provider event and stable across redeliveries: the store dedupes on it.
    pub dedupe_key: String,
    /// Matches [`ProviderHandle::external_key`] of the onboarding it concerns.
    pub external_key: String,
    /// The provider's status or event type.
    pub raw_status: String,
    /// Canonical state hint; `None` for events that carry no state.
    pub state: Option<OnboardingState>,
    /// Raw fields worth keeping.
    pub fields: BTreeMap<String, String>,
    /// When the provider says it happened; used to drop a stale event that arrives after a
    /// newer one (out-of-order delivery). `None` when the provider sends no time.
    pub occurred_ms: Option<crate::domain::UnixMs>,
}

/// The result of a cancel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CancelOutcome {
    /// Provider status after cancelling.
    pub raw_status: String,
    /// Days returned to the partner balance (Whapi), else 0.
    pub refunded_days: u32,
}

/// How close a credential is to its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialExpiryState {
    /// Further away than the adapter's warning lead.
    Valid,
    /// Within the warning lead: renew it before it lapses.
    Expiring,
    /// Past its expiry: calls that need it will fail until it is replaced.
    Expired,
}

impl CredentialExpiryState {
    /// The metric label (`wa_onboard_credential_expiry_warnings_total{state}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Expiring => "expiring",
            Self::Expired => "expired",
        }
    }
}

/// A credential's expiry as the account options declare it (issue 17 point 15: Gupshup
/// client secrets now expire and no API reports when).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialExpiry {
    /// When it expires.
    pub expire_ms: UnixMs,
    /// Where that puts it now.
    pub state: CredentialExpiryState,
    /// For people: empty while `Valid`, else what expires when and how to renew it.
    pub warning: String,
}

/// The result of a credentials check that passed (rejection is an error).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CredentialsCheck {
    /// One line for humans, e.g. the partner name.
    pub summary: String,
    /// Non-secret facts learnt (partner id, balance).
    pub fields: BTreeMap<String, String>,
}
