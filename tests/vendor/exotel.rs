//! Exotel against a server that knows only the vendor pages (docs/providers.md §2, seed
//! 001): `POST /v2/accounts/{sid}/isv` (Basic auth, no query, empty body) answering one URL
//! at `response.whatsapp.isv.Url` (the only placement a vendor table names), and
//! `GET …/isv?access_token=<token>` answering `onboarding_token_status`. Anything else is
//! refused with 400.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Value, json};
use wa_onboard::grpc::pb;

use crate::shared::*;

const SID: &str = "strict-sid";
const KEY: &str = "strict-key";
const TOKEN: &str = "strict-token-value";
const MINT: &str = "/v2/accounts/*/isv";

/// The strict Exotel cluster.
#[derive(Default)]
struct Exotel {
    /// token → status (`VALID`, `USED`, `EXPIRED`).
    tokens: Mutex<HashMap<String, &'static str>>,
    minted: Mutex<u32>,
}

fn envelope(method: &str, code: u16, status: &str, data: Value, error: Value) -> Value {
    json!({ "request_id": uuid::Uuid::new_v4().simple().to_string(), "method": method, "http_code": code,
        "response": { "whatsapp": { "isv": { "code": code, "error_data": error, "status": status, "data": data } } } })
}

/// A documented error code (docs/providers.md §2.4) in the v2 failure envelope.
fn failure(method: &str, code: u16, message: &str) -> Reply {
    Reply::json(code, envelope(method, code, "failure", Value::Null, json!({ "code": code, "message": message })))
}

impl Exotel {
    fn authorized(&self, req: &Req) -> bool {
        let Some(b64) = req.header("authorization").and_then(|a| a.strip_prefix("Basic ")) else { return false };
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .is_some_and(|s| s == format!("{KEY}:{TOKEN}"))
    }

    fn mint(&self, req: &Req) -> Reply {
        // The vendor curl: `--request POST`, `Content-Type: text/plain`, no body, no query.
        if !req.query.is_empty() {
            return Reply::refuse("the create call takes no query parameter (no `count`)");
        }
        if let Err(r) = req.no_body() {
            return r;
        }
        let token = uuid::Uuid::new_v4().to_string();
        self.tokens.lock().expect("tokens").insert(token.clone(), "VALID");
        *self.minted.lock().expect("minted") += 1;
        let url = format!("https://messaging.exotel.com/ua-links/isv-onboard/{token}");
        // Only `whatsapp → isv → Url` (the create page's field table).
        Reply::ok(json!({ "request_id": uuid::Uuid::new_v4().simple().to_string(),
            "response": { "whatsapp": { "isv": { "Url": url } } } }))
    }

    fn validate(&self, req: &Req) -> Reply {
        if let Err(r) = req.no_body().and_then(|()| req.only_query(&["access_token"])) {
            return r;
        }
        let Some(token) = req.q("access_token").filter(|t| !t.is_empty()) else {
            return Reply::refuse("the validate call requires `access_token`");
        };
        match self.tokens.lock().expect("tokens").get(token) {
            Some(status) => {
                Reply::ok(envelope("GET", 200, "success", json!({ "onboarding_token_status": status }), Value::Null))
            }
            // Not the shape of a token the account was given: documented 400 "malformed".
            None if !token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
                failure("GET", 400, "Bad Request - Something in your header or request body was malformed/missing.")
            }
            None => failure("GET", 404, "Not Found - The object you're requesting doesn't exist."),
        }
    }
}

impl Vendor for Exotel {
    fn handle(&self, req: &Req) -> Reply {
        let p = req.path();
        let is_isv = matches!(p.as_slice(), ["v2", "accounts", _, "isv"]);
        if !is_isv {
            return Reply::refuse("no such path on the vendor pages");
        }
        if !self.authorized(req) {
            return failure(req.method.as_str(), 401, "Unauthorized");
        }
        if p[2] != SID {
            return failure(req.method.as_str(), 404, "Not Found");
        }
        match req.method.as_str() {
            "POST" => self.mint(req),
            "GET" => self.validate(req),
            _ => Reply::refuse("no such method on the vendor pages"),
        }
    }
}

