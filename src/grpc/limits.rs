//! The one table of limits on caller input: every string and repeated field of every
//! `wa.onboard.v1` request message (nested messages included), with its maximum and the
//! characters it allows. Every request is checked against its rows before anything else runs
//! (the typed requests of `grpc::requests` put these violations first), so a 1 MiB
//! reference, a NUL byte bound for PostgreSQL or a `../` bound for a provider path is one field
//! violation in one `INVALID_ARGUMENT`, and nothing is stored or sent. Each maximum is also
//! written in the proto field's comment ("At most N characters."); a test checks they agree.
//!
//! Output-only fields (`Account.name`, `webhook_url`, `last_check`...) are dropped on input,
//! never stored nor echoed, so the message size limit bounds them; they have no row.
//! `ListProvidersRequest` has no fields.

use super::pb;
use crate::error::{AppError, Violations};

/// Which characters a string field allows. No field allows NUL or any other control
/// character except [`Chars::Text`], which allows line breaks and tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chars {
    /// One line of text: no control characters.
    Line,
    /// Free text over several lines (an address): no control characters except `\n`, `\r`
    /// and `\t`.
    Text,
    /// Sent to a provider inside a URL path, header or form (an Exotel SID, a Whapi project
    /// id): printable ASCII without whitespace, `/`, `\`, `?`, `#`, `%`, and never `..`.
    Segment,
    /// A credential or header value: no control characters, and never quoted back.
    Secret,
}

/// What a row limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string: at most `max` characters of the given set.
    Str(Chars),
    /// A repeated or map field: at most `max` entries.
    Entries,
}

/// One row: a field of a proto message and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The proto message declaring the field.
    pub message: &'static str,
    /// The field's name in that message (`[]` suffix: each entry of a repeated field;
    /// `{key}` / `{value}`: each key / value of a map).
    pub field: &'static str,
    /// Maximum characters (Unicode scalar values), or entries for [`Kind::Entries`].
    pub max: usize,
    /// What is limited.
    pub kind: Kind,
}

const fn s(message: &'static str, field: &'static str, max: usize, chars: Chars) -> Limit {
    Limit { message, field, max, kind: Kind::Str(chars) }
}

const fn n(message: &'static str, field: &'static str, max: usize) -> Limit {
    Limit { message, field, max, kind: Kind::Entries }
}

use Chars::{Line, Secret, Segment, Text};

/// A resource name (`accounts/{account}`, `onboardings/{o}/subscriptions/{s}`...).
const NAME: usize = 512;
/// A page token we handed out (base64 of the list kind and the last key).
const PAGE_TOKEN: usize = 1024;
/// A caller's reference and human names.
const REFERENCE: usize = 200;
/// An idempotency key (as `RequestId` parses it).
const REQUEST_ID: usize = 128;
/// An E.164 number as typed (with spaces or dashes before normalizing).
const PHONE: usize = 32;
/// A credential secret.
const SECRET: usize = 1024;
/// A URL (subscription target, endpoint override).
const URL: usize = 2048;

