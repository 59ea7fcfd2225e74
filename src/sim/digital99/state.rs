//! Partner state: access tokens, login throttling, registered numbers, onboarding accounts.
//! Transitions are computed from timestamps (`settle`) so advancing the clock drives them.

use std::collections::HashMap;

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Digital99SimConfig;

const DAY_MS: i64 = 86_400_000;

/// 99digital reason codes used by the sim.
pub(super) mod reason {
    /// The call succeeded: the `reason` of every `"status": "OK"` answer.
    pub(crate) const OK: u32 = 1;
    /// Wrong client_id/secret or malformed login JSON.
    pub(crate) const WRONG_CREDENTIALS: u32 = 2;
    /// Token missing/expired; also "blocked after failed logins".
    pub(crate) const TOKEN: u32 = 3;
    /// Number empty/wrong; [I] also other invalid input.
    pub(crate) const BAD_INPUT: u32 = 4;
    /// Use GET/DELETE/POST.
    pub(crate) const WRONG_VERB: u32 = 13;
    /// setWebhook: url invalid.
    pub(crate) const BAD_URL: u32 = 13;
    /// [I] 4th code request for one number.
    pub(crate) const TOO_MANY_CODES: u32 = 20;
    /// [I] more than the allowed registered numbers waiting.
    pub(crate) const TOO_MANY_NUMBERS: u32 = 21;
    /// [I] wrong verification code.
    pub(crate) const WRONG_CODE: u32 = 22;
    /// [I] number not registered / not verified.
    pub(crate) const NOT_VERIFIED: u32 = 23;
    /// [I] an onboarding account already exists for the number.
    pub(crate) const ACCOUNT_EXISTS: u32 = 24;
    /// Cannot remove a finished account.
    pub(crate) const FINISHED: u32 = 25;
    /// Onboarding account not found.
    pub(crate) const NOT_FOUND: u32 = 26;
    /// Use PATCH.
    pub(crate) const USE_PATCH: u32 = 27;
    /// onboarding_logo invalid.
    pub(crate) const BAD_LOGO: u32 = 28;
    /// onboarding_message invalid.
    pub(crate) const BAD_MESSAGE: u32 = 29;
    /// onboarding_button invalid.
    pub(crate) const BAD_BUTTON: u32 = 30;
    /// onboarding_success / onboarding_failed invalid.
    pub(crate) const BAD_SUCCESS_FAILED: u32 = 31;
}

/// An onboarding account as the control API and tests see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountView {
    /// Owning partner.
    pub client_id: String,
    /// The real number.
    pub whatsapp: String,
    /// The number `getAccounts` shows now (temporary `97257…` for unfinished coexistence).
    pub listed_whatsapp: String,
    /// 0 or 1.
    pub coexistence: u8,
    /// 0 not finished, 1 finished.
    pub status: u8,
    /// Unix seconds.
    pub create_time: i64,
    /// When it finished (sim ms).
    pub finished_ms: Option<i64>,
    /// Link for the business owner.
    pub onboarding_link: String,
    /// Generated landing page.
    pub landing_page: String,
    /// Partner's reference.
    pub reference: String,
    /// Whether the finish webhook was handed to delivery.
    pub webhook_sent: bool,
}

/// Why a finish could not be played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FinishError {
    /// No account for that number.
    #[error("onboarding account not found")]
    NotFound,
    /// Already finished.
    #[error("onboarding account already finished")]
    AlreadyFinished,
}

#[derive(Debug)]
struct AccessToken {
    client_id: String,
    expires_ms: i64,
}

#[derive(Debug, Default)]
struct LoginGuard {
    consecutive_failures: u32,
    blocked_until_ms: Option<i64>,
}

#[derive(Debug)]
pub(super) struct Number {
    pub(super) code: String,
    code_requests: u32,
    registered_ms: i64,
    verified: bool,
}

#[derive(Debug, Clone)]
pub(super) struct NewAccount {
    pub(super) whatsapp: String,
    pub(super) business_name: String,
    pub(super) business_email: String,
    pub(super) business_id: String,
    pub(super) business_address: String,
    pub(super) display_name: String,
    pub(super) reference: String,
    pub(super) coexistence: u8,
}

#[derive(Debug)]
struct Account {
    fields: NewAccount,
    create_ms: i64,
    temp_number: Option<String>,
    onboarding_link: String,
    landing_page: String,
    finished_ms: Option<i64>,
    webhook_sent: bool,
}

