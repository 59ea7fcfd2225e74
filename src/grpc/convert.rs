//! Conversions between protobuf messages and domain types or core's read models
//! (`core::views`), and request parsing into typed values with field violations.

use std::collections::HashMap;

use base64::Engine;
use prost_types::Timestamp;

use super::checked::{All, Checked, Invalid, collecting, field, rule};
use super::pb;
use crate::core::accounts::AccountView;
use crate::core::views::{EventView, OnboardingView, StepView};
use crate::domain::account::{AccountOptions, Credentials, ExotelRegion};
use crate::domain::{
    E164, OnboardingDetails, OnboardingId, OnboardingState, PageRequest, ProviderKind, RequestedSubscription, Secret,
    StepState, UnixMs, WabaId,
};
use crate::error::{AppError, Violations, quote};
use crate::providers::{Digital99Start, GupshupStart, StartPayload, VerifyMethod, WhapiStart};

/// Default and maximum page sizes (AIP-158).
pub const DEFAULT_PAGE: i32 = 50;
/// Upper bound for `page_size`.
pub const MAX_PAGE: i32 = 1000;

/// A protobuf timestamp from milliseconds.
pub fn ts(ms: UnixMs) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// An optional timestamp.
pub fn ts_opt(ms: Option<UnixMs>) -> Option<Timestamp> {
    ms.map(ts)
}

/// Parses `{collection}/{id}` into the id, as a field violation on failure.
pub fn parse_name<T>(
    field: &str,
    name: &str,
    collection: &str,
    parse: impl Fn(&str) -> Result<T, crate::domain::IdError>,
) -> Result<T, AppError> {
    let prefix = format!("{collection}/");
    let Some(id) = name.strip_prefix(&prefix) else {
        return Err(AppError::invalid(field, format!("must look like '{collection}/{{id}}', got {}", quote(name))));
    };
    parse(id).map_err(|e| AppError::invalid(field, format!("bad id in {}: {e}", quote(name))))
}

/// Page size and token into a page request. Tokens are opaque and bound to their
/// list (`kind`), so a token from one list is refused by another.
pub fn page_request(v: &mut Violations, kind: &str, page_size: i32, page_token: &str, default: i32) -> PageRequest {
    let limit = match page_size {
        0 => default,
        n if (1..=MAX_PAGE).contains(&n) => n,
        _ => {
            v.add("page_size", format!("must be between 0 and {MAX_PAGE}"));
            default
        }
    };
    let after = if page_token.is_empty() {
        None
    } else {
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(page_token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix(&format!("{kind}:")).map(str::to_string));
        if decoded.is_none() {
            v.add("page_token", "is not a token returned by this list");
        }
        decoded
    };
    PageRequest { limit: limit as u32, after }
}

