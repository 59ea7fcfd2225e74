//! [`SubscriptionOps`] over a channel's webhook list (gate `/settings`, docs/providers.md §3.4).
//! Whapi webhooks have no id [I]: a subscription's id is a digest of its URL, so the URL is
//! unique within a channel. Our own ingress webhook is invisible here (its URL holds the
//! webhook secret) and can be neither changed nor removed through these calls.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::client::Gate;
use super::model::{EVENT_METHODS, EVENT_TYPES, MAX_HEADERS, WebhookJson, events_of, webhooks_of};
use super::{WhapiProvider, invalid};
use crate::domain::Secret;
use crate::providers::{
    CallContext, ProviderError, ProviderSubscription, ResourceRef, SubscriptionOps, SubscriptionSpec, WebhookMode,
};

/// Placeholder for header values, which are never read back.
const REDACTED: &str = "[REDACTED]";

/// The proto field names an update mask may name; `tag`, `version` and `active` have no
/// Whapi counterpart and are accepted but ignored.
const FIELDS: &[&str] = &["url", "events", "headers", "mode", "tag", "version", "active"];

/// The stable id of the webhook with this URL.
pub(crate) fn subscription_id(url: &str) -> String {
    hex::encode(&Sha256::digest(format!("wa-onboard/whapi-webhook/{url}").as_bytes())[..8])
}

fn mode_str(m: WebhookMode) -> &'static str {
    match m {
        WebhookMode::Unspecified | WebhookMode::Body => "body",
        WebhookMode::Path => "path",
        WebhookMode::Method => "method",
    }
}

fn mode_of(s: Option<&str>) -> WebhookMode {
    match s {
        Some("path") => WebhookMode::Path,
        Some("method") => WebhookMode::Method,
        _ => WebhookMode::Body,
    }
}

fn url_of(w: &WebhookJson) -> &str {
    w.get("url").and_then(Value::as_str).unwrap_or_default()
}

/// Event strings are `type` (method `post`) or `type:method`.
fn parse_events(events: &[String]) -> Result<Vec<Value>, ProviderError> {
    if events.is_empty() {
        return Err(invalid("spec.events", "at least one event type is required"));
    }
    let mut out: Vec<Value> = Vec::new();
    for e in events {
        let (t, m) = e.split_once(':').unwrap_or((e.as_str(), "post"));
        let (t, m) = (t.trim().to_ascii_lowercase(), m.trim().to_ascii_lowercase());
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(invalid("spec.events", format!("unknown event type '{t}'; one of {}", EVENT_TYPES.join(", "))));
        }
        if !EVENT_METHODS.contains(&m.as_str()) {
            return Err(invalid(
                "spec.events",
                format!("unknown event method '{m}'; one of {}", EVENT_METHODS.join(", ")),
            ));
        }
        let v = json!({ "type": t, "method": m });
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

fn check_url(url: &str, ingress: &str) -> Result<(), ProviderError> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => return Err(invalid("spec.url", "must be an http(s) URL")),
    }
    if url == ingress {
        return Err(invalid("spec.url", "is wa-onboard's own webhook and cannot be managed here"));
    }
    Ok(())
}

fn check_headers(spec: &SubscriptionSpec) -> Result<Map<String, Value>, ProviderError> {
    if spec.headers.len() > MAX_HEADERS {
        return Err(invalid("spec.headers", format!("at most {MAX_HEADERS} headers")));
    }
    let mut out = Map::new();
    for (name, value) in &spec.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid("spec.headers", format!("'{name}' is not a header name")));
        }
        if http::HeaderValue::from_str(value.expose()).is_err() {
            return Err(invalid("spec.headers", format!("the value of '{name}' is not a header value")));
        }
        out.insert(name.clone(), json!(value.expose()));
    }
    Ok(out)
}

/// Which fields an update touches (empty mask: all). Unknown names are refused.
fn mask(fields: &[String]) -> Result<Vec<&str>, ProviderError> {
    if fields.is_empty() {
        return Ok(FIELDS.to_vec());
    }
    fields
        .iter()
        .map(|f| {
            FIELDS
                .iter()
                .copied()
                .find(|k| *k == f.as_str())
                .ok_or_else(|| invalid("update_mask", format!("unknown field '{f}'")))
        })
        .collect()
}

/// Applies the masked fields of `spec` to a webhook entry, validating them (no call made).
fn apply(
    entry: &mut WebhookJson,
    spec: &SubscriptionSpec,
    fields: &[&str],
    ingress: &str,
) -> Result<(), ProviderError> {
    if fields.contains(&"url") {
        check_url(&spec.url, ingress)?;
        entry.insert("url".into(), json!(spec.url));
    }
    if fields.contains(&"events") {
        entry.insert("events".into(), Value::Array(parse_events(&spec.events)?));
    }
    if fields.contains(&"headers") {
        entry.insert("headers".into(), Value::Object(check_headers(spec)?));
    }
    if fields.contains(&"mode") {
        entry.insert("mode".into(), json!(mode_str(spec.mode)));
    }
    Ok(())
}

