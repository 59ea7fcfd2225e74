//! Egress safety of outbound delivery: which destinations a webhook may name and which
//! addresses it may reach. The URL is checked when a destination is saved and again before
//! every attempt (an IP literal never goes through DNS); a host name is checked after it is
//! resolved, at connect time, by [`GuardedResolver`], so a name that later resolves to an inner
//! address (DNS rebinding) is refused too. Redirects are not followed and no proxy is used
//! ([`guarded_client`]), so nothing reaches an address the guard did not see.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use url::{Host, Url};

/// Never a delivery target: link-local (home of the cloud metadata services) and "this
/// network" (0.0.0.0/8, which Linux connects to the local host).
const NEVER: [&str; 3] = ["169.254.0.0/16", "fe80::/10", "0.0.0.0/8"];
/// Cloud metadata endpoints outside link-local: AWS's IPv6 one and Alibaba Cloud's.
const METADATA_ADDRESSES: [IpAddr; 2] =
    [IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)), IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200))];
/// Host names of metadata services, refused before any lookup.
const METADATA_NAMES: [&str; 2] = ["metadata.google.internal", "metadata"];
/// Private, shared and unique-local ranges: reachable only when the configuration allows it.
const PRIVATE: [&str; 6] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"];

/// Why a destination or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The URL does not parse.
    #[error("destination URL does not parse: {0}")]
    Url(String),
    /// A scheme other than https (or http to loopback in development).
    #[error("destination URL must use https (http only to loopback in development), not {0}")]
    Scheme(String),
    /// The URL carries a user name or password.
    #[error("destination URL must not carry a user name or password")]
    Userinfo,
    /// The URL has no host.
    #[error("destination URL has no host")]
    NoHost,
    /// Link-local, a cloud metadata address or name, unspecified, multicast or broadcast.
    #[error("{0} is never a delivery destination (link-local, metadata or not unicast)")]
    AlwaysRefused(String),
    /// In the configured deny list.
    #[error("{0} is in the delivery deny list")]
    Denied(IpAddr),
    /// An allow list is configured and the address is not in it.
    #[error("{0} is not in the delivery allow list")]
    NotAllowed(IpAddr),
    /// Loopback while loopback is not allowed.
    #[error("{0} is loopback, allowed only in development")]
    Loopback(IpAddr),
    /// A private range while private ranges are not allowed.
    #[error("{0} is a private address, not allowed by the delivery configuration")]
    Private(IpAddr),
    /// The name resolved to nothing the guard allows (or to nothing at all).
    #[error("{name} resolves to no allowed address ({reason})")]
    NoAllowedAddress {
        /// The host name.
        name: String,
        /// Why the last address was refused, or the lookup error.
        reason: String,
    },
}

/// What the guard allows. The default is production: https to public addresses only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// When not empty, only addresses in these ranges are reached (private ranges listed here
    /// are allowed without `allow_private`).
    pub allow: Vec<IpNet>,
    /// Never reached, whatever else says.
    pub deny: Vec<IpNet>,
    /// Loopback addresses, and http to a loopback host (development and the sandbox).
    pub allow_loopback: bool,
    /// Private, shared (CGNAT) and unique-local ranges.
    pub allow_private: bool,
}

impl EgressPolicy {
    /// Development: loopback and private ranges allowed, http to loopback accepted.
    pub fn development() -> Self {
        Self { allow_loopback: true, allow_private: true, ..Self::default() }
    }

    /// Parses CIDR lists (`"10.1.0.0/16"`, `"2001:db8::/32"`; a bare address is a /32 or /128).
    pub fn parse_ranges(ranges: &[impl AsRef<str>]) -> Result<Vec<IpNet>, String> {
        ranges
            .iter()
            .map(|r| {
                let r = r.as_ref().trim();
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{r}' is not an address range (CIDR)"))
            })
            .collect()
    }

