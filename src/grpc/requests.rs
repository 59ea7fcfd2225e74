//! Typed requests: each `wa.onboard.v1` request that needs more than one field checked,
//! parsed with the caller into the values its handler passes to core. A parse reports every
//! field violation at once (the limits table's first, then each field's in proto order), so a
//! handler holds either a whole typed request or one `INVALID_ARGUMENT`.
//!
//! Requests that name one resource and nothing else (`GetAccount`, `DeleteSubscription`...)
//! need no struct: their handler checks the limits and parses the name with `?`.

use super::checked::{All, Checked, Invalid, collecting, field, rule};
use super::convert::{
    DEFAULT_PAGE, credentials_from_pb, options_from_pb, page_request, parse_name, provider_filter, provider_from_pb,
    start_payload_from_pb, state_filter,
};
use super::convert_ext::{
    channel_mode_from_pb, channel_name, check_provider_key, connect_method_from_pb, spec_from_pb, subscription_name,
    update_fields,
};
use super::limits::Limited;
use super::pb;
use crate::core::Caller;
use crate::core::accounts::NewAccount;
use crate::core::capabilities::MAX_EXTEND_DAYS;
use crate::core::lifecycle::NewOnboardingRequest;
use crate::core::views::OnboardingQuery;
use crate::domain::{AccountId, ChannelId, OnboardingId, PageRequest, ProviderKind, RequestId, TenantId};
use crate::error::AppError;
use crate::providers::{ChannelMode, ConnectMethod, SubscriptionSpec};

// Requests name the caller's own resources by id; the key is scoped to the caller's tenant
// here, once, so every later lookup stays inside it.
pub(super) fn account_name(tenant: &TenantId, field: &str, name: &str) -> Result<AccountId, AppError> {
    parse_name(field, name, "accounts", |s| AccountId::scoped(tenant, s))
}

/// `onboardings/{o}` (or `onboardings/{o}/pipeline`) into the tenant-scoped id.
pub(super) fn onboarding_name(tenant: &TenantId, field: &str, name: &str) -> Result<OnboardingId, AppError> {
    let name = name.strip_suffix("/pipeline").unwrap_or(name);
    parse_name(field, name, "onboardings", |s| OnboardingId::scoped(tenant, s))
}

/// A name as one field of a larger request: its violation is the name error's message,
/// worded as the single-field handlers word it.
fn name_field<T>(field_name: &str, r: Result<T, AppError>) -> Checked<T> {
    field(field_name, r.map_err(|e| e.message))
}

/// The limits table's violations for the whole request.
fn limits_of<R: Limited>(r: &R) -> Checked<()> {
    collecting(|v| r.check_limits(v))
}

/// An optional idempotency key: empty is none.
fn request_id(id: &str) -> Checked<Option<String>> {
    if id.is_empty() {
        return Ok(None);
    }
    field("request_id", RequestId::parse(id)).map(|r| Some(String::from(r)))
}

/// An optional `accounts/{account}` filter: empty is none.
fn account_filter(tenant: &TenantId, r: &str) -> Checked<Option<AccountId>> {
    if r.is_empty() { Ok(None) } else { name_field("account", account_name(tenant, "account", r)).map(Some) }
}

/// `CreateAccount`.
pub(super) struct CreateAccount {
    /// The account to create.
    pub(super) account: NewAccount,
    /// The caller's `request_id`: a retry carrying it gets the first answer.
    pub(super) request_id: Option<String>,
}

impl TryFrom<(&Caller, pb::CreateAccountRequest)> for CreateAccount {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, pb::CreateAccountRequest)) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        // Without the account there is nothing else to check.
        let Some(account) = r.account else { return Err(AppError::invalid("account", "is required")) };
        let provider = provider_from_pb(account.provider).ok_or_else(|| {
            Invalid::one(
                "account.provider",
                "is required: one of PROVIDER_GUPSHUP, PROVIDER_EXOTEL, PROVIDER_WHAPI, PROVIDER_DIGITAL99",
            )
        });
        let id = if r.account_id.is_empty() {
            Ok(None)
        } else {
            field("account_id", AccountId::scoped(&caller.tenant, &r.account_id)).map(Some)
        };
        let credentials = credentials_from_pb(account.credentials);
        let known = provider.as_ref().ok().copied();
        let options = collecting(|v| options_from_pb(v, known, account.options));
        let rid = request_id(&r.request_id);
        let ((), provider, id, credentials, options, request_id) =
            (limits, provider, id, credentials, options, rid).all()?;
        let account = NewAccount {
            id,
            provider,
            display_name: account.display_name,
            credentials,
            options,
            sandbox: account.sandbox,
        };
        Ok(Self { account, request_id })
    }
}