/// The table: one row per field.
pub const LIMITS: &[Limit] = &[
    // account.proto
    s("CreateAccountRequest", "account_id", 63, Segment),
    s("CreateAccountRequest", "request_id", REQUEST_ID, Line),
    s("Account", "display_name", REFERENCE, Line),
    s("GupshupCredentials", "email", 254, Line),
    s("GupshupCredentials", "secret", SECRET, Secret),
    s("ExotelCredentials", "account_sid", 128, Segment),
    s("ExotelCredentials", "api_key", 256, Segment),
    s("ExotelCredentials", "api_token", SECRET, Secret),
    s("WhapiCredentials", "partner_token", SECRET, Secret),
    s("Digital99Credentials", "client_id", 256, Line),
    s("Digital99Credentials", "client_secret", SECRET, Secret),
    s("AccountOptions", "endpoint", URL, Line),
    s("GupshupOptions", "storage_region", 32, Segment),
    s("WhapiOptions", "project_id", 128, Segment),
    s("WhapiOptions", "partner_name", 128, Segment),
    s("GetAccountRequest", "name", NAME, Line),
    s("ListAccountsRequest", "page_token", PAGE_TOKEN, Line),
    s("DeleteAccountRequest", "name", NAME, Line),
    s("CheckAccountRequest", "name", NAME, Line),
    // channel.proto
    s("GetChannelRequest", "name", NAME, Line),
    s("ListChannelsRequest", "page_token", PAGE_TOKEN, Line),
    s("ListChannelsRequest", "account", NAME, Line),
    s("GetConnectCodeRequest", "name", NAME, Line),
    s("PairingCodeRequest", "phone", PHONE, Line),
    s("SetChannelModeRequest", "name", NAME, Line),
    s("ExtendChannelRequest", "name", NAME, Line),
    s("ExtendChannelRequest", "comment", 200, Line),
    s("ExtendChannelRequest", "request_id", REQUEST_ID, Line),
    s("DeleteChannelRequest", "name", NAME, Line),
    s("DeleteChannelRequest", "request_id", REQUEST_ID, Line),
    s("GetPartnerBalanceRequest", "account", NAME, Line),
    // onboarding.proto
    s("CreateOnboardingRequest", "account", NAME, Line),
    s("CreateOnboardingRequest", "onboarding_id", 63, Segment),
    s("CreateOnboardingRequest", "reference", REFERENCE, Line),
    s("CreateOnboardingRequest", "request_id", REQUEST_ID, Line),
    s("GupshupLinkAppRequest", "app_name", 150, Line),
    s("GupshupLinkAppRequest", "waba_id", 32, Segment),
    s("GupshupLinkAppRequest", "phone", PHONE, Line),
    s("GupshupLinkAppRequest", "storage_region", 32, Segment),
    s("CreateOnboardingLinksRequest", "account", NAME, Line),
    s("CreateOnboardingLinksRequest", "reference", REFERENCE, Line),
    s("CreateOnboardingLinksRequest", "request_id", REQUEST_ID, Line),
    s("WhapiChannelRequest", "channel_name", 100, Line),
    s("WhapiChannelRequest", "project_id", 128, Segment),
    s("Digital99LinkRequest", "phone", PHONE, Line),
    s("Digital99LinkRequest", "business_name", 200, Line),
    s("Digital99LinkRequest", "business_email", 254, Line),
    s("Digital99LinkRequest", "business_id", 128, Line),
    s("Digital99LinkRequest", "business_address", 500, Text),
    s("Digital99LinkRequest", "display_name", 200, Line),
    s("GetOnboardingRequest", "name", NAME, Line),
    s("ListOnboardingsRequest", "page_token", PAGE_TOKEN, Line),
    s("ListOnboardingsRequest", "reference", REFERENCE, Line),
    s("ListOnboardingsRequest", "account", NAME, Line),
    s("CancelOnboardingRequest", "name", NAME, Line),
    s("CancelOnboardingRequest", "request_id", REQUEST_ID, Line),
    s("SubmitVerificationCodeRequest", "name", NAME, Line),
    s("SubmitVerificationCodeRequest", "code", 16, Segment),
    s("WatchOnboardingRequest", "name", NAME, Line),
    s("ListOnboardingEventsRequest", "name", NAME, Line),
    s("ListOnboardingEventsRequest", "page_token", PAGE_TOKEN, Line),
    // pipeline.proto
    s("GetPipelineRequest", "name", NAME, Line),
    s("WatchPipelineRequest", "name", NAME, Line),
    s("RetryPipelineRequest", "name", NAME, Line),
    s("RetryPipelineRequest", "request_id", REQUEST_ID, Line),
    // subscription.proto
    s("SubscriptionSpec", "url", URL, Line),
    n("SubscriptionSpec", "events", 32),
    s("SubscriptionSpec", "events[]", 64, Segment),
    s("SubscriptionSpec", "tag", 128, Line),
    n("SubscriptionSpec", "headers", 20),
    s("SubscriptionSpec", "headers{key}", 128, Segment),
    s("SubscriptionSpec", "headers{value}", 4096, Secret),
    s("CreateSubscriptionRequest", "parent", NAME, Line),
    s("CreateSubscriptionRequest", "request_id", REQUEST_ID, Line),
    s("GetSubscriptionRequest", "name", NAME, Line),
    s("ListSubscriptionsRequest", "parent", NAME, Line),
    s("ListSubscriptionsRequest", "page_token", PAGE_TOKEN, Line),
    s("UpdateSubscriptionRequest", "name", NAME, Line),
    n("UpdateSubscriptionRequest", "update_mask", 16),
    s("UpdateSubscriptionRequest", "update_mask[]", 64, Segment),
    s("DeleteSubscriptionRequest", "name", NAME, Line),
    // token.proto
    s("GetAppTokenRequest", "name", NAME, Line),
    s("ValidateOnboardingTokenRequest", "account", NAME, Line),
    s("ValidateOnboardingTokenRequest", "token", 256, Segment),
    s("RefreshProviderTokenRequest", "account", NAME, Line),
    s("GetProviderTokenStatusRequest", "account", NAME, Line),
    // delivery.proto (checked in grpc::services::delivery)
    s("Destination", "display_name", REFERENCE, Line),
    n("DeliveryFilter", "event_types", 32),
    s("DeliveryFilter", "event_types[]", 64, Segment),
    n("DeliveryFilter", "providers", 8),
    n("DeliveryFilter", "accounts", 32),
    s("DeliveryFilter", "accounts[]", NAME, Line),
    s("WebhookSink", "url", URL, Line),
    n("WebhookSink", "headers", 20),
    s("WebhookSink", "headers{key}", 128, Segment),
    s("WebhookSink", "headers{value}", 4096, Secret),
    s("NatsSink", "subject", 256, Segment),
    s("GetDestinationRequest", "name", NAME, Line),
    s("ListDestinationsRequest", "page_token", PAGE_TOKEN, Line),
    n("UpdateDestinationRequest", "update_mask", 16),
    s("UpdateDestinationRequest", "update_mask[]", 64, Segment),
    s("DeleteDestinationRequest", "name", NAME, Line),
    s("RotateDestinationSecretRequest", "name", NAME, Line),
    s("ListDeliveriesRequest", "parent", NAME, Line),
    s("ListDeliveriesRequest", "page_token", PAGE_TOKEN, Line),
    s("RedeliverEventsRequest", "parent", NAME, Line),
    s("RedeliverEventsRequest", "page_token", PAGE_TOKEN, Line),
    s("RedeliverFromSequence", "onboarding", NAME, Line),
];

