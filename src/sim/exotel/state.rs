//! Token bookkeeping. Status is computed lazily from timestamps so advancing the clock
//! expires tokens and lets the sandbox customer arrive without a ticker.

use std::collections::HashMap;

use serde::Serialize;

use super::{ExotelRegion, ExotelSimConfig};

/// Base of every onboarding URL; the token is the last path segment [C].
pub(super) const ONBOARDING_URL_BASE: &str = "https://messaging.exotel.com/ua-links/isv-onboard/";

/// `onboarding_token_status` values [C].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenStatus {
    /// Usable, nobody onboarded yet.
    Valid,
    /// Exotel defines none of the statuses (docs/providers.md §2.5 #3): by default the sim reads
    /// USED as "at least one customer completed" (still usable up to the cap while not
    /// expired); knob `used_after` picks another count (5 = "the quota of 5 is spent").
    Used,
    /// 24 h after creation.
    Expired,
}

impl TokenStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Used => "USED",
            Self::Expired => "EXPIRED",
        }
    }
}

/// One customer who finished onboarding with a token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerView {
    /// `customer-<n>`, 1-based per token.
    pub customer_id: String,
    /// When they finished (sim ms).
    pub completed_ms: i64,
    /// Played automatically by the sandbox.
    pub by_sandbox: bool,
}

/// A token as the control API and tests see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenView {
    /// The token (UUID).
    pub token: String,
    /// Full onboarding URL.
    pub onboarding_url: String,
    /// Owning account.
    pub sid: String,
    /// Region it was minted in.
    pub region: ExotelRegion,
    /// Status now.
    pub status: TokenStatus,
    /// Creation (sim ms).
    pub created_ms: i64,
    /// Expiry (sim ms).
    pub expires_ms: i64,
    /// First validation call (sim ms), which starts the sandbox customer's delay.
    pub first_validated_ms: Option<i64>,
    /// Customers who completed.
    pub customers: Vec<CustomerView>,
}

/// Why a customer could not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    /// No such token.
    #[error("unknown token")]
    NotFound,
    /// The 24 h are over.
    #[error("token expired")]
    Expired,
    /// The per-token customer cap is reached.
    #[error("token already onboarded the maximum number of customers")]
    Full,
}

#[derive(Debug)]
struct Token {
    sid: String,
    region: ExotelRegion,
    created_ms: i64,
    first_validated_ms: Option<i64>,
    sandbox_done: bool,
    customers: Vec<CustomerView>,
}

/// All tokens, both regions.
#[derive(Debug, Default)]
pub(super) struct State {
    tokens: HashMap<String, Token>,
    /// Completions after which a token reads USED (knob `used_after`; 0 is read as 1).
    pub(super) used_after: usize,
}

fn expires_ms(cfg: &ExotelSimConfig, t: &Token) -> i64 {
    t.created_ms + (cfg.token_ttl_secs as i64) * 1000
}

/// Brings the sandbox customer in if their time has come (lazy, clock-driven).
fn settle(cfg: &ExotelSimConfig, t: &mut Token, now: i64) {
    if !cfg.sandbox || t.sandbox_done {
        return;
    }
    let Some(v) = t.first_validated_ms else {
        return;
    };
    let at = v + cfg.customer_delay_ms as i64;
    if now < at {
        return;
    }
    t.sandbox_done = true;
    if at < expires_ms(cfg, t) && t.customers.len() < cfg.customers_per_token {
        let n = t.customers.len() + 1;
        t.customers.push(CustomerView { customer_id: format!("customer-{n}"), completed_ms: at, by_sandbox: true });
    }
}

fn status(cfg: &ExotelSimConfig, t: &Token, used_after: usize, now: i64) -> TokenStatus {
    if now >= expires_ms(cfg, t) {
        TokenStatus::Expired
    } else if t.customers.len() < used_after.max(1) {
        TokenStatus::Valid
    } else {
        TokenStatus::Used
    }
}

fn view(cfg: &ExotelSimConfig, token: &str, t: &Token, used_after: usize, now: i64) -> TokenView {
    TokenView {
        token: token.to_string(),
        onboarding_url: format!("{ONBOARDING_URL_BASE}{token}"),
        sid: t.sid.clone(),
        region: t.region,
        status: status(cfg, t, used_after, now),
        created_ms: t.created_ms,
        expires_ms: expires_ms(cfg, t),
        first_validated_ms: t.first_validated_ms,
        customers: t.customers.clone(),
    }
}

impl State {
    /// No tokens; `USED` after `used_after` completions.
    pub(super) fn with_used_after(used_after: usize) -> Self {
        Self { tokens: HashMap::new(), used_after }
    }

    /// Mints one token for `sid` and returns it.
    pub(super) fn mint(&mut self, sid: &str, region: ExotelRegion, now: i64) -> String {
        let token = uuid::Uuid::new_v4().to_string();
        self.tokens.insert(
            token.clone(),
            Token {
                sid: sid.to_string(),
                region,
                created_ms: now,
                first_validated_ms: None,
                sandbox_done: false,
                customers: Vec::new(),
            },
        );
        token
    }

    /// The validate call: status of `token` if it belongs to `sid` in `region`. Records the
    /// first validation (start of the sandbox customer's delay).
    pub(super) fn validate(
        &mut self,
        cfg: &ExotelSimConfig,
        sid: &str,
        region: ExotelRegion,
        token: &str,
        now: i64,
    ) -> Option<TokenStatus> {
        let t = self.tokens.get_mut(token).filter(|t| t.sid == sid && t.region == region)?;
        settle(cfg, t, now);
        if t.first_validated_ms.is_none() {
            t.first_validated_ms = Some(now);
        }
        Some(status(cfg, t, self.used_after, now))
    }

    pub(super) fn view(&mut self, cfg: &ExotelSimConfig, token: &str, now: i64) -> Option<TokenView> {
        let used_after = self.used_after;
        let t = self.tokens.get_mut(token)?;
        settle(cfg, t, now);
        Some(view(cfg, token, t, used_after, now))
    }

    pub(super) fn views(&mut self, cfg: &ExotelSimConfig, now: i64) -> Vec<TokenView> {
        let used_after = self.used_after;
        let mut out: Vec<TokenView> = self
            .tokens
            .iter_mut()
            .map(|(k, t)| {
                settle(cfg, t, now);
                view(cfg, k, t, used_after, now)
            })
            .collect();
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.token.cmp(&b.token)));
        out
    }

    /// `times` customers finish with `token`, all or none: refused whole when the link
    /// expired or the customers would pass the per-token cap ("up to five different
    /// customers within the 24-hour timeframe", docs/providers.md §2.2 [C]).
    pub(super) fn complete(
        &mut self,
        cfg: &ExotelSimConfig,
        token: &str,
        times: usize,
        now: i64,
    ) -> Result<TokenView, CompleteError> {
        let used_after = self.used_after;
        let t = self.tokens.get_mut(token).ok_or(CompleteError::NotFound)?;
        settle(cfg, t, now);
        if now >= expires_ms(cfg, t) {
            return Err(CompleteError::Expired);
        }
        if t.customers.len().saturating_add(times) > cfg.customers_per_token {
            return Err(CompleteError::Full);
        }
        for _ in 0..times {
            let n = t.customers.len() + 1;
            t.customers.push(CustomerView {
                customer_id: format!("customer-{n}"),
                completed_ms: now,
                by_sandbox: false,
            });
        }
        Ok(view(cfg, token, t, used_after, now))
    }
}