async fn setup(token: &str) -> (crate::helpers::TestApp, Strict, Arc<Exotel>) {
    let vendor = Arc::new(Exotel::default());
    let server = Strict::serve(vendor.clone()).await;
    let app = service().await;
    account(
        &app,
        "exo",
        pb::Provider::Exotel,
        pb::account_credentials::Credentials::Exotel(pb::ExotelCredentials {
            account_sid: SID.into(),
            api_key: KEY.into(),
            api_token: token.into(),
        }),
        Some(pb::account_options::Options::Exotel(pb::ExotelOptions { region: pb::ExotelRegion::Singapore as i32 })),
        &server.url(),
    )
    .await;
    (app, server, vendor)
}

fn exotel(o: &pb::Onboarding) -> &pb::ExotelOnboarding {
    match &o.details {
        Some(pb::onboarding::Details::Exotel(e)) => e,
        other => panic!("{}: expected Exotel details, got {other:?}", o.name),
    }
}

/// Caught: a batch minted with `POST …/isv?count=N` (issue 17 point 1) — refused, so
/// `CreateOnboardingLinks(count=3)` failed with INVALID_ARGUMENT; and a create answer read
/// only from `isv.data.onboarding_url` (point 2) — `isv.Url` is all the vendor shows.
#[tokio::test]
async fn exotel_batch_of_three_links_and_token_validation_use_only_documented_calls() {
    let (app, server, vendor) = setup(TOKEN).await;
    let resp = app
        .onboardings()
        .create_onboarding_links(app.req(pb::CreateOnboardingLinksRequest {
            account: "accounts/exo".into(),
            count: 3,
            reference: "strict-batch".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap_or_else(|e| panic!("3 links: {e:?}; refused: {:?}", server.refusals()))
        .into_inner();
    assert_eq!(resp.onboardings.len(), 3);
    assert_eq!(server.count("POST", MINT), 3, "one documented POST per link");
    assert_eq!(*vendor.minted.lock().unwrap(), 3);
    let mut seen = std::collections::HashSet::new();
    for o in &resp.onboardings {
        let e = exotel(o);
        assert!(e.onboarding_url.starts_with("https://messaging.exotel.com/ua-links/isv-onboard/"), "{e:?}");
        assert!(vendor.tokens.lock().unwrap().contains_key(&e.token), "{} unknown to Exotel", e.token);
        assert!(seen.insert(e.token.clone()));
        assert_eq!(state_of(o), pb::OnboardingState::AwaitingCustomer);
    }

    // Validation through the documented GET, for a fresh and a used token.
    let first = &resp.onboardings[0];
    let token = exotel(first).token.clone();
    let v = tokens(&app)
        .validate_onboarding_token(
            app.req(pb::ValidateOnboardingTokenRequest { account: "accounts/exo".into(), token: token.clone() }),
        )
        .await
        .expect("validate")
        .into_inner();
    assert_eq!(v.status, pb::OnboardingTokenStatus::Valid as i32);
    assert_eq!(v.raw_status, "VALID");
    assert_eq!(v.onboarding, first.name);
    vendor.tokens.lock().unwrap().insert(token.clone(), "USED");
    let used = wait_state(&app, &server, &first.name, pb::OnboardingState::Live).await;
    assert_eq!(exotel(&used).token_status, "USED");
    assert!(server.count("GET", MINT) >= 2, "the engine polls the documented validate call");
    server.assert_documented_only();
}

/// Caught: CheckAccount probed with `GET …/isv` and no `access_token` (refused: the
/// parameter is mandatory on the vendor page), and took the 400 for "credentials fine".
#[tokio::test]
async fn exotel_check_account_sends_the_documented_validate_call() {
    let (app, server, _) = setup(TOKEN).await;
    let ok = check_account(&app, "exo").await.expect("check");
    assert!(ok.ok, "{ok:?}");
    assert_eq!(server.count("GET", MINT), 1);
    assert_eq!(server.count("POST", MINT), 0, "checking spends no link");
    server.assert_documented_only();

    let (app, server, _) = setup("wrong-token").await;
    let bad = check_account(&app, "exo").await;
    match bad {
        Ok(r) => assert!(!r.ok, "wrong credentials pass the check: {r:?}"),
        Err(e) => assert!(matches!(e.code(), tonic::Code::FailedPrecondition | tonic::Code::Unauthenticated), "{e:?}"),
    }
    server.assert_documented_only();
}
