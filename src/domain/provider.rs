//! The providers we speak to and what each can do.

use std::fmt;
use std::str::FromStr;

/// A BSP partner API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Gupshup partner API, tech-provider app linking.
    Gupshup,
    /// Exotel ISV onboarding links.
    Exotel,
    /// Whapi.Cloud partner channels.
    Whapi,
    /// 99digital partners API.
    #[serde(rename = "digital99")]
    Digital99,
}

impl ProviderKind {
    /// Every provider, in display order.
    pub const ALL: [ProviderKind; 4] = [Self::Gupshup, Self::Exotel, Self::Whapi, Self::Digital99];

    /// Stable lowercase name used in URLs, config, the store and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gupshup => "gupshup",
            Self::Exotel => "exotel",
            Self::Whapi => "whapi",
            Self::Digital99 => "digital99",
        }
    }

    /// Human name.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Gupshup => "Gupshup (tech provider)",
            Self::Exotel => "Exotel (ISV)",
            Self::Whapi => "Whapi.Cloud (partner)",
            Self::Digital99 => "99digital (partner)",
        }
    }

    /// What the provider's API offers, independent of whether our adapter for it is built.
    pub fn capabilities(self) -> &'static [Capability] {
        use Capability::*;
        match self {
            Self::Gupshup => {
                &[CheckCredentials, PartnerToken, LinkApp, AppToken, PipelineStatus, LiveEvent, Subscriptions, Lookup]
            }
            Self::Exotel => &[CheckCredentials, HostedLink, BatchLinks, TokenValidation],
            Self::Whapi => &[
                CheckCredentials,
                ChannelLifecycle,
                ConnectCode,
                ChannelMode,
                ExtendDays,
                DeleteRefund,
                PartnerBalance,
                AppToken,
                Subscriptions,
                Cancel,
                Lookup,
            ],
            Self::Digital99 => &[
                CheckCredentials,
                PartnerToken,
                NumberRegistration,
                HostedLink,
                AccountStatusPolling,
                PartnerWebhook,
                Cancel,
                Lookup,
            ],
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gupshup" => Ok(Self::Gupshup),
            "exotel" => Ok(Self::Exotel),
            "whapi" => Ok(Self::Whapi),
            "digital99" | "99digital" => Ok(Self::Digital99),
            other => Err(format!("unknown provider '{other}' (expected gupshup, exotel, whapi or digital99)")),
        }
    }
}

/// One thing a provider can do; callers read these instead of guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Credentials can be tested (`CheckAccount`).
    CheckCredentials,
    /// A partner / access token is cached and can be refreshed.
    PartnerToken,
    /// Link a WABA and phone to a provider app (Gupshup TPP).
    LinkApp,
    /// A per-app or per-channel token for messaging (`GetAppToken`).
    AppToken,
    /// Provisioning pipeline status can be polled.
    PipelineStatus,
    /// The provider calls back when the number goes live.
    LiveEvent,
    /// Webhook subscriptions can be managed.
    Subscriptions,
    /// The provider hosts the signup page; we mint links.
    HostedLink,
    /// Several links in one call.
    BatchLinks,
    /// A link token's status can be validated.
    TokenValidation,
    /// Channels can be created, listed and inspected.
    ChannelLifecycle,
    /// QR code or pairing code to connect a phone.
    ConnectCode,
    /// Trial / live mode switch.
    ChannelMode,
    /// Paid days can be added.
    ExtendDays,
    /// Deleting refunds unused days.
    DeleteRefund,
    /// The partner's balance can be read.
    PartnerBalance,
    /// A number must be registered and verified before onboarding.
    NumberRegistration,
    /// Onboarding status is polled from an account list.
    AccountStatusPolling,
    /// A partner-level webhook reports completion.
    PartnerWebhook,
    /// An onboarding can be cancelled at the provider.
    Cancel,
    /// A create with an unknown outcome is looked up and reconciled, never repeated blindly
    /// (see [`crate::providers::Provider::run_step`]).
    Lookup,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in ProviderKind::ALL {
            assert_eq!(p.as_str().parse::<ProviderKind>().unwrap(), p);
        }
        assert_eq!("99digital".parse::<ProviderKind>().unwrap(), ProviderKind::Digital99);
        assert!("twilio".parse::<ProviderKind>().is_err());
    }
}