pub(super) fn to_subscription(w: &WebhookJson) -> ProviderSubscription {
    let url = url_of(w).to_string();
    let events = events_of(w).into_iter().map(|(t, m)| if m == "post" { t } else { format!("{t}:{m}") }).collect();
    let headers: BTreeMap<String, Secret> = w
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| h.keys().map(|k| (k.clone(), Secret::new(REDACTED))).collect())
        .unwrap_or_default();
    ProviderSubscription {
        id: subscription_id(&url),
        spec: SubscriptionSpec {
            url,
            events,
            tag: String::new(),
            version: 0,
            headers,
            mode: mode_of(w.get("mode").and_then(Value::as_str)),
            // Whapi webhooks have no on/off switch: a listed one delivers.
            active: true,
        },
        provider_mode: 0,
        created_ms: None,
        updated_ms: None,
    }
}

impl WhapiProvider {
    async fn hooks(&self, ctx: &CallContext, target: &ResourceRef) -> Result<(Gate, Vec<WebhookJson>), ProviderError> {
        let gate = self.gate_for(ctx, &target.handle, target.secret.as_ref()).await?.0;
        let settings = self.client.get_settings(&gate).await?;
        Ok((gate, webhooks_of(&settings)))
    }

    async fn save(&self, gate: &Gate, hooks: Vec<WebhookJson>) -> Result<(), ProviderError> {
        let hooks: Vec<Value> = hooks.into_iter().map(Value::Object).collect();
        self.client.patch_settings(gate, &json!({ "webhooks": hooks })).await?;
        Ok(())
    }
}

/// The position of the caller-visible webhook `id` (never our ingress).
fn find(hooks: &[WebhookJson], id: &str, ingress: &str) -> Result<usize, ProviderError> {
    hooks
        .iter()
        .position(|w| url_of(w) != ingress && subscription_id(url_of(w)) == id)
        .ok_or_else(|| ProviderError::NotFound { raw: "webhook".into() })
}

#[async_trait]
impl SubscriptionOps for WhapiProvider {
    async fn create_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        spec: &SubscriptionSpec,
    ) -> Result<ProviderSubscription, ProviderError> {
        let ingress = ctx.webhook_url.expose();
        let mut entry = Map::new();
        apply(&mut entry, spec, &["url", "events", "headers", "mode"], ingress)?;
        let (gate, mut hooks) = self.hooks(ctx, target).await?;
        if hooks.iter().any(|w| url_of(w) == spec.url) {
            return Err(ProviderError::Conflict {
                raw: "webhook_url".into(),
                message: "the channel already has a webhook with this URL".into(),
            });
        }
        let created = to_subscription(&entry);
        hooks.push(entry);
        self.save(&gate, hooks).await?;
        Ok(created)
    }

    async fn list_subscriptions(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
    ) -> Result<Vec<ProviderSubscription>, ProviderError> {
        let ingress = ctx.webhook_url.expose();
        let (_, hooks) = self.hooks(ctx, target).await?;
        Ok(hooks.iter().filter(|w| url_of(w) != ingress).map(to_subscription).collect())
    }

    async fn get_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
    ) -> Result<ProviderSubscription, ProviderError> {
        let (_, hooks) = self.hooks(ctx, target).await?;
        let i = find(&hooks, id, ctx.webhook_url.expose())?;
        Ok(to_subscription(&hooks[i]))
    }

    /// Changing the URL changes the id (it is the URL's digest).
    async fn update_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
        spec: &SubscriptionSpec,
        fields: &[String],
    ) -> Result<ProviderSubscription, ProviderError> {
        let ingress = ctx.webhook_url.expose();
        let fields = mask(fields)?;
        // Validate before any call.
        apply(&mut Map::new(), spec, &fields, ingress)?;
        let (gate, mut hooks) = self.hooks(ctx, target).await?;
        let i = find(&hooks, id, ingress)?;
        let mut entry = hooks[i].clone();
        apply(&mut entry, spec, &fields, ingress)?;
        let new_url = url_of(&entry).to_string();
        if hooks.iter().enumerate().any(|(j, w)| j != i && url_of(w) == new_url) {
            return Err(ProviderError::Conflict {
                raw: "webhook_url".into(),
                message: "the channel already has a webhook with this URL".into(),
            });
        }
        let updated = to_subscription(&entry);
        hooks[i] = entry;
        self.save(&gate, hooks).await?;
        Ok(updated)
    }

    async fn delete_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
    ) -> Result<(), ProviderError> {
        let (gate, mut hooks) = self.hooks(ctx, target).await?;
        let i = find(&hooks, id, ctx.webhook_url.expose())?;
        hooks.remove(i);
        self.save(&gate, hooks).await
    }
}
