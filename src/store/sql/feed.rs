//! Change notification: the local bus, the cross-replica payload, and publishing after commit.

use async_trait::async_trait;

use super::SqlBackend;
use crate::domain::OnboardingId;
use crate::store::{ChangeFeed, ChangeNotice, StoreResult};

/// Publishes after a commit. The write already happened, so a failed notification is only
/// logged: subscribers re-read the log and catch up on the next notice.
pub(super) async fn publish_after_commit<B: SqlBackend>(backend: &B, notice: &ChangeNotice) {
    if let Err(error) = backend.publish(notice).await {
        tracing::warn!(%error, onboarding_id = %notice.onboarding_id, "change notification failed");
    }
}

/// [`publish_after_commit`] of every notice of one committed write, in one go
/// ([`SqlBackend::publish_all`]).
pub(super) async fn publish_all_after_commit<B: SqlBackend>(backend: &B, notices: &[ChangeNotice]) {
    if let Err(error) = backend.publish_all(notices).await {
        tracing::warn!(%error, notices = notices.len(), "change notification failed");
    }
}

/// Cross-replica notification payload: `onboarding_id:sequence:origin`. The origin (the
/// sending store instance) lets a replica skip its own notices, which it already delivered
/// locally.
pub(crate) fn notice_payload(notice: &ChangeNotice, origin: &str) -> String {
    format!("{}:{}:{}", notice.onboarding_id.as_str(), notice.sequence, origin)
}

/// Parses [`notice_payload`]; the origin is optional (`onboarding_id:sequence` also parses).
pub(crate) fn parse_notice_payload(payload: &str) -> Option<(ChangeNotice, Option<&str>)> {
    let mut parts = payload.splitn(3, ':');
    let onboarding_id = OnboardingId::parse(parts.next()?).ok()?;
    let sequence = parts.next()?.parse().ok()?;
    Some((ChangeNotice::moved(onboarding_id, sequence), parts.next()))
}

#[async_trait]
impl<B: SqlBackend> ChangeFeed for B {
    async fn notify(&self, notice: &ChangeNotice) -> StoreResult<()> {
        self.publish(notice).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ChangeNotice> {
        self.bus().subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_payload_round_trips() {
        let notice = ChangeNotice::moved(OnboardingId::parse("abc-1").unwrap(), 42);
        let payload = notice_payload(&notice, "origin1");
        assert_eq!(payload, "abc-1:42:origin1");
        assert_eq!(parse_notice_payload(&payload), Some((notice.clone(), Some("origin1"))));
        assert_eq!(parse_notice_payload("abc-1:42"), Some((notice, None)));
        assert_eq!(parse_notice_payload("abc-1"), None);
        assert_eq!(parse_notice_payload("Bad Id:1"), None);
        assert_eq!(parse_notice_payload("abc-1:x"), None);
    }
}
