//! Black-box tests of the Gupshup simulator: raw HTTP against a spawned instance.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::sim::common::{Fault, Running};

/// Form pairs of one request.
type Form<'a> = Vec<(&'a str, &'a str)>;

const EMAIL: &str = "sandbox@wa-onboard.local";
const SECRET: &str = "sandbox-secret";
/// Long stages so tests move time only with the clock.
const STAGE: u64 = 10_000;

fn cfg() -> GupshupSimConfig {
    GupshupSimConfig { stage_ms: STAGE, ticker_ms: 20, ..GupshupSimConfig::default() }
}

async fn start(config: GupshupSimConfig) -> (GupshupSim, Running, String, Client) {
    let (sim, running) = GupshupSim::spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = running.base_url();
    (sim, running, base, Client::new())
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (s, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

fn err(msg: &str) -> Value {
    json!({"status": "error", "message": msg})
}

async fn login(c: &Client, base: &str) -> String {
    let r = c
        .post(format!("{base}/partner/account/login"))
        .form(&[("email", EMAIL), ("secret", SECRET)])
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

async fn link(c: &Client, base: &str, token: &str, form: &[(&str, &str)]) -> (u16, Value) {
    json_of(c.post(format!("{base}/partner/tpp/app")).header("Authorization", token).form(form).send().await.unwrap())
        .await
}

async fn link_ok(c: &Client, base: &str, token: &str, name: &str, phone: &str, cb: Option<&str>) -> String {
    let mut form = vec![("name", name), ("wabaId", "104996545612345"), ("phone", phone)];
    if let Some(u) = cb {
        form.push(("callbackUrl", u));
    }
    let (s, v) = link(c, base, token, &form).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "success");
    v["appId"].as_str().unwrap().to_string()
}

async fn app_token(c: &Client, base: &str, partner: &str, app: &str) -> String {
    let (s, v) = json_of(
        c.get(format!("{base}/partner/app/{app}/token")).header("Authorization", partner).send().await.unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["token"]["token"].as_str().unwrap().to_string()
}

async fn pipeline(c: &Client, base: &str, token: &str, app: &str) -> (u16, Value) {
    json_of(c.get(format!("{base}/partner/app/{app}/pipeline")).header("Authorization", token).send().await.unwrap())
        .await
}

/// A callback sink: every POST body, with its path, goes into the channel.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Value)>, Running) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |uri: Uri, Json(v): Json<Value>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((uri.path().to_string(), v));
            StatusCode::OK
        }
    });
    let running = common::serve(app, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (running.base_url(), rx, running)
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.expect("callback expected").unwrap()
}

async fn nothing(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) {
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "no callback expected");
}

#[tokio::test]
async fn login_form_limit_and_expiry() {
    let (sim, _r, base, c) = start(cfg()).await;
    let url = format!("{base}/partner/account/login");
    let r = c
        .post(&url)
        .header("Accept", "application/json")
        .form(&[("email", EMAIL), ("secret", SECRET)])
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200);
    assert_eq!(v["id"], 1001);
    assert_eq!(v["email"], EMAIL);
    assert_eq!(v["isTpp"], true);
    assert_eq!(v["terms_read"], true);
    let token = v["token"].as_str().unwrap().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let exp = payload["exp"].as_i64().unwrap();
    assert!((exp - sim.core().clock.now_secs() - 86_400).abs() <= 2, "{payload}");

    // Older `password` spelling.
    let (s, v) = json_of(c.post(&url).form(&[("email", EMAIL), ("password", SECRET)]).send().await.unwrap()).await;
    assert_eq!(s, 200, "{v}");
    // Wrong secret.
    let (s, v) = json_of(c.post(&url).form(&[("email", EMAIL), ("secret", "nope")]).send().await.unwrap()).await;
    assert_eq!((s, v), (401, err("Authentication Failed")));

    // Token works raw in Authorization and in `token`; `Bearer` is not Gupshup's scheme.
    let form = [("name", "AcmeShopOne"), ("wabaId", "1"), ("phone", "919000000001")];
    let r = c.post(format!("{base}/partner/tpp/app")).header("token", &token).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (s, v) = link(&c, &base, &format!("Bearer {token}"), &[("name", "AcmeShopTwo")]).await;
    assert_eq!((s, v), (401, err("Authentication Failed")));

    // 10 / 60 s per email: 3 used, 7 more pass, the 11th is a violation.
    for _ in 0..7 {
        let r = c.post(&url).form(&[("email", EMAIL), ("secret", SECRET)]).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (s, v) = json_of(c.post(&url).form(&[("email", EMAIL), ("secret", SECRET)]).send().await.unwrap()).await;
    assert_eq!((s, v), (429, err("Too Many Requests")));
    let counters = sim.core().counters();
    assert_eq!(counters.rate_limit_violations, 1);
    assert_eq!(counters.violations_by_limit["login"], 1);
    // Another email has its own window.
    let r = c.post(&url).form(&[("email", "other@x.y"), ("secret", "x")]).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Expiry after 24 h on the sim clock.
    sim.core().clock.advance(Duration::from_secs(86_401));
    let (s, v) =
        link(&c, &base, &token, &[("name", "AcmeShopThree"), ("wabaId", "1"), ("phone", "919000000003")]).await;
    assert_eq!((s, v), (401, err("Authentication Failed")));
    // The window has passed too: login works again.
    assert!(!login(&c, &base).await.is_empty());
}