/// `ListAccounts`.
pub(super) struct ListAccounts {
    /// The page size (clamped) and where the previous page ended (its token, decoded).
    pub(super) page: PageRequest,
    /// Only this provider.
    pub(super) provider: Option<ProviderKind>,
}

impl TryFrom<&pb::ListAccountsRequest> for ListAccounts {
    type Error = AppError;
    fn try_from(r: &pb::ListAccountsRequest) -> Result<Self, AppError> {
        let page = collecting(|v| page_request(v, "accounts", r.page_size, &r.page_token, DEFAULT_PAGE));
        let provider = collecting(|v| provider_filter(v, "provider", r.provider));
        let ((), page, provider) = (limits_of(r), page, provider).all()?;
        Ok(Self { page, provider })
    }
}

/// `ListChannels`.
pub(super) struct ListChannels {
    /// The page size (clamped) and where the previous page ended (its token, decoded).
    pub(super) page: PageRequest,
    /// Only this account's channels.
    pub(super) account: Option<AccountId>,
}

impl TryFrom<(&Caller, &pb::ListChannelsRequest)> for ListChannels {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, &pb::ListChannelsRequest)) -> Result<Self, AppError> {
        let page = collecting(|v| page_request(v, "channels", r.page_size, &r.page_token, DEFAULT_PAGE));
        let account = account_filter(&caller.tenant, &r.account);
        let ((), page, account) = (limits_of(r), page, account).all()?;
        Ok(Self { page, account })
    }
}

/// `GetConnectCode`.
pub(super) struct GetConnectCode {
    /// The channel the request names (`channels/{id}`), parsed.
    pub(super) id: ChannelId,
    /// QR or pairing code.
    pub(super) method: ConnectMethod,
}

impl TryFrom<pb::GetConnectCodeRequest> for GetConnectCode {
    type Error = AppError;
    fn try_from(r: pb::GetConnectCodeRequest) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let id = name_field("name", channel_name("name", &r.name));
        let ((), id, method) = (limits, id, connect_method_from_pb(r.method)).all()?;
        Ok(Self { id, method })
    }
}

/// `SetChannelMode`.
pub(super) struct SetChannelMode {
    /// The channel the request names (`channels/{id}`), parsed.
    pub(super) id: ChannelId,
    /// The mode to switch to.
    pub(super) mode: ChannelMode,
}

impl TryFrom<&pb::SetChannelModeRequest> for SetChannelMode {
    type Error = AppError;
    fn try_from(r: &pb::SetChannelModeRequest) -> Result<Self, AppError> {
        let id = name_field("name", channel_name("name", &r.name));
        let ((), id, mode) = (limits_of(r), id, channel_mode_from_pb("mode", r.mode)).all()?;
        Ok(Self { id, mode })
    }
}

/// `ExtendChannel`.
pub(super) struct ExtendChannel {
    /// The channel the request names (`channels/{id}`), parsed.
    pub(super) id: ChannelId,
    /// Days to add, within `1..=MAX_EXTEND_DAYS`.
    pub(super) days: u32,
    /// Free text passed to the provider.
    pub(super) comment: String,
    /// Idempotency key (required: days cost money).
    pub(super) request_id: String,
}

