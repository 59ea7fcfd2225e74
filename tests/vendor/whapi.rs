//! Whapi.Cloud against servers that know only the vendor pages (docs/providers.md §3, seed
//! 002; research-issue-17 "Whapi.Cloud (strict)"). Manager (partner token): `GET /projects`,
//! `PUT /channels {name, projectId}`, `PATCH /channels/{id}/mode {"mode":"live"}`,
//! `POST /channels/{id}/extend {days, comment}`, `DELETE /channels/{id}`,
//! `PATCH /partners/{name}/settings`. No vendor page lists or reads channels
//! (`GET /channels/list`, `GET /channels`, `GET /channels/{id}` are public-client facts
//! [C2]): refused. Gate (channel token, at the channel's `apiUrl`): health, the login
//! (QR / pairing code) calls, logout, settings, limits, each with its documented parameters.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wa_onboard::grpc::pb;

use crate::shared::*;

const PARTNER_TOKEN: &str = "strict-partner-token";
const PROJECT: &str = "strict-project";
const DAY_MS: i64 = 86_400_000;
/// A 1×1 PNG: the QR image the gate answers in `base64`.
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[derive(Clone, Debug)]
struct Chan {
    id: String,
    name: String,
    token: String,
    mode: &'static str,
    creation_ts: i64,
    active_till: i64,
    /// The customer linked the phone (health `AUTH`).
    authed: bool,
    settings: Value,
}

#[derive(Default)]
struct State {
    channels: Vec<Chan>,
    /// The next create acts, then answers 500.
    fail_next_create: bool,
}

/// Both Whapi hosts: the manager and the gate share one state; `gate_url` is the gate's.
#[derive(Default)]
struct Whapi {
    state: Mutex<State>,
    gate_url: Mutex<String>,
}

/// The Gate's `ResponseError` envelope [C2].
fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, json!({ "error": { "code": status, "message": message } }))
}

fn refuse(why: impl Into<String>) -> Reply {
    let why = why.into();
    Reply::refuse_with(why.clone(), json!({ "error": { "code": 400, "message": why } }))
}

impl Whapi {
    fn channel_json(&self, c: &Chan) -> Value {
        json!({ "apiUrl": format!("{}/", self.gate_url.lock().expect("gate")), "id": c.id,
            "creationTS": c.creation_ts, "ownerId": "strict-owner", "activeTill": c.active_till,
            "token": c.token, "server": 1, "stopped": false, "status": "active",
            "trial": c.creation_ts + 5 * DAY_MS, "mode": c.mode, "name": c.name, "projectId": PROJECT })
    }

