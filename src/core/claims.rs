//! One provider call per `request_id`, however many calls carry it at once.
//!
//! A use case whose provider call creates something (a batch of Exotel links, a Gupshup
//! subscription) claims its key in the store, in its own transaction, before calling the
//! provider. Concurrent calls with the same key find the claim and wait (polling, bounded)
//! until the owner's outcome is stored, then answer it; a different request under the key is
//! refused at once. The owner releases the claim once its outcome is stored or its call failed
//! (so a retry can go again); a claim whose owner died is taken over once its lease ends, and
//! the owner never works past its lease.

use std::future::Future;
use std::time::Duration;

use super::Core;
use crate::domain::{TenantId, new_id, now_ms};
use crate::error::{AppError, ErrorCode};
use crate::store::RequestClaim;

/// First pause between looks at a held claim; doubles up to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(20);
/// Longest pause between looks at a held claim.
const POLL_MAX: Duration = Duration::from_millis(250);

/// What a claimed call is keyed by.
pub(super) struct ClaimKey<'a> {
    /// Owner tenant.
    pub tenant: &'a TenantId,
    /// The key as stored (the `request_id`, scoped by the use case where it is not tenant-wide).
    pub key: String,
    /// The RPC.
    pub operation: &'a str,
    /// Keyed hash of the canonical request.
    pub hash: &'a [u8],
}

impl Core {
    /// How long a claim is its owner's without being taken over: the engine's lease.
    fn claim_lease(&self) -> Duration {
        Duration::from_secs(self.settings.engine.lease_secs.max(1))
    }

    /// Runs `work` for the first of the calls with this key; every other call (concurrent, or
    /// a retry) gets what `stored` finds once the owner's outcome is stored. `stored` must
    /// answer `Ok(None)` until `work` has durably stored its outcome (and check that a stored
    /// one is for the same request). Errors of `work` are returned to its caller only; waiters
    /// then claim in turn and try themselves.
    pub(super) async fn once_per_key<T, S, SF, W, WF>(&self, k: ClaimKey<'_>, stored: S, work: W) -> Result<T, AppError>
    where
        S: Fn() -> SF,
        SF: Future<Output = Result<Option<T>, AppError>>,
        W: FnOnce() -> WF,
        WF: Future<Output = Result<T, AppError>>,
    {
        let lease = self.claim_lease();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        // Waiting past one lease means the owner is gone (its claim is then taken over) or
        // the store is too slow to tell: either way the caller is better off retrying.
        let give_up = tokio::time::Instant::now() + lease + lease / 2;
        let owner = format!("{}/{}", self.worker_id, new_id::<String>());
        let mut pause = POLL_MIN;
        loop {
            if let Some(v) = stored().await? {
                return Ok(v);
            }
            let now = now_ms();
            let claim = RequestClaim {
                tenant_id: k.tenant.clone(),
                key: k.key.clone(),
                operation: k.operation.to_string(),
                request_hash: k.hash.to_vec(),
                owner: owner.clone(),
                lease_until_ms: now.saturating_add(lease_ms),
            };
            let held = match self.store.claim_request(&claim, now).await {
                // Waiters taking and releasing the claim in turn made it change hands under
                // this look several times: wait and look again, as behind a held claim.
                Err(crate::store::StoreError::Conflict(_)) => Some(claim.clone()),
                r => r?,
            };
            match held {
                None => {
                    // The last owner may have stored its outcome and released between our look
                    // and our claim.
                    let out = match stored().await {
                        Ok(Some(v)) => Ok(v),
                        Err(e) => Err(e),
                        Ok(None) => match tokio::time::timeout(lease, work()).await {
                            Ok(r) => r,
                            // Past the lease another call may take over: stop rather than race it.
                            Err(_) => Err(AppError::unavailable(format!(
                                "{} did not finish within {} s; retry with the same request_id",
                                k.operation,
                                lease.as_secs()
                            ))),
                        },
                    };
                    if let Err(e) = self.store.release_request(k.tenant, &k.key, &owner).await {
                        // Not fatal: the lease ends the claim anyway.
                        tracing::warn!(operation = k.operation, error = %e, "Could not release a request claim.");
                    }
                    return out;
                }
                Some(h) if h.operation != k.operation || h.request_hash != k.hash => {
                    return Err(AppError::new(
                        ErrorCode::AlreadyExists,
                        format!(
                            "request_id '{}' is in use by a different {} request; use a new request_id",
                            k.key.rsplit('\n').next().unwrap_or_default(),
                            h.operation
                        ),
                    )
                    .with_violation("request_id", "already used for a different request"));
                }
                Some(_) => {
                    let left = give_up.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(AppError::unavailable(format!(
                            "a {} with this request_id is still in progress; retry with the same request_id",
                            k.operation
                        ))
                        .with_retry_after(Duration::from_secs(1)));
                    }
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        }
    }
}
