//! The strict-server kit: one HTTP listener per vendor that answers only what the vendor
//! pages document (docs/providers.md [C] facts and /work/shared/seeds/) and 400 to anything
//! else, recording every call; plus the service under test (the real server, real gRPC over
//! TCP) with custom endpoints allowed so an account can point at a strict server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Map, Value};
use wa_onboard::grpc::pb;

use crate::helpers::{TestApp, spawn_with};

/// Generous bound for the engine to get somewhere on a loaded 2-core box (a guard against
/// hanging, not a timing assertion).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// One request as the strict server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: Method,
    /// Percent-decoded path segments (no empty ones).
    pub segs: Vec<String>,
    /// Query pairs in order.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    /// `segs` as `&str`s, for matching.
    pub(crate) fn path(&self) -> Vec<&str> {
        self.segs.iter().map(String::as_str).collect()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The bearer token of `Authorization`, if any.
    pub(crate) fn bearer(&self) -> Option<&str> {
        self.header("authorization").and_then(|a| a.strip_prefix("Bearer "))
    }

    pub(crate) fn q(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Refuses any query parameter outside `allowed` (and any repeated one).
    pub(crate) fn only_query(&self, allowed: &[&str]) -> Result<(), Reply> {
        for (i, (k, _)) in self.query.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                return Err(Reply::refuse(format!("undocumented query parameter `{k}`")));
            }
            if self.query[..i].iter().any(|(p, _)| p == k) {
                return Err(Reply::refuse(format!("query parameter `{k}` repeated")));
            }
        }
        Ok(())
    }

    /// Refuses a non-empty body (GET/DELETE bodies are empty on the vendor pages).
    pub(crate) fn no_body(&self) -> Result<(), Reply> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(Reply::refuse("a body where the vendor documents none"))
        }
    }

    /// The body as a JSON object whose keys are all in `allowed`, with every `required` one.
    pub(crate) fn json_fields(&self, allowed: &[&str], required: &[&str]) -> Result<Map<String, Value>, Reply> {
        let v: Value = serde_json::from_slice(&self.body).map_err(|_| Reply::refuse("the body is not JSON"))?;
        let Value::Object(m) = v else { return Err(Reply::refuse("the body is not a JSON object")) };
        check_keys(m.keys().map(String::as_str), allowed, required)?;
        Ok(m)
    }

    /// The body as an `application/x-www-form-urlencoded` form whose keys are all in
    /// `allowed`, with every `required` one.
    pub(crate) fn form_fields(&self, allowed: &[&str], required: &[&str]) -> Result<Vec<(String, String)>, Reply> {
        let ct = self.header("content-type").unwrap_or_default();
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(Reply::refuse(format!("content type `{ct}` where the vendor documents a form")));
        }
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&self.body).map_err(|_| Reply::refuse("the body is not a form"))?;
        check_keys(pairs.iter().map(|(k, _)| k.as_str()), allowed, required)?;
        Ok(pairs)
    }
}

fn check_keys<'a>(
    keys: impl Iterator<Item = &'a str> + Clone,
    allowed: &[&str],
    required: &[&str],
) -> Result<(), Reply> {
    if let Some(k) = keys.clone().find(|k| !allowed.contains(k)) {
        return Err(Reply::refuse(format!("undocumented field `{k}`")));
    }
    if let Some(r) = required.iter().find(|r| !keys.clone().any(|k| k == **r)) {
        return Err(Reply::refuse(format!("required field `{r}` missing")));
    }
    Ok(())
}

/// A strict server's answer. `refused` marks a 400 given because the request went beyond
/// the vendor pages (as opposed to a documented error the flow may meet).
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub refused: Option<String>,
}

impl Reply {
    pub(crate) fn json(status: u16, v: Value) -> Self {
        Self { status, content_type: "application/json", body: v.to_string().into_bytes(), refused: None }
    }

    pub(crate) fn ok(v: Value) -> Self {
        Self::json(200, v)
    }

    pub(crate) fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self { status, content_type, body, refused: None }
    }

    /// 400: the request is not one the vendor pages document.
    pub(crate) fn refuse(why: impl Into<String>) -> Self {
        let why = why.into();
        Self {
            status: 400,
            content_type: "text/plain",
            body: format!("strict server: {why}").into_bytes(),
            refused: Some(why),
        }
    }

    /// [`Self::refuse`] with the vendor's error envelope as the body.
    pub(crate) fn refuse_with(why: impl Into<String>, envelope: Value) -> Self {
        Self { content_type: "application/json", body: envelope.to_string().into_bytes(), ..Self::refuse(why) }
    }
}

/// A vendor's strict rules.
pub(crate) trait Vendor: Send + Sync + 'static {
    /// Answers one request: a documented route, or [`Reply::refuse`].
    fn handle(&self, req: &Req) -> Reply;
}

/// One call the server saw: `route` is "METHOD /raw/path" (query kept apart).
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub refused: Option<String>,
}

struct Inner {
    vendor: Arc<dyn Vendor>,
    log: Mutex<Vec<Seen>>,
}

/// A running strict server.
#[derive(Clone)]
pub(crate) struct Strict {
    pub addr: std::net::SocketAddr,
    inner: Arc<Inner>,
}

