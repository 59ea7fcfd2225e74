//! Use cases. Depends on the domain and the two ports (store, providers), never on gRPC or
//! HTTP types.

pub mod accounts;
pub mod bus;
pub mod callbacks;
pub mod capabilities;
mod claims;
pub mod context;
pub mod delivery;
pub mod delivery_worker;
pub mod engine;
pub mod lifecycle;
pub mod onboardings;
mod pipeline_rows;
pub mod read_cache;
pub mod settings;
pub mod tenants;
pub mod views;
pub mod webhooks;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::crypto::Cipher;
use crate::domain::{ProviderKind, TenantId};
use crate::error::{AppError, ErrorCode};
use crate::providers::ProviderRegistry;
use crate::providers::accounts::Endpoints;
use crate::store::{EventRecord, IdempotencyRecord, Store};

pub use settings::CoreSettings;

/// Shared state of the use cases. Built once by [`Core::new`]; cheap to clone (every clone
/// shares the same engine wake-up, handoff and intake).
#[derive(Clone)]
pub struct Core {
    /// The store every use case reads and writes (tenants, accounts, onboardings, work).
    store: Arc<dyn Store>,
    /// Encryption at rest.
    cipher: Arc<Cipher>,
    /// What the use cases and the engine read of the configuration.
    settings: Arc<CoreSettings>,
    /// Base URL providers use to reach our webhook ingress.
    webhook_base: String,
    /// Onboarding change fan-out for streams.
    bus: bus::Bus,
    /// Where accounts' provider APIs are (public hosts, the sandbox's simulators).
    endpoints: Arc<Endpoints>,
    /// Provider adapters by kind, one instance per account.
    providers: Arc<ProviderRegistry>,
    /// Wakes this replica's engine when new work is written.
    engine_wake: Arc<tokio::sync::Notify>,
    /// Webhook events the ingress stored for this replica's engine to apply at once.
    webhook_handoff: Arc<callbacks::Handoff>,
    /// The ingress's group commit of webhook events.
    webhook_intake: Arc<webhooks::IntakeWriter>,
    /// This replica's lease-holder name.
    worker_id: String,
}

/// What [`Core::new`] is built from.
pub struct CoreParts {
    /// The store every use case reads and writes (tenants, accounts, onboardings, work).
    pub store: Arc<dyn Store>,
    /// Encryption at rest.
    pub cipher: Cipher,
    /// What the use cases and the engine read of the configuration.
    pub settings: CoreSettings,
    /// Base URL providers use to reach our webhook ingress (no trailing `/`).
    pub webhook_base: String,
    /// Onboarding change fan-out for streams (its reader task runs beside the core).
    pub bus: bus::Bus,
    /// Where accounts' provider APIs are.
    pub endpoints: Endpoints,
    /// Provider adapters by kind.
    pub providers: ProviderRegistry,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("webhook_base", &self.webhook_base).finish_non_exhaustive()
    }
}

/// The caller, as established by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant its API key belongs to; every read and write is scoped by it.
    pub tenant: TenantId,
}

impl Core {
    /// The use cases over `parts`, with this replica's own lease-holder name.
    pub fn new(parts: CoreParts) -> Self {
        let CoreParts { store, cipher, settings, webhook_base, bus, endpoints, providers } = parts;
        Self {
            store,
            cipher: Arc::new(cipher),
            settings: Arc::new(settings),
            webhook_base,
            bus,
            endpoints: Arc::new(endpoints),
            providers: Arc::new(providers),
            engine_wake: Arc::new(tokio::sync::Notify::new()),
            webhook_handoff: Arc::new(callbacks::Handoff::default()),
            webhook_intake: Arc::default(),
            worker_id: format!("{}-{}", std::process::id(), crate::domain::new_id::<String>()),
        }
    }

