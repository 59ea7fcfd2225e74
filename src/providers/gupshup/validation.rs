//! Gupshup's checks that need no call (docs/providers.md §1.3): the start request (app name,
//! storage region, the `subscribe_on_live` spec) and subscription specs against the one table
//! of modes per payload version.

use super::client::LinkForm;
use super::model::STORAGE_REGIONS;
use crate::providers::{
    CallContext, GupshupStart, ProviderError, StartPayload, StartRequest, SubscriptionSpec, WebhookMode,
};

/// A refusal of one field, before any call.
pub(super) fn invalid(field: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::Invalid { field: Some(field.to_string()), message: message.into(), raw: String::new() }
}

/// Checks a start request before any call and builds the link form.
pub(super) fn validate_start<'a>(
    ctx: &CallContext,
    req: &'a StartRequest,
) -> Result<(&'a GupshupStart, LinkForm), ProviderError> {
    let StartPayload::Gupshup(start) = &req.payload else {
        return Err(ProviderError::Invalid {
            field: None,
            message: format!("a {} request cannot start a Gupshup onboarding", req.payload.kind()),
            raw: String::new(),
        });
    };
    validate_app_name(&start.app_name)?;
    let (region, field) = match &start.storage_region {
        Some(r) if !r.is_empty() => (Some(r.clone()), "gupshup.storage_region"),
        _ => (ctx.options.storage_region.clone().filter(|r| !r.is_empty()), "account.options.gupshup.storage_region"),
    };
    if let Some(r) = &region
        && !STORAGE_REGIONS.contains(&r.as_str())
    {
        return Err(invalid(field, format!("unknown storage region '{r}' (one of {})", STORAGE_REGIONS.join(", "))));
    }
    if let Some(spec) = &start.subscribe_on_live {
        validate_spec(spec, "gupshup.subscription.")?;
    }
    let form = LinkForm {
        name: start.app_name.trim().to_string(),
        waba_id: start.waba_id.as_str().to_string(),
        // E.164 digits without '+' [C].
        phone: start.phone.digits().to_string(),
        storage_region: region,
    };
    Ok((start, form))
}

/// The app-name rule [I], as a pattern (checked by [`validate_app_name`], no regex engine):
/// the vendor says "Should be between 6 - 150 characters. Should not conflict with any other
/// Gupshup App. Special Characters are not allowed." (docs/providers.md §1.3.2 [C]) without saying
/// whether `_`, `-` or a space is "special"; a public client test expects exactly this
/// pattern [C2], so only ASCII letters and digits pass (docs/providers.md §1.7 #14).
pub const APP_NAME_RE: &str = "^[A-Za-z0-9]{6,150}$";

/// Checks the (trimmed) app name against [`APP_NAME_RE`] before any call, with the vendor's
/// own words (docs/providers.md §1.3.2: 400 `App name should be between 6 to 150 characters in
/// length`, 400 `Invalid characters used in app name`).
fn validate_app_name(name: &str) -> Result<(), ProviderError> {
    const FIELD: &str = "gupshup.app_name";
    let name = name.trim();
    let len = name.chars().count();
    if !(6..=150).contains(&len) {
        return Err(invalid(FIELD, format!("should be between 6 - 150 characters, got {len}")));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_alphanumeric()) {
        return Err(invalid(
            FIELD,
            format!("special characters are not allowed: only letters A-Z, a-z and digits 0-9, found {c:?}"),
        ));
    }
    Ok(())
}

