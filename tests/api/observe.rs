//! Observability and operations: Prometheus metrics after a real sandbox onboarding, logs
//! free of secrets, OTLP trace export with the caller's trace context, API keys from the
//! config file and the CLI taking effect on a running server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use wa_onboard::grpc::pb;
use wa_onboard::telemetry::metrics as m;

use crate::child::{Proc, SERVE_ANY_PORT, bin};
use crate::helpers::*;

// ----- helpers -----

/// GETs `/metrics`.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.expect("GET /metrics");
    assert!(resp.status().is_success());
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    resp.text().await.expect("body")
}

/// Sample lines of `family` (exact name, or with a histogram suffix) carrying every label.
fn samples<'a>(text: &'a str, family: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            name == family || name.strip_prefix(family).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
        })
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .collect()
}

/// The value of the first sample of `family` with `labels` (counters, gauges, `_count`).
fn value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, family, labels).first().and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn sandbox_fast(s: &mut wa_onboard::config::Settings) {
    s.sandbox.enabled = true;
    s.engine.tick_ms = 50;
    s.engine.poll_interval_ms = 200;
    s.engine.retry_base_ms = 50;
    s.engine.retry_max_ms = 500;
    s.telemetry.gauge_refresh_secs = 1;
}

fn gupshup_link(account: &str, app_name: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: "crm-obs".into(),
        request_id: String::new(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: app_name.into(),
            waba_id: "104996122399160".into(),
            phone: "+919876543210".into(),
            ..Default::default()
        })),
    }
}

/// Waits (generously) until the onboarding named `name` is in `want`; returns the states seen.
async fn wait_state(channel: &Channel, key: &str, name: &str, want: pb::OnboardingState) -> Vec<i32> {
    let mut client = pb::onboarding_service_client::OnboardingServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let o = client
            .get_onboarding(with_key(pb::GetOnboardingRequest { name: name.into() }, key))
            .await
            .expect("get onboarding")
            .into_inner();
        if seen.last() != Some(&o.state) {
            seen.push(o.state);
        }
        if o.state == want as i32 {
            return seen;
        }
        if o.state == pb::OnboardingState::Failed as i32 {
            panic!("{name} ({:?}) failed: {}; states seen: {seen:?}", o.provider(), o.state_reason);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} not in {want:?} within 60 s; states seen: {seen:?}");
}

// ----- metrics -----