#[tokio::test]
async fn link_app_validation_and_conflicts() {
    // Rejected calls count against the 10 / min limit too: widen it here.
    let mut config = cfg();
    config.limits.link.max = 100;
    let (sim, _r, base, c) = start(config).await;
    let t = login(&c, &base).await;
    let len_msg = err("App name should be between 6 to 150 characters in length");
    let review = err("Please review the request parameters and retry");
    let long = "a".repeat(151);
    let cases: Vec<(Form, u16, Value)> = vec![
        (vec![("wabaId", "1"), ("phone", "919000000001")], 400, len_msg.clone()),
        (vec![("name", "Abcde"), ("wabaId", "1"), ("phone", "919000000001")], 400, len_msg.clone()),
        (vec![("name", long.as_str()), ("wabaId", "1"), ("phone", "919000000001")], 400, len_msg),
        (
            vec![("name", "acme_shop!"), ("wabaId", "1"), ("phone", "919000000001")],
            400,
            err("Invalid characters used in app name"),
        ),
        (vec![("name", "AcmeShop"), ("phone", "919000000001")], 400, review.clone()),
        (vec![("name", "AcmeShop"), ("wabaId", "1")], 400, review.clone()),
        (vec![("name", "AcmeShop"), ("wabaId", "1"), ("phone", "+91 900000")], 400, review),
        (
            vec![("name", "AcmeShop"), ("wabaId", "1"), ("phone", "919000000001"), ("storageRegion", "XX")],
            400,
            err("Invalid Region Passed"),
        ),
    ];
    for (form, status, body) in cases {
        assert_eq!(link(&c, &base, &t, &form).await, (status, body), "{form:?}");
    }
    // Without a token.
    let r = c.post(format!("{base}/partner/tpp/app")).form(&[("name", "AcmeShop")]).send().await.unwrap();
    assert_eq!(json_of(r).await, (401, err("Authentication Failed")));

    let (s, v) = link(
        &c,
        &base,
        &t,
        &[("name", "AcmeShop150"), ("wabaId", "1"), ("phone", "919000000001"), ("storageRegion", "IN")],
    )
    .await;
    assert_eq!(s, 200);
    let app_id = v["appId"].as_str().unwrap().to_string();
    assert_eq!(v, json!({"status": "success", "appId": app_id}));
    assert!(uuid::Uuid::parse_str(&app_id).is_ok());

    // Same name, other phone.
    let (s, v) = link(&c, &base, &t, &[("name", "ACMESHOP150"), ("wabaId", "2"), ("phone", "919000000002")]).await;
    assert_eq!((s, v), (409, err("Bot Already Exists")));
    // Retry of the same link: phone conflict carries the appId.
    let (s, v) = link(&c, &base, &t, &[("name", "AcmeShop150"), ("wabaId", "1"), ("phone", "919000000001")]).await;
    assert_eq!(s, 409);
    assert_eq!(
        v,
        json!({"status": "error", "message": format!("App {app_id} already exists with phone 919000000001"), "appId": app_id})
    );
    let counters = sim.core().counters();
    assert_eq!(counters.created["apps"], 1);
    assert_eq!(counters.duplicate_creates, 1);
    assert_eq!(sim.app(&app_id).unwrap().storage_region.as_deref(), Some("IN"));
}

#[tokio::test]
async fn link_app_limit_per_partner() {
    let mut config = cfg();
    config.limits.link = LimitSpec { max: 3, window_ms: 60_000 };
    let (sim, _r, base, c) = start(config).await;
    let t = login(&c, &base).await;
    for i in 0..3 {
        link_ok(&c, &base, &t, &format!("LimitApp{i}"), &format!("91900000010{i}"), None).await;
    }
    let (s, v) = link(&c, &base, &t, &[("name", "LimitApp9"), ("wabaId", "1"), ("phone", "919000000109")]).await;
    assert_eq!((s, v), (429, err("Too Many Requests")));
    assert_eq!(sim.core().counters().violations_by_limit["link_app"], 1);
    sim.core().clock.advance(Duration::from_secs(61));
    link_ok(&c, &base, &t, "LimitApp9", "919000000109", None).await;
}

#[tokio::test]
async fn callback_failure_partial_success_and_repair() {
    let (sim, _r, base, c) = start(cfg()).await;
    let (sink, mut rx, _sink) = receiver().await;
    let t = login(&c, &base).await;
    let r = c.put(format!("{base}/_sim/gupshup/knobs")).json(&json!({"fail_callback_next": 1})).send().await.unwrap();
    assert_eq!(json_of(r).await.1["fail_callback_next"], 1);

    let cb = format!("{sink}/cb");
    let (s, v) = link(
        &c,
        &base,
        &t,
        &[("name", "PartialApp"), ("wabaId", "1"), ("phone", "919000000201"), ("callbackUrl", &cb)],
    )
    .await;
    assert_eq!(s, 400);
    let app_id = v["appId"].as_str().unwrap().to_string();
    assert_eq!(
        v,
        json!({"status": "error", "appId": app_id, "message": "App created, but failed to set callback on the application"})
    );
    assert_eq!(sim.knobs().fail_callback_next, 0);
    let apps: Value = c.get(format!("{base}/_sim/gupshup/apps")).send().await.unwrap().json().await.unwrap();
    assert_eq!(apps[0]["appId"], app_id.as_str());
    assert_eq!(apps[0]["callbackUrl"], Value::Null);
    assert_eq!(sim.core().counters().created["apps"], 1);

    // An invalid callback URL also ends as a partial success.
    let (s, v) = link(
        &c,
        &base,
        &t,
        &[("name", "PartialApp2"), ("wabaId", "1"), ("phone", "919000000202"), ("callbackUrl", "not a url")],
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["message"], "App created, but failed to set callback on the application");

    // Repair with the app token.
    let at = app_token(&c, &base, &t, &app_id).await;
    let put = |token: String, url: String| {
        c.put(format!("{base}/partner/app/{app_id}/callbackUrl"))
            .header("Authorization", token)
            .form(&[("callbackUrl", url)])
            .send()
    };
    assert_eq!(json_of(put(at.clone(), "ftp//x".into()).await.unwrap()).await, (400, err("Invalid URL Passed")));
    assert_eq!(json_of(put("bogus".into(), cb.clone()).await.unwrap()).await, (401, err("Authentication Failed")));
    assert_eq!(json_of(put(at, cb.clone()).await.unwrap()).await, (200, json!({"status": "success"})));
    assert_eq!(sim.app(&app_id).unwrap().callback_url.as_deref(), Some(cb.as_str()));

    // The live event now reaches the repaired URL.
    sim.core().clock.advance(Duration::from_millis(3 * STAGE));
    let (path, ev) = recv(&mut rx).await;
    assert_eq!(path, "/cb");
    assert_eq!(ev["appId"], app_id.as_str());
    nothing(&mut rx).await;
}

