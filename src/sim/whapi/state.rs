//! Channel and partner state. Link state is derived lazily from timestamps against the sim
//! clock; `advance` materialises due transitions and queues the webhooks they fire.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::webhooks::{self, Delivery};
use super::{WhapiChannelView, WhapiSimConfig, qr};

/// One day in ms.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// Health codes: [C] 1 INIT, 2 LAUNCH, 3 QR, 5 ERROR; [I] 4 AUTH (by elimination).
pub(crate) const INIT: u8 = 1;
pub(crate) const LAUNCH: u8 = 2;
pub(crate) const QR: u8 = 3;
pub(crate) const AUTH: u8 = 4;
pub(crate) const ERROR: u8 = 5;

/// Health text of a code.
pub(crate) fn health_text(code: u8) -> &'static str {
    match code {
        INIT => "INIT",
        LAUNCH => "LAUNCH",
        QR => "QR",
        AUTH => "AUTH",
        _ => "ERROR",
    }
}

/// One `extend` call, kept as the channel's billing history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BillingEntry {
    /// Days moved from the balance.
    pub days: i64,
    /// The partner's comment.
    pub comment: String,
    /// Epoch ms of the call.
    pub at: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct LinkedUser {
    pub phone: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct PendingLink {
    pub due: i64,
    pub phone: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub id: String,
    pub token: String,
    pub name: String,
    pub project_id: String,
    pub owner_id: String,
    pub server: i64,
    pub creation_ts: i64,
    pub active_till: i64,
    pub trial: i64,
    pub mode: String,
    pub stopped: bool,
    /// Days taken from the balance and not refunded.
    pub extended_days: i64,
    pub billing: Vec<BillingEntry>,
    pub woken_at: Option<i64>,
    pub restart_until: Option<i64>,
    pub logged_out_at: Option<i64>,
    pub error: bool,
    pub user: Option<LinkedUser>,
    pub pending: Option<PendingLink>,
    /// Gate settings (`GET /settings`).
    pub settings: Value,
    reported_code: u8,
    reported_qr: i64,
    /// Authenticated gate calls (for `GET /limits`).
    pub api_requests: u64,
}

/// What a `PUT /channels` call decides about a new channel: its identity and ownership. The
/// rest (server, trial period, health) [`Channel::new`] derives from the clock and the config.
#[derive(Debug, Clone)]
pub(crate) struct NewChannel {
    /// The channel id (`MANTIS-AB12C` style), unique in the state.
    pub id: String,
    /// The channel's Gate API token, fresh from the state.
    pub token: String,
    /// The display name the caller asked for.
    pub name: String,
    /// The project the channel is created in.
    pub project_id: String,
    /// The partner that owns it (the state's `owner_id`).
    pub owner_id: String,
}

impl Channel {
    /// A channel just created at `now`: in its trial, not yet woken, no user linked.
    pub(crate) fn new(new: NewChannel, now: i64, cfg: &WhapiSimConfig) -> Self {
        let NewChannel { id, token, name, project_id, owner_id } = new;
        let active_till = now + cfg.trial_days * DAY_MS;
        Self {
            id,
            token,
            name,
            project_id,
            owner_id,
            server: rand::rng().random_range(1..=12),
            creation_ts: now,
            active_till,
            // [I] `trial` = end of the trial period = initial activeTill.
            trial: active_till,
            mode: "trial".into(),
            stopped: false,
            extended_days: 0,
            billing: Vec::new(),
            woken_at: None,
            restart_until: None,
            logged_out_at: None,
            error: false,
            user: None,
            pending: None,
            settings: webhooks::default_settings(),
            reported_code: INIT,
            reported_qr: -1,
            api_requests: 0,
        }
    }

    /// Health code at `now`.
    pub(crate) fn code(&self, now: i64, cfg: &WhapiSimConfig) -> u8 {
        if self.error {
            return ERROR;
        }
        if self.restart_until.is_some_and(|r| now < r) {
            return LAUNCH;
        }
        match self.woken_at {
            None => INIT,
            Some(w) if now < w + cfg.launch_ms as i64 => LAUNCH,
            Some(_) if self.user.is_some() => AUTH,
            Some(_) => QR,
        }
    }

    /// When the current QR series started.
    fn qr_base(&self, cfg: &WhapiSimConfig) -> i64 {
        let woke = self.woken_at.map(|w| w + cfg.launch_ms as i64).unwrap_or(0);
        woke.max(self.logged_out_at.unwrap_or(0)).max(self.restart_until.unwrap_or(0))
    }

    fn qr_index(&self, now: i64, cfg: &WhapiSimConfig) -> i64 {
        let ttl = (cfg.qr_ttl_secs.max(1) * 1000) as i64;
        (now - self.qr_base(cfg)).max(0) / ttl
    }

    /// The valid QR string and its remaining lifetime (s), when in the QR state.
    pub(crate) fn current_qr(&self, now: i64, cfg: &WhapiSimConfig) -> Option<(String, i64)> {
        if self.code(now, cfg) != QR {
            return None;
        }
        let ttl = (cfg.qr_ttl_secs.max(1) * 1000) as i64;
        let idx = self.qr_index(now, cfg);
        let ends = self.qr_base(cfg) + (idx + 1) * ttl;
        let expires_in = (ends - now + 999) / 1000;
        Some((qr::rowdata(&self.id, &self.token, self.qr_base(cfg), idx), expires_in))
    }

    /// `/health` body (also the `health` of `channel` webhooks).
    pub(crate) fn health_json(&self, now: i64, cfg: &WhapiSimConfig) -> Value {
        let code = self.code(now, cfg);
        let start = self.woken_at.unwrap_or(self.creation_ts);
        let uptime = if self.woken_at.is_some() { (now - start).max(0) / 1000 } else { 0 };
        json!({
            "status": {"code": code, "text": health_text(code)},
            "channel_id": self.id,
            "start_at": start / 1000,
            "uptime": uptime,
            "version": cfg.version,
        })
    }

    /// The channel object of the manager API [C] shape.
    pub(crate) fn to_json(&self, api_url: &str) -> Value {
        let mut v = json!({
            "apiUrl": api_url,
            "id": self.id,
            "creationTS": self.creation_ts,
            "ownerId": self.owner_id,
            "activeTill": self.active_till,
            "token": self.token,
            "server": self.server,
            "stopped": self.stopped,
            // [I] a stopped (expired) channel reports status "stopped".
            "status": if self.stopped { "stopped" } else { "active" },
            "trial": self.trial,
            "mode": self.mode,
            "name": self.name,
            "projectId": self.project_id,
        });
        // [C2] `phone` once linked; [I] only while linked.
        if let (Some(u), Some(o)) = (&self.user, v.as_object_mut()) {
            o.insert("phone".into(), json!(u.phone));
        }
        v
    }

    /// Inspection view.
    pub(crate) fn view(&self, now: i64, cfg: &WhapiSimConfig) -> WhapiChannelView {
        let code = self.code(now, cfg);
        WhapiChannelView {
            id: self.id.clone(),
            token: self.token.clone(),
            mode: self.mode.clone(),
            status: if self.stopped { "stopped" } else { "active" }.into(),
            health_code: code,
            health_text: health_text(code).into(),
            phone: self.user.as_ref().map(|u| u.phone.clone()),
            active_till: self.active_till,
            extended_days: self.extended_days,
            pending_link_at: self.pending.as_ref().map(|p| p.due),
        }
    }

    /// Queues the deliveries of one event to the channel's webhooks.
    fn emit(&self, kind: &str, event: &str, mut body: Value, out: &mut Vec<Delivery>) {
        if let Some(o) = body.as_object_mut() {
            o.insert("event".into(), json!({"type": kind, "event": event}));
            o.insert("channel_id".into(), json!(self.id));
        }
        out.extend(webhooks::deliveries(&self.settings["webhooks"], kind, event, &body));
    }

    /// Links the phone now and fires `users`/`post`. Only from the QR state.
    pub(crate) fn link_now(
        &mut self,
        now: i64,
        phone: &str,
        name: &str,
        cfg: &WhapiSimConfig,
        out: &mut Vec<Delivery>,
    ) -> Result<(), &'static str> {
        if self.stopped {
            return Err("channel stopped");
        }
        if self.user.is_some() {
            return Err("already authenticated");
        }
        if self.code(now, cfg) != QR {
            return Err("channel is not waiting for a QR scan");
        }
        self.pending = None;
        self.user = Some(LinkedUser { phone: phone.to_string(), name: name.to_string() });
        let body = json!({"user": {"id": phone, "name": name}});
        self.emit("users", "post", body, out);
        Ok(())
    }

    /// Unlinks the phone (back to QR) and fires `users`/`delete`.
    pub(crate) fn logout(&mut self, now: i64, out: &mut Vec<Delivery>) -> bool {
        self.error = false;
        let Some(u) = self.user.take() else {
            return false;
        };
        self.pending = None;
        self.logged_out_at = Some(now);
        self.emit("users", "delete", json!({"user": {"id": u.phone, "name": u.name}}), out);
        true
    }

    /// Sandbox: schedules the customer's scan / code entry unless one is pending.
    pub(crate) fn schedule_link(&mut self, now: i64, phone: &str, replace: bool, cfg: &WhapiSimConfig) {
        if !cfg.sandbox || (self.pending.is_some() && !replace) {
            return;
        }
        self.pending = Some(PendingLink { due: now + cfg.scan_delay_ms as i64, phone: phone.to_string() });
    }

    /// Applies transitions due at `now` and queues their webhooks.
    pub(crate) fn advance(&mut self, now: i64, cfg: &WhapiSimConfig, out: &mut Vec<Delivery>) {
        if self.stopped {
            return;
        }
        if now >= self.active_till {
            self.stopped = true;
            self.pending = None;
            return;
        }
        if let Some(p) = self.pending.clone()
            && p.due <= now
            && self.code(now, cfg) == QR
        {
            let _ = self.link_now(now, &p.phone, &cfg.sandbox_user_name, cfg, out);
        }
        let code = self.code(now, cfg);
        if code != self.reported_code {
            self.reported_code = code;
            self.reported_qr = self.qr_index(now, cfg);
            self.emit("channel", "post", json!({"health": self.health_json(now, cfg)}), out);
        } else if code == QR {
            let idx = self.qr_index(now, cfg);
            if idx != self.reported_qr {
                self.reported_qr = idx;
                // [I] QR refresh payload (not documented): health plus the new QR.
                let (rowdata, expires_in) = self.current_qr(now, cfg).unwrap_or_default();
                let body = json!({
                    "health": self.health_json(now, cfg),
                    "qr": {"rowdata": rowdata, "expires_in": expires_in},
                });
                self.emit("channel", "patch", body, out);
            }
        }
    }
}