/// The opaque token for the next page.
pub fn page_token(kind: &str, after: Option<String>) -> String {
    after.map(|a| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{a}"))).unwrap_or_default()
}

/// Provider enum to domain.
pub fn provider_from_pb(p: i32) -> Option<ProviderKind> {
    match pb::Provider::try_from(p).ok()? {
        pb::Provider::Unspecified => None,
        pb::Provider::Gupshup => Some(ProviderKind::Gupshup),
        pb::Provider::Exotel => Some(ProviderKind::Exotel),
        pb::Provider::Whapi => Some(ProviderKind::Whapi),
        pb::Provider::Digital99 => Some(ProviderKind::Digital99),
    }
}

/// Provider to protobuf.
pub fn provider_to_pb(p: ProviderKind) -> pb::Provider {
    match p {
        ProviderKind::Gupshup => pb::Provider::Gupshup,
        ProviderKind::Exotel => pb::Provider::Exotel,
        ProviderKind::Whapi => pb::Provider::Whapi,
        ProviderKind::Digital99 => pb::Provider::Digital99,
    }
}

/// A provider filter: unspecified means none; unknown values are violations.
pub fn provider_filter(v: &mut Violations, field: &str, p: i32) -> Option<ProviderKind> {
    if p != 0 && provider_from_pb(p).is_none() {
        v.add(field, format!("unknown provider value {p}"));
    }
    provider_from_pb(p)
}

/// State to protobuf.
pub fn state_to_pb(s: OnboardingState) -> pb::OnboardingState {
    use OnboardingState as S;
    match s {
        S::Pending => pb::OnboardingState::Pending,
        S::AwaitingCustomer => pb::OnboardingState::AwaitingCustomer,
        S::Provisioning => pb::OnboardingState::Provisioning,
        S::Live => pb::OnboardingState::Live,
        S::PendingReview => pb::OnboardingState::PendingReview,
        S::Stalled => pb::OnboardingState::Stalled,
        S::ReauthRequired => pb::OnboardingState::ReauthRequired,
        S::Failed => pb::OnboardingState::Failed,
        S::Expired => pb::OnboardingState::Expired,
        S::Cancelled => pb::OnboardingState::Cancelled,
    }
}

/// A state filter: unspecified means none.
pub fn state_filter(v: &mut Violations, field: &str, s: i32) -> Option<OnboardingState> {
    let parsed = pb::OnboardingState::try_from(s).ok();
    match parsed {
        Some(pb::OnboardingState::Unspecified) => None,
        Some(p) => OnboardingState::ALL.into_iter().find(|d| state_to_pb(*d) == p),
        None => {
            v.add(field, format!("unknown state value {s}"));
            None
        }
    }
}

fn step_state_to_pb(s: StepState) -> pb::StepState {
    match s {
        StepState::Pending => pb::StepState::Pending,
        StepState::Ready => pb::StepState::Ready,
        StepState::Running => pb::StepState::Running,
        StepState::Waiting => pb::StepState::Waiting,
        StepState::Succeeded => pb::StepState::Succeeded,
        StepState::Failed => pb::StepState::Failed,
        StepState::Skipped => pb::StepState::Skipped,
        StepState::Stalled => pb::StepState::Stalled,
    }
}

/// Account request parts to domain credentials.
pub fn credentials_from_pb(c: Option<pb::AccountCredentials>) -> Checked<Credentials> {
    use pb::account_credentials::Credentials as C;
    match c.and_then(|c| c.credentials) {
        None => Err(Invalid::one("account.credentials", "is required")),
        Some(C::Gupshup(g)) => Ok(Credentials::Gupshup { email: g.email, secret: Secret::new(g.secret) }),
        Some(C::Exotel(e)) => Ok(Credentials::Exotel {
            account_sid: e.account_sid,
            api_key: e.api_key,
            api_token: Secret::new(e.api_token),
        }),
        Some(C::Whapi(w)) => Ok(Credentials::Whapi { partner_token: Secret::new(w.partner_token) }),
        Some(C::Digital99(d)) => {
            Ok(Credentials::Digital99 { client_id: d.client_id, client_secret: Secret::new(d.client_secret) })
        }
    }
}

/// Account options to domain; options for another provider are a violation.
pub fn options_from_pb(
    v: &mut Violations,
    provider: Option<ProviderKind>,
    o: Option<pb::AccountOptions>,
) -> AccountOptions {
    use pb::account_options::Options as O;
    let Some(o) = o else { return AccountOptions::default() };
    let mut out = AccountOptions { endpoint: (!o.endpoint.is_empty()).then_some(o.endpoint), ..Default::default() };
    let for_provider = match &o.options {
        None => None,
        Some(O::Gupshup(_)) => Some(ProviderKind::Gupshup),
        Some(O::Exotel(_)) => Some(ProviderKind::Exotel),
        Some(O::Whapi(_)) => Some(ProviderKind::Whapi),
        Some(O::Digital99(_)) => Some(ProviderKind::Digital99),
    };
    if let (Some(p), Some(f)) = (provider, for_provider)
        && p != f
    {
        v.add("account.options", format!("options are for {f}, the account is for {p}"));
    }
    match o.options {
        Some(O::Gupshup(g)) => {
            out.storage_region = (!g.storage_region.is_empty()).then_some(g.storage_region);
            out.secret_expire_ms = match g.client_secret_expire_time {
                Some(t) if t.seconds < 0 || t.nanos < 0 => {
                    v.add("account.options.gupshup.client_secret_expire_time", "must not be before 1970");
                    None
                }
                Some(t) => Some(t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos / 1_000_000))),
                None => None,
            };
        }
        Some(O::Exotel(e)) => {
            out.exotel_region = match pb::ExotelRegion::try_from(e.region) {
                Ok(pb::ExotelRegion::Unspecified | pb::ExotelRegion::Singapore) => Some(ExotelRegion::Singapore),
                Ok(pb::ExotelRegion::Mumbai) => Some(ExotelRegion::Mumbai),
                Err(_) => {
                    v.add("account.options.exotel.region", "unknown region");
                    None
                }
            };
        }
        Some(O::Whapi(w)) => {
            out.project_id = (!w.project_id.is_empty()).then_some(w.project_id);
            out.partner_name = (!w.partner_name.is_empty()).then_some(w.partner_name);
        }
        Some(O::Digital99(_)) | None => {}
    }
    out
}