    /// Checks a destination URL: https (http only to a loopback host when loopback is
    /// allowed), no userinfo, a host, and an IP-literal host allowed by [`Self::check_ip`].
    pub fn check_url(&self, url: &str) -> Result<Url, GuardError> {
        let parsed = Url::parse(url).map_err(|e| GuardError::Url(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(GuardError::Userinfo);
        }
        let host = parsed.host().ok_or(GuardError::NoHost)?;
        let ip = match &host {
            Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
            Host::Domain(name) => {
                check_name(name)?;
                None
            }
        };
        let loopback_host = match (&host, ip) {
            (_, Some(ip)) => canonical(ip).is_loopback(),
            (Host::Domain(name), None) => is_localhost(name),
            _ => false,
        };
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_loopback && loopback_host => {}
            other => return Err(GuardError::Scheme(other.to_owned())),
        }
        if let Some(ip) = ip {
            self.check_ip(ip)?;
        }
        Ok(parsed)
    }

    /// Whether one address may be reached.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), GuardError> {
        // `::ffff:169.254.169.254` is the metadata address too.
        let ip = canonical(ip);
        if always_refused(ip) {
            return Err(GuardError::AlwaysRefused(ip.to_string()));
        }
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(GuardError::Denied(ip));
        }
        let listed = self.allow.iter().any(|n| n.contains(&ip));
        if !self.allow.is_empty() && !listed {
            return Err(GuardError::NotAllowed(ip));
        }
        if ip.is_loopback() {
            return if self.allow_loopback { Ok(()) } else { Err(GuardError::Loopback(ip)) };
        }
        if in_ranges(&PRIVATE, ip) && !self.allow_private && !listed {
            return Err(GuardError::Private(ip));
        }
        Ok(())
    }
}

/// Refuses metadata host names before any lookup.
fn check_name(name: &str) -> Result<(), GuardError> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if METADATA_NAMES.contains(&name.as_str()) {
        return Err(GuardError::AlwaysRefused(name));
    }
    Ok(())
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The IPv4 address behind an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 well-known-prefix
/// (`64:ff9b::a.b.c.d`, RFC 6052) address, which reach that IPv4 host; others unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let o = v6.octets();
            IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        }
        other => other,
    }
}

fn in_ranges(ranges: &[&str], ip: IpAddr) -> bool {
    // The lists are constants; `ranges_parse` pins that every entry parses.
    ranges.iter().filter_map(|r| r.parse::<IpNet>().ok()).any(|n| n.contains(&ip))
}

fn always_refused(ip: IpAddr) -> bool {
    let not_unicast = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    not_unicast || METADATA_ADDRESSES.contains(&ip) || in_ranges(&NEVER, ip)
}

/// Resolves host names to addresses (the system resolver in production, a table in tests).
pub type Lookup =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> + Send + Sync>;

/// The system resolver (`getaddrinfo` through tokio).
pub fn system_lookup() -> Lookup {
    Arc::new(|name: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host((name.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    })
}

/// A reqwest resolver that resolves, drops every address the policy refuses, and fails when
/// none is left: the check runs on the addresses the connection will actually use.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
    lookup: Lookup,
}

impl GuardedResolver {
    /// A resolver applying `policy` to what `lookup` answers.
    pub fn new(policy: Arc<EgressPolicy>, lookup: Lookup) -> Self {
        Self { policy, lookup }
    }

