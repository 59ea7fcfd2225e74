//! Standard Webhooks signing (<https://www.standardwebhooks.com>, spec 1.0.0): a secret is
//! `whsec_` followed by the base64 of its key bytes; a signature is
//! `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`; a request carries the
//! headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`, which holds
//! several space-separated signatures while a rotated secret is still honoured, so receivers
//! verify with any of the specification's libraries.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

use crate::domain::Secret;

/// The prefix of every secret (Standard Webhooks: "whsec_" then base64).
pub const SECRET_PREFIX: &str = "whsec_";
/// Key bytes of the secrets we generate: 256 bits, inside the spec's 24 to 64 bytes.
pub const GENERATED_KEY_BYTES: usize = 32;
/// Shortest key accepted when parsing (the spec's lower bound, 192 bits).
pub const MIN_KEY_BYTES: usize = 24;
/// Longest key accepted when parsing (the spec's upper bound, 512 bits).
pub const MAX_KEY_BYTES: usize = 64;
/// Header carrying the message id (the event id: the same on every retry of one event).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the signing time in Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The replay window receivers apply (the libraries' default: five minutes either way).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret or a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The secret lacks the `whsec_` prefix.
    #[error("a signing secret starts with \"whsec_\"")]
    MissingPrefix,
    /// The part after the prefix is not standard base64.
    #[error("a signing secret is base64 after its prefix")]
    NotBase64,
    /// The key is shorter or longer than the spec allows.
    #[error("a signing key has {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {0}")]
    KeyLength(usize),
    /// A header a signed request needs is missing or not text.
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is outside the replay window.
    #[error("webhook-timestamp is outside the {TOLERANCE_SECONDS} s window")]
    Stale,
    /// No signature matches any secret.
    #[error("no signature matches")]
    NoMatch,
}

/// One signing secret: its `whsec_` text (shown to the caller once, then only sealed at rest)
/// and the HMAC keyed with it. `Debug` is redacted.
#[derive(Clone)]
pub struct SigningSecret {
    text: Secret,
    mac: HmacSha256,
}

impl SigningSecret {
    /// A new secret of [`GENERATED_KEY_BYTES`] random bytes from the OS-seeded generator.
    pub fn generate() -> Self {
        let mut key = [0u8; GENERATED_KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        let text = format!("{SECRET_PREFIX}{}", B64.encode(key));
        Self { text: Secret::new(text), mac: keyed(&key) }
    }

    /// Reads a stored or configured secret (`whsec_` + base64 of 24 to 64 bytes).
    pub fn parse(text: &Secret) -> Result<Self, SigningError> {
        let b64 = text.expose().strip_prefix(SECRET_PREFIX).ok_or(SigningError::MissingPrefix)?;
        let key = B64.decode(b64).map_err(|_| SigningError::NotBase64)?;
        Self::from_key(text.clone(), &key)
    }

    fn from_key(text: Secret, key: &[u8]) -> Result<Self, SigningError> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SigningError::KeyLength(key.len()));
        }
        Ok(Self { text, mac: keyed(key) })
    }

    /// The `whsec_…` text, for the one response that shows it and for sealing it at rest.
    pub fn expose(&self) -> &Secret {
        &self.text
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// Constant-time check of one `v1,<base64>` signature.
    fn matches(&self, id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        let Some(raw) = signature.strip_prefix("v1,").and_then(|b| B64.decode(b).ok()) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&raw).is_ok()
    }
}

/// The HMAC keyed with `key` (at most [`MAX_KEY_BYTES`], SHA-256's block size). HMAC pads a
/// shorter key with zeros to the block size (RFC 2104 §2), so padding it here gives the same
/// MAC through the infallible constructor.
fn keyed(key: &[u8]) -> HmacSha256 {
    use hmac::digest::KeyInit;
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    let n = key.len().min(block.len());
    block[..n].copy_from_slice(&key[..n]);
    <HmacSha256 as KeyInit>::new(&block)
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([REDACTED])")
    }
}

/// The secrets a destination signs with: the current one and, during a rotation's overlap
/// period, the previous one until `previous_until` (Unix seconds), so receivers that still hold
/// the old secret keep verifying while they switch.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    /// The secret every signature is made with.
    pub current: SigningSecret,
    /// The rotated-out secret and the end of its overlap period.
    pub previous: Option<(SigningSecret, i64)>,
}

