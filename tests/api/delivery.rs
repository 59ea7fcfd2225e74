//! Outbound delivery end to end (issue 19): a destination created over gRPC, events written
//! by the server's store, the server's worker sending them to a local axum receiver (signed,
//! in order, retried) and to the real NATS JetStream on 127.0.0.1:4222.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tonic::Code;
use wa_onboard::delivery::signing::{SigningSecret, read_headers, verify};
use wa_onboard::domain::{OnboardingState, Secret, now_ms};
use wa_onboard::grpc::pb;

use crate::helpers::*;

fn deliveries(app: &TestApp) -> pb::delivery_service_client::DeliveryServiceClient<tonic::transport::Channel> {
    pb::delivery_service_client::DeliveryServiceClient::new(app.channel.clone())
}

/// A server whose worker polls fast, retries after a second, and may reach loopback.
async fn delivery_app() -> TestApp {
    spawn_with(|s| {
        s.delivery.allow_loopback = Some(true);
        s.delivery.tick_ms = 50;
        s.delivery.retry_schedule_secs = vec![1, 1, 1];
        s.delivery.nats_urls = vec![nats_url()];
    })
    .await
}

/// One request the receiver saw: its headers and body.
type Request = (HeaderMap, Vec<u8>);

/// What the receiver saw.
#[derive(Clone, Default)]
struct Received {
    requests: Arc<Mutex<Vec<Request>>>,
    /// Requests still to refuse with 500 (the first ones).
    refuse: Arc<Mutex<u32>>,
}