#[tokio::test]
async fn app_token_shapes_and_access() {
    let mut config = cfg();
    config.partners.push(PartnerCredential {
        email: "b@x.y".into(),
        secret: "b".into(),
        partner_id: 2002,
        name: "Other".into(),
    });
    let (sim, _r, base, c) = start(config).await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "TokenApp", "919000000301", None).await;
    let url = format!("{base}/partner/app/{app_id}/token");

    let (s, v) = json_of(c.get(&url).header("Authorization", &t).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "success");
    let tok = &v["token"];
    let keys: Vec<&String> = tok.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["active", "authoriserId", "createdOn", "expiresOn", "modifiedOn", "requestorId", "token"]);
    assert_eq!(tok["expiresOn"], 0);
    assert_eq!(tok["active"], true);
    assert_eq!(tok["requestorId"], "1001");
    let secret = tok["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk_"));
    // Same token again, also with the trailing slash and the `token` header.
    let (_, v2) = json_of(c.get(format!("{url}/")).header("token", &t).send().await.unwrap()).await;
    assert_eq!(v2, v);

    // String shape.
    sim.set_knobs(GupshupKnobs { token_as_string: true, ..GupshupKnobs::default() });
    let (s, v) = json_of(c.get(&url).header("Authorization", &t).send().await.unwrap()).await;
    assert_eq!((s, v), (200, json!({"name": "wa-onboard sandbox", "terms_read": true, "token": secret})));

    // Another partner's app, unknown app, app token instead of partner token.
    let r = c
        .post(format!("{base}/partner/account/login"))
        .form(&[("email", "b@x.y"), ("secret", "b")])
        .send()
        .await
        .unwrap();
    let other = json_of(r).await.1["token"].as_str().unwrap().to_string();
    assert_eq!(
        json_of(c.get(&url).header("Authorization", &other).send().await.unwrap()).await,
        (403, err("Unauthorized Access"))
    );
    let unknown = format!("{base}/partner/app/{}/token", uuid::Uuid::new_v4());
    assert_eq!(
        json_of(c.get(&unknown).header("Authorization", &t).send().await.unwrap()).await,
        (400, err("Invalid app id provided"))
    );
    assert_eq!(
        json_of(c.get(&url).header("Authorization", &secret).send().await.unwrap()).await,
        (401, err("Authentication Failed"))
    );
    assert_eq!(sim.core().counters().created["app_tokens"], 1);
}

