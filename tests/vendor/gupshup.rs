//! Gupshup against a server that knows only the vendor pages (docs/providers.md §1, seed
//! 000; research-issue-17 "Gupshup (strict)"): form bodies, the raw partner token in
//! `Authorization` (or `token`), login with `email` + `secret` or `password`, the TPP link
//! call with its documented answers (409 `Bot Already Exists`, never the phone variant),
//! the app token, the pipeline (app token; a bad one answers 400 "Please review the request
//! parameters and retry"), subscriptions (version 3 modes as the seed page lists them),
//! both callback endpoints and the app list (`name`, `phone`, `pageNo`, `pageSize`).
//! `/details`, `partnerApps`, `stageRetries` exist nowhere here.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wa_onboard::grpc::pb;

use crate::shared::*;

const EMAIL: &str = "ops@strict.test";
const SECRET: &str = "strict-client-secret";
const PARTNER_TOKEN: &str = "strict-partner-jwt";
const WABA: &str = "104996122399160";
const PHONE: &str = "919876543210";

#[derive(Clone, Debug)]
struct App {
    id: String,
    name: String,
    phone: String,
    token: String,
    /// The pipeline finished (`WHATSAPP_PROVISIONING_DONE` + `FINALIZE`, the vendor's
    /// success example).
    provisioned: bool,
    subscriptions: Vec<Value>,
    callback: Option<String>,
}

#[derive(Default)]
struct Gupshup {
    apps: Mutex<Vec<App>>,
    /// The next link acts, then its answer is lost (500).
    fail_next_link: Mutex<bool>,
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, json!({ "status": "error", "message": message }))
}

fn refuse(why: impl Into<String>) -> Reply {
    let why = why.into();
    Reply::refuse_with(why, json!({ "status": "error", "message": "Please review the request parameters and retry" }))
}

/// Subscription modes for version 3 as the seed page lists them (TEMPLATE, ACCOUNT and COPY
/// "are not supported" there), plus the other modes its own sample sends.
const V3_MODES: [&str; 11] = [
    "NONE",
    "READ",
    "DELIVERED",
    "SENT",
    "DELETED",
    "OTHERS",
    "ENQUEUED",
    "MESSAGE",
    "FAILED",
    "BILLING",
    "FLOWS_MESSAGE",
];

impl Gupshup {
    fn partner_ok(req: &Req) -> bool {
        req.header("authorization").or(req.header("token")) == Some(PARTNER_TOKEN)
    }

