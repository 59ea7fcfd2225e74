//! [`ChannelOps`] for Whapi: the channel lifecycle on the partner API plus the connect codes
//! on the channel's Gate API.

use async_trait::async_trait;
use base64::Engine;

use super::model::{Channel, Health};
use super::{
    DAY_MS, EXTEND_TOLERANCE_MS, ExtendEntry, MAX_EXTEND_DAYS, WhapiProvider, e164, gate_of, invalid, is_stopped_error,
    now_ms,
};
use crate::providers::{
    Balance, CallContext, ChannelInfo, ChannelMode, ChannelOps, ConnectCode, ConnectMethod, ExtendOutcome,
    IssuedConnectCode, ProviderError, ResourceRef,
};

/// [I] Longest `comment` we send (Whapi documents none; it shows in Billing History).
const MAX_COMMENT: usize = 200;

/// The PNG signature every image must start with.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Channel mode wire values (docs/providers.md §3.3). Read: every one below. Sent: only
/// [`MODE_LIVE`] [C] and [`MODE_TRIAL`] [C2] (the only request values a source shows).
pub(super) const MODE_TRIAL: &str = "trial";
/// [C] `{"mode":"live"}` is the vendor's PATCH example.
pub(super) const MODE_LIVE: &str = "live";
/// [C2]/[I] Sandbox reads as `dev` (dashboard label "Sandbox (dev)" [C], a public partner
/// client's enum [C2]); kept for reading only: no source shows it as a request value.
pub(super) const SANDBOX_WIRE: &str = "dev";
/// [C2] An archived sandbox channel (meaning [I]); reads as Sandbox with `archived=true`.
pub(super) const SANDBOX_ARCHIVED_WIRE: &str = "dev_archive";
/// [I] Our old misreading, read leniently as Sandbox; used by nobody public.
const SANDBOX_ALIAS: &str = "sandbox";

/// The domain mode of a raw value; `None` for anything else (the raw value stays in the
/// observation's `mode` field, never an error).
pub(super) fn mode_of(s: &str) -> Option<ChannelMode> {
    match s.trim().to_ascii_lowercase().as_str() {
        MODE_TRIAL => Some(ChannelMode::Trial),
        MODE_LIVE => Some(ChannelMode::Live),
        SANDBOX_WIRE | SANDBOX_ARCHIVED_WIRE | SANDBOX_ALIAS => Some(ChannelMode::Sandbox),
        _ => None,
    }
}

/// The `mode` detail of an onboarding (`trial` when absent, as a new channel starts [C]); an
/// unknown wire value is no mode (the raw value stays in the observation).
pub(super) fn detail_mode(wire: &str) -> Option<ChannelMode> {
    match mode_of(wire) {
        None if wire.trim().is_empty() => Some(ChannelMode::Trial),
        known => known,
    }
}

/// The request value for `m`, refused before any call when none is documented (Sandbox).
fn mode_str(m: ChannelMode) -> Result<&'static str, ProviderError> {
    match m {
        ChannelMode::Trial => Ok(MODE_TRIAL),
        ChannelMode::Live => Ok(MODE_LIVE),
        ChannelMode::Sandbox => Err(invalid(
            "mode",
            "Whapi documents no request value for Sandbox (docs/providers.md §3.3); set it in the partner dashboard",
        )),
    }
}

/// [I] How long a pairing code is shown as valid: the `AuthCode` object has no lifetime
/// (docs/providers.md §3.4), so this is for display only.
pub(super) const PAIRING_CODE_TTL_SECS: i64 = 60;

/// What a QR answer's `status` says to do (docs/providers.md §3.4 [C2]).
fn qr_status_ok(status: &str) -> Result<bool, ProviderError> {
    match status {
        "OK" | "" => Ok(true),
        "WAITING" | "TIMEOUT" => Ok(false),
        "ERROR" => Err(ProviderError::Retryable {
            raw: "ERROR".into(),
            message: "whapi.login_qr: the channel answered status ERROR for the QR".into(),
        }),
        _ => Ok(true),
    }
}

/// The domain view of a channel object plus a health text.
pub(super) fn info(ch: &Channel, health: String) -> ChannelInfo {
    ChannelInfo {
        id: ch.id.clone(),
        display_name: ch.name.clone(),
        mode: mode_of(&ch.mode),
        health,
        phone: ch.phone.as_deref().and_then(e164),
        active_till_ms: ch.active_till,
        stopped: ch.is_stopped(),
        api_url: ch.api_url.clone(),
        created_ms: ch.creation_ts,
    }
}

