//! What the provider folders say about an account before an adapter is built for it: where its
//! API is (the provider's public host, or the in-process simulator standing in for that host)
//! and what its credentials must look like. Each question is one exhaustive `match` over the
//! providers that asks the provider's folder, so a new [`ProviderKind`] cannot be forgotten.

use std::collections::HashMap;

use crate::domain::ProviderKind;
use crate::domain::account::{AccountOptions, Credentials};

/// One problem with one credential field, found before any call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialProblem {
    /// The field inside the provider's credentials (`email`, `api_token`).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl CredentialProblem {
    /// A problem with `field`.
    pub(crate) const fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }
}

/// The provider's public API base URL for an account with these options.
pub fn public_base_url(kind: ProviderKind, options: &AccountOptions) -> &'static str {
    match kind {
        ProviderKind::Gupshup => super::gupshup::BASE_URL,
        ProviderKind::Exotel => super::exotel::public_base_url(options),
        ProviderKind::Whapi => super::whapi::MANAGER_BASE_URL,
        ProviderKind::Digital99 => super::digital99::DEFAULT_BASE_URL,
    }
}

/// What is wrong with these credentials before any call (empty: nothing), by the rules of
/// their provider's folder.
pub fn credential_problems(credentials: &Credentials) -> Vec<CredentialProblem> {
    match credentials {
        Credentials::Gupshup { email, secret } => super::gupshup::credential_problems(email, secret),
        Credentials::Exotel { account_sid, api_key, api_token } => {
            super::exotel::credential_problems(account_sid, api_key, api_token)
        }
        Credentials::Whapi { partner_token } => super::whapi::credential_problems(partner_token),
        Credentials::Digital99 { client_id, client_secret } => {
            super::digital99::credential_problems(client_id, client_secret)
        }
    }
}

/// The in-process simulators, each by the public base URL it stands in for. Data handed in
/// by whoever runs them (`app.rs` fills it from the sandbox), so no adapter and no use case
/// names a simulator.
#[derive(Debug, Clone, Default)]
pub struct SandboxEndpoints {
    by_public_url: HashMap<&'static str, String>,
}

impl SandboxEndpoints {
    /// No simulator yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends sandbox accounts' calls meant for `public` (a provider's public base URL, such as
    /// [`super::exotel::MUMBAI_BASE_URL`]) to `url`.
    pub fn insert(&mut self, public: &'static str, url: impl Into<String>) -> &mut Self {
        self.by_public_url.insert(public, url.into());
        self
    }

    /// The simulator standing in for `public`, if one runs.
    pub fn get(&self, public: &str) -> Option<&str> {
        self.by_public_url.get(public).map(String::as_str)
    }
}

/// Why an account has no base URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// A sandbox account, and this deployment runs no simulators.
    #[error("the sandbox does not run in this deployment")]
    NoSandbox,
    /// A sandbox account whose provider host has no simulator.
    #[error("the sandbox runs no simulator for {0}")]
    NoSimulator(&'static str),
}

/// Where accounts' provider APIs are: an account's endpoint override, the simulator for a
/// sandbox account, else the provider's public host.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    sandbox: Option<SandboxEndpoints>,
}

impl Endpoints {
    /// With the simulators of `sandbox`, when they run.
    pub fn new(sandbox: Option<SandboxEndpoints>) -> Self {
        Self { sandbox }
    }

    /// Whether the simulators run (sandbox accounts can be served).
    pub fn sandbox_running(&self) -> bool {
        self.sandbox.is_some()
    }