    fn manager(&self, req: &Req) -> Result<Reply, Reply> {
        if req.bearer() != Some(PARTNER_TOKEN) {
            return Ok(error(401, "unauthorized"));
        }
        let p = req.path();
        let m = req.method.as_str();
        let known = matches!(
            (m, p.as_slice()),
            ("GET", ["projects"])
                | ("PUT", ["channels"])
                | ("PATCH", ["channels", _, "mode"])
                | ("POST", ["channels", _, "extend"])
                | ("DELETE", ["channels", _])
                | ("PATCH", ["partners", _, "settings"])
        );
        if !known {
            return Err(refuse("no such call on the vendor pages"));
        }
        // No manager call documents a query parameter.
        req.only_query(&[])?;
        match (m, p.as_slice()) {
            ("GET", ["projects"]) => {
                req.no_body()?;
                Ok(Reply::ok(json!({ "projects": [{ "id": PROJECT, "name": "Strict" }] })))
            }
            ("PUT", ["channels"]) => {
                let b = req.json_fields(&["name", "projectId"], &["name", "projectId"])?;
                if b["projectId"] != PROJECT {
                    return Ok(error(404, "project not found"));
                }
                let mut st = self.state.lock().expect("state");
                let now = wa_onboard::domain::now_ms();
                let n = st.channels.len() + 1;
                let c = Chan {
                    id: format!("STRICT-{n:05}"),
                    name: b["name"].as_str().unwrap_or_default().to_string(),
                    token: format!("channel-token-{n}"),
                    mode: "trial",
                    creation_ts: now,
                    active_till: now + 5 * DAY_MS,
                    authed: false,
                    settings: json!({ "webhooks": [] }),
                };
                st.channels.push(c.clone());
                if std::mem::take(&mut st.fail_next_create) {
                    return Ok(error(500, "internal error"));
                }
                Ok(Reply::ok(self.channel_json(&c)))
            }
            ("PATCH", ["channels", id, "mode"]) => {
                let b = req.json_fields(&["mode"], &["mode"])?;
                if b["mode"] != "live" {
                    return Err(refuse("the vendor page shows only {\"mode\":\"live\"}"));
                }
                self.with_channel(id, |c| c.mode = "live")
            }
            ("POST", ["channels", id, "extend"]) => {
                let b = req.json_fields(&["days", "comment"], &["days", "comment"])?;
                let Some(days) = b["days"].as_i64().filter(|d| *d > 0) else {
                    return Err(refuse("`days` is a positive integer"));
                };
                if !b["comment"].is_string() {
                    return Err(refuse("`comment` is a string"));
                }
                self.with_channel(id, |c| c.active_till += days * DAY_MS)
            }
            ("DELETE", ["channels", id]) => {
                req.no_body()?;
                let mut st = self.state.lock().expect("state");
                let Some(i) = st.channels.iter().position(|c| c.id == *id) else { return Ok(error(404, "not found")) };
                st.channels.remove(i);
                Ok(Reply::ok(json!({ "success": true })))
            }
            ("PATCH", ["partners", _, "settings"]) => {
                req.json_fields(&["webhooks", "days_limit"], &[])?;
                Ok(Reply::ok(json!({ "success": true })))
            }
            _ => Err(refuse("no such call on the vendor pages")),
        }
    }

    fn with_channel(&self, id: &str, f: impl FnOnce(&mut Chan)) -> Result<Reply, Reply> {
        let mut st = self.state.lock().expect("state");
        let Some(c) = st.channels.iter_mut().find(|c| c.id == id) else { return Ok(error(404, "channel not found")) };
        f(c);
        let c = c.clone();
        drop(st);
        Ok(Reply::ok(self.channel_json(&c)))
    }

    fn gate(&self, req: &Req) -> Result<Reply, Reply> {
        let mut st = self.state.lock().expect("state");
        let token = req.bearer().unwrap_or_default().to_string();
        let Some(c) = st.channels.iter_mut().find(|c| c.token == token) else {
            return Ok(error(401, "unauthorized"));
        };
        let p = req.path();
        match (req.method.as_str(), p.as_slice()) {
            ("GET", ["health"]) => {
                req.only_query(&["wakeup", "platform", "channel_type"])?;
                if req.q("channel_type").is_some_and(|t| !matches!(t, "web" | "mobile")) {
                    return Err(refuse("`channel_type` is web or mobile"));
                }
                let (code, text) = if c.authed { (4, "AUTH") } else { (3, "QR") };
                Ok(Reply::ok(json!({ "status": { "code": code, "text": text },
                    "start_at": c.creation_ts / 1000, "uptime": 1, "version": "strict" })))
            }
            ("GET", ["users", "login"]) => {
                req.only_query(&["wakeup", "size", "width", "height", "color_light", "color_dark"])?;
                if c.authed {
                    return Ok(error(409, "already authenticated"));
                }
                // `expire` a non-integer number (the OpenAPI types it `number`).
                Ok(Reply::ok(json!({ "status": "OK", "base64": format!("data:image/png;base64,{PNG_B64}"),
                    "rowdata": format!("2@strict-qr-{}", c.id), "expire": 19.5 })))
            }
            ("GET", ["users", "login", "rowdata"]) => {
                req.only_query(&["wakeup"])?;
                Ok(Reply::ok(json!({ "status": "OK", "rowdata": format!("2@strict-qr-{}", c.id), "expire": 19.5 })))
            }
            ("GET", ["users", "login", digits]) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                req.only_query(&["wakeup"])?;
                if c.authed {
                    return Ok(error(409, "already authenticated"));
                }
                Ok(Reply::ok(json!({ "code": "STRI-CT12" })))
            }
            ("POST", ["users", "logout"]) => {
                req.only_query(&[])?;
                c.authed = false;
                Ok(Reply::ok(json!({ "success": true })))
            }
            ("GET", ["settings"]) => {
                req.only_query(&[])?;
                Ok(Reply::ok(c.settings.clone()))
            }
            ("PATCH", ["settings"]) => {
                req.only_query(&[])?;
                let b = req.json_fields(
                    &["webhooks", "callback_persist", "media", "proxy", "offline_mode", "full_history"],
                    &[],
                )?;
                if let Some(hooks) = b.get("webhooks") {
                    for h in hooks.as_array().ok_or_else(|| refuse("`webhooks` is a list"))? {
                        let keys: Vec<&str> =
                            h.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
                        if let Some(k) = keys.iter().find(|k| !matches!(**k, "url" | "events" | "mode" | "headers")) {
                            return Err(refuse(format!("undocumented webhook field `{k}`")));
                        }
                    }
                }
                if let (Value::Object(s), Value::Object(patch)) = (&mut c.settings, Value::Object(b)) {
                    s.extend(patch);
                }
                Ok(Reply::ok(c.settings.clone()))
            }
            ("GET", ["limits"]) => {
                req.only_query(&[])?;
                Ok(Reply::ok(json!({ "messages": { "used": 0, "limit": 150 } })))
            }
            _ => Err(refuse("no such Gate call on the vendor pages")),
        }
    }
}