impl Account {
    fn listed_whatsapp(&self) -> &str {
        match (&self.temp_number, self.finished_ms) {
            (Some(t), None) => t,
            _ => &self.fields.whatsapp,
        }
    }

    fn matches(&self, number: &str) -> bool {
        self.fields.whatsapp == number || self.temp_number.as_deref() == Some(number)
    }

    fn view(&self, client_id: &str) -> AccountView {
        AccountView {
            client_id: client_id.to_string(),
            whatsapp: self.fields.whatsapp.clone(),
            listed_whatsapp: self.listed_whatsapp().to_string(),
            coexistence: self.fields.coexistence,
            status: u8::from(self.finished_ms.is_some()),
            create_time: self.create_ms / 1000,
            finished_ms: self.finished_ms,
            onboarding_link: self.onboarding_link.clone(),
            landing_page: self.landing_page.clone(),
            reference: self.fields.reference.clone(),
            webhook_sent: self.webhook_sent,
        }
    }
}

#[derive(Debug, Default)]
struct Partner {
    webhook_url: Option<String>,
    business: Map<String, Value>,
    numbers: HashMap<String, Number>,
    accounts: Vec<Account>,
}

impl Partner {
    fn account_for(&self, number: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.matches(number))
    }
}

/// Everything the sim remembers.
#[derive(Debug, Default)]
pub(super) struct State {
    tokens: HashMap<String, AccessToken>,
    logins: HashMap<String, LoginGuard>,
    partners: HashMap<String, Partner>,
}

fn random_digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

impl State {
    /// `POST /api/settings/accessToken`. `Ok((token, expiration unix s))` or a reason.
    /// [I] Throttling is per `client_id`: the Nth consecutive failure (N = `max_failed_logins`)
    /// still answers 2 and starts a block of `block_secs`; during the block every attempt,
    /// right or wrong, answers 3 and neither counts nor extends it. A success resets the count.
    pub(super) fn login(
        &mut self,
        cfg: &Digital99SimConfig,
        id: &str,
        secret: &str,
        now: i64,
    ) -> Result<(String, i64), u32> {
        let guard = self.logins.entry(id.to_string()).or_default();
        match guard.blocked_until_ms {
            Some(until) if now < until => return Err(reason::TOKEN),
            Some(_) => *guard = LoginGuard::default(),
            None => {}
        }
        if !cfg.clients.iter().any(|c| c.client_id == id && c.client_secret == secret) {
            guard.consecutive_failures += 1;
            if guard.consecutive_failures >= cfg.max_failed_logins {
                guard.blocked_until_ms = Some(now + cfg.block_secs as i64 * 1000);
            }
            return Err(reason::WRONG_CREDENTIALS);
        }
        *guard = LoginGuard::default();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires_ms = now + cfg.token_ttl_secs as i64 * 1000;
        self.tokens.insert(token.clone(), AccessToken { client_id: id.to_string(), expires_ms });
        Ok((token, expires_ms / 1000))
    }

    /// The partner behind a Bearer token, if it is known and not expired.
    pub(super) fn client_for(&self, token: &str, now: i64) -> Option<String> {
        self.tokens.get(token).filter(|t| now < t.expires_ms).map(|t| t.client_id.clone())
    }

    fn partner(&mut self, client: &str) -> &mut Partner {
        self.partners.entry(client.to_string()).or_default()
    }

    /// Sandbox finishes and number expiry; returns the webhooks now due as `(url, body)`.
    pub(super) fn settle(&mut self, cfg: &Digital99SimConfig, now: i64) -> Vec<(String, Value)> {
        let mut due = Vec::new();
        let ttl = cfg.number_ttl_days as i64 * DAY_MS;
        for p in self.partners.values_mut() {
            let Partner { numbers, accounts, webhook_url, .. } = p;
            numbers.retain(|n, num| now < num.registered_ms + ttl || accounts.iter().any(|a| a.matches(n)));
            for a in accounts.iter_mut() {
                if a.finished_ms.is_none() && cfg.sandbox {
                    let at = a.create_ms + cfg.finish_delay_ms as i64;
                    if now >= at {
                        a.finished_ms = Some(at);
                    }
                }
                if let (Some(at), false) = (a.finished_ms, a.webhook_sent) {
                    a.webhook_sent = true;
                    if let Some(url) = webhook_url.as_ref() {
                        // [I] Payload field list not published; simulator default.
                        let body = json!({
                            "type": "whatsapp",
                            "event": "onboarding_finished",
                            "whatsapp": a.fields.whatsapp,
                            "reference": a.fields.reference,
                            "status": 1,
                            "timestamp": at / 1000,
                        });
                        due.push((url.clone(), body));
                    }
                }
            }
        }
        due
    }

