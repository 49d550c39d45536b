//! Third-party APIs with the person's own account (issue 18, part 2): a person connects a provider once, this
//! server keeps the provider's tokens sealed, and the sidecar of a service declared to receive that provider
//! obtains a fresh provider access token for the person of each request, by the same RFC 8693 exchange it uses
//! for downstream tokens (audience `urn:mcp-authz:provider:<id>`).
//!
//! ```text
//!  browser ──/connect/{id}──▶ provider (code + PKCE, we are a confidential client) ──/connect/{id}/callback──▶
//!      connection (subject, provider): refresh + access token sealed (seal.rs), tied to the grants that use it
//!  sidecar of S ──token exchange (private_key_jwt, subject_token for S, audience = provider)──▶ tokens.rs:
//!      S declared for the provider? connection of the token's sub? access token still fresh, else refresh
//!      (one refresh per connection at a time) ──▶ the provider's access token, never past its expiry
//! ```
//!
//! A connection is deleted when the person's grant that used it is revoked, when the person disconnects, when the
//! provider refuses its refresh token (`invalid_grant`: revoked there), or when its sealed tokens no longer open
//! (or are of the retired format v1). Each time, in the same transaction, its refresh token and its live access
//! token are queued and then revoked at the provider by [`revoke_queued`], retried until the provider answers. A
//! connection replaced by connecting again is not revoked: the new one usually continues the same grant at the
//! provider, and revoking any token of a grant revokes all of it at many providers.

pub mod client;
pub mod connect;
pub mod seal;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::providers::seal::{Field, SealError, Sealer};
use crate::state::{AppState, Snapshot};
use crate::store::QueuedRevocation;

/// A queued revocation the provider keeps failing is dropped after this long: the stored copy is long gone.
const GIVE_UP_SECS: i64 = 86_400;

/// Tells the providers of deleted connections to revoke their tokens (RFC 7009, where they have a
/// revocation endpoint), oldest first, a hundred at a time; run by the server's maintenance loop on every replica
/// (a revocation told twice is told twice, harmlessly).
pub async fn revoke_queued(state: &AppState) {
    let queued = match state.store.queued_revocations(100).await {
        Ok(queued) => queued,
        Err(e) => {
            tracing::warn!(error = %e, "queued provider revocations cannot be read");
            return;
        }
    };
    revoke(state, &queued).await;
}

/// Tells the providers of `queued` now (a disconnect does not wait for the loop); what fails stays queued.
pub async fn revoke(state: &AppState, queued: &[QueuedRevocation]) {
    let snapshot = state.snapshot();
    let now = crate::clock::now_secs();
    for q in queued {
        if revoke_one(state, &snapshot, q, now).await
            && let Err(e) = state.store.forget_revocation(&q.sealed).await
        {
            tracing::warn!(error = %e, "a done provider revocation could not be forgotten");
        }
    }
}

/// Whether `q` is done with: told, given up, or nothing left to tell.
async fn revoke_one(state: &AppState, snapshot: &Snapshot, q: &QueuedRevocation, now: i64) -> bool {
    let given_up = now - q.queued_at > GIVE_UP_SECS;
    // A provider no longer configured: nothing left to tell.
    let Some(client) = snapshot.providers.get(&q.provider) else {
        return true;
    };
    // Keys not loaded (a key file that does not read): the revocation waits for them, as for a key not read yet.
    let Some(sealer) = snapshot.sealer.as_ref() else {
        return given_up;
    };
    let field = Field::from_hint(&q.token_type_hint).unwrap_or(Field::Refresh);
    let token =
        match sealer.open_for_revocation(&q.key_id, &q.sealed, &q.subject, &q.provider, field) {
            Ok(token) => token,
            // A key this replica has not read yet: the revocation waits (until the day's give-up).
            Err(SealError::UnknownKey(_)) => return given_up,
            // Altered, or sealed for someone else: it can no longer be opened, so nothing can be told.
            Err(_) => return true,
        };
    match still_held(state, sealer, q, &token).await {
        Ok(true) => return true,
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "a provider connection cannot be read before revoking; tried again later");
            return given_up;
        }
    }
    match client.revoke(&token, field.hint()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, provider = %q.provider, "revoking a provider token failed; tried again later");
            given_up
        }
    }
}

/// Whether the person's current connection holds the same token (a provider may answer connecting again with the
/// refresh token it gave before): revoking it would end the connection just made.
async fn still_held(
    state: &AppState,
    sealer: &Sealer,
    q: &QueuedRevocation,
    token: &str,
) -> Result<bool, crate::store::StoreError> {
    let Some(current) = state.store.connection(&q.subject, &q.provider).await? else {
        return Ok(false);
    };
    let held = [
        Some((current.access_sealed.as_str(), Field::Access)),
        current
            .refresh_sealed
            .as_deref()
            .map(|r| (r, Field::Refresh)),
    ];
    Ok(held.into_iter().flatten().any(|(sealed, field)| {
        sealer
            .open_for_revocation(&current.key_id, sealed, &q.subject, &q.provider, field)
            .is_ok_and(|t| crate::secrets::constant_time_eq(&t, token))
    }))
}

/// A connection: (subject, provider).
type Connection = (String, String);

/// One refresh at a time per connection on this replica (replicas settle races in the store: see
/// [`crate::store::Store::replace_connection`]).
#[derive(Default)]
pub struct Flights {
    locks: Mutex<HashMap<Connection, Arc<tokio::sync::Mutex<()>>>>,
}

/// Past this many entries, those nobody holds are dropped.
const MAX_IDLE_FLIGHTS: usize = 1024;

impl Flights {
    /// Waits for the connection of `subject` at `provider` to be this caller's alone.
    pub async fn enter(&self, subject: &str, provider: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if locks.len() >= MAX_IDLE_FLIGHTS {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks
                .entry((subject.to_owned(), provider.to_owned()))
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}
