//! The HTTPS sender of outbound delivery: one attempt POSTs the CloudEvent in structured mode
//! with the Standard Webhooks headers and the destination's extra headers, through the guarded
//! client, and reports what happened as an [`AttemptResult`] for [`super::retry`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::cloudevent::{CONTENT_TYPE, CloudEvent};
use super::guard::{EgressPolicy, GuardedResolver, Lookup, RequestLimits, guard_error, guarded_client, system_lookup};
use super::retry::{FailureKind, Outcome, parse_retry_after};
use super::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SigningKeys};

/// Headers a destination's extra headers may not set: the signing ones (a receiver must be
/// able to trust them), and those describing the body or the connection.
const RESERVED_HEADERS: [&str; 8] = [
    HEADER_ID,
    HEADER_TIMESTAMP,
    HEADER_SIGNATURE,
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
];

/// Why a destination's extra headers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a legal header name.
    #[error("'{0}' is not a header name")]
    Name(String),
    /// Not a legal header value (control characters).
    #[error("the value of header '{0}' holds characters a header cannot")]
    Value(String),
    /// One of [`RESERVED_HEADERS`].
    #[error("header '{0}' is set by the delivery itself")]
    Reserved(String),
}

/// A destination's validated extra headers (e.g. an `authorization` its receiver expects).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraHeaders(HeaderMap);

impl ExtraHeaders {
    /// Validates name/value pairs; names are case-insensitive and may repeat.
    pub fn parse<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Self, HeaderError> {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| HeaderError::Name(k.to_owned()))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(HeaderError::Reserved(name.as_str().to_owned()));
            }
            let value = HeaderValue::from_str(v).map_err(|_| HeaderError::Value(name.as_str().to_owned()))?;
            map.append(name, value);
        }
        Ok(Self(map))
    }
}

/// One attempt to deliver one event to one destination.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// The destination URL (checked again by the guard on every attempt).
    pub url: &'a str,
    /// The destination's extra headers.
    pub extra_headers: &'a ExtraHeaders,
    /// The destination's signing secrets.
    pub keys: &'a SigningKeys,
    /// The event.
    pub event: &'a CloudEvent,
    /// `webhook-timestamp`: the attempt's time in Unix seconds (each retry is signed afresh,
    /// so receivers' replay windows accept it).
    pub timestamp: i64,
}

/// Why an attempt got no status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// For the retry policy.
    pub kind: FailureKind,
    /// For `ListDeliveries` and logs. Holds no URL (a destination URL may carry the
    /// receiver's token in its path or query) and no header.
    pub message: String,
}

/// What one attempt observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The HTTP status, when the receiver answered (a 3xx is reported, never followed).
    pub status: Option<u16>,
    /// The answer's `Retry-After`, relative to when it arrived.
    pub retry_after: Option<Duration>,
    /// Why there is no status.
    pub error: Option<AttemptError>,
    /// From sending to the end of reading the response.
    pub latency: Duration,
    /// The start of the response body, at most the configured cap.
    pub body: Bytes,
    /// True when the body was longer than the cap (or broke off): the rest was not read.
    pub body_truncated: bool,
}

impl AttemptResult {
    /// The outcome the retry policy decides on.
    pub fn outcome(&self) -> Outcome {
        match (&self.status, &self.error) {
            (Some(code), _) => Outcome::Status { code: *code, retry_after: self.retry_after },
            (None, Some(e)) => Outcome::Failed(e.kind),
            (None, None) => Outcome::Failed(FailureKind::Other),
        }
    }

    fn failed(kind: FailureKind, message: String, started: Instant) -> Self {
        Self {
            status: None,
            retry_after: None,
            error: Some(AttemptError { kind, message }),
            latency: started.elapsed(),
            body: Bytes::new(),
            body_truncated: false,
        }
    }
}

/// Sends webhook attempts through one guarded client (its connection pool is shared).
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    limits: RequestLimits,
}

impl WebhookSender {
    /// A sender resolving names with the system resolver.
    pub fn new(policy: EgressPolicy, limits: RequestLimits) -> Result<Self, reqwest::Error> {
        Self::with_lookup(policy, limits, system_lookup())
    }

    /// A sender resolving names with `lookup` (tests).
    pub fn with_lookup(policy: EgressPolicy, limits: RequestLimits, lookup: Lookup) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = guarded_client(GuardedResolver::new(policy.clone(), lookup), limits)?;
        Ok(Self { client, policy, limits })
    }

    /// One attempt. Never fails: every failure is in the result, for the retry policy.
    pub async fn send(&self, req: &WebhookRequest<'_>) -> AttemptResult {
        let started = Instant::now();
        // An IP literal never reaches the resolver: the URL check is what guards it.
        let url = match self.policy.check_url(req.url) {
            Ok(url) => url,
            Err(e) => return AttemptResult::failed(FailureKind::Refused, e.to_string(), started),
        };
        let body = req.event.to_body();
        let signed = req.keys.headers(req.event.id(), req.timestamp, &body);
        let mut request =
            self.client.post(url).headers(req.extra_headers.0.clone()).header(http::header::CONTENT_TYPE, CONTENT_TYPE);
        for (name, value) in signed.pairs() {
            request = request.header(name, value);
        }
        let mut response = match request.body(body).send().await {
            Ok(r) => r,
            // Without the URL: a destination URL may carry its receiver's token.
            Err(e) => return AttemptResult::failed(classify(&e), error_chain(&e.without_url()), started),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let (body, body_truncated) = read_capped(&mut response, self.limits.max_response_bytes).await;
        AttemptResult {
            status: Some(status),
            retry_after,
            error: None,
            latency: started.elapsed(),
            body,
            body_truncated,
        }
    }
}

