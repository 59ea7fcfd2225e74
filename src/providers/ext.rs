//! Capability ports beyond the onboarding pipeline, each offered by the adapters whose
//! provider has it (see the accessors on [`super::Provider`]): webhook subscriptions, the
//! partner token, hosted links, channels, number verification. Domain types in and out, as
//! for the main port.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::http::TokenStatus;
use super::{CallContext, ProviderError, ProviderHandle};
use crate::domain::{E164, OnboardingState, Secret, UnixMs};

/// An onboarded provider resource (Gupshup app, Whapi channel) and its secret (app token,
/// channel token), which most resource-level calls authenticate with.
#[derive(Debug, Clone)]
pub struct ResourceRef {
    /// How to find it.
    pub handle: ProviderHandle,
    /// Its token, once the pipeline fetched it.
    pub secret: Option<Secret>,
    /// Idempotency key of the operation, when the RPC carried a `request_id` (e.g. Whapi's
    /// extend writes it into the required `comment` so a retry can be recognised).
    pub request_id: Option<String>,
}

/// The webhook mode and the channel mode are domain vocabularies (the details store them).
pub use crate::domain::{ChannelMode, WebhookMode};

/// A subscription as the caller specifies it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionSpec {
    /// Where the provider POSTs each event.
    pub url: String,
    /// Event types, provider naming (validated by the adapter).
    pub events: Vec<String>,
    /// Caller tag, unique per resource where the provider requires it.
    pub tag: String,
    /// Payload version (Gupshup 0–3).
    pub version: i32,
    /// Headers sent with each delivery; values are secrets (often auth headers).
    #[serde(with = "crate::domain::secret::exposed_map")]
    pub headers: BTreeMap<String, Secret>,
    /// How the event type is carried (Whapi); `Unspecified` for providers without modes.
    pub mode: WebhookMode,
    /// Whether deliveries are on.
    pub active: bool,
}

/// A subscription as the provider holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSubscription {
    /// The provider's id (Gupshup subscription id; for Whapi, the webhook's index-stable key).
    pub id: String,
    /// What it does; header values are not read back (only names), so `headers` holds
    /// redacted placeholders.
    pub spec: SubscriptionSpec,
    /// Provider's numeric mode / bitmask, raw.
    pub provider_mode: i64,
    /// Created, when the provider says.
    pub created_ms: Option<UnixMs>,
    /// Updated, when the provider says.
    pub updated_ms: Option<UnixMs>,
}

/// Subscription management on an onboarded resource.
#[async_trait]
pub trait SubscriptionOps: Send + Sync {
    /// Whether an onboarding in `state` can take a new subscription, before any call:
    /// `Err(reason)` when the provider would refuse (Gupshup: only a live app). Default: any.
    fn accepts_subscriptions(&self, state: OnboardingState) -> Result<(), String> {
        let _ = state;
        Ok(())
    }

    /// Creates one. Invalid specs are [`ProviderError::Invalid`] with a field path under
    /// `spec.` before any call; a taken tag is [`ProviderError::Conflict`].
    async fn create_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        spec: &SubscriptionSpec,
    ) -> Result<ProviderSubscription, ProviderError>;
    /// All of the resource's subscriptions.
    async fn list_subscriptions(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
    ) -> Result<Vec<ProviderSubscription>, ProviderError>;
    /// One subscription; [`ProviderError::NotFound`] when absent.
    async fn get_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
    ) -> Result<ProviderSubscription, ProviderError>;
    /// Replaces the fields of `spec` named in `fields` (proto field names; empty = all).
    async fn update_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
        spec: &SubscriptionSpec,
        fields: &[String],
    ) -> Result<ProviderSubscription, ProviderError>;
    /// Deletes one; [`ProviderError::NotFound`] when absent.
    async fn delete_subscription(&self, ctx: &CallContext, target: &ResourceRef, id: &str)
    -> Result<(), ProviderError>;
}

/// The account-level partner token (Gupshup partner login).
#[async_trait]
pub trait PartnerTokenOps: Send + Sync {
    /// Forces a new login now (single-flight with concurrent users).
    async fn refresh_partner_token(&self, ctx: &CallContext) -> Result<TokenStatus, ProviderError>;
    /// The cache's status, without a call.
    fn partner_token_status(&self) -> TokenStatus;
}

/// One minted hosted link.
#[derive(Debug, Clone, PartialEq)]
pub struct MintedLink {
    /// The URL to give the business.
    pub url: String,
    /// The link's token (Exotel: last path segment), the callback / validation key.
    pub token: String,
    /// When it lapses.
    pub expire_ms: Option<UnixMs>,
    /// The provider's own status word for the fresh link (Exotel: `VALID`), recorded as the
    /// onboarding's `provider_status`.
    pub provider_status: String,
    /// Raw fields worth keeping.
    pub fields: BTreeMap<String, String>,
    /// The public details of the onboarding that follows this link (e.g.
    /// `customers_remaining`), exactly as the adapter reports them for a link it mints for a
    /// single onboarding: the one source of truth for both paths. The core adds only what it
    /// owns (`batch_id`).
    pub details: crate::domain::ExotelDetails,
}