/// An account as returned: never credentials.
pub fn account_to_pb(a: &AccountView) -> pb::Account {
    use pb::account_options::Options as O;
    let o = &a.options;
    let options = match a.provider {
        ProviderKind::Gupshup => O::Gupshup(pb::GupshupOptions {
            storage_region: o.storage_region.clone().unwrap_or_default(),
            client_secret_expire_time: o.secret_expire_ms.map(ts),
        }),
        ProviderKind::Exotel => O::Exotel(pb::ExotelOptions {
            region: match o.exotel_region.unwrap_or_default() {
                ExotelRegion::Singapore => pb::ExotelRegion::Singapore,
                ExotelRegion::Mumbai => pb::ExotelRegion::Mumbai,
            } as i32,
        }),
        ProviderKind::Whapi => O::Whapi(pb::WhapiOptions {
            project_id: o.project_id.clone().unwrap_or_default(),
            partner_name: o.partner_name.clone().unwrap_or_default(),
        }),
        ProviderKind::Digital99 => O::Digital99(pb::Digital99Options {}),
    };
    pb::Account {
        name: format!("accounts/{}", a.id.name()),
        provider: provider_to_pb(a.provider) as i32,
        display_name: a.display_name.clone(),
        credentials: None,
        options: Some(pb::AccountOptions { options: Some(options), endpoint: o.endpoint.clone().unwrap_or_default() }),
        sandbox: a.sandbox,
        credentials_set: a.credentials_set,
        webhook_url: a.webhook_url.clone().unwrap_or_default(),
        last_check: a.status.last_check.as_ref().map(|c| pb::CheckAccountResponse {
            ok: c.ok,
            message: c.message.clone(),
            provider_code: c.provider_code.clone(),
            check_time: Some(ts(c.at_ms)),
            credential_expire_time: ts_opt(c.credential_expire_ms),
            credential_warning: c.credential_warning.clone(),
        }),
        create_time: Some(ts(a.created_ms)),
        update_time: Some(ts(a.updated_ms)),
    }
}

/// Raw provider status text to protobuf (an event's status is its code alone).
pub fn provider_status(raw: &str, at: UnixMs) -> pb::ProviderStatus {
    pb::ProviderStatus { code: raw.to_string(), fields: HashMap::new(), observe_time: Some(ts(at)) }
}