/// Reads at most `cap` bytes of the body; a longer (or broken) body is left unread.
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> (Bytes, bool) {
    let mut buf = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - buf.len();
                if chunk.len() > room {
                    buf.extend_from_slice(&chunk[..room]);
                    return (buf.freeze(), true);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return (buf.freeze(), false),
            Err(_) => return (buf.freeze(), true),
        }
    }
}

fn classify(e: &reqwest::Error) -> FailureKind {
    if guard_error(e).is_some() {
        FailureKind::Refused
    } else if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Other
    }
}

/// The error and its causes on one line (reqwest's own text says only "error sending request").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::cloudevent::EventParts;
    use crate::delivery::signing::{SigningSecret, read_headers, verify};
    use crate::domain::EventKind;
    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Seen {
        requests: Mutex<Vec<(String, HeaderMap, Bytes)>>,
        flaky: AtomicU32,
    }

    async fn receiver() -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        fn record(seen: &Seen, path: &str, headers: HeaderMap, body: Bytes) {
            seen.requests.lock().unwrap().push((path.to_owned(), headers, body));
        }
        let app = Router::new()
            .route(
                "/ok",
                post(|State(s): State<Arc<Seen>>, h: HeaderMap, b: Bytes| async move {
                    record(&s, "/ok", h, b);
                    StatusCode::NO_CONTENT
                }),
            )
            .route(
                "/flaky",
                post(|State(s): State<Arc<Seen>>, h: HeaderMap, b: Bytes| async move {
                    record(&s, "/flaky", h, b);
                    if s.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                        (StatusCode::INTERNAL_SERVER_ERROR, [("retry-after", "7")], "down").into_response()
                    } else {
                        (StatusCode::OK, "ok").into_response()
                    }
                }),
            )
            .route("/gone", post(|| async { StatusCode::GONE }))
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    StatusCode::OK
                }),
            )
            .route("/big", post(|| async { (StatusCode::OK, vec![b'x'; 4 * 1024 * 1024]) }))
            .route("/redirect", post(|| async { (StatusCode::TEMPORARY_REDIRECT, [("location", "/ok")]) }))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn event() -> CloudEvent {
        CloudEvent::new(EventParts {
            id: "evt_7".into(),
            source: "/wa-onboard/tenants/t1".into(),
            kind: EventKind::StateChanged.into(),
            subject: "onboardings/o1".into(),
            time_ms: 1_700_000_000_000,
            reference: Some("ref-1".into()),
            data: serde_json::json!({"sequence": "7"}),
        })
        .unwrap()
    }

    fn limits() -> RequestLimits {
        RequestLimits {
            timeout: Duration::from_millis(800),
            connect_timeout: Duration::from_millis(500),
            max_response_bytes: 1024,
        }
    }

    struct Fixture {
        keys: SigningKeys,
        extra: ExtraHeaders,
        event: CloudEvent,
    }

    impl Fixture {
        fn new() -> Self {
            let extra = ExtraHeaders::parse(&[("Authorization", "Bearer rcv-token"), ("x-tenant", "t1")]).unwrap();
            Self { keys: SigningKeys::new(SigningSecret::generate()), extra, event: event() }
        }
        fn req<'a>(&'a self, url: &'a str) -> WebhookRequest<'a> {
            WebhookRequest { url, extra_headers: &self.extra, keys: &self.keys, event: &self.event, timestamp: now() }
        }
    }

    fn now() -> i64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }

    fn dev_sender() -> WebhookSender {
        WebhookSender::new(EgressPolicy::development(), limits()).unwrap()
    }

    #[tokio::test]
    async fn success_carries_the_event_signed_in_structured_mode() {
        let (base, seen) = receiver().await;
        let f = Fixture::new();
        let r = dev_sender().send(&f.req(&format!("{base}/ok"))).await;
        assert_eq!(r.status, Some(204), "{r:?}");
        assert_eq!(r.outcome(), Outcome::Status { code: 204, retry_after: None });
        let requests = seen.requests.lock().unwrap();
        let (_, headers, body) = &requests[0];
        assert_eq!(headers["content-type"], CONTENT_TYPE);
        assert_eq!(headers["authorization"], "Bearer rcv-token");
        assert_eq!(headers["x-tenant"], "t1");
        assert_eq!(headers["webhook-id"], "evt_7");
        let signed = read_headers(|n| headers.get(n).and_then(|v| v.to_str().ok())).unwrap();
        verify(&[&f.keys.current], &signed, body, now()).unwrap();
        assert_eq!(body.as_ref(), f.event.to_body().as_slice());
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["type"], "wa.onboard.onboarding.state_changed");
    }

    #[tokio::test]
    async fn a_500_with_retry_after_then_success_keeps_the_webhook_id() {
        let (base, seen) = receiver().await;
        let f = Fixture::new();
        let url = format!("{base}/flaky");
        let first = dev_sender().send(&f.req(&url)).await;
        assert_eq!(first.outcome(), Outcome::Status { code: 500, retry_after: Some(Duration::from_secs(7)) });
        assert_eq!(first.body.as_ref(), b"down");
        let second = dev_sender().send(&f.req(&url)).await;
        assert_eq!(second.status, Some(200));
        let requests = seen.requests.lock().unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].1["webhook-id"], requests[1].1["webhook-id"]);
        assert_eq!(requests[0].2, requests[1].2);
    }

    #[tokio::test]
    async fn gone_slow_oversized_and_redirects() {
        let (base, seen) = receiver().await;
        let f = Fixture::new();
        let sender = dev_sender();

        let gone = sender.send(&f.req(&format!("{base}/gone"))).await;
        assert_eq!(gone.status, Some(410));

        let slow = sender.send(&f.req(&format!("{base}/slow"))).await;
        assert_eq!(slow.outcome(), Outcome::Failed(FailureKind::Timeout), "{slow:?}");
        assert!(slow.latency < Duration::from_secs(3), "{:?}", slow.latency);

        let big = sender.send(&f.req(&format!("{base}/big"))).await;
        assert_eq!(big.status, Some(200));
        assert!(big.body_truncated);
        assert_eq!(big.body.len(), limits().max_response_bytes);

        let redirect = sender.send(&f.req(&format!("{base}/redirect"))).await;
        assert_eq!(redirect.status, Some(307), "{redirect:?}");
        assert!(seen.requests.lock().unwrap().iter().all(|(p, _, _)| p != "/ok"), "the redirect was followed");
    }

    #[tokio::test]
    async fn refused_addresses_are_never_contacted() {
        let (base, seen) = receiver().await;
        let f = Fixture::new();
        let prod = WebhookSender::new(EgressPolicy::default(), limits()).unwrap();
        // An IP literal: refused by the URL check (http, and loopback).
        let literal = prod.send(&f.req(&format!("{base}/ok"))).await;
        assert_eq!(literal.outcome(), Outcome::Failed(FailureKind::Refused), "{literal:?}");
        // A name resolving to loopback: refused by the resolver at connect time.
        let port = base.rsplit(':').next().unwrap();
        let named = prod.send(&f.req(&format!("https://localhost:{port}/ok"))).await;
        assert_eq!(named.outcome(), Outcome::Failed(FailureKind::Refused), "{named:?}");
        let message = named.error.unwrap().message;
        assert!(message.contains("no allowed address"), "{message}");
        assert!(!message.contains("/ok"), "the URL stays out of the message: {message}");
        // A name rebound to the metadata address (a table lookup standing in for DNS).
        let lookup: Lookup = Arc::new(|_| Box::pin(async { Ok(vec!["169.254.169.254".parse().unwrap()]) }));
        let dev = WebhookSender::with_lookup(EgressPolicy::development(), limits(), lookup).unwrap();
        let rebound = dev.send(&f.req(&format!("https://hooks.example.com:{port}/ok"))).await;
        assert_eq!(rebound.outcome(), Outcome::Failed(FailureKind::Refused), "{rebound:?}");
        assert!(seen.requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connection_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let f = Fixture::new();
        let r = dev_sender().send(&f.req(&format!("http://127.0.0.1:{port}/ok"))).await;
        assert_eq!(r.outcome(), Outcome::Failed(FailureKind::Connect), "{r:?}");
    }

    #[test]
    fn extra_headers_cannot_override_the_signing_ones() {
        for reserved in ["webhook-signature", "Webhook-Id", "WEBHOOK-TIMESTAMP", "content-type", "Host"] {
            assert!(matches!(ExtraHeaders::parse(&[(reserved, "x")]), Err(HeaderError::Reserved(_))), "{reserved}");
        }
        assert!(matches!(ExtraHeaders::parse(&[("bad name", "x")]), Err(HeaderError::Name(_))));
        assert!(matches!(ExtraHeaders::parse(&[("x-a", "line\nbreak")]), Err(HeaderError::Value(_))));
        let ok = ExtraHeaders::parse(&[("x-a", "1"), ("X-A", "2")]).unwrap();
        assert_eq!(ok.0.get_all("x-a").iter().count(), 2);
    }
}
