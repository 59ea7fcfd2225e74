//! Security checks (issue 9 item 5).
//!
//! 1. A full run of the real binary, RUST_LOG=debug, with known secret values for all four
//!    sandbox providers (partner secret, API token, partner token, client secret), the API
//!    key, the encryption key, a subscription header value and an account's webhook secret;
//!    plus the tokens the run obtains (app / channel tokens). None may appear in the logs,
//!    the gRPC errors, the events, `/metrics` or any stream message.
//! 2. Cross-tenant attempts on every RPC that takes a resource name: all `NOT_FOUND`, and
//!    nothing changes.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use wa_onboard::grpc::pb;

use crate::child::{Proc, SERVE_ANY_PORT, bin};
use crate::helpers::*;

fn uniq(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Where a secret was found, for the failure message.
#[derive(Default)]
struct Evidence {
    /// (surface, text) pairs collected during the run.
    items: Vec<(&'static str, String)>,
}

impl Evidence {
    fn add(&mut self, surface: &'static str, text: impl Into<String>) {
        self.items.push((surface, text.into()));
    }

    fn status<T: std::fmt::Debug>(&mut self, r: &Result<tonic::Response<T>, tonic::Status>) {
        if let Err(s) = r {
            self.add("grpc error", format!("{:?} {} {:?}", s.code(), s.message(), s.details()));
        }
    }

    /// Every (secret, surface) pair with a hit, with the offending line.
    fn hits(&self, secrets: &[(&str, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for (what, secret) in secrets {
            for (surface, text) in &self.items {
                if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
                    out.push(format!("{what} in {surface}: {}", line.chars().take(300).collect::<String>()));
                }
            }
        }
        out
    }
}

fn req<T>(key: &str, m: T) -> tonic::Request<T> {
    with_key(m, key)
}

/// Collects every message of a stream into `Debug` text until `stop`.
fn collect_stream<T: std::fmt::Debug + Send + 'static>(
    mut s: tonic::Streaming<T>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut out = String::new();
        let mut stop = stop;
        loop {
            tokio::select! {
                m = s.message() => match m {
                    Ok(Some(m)) => { out.push_str(&format!("{m:?}\n")); }
                    Ok(None) => break,
                    Err(e) => { out.push_str(&format!("stream error {:?} {}\n", e.code(), e.message())); break; }
                },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leak_into_logs_errors_events_metrics_or_streams() {
    let dir = tempfile::tempdir().unwrap();
    let api_key = format!("wao_{}", uuid::Uuid::new_v4().simple());
    let gupshup_secret = uniq("gs-secret-");
    let exotel_token = uniq("ex-token-");
    let whapi_token = uniq("wh-partner-");
    let d99_secret = uniq("d99-secret-");
    let header_secret = uniq("hdr-value-");
    let bogus_secret = uniq("bogus-whapi-token-");
    let enc_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2))
    };
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[providers]\nallow_custom_endpoints = true\n\n[engine]\ntick_ms = 50\npoll_interval_ms = 200\nretry_base_ms = 50\nretry_max_ms = 500\n\n\
             [sandbox.sims.gupshup]\nstage_ms = 300\n\n\
             [[sandbox.sims.gupshup.partners]]\nemail = \"sec@wa-onboard.test\"\nsecret = \"{gupshup_secret}\"\n\
             partner_id = 4243\nname = \"Security Partner\"\n\n\
             [[sandbox.sims.exotel.accounts]]\nsid = \"secsid\"\napi_key = \"seckey\"\napi_token = \"{exotel_token}\"\n\
             region = \"singapore\"\n\n\
             [sandbox.sims.whapi]\npartner_token = \"{whapi_token}\"\n\n\
             [[sandbox.sims.digital99.clients]]\nclient_id = \"secclient\"\nclient_secret = \"{d99_secret}\"\n"
        ),
    )
    .unwrap();
    let mut serve = Proc::spawn(
        "serve",
        dir.path(),
        bin()
            .env("RUST_LOG", "debug")
            .env("WA_ONBOARD_DEV_API_KEY", &api_key)
            .env("WA_ONBOARD__SECURITY__ENCRYPTION_KEY", &enc_key)
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path())
            .args(SERVE_ANY_PORT),
    );
    let at = serve.listening();
    let (addr, metrics_addr) = (at.grpc, at.metrics);
    let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let k = api_key.as_str();
    let mut ev = Evidence::default();
    let mut onb = pb::onboarding_service_client::OnboardingServiceClient::new(ch.clone());
    let mut accts = pb::account_service_client::AccountServiceClient::new(ch.clone());
    let mut tokens = pb::token_service_client::TokenServiceClient::new(ch.clone());
    let mut pipes = pb::pipeline_service_client::PipelineServiceClient::new(ch.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // One onboarding per provider on the sandbox accounts (built from the secrets above).
    use pb::create_onboarding_request::Request as R;
    let gupshup = R::Gupshup(pb::GupshupLinkAppRequest {
        app_name: "AcmeSecurity".into(),
        waba_id: "104996122399161".into(),
        phone: "+919812345679".into(),
        subscribe_on_live: true,
        subscription: Some(pb::SubscriptionSpec {
            url: "https://crm.acme.test/wa".into(),
            events: vec!["SENT".into()],
            tag: "sec".into(),
            version: 2,
            headers: [("x-crm-auth".to_string(), header_secret.clone())].into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let whapi = R::Whapi(pb::WhapiChannelRequest { channel_name: "sec".into(), ..Default::default() });
    let d99 = R::Digital99(pb::Digital99LinkRequest {
        phone: "+15551239876".into(),
        business_name: "Acme".into(),
        display_name: "Acme".into(),
        ..Default::default()
    });
    let mut names = Vec::new();
    let mut streams = Vec::new();
    for (account, r) in [
        ("sandbox-gupshup", gupshup),
        ("sandbox-exotel", R::Exotel(pb::ExotelLinkRequest::default())),
        ("sandbox-whapi", whapi),
        ("sandbox-digital99", d99),
    ] {
        let o = onb
            .create_onboarding(req(
                k,
                pb::CreateOnboardingRequest {
                    account: format!("accounts/{account}"),
                    request: Some(r),
                    reference: "sec".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{account}: {e:?}"))
            .into_inner();
        let w = onb
            .watch_onboarding(req(k, pb::WatchOnboardingRequest { name: o.name.clone(), after_sequence: 0 }))
            .await
            .unwrap()
            .into_inner();
        streams.push(collect_stream(w, stop_rx.clone()));
        let p = pipes
            .watch_pipeline(req(k, pb::WatchPipelineRequest { name: o.name.clone(), after_sequence: 0 }))
            .await
            .unwrap()
            .into_inner();
        streams.push(collect_stream(p, stop_rx.clone()));
        names.push(o.name);
    }

    // An account with a known bad credential at an endpoint that refuses connections: the
    // failure paths (check, onboarding step errors) carry the credential in their context.
    let bad = accts
        .create_account(req(
            k,
            pb::CreateAccountRequest {
                account_id: "sec-bad-whapi".into(),
                account: Some(pb::Account {
                    provider: pb::Provider::Whapi as i32,
                    display_name: "bad".into(),
                    credentials: Some(pb::AccountCredentials {
                        credentials: Some(pb::account_credentials::Credentials::Whapi(pb::WhapiCredentials {
                            partner_token: bogus_secret.clone(),
                        })),
                    }),
                    options: Some(pb::AccountOptions { endpoint: "http://127.0.0.1:9/".into(), options: None }),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let webhook_secret = bad.webhook_url.rsplit('/').next().unwrap_or_default().to_string();
    assert!(webhook_secret.len() >= 16, "a webhook URL with a secret: {}", bad.webhook_url);
    let r = accts.check_account(req(k, pb::CheckAccountRequest { name: bad.name.clone() })).await;
    ev.add("check answer", format!("{r:?}"));
    let r = onb
        .create_onboarding(req(
            k,
            pb::CreateOnboardingRequest {
                account: bad.name.clone(),
                request: Some(R::Whapi(pb::WhapiChannelRequest { channel_name: "bad".into(), ..Default::default() })),
                ..Default::default()
            },
        ))
        .await;
    ev.status(&r);
    if let Ok(o) = r {
        names.push(o.into_inner().name);
    }
    // Invalid requests carrying secrets: the errors must not echo them.
    let r = accts
        .create_account(req(
            k,
            pb::CreateAccountRequest {
                account_id: "Not A Valid Id!".into(),
                account: Some(pb::Account {
                    provider: pb::Provider::Digital99 as i32,
                    credentials: Some(pb::AccountCredentials {
                        credentials: Some(pb::account_credentials::Credentials::Digital99(pb::Digital99Credentials {
                            client_id: String::new(),
                            client_secret: d99_secret.clone(),
                        })),
                    }),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await;
    assert_eq!(r.as_ref().map(|_| ()).unwrap_err().code(), Code::InvalidArgument);
    ev.status(&r);
    let r = accts.list_accounts(req(&format!("{api_key}x"), pb::ListAccountsRequest::default())).await;
    assert_eq!(r.as_ref().map(|_| ()).unwrap_err().code(), Code::Unauthenticated);
    ev.status(&r);

    // Drive Gupshup to LIVE (partner token, app token, subscription with the header made).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = onb.get_onboarding(req(k, pb::GetOnboardingRequest { name: names[0].clone() })).await.unwrap();
        let o = o.into_inner();
        let subscribed = match &o.details {
            Some(pb::onboarding::Details::Gupshup(g)) => !g.created_subscription.is_empty(),
            _ => false,
        };
        if o.state == pb::OnboardingState::Live as i32 && subscribed {
            break;
        }
        assert!(Instant::now() < deadline, "Gupshup never LIVE with its subscription: {o:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Tokens the run obtains are secrets too (returned by GetAppToken only).
    let mut obtained = Vec::new();
    let t = tokens.get_app_token(req(k, pb::GetAppTokenRequest { name: names[0].clone() })).await.unwrap();
    obtained.push(("gupshup app token", t.into_inner().token));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokens.get_app_token(req(k, pb::GetAppTokenRequest { name: names[2].clone() })).await {
            Ok(t) => {
                obtained.push(("whapi channel token", t.into_inner().token));
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no Whapi channel token: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for account in ["accounts/sandbox-gupshup", "accounts/sandbox-digital99"] {
        let r =
            tokens.refresh_provider_token(req(k, pb::RefreshProviderTokenRequest { account: account.into() })).await;
        ev.add("token status", format!("{r:?}"));
    }
    for account in
        ["accounts/sandbox-gupshup", "accounts/sandbox-exotel", "accounts/sandbox-whapi", "accounts/sandbox-digital99"]
    {
        let r = accts.check_account(req(k, pb::CheckAccountRequest { name: account.into() })).await;
        // The configured secrets are the ones in use.
        assert!(r.as_ref().is_ok_and(|c| c.get_ref().ok), "{account}: {r:?}");
        ev.add("check answer", format!("{r:?}"));
        let r = accts.get_account(req(k, pb::GetAccountRequest { name: account.into() })).await;
        ev.add("account", format!("{r:?}"));
    }
    let subs = pb::subscription_service_client::SubscriptionServiceClient::new(ch.clone())
        .list_subscriptions(req(k, pb::ListSubscriptionsRequest { parent: names[0].clone(), ..Default::default() }))
        .await;
    ev.add("subscriptions", format!("{subs:?}"));
    assert!(format!("{subs:?}").contains("x-crm-auth"), "the header name is listed: {subs:?}");

    // Events, pipelines and onboardings of every onboarding.
    for name in &names {
        let r = onb
            .list_onboarding_events(req(
                k,
                pb::ListOnboardingEventsRequest { name: name.clone(), page_size: 1000, ..Default::default() },
            ))
            .await;
        ev.add("events", format!("{r:?}"));
        ev.add(
            "pipeline",
            format!("{:?}", pipes.get_pipeline(req(k, pb::GetPipelineRequest { name: name.clone() })).await),
        );
        ev.add(
            "onboarding",
            format!("{:?}", onb.get_onboarding(req(k, pb::GetOnboardingRequest { name: name.clone() })).await),
        );
    }
    // Metrics: another branch adds the endpoint; today a 404 is fine, a secret never is.
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap();
    let code = metrics.status().as_u16();
    assert!(code == 200 || code == 404, "GET /metrics answered {code}");
    ev.add("metrics", metrics.text().await.unwrap_or_default());

    stop_tx.send(true).unwrap();
    for s in streams {
        let text = s.await.unwrap();
        ev.add("stream", text);
    }
    assert!(ev.items.iter().any(|(s, t)| *s == "stream" && t.contains("Snapshot")), "streams delivered snapshots");

    let status = serve.terminate();
    assert!(status.success(), "{status:?}");
    let logs = format!("{}\n{}", serve.stdout(), serve.logs());
    assert!(logs.contains("DEBUG"), "debug logging was on");
    assert!(logs.contains("sandbox-whapi") || logs.contains("whapi"), "the run was logged");
    ev.add("logs", logs);

    let mut secrets: Vec<(&str, String)> = vec![
        ("API key", api_key.clone()),
        ("encryption key", enc_key.clone()),
        ("Gupshup partner secret", gupshup_secret),
        ("Exotel API token", exotel_token),
        ("Whapi partner token", whapi_token),
        ("99digital client secret", d99_secret),
        ("subscription header value", header_secret),
        ("bogus Whapi token", bogus_secret),
        ("webhook secret", webhook_secret),
        // The simulator's Gupshup partner tokens are JWTs with this fixed header.
        ("Gupshup partner token", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9".into()),
    ];
    for (what, t) in obtained {
        assert!(t.len() >= 8, "{what} looks like a token");
        secrets.push((what, t));
    }
    let hits = ev.hits(&secrets);
    assert!(hits.is_empty(), "secrets leaked ({}):\n{}", hits.len(), hits.join("\n"));
}

// ---- Cross-tenant: every RPC that takes a resource name ----

/// One RPC in the table: its name, and a call with the given key.
type Probe<'a> = (&'static str, bool, futures::future::BoxFuture<'a, Result<(), tonic::Status>>);

async fn wait_details(app: &TestApp, name: &str, ready: impl Fn(&pb::Onboarding) -> bool) -> pb::Onboarding {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = app
            .onboardings()
            .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.into() }))
            .await
            .unwrap()
            .into_inner();
        if ready(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "never ready: {o:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_named_resource_is_not_found_for_another_tenant() {
    use futures::FutureExt;
    let app = spawn_with(|s| {
        s.sandbox.enabled = true;
        s.sandbox.sims.gupshup.stage_ms = 200;
        s.engine.tick_ms = 50;
        s.engine.poll_interval_ms = 200;
        s.engine.retry_base_ms = 50;
        s.engine.retry_max_ms = 500;
    })
    .await;
    let other = app.other_tenant("intruder").await;
    use pb::create_onboarding_request::Request as R;
    let create = |account: &str, r: R| {
        let mut c = app.onboardings();
        let m = pb::CreateOnboardingRequest { account: account.into(), request: Some(r), ..Default::default() };
        let rq = app.req(m);
        async move { c.create_onboarding(rq).await.unwrap().into_inner() }
    };
    let gupshup = create(
        "accounts/sandbox-gupshup",
        R::Gupshup(pb::GupshupLinkAppRequest {
            app_name: "TenantCheck".into(),
            waba_id: "104996122399162".into(),
            phone: "+919812345670".into(),
            subscribe_on_live: true,
            subscription: Some(pb::SubscriptionSpec {
                url: "https://crm.acme.test/wa".into(),
                events: vec!["SENT".into()],
                tag: "t".into(),
                version: 2,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    let whapi = create(
        "accounts/sandbox-whapi",
        R::Whapi(pb::WhapiChannelRequest { channel_name: "t".into(), ..Default::default() }),
    )
    .await;
    let d99 = create(
        "accounts/sandbox-digital99",
        R::Digital99(pb::Digital99LinkRequest {
            phone: "+15551230099".into(),
            business_name: "B".into(),
            display_name: "D".into(),
            register_number: true,
            ..Default::default()
        }),
    )
    .await;
    let exotel = create("accounts/sandbox-exotel", R::Exotel(pb::ExotelLinkRequest::default())).await;
    let g = wait_details(
        &app,
        &gupshup.name,
        |o| matches!(&o.details, Some(pb::onboarding::Details::Gupshup(g)) if !g.created_subscription.is_empty()),
    )
    .await;
    let subscription = match g.details {
        Some(pb::onboarding::Details::Gupshup(g)) => g.created_subscription,
        _ => unreachable!(),
    };
    let w = wait_details(
        &app,
        &whapi.name,
        |o| matches!(&o.details, Some(pb::onboarding::Details::Whapi(w)) if !w.channel.is_empty()),
    )
    .await;
    let channel = match w.details {
        Some(pb::onboarding::Details::Whapi(w)) => w.channel,
        _ => unreachable!(),
    };
    let e = wait_details(
        &app,
        &exotel.name,
        |o| matches!(&o.details, Some(pb::onboarding::Details::Exotel(x)) if !x.token.is_empty()),
    )
    .await;
    let link_token = match e.details {
        Some(pb::onboarding::Details::Exotel(x)) => x.token,
        _ => unreachable!(),
    };
    // Snapshot of everything the intruder could change.
    let before: Vec<(String, i64)> = {
        let mut v = Vec::new();
        for n in [&gupshup.name, &whapi.name, &d99.name, &exotel.name] {
            let o =
                app.onboardings().get_onboarding(app.req(pb::GetOnboardingRequest { name: n.clone() })).await.unwrap();
            v.push((n.clone(), o.into_inner().sequence));
        }
        v
    };

    let ch = app.channel.clone();
    let acc = "accounts/sandbox-gupshup".to_string();
    let wacc = "accounts/sandbox-whapi".to_string();
    let xacc = "accounts/sandbox-exotel".to_string();
    let spec = || pb::SubscriptionSpec {
        url: "https://x.test/h".into(),
        events: vec!["SENT".into()],
        tag: "x".into(),
        version: 2,
        ..Default::default()
    };
    // (rpc, read-only, call). Read-only probes are also run as the owner, to prove the name
    // is real; mutating ones run only as the intruder.
    let table = |key: String| -> Vec<Probe<'static>> {
        let ch = ch.clone();
        let (acc, wacc, xacc) = (acc.clone(), wacc.clone(), xacc.clone());
        let (gname, wname, dname) = (gupshup.name.clone(), whapi.name.clone(), d99.name.clone());
        let (sub, chan, tok) = (subscription.clone(), channel.clone(), link_token.clone());
        let k = move || key.clone();
        let a = pb::account_service_client::AccountServiceClient::new(ch.clone());
        let o = pb::onboarding_service_client::OnboardingServiceClient::new(ch.clone());
        let p = pb::pipeline_service_client::PipelineServiceClient::new(ch.clone());
        let s = pb::subscription_service_client::SubscriptionServiceClient::new(ch.clone());
        let c = pb::channel_service_client::ChannelServiceClient::new(ch.clone());
        let t = pb::token_service_client::TokenServiceClient::new(ch.clone());
        macro_rules! probe {
            ($name:expr, $ro:expr, $client:ident, $method:ident, $msg:expr) => {{
                let mut cl = $client.clone();
                let m = $msg;
                let key = k();
                ($name, $ro, async move { cl.$method(with_key(m, &key)).await.map(|_| ()) }.boxed())
            }};
        }
        macro_rules! stream_probe {
            ($name:expr, $client:ident, $method:ident, $msg:expr) => {{
                let mut cl = $client.clone();
                let m = $msg;
                let key = k();
                (
                    $name,
                    true,
                    async move {
                        let mut st = cl.$method(with_key(m, &key)).await?.into_inner();
                        st.message().await.map(|_| ())
                    }
                    .boxed(),
                )
            }};
        }
        vec![
            probe!("AccountService.GetAccount", true, a, get_account, pb::GetAccountRequest { name: acc.clone() }),
            probe!(
                "AccountService.CheckAccount",
                true,
                a,
                check_account,
                pb::CheckAccountRequest { name: acc.clone() }
            ),
            probe!(
                "AccountService.DeleteAccount",
                false,
                a,
                delete_account,
                pb::DeleteAccountRequest { name: acc.clone(), force: true }
            ),
            probe!(
                "OnboardingService.CreateOnboarding",
                false,
                o,
                create_onboarding,
                pb::CreateOnboardingRequest {
                    account: wacc.clone(),
                    request: Some(R::Whapi(pb::WhapiChannelRequest {
                        channel_name: "evil".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            ),
            probe!(
                "OnboardingService.CreateOnboardingLinks",
                false,
                o,
                create_onboarding_links,
                pb::CreateOnboardingLinksRequest { account: xacc.clone(), count: 1, ..Default::default() }
            ),
            probe!(
                "OnboardingService.GetOnboarding",
                true,
                o,
                get_onboarding,
                pb::GetOnboardingRequest { name: gname.clone() }
            ),
            probe!(
                "OnboardingService.CancelOnboarding",
                false,
                o,
                cancel_onboarding,
                pb::CancelOnboardingRequest { name: wname.clone(), request_id: String::new() }
            ),
            probe!(
                "OnboardingService.SubmitVerificationCode",
                false,
                o,
                submit_verification_code,
                pb::SubmitVerificationCodeRequest { name: dname.clone(), code: "000000".into() }
            ),
            stream_probe!(
                "OnboardingService.WatchOnboarding",
                o,
                watch_onboarding,
                pb::WatchOnboardingRequest { name: gname.clone(), after_sequence: 0 }
            ),
            probe!(
                "OnboardingService.ListOnboardingEvents",
                true,
                o,
                list_onboarding_events,
                pb::ListOnboardingEventsRequest { name: gname.clone(), ..Default::default() }
            ),
            probe!(
                "PipelineService.GetPipeline",
                true,
                p,
                get_pipeline,
                pb::GetPipelineRequest { name: format!("{gname}/pipeline") }
            ),
            stream_probe!(
                "PipelineService.WatchPipeline",
                p,
                watch_pipeline,
                pb::WatchPipelineRequest { name: gname.clone(), after_sequence: 0 }
            ),
            probe!(
                "PipelineService.RetryPipeline",
                false,
                p,
                retry_pipeline,
                pb::RetryPipelineRequest { name: wname.clone(), request_id: String::new() }
            ),
            probe!(
                "SubscriptionService.CreateSubscription",
                false,
                s,
                create_subscription,
                pb::CreateSubscriptionRequest { parent: gname.clone(), spec: Some(spec()), request_id: String::new() }
            ),
            probe!(
                "SubscriptionService.GetSubscription",
                true,
                s,
                get_subscription,
                pb::GetSubscriptionRequest { name: sub.clone() }
            ),
            probe!(
                "SubscriptionService.ListSubscriptions",
                true,
                s,
                list_subscriptions,
                pb::ListSubscriptionsRequest { parent: gname.clone(), ..Default::default() }
            ),
            probe!(
                "SubscriptionService.UpdateSubscription",
                false,
                s,
                update_subscription,
                pb::UpdateSubscriptionRequest {
                    name: sub.clone(),
                    spec: Some(spec()),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["url".into()] }),
                }
            ),
            probe!(
                "SubscriptionService.DeleteSubscription",
                false,
                s,
                delete_subscription,
                pb::DeleteSubscriptionRequest { name: sub.clone() }
            ),
            probe!("ChannelService.GetChannel", true, c, get_channel, pb::GetChannelRequest { name: chan.clone() }),
            probe!(
                "ChannelService.GetConnectCode",
                false,
                c,
                get_connect_code,
                pb::GetConnectCodeRequest { name: chan.clone(), method: None }
            ),
            probe!(
                "ChannelService.SetChannelMode",
                false,
                c,
                set_channel_mode,
                pb::SetChannelModeRequest { name: chan.clone(), mode: pb::ChannelMode::Live as i32 }
            ),
            probe!(
                "ChannelService.ExtendChannel",
                false,
                c,
                extend_channel,
                pb::ExtendChannelRequest {
                    name: chan.clone(),
                    days: 1,
                    comment: String::new(),
                    request_id: "evil-1".into()
                }
            ),
            probe!(
                "ChannelService.DeleteChannel",
                false,
                c,
                delete_channel,
                pb::DeleteChannelRequest { name: chan.clone(), request_id: String::new() }
            ),
            probe!(
                "ChannelService.GetPartnerBalance",
                true,
                c,
                get_partner_balance,
                pb::GetPartnerBalanceRequest { account: wacc.clone() }
            ),
            probe!("TokenService.GetAppToken", true, t, get_app_token, pb::GetAppTokenRequest { name: gname.clone() }),
            probe!(
                "TokenService.ValidateOnboardingToken",
                true,
                t,
                validate_onboarding_token,
                pb::ValidateOnboardingTokenRequest { account: xacc.clone(), token: tok.clone() }
            ),
            probe!(
                "TokenService.RefreshProviderToken",
                false,
                t,
                refresh_provider_token,
                pb::RefreshProviderTokenRequest { account: acc.clone() }
            ),
            probe!(
                "TokenService.GetProviderTokenStatus",
                true,
                t,
                get_provider_token_status,
                pb::GetProviderTokenStatusRequest { account: acc.clone() }
            ),
        ]
    };
    let mut wrong = Vec::new();
    for (rpc, _, call) in table(other.expose().to_string()) {
        let r = tokio::time::timeout(Duration::from_secs(30), call).await.expect("no hang");
        match r {
            Err(s) if s.code() == Code::NotFound => {}
            other => wrong.push(format!("{rpc}: {other:?}")),
        }
    }
    let mut missing = Vec::new();
    for (rpc, read_only, call) in table(app.key.expose().to_string()) {
        if read_only
            && let Err(s) = call.await
            && s.code() == Code::NotFound
        {
            missing.push(format!("{rpc}: {s:?}"));
        }
    }
    // List filters naming another tenant's account answer exactly as for an account that does
    // not exist (an empty page): nothing leaks, nothing of the owner's is listed.
    for account in [acc.clone(), wacc.clone(), "accounts/does-not-exist".to_string()] {
        let l = pb::onboarding_service_client::OnboardingServiceClient::new(app.channel.clone())
            .list_onboardings(with_key(
                pb::ListOnboardingsRequest { account: account.clone(), ..Default::default() },
                other.expose(),
            ))
            .await
            .expect("a filter is not an error")
            .into_inner();
        assert!(l.onboardings.is_empty(), "{account}: {l:?}");
        let l = pb::channel_service_client::ChannelServiceClient::new(app.channel.clone())
            .list_channels(with_key(
                pb::ListChannelsRequest { account: account.clone(), ..Default::default() },
                other.expose(),
            ))
            .await
            .expect("a filter is not an error")
            .into_inner();
        assert!(l.channels.is_empty(), "{account}: {l:?}");
    }
    assert!(missing.is_empty(), "the probes must name real resources:\n{}", missing.join("\n"));
    assert!(wrong.is_empty(), "cross-tenant calls that were not NOT_FOUND:\n{}", wrong.join("\n"));
    // Nothing the intruder did changed an onboarding (no event, no state change).
    for (name, seq) in before {
        let o = app
            .onboardings()
            .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.clone() }))
            .await
            .unwrap()
            .into_inner();
        let evs = app
            .onboardings()
            .list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
                name: name.clone(),
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(
            evs.iter().filter(|e| e.sequence > seq).all(|e| !e.r#type.contains("cancel") && !e.reason.contains("evil")),
            "{name} changed after the intruder: {evs:?}"
        );
        assert_ne!(o.state, pb::OnboardingState::Cancelled as i32, "{name}");
    }
    // The accounts, subscription and channel are still there for their owner.
    let mut a = app.accounts();
    a.get_account(app.req(pb::GetAccountRequest { name: acc.clone() })).await.expect("account kept");
    pb::subscription_service_client::SubscriptionServiceClient::new(app.channel.clone())
        .get_subscription(app.req(pb::GetSubscriptionRequest { name: subscription.clone() }))
        .await
        .expect("subscription kept");
    pb::channel_service_client::ChannelServiceClient::new(app.channel.clone())
        .get_channel(app.req(pb::GetChannelRequest { name: channel.clone() }))
        .await
        .expect("channel kept");
}
