//! The Whapi onboarding pipeline. Every step is safe to repeat after a crash at any point:
//! the create reconciles by channel name, the webhook setup reads before it writes, the
//! connection wait is a read, and `go_live` writes a marker into its step data before it
//! extends and checks `activeTill` before extending again.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::model::{WebhookJson, events_of, webhooks_of};
use super::{
    DAY_MS, EXTEND_TOLERANCE_MS, WhapiProvider, channel_name_for, e164, gate_of, handle_for, health_observation,
    is_stopped_error, now_ms, stopped_observation, whapi_start,
};
use crate::domain::{ChannelId, ChannelMode, OnboardingState, ProviderKind, WhapiDetails};
use crate::providers::{
    CallContext, Observation, PipelineStep, ProviderError, ProviderHandle, StartRequest, StepOutcome, StepRun,
    StepSpec, step_of,
};

/// The Whapi pipeline's steps (stored names in [`PipelineStep::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhapiStep {
    /// `create_channel`: creates the channel (reconciling by name first).
    CreateChannel,
    /// `configure_webhooks`: points the channel's `channel` and `users` webhooks at our ingress.
    ConfigureWebhooks,
    /// `await_connection`: waits for the customer to link the phone (health `AUTH`).
    AwaitConnection,
    /// `go_live`: switches the channel to live and adds the requested days.
    GoLive,
}

impl PipelineStep for WhapiStep {
    const ALL: &'static [Self] = &[Self::CreateChannel, Self::ConfigureWebhooks, Self::AwaitConnection, Self::GoLive];

    fn name(self) -> &'static str {
        match self {
            Self::CreateChannel => "create_channel",
            Self::ConfigureWebhooks => "configure_webhooks",
            Self::AwaitConnection => "await_connection",
            Self::GoLive => "go_live",
        }
    }

    fn display_name(self) -> &'static str {
        match self {
            Self::CreateChannel => "Create the Whapi channel",
            Self::ConfigureWebhooks => "Point the channel's webhooks at wa-onboard",
            Self::AwaitConnection => "Wait for the phone to connect",
            Self::GoLive => "Switch the channel to live and add days",
        }
    }
}

/// [I] The webhook events our ingress needs: health changes (`channel`/`post`), login
/// (`users`/`post`) and logout (`users`/`delete`).
const INGRESS_EVENTS: &[(&str, &str)] = &[("channel", "post"), ("users", "post"), ("users", "delete")];

/// The longest pause between two health reads while waiting for the phone.
const MAX_CONNECTION_POLL: Duration = Duration::from_secs(300);

/// The pause before health read number `polls + 1` while waiting for the phone: the base
/// interval, doubling every 6 reads, capped at 5 minutes. [C] A trial channel has 1,000 API
/// requests a month and every gate call counts [I], so a day-long wait must not poll every
/// few seconds; the `users` login webhook wakes the step at once anyway.
pub(super) fn connection_poll_delay(base: Duration, polls: u64) -> Duration {
    let factor = 1u32 << (polls / 6).min(16);
    base.saturating_mul(factor).min(MAX_CONNECTION_POLL.max(base))
}

/// The steps for a request (`go_live` is skipped unless asked for).
pub(super) fn specs(req: &StartRequest) -> Vec<StepSpec> {
    let go_live = matches!(&req.payload, crate::providers::StartPayload::Whapi(w) if w.go_live);
    vec![
        WhapiStep::CreateChannel.spec().entering(OnboardingState::Pending),
        WhapiStep::ConfigureWebhooks.spec(),
        WhapiStep::AwaitConnection
            .spec()
            .entering(OnboardingState::AwaitingCustomer)
            .deadline(Duration::from_secs(24 * 3600)),
        WhapiStep::GoLive.spec().enabled(go_live).deadline(Duration::from_secs(30 * 60)),
    ]
}

fn need_handle(run: &StepRun) -> Result<&ProviderHandle, ProviderError> {
    run.handle.as_ref().ok_or_else(|| ProviderError::Precondition {
        raw: String::new(),
        message: format!("{} ran before create_channel recorded a channel", run.name),
    })
}

fn note(raw: &str, state: Option<OnboardingState>, reason: &str) -> Observation {
    Observation { raw_status: raw.into(), fields: Default::default(), state, reason: reason.into() }
}

/// Our ingress entry with every needed event, the others untouched. Returns the new list and
/// whether it differs from `hooks`.
pub(super) fn with_ingress(mut hooks: Vec<WebhookJson>, ingress: &str) -> (Vec<WebhookJson>, bool) {
    let pos = hooks.iter().position(|w| w.get("url").and_then(Value::as_str) == Some(ingress));
    let entry = match pos {
        Some(i) => &mut hooks[i],
        None => {
            let mut w = Map::new();
            w.insert("url".into(), json!(ingress));
            w.insert("events".into(), json!([]));
            hooks.push(w);
            let last = hooks.len() - 1;
            &mut hooks[last]
        }
    };
    let mut changed = pos.is_none();
    // We parse bodies: deliveries must carry the event in the body.
    if entry.get("mode").and_then(Value::as_str).is_some_and(|m| m != "body") || !entry.contains_key("mode") {
        entry.insert("mode".into(), json!("body"));
        changed = true;
    }
    let have = events_of(entry);
    let mut events: Vec<Value> = entry.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
    for (t, m) in INGRESS_EVENTS {
        if !have.iter().any(|(ht, hm)| ht == t && hm == m) {
            events.push(json!({ "type": t, "method": m }));
            changed = true;
        }
    }
    entry.insert("events".into(), Value::Array(events));
    (hooks, changed)
}

