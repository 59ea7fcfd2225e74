//! A secret value: redacted in `Debug` and `Display`, zeroed on drop, readable only through
//! an explicit `expose()` call that is easy to grep for.

use std::fmt;

/// A secret string (credential, token, API key).
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(secrecy::SecretString::from(s.into()))
    }

    /// The secret itself. Call only where it must leave the process (an HTTP header to the
    /// provider, an encrypted column, an RPC documented to return it).
    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

/// Constant-time comparison: equality of secrets must not leak timing.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.expose().as_bytes().ct_eq(other.expose().as_bytes()).into()
    }
}
impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Serde for a map of secrets in plaintext, for values that are only ever serialized to be
/// sealed at once (`#[serde(with = "crate::domain::secret::exposed_map")]`).
pub mod exposed_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Secret;

    /// Writes the plaintext values.
    pub fn serialize<S: Serializer>(m: &BTreeMap<String, Secret>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().map(|(k, v)| (k.as_str(), v.expose())).collect::<BTreeMap<_, _>>().serialize(s)
    }

    /// Reads them back.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Secret>, D::Error> {
        BTreeMap::<String, Secret>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret([REDACTED])");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s, Secret::new("hunter2"));
        assert_ne!(s, Secret::new("hunter3"));
    }
}