/// The row of `message.field`, if the table has one.
pub fn limit(message: &str, field: &str) -> Option<Limit> {
    LIMITS.iter().copied().find(|l| l.message == message && l.field == field)
}

/// Checks one string against `message.field`'s row, at `path`. A field without a row fails
/// closed (every call of that RPC is refused), which the API tests would show at once.
fn str_field(v: &mut Violations, message: &str, field: &str, path: &str, value: &str) {
    match limit(message, field) {
        Some(l) => {
            l.check(v, path, value);
        }
        None => v.add(path, "has no limit defined (a bug: report it)"),
    }
}

/// Checks the entry count of a repeated or map field against its row.
fn entries(v: &mut Violations, message: &str, field: &str, path: &str, count: usize) -> bool {
    match limit(message, field) {
        Some(l) => l.check_entries(v, path, count),
        None => {
            v.add(path, "has no limit defined (a bug: report it)");
            false
        }
    }
}

/// A request message whose fields are checked against the table.
pub trait Limited {
    /// Records a violation for every field over its limit.
    fn check_limits(&self, v: &mut Violations);
}

/// Checks a whole request: `INVALID_ARGUMENT` with every field over its limit. For handlers
/// that parse one field and return at once; typed requests join the limits with their other
/// field checks (`grpc::requests`).
pub fn checked<R: Limited>(r: &R) -> Result<(), AppError> {
    collect(r).finish()
}