    /// The API base URL for an account of `kind` with `options`, `sandbox` or not.
    pub fn base_url(
        &self,
        kind: ProviderKind,
        options: &AccountOptions,
        sandbox: bool,
    ) -> Result<String, EndpointError> {
        if let Some(ep) = &options.endpoint {
            return Ok(ep.trim_end_matches('/').to_string());
        }
        let public = public_base_url(kind, options);
        if !sandbox {
            return Ok(public.to_string());
        }
        let sims = self.sandbox.as_ref().ok_or(EndpointError::NoSandbox)?;
        sims.get(public).map(str::to_string).ok_or(EndpointError::NoSimulator(public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Secret;
    use crate::domain::account::ExotelRegion;

    fn region(r: ExotelRegion) -> AccountOptions {
        AccountOptions { exotel_region: Some(r), ..Default::default() }
    }

    #[test]
    fn public_hosts_come_from_the_provider_folders() {
        let none = AccountOptions::default();
        assert_eq!(public_base_url(ProviderKind::Gupshup, &none), "https://partner.gupshup.io");
        assert_eq!(public_base_url(ProviderKind::Exotel, &none), "https://api.exotel.com", "Singapore by default");
        assert_eq!(public_base_url(ProviderKind::Exotel, &region(ExotelRegion::Mumbai)), "https://api.in.exotel.com");
        assert_eq!(public_base_url(ProviderKind::Whapi, &none), "https://manager.whapi.cloud");
        assert_eq!(public_base_url(ProviderKind::Digital99, &none), "https://partners.99digital.co.il");
    }

    #[test]
    fn sandbox_accounts_go_to_the_simulator_of_their_host_and_overrides_win() {
        let mut sims = SandboxEndpoints::new();
        sims.insert(super::super::exotel::SINGAPORE_BASE_URL, "http://127.0.0.1:1")
            .insert(super::super::exotel::MUMBAI_BASE_URL, "http://127.0.0.1:2");
        let e = Endpoints::new(Some(sims));
        assert!(e.sandbox_running());
        let sg = region(ExotelRegion::Singapore);
        let mumbai = region(ExotelRegion::Mumbai);
        assert_eq!(e.base_url(ProviderKind::Exotel, &sg, true).unwrap(), "http://127.0.0.1:1");
        assert_eq!(e.base_url(ProviderKind::Exotel, &mumbai, true).unwrap(), "http://127.0.0.1:2");
        assert_eq!(e.base_url(ProviderKind::Exotel, &mumbai, false).unwrap(), "https://api.in.exotel.com");
        let none = AccountOptions::default();
        assert_eq!(
            e.base_url(ProviderKind::Whapi, &none, true),
            Err(EndpointError::NoSimulator("https://manager.whapi.cloud"))
        );
        let custom = AccountOptions { endpoint: Some("http://staging.test/".into()), ..Default::default() };
        assert_eq!(e.base_url(ProviderKind::Whapi, &custom, true).unwrap(), "http://staging.test");
        let off = Endpoints::new(None);
        assert!(!off.sandbox_running());
        assert_eq!(off.base_url(ProviderKind::Gupshup, &none, true), Err(EndpointError::NoSandbox));
        assert_eq!(off.base_url(ProviderKind::Gupshup, &none, false).unwrap(), "https://partner.gupshup.io");
    }

    #[test]
    fn each_provider_names_its_missing_credential_fields() {
        let fields = |c: &Credentials| credential_problems(c).iter().map(|p| p.field).collect::<Vec<_>>();
        let empty = Secret::new("");
        assert_eq!(fields(&Credentials::Gupshup { email: "nope".into(), secret: empty.clone() }), ["email", "secret"]);
        assert!(fields(&Credentials::Gupshup { email: "a@b.c".into(), secret: Secret::new("s") }).is_empty());
        let exotel = Credentials::Exotel { account_sid: " ".into(), api_key: String::new(), api_token: empty.clone() };
        assert_eq!(fields(&exotel), ["account_sid", "api_key", "api_token"]);
        assert_eq!(fields(&Credentials::Whapi { partner_token: empty.clone() }), ["partner_token"]);
        let d99 = Credentials::Digital99 { client_id: "id".into(), client_secret: empty };
        assert_eq!(fields(&d99), ["client_secret"]);
    }
}
