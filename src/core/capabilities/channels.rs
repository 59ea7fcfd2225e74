//! Whapi channels: reads, connect codes, mode, extension (idempotent through the event log)
//! and deletion.

use std::time::Duration;

use super::{ChannelView, ExtendView, Target, attrs, channels_of, details_of, handle_data, provider_err, str_of};
use crate::core::claims::ClaimKey;
use crate::core::{Caller, Core};
use crate::domain::{
    AccountId, ChannelId, EventKind, OnboardingDetails, OnboardingId, OnboardingState, Patch, ProviderKind, UnixMs,
    WhapiDetails, now_ms,
};
use crate::error::{AppError, ErrorCode};
use crate::providers::{ChannelInfo, ChannelMode, ConnectMethod, ExtendOutcome, IssuedConnectCode};
use crate::store::{NewEvent, OnboardingChange, OnboardingFilter, OnboardingRecord, Page, PageRequest, StoreError};

/// Operation name of `DeleteChannel` request claims.
const OP_DELETE_CHANNEL: &str = "DeleteChannel";

/// Most days one `ExtendChannel` may add.
pub const MAX_EXTEND_DAYS: u32 = 365;

/// One day in ms (channel days).
const DAY_MS: i64 = 86_400_000;

/// How far `activeTill` may fall short of "before + days" and still count as extended (the
/// provider computes it from its own clock).
const EXTEND_TOLERANCE_MS: i64 = 60_000;

/// Refuses a `request_id` reused with another number of days.
fn same_extension(prior: &serde_json::Value, days: u32, request_id: &str) -> Result<(), AppError> {
    match prior["days"].as_u64() {
        Some(d) if d != u64::from(days) => Err(AppError::new(
            ErrorCode::AlreadyExists,
            format!("request_id '{request_id}' was already used for a different ExtendChannel request ({d} days)"),
        )
        .with_violation("request_id", "already used for a different request")),
        _ => Ok(()),
    }
}

impl Core {
    async fn channel_target(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        request_id: Option<&str>,
    ) -> Result<Target, AppError> {
        let o = self
            .store
            .onboarding_by_resource(&caller.tenant, ProviderKind::Whapi, channel.as_str())
            .await?
            .ok_or_else(|| AppError::not_found(format!("channels/{channel}")))?;
        self.target(caller, o, request_id, |p| channels_of(p).map(drop)).await
    }

    fn channel_view(t: &Target, info: ChannelInfo) -> ChannelView {
        ChannelView { onboarding: t.onboarding.id.clone(), account: t.onboarding.account_id.clone(), info }
    }

