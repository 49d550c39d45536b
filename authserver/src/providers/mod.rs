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
//! token are queued and then revoked at the provider by [`revoke_queued`], each retried with a backoff of its own
//! while the provider fails (given up, logged and counted, after [`MAX_FAILED_ATTEMPTS`]), and waiting as long as
//! a replica lacks the key or the provider to try. A connection replaced by connecting again is not revoked: the
//! new one usually continues the same grant at the provider, and revoking any token of a grant revokes all of it
//! at many providers.

pub mod client;
pub mod connect;
pub mod seal;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::providers::client::{ProviderError, RevokeAnswer};
use crate::providers::seal::{Field, SealError, Sealer};
use crate::state::{AppState, Snapshot};
use crate::store::QueuedRevocation;

/// A revocation the provider failed this many times is given up: with the backoff below, about a day of trying.
pub const MAX_FAILED_ATTEMPTS: i64 = 30;
/// The wait after a revocation's first failure at the provider; it doubles with each further one, up to
/// [`MAX_BACKOFF_SECS`].
const FIRST_BACKOFF_SECS: i64 = 10;
const MAX_BACKOFF_SECS: i64 = 3_600;
/// How long a revocation this replica cannot attempt (a key or a provider it has not loaded) waits before it is
/// looked at again, by any replica: not counted as an attempt, never given up for it.
const WAIT_SECS: i64 = 60;
/// Rows read at a time, and reads per pass: a pass ends even if rows keep coming due.
const BATCH: i64 = 100;
const BATCHES_PER_PASS: usize = 10;

/// When a revocation that has now failed `failed` times at the provider is tried again, from `now`.
pub fn next_attempt_at(failed: i64, now: i64) -> i64 {
    let doublings = u32::try_from(failed.clamp(1, 32) - 1).unwrap_or(0);
    now + FIRST_BACKOFF_SECS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_BACKOFF_SECS)
}

/// Tells the providers of deleted connections to revoke their tokens (RFC 7009, where they have a revocation
/// endpoint), those due first; run by the server's maintenance loop on every replica (a revocation told twice is
/// told twice, harmlessly).
pub async fn revoke_queued(state: &AppState) {
    // Without usable keys nothing can be opened here; the rows stay due for a replica that has them.
    if state.snapshot().sealer.is_none() {
        return;
    }
    for _ in 0..BATCHES_PER_PASS {
        let queued = match state
            .store
            .queued_revocations(crate::clock::now_secs(), BATCH)
            .await
        {
            Ok(queued) => queued,
            Err(e) => {
                tracing::warn!(error = %e, "queued provider revocations cannot be read");
                return;
            }
        };
        // What was told is forgotten and what failed or waits is postponed, so the next read finds other rows.
        revoke(state, &queued).await;
        if queued.len() < BATCH as usize {
            return;
        }
    }
}

/// Tells the providers of `queued` now (a disconnect does not wait for the loop); what fails stays queued, to be
/// told again after its backoff. After a provider's first failure, its other tokens wait for the next pass: a
/// provider that is down or hangs (10 s a call) costs a pass one call, and holds up no other provider.
pub async fn revoke(state: &AppState, queued: &[QueuedRevocation]) {
    let snapshot = state.snapshot();
    let mut skipped: Vec<&str> = Vec::new();
    for q in queued {
        if skipped.contains(&q.provider.as_str()) {
            continue;
        }
        let now = crate::clock::now_secs();
        let store = &state.store;
        let updated = match revoke_one(state, &snapshot, q).await {
            Outcome::Revoked => store.forget_revocation(&q.sealed).await,
            Outcome::Ended(reason) => {
                tracing::warn!(provider = %q.provider, hint = %q.token_type_hint, reason, "a provider token is no longer queued for revocation although the provider did not confirm it");
                abandoned(state, reason);
                store.forget_revocation(&q.sealed).await
            }
            Outcome::Wait => store.postpone_revocation(&q.sealed, now + WAIT_SECS).await,
            Outcome::WaitProvider(why) => {
                skipped.push(&q.provider);
                tracing::warn!(provider = %q.provider, why, "provider revocations wait: this server cannot call the provider now");
                store
                    .postpone_provider_revocations(&q.provider, now + WAIT_SECS)
                    .await
            }
            Outcome::Failed(error) => {
                skipped.push(&q.provider);
                let failed = q.attempts.saturating_add(1);
                if failed >= MAX_FAILED_ATTEMPTS {
                    tracing::warn!(%error, provider = %q.provider, hint = %q.token_type_hint, attempts = failed, "the provider kept failing a token's revocation; given up");
                    abandoned(state, "given_up");
                    store.forget_revocation(&q.sealed).await
                } else {
                    tracing::warn!(%error, provider = %q.provider, attempts = failed, "revoking a provider token failed; tried again later");
                    let next = next_attempt_at(failed, now);
                    match store.revocation_failed(&q.sealed, next).await {
                        Ok(()) => store.postpone_provider_revocations(&q.provider, next).await,
                        Err(e) => Err(e),
                    }
                }
            }
        };
        if let Err(e) = updated {
            tracing::warn!(error = %e, "the provider revocation queue could not be updated");
        }
    }
}

