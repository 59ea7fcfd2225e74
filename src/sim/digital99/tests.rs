use std::time::Duration;

use axum::Json;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::sim::common::Fault;

const NUM: &str = "972501234567";

async fn start(config: Digital99SimConfig) -> (Digital99Sim, Running) {
    Digital99Sim::spawn(config, SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap()
}

fn manual() -> Digital99SimConfig {
    Digital99SimConfig { sandbox: false, ..Default::default() }
}

struct Api {
    c: reqwest::Client,
    base: String,
}

impl Api {
    fn new(r: &Running) -> Self {
        Self { c: reqwest::Client::new(), base: format!("{}/api", r.base_url()) }
    }

    async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.c.request(m, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
        r.json().await.unwrap()
    }

    async fn send(&self, method: &str, path: &str, token: Option<&str>, body: String) -> Value {
        self.raw(method, path, token, Some(&body)).await
    }

    async fn login_body(&self, body: &str) -> Value {
        self.raw("POST", "/settings/accessToken", None, Some(body)).await
    }

    async fn login(&self) -> String {
        let v = self.login_body(r#"{"client_id":"sandbox-client","client_secret":"sandbox-secret"}"#).await;
        v["access_token"].as_str().unwrap().to_string()
    }

    /// Registers, verifies (code read from the control API) and returns nothing.
    async fn verified(&self, t: &str, number: &str) {
        let v = self
            .raw("POST", "/whatsapp/registerNumber", Some(t), Some(&format!(r#"{{"whatsapp":"{number}","method":1}}"#)))
            .await;
        assert_eq!(v["status"], "OK", "{v}");
        let code: Value = self
            .c
            .get(format!("{}/_sim/digital99/codes/{number}", self.base.trim_end_matches("/api")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let code = code["code"].as_str().unwrap();
        let v = self
            .raw(
                "POST",
                "/whatsapp/verifyNumber",
                Some(t),
                Some(&format!(r#"{{"whatsapp":"{number}","code":"{code}"}}"#)),
            )
            .await;
        assert_eq!(v, json!({ "status": "OK", "reason": 1, "whatsapp": number }));
    }

    async fn create(&self, t: &str, number: &str, coexistence: u8) -> Value {
        let body = format!(
            r#"{{"whatsapp":"{number}","business_name":"Acme inc","business_email":"john@example.com","business_id":"1234567","business_address":"Grove Street, San Andreas","display_name":"Acme","reference":"ref-{number}","coexistence":{coexistence}}}"#
        );
        self.raw("POST", "/whatsapp/createOnboarding", Some(t), Some(&body)).await
    }
}

fn fail(reason: u32) -> Value {
    json!({ "status": "FAIL", "reason": reason })
}

/// A tiny webhook receiver: every JSON body posted to `/hook` goes into the channel.
async fn hook_server() -> (String, mpsc::UnboundedReceiver<Value>, Running) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |Json(v): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                "ok"
            }
        }),
    );
    let running = common::serve(app, SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    (format!("{}/hook", running.base_url()), rx, running)
}

#[tokio::test]
async fn access_token_issued_and_expires_after_one_hour() {
    let (sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let now = sim.core().clock.now_secs();
    let v = api.login_body(r#"{"client_id":"sandbox-client","client_secret":"sandbox-secret"}"#).await;
    assert_eq!(v["status"], "OK");
    assert_eq!(v["reason"], 1);
    assert_eq!(v["token_type"], "Bearer");
    let exp: i64 = v["expiration_time"].as_str().unwrap().parse().unwrap();
    assert!((exp - (now + 3600)).abs() <= 1);
    let t = v["access_token"].as_str().unwrap();
    assert_eq!(
        api.raw("GET", "/whatsapp/getAccounts", Some(t), None).await,
        json!({ "status": "OK", "reason": 1, "list": [] })
    );
    sim.core().clock.advance(Duration::from_secs(3600));
    assert_eq!(api.raw("GET", "/whatsapp/getAccounts", Some(t), None).await, fail(3));
}

#[tokio::test]
async fn bad_credentials_and_missing_tokens() {
    let (_sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    assert_eq!(api.login_body(r#"{"client_id":"sandbox-client","client_secret":"nope"}"#).await, fail(2));
    assert_eq!(api.login_body(r#"{"client_id":"sandbox-client""#).await, fail(2));
    assert_eq!(api.login_body(r#"{"client_id":"other","client_secret":"sandbox-secret"}"#).await, fail(2));
    assert_eq!(api.raw("GET", "/whatsapp/getAccounts", None, None).await, fail(3));
    assert_eq!(api.raw("GET", "/whatsapp/getAccounts", Some("made-up"), None).await, fail(3));
}

#[tokio::test]
async fn three_bad_logins_block_the_client() {
    let (sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let bad = r#"{"client_id":"sandbox-client","client_secret":"nope"}"#;
    let good = r#"{"client_id":"sandbox-client","client_secret":"sandbox-secret"}"#;
    for _ in 0..3 {
        assert_eq!(api.login_body(bad).await, fail(2));
    }
    assert_eq!(api.login_body(good).await, fail(3));
    sim.core().clock.advance(Duration::from_secs(1800));
    assert_eq!(api.login_body(bad).await, fail(3));
    // Blocked attempts do not extend the block.
    sim.core().clock.advance(Duration::from_secs(1800));
    assert_eq!(api.login_body(good).await["status"], "OK");
    // A success resets the count: two failures then a success still work.
    assert_eq!(api.login_body(bad).await, fail(2));
    assert_eq!(api.login_body(bad).await, fail(2));
    assert_eq!(api.login_body(good).await["status"], "OK");
}

#[tokio::test]
async fn wrong_verb_reasons() {
    let (_sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    assert_eq!(api.raw("GET", "/settings/accessToken", None, None).await, fail(13));
    assert_eq!(api.raw("POST", "/whatsapp/getAccounts", Some(&t), None).await, fail(13));
    assert_eq!(api.raw("GET", "/whatsapp/deleteAccount", Some(&t), None).await, fail(13));
    assert_eq!(api.raw("GET", "/whatsapp/createOnboarding", Some(&t), None).await, fail(13));
    assert_eq!(api.raw("POST", "/settings/setBusiness", Some(&t), Some("{}")).await, fail(27));
    assert_eq!(api.raw("PUT", "/settings/setBusiness", Some(&t), Some("{}")).await, fail(27));
}

#[tokio::test]
async fn register_verify_create_and_list() {
    let (sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    let reg = |body: &'static str| api.raw("POST", "/whatsapp/registerNumber", Some(&t), Some(body));
    assert_eq!(reg(r#"{"whatsapp":"+972501234567","method":1}"#).await, fail(4));
    assert_eq!(reg(r#"{"whatsapp":"972501234567","method":3}"#).await, fail(4));
    assert_eq!(reg(r#"{"method":1}"#).await, fail(4));
    assert_eq!(
        reg(r#"{"whatsapp":"972501234567","method":2}"#).await,
        json!({ "status": "OK", "reason": 1, "whatsapp": NUM })
    );
    let code = sim.code(NUM).unwrap();
    assert!(code != "000000" && code.len() == 6);
    let v = api
        .raw("POST", "/whatsapp/verifyNumber", Some(&t), Some(r#"{"whatsapp":"972501234567","code":"000000"}"#))
        .await;
    assert_eq!(v, fail(22));
    // Not verified yet.
    assert_eq!(api.create(&t, NUM, 0).await, fail(23));
    let body = format!(r#"{{"whatsapp":"972501234567","code":"{code}"}}"#);
    assert_eq!(api.raw("POST", "/whatsapp/verifyNumber", Some(&t), Some(&body)).await["status"], "OK");

    let missing = r#"{"whatsapp":"972501234567","business_email":"a@b.c","display_name":"Acme"}"#;
    assert_eq!(api.raw("POST", "/whatsapp/createOnboarding", Some(&t), Some(missing)).await, fail(4));
    let created = api.create(&t, NUM, 0).await;
    assert_eq!(created["status"], "OK");
    assert_eq!(created["reason"], 1);
    assert_eq!(created["whatsapp"], NUM);
    let link = created["onboarding_link"].as_str().unwrap().to_string();
    let landing = created["landing_page"].as_str().unwrap().to_string();
    assert!(link.starts_with("https://") && landing.starts_with("https://"));
    assert_eq!(api.create(&t, NUM, 0).await, fail(24));
    assert_eq!(api.create(&t, "972509999999", 0).await, fail(23));
    let c = sim.core().counters();
    assert_eq!(c.created.get("accounts"), Some(&1));
    assert_eq!(c.duplicate_creates, 1);

    let v = api.raw("GET", "/whatsapp/getAccounts", Some(&t), None).await;
    let ct = v["list"][0]["create_time"].as_i64().unwrap();
    assert_eq!(
        v,
        json!({ "status": "OK", "reason": 1, "list": [{
            "create_time": ct, "whatsapp": NUM, "coexistence": 0, "business_name": "Acme inc",
            "business_email": "john@example.com", "business_id": "1234567",
            "business_address": "Grove Street, San Andreas", "landing_page": landing,
            "onboarding_link": link, "display_name": "Acme", "reference": format!("ref-{NUM}"), "status": 0 }] })
    );
    // [C] The number left getRegisteredNumbers when its account was created.
    let v = api.raw("GET", "/whatsapp/getRegisteredNumbers", Some(&t), None).await;
    assert_eq!(v, json!({ "status": "OK", "reason": 1, "list": [] }));
}

/// `registered_keeps_link` reproduces the vendor sample (number listed with its link after
/// the account exists), for leniency tests.
#[tokio::test]
async fn registered_keeps_link_reproduces_the_vendor_sample() {
    let (_sim, srv) = start(Digital99SimConfig { registered_keeps_link: true, ..manual() }).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    api.verified(&t, NUM).await;
    let link = api.create(&t, NUM, 0).await["onboarding_link"].as_str().unwrap().to_string();
    let v = api.raw("GET", "/whatsapp/getRegisteredNumbers", Some(&t), None).await;
    let item = &v["list"][0];
    assert_eq!(item["whatsapp"], NUM);
    assert_eq!(item["onboarding_link"], json!(link));
    assert!(item["expiration"].as_i64().unwrap() > 0);
    assert!(item["comment"].is_string());
}

/// Only the inferred create path picked by `create_path` is served; the other is a 404 with
/// a non-JSON body (docs/providers.md §4.2: no page shows the URL).
#[tokio::test]
async fn create_path_knob_serves_one_inferred_path() {
    for (cfg, served) in [
        (CreatePath::CreateOnboarding, Some("createOnboarding")),
        (CreatePath::CreateAccount, Some("createAccount")),
        (CreatePath::Unpublished, None),
    ] {
        let (_sim, srv) = start(Digital99SimConfig { create_path: cfg, ..Default::default() }).await;
        let api = Api::new(&srv);
        let t = api.login().await;
        for path in ["createOnboarding", "createAccount"] {
            let r = api
                .c
                .post(format!("{}/whatsapp/{path}", api.base))
                .bearer_auth(&t)
                .body(format!(r#"{{"whatsapp":"{NUM}","business_name":"Acme inc","display_name":"Acme"}}"#))
                .send()
                .await
                .unwrap();
            if served == Some(path) {
                assert_eq!(r.status(), 200, "{cfg:?} {path}");
            } else {
                assert_eq!(r.status(), 404, "{cfg:?} {path}");
                assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
            }
        }
    }
}

#[tokio::test]
async fn code_request_and_registration_caps() {
    let cfg = Digital99SimConfig { max_registered_numbers: 2, number_ttl_days: 90, ..manual() };
    let (sim, srv) = start(cfg).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    let body = format!(r#"{{"whatsapp":"{NUM}","method":1}}"#);
    for _ in 0..3 {
        assert_eq!(api.raw("POST", "/whatsapp/registerNumber", Some(&t), Some(&body)).await["status"], "OK");
    }
    assert_eq!(api.raw("POST", "/whatsapp/registerNumber", Some(&t), Some(&body)).await, fail(20));
    // Non-sandbox codes are random 6 digits.
    let code = sim.code(NUM).unwrap();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    let b2 = r#"{"whatsapp":"972501111111","method":1}"#;
    assert_eq!(api.raw("POST", "/whatsapp/registerNumber", Some(&t), Some(b2)).await["status"], "OK");
    let b3 = r#"{"whatsapp":"972502222222","method":1}"#;
    assert_eq!(api.raw("POST", "/whatsapp/registerNumber", Some(&t), Some(b3)).await, fail(21));
    // Registered numbers without an account expire after 90 days, freeing slots.
    sim.core().clock.advance(Duration::from_secs(90 * 86_400));
    let t = api.login().await;
    let v = api.raw("GET", "/whatsapp/getRegisteredNumbers", Some(&t), None).await;
    assert_eq!(v, json!({ "status": "OK", "reason": 1, "list": [] }));
    assert_eq!(api.raw("POST", "/whatsapp/registerNumber", Some(&t), Some(b3)).await["status"], "OK");
}

#[tokio::test]
async fn coexistence_shows_temporary_number_until_finished() {
    let (sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    api.verified(&t, NUM).await;
    assert_eq!(api.create(&t, NUM, 1).await["status"], "OK");
    let v = api.raw("GET", "/whatsapp/getAccounts", Some(&t), None).await;
    let temp = v["list"][0]["whatsapp"].as_str().unwrap().to_string();
    assert!(temp.starts_with("97257") && temp.len() == 12 && temp != NUM, "{temp}");
    assert_eq!(v["list"][0]["coexistence"], 1);
    assert_eq!(v["list"][0]["status"], 0);
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/digital99/accounts/{NUM}/finish", srv.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = api.raw("GET", "/whatsapp/getAccounts", Some(&t), None).await;
    assert_eq!(v["list"][0]["whatsapp"], NUM);
    assert_eq!(v["list"][0]["status"], 1);
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/digital99/accounts/{NUM}/finish", srv.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(sim.finish("972500000000"), Err(FinishError::NotFound));
}

#[tokio::test]
async fn sandbox_finish_posts_partner_webhook_once() {
    let (hook, mut rx, _hook_srv) = hook_server().await;
    let cfg = Digital99SimConfig { finish_delay_ms: 200, ..Default::default() };
    let (sim, srv) = start(cfg).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    let v = api.raw("POST", "/settings/setWebhook", Some(&t), Some(&json!({ "url": hook }).to_string())).await;
    assert_eq!(v, json!({ "status": "OK", "url": hook, "reason": 1 }));
    assert_eq!(
        api.raw("GET", "/settings/getWebhook", Some(&t), None).await,
        json!({ "status": "OK", "url": hook, "reason": 1 })
    );
    api.verified(&t, NUM).await;
    assert_eq!(sim.code(NUM).as_deref(), Some("123456"), "sandbox code");
    assert_eq!(api.create(&t, NUM, 0).await["status"], "OK");
    let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
    let ts = got["timestamp"].as_i64().unwrap();
    assert_eq!(
        got,
        json!({ "type": "whatsapp", "event": "onboarding_finished", "whatsapp": NUM,
                "reference": format!("ref-{NUM}"), "status": 1, "timestamp": ts })
    );
    let v = api.raw("GET", "/whatsapp/getAccounts", Some(&t), None).await;
    assert_eq!(v["list"][0]["status"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "webhook sent once");
    assert_eq!(sim.core().counters().callbacks_sent, 1);
    assert!(sim.accounts()[0].webhook_sent);
}

#[tokio::test]
async fn sandbox_finish_follows_the_sim_clock() {
    let (hook, mut rx, _hook_srv) = hook_server().await;
    let cfg = Digital99SimConfig { finish_delay_ms: 600_000, ..Default::default() };
    let (sim, srv) = start(cfg).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    api.raw("POST", "/settings/setWebhook", Some(&t), Some(&json!({ "url": hook }).to_string())).await;
    api.verified(&t, NUM).await;
    api.create(&t, NUM, 1).await;
    assert_eq!(sim.accounts()[0].status, 0);
    sim.core().clock.advance(Duration::from_secs(601));
    // The ticker fires the webhook without any request.
    let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
    assert_eq!(got["whatsapp"], NUM);
    let v = api.raw("GET", "/whatsapp/getAccounts", Some(&t), None).await;
    assert_eq!(v["list"][0]["whatsapp"], NUM);
    assert_eq!(v["list"][0]["status"], 1);
}

#[tokio::test]
async fn delete_account_reasons() {
    let (_sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    let del = |body: String| api.send("DELETE", "/whatsapp/deleteAccount", Some(&t), body);
    assert_eq!(del(r#"{"whatsapp":""}"#.into()).await, fail(4));
    assert_eq!(del(r#"{"whatsapp":"+97250"}"#.into()).await, fail(4));
    assert_eq!(del(format!(r#"{{"whatsapp":"{NUM}"}}"#)).await, fail(26));
    api.verified(&t, NUM).await;
    api.create(&t, NUM, 0).await;
    assert_eq!(
        del(format!(r#"{{"whatsapp":"{NUM}"}}"#)).await,
        json!({ "status": "OK", "whatsapp": NUM, "reason": 1 })
    );
    assert_eq!(api.raw("GET", "/whatsapp/getAccounts", Some(&t), None).await["list"], json!([]));
    // The number stays registered: a new link can be made, then finished, then not deleted.
    api.create(&t, NUM, 0).await;
    reqwest::Client::new()
        .post(format!("{}/_sim/digital99/accounts/{NUM}/finish", srv.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(del(format!(r#"{{"whatsapp":"{NUM}"}}"#)).await, fail(25));
}

#[tokio::test]
async fn webhook_and_business_settings_validation() {
    let (_sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    assert_eq!(
        api.raw("GET", "/settings/getWebhook", Some(&t), None).await,
        json!({ "status": "OK", "url": "", "reason": 1 })
    );
    let long = format!("https://example.com/{}", "a".repeat(500));
    for body in [
        r#"{"url":"ftp://example.com"}"#.to_string(),
        r#"{"url":"not a url"}"#.to_string(),
        json!({ "url": long }).to_string(),
    ] {
        assert_eq!(api.raw("POST", "/settings/setWebhook", Some(&t), Some(&body)).await, fail(13), "{body}");
    }
    let patch = |body: String| api.send("PATCH", "/settings/setBusiness", Some(&t), body);
    let ok =
        patch(r#"{"onboarding_logo":"https://cdn.example.com/logo.png","onboarding_button":"Start"}"#.into()).await;
    assert_eq!(
        ok,
        json!({ "status": "OK", "reason": 1, "onboarding_logo": "https://cdn.example.com/logo.png", "onboarding_button": "Start" })
    );
    assert_eq!(patch(r#"{"onboarding_logo":"http://cdn.example.com/logo.png"}"#.into()).await, fail(28));
    assert_eq!(patch(json!({ "onboarding_message": "m".repeat(201) }).to_string()).await, fail(29));
    assert_eq!(patch(json!({ "onboarding_button": "b".repeat(51) }).to_string()).await, fail(30));
    assert_eq!(patch(json!({ "onboarding_success": "s".repeat(201) }).to_string()).await, fail(31));
    assert_eq!(patch(json!({ "onboarding_failed": 5 }).to_string()).await, fail(31));
}

#[tokio::test]
async fn fault_middleware_renders_99digital_bodies() {
    let (sim, srv) = start(manual()).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    let ep = Some("GET /api/whatsapp/getAccounts");
    sim.core().fail_next(ep, 1, Fault::Status { status: 502 });
    sim.core().fail_next(ep, 1, Fault::TooManyRequests { retry_after_secs: None });
    sim.core().fail_next(ep, 1, Fault::OkWithErrorBody);
    let url = format!("{}/api/whatsapp/getAccounts", srv.base_url());
    let get = || reqwest::Client::new().get(&url).header("Authorization", format!("Bearer {t}")).send();
    let r = get().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap(), fail(500));
    let r = get().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<Value>().await.unwrap(), fail(429));
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), fail(3));
    assert_eq!(api.raw("GET", "/whatsapp/getAccounts", Some(&t), None).await["status"], "OK");
    let c = sim.core().counters();
    assert_eq!(c.faults_injected, 3);
    assert_eq!(c.calls.get("GET /api/whatsapp/getAccounts"), Some(&4));
}

#[tokio::test]
async fn sandbox_counts_unregistered_numbers_as_verified_but_not_pending_registrations() {
    let (sim, srv) = start(Digital99SimConfig { finish_delay_ms: 600_000, ..Default::default() }).await;
    let api = Api::new(&srv);
    let t = api.login().await;
    // Never registered through the API: pre-registered by the sandbox owner.
    assert_eq!(api.create(&t, NUM, 0).await["status"], "OK");
    assert_eq!(sim.accounts().len(), 1);
    // Registered through the API and not verified yet: the code is still required.
    let other = "972509999999";
    let v =
        api.send("POST", "/whatsapp/registerNumber", Some(&t), format!(r#"{{"whatsapp":"{other}","method":1}}"#)).await;
    assert_eq!(v["status"], "OK");
    assert_eq!(api.create(&t, other, 0).await, fail(23));
    // Outside sandbox mode nothing is pre-registered.
    let (_, manual_srv) = start(manual()).await;
    let manual_api = Api::new(&manual_srv);
    let t = manual_api.login().await;
    assert_eq!(manual_api.create(&t, NUM, 0).await, fail(23));
}