struct Manager(Arc<Whapi>);
struct Gate(Arc<Whapi>);

impl Vendor for Manager {
    fn handle(&self, req: &Req) -> Reply {
        self.0.manager(req).unwrap_or_else(|r| r)
    }
}

impl Vendor for Gate {
    fn handle(&self, req: &Req) -> Reply {
        self.0.gate(req).unwrap_or_else(|r| r)
    }
}

struct Setup {
    app: crate::helpers::TestApp,
    manager: Strict,
    gate: Strict,
    whapi: Arc<Whapi>,
}

async fn setup() -> Setup {
    let whapi = Arc::new(Whapi::default());
    let manager = Strict::serve(Arc::new(Manager(whapi.clone()))).await;
    let gate = Strict::serve(Arc::new(Gate(whapi.clone()))).await;
    *whapi.gate_url.lock().unwrap() = gate.url();
    let app = service().await;
    account(
        &app,
        "whapi",
        pb::Provider::Whapi,
        pb::account_credentials::Credentials::Whapi(pb::WhapiCredentials { partner_token: PARTNER_TOKEN.into() }),
        Some(pb::account_options::Options::Whapi(pb::WhapiOptions {
            project_id: PROJECT.into(),
            partner_name: "strictpartner".into(),
        })),
        &manager.url(),
    )
    .await;
    Setup { app, manager, gate, whapi }
}

fn channel_request(name: &str, go_live: bool, extend_days: i32, rid: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/whapi".into(),
        reference: format!("crm-{rid}"),
        request_id: rid.into(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Whapi(pb::WhapiChannelRequest {
            channel_name: name.into(),
            project_id: String::new(),
            go_live,
            extend_days,
        })),
    }
}

fn whapi(o: &pb::Onboarding) -> pb::WhapiOnboarding {
    match &o.details {
        Some(pb::onboarding::Details::Whapi(w)) => w.clone(),
        other => panic!("no Whapi details: {other:?}"),
    }
}

fn channels(
    app: &crate::helpers::TestApp,
) -> pb::channel_service_client::ChannelServiceClient<tonic::transport::Channel> {
    pb::channel_service_client::ChannelServiceClient::new(app.channel.clone())
}

/// The one [C2] read the flow may still make: the channel object for the linked phone when
/// health does not carry it (docs/providers.md §3.2 "get channel", several public clients).
const PHONE_LOOKUP: &str = "GET /channels/";

fn assert_documented(s: &Setup) {
    s.gate.assert_documented_only();
    let refused: Vec<String> =
        s.manager.refusals().into_iter().filter(|r| !r.starts_with(PHONE_LOOKUP) || r.contains("/list")).collect();
    assert!(refused.is_empty(), "the service sent undocumented manager requests:\n  {}", refused.join("\n  "));
    assert!(s.manager.count("GET", "/channels/*") <= 1, "the [C2] phone lookup at most once");
}

