//! The NATS JetStream sink of outbound delivery: subjects from a template with `{tenant}`,
//! `{provider}` and `{type}` placeholders, each message published with `Nats-Msg-Id` = the event
//! id and acknowledged by the stream, whose duplicate window drops our retries (the ack then
//! says `duplicate`). The server URLs come from the service's configuration, never a caller.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

use super::cloudevent::CONTENT_TYPE;
use crate::domain::EventKind;

/// The placeholders a subject template may hold.
pub const PLACEHOLDERS: [&str; 3] = ["{tenant}", "{provider}", "{type}"];

/// Why a subject (template) or a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Empty, an empty token (leading, trailing or doubled `.`), whitespace, control
    /// characters, or a wildcard (`*`, `>`): not a subject one can publish to.
    #[error("'{0}' is not a NATS subject to publish to (non-empty dot-separated tokens, no spaces or wildcards)")]
    Subject(String),
    /// A `{…}` that is not one of [`PLACEHOLDERS`], or an unmatched brace.
    #[error("subject template '{0}' holds an unknown placeholder or an unmatched brace")]
    Placeholder(String),
    /// A value put into a placeholder is not one token (it would add or break tokens).
    #[error("'{value}' cannot fill {placeholder}: one subject token, no '.', spaces or wildcards")]
    Value {
        /// The placeholder.
        placeholder: &'static str,
        /// The value.
        value: String,
    },
}

/// Whether `token` is one legal publish-subject token.
fn legal_token(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
}

/// Checks a subject one publishes to: dot-separated non-empty tokens without whitespace,
/// control characters or wildcards.
pub fn validate_subject(subject: &str) -> Result<(), SubjectError> {
    if subject.split('.').all(legal_token) { Ok(()) } else { Err(SubjectError::Subject(subject.to_owned())) }
}

/// A validated subject template, e.g. `wa.onboard.{tenant}.{provider}.{type}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate(String);

impl SubjectTemplate {
    /// Checks the placeholders and that the template yields legal subjects.
    pub fn parse(template: &str) -> Result<Self, SubjectError> {
        let mut rest = template;
        let mut stripped = String::new();
        while let Some(open) = rest.find(['{', '}']) {
            let close = rest[open..].find('}').map(|c| open + c);
            match close {
                Some(close) if rest.as_bytes()[open] == b'{' && PLACEHOLDERS.contains(&&rest[open..=close]) => {
                    stripped.push_str(&rest[..open]);
                    stripped.push('x');
                    rest = &rest[close + 1..];
                }
                _ => return Err(SubjectError::Placeholder(template.to_owned())),
            }
        }
        stripped.push_str(rest);
        validate_subject(&stripped).map_err(|_| SubjectError::Subject(template.to_owned()))?;
        Ok(Self(template.to_owned()))
    }

    /// The subject of one event; `{type}` is the event kind's wire name (`state_changed`).
    pub fn render(&self, tenant: &str, provider: &str, kind: EventKind) -> Result<String, SubjectError> {
        self.render_type(tenant, provider, kind.as_str())
    }

    /// The subject of one event whose `{type}` is `token` (an event kind's wire name, or a
    /// notice's, e.g. `destination_disabled`).
    pub fn render_type(&self, tenant: &str, provider: &str, token: &str) -> Result<String, SubjectError> {
        let mut subject = self.0.clone();
        for (placeholder, value) in PLACEHOLDERS.into_iter().zip([tenant, provider, token]) {
            if subject.contains(placeholder) {
                if !legal_token(value) {
                    return Err(SubjectError::Value { placeholder, value: value.to_owned() });
                }
                subject = subject.replace(placeholder, value);
            }
        }
        validate_subject(&subject)?;
        Ok(subject)
    }
}

/// Why a publish failed (all retry: the server, the stream or the ack may be back later).
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Connecting to the servers failed.
    #[error("NATS connect: {0}")]
    Connect(String),
    /// The subject was refused before sending.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The publish or its acknowledgement failed (no stream for the subject, timeout, …).
    #[error("JetStream publish: {0}")]
    Publish(String),
}

/// What the stream acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream that stored the message.
    pub stream: String,
    /// Its sequence in that stream (of the first copy, for a duplicate).
    pub sequence: u64,
    /// True when the stream had this `Nats-Msg-Id` within its duplicate window and dropped
    /// this copy: a retry of a message that was stored already.
    pub duplicate: bool,
}

/// Publishes to JetStream over one connection.
#[derive(Clone)]
pub struct JetStreamPublisher {
    js: jetstream::Context,
}

