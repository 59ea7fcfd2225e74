use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::sim::common::Fault;

fn any_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start(config: ExotelSimConfig) -> (ExotelSim, ExotelSimServers) {
    ExotelSim::spawn(config, any_addr(), any_addr()).await.unwrap()
}

fn isv(base: &Running, sid: &str) -> String {
    format!("{}/v2/accounts/{sid}/isv", base.base_url())
}

async fn mint(c: &reqwest::Client, base: &Running, sid: &str, query: &str) -> (u16, Value) {
    let r = c
        .post(format!("{}{query}", isv(base, sid)))
        .basic_auth("sandbox-key", Some("sandbox-token"))
        .header("Content-Type", "text/plain")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn validate(c: &reqwest::Client, base: &Running, sid: &str, token: &str) -> (u16, Value) {
    let r = c
        .get(format!("{}?access_token={token}", isv(base, sid)))
        .basic_auth("sandbox-key", Some("sandbox-token"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn token_of(body: &Value) -> String {
    let url = body["response"]["whatsapp"]["isv"]["data"]["onboarding_url"].as_str().unwrap();
    url.strip_prefix("https://messaging.exotel.com/ua-links/isv-onboard/").unwrap().to_string()
}

fn status_of(body: &Value) -> &str {
    body["response"]["whatsapp"]["isv"]["data"]["onboarding_token_status"].as_str().unwrap()
}

fn assert_error(body: &Value, method: &str, code: u16) {
    assert_eq!(body["method"], method);
    assert_eq!(body["http_code"], code);
    assert_eq!(body["request_id"].as_str().unwrap().len(), 32);
    let isv = &body["response"]["whatsapp"]["isv"];
    assert_eq!(isv["code"], code);
    assert_eq!(isv["status"], "failure");
    assert_eq!(isv["data"], Value::Null);
    assert_eq!(isv["error_data"]["code"], code);
    assert!(isv["error_data"]["description"].is_string());
    assert!(isv["error_data"]["message"].is_string());
}

fn no_sandbox() -> ExotelSimConfig {
    ExotelSimConfig { sandbox: false, ..Default::default() }
}

#[tokio::test]
async fn mint_returns_documented_envelope_and_counts_link() {
    let (sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let (code, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    assert_eq!(code, 200);
    let rid = body["request_id"].as_str().unwrap();
    assert!(rid.len() == 32 && rid.chars().all(|c| c.is_ascii_hexdigit()));
    let token = token_of(&body);
    assert!(uuid::Uuid::parse_str(&token).is_ok());
    assert_eq!(
        body,
        json!({
            "request_id": rid, "method": "POST", "http_code": 200,
            "response": { "whatsapp": { "isv": { "code": 200, "error_data": null, "status": "success",
                "data": { "onboarding_url": format!("https://messaging.exotel.com/ua-links/isv-onboard/{token}") } } } }
        })
    );
    assert_eq!(sim.core().counters().created.get("links"), Some(&1));
    assert_eq!(sim.token(&token).unwrap().status, TokenStatus::Valid);
}

#[tokio::test]
async fn credentials_in_url_userinfo_are_accepted() {
    let (_sim, srv) = start(no_sandbox()).await;
    let url = format!("http://sandbox-key:sandbox-token@{}/v2/accounts/sandbox-sg/isv", srv.singapore.addr);
    let r = reqwest::Client::new().post(url).header("Content-Type", "text/plain").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn auth_failures_are_401_envelopes() {
    let (_sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let r = c.post(isv(&srv.singapore, "sandbox-sg")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.json().await.unwrap(), "POST", 401);
    let r = c.post(isv(&srv.singapore, "sandbox-sg")).basic_auth("sandbox-key", Some("wrong")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.json().await.unwrap(), "POST", 401);
    let r = c
        .get(format!("{}?access_token=x", isv(&srv.singapore, "sandbox-sg")))
        .header("Authorization", "Bearer sandbox-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.json().await.unwrap(), "GET", 401);
}

#[tokio::test]
async fn account_exists_only_in_its_region() {
    let (_sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    assert_eq!(mint(&c, &srv.singapore, "sandbox-sg", "").await.0, 200);
    assert_eq!(mint(&c, &srv.mumbai, "sandbox-in", "").await.0, 200);
    let (code, body) = mint(&c, &srv.mumbai, "sandbox-sg", "").await;
    assert_eq!(code, 404);
    assert_error(&body, "POST", 404);
    let (code, _) = mint(&c, &srv.singapore, "sandbox-in", "").await;
    assert_eq!(code, 404);
    // A Singapore token is unknown to the Mumbai host too.
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    let token = token_of(&body);
    let (code, body) = validate(&c, &srv.mumbai, "sandbox-in", &token).await;
    assert_eq!(code, 404);
    assert_error(&body, "GET", 404);
}

/// No vendor page documents a request parameter on the create call (docs/providers.md §2.2): one
/// POST mints one link, and `count` (the old misreading) or anything else is a 400.
#[tokio::test]
async fn mint_refuses_undocumented_parameters_and_bodies() {
    let (sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    for q in ["?count=50", "?count=1", "?foo=bar", "?access_token=x"] {
        let (code, body) = mint(&c, &srv.singapore, "sandbox-sg", q).await;
        assert_eq!(code, 400, "{q}");
        assert_error(&body, "POST", 400);
    }
    let r = c
        .post(isv(&srv.singapore, "sandbox-sg"))
        .basic_auth("sandbox-key", Some("sandbox-token"))
        .header("Content-Type", "application/json")
        .body(r#"{"count":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(sim.core().counters().created.get("links"), None, "nothing minted");
    // The clients' form (`application/json`, `{}`) and the vendor curl's both mint one link.
    let r = c
        .post(isv(&srv.singapore, "sandbox-sg"))
        .basic_auth("sandbox-key", Some("sandbox-token"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (code, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    assert_eq!(code, 200);
    assert!(body["response"]["whatsapp"]["isv"]["data"].get("onboarding_urls").is_none());
    assert_eq!(sim.tokens().len(), 2);
    // Validate takes `access_token` only.
    let (code, _) = validate(&c, &srv.singapore, "sandbox-sg", &format!("{}&count=2", token_of(&body))).await;
    assert_eq!(code, 400);
}

/// Every create-answer shape the vendor pages show, picked by the `create_shape` knob.
#[tokio::test]
async fn mint_answers_in_the_shape_the_knob_picks() {
    let (sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let cases: [(CreateShape, &[&str]); 5] = [
        (CreateShape::DataOnboardingUrl, &["data", "onboarding_url"]),
        (CreateShape::IsvUrl, &["Url"]),
        (CreateShape::DataUrl, &["data", "url"]),
        (CreateShape::BareOverview, &["data", "onboarding_url"]),
        (CreateShape::DataUrlList, &["data", "Url", "0"]),
    ];
    for (shape, path) in cases {
        sim.set_knobs(ExotelKnobs { create_shape: shape, ..Default::default() });
        let (code, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
        assert_eq!(code, 200, "{shape:?}");
        let mut v = &body["response"]["whatsapp"]["isv"];
        for p in path {
            v = match p.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[*p],
            };
        }
        assert!(v.as_str().unwrap().starts_with("https://messaging.exotel.com/ua-links/isv-onboard/"), "{shape:?}");
        assert_eq!(body.get("method").is_none(), shape == CreateShape::BareOverview, "{shape:?}");
    }
    sim.set_knobs(ExotelKnobs { create_shape: CreateShape::ValidateCopy, ..Default::default() });
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    assert_eq!(status_of(&body), "VALID");
}

#[tokio::test]
async fn validate_valid_then_used_after_customer_and_errors() {
    let (_sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let (_, body) = mint(&c, &srv.mumbai, "sandbox-in", "").await;
    let token = token_of(&body);
    let (code, body) = validate(&c, &srv.mumbai, "sandbox-in", &token).await;
    assert_eq!(code, 200);
    let rid = body["request_id"].as_str().unwrap();
    assert_eq!(
        body,
        json!({ "request_id": rid, "method": "GET", "http_code": 200,
            "response": { "whatsapp": { "isv": { "code": 200, "error_data": null, "status": "success",
                "data": { "onboarding_token_status": "VALID" } } } } })
    );
    let r = c.post(format!("{}/_sim/exotel/tokens/{token}/complete", srv.mumbai.base_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, body) = validate(&c, &srv.mumbai, "sandbox-in", &token).await;
    assert_eq!(status_of(&body), "USED");
    let (code, body) = validate(&c, &srv.mumbai, "sandbox-in", "00000000-0000-0000-0000-000000000000").await;
    assert_eq!(code, 404);
    assert_error(&body, "GET", 404);
    // Not token-shaped (the adapter's credentials probe): malformed, not unknown.
    let (code, body) = validate(&c, &srv.mumbai, "sandbox-in", "no-such-token").await;
    assert_eq!(code, 400);
    assert_error(&body, "GET", 400);
    let r =
        c.get(isv(&srv.mumbai, "sandbox-in")).basic_auth("sandbox-key", Some("sandbox-token")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_error(&r.json().await.unwrap(), "GET", 400);
}

#[tokio::test]
async fn token_expires_after_24h_on_the_sim_clock() {
    let (sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    let token = token_of(&body);
    sim.core().clock.advance(Duration::from_secs(86_399));
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "VALID");
    sim.core().clock.advance(Duration::from_secs(1));
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "EXPIRED");
    let r = c.post(format!("{}/_sim/exotel/tokens/{token}/complete", srv.singapore.base_url())).send().await.unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn token_onboards_at_most_five_customers() {
    let (sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    let token = token_of(&body);
    let url = format!("{}/_sim/exotel/tokens/{token}/complete", srv.singapore.base_url());
    for _ in 0..5 {
        assert_eq!(c.post(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(c.post(&url).send().await.unwrap().status(), 409);
    let v: Value = c
        .get(format!("{}/_sim/exotel/tokens/{token}", srv.singapore.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["customers"].as_array().unwrap().len(), 5);
    assert_eq!(v["status"], "USED");
    assert_eq!(sim.complete_customer(&token), Err(CompleteError::Full));
    assert_eq!(sim.complete_customer("nope"), Err(CompleteError::NotFound));
}

#[tokio::test]
async fn sandbox_customer_arrives_after_first_validation() {
    let cfg = ExotelSimConfig { customer_delay_ms: 150, ..Default::default() };
    let (sim, srv) = start(cfg).await;
    let c = reqwest::Client::new();
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    let token = token_of(&body);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Nobody opened the link yet: the delay starts at the first validation.
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "VALID");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "USED");
    let v = sim.token(&token).unwrap();
    assert_eq!(v.customers.len(), 1);
    assert!(v.customers[0].by_sandbox);

    // Also driven by the sim clock alone.
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    let token = token_of(&body);
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "VALID");
    sim.core().clock.advance(Duration::from_secs(1));
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "USED");
}

#[tokio::test]
async fn payment_required_and_forbidden_envelopes() {
    let cfg = ExotelSimConfig {
        sandbox: false,
        forbidden_sids: vec!["sandbox-in".into()],
        accounts: vec![
            ExotelAccount {
                sid: "sandbox-sg".into(),
                api_key: "sandbox-key".into(),
                api_token: "sandbox-token".into(),
                region: ExotelRegion::Singapore,
            },
            ExotelAccount {
                sid: "sandbox-in".into(),
                api_key: "sandbox-key".into(),
                api_token: "sandbox-token".into(),
                region: ExotelRegion::Mumbai,
            },
            ExotelAccount {
                sid: "other-sg".into(),
                api_key: "other-key".into(),
                api_token: "other-token".into(),
                region: ExotelRegion::Singapore,
            },
        ],
        ..Default::default()
    };
    let (_sim, srv) = start(cfg).await;
    let c = reqwest::Client::new();
    let (code, body) = mint(&c, &srv.mumbai, "sandbox-in", "").await;
    assert_eq!(code, 403);
    assert_error(&body, "POST", 403);
    // Valid credentials of another account.
    let (code, body) = mint(&c, &srv.singapore, "other-sg", "").await;
    assert_eq!(code, 403);
    assert_error(&body, "POST", 403);

    let r = c
        .put(format!("{}/_sim/exotel/knobs", srv.singapore.base_url()))
        .json(&json!({ "payment_required": true, "forbidden_sids": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (code, body) = mint(&c, &srv.mumbai, "sandbox-in", "").await;
    assert_eq!(code, 402);
    assert_error(&body, "POST", 402);
    let knobs: Value =
        c.get(format!("{}/_sim/exotel/knobs", srv.mumbai.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        knobs,
        json!({ "payment_required": true, "forbidden_sids": [], "create_shape": "data_onboarding_url", "used_after": 1 })
    );
}

#[tokio::test]
async fn fault_middleware_renders_exotel_envelopes() {
    let (sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let ep = Some("POST /v2/accounts/{sid}/isv");
    sim.core().fail_next(ep, 1, Fault::Status { status: 503 });
    sim.core().fail_next(ep, 1, Fault::TooManyRequests { retry_after_secs: Some(2) });
    sim.core().fail_next(ep, 1, Fault::OkWithErrorBody);

    let (code, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    assert_eq!(code, 503);
    assert_error(&body, "POST", 503);

    let r =
        c.post(isv(&srv.mumbai, "sandbox-in")).basic_auth("sandbox-key", Some("sandbox-token")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_error(&r.json().await.unwrap(), "POST", 429);

    let (code, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    assert_eq!(code, 200);
    assert_eq!(body["http_code"], 200);
    let isv = &body["response"]["whatsapp"]["isv"];
    assert_eq!(isv["status"], "failure");
    assert_eq!(isv["code"], 500);
    assert_eq!(isv["error_data"]["code"], 500);

    assert_eq!(mint(&c, &srv.singapore, "sandbox-sg", "").await.0, 200);
    let counters = sim.core().counters();
    assert_eq!(counters.faults_injected, 3);
    assert_eq!(counters.calls.get("POST /v2/accounts/{sid}/isv"), Some(&4));
    assert_eq!(counters.created.get("links"), Some(&1));
}

/// Reading B of `USED` (docs/providers.md §2.5 #3): with `used_after = 5`, 1–4 completions leave
/// the token `VALID`; the fifth makes it `USED`; a sixth within 24 h is refused whole.
#[tokio::test]
async fn used_after_knob_and_complete_times_play_both_readings_of_used() {
    let (sim, srv) = start(no_sandbox()).await;
    let c = reqwest::Client::new();
    let base = srv.singapore.base_url();
    let r = c.put(format!("{base}/_sim/exotel/knobs")).json(&json!({ "used_after": 5 })).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    let token = token_of(&body);
    let url = format!("{base}/_sim/exotel/tokens/{token}/complete");
    let r = c.post(format!("{url}?times=4")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["customers"].as_array().unwrap().len(), 4);
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "VALID");
    // Two more would pass the cap of 5: refused whole, nothing recorded.
    assert_eq!(c.post(format!("{url}?times=2")).send().await.unwrap().status(), 409);
    assert_eq!(sim.token(&token).unwrap().customers.len(), 4);
    assert_eq!(c.post(format!("{url}?times=0")).send().await.unwrap().status(), 400);
    assert_eq!(c.post(&url).send().await.unwrap().status(), 200);
    assert_eq!(status_of(&validate(&c, &srv.singapore, "sandbox-sg", &token).await.1), "USED");
    assert_eq!(c.post(&url).send().await.unwrap().status(), 409);

    // Reading A (the default): the first completion makes a fresh token USED.
    sim.set_knobs(ExotelKnobs::default());
    let (_, body) = mint(&c, &srv.singapore, "sandbox-sg", "").await;
    let other = token_of(&body);
    assert_eq!(sim.complete_customers(&other, 1).unwrap().status, TokenStatus::Used);
}
