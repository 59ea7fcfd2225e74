//! Transport attacks (issue 16 items 2, 3, 9): streams whose client never opens its HTTP/2
//! flow-control window, floods of idle or half-sent connections to the HTTP ports, and streams
//! opened with a key that is revoked afterwards.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wa_onboard::domain::OnboardingState;
use wa_onboard::grpc::pb;

use crate::common::{table, write_fragment};
use crate::helpers::*;

/// A raw HTTP/2 connection (the `h2` crate answers PINGs by itself and, since the test never
/// calls `release_capacity`, never sends a WINDOW_UPDATE).
async fn h2_connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::Builder::new().handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One gRPC message frame: uncompressed flag, big-endian length, the message.
fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// Sends `WatchOnboarding(name, after 0)` by hand on `send`; returns the response future.
async fn raw_watch(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    key: &str,
    name: &str,
) -> Result<h2::client::ResponseFuture, h2::Error> {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/wa.onboard.v1.OnboardingService/WatchOnboarding"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .expect("request");
    let ready = send.clone().ready().await?;
    *send = ready;
    let (resp, mut body) = send.send_request(req, false)?;
    body.send_data(grpc_frame(&pb::WatchOnboardingRequest { name: name.into(), after_sequence: 0 }), true)?;
    Ok(resp)
}

