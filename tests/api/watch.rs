use std::time::Duration;

use crate::helpers::*;
use tokio_stream::StreamExt;
use wa_onboard::domain::OnboardingState;
use wa_onboard::grpc::pb;
use wa_onboard::grpc::pb::watch_onboarding_response::Message;

async fn next(s: &mut tonic::Streaming<pb::WatchOnboardingResponse>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("message in time")
        .expect("open")
        .expect("ok")
        .message
        .expect("set")
}

/// Next message that is not a heartbeat.
async fn next_event(s: &mut tonic::Streaming<pb::WatchOnboardingResponse>) -> pb::OnboardingEvent {
    loop {
        match next(s).await {
            Message::Event(e) => return e,
            Message::Heartbeat(_) => continue,
            Message::Snapshot(_) => panic!("second snapshot"),
        }
    }
}

#[tokio::test]
async fn snapshot_then_changes_then_resume_without_gaps() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let id = app.insert_onboarding("acme", "r").await;
    let name = format!("onboardings/{id}");
    let mut s = app.watch(&id, 0).await;
    let Message::Snapshot(snap) = next(&mut s).await else { panic!("snapshot first") };
    assert_eq!(snap.name, name);
    assert_eq!(snap.sequence, 1);
    assert_eq!(next_event(&mut s).await.sequence, 1, "from 0: the created event is replayed");

    app.change_state(&id, OnboardingState::Provisioning, "DOCKER_PROVISIONING").await;
    app.change_state(&id, OnboardingState::Live, "WHATSAPP_PROVISIONING_DONE").await;
    let e2 = next_event(&mut s).await;
    let e3 = next_event(&mut s).await;
    assert_eq!((e2.sequence, e3.sequence), (2, 3));
    assert_eq!(e3.state, pb::OnboardingState::Live as i32);
    assert_eq!(e3.previous_state, pb::OnboardingState::Provisioning as i32);
    assert_eq!(e3.provider_status.unwrap().code, "WHATSAPP_PROVISIONING_DONE");
    drop(s);

    // Cut, then more changes happen while nobody watches.
    for _ in 0..5 {
        app.change_state(&id, OnboardingState::Live, "still live").await;
    }
    let mut s = app.watch(&id, 3).await;
    let Message::Snapshot(snap) = next(&mut s).await else { panic!("snapshot first") };
    assert_eq!(snap.sequence, 8);
    let seqs: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next_event(&mut s).await.sequence);
        }
        v
    };
    assert_eq!(seqs, vec![4, 5, 6, 7, 8], "resume: no gap, no duplicate");
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let id = app.insert_onboarding("acme", "r").await;
    let mut s = app.watch(&id, 1).await;
    assert!(matches!(next(&mut s).await, Message::Snapshot(_)));
    // heartbeat_secs = 1 in tests.
    let started = std::time::Instant::now();
    let Message::Heartbeat(h) = next(&mut s).await else { panic!("heartbeat expected") };
    assert_eq!(h.last_sequence, 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    let Message::Heartbeat(_) = next(&mut s).await else { panic!("heartbeats keep coming") };
}

#[tokio::test]
async fn a_slow_consumer_does_not_stall_others() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let id = app.insert_onboarding("acme", "r").await;
    // The slow one opens a stream and never reads.
    let mut slow = app.watch(&id, 0).await;
    let mut fast = app.watch(&id, 0).await;
    assert!(matches!(next(&mut fast).await, Message::Snapshot(_)));
    assert_eq!(next_event(&mut fast).await.sequence, 1);
    // Far more events than the per-stream buffer (64).
    for _ in 0..300 {
        app.change_state(&id, OnboardingState::Provisioning, "x").await;
    }
    for expected in 2..=301 {
        assert_eq!(next_event(&mut fast).await.sequence, expected);
    }
    // And the slow one, once it reads, still gets everything in order from the store.
    assert!(matches!(next(&mut slow).await, Message::Snapshot(_)));
    for expected in 1..=301 {
        assert_eq!(next_event(&mut slow).await.sequence, expected);
    }
}

#[tokio::test]
async fn pipeline_and_events_are_listed() {
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let id = app.insert_onboarding("acme", "r").await;
    for _ in 0..4 {
        app.change_state(&id, OnboardingState::Provisioning, "x").await;
    }
    let name = format!("onboardings/{id}");
    let p1 = app
        .onboardings()
        .list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
            name: name.clone(),
            page_size: 3,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 2, 3]);
    let p2 = app
        .onboardings()
        .list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
            name: name.clone(),
            page_size: 3,
            page_token: p1.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![4, 5]);
    assert!(p2.next_page_token.is_empty());
    let pipeline = app.pipeline(&format!("{name}/pipeline")).await;
    assert_eq!(pipeline.sequence, 5);
}

/// Many watchers of one onboarding share each event's encoded bytes: every one of them still
/// gets every event, in order, exactly as listed (content included), with none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_of_one_onboarding_each_get_every_event_in_order() {
    const WATCHERS: usize = 20;
    const CHANGES: usize = 40;
    let app = spawn_app().await;
    app.accounts().create_account(app.req(gupshup_account("acme", "s"))).await.unwrap();
    let id = app.insert_onboarding("acme", "r").await;
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let mut s = app.watch(&id, 1).await;
        assert!(matches!(next(&mut s).await, Message::Snapshot(_)));
        streams.push(s);
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < CHANGES {
                    got.push(next_event(&mut s).await);
                }
                got
            })
        })
        .collect();
    for i in 0..CHANGES {
        let state = if i % 2 == 0 { OnboardingState::Provisioning } else { OnboardingState::Live };
        app.change_state(&id, state, &format!("status {i}")).await;
    }
    let listed = app
        .onboardings()
        .list_onboarding_events(app.req(pb::ListOnboardingEventsRequest {
            name: format!("onboardings/{id}"),
            page_size: 100,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(listed.len(), CHANGES + 1);
    for r in readers {
        let got = r.await.unwrap();
        assert_eq!(got, listed[1..].to_vec(), "every event, in order, as listed");
    }
}