/// The violations of a whole request's limits, as a collector other checks may go on
/// filling, so one `INVALID_ARGUMENT` lists them all. The field checks that run alongside
/// quote input only through [`crate::error::quote`]; nothing is stored or sent before all
/// of them pass.
pub fn collect<R: Limited>(r: &R) -> Violations {
    let mut v = Violations::new();
    r.check_limits(&mut v);
    v
}

/// Requests whose string fields are all top-level: `Type { field, ... }`.
macro_rules! flat {
    ($($t:ident { $($f:ident),* })*) => {$(
        impl Limited for pb::$t {
            fn check_limits(&self, v: &mut Violations) {
                $(str_field(v, stringify!($t), stringify!($f), stringify!($f), &self.$f);)*
            }
        }
    )*};
}

flat! {
    GetAccountRequest { name }
    ListAccountsRequest { page_token }
    DeleteAccountRequest { name }
    CheckAccountRequest { name }
    GetChannelRequest { name }
    ListChannelsRequest { page_token, account }
    SetChannelModeRequest { name }
    ExtendChannelRequest { name, comment, request_id }
    DeleteChannelRequest { name, request_id }
    GetPartnerBalanceRequest { account }
    CreateOnboardingLinksRequest { account, reference, request_id }
    GetOnboardingRequest { name }
    ListOnboardingsRequest { page_token, reference, account }
    CancelOnboardingRequest { name, request_id }
    SubmitVerificationCodeRequest { name, code }
    WatchOnboardingRequest { name }
    ListOnboardingEventsRequest { name, page_token }
    GetPipelineRequest { name }
    WatchPipelineRequest { name }
    RetryPipelineRequest { name, request_id }
    GetSubscriptionRequest { name }
    ListSubscriptionsRequest { parent, page_token }
    DeleteSubscriptionRequest { name }
    GetAppTokenRequest { name }
    ValidateOnboardingTokenRequest { account, token }
    RefreshProviderTokenRequest { account }
    GetProviderTokenStatusRequest { account }
}

impl Limited for pb::ListProvidersRequest {
    fn check_limits(&self, _: &mut Violations) {}
}

impl Limited for pb::CreateAccountRequest {
    fn check_limits(&self, v: &mut Violations) {
        use pb::account_credentials::Credentials as C;
        use pb::account_options::Options as O;
        str_field(v, "CreateAccountRequest", "account_id", "account_id", &self.account_id);
        str_field(v, "CreateAccountRequest", "request_id", "request_id", &self.request_id);
        let Some(a) = &self.account else { return };
        str_field(v, "Account", "display_name", "account.display_name", &a.display_name);
        let mut cred = |m: &str, f: &str, value: &str| {
            let provider = match m {
                "GupshupCredentials" => "gupshup",
                "ExotelCredentials" => "exotel",
                "WhapiCredentials" => "whapi",
                _ => "digital99",
            };
            str_field(v, m, f, &format!("account.credentials.{provider}.{f}"), value);
        };
        match a.credentials.as_ref().and_then(|c| c.credentials.as_ref()) {
            Some(C::Gupshup(g)) => {
                cred("GupshupCredentials", "email", &g.email);
                cred("GupshupCredentials", "secret", &g.secret);
            }
            Some(C::Exotel(e)) => {
                cred("ExotelCredentials", "account_sid", &e.account_sid);
                cred("ExotelCredentials", "api_key", &e.api_key);
                cred("ExotelCredentials", "api_token", &e.api_token);
            }
            Some(C::Whapi(w)) => cred("WhapiCredentials", "partner_token", &w.partner_token),
            Some(C::Digital99(d)) => {
                cred("Digital99Credentials", "client_id", &d.client_id);
                cred("Digital99Credentials", "client_secret", &d.client_secret);
            }
            None => {}
        }
        let Some(o) = &a.options else { return };
        str_field(v, "AccountOptions", "endpoint", "account.options.endpoint", &o.endpoint);
        match &o.options {
            Some(O::Gupshup(g)) => str_field(
                v,
                "GupshupOptions",
                "storage_region",
                "account.options.gupshup.storage_region",
                &g.storage_region,
            ),
            Some(O::Whapi(w)) => {
                str_field(v, "WhapiOptions", "project_id", "account.options.whapi.project_id", &w.project_id);
                str_field(v, "WhapiOptions", "partner_name", "account.options.whapi.partner_name", &w.partner_name);
            }
            Some(O::Exotel(_) | O::Digital99(_)) | None => {}
        }
    }
}

