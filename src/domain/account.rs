//! Provider account credentials and options.

use serde::{Deserialize, Serialize};

use super::{ProviderKind, Secret};

/// Credentials for one provider. Secret parts are [`Secret`]: redacted in `Debug`.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// Gupshup partner portal login.
    Gupshup {
        /// Login email.
        email: String,
        /// Client secret.
        secret: Secret,
    },
    /// Exotel API credentials.
    Exotel {
        /// Account SID.
        account_sid: String,
        /// API key.
        api_key: String,
        /// API token.
        api_token: Secret,
    },
    /// Whapi.Cloud partner token.
    Whapi {
        /// Partner token.
        partner_token: Secret,
    },
    /// 99digital client credentials.
    Digital99 {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: Secret,
    },
}

/// The plaintext JSON form, only ever built to be encrypted or after decryption.
#[derive(Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
enum Plain {
    Gupshup { email: String, secret: String },
    Exotel { account_sid: String, api_key: String, api_token: String },
    Whapi { partner_token: String },
    Digital99 { client_id: String, client_secret: String },
}

impl Credentials {
    /// Which provider these are for.
    pub fn provider(&self) -> ProviderKind {
        match self {
            Self::Gupshup { .. } => ProviderKind::Gupshup,
            Self::Exotel { .. } => ProviderKind::Exotel,
            Self::Whapi { .. } => ProviderKind::Whapi,
            Self::Digital99 { .. } => ProviderKind::Digital99,
        }
    }

    /// Plaintext JSON, to be sealed immediately. The returned value is a secret. An error
    /// rather than an empty string: sealing "" would store credentials that are gone.
    pub fn to_sealable_json(&self) -> Result<Secret, String> {
        let plain = match self {
            Self::Gupshup { email, secret } => Plain::Gupshup { email: email.clone(), secret: secret.expose().into() },
            Self::Exotel { account_sid, api_key, api_token } => Plain::Exotel {
                account_sid: account_sid.clone(),
                api_key: api_key.clone(),
                api_token: api_token.expose().into(),
            },
            Self::Whapi { partner_token } => Plain::Whapi { partner_token: partner_token.expose().into() },
            Self::Digital99 { client_id, client_secret } => {
                Plain::Digital99 { client_id: client_id.clone(), client_secret: client_secret.expose().into() }
            }
        };
        serde_json::to_string(&plain).map(Secret::new).map_err(|e| format!("credentials do not serialise: {e}"))
    }

    /// Parses what [`Credentials::to_sealable_json`] produced.
    pub fn from_sealed_json(s: &Secret) -> Result<Self, String> {
        let plain: Plain = serde_json::from_str(s.expose())
            .map_err(|e| format!("stored credentials do not parse: {}", e.classify_name()))?;
        Ok(match plain {
            Plain::Gupshup { email, secret } => Self::Gupshup { email, secret: Secret::new(secret) },
            Plain::Exotel { account_sid, api_key, api_token } => {
                Self::Exotel { account_sid, api_key, api_token: Secret::new(api_token) }
            }
            Plain::Whapi { partner_token } => Self::Whapi { partner_token: Secret::new(partner_token) },
            Plain::Digital99 { client_id, client_secret } => {
                Self::Digital99 { client_id, client_secret: Secret::new(client_secret) }
            }
        })
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    // The error's Display may quote input (the secret); only its category is safe to show.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        }
    }
}

/// The Exotel cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExotelRegion {
    /// api.exotel.com.
    #[default]
    Singapore,
    /// api.in.exotel.com.
    Mumbai,
}

/// Provider options (non-secret), stored as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AccountOptions {
    /// Base URL override of the provider API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Gupshup default `storageRegion`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_region: Option<String>,
    /// When the Gupshup client secret expires (Unix ms), as the partner set it in the
    /// portal (issue 17 point 15; Gupshup has no API that reports it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_expire_ms: Option<i64>,
    /// Exotel cluster, which picks the public API host; `None` means Singapore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exotel_region: Option<ExotelRegion>,
    /// Whapi project for new channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Whapi partner name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_redact() {
        let c =
            Credentials::Exotel { account_sid: "sid".into(), api_key: "key".into(), api_token: Secret::new("tok-123") };
        assert!(!format!("{c:?}").contains("tok-123"));
        let back = Credentials::from_sealed_json(&c.to_sealable_json().unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.provider(), ProviderKind::Exotel);
        let err = Credentials::from_sealed_json(&Secret::new("{\"provider\":\"nope\",\"x\":\"tok-123\"}")).unwrap_err();
        assert!(!err.contains("tok-123"));
    }
}