/// Whether an earlier run of `create_channel` may have sent a create: any attempt after the
/// first (a failed or crashed run counts one; a rate-limit queue does not), or an onboarding
/// that was ever stalled or waiting for credentials, whose restart (RetryPipeline, new
/// credentials) counts attempts afresh ([`StepRun::was_stalled`]).
pub(super) fn may_follow_a_create(run: &StepRun) -> bool {
    run.attempt > 1 || run.was_stalled
}

impl WhapiProvider {
    pub(super) async fn run_pipeline_step(
        &self,
        ctx: &CallContext,
        run: &StepRun,
    ) -> Result<StepOutcome, ProviderError> {
        match step_of::<WhapiStep>(ProviderKind::Whapi, run)? {
            WhapiStep::CreateChannel => self.step_create(ctx, run).await,
            WhapiStep::ConfigureWebhooks => self.step_webhooks(ctx, run).await,
            WhapiStep::AwaitConnection => self.step_await(ctx, run).await,
            WhapiStep::GoLive => self.step_go_live(ctx, run).await,
        }
    }

    async fn step_create(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let w = whapi_start(&run.request)?;
        let (ch, reconciled) = self.create_or_find(ctx, &run.request, may_follow_a_create(run)).await?;
        let mut obs = note(
            if ch.status.is_empty() { "created" } else { &ch.status },
            None,
            if reconciled { "found the channel an earlier attempt created" } else { "channel created" },
        );
        super::channel_fields(&ch, &mut obs.fields);
        let mut out = StepOutcome::done(obs)
            .handle(handle_for(&ch, w.go_live))
            .secret(crate::domain::Secret::new(ch.token.clone()))
            .with_details(WhapiDetails {
                channel_id: ChannelId::parse(ch.id.clone()).ok(),
                // The public detail uses the domain names the core and the API read (`trial`,
                // `sandbox`, `live`): a Sandbox channel reads `dev` on the wire
                // (docs/providers.md §3.3); the raw value stays in the observation's `mode` field.
                mode: super::channels::detail_mode(&ch.mode),
                go_live: Some(w.go_live),
                extend_days: Some(i64::from(w.extend_days)),
                ..WhapiDetails::default()
            })
            .attribute("reconciled", reconciled.to_string())
            .attribute("channel_name", channel_name_for(w, &run.request.idempotency_key));
        if let Some(t) = ch.active_till {
            out = out.with_details(WhapiDetails { active_till_ms: Some(t), ..WhapiDetails::default() }).expires(t);
        }
        Ok(out)
    }

    async fn step_webhooks(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let handle = need_handle(run)?;
        let gate = self.gate_for(ctx, handle, run.secret.as_ref()).await?.0;
        let settings = self.client.get_settings(&gate).await?;
        let (hooks, changed) = with_ingress(webhooks_of(&settings), ctx.webhook_url.expose());
        if changed {
            let hooks: Vec<Value> = hooks.into_iter().map(Value::Object).collect();
            self.client.patch_settings(&gate, &json!({ "webhooks": hooks })).await?;
        }
        let reason = if changed { "webhooks now point at wa-onboard" } else { "webhooks already point at wa-onboard" };
        Ok(StepOutcome::done(note("WEBHOOKS_CONFIGURED", None, reason))
            .attribute("webhooks_changed", changed.to_string()))
    }