    /// Another replica over the same store, encryption, adapters and endpoints, with
    /// `settings` and its own lease-holder name, engine wake-up and webhook queues: what a
    /// second process would be (tests make one that dies with work leased to it).
    pub fn other_replica(&self, settings: CoreSettings) -> Self {
        Self {
            store: Arc::clone(&self.store),
            cipher: Arc::clone(&self.cipher),
            settings: Arc::new(settings),
            webhook_base: self.webhook_base.clone(),
            bus: self.bus.clone(),
            endpoints: Arc::clone(&self.endpoints),
            providers: Arc::clone(&self.providers),
            engine_wake: Arc::new(tokio::sync::Notify::new()),
            webhook_handoff: Arc::new(callbacks::Handoff::default()),
            webhook_intake: Arc::default(),
            worker_id: format!("{}-{}", std::process::id(), crate::domain::new_id::<String>()),
        }
    }

    /// What the use cases and the engine read of the configuration.
    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    /// Webhook events stored for this replica and waiting in its memory to be applied.
    pub fn handed_over(&self) -> usize {
        self.webhook_handoff.len()
    }

    /// Whether this build has an adapter for `kind`.
    pub fn implemented(&self, kind: ProviderKind) -> bool {
        self.providers.implemented(kind)
    }

    /// Whether the built-in simulators run in this process (sandbox accounts can be served).
    pub fn sandbox_running(&self) -> bool {
        self.endpoints.sandbox_running()
    }

    /// Where accounts' provider APIs are (tests check the sandbox's simulators through it).
    pub fn endpoints(&self) -> &crate::providers::accounts::Endpoints {
        &self.endpoints
    }

    /// Hands every event of `id`'s log to `visit`, in order, reading the log in pages.
    pub(crate) async fn each_event(
        &self,
        id: &crate::domain::OnboardingId,
        mut visit: impl FnMut(&EventRecord),
    ) -> Result<(), AppError> {
        const PAGE: u32 = 500;
        let mut after = 0;
        loop {
            let evs = self.store.events(id, after, PAGE).await?;
            for e in &evs {
                after = e.sequence;
                visit(e);
            }
            if evs.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    /// A keyed fingerprint of a request, for idempotency: keyed so that the stored hash of
    /// a request carrying credentials cannot be brute-forced offline.
    pub fn fingerprint(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(self.cipher.fingerprint_key());
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        h.finalize().to_vec()
    }

    /// Checks a stored idempotency record against this request: `Ok(Some(resource))` when it
    /// is the same request again, `Ok(None)` when the key is unused, and `ALREADY_EXISTS`
    /// when the key was used for a different request.
    pub async fn replay(
        &self,
        tenant: &TenantId,
        key: Option<&str>,
        operation: &str,
        hash: &[u8],
    ) -> Result<Option<String>, AppError> {
        let Some(key) = key else { return Ok(None) };
        match self.store.idempotency(tenant, key).await? {
            None => Ok(None),
            Some(r) if r.operation == operation && r.request_hash == hash => Ok(Some(r.resource)),
            Some(r) => Err(AppError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "request_id '{key}' was already used for a different {} request; use a new request_id",
                    r.operation
                ),
            )
            .with_violation("request_id", "already used for a different request")),
        }
    }

    /// A new idempotency record for `key`, if the caller sent one.
    pub fn idempotency_record(
        &self,
        tenant: &TenantId,
        key: Option<&str>,
        operation: &str,
        hash: Vec<u8>,
        resource: String,
    ) -> Option<IdempotencyRecord> {
        key.map(|k| IdempotencyRecord {
            tenant_id: tenant.clone(),
            key: k.to_string(),
            operation: operation.to_string(),
            request_hash: hash,
            resource,
            created_ms: crate::domain::now_ms(),
        })
    }
}

/// Runs a store read on a task of its own, so it completes and hands its pooled connection back
/// even when the stream awaiting it is never polled again: tonic stops polling a stream whose
/// client does not open its HTTP/2 window, possibly in the middle of a read, and a handful of
/// such streams would otherwise hold every reader connection of the store for as long as the
/// client wished. A blocked stream then holds only what was read. Used by every read a stream
/// makes: its events ([`bus`]) and its key re-check ([`tenants::KeyCheck`]).
pub(crate) async fn detached<T: Send + 'static>(
    read: impl std::future::Future<Output = Result<T, AppError>> + Send + 'static,
) -> Result<T, AppError> {
    tokio::spawn(read).await.map_err(|e| AppError::internal(format!("stream read task failed: {e}")))?
}