    fn app_by_token<'a>(apps: &'a mut [App], req: &Req, id: &str) -> Option<&'a mut App> {
        let t = req.header("authorization").or(req.header("token")).unwrap_or_default();
        apps.iter_mut().find(|a| a.id == id && a.token == t)
    }

    fn routed(&self, req: &Req) -> Result<Reply, Reply> {
        let p = req.path();
        let m = req.method.as_str();
        match (m, p.as_slice()) {
            ("POST", ["partner", "account", "login"]) => {
                req.only_query(&[])?;
                let f = req.form_fields(&["email", "secret", "password"], &["email"])?;
                let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                if get("email") != Some(EMAIL) || get("secret").or(get("password")) != Some(SECRET) {
                    return Ok(error(401, "Invalid credentials"));
                }
                Ok(Reply::ok(json!({ "token": PARTNER_TOKEN, "id": 1234, "name": "strict", "terms_read": true,
                    "email": EMAIL, "isTpp": true })))
            }
            ("POST", ["partner", "tpp", "app"]) => {
                req.only_query(&[])?;
                if !Self::partner_ok(req) {
                    return Ok(error(401, "Authentication Failed"));
                }
                let f = req.form_fields(
                    &["name", "wabaId", "phone", "callbackUrl", "storageRegion"],
                    &["name", "wabaId", "phone"],
                )?;
                let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
                let name = get("name");
                if !(6..=150).contains(&name.chars().count()) {
                    return Ok(error(400, "App name should be between 6 to 150 characters in length"));
                }
                if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Ok(error(400, "Invalid characters used in app name"));
                }
                if !get("phone").bytes().all(|b| b.is_ascii_digit()) {
                    return Err(refuse("`phone` is digits"));
                }
                let mut apps = self.apps.lock().expect("apps");
                if apps.iter().any(|a| a.name.eq_ignore_ascii_case(&name)) {
                    return Ok(error(409, "Bot Already Exists"));
                }
                let id = uuid::Uuid::new_v4().to_string();
                let cb = Some(get("callbackUrl")).filter(|c| !c.is_empty());
                apps.push(App {
                    id: id.clone(),
                    name,
                    phone: get("phone"),
                    token: format!("sk_{}", uuid::Uuid::new_v4().simple()),
                    provisioned: false,
                    subscriptions: Vec::new(),
                    callback: cb,
                });
                if std::mem::take(&mut *self.fail_next_link.lock().expect("fault")) {
                    return Ok(error(500, "Unable to create App"));
                }
                Ok(Reply::ok(json!({ "status": "success", "appId": id })))
            }
            ("GET", ["partner", "app", "list"]) => {
                req.only_query(&["name", "phone", "pageNo", "pageSize"])?;
                if req.header("token") != Some(PARTNER_TOKEN) {
                    return Ok(error(401, "Authentication Failed"));
                }
                let apps = self.apps.lock().expect("apps");
                let list: Vec<Value> = apps
                    .iter()
                    .filter(|a| req.q("phone").is_none_or(|p| p == a.phone))
                    .filter(|a| req.q("name").is_none_or(|n| n == a.name))
                    .map(|a| json!({ "id": a.id, "name": a.name, "phone": a.phone, "live": a.provisioned }))
                    .collect();
                Ok(Reply::ok(json!({ "status": "success", "partnerAppsList": list })))
            }
            ("GET", ["partner", "app", id, "token"]) => {
                req.only_query(&[])?;
                if !Self::partner_ok(req) {
                    return Ok(error(401, "Authentication Failed"));
                }
                let apps = self.apps.lock().expect("apps");
                let Some(a) = apps.iter().find(|a| a.id == *id) else { return Ok(error(404, "App not found")) };
                Ok(Reply::ok(json!({ "status": "success", "token": { "token": a.token, "authoriserId": a.id,
                    "requestorId": "1234", "createdOn": 1, "modifiedOn": 1, "expiresOn": 0, "active": true } })))
            }
            ("GET", ["partner", "app", id, "pipeline"]) => {
                req.only_query(&[])?;
                let mut apps = self.apps.lock().expect("apps");
                let Some(a) = Self::app_by_token(&mut apps, req, id) else {
                    return Ok(error(400, "Please review the request parameters and retry"));
                };
                let (creation, pipeline) = if a.provisioned {
                    ("WHATSAPP_PROVISIONING_DONE", "FINALIZE")
                } else {
                    ("DOCKER_PROVISIONING", "CREATE_DOCKER")
                };
                Ok(Reply::ok(json!({ "status": "success", "whatsapp": { "countryCode": "91",
                    "createdOn": 1_704_860_430_508_i64, "creationStage": creation, "dialCode": "9876543210",
                    "embedStage": "EMBED_STARTED", "id": a.id, "modifiedOn": 1_707_947_273_721_i64,
                    "pipeLineStage": pipeline, "uiFormStage": "COMPLETE_VERIFICATION",
                    "whatsappVerificationStatus": "WHATSAPP_VERIFICATION_DONE" } })))
            }
            (_, ["partner", "app", id, "subscription", rest @ ..]) if rest.len() <= 1 => {
                req.only_query(&[])?;
                let mut apps = self.apps.lock().expect("apps");
                let Some(a) = Self::app_by_token(&mut apps, req, id) else {
                    return Ok(error(401, "Authentication Failed"));
                };
                match (m, rest) {
                    ("GET", []) => Ok(Reply::ok(json!({ "status": "success", "subscriptions": a.subscriptions }))),
                    ("POST", []) => {
                        let f = req.form_fields(
                            &["modes", "tag", "url", "version", "showOnUI", "meta"],
                            &["modes", "tag", "url", "version"],
                        )?;
                        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
                        let version = get("version");
                        if !matches!(version.as_str(), "0" | "1" | "2" | "3") {
                            return Err(refuse("`version` is 0, 1, 2 or 3"));
                        }
                        for mode in get("modes").split(',').map(str::trim) {
                            if version == "3" && !V3_MODES.contains(&mode) {
                                return Err(refuse(format!("mode `{mode}` is not supported for version 3")));
                            }
                        }
                        if !get("url").starts_with("http") {
                            return Ok(error(400, "Invalid URL Passed"));
                        }
                        if a.subscriptions.iter().any(|s| s["tag"] == get("tag").as_str()) {
                            return Err(refuse("`tag` must be unique for the app"));
                        }
                        let s = json!({ "active": true, "appId": a.id, "createdOn": 1, "id": (a.subscriptions.len() + 8166).to_string(),
                            "mode": 2047, "modifiedOn": 1, "showOnUI": false, "tag": get("tag"), "url": get("url"),
                            "version": version.parse::<i64>().unwrap_or(3) });
                        a.subscriptions.push(s.clone());
                        Ok(Reply::ok(json!({ "status": "success", "subscription": s })))
                    }
                    _ => Err(refuse("no such subscription call in this test's flow")),
                }
            }
            ("PUT", ["partner", "app", id, "callbackUrl"]) => {
                req.only_query(&[])?;
                let f = req.form_fields(&["callbackUrl"], &["callbackUrl"])?;
                let mut apps = self.apps.lock().expect("apps");
                let Some(a) = Self::app_by_token(&mut apps, req, id) else {
                    return Ok(error(401, "Authentication Failed"));
                };
                a.callback = f.into_iter().next().map(|(_, v)| v);
                Ok(Reply::ok(json!({ "status": "success" })))
            }
            ("PUT", ["partner", "app", id, "callback"]) => {
                req.only_query(&[])?;
                if !Self::partner_ok(req) {
                    return Ok(error(401, "Authentication Failed"));
                }
                let f = req.form_fields(&["url", "modes", "directForwarding", "notifyWithPhone"], &["url"])?;
                let mut apps = self.apps.lock().expect("apps");
                let Some(a) = apps.iter_mut().find(|a| a.id == *id) else { return Ok(error(404, "App not found")) };
                a.callback = f.into_iter().find(|(k, _)| k == "url").map(|(_, v)| v);
                Ok(Reply::ok(json!({ "status": "success" })))
            }
            _ => Err(refuse("no such call on the vendor pages")),
        }
    }
}

