#![no_main]
//! RPC request decoding and validation: a `CreateOnboardingRequest` / `CreateAccountRequest` /
//! `CreateSubscriptionRequest` / `UpdateSubscriptionRequest` / `GetConnectCodeRequest` from
//! arbitrary bytes through the same conversion functions the handlers use.

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wa_onboard::error::Violations;
use wa_onboard::grpc::convert::*;
use wa_onboard::grpc::convert_ext::*;
use wa_onboard::grpc::pb;

fuzz_target!(|data: &[u8]| {
    let mut v = Violations::new();
    if let Ok(r) = pb::CreateOnboardingRequest::decode(data) {
        let _ = start_payload_from_pb(&mut v, r.request.as_ref());
        let _ = parse_name("account", &r.account, "accounts", |s| wa_onboard::domain::AccountId::parse(s));
    }
    if let Ok(r) = pb::CreateAccountRequest::decode(data) {
        let a = r.account.unwrap_or_default();
        let _ = credentials_from_pb(&mut v, a.credentials);
        let _ = options_from_pb(&mut v, provider_from_pb(a.provider), a.options);
    }
    if let Ok(r) = pb::CreateSubscriptionRequest::decode(data) {
        let _ = spec_from_pb(&mut v, "spec", r.spec, None);
        let _ = subscription_name("parent", &r.parent);
    }
    if let Ok(r) = pb::UpdateSubscriptionRequest::decode(data) {
        let only = update_fields(&mut v, r.update_mask);
        let _ = spec_from_pb(&mut v, "spec", r.spec, Some(&only));
    }
    if let Ok(r) = pb::GetConnectCodeRequest::decode(data) {
        let _ = connect_method_from_pb(&mut v, r.method);
        let _ = channel_name("name", &r.name);
    }
    if let Ok(r) = pb::ListOnboardingsRequest::decode(data) {
        let _ = page_request(&mut v, "onboardings", r.page_size, &r.page_token, DEFAULT_PAGE);
        let _ = provider_filter(&mut v, "provider", r.provider);
        let _ = state_filter(&mut v, "state", r.state);
    }
    let _ = v.finish();
});