async fn hook(State(r): State<Received>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let mut refuse = r.refuse.lock().expect("lock");
    r.requests.lock().expect("lock").push((headers, body.to_vec()));
    if *refuse > 0 {
        *refuse -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

async fn receiver(refuse: u32) -> (String, Received) {
    let received = Received { refuse: Arc::new(Mutex::new(refuse)), ..Default::default() };
    let app = axum::Router::new().route("/hook", post(hook)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}

fn webhook_destination(url: &str) -> pb::CreateDestinationRequest {
    pb::CreateDestinationRequest {
        destination: Some(pb::Destination {
            display_name: "crm".into(),
            sink: Some(pb::destination::Sink::Webhook(pb::WebhookSink {
                url: url.into(),
                headers: [("x-crm".to_string(), "k1".to_string())].into(),
                header_names: vec![],
            })),
            ..Default::default()
        }),
    }
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn webhook_destination_receives_every_event_in_order_signed() {
    let app = delivery_app().await;
    // The first two attempts fail: the failing event holds back the later ones.
    let (url, received) = receiver(2).await;
    let created = deliveries(&app).create_destination(app.req(webhook_destination(&url))).await.expect("create");
    let created = created.into_inner();
    let destination = created.destination.expect("destination");
    assert!(created.signing_secret.starts_with("whsec_"));
    let Some(pb::destination::Sink::Webhook(w)) = &destination.sink else { panic!("webhook sink") };
    assert_eq!(w.header_names, vec!["x-crm".to_string()]);
    assert!(w.headers.is_empty(), "header values are never returned");

    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.expect("account");
    let id = app.insert_onboarding("acme", "crm-42").await;
    app.change_state(&id, OnboardingState::Provisioning, "APPROVED").await;
    app.change_state(&id, OnboardingState::Live, "LIVE").await;

    // 3 events (created, two state changes), 2 refusals.
    wait_for("five requests", Duration::from_secs(30), || received.requests.lock().expect("lock").len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = received.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 5, "no more than one per event after the retries");
    let secret = SigningSecret::parse(&Secret::new(created.signing_secret.clone())).expect("secret");
    let mut ids = Vec::new();
    for (headers, body) in &requests {
        let signed = read_headers(|n| headers.get(n).and_then(|v| v.to_str().ok())).expect("signing headers");
        verify(&[&secret], &signed, body, now_ms() / 1000).expect("valid signature");
        assert_eq!(headers.get("x-crm").and_then(|v| v.to_str().ok()), Some("k1"));
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/cloudevents+json; charset=utf-8")
        );
        let event: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], signed.id.as_str(), "webhook-id is the event id");
        assert_eq!(event["subject"], format!("onboardings/{}", id.name()));
        assert_eq!(event["reference"], "crm-42");
        assert_eq!(event["data"]["onboarding"], format!("onboardings/{}", id.name()));
        ids.push((signed.id.clone(), event["data"]["sequence"].as_str().expect("sequence").to_string()));
    }
    // The first event three times (two refusals, then accepted) with one id, then the rest
    // in order.
    let sequences: Vec<&str> = ids.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(sequences, ["1", "1", "1", "2", "3"]);
    assert!(ids[0].0 == ids[1].0 && ids[1].0 == ids[2].0, "retries carry the same webhook-id");
    let last: serde_json::Value = serde_json::from_slice(&requests[4].1).expect("json");
    assert_eq!(last["type"], "wa.onboard.onboarding.state_changed");
    assert_eq!(last["data"]["state"], "ONBOARDING_STATE_LIVE");

    let listed = deliveries(&app)
        .list_deliveries(app.req(pb::ListDeliveriesRequest { parent: destination.name.clone(), ..Default::default() }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.deliveries.len(), 3);
    assert!(listed.deliveries.iter().all(|d| d.state == pb::DeliveryState::Delivered as i32));
    assert_eq!(listed.deliveries[0].attempts, 3);
    assert_eq!(listed.deliveries[0].last_http_status, 204);

    // A replay sends the same ids again.
    let replay = deliveries(&app)
        .redeliver_events(app.req(pb::RedeliverEventsRequest {
            parent: destination.name.clone(),
            start: Some(pb::redeliver_events_request::Start::FromSequence(pb::RedeliverFromSequence {
                onboarding: format!("onboardings/{}", id.name()),
                sequence: 2,
            })),
            ..Default::default()
        }))
        .await
        .expect("redeliver")
        .into_inner();
    assert_eq!(replay.queued, 2);
    wait_for("the replay", Duration::from_secs(30), || received.requests.lock().expect("lock").len() >= 7).await;
    let again = received.requests.lock().expect("lock").clone();
    let replayed: Vec<String> = again[5..]
        .iter()
        .map(|(h, _)| h.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string())
        .collect();
    assert_eq!(replayed, [ids[3].0.clone(), ids[4].0.clone()]);

    // Another tenant sees nothing of it.
    let other = app.other_tenant("other").await;
    let err = deliveries(&app)
        .get_destination(with_key(pb::GetDestinationRequest { name: destination.name.clone() }, other.expose()))
        .await
        .expect_err("another tenant's");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn destinations_are_validated_updated_and_rotated() {
    let app = delivery_app().await;
    let mut client = deliveries(&app);
    // Link-local / metadata addresses are refused whatever the configuration.
    let err = client
        .create_destination(app.req(webhook_destination("http://169.254.169.254/latest")))
        .await
        .expect_err("metadata address");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), ["destination.webhook.url"]);
    let err = client
        .create_destination(app.req(pb::CreateDestinationRequest {
            destination: Some(pb::Destination {
                sink: Some(pb::destination::Sink::Nats(pb::NatsSink { subject: "wa.{nope}".into() })),
                ..Default::default()
            }),
        }))
        .await
        .expect_err("bad placeholder");
    assert_eq!(err.code(), Code::InvalidArgument);

    let created = client
        .create_destination(app.req(webhook_destination("https://example.com/hook")))
        .await
        .expect("create")
        .into_inner();
    let name = created.destination.expect("destination").name;
    let updated = client
        .update_destination(app.req(pb::UpdateDestinationRequest {
            destination: Some(pb::Destination {
                name: name.clone(),
                display_name: "renamed".into(),
                enabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into(), "enabled".into()] }),
        }))
        .await
        .expect("update")
        .into_inner();
    assert_eq!((updated.display_name.as_str(), updated.enabled), ("renamed", false));
    assert_eq!(updated.disabled_reason, "disabled by the caller");
    assert!(updated.disable_time.is_some());
    assert_eq!(updated.disabled_http_status, 0);

    let rotated = client
        .rotate_destination_secret(app.req(pb::RotateDestinationSecretRequest {
            name: name.clone(),
            overlap: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        }))
        .await
        .expect("rotate")
        .into_inner();
    assert_ne!(rotated.signing_secret, created.signing_secret);
    assert!(rotated.destination.expect("destination").previous_secret_expire_time.is_some());

    let listed = client.list_destinations(app.req(pb::ListDestinationsRequest::default())).await.expect("list");
    assert_eq!(listed.into_inner().destinations.len(), 1);
    client.delete_destination(app.req(pb::DeleteDestinationRequest { name: name.clone() })).await.expect("delete");
    let err = client.get_destination(app.req(pb::GetDestinationRequest { name })).await.expect_err("deleted");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn nats_destination_receives_on_its_subject_with_the_event_id() {
    use futures::StreamExt;
    let app = delivery_app().await;
    let nats = async_nats::connect(nats_url()).await.expect("NATS (WA_ONBOARD_TEST_NATS_URL) must be reachable");
    let js = async_nats::jetstream::new(nats);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let subject_root = format!("waapi{run}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: format!("WAAPI{run}"),
        subjects: vec![format!("{subject_root}.>")],
        ..Default::default()
    })
    .await
    .expect("stream");
    let created = deliveries(&app)
        .create_destination(app.req(pb::CreateDestinationRequest {
            destination: Some(pb::Destination {
                sink: Some(pb::destination::Sink::Nats(pb::NatsSink {
                    subject: format!("{subject_root}.{{tenant}}.{{provider}}.{{type}}"),
                })),
                ..Default::default()
            }),
        }))
        .await
        .expect("create");
    assert!(created.into_inner().destination.is_some());
    // Before the events: a new consumer delivers the stream from its start.
    let consumer = js
        .get_stream(format!("WAAPI{run}"))
        .await
        .expect("stream")
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.expect("account");
    let id = app.insert_onboarding("acme", "r").await;
    app.change_state(&id, OnboardingState::Live, "LIVE").await;
    let mut messages = consumer.messages().await.expect("messages");
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .expect("message in time")
            .expect("open")
            .expect("message");
        let msg_id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string());
        let event: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        assert_eq!(msg_id.as_deref(), event["id"].as_str(), "Nats-Msg-Id is the event id");
        got.push((m.subject.to_string(), event["data"]["sequence"].as_str().unwrap_or_default().to_string()));
        m.ack().await.expect("ack");
    }
    assert!(got[0].0.ends_with(".gupshup.created"), "{got:?}");
    assert!(got[1].0.ends_with(".gupshup.state_changed"), "{got:?}");
    assert_eq!((got[0].1.as_str(), got[1].1.as_str()), ("1", "2"));

    // A webhook destination answering 410 is disabled; the NATS destination gets the notice
    // on `{type}` = destination_disabled, `{provider}` = none, with its event id.
    let gone_url = answering(StatusCode::GONE).await;
    let gone = deliveries(&app).create_destination(app.req(webhook_destination(&gone_url))).await.expect("create");
    let gone = gone.into_inner().destination.expect("destination").name;
    app.insert_onboarding("acme", "r2").await;
    let mut seen = 0;
    let (subject, msg_id, notice) = loop {
        seen += 1;
        assert!(seen <= 5, "no notice among the next messages");
        let m = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .expect("message in time")
            .expect("open")
            .expect("message");
        m.ack().await.expect("ack");
        let event: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        if event["type"] == "wa.onboard.destination.disabled" {
            let msg_id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string());
            break (m.subject.to_string(), msg_id, event);
        }
    };
    assert!(subject.ends_with(".none.destination_disabled"), "{subject}");
    assert_eq!(msg_id.as_deref(), notice["id"].as_str(), "Nats-Msg-Id is the notice's event id");
    assert_eq!(notice["subject"], gone.as_str());
    assert_eq!(notice["data"]["reason"], "DISABLED_REASON_GONE");
    let d = deliveries(&app).get_destination(app.req(pb::GetDestinationRequest { name: gone })).await.expect("get");
    assert_eq!(notice["id"], d.into_inner().disabled_event_id.as_str());
    js.delete_stream(format!("WAAPI{run}")).await.expect("delete stream");
}