/// Everything the simulator holds.
#[derive(Debug)]
pub(crate) struct SimState {
    pub channels: BTreeMap<String, Channel>,
    pub balance: i64,
    /// Days moved from the balance to channels and not refunded.
    pub allocated: i64,
    /// Partner settings webhooks (`days` events).
    pub partner_webhooks: Value,
    pub days_limit: Option<i64>,
    pub owner_id: String,
}

impl SimState {
    pub(crate) fn new(cfg: &WhapiSimConfig) -> Self {
        Self {
            channels: BTreeMap::new(),
            balance: cfg.balance_days,
            allocated: 0,
            partner_webhooks: json!([]),
            // [I] no balance alert until the partner sets `days_limit`.
            days_limit: None,
            owner_id: random_string(28, ALNUM),
        }
    }

    pub(crate) fn advance_all(&mut self, now: i64, cfg: &WhapiSimConfig, out: &mut Vec<Delivery>) {
        for c in self.channels.values_mut() {
            c.advance(now, cfg, out);
        }
    }

    pub(crate) fn by_token(&mut self, token: &str) -> Option<&mut Channel> {
        self.channels.values_mut().find(|c| c.token == token)
    }

    /// A fresh unique `WORD-XXXXX` id [C] pattern.
    pub(crate) fn new_channel_id(&self) -> String {
        const WORDS: &[&str] = &["SHAZAM", "MANTIS", "FALCON", "PANTHER", "COBRA", "RAVEN", "TIGER", "LYNX"];
        loop {
            let w = WORDS[rand::rng().random_range(0..WORDS.len())];
            let id = format!("{w}-{}", random_string(5, UPPER_ALNUM));
            if !self.channels.contains_key(&id) {
                return id;
            }
        }
    }

    /// A fresh unique 32-char channel token.
    pub(crate) fn new_token(&self) -> String {
        loop {
            let t = random_string(32, ALNUM);
            if !self.channels.values().any(|c| c.token == t) {
                return t;
            }
        }
    }
}

pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub(crate) const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `n` random characters from `set`.
pub(crate) fn random_string(n: usize, set: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| set[rng.random_range(0..set.len())] as char).collect()
}
