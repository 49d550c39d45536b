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
//! A connection is deleted when the person's grant that used it is revoked (its refresh token is then queued and
//! revoked at the provider by [`revoke_queued`]), when the person disconnects, when the provider refuses its
//! refresh token (`invalid_grant`: revoked there), or when its sealed tokens no longer open.

pub mod client;
pub mod connect;
pub mod seal;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::state::AppState;

/// A queued revocation the provider keeps failing is dropped after this long: the stored copy is long gone.
const GIVE_UP_SECS: i64 = 86_400;

/// Tells the providers of connections deleted with a revoked grant (RFC 7009, where they have a revocation
/// endpoint), oldest first, a hundred at a time; run by the server's maintenance loop on every replica (a
/// revocation told twice is told twice, harmlessly).
pub async fn revoke_queued(state: &AppState) {
    let snapshot = state.snapshot();
    let queued = match state.store.queued_revocations(100).await {
        Ok(queued) => queued,
        Err(e) => {
            tracing::warn!(error = %e, "queued provider revocations cannot be read");
            return;
        }
    };
    let now = crate::clock::now_secs();
    for q in queued {
        let opened = snapshot
            .sealer
            .as_ref()
            .map(|sealer| sealer.open(&q.key_id, &q.refresh_sealed, &q.subject, &q.provider));
        // A provider no longer configured, or a token that can no longer be opened: nothing left to tell. A key
        // this replica has not read yet is not that: the revocation waits (until the day's give-up).
        let done = match (snapshot.providers.get(&q.provider), opened) {
            (Some(_), Some(Err(crate::providers::seal::SealError::UnknownKey(_)))) => {
                now - q.queued_at > GIVE_UP_SECS
            }
            (Some(client), Some(Ok(token))) => match client.revoke(&token).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, provider = %q.provider, "revoking a provider token failed; tried again later");
                    now - q.queued_at > GIVE_UP_SECS
                }
            },
            _ => true,
        };
        if done && let Err(e) = state.store.forget_revocation(&q.refresh_sealed).await {
            tracing::warn!(error = %e, "a done provider revocation could not be forgotten");
        }
    }
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