impl From<&OnboardingView> for pb::Onboarding {
    /// An onboarding as returned; provider-specific details come from its parsed details.
    fn from(o: &OnboardingView) -> Self {
        let fields: HashMap<String, String> = o
            .details
            .provider_fields()
            .map(|f| f.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        pb::Onboarding {
            name: format!("onboardings/{}", o.id.name()),
            account: format!("accounts/{}", o.account_id.name()),
            provider: provider_to_pb(o.provider) as i32,
            state: state_to_pb(o.state) as i32,
            state_reason: o.state_reason.clone(),
            provider_status: Some(pb::ProviderStatus {
                code: o.provider_status.clone(),
                fields,
                observe_time: Some(ts(o.updated_ms)),
            }),
            desired_state: o.desired_state.map(|s| state_to_pb(s) as i32).unwrap_or(0),
            reference: o.reference.clone(),
            sequence: o.sequence,
            state_deadline: ts_opt(o.state_deadline_ms),
            expire_time: ts_opt(o.expire_ms),
            create_time: Some(ts(o.created_ms)),
            update_time: Some(ts(o.updated_ms)),
            details: Some(DetailsOf { onboarding: &o.id, details: &o.details }.into()),
        }
    }
}

impl From<&RequestedSubscription> for pb::SubscriptionSpec {
    /// The subscription a Gupshup onboarding asked for (no header values: they are write-only).
    fn from(v: &RequestedSubscription) -> Self {
        pb::SubscriptionSpec {
            url: v.url.clone(),
            events: v.events.clone(),
            tag: v.tag.clone(),
            version: i32::try_from(v.version).unwrap_or(0),
            headers: Default::default(),
            mode: super::convert_ext::webhook_mode_to_pb(v.mode) as i32,
            active: v.active,
        }
    }
}

/// An onboarding's details with the id the proto's resource names need.
#[derive(Debug, Clone, Copy)]
pub struct DetailsOf<'a> {
    /// Whose details.
    pub onboarding: &'a OnboardingId,
    /// The details.
    pub details: &'a OnboardingDetails,
}

/// A count the proto carries as `int32` (absent: 0).
fn count(v: Option<i64>) -> i32 {
    v.map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX))
}

impl From<DetailsOf<'_>> for pb::onboarding::Details {
    /// Provider-specific details. Ids the store keeps bare become the resource names the
    /// proto documents (`created_subscription`, `channel`).
    fn from(d: DetailsOf<'_>) -> Self {
        use pb::onboarding::Details as D;
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let phone = |v: &Option<E164>| v.as_ref().map(|p| p.as_str().to_string()).unwrap_or_default();
        match d.details {
            OnboardingDetails::Gupshup(g) => D::Gupshup(pb::GupshupOnboarding {
                app_name: text(&g.app_name),
                waba_id: g.waba_id.as_ref().map(|w| w.as_str().to_string()).unwrap_or_default(),
                phone: phone(&g.phone),
                app_id: g.app_id.as_ref().map(|a| a.as_str().to_string()).unwrap_or_default(),
                storage_region: text(&g.storage_region),
                subscribe_on_live: g.subscribe_on_live.unwrap_or(false),
                subscription: g.subscription.as_ref().map(pb::SubscriptionSpec::from),
                created_subscription: match g.created_subscription.as_deref() {
                    None | Some("") => String::new(),
                    Some(sub) => format!("onboardings/{}/subscriptions/{sub}", d.onboarding.name()),
                },
                app_token_ready: g.app_token_ready.unwrap_or(false),
            }),
            OnboardingDetails::Exotel(e) => D::Exotel(pb::ExotelOnboarding {
                onboarding_url: text(&e.onboarding_url),
                token: text(&e.token),
                token_status: text(&e.token_status),
                customers_remaining: count(e.customers_remaining),
                link_expire_time: e.link_expire_ms.map(ts),
                batch_id: text(&e.batch_id),
                max_customers_per_link: count(e.max_customers_per_link),
                customers_remaining_min: count(e.customers_remaining_min),
                live_meaning: text(&e.live_meaning),
                used_meaning: text(&e.used_meaning),
            }),
            OnboardingDetails::Whapi(w) => D::Whapi(pb::WhapiOnboarding {
                channel_id: w.channel_id.as_ref().map(|c| c.as_str().to_string()).unwrap_or_default(),
                channel: w.channel_id.as_ref().map(|c| format!("channels/{}", c.as_str())).unwrap_or_default(),
                mode: super::convert_ext::channel_mode_to_pb(w.mode) as i32,
                go_live: w.go_live.unwrap_or(false),
                extend_days: count(w.extend_days),
                phone: phone(&w.phone),
                active_till: w.active_till_ms.map(ts),
                connect_codes_issued: count(w.connect_codes_issued),
            }),
            OnboardingDetails::Digital99(n) => D::Digital99(pb::Digital99Onboarding {
                phone: phone(&n.phone),
                temporary_phone: phone(&n.temporary_phone),
                onboarding_link: text(&n.onboarding_link),
                landing_page: text(&n.landing_page),
                coexistence: n.coexistence.unwrap_or(false),
                business_name: text(&n.business_name),
                display_name: text(&n.display_name),
                number_verified: n.number_verified.unwrap_or(false),
            }),
        }
    }
}

