//! The signing keys of the trusted enterprise identity providers, for checking their ID-JAGs.
//!
//! A provider's `jwksUri` is the platform team's configuration, not something a request names, so it is fetched
//! without the CIMD fetcher's address rules (an IdP inside the company network is the normal case). What a
//! request does control is when keys are needed: a stream of assertions naming unknown `kid`s must not become
//! a stream of fetches, so a provider's keys are fetched by one request at a time, kept for
//! [`KEYS_FRESH_FOR`], and fetched again early (for a key the provider just rotated in) at most once per
//! [`REFETCH_AT_MOST_EVERY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use crate::config::TrustedIdentityProvider;

/// How long fetched keys are used before they are fetched again.
pub const KEYS_FRESH_FOR: Duration = Duration::from_secs(300);
/// The least time between two fetches of one provider's keys (after a failure, or for an unknown `kid`).
pub const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(30);
/// The largest JWK Set read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One trusted provider and its keys.
pub struct IdentityProvider {
    pub config: TrustedIdentityProvider,
    source: Source,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

enum Source {
    Inline(Arc<JwkSet>),
    Fetched {
        http: reqwest::Client,
        uri: String,
        // A tokio mutex: held across the fetch, so concurrent requests wait for one fetch instead of making many.
        cache: tokio::sync::Mutex<Cache>,
    },
}

#[derive(Default)]
struct Cache {
    keys: Option<(Arc<JwkSet>, Instant)>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// What to do about a request for keys, given the cache: a pure decision, tested by table.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    UseCached,
    Fetch,
    /// Too soon after the last fetch to fetch again, and nothing usable is cached.
    Refuse,
}

fn plan(
    cached_at: Option<Instant>,
    has_kid: bool,
    last_attempt: Option<Instant>,
    now: Instant,
) -> Plan {
    let may_fetch = last_attempt.is_none_or(|t| now.duration_since(t) >= REFETCH_AT_MOST_EVERY);
    match cached_at {
        Some(at) if now.duration_since(at) < KEYS_FRESH_FOR && has_kid => Plan::UseCached,
        _ if may_fetch => Plan::Fetch,
        // A stale set (or one without the kid) still beats no answer: the signature check decides.
        Some(_) => Plan::UseCached,
        None => Plan::Refuse,
    }
}

impl IdentityProvider {
    /// Builds the provider; inline keys are parsed now, so a bad JWK Set is a config error.
    pub fn new(config: &TrustedIdentityProvider) -> Result<Self, String> {
        let source = match (&config.jwks, &config.jwks_uri) {
            (Some(jwks), _) => Source::Inline(Arc::new(
                serde_json::from_value(jwks.clone()).map_err(|e| format!("jwks: {e}"))?,
            )),
            (None, Some(uri)) => Source::Fetched {
                http: crate::upstream::platform_http_client(config.ca_file.as_deref())?,
                uri: uri.clone(),
                cache: tokio::sync::Mutex::new(Cache::default()),
            },
            (None, None) => return Err("needs jwksUri or jwks".into()),
        };
        Ok(IdentityProvider {
            config: config.clone(),
            source,
        })
    }

    /// The provider's keys, for an assertion signed with `kid` (when it names one).
    pub async fn keys(&self, kid: Option<&str>) -> Result<Arc<JwkSet>, String> {
        let (http, uri, cache) = match &self.source {
            Source::Inline(keys) => return Ok(keys.clone()),
            Source::Fetched { http, uri, cache } => (http, uri, cache),
        };
        let mut cache = cache.lock().await;
        let now = Instant::now();
        let has_kid = |set: &JwkSet| kid.is_none_or(|k| set.find(k).is_some());
        let cached_at = cache.keys.as_ref().map(|(set, at)| (*at, has_kid(set)));
        match plan(
            cached_at.map(|(at, _)| at),
            cached_at.is_some_and(|(_, has)| has),
            cache.last_attempt,
            now,
        ) {
            Plan::UseCached => Ok(cache
                .keys
                .as_ref()
                .map(|(k, _)| k.clone())
                .unwrap_or_default()),
            Plan::Refuse => Err(cache
                .last_error
                .clone()
                .unwrap_or_else(|| "the provider's keys are not available".into())),
            Plan::Fetch => {
                cache.last_attempt = Some(now);
                match fetch(http, uri).await {
                    Ok(set) => {
                        let set = Arc::new(set);
                        cache.keys = Some((set.clone(), now));
                        cache.last_error = None;
                        Ok(set)
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %self.config.issuer, error = %e, "cannot fetch the identity provider's keys");
                        cache.last_error = Some(e.clone());
                        match &cache.keys {
                            Some((set, _)) => Ok(set.clone()),
                            None => Err(e),
                        }
                    }
                }
            }
        }
    }
}

async fn fetch(http: &reqwest::Client, uri: &str) -> Result<JwkSet, String> {
    let mut response = http
        .get(uri)
        .send()
        .await
        .map_err(|e| format!("the provider's jwksUri cannot be reached: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the provider's jwksUri answered HTTP {}",
            response.status().as_u16()
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the provider's jwksUri broke off: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "the provider's JWK Set is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("the provider's JWK Set is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_keys_are_fetched() {
        let now = Instant::now() + Duration::from_secs(3600);
        let ago = |s: u64| Some(now - Duration::from_secs(s));
        // (cached at, cached set has the kid, last attempt, plan)
        let cases = [
            (None, false, None, Plan::Fetch),
            (ago(10), true, ago(10), Plan::UseCached),
            (ago(299), true, ago(299), Plan::UseCached),
            (ago(300), true, ago(300), Plan::Fetch),
            // A kid the set lacks: fetch again, but not more than once per 30 s.
            (ago(10), false, ago(10), Plan::UseCached),
            (ago(40), false, ago(40), Plan::Fetch),
            // Stale keys and a failed fetch just now: the stale keys are used.
            (ago(900), true, ago(5), Plan::UseCached),
            // Nothing cached and a fetch just failed: refused until the wait is over.
            (None, false, ago(5), Plan::Refuse),
            (None, false, ago(30), Plan::Fetch),
        ];
        for (cached_at, has_kid, last, want) in cases {
            assert_eq!(
                plan(cached_at, has_kid, last, now),
                want,
                "{cached_at:?} {has_kid} {last:?}"
            );
        }
    }
}