impl Limited for pb::CreateOnboardingRequest {
    fn check_limits(&self, v: &mut Violations) {
        use pb::create_onboarding_request::Request as R;
        const M: &str = "CreateOnboardingRequest";
        str_field(v, M, "account", "account", &self.account);
        str_field(v, M, "onboarding_id", "onboarding_id", &self.onboarding_id);
        str_field(v, M, "reference", "reference", &self.reference);
        str_field(v, M, "request_id", "request_id", &self.request_id);
        match &self.request {
            Some(R::Gupshup(g)) => {
                const G: &str = "GupshupLinkAppRequest";
                str_field(v, G, "app_name", "gupshup.app_name", &g.app_name);
                str_field(v, G, "waba_id", "gupshup.waba_id", &g.waba_id);
                str_field(v, G, "phone", "gupshup.phone", &g.phone);
                str_field(v, G, "storage_region", "gupshup.storage_region", &g.storage_region);
                if let Some(s) = &g.subscription {
                    spec(v, "gupshup.subscription", s);
                }
            }
            Some(R::Whapi(w)) => {
                str_field(v, "WhapiChannelRequest", "channel_name", "whapi.channel_name", &w.channel_name);
                str_field(v, "WhapiChannelRequest", "project_id", "whapi.project_id", &w.project_id);
            }
            Some(R::Digital99(d)) => {
                const D: &str = "Digital99LinkRequest";
                str_field(v, D, "phone", "digital99.phone", &d.phone);
                str_field(v, D, "business_name", "digital99.business_name", &d.business_name);
                str_field(v, D, "business_email", "digital99.business_email", &d.business_email);
                str_field(v, D, "business_id", "digital99.business_id", &d.business_id);
                str_field(v, D, "business_address", "digital99.business_address", &d.business_address);
                str_field(v, D, "display_name", "digital99.display_name", &d.display_name);
            }
            Some(R::Exotel(_)) | None => {}
        }
    }
}

impl Limited for pb::GetConnectCodeRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_field(v, "GetConnectCodeRequest", "name", "name", &self.name);
        if let Some(pb::get_connect_code_request::Method::PairingCode(p)) = &self.method {
            str_field(v, "PairingCodeRequest", "phone", "pairing_code.phone", &p.phone);
        }
    }
}

/// A subscription spec at `path` (`spec`, `gupshup.subscription`). One violation per field
/// at most: 100k bad events are one line, not 100k.
fn spec(v: &mut Violations, path: &str, s: &pb::SubscriptionSpec) {
    const S: &str = "SubscriptionSpec";
    str_field(v, S, "url", &format!("{path}.url"), &s.url);
    str_field(v, S, "tag", &format!("{path}.tag"), &s.tag);
    let events = format!("{path}.events");
    if entries(v, S, "events", &events, s.events.len()) {
        let mut each = Violations::new();
        if let Some(e) = s.events.iter().find(|e| !passes(S, "events[]", e)) {
            str_field(&mut each, S, "events[]", &events, e);
        }
        merge(v, each);
    }
    let headers = format!("{path}.headers");
    if entries(v, S, "headers", &headers, s.headers.len()) {
        let mut each = Violations::new();
        if let Some(k) = s.headers.keys().find(|k| !passes(S, "headers{key}", k)) {
            str_field(&mut each, S, "headers{key}", &headers, k);
        }
        if let Some(val) = s.headers.values().find(|val| !passes(S, "headers{value}", val)) {
            str_field(&mut each, S, "headers{value}", &headers, val);
        }
        merge(v, each);
    }
}

fn passes(message: &str, field: &str, value: &str) -> bool {
    limit(message, field).is_some_and(|l| l.problem(value).is_none())
}