impl JetStreamPublisher {
    /// Connects to `servers` (from configuration), failing at once when none answers within
    /// `timeout` rather than retrying in the background.
    pub async fn connect(servers: &[String], timeout: Duration) -> Result<Self, NatsError> {
        let addrs = servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NatsError::Connect(e.to_string()))?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .name("wa-onboard-delivery")
            .connect(addrs)
            .await
            .map_err(|e| NatsError::Connect(e.to_string()))?;
        let mut js = jetstream::new(client);
        js.set_timeout(timeout);
        Ok(Self { js })
    }

    /// The JetStream context (stream management in tests and at start-up).
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes one event body to `subject` with `Nats-Msg-Id` = `event_id` and waits for the
    /// stream's acknowledgement.
    pub async fn publish(&self, subject: &str, event_id: &str, body: Bytes) -> Result<Published, NatsError> {
        validate_subject(subject)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id);
        // The NATS binding's structured mode: the body is the whole CloudEvent.
        headers.insert("content-type", CONTENT_TYPE);
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, body)
            .await
            .map_err(|e| NatsError::Publish(e.to_string()))?
            .await
            .map_err(|e| NatsError::Publish(e.to_string()))?;
        Ok(Published { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        for ok in ["a", "wa.onboard.t1.gupshup.state_changed", "a-b_c.D9", "ünï.code"] {
            assert_eq!(validate_subject(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a\tb", "a.*", "a.>", "a*b", "a.\u{7}"] {
            assert!(validate_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn templates() {
        let t = SubjectTemplate::parse("wa.onboard.{tenant}.{provider}.{type}").unwrap();
        assert_eq!(
            t.render("acme", "gupshup", EventKind::StateChanged).unwrap(),
            "wa.onboard.acme.gupshup.state_changed"
        );
        let fixed = SubjectTemplate::parse("events.onboarding").unwrap();
        assert_eq!(fixed.render("a b", "x.y", EventKind::Created).unwrap(), "events.onboarding");
        let repeated = SubjectTemplate::parse("{tenant}.x.{tenant}-{type}").unwrap();
        assert_eq!(repeated.render("t", "p", EventKind::Callback).unwrap(), "t.x.t-callback");

        for bad in ["wa.{tenant", "wa.tenant}", "wa.{account}", "wa.{}.x", "wa..{type}", "wa.{type}.>", "wa {type}", ""]
        {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad:?}");
        }
        for (tenant, provider) in [("a.b", "p"), ("t", "*"), ("t", ""), ("t t", "p"), ("t", ">")] {
            assert!(
                matches!(t.render(tenant, provider, EventKind::Created), Err(SubjectError::Value { .. })),
                "{tenant:?} {provider:?}"
            );
        }
        for kind in EventKind::ALL {
            assert!(t.render("t", "p", kind).is_ok(), "{kind}");
        }
    }

    fn nats_url() -> String {
        std::env::var("WA_ONBOARD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
    }

    /// Against the real server (JetStream on). Fails, never skips, when it is unreachable:
    /// `.ci/run` checks port 4222 first.
    #[tokio::test]
    async fn jetstream_drops_a_second_publish_of_the_same_event_id() {
        let publisher = JetStreamPublisher::connect(&[nats_url()], Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("NATS must be reachable at {} (JetStream on): {e}", nats_url()));
        let run = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("wa_onboard_test_{run}");
        let template = SubjectTemplate::parse(&format!("wa-test.{run}.{{tenant}}.{{provider}}.{{type}}")).unwrap();
        let js = publisher.context();
        let mut stream = js
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("wa-test.{run}.>")],
                duplicate_window: Duration::from_secs(120),
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .unwrap();

        let subject = template.render("acme", "gupshup", EventKind::StateChanged).unwrap();
        let body = Bytes::from_static(br#"{"specversion":"1.0","id":"evt_1"}"#);
        let first = publisher.publish(&subject, "evt_1", body.clone()).await.unwrap();
        let again = publisher.publish(&subject, "evt_1", body.clone()).await.unwrap();
        let other = publisher.publish(&subject, "evt_2", body).await.unwrap();
        let messages = stream.info().await.unwrap().state.messages;
        let stored = stream.get_last_raw_message_by_subject(&subject).await.unwrap();
        js.delete_stream(&name).await.unwrap();

        assert_eq!(first.stream, name);
        assert!(!first.duplicate);
        assert!(again.duplicate, "{again:?}");
        assert_eq!(again.sequence, first.sequence);
        assert!(!other.duplicate);
        assert_eq!(other.sequence, first.sequence + 1);
        assert_eq!(messages, 2, "one message per event id");
        let headers = stored.headers;
        assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("evt_2"), "{headers:?}");

        assert!(matches!(publisher.publish("wa-test.*", "evt_3", Bytes::new()).await, Err(NatsError::Subject(_))));
        let nowhere = publisher.publish(&format!("wa-test-none.{run}"), "evt_4", Bytes::new()).await;
        assert!(matches!(nowhere, Err(NatsError::Publish(_))), "no stream for the subject: {nowhere:?}");
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_to_connect() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = JetStreamPublisher::connect(&[format!("nats://127.0.0.1:{port}")], Duration::from_secs(2)).await;
        assert!(matches!(r, Err(NatsError::Connect(_))));
    }
}
