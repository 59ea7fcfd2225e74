use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::helpers::*;
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use wa_onboard::grpc::pb;

fn pg_base_url() -> String {
    std::env::var("WA_ONBOARD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test]
async fn health_goes_not_serving_when_the_store_is_gone_and_back() {
    let base = pg_base_url();
    if base == "skip" {
        eprintln!("SKIPPING PostgreSQL test (WA_ONBOARD_TEST_DATABASE_URL=skip)");
        return;
    }
    let schema_url = wa_onboard::store::postgres::create_test_schema(&base)
        .await
        .expect("PostgreSQL must be reachable for the test suite");
    let parsed = url::Url::parse(&schema_url).unwrap();
    let target = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap_or(5432));
    let (proxy, cut) = cuttable_proxy(target).await;
    let mut via_proxy = parsed.clone();
    let (h, p) = proxy.split_once(':').unwrap();
    via_proxy.set_host(Some(h)).unwrap();
    via_proxy.set_port(Some(p.parse().unwrap())).unwrap();
    let app = spawn_with(|s| s.database.url = via_proxy.to_string()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let check = |svc: &str| tonic_health::pb::HealthCheckRequest { service: svc.into() };
    assert_eq!(health.check(check("")).await.unwrap().into_inner().status, ServingStatus::Serving as i32);

    cut.store(true, Ordering::SeqCst);
    let mut went_down = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = health.check(check("wa.onboard.v1.OnboardingService")).await.unwrap().into_inner().status;
        if s == ServingStatus::NotServing as i32 {
            went_down = true;
            break;
        }
    }
    assert!(went_down, "health must report NOT_SERVING while the store is unreachable");
    // RPCs fail with UNAVAILABLE, not a hang or a panic.
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        app.accounts().list_accounts(app.req(pb::ListAccountsRequest::default())),
    )
    .await
    .expect("no hang")
    .unwrap_err();
    assert!(matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unauthenticated), "{err:?}");

    cut.store(false, Ordering::SeqCst);
    let mut back = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if health.check(check("")).await.unwrap().into_inner().status == ServingStatus::Serving as i32 {
            back = true;
            break;
        }
    }
    assert!(back, "health must come back when the store does");
    app.accounts().list_accounts(app.req(pb::ListAccountsRequest::default())).await.unwrap();
    wa_onboard::store::postgres::drop_schema(&schema_url).await.ok();
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_cleanly() {
    let mut app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let id = app.insert_onboarding("acme", "r").await;
    let mut s = app.watch(&id, 1).await;
    assert!(s.next().await.unwrap().is_ok());
    let addr = app.running().grpc_addr;
    let started = std::time::Instant::now();
    app.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5), "streams must not hold shutdown for the grace period");
    // The stream ends (cleanly or with a transport close), it does not hang.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "stream must end after shutdown");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
