//! Conversions and request parsing for the capability services (tokens, subscriptions,
//! channels, `CheckAccount`). Shared helpers (timestamps, names, page tokens) live in
//! [`super::convert`].

use std::collections::BTreeMap;

use super::checked::{Checked, Invalid, field};
use super::convert::{parse_name, provider_to_pb, ts, ts_opt};
use super::pb;
use crate::core::accounts::CheckResult;
use crate::core::capabilities::{AppTokenView, ChannelView, LinkTokenView, SubscriptionView};
use crate::domain::{AccountId, ChannelId, E164, OnboardingId, Secret, UnixMs, now_ms};
use crate::error::{AppError, Violations, quote};
use crate::providers::http::TokenStatus;
use crate::providers::{
    Balance, ChannelMode, ConnectCode, ConnectMethod, IssuedConnectCode, LinkTokenState, SubscriptionSpec, WebhookMode,
};

/// Fields of `SubscriptionSpec` that `update_mask` may name.
pub const SUBSCRIPTION_FIELDS: [&str; 7] = ["url", "events", "tag", "version", "headers", "mode", "active"];

const DAY_MS: i64 = 86_400_000;

/// A provider-side key (subscription id, link token): 1 to 256 printable characters without
/// whitespace or '/'.
pub fn check_provider_key(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err("must not contain whitespace, control characters or '/'".into());
    }
    Ok(())
}

/// `channels/{channel}` into the channel id.
pub fn channel_name(field: &str, name: &str) -> Result<ChannelId, AppError> {
    parse_name(field, name, "channels", |s| ChannelId::parse(s))
}

/// `onboardings/{onboarding}/subscriptions/{subscription}` into its two ids.
pub fn subscription_name(
    tenant: &crate::domain::TenantId,
    field: &str,
    name: &str,
) -> Result<(OnboardingId, String), AppError> {
    let shape = || {
        AppError::invalid(field, "must look like 'onboardings/{onboarding}/subscriptions/{subscription}'".to_string())
    };
    let (parent, sub) = name.split_once("/subscriptions/").ok_or_else(shape)?;
    let id = parse_name(field, parent, "onboardings", |s| OnboardingId::scoped(tenant, s))?;
    check_provider_key(sub).map_err(|e| AppError::invalid(field, format!("bad subscription id: {e}")))?;
    Ok((id, sub.to_string()))
}

fn webhook_mode_from_pb(v: &mut Violations, field: &str, m: i32) -> WebhookMode {
    match pb::WebhookMode::try_from(m) {
        Ok(pb::WebhookMode::Unspecified) => WebhookMode::Unspecified,
        Ok(pb::WebhookMode::Body) => WebhookMode::Body,
        Ok(pb::WebhookMode::Path) => WebhookMode::Path,
        Ok(pb::WebhookMode::Method) => WebhookMode::Method,
        Err(_) => {
            v.add(field, format!("unknown webhook mode value {m}"));
            WebhookMode::Unspecified
        }
    }
}

pub(super) fn webhook_mode_to_pb(m: WebhookMode) -> pb::WebhookMode {
    match m {
        WebhookMode::Unspecified => pb::WebhookMode::Unspecified,
        WebhookMode::Body => pb::WebhookMode::Body,
        WebhookMode::Path => pb::WebhookMode::Path,
        WebhookMode::Method => pb::WebhookMode::Method,
    }
}