impl SigningKeys {
    /// One secret, no rotation in progress.
    pub fn new(current: SigningSecret) -> Self {
        Self { current, previous: None }
    }

    /// Replaces the current secret by `next`, honouring the old one until `overlap_until`.
    pub fn rotate(self, next: SigningSecret, overlap_until: i64) -> Self {
        Self { current: next, previous: Some((self.current, overlap_until)) }
    }

    /// The secrets in use at `now` (Unix seconds): the current first, then the previous while
    /// its overlap lasts.
    pub fn in_use(&self, now: i64) -> impl Iterator<Item = &SigningSecret> {
        let previous = self.previous.as_ref().filter(|(_, until)| now < *until).map(|(s, _)| s);
        std::iter::once(&self.current).chain(previous)
    }

    /// The three headers of one signed request, signed at `timestamp`.
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> SignedHeaders {
        let signature = self.in_use(timestamp).map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ");
        SignedHeaders { id: id.to_owned(), timestamp, signature }
    }
}

/// The values of `webhook-id`, `webhook-timestamp` and `webhook-signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`: the event id.
    pub id: String,
    /// `webhook-timestamp`: Unix seconds.
    pub timestamp: i64,
    /// `webhook-signature`: one or more space-separated `v1,` signatures.
    pub signature: String,
}