/// A 409 on a login call means the phone is already linked [C2].
fn already_connected(e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Conflict { raw, .. } => {
            ProviderError::Precondition { raw, message: "the channel is already connected".into() }
        }
        other => other,
    }
}

/// Decodes a base64 PNG, with or without a `data:image/png;base64,` prefix [C2].
pub(super) fn decode_png(b64: &str) -> Result<Vec<u8>, ProviderError> {
    let data = b64.split_once("base64,").map_or(b64, |(_, d)| d).trim();
    let png = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| ProviderError::Malformed { message: "whapi.login_qr: QR image is not base64".into() })?;
    if !png.starts_with(PNG_SIGNATURE) {
        return Err(ProviderError::Malformed { message: "whapi.login_qr: QR image is not a PNG".into() });
    }
    Ok(png)
}

/// When a code with `expire` seconds left lapses (saturating: the value is the provider's).
pub(super) fn expiry(expire: Option<i64>) -> Option<i64> {
    expire.filter(|s| *s > 0).map(|s| now_ms().saturating_add(s.saturating_mul(1000)))
}

fn still_starting() -> ProviderError {
    ProviderError::Retryable { raw: "WAITING".into(), message: "the channel is still starting; try again".into() }
}

impl WhapiProvider {
    /// Health text without waking the channel; `STOPPED` when its period ended.
    async fn health_text(&self, ch: &Channel, target: &ResourceRef) -> Result<String, ProviderError> {
        if ch.is_stopped() {
            return Ok("STOPPED".into());
        }
        let gate = gate_of(ch, target.secret.as_ref())?;
        match self.client.health(&gate, false).await {
            Ok(h) => Ok(h.text()),
            Err(e) if is_stopped_error(&e) => Ok("STOPPED".into()),
            Err(e) => Err(e),
        }
    }

    /// One attempt at a code: `None` while the channel is not showing one yet.
    async fn try_code(
        &self,
        gate: &super::client::Gate,
        method: &ConnectMethod,
    ) -> Result<Option<IssuedConnectCode>, ProviderError> {
        match method {
            ConnectMethod::Qr { size } => {
                let qr = self.client.login_qr(gate, *size).await.map_err(already_connected)?;
                if !qr_status_ok(&qr.status)? {
                    return Ok(None);
                }
                let Some(b64) = qr.base64.as_deref().filter(|b| !b.is_empty()) else {
                    return Ok(None);
                };
                let png = decode_png(b64)?;
                let (raw, expire) = match qr.rowdata.filter(|r| !r.is_empty()) {
                    Some(r) => (r, qr.expire),
                    None => {
                        // [I] Raw string only from the rowdata endpoint: it may have rotated in
                        // between, so take the image again with it.
                        let rd = self.client.login_rowdata(gate).await.map_err(already_connected)?;
                        if !qr_status_ok(&rd.status)? {
                            return Ok(None);
                        }
                        let Some(r) = rd.rowdata.filter(|r| !r.is_empty()) else { return Ok(None) };
                        let Some(png) = self.client.login_image(gate, *size).await.map_err(already_connected)? else {
                            return Ok(None);
                        };
                        return Ok(Some(IssuedConnectCode {
                            code: ConnectCode::Qr { png, raw: r },
                            expire_ms: expiry(rd.expire),
                        }));
                    }
                };
                Ok(Some(IssuedConnectCode { code: ConnectCode::Qr { png, raw }, expire_ms: expiry(expire) }))
            }
            ConnectMethod::PairingCode { phone } => {
                let pc = self.client.pairing_code(gate, phone.digits()).await.map_err(already_connected)?;
                let ttl = pc.expire.unwrap_or(PAIRING_CODE_TTL_SECS);
                Ok(pc.code.filter(|c| !c.is_empty()).map(|code| IssuedConnectCode {
                    code: ConnectCode::PairingCode { code, phone: phone.clone() },
                    expire_ms: expiry(Some(ttl)),
                }))
            }
        }
    }