/// A subscription spec from a request (`field` is its path, e.g. `spec`), checking the provider-independent rules of the
/// fields in `only` (all when `None`). Provider rules (event names, tag, version) are the
/// adapter's, reported under `spec.` too.
pub fn spec_from_pb(
    v: &mut Violations,
    field: &str,
    spec: Option<pb::SubscriptionSpec>,
    only: Option<&[String]>,
) -> SubscriptionSpec {
    let Some(s) = spec else {
        v.add(field, "is required");
        return SubscriptionSpec::default();
    };
    let checked = |f: &str| only.is_none_or(|o| o.iter().any(|x| x == f));
    if checked("url") && !url::Url::parse(&s.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
        v.add(format!("{field}.url"), "must be an http(s) URL");
    }
    if checked("events") {
        if s.events.is_empty() {
            v.add(format!("{field}.events"), "at least one event is required");
        } else if s.events.iter().any(|e| e.trim().is_empty()) {
            v.add(format!("{field}.events"), "must not contain empty entries");
        }
    }
    if checked("headers") && s.headers.keys().any(|k| k.trim().is_empty()) {
        v.add(format!("{field}.headers"), "header names must not be empty");
    }
    let mode = webhook_mode_from_pb(v, &format!("{field}.mode"), s.mode);
    SubscriptionSpec {
        url: s.url,
        events: s.events,
        tag: s.tag,
        version: s.version,
        headers: s.headers.into_iter().map(|(k, val)| (k, Secret::new(val))).collect::<BTreeMap<_, _>>(),
        mode,
        active: s.active,
    }
}

/// The field names of an update mask (`spec.` prefix accepted), each checked.
pub fn update_fields(v: &mut Violations, mask: Option<prost_types::FieldMask>) -> Vec<String> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        v.add("update_mask", format!("is required: name the fields to change ({})", SUBSCRIPTION_FIELDS.join(", ")));
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in paths {
        let f = p.strip_prefix("spec.").unwrap_or(&p);
        if SUBSCRIPTION_FIELDS.contains(&f) {
            if !out.iter().any(|x| x == f) {
                out.push(f.to_string());
            }
        } else {
            v.add("update_mask", format!("unknown field {} (expected {})", quote(&p), SUBSCRIPTION_FIELDS.join(", ")));
        }
    }
    out
}

/// A subscription as returned: header values never leave.
pub fn subscription_to_pb(s: &SubscriptionView) -> pb::Subscription {
    let sub = &s.subscription;
    let spec = &sub.spec;
    pb::Subscription {
        name: format!("onboardings/{}/subscriptions/{}", s.onboarding.name(), sub.id),
        provider: provider_to_pb(s.provider) as i32,
        spec: Some(pb::SubscriptionSpec {
            url: spec.url.clone(),
            events: spec.events.clone(),
            tag: spec.tag.clone(),
            version: spec.version,
            headers: Default::default(),
            mode: webhook_mode_to_pb(spec.mode) as i32,
            active: spec.active,
        }),
        header_names: spec.headers.keys().cloned().collect(),
        provider_id: sub.id.clone(),
        provider_mode: sub.provider_mode,
        create_time: ts_opt(sub.created_ms),
        update_time: ts_opt(sub.updated_ms),
    }
}

/// `CheckAccount`'s answer.
pub fn check_to_pb(c: &CheckResult) -> pb::CheckAccountResponse {
    pb::CheckAccountResponse {
        ok: c.ok,
        message: c.message.clone(),
        provider_code: c.provider_code.clone(),
        check_time: Some(ts(c.at_ms)),
        credential_expire_time: ts_opt(c.credential_expire_ms),
        credential_warning: c.credential_warning.clone(),
    }
}

/// An app token (the one RPC that returns it).
pub fn app_token_to_pb(t: &AppTokenView) -> pb::AppToken {
    pb::AppToken {
        onboarding: format!("onboardings/{}", t.onboarding.name()),
        provider: provider_to_pb(t.provider) as i32,
        token: t.token.expose().to_string(),
        resource_id: t.resource_id.clone(),
        expire_time: ts_opt(t.expire_ms),
        api_url: t.api_url.clone(),
    }
}