fn abandoned(state: &AppState, reason: &str) {
    state
        .metrics
        .provider_revocations_abandoned
        .with_label_values(&[reason])
        .inc();
}

/// What became of one queued revocation.
enum Outcome {
    /// The provider took it, or the person's current connection holds the token (nothing to tell: revoking it
    /// would end that connection).
    Revoked,
    /// It can never be told (the reason, a metric label).
    Ended(&'static str),
    /// The provider failed it: tried again after its backoff.
    Failed(ProviderError),
    /// This replica cannot try it (a key not read yet, or none usable): tried again a little later.
    Wait,
    /// This replica cannot call the provider (one it has not loaded, during a rollout adding or renaming it; its
    /// client secret unreadable here; this replica's calls to it all in progress): the provider's every revocation
    /// waits, counting no attempt.
    WaitProvider(&'static str),
}

async fn revoke_one(state: &AppState, snapshot: &Snapshot, q: &QueuedRevocation) -> Outcome {
    let Some(client) = snapshot.providers.get(&q.provider) else {
        return Outcome::WaitProvider("not loaded");
    };
    let Some(sealer) = snapshot.sealer.as_ref() else {
        return Outcome::Wait;
    };
    let (token, field) = open_queued(sealer, q);
    let token = match token {
        Ok(token) => token,
        // Another replica may already seal under a key this one has not read.
        Err(SealError::UnknownKey(_)) => return Outcome::Wait,
        Err(_) => return Outcome::Ended("unopenable"),
    };
    match still_held(state, sealer, q, &token).await {
        Ok(true) => return Outcome::Revoked,
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "a provider connection cannot be read before revoking; tried again later");
            return Outcome::Wait;
        }
    }
    match client.revoke(&token, field.hint()).await {
        Ok(RevokeAnswer::Revoked) => Outcome::Revoked,
        Ok(RevokeAnswer::NoEndpoint) => Outcome::Ended("no_revocation_endpoint"),
        Ok(RevokeAnswer::Refused(code)) => Outcome::Ended(code),
        Err(ProviderError::Config(_)) => Outcome::WaitProvider("misconfigured at this server"),
        Err(ProviderError::Busy) => Outcome::WaitProvider("busy at this server"),
        Err(e) => Outcome::Failed(e),
    }
}

/// Opens a queued token as the field its hint names, else as the other: someone who can write the database may
/// have swapped a row's two values, and each is then queued under the other's hint. A token goes only to its own
/// provider (the seal names it), with the hint of the field it opened as.
fn open_queued(sealer: &Sealer, q: &QueuedRevocation) -> (Result<String, SealError>, Field) {
    let field = Field::from_hint(&q.token_type_hint).unwrap_or(Field::Refresh);
    let open =
        |field| sealer.open_for_revocation(&q.key_id, &q.sealed, &q.subject, &q.provider, field);
    match open(field) {
        Err(SealError::Opening) => {
            let other = match field {
                Field::Access => Field::Refresh,
                Field::Refresh => Field::Access,
            };
            match open(other) {
                Ok(token) => (Ok(token), other),
                Err(_) => (Err(SealError::Opening), field),
            }
        }
        opened => (opened, field),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_revocation_backs_off_doubling_up_to_an_hour_and_is_given_up_after_about_a_day() {
        // (failures so far, seconds until the next attempt)
        for (failed, wait) in [
            (1, 10),
            (2, 20),
            (3, 40),
            (9, 2_560),
            (10, 3_600),
            (29, 3_600),
            (1_000, 3_600),
        ] {
            assert_eq!(next_attempt_at(failed, 1_000), 1_000 + wait, "{failed}");
        }
        let until_given_up: i64 = (1..MAX_FAILED_ATTEMPTS)
            .map(|failed| next_attempt_at(failed, 0))
            .sum();
        assert!(
            (20 * 3_600..=28 * 3_600).contains(&until_given_up),
            "{until_given_up}"
        );
    }
}
