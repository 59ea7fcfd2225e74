//! [`SubscriptionOps`] over an app's webhook subscriptions (docs/providers.md §1.3.5): the
//! create, update and read forms, the wire-to-domain view (header values never read back),
//! and the tag uniqueness a create and an update check first.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::GupshupProvider;
use super::model::{MODE_BITS, WireSubscription, modes_of_mask, scalar_text};
use super::validation::{
    check_events, check_headers, check_mode, check_tag, check_url, check_version, invalid, requested_version,
    validate_spec,
};
use crate::domain::{OnboardingState, Secret};
use crate::providers::{
    CallContext, ProviderError, ProviderSubscription, ResourceRef, SubscriptionOps, SubscriptionSpec, WebhookMode,
};

/// `meta` = `{"headers":{…}}` [C2]; header values are secrets and go in the body only.
pub(super) fn meta_of(spec: &SubscriptionSpec) -> String {
    let headers: serde_json::Map<String, Value> =
        spec.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.expose().to_string()))).collect();
    json!({ "headers": headers }).to_string()
}

pub(super) fn modes_csv(spec: &SubscriptionSpec) -> String {
    spec.events.iter().map(|e| e.trim()).collect::<Vec<_>>().join(",")
}

/// Create form (1.3.5). `active` is not a documented create field: Gupshup creates active
/// subscriptions (the proto's "defaults to true on create").
pub(super) fn create_form(spec: &SubscriptionSpec) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("modes", modes_csv(spec)),
        ("tag", spec.tag.clone()),
        ("url", spec.url.clone()),
        ("version", requested_version(spec.version).to_string()),
    ];
    if !spec.headers.is_empty() {
        f.push(("meta", meta_of(spec)));
    }
    f
}

/// Fields an update may name (proto field names of `SubscriptionSpec`).
const UPDATABLE: [&str; 7] = ["url", "events", "tag", "version", "headers", "mode", "active"];

/// The domain view of a wire subscription. Header values are never read back: names only,
/// with redacted placeholder values. One without an id is malformed: its id is what later
/// gets, updates, deletes and `request_id` replays name it by.
pub(super) fn to_domain(w: WireSubscription) -> Result<ProviderSubscription, ProviderError> {
    let id = scalar_text(&w.id)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ProviderError::Malformed { message: "Gupshup answered a subscription without an id".into() })?;
    let events = match w.modes {
        Some(m) => m,
        None => modes_of_mask(w.mode.unwrap_or(0)),
    };
    let version = w
        .version
        .as_ref()
        .and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())))
        .and_then(|v| i32::try_from(v).ok())
        .unwrap_or(0);
    let meta: Option<Value> = match w.meta {
        Some(Value::String(s)) => serde_json::from_str(&s).ok(),
        other => other,
    };
    let headers = meta
        .as_ref()
        .and_then(|m| m.get("headers"))
        .and_then(Value::as_object)
        .map(|h| h.keys().map(|k| (k.clone(), Secret::new("[REDACTED]"))).collect())
        .unwrap_or_default();
    let provider_mode = w.mode.unwrap_or_else(|| {
        events.iter().filter_map(|e| MODE_BITS.iter().position(|b| b == e)).fold(0i64, |acc, i| acc | (1 << i))
    });
    Ok(ProviderSubscription {
        id,
        spec: SubscriptionSpec {
            url: w.url,
            events,
            tag: w.tag,
            version,
            headers,
            mode: WebhookMode::Unspecified,
            active: w.active.unwrap_or(true),
        },
        provider_mode,
        created_ms: w.created_on,
        updated_ms: w.modified_on,
    })
}

/// The app a subscription RPC acts on.
pub(super) fn app_of_target(target: &ResourceRef) -> Result<&str, ProviderError> {
    let key = target.handle.external_key.as_str();
    if key.is_empty() {
        return Err(ProviderError::Precondition {
            raw: String::new(),
            message: "the onboarding has no Gupshup app yet".into(),
        });
    }
    Ok(key)
}

/// The subscription id as a path segment: Gupshup ids are numeric strings [C].
pub(super) fn check_subscription_id(id: &str) -> Result<(), ProviderError> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Ok(())
    } else {
        Err(invalid("subscription_id", "not a Gupshup subscription id"))
    }
}

#[async_trait]
impl SubscriptionOps for GupshupProvider {
    /// Subscriptions are per app and set up once it is live (docs/providers.md §1.3.5 [C]).
    fn accepts_subscriptions(&self, state: OnboardingState) -> Result<(), String> {
        if state == OnboardingState::Live { Ok(()) } else { Err("Gupshup subscriptions need a LIVE app".into()) }
    }

