//! Encryption at rest: AES-256-GCM with a random 96-bit nonce, the key id stored beside the
//! ciphertext (rotation), and associated data binding each ciphertext to its row and
//! column, so a blob copied to another row does not decrypt.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::Secret;
use crate::store::Sealed;

/// Keys by id; new data is sealed with the primary one.
#[derive(Clone)]
pub struct Cipher {
    primary: String,
    keys: HashMap<String, Aes256Gcm>,
    fingerprint_key: [u8; 32],
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher(primary={}, keys={})", self.primary, self.keys.len())
    }
}

/// Why sealing or opening failed. Never carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A configured key is not 32 bytes of base64.
    #[error("encryption key '{0}' must be 32 bytes, base64-encoded")]
    BadKey(String),
    /// The blob names a key we do not have.
    #[error("no encryption key with id '{0}' (was it removed before re-encrypting?)")]
    UnknownKey(String),
    /// Tampered, truncated, or sealed for another row.
    #[error("decryption failed (wrong key, tampered data or data moved between rows)")]
    Decrypt,
}

impl Cipher {
    /// Builds from `(id, base64 key)` pairs; `primary` must be among them.
    pub fn new(primary: &str, keys: &[(String, Secret)]) -> Result<Self, CryptoError> {
        let mut map = HashMap::new();
        for (id, b64) in keys {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.expose().trim())
                .map_err(|_| CryptoError::BadKey(id.clone()))?;
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| CryptoError::BadKey(id.clone()))?;
            map.insert(id.clone(), cipher);
        }
        let Some((_, primary_b64)) = keys.iter().find(|(id, _)| id == primary) else {
            return Err(CryptoError::UnknownKey(primary.to_string()));
        };
        // A separate key for fingerprints, derived so the encryption key itself never keys
        // anything but AES.
        let mut h = Sha256::new();
        h.update(b"wa-onboard fingerprint v1");
        h.update(primary_b64.expose().trim().as_bytes());
        let fingerprint_key = h.finalize().into();
        Ok(Self { primary: primary.to_string(), keys: map, fingerprint_key })
    }

    /// A new random key, base64 (for `wa-onboard` to create a development key).
    pub fn generate_key() -> Secret {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Secret::new(base64::engine::general_purpose::STANDARD.encode(k))
    }

    /// Key for request fingerprints (idempotency hashes); derived from the primary key.
    pub fn fingerprint_key(&self) -> &[u8] {
        &self.fingerprint_key
    }

    /// Seals `plaintext`, bound to `aad` (e.g. `account/acme/credentials`).
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Sealed, CryptoError> {
        let cipher = self.keys.get(&self.primary).ok_or_else(|| CryptoError::UnknownKey(self.primary.clone()))?;
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Decrypt)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(Sealed { key_id: self.primary.clone(), blob })
    }

    /// Seals a secret string.
    pub fn seal_secret(&self, s: &Secret, aad: &str) -> Result<Sealed, CryptoError> {
        self.seal(s.expose().as_bytes(), aad)
    }

    /// Opens a blob sealed with `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<Vec<u8>, CryptoError> {
        let cipher = self.keys.get(&sealed.key_id).ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.blob.len() < 12 + 16 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = sealed.blob.split_at(12);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Decrypt)
    }

    /// Opens a sealed secret string.
    pub fn open_secret(&self, sealed: &Sealed, aad: &str) -> Result<Secret, CryptoError> {
        let raw = self.open(sealed, aad)?;
        String::from_utf8(raw).map(Secret::new).map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new("k1", &[("k1".into(), Cipher::generate_key())]).unwrap()
    }

    #[test]
    fn round_trip_and_binding() {
        let c = cipher();
        let s = c.seal(b"top secret", "account/a/credentials").unwrap();
        assert!(!s.blob.windows(10).any(|w| w == b"top secret"));
        assert_eq!(c.open(&s, "account/a/credentials").unwrap(), b"top secret");
        assert!(c.open(&s, "account/b/credentials").is_err());
        let mut t = s.clone();
        t.blob[20] ^= 1;
        assert!(c.open(&t, "account/a/credentials").is_err());
    }

    #[test]
    fn rotation_keeps_old_keys_readable() {
        let k0 = Cipher::generate_key();
        let old = Cipher::new("k0", &[("k0".into(), k0.clone())]).unwrap();
        let sealed = old.seal(b"x", "ctx").unwrap();
        let new = Cipher::new("k1", &[("k0".into(), k0), ("k1".into(), Cipher::generate_key())]).unwrap();
        assert_eq!(new.open(&sealed, "ctx").unwrap(), b"x");
        assert_eq!(new.seal(b"y", "ctx").unwrap().key_id, "k1");
    }

    #[test]
    fn bad_keys_rejected() {
        assert!(Cipher::new("k1", &[("k1".into(), Secret::new("short"))]).is_err());
        assert!(Cipher::new("k2", &[("k1".into(), Cipher::generate_key())]).is_err());
    }
}