/// A link token's status.
pub fn link_token_to_pb(t: &LinkTokenView) -> pb::ValidateOnboardingTokenResponse {
    pb::ValidateOnboardingTokenResponse {
        status: match t.status.state {
            LinkTokenState::Valid => pb::OnboardingTokenStatus::Valid,
            LinkTokenState::Used => pb::OnboardingTokenStatus::Used,
            LinkTokenState::Expired => pb::OnboardingTokenStatus::Expired,
        } as i32,
        raw_status: t.status.raw.clone(),
        expire_time: ts_opt(t.expire_ms),
        customers_remaining: t.customers_remaining,
        onboarding: t.onboarding.as_ref().map(|o| format!("onboardings/{}", o.name())).unwrap_or_default(),
    }
}

/// A partner token's status (never the token).
pub fn token_status_to_pb(account: &AccountId, s: &TokenStatus) -> pb::ProviderTokenStatus {
    pb::ProviderTokenStatus {
        account: format!("accounts/{}", account.name()),
        cached: s.cached,
        expire_time: ts_opt(s.expires_at),
        refresh_time: ts_opt(s.last_refresh),
        refresh_count: i64::try_from(s.refresh_count).unwrap_or(i64::MAX),
        last_error: s.last_error.clone().unwrap_or_default(),
        credential_expire_time: ts_opt(s.credential_expires_at),
        credential_warning: s.credential_warning.clone(),
    }
}

/// Target channel mode; unspecified is a violation.
pub fn channel_mode_from_pb(field: &str, m: i32) -> Checked<ChannelMode> {
    match pb::ChannelMode::try_from(m) {
        Ok(pb::ChannelMode::Trial) => Ok(ChannelMode::Trial),
        Ok(pb::ChannelMode::Sandbox) => Ok(ChannelMode::Sandbox),
        Ok(pb::ChannelMode::Live) => Ok(ChannelMode::Live),
        Ok(pb::ChannelMode::Unspecified) => {
            Err(Invalid::one(field, "is required: CHANNEL_MODE_TRIAL, CHANNEL_MODE_SANDBOX or CHANNEL_MODE_LIVE"))
        }
        Err(_) => Err(Invalid::one(field, format!("unknown channel mode value {m}"))),
    }
}

pub(super) fn channel_mode_to_pb(m: Option<ChannelMode>) -> pb::ChannelMode {
    match m {
        None => pb::ChannelMode::Unspecified,
        Some(ChannelMode::Trial) => pb::ChannelMode::Trial,
        Some(ChannelMode::Sandbox) => pb::ChannelMode::Sandbox,
        Some(ChannelMode::Live) => pb::ChannelMode::Live,
    }
}

/// Whapi's raw health text to the enum.
pub fn channel_health(raw: &str) -> pb::ChannelHealth {
    match raw.trim().to_ascii_uppercase().as_str() {
        "INIT" => pb::ChannelHealth::Init,
        "LAUNCH" => pb::ChannelHealth::Launch,
        "QR" => pb::ChannelHealth::Qr,
        "AUTH" => pb::ChannelHealth::Auth,
        "ERROR" => pb::ChannelHealth::Error,
        "STOP" | "STOPPED" => pb::ChannelHealth::Stopped,
        _ => pb::ChannelHealth::Unspecified,
    }
}

pub(super) fn days_remaining(till: Option<UnixMs>, now: UnixMs) -> i32 {
    till.map(|t| i32::try_from(t.saturating_sub(now).max(0) / DAY_MS).unwrap_or(i32::MAX)).unwrap_or(0)
}

/// A channel.
pub fn channel_to_pb(c: &ChannelView) -> pb::Channel {
    let i = &c.info;
    let health = if i.stopped { pb::ChannelHealth::Stopped } else { channel_health(&i.health) };
    pb::Channel {
        name: format!("channels/{}", i.id),
        onboarding: format!("onboardings/{}", c.onboarding.name()),
        account: format!("accounts/{}", c.account.name()),
        display_name: i.display_name.clone(),
        mode: channel_mode_to_pb(i.mode) as i32,
        health: health as i32,
        health_text: i.health.clone(),
        phone: i.phone.as_ref().map(|p| p.as_str().to_string()).unwrap_or_default(),
        active_till: ts_opt(i.active_till_ms),
        days_remaining: days_remaining(i.active_till_ms, now_ms()),
        stopped: i.stopped,
        api_url: i.api_url.clone(),
        create_time: ts_opt(i.created_ms),
    }
}