#[tokio::test]
async fn pipeline_progresses_to_live_and_fires_callbacks() {
    let (sim, _r, base, c) = start(cfg()).await;
    let (sink, mut rx, _sink) = receiver().await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "LiveApp", "919087875656", Some(&format!("{sink}/cb"))).await;
    let at = app_token(&c, &base, &t, &app_id).await;
    // ACCOUNT subscription (v2) and a MESSAGE-only one, created before live.
    for (tag, modes, path) in [("acc", "ACCOUNT", "/sub"), ("msg", "MESSAGE", "/msg")] {
        let r = c
            .post(format!("{base}/partner/app/{app_id}/subscription"))
            .header("Authorization", &at)
            .form(&[("modes", modes), ("tag", tag), ("url", &format!("{sink}{path}")), ("version", "2")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let (s, v) = pipeline(&c, &base, &at, &app_id).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "success");
    let w = &v["whatsapp"];
    let created = w["createdOn"].as_i64().unwrap();
    assert_eq!(
        *w,
        json!({
            "countryCode": "91", "createdOn": created, "creationStage": "INITIAL", "dialCode": "9087875656",
            "embedStage": "EMBED_PENDING", "id": app_id, "modifiedOn": created, "pipeLineStage": "CREATE_DOCKER",
            "uiFormStage": "GET_WHATSAPP_APPROVAL", "whatsappVerificationStatus": "PN_DN_APPROVED"
        })
    );
    let expect = [
        ("DOCKER_PROVISIONING", "CREATE_DOCKER", "WABA_APPROVED"),
        ("DOCKER_PROVISIONING", "GET_CERTIFICATE", "WABA_APPROVED"),
        ("WHATSAPP_PROVISIONING_DONE", "FINALIZE", "WHATSAPP_VERIFICATION_DONE"),
    ];
    for (i, (cs, ps, vs)) in expect.iter().enumerate() {
        assert!(rx.try_recv().is_err(), "no callback before live");
        sim.core().clock.advance(Duration::from_millis(STAGE));
        // Partner token is accepted as well.
        let (_, v) = pipeline(&c, &base, if i % 2 == 0 { &at } else { &t }, &app_id).await;
        let w = &v["whatsapp"];
        assert_eq!((w["creationStage"].as_str(), w["pipeLineStage"].as_str()), (Some(*cs), Some(*ps)));
        assert_eq!(w["whatsappVerificationStatus"], *vs);
        assert_eq!(w["modifiedOn"].as_i64(), Some(created + (i as i64 + 1) * STAGE as i64));
    }
    let (_, v) = pipeline(&c, &base, &at, &app_id).await;
    assert_eq!(v["whatsapp"]["uiFormStage"], "COMPLETE_VERIFICATION");

    let mut got = [recv(&mut rx).await, recv(&mut rx).await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("/cb", "/sub"));
    let ev = &got[0].1;
    assert_eq!(ev, &got[1].1);
    let ns = ev["payload"]["payload"]["namespace"].clone();
    assert!(ns.is_string());
    assert_eq!(
        *ev,
        json!({
            "app": "LiveApp", "appId": app_id, "phone": "919087875656", "timestamp": created + 3 * STAGE as i64,
            "version": 2, "type": "onboarding-event",
            "payload": {"type": "docker-status-event", "payload": {"status": "live", "waId": "919087875656", "namespace": ns}}
        })
    );
    nothing(&mut rx).await;
    assert!(sim.app(&app_id).unwrap().live_notified);

    // Other app's token or unknown app: documented 400; no token: 401.
    let other = link_ok(&c, &base, &t, "OtherLiveApp", "919000000402", None).await;
    assert_eq!(pipeline(&c, &base, &at, &other).await, (400, err("Please review the request parameters and retry")));
    // A bad token is the same documented 400 (issue 17 point 12).
    assert_eq!(
        pipeline(&c, &base, "nope", &app_id).await,
        (400, err("Please review the request parameters and retry"))
    );
}

#[tokio::test]
async fn live_callback_duplicated_by_knob() {
    let (sim, _r, base, c) = start(cfg()).await;
    let (sink, mut rx, _sink) = receiver().await;
    sim.core().with_knobs(|k| k.callbacks.duplicate_next = 1);
    let t = login(&c, &base).await;
    link_ok(&c, &base, &t, "DupLiveApp", "919000000501", Some(&format!("{sink}/cb"))).await;
    sim.core().clock.advance(Duration::from_millis(5 * STAGE));
    let (_, a) = recv(&mut rx).await;
    let (_, b) = recv(&mut rx).await;
    assert_eq!(a, b);
    assert_eq!(a["type"], "onboarding-event");
    nothing(&mut rx).await;
    assert_eq!(sim.core().counters().callbacks_sent, 2);
}

#[tokio::test]
async fn pipeline_error_path_and_limit() {
    let (sim, _r, base, c) = start(cfg()).await;
    let (sink, mut rx, _sink) = receiver().await;
    // `stageRetries` in the body (issue 17 point 10: off by default).
    sim.update_knobs(KnobsPatch { pipeline_stage_retries: Some(true), ..KnobsPatch::default() });
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "FailingApp", "15550001234", Some(&format!("{sink}/cb"))).await;
    for retries in 0..=3 {
        let (_, v) = pipeline(&c, &base, &t, &app_id).await;
        let w = &v["whatsapp"];
        assert_eq!(w["stageRetries"], retries);
        assert_ne!(w["creationStage"], "ERROR");
        assert_eq!((w["countryCode"].as_str(), w["dialCode"].as_str()), (Some("1"), Some("5550001234")));
        sim.core().clock.advance(Duration::from_millis(STAGE));
    }
    for _ in 0..2 {
        let (s, v) = pipeline(&c, &base, &t, &app_id).await;
        assert_eq!(s, 200);
        assert_eq!(v["status"], "success");
        let w = &v["whatsapp"];
        assert_eq!(w["creationStage"], "ERROR");
        assert_eq!(w["pipeLineStage"], "CREATE_DOCKER");
        assert_eq!(w["embedStage"], "EMBED_PENDING");
        assert_eq!(w["uiFormStage"], "GET_WHATSAPP_APPROVAL");
        assert_eq!(w["whatsappVerificationStatus"], "PN_DN_APPROVED");
        assert_eq!(w["stageRetries"], 3);
        sim.core().clock.advance(Duration::from_secs(3600));
    }
    nothing(&mut rx).await;
    assert!(sim.app(&app_id).unwrap().failed);

    // Knob: the next pipeline fails whatever the phone.
    let r = c.put(format!("{base}/_sim/gupshup/knobs")).json(&json!({"fail_next_pipelines": 1})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let a2 = link_ok(&c, &base, &t, "KnobFailingApp", "919000000602", None).await;
    let a3 = link_ok(&c, &base, &t, "KnobFineApp", "919000000603", None).await;
    sim.core().clock.advance(Duration::from_millis(5 * STAGE));
    assert_eq!(pipeline(&c, &base, &t, &a2).await.1["whatsapp"]["creationStage"], "ERROR");
    assert_eq!(pipeline(&c, &base, &t, &a3).await.1["whatsapp"]["creationStage"], "WHATSAPP_PROVISIONING_DONE");

    // 10 / s per app.
    for _ in 0..9 {
        assert_eq!(pipeline(&c, &base, &t, &a3).await.0, 200);
    }
    assert_eq!(pipeline(&c, &base, &t, &a3).await, (429, err("Too Many Requests")));
    assert_eq!(sim.core().counters().violations_by_limit["pipeline"], 1);
}

#[tokio::test]
async fn non_sandbox_waits_for_start() {
    let (sim, _r, base, c) = start(GupshupSimConfig { sandbox: false, ..cfg() }).await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "ManualApp", "919000000701", None).await;
    sim.core().clock.advance(Duration::from_millis(10 * STAGE));
    assert_eq!(pipeline(&c, &base, &t, &app_id).await.1["whatsapp"]["creationStage"], "INITIAL");
    let r = c.post(format!("{base}/_sim/gupshup/apps/{app_id}/start")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    sim.core().clock.advance(Duration::from_millis(3 * STAGE));
    assert!(sim.app(&app_id).unwrap().live);
}

#[tokio::test]
async fn subscriptions_crud_validation_and_bitmask() {
    let (sim, _r, base, c) = start(cfg()).await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "SubsApp", "919000000801", None).await;
    let other_app = link_ok(&c, &base, &t, "SubsOtherApp", "919000000802", None).await;
    let at = app_token(&c, &base, &t, &app_id).await;
    let other_at = app_token(&c, &base, &t, &other_app).await;
    let coll = format!("{base}/partner/app/{app_id}/subscription");
    let create = |token: &str, form: Vec<(&'static str, String)>| {
        c.post(&coll).header("Authorization", token.to_string()).form(&form).send()
    };
    let f = |modes: &str, tag: &str, url: &str, version: &str| {
        vec![
            ("modes", modes.to_string()),
            ("tag", tag.to_string()),
            ("url", url.to_string()),
            ("version", version.to_string()),
        ]
    };

    // Vendor example request.
    let (s, v) = json_of(
        create(&at, {
            let mut x = f(
                "SENT,ENQUEUED,DELIVERED,READ,DELETED,MESSAGE, OTHERS",
                "V3 Subscription",
                "https://webhook.site/0b092322",
                "3",
            );
            x.push(("showOnUI", "false".into()));
            x
        })
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let sub = &v["subscription"];
    let id = sub["id"].as_str().unwrap().to_string();
    assert!(id.parse::<u64>().is_ok());
    let now = sub["createdOn"].as_i64().unwrap();
    assert_eq!(
        v,
        json!({"status": "success", "subscription": {
            "active": true, "appId": app_id, "createdOn": now, "id": id, "mode": 1119, "modifiedOn": now,
            "showOnUI": false, "tag": "V3 Subscription", "url": "https://webhook.site/0b092322", "version": 3
        }})
    );

    // Validations.
    let bad: Vec<(Vec<(&'static str, String)>, Value)> = vec![
        (f("SENT,BOGUS", "t1", "https://x.io/h", "2"), err("Invalid modes passed")),
        (f("SENT,COPY", "t1", "https://x.io/h", "2"), err("Invalid modes passed")),
        (f("SENT,OTHERS", "t1", "https://x.io/h", "2"), err("Invalid modes passed")),
        (f("SENT,FLOWS_MESSAGE", "t1", "https://x.io/h", "1"), err("Invalid modes passed")),
        (f("SENT", "t1", "https://x.io/h", "4"), err("Invalid Version Passed")),
        (f("SENT", "t1", "not-a-url", "2"), err("Invalid URL Passed")),
        (f("SENT", "V3 Subscription", "https://x.io/h", "2"), err("Duplicate tag")),
    ];
    for (form, body) in bad {
        assert_eq!(json_of(create(&at, form.clone()).await.unwrap()).await, (400, body), "{form:?}");
    }
    // Partner token accepted; SENT,ENQUEUED = 1025; the same tag on another app is fine.
    let (s, v) = json_of(create(&t, f("SENT,ENQUEUED", "two", "http://x.io/h", "2")).await.unwrap()).await;
    assert_eq!((s, v["subscription"]["mode"].as_u64()), (200, Some(1025)));
    let id2 = v["subscription"]["id"].as_str().unwrap().to_string();
    let r = c
        .post(format!("{base}/partner/app/{other_app}/subscription"))
        .header("Authorization", &other_at)
        .form(&[("modes", "ALL"), ("tag", "two"), ("url", "https://x.io"), ("version", "3")])
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!((s, v["subscription"]["mode"].as_u64()), (200, Some(8192)));
    let foreign_id = v["subscription"]["id"].as_str().unwrap().to_string();
    // Auth errors.
    assert_eq!(
        json_of(create(&other_at, f("SENT", "x", "https://x.io", "2")).await.unwrap()).await,
        (403, err("Unauthorized Access"))
    );
    assert_eq!(
        json_of(create("nope", f("SENT", "x", "https://x.io", "2")).await.unwrap()).await,
        (401, err("Authentication Failed"))
    );

    // List and get carry modes and latencyBucket.
    let (s, v) = json_of(c.get(&coll).header("Authorization", &at).send().await.unwrap()).await;
    assert_eq!(s, 200);
    let list = v["subscriptions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["modes"], json!(["SENT", "DELIVERED", "READ", "DELETED", "OTHERS", "MESSAGE", "ENQUEUED"]));
    assert_eq!(list[0]["latencyBucket"], "lt_1_s");
    let one = format!("{coll}/{id2}");
    let (s, v) = json_of(c.get(&one).header("Authorization", &at).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["subscription"]["modes"], json!(["SENT", "ENQUEUED"]));
    assert_eq!(v["subscription"]["mode"], 1025);

    // Update.
    let (s, v) = json_of(
        c.put(&one)
            .header("Authorization", &at)
            .form(&[("modes", "ACCOUNT,READ"), ("active", "false"), ("meta", r#"{"headers":{"X":"1"}}"#)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["subscription"]["mode"], 260);
    assert_eq!(v["subscription"]["active"], false);
    assert_eq!(v["subscription"]["meta"], r#"{"headers":{"X":"1"}}"#);
    let r = c.put(&one).header("Authorization", &at).form(&[("tag", "V3 Subscription")]).send().await.unwrap();
    assert_eq!(json_of(r).await, (400, err("Duplicate tag")));
    let r = c.put(&one).header("Authorization", &at).form(&[("modes", "ALL")]).send().await.unwrap();
    assert_eq!(json_of(r).await, (400, err("Invalid modes passed")));

    // Unknown / foreign subscription.
    let r = c.get(format!("{coll}/999999")).header("Authorization", &at).send().await.unwrap();
    assert_eq!(json_of(r).await, (400, err("Subscription Does Not Exist")));
    let r = c.delete(format!("{coll}/{foreign_id}")).header("Authorization", &at).send().await.unwrap();
    assert_eq!(json_of(r).await, (403, err("Not Subscription Owner")));

    // Delete one, then all (5 / min).
    let r = c.delete(&one).header("Authorization", &at).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (204, String::new()));
    let r = c.get(&one).header("Authorization", &at).send().await.unwrap();
    assert_eq!(json_of(r).await, (400, err("Subscription Does Not Exist")));
    for _ in 0..5 {
        assert_eq!(c.delete(&coll).header("Authorization", &at).send().await.unwrap().status(), 204);
    }
    let r = c.delete(&coll).header("Authorization", &at).send().await.unwrap();
    assert_eq!(json_of(r).await, (429, err("Too Many Requests")));
    let (_, v) = json_of(c.get(&coll).header("Authorization", &at).send().await.unwrap()).await;
    assert_eq!(v["subscriptions"], json!([]));
    assert_eq!(sim.app(&other_app).unwrap().subscriptions, 1);
    let counters = sim.core().counters();
    assert_eq!(counters.created["subscriptions"], 3);
    assert_eq!(counters.violations_by_limit["delete_all_subscriptions"], 1);
}

#[tokio::test]
async fn faults_through_middleware_and_counters() {
    let (sim, _r, base, c) = start(cfg()).await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "FaultApp", "919000000901", None).await;

    sim.core().fail_next(Some("POST /partner/tpp/app"), 1, Fault::Status { status: 500 });
    let (s, v) = link(&c, &base, &t, &[("name", "FaultApp2"), ("wabaId", "1"), ("phone", "919000000902")]).await;
    assert_eq!(
        (s, v),
        (
            500,
            err("Internal server error. Please try again later. If the issue persists, contact Gupshup Dev Support.")
        )
    );
    link_ok(&c, &base, &t, "FaultApp2", "919000000902", None).await;

    let ep = "GET /partner/app/{app_id}/pipeline";
    sim.core().fail_next(Some(ep), 1, Fault::TooManyRequests { retry_after_secs: Some(2) });
    let r = c.get(format!("{base}/partner/app/{app_id}/pipeline")).header("Authorization", &t).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(json_of(r).await, (429, err("Too Many Requests")));
    sim.core().fail_next(Some(ep), 1, Fault::OkWithErrorBody);
    assert_eq!(pipeline(&c, &base, &t, &app_id).await, (200, err("Please review the request parameters and retry")));
    assert_eq!(pipeline(&c, &base, &t, &app_id).await.0, 200);

    // Shared control API is mounted too.
    let counters: Value = c.get(format!("{base}/_sim/counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counters["calls"][ep], 3);
    assert_eq!(counters["calls"]["POST /partner/tpp/app"], 3);
    assert_eq!(counters["faults_injected"], 3);
    assert_eq!(counters["created"]["apps"], 2);
    assert_eq!(counters["created"]["partner_tokens"], 1);
    // Injected 429s are not limit violations.
    assert_eq!(counters["rate_limit_violations"], 0);
}

#[tokio::test]
async fn control_account_event_delivery() {
    let (sim, _r, base, c) = start(cfg()).await;
    let (sink, mut rx, _sink) = receiver().await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "EventApp", "919000001001", Some(&format!("{sink}/cb"))).await;
    let body = json!({"type": "account-event", "payload": {"type": "tier-event", "payload": {"event": "UPGRADE", "oldLimit": "TIER_1K", "currentLimit": "TIER_10K"}}});
    let r = c.post(format!("{base}/_sim/gupshup/apps/{app_id}/events")).json(&body).send().await.unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!((s, v["delivered"].as_u64()), (200, Some(1)));
    let (path, ev) = recv(&mut rx).await;
    assert_eq!(path, "/cb");
    let ts = ev["timestamp"].as_i64().unwrap();
    assert!((ts - sim.core().clock.now_ms()).abs() < 5_000);
    assert_eq!(
        ev,
        json!({"app": "EventApp", "appId": app_id, "phone": "919000001001", "timestamp": ts, "version": 2,
               "type": "account-event", "payload": body["payload"]})
    );
    let r = c.post(format!("{base}/_sim/gupshup/apps/nope/events")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

// issue 17 points 14-15

/// Point 14: "Special Characters are not allowed" covers a space (the vendor's 400 text);
/// the strict profile (`versions_current_only`) takes only the current page's versions 2, 3.
#[tokio::test]
async fn names_with_spaces_and_old_versions_in_the_strict_profile_are_refused() {
    let (sim, _r, base, c) = start(cfg()).await;
    let t = login(&c, &base).await;
    let (s, v) = link(&c, &base, &t, &[("name", "Acme Shop"), ("wabaId", "1"), ("phone", "919000000901")]).await;
    assert_eq!((s, v), (400, err("Invalid characters used in app name")));
    let app_id = link_ok(&c, &base, &t, "StrictApp1", "919000000902", None).await;
    let at = app_token(&c, &base, &t, &app_id).await;
    let create = |version: &'static str, tag: &'static str| {
        c.post(format!("{base}/partner/app/{app_id}/subscription"))
            .header("Authorization", at.clone())
            .form(&[
                ("modes", "SENT,TEMPLATE,ACCOUNT"),
                ("tag", tag),
                ("url", "https://hooks.example.com/x"),
                ("version", version),
            ])
            .send()
    };
    assert_eq!(json_of(create("1", "old").await.unwrap()).await.0, 200, "0..=3 by default");
    sim.update_knobs(KnobsPatch { versions_current_only: Some(true), ..KnobsPatch::default() });
    assert_eq!(json_of(create("1", "old2").await.unwrap()).await, (400, err("Invalid Version Passed")));
    assert_eq!(json_of(create("3", "v3").await.unwrap()).await.0, 200, "TEMPLATE, ACCOUNT with v3 (current page)");
    let copy = c
        .post(format!("{base}/partner/app/{app_id}/subscription"))
        .header("Authorization", at.clone())
        .form(&[("modes", "SENT,COPY"), ("tag", "copy"), ("url", "https://hooks.example.com/x"), ("version", "3")])
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(copy).await.0, 400, "COPY is no mode");
}

/// Point 15: once the client secret's expiry passes, login answers 401 (knob
/// `secret_expires_at_ms`); clearing the knob (`null`) lets it log in again.
#[tokio::test]
async fn login_with_an_expired_client_secret_is_refused() {
    let (sim, _r, base, c) = start(cfg()).await;
    let now = sim.core().clock.now_ms();
    let r = c
        .put(format!("{base}/_sim/gupshup/knobs"))
        .json(&json!({ "secret_expires_at_ms": now + 60_000 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    login(&c, &base).await;
    sim.core().clock.advance(Duration::from_secs(60));
    let r = c.post(format!("{base}/partner/account/login")).form(&[("email", EMAIL), ("secret", SECRET)]).send();
    assert_eq!(json_of(r.await.unwrap()).await, (401, err("Authentication Failed")));
    let r = c.put(format!("{base}/_sim/gupshup/knobs")).json(&json!({ "secret_expires_at_ms": null })).send();
    assert!(r.await.unwrap().status().is_success());
    assert_eq!(sim.knobs().secret_expires_at_ms, None);
    login(&c, &base).await;
}

// ---------- issue 17 points 9-13 ----------

async fn get_json(c: &Client, url: &str, token: &str) -> (u16, Value) {
    json_of(c.get(url).header("token", token).send().await.unwrap()).await
}

/// Point 9: with the knob, a retried link meets `Bot Already Exists`; the app list finds the
/// app by phone (contains-search, paged, only the partner's own), in three shapes; the older
/// `partnerApps` list; 404 when the list is gone.
#[tokio::test]
async fn bot_exists_knob_app_list_and_partner_apps() {
    let mut config = cfg();
    config.limits.link.max = 100;
    config.partners.push(PartnerCredential {
        email: "b@x.y".into(),
        secret: "b".into(),
        partner_id: 2002,
        name: "Other".into(),
    });
    let (sim, _r, base, c) = start(config).await;
    let t = login(&c, &base).await;
    let a1 = link_ok(&c, &base, &t, "ListAppOne", "919000001101", None).await;
    let a2 = link_ok(&c, &base, &t, "ListAppTwo", "919000001102", None).await;
    let r = c.post(format!("{base}/partner/account/login")).form(&[("email", "b@x.y"), ("secret", "b")]).send();
    let other = json_of(r.await.unwrap()).await.1["token"].as_str().unwrap().to_string();
    link_ok(&c, &base, &other, "ForeignApp", "919000001103", None).await;

    let relink = [("name", "ListAppOne"), ("wabaId", "104996545612345"), ("phone", "919000001101")];
    let (s, v) = link(&c, &base, &t, &relink).await;
    assert_eq!(s, 409);
    assert!(v["appId"].is_string(), "phone-409 by default: {v}");
    sim.update_knobs(KnobsPatch { bot_exists_on_relink: Some(true), ..KnobsPatch::default() });
    assert_eq!(link(&c, &base, &t, &relink).await, (409, err("Bot Already Exists")));

    let list = format!("{base}/partner/app/list");
    let (s, v) = get_json(&c, &format!("{list}?phone=919000001101&pageNo=1&pageSize=50"), &t).await;
    assert_eq!(s, 200);
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], a1.as_str());
    assert_eq!(items[0]["phone"], "919000001101");
    assert_eq!(items[0]["live"], false);
    assert!(items[0]["pipelineStage"].is_string() && items[0]["creationStage"].is_string());
    // Contains-search, own apps only, paged (default size 10).
    let (_, v) = get_json(&c, &format!("{list}?phone=9190000011"), &t).await;
    let ids: Vec<&str> = v.as_array().unwrap().iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, [a1.as_str(), a2.as_str()]);
    let (_, v) = get_json(&c, &format!("{list}?phone=9190000011&pageNo=2&pageSize=1"), &t).await;
    assert_eq!(v[0]["id"], a2.as_str());
    let (_, v) = get_json(&c, &format!("{list}?name=listapptwo&phone=11"), &t).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    // Undocumented parameters and bad pages are 400; no partner token is 401.
    for q in ["search=List", "pageNo=0", "pageSize=x"] {
        assert_eq!(get_json(&c, &format!("{list}?{q}"), &t).await.0, 400, "{q}");
    }
    assert_eq!(get_json(&c, &list, "nope").await.0, 401);
    // The other shapes.
    for (shape, key) in [(AppListShape::Data, "data"), (AppListShape::PartnerAppsList, "partnerAppsList")] {
        sim.update_knobs(KnobsPatch { applist_shape: Some(shape), ..KnobsPatch::default() });
        let (_, v) = get_json(&c, &format!("{list}?phone=919000001101"), &t).await;
        assert_eq!((v["status"].as_str(), v[key][0]["id"].as_str()), (Some("success"), Some(a1.as_str())));
    }
    // The older list: every app of the partner.
    let (s, v) = get_json(&c, &format!("{base}/partner/account/api/partnerApps"), &t).await;
    assert_eq!(s, 200);
    let apps = v["partnerAppsList"].as_array().unwrap();
    assert_eq!(apps.len(), 2);
    assert_eq!((apps[0]["id"].as_str(), apps[0]["partnerId"].as_u64()), (Some(a1.as_str()), Some(1001)));
    // Gone.
    sim.update_knobs(KnobsPatch { applist_gone: Some(true), ..KnobsPatch::default() });
    assert_eq!(get_json(&c, &list, &t).await.0, 404);
}

/// Point 10: `stageRetries` only with a knob; with `error_while_retrying` the retries show
/// ERROR already.
#[tokio::test]
async fn stage_retries_knobs() {
    let (sim, _r, base, c) = start(cfg()).await;
    let t = login(&c, &base).await;
    let ok = link_ok(&c, &base, &t, "RetryFineApp", "919000001201", None).await;
    let bad = link_ok(&c, &base, &t, "RetryFailingApp", "15550001299", None).await;
    sim.core().clock.advance(Duration::from_millis(STAGE));
    let w = pipeline(&c, &base, &t, &bad).await.1["whatsapp"].clone();
    assert_eq!((w["creationStage"].as_str(), w.get("stageRetries")), (Some("DOCKER_PROVISIONING"), None));
    sim.update_knobs(KnobsPatch { pipeline_stage_retries: Some(true), ..KnobsPatch::default() });
    let w = pipeline(&c, &base, &t, &bad).await.1["whatsapp"].clone();
    assert_eq!((w["creationStage"].as_str(), w["stageRetries"].as_u64()), (Some("DOCKER_PROVISIONING"), Some(1)));
    assert_eq!(pipeline(&c, &base, &t, &ok).await.1["whatsapp"]["stageRetries"], 0);
    sim.update_knobs(KnobsPatch {
        pipeline_stage_retries: Some(false),
        error_while_retrying: Some(true),
        ..KnobsPatch::default()
    });
    let w = pipeline(&c, &base, &t, &bad).await.1["whatsapp"].clone();
    assert_eq!((w["creationStage"].as_str(), w["stageRetries"].as_u64()), (Some("ERROR"), Some(1)));
    assert!(!sim.app(&bad).unwrap().failed, "not final yet");
    assert_eq!(pipeline(&c, &base, &t, &ok).await.1["whatsapp"]["creationStage"], "DOCKER_PROVISIONING");
}

/// Point 11: with `done_before_finalize`, one stage at DONE/GET_CERTIFICATE, and the live
/// event goes out at DONE.
#[tokio::test]
async fn done_before_finalize_knob() {
    let (sim, _r, base, c) = start(cfg()).await;
    let (sink, mut rx, _sink) = receiver().await;
    sim.update_knobs(KnobsPatch { done_before_finalize: Some(true), ..KnobsPatch::default() });
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "EarlyDoneApp", "919000001301", Some(&format!("{sink}/cb"))).await;
    sim.core().clock.advance(Duration::from_millis(3 * STAGE));
    let w = pipeline(&c, &base, &t, &app_id).await.1["whatsapp"].clone();
    assert_eq!(
        (w["creationStage"].as_str(), w["pipeLineStage"].as_str()),
        (Some("WHATSAPP_PROVISIONING_DONE"), Some("GET_CERTIFICATE"))
    );
    let (_, ev) = recv(&mut rx).await;
    assert_eq!(ev["payload"]["payload"]["status"], "live");
    sim.core().clock.advance(Duration::from_millis(STAGE));
    let w = pipeline(&c, &base, &t, &app_id).await.1["whatsapp"].clone();
    assert_eq!(w["pipeLineStage"], "FINALIZE");
    nothing(&mut rx).await;
}

/// Point 12: a rotated app token is refused on the pipeline with the documented 400, the
/// new one works; an expired partner token answers 403 `Invalid Access Token` with the knob.
#[tokio::test]
async fn rotated_app_token_and_partner_token_error_shapes() {
    let (sim, _r, base, c) = start(cfg()).await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "RotateApp", "919000001401", None).await;
    let old = app_token(&c, &base, &t, &app_id).await;
    let r = c.post(format!("{base}/_sim/gupshup/apps/{app_id}/rotate-token")).send().await.unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200);
    let new = v["token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(pipeline(&c, &base, &old, &app_id).await, (400, err("Please review the request parameters and retry")));
    assert_eq!(pipeline(&c, &base, &new, &app_id).await.0, 200);
    assert_eq!(app_token(&c, &base, &t, &app_id).await, new, "get-or-create answers the current token");
    let r = c.post(format!("{base}/_sim/gupshup/apps/nope/rotate-token")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    sim.core().clock.advance(Duration::from_secs(86_401));
    let url = format!("{base}/partner/app/{app_id}/token");
    assert_eq!(get_json(&c, &url, &t).await, (401, err("Authentication Failed")));
    sim.update_knobs(KnobsPatch { partner_token_invalid_403: Some(true), ..KnobsPatch::default() });
    assert_eq!(get_json(&c, &url, &t).await, (403, err("Invalid Access Token")));
    // A token never issued stays a 401.
    assert_eq!(get_json(&c, &url, "nope").await, (401, err("Authentication Failed")));
}

/// Point 13: `PUT …/callback` (partner token, `url`, `modes`, two booleans, nothing else) sets
/// the same callback as `PUT …/callbackUrl`; knobs make either answer 404.
#[tokio::test]
async fn callback_endpoint_validation_and_gone_knobs() {
    let (sim, _r, base, c) = start(cfg()).await;
    let t = login(&c, &base).await;
    let app_id = link_ok(&c, &base, &t, "CallbackApp", "919000001501", None).await;
    let at = app_token(&c, &base, &t, &app_id).await;
    let url = format!("{base}/partner/app/{app_id}/callback");
    let put = |token: &str, form: Vec<(&str, &str)>| {
        let (token, form) =
            (token.to_string(), form.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
        let rb = c.put(&url).header("token", token).form(&form);
        async move { json_of(rb.send().await.unwrap()).await }
    };
    let review = err("Please review the request parameters and retry");
    assert_eq!(put(&t, vec![("url", "ftp//x")]).await, (400, err("Invalid URL Passed")));
    assert_eq!(put(&t, vec![("modes", "ACCOUNT")]).await, (400, err("Invalid URL Passed")));
    assert_eq!(
        put(&t, vec![("url", "https://h.example/cb"), ("modes", "COPY")]).await,
        (400, err("Invalid modes passed"))
    );
    assert_eq!(put(&t, vec![("url", "https://h.example/cb"), ("notifyWithPhone", "yes")]).await, (400, review.clone()));
    assert_eq!(put(&t, vec![("url", "https://h.example/cb"), ("callbackUrl", "x")]).await, (400, review));
    assert_eq!(put(&at, vec![("url", "https://h.example/cb")]).await.0, 401, "partner token only");
    let (s, v) = put(
        &t,
        vec![
            ("url", "https://h.example/cb"),
            ("modes", "ACCOUNT, SENT"),
            ("directForwarding", "true"),
            ("notifyWithPhone", "false"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["callback"]["url"], "https://h.example/cb");
    assert_eq!(sim.app(&app_id).unwrap().callback_url.as_deref(), Some("https://h.example/cb"));

    sim.update_knobs(KnobsPatch { callback_gone: Some(true), callback_url_gone: Some(true), ..KnobsPatch::default() });
    assert_eq!(put(&t, vec![("url", "https://h.example/cb")]).await.0, 404);
    let r = c
        .put(format!("{base}/partner/app/{app_id}/callbackUrl"))
        .header("Authorization", &at)
        .form(&[("callbackUrl", "https://h.example/cb2")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