    /// A channel, refreshed from the provider.
    pub async fn get_channel(&self, caller: &Caller, channel: &ChannelId) -> Result<ChannelView, AppError> {
        let t = self.channel_target(caller, channel, None).await?;
        let ops = channels_of(t.provider.as_ref())?;
        let info = ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(t.provider.kind()))?;
        Ok(Self::channel_view(&t, info))
    }

    /// The tenant's channels (Whapi onboardings that have one), from stored details: no
    /// provider call per item. `page.after` is the last onboarding id of the previous page.
    pub async fn list_channels(
        &self,
        caller: &Caller,
        account: Option<&AccountId>,
        page: &PageRequest,
    ) -> Result<Page<ChannelView>, AppError> {
        let filter = OnboardingFilter {
            provider: Some(ProviderKind::Whapi),
            account_id: account.cloned(),
            ..Default::default()
        };
        let limit = page.limit.max(1) as usize;
        let mut cursor = page.after.clone();
        let mut out = Vec::new();
        loop {
            let req = PageRequest { limit: page.limit.max(1), after: cursor.clone() };
            let p = self.store.list_onboardings(&caller.tenant, &filter, &req).await?;
            let more = p.next_page_token.is_some() && !p.items.is_empty();
            for o in p.items {
                if o.external_key.is_some() {
                    if out.len() == limit {
                        // One more channel exists: the next page resumes before it.
                        return Ok(Page { items: out, next_page_token: cursor });
                    }
                    out.push(stored_channel(&o)?);
                }
                cursor = Some(o.id.as_str().to_string());
            }
            if !more {
                return Ok(Page { items: out, next_page_token: None });
            }
        }
    }

    /// A fresh QR or pairing code.
    pub async fn get_connect_code(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        method: &ConnectMethod,
    ) -> Result<IssuedConnectCode, AppError> {
        let t = self.channel_target(caller, channel, None).await?;
        let ops = channels_of(t.provider.as_ref())?;
        let code = ops.connect_code(&t.ctx, &t.resource, method).await.map_err(provider_err(t.provider.kind()))?;
        // Counted per onboarding (`connect_codes_issued` in its details); the code itself
        // never goes into the log.
        let m = match method {
            ConnectMethod::Qr { .. } => "qr",
            ConnectMethod::PairingCode { .. } => "pairing_code",
        };
        let event = NewEvent::new(EventKind::ConnectCodeIssued, "a connect code was issued")
            .with_attributes(&attrs(&[("method", m.into())]));
        self.record_with_details(&t.onboarding.id, event, None, |d| {
            d.connect_codes_issued = Some(d.connect_codes_issued.unwrap_or(0).saturating_add(1));
        })
        .await?;
        Ok(code)
    }

    /// Switches the channel's mode.
    pub async fn set_channel_mode(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        mode: ChannelMode,
    ) -> Result<ChannelView, AppError> {
        let t = self.channel_target(caller, channel, None).await?;
        let ops = channels_of(t.provider.as_ref())?;
        let info = ops.set_mode(&t.ctx, &t.resource, mode).await.map_err(provider_err(t.provider.kind()))?;
        let m = mode.as_str();
        let event = NewEvent::new(EventKind::ChannelModeSet, "channel mode switched")
            .with_attributes(&attrs(&[("mode", m.into())]));
        // The stored details follow, so GetOnboarding and ListChannels show the new mode.
        self.record_with_details(&t.onboarding.id, event, None, |d| {
            d.mode = Some(mode);
        })
        .await?;
        Ok(Self::channel_view(&t, info))
    }

    /// Adds days; idempotent on `request_id`, durably (across restarts and replicas), with
    /// the mechanism `DeleteChannel` and `CreateSubscription` use: the key lives in the
    /// onboarding's event log.
    ///
    /// Before calling the provider an intent event (`channel_extend_requested`: key, days,
    /// `activeTill` before) is appended, conditional on the sequence read before the log was
    /// searched, so two concurrent first attempts cannot both pass; after the call the
    /// outcome (`channel_extended`) is appended and the stored `activeTill` / expiry move.
    /// A retry finds the outcome (already applied), or only the intent (the earlier answer
    /// was lost): then `activeTill` having moved by the days means it was applied.
    pub async fn extend_channel(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        days: u32,
        comment: &str,
        request_id: &str,
    ) -> Result<ExtendView, AppError> {
        if !(1..=MAX_EXTEND_DAYS).contains(&days) {
            return Err(AppError::invalid("days", format!("must be between 1 and {MAX_EXTEND_DAYS}")));
        }
        if request_id.is_empty() {
            return Err(AppError::invalid("request_id", "is required: a retry with the same key never extends twice"));
        }
        const ATTEMPTS: usize = 8;
        let mut attempt = 0;
        // The longest the provider calls may take: read, extend and re-read, each bounded by the
        // HTTP timeout, plus room for the rate limiter. The intent carries the window's end, so
        // a retry anywhere can tell an attempt still in flight from one that died with its
        // replica.
        let window_ms = i64::try_from(self.settings.providers.http_timeout_secs.max(1))
            .unwrap_or(i64::MAX / 4_000)
            .saturating_mul(3_000)
            .saturating_add(5_000);
        let (t, before, recovering, until_ms) = loop {
            let t = self.channel_target(caller, channel, Some(request_id)).await?;
            let ops = channels_of(t.provider.as_ref())?;
            let kind = t.provider.kind();
            let id = t.onboarding.id.clone();
            let prior = self
                .events_with_request_id(
                    &id,
                    &[EventKind::ChannelExtendRequested, EventKind::ChannelExtended, EventKind::ChannelExtendFailed],
                    request_id,
                )
                .await?;
            for (k, d) in &prior {
                if *k != EventKind::ChannelExtendFailed {
                    same_extension(d, days, request_id)?;
                }
            }
            if prior.iter().any(|(k, _)| *k == EventKind::ChannelExtended) {
                let info = ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(kind))?;
                return Ok(ExtendView { channel: Self::channel_view(&t, info), days_added: 0, already_applied: true });
            }
            let now = now_ms();
            let latest = prior.iter().rposition(|(k, _)| *k == EventKind::ChannelExtendRequested);
            if let Some(i) = latest
                && !prior[i + 1..].iter().any(|(k, _)| *k == EventKind::ChannelExtendFailed)
                && let Some(until) = prior[i].1["in_flight_until_ms"].as_i64().filter(|u| *u > now)
            {
                // Another call with this key (here or on another replica) may be adding the
                // days right now and activeTill has not moved yet: extending too would add
                // them twice.
                let wait = Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
                return Err(AppError::unavailable(format!(
                    "an ExtendChannel with this request_id is in progress (for up to {} s more); retry with the same request_id",
                    wait.as_secs().max(1)
                ))
                .with_retry_after(wait.clamp(Duration::from_secs(1), Duration::from_secs(5))));
            }
            // A retry after an attempt that failed or died compares with the first reading.
            let before = match prior.iter().find(|(k, _)| *k == EventKind::ChannelExtendRequested) {
                Some((_, first)) => first["active_till_ms"].as_i64(),
                None => ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(kind))?.active_till_ms,
            };
            let until_ms = now.saturating_add(window_ms);
            let mut data = vec![("request_id", request_id.into()), ("days", days.into())];
            if let Some(b) = before {
                data.push(("active_till_ms", b.into()));
            }
            data.push(("in_flight_until_ms", until_ms.into()));
            let intent = OnboardingChange {
                // The log was searched after this sequence was read: nothing else was
                // appended in between (or the write fails and we look again), so of two
                // retries racing here only one goes on.
                expect_sequence: Some(t.onboarding.sequence),
                ..OnboardingChange::new(
                    &id,
                    NewEvent::new(EventKind::ChannelExtendRequested, "adding days to the channel")
                        .with_attributes(&attrs(&data)),
                    now,
                )
            };
            match self.store.apply_change(&intent).await {
                Ok(_) => break (t, before, latest.is_some(), until_ms),
                Err(StoreError::Conflict(_)) if attempt + 1 < ATTEMPTS => attempt += 1,
                Err(StoreError::Conflict(m)) => return Err(AppError::new(ErrorCode::Aborted, m)),
                Err(e) => return Err(e.into()),
            }
        };
        let ops = channels_of(t.provider.as_ref())?;
        let kind = t.provider.kind();
        let id = t.onboarding.id.clone();
        let run = async {
            if recovering {
                // An earlier attempt with this key may have extended without us learning it.
                let info = ops.get_channel(&t.ctx, &t.resource).await.map_err(provider_err(kind))?;
                let target = before.map(|b| b.saturating_add(i64::from(days) * DAY_MS));
                if let (Some(target), Some(now_till)) = (target, info.active_till_ms)
                    && now_till.saturating_add(EXTEND_TOLERANCE_MS) >= target
                {
                    return Ok(ExtendOutcome { channel: info, days_added: 0, already_applied: true });
                }
            }
            ops.extend(&t.ctx, &t.resource, days, comment).await.map_err(provider_err(kind))
        };
        // Never outlive the intent's window: past it, a retry may take over.
        let left = Duration::from_millis(u64::try_from(until_ms.saturating_sub(now_ms())).unwrap_or(0));
        let outcome = match tokio::time::timeout(left, run).await {
            Ok(r) => r,
            Err(_) => Err(AppError::unavailable(
                "the provider did not finish the extension in time; retry with the same request_id",
            )),
        };
        let out = match outcome {
            Ok(out) => out,
            Err(e) => {
                // Tells retries this attempt is over: they check whether the days landed before
                // extending again. If this write fails too, the window's end says the same.
                let raw = e.provider.as_ref().map(|p| p.raw_code.clone()).unwrap_or_else(|| e.code.as_str().into());
                let data = attrs(&[("request_id", request_id.into()), ("error", raw.into())]);
                if let Err(w) =
                    self.audit(&id, EventKind::ChannelExtendFailed, "adding days to the channel failed", data).await
                {
                    tracing::warn!(onboarding = %id, error = %w.message, "Could not record the failed extension.");
                }
                return Err(e);
            }
        };
        self.record_extended(&id, request_id, days, out.channel.active_till_ms, out.already_applied).await?;
        Ok(ExtendView {
            channel: Self::channel_view(&t, out.channel),
            days_added: out.days_added,
            already_applied: out.already_applied,
        })
    }

    /// The outcome of an extension: the event, and the channel's new `activeTill` as the
    /// onboarding's details and expiry.
    async fn record_extended(
        &self,
        id: &OnboardingId,
        request_id: &str,
        days: u32,
        active_till_ms: Option<UnixMs>,
        found_applied: bool,
    ) -> Result<(), AppError> {
        let mut data = vec![("days_added", days.into()), ("days", days.into()), ("request_id", request_id.into())];
        if found_applied {
            data.push(("found_applied", true.into()));
        }
        if let Some(t) = active_till_ms {
            data.push(("active_till_ms", t.into()));
        }
        let event =
            NewEvent::new(EventKind::ChannelExtended, "days added to the channel").with_attributes(&attrs(&data));
        self.record_with_details(id, event, active_till_ms, |d| {
            if let Some(t) = active_till_ms {
                d.active_till_ms = Some(t);
            }
        })
        .await
    }

    /// Deletes the channel and records its onboarding `CANCELLED` (the channel is gone).
    /// Returns the refunded days. With a `request_id`, a retry after success returns the
    /// days refunded the first time.
    pub async fn delete_channel(
        &self,
        caller: &Caller,
        channel: &ChannelId,
        request_id: Option<&str>,
    ) -> Result<u32, AppError> {
        let t = self.channel_target(caller, channel, request_id).await?;
        let Some(rid) = request_id else { return self.delete_channel_now(&t, channel, None).await };
        // Claimed before the delete: concurrent calls with this key wait for the one delete
        // (and its refund) instead of racing it at the provider, where all but one would fail.
        let key = ClaimKey {
            tenant: &caller.tenant,
            key: format!("channels/{channel}/delete\n{rid}"),
            operation: OP_DELETE_CHANNEL,
            hash: channel.as_str().as_bytes(),
        };
        let id = t.onboarding.id.clone();
        let stored = || async {
            let prior = self.event_with_request_id(&id, EventKind::ChannelDeleted, rid).await?;
            Ok(prior.map(|p| p["refunded_days"].as_u64().and_then(|d| u32::try_from(d).ok()).unwrap_or(0)))
        };
        self.once_per_key(key, stored, || self.delete_channel_now(&t, channel, Some(rid))).await
    }

    /// Deletes the channel at the provider and records it (see [`Core::delete_channel`]).
    async fn delete_channel_now(
        &self,
        t: &Target,
        channel: &ChannelId,
        request_id: Option<&str>,
    ) -> Result<u32, AppError> {
        let ops = channels_of(t.provider.as_ref())?;
        let id = t.onboarding.id.clone();
        let refunded = ops.delete_channel(&t.ctx, &t.resource).await.map_err(provider_err(t.provider.kind()))?;
        let mut data = vec![("channel", channel.as_str().into()), ("refunded_days", refunded.into())];
        if let Some(rid) = request_id {
            data.push(("request_id", rid.into()));
        }
        let now = now_ms();
        let mut change = OnboardingChange::new(
            &id,
            NewEvent::new(EventKind::ChannelDeleted, "channel deleted through DeleteChannel")
                .with_attributes(&attrs(&data)),
            now,
        );
        if !t.onboarding.state.is_terminal() {
            // The engine must not keep driving a channel that no longer exists.
            change.steps = crate::core::engine::skip_unfinished(self.store.steps(&id).await?, now);
            change.state = Some(OnboardingState::Cancelled);
            change.desired_state = Patch::Clear;
            change.state_reason = Some("the channel was deleted".into());
            change.state_deadline_ms = Patch::Clear;
        }
        self.apply(change).await?;
        tracing::info!(onboarding = %id, channel = %channel, refunded, "Channel deleted.");
        Ok(refunded)
    }
}

/// A channel from what the store knows (the pipeline keeps it current), for cheap lists.
fn stored_channel(o: &OnboardingRecord) -> Result<ChannelView, AppError> {
    let d = match details_of(o)? {
        OnboardingDetails::Whapi(d) => d,
        _ => WhapiDetails::default(),
    };
    let data = handle_data(o)?;
    let mode = d.mode;
    // Listed only once the channel exists; an empty id would name no channel at all.
    let Some(channel_id) = o.external_key.clone() else {
        return Err(AppError::internal(format!("onboardings/{} lists a channel without its id", o.id)));
    };
    let info = ChannelInfo {
        id: channel_id,
        display_name: str_of(&data, &["name"]).unwrap_or_default().into(),
        mode,
        health: if o.state.is_terminal() { "STOPPED".into() } else { o.provider_status.clone() },
        phone: d.phone,
        active_till_ms: d.active_till_ms.or(o.expire_ms),
        stopped: o.state.is_terminal(),
        api_url: str_of(&data, &["api_url", "apiUrl"]).unwrap_or_default().into(),
        created_ms: None,
    };
    Ok(ChannelView { onboarding: o.id.clone(), account: o.account_id.clone(), info })
}