impl TryFrom<pb::ExtendChannelRequest> for ExtendChannel {
    type Error = AppError;
    fn try_from(r: pb::ExtendChannelRequest) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let id = name_field("name", channel_name("name", &r.name));
        let days = match u32::try_from(r.days) {
            Ok(d) if (1..=MAX_EXTEND_DAYS).contains(&d) => Ok(d),
            _ => Err(Invalid::one("days", format!("must be between 1 and {MAX_EXTEND_DAYS}"))),
        };
        let rid = if r.request_id.is_empty() {
            Err(Invalid::one("request_id", "is required: a retry with the same key never extends twice"))
        } else {
            field("request_id", RequestId::parse(r.request_id.as_str())).map(String::from)
        };
        let ((), id, days, request_id) = (limits, id, days, rid).all()?;
        Ok(Self { id, days, comment: r.comment, request_id })
    }
}

/// `DeleteChannel`.
pub(super) struct DeleteChannel {
    /// The channel the request names (`channels/{id}`), parsed.
    pub(super) id: ChannelId,
    /// The caller's `request_id`: a retry carrying it gets the first answer.
    pub(super) request_id: Option<String>,
}

impl TryFrom<&pb::DeleteChannelRequest> for DeleteChannel {
    type Error = AppError;
    fn try_from(r: &pb::DeleteChannelRequest) -> Result<Self, AppError> {
        let id = name_field("name", channel_name("name", &r.name));
        let ((), id, request_id) = (limits_of(r), id, request_id(&r.request_id)).all()?;
        Ok(Self { id, request_id })
    }
}

/// `CreateOnboarding`: core's request, whole.
pub(super) struct CreateOnboarding(pub(super) NewOnboardingRequest);

impl TryFrom<(&Caller, pb::CreateOnboardingRequest)> for CreateOnboarding {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, pb::CreateOnboardingRequest)) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let account = name_field("account", account_name(&caller.tenant, "account", &r.account));
        let onboarding_id = if r.onboarding_id.is_empty() {
            Ok(None)
        } else {
            field("onboarding_id", OnboardingId::scoped(&caller.tenant, &r.onboarding_id).map_err(|e| e.0)).map(Some)
        };
        let rid = request_id(&r.request_id);
        let payload = start_payload_from_pb(r.request.as_ref());
        let ((), account, onboarding_id, request_id, payload) = (limits, account, onboarding_id, rid, payload).all()?;
        Ok(Self(NewOnboardingRequest { account, onboarding_id, reference: r.reference, request_id, payload }))
    }
}

/// `CreateOnboardingLinks`.
pub(super) struct CreateOnboardingLinks {
    /// The (Exotel) account.
    pub(super) account: AccountId,
    /// Links to mint, at least 1 (at most the provider's batch limit, checked by the core).
    pub(super) count: u32,
    /// Caller's reference for every link.
    pub(super) reference: String,
    /// The caller's `request_id`: a retry carrying it gets the first answer.
    pub(super) request_id: Option<String>,
}

impl TryFrom<(&Caller, pb::CreateOnboardingLinksRequest)> for CreateOnboardingLinks {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, pb::CreateOnboardingLinksRequest)) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let account = name_field("account", account_name(&caller.tenant, "account", &r.account));
        // The upper bound is the provider's (`HostedLinkOps::max_batch`), checked by the core.
        let count =
            u32::try_from(r.count).ok().filter(|c| *c >= 1).ok_or_else(|| Invalid::one("count", "must be at least 1"));
        let rid = request_id(&r.request_id);
        let ((), account, count, request_id) = (limits, account, count, rid).all()?;
        Ok(Self { account, count, reference: r.reference, request_id })
    }
}

/// `ListOnboardings`.
pub(super) struct ListOnboardings {
    /// The page size (clamped) and where the previous page ended (its token, decoded).
    pub(super) page: PageRequest,
    /// What to list.
    pub(super) query: OnboardingQuery,
}

impl TryFrom<(&Caller, pb::ListOnboardingsRequest)> for ListOnboardings {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, pb::ListOnboardingsRequest)) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let page = collecting(|v| page_request(v, "onboardings", r.page_size, &r.page_token, DEFAULT_PAGE));
        let provider = collecting(|v| provider_filter(v, "provider", r.provider));
        let state = collecting(|v| state_filter(v, "state", r.state));
        let account = account_filter(&caller.tenant, &r.account);
        let ((), page, provider, state, account_id) = (limits, page, provider, state, account).all()?;
        let reference = (!r.reference.is_empty()).then_some(r.reference);
        Ok(Self { page, query: OnboardingQuery { provider, state, reference, account_id } })
    }
}