/// Create → webhooks → QR → the customer links the phone → LIVE. Caught: the first create
/// listed the partner's channels (`GET /channels/list`, undocumented) and failed on the 400
/// before any channel existed.
#[tokio::test]
async fn whapi_channel_is_created_connected_and_live_with_documented_calls_only() {
    let s = setup().await;
    let app = &s.app;
    let check = check_account(app, "whapi").await.expect("check");
    assert!(check.ok, "{check:?}");
    let name = app
        .onboardings()
        .create_onboarding(app.req(channel_request("Strict Shop", false, 0, "w-strict-1")))
        .await
        .expect("create")
        .into_inner()
        .name;
    let waiting = wait_state(app, &s.manager, &name, pb::OnboardingState::AwaitingCustomer).await;
    let w = whapi(&waiting);
    assert_eq!(s.manager.count("PUT", "/channels"), 1);
    assert_eq!(s.manager.count("GET", "/channels/list"), 0, "a first create has nothing to look up");
    let chan = s.whapi.state.lock().unwrap().channels[0].clone();
    assert_eq!(w.channel_id, chan.id);
    let hooks = chan_settings(&s, &chan.id);
    assert!(hooks.to_string().contains("/webhooks/"), "webhooks point at the service: {hooks}");

    let code = channels(app)
        .get_connect_code(app.req(pb::GetConnectCodeRequest {
            name: format!("channels/{}", chan.id),
            method: Some(pb::get_connect_code_request::Method::Qr(pb::QrCodeRequest { size: 0 })),
        }))
        .await
        .unwrap_or_else(|e| panic!("QR: {e:?}; refused {:?}", s.gate.refusals()))
        .into_inner();
    match code.code {
        Some(pb::connect_code::Code::Qr(q)) => {
            assert!(q.png.starts_with(b"\x89PNG"), "an image from `base64`");
            assert_eq!(q.raw, format!("2@strict-qr-{}", chan.id));
        }
        other => panic!("expected a QR: {other:?}"),
    }
    assert!(code.expire_time.is_some(), "`expire` 19.5 read as a number");

    scan(&s, &chan.id);
    let live = wait_state(app, &s.manager, &name, pb::OnboardingState::Live).await;
    assert_eq!(whapi(&live).channel_id, chan.id);
    assert_eq!(s.manager.count("PUT", "/channels"), 1, "one channel");
    assert_documented(&s);
}

fn chan_settings(s: &Setup, id: &str) -> Value {
    s.whapi.state.lock().unwrap().channels.iter().find(|c| c.id == id).map(|c| c.settings.clone()).unwrap_or_default()
}

/// The customer links the phone: health turns `AUTH`.
fn scan(s: &Setup, id: &str) {
    let mut st = s.whapi.state.lock().unwrap();
    let c = st.channels.iter_mut().find(|c| c.id == id).expect("channel");
    c.authed = true;
}

/// A create answered 500 may have made the channel (it did here). The retry may not create
/// blindly: it must find the channel first, and with no documented way to list channels it
/// stops with a clear error instead of paying for a second one. Caught on the old code: the
/// same list-before-create on attempt 1 (refused), so no channel at all.
#[tokio::test]
async fn whapi_create_answered_500_is_never_sent_a_second_time() {
    let s = setup().await;
    let app = &s.app;
    s.whapi.state.lock().unwrap().fail_next_create = true;
    let name = app
        .onboardings()
        .create_onboarding(app.req(channel_request("Strict 500", false, 0, "w-strict-500")))
        .await
        .expect("create")
        .into_inner()
        .name;
    let stopped = wait_until(app, &s.manager, &name, "stopped", |o| {
        matches!(state_of(o), pb::OnboardingState::Failed | pb::OnboardingState::Stalled)
    })
    .await;
    assert!(stopped.state_reason.contains("second channel"), "{}", stopped.state_reason);
    assert_eq!(s.manager.count("PUT", "/channels"), 1, "never a second create");
    assert_eq!(s.whapi.state.lock().unwrap().channels.len(), 1);
    // The only refusal: the [C2] list the retry needed to reconcile.
    let refused = s.manager.refusals();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].starts_with("GET /channels/list"), "{refused:?}");
}