impl From<&EventView> for pb::OnboardingEvent {
    /// An event of the log.
    fn from(e: &EventView) -> Self {
        pb::OnboardingEvent {
            onboarding: format!("onboardings/{}", e.onboarding_id.name()),
            sequence: e.sequence,
            r#type: e.kind.as_str().to_owned(),
            state: state_to_pb(e.state) as i32,
            previous_state: state_to_pb(e.previous_state) as i32,
            reason: e.reason.clone(),
            provider_status: Some(provider_status(&e.provider_status, e.created_ms)),
            step: e.step.clone().unwrap_or_default(),
            attributes: e.attributes.clone(),
            time: Some(ts(e.created_ms)),
        }
    }
}

impl From<&StepView> for pb::PipelineStep {
    /// A step of a pipeline, with its provider's display name.
    fn from(s: &StepView) -> Self {
        pb::PipelineStep {
            name: s.name.clone(),
            display_name: s.display_name.clone(),
            position: s.position,
            state: step_state_to_pb(s.state) as i32,
            attempts: s.attempts,
            max_attempts: s.max_attempts,
            last_error: s.last_error.clone().unwrap_or_default(),
            last_error_code: s.last_error_code.clone().unwrap_or_default(),
            provider_stage: s.provider_stage.clone(),
            next_attempt_time: ts_opt(s.next_run_ms),
            deadline: ts_opt(s.deadline_ms),
            start_time: ts_opt(s.started_ms),
            end_time: ts_opt(s.finished_ms),
        }
    }
}

/// The pipeline of an onboarding.
pub fn pipeline_to_pb(o: &OnboardingView, steps: &[StepView]) -> pb::Pipeline {
    pb::Pipeline {
        name: format!("onboardings/{}/pipeline", o.id.name()),
        onboarding: format!("onboardings/{}", o.id.name()),
        steps: steps.iter().map(pb::PipelineStep::from).collect(),
        sequence: o.sequence,
    }
}

