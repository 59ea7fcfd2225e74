//! Fuzz properties of request validation and conversion (issue 9 item 4).
//!
//! Two layers: the pure conversions of `convert` / `convert_ext` (both directions, any field
//! values, stored JSON of any shape), and every RPC handler called directly, in process,
//! against a real server with the sandbox simulators, with requests decoded from arbitrary
//! bytes (`prost::Message::decode`) or built with arbitrary fields around valid resource
//! names. Any input: no panic, no `INTERNAL`/`UNKNOWN` answer, no hang.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use prost::Message;
use tonic::Request;

use super::convert::*;
use super::convert_ext::*;
use super::pb;
use crate::error::Violations;
use crate::fuzzing::{config, edge_i64, json_with, text};

const STORED_KEYS: &[&str] = &[
    "app_name",
    "waba_id",
    "phone",
    "app_id",
    "provider_fields",
    "created_subscription",
    "subscribe_on_live",
    "link_expire_ms",
    "customers_remaining",
    "channel_id",
    "mode",
    "active_till_ms",
    "extend_days",
    "connect_codes_issued",
    "coexistence",
];

/// An onboarding view whose details are whatever `details` (stored JSON of any shape) parses
/// to, as core builds it from a row (empty when it does not parse).
fn onboarding(provider: u8, details: String, raw: String, ms: i64) -> crate::core::views::OnboardingView {
    use crate::domain::{AccountId, OnboardingDetails, OnboardingState, ProviderKind};
    let kind = [ProviderKind::Gupshup, ProviderKind::Exotel, ProviderKind::Whapi, ProviderKind::Digital99]
        [usize::from(provider % 4)];
    crate::core::views::OnboardingView {
        id: crate::domain::OnboardingId::parse("fuzz-1").expect("id"),
        account_id: AccountId::parse("acct").expect("id"),
        provider: kind,
        state: OnboardingState::ALL[usize::from(provider) % OnboardingState::ALL.len()],
        desired_state: None,
        state_reason: String::new(),
        provider_status: raw,
        reference: String::new(),
        sequence: 1,
        state_deadline_ms: Some(ms),
        expire_ms: Some(ms),
        created_ms: ms,
        updated_ms: ms,
        details: OnboardingDetails::parse(kind, &details).unwrap_or_else(|_| OnboardingDetails::empty(kind)),
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn names_and_pages_never_panic(name in text(), kind in text(), size in any::<i32>(), token in text()) {
        let _ = parse_name("name", &name, "onboardings", |s| crate::domain::OnboardingId::parse(s));
        let _ = channel_name("name", &name);
        let _ = subscription_name(&crate::domain::TenantId::parse("t").expect("id"), "name", &name);
        let _ = check_provider_key(&name);
        let mut v = Violations::new();
        let p = page_request(&mut v, &kind, size, &token, DEFAULT_PAGE);
        prop_assert!(p.limit >= 1 && p.limit <= MAX_PAGE as u32);
        let _ = provider_filter(&mut v, "provider", size);
        let _ = state_filter(&mut v, "state", size);
        let _ = channel_mode_from_pb("mode", size);
    }

    #[test]
    fn page_tokens_round_trip(kind in "[a-z]{1,10}", after in text()) {
        let mut v = Violations::new();
        let t = page_token(&kind, Some(after.clone()));
        prop_assert_eq!(page_request(&mut v, &kind, 0, &t, 10).after, Some(after));
        prop_assert!(v.finish().is_ok());
    }

    #[test]
    fn stored_json_of_any_shape_converts(
        provider in any::<u8>(),
        details in json_with(STORED_KEYS),
        data in json_with(STORED_KEYS),
        raw in text(),
        ms in edge_i64(),
    ) {
        let o = onboarding(provider, details.to_string(), raw.clone(), ms);
        let pbo = pb::Onboarding::from(&o);
        prop_assert!(pbo.details.is_some());
        let ts = ts(ms);
        prop_assert!((0..1_000_000_000).contains(&ts.nanos));
        let e = crate::core::views::EventView {
            onboarding_id: o.id.clone(),
            sequence: 1,
            kind: crate::domain::EventKind::StateChanged,
            state: o.state,
            previous_state: o.state,
            reason: String::new(),
            provider_status: raw,
            step: None,
            attributes: crate::core::views::json_fields(&data.to_string()),
            created_ms: ms,
        };
        let _ = pb::OnboardingEvent::from(&e);
        let _ = provider_status("x", ms);
    }

    #[test]
    fn channel_and_balance_conversions_never_panic(till in proptest::option::of(edge_i64()), days in edge_i64(), trial in edge_i64()) {
        let view = crate::core::capabilities::ChannelView {
            onboarding: crate::domain::OnboardingId::parse("fuzz-1").expect("id"),
            account: crate::domain::AccountId::parse("acct").expect("id"),
            info: crate::providers::ChannelInfo {
                id: "CH".into(),
                display_name: String::new(),
                mode: None,
                health: "AUTH".into(),
                phone: None,
                active_till_ms: till,
                stopped: false,
                api_url: String::new(),
                created_ms: till,
            },
        };
        let c = channel_to_pb(&view);
        prop_assert!(c.days_remaining >= 0);
        let b = crate::providers::Balance { days, trial_days: trial };
        let _ = balance_to_pb(&view.account, &b, days);
    }

    #[test]
    fn create_requests_from_arbitrary_bytes_validate(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = pb::CreateOnboardingRequest::decode(b.as_slice()) {
            // A payload or its violations, never a panic; a refusal names at least one field.
            if let Err(e) = start_payload_from_pb(r.request.as_ref()) {
                prop_assert!(!e.violations().is_empty());
            }
        }
        if let Ok(r) = pb::CreateAccountRequest::decode(b.as_slice()) {
            let mut v = Violations::new();
            let a = r.account.unwrap_or_default();
            let _ = credentials_from_pb(a.credentials);
            let _ = options_from_pb(&mut v, provider_from_pb(a.provider), a.options);
        }
        if let Ok(r) = pb::CreateSubscriptionRequest::decode(b.as_slice()) {
            let mut v = Violations::new();
            let _ = spec_from_pb(&mut v, "spec", r.spec, None);
        }
        if let Ok(r) = pb::UpdateSubscriptionRequest::decode(b.as_slice()) {
            let mut v = Violations::new();
            let only = update_fields(&mut v, r.update_mask);
            let _ = spec_from_pb(&mut v, "spec", r.spec, Some(&only));
        }
        if let Ok(r) = pb::GetConnectCodeRequest::decode(b.as_slice()) {
            let _ = connect_method_from_pb(r.method);
        }
    }
}

proptest! {
    #![proptest_config(config(400))]

    /// Any value against any row: a value the table accepts is within its maximum and holds
    /// no NUL (nor any control character outside free text); quoting it stays short.
    #[test]
    fn limits_accept_only_bounded_clean_values(
        row in proptest::sample::select(super::limits::LIMITS),
        value in prop_oneof![
            text(),
            (text(), 0..300usize).prop_map(|(s, n)| s.repeat(n)),
            (text(), any::<char>(), text()).prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        ],
    ) {
        use super::limits::{Chars, Kind};
        let quoted = crate::error::quote(&value);
        prop_assert!(quoted.chars().count() <= crate::error::QUOTE_MAX * 10 + 3);
        prop_assert!(!quoted.chars().any(char::is_control));
        if let Kind::Str(chars) = row.kind
            && row.problem(&value).is_none()
        {
            prop_assert!(value.chars().count() <= row.max);
            prop_assert!(!value.contains('\0'));
            if chars != Chars::Text {
                prop_assert!(!value.chars().any(char::is_control));
            }
            if chars == Chars::Segment {
                prop_assert!(!value.contains('/') && !value.contains("..") && !value.contains(' '));
            }
        }
    }

    /// Whatever bytes decode into a request, the limits check answers (never panics) and a
    /// request it accepts has a bounded reference.
    #[test]
    fn limits_check_arbitrary_requests(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        use super::limits::checked;
        if let Ok(r) = pb::CreateOnboardingRequest::decode(b.as_slice())
            && checked(&r).is_ok()
        {
            prop_assert!(r.reference.chars().count() <= 200 && !r.reference.contains('\0'));
        }
        if let Ok(r) = pb::CreateAccountRequest::decode(b.as_slice()) {
            let _ = checked(&r);
        }
        if let Ok(r) = pb::UpdateSubscriptionRequest::decode(b.as_slice()) {
            let _ = checked(&r);
        }
        if let Ok(r) = pb::CreateOnboardingLinksRequest::decode(b.as_slice())
            && checked(&r).is_ok()
        {
            prop_assert!(r.reference.chars().count() <= 200);
        }
    }
}

/// Finding 6 (fuzzing, fixed): a channel whose `activeTill` (the provider's value) was near
/// `i64::MIN` overflowed `days_remaining`.
#[test]
fn days_remaining_survives_extreme_times() {
    assert_eq!(super::convert_ext::days_remaining(Some(i64::MIN), 1_700_000_000_000), 0);
    assert!(super::convert_ext::days_remaining(Some(i64::MAX), -1_700_000_000_000) > 0);
}

// ---- Every RPC, in process, against a real server with the simulators ----

/// One RPC call: which method, the raw bytes its request is decoded from, and a resource
/// name to put in its name field (arbitrary, or one that exists).
#[derive(Debug, Clone)]
struct Call {
    rpc: usize,
    bytes: Vec<u8>,
    name: Option<String>,
    size: i32,
    text: String,
}

const RPCS: usize = 38;

fn call(names: Vec<String>) -> impl Strategy<Value = Call> {
    let name = prop_oneof![
        1 => Just(None),
        1 => text().prop_map(Some),
        3 => proptest::sample::select(names).prop_map(Some),
    ];
    (0..RPCS, proptest::collection::vec(any::<u8>(), 0..128), name, any::<i32>(), text())
        .prop_map(|(rpc, bytes, name, size, text)| Call { rpc, bytes, name, size, text })
}

fn rq<M>(caller: &crate::core::Caller, m: M) -> Request<M> {
    let mut r = Request::new(m);
    r.extensions_mut().insert(caller.clone());
    r
}

fn decode<M: Message + Default>(b: &[u8]) -> M {
    M::decode(b).unwrap_or_default()
}

/// Runs one call; `Err` with the status when it answered `INTERNAL` / `UNKNOWN`. Counts the
/// answers by code in `seen`.
async fn run(
    s: &super::Services,
    caller: &crate::core::Caller,
    c: Call,
    seen: &std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
) -> Result<(), String> {
    use pb::account_service_server::AccountService as A;
    use pb::channel_service_server::ChannelService as Ch;
    use pb::onboarding_service_server::OnboardingService as O;
    use pb::pipeline_service_server::PipelineService as P;
    use pb::provider_service_server::ProviderService as Pr;
    use pb::subscription_service_server::SubscriptionService as S;
    use pb::token_service_server::TokenService as T;
    let b = c.bytes.as_slice();
    let n = |default: String| c.name.clone().unwrap_or(default);
    macro_rules! unary {
        ($call:expr) => {
            $call.await.map(|_| ()).err()
        };
    }
    macro_rules! streaming {
        ($call:expr) => {
            match $call.await {
                Ok(resp) => {
                    use tokio_stream::StreamExt;
                    let mut st = resp.into_inner();
                    match tokio::time::timeout(Duration::from_secs(10), st.next()).await {
                        Ok(Some(Err(e))) => Some(e),
                        Ok(_) => None,
                        Err(_) => return Err("stream sent nothing in 10 s".into()),
                    }
                }
                Err(e) => Some(e),
            }
        };
    }
    let status: Option<tonic::Status> = match c.rpc {
        0 => {
            let mut m: pb::CreateAccountRequest = decode(b);
            m.account_id = c.text.chars().take(40).collect();
            unary!(A::create_account(s, rq(caller, m)))
        }
        1 => unary!(A::get_account(
            s,
            rq(caller, pb::GetAccountRequest { name: n(decode::<pb::GetAccountRequest>(b).name) })
        )),
        2 => unary!(A::list_accounts(s, rq(caller, pb::ListAccountsRequest { page_size: c.size, ..decode(b) }))),
        3 => {
            // Deleting the sandbox accounts would starve the other calls: arbitrary names only.
            let m: pb::DeleteAccountRequest = decode(b);
            if m.name.starts_with("accounts/sandbox-") { None } else { unary!(A::delete_account(s, rq(caller, m))) }
        }
        4 => unary!(A::check_account(
            s,
            rq(caller, pb::CheckAccountRequest { name: n(decode::<pb::CheckAccountRequest>(b).name) })
        )),
        5 => unary!(Ch::get_channel(s, rq(caller, pb::GetChannelRequest { name: n(String::new()) }))),
        6 => unary!(Ch::list_channels(s, rq(caller, pb::ListChannelsRequest { page_size: c.size, ..decode(b) }))),
        7 => {
            let m: pb::GetConnectCodeRequest = decode(b);
            unary!(Ch::get_connect_code(s, rq(caller, pb::GetConnectCodeRequest { name: n(m.name.clone()), ..m })))
        }
        8 => {
            let m: pb::SetChannelModeRequest = decode(b);
            unary!(Ch::set_channel_mode(s, rq(caller, pb::SetChannelModeRequest { name: n(m.name), mode: c.size % 5 })))
        }
        9 => {
            let m: pb::ExtendChannelRequest = decode(b);
            unary!(Ch::extend_channel(
                s,
                rq(
                    caller,
                    pb::ExtendChannelRequest {
                        name: n(m.name.clone()),
                        days: c.size % 400,
                        request_id: c.text.clone(),
                        ..m
                    }
                )
            ))
        }
        10 => {
            let m: pb::DeleteChannelRequest = decode(b);
            unary!(Ch::delete_channel(s, rq(caller, pb::DeleteChannelRequest { name: n(m.name.clone()), ..m })))
        }
        11 => {
            unary!(Ch::get_partner_balance(s, rq(caller, pb::GetPartnerBalanceRequest { account: n(String::new()) })))
        }
        12 => {
            let m: pb::CreateOnboardingRequest = decode(b);
            unary!(O::create_onboarding(
                s,
                rq(caller, pb::CreateOnboardingRequest { account: n(m.account.clone()), ..m })
            ))
        }
        13 => {
            let m: pb::CreateOnboardingLinksRequest = decode(b);
            unary!(O::create_onboarding_links(
                s,
                rq(caller, pb::CreateOnboardingLinksRequest { account: n(m.account.clone()), count: c.size % 60, ..m })
            ))
        }
        14 => unary!(O::get_onboarding(s, rq(caller, pb::GetOnboardingRequest { name: n(String::new()) }))),
        15 => unary!(O::list_onboardings(s, rq(caller, pb::ListOnboardingsRequest { page_size: c.size, ..decode(b) }))),
        16 => {
            // Cancels only arbitrary names: the fixtures stay for the other calls.
            let m: pb::CancelOnboardingRequest = decode(b);
            unary!(O::cancel_onboarding(s, rq(caller, m)))
        }
        17 => {
            let m: pb::SubmitVerificationCodeRequest = decode(b);
            unary!(O::submit_verification_code(
                s,
                rq(caller, pb::SubmitVerificationCodeRequest { name: n(m.name.clone()), code: c.text.clone() })
            ))
        }
        18 => {
            let m: pb::WatchOnboardingRequest = decode(b);
            streaming!(O::watch_onboarding(
                s,
                rq(caller, pb::WatchOnboardingRequest { name: n(m.name.clone()), after_sequence: m.after_sequence })
            ))
        }
        19 => {
            let m: pb::ListOnboardingEventsRequest = decode(b);
            unary!(O::list_onboarding_events(
                s,
                rq(
                    caller,
                    pb::ListOnboardingEventsRequest {
                        name: n(m.name.clone()),
                        page_size: c.size,
                        page_token: c.text.clone()
                    }
                )
            ))
        }
        20 => unary!(P::get_pipeline(s, rq(caller, pb::GetPipelineRequest { name: n(String::new()) }))),
        21 => {
            let m: pb::WatchPipelineRequest = decode(b);
            streaming!(P::watch_pipeline(
                s,
                rq(caller, pb::WatchPipelineRequest { name: n(m.name.clone()), after_sequence: m.after_sequence })
            ))
        }
        22 => {
            let m: pb::RetryPipelineRequest = decode(b);
            unary!(P::retry_pipeline(s, rq(caller, pb::RetryPipelineRequest { name: n(m.name.clone()), ..m })))
        }
        23 => unary!(Pr::list_providers(s, rq(caller, decode::<pb::ListProvidersRequest>(b)))),
        24 => {
            let m: pb::CreateSubscriptionRequest = decode(b);
            unary!(S::create_subscription(
                s,
                rq(caller, pb::CreateSubscriptionRequest { parent: n(m.parent.clone()), ..m })
            ))
        }
        25 => unary!(S::get_subscription(s, rq(caller, pb::GetSubscriptionRequest { name: n(String::new()) }))),
        26 => {
            let m: pb::ListSubscriptionsRequest = decode(b);
            unary!(S::list_subscriptions(
                s,
                rq(caller, pb::ListSubscriptionsRequest { parent: n(m.parent.clone()), ..m })
            ))
        }
        27 => {
            let m: pb::UpdateSubscriptionRequest = decode(b);
            unary!(S::update_subscription(
                s,
                rq(caller, pb::UpdateSubscriptionRequest { name: n(m.name.clone()), ..m })
            ))
        }
        28 => unary!(S::delete_subscription(s, rq(caller, pb::DeleteSubscriptionRequest { name: n(String::new()) }))),
        29 => unary!(T::get_app_token(s, rq(caller, pb::GetAppTokenRequest { name: n(String::new()) }))),
        30 => {
            let m: pb::ValidateOnboardingTokenRequest = decode(b);
            unary!(T::validate_onboarding_token(
                s,
                rq(caller, pb::ValidateOnboardingTokenRequest { account: n(m.account.clone()), token: c.text.clone() })
            ))
        }
        31 => unary!(T::refresh_provider_token(
            s,
            rq(caller, pb::RefreshProviderTokenRequest { account: n(String::new()) })
        )),
        32 => unary!(T::get_provider_token_status(
            s,
            rq(caller, pb::GetProviderTokenStatusRequest { account: n(String::new()) })
        )),
        // Raw decodes with no name override: the name fields get arbitrary bytes too.
        33 => unary!(O::get_onboarding(s, rq(caller, decode::<pb::GetOnboardingRequest>(b)))),
        34 => unary!(S::get_subscription(s, rq(caller, decode::<pb::GetSubscriptionRequest>(b)))),
        35 => unary!(Ch::get_channel(s, rq(caller, decode::<pb::GetChannelRequest>(b)))),
        36 => unary!(O::list_onboardings(s, rq(caller, decode::<pb::ListOnboardingsRequest>(b)))),
        _ => unary!(P::get_pipeline(s, rq(caller, decode::<pb::GetPipelineRequest>(b)))),
    };
    let code = status.as_ref().map_or_else(|| "Ok".to_string(), |st| format!("{:?}", st.code()));
    *seen.lock().map_err(|_| "poisoned")?.entry(code).or_default() += 1;
    match status {
        Some(st) if matches!(st.code(), tonic::Code::Internal | tonic::Code::Unknown) => {
            Err(format!("rpc #{} answered {:?}: {}", c.rpc, st.code(), st.message()))
        }
        _ => Ok(()),
    }
}

#[test]
fn every_rpc_survives_arbitrary_requests() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, services, caller, names) = rt.block_on(async {
        let mut s = crate::config::Settings::default();
        s.server.grpc_addr = "127.0.0.1:0".into();
        s.server.webhook_addr = "127.0.0.1:0".into();
        s.server.metrics_addr = "127.0.0.1:0".into();
        s.server.data_dir = dir.path().to_path_buf();
        s.providers.http_timeout_secs = 3;
        let running = crate::app::start_with(s, None, None).await.expect("server starts");
        let store = running.store.clone();
        let tenant = store.tenant_by_name("dev").await.expect("store").expect("dev tenant");
        let caller = crate::core::Caller { tenant: tenant.id };
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let services = super::Services::new(running.core.clone(), shutdown);
        // One onboarding per provider, so names of resources that exist are in the mix.
        let mut names = vec![
            "accounts/sandbox-gupshup".to_string(),
            "accounts/sandbox-exotel".into(),
            "accounts/sandbox-whapi".into(),
            "accounts/sandbox-digital99".into(),
            "accounts/nope".into(),
            "onboardings/nope".into(),
            "channels/nope".into(),
        ];
        use pb::create_onboarding_request::Request as R;
        use pb::onboarding_service_server::OnboardingService as O;
        let payloads = [
            (
                "sandbox-gupshup",
                R::Gupshup(pb::GupshupLinkAppRequest {
                    app_name: "FuzzShop".into(),
                    waba_id: "1234567890".into(),
                    phone: "+15551230001".into(),
                    ..Default::default()
                }),
            ),
            ("sandbox-exotel", R::Exotel(pb::ExotelLinkRequest::default())),
            ("sandbox-whapi", R::Whapi(pb::WhapiChannelRequest { channel_name: "fuzz".into(), ..Default::default() })),
            (
                "sandbox-digital99",
                R::Digital99(pb::Digital99LinkRequest {
                    phone: "+15551230002".into(),
                    business_name: "B".into(),
                    display_name: "D".into(),
                    ..Default::default()
                }),
            ),
        ];
        for (account, p) in payloads {
            let mut r = Request::new(pb::CreateOnboardingRequest {
                account: format!("accounts/{account}"),
                request: Some(p),
                ..Default::default()
            });
            r.extensions_mut().insert(caller.clone());
            let o = O::create_onboarding(&services, r).await.expect("fixture onboarding").into_inner();
            names.push(format!("{}/subscriptions/1", o.name));
            names.push(format!("{}/pipeline", o.name));
            names.push(o.name);
        }
        (running, services, caller, names)
    });
    let mut runner = TestRunner::new(config(600));
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let result = runner.run(&call(names), |c| {
        let outcome = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), run(&services, &caller, c, &seen)).await });
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(proptest::test_runner::TestCaseError::fail(e)),
            Err(_) => Err(proptest::test_runner::TestCaseError::fail("an RPC hung for 60 s")),
        }
    });
    rt.block_on(running.shutdown());
    // Shown with --nocapture: how deep the calls went (Ok and NotFound mean past validation).
    eprintln!("RPC fuzz answers by code: {:?}", seen.lock().map(|s| s.clone()).unwrap_or_default());
    if let Err(e) = result {
        panic!("{e}");
    }
}