    /// The allowed addresses of `name`, or why there are none.
    pub async fn allowed(&self, name: &str) -> Result<Vec<IpAddr>, GuardError> {
        check_name(name)?;
        let refused = |reason: String| GuardError::NoAllowedAddress { name: name.to_owned(), reason };
        let addrs = (self.lookup)(name.to_owned()).await.map_err(|e| refused(e.to_string()))?;
        let mut last = "no address".to_owned();
        let allowed: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|ip| match self.policy.check_ip(*ip) {
                Ok(()) => true,
                Err(e) => {
                    last = e.to_string();
                    false
                }
            })
            .collect();
        if allowed.is_empty() { Err(refused(last)) } else { Ok(allowed) }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let ips = this.allowed(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Limits of one delivery request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// The whole request, connect to the last byte of the response read.
    pub timeout: Duration,
    /// Connecting alone.
    pub connect_timeout: Duration,
    /// Bytes of the response body read at most; the rest is never read.
    pub max_response_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// The HTTP client of deliveries: names resolved through [`GuardedResolver`], no redirects
/// followed, no proxy (a proxy would connect where the guard never looked), the timeouts of
/// `limits`.
pub fn guarded_client(resolver: GuardedResolver, limits: RequestLimits) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(limits.timeout)
        .connect_timeout(limits.connect_timeout)
        .user_agent(concat!("wa-onboard-delivery/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The error of a failed resolution, if `err` (a reqwest error) came from the guard.
pub fn guard_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a GuardError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(g) = e.downcast_ref::<GuardError>() {
            return Some(g);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse() {
        for r in NEVER.iter().chain(&PRIVATE) {
            assert!(r.parse::<IpNet>().is_ok(), "{r}");
        }
    }

    #[test]
    fn urls() {
        let prod = EgressPolicy::default();
        let dev = EgressPolicy::development();
        assert!(prod.check_url("https://hooks.example.com/wa?x=1").is_ok());
        assert!(prod.check_url("https://203.0.113.7:8443/in").is_ok());
        assert_eq!(prod.check_url("http://hooks.example.com/"), Err(GuardError::Scheme("http".into())));
        assert_eq!(prod.check_url("ftp://hooks.example.com/"), Err(GuardError::Scheme("ftp".into())));
        assert_eq!(prod.check_url("http://127.0.0.1:8080/"), Err(GuardError::Scheme("http".into())));
        assert_eq!(prod.check_url("https://127.0.0.1/"), Err(GuardError::Loopback(ip("127.0.0.1"))));
        assert_eq!(prod.check_url("https://user:pw@hooks.example.com/"), Err(GuardError::Userinfo));
        assert_eq!(prod.check_url("https://user@hooks.example.com/"), Err(GuardError::Userinfo));
        assert!(matches!(prod.check_url("not a url"), Err(GuardError::Url(_))));
        assert!(matches!(prod.check_url("https://"), Err(GuardError::Url(_))));
        assert_eq!(dev.check_url("data:text/plain,hi"), Err(GuardError::NoHost));
        assert!(matches!(prod.check_url("https://metadata.google.internal/x"), Err(GuardError::AlwaysRefused(_))));
        assert!(matches!(dev.check_url("https://METADATA.google.internal./x"), Err(GuardError::AlwaysRefused(_))));
        assert!(matches!(dev.check_url("https://169.254.169.254/latest"), Err(GuardError::AlwaysRefused(_))));
        assert!(matches!(dev.check_url("https://[fd00:ec2::254]/"), Err(GuardError::AlwaysRefused(_))));
        assert!(matches!(dev.check_url("https://[::ffff:169.254.169.254]/"), Err(GuardError::AlwaysRefused(_))));

        // Development: http to loopback only, never to another host.
        assert!(dev.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(dev.check_url("http://[::1]:8080/hook").is_ok());
        assert!(dev.check_url("http://localhost:8080/hook").is_ok());
        assert_eq!(dev.check_url("http://10.0.0.5/"), Err(GuardError::Scheme("http".into())));
        assert_eq!(dev.check_url("http://hooks.example.com/"), Err(GuardError::Scheme("http".into())));
        assert!(dev.check_url("https://10.0.0.5/").is_ok());
    }

    #[test]
    fn addresses() {
        let prod = EgressPolicy::default();
        let dev = EgressPolicy::development();
        for always in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
            "64:ff9b::169.254.169.254",
            "64:ff9b::a9fe:1",
            "0.1.2.3",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "ff02::1",
        ] {
            assert!(matches!(dev.check_ip(ip(always)), Err(GuardError::AlwaysRefused(_))), "{always}");
            let all =
                EgressPolicy { allow: EgressPolicy::parse_ranges(&["0.0.0.0/0", "::/0"]).unwrap(), ..dev.clone() };
            assert!(matches!(all.check_ip(ip(always)), Err(GuardError::AlwaysRefused(_))), "{always}");
        }
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
            "fec0::1",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(matches!(prod.check_ip(ip(private)), Err(GuardError::Private(_))), "{private}");
            assert!(dev.check_ip(ip(private)).is_ok(), "{private}");
        }
        for lo in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "64:ff9b::127.0.0.1"] {
            assert!(matches!(prod.check_ip(ip(lo)), Err(GuardError::Loopback(_))), "{lo}");
            assert!(dev.check_ip(ip(lo)).is_ok(), "{lo}");
        }
        for public in ["203.0.113.7", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1"] {
            assert!(prod.check_ip(ip(public)).is_ok(), "{public}");
        }
    }

    #[test]
    fn allow_and_deny_lists() {
        let p = EgressPolicy {
            allow: EgressPolicy::parse_ranges(&["203.0.113.0/24", "10.9.0.0/16", "2001:db8::/32"]).unwrap(),
            deny: EgressPolicy::parse_ranges(&["203.0.113.66", "2001:db8:bad::/48"]).unwrap(),
            ..EgressPolicy::default()
        };
        assert!(p.check_ip(ip("203.0.113.7")).is_ok());
        assert!(p.check_ip(ip("10.9.1.1")).is_ok(), "a listed private range needs no allow_private");
        assert!(p.check_ip(ip("2001:db8::7")).is_ok());
        assert_eq!(p.check_ip(ip("203.0.113.66")), Err(GuardError::Denied(ip("203.0.113.66"))));
        assert_eq!(p.check_ip(ip("2001:db8:bad::1")), Err(GuardError::Denied(ip("2001:db8:bad::1"))));
        assert_eq!(p.check_ip(ip("8.8.8.8")), Err(GuardError::NotAllowed(ip("8.8.8.8"))));
        assert_eq!(p.check_ip(ip("10.8.0.1")), Err(GuardError::NotAllowed(ip("10.8.0.1"))));
        let deny_only =
            EgressPolicy { deny: EgressPolicy::parse_ranges(&["8.8.0.0/16"]).unwrap(), ..Default::default() };
        assert_eq!(deny_only.check_ip(ip("8.8.4.4")), Err(GuardError::Denied(ip("8.8.4.4"))));
        assert!(deny_only.check_ip(ip("9.9.9.9")).is_ok());
        assert!(EgressPolicy::parse_ranges(&["10.0.0.0/33"]).is_err());
        assert!(EgressPolicy::parse_ranges(&["example.com"]).is_err());
        assert_eq!(EgressPolicy::parse_ranges(&[" ::1 "]).unwrap(), vec!["::1/128".parse::<IpNet>().unwrap()]);
    }

    /// A lookup answering from a table that changes between calls (rebinding).
    fn table(answers: Vec<(&'static str, Vec<&'static str>)>) -> Lookup {
        let answers: Mutex<HashMap<&str, Vec<Vec<IpAddr>>>> = Mutex::new(answers.into_iter().fold(
            HashMap::new(),
            |mut m: HashMap<&str, Vec<Vec<IpAddr>>>, (name, ips)| {
                m.entry(name).or_default().push(ips.into_iter().map(ip).collect());
                m
            },
        ));
        Arc::new(move |name: String| {
            let next = answers.lock().unwrap().get_mut(name.as_str()).filter(|v| !v.is_empty()).map(|v| v.remove(0));
            Box::pin(async move { next.ok_or_else(|| std::io::Error::other("NXDOMAIN")) })
        })
    }

    #[tokio::test]
    async fn the_resolver_filters_and_refuses_at_every_resolution() {
        let lookup = table(vec![
            ("mixed.example", vec!["169.254.169.254", "203.0.113.7", "10.0.0.1"]),
            ("rebind.example", vec!["203.0.113.8"]),
            ("rebind.example", vec!["169.254.169.254"]),
        ]);
        let r = GuardedResolver::new(Arc::new(EgressPolicy::default()), lookup);
        assert_eq!(r.allowed("mixed.example").await.unwrap(), vec![ip("203.0.113.7")]);
        assert_eq!(r.allowed("rebind.example").await.unwrap(), vec![ip("203.0.113.8")]);
        let second = r.allowed("rebind.example").await.unwrap_err();
        assert!(matches!(&second, GuardError::NoAllowedAddress { reason, .. } if reason.contains("never")), "{second}");
        assert!(matches!(r.allowed("gone.example").await, Err(GuardError::NoAllowedAddress { .. })));
        assert!(matches!(r.allowed("metadata.google.internal").await, Err(GuardError::AlwaysRefused(_))));
    }

    #[tokio::test]
    async fn the_system_resolver_refuses_localhost_in_production() {
        let prod = GuardedResolver::new(Arc::new(EgressPolicy::default()), system_lookup());
        assert!(matches!(prod.allowed("localhost").await, Err(GuardError::NoAllowedAddress { .. })));
        let dev = GuardedResolver::new(Arc::new(EgressPolicy::development()), system_lookup());
        assert!(dev.allowed("localhost").await.unwrap().iter().all(|a| a.is_loopback()));
    }
}