#[tokio::test]
async fn a_gone_receiver_disables_its_destination() {
    let app = delivery_app().await;
    let url = answering(StatusCode::GONE).await;
    let created = deliveries(&app).create_destination(app.req(webhook_destination(&url))).await.expect("create");
    let name = created.into_inner().destination.expect("destination").name;
    // Another destination asks for the notices only; a third names event types without it.
    let (watch_url, watched) = receiver(0).await;
    let mut watcher = webhook_destination(&watch_url);
    let filter = |types: &[&str]| {
        Some(pb::DeliveryFilter { event_types: types.iter().map(|t| t.to_string()).collect(), ..Default::default() })
    };
    watcher.destination.as_mut().expect("destination").filter = filter(&["destination_disabled"]);
    let watcher = deliveries(&app).create_destination(app.req(watcher)).await.expect("create watcher").into_inner();
    assert_eq!(watcher.destination.as_ref().expect("d").filter, filter(&["destination_disabled"]));
    let (other_url, others) = receiver(0).await;
    let mut other = webhook_destination(&other_url);
    other.destination.as_mut().expect("destination").filter = filter(&["state_changed"]);
    deliveries(&app).create_destination(app.req(other)).await.expect("create other");
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.expect("account");
    app.insert_onboarding("acme", "r").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let d = loop {
        let d = deliveries(&app)
            .get_destination(app.req(pb::GetDestinationRequest { name: name.clone() }))
            .await
            .expect("get")
            .into_inner();
        if !d.enabled {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "not disabled in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(d.disabled_reason.contains("410"), "{}", d.disabled_reason);
    assert_eq!(d.disabled_reason_code, pb::DisabledReason::Gone as i32);
    assert_eq!(d.disabled_http_status, 410);
    assert!(d.disable_time.is_some(), "a disabled destination says when");
    assert!(d.disabled_event_id.starts_with("notices/"), "{}", d.disabled_event_id);

    // The watcher gets the notice, signed with its own secret, once; the other nothing.
    wait_for("the notice", Duration::from_secs(30), || !watched.requests.lock().expect("lock").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = watched.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1, "one notice, no onboarding event");
    let (headers, body) = &requests[0];
    let secret = SigningSecret::parse(&Secret::new(watcher.signing_secret.clone())).expect("secret");
    let signed = read_headers(|n| headers.get(n).and_then(|v| v.to_str().ok())).expect("signing headers");
    verify(&[&secret], &signed, body, now_ms() / 1000).expect("valid signature");
    let event: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(signed.id, d.disabled_event_id, "webhook-id is the notice's event id");
    assert_eq!(event["id"], d.disabled_event_id.as_str());
    assert_eq!(event["type"], "wa.onboard.destination.disabled");
    assert_eq!(event["subject"], name.as_str());
    assert_eq!(event["data"]["destination"], name.as_str());
    assert_eq!(event["data"]["displayName"], "crm");
    assert_eq!(event["data"]["reason"], "DISABLED_REASON_GONE");
    assert_eq!(event["data"]["httpStatus"], 410);
    assert_eq!(event["data"]["message"], d.disabled_reason.as_str());
    let at = d.disable_time.expect("disable time");
    assert_eq!(event["data"]["disableTime"], at.to_string().as_str());
    assert!(others.requests.lock().expect("lock").is_empty(), "its filter does not name destination_disabled");
    // The event stays pending, to go out if the destination is enabled again.
    let listed = deliveries(&app)
        .list_deliveries(app.req(pb::ListDeliveriesRequest { parent: name, ..Default::default() }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.deliveries.len(), 1);
    assert_eq!(listed.deliveries[0].state, pb::DeliveryState::Pending as i32);
    assert_eq!(listed.deliveries[0].last_http_status, 410);
}

/// A receiver answering `status` to everything, at `/hook`.
async fn answering(status: StatusCode) -> String {
    let app = axum::Router::new().route("/hook", post(move || async move { status }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn listed(app: &TestApp, parent: &str) -> Vec<pb::Delivery> {
    deliveries(app)
        .list_deliveries(app.req(pb::ListDeliveriesRequest { parent: parent.into(), ..Default::default() }))
        .await
        .expect("list")
        .into_inner()
        .deliveries
}

#[tokio::test]
async fn the_last_failed_attempt_dead_letters_and_the_next_event_goes_on() {
    let app = spawn_with(|s| {
        s.delivery.allow_loopback = Some(true);
        s.delivery.tick_ms = 50;
        // One immediate retry, then the dead letter.
        s.delivery.retry_schedule_secs = vec![0];
    })
    .await;
    let url = answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let created = deliveries(&app).create_destination(app.req(webhook_destination(&url))).await.expect("create");
    let name = created.into_inner().destination.expect("destination").name;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.expect("account");
    let id = app.insert_onboarding("acme", "r").await;
    app.change_state(&id, OnboardingState::Provisioning, "APPROVED").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ds = listed(&app, &name).await;
        if ds.len() == 2 && ds.iter().all(|d| d.state == pb::DeliveryState::Dead as i32) {
            assert!(ds.iter().all(|d| d.attempts == 2 && d.last_http_status == 503), "{ds:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered in time: {ds:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = deliveries(&app)
        .list_deliveries(app.req(pb::ListDeliveriesRequest {
            parent: name.clone(),
            state: pb::DeliveryState::Dead as i32,
            ..Default::default()
        }))
        .await
        .expect("list dead")
        .into_inner();
    assert_eq!(dead.deliveries.len(), 2);
    // Still enabled: failing for less than disable_after.
    let d = deliveries(&app).get_destination(app.req(pb::GetDestinationRequest { name })).await.expect("get");
    let d = d.into_inner();
    assert!(d.enabled);
    assert!(d.failing_since_time.is_some());
}

#[tokio::test]
async fn a_destination_failing_too_long_is_disabled_with_the_reason() {
    let app = spawn_with(|s| {
        s.delivery.allow_loopback = Some(true);
        s.delivery.tick_ms = 50;
        s.delivery.disable_after_secs = 0;
    })
    .await;
    let url = answering(StatusCode::INTERNAL_SERVER_ERROR).await;
    let created = deliveries(&app).create_destination(app.req(webhook_destination(&url))).await.expect("create");
    let name = created.into_inner().destination.expect("destination").name;
    // A healthy destination with no filter: it gets the onboarding event and the notice.
    let (watch_url, watched) = receiver(0).await;
    deliveries(&app).create_destination(app.req(webhook_destination(&watch_url))).await.expect("create watcher");
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.expect("account");
    app.insert_onboarding("acme", "r").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let d = deliveries(&app)
            .get_destination(app.req(pb::GetDestinationRequest { name: name.clone() }))
            .await
            .expect("get")
            .into_inner();
        if !d.enabled {
            assert!(d.disabled_reason.contains("every attempt failed"), "{}", d.disabled_reason);
            assert!(d.disabled_reason.contains("HTTP 500"), "{}", d.disabled_reason);
            assert_eq!(d.disabled_http_status, 500);
            assert_eq!(d.disabled_reason_code, pb::DisabledReason::FailingTooLong as i32);
            let notice_id = d.disabled_event_id.clone();
            assert!(notice_id.starts_with("notices/"), "{notice_id}");
            let of_notice = |r: &Received| {
                let requests = r.requests.lock().expect("lock");
                let bodies: Vec<serde_json::Value> =
                    requests.iter().filter_map(|(_, b)| serde_json::from_slice(b).ok()).collect();
                bodies.into_iter().filter(|e| e["id"] == notice_id.as_str()).collect::<Vec<_>>()
            };
            wait_for("the notice", Duration::from_secs(30), || !of_notice(&watched).is_empty()).await;
            let notice = of_notice(&watched).remove(0);
            assert_eq!(notice["type"], "wa.onboard.destination.disabled");
            assert_eq!(notice["data"]["reason"], "DISABLED_REASON_FAILING_TOO_LONG");
            assert_eq!(notice["data"]["httpStatus"], 500);
            let (since, at) = (d.failing_since_time.expect("failing since"), d.disable_time.expect("disabled at"));
            assert!((since.seconds, since.nanos) <= (at.seconds, at.nanos), "failing since {since} after disable {at}");
            // Enabled again by the caller: the disable's fields are cleared.
            let enabled = deliveries(&app)
                .update_destination(app.req(pb::UpdateDestinationRequest {
                    destination: Some(pb::Destination { name: name.clone(), enabled: true, ..Default::default() }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
                }))
                .await
                .expect("enable")
                .into_inner();
            assert!(enabled.enabled && enabled.disable_time.is_none() && enabled.disabled_http_status == 0);
            assert!(enabled.disabled_reason.is_empty());
            assert_eq!(enabled.disabled_reason_code, pb::DisabledReason::Unspecified as i32);
            assert!(enabled.disabled_event_id.is_empty());
            // Disabled by the caller: typed, and no notice.
            let off = deliveries(&app)
                .update_destination(app.req(pb::UpdateDestinationRequest {
                    destination: Some(pb::Destination { name: name.clone(), enabled: false, ..Default::default() }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
                }))
                .await
                .expect("disable")
                .into_inner();
            assert_eq!(off.disabled_reason_code, pb::DisabledReason::ByCaller as i32);
            assert!(off.disabled_event_id.is_empty() && off.disable_time.is_some());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not disabled in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ds = listed(&app, &name).await;
    assert_eq!(ds[0].state, pb::DeliveryState::Pending as i32, "kept for a re-enable");
}

/// A replay bounded by `max_events` stops with a token; the token's call queues the rest;
/// a token does not continue another replay.
#[tokio::test]
async fn a_replay_larger_than_one_call_continues_with_its_token() {
    let app = delivery_app().await;
    let (url, received) = receiver(0).await;
    let created = deliveries(&app).create_destination(app.req(webhook_destination(&url))).await.expect("create");
    let name = created.into_inner().destination.expect("destination").name;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.expect("account");
    let a = app.insert_onboarding("acme", "a").await;
    app.change_state(&a, OnboardingState::Provisioning, "APPROVED").await;
    let b = app.insert_onboarding("acme", "b").await;
    app.change_state(&b, OnboardingState::Provisioning, "APPROVED").await;
    app.change_state(&b, OnboardingState::Live, "LIVE").await;
    wait_for("five events", Duration::from_secs(30), || received.requests.lock().expect("lock").len() >= 5).await;

    let from_start = Some(pb::redeliver_events_request::Start::StartTime(prost_types::Timestamp::default()));
    let call = |page_token: String| pb::RedeliverEventsRequest {
        parent: name.clone(),
        start: from_start.clone(),
        max_events: 2,
        page_token,
    };
    let mut tokens = Vec::new();
    let mut queued = Vec::new();
    let mut token = String::new();
    loop {
        let r = deliveries(&app).redeliver_events(app.req(call(token.clone()))).await.expect("replay").into_inner();
        queued.push(r.queued);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
        tokens.push(token.clone());
        assert!(tokens.len() < 10, "the replay ends");
    }
    assert_eq!(queued, [2, 2, 1], "five events, two per call");
    wait_for("the replay", Duration::from_secs(30), || received.requests.lock().expect("lock").len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = received.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 10, "each event once more");
    let ids = |rs: &[Request]| {
        let mut ids: Vec<String> = rs
            .iter()
            .map(|(h, _)| h.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&requests[..5]), ids(&requests[5..]), "the same ids again");

    // Bound to its replay: another start refuses the token.
    let other = pb::RedeliverEventsRequest {
        start: Some(pb::redeliver_events_request::Start::FromSequence(pb::RedeliverFromSequence {
            onboarding: format!("onboardings/{}", a.name()),
            sequence: 1,
        })),
        ..call(tokens[0].clone())
    };
    let err = deliveries(&app).redeliver_events(app.req(other)).await.expect_err("another replay's token");
    assert_eq!(err.code(), Code::InvalidArgument);
    let too_many = pb::RedeliverEventsRequest { max_events: 100_001, ..call(String::new()) };
    let err = deliveries(&app).redeliver_events(app.req(too_many)).await.expect_err("too many");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Two replicas on one PostgreSQL database both send (leases keep them apart); one stops
/// half-way; every event arrives, the first acceptance of each onboarding's events is in
/// sequence order, and a repeated event carries its id again.
#[tokio::test]
async fn two_replicas_on_postgres_deliver_everything_in_order() {
    let Some(url) = pg_schema().await else { return };
    let key = wa_onboard::crypto::Cipher::generate_key().expose().to_string();
    let replica = |url: String, key: String| {
        move |s: &mut wa_onboard::config::Settings| {
            s.database.url = url;
            s.security.encryption_key = key;
            s.delivery.allow_loopback = Some(true);
            s.delivery.tick_ms = 20;
            s.delivery.retry_schedule_secs = vec![0, 0, 0, 0, 0, 0, 0, 0];
        }
    };
    let mut a = spawn_with(replica(url.clone(), key.clone())).await;
    let b = spawn_with(replica(url.clone(), key.clone())).await;
    // Every third request refused; what was accepted is kept, under the counter's lock.
    let accepted_log: Arc<Mutex<(u32, Vec<Request>)>> = Arc::default();
    let flaky = {
        let log = accepted_log.clone();
        axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let mut log = log.lock().expect("lock");
                    log.0 += 1;
                    if log.0.is_multiple_of(3) {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    log.1.push((headers, body.to_vec()));
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let flaky_url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, flaky).await });

    deliveries(&a).create_destination(a.req(webhook_destination(&flaky_url))).await.expect("create");
    a.accounts().create_account(a.req(gupshup_account("acme", "s"))).await.expect("account");
    let mut ids = Vec::new();
    for r in ["one", "two", "three"] {
        let id = a.insert_onboarding("acme", r).await;
        for state in [OnboardingState::Provisioning, OnboardingState::PendingReview, OnboardingState::Live] {
            a.change_state(&id, state, "x").await;
        }
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.shutdown().await;

    // 3 onboardings x 4 events, each accepted once at least; the first acceptance of each.
    let firsts = |accepted: &[Request]| -> Vec<(String, String)> {
        let mut seen: Vec<(String, String)> = Vec::new();
        for (h, body) in accepted {
            let event: serde_json::Value = serde_json::from_slice(body).expect("json");
            let id = h.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            assert_eq!(event["id"], id.as_str(), "a repeat carries the same id");
            if !seen.iter().any(|(s, _)| *s == id) {
                seen.push((id, event["data"]["onboarding"].as_str().unwrap_or_default().to_string()));
            }
        }
        seen
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let firsts = loop {
        let accepted = accepted_log.lock().expect("lock").1.clone();
        let f = firsts(&accepted);
        if f.len() == 12 {
            break f;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all delivered: {} accepted", accepted.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for id in &ids {
        let name = format!("onboardings/{}", id.name());
        let order: Vec<i64> = firsts
            .iter()
            .filter(|(_, o)| *o == name)
            .map(|(e, _)| e.rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(0))
            .collect();
        assert_eq!(order, [1, 2, 3, 4], "{name}");
    }
    drop(b);
    drop_pg(&url).await;
}

/// The NATS server of the tests: `WA_ONBOARD_TEST_NATS_URL` (scripts/test sets and checks it),
/// else the one these machines run.
fn nats_url() -> String {
    std::env::var("WA_ONBOARD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}
