//! Webhook intake (the use case behind the HTTP ingress): authenticate by the per-account
//! path secret, parse with the account's adapter, store each provider event under its
//! dedupe key, and hand processing to the engine (directly, to this replica's, when it runs
//! one). Replies fast: nothing here calls a provider.

use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::Core;
use super::callbacks::Handed;
use crate::domain::{AccountId, ProviderKind, Secret, new_id, now_ms};
use crate::error::AppError;
use crate::store::{Sealed, Store, StoreResult, WebhookEventRecord, WebhookStatus};

/// Most events one group commit writes.
const GROUP_ROWS: usize = 512;
/// Deliveries waiting for the writer before new ones wait to queue (back-pressure on the
/// ingress rather than unbounded memory).
const GROUP_QUEUE: usize = 4096;

/// What a delivery gets back: its records, each with whether it was stored (else a duplicate).
type Stored = Result<Vec<(WebhookEventRecord, bool)>, AppError>;

struct Pending {
    records: Vec<WebhookEventRecord>,
    reply: oneshot::Sender<Stored>,
}

/// Group commit of the ingress's inserts. Concurrent deliveries queue their events and one
/// writer task stores everything queued so far in one transaction
/// ([`WebhookInbox::insert_webhook_events`](crate::store::WebhookInbox::insert_webhook_events)),
/// so under load the single SQLite writer commits a few batches instead of one transaction per
/// event. An idle ingress loses nothing: the writer
/// takes a lone delivery at once. Each delivery is still answered only after its events are
/// committed.
#[derive(Default)]
pub struct IntakeWriter {
    queue: OnceLock<mpsc::Sender<Pending>>,
    /// A webhook secret of the real shape, sealed with this core's cipher: a delivery for no
    /// account opens and compares it, so it costs what a wrong secret costs.
    decoy: OnceLock<Sealed>,
}

impl std::fmt::Debug for IntakeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeWriter").field("started", &self.queue.get().is_some()).finish()
    }
}

/// Where group commits go: the store, or a test double that counts them.
#[async_trait::async_trait]
pub trait GroupSink: Send + Sync + 'static {
    /// [`WebhookInbox::insert_webhook_events`](crate::store::WebhookInbox::insert_webhook_events).
    async fn insert(&self, events: &[WebhookEventRecord]) -> StoreResult<Vec<bool>>;
}

#[async_trait::async_trait]
impl GroupSink for Arc<dyn Store> {
    async fn insert(&self, events: &[WebhookEventRecord]) -> StoreResult<Vec<bool>> {
        self.insert_webhook_events(events).await
    }
}

