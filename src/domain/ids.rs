//! Typed identifiers. A `WabaId` can never be passed where an `AppId` is expected: mixing up
//! look-alike provider ids (a business id stored where the WABA id belongs) is a known
//! failure of WhatsApp onboarding code, and the compiler catches it here.

use std::fmt;

/// Why an id failed to parse; the caller turns it into a field violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $check:expr) => {
        string_id!($(#[$m])* $name, $check, |s| s);
    };
    ($(#[$m:meta])* $name:ident, $check:expr, $display:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s: String = s.into();
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s).map_err(IdError)?;
                Ok(Self(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// What `Display` shows (to callers, in messages and logs).
            fn display(&self) -> &str {
                let show: fn(&str) -> &str = $display;
                show(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.display())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Our own resource ids: lowercase letters, digits and '-', 1 to 63 chars, starting with a
/// letter or digit (AIP-122 friendly, safe in URLs and resource names).
fn resource_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("may contain only lowercase letters, digits and '-'".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not start or end with '-'".into());
    }
    Ok(())
}

/// Ids a provider hands us: printable, no whitespace or '/', at most 128 chars.
fn provider_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err("must not contain whitespace, control characters or '/'".into());
    }
    Ok(())
}

fn digits(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be 1 to 32 digits".into());
    }
    Ok(())
}

string_id!(
    /// A tenant (an internal calling service).
    TenantId, resource_id
);
string_id!(
    /// One of a tenant's provider accounts: the store key, `{tenant}.{name}` (see
    /// [`scoped_id`]). `Display` shows the name (what the tenant calls it: messages, resource
    /// names); wherever the key matters (SQL, URLs, notices, tokens) use `as_str`.
    AccountId, scoped_id, name_part
);
string_id!(
    /// One onboarding: the store key, `{tenant}.{name}` (see [`scoped_id`]). `Display` shows
    /// the name; wherever the key matters use `as_str`.
    OnboardingId, scoped_id, name_part
);

/// The name part of a scoped key (the whole of a bare one).
fn name_part(s: &str) -> &str {
    s.split_once('.').map_or(s, |(_, n)| n)
}

/// Caller-chosen ids (accounts, onboardings) are unique per tenant, so their store key is
/// `{tenant}.{name}`: globally unique and still a pure function of what a request names, so
/// every internal reference (events, steps, claims, webhook URLs) stays one column. '.' is in
/// neither a tenant id nor a name, so the split is unambiguous.
fn scoped_id(s: &str) -> Result<(), String> {
    match s.split_once('.') {
        Some((tenant, name)) => resource_id(tenant).and_then(|()| resource_id(name)),
        None => resource_id(s),
    }
}

macro_rules! scoped_methods {
    ($name:ident) => {
        impl $name {
            /// The key of the tenant's resource called `name` (what a request names), or the
            /// reason `name` is not a valid id.
            pub fn scoped(tenant: &TenantId, name: &str) -> Result<Self, IdError> {
                resource_id(name).map_err(IdError)?;
                Ok(Self(format!("{tenant}.{name}")))
            }

            /// A fresh generated id in `tenant` (when the caller does not choose one).
            pub fn fresh(tenant: &TenantId) -> Self {
                Self(format!("{tenant}.{}", new_id::<String>()))
            }

            /// The caller-visible id: the key without its tenant part.
            pub fn name(&self) -> &str {
                name_part(&self.0)
            }
        }
    };
}
scoped_methods!(AccountId);
scoped_methods!(OnboardingId);
string_id!(
    /// An API key's public id (the secret part is never an id).
    ApiKeyId, resource_id
);
string_id!(
    /// A subscription (provider webhook) we manage.
    SubscriptionId, resource_id
);
string_id!(
    /// A caller's idempotency key (`request_id`).
    RequestId, |s| {
        if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_control()) {
            return Err("must be 1 to 128 printable characters".into());
        }
        Ok(())
    }
);
string_id!(
    /// A Gupshup app id (UUID).
    AppId, provider_id
);
string_id!(
    /// A Meta WhatsApp Business Account id (digits).
    WabaId, digits
);
string_id!(
    /// A Whapi.Cloud channel id, like `MANTIS-PF298`.
    ChannelId, provider_id
);

/// A phone number in E.164: '+' then 8 to 15 digits, first digit not 0. Providers want it as
/// digits only ([`E164::digits`]).
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct E164(String);

impl E164 {
    /// Accepts `+15551112222` or `15551112222`; spaces, dashes and parentheses are ignored.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let cleaned: String = s.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')')).collect();
        let d = cleaned.strip_prefix('+').unwrap_or(&cleaned);
        if d.len() < 8 || d.len() > 15 || !d.bytes().all(|b| b.is_ascii_digit()) || d.starts_with('0') {
            return Err(IdError("must be an E.164 number: + then 8 to 15 digits, not starting with 0".into()));
        }
        Ok(Self(format!("+{d}")))
    }

    /// `+` and digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits only, the form every provider here wants.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }
}

impl TryFrom<String> for E164 {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<E164> for String {
    fn from(v: E164) -> String {
        v.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.0)
    }
}

/// A fresh random resource id: 20 lowercase hex chars from a v7 UUID (time-ordered, so ids
/// sort by creation and index well).
pub fn new_id<T: TryFrom<String>>() -> T
where
    T::Error: fmt::Debug,
{
    let u = uuid::Uuid::now_v7().simple().to_string();
    // Time prefix (12 hex) plus 8 random hex chars: unique enough and short.
    let s = format!("{}{}", &u[..12], &u[24..32]);
    match T::try_from(s) {
        Ok(v) => v,
        // Hex always satisfies `resource_id`; unreachable by construction.
        Err(e) => panic!("generated id rejected: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids() {
        assert!(AccountId::parse("acme-1").is_ok());
        assert!(AccountId::parse("Acme").is_err());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse("-a").is_err());
        assert!(AccountId::parse("a".repeat(64)).is_err());
        let t = TenantId::parse("t-1").unwrap();
        let k = AccountId::scoped(&t, "acme").unwrap();
        assert_eq!((k.as_str(), k.name(), k.to_string().as_str()), ("t-1.acme", "acme", "acme"));
        assert_eq!(format!("{k:?}"), "AccountId(t-1.acme)", "Debug shows the key");
        assert_eq!(AccountId::parse("t-1.acme").unwrap(), k);
        assert_eq!(AccountId::parse("acme").unwrap().name(), "acme");
        for bad in ["a.b.c", ".a", "a.", "T.a", "a.B"] {
            assert!(AccountId::parse(bad).is_err(), "{bad}");
        }
        assert!(OnboardingId::scoped(&t, "a.b").is_err());
        let id: OnboardingId = new_id();
        assert_eq!(id.as_str().len(), 20);
    }

    #[test]
    fn e164() {
        assert_eq!(E164::parse("+1 555-111-2222").unwrap().digits(), "15551112222");
        assert_eq!(E164::parse("919087875656").unwrap().as_str(), "+919087875656");
        assert!(E164::parse("+0123456789").is_err());
        assert!(E164::parse("12ab").is_err());
        assert!(E164::parse("+1234567").is_err());
    }

    #[test]
    fn waba_digits_only() {
        assert!(WabaId::parse("1234567890").is_ok());
        assert!(WabaId::parse("12a").is_err());
        assert!(ChannelId::parse("MANTIS-PF298").is_ok());
        assert!(ChannelId::parse("a/b").is_err());
    }
}