    /// `registerNumber`: stores a fresh code and returns it.
    pub(super) fn register(
        &mut self,
        cfg: &Digital99SimConfig,
        client: &str,
        whatsapp: &str,
        now: i64,
    ) -> Result<String, u32> {
        let code = if cfg.sandbox { cfg.sandbox_code.clone() } else { random_digits(6) };
        let p = self.partner(client);
        if let Some(n) = p.numbers.get_mut(whatsapp) {
            // [I] The 3-request cap lasts as long as the registration (no hourly reset).
            if n.code_requests >= cfg.max_code_requests {
                return Err(reason::TOO_MANY_CODES);
            }
            n.code_requests += 1;
            n.code = code.clone();
            return Ok(code);
        }
        // [I] The 500 cap counts numbers still waiting (no onboarding account yet).
        let waiting = p.numbers.keys().filter(|n| p.account_for(n).is_none()).count();
        if waiting >= cfg.max_registered_numbers {
            return Err(reason::TOO_MANY_NUMBERS);
        }
        p.numbers.insert(
            whatsapp.to_string(),
            Number { code: code.clone(), code_requests: 1, registered_ms: now, verified: false },
        );
        Ok(code)
    }

    /// `verifyNumber`: checks `code` against the last one sent to `whatsapp` and marks the
    /// number verified; the error is the reason code to answer with.
    pub(super) fn verify(&mut self, client: &str, whatsapp: &str, code: &str) -> Result<(), u32> {
        let n = self.partner(client).numbers.get_mut(whatsapp).ok_or(reason::NOT_VERIFIED)?;
        if n.code != code {
            return Err(reason::WRONG_CODE);
        }
        n.verified = true;
        Ok(())
    }

    /// `getRegisteredNumbers` list items.
    pub(super) fn registered_numbers(&mut self, cfg: &Digital99SimConfig, client: &str) -> Vec<Value> {
        let ttl_s = cfg.number_ttl_days as i64 * 86_400;
        let p = self.partner(client);
        // [C] "Once you create an account with a WhatsApp number, the number will be removed
        // from this list" (docs/providers.md §4.2); `registered_keeps_link` keeps it, as the
        // vendor's sample does.
        let keep = cfg.registered_keeps_link;
        let mut items: Vec<(i64, Value)> = p
            .numbers
            .iter()
            .filter(|(w, _)| keep || p.account_for(w).is_none())
            .map(|(w, n)| {
                let acc = p.account_for(w);
                // [I] comment wording.
                let comment = match (acc, n.verified) {
                    (Some(_), _) => "onboarding link created",
                    (None, true) => "verified",
                    (None, false) => "waiting for verification code",
                };
                let item = json!({
                    "whatsapp": w,
                    "expiration": n.registered_ms / 1000 + ttl_s,
                    "onboarding_link": acc.map(|a| a.onboarding_link.clone()),
                    "comment": comment,
                });
                (n.registered_ms, item)
            })
            .collect();
        items.sort_by_key(|(t, _)| *t);
        items.into_iter().map(|(_, v)| v).collect()
    }