impl SignedHeaders {
    /// Name and value pairs, in the order the spec lists them.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_ID, self.id.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// Verifies a received request the way the spec's libraries do: timestamp within
/// [`TOLERANCE_SECONDS`] of `now`, and some `v1` signature made with one of `secrets`. Ours is
/// for tests and the sandbox receiver; CI also verifies with the published library
/// (`scripts/webhooks-check`).
pub fn verify(secrets: &[&SigningSecret], headers: &SignedHeaders, body: &[u8], now: i64) -> Result<(), SigningError> {
    if (now - headers.timestamp).abs() > TOLERANCE_SECONDS {
        return Err(SigningError::Stale);
    }
    let found = headers
        .signature
        .split(' ')
        .any(|sig| secrets.iter().any(|s| s.matches(&headers.id, headers.timestamp, body, sig)));
    if found { Ok(()) } else { Err(SigningError::NoMatch) }
}

/// Reads the three headers from name/value pairs (names case-insensitive).
pub fn read_headers<'a>(mut get: impl FnMut(&'static str) -> Option<&'a str>) -> Result<SignedHeaders, SigningError> {
    let id = get(HEADER_ID).ok_or(SigningError::MissingHeader(HEADER_ID))?.to_owned();
    let timestamp = get(HEADER_TIMESTAMP)
        .ok_or(SigningError::MissingHeader(HEADER_TIMESTAMP))?
        .trim()
        .parse()
        .map_err(|_| SigningError::BadTimestamp)?;
    let signature = get(HEADER_SIGNATURE).ok_or(SigningError::MissingHeader(HEADER_SIGNATURE))?.to_owned();
    Ok(SignedHeaders { id, timestamp, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The specification's published test vector: standard-webhooks/standard-webhooks,
    // libraries/python/tests/test_webhooks.py, `test_sign_function` (the same values appear in
    // every library of that repository).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector() -> SigningSecret {
        SigningSecret::parse(&Secret::new(VECTOR_SECRET)).unwrap()
    }

    #[test]
    fn signs_the_published_test_vector() {
        assert_eq!(vector().sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY), VECTOR_SIGNATURE);
        let headers = SigningKeys::new(vector()).headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        assert_eq!(
            headers.pairs(),
            [
                ("webhook-id", VECTOR_ID.to_owned()),
                ("webhook-timestamp", "1614265330".to_owned()),
                ("webhook-signature", VECTOR_SIGNATURE.to_owned()),
            ]
        );
        verify(&[&vector()], &headers, VECTOR_BODY, VECTOR_TIMESTAMP + 10).unwrap();
    }

    #[test]
    fn generated_secrets_are_prefixed_random_and_parse_back() {
        assert!((MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&GENERATED_KEY_BYTES));
        // `keyed` pads into one block: the longest key must fit it.
        assert_eq!(hmac::digest::Key::<HmacSha256>::default().len(), MAX_KEY_BYTES);
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        let text = a.expose().expose();
        assert!(text.starts_with(SECRET_PREFIX), "{text}");
        assert_eq!(B64.decode(&text[SECRET_PREFIX.len()..]).unwrap().len(), GENERATED_KEY_BYTES);
        assert_ne!(a.expose(), b.expose());
        let again = SigningSecret::parse(a.expose()).unwrap();
        assert_eq!(again.sign("m", 1, b"x"), a.sign("m", 1, b"x"));
        assert_ne!(b.sign("m", 1, b"x"), a.sign("m", 1, b"x"));
    }

    #[test]
    fn bad_secrets_are_refused() {
        let parse = |s: &str| SigningSecret::parse(&Secret::new(s)).map(|_| ());
        assert_eq!(parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(SigningError::MissingPrefix));
        assert_eq!(parse("whsec_not base64!"), Err(SigningError::NotBase64));
        assert_eq!(parse("whsec_c2hvcnQ="), Err(SigningError::KeyLength(5)));
        assert_eq!(parse(&format!("whsec_{}", B64.encode([7u8; 65]))), Err(SigningError::KeyLength(65)));
        assert!(parse(&format!("whsec_{}", B64.encode([7u8; 24]))).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        let s = vector();
        let shown = format!("{s:?} {:?}", SigningKeys::new(s.clone()));
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    #[test]
    fn rotation_signs_with_both_secrets_until_the_overlap_ends() {
        let old = vector();
        let new = SigningSecret::generate();
        let keys = SigningKeys::new(old.clone()).rotate(new.clone(), 2_000);
        let during = keys.headers("evt_1", 1_999, b"{}");
        let sigs: Vec<&str> = during.signature.split(' ').collect();
        assert_eq!(sigs, [new.sign("evt_1", 1_999, b"{}"), old.sign("evt_1", 1_999, b"{}")]);
        verify(&[&old], &during, b"{}", 1_999).unwrap();
        verify(&[&new], &during, b"{}", 1_999).unwrap();

        let after = keys.headers("evt_1", 2_000, b"{}");
        assert_eq!(after.signature, new.sign("evt_1", 2_000, b"{}"));
        assert_eq!(verify(&[&old], &after, b"{}", 2_000), Err(SigningError::NoMatch));
    }

    #[test]
    fn verification_refuses_tampering_staleness_and_other_secrets() {
        let s = vector();
        let h = SigningKeys::new(s.clone()).headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        let now = VECTOR_TIMESTAMP;
        assert_eq!(verify(&[&s], &h, br#"{"test": 2432232315}"#, now), Err(SigningError::NoMatch));
        assert_eq!(verify(&[&s], &h, VECTOR_BODY, now + TOLERANCE_SECONDS + 1), Err(SigningError::Stale));
        assert_eq!(verify(&[&s], &h, VECTOR_BODY, now - TOLERANCE_SECONDS - 1), Err(SigningError::Stale));
        assert_eq!(verify(&[&SigningSecret::generate()], &h, VECTOR_BODY, now), Err(SigningError::NoMatch));
        let other_id = SignedHeaders { id: "msg_other".into(), ..h.clone() };
        assert_eq!(verify(&[&s], &other_id, VECTOR_BODY, now), Err(SigningError::NoMatch));
        let v2 = SignedHeaders { signature: h.signature.replacen("v1,", "v2,", 1), ..h };
        assert_eq!(verify(&[&s], &v2, VECTOR_BODY, now), Err(SigningError::NoMatch));
    }

    #[test]
    fn headers_are_read_back() {
        let h = SigningKeys::new(vector()).headers(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        let pairs = h.pairs();
        let read = read_headers(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())).unwrap();
        assert_eq!(read, h);
        assert_eq!(read_headers(|_| None), Err(SigningError::MissingHeader(HEADER_ID)));
        let bad = read_headers(|n| if n == HEADER_TIMESTAMP { Some("soon") } else { Some("x") });
        assert_eq!(bad, Err(SigningError::BadTimestamp));
    }
}