/// Moves the violations of a sub-check into `v`, each description prefixed to say it is
/// about one entry.
fn merge(v: &mut Violations, each: Violations) {
    if let Err(e) = each.finish() {
        for (field, description) in e.violations {
            v.add(field, format!("an entry {description}"));
        }
    }
}

impl Limited for pb::CreateSubscriptionRequest {
    fn check_limits(&self, v: &mut Violations) {
        str_field(v, "CreateSubscriptionRequest", "parent", "parent", &self.parent);
        str_field(v, "CreateSubscriptionRequest", "request_id", "request_id", &self.request_id);
        if let Some(s) = &self.spec {
            spec(v, "spec", s);
        }
    }
}

impl Limited for pb::UpdateSubscriptionRequest {
    fn check_limits(&self, v: &mut Violations) {
        const U: &str = "UpdateSubscriptionRequest";
        str_field(v, U, "name", "name", &self.name);
        if let Some(s) = &self.spec {
            spec(v, "spec", s);
        }
        let paths = self.update_mask.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default();
        if entries(v, U, "update_mask", "update_mask", paths.len()) {
            let mut each = Violations::new();
            if let Some(p) = paths.iter().find(|p| !passes(U, "update_mask[]", p)) {
                str_field(&mut each, U, "update_mask[]", "update_mask", p);
            }
            merge(v, each);
        }
    }
}

impl Limit {
    /// Checks one string against this row, recording at most one violation at `path` (the
    /// field path callers see, e.g. `account.credentials.exotel.account_sid`). True when it
    /// passed. The value is never quoted: the violation names the rule, not the input.
    pub fn check(&self, v: &mut Violations, path: &str, value: &str) -> bool {
        match self.problem(value) {
            None => true,
            Some(p) => {
                v.add(path, p);
                false
            }
        }
    }

    /// Checks the number of entries of a repeated or map field.
    pub fn check_entries(&self, v: &mut Violations, path: &str, entries: usize) -> bool {
        if entries > self.max {
            v.add(path, format!("must have at most {} entries", self.max));
            return false;
        }
        true
    }

    /// What is wrong with `value`, if anything.
    pub fn problem(&self, value: &str) -> Option<String> {
        let Kind::Str(chars) = self.kind else {
            return None;
        };
        // Bytes bound characters from above: most values are decided without counting.
        if value.len() > self.max && value.chars().nth(self.max).is_some() {
            return Some(format!("must be at most {} characters", self.max));
        }
        match chars {
            Line | Secret if value.chars().any(char::is_control) => Some("must not contain control characters".into()),
            Text if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) => {
                Some("must not contain control characters other than line breaks and tabs".into())
            }
            Segment if !segment_safe(value) => {
                Some("may contain only printable ASCII without whitespace, '/', '\\', '?', '#', '%' or '..'".into())
            }
            _ => None,
        }
    }
}

