//! Gate settings validation (docs/providers.md §3.4 `PATCH /settings`) and webhook delivery with
//! the three modes `body`, `path` and `method`.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::Headers;
use crate::sim::common::SimCore;

/// [C] Event types accepted in `webhooks[].events[].type` (incl. deprecated ones).
const EVENT_TYPES: &[&str] = &[
    "messages",
    "statuses",
    "chats",
    "contacts",
    "groups",
    "presences",
    "calls",
    "channel",
    "users",
    "labels",
    "service",
    "message",
    "ack",
    "chat",
    "status",
];
/// [C] Event methods.
const METHODS: &[&str] = &["post", "put", "delete", "patch"];
/// [C] Webhook modes.
const MODES: &[&str] = &["body", "path", "method"];
/// [I] Media types accepted in `media.auto_download`.
const MEDIA: &[&str] = &["image", "audio", "voice", "video", "document", "sticker"];

/// One webhook call to make.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub url: String,
    /// Lowercase HTTP method.
    pub method: String,
    pub headers: Headers,
    pub body: Value,
}

/// [I] Default gate settings (values within the documented ranges).
pub(crate) fn default_settings() -> Value {
    json!({
        "webhooks": [],
        "callback_backoff_delay_ms": 3000,
        "max_callback_backoff_delay_ms": 600000,
        "callback_persist": true,
        "media": {"auto_download": [], "init_avatars": false},
        "proxy": null,
        "offline_mode": false,
        "full_history": false,
        "pdo_sync": true,
        "ignored_presences": [],
    })
}

fn int_in(v: &Value, field: &str, lo: i64, hi: i64) -> Result<(), String> {
    match v.as_i64() {
        Some(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(format!("{field} must be an integer in {lo}..={hi}")),
    }
}

fn boolean(v: &Value, field: &str) -> Result<(), String> {
    if v.is_boolean() { Ok(()) } else { Err(format!("{field} must be a boolean")) }
}

/// Validates a `webhooks` array; returns it normalised (defaults filled in).
/// `types` lists the accepted event types (gate types, or `days` for partner settings).
pub(crate) fn validate_webhooks(v: &Value, types: &[&str]) -> Result<Value, String> {
    let arr = v.as_array().ok_or("webhooks must be an array")?;
    let mut out = Vec::new();
    for (i, w) in arr.iter().enumerate() {
        let o = w.as_object().ok_or(format!("webhooks[{i}] must be an object"))?;
        for k in o.keys() {
            if !["url", "mode", "headers", "events", "send_undecrypted_ad", "webhook_max_age_seconds"]
                .contains(&k.as_str())
            {
                return Err(format!("webhooks[{i}].{k} is not allowed"));
            }
        }
        let url = o.get("url").and_then(Value::as_str).ok_or(format!("webhooks[{i}].url is required"))?;
        match url::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return Err(format!("webhooks[{i}].url must be an http(s) URL")),
        }
        let mode = match o.get("mode") {
            None => "body",
            Some(m) => m
                .as_str()
                .filter(|m| MODES.contains(m))
                .ok_or(format!("webhooks[{i}].mode must be body|path|method"))?,
        };
        let headers = match o.get("headers") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(h)) => {
                if h.len() > 5 {
                    return Err(format!("webhooks[{i}].headers allows at most 5 entries"));
                }
                if h.values().any(|v| !v.is_string()) {
                    return Err(format!("webhooks[{i}].headers values must be strings"));
                }
                h.clone()
            }
            Some(_) => return Err(format!("webhooks[{i}].headers must be an object")),
        };
        // [C] default events `[{type:"message",method:"put"}]` (gate only).
        let events = match o.get("events") {
            None if types.contains(&"message") => json!([{"type": "message", "method": "put"}]),
            None => return Err(format!("webhooks[{i}].events is required")),
            Some(Value::Array(evs)) => {
                let mut norm = Vec::new();
                for (j, e) in evs.iter().enumerate() {
                    let t = e.get("type").and_then(Value::as_str).filter(|t| types.contains(t));
                    let t = t.ok_or(format!("webhooks[{i}].events[{j}].type must be one of {}", types.join(", ")))?;
                    let m = match e.get("method") {
                        None => "post",
                        Some(m) => m
                            .as_str()
                            .filter(|m| METHODS.contains(m))
                            .ok_or(format!("webhooks[{i}].events[{j}].method must be post|put|delete|patch"))?,
                    };
                    norm.push(json!({"type": t, "method": m}));
                }
                Value::Array(norm)
            }
            Some(_) => return Err(format!("webhooks[{i}].events must be an array")),
        };
        let mut n = json!({"url": url, "mode": mode, "headers": headers, "events": events});
        if let Some(v) = o.get("send_undecrypted_ad") {
            boolean(v, "send_undecrypted_ad")?;
            n["send_undecrypted_ad"] = v.clone();
        }
        if let Some(v) = o.get("webhook_max_age_seconds") {
            if !v.is_null() {
                int_in(v, "webhook_max_age_seconds", 15, 172_800)?;
            }
            n["webhook_max_age_seconds"] = v.clone();
        }
        out.push(n);
    }
    Ok(Value::Array(out))
}

