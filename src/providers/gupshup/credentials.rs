//! Issue 17 point 15: Gupshup's 2026 credential changes as they touch the tech-provider
//! flow (docs/providers.md §1.2, §1.7). Client secrets now expire (newly generated ones after at
//! most 3 months) and Gupshup has no API that says when, so the account declares the date
//! (`AccountOptions::secret_expire_ms`, proto `GupshupOptions.client_secret_expire_time`);
//! this module turns it into a warning ahead of time and into a typed error once a login is
//! refused after it.

use std::time::Duration;

use crate::domain::account::AccountOptions;
use crate::domain::{Secret, UnixMs};
use crate::providers::accounts::CredentialProblem;
use crate::providers::{CredentialExpiry, CredentialExpiryState, ProviderError};

/// What Gupshup credentials need before any call: the partner portal's login email and its
/// client secret (docs/providers.md §1.2 [C]).
pub fn credential_problems(email: &str, secret: &Secret) -> Vec<CredentialProblem> {
    let mut out = Vec::new();
    // An address fits in 320 characters (64 local + @ + 255 domain).
    if !email.contains('@') || email.len() > 320 {
        out.push(CredentialProblem::new("email", "must be an email address"));
    }
    if secret.is_empty() {
        out.push(CredentialProblem::new("secret", "is required"));
    }
    out
}

/// [I] How long before the client secret's expiry we start warning. Gupshup sends no
/// reminder ("expiry reminders" are only on its roadmap, docs/providers.md §1.2 [C]); 14 days
/// leaves time to generate a new secret (Settings > API client details) and update the
/// account.
const SECRET_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Where to get a new secret, in the portal's words (docs/providers.md §1.2 [C]).
const RENEW_HINT: &str =
    "generate a new one in the Gupshup portal (Settings > API client details) and update the account";

/// `2026-11-21T10:00:00Z`.
fn rfc3339(ms: UnixMs) -> String {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: 0 }.to_string()
}

/// The declared client-secret expiry, where it stands at `now`.
pub(super) fn secret_expiry(options: &AccountOptions, now: UnixMs) -> Option<CredentialExpiry> {
    let at = options.secret_expire_ms?;
    let lead = i64::try_from(SECRET_EXPIRY_WARNING.as_millis()).unwrap_or(i64::MAX);
    let (state, warning) = if now >= at {
        (CredentialExpiryState::Expired, format!("Gupshup client secret expired at {}; {RENEW_HINT}", rfc3339(at)))
    } else if at.saturating_sub(now) <= lead {
        let days = (at - now) / 86_400_000;
        (
            CredentialExpiryState::Expiring,
            format!("Gupshup client secret expires at {} (in {days} days); {RENEW_HINT}", rfc3339(at)),
        )
    } else {
        (CredentialExpiryState::Valid, String::new())
    };
    Some(CredentialExpiry { expire_ms: at, state, warning })
}

/// What a refused login means: past the declared expiry, the secret lapsed
/// (`CredentialExpired`, FAILED_PRECONDITION / REAUTH_REQUIRED); otherwise `None` (the
/// plain rejection stands).
pub(super) fn expired_login(options: &AccountOptions, now: UnixMs, raw: &str) -> Option<ProviderError> {
    let x = secret_expiry(options, now).filter(|x| x.state == CredentialExpiryState::Expired)?;
    Some(ProviderError::CredentialExpired {
        raw: raw.to_string(),
        message: format!("client secret expired (expired {}); {RENEW_HINT}", rfc3339(x.expire_ms)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(at: Option<i64>) -> AccountOptions {
        AccountOptions { secret_expire_ms: at, ..Default::default() }
    }

    #[test]
    fn warns_within_the_lead_and_reports_expired_after() {
        let day = 86_400_000;
        let at = 1_800_000_000_000;
        assert_eq!(secret_expiry(&opts(None), at), None);
        assert_eq!(secret_expiry(&opts(Some(at)), at - 15 * day).map(|x| x.state), Some(CredentialExpiryState::Valid));
        let soon = secret_expiry(&opts(Some(at)), at - 3 * day).unwrap();
        assert_eq!(soon.state, CredentialExpiryState::Expiring);
        assert!(soon.warning.contains("in 3 days") && soon.warning.contains("Settings > API client details"));
        assert_eq!(secret_expiry(&opts(Some(at)), at).map(|x| x.state), Some(CredentialExpiryState::Expired));
        assert!(expired_login(&opts(Some(at)), at - 1, "401").is_none());
        assert!(matches!(expired_login(&opts(Some(at)), at + 1, "401"), Some(ProviderError::CredentialExpired { .. })));
        assert!(expired_login(&opts(None), at, "401").is_none());
    }
}