impl Vendor for Gupshup {
    fn handle(&self, req: &Req) -> Reply {
        self.routed(req).unwrap_or_else(|r| r)
    }
}

async fn setup() -> (crate::helpers::TestApp, Strict, Arc<Gupshup>) {
    let vendor = Arc::new(Gupshup::default());
    let server = Strict::serve(vendor.clone()).await;
    let app = service().await;
    account(
        &app,
        "gs",
        pb::Provider::Gupshup,
        pb::account_credentials::Credentials::Gupshup(pb::GupshupCredentials {
            email: EMAIL.into(),
            secret: SECRET.into(),
        }),
        None,
        &server.url(),
    )
    .await;
    (app, server, vendor)
}

fn link_request(app_name: &str, rid: &str, subscribe: bool) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/gs".into(),
        reference: format!("crm-{rid}"),
        request_id: rid.into(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Gupshup(pb::GupshupLinkAppRequest {
            app_name: app_name.into(),
            waba_id: WABA.into(),
            phone: format!("+{PHONE}"),
            storage_region: String::new(),
            subscribe_on_live: subscribe,
            subscription: subscribe.then(|| pb::SubscriptionSpec {
                url: "https://hooks.example/strict".into(),
                events: vec!["MESSAGE".into(), "DELIVERED".into(), "READ".into()],
                tag: "strict".into(),
                version: 3,
                ..Default::default()
            }),
        })),
    }
}

fn gupshup(o: &pb::Onboarding) -> pb::GupshupOnboarding {
    match &o.details {
        Some(pb::onboarding::Details::Gupshup(g)) => g.clone(),
        other => panic!("no Gupshup details: {other:?}"),
    }
}

/// Link an app → app token → pipeline → LIVE → subscription (v3). Would catch an
/// undocumented login field, a JSON body where the pages show a form, a v3 mode the seed
/// page does not support, a `/details` or `partnerApps` read.
#[tokio::test]
async fn gupshup_app_is_linked_provisioned_live_and_subscribed_with_documented_calls_only() {
    let (app, server, vendor) = setup().await;
    let check = check_account(&app, "gs").await.expect("check");
    assert!(check.ok, "{check:?}");
    let name = app
        .onboardings()
        .create_onboarding(app.req(link_request("StrictShop1", "g-strict-1", true)))
        .await
        .expect("create")
        .into_inner()
        .name;
    let provisioning = wait_state(&app, &server, &name, pb::OnboardingState::Provisioning).await;
    let app_id = gupshup(&provisioning).app_id;
    assert!(!app_id.is_empty(), "{provisioning:?}");
    // Still provisioning at the first pipeline read (the state is entered before it).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.count("GET", "/partner/app/*/pipeline") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no pipeline read; refused {:?}", server.refusals());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    vendor.apps.lock().unwrap().iter_mut().for_each(|a| a.provisioned = true);
    wait_state(&app, &server, &name, pb::OnboardingState::Live).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while vendor.apps.lock().unwrap()[0].subscriptions.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no subscription; refused {:?}", server.refusals());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(server.count("POST", "/partner/tpp/app"), 1);
    assert!(vendor.apps.lock().unwrap()[0].callback.is_some(), "callbackUrl sent on link");
    server.assert_documented_only();
}

/// A link answered 500 that created the app: the retry meets the documented 409 `Bot
/// Already Exists` and must recover the app through the documented app list
/// (`GET /partner/app/list?phone=`), never ending FAILED because of our own retry.
#[tokio::test]
async fn gupshup_link_retried_after_a_lost_answer_recovers_the_app_through_the_app_list() {
    let (app, server, vendor) = setup().await;
    *vendor.fail_next_link.lock().unwrap() = true;
    let name = app
        .onboardings()
        .create_onboarding(app.req(link_request("StrictShop2", "g-strict-2", false)))
        .await
        .expect("create")
        .into_inner()
        .name;
    let provisioning = wait_state(&app, &server, &name, pb::OnboardingState::Provisioning).await;
    assert_eq!(gupshup(&provisioning).app_id, vendor.apps.lock().unwrap()[0].id);
    assert_eq!(vendor.apps.lock().unwrap().len(), 1);
    assert!(server.count("GET", "/partner/app/list") >= 1);
    vendor.apps.lock().unwrap().iter_mut().for_each(|a| a.provisioned = true);
    wait_state(&app, &server, &name, pb::OnboardingState::Live).await;
    server.assert_documented_only();
}