    /// `createAccount`: returns the new account's `(onboarding_link, landing_page)`.
    ///
    /// In sandbox mode a number the partner never registered through the API counts as
    /// registered and verified (the simulated owner did it in the partner dashboard), so a
    /// sandbox link can be created with no code round-trip; a number registered through the
    /// API still needs its code, as at 99digital.
    pub(super) fn create_account(
        &mut self,
        cfg: &Digital99SimConfig,
        client: &str,
        new: NewAccount,
        now: i64,
    ) -> Result<(String, String), u32> {
        let p = self.partner(client);
        if cfg.sandbox && !p.numbers.contains_key(&new.whatsapp) {
            let pre = Number { code: cfg.sandbox_code.clone(), code_requests: 0, registered_ms: now, verified: true };
            p.numbers.insert(new.whatsapp.clone(), pre);
        }
        if !p.numbers.get(&new.whatsapp).is_some_and(|n| n.verified) {
            return Err(reason::NOT_VERIFIED);
        }
        if p.account_for(&new.whatsapp).is_some() {
            return Err(reason::ACCOUNT_EXISTS);
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        // [I] URL shapes of the link and the landing page.
        let onboarding_link = format!("https://partners.99digital.co.il/onboarding/{id}");
        let landing_page = format!("https://partners.99digital.co.il/landing/{id}");
        // [C] unfinished coexistence accounts show a temporary number starting 97257.
        let temp_number = (new.coexistence == 1).then(|| format!("97257{}", random_digits(7)));
        p.accounts.push(Account {
            fields: new,
            create_ms: now,
            temp_number,
            onboarding_link: onboarding_link.clone(),
            landing_page: landing_page.clone(),
            finished_ms: None,
            webhook_sent: false,
        });
        Ok((onboarding_link, landing_page))
    }

    /// `getAccounts` list items (seed 003 shape).
    pub(super) fn accounts_list(&mut self, client: &str) -> Vec<Value> {
        self.partner(client)
            .accounts
            .iter()
            .map(|a| {
                json!({
                    "create_time": a.create_ms / 1000,
                    "whatsapp": a.listed_whatsapp(),
                    "coexistence": a.fields.coexistence,
                    "business_name": a.fields.business_name,
                    "business_email": a.fields.business_email,
                    "business_id": a.fields.business_id,
                    "business_address": a.fields.business_address,
                    "landing_page": a.landing_page,
                    "onboarding_link": a.onboarding_link,
                    "display_name": a.fields.display_name,
                    "reference": a.fields.reference,
                    "status": u8::from(a.finished_ms.is_some()),
                })
            })
            .collect()
    }

    /// `deleteAccount` (real or temporary number). [I] The registered number stays, so a new
    /// link can be created for it.
    pub(super) fn delete_account(&mut self, client: &str, whatsapp: &str) -> Result<(), u32> {
        let p = self.partner(client);
        let idx = p.accounts.iter().position(|a| a.matches(whatsapp)).ok_or(reason::NOT_FOUND)?;
        if p.accounts[idx].finished_ms.is_some() {
            return Err(reason::FINISHED);
        }
        p.accounts.remove(idx);
        Ok(())
    }

    pub(super) fn set_webhook(&mut self, client: &str, url: &str) {
        self.partner(client).webhook_url = Some(url.to_string());
    }

    pub(super) fn webhook_url(&self, client: &str) -> Option<String> {
        self.partners.get(client).and_then(|p| p.webhook_url.clone())
    }

    pub(super) fn set_business(&mut self, client: &str, fields: &Map<String, Value>) {
        let p = self.partner(client);
        for (k, v) in fields {
            p.business.insert(k.clone(), v.clone());
        }
    }

    /// Control: the number's record in any partner.
    pub(super) fn code(&self, whatsapp: &str) -> Option<&Number> {
        self.partners.values().find_map(|p| p.numbers.get(whatsapp))
    }

    /// Control: `{whatsapp, code, code_requests, verified}`.
    pub(super) fn code_view(&self, whatsapp: &str) -> Option<Value> {
        self.code(whatsapp).map(|n| {
            json!({ "whatsapp": whatsapp, "code": n.code, "code_requests": n.code_requests, "verified": n.verified })
        })
    }

    pub(super) fn account_views(&self) -> Vec<AccountView> {
        let mut out: Vec<AccountView> =
            self.partners.iter().flat_map(|(c, p)| p.accounts.iter().map(move |a| a.view(c))).collect();
        out.sort_by(|a, b| a.create_time.cmp(&b.create_time).then_with(|| a.whatsapp.cmp(&b.whatsapp)));
        out
    }

    pub(super) fn finish(&mut self, whatsapp: &str, now: i64) -> Result<AccountView, FinishError> {
        for (c, p) in self.partners.iter_mut() {
            if let Some(a) = p.accounts.iter_mut().find(|a| a.matches(whatsapp)) {
                if a.finished_ms.is_some() {
                    return Err(FinishError::AlreadyFinished);
                }
                a.finished_ms = Some(now);
                return Ok(a.view(c));
            }
        }
        Err(FinishError::NotFound)
    }
}
