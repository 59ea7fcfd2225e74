//! 99digital against a server that knows only the vendor pages (docs/providers.md §4, seed
//! 003): JSON bodies, `Authorization: Bearer` except on the token call, the
//! `{"status":"OK"|"FAIL","reason":N}` envelope (HTTP 200), a wrong verb answered with the
//! documented reason 13 / 27. The create call's URL is the one thing no page shows (the
//! vendor names the step "Create Onboarding link" and its fields are those `getAccounts`
//! echoes): one profile accepts it at the adapter's first candidate, the other refuses it.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use wa_onboard::grpc::pb;

use crate::shared::*;

const CLIENT_ID: &str = "strict-client";
const CLIENT_SECRET: &str = "strict-secret";
const ACCESS: &str = "strict-access-1";
const NUMBER: &str = "972501234567";

/// One onboarding account as `getAccounts` lists it [C].
#[derive(Clone, Debug)]
struct Account {
    fields: Map<String, Value>,
}

#[derive(Default)]
struct Digital99 {
    /// The create URL this server accepts (no vendor page shows one): `None` refuses all.
    create_path: Option<&'static str>,
    /// Numbers registered and verified with a code (the vendor's step 1, done beforehand).
    verified: Mutex<Vec<String>>,
    accounts: Mutex<Vec<Account>>,
    webhook: Mutex<Option<String>>,
}

fn ok(extra: Value) -> Reply {
    let mut m = Map::from_iter([("status".to_string(), json!("OK")), ("reason".to_string(), json!(1))]);
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    Reply::ok(Value::Object(m))
}

/// A documented FAIL reason, sent with HTTP 200 as the vendor does.
fn fail(reason: i64) -> Reply {
    Reply::ok(json!({ "status": "FAIL", "reason": reason }))
}

/// A refusal in the vendor's envelope (reason 13 is its "wrong request" answer).
fn refuse(why: impl Into<String>) -> Reply {
    Reply::refuse_with(why, json!({ "status": "FAIL", "reason": 13 }))
}

fn digits_only(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).map(str::to_string)
}

impl Digital99 {
    fn verb(req: &Req, want: &str) -> Result<(), Reply> {
        if req.method.as_str() == want {
            return Ok(());
        }
        // Documented: 13 "use GET/DELETE/POST method", 27 "use PATCH".
        Err(if want == "PATCH" { fail(27) } else { fail(13) })
    }