    /// Waits (bounded) until health is no longer launching; returns the last reading.
    async fn wait_until_up(&self, gate: &super::client::Gate) -> Result<Option<Health>, ProviderError> {
        let deadline = tokio::time::Instant::now() + self.config.restart_wait;
        loop {
            match self.client.health(gate, true).await {
                Ok(h) if !matches!(h.text().as_str(), "LAUNCH" | "INIT") => return Ok(Some(h)),
                Ok(_) => {}
                Err(e) if e.is_retryable() => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() + self.config.wait_step > deadline {
                return Ok(None);
            }
            tokio::time::sleep(self.config.wait_step).await;
        }
    }

    /// The plain extension call plus its verification that `activeTill` moved from
    /// `before` by `days` (a refusal to retry when it did not: a repeat could extend twice).
    pub(super) async fn extend_once(
        &self,
        ctx: &CallContext,
        id: &str,
        days: u32,
        comment: &str,
        before: i64,
    ) -> Result<Channel, ProviderError> {
        let after = self.client.extend(ctx, id, days, comment).await?;
        let after = if after.active_till.is_some() { after } else { self.client.get_channel(ctx, id).await? };
        let target = before.saturating_add(i64::from(days) * DAY_MS);
        if after.active_till.is_none_or(|t| t.saturating_add(EXTEND_TOLERANCE_MS) < target) {
            return Err(ProviderError::Precondition {
                raw: "extend_not_reflected".into(),
                message: "the extension was accepted but activeTill did not move".into(),
            });
        }
        Ok(after)
    }
}

/// The partner name for the partner settings endpoints (account option `partner_name`).
fn partner_name(ctx: &CallContext) -> Result<&str, ProviderError> {
    ctx.options
        .partner_name
        .as_deref()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("options.partner_name", "required for the partner balance alert"))
}

impl WhapiProvider {
    /// Points the partner's low-balance alert (`days` webhook, [C]) at `url`, firing when the
    /// balance reaches `days_limit` days. Other `days` webhooks are kept; repeating is a no-op.
    pub async fn set_balance_alert(&self, ctx: &CallContext, url: &str, days_limit: u32) -> Result<(), ProviderError> {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(invalid("url", "must be an http(s) URL")),
        }
        let partner = partner_name(ctx)?;
        let current = self.client.partner_settings(ctx, partner).await?;
        let mut hooks = super::model::webhooks_of(&current);
        if !hooks.iter().any(|w| w.get("url").and_then(serde_json::Value::as_str) == Some(url)) {
            let mut w = serde_json::Map::new();
            w.insert("url".into(), serde_json::json!(url));
            w.insert("events".into(), serde_json::json!([{ "type": "days", "method": "post" }]));
            w.insert("mode".into(), serde_json::json!("body"));
            hooks.push(w);
        }
        let hooks: Vec<serde_json::Value> = hooks.into_iter().map(serde_json::Value::Object).collect();
        let patch = serde_json::json!({ "webhooks": hooks, "days_limit": days_limit });
        self.client.patch_partner_settings(ctx, partner, &patch).await?;
        Ok(())
    }

    /// The partner's alert threshold in days, when one is set.
    pub async fn balance_alert_limit(&self, ctx: &CallContext) -> Result<Option<i64>, ProviderError> {
        let settings = self.client.partner_settings(ctx, partner_name(ctx)?).await?;
        Ok(settings.get("days_limit").and_then(serde_json::Value::as_i64))
    }
}

#[async_trait]
impl ChannelOps for WhapiProvider {
    async fn get_channel(&self, ctx: &CallContext, target: &ResourceRef) -> Result<ChannelInfo, ProviderError> {
        let ch = self.client.get_channel(ctx, &target.handle.external_key).await?;
        let health = self.health_text(&ch, target).await?;
        Ok(info(&ch, health))
    }

    /// Always asks Whapi for the current code (it rotates QR codes itself), so a call after
    /// the old one expired gets a fresh one. Waits up to `code_wait` for a launching channel.
    async fn connect_code(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        method: &ConnectMethod,
    ) -> Result<IssuedConnectCode, ProviderError> {
        if let ConnectMethod::Qr { size } = method
            && *size > 2000
        {
            return Err(invalid("size", "must be at most 2000 pixels"));
        }
        let gate = self.gate_for(ctx, &target.handle, target.secret.as_ref()).await?.0;
        let deadline = tokio::time::Instant::now() + self.config.code_wait;
        loop {
            if let Some(code) = self.try_code(&gate, method).await? {
                return Ok(code);
            }
            if tokio::time::Instant::now() + self.config.wait_step > deadline {
                return Err(still_starting());
            }
            tokio::time::sleep(self.config.wait_step).await;
        }
    }

    /// Changes the mode, then waits (up to `restart_wait`) for the restarted channel to
    /// answer again, so the caller's next call does not hit a restarting channel.
    async fn set_mode(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        mode: ChannelMode,
    ) -> Result<ChannelInfo, ProviderError> {
        let id = &target.handle.external_key;
        let wire = mode_str(mode)?;
        let ch = self.client.set_mode(ctx, id, wire).await?;
        if ch.is_stopped() {
            return Ok(info(&ch, "STOPPED".into()));
        }
        let gate = match gate_of(&ch, target.secret.as_ref()) {
            Ok(g) => g,
            Err(_) => self.gate_for(ctx, &target.handle, target.secret.as_ref()).await?.0,
        };
        let health = match self.wait_until_up(&gate).await? {
            Some(h) => h.text(),
            None => "LAUNCH".into(),
        };
        let ch = self.client.get_channel(ctx, id).await?;
        Ok(info(&ch, health))
    }