/// How to connect, from `GetConnectCode`'s oneof (unset: a QR of the default size).
pub fn connect_method_from_pb(m: Option<pb::get_connect_code_request::Method>) -> Checked<ConnectMethod> {
    use pb::get_connect_code_request::Method as M;
    match m {
        None => Ok(ConnectMethod::Qr { size: 0 }),
        Some(M::Qr(q)) => match u32::try_from(q.size) {
            Ok(size) if size <= 2048 => Ok(ConnectMethod::Qr { size }),
            _ => Err(Invalid::one("qr.size", "must be between 0 and 2048 pixels")),
        },
        Some(M::PairingCode(p)) => {
            field("pairing_code.phone", E164::parse(&p.phone)).map(|phone| ConnectMethod::PairingCode { phone })
        }
    }
}

/// A connect code.
pub fn connect_code_to_pb(c: &IssuedConnectCode) -> pb::ConnectCode {
    use pb::connect_code::Code;
    pb::ConnectCode {
        code: Some(match &c.code {
            ConnectCode::Qr { png, raw } => Code::Qr(pb::QrCode { png: png.clone(), raw: raw.clone() }),
            ConnectCode::PairingCode { code, phone } => {
                Code::PairingCode(pb::PairingCode { code: code.clone(), phone: phone.as_str().to_string() })
            }
        }),
        expire_time: ts_opt(c.expire_ms),
    }
}

/// The partner's balance.
pub fn balance_to_pb(account: &AccountId, b: &Balance, read_ms: UnixMs) -> pb::PartnerBalance {
    let clamp = |d: i64| i32::try_from(d).unwrap_or(if d < 0 { i32::MIN } else { i32::MAX });
    pb::PartnerBalance {
        account: format!("accounts/{}", account.name()),
        days: clamp(b.days),
        trial_days: clamp(b.trial_days),
        read_time: Some(ts(read_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_names() {
        let (id, sub) = subscription_name(
            &crate::domain::TenantId::parse("t").unwrap(),
            "name",
            "onboardings/ob-1/subscriptions/Sub_42",
        )
        .unwrap();
        assert_eq!((id.as_str(), sub.as_str()), ("t.ob-1", "Sub_42"));
        for bad in ["onboardings/ob-1", "onboardings/OB/subscriptions/x", "onboardings/ob-1/subscriptions/", "x/y"] {
            let e = subscription_name(&crate::domain::TenantId::parse("t").unwrap(), "name", bad).unwrap_err();
            assert_eq!(e.violations[0].0, "name", "{bad}");
        }
    }

    #[test]
    fn update_masks() {
        let mut v = Violations::new();
        let f = update_fields(
            &mut v,
            Some(prost_types::FieldMask { paths: vec!["url".into(), "spec.active".into(), "url".into()] }),
        );
        assert_eq!(f, ["url", "active"]);
        assert!(v.finish().is_ok());
        for mask in [Some(prost_types::FieldMask { paths: vec!["nope".into()] }), None] {
            let mut v = Violations::new();
            update_fields(&mut v, mask);
            assert_eq!(v.finish().unwrap_err().violations.len(), 1);
        }
    }

    #[test]
    fn health_and_days() {
        assert_eq!(channel_health("auth"), pb::ChannelHealth::Auth);
        assert_eq!(channel_health("weird"), pb::ChannelHealth::Unspecified);
        assert_eq!(days_remaining(Some(10 * DAY_MS + 5), 0), 10);
        assert_eq!(days_remaining(Some(0), DAY_MS), 0);
        assert_eq!(days_remaining(None, 0), 0);
    }
}
