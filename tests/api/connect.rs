//! The Connect protocol and gRPC-Web on the gRPC port, over real HTTP/1.1 and HTTP/2 (h2c)
//! sockets with reqwest: the same server, keys, errors and store as native gRPC.

use std::time::Duration;

use prost::Message as _;
use serde_json::{Value, json};
use wa_onboard::grpc::pb;

use crate::helpers::*;

const ONBOARDINGS: &str = "wa.onboard.v1.OnboardingService";

fn sandbox(s: &mut wa_onboard::config::Settings) {
    s.sandbox.enabled = true;
    s.sandbox.sims.gupshup.stage_ms = 300;
    s.engine.tick_ms = 50;
    s.engine.poll_interval_ms = 200;
    s.engine.retry_base_ms = 50;
    s.engine.retry_max_ms = 500;
}

fn url(app: &TestApp, method: &str) -> String {
    format!("http://{}/{method}", app.running().grpc_addr)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

/// A unary Connect JSON call as the dev tenant: HTTP status, headers and JSON body.
async fn call_json(app: &TestApp, method: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = http()
        .post(url(app, method))
        .bearer_auth(app.key.expose())
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    (status, headers, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

async fn raw(app: &TestApp, method: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = http()
        .post(url(app, method))
        .bearer_auth(app.key.expose())
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn gupshup_create(request_id: &str) -> Value {
    json!({
        "account": "accounts/sandbox-gupshup",
        "reference": "crm-connect",
        "requestId": request_id,
        "gupshup": { "appName": "ConnectShop", "wabaId": "104996122399160", "phone": "+919876543210" }
    })
}

/// Splits a Connect streaming body into its (flags, payload) envelopes.
fn envelopes(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        out.push((b[0], b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    assert!(b.is_empty(), "trailing bytes");
    out
}

fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test]
async fn unary_json_and_binary_answer_like_grpc() {
    let app = spawn_with(sandbox).await;
    let (status, headers, body) = call_json(&app, "wa.onboard.v1.ProviderService/ListProviders", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"));
    let providers = body["providers"].as_array().expect("providers");
    assert_eq!(providers.len(), 4, "{body}");
    assert!(providers.iter().all(|p| p["sandboxAvailable"] == true), "lowerCamelCase names: {body}");

    let (status, _, created) = call_json(&app, &format!("{ONBOARDINGS}/CreateOnboarding"), gupshup_create("c-1")).await;
    assert_eq!(status, 200, "{created}");
    let name = created["name"].as_str().expect("name").to_string();
    // The same onboarding over native gRPC: one store behind both.
    let native = app
        .onboardings()
        .get_onboarding(app.req(pb::GetOnboardingRequest { name: name.clone() }))
        .await
        .expect("native GetOnboarding")
        .into_inner();
    assert_eq!(native.reference, "crm-connect");

    let (status, _, got) = call_json(&app, &format!("{ONBOARDINGS}/GetOnboarding"), json!({ "name": name })).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["reference"], "crm-connect");
    assert!(got["state"].as_str().is_some_and(|s| s.starts_with("ONBOARDING_STATE_")), "enum names: {got}");
    assert!(got["createTime"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339 timestamps: {got}");

    // Binary: protobuf bytes both ways, over HTTP/2 without TLS (prior knowledge).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("h2 client");
    let resp = h2
        .post(url(&app, &format!("{ONBOARDINGS}/GetOnboarding")))
        .bearer_auth(app.key.expose())
        .header("content-type", "application/proto")
        .body(pb::GetOnboardingRequest { name: name.clone() }.encode_to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/proto");
    let o = pb::Onboarding::decode(resp.bytes().await.expect("bytes")).expect("an Onboarding");
    assert_eq!((o.name.as_str(), o.reference.as_str()), (name.as_str(), "crm-connect"));
}

#[tokio::test]
async fn errors_carry_the_connect_code_and_typed_details() {
    let app = spawn_with(sandbox).await;
    let (status, _, body) = call_json(&app, &format!("{ONBOARDINGS}/GetOnboarding"), json!({ "name": "nope" })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument");
    let details = body["details"].as_array().expect("details");
    let bad = details.iter().find(|d| d["type"] == "google.rpc.BadRequest").expect("BadRequest");
    assert_eq!(bad["debug"]["fieldViolations"][0]["field"], "name", "{body}");
    assert!(bad["value"].as_str().is_some_and(|v| !v.is_empty()));

    let (status, _, body) =
        call_json(&app, &format!("{ONBOARDINGS}/GetOnboarding"), json!({ "name": "onboardings/missing" })).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");

    // No key: the native refusal, as Connect's 401.
    let resp = http()
        .post(url(&app, &format!("{ONBOARDINGS}/GetOnboarding")))
        .header("content-type", "application/json")
        .body(r#"{"name":"onboardings/x"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "unauthenticated");
}

#[tokio::test]
async fn bad_input_is_a_connect_error_and_stores_nothing() {
    let app = spawn_with(sandbox).await;
    let create = format!("{ONBOARDINGS}/CreateOnboarding");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("application/json", b"{\"account\":".to_vec(), 400, "invalid_argument"),
        ("application/json", br#"{"account":"accounts/sandbox-gupshup","bogus":1}"#.to_vec(), 400, "invalid_argument"),
        ("application/json", br#"{"account":7}"#.to_vec(), 400, "invalid_argument"),
        ("application/proto", vec![0xff, 0xff, 0xff, 0xff], 400, "invalid_argument"),
        ("application/json", vec![b' '; 5 * 1024 * 1024], 429, "resource_exhausted"),
        ("text/plain", b"{}".to_vec(), 415, "unknown"),
        ("application/connect+json", envelope(0, b"{}"), 415, "unknown"),
    ];
    for (ct, body, status, code) in cases {
        let (got, json) = raw(&app, &create, ct, body).await;
        assert_eq!((got, json["code"].as_str()), (status, Some(code)), "{ct}: {json}");
    }
    let (got, json) = raw(&app, "wa.onboard.v1.OnboardingService/Nope", "application/json", "{}").await;
    assert_eq!((got, json["code"].as_str()), (404, Some("unimplemented")), "{json}");
    let resp = http().get(url(&app, &create)).send().await.expect("send");
    assert_eq!(resp.status(), 405);
    // A bad connect-timeout-ms and protocol version.
    for (h, v) in [("connect-timeout-ms", "soon"), ("connect-protocol-version", "2")] {
        let resp = http()
            .post(url(&app, &create))
            .bearer_auth(app.key.expose())
            .header("content-type", "application/json")
            .header(h, v)
            .body(gupshup_create("c-bad").to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 400, "{h}");
    }
    let list = app
        .onboardings()
        .list_onboardings(app.req(pb::ListOnboardingsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(list.onboardings.is_empty(), "nothing stored: {list:?}");
    // The server still answers.
    let (status, _, _) = call_json(&app, "wa.onboard.v1.ProviderService/ListProviders", json!({})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn watch_streams_json_to_live_and_ends_cleanly() {
    let app = spawn_with(sandbox).await;
    let (status, _, created) =
        call_json(&app, &format!("{ONBOARDINGS}/CreateOnboarding"), gupshup_create("c-watch")).await;
    assert_eq!(status, 200, "{created}");
    let name = created["name"].as_str().expect("name").to_string();
    let req = json!({ "name": name, "afterSequence": "0" }).to_string();
    let mut resp = http()
        .post(url(&app, &format!("{ONBOARDINGS}/WatchOnboarding")))
        .bearer_auth(app.key.expose())
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .body(envelope(0, req.as_bytes()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/connect+json");
    let mut buf = Vec::new();
    let mut kinds = Vec::new();
    let live = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = resp.chunk().await.expect("chunk") {
            buf.extend_from_slice(&chunk);
            // Whole envelopes only; keep a partial one for the next chunk.
            loop {
                if buf.len() < 5 {
                    break;
                }
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let (flags, msg): (u8, Value) = (buf[0], serde_json::from_slice(&buf[5..5 + len]).expect("JSON"));
                buf.drain(..5 + len);
                assert_eq!(flags, 0, "no end before LIVE: {msg}");
                let kind = ["snapshot", "event", "heartbeat"].into_iter().find(|k| msg.get(k).is_some());
                kinds.push(kind.unwrap_or("?"));
                if msg["event"]["state"] == "ONBOARDING_STATE_LIVE" {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(live, "not LIVE; messages: {kinds:?}");
    assert_eq!(kinds.first(), Some(&"snapshot"));

    // A timeout ends a stream with its end-of-stream message: deadline_exceeded, HTTP 200.
    let body = json!({ "name": name, "afterSequence": "0" }).to_string();
    let resp = http()
        .post(url(&app, &format!("{ONBOARDINGS}/WatchOnboarding")))
        .bearer_auth(app.key.expose())
        .header("content-type", "application/connect+json")
        .header("connect-timeout-ms", "1500")
        .body(envelope(0, body.as_bytes()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let all = envelopes(&resp.bytes().await.expect("whole stream"));
    let (flags, end) = all.last().expect("an end message");
    assert_eq!(*flags, 2);
    let end: Value = serde_json::from_slice(end).expect("JSON end");
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");
    assert!(all.len() >= 2, "messages before the end");

    // An error before the stream starts is its end message too.
    let resp = http()
        .post(url(&app, &format!("{ONBOARDINGS}/WatchOnboarding")))
        .header("content-type", "application/connect+json")
        .body(envelope(0, b"{\"name\":\"onboardings/x\"}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let all = envelopes(&resp.bytes().await.expect("bytes"));
    assert_eq!(all.len(), 1);
    let end: Value = serde_json::from_slice(&all[0].1).expect("JSON end");
    assert_eq!(end["error"]["code"], "unauthenticated", "{end}");
}

#[tokio::test]
async fn grpc_web_and_cors_share_the_port() {
    let app = spawn_with(|s| {
        sandbox(s);
        s.server.cors_allowed_origins = vec!["https://console.example".into()];
    })
    .await;
    // gRPC-Web over HTTP/1.1: a framed request, framed message and trailer frame back.
    let resp = http()
        .post(url(&app, "wa.onboard.v1.ProviderService/ListProviders"))
        .bearer_auth(app.key.expose())
        .header("content-type", "application/grpc-web+proto")
        .header("origin", "https://console.example")
        .body(envelope(0, &pb::ListProvidersRequest::default().encode_to_vec()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://console.example");
    let frames = envelopes(&resp.bytes().await.expect("bytes"));
    let list = pb::ListProvidersResponse::decode(frames[0].1.as_slice()).expect("message");
    assert_eq!(list.providers.len(), 4);
    let trailers = String::from_utf8_lossy(&frames.last().expect("trailers").1).to_lowercase();
    assert_eq!(frames.last().map(|f| f.0), Some(0x80));
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Preflight from an allowed origin; none for another.
    let preflight = |origin: &'static str| {
        http()
            .request(reqwest::Method::OPTIONS, url(&app, "wa.onboard.v1.ProviderService/ListProviders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,connect-protocol-version,authorization")
            .send()
    };
    let ok = preflight("https://console.example").await.expect("send");
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://console.example");
    assert!(ok.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let other = preflight("https://evil.example").await.expect("send");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Native gRPC is untouched.
    let native = app.providers().list_providers(app.req(pb::ListProvidersRequest::default())).await.expect("grpc");
    assert_eq!(native.into_inner().providers.len(), 4);
}

#[tokio::test]
async fn the_console_page_is_served_with_a_strict_policy_and_can_be_turned_off() {
    let app = spawn_app().await;
    for path in ["", "console"] {
        let resp = http().get(url(&app, path)).send().await.expect("send");
        assert_eq!(resp.status(), 200, "/{path}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        let page = resp.text().await.expect("page");
        assert!(page.contains("wa.onboard.v1.OnboardingService/WatchOnboarding"), "a Connect client");
    }
    let off = spawn_with(|s| s.server.console = false).await;
    let resp = http().get(url(&off, "")).send().await.expect("send");
    assert_eq!(resp.status(), 405, "no page: a GET is just not a Connect call");
}