/// Whether `s` is an absolute http(s) URL with a host (Gupshup: "Invalid URL Passed").
fn valid_url(s: &str) -> bool {
    url::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// The spec's checks that need no call (1.3.5): URL, modes, version, tag, no Whapi mode.
/// `prefix` is the field path of the spec (`spec.` for the subscription RPCs).
pub(super) fn validate_spec(spec: &SubscriptionSpec, prefix: &str) -> Result<(), ProviderError> {
    // The version the call will send: an unset (0) version means the default.
    let spec = &SubscriptionSpec { version: requested_version(spec.version), ..spec.clone() };
    check_url(spec, prefix)?;
    check_version(spec, prefix)?;
    check_events(spec, prefix)?;
    check_tag(spec, prefix)?;
    check_mode(spec, prefix)?;
    check_headers(spec, prefix)
}

pub(super) fn check_url(spec: &SubscriptionSpec, prefix: &str) -> Result<(), ProviderError> {
    if valid_url(&spec.url) { Ok(()) } else { Err(invalid(&format!("{prefix}url"), "must be an absolute http(s) URL")) }
}

// issue 17 point 14: modes per version, default version.

/// Every payload version a vendor page accepts: `0,1,2,3` on the TPP guide and older pages,
/// `2, 3` on the current `setsubscription-api-v3` page (docs/providers.md §1.3.5 [C]).
const SUBSCRIPTION_VERSIONS: [i32; 4] = [0, 1, 2, 3];

/// The version sent when the caller leaves it unset (proto `0`): 3, the only version on
/// every vendor list (docs/providers.md §1.3.5, §1.7 #14 [C]), and the one whose samples send
/// `OTHERS`, `TEMPLATE` and `ACCOUNT`.
pub const DEFAULT_SUBSCRIPTION_VERSION: i32 = 3;

/// Versions 0..=3, and version 3 alone.
const ANY_VERSION: &[i32] = &SUBSCRIPTION_VERSIONS;
const V3_ONLY: &[i32] = &[3];

/// The one table of subscription modes and the versions each is accepted with
/// (docs/providers.md §1.3.5, §1.7 #14). The current v3 page lists SENT, DELIVERED, READ, FAILED,
/// OTHERS, PAYMENTS, MESSAGE, BILLING, FLOWS_MESSAGE, TEMPLATE, ACCOUNT, ENQUEUED and its
/// `version=3` sample sends TEMPLATE and ACCOUNT [C] (the older "for version 3 TEMPLATE,
/// ACCOUNT, COPY are not supported" is superseded there); NONE, DELETED and ALL come from the
/// older lists [C]; OTHERS, ALL, PAYMENTS, FLOWS_MESSAGE are "[Only for v3]" [C2]. COPY is in
/// no list of valid modes [C]: it is named here (no version) so it is refused as unsupported.
const SUBSCRIPTION_MODES: [(&str, &[i32]); 16] = [
    ("NONE", ANY_VERSION),
    ("SENT", ANY_VERSION),
    ("DELIVERED", ANY_VERSION),
    ("READ", ANY_VERSION),
    ("DELETED", ANY_VERSION),
    ("FAILED", ANY_VERSION),
    ("MESSAGE", ANY_VERSION),
    ("TEMPLATE", ANY_VERSION),
    ("ACCOUNT", ANY_VERSION),
    ("BILLING", ANY_VERSION),
    ("ENQUEUED", ANY_VERSION),
    ("OTHERS", V3_ONLY),
    ("FLOWS_MESSAGE", V3_ONLY),
    ("PAYMENTS", V3_ONLY),
    ("ALL", V3_ONLY),
    ("COPY", &[]),
];

/// The version a request asks for: unset (0) is [`DEFAULT_SUBSCRIPTION_VERSION`].
pub(super) fn requested_version(version: i32) -> i32 {
    if version == 0 { DEFAULT_SUBSCRIPTION_VERSION } else { version }
}

pub(super) fn check_version(spec: &SubscriptionSpec, prefix: &str) -> Result<(), ProviderError> {
    if SUBSCRIPTION_VERSIONS.contains(&spec.version) {
        Ok(())
    } else {
        Err(invalid(
            &format!("{prefix}version"),
            format!("must be 1, 2 or 3 (unset = {DEFAULT_SUBSCRIPTION_VERSION}), got {}", spec.version),
        ))
    }
}

/// Modes against [`SUBSCRIPTION_MODES`] for the spec's version.
pub(super) fn check_events(spec: &SubscriptionSpec, prefix: &str) -> Result<(), ProviderError> {
    let field = format!("{prefix}events");
    if spec.events.is_empty() {
        return Err(invalid(&field, "at least one mode is required"));
    }
    for e in &spec.events {
        let m = e.trim();
        let Some((_, versions)) = SUBSCRIPTION_MODES.iter().find(|(name, _)| *name == m) else {
            let known: Vec<&str> = SUBSCRIPTION_MODES.iter().filter(|(_, v)| !v.is_empty()).map(|(n, _)| *n).collect();
            return Err(invalid(&field, format!("unknown mode '{m}' (one of {})", known.join(", "))));
        };
        match *versions {
            [] => return Err(invalid(&field, format!("mode '{m}' is not supported by Gupshup"))),
            v if !v.contains(&spec.version) => {
                return Err(invalid(
                    &field,
                    format!(
                        "mode '{m}' needs version {}",
                        v.iter().map(i32::to_string).collect::<Vec<_>>().join(" or ")
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn check_tag(spec: &SubscriptionSpec, prefix: &str) -> Result<(), ProviderError> {
    let field = format!("{prefix}tag");
    if spec.tag.trim().is_empty() {
        return Err(invalid(&field, "a tag is required (unique per app)"));
    }
    if spec.tag.chars().any(char::is_control) {
        return Err(invalid(&field, "must not contain control characters"));
    }
    Ok(())
}

pub(super) fn check_mode(spec: &SubscriptionSpec, prefix: &str) -> Result<(), ProviderError> {
    if spec.mode == WebhookMode::Unspecified {
        Ok(())
    } else {
        Err(invalid(&format!("{prefix}mode"), "Gupshup has no delivery mode; leave it unspecified"))
    }
}

pub(super) fn check_headers(spec: &SubscriptionSpec, prefix: &str) -> Result<(), ProviderError> {
    match spec.headers.keys().find(|k| http::HeaderName::from_bytes(k.as_bytes()).is_err()) {
        Some(k) => Err(invalid(&format!("{prefix}headers"), format!("'{k}' is not a valid header name"))),
        None => Ok(()),
    }
}