    fn routed(&self, req: &Req) -> Result<Reply, Reply> {
        let p = req.path();
        let ["api", area, call] = p.as_slice() else { return Err(refuse("no such path on the vendor pages")) };
        if (*area, *call) == ("settings", "accessToken") {
            Self::verb(req, "POST")?;
            let b = req.json_fields(&["client_id", "client_secret"], &["client_id", "client_secret"])?;
            if b["client_id"] != CLIENT_ID || b["client_secret"] != CLIENT_SECRET {
                return Ok(fail(2));
            }
            let exp = (wa_onboard::domain::now_ms() / 1000 + 3600).to_string();
            return Ok(json_ok(
                json!({ "access_token": ACCESS, "expiration_time": exp, "token_type": "Bearer", "reason": 1 }),
            ));
        }
        if req.bearer() != Some(ACCESS) {
            return Ok(fail(3));
        }
        match (*area, *call) {
            ("settings", "setWebhook") => {
                Self::verb(req, "POST")?;
                let b = req.json_fields(&["url"], &["url"])?;
                let url = b["url"].as_str().unwrap_or_default().to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 512 {
                    return Ok(fail(13));
                }
                *self.webhook.lock().expect("webhook") = Some(url.clone());
                Ok(ok(json!({ "url": url })))
            }
            ("settings", "getWebhook") => {
                Self::verb(req, "GET")?;
                req.no_body()?;
                Ok(ok(json!({ "url": self.webhook.lock().expect("webhook").clone() })))
            }
            ("whatsapp", "registerNumber") => {
                Self::verb(req, "POST")?;
                let b = req.json_fields(&["whatsapp", "method"], &["whatsapp"])?;
                let Some(n) = digits_only(b.get("whatsapp")) else { return Ok(fail(4)) };
                if !matches!(b.get("method").and_then(Value::as_i64), None | Some(1 | 2)) {
                    return Err(refuse("`method` is 1 (SMS) or 2 (voice)"));
                }
                let _ = n;
                Ok(ok(json!({})))
            }
            ("whatsapp", "getRegisteredNumbers") => {
                Self::verb(req, "GET")?;
                req.no_body()?;
                let has_account =
                    |n: &str| self.accounts.lock().expect("accounts").iter().any(|a| a.fields["whatsapp"] == n);
                let list: Vec<Value> = self
                    .verified
                    .lock()
                    .expect("verified")
                    .iter()
                    .filter(|n| !has_account(n))
                    .map(|n| json!({ "whatsapp": n, "expiration": 0, "onboarding_link": null, "comment": "" }))
                    .collect();
                Ok(ok(json!({ "list": list })))
            }
            ("whatsapp", "getAccounts") => {
                Self::verb(req, "GET")?;
                req.no_body()?;
                let list: Vec<Value> =
                    self.accounts.lock().expect("accounts").iter().map(|a| Value::Object(a.fields.clone())).collect();
                Ok(ok(json!({ "list": list })))
            }
            ("whatsapp", "getWhatsApp") => {
                Self::verb(req, "GET")?;
                req.no_body()?;
                Ok(ok(json!({ "totalWhatsApp": 0, "list": [] })))
            }
            ("whatsapp", "deleteAccount") => {
                Self::verb(req, "DELETE")?;
                let b = req.json_fields(&["whatsapp"], &["whatsapp"])?;
                let Some(n) = digits_only(b.get("whatsapp")) else { return Ok(fail(4)) };
                let mut accounts = self.accounts.lock().expect("accounts");
                match accounts.iter().position(|a| a.fields["whatsapp"] == n.as_str()) {
                    None => Ok(fail(26)),
                    Some(i) if accounts[i].fields["status"] == 1 => Ok(fail(25)),
                    Some(i) => {
                        accounts.remove(i);
                        Ok(ok(json!({ "whatsapp": n })))
                    }
                }
            }
            ("whatsapp", c) if Some(format!("whatsapp/{c}").as_str()) == self.create_path => {
                Self::verb(req, "POST")?;
                self.create(req)
            }
            // An unknown call: 404, so an adapter's one documented fallback (on 404 only)
            // is exercised; still a refusal.
            _ => Err(Reply {
                status: 404,
                ..Reply::refuse_with("no such call on the vendor pages", json!({ "status": "FAIL", "reason": 13 }))
            }),
        }
    }

    /// The vendor's "Step 2: Create Onboarding link": fields as `getAccounts` echoes them.
    fn create(&self, req: &Req) -> Result<Reply, Reply> {
        let b = req.json_fields(
            &[
                "whatsapp",
                "business_name",
                "business_email",
                "business_id",
                "business_address",
                "display_name",
                "reference",
                "coexistence",
            ],
            &["whatsapp"],
        )?;
        let Some(n) = digits_only(b.get("whatsapp")) else { return Ok(fail(4)) };
        if !self.verified.lock().expect("verified").contains(&n) {
            return Err(refuse("the page creates accounts for verified registered numbers only"));
        }
        if !matches!(b.get("coexistence").and_then(Value::as_i64), None | Some(0 | 1)) {
            return Err(refuse("`coexistence` is 0 or 1"));
        }
        let mut accounts = self.accounts.lock().expect("accounts");
        if accounts.iter().any(|a| a.fields["whatsapp"] == n.as_str()) {
            return Err(refuse("an account already exists for the number"));
        }
        let id = accounts.len() + 1;
        let link = format!("https://onboarding.example/{id}");
        let landing = format!("https://landing.example/{id}");
        let mut fields = b.clone();
        fields.insert("whatsapp".into(), json!(n));
        fields.insert("create_time".into(), json!(wa_onboard::domain::now_ms() / 1000));
        fields.insert("onboarding_link".into(), json!(link));
        fields.insert("landing_page".into(), json!(landing));
        fields.insert("status".into(), json!(0));
        fields.entry("coexistence").or_insert(json!(0));
        accounts.push(Account { fields });
        Ok(ok(json!({ "whatsapp": n, "onboarding_link": link, "landing_page": landing })))
    }

    /// The business owner finishes on 99digital's page.
    fn finish(&self, number: &str) {
        let mut accounts = self.accounts.lock().expect("accounts");
        let a = accounts.iter_mut().find(|a| a.fields["whatsapp"] == number).expect("account");
        a.fields.insert("status".into(), json!(1));
    }
}

fn json_ok(v: Value) -> Reply {
    Reply::ok(v)
}