/// `CancelOnboarding`.
pub(super) struct CancelOnboarding {
    /// The onboarding the request names (`onboardings/{id}`), parsed.
    pub(super) id: OnboardingId,
    /// Idempotency key: a retry returns the first outcome.
    pub(super) request_id: Option<String>,
}

impl TryFrom<(&Caller, &pb::CancelOnboardingRequest)> for CancelOnboarding {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, &pb::CancelOnboardingRequest)) -> Result<Self, AppError> {
        let id = name_field("name", onboarding_name(&caller.tenant, "name", &r.name));
        let ((), id, request_id) = (limits_of(r), id, request_id(&r.request_id)).all()?;
        Ok(Self { id, request_id })
    }
}

/// `SubmitVerificationCode`.
pub(super) struct SubmitVerificationCode {
    /// The onboarding the request names (`onboardings/{id}`), parsed.
    pub(super) id: OnboardingId,
    /// The code, trimmed.
    pub(super) code: String,
}

impl TryFrom<(&Caller, &pb::SubmitVerificationCodeRequest)> for SubmitVerificationCode {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, &pb::SubmitVerificationCodeRequest)) -> Result<Self, AppError> {
        let id = name_field("name", onboarding_name(&caller.tenant, "name", &r.name));
        let code = rule(!r.code.trim().is_empty(), "code", || "is required".into());
        let ((), id, ()) = (limits_of(r), id, code).all()?;
        Ok(Self { id, code: r.code.trim().to_string() })
    }
}

/// Events one `ListOnboardingEvents` page holds when the caller does not say.
const DEFAULT_EVENTS_PAGE: i32 = 100;

/// `ListOnboardingEvents`.
pub(super) struct ListOnboardingEvents {
    /// The onboarding the request names (`onboardings/{id}`), parsed.
    pub(super) id: OnboardingId,
    /// Events after this sequence.
    pub(super) after: i64,
    /// At most this many.
    pub(super) limit: u32,
}

impl TryFrom<(&Caller, &pb::ListOnboardingEventsRequest)> for ListOnboardingEvents {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, &pb::ListOnboardingEventsRequest)) -> Result<Self, AppError> {
        let id = name_field("name", onboarding_name(&caller.tenant, "name", &r.name));
        // The token's position is an event sequence; it is read even when the page size is
        // refused, so a bad token is reported alongside.
        let page = collecting(|v| {
            let page = page_request(v, "events", r.page_size, &r.page_token, DEFAULT_EVENTS_PAGE);
            let after = match page.after.as_deref().map(str::parse::<i64>) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    v.add("page_token", "is not a token returned by this list");
                    0
                }
            };
            (page.limit, after)
        });
        let ((), id, (limit, after)) = (limits_of(r), id, page).all()?;
        Ok(Self { id, after, limit })
    }
}

/// `CreateSubscription`.
pub(super) struct CreateSubscription {
    /// The onboarding subscribed on.
    pub(super) id: OnboardingId,
    /// What to subscribe.
    pub(super) spec: SubscriptionSpec,
    /// The caller's `request_id`: a retry carrying it gets the first answer.
    pub(super) request_id: Option<String>,
}

impl TryFrom<(&Caller, pb::CreateSubscriptionRequest)> for CreateSubscription {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, pb::CreateSubscriptionRequest)) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let id = name_field("parent", onboarding_name(&caller.tenant, "parent", &r.parent));
        let spec = collecting(|v| spec_from_pb(v, "spec", r.spec, None));
        let rid = request_id(&r.request_id);
        let ((), id, mut spec, request_id) = (limits, id, spec, rid).all()?;
        // `active` defaults to true on create (proto3 cannot tell unset from false).
        spec.active = true;
        Ok(Self { id, spec, request_id })
    }
}

