//! The JWKS cache: a background task fetches the issuer's keys, refreshes them on a period, and on demand
//! when a token names an unknown `kid` (rate-limited). Requests read the current set without waiting, except
//! for an unknown `kid`, where they wait a short, bounded time for the refresh they asked for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::config::JwksSettings;
use crate::fetch::Fetcher;
use crate::keys::KeySet;
use crate::metrics::Metrics;

/// The cache's state as requests see it.
#[derive(Debug, Clone, Default)]
pub struct KeyState {
    /// The last good key set.
    pub keys: Option<Arc<KeySet>>,
    /// When `keys` was fetched.
    pub fetched_at: Option<Instant>,
    /// Whether the last fetch attempt failed (the keys may be stale).
    pub last_fetch_failed: bool,
    /// Bumped after every fetch attempt, good or bad, so waiters know their refresh happened.
    pub attempts: u64,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub struct JwksSource {
    /// The JWKS URL.
    pub uri: String,
    /// Trust for it.
    pub fetcher: Fetcher,
    /// Periods and limits.
    pub settings: JwksSettings,
}

/// A handle on the cache, cheap to clone.
#[derive(Clone)]
pub struct JwksCache {
    state: watch::Receiver<KeyState>,
    wake: Arc<Notify>,
}

/// What a request gets for its `kid`.
pub enum Lookup {
    /// The current keys hold the `kid` (or the token has none).
    Found(Arc<KeySet>),
    /// A fresh set still lacks it: the token is really signed by an unknown key.
    Unknown(Arc<KeySet>),
    /// No keys, or the refresh failed: we cannot tell.
    Unavailable,
}

impl JwksCache {
    /// Starts the background task. The source can be replaced later through the returned sender (reload).
    pub fn start(source: JwksSource, metrics: Metrics) -> (Self, watch::Sender<JwksSource>) {
        let (state_tx, state_rx) = watch::channel(KeyState::default());
        let (source_tx, source_rx) = watch::channel(source);
        let wake = Arc::new(Notify::new());
        tokio::spawn(refresh_loop(source_rx, state_tx, wake.clone(), metrics));
        (
            Self {
                state: state_rx,
                wake,
            },
            source_tx,
        )
    }

    /// The current state.
    pub fn state(&self) -> KeyState {
        self.state.borrow().clone()
    }

    /// The current key set, without waiting.
    pub fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.state.borrow().keys.clone()
    }

    /// Keys for a token with this `kid`, waiting at most `wait` for one refresh when the `kid` is unknown.
    pub async fn lookup(&self, kid: Option<&str>, wait: Duration) -> Lookup {
        let before = self.state.borrow().clone();
        if let Some(keys) = &before.keys
            && kid.is_none_or(|k| keys.has_kid(k))
        {
            return Lookup::Found(keys.clone());
        }
        self.wake.notify_one();
        let mut rx = self.state.clone();
        let waited =
            tokio::time::timeout(wait, rx.wait_for(|s| s.attempts > before.attempts)).await;
        let after = self.state.borrow().clone();
        match (&after.keys, waited.is_ok() && !after.last_fetch_failed) {
            (Some(keys), _) if kid.is_none_or(|k| keys.has_kid(k)) => Lookup::Found(keys.clone()),
            // A refresh succeeded and still has no such key.
            (Some(keys), true) => Lookup::Unknown(keys.clone()),
            // Refresh rate-limited: the set was fetched recently and successfully, so the kid is unknown.
            (Some(keys), false) if !after.last_fetch_failed && waited.is_err() => {
                Lookup::Unknown(keys.clone())
            }
            _ => Lookup::Unavailable,
        }
    }
}

async fn refresh_loop(
    mut source: watch::Receiver<JwksSource>,
    state: watch::Sender<KeyState>,
    wake: Arc<Notify>,
    metrics: Metrics,
) {
    let mut failures: u32 = 0;
    // Only refreshes asked for by unknown kids are rate-limited; the start-up and periodic fetches do not
    // count, so a key published just after a periodic fetch is picked up at once.
    let mut last_on_demand: Option<Instant> = None;
    let mut on_demand = false;
    loop {
        let current = source.borrow_and_update().clone();
        let result = current
            .fetcher
            .get(
                &current.uri,
                Duration::from_millis(current.settings.fetch_timeout_ms),
                current.settings.max_bytes,
            )
            .await;
        if on_demand {
            last_on_demand = Some(Instant::now());
        }
        let parsed = result
            .map_err(|e| e.to_string())
            .and_then(|body| KeySet::parse(&body).map_err(|e| e.to_string()));
        match parsed {
            Ok(keys) => {
                failures = 0;
                metrics.jwks_refreshes.with_label_values(&["ok"]).inc();
                tracing::debug!(keys = keys.len(), uri = %current.uri, "JWKS refreshed");
                state.send_modify(|s| {
                    s.keys = Some(Arc::new(keys));
                    s.fetched_at = Some(Instant::now());
                    s.last_fetch_failed = false;
                    s.attempts += 1;
                });
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                metrics.jwks_refreshes.with_label_values(&["error"]).inc();
                tracing::warn!(%error, uri = %current.uri, "JWKS fetch failed; keeping the previous keys");
                state.send_modify(|s| {
                    s.last_fetch_failed = true;
                    s.attempts += 1;
                });
            }
        }
        let settings = &current.settings;
        let next = if failures == 0 {
            Duration::from_secs(settings.refresh_seconds.max(1))
        } else {
            // Quick retries while failing, so keys come back soon after the issuer does.
            Duration::from_millis(
                (200u64 << failures.min(8)).min(settings.refresh_seconds.max(1) * 1000),
            )
        };
        // Rate limit: unknown kids cause at most one fetch per `min_gap` (one per second while failing, so
        // a stream of made-up kids cannot turn into a stream of fetches against a struggling issuer).
        let min_gap = if failures == 0 {
            Duration::from_secs(settings.min_refresh_seconds)
        } else {
            Duration::from_secs(1)
        };
        on_demand = false;
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = source_changed(&mut source) => {}
            _ = wake.notified() => {
                on_demand = true;
                let elapsed = last_on_demand.map_or(min_gap, |at| at.elapsed());
                if elapsed < min_gap {
                    tokio::select! {
                        _ = tokio::time::sleep(min_gap - elapsed) => {}
                        _ = source_changed(&mut source) => {}
                    }
                }
            }
        }
        if state.is_closed() {
            return;
        }
    }
}

/// Resolves when the source changes; never when its sender is gone (the last source stays in use).
async fn source_changed(source: &mut watch::Receiver<JwksSource>) {
    if source.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
