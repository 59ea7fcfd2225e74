//! The rules of tenant names and API keys that every layer applies alike (core when it issues
//! and checks keys, the configuration when it reads keys from the file): kept here, pure, so
//! neither has to import the other.

use sha2::{Digest, Sha256};

/// Prefix of every API key, so leaked keys are recognisable by secret scanners.
pub const KEY_PREFIX: &str = "wao_";

/// Hash of an API key as stored and looked up (SHA-256 of the whole key).
pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Why a tenant name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant names are 1 to 63 lowercase letters, digits or '-'")]
pub struct TenantNameError;

/// Validates a tenant name: what `tenant create NAME` and `auth.keys` accept.
pub fn validate_tenant_name(name: &str) -> Result<(), TenantNameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(TenantNameError) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for good in ["a", "acme-2", &"x".repeat(63)] {
            assert_eq!(validate_tenant_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Acme", "a_b", "a.b", &"x".repeat(64)] {
            assert_eq!(validate_tenant_name(bad), Err(TenantNameError), "{bad}");
        }
    }

    #[test]
    fn keys_hash_to_their_sha256() {
        assert_eq!(hex::encode(hash_key("wao_x")), hex::encode(Sha256::digest(b"wao_x")));
        assert_eq!(hash_key("wao_x").len(), 32);
    }
}