/// Safe as one segment of a provider URL path (and in a header or form field).
fn segment_safe(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'\\' | b'?' | b'#' | b'%'))
        && !value.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row names a field of a request message and the proto comment above that field
    /// states its maximum, so callers read the same limit the service enforces.
    #[test]
    fn every_row_is_documented_in_the_proto() {
        let protos: String = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/wa/onboard/v1"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        for l in LIMITS {
            let field = l.field.split(['[', '{']).next().unwrap();
            let body = message_body(&protos, l.message).unwrap_or_else(|| panic!("no message {}", l.message));
            let comment = field_comment(body, field).unwrap_or_else(|| panic!("no field {}.{field}", l.message));
            let want = match (l.kind, l.field) {
                (Kind::Entries, _) => format!("At most {} entries", l.max),
                (_, f) if f.ends_with("{key}") => format!("names at most {} characters", l.max),
                (_, f) if f.ends_with("{value}") => format!("values at most {} characters", l.max),
                (_, f) if f.ends_with("[]") => format!("each at most {} characters", l.max),
                _ => format!("At most {} characters", l.max),
            };
            assert!(comment.contains(&want), "{}.{}: comment lacks '{want}': {comment}", l.message, l.field);
        }
    }

    /// Every string and repeated field of every `*Request` message (and of the messages they
    /// nest) has a row, so a new field cannot skip the table.
    #[test]
    fn every_request_field_has_a_row() {
        let protos: String = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/wa/onboard/v1"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        let nested = [
            "Account",
            "AccountCredentials",
            "GupshupCredentials",
            "ExotelCredentials",
            "WhapiCredentials",
            "Digital99Credentials",
            "AccountOptions",
            "GupshupOptions",
            "WhapiOptions",
            "SubscriptionSpec",
            "GupshupLinkAppRequest",
            "WhapiChannelRequest",
            "Digital99LinkRequest",
            "PairingCodeRequest",
            "Destination",
            "DeliveryFilter",
            "WebhookSink",
            "NatsSink",
            "RedeliverFromSequence",
        ];
        let output_only = [
            ("Account", "name"),
            ("Account", "webhook_url"),
            ("Destination", "name"),
            ("Destination", "disabled_reason"),
            ("Destination", "disabled_event_id"),
            ("WebhookSink", "header_names"),
        ];
        let mut missing = Vec::new();
        for line in protos.lines() {
            let Some(m) = line.strip_prefix("message ").and_then(|r| r.split_whitespace().next()) else { continue };
            if !(m.ends_with("Request") || nested.contains(&m)) {
                continue;
            }
            let body = message_body(&protos, m).unwrap();
            for l in body.lines().map(str::trim) {
                let words: Vec<&str> = l.split_whitespace().collect();
                let field = match words.as_slice() {
                    ["string", f, "=", ..] | ["repeated", _, f, "=", ..] => *f,
                    [t, f, "=", ..] if t.starts_with("map<") || *t == "google.protobuf.FieldMask" => *f,
                    [t, _, f, "=", ..] if t.starts_with("map<") => *f,
                    _ => continue,
                };
                if output_only.contains(&(m, field)) {
                    continue;
                }
                if !LIMITS.iter().any(|r| r.message == m && r.field.split(['[', '{']).next() == Some(field)) {
                    missing.push(format!("{m}.{field}"));
                }
            }
        }
        assert!(missing.is_empty(), "fields without a limit: {missing:?}");
    }

    fn message_body<'a>(protos: &'a str, message: &str) -> Option<&'a str> {
        let start = protos.find(&format!("\nmessage {message} {{"))?;
        let rest = &protos[start + 1..];
        if rest.lines().next()?.ends_with("{}") {
            return Some("");
        }
        let end = rest.find("\n}")?;
        Some(&rest[..end])
    }

    /// The comment lines right above `field`'s declaration.
    fn field_comment(body: &str, field: &str) -> Option<String> {
        let lines: Vec<&str> = body.lines().map(str::trim).collect();
        let at = lines.iter().position(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.windows(2).any(|p| p[0] == field && p[1] == "=")
        })?;
        let mut comment = Vec::new();
        for l in lines[..at].iter().rev() {
            match l.strip_prefix("//") {
                Some(c) => comment.push(c.trim()),
                None => break,
            }
        }
        comment.reverse();
        Some(comment.join(" "))
    }

    #[test]
    fn rules() {
        let l = limit("WhapiChannelRequest", "project_id").unwrap();
        assert!(l.problem("proj-1_A").is_none());
        for bad in ["../../partners/x", "a/b", "a b", "a\0b", "..", "%2e", "é"] {
            assert!(l.problem(bad).is_some(), "{bad:?}");
        }
        let addr = limit("Digital99LinkRequest", "business_address").unwrap();
        assert!(addr.problem("1 Main St\nSpringfield").is_none());
        assert!(addr.problem("1 Main St\0").is_some());
        let name = limit("Account", "display_name").unwrap();
        assert!(name.problem(&"é".repeat(200)).is_none(), "characters, not bytes");
        assert!(name.problem(&"é".repeat(201)).is_some());
        assert!(name.problem("Acme\nInc").is_some());
        let mut v = Violations::new();
        assert!(!limit("SubscriptionSpec", "events").unwrap().check_entries(&mut v, "spec.events", 33));
        assert_eq!(v.finish().unwrap_err().violations[0].0, "spec.events");
    }
}
