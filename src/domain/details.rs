//! An onboarding's public details, typed per provider: what `Onboarding.details` shows.
//!
//! Stored as `onboardings.details_json`, one JSON object of the provider's struct (the
//! provider is its own column, so the object carries no tag). The field names are the proto
//! field names the rows have always used, so rows written before the types existed still
//! read. Every field is optional: `None` is "not reported yet", and an adapter's patch is the
//! same struct with only what it learned set, merged by [`OnboardingDetails::merge`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::{AppId, ChannelId, ChannelMode, E164, ProviderKind, UnixMs, WabaId, WebhookMode};

/// The provider's raw status fields (the last observation's), as it reported them.
pub type ProviderFields = BTreeMap<String, String>;

/// A typed id or number stored as text before the types existed: empty or malformed text
/// reads as absent (it was never a value to show), so one odd field cannot hide the rest.
fn lenient<'de, D: Deserializer<'de>, T: TryFrom<String>>(d: D) -> Result<Option<T>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.and_then(|s| T::try_from(s).ok()))
}

/// A stored webhook mode; rows written before it was typed may hold anything.
fn lenient_webhook_mode<'de, D: Deserializer<'de>>(d: D) -> Result<WebhookMode, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// Sets `old` to `new` when the patch reports it.
fn take<T>(old: &mut Option<T>, new: Option<T>) {
    if new.is_some() {
        *old = new;
    }
}

/// The webhook subscription a Gupshup onboarding asked for, as callers may read it back:
/// header names only (their values are secrets kept in the sealed request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestedSubscription {
    /// Where Gupshup is to POST the events once the app is live.
    pub url: String,
    /// Gupshup mode names to subscribe to (`SENT`, `DELIVERED`, `ACCOUNT`...), as requested.
    pub events: Vec<String>,
    /// The subscription's tag, unique per app: how a repeated create finds the first one.
    pub tag: String,
    /// Gupshup payload version (0 to 3) of the deliveries.
    pub version: i64,
    /// Delivery mode (an unknown stored name reads as unspecified).
    #[serde(deserialize_with = "lenient_webhook_mode")]
    pub mode: WebhookMode,
    /// Whether it is active on creation.
    pub active: bool,
    /// Names of the headers sent with each delivery.
    pub header_names: Vec<String>,
}

/// Gupshup: the app and its subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GupshupDetails {
    /// The app's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// The business's WABA.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub waba_id: Option<WabaId>,
    /// The onboarded number.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub phone: Option<E164>,
    /// The Gupshup app, once created.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub app_id: Option<AppId>,
    /// Storage region asked for (empty: the provider's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_region: Option<String>,
    /// Whether a subscription is created once the app is live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_on_live: Option<bool>,
    /// The subscription asked for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<RequestedSubscription>,
    /// The subscription's provider id once created (bare; the API shows a resource name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_subscription: Option<String>,
    /// Whether the app token was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_token_ready: Option<bool>,
    /// The provider's raw status fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_fields: Option<ProviderFields>,
}

/// Exotel: the hosted link and its token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExotelDetails {
    /// The link to give the business.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onboarding_url: Option<String>,
    /// The link's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The token's status word as Exotel reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_status: Option<String>,
    /// Customers that can still use the link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customers_remaining: Option<i64>,
    /// When the link lapses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_expire_ms: Option<UnixMs>,
    /// The `CreateOnboardingLinks` batch this link came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Customers one link admits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_customers_per_link: Option<i64>,
    /// The lower bound on `customers_remaining`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customers_remaining_min: Option<i64>,
    /// What `LIVE` means for a link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_meaning: Option<String>,
    /// What a used token means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_meaning: Option<String>,
    /// The provider's raw status fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_fields: Option<ProviderFields>,
}

/// Whapi: the channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WhapiDetails {
    /// The channel, once created.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub channel_id: Option<ChannelId>,
    /// The channel's mode, once known (a mode the provider reports that we do not know
    /// leaves it as it was: the raw word is in the observation).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub mode: Option<ChannelMode>,
    /// Whether the channel goes live once connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_live: Option<bool>,
    /// Days added when it goes live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extend_days: Option<i64>,
    /// The connected number.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub phone: Option<E164>,
    /// The channel's paid-until time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_till_ms: Option<UnixMs>,
    /// Connect codes issued through `GetConnectCode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_codes_issued: Option<i64>,
    /// The provider's raw status fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_fields: Option<ProviderFields>,
}