/// Live status of a hosted-link token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTokenState {
    /// Minted and not yet used: the customer can still open it (Exotel `VALID`).
    Valid,
    /// A customer completed the flow with it (Exotel `USED`); it cannot be used again.
    Used,
    /// Its validity ran out unused (Exotel `EXPIRED`).
    Expired,
}

/// A token validation result.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkTokenStatus {
    /// The provider's status word mapped to our closed set; drives the onboarding's state.
    pub state: LinkTokenState,
    /// As the provider spells it.
    pub raw: String,
}

/// Hosted links minted in batches (Exotel ISV).
#[async_trait]
pub trait HostedLinkOps: Send + Sync {
    /// The most links one [`HostedLinkOps::mint_links`] call mints (Exotel: 50).
    fn max_batch(&self) -> u32;
    /// The start payload of an onboarding made from a minted link.
    fn link_payload(&self) -> super::StartPayload;
    /// Mints `count` links in as few calls as the provider allows (Exotel: one call, at
    /// most 50). Not idempotent at the provider: unused extra links lapse harmlessly.
    async fn mint_links(&self, ctx: &CallContext, count: u32) -> Result<Vec<MintedLink>, ProviderError>;
    /// The token's live status.
    async fn validate_token(&self, ctx: &CallContext, token: &str) -> Result<LinkTokenStatus, ProviderError>;
}

/// A channel as the provider reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelInfo {
    /// The provider's channel id (the onboarding's external key).
    pub id: String,
    /// Name in the panel.
    pub display_name: String,
    /// Billing mode; `None` when the answer has none or one we do not know.
    pub mode: Option<ChannelMode>,
    /// Health status text (`INIT`, `QR`, `AUTH`, `ERROR`...), raw.
    pub health: String,
    /// The phone linked to the channel; `None` until a customer connects.
    pub phone: Option<E164>,
    /// End of the paid / trial period.
    pub active_till_ms: Option<UnixMs>,
    /// Whether the channel no longer serves (stopped at the provider, or deleted on our side).
    pub stopped: bool,
    /// The channel's Gate API URL.
    pub api_url: String,
    /// When the provider created the channel; `None` when its answer carries no timestamp.
    pub created_ms: Option<UnixMs>,
}

/// How the customer connects.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectMethod {
    /// A QR code of about this many pixels (0: provider default).
    Qr {
        /// Edge length in pixels of the requested image; 0 lets the provider choose.
        size: u32,
    },
    /// A pairing code for this phone.
    PairingCode {
        /// The phone.
        phone: E164,
    },
}

/// A connect code.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectCode {
    /// QR: PNG bytes and the raw string.
    Qr {
        /// The QR code as a PNG image, ready to show to the customer.
        png: Vec<u8>,
        /// Raw QR payload.
        raw: String,
    },
    /// Pairing code for the phone.
    PairingCode {
        /// The code the customer types into WhatsApp (Linked devices, link with phone number).
        code: String,
        /// For which phone.
        phone: E164,
    },
}

/// A connect code and its expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedConnectCode {
    /// The code.
    pub code: ConnectCode,
    /// When it stops working.
    pub expire_ms: Option<UnixMs>,
}

/// The result of extending a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendOutcome {
    /// The channel after.
    pub channel: ChannelInfo,
    /// Days added by this call (0 when `already_applied`).
    pub days_added: u32,
    /// True when an earlier call with the same request id had already extended it.
    pub already_applied: bool,
}

/// The partner's balance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Balance {
    /// Paid days left.
    pub days: i64,
    /// Trial days left.
    pub trial_days: i64,
}

/// Channel management (Whapi partner + Gate APIs).
#[async_trait]
pub trait ChannelOps: Send + Sync {
    /// The channel's current state.
    async fn get_channel(&self, ctx: &CallContext, target: &ResourceRef) -> Result<ChannelInfo, ProviderError>;
    /// A fresh QR or pairing code. [`ProviderError::Precondition`] when already connected.
    async fn connect_code(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        method: &ConnectMethod,
    ) -> Result<IssuedConnectCode, ProviderError>;
    /// Switches the mode (trial → live restarts the channel).
    async fn set_mode(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        mode: ChannelMode,
    ) -> Result<ChannelInfo, ProviderError>;
    /// Adds days; idempotent on `target.request_id` (carried in the required comment).
    async fn extend(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        days: u32,
        comment: &str,
    ) -> Result<ExtendOutcome, ProviderError>;
    /// Deletes the channel; returns the refunded days.
    async fn delete_channel(&self, ctx: &CallContext, target: &ResourceRef) -> Result<u32, ProviderError>;
    /// The partner's day balance.
    async fn partner_balance(&self, ctx: &CallContext) -> Result<Balance, ProviderError>;
}

/// Phone-number verification (99digital register + verify).
#[async_trait]
pub trait VerificationOps: Send + Sync {
    /// Checks a verification code's shape before it is stored for the pipeline, so a
    /// malformed one is refused at once ([`ProviderError::Invalid`] with field `code`).
    fn validate_code(&self, code: &str) -> Result<(), ProviderError>;
}
