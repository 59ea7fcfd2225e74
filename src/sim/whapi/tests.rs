use std::time::Duration;

use axum::extract::Request;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::sim::common::Fault;

const DAY: i64 = 86_400_000;
const PT: &str = "sandbox-partner-token";

struct Env {
    sim: WhapiSim,
    _servers: WhapiSimServers,
    m: String,
    g: String,
    http: reqwest::Client,
}

fn cfg() -> WhapiSimConfig {
    WhapiSimConfig { launch_ms: 50, scan_delay_ms: 300, restart_ms: 400, tick_ms: 50, ..Default::default() }
}

async fn env(cfg: WhapiSimConfig) -> Env {
    let a: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (sim, servers) = WhapiSim::spawn(cfg, a, a).await.unwrap();
    Env {
        m: servers.manager.base_url(),
        g: servers.gate.base_url(),
        sim,
        _servers: servers,
        http: reqwest::Client::new(),
    }
}

impl Env {
    async fn mgr(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.m))
            .header("Authorization", format!("Bearer {PT}"));
        if let Some(b) = body {
            r = r.header("Content-Type", "application/json").body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let s = resp.status();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    async fn gate(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let resp = self.gate_raw(token, method, path, body).await;
        let s = resp.status();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    async fn gate_raw(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.g))
            .header("Authorization", format!("Bearer {token}"));
        if let Some(b) = body {
            r = r.header("Content-Type", "application/json").body(b.to_string());
        }
        r.send().await.unwrap()
    }

    async fn create(&self) -> Value {
        let (s, v) = self.mgr("PUT", "/channels", Some(json!({"name": "Bot", "projectId": "sandbox-project"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Wakes the channel and waits until health is QR.
    async fn until_qr(&self, token: &str) {
        for _ in 0..50 {
            let (_, h) = self.gate(token, "GET", "/health", None).await;
            if h["status"]["code"] == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("channel never reached QR");
    }

    async fn hooks(&self, token: &str, url: &str, mode: &str, types: &[&str]) {
        let events: Vec<Value> = types.iter().map(|t| json!({"type": t, "method": "post"})).collect();
        let body = json!({"webhooks": [{"url": url, "mode": mode, "events": events}]});
        let (s, v) = self.gate(token, "PATCH", "/settings", Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

type Hit = (String, String, Value);

/// A webhook receiver collecting (method, path, JSON body).
async fn hook_server() -> (String, mpsc::UnboundedReceiver<Hit>, crate::sim::common::Running) {
    let (tx, rx) = mpsc::unbounded_channel::<Hit>();
    let app = axum::Router::new().fallback(move |req: Request| {
        let tx = tx.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let bytes = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
            let _ = tx.send((method, path, serde_json::from_slice(&bytes).unwrap_or(Value::Null)));
            "ok"
        }
    });
    let running = crate::sim::common::serve(app, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (format!("{}/hook", running.base_url()), rx, running)
}

async fn wait_hit(rx: &mut mpsc::UnboundedReceiver<Hit>, pred: impl Fn(&Hit) -> bool) -> Hit {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let hit = tokio::time::timeout_at(deadline, rx.recv()).await.expect("webhook not received").unwrap();
        if pred(&hit) {
            return hit;
        }
    }
}

fn is_error_body(v: &Value, code: u16) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["details"].is_string(), "{v}");
}

fn decode_png(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(buf.contains(&0) && buf.contains(&255));
    (info.width, info.height)
}

#[tokio::test]
async fn create_channel_shape_auth_and_reads() {
    let e = env(cfg()).await;
    let before = e.sim.core().clock.now_ms();
    let c = e.create().await;
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    let mut keys = keys.clone();
    keys.sort();
    assert_eq!(
        keys,
        [
            "activeTill",
            "apiUrl",
            "creationTS",
            "id",
            "mode",
            "name",
            "ownerId",
            "projectId",
            "server",
            "status",
            "stopped",
            "token",
            "trial"
        ]
    );
    let id = c["id"].as_str().unwrap();
    let (word, suffix) = id.split_once('-').unwrap();
    assert!(!word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase()));
    assert!(suffix.len() == 5 && suffix.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    let token = c["token"].as_str().unwrap();
    assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_alphanumeric()));
    let created = c["creationTS"].as_i64().unwrap();
    assert!(created >= before && created < before + 5_000);
    assert_eq!(c["activeTill"].as_i64().unwrap(), created + 5 * DAY);
    assert_eq!(c["trial"], c["activeTill"]);
    assert_eq!(c["apiUrl"], format!("{}/", e.g));
    assert!(c["server"].is_i64());
    assert_eq!(
        (c["stopped"].clone(), c["status"].clone(), c["mode"].clone()),
        (json!(false), json!("active"), json!("trial"))
    );
    assert_eq!((c["name"].clone(), c["projectId"].clone()), (json!("Bot"), json!("sandbox-project")));

    // Auth and validation.
    let r = e.http.get(format!("{}/projects", e.m)).header("Authorization", "Bearer nope").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    is_error_body(&r.json().await.unwrap(), 401);
    for body in
        [json!({"name": "x"}), json!({"name": "x", "projectId": "nope"}), json!({"projectId": "sandbox-project"})]
    {
        let (s, v) = e.mgr("PUT", "/channels", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        is_error_body(&v, 400);
    }

    let (s, v) = e.mgr("GET", "/projects", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"projects": [{"id": "sandbox-project", "name": "Sandbox"}]})));
    let (s, v) = e.mgr("GET", &format!("/channels/{id}"), None).await;
    assert_eq!((s, &v), (StatusCode::OK, &c));
    for path in ["/channels/list", "/channels/list/sandbox-project", "/channels"] {
        let (s, v) = e.mgr("GET", path, None).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"channels": [c.clone()]})), "{path}");
    }
    let (s, v) = e.mgr("GET", "/no/such/path", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    is_error_body(&v, 404);
    let (s, v) = e.mgr("GET", "/channels/NOPE-00000", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    is_error_body(&v, 404);
    // Gate with a bad token.
    let (s, v) = e.gate("wrong", "GET", "/health", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    is_error_body(&v, 401);
}

#[tokio::test]
async fn creation_limit_is_20_per_30_minutes() {
    let e = env(cfg()).await;
    for _ in 0..20 {
        e.create().await;
    }
    let (s, v) = e.mgr("PUT", "/channels", Some(json!({"name": "x", "projectId": "sandbox-project"}))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    is_error_body(&v, 429);
    let c = e.sim.core().counters();
    assert_eq!(c.rate_limit_violations, 1);
    assert_eq!(c.violations_by_limit["channel_create"], 1);
    assert_eq!(c.created["channels"], 20);
    e.sim.core().clock.advance(Duration::from_secs(30 * 60));
    e.create().await;
    assert_eq!(e.sim.core().counters().created["channels"], 21);
}

#[tokio::test]
async fn qr_json_png_rotation_and_expiry() {
    let e = env(WhapiSimConfig { sandbox: false, ..cfg() }).await;
    let (url, mut rx, _hs) = hook_server().await;
    let c = e.create().await;
    let (t, id) = (c["token"].as_str().unwrap(), c["id"].as_str().unwrap());
    e.hooks(t, &url, "body", &["channel"]).await;
    let (s, h) = e.gate(t, "GET", "/health?wakeup=false", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["status"], json!({"code": 1, "text": "INIT"}));
    assert_eq!(h["channel_id"], id);
    assert!(h["start_at"].is_i64() && h["uptime"].is_i64() && h["version"].is_string());
    let (_, v) = e.gate(t, "GET", "/users/login", None).await;
    assert_eq!(v, json!({"status": "WAITING"}));
    e.until_qr(t).await;

    let (s, v) = e.gate(t, "GET", "/users/login", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "OK");
    // [C2] The OpenAPI `QR` object: `expire` (a number), never `expires_in`.
    assert!(v.get("expires_in").is_none());
    let exp = v["expire"].as_i64().unwrap();
    assert!((1..=20).contains(&exp));
    let b64 = v["base64"].as_str().unwrap().strip_prefix("data:image/png;base64,").unwrap();
    let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let (w, h) = decode_png(&png);
    assert!(w == h && w > 100);
    let qr1 = v["rowdata"].as_str().unwrap().to_string();
    assert!(qr1.starts_with("2@"));

    let r = e.gate_raw(t, "GET", "/users/login/image", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    decode_png(&r.bytes().await.unwrap());
    let (_, v) = e.gate(t, "GET", "/users/login/rowdata", None).await;
    assert_eq!(v["rowdata"], qr1.as_str());
    assert_eq!(v["status"], "OK", "status is required on the rowdata answer too");
    assert!(v["expire"].is_i64() && v.get("expires_in").is_none());

    // Rotation: after the TTL a new QR is served and the old one is expired.
    e.sim.core().clock.advance(Duration::from_secs(20));
    let (_, v) = e.gate(t, "GET", "/users/login/rowdata", None).await;
    let qr2 = v["rowdata"].as_str().unwrap().to_string();
    assert_ne!(qr1, qr2);
    let (_, _, b) = wait_hit(&mut rx, |h| h.2["event"]["event"] == "patch").await;
    assert_eq!(b["event"], json!({"type": "channel", "event": "patch"}));
    assert_eq!(b["qr"]["rowdata"], qr2.as_str());
    let scan = |rowdata: &str| {
        e.http.post(format!("{}/_sim/whapi/channels/{id}/scan", e.g)).json(&json!({"rowdata": rowdata})).send()
    };
    assert_eq!(scan(&qr1).await.unwrap().status(), StatusCode::GONE);
    assert_eq!(scan(&qr2).await.unwrap().status(), StatusCode::NO_CONTENT);
    let (s, v) = e.gate(t, "GET", "/users/login", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    is_error_body(&v, 409);
    assert_eq!(e.sim.channel(id).unwrap().phone.as_deref(), Some("15550001234"));
}

#[tokio::test]
async fn sandbox_scan_links_and_fires_webhooks() {
    let e = env(cfg()).await;
    let (url, mut rx, _hs) = hook_server().await;
    let c = e.create().await;
    let (t, id) = (c["token"].as_str().unwrap(), c["id"].as_str().unwrap());
    e.hooks(t, &url, "body", &["users", "channel"]).await;
    e.until_qr(t).await;
    let (_, _, b) = wait_hit(&mut rx, |h| h.2["health"]["status"]["text"] == "LAUNCH").await;
    assert_eq!(b["event"], json!({"type": "channel", "event": "post"}));
    assert_eq!(b["channel_id"], id);
    let (m, p, b) = wait_hit(&mut rx, |h| h.2["health"]["status"]["code"] == 3).await;
    assert_eq!((m.as_str(), p.as_str()), ("POST", "/hook"));
    assert!(b["health"]["start_at"].is_i64() && b["health"]["uptime"].is_i64() && b["health"]["version"].is_string());

    let r = e.gate_raw(t, "GET", "/users/login/image", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, _, b) = wait_hit(&mut rx, |h| h.2["event"]["type"] == "users").await;
    assert_eq!(
        b,
        json!({"user": {"id": "15550001234", "name": "Sandbox User"}, "event": {"type": "users", "event": "post"}, "channel_id": id})
    );
    let (_, h) = e.gate(t, "GET", "/health", None).await;
    assert_eq!(h["status"], json!({"code": 4, "text": "AUTH"}));
    wait_hit(&mut rx, |h| h.2["health"]["status"]["text"] == "AUTH").await;
    let (_, v) = e.mgr("GET", &format!("/channels/{id}"), None).await;
    assert_eq!(v["phone"], "15550001234");

    // Control: ERROR fires the channel webhook.
    let r = e.http.post(format!("{}/_sim/whapi/channels/{id}/error", e.m)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    wait_hit(&mut rx, |h| h.2["health"]["status"] == json!({"code": 5, "text": "ERROR"})).await;
}

#[tokio::test]
async fn pairing_code_links_given_phone_path_mode() {
    let e = env(cfg()).await;
    let (url, mut rx, _hs) = hook_server().await;
    let c = e.create().await;
    let t = c["token"].as_str().unwrap();
    e.hooks(t, &url, "path", &["users"]).await;
    e.until_qr(t).await;
    for bad in ["/users/login/12ab5678", "/users/login/+447700900123", "/users/login/123"] {
        let (s, v) = e.gate(t, "GET", bad, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        is_error_body(&v, 400);
    }
    let (s, v) = e.gate(t, "GET", "/users/login/447700900123", None).await;
    assert_eq!(s, StatusCode::OK);
    let code = v["code"].as_str().unwrap();
    assert!(code.len() == 9 && code.as_bytes()[4] == b'-', "{code}");
    // [C2] `AuthCode` is `{code}` only.
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let (m, p, b) = wait_hit(&mut rx, |h| h.2["event"]["type"] == "users").await;
    assert_eq!((m.as_str(), p.as_str()), ("POST", "/hook/users/post"));
    assert_eq!(b["user"]["id"], "447700900123");
}

#[tokio::test]
async fn logout_fires_users_delete_and_back_to_qr() {
    let e = env(WhapiSimConfig { sandbox: false, ..cfg() }).await;
    let (url, mut rx, _hs) = hook_server().await;
    let c = e.create().await;
    let (t, id) = (c["token"].as_str().unwrap(), c["id"].as_str().unwrap());
    e.hooks(t, &url, "method", &["users"]).await;
    let (s, v) = e.gate(t, "POST", "/users/logout", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    is_error_body(&v, 409);
    e.until_qr(t).await;
    let r =
        e.http.post(format!("{}/_sim/whapi/channels/{id}/scan", e.g)).json(&json!({"phone": "4915112345678"})).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::NO_CONTENT);
    let (m, _, b) = wait_hit(&mut rx, |h| h.2["event"]["event"] == "post").await;
    assert_eq!((m.as_str(), &b["user"]["id"]), ("POST", &json!("4915112345678")));

    let (s, v) = e.gate(t, "POST", "/users/logout", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"success": true})));
    let (m, p, b) = wait_hit(&mut rx, |h| h.2["event"]["event"] == "delete").await;
    assert_eq!((m.as_str(), p.as_str()), ("DELETE", "/hook"));
    assert_eq!(b["event"], json!({"type": "users", "event": "delete"}));
    assert_eq!(b["user"]["id"], "4915112345678");
    let (_, h) = e.gate(t, "GET", "/health", None).await;
    assert_eq!(h["status"]["text"], "QR");
    let (s, v) = e.gate(t, "GET", "/users/login", None).await;
    assert_eq!((s, &v["status"]), (StatusCode::OK, &json!("OK")));
    let (_, v) = e.mgr("GET", &format!("/channels/{id}"), None).await;
    assert!(v.get("phone").is_none());
}

#[tokio::test]
async fn mode_change_restarts_channel() {
    let e = env(cfg()).await;
    let c = e.create().await;
    let (t, id) = (c["token"].as_str().unwrap(), c["id"].as_str().unwrap());
    e.until_qr(t).await;
    let (s, v) = e.gate(t, "GET", "/limits", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["messages_day"], json!({"limit": 150, "used": 0}));
    assert_eq!(v["chats_month"], json!({"limit": 5, "used": 0}));
    assert_eq!(v["api_requests_month"]["limit"], 1000);
    assert!(v["api_requests_month"]["used"].as_u64().unwrap() >= 1);

    // Only the documented request values (`live` [C], `trial` [C2]); `sandbox` is nobody's
    // value and `dev` (how Sandbox reads) is not a documented request value.
    for bad in ["gold", "sandbox", "dev"] {
        let (s, v) = e.mgr("PATCH", &format!("/channels/{id}/mode"), Some(json!({ "mode": bad }))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        is_error_body(&v, 400);
    }
    let (s, v) = e.mgr("PATCH", &format!("/channels/{id}/mode"), Some(json!({"mode": "live"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((v["mode"].as_str(), v["id"].as_str()), (Some("live"), Some(id)));
    let (s, v) = e.gate(t, "GET", "/users/login", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    is_error_body(&v, 503);
    let (s, h) = e.gate(t, "GET", "/health", None).await;
    assert_eq!((s, &h["status"]), (StatusCode::OK, &json!({"code": 2, "text": "LAUNCH"})));
    e.sim.core().clock.advance(Duration::from_millis(500));
    let (_, h) = e.gate(t, "GET", "/health", None).await;
    assert_eq!(h["status"]["text"], "QR");
    let (s, v) = e.gate(t, "GET", "/limits", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["messages_day"]["limit"], Value::Null);
    assert_eq!(v["api_requests_month"]["limit"], Value::Null);
}

#[tokio::test]
async fn extend_moves_days_and_alerts_on_low_balance() {
    let e = env(cfg()).await;
    let (url, mut rx, _hs) = hook_server().await;
    let c = e.create().await;
    let id = c["id"].as_str().unwrap();
    let till = c["activeTill"].as_i64().unwrap();
    let path = format!("/channels/{id}/extend");
    for bad in [json!({"days": 3}), json!({"days": 3, "comment": ""}), json!({"days": 0, "comment": "x"})] {
        let (s, v) = e.mgr("POST", &path, Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        is_error_body(&v, 400);
    }
    let (s, v) = e.mgr("POST", &path, Some(json!({"days": 10, "comment": "order 1"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["activeTill"].as_i64().unwrap(), till + 10 * DAY);
    assert_eq!(v["id"], id);
    let (_, p) = e.mgr("GET", "/partners", None).await;
    assert_eq!(p, json!({"name": "sandbox", "balance": 90, "liveDays": 10, "trialDays": 5}));

    let (s, v) = e.mgr("POST", &path, Some(json!({"days": 1000, "comment": "too much"}))).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    is_error_body(&v, 402);

    let settings = json!({"webhooks": [{"url": url, "events": [{"type": "days", "method": "post"}], "mode": "body"}], "days_limit": 85});
    let (s, v) = e.mgr("PATCH", "/partners/sandbox/settings", Some(settings)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["days_limit"], 85);
    let (s, _) = e.mgr("GET", "/partners/other/settings", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, g) = e.mgr("GET", "/partners/sandbox/settings", None).await;
    assert_eq!(g, v);
    let (s, _) = e.mgr("POST", &path, Some(json!({"days": 6, "comment": "order 2"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, b) = wait_hit(&mut rx, |_| true).await;
    assert_eq!(b, json!({"event": {"type": "days", "event": "post"}, "balance": 84, "partner": "sandbox"}));

    let r = e.http.get(format!("{}/_sim/whapi/channels/{id}/billing", e.m)).send().await.unwrap();
    let hist: Value = r.json().await.unwrap();
    assert_eq!(hist.as_array().unwrap().len(), 2);
    assert_eq!((hist[0]["days"].clone(), hist[0]["comment"].clone()), (json!(10), json!("order 1")));
    assert!(hist[1]["at"].is_i64());
    assert_eq!(e.sim.billing(id).unwrap().len(), 2);
}

#[tokio::test]
async fn delete_refunds_unused_extended_days() {
    let e = env(cfg()).await;
    let a = e.create().await;
    let b = e.create().await;
    let (ia, ib) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    e.mgr("POST", &format!("/channels/{ia}/extend"), Some(json!({"days": 10, "comment": "a"}))).await;
    e.mgr("POST", &format!("/channels/{ib}/extend"), Some(json!({"days": 10, "comment": "b"}))).await;
    assert_eq!(e.sim.balance(), 80);
    // a: 15 days total; after 2.5 days 12.5 remain -> 12 whole, capped at the 10 extended.
    e.sim.core().clock.advance(Duration::from_secs(60 * 60 * 60));
    let (s, v) = e.mgr("DELETE", &format!("/channels/{ia}"), None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"deleted": true, "refunded_days": 10})));
    // b: after 7.5 days in all, 7.5 remain -> 7.
    e.sim.core().clock.advance(Duration::from_secs(5 * 86_400));
    let (s, v) = e.mgr("DELETE", &format!("/channels/{ib}"), None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"deleted": true, "refunded_days": 7})));
    let (_, p) = e.mgr("GET", "/partners", None).await;
    assert_eq!(p["balance"], 97);
    let r = e.http.get(format!("{}/_sim/whapi/balance", e.g)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["balance"], 97);
    // A trial-only channel refunds nothing; a deleted one is gone.
    let c = e.create().await;
    let (_, v) = e.mgr("DELETE", &format!("/channels/{}", c["id"].as_str().unwrap()), None).await;
    assert_eq!(v["refunded_days"], 0);
    let (s, v) = e.mgr("DELETE", &format!("/channels/{ia}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    is_error_body(&v, 404);
    let (s, _) = e.gate(a["token"].as_str().unwrap(), "GET", "/health", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn settings_validation_partial_update_and_reset() {
    let e = env(cfg()).await;
    let c = e.create().await;
    let t = c["token"].as_str().unwrap();
    let (s, defaults) = e.gate(t, "GET", "/settings", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(defaults["webhooks"], json!([]));
    let headers: serde_json::Map<String, Value> = (0..6).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    let bad = [
        json!({"webhooks": [{"url": "http://x.test/h", "headers": headers}]}),
        json!({"webhooks": [{"url": "http://x.test/h", "events": [{"type": "bogus", "method": "post"}]}]}),
        json!({"webhooks": [{"url": "http://x.test/h", "events": [{"type": "users", "method": "get"}]}]}),
        json!({"webhooks": [{"url": "http://x.test/h", "mode": "query"}]}),
        json!({"webhooks": [{"mode": "body"}]}),
        json!({"callback_backoff_delay_ms": 2000}),
        json!({"max_callback_backoff_delay_ms": 100}),
        json!({"nonsense": true}),
    ];
    for b in bad {
        let (s, v) = e.gate(t, "PATCH", "/settings", Some(b.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        is_error_body(&v, 400);
    }
    let five: serde_json::Map<String, Value> = (0..5).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    let ok = json!({"webhooks": [{"url": "http://x.test/h", "headers": five, "events": [{"type": "users", "method": "post"}], "mode": "method"}],
                    "callback_backoff_delay_ms": 5000});
    let (s, v) = e.gate(t, "PATCH", "/settings", Some(ok)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["callback_backoff_delay_ms"], 5000);
    assert_eq!(v["webhooks"][0]["mode"], "method");
    assert_eq!(v["pdo_sync"], defaults["pdo_sync"]);
    // Partial: other fields stay.
    let (_, v) = e.gate(t, "PATCH", "/settings", Some(json!({"offline_mode": true}))).await;
    assert_eq!((v["offline_mode"].clone(), v["callback_backoff_delay_ms"].clone()), (json!(true), json!(5000)));
    assert_eq!(v["webhooks"].as_array().unwrap().len(), 1);
    let (s, v) = e.gate(t, "DELETE", "/settings", None).await;
    assert_eq!((s, &v), (StatusCode::OK, &defaults));
    let (_, v) = e.gate(t, "GET", "/settings", None).await;
    assert_eq!(v, defaults);
}

#[tokio::test]
async fn expiry_stops_channel_until_extended() {
    let e = env(cfg()).await;
    let c = e.create().await;
    let (t, id) = (c["token"].as_str().unwrap(), c["id"].as_str().unwrap());
    e.sim.core().clock.advance(Duration::from_secs(5 * 86_400 + 1));
    let (_, v) = e.mgr("GET", &format!("/channels/{id}"), None).await;
    assert_eq!((v["stopped"].clone(), v["status"].clone()), (json!(true), json!("stopped")));
    let (s, v) = e.gate(t, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    is_error_body(&v, 402);
    let (s, v) = e.mgr("POST", &format!("/channels/{id}/extend"), Some(json!({"days": 1, "comment": "revive"}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((v["stopped"].clone(), v["status"].clone()), (json!(false), json!("active")));
    assert!(v["activeTill"].as_i64().unwrap() > e.sim.core().clock.now_ms());
    let (s, _) = e.gate(t, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn fault_middleware_renders_whapi_errors() {
    let e = env(cfg()).await;
    let core = e.sim.core();
    core.fail_next(Some("PUT /channels"), 1, Fault::Status { status: 503 });
    let (s, v) = e.mgr("PUT", "/channels", Some(json!({"name": "x", "projectId": "sandbox-project"}))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    is_error_body(&v, 503);
    core.fail_next(Some("GET /health"), 1, Fault::TooManyRequests { retry_after_secs: Some(2) });
    let c = e.create().await;
    let r = e.gate_raw(c["token"].as_str().unwrap(), "GET", "/health", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "2");
    is_error_body(&r.json().await.unwrap(), 429);
    core.fail_next(None, 1, Fault::OkWithErrorBody);
    let (s, v) = e.mgr("GET", "/projects", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"error": {"code": 500, "message": "internal"}})));
    let counters = core.counters();
    assert_eq!(counters.faults_injected, 3);
    assert_eq!(counters.created["channels"], 1);
    assert!(counters.calls["GET /health"] >= 1);
}

/// The QR lifetime is a JSON number: with `qr_expire_float` it is fractional.
#[tokio::test]
async fn qr_expire_can_be_fractional() {
    let e = env(WhapiSimConfig { qr_expire_float: true, ..cfg() }).await;
    let c = e.create().await;
    let t = c["token"].as_str().unwrap();
    e.until_qr(t).await;
    let (_, v) = e.gate(t, "GET", "/users/login", None).await;
    let exp = v["expire"].as_f64().unwrap();
    assert!(exp.fract() != 0.0 && exp > 0.0, "{v}");
}

/// The channel list pages with `count` (1..=500, default 100) and `offset` (docs/providers.md
/// §3.2 [C2]); a Sandbox channel reads as `dev`.
#[tokio::test]
async fn channel_list_pages_with_count_and_offset() {
    let e = env(WhapiSimConfig { create_limit: 1_000, ..cfg() }).await;
    let mut ids = Vec::new();
    for _ in 0..103 {
        ids.push(e.create().await["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    let page = |v: &Value| {
        v["channels"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let (s, v) = e.mgr("GET", "/channels/list", None).await;
    assert_eq!((s, page(&v).len()), (StatusCode::OK, 100), "default page is 100");
    let (_, v2) = e.mgr("GET", "/channels/list?count=100&offset=100", None).await;
    let mut all = page(&v);
    all.extend(page(&v2));
    assert_eq!(all, ids, "two pages hold every channel once, in a stable order");
    let (_, v) = e.mgr("GET", "/channels/list/sandbox-project?count=2&offset=1", None).await;
    assert_eq!(page(&v), ids[1..3].to_vec());
    for bad in ["count=0", "count=501", "count=x", "offset=-1"] {
        let (s, v) = e.mgr("GET", &format!("/channels/list?{bad}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        is_error_body(&v, 400);
    }
    assert!(e.sim.set_channel_mode(&ids[0], "dev"));
    let (_, v) = e.mgr("GET", &format!("/channels/{}", ids[0]), None).await;
    assert_eq!(v["mode"], "dev");
}