/// Validates a `PATCH /settings` body against the documented fields and ranges and returns
/// the merged settings (absent fields unchanged). Unknown fields are rejected.
pub(crate) fn patch_settings(current: &Value, patch: &Value) -> Result<Value, String> {
    let p = patch.as_object().ok_or("body must be an object")?;
    let mut next = current.clone();
    for (k, v) in p {
        let value = match k.as_str() {
            "webhooks" => validate_webhooks(v, EVENT_TYPES)?,
            "callback_backoff_delay_ms" => {
                int_in(v, k, 3000, 15_000)?;
                v.clone()
            }
            "max_callback_backoff_delay_ms" => {
                int_in(v, k, 600_000, 3_600_000)?;
                v.clone()
            }
            "callback_persist" | "offline_mode" | "full_history" | "pdo_sync" => {
                boolean(v, k)?;
                v.clone()
            }
            "proxy" => match v {
                Value::Null => Value::Null,
                Value::String(s) if s.is_empty() || s.starts_with("socks5://") => v.clone(),
                _ => return Err("proxy must be a socks5:// URL or null".into()),
            },
            "ignored_presences" => {
                let ok = v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
                if !ok {
                    return Err("ignored_presences must be an array of strings".into());
                }
                v.clone()
            }
            "media" => {
                let m = v.as_object().ok_or("media must be an object")?;
                let mut merged = current.get("media").cloned().unwrap_or_else(|| json!({}));
                for (mk, mv) in m {
                    match mk.as_str() {
                        "auto_download" => {
                            let ok = mv
                                .as_array()
                                .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(|s| MEDIA.contains(&s))));
                            if !ok {
                                return Err(format!("media.auto_download items must be one of {}", MEDIA.join(", ")));
                            }
                        }
                        "init_avatars" => boolean(mv, "media.init_avatars")?,
                        other => return Err(format!("media.{other} is not allowed")),
                    }
                    merged[mk] = mv.clone();
                }
                merged
            }
            other => return Err(format!("{other} is not an allowed setting")),
        };
        next[k] = value;
    }
    Ok(next)
}

/// The deliveries of one event to the webhooks in `hooks` subscribed to `kind`.
/// Modes: `body` POSTs to the URL; [I] `path` POSTs to `<url>/<type>/<event>`;
/// [I] `method` uses the event (`post`/`patch`/`delete`) as the HTTP method.
pub(crate) fn deliveries(hooks: &Value, kind: &str, event: &str, body: &Value) -> Vec<Delivery> {
    let mut out = Vec::new();
    for w in hooks.as_array().into_iter().flatten() {
        let subscribed = w["events"].as_array().into_iter().flatten().any(|e| e["type"] == kind);
        let Some(url) = w["url"].as_str().filter(|_| subscribed) else {
            continue;
        };
        let mode = w["mode"].as_str().unwrap_or("body");
        let url = if mode == "path" { append_path(url, &[kind, event]) } else { url.to_string() };
        let method = if mode == "method" { event.to_string() } else { "post".to_string() };
        let headers = w["headers"]
            .as_object()
            .map(|h| h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        out.push(Delivery { url, method, headers, body: body.clone() });
    }
    out
}

fn append_path(url: &str, segs: &[&str]) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if let Ok(mut p) = u.path_segments_mut() {
                p.pop_if_empty().extend(segs);
            }
            u.to_string()
        }
        Err(_) => format!("{}/{}", url.trim_end_matches('/'), segs.join("/")),
    }
}

/// Sends one delivery in the background. Plain POSTs go through `core.send_callback`
/// (duplicate / reorder knobs, counters); other methods or custom headers use `http`
/// directly (not counted in `callbacks_sent`).
pub(crate) fn deliver(core: &SimCore, http: &reqwest::Client, d: Delivery) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    if d.method == "post" && d.headers.is_empty() {
        core.send_callback(&d.url, d.body);
        return;
    }
    let Ok(method) = reqwest::Method::from_bytes(d.method.to_uppercase().as_bytes()) else {
        return;
    };
    let mut req = http.request(method, &d.url).json(&d.body).timeout(Duration::from_secs(10));
    for (k, v) in &d.headers {
        req = req.header(k, v);
    }
    tokio::spawn(async move {
        if let Err(error) = req.send().await {
            tracing::debug!(%error, "Whapi sim webhook delivery failed.");
        }
    });
}
