//! Closed vocabularies of provider options that the details, the provider port and the gRPC
//! edge share: parsed once at the edge (a bad value is a field violation there), stored by
//! their serde names, never compared as strings.

use serde::{Deserialize, Serialize};

/// How a subscription's events reach the URL (Gupshup `modes`). Stored by variant name
/// (`Body`, `Path`...), as the sealed start request always stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WebhookMode {
    /// Not chosen: the provider applies its own default (Gupshup, which has no modes).
    #[default]
    Unspecified,
    /// Event in the body.
    Body,
    /// Event in the path.
    Path,
    /// Event in the method.
    Method,
}

/// Channel mode (Whapi). Stored in lowercase (`trial`, `sandbox`, `live`), as the details
/// always stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelMode {
    /// The free trial a new channel starts in (Whapi: 5 days).
    Trial,
    /// A developer channel (wire value `dev`); set only in the partner dashboard.
    Sandbox,
    /// Live (paid).
    Live,
}

impl ChannelMode {
    /// Every mode, in the order the API lists them.
    pub const ALL: [Self; 3] = [Self::Trial, Self::Sandbox, Self::Live];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trial => "trial",
            Self::Sandbox => "sandbox",
            Self::Live => "live",
        }
    }
}

impl TryFrom<String> for ChannelMode {
    type Error = String;
    /// A stored name back (details read leniently: anything else is no mode).
    fn try_from(s: String) -> Result<Self, String> {
        Self::ALL.into_iter().find(|m| m.as_str() == s).ok_or(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_are_what_was_stored_before() {
        let names: Vec<String> =
            ChannelMode::ALL.iter().map(|m| serde_json::to_value(m).unwrap().as_str().unwrap().to_string()).collect();
        assert_eq!(names, ["trial", "sandbox", "live"]);
        for m in ChannelMode::ALL {
            assert_eq!(ChannelMode::try_from(m.as_str().to_string()), Ok(m));
        }
        assert!(ChannelMode::try_from("dev".to_string()).is_err());
        assert_eq!(serde_json::to_value(WebhookMode::Body).unwrap(), "Body");
        assert_eq!(serde_json::from_value::<WebhookMode>("Method".into()).unwrap(), WebhookMode::Method);
    }
}