/// The provider-specific part of `CreateOnboarding`, checked field by field.
pub fn start_payload_from_pb(r: Option<&pb::create_onboarding_request::Request>) -> Checked<StartPayload> {
    use pb::create_onboarding_request::Request as R;
    let Some(r) = r else {
        return Err(Invalid::one("request", "one of gupshup, exotel, whapi or digital99 is required"));
    };
    let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let required = |field: &str, s: &str| rule(!s.trim().is_empty(), field, || "is required".into());
    match r {
        R::Gupshup(g) => {
            let app_name = required("gupshup.app_name", &g.app_name);
            let waba = field("gupshup.waba_id", WabaId::parse(g.waba_id.trim()).map_err(|e| e.0));
            let phone = field("gupshup.phone", E164::parse(g.phone.trim()).map_err(|e| e.0));
            // The same checks as CreateSubscription: this spec becomes one once the app is live.
            let subscription = collecting(|v| {
                g.subscribe_on_live
                    .then(|| super::convert_ext::spec_from_pb(v, "gupshup.subscription", g.subscription.clone(), None))
            });
            let ((), waba_id, phone, subscribe_on_live) = (app_name, waba, phone, subscription).all()?;
            Ok(StartPayload::Gupshup(GupshupStart {
                app_name: g.app_name.trim().to_string(),
                waba_id,
                phone,
                storage_region: opt(&g.storage_region),
                subscribe_on_live,
            }))
        }
        R::Exotel(_) => Ok(StartPayload::Exotel),
        R::Whapi(w) => {
            let channel_name = required("whapi.channel_name", &w.channel_name);
            let days = if !(0..=365).contains(&w.extend_days) {
                Err(Invalid::one("whapi.extend_days", "must be between 0 and 365"))
            } else {
                rule(w.extend_days == 0 || w.go_live, "whapi.extend_days", || {
                    "days can only be added to a live channel: set go_live".into()
                })
            };
            (channel_name, days).all()?;
            Ok(StartPayload::Whapi(WhapiStart {
                channel_name: w.channel_name.trim().to_string(),
                project_id: opt(&w.project_id),
                go_live: w.go_live,
                extend_days: w.extend_days.max(0) as u32,
            }))
        }
        R::Digital99(d) => {
            let phone = field("digital99.phone", E164::parse(d.phone.trim()).map_err(|e| e.0));
            let business_name = required("digital99.business_name", &d.business_name);
            let display_name = required("digital99.display_name", &d.display_name);
            let email =
                rule(d.business_email.is_empty() || d.business_email.contains('@'), "digital99.business_email", || {
                    "must be an email address".into()
                });
            let register = match (d.register_number, pb::VerificationMethod::try_from(d.verification_method)) {
                (false, _) => Ok(None),
                (true, Ok(pb::VerificationMethod::Voice)) => Ok(Some(VerifyMethod::Voice)),
                (true, Ok(pb::VerificationMethod::Sms | pb::VerificationMethod::Unspecified)) => {
                    Ok(Some(VerifyMethod::Sms))
                }
                (true, Err(_)) => Err(Invalid::one("digital99.verification_method", "unknown method")),
            };
            let (phone, (), (), (), register_number) = (phone, business_name, display_name, email, register).all()?;
            Ok(StartPayload::Digital99(Digital99Start {
                phone,
                business_name: d.business_name.trim().to_string(),
                display_name: d.display_name.trim().to_string(),
                business_email: opt(&d.business_email),
                business_id: opt(&d.business_id),
                business_address: opt(&d.business_address),
                coexistence: d.coexistence,
                register_number,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = ts(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let n = ts(-1);
        assert_eq!((n.seconds, n.nanos), (-1, 999_000_000));
    }

    #[test]
    fn page_tokens_are_bound_to_their_list() {
        let tok = page_token("accounts", Some("abc".into()));
        let mut v = Violations::new();
        assert_eq!(page_request(&mut v, "accounts", 0, &tok, 50).after.as_deref(), Some("abc"));
        assert!(v.finish().is_ok());
        let mut v = Violations::new();
        page_request(&mut v, "onboardings", 2000, &tok, 50);
        let e = v.finish().unwrap_err();
        assert_eq!(e.violations.len(), 2);
    }

    #[test]
    fn names() {
        let id = parse_name("name", "accounts/acme", "accounts", |s| crate::domain::AccountId::parse(s)).unwrap();
        assert_eq!(id.as_str(), "acme");
        assert!(parse_name("name", "onboardings/acme", "accounts", |s| crate::domain::AccountId::parse(s)).is_err());
        assert!(parse_name("name", "accounts/ACME", "accounts", |s| crate::domain::AccountId::parse(s)).is_err());
    }
}