#[tokio::test]
async fn metrics_show_grpc_provider_step_webhook_store_and_onboarding_families_after_a_sandbox_onboarding() {
    let app = spawn_with(|s| {
        sandbox_fast(s);
        // One retry, then the dead letter: the failing destination below dead-letters fast.
        s.delivery.retry_schedule_secs = vec![0];
        s.delivery.tick_ms = 50;
    })
    .await;
    let sims = app.running().sandbox.as_ref().expect("sandbox").endpoints();
    let http = reqwest::Client::new();
    // Two destinations (loopback allowed: the sandbox runs): one accepting, one answering 500,
    // so every delivery family is exported.
    for status in [axum::http::StatusCode::NO_CONTENT, axum::http::StatusCode::INTERNAL_SERVER_ERROR] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = axum::Router::new().route("/hook", axum::routing::post(move || async move { status }));
        tokio::spawn(async move { axum::serve(listener, receiver).await });
        let mut deliveries = pb::delivery_service_client::DeliveryServiceClient::new(app.channel.clone());
        deliveries
            .create_destination(app.req(pb::CreateDestinationRequest {
                destination: Some(pb::Destination {
                    sink: Some(pb::destination::Sink::Webhook(pb::WebhookSink { url, ..Default::default() })),
                    ..Default::default()
                }),
            }))
            .await
            .expect("create destination");
    }
    // Duplicated callbacks (the knobs replace the fault queue: set them first), then one
    // retried provider call: the first pipeline poll answers 503.
    let r = http
        .put(format!("{}/_sim/knobs", sims.gupshup))
        .json(&serde_json::json!({"callbacks": {"duplicate_next": 10}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let r = http
        .post(format!("{}/_sim/fail", sims.gupshup))
        .json(&serde_json::json!({"endpoint": "GET /partner/app/{app_id}/pipeline",
                                   "fault": {"kind": "status", "status": 503}, "count": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let o = app
        .onboardings()
        .create_onboarding(app.req(gupshup_link("sandbox-gupshup", "MetricsShop")))
        .await
        .expect("create")
        .into_inner();
    let id = app.onboarding_key(&o.name).await;
    let mut stream = app.watch(&id, 0).await;
    // A stream is open while we look.
    let during = scrape(app.running().metrics_addr).await;
    assert!(
        value(
            &during,
            m::GRPC_STREAMS_OPEN,
            &[("service", "wa.onboard.v1.OnboardingService"), ("method", "WatchOnboarding")]
        )
        .is_some_and(|v| v >= 1.0),
        "no open stream counted"
    );
    let live = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(msg) = stream.message().await.expect("stream") {
            if let Some(pb::watch_onboarding_response::Message::Event(e)) = msg.message
                && e.state == pb::OnboardingState::Live as i32
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(live, "not LIVE within 60 s");
    drop(stream);
    // A refused call, and a rejected webhook (wrong path secret).
    let refused = app.providers().list_providers(pb::ListProvidersRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let r = http
        .post(format!("http://{}/webhooks/gupshup/sandbox-gupshup/not-the-secret", app.running().webhook_addr))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    // The onboardings gauge is refreshed every second here; the rest is already there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let t = scrape(app.running().metrics_addr).await;
        // The dead letter (after the retry) and the backlog gauge (every 10 s) come last.
        if value(&t, m::ONBOARDINGS, &[("provider", "gupshup"), ("state", "LIVE")]).is_some_and(|v| v >= 1.0)
            && value(&t, m::DEAD_LETTERS, &[]).is_some_and(|v| v >= 1.0)
            && !samples(&t, m::DELIVERY_BACKLOG, &[]).is_empty()
        {
            break t;
        }
        assert!(Instant::now() < deadline, "onboardings gauge never showed the LIVE onboarding:\n{t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in m::NAMES {
        assert!(!samples(&text, name, &[]).is_empty(), "family {name} missing from /metrics");
        assert!(text.contains(&format!("# TYPE {name} ")), "family {name} has no TYPE line");
    }
    let create = [("service", "wa.onboard.v1.OnboardingService"), ("method", "CreateOnboarding"), ("code", "OK")];
    assert!(value(&text, m::GRPC_REQUESTS, &create).is_some_and(|v| v >= 1.0), "CreateOnboarding not counted");
    assert!(value(&text, &format!("{}_count", m::GRPC_DURATION), &create).is_some_and(|v| v >= 1.0));
    assert!(
        !samples(&text, m::GRPC_DURATION, &[("method", "CreateOnboarding"), ("le", "+Inf")]).is_empty(),
        "gRPC latency is a histogram"
    );
    let refused =
        [("service", "wa.onboard.v1.ProviderService"), ("method", "ListProviders"), ("code", "UNAUTHENTICATED")];
    assert!(value(&text, m::GRPC_REQUESTS, &refused).is_some_and(|v| v >= 1.0), "refused call not counted");
    let watch = [("method", "WatchOnboarding"), ("service", "wa.onboard.v1.OnboardingService")];
    assert!(value(&text, m::GRPC_REQUESTS, &watch).is_some_and(|v| v >= 1.0), "finished stream not counted");
    for (endpoint, outcome) in [("link_app", "success"), ("pipeline", "success"), ("pipeline", "retryable")] {
        let l = [("provider", "gupshup"), ("endpoint", endpoint), ("outcome", outcome)];
        assert!(value(&text, m::PROVIDER_REQUESTS, &l).is_some_and(|v| v >= 1.0), "no {endpoint}/{outcome} call");
        assert!(!samples(&text, m::PROVIDER_DURATION, &l).is_empty());
    }
    let retried = [("provider", "gupshup"), ("endpoint", "pipeline")];
    assert!(value(&text, m::PROVIDER_RETRIES, &retried).is_some_and(|v| v >= 1.0), "retry not counted");
    assert!(!samples(&text, m::RATE_LIMIT_WAIT, &[("provider", "gupshup")]).is_empty());
    assert!(!samples(&text, m::STEP_DURATION, &[("provider", "gupshup"), ("outcome", "ok")]).is_empty());
    assert!(
        value(&text, m::WEBHOOK_EVENTS, &[("provider", "gupshup"), ("result", "received")]).is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(&text, m::WEBHOOK_EVENTS, &[("provider", "gupshup"), ("result", "duplicate")]).is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(&text, m::WEBHOOK_EVENTS, &[("provider", "gupshup"), ("result", "rejected")]).is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(&text, &format!("{}_count", m::STORE_DURATION), &[("operation", "apply_change"), ("outcome", "ok")])
            .is_some_and(|v| v >= 1.0)
    );
    // Labels stay bounded: an unknown path is `unknown`, never the raw path.
    assert!(!text.contains("not-the-secret"));
}

// ----- the binary: logs, traces, keys -----

/// `wa-onboard serve` as a child process, its stderr (logs) in a file.
struct Server {
    proc: Proc,
    grpc: String,
    metrics: String,
    key: String,
    dir: tempfile::TempDir,
}

/// The development tenant's key every server here starts with.
const DEV_KEY: &str = "wao_observetestdevkey000000000000000000000";

impl Server {
    /// Starts the server with `config` (TOML) and extra environment; waits for its banner.
    fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("wa-onboard.toml");
        std::fs::write(&cfg, config).expect("config");
        let mut cmd = bin();
        cmd.env("WA_ONBOARD_DEV_API_KEY", DEV_KEY);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("--config").arg(&cfg).arg("--data-dir").arg(dir.path()).args(SERVE_ANY_PORT);
        let mut proc = Proc::spawn("serve", dir.path(), &mut cmd);
        let at = proc.listening();
        // The banner ends with the development key line (the key itself is not echoed when the
        // operator supplied it, as here).
        proc.wait_for("API key:");
        Self { proc, grpc: at.grpc, metrics: at.metrics, key: DEV_KEY.to_string(), dir }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.expect("connect")
    }

    /// SIGTERM, wait for a clean exit, return the logs.
    fn stop(mut self) -> String {
        let status = self.proc.terminate();
        assert!(status.success(), "{status:?}");
        self.proc.logs()
    }
}

const FAST_ENGINE: &str = "[engine]\ntick_ms = 50\npoll_interval_ms = 200\nretry_base_ms = 50\nretry_max_ms = 500\n";

fn account(
    id: &str,
    provider: pb::Provider,
    credentials: pb::account_credentials::Credentials,
) -> pb::CreateAccountRequest {
    account_with(id, provider, credentials, None)
}

fn account_with(
    id: &str,
    provider: pb::Provider,
    credentials: pb::account_credentials::Credentials,
    options: Option<pb::AccountOptions>,
) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        account: Some(pb::Account {
            provider: provider as i32,
            display_name: format!("Acme {id}"),
            credentials: Some(pb::AccountCredentials { credentials: Some(credentials) }),
            options,
            sandbox: true,
            ..Default::default()
        }),
        account_id: id.into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn logs_of_a_full_sandbox_run_on_all_four_providers_at_debug_contain_no_secret() {
    use pb::account_credentials::Credentials as C;
    // Every secret the run handles, with values that cannot appear by accident.
    let gupshup_secret = "gsSECRET7c1e0b9d4a2f6e8b";
    let exotel_token = "exoTOKEN5d8a2c7e9b1f3a4c";
    let whapi_token = "whapiTOKEN9e4b7a1c2d8f6e";
    let d99_secret = "d99SECRET3b6e9a2d7c4f1e8";
    let encryption_key = "b2JzZXJ2ZS10ZXN0LWtleS0wMTIzNDU2Nzg5YWJjZGU=";
    let dev_key = DEV_KEY;
    let config = format!(
        "{FAST_ENGINE}
[sandbox]
enabled = true
[sandbox.sims.gupshup]
partners = [{{ email = \"ops@acme.test\", secret = \"{gupshup_secret}\" }}]
[sandbox.sims.exotel]
accounts = [{{ sid = \"acme1\", api_key = \"acme-key\", api_token = \"{exotel_token}\", region = \"singapore\" }}]
customer_delay_ms = 300
[sandbox.sims.whapi]
partner_token = \"{whapi_token}\"
scan_delay_ms = 300
[sandbox.sims.digital99]
clients = [{{ client_id = \"acme-client\", client_secret = \"{d99_secret}\" }}]
finish_delay_ms = 300
"
    );
    let server =
        Server::start(&config, &[("RUST_LOG", "debug"), ("WA_ONBOARD__SECURITY__ENCRYPTION_KEY", encryption_key)]);
    assert_eq!(server.key, dev_key);
    let channel = server.channel().await;
    let key = server.key.clone();
    let mut accounts = pb::account_service_client::AccountServiceClient::new(channel.clone());
    let mut onboardings = pb::onboarding_service_client::OnboardingServiceClient::new(channel.clone());
    let creds = [
        account(
            "acme-gupshup",
            pb::Provider::Gupshup,
            C::Gupshup(pb::GupshupCredentials { email: "ops@acme.test".into(), secret: gupshup_secret.into() }),
        ),
        account_with(
            "acme-exotel",
            pb::Provider::Exotel,
            C::Exotel(pb::ExotelCredentials {
                account_sid: "acme1".into(),
                api_key: "acme-key".into(),
                api_token: exotel_token.into(),
            }),
            Some(pb::AccountOptions {
                options: Some(pb::account_options::Options::Exotel(pb::ExotelOptions {
                    region: pb::ExotelRegion::Singapore as i32,
                })),
                ..Default::default()
            }),
        ),
        account_with(
            "acme-whapi",
            pb::Provider::Whapi,
            C::Whapi(pb::WhapiCredentials { partner_token: whapi_token.into() }),
            Some(pb::AccountOptions {
                options: Some(pb::account_options::Options::Whapi(pb::WhapiOptions {
                    project_id: "sandbox-project".into(),
                    partner_name: "sandbox".into(),
                })),
                ..Default::default()
            }),
        ),
        account(
            "acme-digital99",
            pb::Provider::Digital99,
            C::Digital99(pb::Digital99Credentials {
                client_id: "acme-client".into(),
                client_secret: d99_secret.into(),
            }),
        ),
    ];
    for req in creds {
        accounts.create_account(with_key(req, &key)).await.expect("create account");
    }
    for id in ["acme-gupshup", "acme-exotel", "acme-whapi", "acme-digital99"] {
        let r = accounts
            .check_account(with_key(pb::CheckAccountRequest { name: format!("accounts/{id}") }, &key))
            .await
            .expect("check account")
            .into_inner();
        assert!(r.ok, "{id}: credentials refused: {r:?}");
    }
    use pb::create_onboarding_request::Request as R;
    let create = |account: &str, request: R| pb::CreateOnboardingRequest {
        account: format!("accounts/{account}"),
        reference: "crm-logs".into(),
        request_id: String::new(),
        onboarding_id: String::new(),
        request: Some(request),
    };
    let mut names = HashMap::new();
    for (provider, req) in [
        ("gupshup", gupshup_link("acme-gupshup", "SecretFree")),
        ("exotel", create("acme-exotel", R::Exotel(pb::ExotelLinkRequest {}))),
        (
            "whapi",
            create(
                "acme-whapi",
                R::Whapi(pb::WhapiChannelRequest { channel_name: "acme".into(), ..Default::default() }),
            ),
        ),
        (
            "digital99",
            create(
                "acme-digital99",
                R::Digital99(pb::Digital99LinkRequest {
                    phone: "+919812345678".into(),
                    business_name: "Acme".into(),
                    business_email: "ops@acme.test".into(),
                    display_name: "Acme".into(),
                    register_number: true,
                    verification_method: pb::VerificationMethod::Sms as i32,
                    ..Default::default()
                }),
            ),
        ),
    ] {
        let o = onboardings.create_onboarding(with_key(req, &key)).await.expect(provider).into_inner();
        names.insert(provider, o.name);
    }
    // Whapi: the customer scans the QR once it is fetched.
    wait_state(&channel, &key, &names["whapi"], pb::OnboardingState::AwaitingCustomer).await;
    let mut channels = pb::channel_service_client::ChannelServiceClient::new(channel.clone());
    let whapi = onboardings
        .get_onboarding(with_key(pb::GetOnboardingRequest { name: names["whapi"].clone() }, &key))
        .await
        .expect("get whapi onboarding")
        .into_inner();
    let Some(pb::onboarding::Details::Whapi(w)) = whapi.details else { panic!("no whapi details: {whapi:?}") };
    channels
        .get_connect_code(with_key(
            pb::GetConnectCodeRequest {
                name: format!("channels/{}", w.channel_id),
                method: Some(pb::get_connect_code_request::Method::Qr(pb::QrCodeRequest { size: 0 })),
            },
            &key,
        ))
        .await
        .expect("connect code");
    // 99digital: the owner reads the SMS code (the simulator's sandbox code) to us.
    wait_state(&channel, &key, &names["digital99"], pb::OnboardingState::AwaitingCustomer).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = onboardings
            .submit_verification_code(with_key(
                pb::SubmitVerificationCodeRequest { name: names["digital99"].clone(), code: "123456".into() },
                &key,
            ))
            .await;
        match r {
            Ok(_) => break,
            // The code step may not be waiting yet.
            Err(e) if e.code() == tonic::Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("submit code: {e:?}"),
        }
    }
    for provider in ["gupshup", "exotel", "whapi", "digital99"] {
        wait_state(&channel, &key, &names[provider], pb::OnboardingState::Live).await;
    }
    // Tokens a caller may read: returned by the RPC, never logged.
    let mut tokens = pb::token_service_client::TokenServiceClient::new(channel.clone());
    let mut issued = Vec::new();
    for provider in ["gupshup", "whapi"] {
        let t = tokens
            .get_app_token(with_key(pb::GetAppTokenRequest { name: names[provider].clone() }, &key))
            .await
            .expect("app token")
            .into_inner();
        assert!(t.token.len() >= 8, "{provider}: token too short to grep: {}", t.token.len());
        issued.push(t.token);
    }
    // The binary's metrics port shows every provider's calls (what `curl :9090/metrics` shows).
    let text = reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap();
    for provider in ["gupshup", "exotel", "whapi", "digital99"] {
        assert!(!samples(&text, m::PROVIDER_REQUESTS, &[("provider", provider)]).is_empty(), "{provider}");
    }
    drop(channel);
    let logs = server.stop();
    // The logs are the real thing: debug lines of provider calls on every provider.
    for class in ["gupshup.", "exotel.", "whapi.", "digital99."] {
        assert!(logs.contains(class), "no {class} provider call in the debug logs");
    }
    assert!(logs.contains("DEBUG"), "not at debug level");
    let mut secrets = vec![gupshup_secret, exotel_token, whapi_token, d99_secret, encryption_key, dev_key];
    secrets.extend(issued.iter().map(String::as_str));
    for s in secrets {
        assert!(!logs.contains(s), "a secret ({}...) is in the logs", &s[..4]);
    }
}

// ----- traces -----

mod collector {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::trace::v1::Span;

    /// An in-process OTLP/gRPC collector that keeps every span it receives.
    #[derive(Clone, Default)]
    pub(crate) struct Collector {
        pub spans: Arc<Mutex<Vec<Span>>>,
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.spans.lock().unwrap();
            for rs in req.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    /// Starts it on a free port; returns its address.
    pub(super) async fn start(c: Collector) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(c))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }
}

fn attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    })
}

#[tokio::test]
async fn otlp_export_continues_the_callers_trace_and_step_spans_carry_onboarding_and_provider() {
    let c = collector::Collector::default();
    let addr = collector::start(c.clone()).await;
    let config = format!("{FAST_ENGINE}[sandbox]\nenabled = true\n[telemetry]\notlp_endpoint = \"http://{addr}\"\n");
    let server = Server::start(&config, &[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    let channel = server.channel().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut req = with_key(gupshup_link("sandbox-gupshup", "TracedShop"), &server.key);
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{parent_id}-01").parse().unwrap());
    let o = pb::onboarding_service_client::OnboardingServiceClient::new(channel.clone())
        .create_onboarding(req)
        .await
        .expect("create")
        .into_inner();
    let id = o.name.trim_start_matches("onboardings/").to_string();
    wait_state(&channel, &server.key, &o.name, pb::OnboardingState::Live).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (call, step) = loop {
        {
            let spans = c.spans.lock().unwrap();
            let call = spans
                .iter()
                .find(|s| hex::encode(&s.trace_id) == trace_id && s.name == "grpc")
                .map(|s| (hex::encode(&s.parent_span_id), attr(s, "method")));
            let step = spans
                .iter()
                .find(|s| s.name == "step" && attr(s, "onboarding").as_deref() == Some(id.as_str()))
                .map(|s| attr(s, "provider"));
            if let (Some(call), Some(step)) = (call.clone(), step.clone()) {
                break (call, step);
            }
            assert!(
                Instant::now() < deadline,
                "spans not exported within 60 s (call: {call:?}, step: {step:?}, {} spans)",
                spans.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(call.0, parent_id, "the call's span is a child of the caller's span");
    assert_eq!(call.1.as_deref(), Some("/wa.onboard.v1.OnboardingService/CreateOnboarding"));
    assert_eq!(step.as_deref(), Some("gupshup"));
    server.stop();
}

#[tokio::test]
async fn an_unreachable_otlp_endpoint_does_not_stop_the_server_and_a_malformed_one_is_a_config_error() {
    // Nothing listens on port 9 (discard) here: exports fail, the service works.
    let config = format!("{FAST_ENGINE}[telemetry]\notlp_endpoint = \"http://127.0.0.1:9\"\n");
    let server = Server::start(&config, &[]);
    let channel = server.channel().await;
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(channel);
    providers.list_providers(with_key(pb::ListProvidersRequest {}, &server.key)).await.expect("serves");
    let logs = server.stop();
    assert!(logs.contains("Exporting traces over OTLP"), "export was not enabled:\n{logs}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[telemetry]\notlp_endpoint = \"collector:4317\"\n").unwrap();
    let out = bin().arg("--config").arg(&cfg).arg("--data-dir").arg(dir.path()).arg("serve").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("telemetry.otlp_endpoint"));
}

// ----- API keys without a restart -----

#[tokio::test]
async fn keys_from_the_config_file_and_the_cli_work_and_are_revoked_while_the_server_runs() {
    let gen_key = || {
        let out = bin().args(["tenant", "gen-key"]).output().expect("gen-key");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).expect("gen-key output")
        };
        (field("key "), field("key_sha256 "))
    };
    let (key_a, hash_a) = gen_key();
    let (key_b, _) = gen_key();
    assert!(key_a.starts_with("wao_") && hash_a.len() == 64);
    let keys_config = |entries: &str| format!("{FAST_ENGINE}[auth]\nreload_secs = 1\nkeys = [{entries}]\n");
    let server = Server::start(&keys_config(&format!("{{ tenant = \"billing\", key_sha256 = \"{hash_a}\" }}")), &[]);
    let channel = server.channel().await;
    let list = |key: String| {
        let channel = channel.clone();
        async move {
            pb::account_service_client::AccountServiceClient::new(channel)
                .list_accounts(with_key(pb::ListAccountsRequest::default(), &key))
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    let until = |want: Result<(), tonic::Code>, key: String, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = list(key.clone()).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still {got:?} after 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(list(key_a.clone()).await, Ok(()), "a configured key works from the start");
    assert_eq!(list(key_b.clone()).await, Err(tonic::Code::Unauthenticated));
    // Edit the file: B (plain, e.g. from a Secret) added, A removed.
    let cfg = server.dir.path().join("wa-onboard.toml");
    std::fs::write(&cfg, keys_config(&format!("{{ tenant = \"billing\", key = \"{key_b}\" }}"))).unwrap();
    until(Ok(()), key_b.clone(), "added key").await;
    until(Err(tonic::Code::Unauthenticated), key_a.clone(), "removed key").await;
    // A broken edit keeps the current keys.
    std::fs::write(&cfg, "[auth]\nkeys = \"not a list\"\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(list(key_b.clone()).await, Ok(()), "a broken config file dropped the keys");

    // The CLI on the same store: a new tenant's key works at once, revoked within seconds.
    let data = server.dir.path().to_path_buf();
    let out = bin().arg("--data-dir").arg(&data).args(["tenant", "create", "crm"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let cli_key = text.split_whitespace().find(|w| w.starts_with("wao_")).expect("key printed").to_string();
    let key_id = text.lines().find(|l| l.starts_with("API key")).and_then(|l| l.split_whitespace().nth(2)).unwrap();
    until(Ok(()), cli_key.clone(), "CLI key").await;
    let out = bin().arg("--data-dir").arg(&data).args(["tenant", "revoke-key", key_id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until(Err(tonic::Code::Unauthenticated), cli_key, "revoked CLI key").await;
    let logs = server.stop();
    for k in [&key_a, &key_b] {
        assert!(!logs.contains(k.as_str()), "an API key is in the logs");
    }
}
