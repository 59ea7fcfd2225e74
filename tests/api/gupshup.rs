//! Gupshup end to end: the real adapter against the in-process simulator (sandbox mode, which
//! plays the customer), over real gRPC and the real webhook ingress.

use std::time::Duration;

use wa_onboard::grpc::pb;

use crate::helpers::*;

async fn sandbox_app() -> TestApp {
    spawn_with(|s| {
        s.sandbox.enabled = true;
        s.engine.tick_ms = 50;
        s.engine.poll_interval_ms = 200;
        s.engine.retry_base_ms = 50;
        s.engine.retry_max_ms = 500;
    })
    .await
}

fn link_request(app_name: &str, request_id: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/sandbox-gupshup".into(),
        reference: "crm-7".into(),
        request_id: request_id.into(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: app_name.into(),
            waba_id: "104996122399160".into(),
            phone: "+919876543210".into(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn sandbox_onboarding_reaches_live_through_provisioning_and_replays_by_request_id() {
    let app = sandbox_app().await;
    let o =
        app.onboardings().create_onboarding(app.req(link_request("Acme Support", "r-1"))).await.unwrap().into_inner();
    let name = o.name.clone();
    let mut stream = app
        .onboardings()
        .watch_onboarding(app.req(pb::WatchOnboardingRequest { name: name.clone(), after_sequence: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let live = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = stream.message().await.unwrap() {
            if let Some(pb::watch_onboarding_response::Message::Event(e)) = msg.message {
                seen.push(e.state);
                if e.state == pb::OnboardingState::Live as i32 {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(live, "not LIVE within 30 s; states seen: {seen:?}");
    assert!(seen.contains(&(pb::OnboardingState::Provisioning as i32)), "{seen:?}");
    let got = app
        .onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.clone() }))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::onboarding::Details::Gupshup(g)) = got.details else { panic!("no gupshup details") };
    assert!(!g.app_id.is_empty());
    assert!(g.app_token_ready);
    assert_eq!(got.reference, "crm-7");
    // The same request_id again: the same onboarding, no second app.
    let again = app.onboardings().create_onboarding(app.req(link_request("Acme Support", "r-1"))).await.unwrap();
    assert_eq!(again.into_inner().name, name);
}

#[tokio::test]
async fn an_invalid_app_name_is_refused_before_anything_is_stored() {
    let app = sandbox_app().await;
    let err = app.onboardings().create_onboarding(app.req(link_request("Acme!!", ""))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(violations(&err), vec!["gupshup.app_name".to_string()]);
    let list =
        app.onboardings().list_onboardings(app.req(pb::ListOnboardingsRequest::default())).await.unwrap().into_inner();
    assert!(list.onboardings.is_empty());
}