/// `ListSubscriptions`.
pub(super) struct ListSubscriptions {
    /// The onboarding the request names (`onboardings/{id}`), parsed.
    pub(super) id: OnboardingId,
    /// The page size (clamped) and where the previous page ended (its token, decoded).
    pub(super) page: PageRequest,
    /// The list kind its page tokens are bound to.
    pub(super) kind: String,
}

impl TryFrom<(&Caller, &pb::ListSubscriptionsRequest)> for ListSubscriptions {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, &pb::ListSubscriptionsRequest)) -> Result<Self, AppError> {
        let id = name_field("parent", onboarding_name(&caller.tenant, "parent", &r.parent));
        // Tokens are bound to this onboarding's list.
        let kind = format!("subscriptions@{}", r.parent);
        let page = collecting(|v| page_request(v, &kind, r.page_size, &r.page_token, DEFAULT_PAGE));
        let ((), id, page) = (limits_of(r), id, page).all()?;
        Ok(Self { id, page, kind })
    }
}

/// `UpdateSubscription`.
pub(super) struct UpdateSubscription {
    /// The onboarding the request names (`onboardings/{id}`), parsed.
    pub(super) id: OnboardingId,
    /// The provider's subscription id.
    pub(super) sub: String,
    /// New values of the fields named in `fields`.
    pub(super) spec: SubscriptionSpec,
    /// The fields to change (from the update mask).
    pub(super) fields: Vec<String>,
}

impl TryFrom<(&Caller, pb::UpdateSubscriptionRequest)> for UpdateSubscription {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, pb::UpdateSubscriptionRequest)) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let name = name_field("name", subscription_name(&caller.tenant, "name", &r.name));
        // The spec is checked only on the fields the mask names.
        let change = collecting(|v| {
            let fields = update_fields(v, r.update_mask);
            let spec = spec_from_pb(v, "spec", r.spec, Some(&fields));
            (spec, fields)
        });
        let ((), (id, sub), (spec, fields)) = (limits, name, change).all()?;
        Ok(Self { id, sub, spec, fields })
    }
}

/// `ValidateOnboardingToken`.
pub(super) struct ValidateOnboardingToken {
    /// The account the link belongs to.
    pub(super) account: AccountId,
    /// The link token.
    pub(super) token: String,
}

impl TryFrom<(&Caller, pb::ValidateOnboardingTokenRequest)> for ValidateOnboardingToken {
    type Error = AppError;
    fn try_from((caller, r): (&Caller, pb::ValidateOnboardingTokenRequest)) -> Result<Self, AppError> {
        let limits = limits_of(&r);
        let account = name_field("account", account_name(&caller.tenant, "account", &r.account));
        let token = field("token", check_provider_key(&r.token));
        let ((), account, ()) = (limits, account, token).all()?;
        Ok(Self { account, token: r.token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller { tenant: TenantId::parse("t").expect("tenant id") }
    }

    #[test]
    fn every_violation_at_once_limits_first() {
        let r = pb::CreateOnboardingLinksRequest {
            account: "nope".into(),
            count: 0,
            reference: "x".repeat(201),
            request_id: "k".repeat(129),
        };
        let e = CreateOnboardingLinks::try_from((&caller(), r)).err().expect("refused");
        let fields: Vec<&str> = e.violations.iter().map(|(f, _)| f.as_str()).collect();
        // Both oversized fields come from the limits table, once each.
        assert_eq!(fields, ["reference", "request_id", "account", "count"]);
        assert!(e.message.starts_with("invalid request: reference: "));
    }

    #[test]
    fn a_valid_request_is_typed() {
        let r = pb::ExtendChannelRequest {
            name: "channels/CH1".into(),
            days: 3,
            comment: "c".into(),
            request_id: "k-1".into(),
        };
        let x = ExtendChannel::try_from(r).expect("valid");
        assert_eq!((x.id.as_str(), x.days, x.request_id.as_str()), ("CH1", 3, "k-1"));
        let missing = ExtendChannel::try_from(pb::ExtendChannelRequest::default()).err().expect("refused");
        let fields: Vec<&str> = missing.violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["name", "days", "request_id"]);
    }
}