/// 99digital: the number and the business.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Digital99Details {
    /// The number onboarded.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub phone: Option<E164>,
    /// The temporary number listed during coexistence onboarding.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient")]
    pub temporary_phone: Option<E164>,
    /// The onboarding link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onboarding_link: Option<String>,
    /// The landing page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landing_page: Option<String>,
    /// Whether the number keeps the WhatsApp Business app (coexistence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coexistence: Option<bool>,
    /// The business's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_name: Option<String>,
    /// The display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Whether the verification code was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_verified: Option<bool>,
    /// The provider's raw status fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_fields: Option<ProviderFields>,
}

impl GupshupDetails {
    fn merge(&mut self, p: Self) {
        take(&mut self.app_name, p.app_name);
        take(&mut self.waba_id, p.waba_id);
        take(&mut self.phone, p.phone);
        take(&mut self.app_id, p.app_id);
        take(&mut self.storage_region, p.storage_region);
        take(&mut self.subscribe_on_live, p.subscribe_on_live);
        take(&mut self.subscription, p.subscription);
        take(&mut self.created_subscription, p.created_subscription);
        take(&mut self.app_token_ready, p.app_token_ready);
        take(&mut self.provider_fields, p.provider_fields);
    }
}

impl ExotelDetails {
    fn merge(&mut self, p: Self) {
        take(&mut self.onboarding_url, p.onboarding_url);
        take(&mut self.token, p.token);
        take(&mut self.token_status, p.token_status);
        take(&mut self.customers_remaining, p.customers_remaining);
        take(&mut self.link_expire_ms, p.link_expire_ms);
        take(&mut self.batch_id, p.batch_id);
        take(&mut self.max_customers_per_link, p.max_customers_per_link);
        take(&mut self.customers_remaining_min, p.customers_remaining_min);
        take(&mut self.live_meaning, p.live_meaning);
        take(&mut self.used_meaning, p.used_meaning);
        take(&mut self.provider_fields, p.provider_fields);
    }
}

impl WhapiDetails {
    fn merge(&mut self, p: Self) {
        take(&mut self.channel_id, p.channel_id);
        take(&mut self.mode, p.mode);
        take(&mut self.go_live, p.go_live);
        take(&mut self.extend_days, p.extend_days);
        take(&mut self.phone, p.phone);
        take(&mut self.active_till_ms, p.active_till_ms);
        take(&mut self.connect_codes_issued, p.connect_codes_issued);
        take(&mut self.provider_fields, p.provider_fields);
    }
}

impl Digital99Details {
    fn merge(&mut self, p: Self) {
        take(&mut self.phone, p.phone);
        take(&mut self.temporary_phone, p.temporary_phone);
        take(&mut self.onboarding_link, p.onboarding_link);
        take(&mut self.landing_page, p.landing_page);
        take(&mut self.coexistence, p.coexistence);
        take(&mut self.business_name, p.business_name);
        take(&mut self.display_name, p.display_name);
        take(&mut self.number_verified, p.number_verified);
        take(&mut self.provider_fields, p.provider_fields);
    }
}

/// An onboarding's public details, one variant per provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OnboardingDetails {
    /// The details of a Gupshup (Partner API) onboarding.
    Gupshup(GupshupDetails),
    /// The details of an Exotel (ISV hosted-link) onboarding.
    Exotel(ExotelDetails),
    /// The details of a Whapi.Cloud (channel) onboarding.
    Whapi(WhapiDetails),
    /// The details of a 99digital onboarding.
    Digital99(Digital99Details),
}

/// Stored details that do not read as the provider's struct.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetailsError {
    /// The stored text is not the provider's details object.
    #[error("{provider} details are malformed: {message}")]
    Malformed {
        /// Whose details.
        provider: ProviderKind,
        /// The parser's message.
        message: String,
    },
    /// A patch for one provider applied to another's details.
    #[error("a {patch} details patch cannot apply to {target} details")]
    WrongProvider {
        /// The details' provider.
        target: ProviderKind,
        /// The patch's provider.
        patch: ProviderKind,
    },
}

impl OnboardingDetails {
    /// No details yet for `provider`.
    pub fn empty(provider: ProviderKind) -> Self {
        match provider {
            ProviderKind::Gupshup => Self::Gupshup(GupshupDetails::default()),
            ProviderKind::Exotel => Self::Exotel(ExotelDetails::default()),
            ProviderKind::Whapi => Self::Whapi(WhapiDetails::default()),
            ProviderKind::Digital99 => Self::Digital99(Digital99Details::default()),
        }
    }

