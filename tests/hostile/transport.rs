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
            ])
        ),
    );
    assert!(answered > 0, "the flood opened no stream");
    assert!(serving, "Health went NOT_SERVING under blocked streams");
    assert_eq!(ok, total, "calls failed or hung while streams were blocked (slowest answered: {worst:?})");
    drop(bodies);
    drop(conns);
}