impl IntakeWriter {
    /// Stores `records` (deduplicated) in the next group commit to `sink`. The writer task
    /// starts with the first delivery and ends when the last handle to this writer is dropped.
    pub async fn store<S: GroupSink + Clone>(&self, sink: &S, records: Vec<WebhookEventRecord>) -> Stored {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(GROUP_QUEUE);
            tokio::spawn(write_groups(sink.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let gone = || AppError::unavailable("the webhook writer stopped");
        queue.send(Pending { records, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The writer task: takes every delivery queued (up to [`GROUP_ROWS`] events), writes them in
/// one transaction and answers each. A delivery whose caller went away is still written (its
/// events are leased, so the claim path applies them when the lease lapses).
async fn write_groups(sink: impl GroupSink, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut rows = group[0].records.len();
        while rows < GROUP_ROWS {
            match rx.try_recv() {
                Ok(p) => {
                    rows += p.records.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let mut sizes = Vec::with_capacity(group.len());
        let mut all = Vec::with_capacity(rows);
        let mut replies = Vec::with_capacity(group.len());
        for p in group {
            sizes.push(p.records.len());
            all.extend(p.records);
            replies.push(p.reply);
        }
        match sink.insert(&all).await {
            Ok(flags) => {
                let mut rows = all.into_iter().zip(flags);
                for (reply, n) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(rows.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let e = AppError::from(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Core {
    /// The decoy secret ([`IntakeWriter`]), opened as [`Core::webhook_secret`] opens a real one.
    fn webhook_decoy(&self) -> Result<Secret, AppError> {
        const AAD: &str = "account/webhook-decoy/webhook";
        let fail = |e: crate::crypto::CryptoError| AppError::internal(format!("webhook decoy: {e}"));
        let sealed = match self.webhook_intake.decoy.get() {
            Some(s) => s,
            None => {
                let sealed = self.cipher.seal_secret(&super::accounts::new_webhook_secret(), AAD).map_err(fail)?;
                self.webhook_intake.decoy.get_or_init(|| sealed)
            }
        };
        self.cipher.open_secret(sealed, AAD).map_err(fail)
    }
}

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
        let segment = AccountId::parse(account).map_err(|_| not_found())?;
        // No account (of this provider) and a wrong secret do the same work, so timing tells
        // them apart no better than the answer does: one store read, one decryption of a
        // secret of the same shape, one constant-time comparison (Secret's PartialEq), one log.
        let found = self.store.webhook_account(&segment).await?.filter(|a| a.provider == kind);
        let expected = match &found {
            Some(a) => self.webhook_secret(a)?,
            None => self.webhook_decoy()?,
        };
        let matches = expected == Secret::new(secret);
        let account = match found {
            Some(a) if matches => a,
            _ => {
                tracing::warn!(account = %segment, provider = %kind, "Webhook for no account or with a wrong secret refused.");
                return Err(not_found());
            }
        };
        // The row's key: the URL may name a migrated account by its pre-0003 id.
        let account_id = account.id.clone();
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
        let records = events
            .iter()
            .map(|ev| WebhookEventRecord {
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
            })
            .collect();
        let mut intake = Intake::default();
        let mut handed = Vec::new();
        for ((record, new), ev) in self.webhook_intake.store(&self.store, records).await?.into_iter().zip(events) {
            if new {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records every group written; holds writes while the gate is write-locked.
    #[derive(Clone, Default)]
    struct Sink {
        groups: Arc<Mutex<Vec<Vec<String>>>>,
        gate: Arc<tokio::sync::RwLock<()>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait::async_trait]
    impl GroupSink for Sink {
        async fn insert(&self, events: &[WebhookEventRecord]) -> StoreResult<Vec<bool>> {
            let _open = self.gate.read().await;
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::StoreError::Unavailable("down".into()));
            }
            let mut groups = self.groups.lock().unwrap();
            let seen: std::collections::HashSet<String> = groups.iter().flatten().cloned().collect();
            groups.push(events.iter().map(|e| e.dedupe_key.clone()).collect());
            let mut new = std::collections::HashSet::new();
            Ok(events.iter().map(|e| !seen.contains(&e.dedupe_key) && new.insert(e.dedupe_key.clone())).collect())
        }
    }

    fn record(key: &str) -> WebhookEventRecord {
        WebhookEventRecord {
            id: new_id::<String>(),
            provider: ProviderKind::Gupshup,
            account_id: AccountId::parse("acct").unwrap(),
            dedupe_key: key.into(),
            body: key.as_bytes().to_vec(),
            status: WebhookStatus::Pending,
            note: None,
            lease_owner: None,
            lease_until_ms: None,
            received_ms: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_queued_behind_a_write_share_the_next_one_and_get_their_own_answers() {
        let sink = Sink::default();
        let writer = Arc::new(IntakeWriter::default());
        // A lone delivery is written at once.
        let first = writer.store(&sink, vec![record("a")]).await.unwrap();
        assert_eq!(first.iter().map(|(r, new)| (r.dedupe_key.as_str(), *new)).collect::<Vec<_>>(), vec![("a", true)]);
        // Hold the next write; everything arriving meanwhile goes into the one after it.
        let hold = sink.gate.write().await;
        let mut tasks = Vec::new();
        for batch in [vec!["b"], vec!["c", "a"], vec!["d", "d"], vec!["b"], vec!["e"]] {
            let (sink, writer) = (sink.clone(), writer.clone());
            let records: Vec<_> = batch.iter().map(|k| record(k)).collect();
            tasks.push(tokio::spawn(async move { writer.store(&sink, records).await.unwrap() }));
            // The first one becomes the held write; the rest queue behind it.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(hold);
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap().into_iter().map(|(r, new)| (r.dedupe_key, new)).collect::<Vec<_>>());
        }
        let k = |s: &str, new| (s.to_string(), new);
        assert_eq!(
            answers,
            vec![
                vec![k("b", true)],
                vec![k("c", true), k("a", false)],
                vec![k("d", true), k("d", false)],
                vec![k("b", false)],
                vec![k("e", true)],
            ],
            "each delivery gets its own records back, in order"
        );
        let groups = sink.groups.lock().unwrap().clone();
        assert_eq!(groups.len(), 3, "one write, the held one, then one for all that queued: {groups:?}");
        assert_eq!(groups[2], vec!["c", "a", "d", "d", "b", "e"]);
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_delivery_in_it_and_the_writer_goes_on() {
        let sink = Sink::default();
        let writer = IntakeWriter::default();
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let e = writer.store(&sink, vec![record("a")]).await.unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::Unavailable);
        sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(writer.store(&sink, vec![record("a")]).await.unwrap()[0].1, "nothing of the failed write was kept");
    }
}
