//! Webhook intake (the use case behind the HTTP ingress): authenticate by the per-account
//! path secret, parse with the account's adapter, store each provider event under its
//! dedupe key, and hand processing to the engine (directly, to this replica's, when it runs
//! one). Replies fast: nothing here calls a provider.

use sha2::{Digest, Sha256};

use super::Core;
use super::callbacks::Handed;
use crate::domain::{AccountId, ProviderKind, Secret, new_id, now_ms};
use crate::error::AppError;
use crate::store::{WebhookEventRecord, WebhookStatus};

/// What the ingress accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Intake {
    /// Events stored for processing.
    pub accepted: usize,
    /// Events already received before (acknowledged, ignored).
    pub duplicates: usize,
}

impl Core {
    /// Takes one webhook delivery. Unknown provider or account and a wrong secret are all the
    /// same `NOT_FOUND` (nothing to learn by probing) and store nothing; a body the adapter
    /// cannot parse is kept (status `MALFORMED`) and refused with `INVALID_ARGUMENT`.
    pub async fn ingest_webhook(
        &self,
        provider: &str,
        account: &str,
        secret: &str,
        body: &[u8],
    ) -> Result<Intake, AppError> {
        let not_found = || AppError::not_found("webhook endpoint");
        let kind: ProviderKind = provider.parse().map_err(|_| not_found())?;
        let account_id = AccountId::parse(account).map_err(|_| not_found())?;
        let account = self.store.account_unscoped(&account_id).await?.ok_or_else(not_found)?;
        if account.provider != kind {
            return Err(not_found());
        }
        // Constant-time comparison (Secret's PartialEq).
        if self.webhook_secret(&account)? != Secret::new(secret) {
            tracing::warn!(account = %account_id, provider = %kind, "Webhook with a wrong secret refused.");
            return Err(not_found());
        }
        let (adapter, _) = self.provider_for(&account)?;
        let now = now_ms();
        let events = match adapter.parse_callback(body) {
            Ok(events) => events,
            Err(e) => {
                let digest = hex::encode(Sha256::digest(body));
                let record = WebhookEventRecord {
                    id: new_id::<String>(),
                    provider: kind,
                    account_id: account_id.clone(),
                    dedupe_key: format!("malformed:{digest}"),
                    body: body.to_vec(),
                    status: WebhookStatus::Malformed,
                    note: Some(e.to_string()),
                    lease_owner: None,
                    lease_until_ms: None,
                    received_ms: now,
                };
                self.store.insert_webhook_event(&record).await?;
                tracing::warn!(account = %account_id, provider = %kind, error = %e, "Malformed webhook kept for inspection.");
                return Err(AppError::invalid(
                    "body",
                    format!("not a {} callback this service understands: {e}", kind.display_name()),
                ));
            }
        };
        // Hot path: stored already leased to this replica and handed to its engine, which
        // applies them without a claim. Unleased (for the claim path of any replica) when no
        // engine runs here or its queue is full.
        let handoff = self.settings.engine.enabled && self.webhook_handoff.has_room();
        let (lease_owner, lease_until_ms) = if handoff {
            (Some(self.worker_id.clone()), Some(now.saturating_add(self.lease().as_millis() as i64)))
        } else {
            (None, None)
        };
        let mut intake = Intake::default();
        let mut handed = Vec::new();
        for ev in events {
            let record = WebhookEventRecord {
                id: new_id::<String>(),
                provider: kind,
                account_id: account_id.clone(),
                dedupe_key: ev.dedupe_key.clone(),
                body: body.to_vec(),
                status: WebhookStatus::Pending,
                note: None,
                lease_owner: lease_owner.clone(),
                lease_until_ms,
                received_ms: now,
            };
            if self.store.insert_webhook_event(&record).await? {
                intake.accepted += 1;
                if handoff {
                    handed.push(Handed { record, callback: Some(ev) });
                }
            } else {
                intake.duplicates += 1;
            }
        }
        tracing::info!(account = %account_id, provider = %kind, accepted = intake.accepted, duplicates = intake.duplicates, "Webhook received.");
        if !handed.is_empty() {
            self.webhook_handoff.push(handed);
        }
        Ok(intake)
    }
}