impl Vendor for Digital99 {
    fn handle(&self, req: &Req) -> Reply {
        match self.routed(req) {
            Ok(r) | Err(r) => r,
        }
    }
}

async fn setup(create_path: Option<&'static str>) -> (crate::helpers::TestApp, Strict, Arc<Digital99>) {
    let vendor = Arc::new(Digital99 { create_path, verified: Mutex::new(vec![NUMBER.into()]), ..Default::default() });
    let server = Strict::serve(vendor.clone()).await;
    let app = service().await;
    account(
        &app,
        "d99",
        pb::Provider::Digital99,
        pb::account_credentials::Credentials::Digital99(pb::Digital99Credentials {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }),
        Some(pb::account_options::Options::Digital99(pb::Digital99Options {})),
        &server.url(),
    )
    .await;
    (app, server, vendor)
}

fn link_request(reference: &str) -> pb::CreateOnboardingRequest {
    pb::CreateOnboardingRequest {
        account: "accounts/d99".into(),
        reference: reference.into(),
        request_id: String::new(),
        onboarding_id: String::new(),
        request: Some(pb::create_onboarding_request::Request::Digital99(pb::Digital99LinkRequest {
            phone: format!("+{NUMBER}"),
            business_name: "Acme inc".into(),
            business_email: "john@example.com".into(),
            business_id: "1234567".into(),
            business_address: "Grove Street, San Andreas".into(),
            display_name: "Acme".into(),
            coexistence: false,
            register_number: false,
            verification_method: pb::VerificationMethod::Sms as i32,
        })),
    }
}

fn d99(o: &pb::Onboarding) -> &pb::Digital99Onboarding {
    match &o.details {
        Some(pb::onboarding::Details::Digital99(d)) => d,
        other => panic!("{}: expected 99digital details, got {other:?}", o.name),
    }
}

/// A link for a number verified beforehand, through token, webhook, reconciliation
/// (`getAccounts`), create and polling to LIVE. Would catch: an unknown body field (e.g. an
/// [I] `comment`), reconciliation through `getRegisteredNumbers`, a GET with a body, a
/// missing Bearer.
#[tokio::test]
async fn digital99_link_for_a_verified_number_goes_live_with_documented_calls_only() {
    let (app, server, vendor) = setup(Some("whatsapp/createOnboarding")).await;
    let check = check_account(&app, "d99").await.expect("check");
    assert!(check.ok, "{check:?}");
    let o =
        app.onboardings().create_onboarding(app.req(link_request("crm-strict"))).await.expect("create").into_inner();
    let linked = wait_until(&app, &server, &o.name, "given a link", |o| !d99(o).onboarding_link.is_empty()).await;
    assert_eq!(state_of(&linked), pb::OnboardingState::AwaitingCustomer);
    assert_eq!(d99(&linked).onboarding_link, "https://onboarding.example/1");
    assert!(vendor.webhook.lock().unwrap().is_some(), "the partner webhook points at the service");
    assert_eq!(server.count("POST", "/api/whatsapp/createOnboarding"), 1);
    vendor.finish(NUMBER);
    let live = wait_state(&app, &server, &o.name, pb::OnboardingState::Live).await;
    assert_eq!(live.reference, "crm-strict");
    assert_eq!(server.count("GET", "/api/whatsapp/getRegisteredNumbers"), 0, "not a reconciliation source");
    server.assert_documented_only();
}

/// No vendor page shows a create URL: against a server that has none, the onboarding ends
/// with a clear error naming the constant after the one documented fallback (404 only),
/// never a parse panic or a loop.
#[tokio::test]
async fn digital99_without_a_create_url_fails_cleanly_naming_the_inferred_constant() {
    let (app, server, vendor) = setup(None).await;
    let o = app.onboardings().create_onboarding(app.req(link_request("crm-none"))).await.expect("create").into_inner();
    let failed = wait_until(&app, &server, &o.name, "failed", |o| {
        matches!(state_of(o), pb::OnboardingState::Failed | pb::OnboardingState::Stalled)
    })
    .await;
    assert!(failed.state_reason.contains("CREATE_ONBOARDING_PATH"), "{}", failed.state_reason);
    assert_eq!(
        server.refusals(),
        vec![
            "POST /api/whatsapp/createOnboarding: no such call on the vendor pages".to_string(),
            "POST /api/whatsapp/createAccount: no such call on the vendor pages".to_string(),
        ],
        "one candidate, then the one fallback on its 404, once"
    );
    assert!(vendor.accounts.lock().unwrap().is_empty());
}