    /// Reads stored details of `provider` (the empty text reads as no details).
    pub fn parse(provider: ProviderKind, json: &str) -> Result<Self, DetailsError> {
        let bad = |e: serde_json::Error| DetailsError::Malformed { provider, message: e.to_string() };
        if json.trim().is_empty() {
            return Ok(Self::empty(provider));
        }
        Ok(match provider {
            ProviderKind::Gupshup => Self::Gupshup(serde_json::from_str(json).map_err(bad)?),
            ProviderKind::Exotel => Self::Exotel(serde_json::from_str(json).map_err(bad)?),
            ProviderKind::Whapi => Self::Whapi(serde_json::from_str(json).map_err(bad)?),
            ProviderKind::Digital99 => Self::Digital99(serde_json::from_str(json).map_err(bad)?),
        })
    }

    /// The stored text (the provider's struct as one JSON object). An error, never an empty
    /// object, should encoding fail: writing that back would wipe the details.
    pub fn to_json(&self) -> Result<String, DetailsError> {
        serde_json::to_string(self)
            .map_err(|e| DetailsError::Malformed { provider: self.provider(), message: e.to_string() })
    }

    /// Whose details these are.
    pub fn provider(&self) -> ProviderKind {
        match self {
            Self::Gupshup(_) => ProviderKind::Gupshup,
            Self::Exotel(_) => ProviderKind::Exotel,
            Self::Whapi(_) => ProviderKind::Whapi,
            Self::Digital99(_) => ProviderKind::Digital99,
        }
    }

    /// Applies `patch`: every field it sets replaces ours, the rest stay. A patch of another
    /// provider is refused and changes nothing.
    pub fn merge(&mut self, patch: Self) -> Result<(), DetailsError> {
        match (self, patch) {
            (Self::Gupshup(d), Self::Gupshup(p)) => d.merge(p),
            (Self::Exotel(d), Self::Exotel(p)) => d.merge(p),
            (Self::Whapi(d), Self::Whapi(p)) => d.merge(p),
            (Self::Digital99(d), Self::Digital99(p)) => d.merge(p),
            (d, p) => return Err(DetailsError::WrongProvider { target: d.provider(), patch: p.provider() }),
        }
        Ok(())
    }

    /// The provider's raw status fields, if an observation reported any.
    pub fn provider_fields(&self) -> Option<&ProviderFields> {
        match self {
            Self::Gupshup(d) => d.provider_fields.as_ref(),
            Self::Exotel(d) => d.provider_fields.as_ref(),
            Self::Whapi(d) => d.provider_fields.as_ref(),
            Self::Digital99(d) => d.provider_fields.as_ref(),
        }
    }

    /// Replaces the provider's raw status fields.
    pub fn set_provider_fields(&mut self, fields: ProviderFields) {
        let slot = match self {
            Self::Gupshup(d) => &mut d.provider_fields,
            Self::Exotel(d) => &mut d.provider_fields,
            Self::Whapi(d) => &mut d.provider_fields,
            Self::Digital99(d) => &mut d.provider_fields,
        };
        *slot = Some(fields);
    }
}

impl From<GupshupDetails> for OnboardingDetails {
    fn from(d: GupshupDetails) -> Self {
        Self::Gupshup(d)
    }
}

impl From<ExotelDetails> for OnboardingDetails {
    fn from(d: ExotelDetails) -> Self {
        Self::Exotel(d)
    }
}

impl From<WhapiDetails> for OnboardingDetails {
    fn from(d: WhapiDetails) -> Self {
        Self::Whapi(d)
    }
}

