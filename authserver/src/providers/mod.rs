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
//! A connection is deleted when the person's grant that used it is revoked, when the provider refuses its
//! refresh token (`invalid_grant`: revoked there), or when its sealed tokens no longer open.

pub mod client;
pub mod connect;
pub mod seal;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