/// How long a probe took, or `None` when it failed or took longer than `limit`.
async fn timed<T, E>(limit: Duration, f: impl std::future::Future<Output = Result<T, E>>) -> Option<Duration> {
    let t = Instant::now();
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(_)) => Some(t.elapsed()),
        _ => None,
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Item 2: 8 connections x 10 `WatchOnboarding` streams (scaled down from 20 x 10) on an
/// onboarding with 1,200 events, from a client that never sends WINDOW_UPDATE. Before the fix
/// each blocked stream kept the store read it was in the middle of (and its pooled
/// connection): Health went NOT_SERVING and every tenant's calls failed UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_never_open_their_window_do_not_take_the_service_down() {
    const CONNS: usize = 8;
    const PER_CONN: usize = 10;
    const EVENTS: usize = 1200;
    let app = spawn_app().await;
    let addr = app.running().grpc_addr;
    let id = app.insert_onboarding("acct", "blocked-window").await;
    for i in 0..EVENTS {
        let state = if i % 2 == 0 { OnboardingState::Provisioning } else { OnboardingState::Pending };
        app.change_state(&id, state, "provider status long enough to make every event some bytes").await;
    }
    let other = app.other_tenant("bystander").await;
    let name = format!("onboardings/{id}");

    let rss_before = crate::common::rss_mib();
    // The flood: streams opened, responses awaited (headers), their data never read.
    let (mut conns, mut responses) = (Vec::new(), Vec::new());
    let mut opened = 0;
    for _ in 0..CONNS {
        let mut send = h2_connect(addr).await;
        for _ in 0..PER_CONN {
            if let Ok(resp) = raw_watch(&mut send, addr, app.key.expose(), &name).await {
                responses.push(resp);
                opened += 1;
            }
        }
        conns.push(send);
    }
    let mut answered = 0;
    let mut bodies = Vec::new();
    for r in responses {
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), r).await {
            answered += 1;
            bodies.push(resp.into_body());
        }
    }
    // Let every stream fill its window and block.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_blocked = crate::common::rss_mib();

    // Probes, on a fresh connection, over several seconds (longer than the store's 5 s pool
    // wait would allow a stuck pool to pass).
    let probe = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("probe connects");
    let mut health = HealthClient::new(probe.clone());
    let mut onboardings = pb::onboarding_service_client::OnboardingServiceClient::new(probe);
    let limit = Duration::from_secs(3);
    let (mut ok, mut total, mut worst) = (0, 0, Duration::ZERO);
    let mut serving = true;
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let h = health.check(HealthCheckRequest { service: String::new() }).await;
        serving &= h.is_ok_and(|r| {
            r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        });
        for d in [
            timed(limit, onboardings.list_onboardings(with_key(pb::ListOnboardingsRequest::default(), other.expose())))
                .await,
            timed(
                limit,
                onboardings.list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
                    name: name.clone(),
                    page_size: 10,
                    page_token: String::new(),
                })),
            )
            .await,
        ] {
            total += 1;
            if let Some(d) = d {
                ok += 1;
                worst = worst.max(d);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    write_fragment(
        "42-hostile-blocked-streams.md",
        &format!(
            "### Streams that never open their flow-control window\n\n{CONNS} HTTP/2 connections x {PER_CONN} \
             `WatchOnboarding` streams on an onboarding with {EVENTS} events, from a client that answers PINGs \
             but never sends WINDOW_UPDATE; meanwhile another tenant and the owner probe the service on a fresh \
             connection for 7 s.\n\n{}",
            table(&[
                ("streams opened / answered", format!("{opened} / {answered}")),
                ("Health SERVING throughout", serving.to_string()),
                ("probe calls answered within 3 s", format!("{ok} / {total}")),
                ("slowest probe call", ms(worst)),
                (
                    "RSS growth with every stream blocked (test process, tests run alongside)",
                    format!("{:.1} MiB", rss_blocked - rss_before),
                ),
            ])
        ),
    );
    assert!(answered > 0, "the flood opened no stream");
    assert!(serving, "Health went NOT_SERVING under blocked streams");
    assert_eq!(ok, total, "calls failed or hung while streams were blocked (slowest answered: {worst:?})");
    drop(bodies);
    drop(conns);
}

/// Item 2, the bounds: one tenant opens more watch streams than `streams.max_per_tenant`, and
/// one raw HTTP/2 connection learns how many streams the server lets it open at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_bounded_per_tenant_and_per_connection() {
    const PER_TENANT: usize = 5;
    const PER_CONN: u32 = 8;
    let app = spawn_with(|s| {
        s.streams.max_per_tenant = PER_TENANT;
        s.streams.max_per_connection = PER_CONN;
    })
    .await;
    let id = app.insert_onboarding("acct", "bounded").await;
    let name = format!("onboardings/{id}");
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..PER_TENANT + 3 {
        match app
            .onboardings()
            .watch_onboarding(app.req(pb::WatchOnboardingRequest { name: name.clone(), after_sequence: 0 }))
            .await
        {
            Ok(s) => open.push(s.into_inner()),
            Err(status) => {
                refused.get_or_insert(status);
            }
        }
    }
    let accepted = open.len();
    let refused = refused.expect("a watch stream beyond streams.max_per_tenant was accepted");
    use tonic_types::StatusExt;
    let retry = refused.get_details_retry_info().and_then(|r| r.retry_delay);
    // A closed stream frees its place.
    drop(open.pop());
    let mut reopened = false;
    for _ in 0..50 {
        let r = app
            .onboardings()
            .watch_onboarding(app.req(pb::WatchOnboardingRequest { name: name.clone(), after_sequence: 0 }))
            .await;
        if let Ok(s) = r {
            open.push(s.into_inner());
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Per connection: the server's SETTINGS_MAX_CONCURRENT_STREAMS, as a raw client sees it.
    let addr = app.running().grpc_addr;
    let mut send = h2_connect(addr).await;
    let resp = raw_watch(&mut send, addr, app.key.expose(), "onboardings/nope").await.expect("request sent");
    let _ = tokio::time::timeout(Duration::from_secs(5), resp).await;
    let advertised = send.current_max_send_streams();

    write_fragment(
        "42-hostile-stream-bounds.md",
        &format!(
            "### Stream bounds per tenant and per connection\n\nOne tenant opens {} `WatchOnboarding` streams with \
             `streams.max_per_tenant = {PER_TENANT}`; a raw HTTP/2 client reads the server's concurrent-stream \
             limit with `streams.max_per_connection = {PER_CONN}`.\n\n{}",
            PER_TENANT + 3,
            table(&[
                ("streams accepted", accepted.to_string()),
                ("over the limit", format!("{:?}: {}", refused.code(), refused.message())),
                ("retry delay offered", format!("{retry:?}")),
                ("a closed stream's place reused", reopened.to_string()),
                ("SETTINGS_MAX_CONCURRENT_STREAMS seen", advertised.to_string()),
            ])
        ),
    );
    assert_eq!(accepted, PER_TENANT);
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("streams.max_per_tenant"), "{}", refused.message());
    assert!(retry.is_some(), "RESOURCE_EXHAUSTED without RetryInfo");
    assert!(reopened, "a closed stream did not free its place");
    assert_eq!(advertised, PER_CONN as usize);
}

/// Item 9: a `WatchOnboarding` opened with a key that is then revoked (what `tenant revoke-key`
/// writes) must end `UNAUTHENTICATED` within the revocation delay, not keep delivering events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_open_stream_ends_unauthenticated() {
    const DELAY_MS: u64 = 1000;
    let app = spawn_with(|s| s.auth.revocation_delay_ms = DELAY_MS).await;
    let store = app.running().store.clone();
    let tenant = store.tenant_by_name("dev").await.unwrap().unwrap();
    let issued = wa_onboard::core::tenants::add_key(store.as_ref(), &tenant.id, None).await.expect("key");
    let id = app.insert_onboarding("acct", "revoked").await;
    let mut stream = app
        .onboardings()
        .watch_onboarding(with_key(
            pb::WatchOnboardingRequest { name: format!("onboardings/{id}"), after_sequence: 0 },
            issued.key.expose(),
        ))
        .await
        .expect("watch opens")
        .into_inner();
    assert!(stream.message().await.expect("snapshot").is_some());

    assert!(store.revoke_api_key(&issued.id, wa_onboard::domain::now_ms()).await.expect("revoke"));
    let revoked = Instant::now();
    let writer = {
        let app_store = store.clone();
        let id = id.clone();
        tokio::spawn(async move {
            // Events keep coming after the revocation.
            for i in 0..40 {
                let change = wa_onboard::store::OnboardingChange {
                    provider_status: Some(format!("status {i}")),
                    ..wa_onboard::store::OnboardingChange::new(
                        &id,
                        wa_onboard::store::NewEvent::new(wa_onboard::domain::EventKind::StateChanged, "still moving"),
                        wa_onboard::domain::now_ms(),
                    )
                };
                if let Ok(e) = app_store.apply_change(&change).await {
                    let _ = app_store.notify(&wa_onboard::store::ChangeNotice::moved(id.clone(), e.sequence)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let limit = Duration::from_millis(DELAY_MS * 3);
    let mut delivered_after = 0;
    let ended = loop {
        match tokio::time::timeout_at((revoked + limit).into(), stream.message()).await {
            Err(_) => break None,
            Ok(Ok(Some(m))) => {
                if matches!(m.message, Some(pb::watch_onboarding_response::Message::Event(_))) {
                    delivered_after += 1;
                }
            }
            Ok(Ok(None)) => break Some((tonic::Code::Ok, revoked.elapsed())),
            Ok(Err(status)) => break Some((status.code(), revoked.elapsed())),
        }
    };
    writer.abort();
    let unary = app
        .onboardings()
        .get_onboarding(with_key(pb::GetOnboardingRequest { name: format!("onboardings/{id}") }, issued.key.expose()))
        .await;
    write_fragment(
        "42-hostile-revoked-key-stream.md",
        &format!(
            "### A revoked key's open stream\n\nA `WatchOnboarding` opened with a key, the key revoked in the store \
             (`tenant revoke-key`) while events keep coming, with `auth.revocation_delay_ms = {DELAY_MS}`.\n\n{}",
            table(&[
                (
                    "stream ended",
                    ended.map_or_else(
                        || format!("no, still open after {} ms", limit.as_millis()),
                        |(c, d)| format!("{c:?} after {} ms", d.as_millis()),
                    ),
                ),
                ("events delivered after the revocation", delivered_after.to_string()),
                ("a new call with the key", format!("{:?}", unary.as_ref().err().map(|s| s.code()))),
            ])
        ),
    );
    let (code, after) = ended.expect("the stream outlived its key's revocation");
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(after <= Duration::from_millis(DELAY_MS + 500), "ended {after:?} after the revocation");
    assert_eq!(unary.err().map(|s| s.code()), Some(tonic::Code::Unauthenticated));
}

/// How long until the server closes `tcp` (read returns EOF or an error), up to `limit`.
async fn closed_after(mut tcp: tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    closed_after_reading(&mut tcp, limit).await
}

/// [`closed_after`] on a socket the caller keeps.
async fn closed_after_reading(tcp: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((t + limit).into(), tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            // A 408 or an HTTP/2 GOAWAY before the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// Item 3: a flood of connections to the webhook port that send nothing, half a request line,
/// or half an HTTP/2 preface (scaled down: 40 of each and 160 more idle ones, against
/// `server.max_http_connections = 100` and 2 s timeouts). Before the fix every one was kept
/// forever, until the process ran out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_to_the_webhook_port_are_closed() {
    const CAP: usize = 100;
    const PARTIAL: usize = 40;
    const IDLE: usize = 160;
    const TIMEOUT_SECS: u64 = 2;
    let app = spawn_with(|s| {
        s.server.max_http_connections = CAP;
        s.server.idle_timeout_secs = TIMEOUT_SECS;
        s.server.header_read_timeout_secs = TIMEOUT_SECS;
    })
    .await;
    let webhook = app.running().webhook_addr;
    let grpc = app.running().grpc_addr;
    use tokio::io::AsyncWriteExt;
    let connect = || async move { tokio::net::TcpStream::connect(webhook).await.expect("connect") };
    let mut lines = Vec::new();
    let mut prefaces = Vec::new();
    for _ in 0..PARTIAL {
        let mut t = connect().await;
        t.write_all(b"POST /webhooks/gupshup/acct/secret HTTP/1.1\r\nHost: x\r\nContent-Le").await.unwrap();
        lines.push(t);
        let mut t = connect().await;
        t.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        prefaces.push(t);
    }
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(connect().await);
    }
    let limit = Duration::from_secs(TIMEOUT_SECS + 3);
    let watch =
        |v: Vec<tokio::net::TcpStream>| v.into_iter().map(|t| tokio::spawn(closed_after(t, limit))).collect::<Vec<_>>();
    let (lines, prefaces, idle) = (watch(lines), watch(prefaces), watch(idle));

    // While the flood holds: gRPC answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.expect("gRPC connects");
    let grpc_probe = timed(
        Duration::from_secs(2),
        pb::onboarding_service_client::OnboardingServiceClient::new(channel)
            .list_onboardings(app.req(pb::ListOnboardingsRequest::default())),
    )
    .await;

    let collect = |handles: Vec<tokio::task::JoinHandle<Option<Duration>>>| async move {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    };
    let (lines, prefaces, idle) = (collect(lines).await, collect(prefaces).await, collect(idle).await);
    let summary = |v: &[Option<Duration>]| {
        let closed: Vec<Duration> = v.iter().flatten().copied().collect();
        let fast = closed.iter().filter(|d| **d < Duration::from_millis(500)).count();
        let slowest = closed.iter().max().copied().unwrap_or_default();
        (closed.len(), fast, slowest)
    };
    let (l, p, i) = (summary(&lines), summary(&prefaces), summary(&idle));

    // After the flood: a webhook POST and the metrics port answer.
    let http = reqwest::Client::new();
    let post = http
        .post(format!("http://{webhook}/webhooks/gupshup/nope/nope"))
        .body("{}")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let metrics = http
        .get(format!("http://{}/metrics", app.running().metrics_addr))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let fmt = |(closed, fast, slowest): (usize, usize, Duration), n: usize| {
        format!("{closed} / {n} closed ({fast} at once, over the cap), last after {}", ms(slowest))
    };
    write_fragment(
        "42-hostile-connection-flood.md",
        &format!(
            "### Idle and half-sent connections to the webhook port\n\n{PARTIAL} connections sending half a \
             request line, {PARTIAL} sending half an HTTP/2 preface and {IDLE} sending nothing, against \
             `server.max_http_connections = {CAP}` and {TIMEOUT_SECS} s header-read and idle timeouts; a gRPC call \
             during the flood, a webhook POST and a metrics scrape after.\n\n{}",
            table(&[
                ("half request lines", fmt(l, PARTIAL)),
                ("half HTTP/2 prefaces", fmt(p, PARTIAL)),
                ("idle connections", fmt(i, IDLE)),
                ("gRPC call during the flood", grpc_probe.map_or("failed".into(), ms)),
                ("webhook POST after", format!("{post:?}")),
                ("metrics scrape after", format!("{metrics:?}")),
            ])
        ),
    );
    assert!(grpc_probe.is_some(), "gRPC did not answer during the flood");
    for (what, (closed, _, _), n) in
        [("partial request line", l, PARTIAL), ("partial preface", p, PARTIAL), ("idle", i, IDLE)]
    {
        assert_eq!(closed, n, "{what} connections kept open past the timeout");
    }
    assert!(i.1 >= IDLE + 2 * PARTIAL - CAP, "connections over the cap were not closed at once: {}", i.1);
    assert!(matches!(post, Ok(s) if s < 500), "webhook POST after the flood: {post:?}");
    assert!(matches!(metrics, Ok(200)), "metrics after the flood: {metrics:?}");
}

/// Item 3 on the gRPC port: connections that never send the HTTP/2 preface, or only half of
/// it. hyper waits for a preface forever; they must be closed after
/// `server.header_read_timeout_secs` while real calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_to_the_grpc_port_are_closed() {
    const SILENT: usize = 60;
    const HALF: usize = 20;
    const TIMEOUT_SECS: u64 = 1;
    let app = spawn_with(|s| s.server.header_read_timeout_secs = TIMEOUT_SECS).await;
    let grpc = app.running().grpc_addr;
    use tokio::io::AsyncWriteExt;
    let mut handles = Vec::new();
    let limit = Duration::from_secs(TIMEOUT_SECS + 3);
    for i in 0..SILENT + HALF {
        let mut t = tokio::net::TcpStream::connect(grpc).await.expect("connect");
        if i >= SILENT {
            t.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        handles.push(tokio::spawn(closed_after(t, limit)));
    }
    let probe = timed(
        Duration::from_secs(2),
        HealthClient::new(app.channel.clone()).check(HealthCheckRequest { service: String::new() }),
    )
    .await;
    let mut closed = Vec::new();
    for h in handles {
        closed.push(h.await.unwrap());
    }
    let n = closed.iter().flatten().count();
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    // An established client is not affected.
    tokio::time::sleep(Duration::from_secs(TIMEOUT_SECS + 1)).await;
    let later = timed(
        Duration::from_secs(2),
        pb::onboarding_service_client::OnboardingServiceClient::new(app.channel.clone())
            .list_onboardings(app.req(pb::ListOnboardingsRequest::default())),
    )
    .await;
    write_fragment(
        "42-hostile-grpc-preface.md",
        &format!(
            "### Connections to the gRPC port that never send a preface\n\n{SILENT} connections sending nothing and \
             {HALF} sending half the HTTP/2 preface, with `server.header_read_timeout_secs = {TIMEOUT_SECS}`.\n\n{}",
            table(&[
                ("closed by the server", format!("{n} / {}", SILENT + HALF)),
                ("last closed after", ms(slowest)),
                ("Health/Check during", probe.map_or("failed".into(), ms)),
                ("call on an established connection after the timeout", later.map_or("failed".into(), ms)),
            ])
        ),
    );
    assert_eq!(n, SILENT + HALF, "connections without a preface kept open");
    assert!(probe.is_some() && later.is_some(), "gRPC calls failed: {probe:?} {later:?}");
}

/// The gRPC port accepts HTTP/1.1 for Connect, gRPC-Web and the console; hyper has no HTTP/1
/// idle timeout, so keep-alive connections left quiet after a call were kept forever. They are
/// closed after `server.idle_timeout_secs` (never before two heartbeats), while a Connect
/// stream over HTTP/1.1, which writes a heartbeat every `streams.heartbeat_secs`, stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_http1_connections_to_the_grpc_port_are_closed_but_streams_stay() {
    use tokio::io::AsyncWriteExt;
    const QUIET: usize = 20;
    const IDLE_SECS: u64 = 2;
    let app = spawn_with(|s| {
        s.sandbox.enabled = true;
        s.server.idle_timeout_secs = IDLE_SECS;
        s.streams.heartbeat_secs = 1;
    })
    .await;
    let grpc = app.running().grpc_addr;
    let created = app
        .onboardings()
        .create_onboarding(app.req(pb::CreateOnboardingRequest {
            account: "accounts/sandbox-gupshup".into(),
            reference: "idle".into(),
            request_id: String::new(),
            onboarding_id: String::new(),
            request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
                app_name: "QuietShop".into(),
                waba_id: "104996122399160".into(),
                phone: "+919855500055".into(),
                ..Default::default()
            })),
        }))
        .await
        .expect("CreateOnboarding")
        .into_inner();

    // One Connect call each, then nothing: keep-alive sockets the client forgot.
    let mut quiet = Vec::new();
    for _ in 0..QUIET {
        let mut t = tokio::net::TcpStream::connect(grpc).await.expect("connect");
        t.write_all(
            b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
        quiet.push(tokio::spawn(closed_after(t, Duration::from_secs(IDLE_SECS + 4))));
    }
    // A Connect stream over HTTP/1.1: one enveloped request, then heartbeats come back.
    let body = format!("{{\"name\": \"{}\"}}", created.name);
    let mut envelope = vec![0u8];
    envelope.extend_from_slice(&(body.len() as u32).to_be_bytes());
    envelope.extend_from_slice(body.as_bytes());
    let mut stream = tokio::net::TcpStream::connect(grpc).await.expect("connect");
    let head = format!(
        "POST /wa.onboard.v1.OnboardingService/WatchOnboarding HTTP/1.1\r\nHost: x\r\n\
         content-type: application/connect+json\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
        app.key.expose(),
        envelope.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&envelope).await.unwrap();
    let watched = tokio::spawn(closed_after(stream, Duration::from_secs(IDLE_SECS * 3)));

    let mut closed = Vec::new();
    for h in quiet {
        closed.push(h.await.unwrap());
    }
    let n = closed.iter().flatten().count();
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    let stream_closed = watched.await.unwrap();
    // HTTP/2 clients idle longer than the limit too: PINGs keep them, calls still work.
    let later = timed(
        Duration::from_secs(2),
        HealthClient::new(app.channel.clone()).check(HealthCheckRequest { service: String::new() }),
    )
    .await;
    write_fragment(
        "42-hostile-grpc-http1-idle.md",
        &format!(
            "### Quiet HTTP/1.1 connections to the gRPC port\n\n{QUIET} HTTP/1.1 connections making one Connect \
             call and then sending nothing, with `server.idle_timeout_secs = {IDLE_SECS}`, beside one Connect \
             `WatchOnboarding` stream over HTTP/1.1 with 1 s heartbeats.\n\n{}",
            table(&[
                ("quiet connections closed by the server", format!("{n} / {QUIET}")),
                ("last closed after", ms(slowest)),
                (
                    "stream over HTTP/1.1 after 3 idle periods",
                    stream_closed.map_or("open".into(), |d| format!("closed after {}", ms(d))),
                ),
                ("HTTP/2 call after the idle period", later.map_or("failed".into(), ms)),
            ])
        ),
    );
    assert_eq!(n, QUIET, "quiet HTTP/1.1 connections kept open");
    assert!(slowest >= Duration::from_secs(IDLE_SECS), "closed before the idle limit: {slowest:?}");
    assert!(stream_closed.is_none(), "a stream with heartbeats was closed after {stream_closed:?}");
    assert!(later.is_some(), "an HTTP/2 call after the idle period failed");
}

/// The gRPC port had no connection cap: a flood of sockets (each held open, sending nothing,
/// until the preface deadline) could take every descriptor. Against
/// `server.max_grpc_connections = 16`, connections over the cap are closed at once, those
/// under it stay until their deadline, and once the flood is gone gRPC answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_grpc_cap_are_closed_at_once() {
    const CAP: usize = 16;
    const OVER: usize = 24;
    let app = spawn_with(|s| {
        s.server.max_grpc_connections = CAP;
        s.server.header_read_timeout_secs = 30;
    })
    .await;
    let grpc = app.running().grpc_addr;
    // The test app's own gRPC channel holds one slot.
    let mut held = Vec::new();
    for _ in 0..CAP - 1 {
        held.push(tokio::net::TcpStream::connect(grpc).await.expect("connect"));
    }
    // Accepted in order: give the server a moment to admit the held ones before the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = Vec::new();
    for _ in 0..OVER {
        let t = tokio::net::TcpStream::connect(grpc).await.expect("connect");
        over.push(tokio::spawn(closed_after(t, Duration::from_secs(3))));
    }
    let mut closed_at_once = 0;
    for h in over {
        if h.await.unwrap().is_some() {
            closed_at_once += 1;
        }
    }
    // The held ones are still open (the preface deadline is 30 s).
    let mut still_open = 0;
    for t in &mut held {
        // Open: the read waits (after the server's SETTINGS, if it sent them); closed: EOF.
        if closed_after_reading(t, Duration::from_millis(100)).await.is_none() {
            still_open += 1;
        }
    }
    drop(held);
    // Their slots come back once the server sees them close.
    let mut answered = None;
    for _ in 0..40 {
        let probe = async {
            let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await?;
            HealthClient::new(channel)
                .check(HealthCheckRequest { service: String::new() })
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        answered = timed(Duration::from_secs(2), probe).await;
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write_fragment(
        "43-hostile-grpc-connection-cap.md",
        &format!(
            "### Connections over the gRPC port's cap\n\nThe test's own channel and {} silent sockets, then {OVER} \
             more, against `server.max_grpc_connections = {CAP}`.\n\n{}",
            CAP - 1,
            table(&[
                ("over the cap, closed within 3 s", format!("{closed_at_once} / {OVER}")),
                ("under the cap, still open", format!("{still_open} / {}", CAP - 1)),
                ("Health/Check after the flood", answered.map_or("failed".into(), ms)),
            ])
        ),
    );
    assert_eq!(closed_at_once, OVER, "connections over the cap were kept open");
    assert_eq!(still_open, CAP - 1, "connections under the cap were closed before their deadline");
    assert!(answered.is_some(), "gRPC did not answer once the flood closed");
}