    async fn create_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        spec: &SubscriptionSpec,
    ) -> Result<ProviderSubscription, ProviderError> {
        validate_spec(spec, "spec.")?;
        let app_id = app_of_target(target)?;
        let (existing, token) = self.client.list_subscriptions(ctx, app_id, target.secret.as_ref()).await?;
        if let Some(s) = existing.iter().find(|s| s.tag == spec.tag) {
            return Err(ProviderError::Conflict {
                raw: String::new(),
                message: format!(
                    "tag '{}' is already used by subscription {}",
                    spec.tag,
                    scalar_text(&s.id).unwrap_or_default()
                ),
            });
        }
        let created = self.client.create_subscription(ctx, app_id, Some(&token), &create_form(spec)).await?;
        to_domain(created)
    }

    async fn list_subscriptions(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
    ) -> Result<Vec<ProviderSubscription>, ProviderError> {
        let app_id = app_of_target(target)?;
        let (list, _) = self.client.list_subscriptions(ctx, app_id, target.secret.as_ref()).await?;
        list.into_iter().map(to_domain).collect()
    }

    async fn get_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
    ) -> Result<ProviderSubscription, ProviderError> {
        check_subscription_id(id)?;
        let app_id = app_of_target(target)?;
        to_domain(self.client.get_subscription(ctx, app_id, target.secret.as_ref(), id).await?)
    }

    async fn update_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
        spec: &SubscriptionSpec,
        fields: &[String],
    ) -> Result<ProviderSubscription, ProviderError> {
        check_subscription_id(id)?;
        let app_id = app_of_target(target)?;
        let mut named: Vec<&str> = Vec::new();
        for f in fields {
            let name = f.strip_prefix("spec.").or_else(|| f.strip_prefix("subscription.")).unwrap_or(f);
            if !UPDATABLE.contains(&name) {
                return Err(invalid(
                    "update_mask",
                    format!("'{f}' cannot be updated (one of {})", UPDATABLE.join(", ")),
                ));
            }
            named.push(name);
        }
        let all = named.is_empty();
        let has = |n: &str| all || named.contains(&n);
        // Checks that need no call first.
        if has("url") {
            check_url(spec, "spec.")?;
        }
        if has("version") {
            check_version(spec, "spec.")?;
        }
        if has("tag") {
            check_tag(spec, "spec.")?;
        }
        if has("mode") {
            check_mode(spec, "spec.")?;
        }
        if has("headers") {
            check_headers(spec, "spec.")?;
        }
        // Modes depend on the version, which may be the current one: merge, then check.
        let current = to_domain(self.client.get_subscription(ctx, app_id, target.secret.as_ref(), id).await?)?;
        let mut effective = current.spec.clone();
        if has("version") {
            effective.version = requested_version(spec.version);
        }
        if has("events") {
            effective.events = spec.events.clone();
        }
        check_events(&effective, "spec.")?;
        if has("tag") && spec.tag != current.spec.tag {
            let (list, _) = self.client.list_subscriptions(ctx, app_id, target.secret.as_ref()).await?;
            if list.iter().any(|s| s.tag == spec.tag && scalar_text(&s.id).as_deref() != Some(id)) {
                return Err(ProviderError::Conflict {
                    raw: String::new(),
                    message: format!("tag '{}' is already used by another subscription of this app", spec.tag),
                });
            }
        }
        let mut form: Vec<(&str, String)> = Vec::new();
        if has("url") {
            form.push(("url", spec.url.clone()));
        }
        if has("events") || has("version") {
            form.push(("modes", modes_csv(&effective)));
        }
        if has("tag") {
            form.push(("tag", spec.tag.clone()));
        }
        if has("version") {
            form.push(("version", requested_version(spec.version).to_string()));
        }
        if has("headers") {
            form.push(("meta", meta_of(spec)));
        }
        if has("active") {
            form.push(("active", spec.active.to_string()));
        }
        let updated = self.client.update_subscription(ctx, app_id, target.secret.as_ref(), id, &form).await?;
        to_domain(updated)
    }

    async fn delete_subscription(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        id: &str,
    ) -> Result<(), ProviderError> {
        check_subscription_id(id)?;
        let app_id = app_of_target(target)?;
        self.client.delete_subscription(ctx, app_id, target.secret.as_ref(), id).await
    }
}