    async fn step_await(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let go_live = whapi_start(&run.request)?.go_live;
        let handle = need_handle(run)?;
        let (gate, fetched) = self.gate_for(ctx, handle, run.secret.as_ref()).await?;
        let health = match self.client.health(&gate, true).await {
            Ok(h) => h,
            Err(e) if is_stopped_error(&e) => {
                let ch = match fetched {
                    Some(ch) => ch,
                    None => self.client.get_channel(ctx, &handle.external_key).await?,
                };
                if ch.is_stopped() {
                    return Ok(StepOutcome::done(stopped_observation(&ch)));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if health.text() != "AUTH" {
            let polls = run.data.get("polls").and_then(Value::as_u64).unwrap_or(0);
            let obs = health_observation(&health, None, go_live);
            return Ok(StepOutcome::wait(connection_poll_delay(self.poll_interval, polls), obs)
                .data(json!({ "polls": polls + 1 })));
        }
        // Connected. The phone comes from health when it carries the user [I]; else from the
        // channel object, a read no vendor page documents (docs/providers.md §3.2 "get channel"
        // [C2]), so it is best effort: a refusal only leaves the phone (and a fresher
        // activeTill) out, the `users` login webhook [C] carries the phone too.
        let from_health = health.user.as_ref().map(|u| u.id.clone()).filter(|p| !p.is_empty());
        let ch = if from_health.is_some() {
            None
        } else {
            match self.client.get_channel(ctx, &handle.external_key).await {
                Ok(ch) => Some(ch),
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "Whapi channel read refused; the phone comes from the login webhook.");
                    None
                }
            }
        };
        let phone = from_health.or_else(|| ch.as_ref().and_then(|c| c.phone.clone()));
        let obs = health_observation(&health, ch.as_ref(), go_live);
        let mut out = StepOutcome::done(obs);
        if let Some(p) = phone.as_deref().and_then(e164) {
            out = out.with_details(WhapiDetails { phone: Some(p), ..WhapiDetails::default() });
        }
        if let Some(t) = ch.as_ref().and_then(|c| c.active_till) {
            out = out.with_details(WhapiDetails { active_till_ms: Some(t), ..WhapiDetails::default() }).expires(t);
        }
        Ok(out)
    }

    /// Mode live, wait out the restart, then extend once. Step data:
    /// `mode_set_at` (ms of our mode change), `extend` (`{before, days}`: `activeTill` before
    /// the extension, written before the call), `extended` (true once applied).
    async fn step_go_live(&self, ctx: &CallContext, run: &StepRun) -> Result<StepOutcome, ProviderError> {
        let w = whapi_start(&run.request)?;
        let handle = need_handle(run)?;
        let id = handle.external_key.as_str();
        let mut data = run.data.as_object().cloned().unwrap_or_default();
        let ch = self.client.get_channel(ctx, id).await?;
        let waiting = |reason: &str, data: &Map<String, Value>, after: Duration| {
            StepOutcome::wait(after, note("RESTARTING", Some(OnboardingState::Provisioning), reason))
                .data(Value::Object(data.clone()))
        };
        if ch.mode != "live" {
            self.client.set_mode(ctx, id, "live").await?;
            data.insert("mode_set_at".into(), json!(now_ms()));
            return Ok(waiting("switched to live; the channel restarts", &data, self.poll_interval));
        }
        // [C] The channel restarts after a mode change: no further calls for a while, then
        // only once health answers again.
        if let Some(at) = data.get("mode_set_at").and_then(Value::as_i64) {
            let grace = i64::try_from(self.config.restart_grace.as_millis()).unwrap_or(i64::MAX);
            if now_ms().saturating_sub(at) < grace {
                return Ok(waiting("the channel is restarting after the mode change", &data, self.poll_interval));
            }
        }
        let gate = gate_of(&ch, run.secret.as_ref())?;
        match self.client.health(&gate, true).await {
            Ok(h) if matches!(h.text().as_str(), "LAUNCH" | "INIT") => {
                return Ok(waiting("the channel is restarting after the mode change", &data, self.poll_interval));
            }
            Ok(_) => {}
            Err(e) if e.is_retryable() => {
                return Ok(waiting("the channel is restarting after the mode change", &data, self.poll_interval));
            }
            Err(e) => return Err(e),
        }
        let mut active_till = ch.active_till;
        let mut already_applied = false;
        let done = data.get("extended").and_then(Value::as_bool).unwrap_or(false);
        if w.extend_days > 0 && !done {
            let Some(marker) = data.get("extend").cloned() else {
                // Remember activeTill BEFORE extending, durably (the engine stores the data
                // when this returns), so a retry after a lost answer can tell.
                let before = ch.active_till.ok_or_else(|| ProviderError::Malformed {
                    message: "whapi.get_channel: channel without activeTill".into(),
                })?;
                data.insert("extend".into(), json!({ "before": before, "days": w.extend_days }));
                let obs = note("EXTENDING", Some(OnboardingState::Provisioning), "adding days to the channel");
                return Ok(StepOutcome::wait(Duration::from_millis(1), obs).data(Value::Object(data)));
            };
            let before = marker.get("before").and_then(Value::as_i64).ok_or_else(|| ProviderError::Malformed {
                message: "go_live step data: extension marker without activeTill".into(),
            })?;
            let target = before.saturating_add(i64::from(w.extend_days) * DAY_MS);
            if ch.active_till.is_some_and(|t| t.saturating_add(EXTEND_TOLERANCE_MS) >= target) {
                already_applied = true;
            } else {
                let comment = format!("wa-onboard onboarding {} go_live", run.onboarding_id);
                active_till = self.extend_once(ctx, id, w.extend_days, &comment, before).await?.active_till;
            }
            data.insert("extended".into(), json!(true));
        }
        let mut obs = note("live", Some(OnboardingState::Live), "the channel is live");
        obs.fields.insert("mode".into(), "live".into());
        let mut out = StepOutcome::done(obs)
            .with_details(WhapiDetails { mode: Some(ChannelMode::Live), ..WhapiDetails::default() })
            .attribute("already_applied", already_applied.to_string())
            .data(Value::Object(data));
        if let Some(t) = active_till {
            out.observation.fields.insert("activeTill".into(), t.to_string());
            out = out.with_details(WhapiDetails { active_till_ms: Some(t), ..WhapiDetails::default() }).expires(t);
        }
        Ok(out)
    }
}