    /// Idempotent on `target.request_id`, which goes into the required comment. Whapi has no
    /// readable billing history [I], so the adapter keeps a ledger: `activeTill` before the
    /// call is noted BEFORE extending; a retry whose channel already moved by `days` is
    /// `already_applied` and extends nothing. The ledger lives in this adapter instance (one
    /// per account, per process) and only serialises retries within it; durable idempotency
    /// across restarts and replicas is `Core::extend_channel`'s (intent and outcome events in
    /// the onboarding's log).
    async fn extend(
        &self,
        ctx: &CallContext,
        target: &ResourceRef,
        days: u32,
        comment: &str,
    ) -> Result<ExtendOutcome, ProviderError> {
        if days == 0 || days > MAX_EXTEND_DAYS {
            return Err(invalid("days", format!("must be 1 to {MAX_EXTEND_DAYS}")));
        }
        let comment = comment.trim();
        if comment.chars().count() > MAX_COMMENT || comment.chars().any(char::is_control) {
            return Err(invalid("comment", format!("must be at most {MAX_COMMENT} printable characters")));
        }
        let id = target.handle.external_key.as_str();
        let base = if comment.is_empty() { "wa-onboard extend" } else { comment };
        let Some(request_id) = target.request_id.as_deref().filter(|r| !r.is_empty()) else {
            let ch = self.client.get_channel(ctx, id).await?;
            let before = ch.active_till.unwrap_or_else(now_ms);
            let after = self.extend_once(ctx, id, days, base, before).await?;
            return Ok(ExtendOutcome {
                channel: info(&after, String::new()),
                days_added: days,
                already_applied: false,
            });
        };
        let full_comment = format!("{base} [request {request_id}]");
        let key = format!("{id}/{request_id}");
        // One extension at a time per adapter: concurrent retries of one request serialise
        // here and see each other's ledger entry.
        let mut ledger = self.extends.lock().await;
        let ch = self.client.get_channel(ctx, id).await?;
        let entry = match ledger.get(&key) {
            Some(e) if e.days != days => {
                return Err(ProviderError::Conflict {
                    raw: "request_id".into(),
                    message: "request_id was already used with another number of days".into(),
                });
            }
            Some(e) => e.clone(),
            None => {
                let before = ch.active_till.ok_or_else(|| ProviderError::Malformed {
                    message: "whapi.get_channel: channel without activeTill".into(),
                })?;
                let e = ExtendEntry { before, days, applied: false };
                ledger.insert(key.clone(), e.clone());
                e
            }
        };
        let target_till = entry.before.saturating_add(i64::from(days) * DAY_MS);
        let moved = ch.active_till.is_some_and(|t| t.saturating_add(EXTEND_TOLERANCE_MS) >= target_till);
        if entry.applied || moved {
            if let Some(e) = ledger.get_mut(&key) {
                e.applied = true;
            }
            return Ok(ExtendOutcome { channel: info(&ch, String::new()), days_added: 0, already_applied: true });
        }
        match self.extend_once(ctx, id, days, &full_comment, entry.before).await {
            Ok(after) => {
                if let Some(e) = ledger.get_mut(&key) {
                    e.applied = true;
                }
                Ok(ExtendOutcome { channel: info(&after, String::new()), days_added: days, already_applied: false })
            }
            Err(e) => {
                // A definite refusal leaves nothing applied: forget the entry. A lost answer
                // (or a 5xx that may have acted) keeps it, so the retry checks activeTill.
                if !e.is_retryable()
                    && !matches!(&e, ProviderError::Precondition { raw, .. } if raw == "extend_not_reflected")
                {
                    ledger.remove(&key);
                }
                Err(e)
            }
        }
    }

    /// Deletes the channel; unused paid days return to the balance ([I] `refunded_days` in
    /// the response).
    async fn delete_channel(&self, ctx: &CallContext, target: &ResourceRef) -> Result<u32, ProviderError> {
        let deleted = self.client.delete_channel(ctx, &target.handle.external_key).await?;
        Ok(u32::try_from(deleted.refunded_days.unwrap_or(0).max(0)).unwrap_or(u32::MAX))
    }

    /// [C2] `GET /partners`: `balance` days and `trialDays`.
    async fn partner_balance(&self, ctx: &CallContext) -> Result<Balance, ProviderError> {
        let p = self.client.partner(ctx).await?;
        Ok(Balance { days: p.balance, trial_days: p.trial_days })
    }
}