impl Strict {
    /// Serves `vendor` on a fresh 127.0.0.1 port.
    pub(crate) async fn serve(vendor: Arc<dyn Vendor>) -> Self {
        let inner = Arc::new(Inner { vendor, log: Mutex::new(Vec::new()) });
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self { addr, inner }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn calls(&self) -> Vec<Seen> {
        self.inner.log.lock().expect("log").clone()
    }

    /// Calls whose method is `method` and whose path matches `pattern` (`*` = any one segment).
    pub(crate) fn count(&self, method: &str, pattern: &str) -> usize {
        self.calls().iter().filter(|c| c.method == method && path_matches(pattern, &c.path)).count()
    }

    /// Every call refused as undocumented, as "METHOD path?query: why".
    pub(crate) fn refusals(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| {
                c.refused.map(|why| {
                    let q = if c.query.is_empty() { String::new() } else { format!("?{}", c.query) };
                    format!("{} {}{q}: {why}", c.method, c.path)
                })
            })
            .collect()
    }

    /// Fails the test when the service sent anything the vendor pages do not document.
    pub(crate) fn assert_documented_only(&self) {
        let r = self.refusals();
        assert!(r.is_empty(), "the service sent undocumented requests:\n  {}", r.join("\n  "));
    }
}

/// `pattern` against `path`, segment by segment (`*` matches one segment).
fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let s: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_path = uri.path().to_string();
    let segs = raw_path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect::<Vec<_>>();
    let raw_query = uri.query().unwrap_or_default().to_string();
    let query: Vec<(String, String)> = serde_urlencoded::from_str(&raw_query).unwrap_or_default();
    let req = Req { method: method.clone(), segs, query, headers, body };
    let reply = inner.vendor.handle(&req);
    inner.log.lock().expect("log").push(Seen {
        method: method.to_string(),
        path: raw_path,
        query: raw_query,
        status: reply.status,
        refused: reply.refused.clone(),
    });
    Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, reply.content_type)
        .body(Body::from(reply.body))
        .expect("response")
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

// ----- the service under test -----

/// The real service, no sandbox, custom endpoints allowed, a fast engine.
pub(crate) async fn service() -> TestApp {
    spawn_with(|s| {
        s.sandbox.enabled = false;
        s.providers.allow_custom_endpoints = true;
        s.providers.http_timeout_secs = 5;
        s.engine.tick_ms = 50;
        s.engine.poll_interval_ms = 200;
        s.engine.retry_base_ms = 50;
        s.engine.retry_max_ms = 300;
    })
    .await
}

/// Creates `accounts/{id}` with `credentials`, `options` and `endpoint`.
pub(crate) async fn account(
    app: &TestApp,
    id: &str,
    provider: pb::Provider,
    credentials: pb::account_credentials::Credentials,
    options: Option<pb::account_options::Options>,
    endpoint: &str,
) {
    app.accounts()
        .create_account(app.req(pb::CreateAccountRequest {
            account: Some(pb::Account {
                provider: provider as i32,
                display_name: format!("strict {id}"),
                credentials: Some(pb::AccountCredentials { credentials: Some(credentials) }),
                options: Some(pb::AccountOptions { options, endpoint: endpoint.into() }),
                ..Default::default()
            }),
            account_id: id.into(),
            request_id: String::new(),
        }))
        .await
        .expect("create account");
}

pub(crate) async fn get(app: &TestApp, name: &str) -> pb::Onboarding {
    app.onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.into() }))
        .await
        .expect("get onboarding")
        .into_inner()
}

pub(crate) fn state_of(o: &pb::Onboarding) -> pb::OnboardingState {
    pb::OnboardingState::try_from(o.state).unwrap_or(pb::OnboardingState::Unspecified)
}

/// Polls `GetOnboarding` until `pred` holds; panics with the last state (and the strict
/// server's refusals, the usual cause) after [`PATIENCE`].
pub(crate) async fn wait_until(
    app: &TestApp,
    server: &Strict,
    name: &str,
    what: &str,
    pred: impl Fn(&pb::Onboarding) -> bool,
) -> pb::Onboarding {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let o = get(app, name).await;
        if pred(&o) {
            return o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: not {what} in time; last state {:?} ({}), provider status {:?}; refused: {:?}",
            state_of(&o),
            o.state_reason,
            o.provider_status,
            server.refusals()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn wait_state(
    app: &TestApp,
    server: &Strict,
    name: &str,
    want: pb::OnboardingState,
) -> pb::Onboarding {
    wait_until(app, server, name, want.as_str_name(), |o| state_of(o) == want).await
}

pub(crate) fn tokens(app: &TestApp) -> pb::token_service_client::TokenServiceClient<tonic::transport::Channel> {
    pb::token_service_client::TokenServiceClient::new(app.channel.clone())
}

pub(crate) async fn check_account(app: &TestApp, account: &str) -> Result<pb::CheckAccountResponse, tonic::Status> {
    app.accounts()
        .check_account(app.req(pb::CheckAccountRequest { name: format!("accounts/{account}") }))
        .await
        .map(|r| r.into_inner())
}