impl From<Digital99Details> for OnboardingDetails {
    fn from(d: Digital99Details) -> Self {
        Self::Digital99(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_before_the_types_still_read() {
        // As `initial_details` and the adapters wrote them (string keys), with a key no struct
        // has: unknown keys are ignored.
        let old = r#"{"app_name":"shop","waba_id":"1234567890","phone":"+15551112222","storage_region":"",
            "subscribe_on_live":true,"subscription":{"url":"https://x.test/h","events":["MESSAGE"],"tag":"t",
            "version":2,"mode":"Body","active":true,"header_names":["X-A"]},"app_id":"app-1",
            "app_token_ready":true,"created_subscription":"sub-9","provider_fields":{"status":"LIVE"},
            "retired_key":{"stalled_from":"PENDING"}}"#;
        let Ok(OnboardingDetails::Gupshup(d)) = OnboardingDetails::parse(ProviderKind::Gupshup, old) else {
            panic!("gupshup details do not parse");
        };
        assert_eq!(d.app_name.as_deref(), Some("shop"));
        assert_eq!(d.phone.as_ref().map(E164::as_str), Some("+15551112222"));
        assert_eq!(d.app_id.as_ref().map(AppId::as_str), Some("app-1"));
        assert_eq!(d.subscription.as_ref().map(|s| s.header_names.clone()), Some(vec!["X-A".to_string()]));
        assert_eq!(d.provider_fields.as_ref().and_then(|f| f.get("status")).map(String::as_str), Some("LIVE"));
        let w = OnboardingDetails::parse(ProviderKind::Whapi, r#"{"channel_id":"MANTIS-1","mode":"trial","phone":""}"#);
        let Ok(OnboardingDetails::Whapi(w)) = w else { panic!("whapi details do not parse") };
        assert_eq!(w.phone, None, "an empty phone reads as absent");
        assert_eq!(w.mode, Some(ChannelMode::Trial));
        assert_eq!(d.subscription.as_ref().map(|s| s.mode), Some(WebhookMode::Body));
    }

    #[test]
    fn modes_nobody_knows_read_as_none_without_hiding_the_rest() {
        let w = OnboardingDetails::parse(ProviderKind::Whapi, r#"{"channel_id":"MANTIS-1","mode":"platinum"}"#);
        let Ok(OnboardingDetails::Whapi(w)) = w else { panic!("whapi details do not parse") };
        assert_eq!((w.mode, w.channel_id.as_ref().map(ChannelId::as_str)), (None, Some("MANTIS-1")));
        let g = r#"{"app_name":"shop","subscription":{"url":"u","mode":"","active":true}}"#;
        let Ok(OnboardingDetails::Gupshup(g)) = OnboardingDetails::parse(ProviderKind::Gupshup, g) else {
            panic!("gupshup details do not parse");
        };
        assert_eq!(g.subscription.map(|s| (s.mode, s.active)), Some((WebhookMode::Unspecified, true)));
        let stored = OnboardingDetails::from(WhapiDetails { mode: Some(ChannelMode::Live), ..Default::default() });
        assert_eq!(stored.to_json().unwrap(), r#"{"mode":"live"}"#, "stored as before");
    }

    #[test]
    fn the_stored_text_keeps_the_proto_names_and_round_trips() {
        let d = OnboardingDetails::from(ExotelDetails {
            token: Some("tok".into()),
            customers_remaining: Some(5),
            link_expire_ms: Some(7),
            ..Default::default()
        });
        let json = d.to_json().unwrap_or_default();
        assert_eq!(json, r#"{"token":"tok","customers_remaining":5,"link_expire_ms":7}"#);
        assert_eq!(OnboardingDetails::parse(ProviderKind::Exotel, &json), Ok(d));
        assert_eq!(
            OnboardingDetails::parse(ProviderKind::Exotel, ""),
            Ok(OnboardingDetails::empty(ProviderKind::Exotel))
        );
        assert!(matches!(
            OnboardingDetails::parse(ProviderKind::Exotel, r#"{"customers_remaining":"five"}"#),
            Err(DetailsError::Malformed { provider: ProviderKind::Exotel, .. })
        ));
    }

    #[test]
    fn a_patch_sets_what_it_reports_and_keeps_the_rest() {
        let mut d = OnboardingDetails::from(Digital99Details {
            phone: E164::parse("+15551112222").ok(),
            temporary_phone: E164::parse("+972570000000").ok(),
            coexistence: Some(true),
            number_verified: Some(false),
            ..Default::default()
        });
        let patch = Digital99Details {
            phone: E164::parse("+15553334444").ok(),
            number_verified: Some(true),
            provider_fields: Some(ProviderFields::from([("status".to_string(), "1".to_string())])),
            ..Default::default()
        };
        assert_eq!(d.merge(patch.into()), Ok(()));
        let OnboardingDetails::Digital99(d99) = &d else { panic!("variant changed") };
        assert_eq!(d99.phone.as_ref().map(E164::as_str), Some("+15553334444"));
        assert_eq!(d99.temporary_phone.as_ref().map(E164::as_str), Some("+972570000000"), "kept");
        assert_eq!(d99.coexistence, Some(true), "kept");
        assert_eq!(d99.number_verified, Some(true));
        assert_eq!(d.provider_fields().map(|f| f.len()), Some(1));
    }

    #[test]
    fn a_patch_of_another_provider_is_refused() {
        let mut d = OnboardingDetails::empty(ProviderKind::Whapi);
        let before = d.clone();
        let r = d.merge(GupshupDetails { app_token_ready: Some(true), ..Default::default() }.into());
        assert_eq!(r, Err(DetailsError::WrongProvider { target: ProviderKind::Whapi, patch: ProviderKind::Gupshup }));
        assert_eq!(d, before);
    }
}
