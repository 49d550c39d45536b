//! RFC 7662 introspection for operations that need a sensitive scope: a signed token stays valid until it
//! expires, so for these operations the issuer is asked whether it was revoked. The sidecar authenticates with
//! `private_key_jwt` (a fresh RFC 7523 assertion per call, signed with its mounted key), so nothing replayable
//! crosses the wire. `active` answers are reused for `cacheSeconds` (none by default: a revocation applies to the
//! very next sensitive operation), `inactive` ones for longer; when the issuer cannot answer, the request is
//! refused with 503 (never let through).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client_key::{ClientKey, JWT_BEARER};
use crate::config::{ConfigError, IntrospectionConfig};
use crate::fetch::Fetcher;

/// Largest introspection answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Most answers cached.
const MAX_CACHED: usize = 1024;

/// Why introspection gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    /// The endpoint failed or timed out.
    #[error("introspection failed: {0}")]
    Fetch(#[from] crate::fetch::FetchError),
    /// The answer is not RFC 7662 JSON.
    #[error("introspection answer is not valid: {0}")]
    Answer(String),
    /// The client assertion could not be made.
    #[error("signing the client assertion failed: {0}")]
    Sign(String),
}

impl IntrospectionError {
    /// Low-cardinality reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Fetch(_) => "introspection_unavailable",
            Self::Answer(_) => "introspection_invalid",
            Self::Sign(_) => "introspection_signing",
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    active: bool,
}

/// How long an `active: false` answer is kept: a revoked or expired token never becomes active again, and a
/// client retrying a dead token should not cost the issuer a call each time.
const INACTIVE_TTL: Duration = Duration::from_secs(600);

/// The introspection client of one config.
pub struct Introspector {
    endpoint: String,
    key: ClientKey,
    sensitive: BTreeSet<String>,
    active_ttl: Duration,
    timeout: Duration,
    fetcher: Fetcher,
    cache: Mutex<HashMap<Box<str>, (bool, Instant)>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.key.client_id())
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// Reads the private key (PKCS#8 PEM, Ed25519 or P-256) and prepares the client. `issuer` is the assertion
    /// audience. The sidecar gives it a pooled `fetcher` (`Fetcher::pooled`).
    pub fn new(
        config: &IntrospectionConfig,
        issuer: &str,
        fetcher: Fetcher,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            endpoint: config.endpoint.clone(),
            key: ClientKey::load(
                &config.private_key_file,
                "introspection.privateKeyFile",
                &config.client_id,
                issuer,
            )?,
            sensitive: config.sensitive_scopes.iter().cloned().collect(),
            active_ttl: Duration::from_secs(config.cache_seconds),
            timeout: Duration::from_millis(config.timeout_ms),
            fetcher,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether an operation needing these scopes must be introspected.
    pub fn is_sensitive<'a>(&self, required: impl IntoIterator<Item = &'a String>) -> bool {
        required.into_iter().any(|s| self.sensitive.contains(s))
    }

    /// Whether the issuer still considers the token active.
    pub async fn is_active(&self, token: &str) -> Result<bool, IntrospectionError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((active, at)) = cache.get(token)
            && at.elapsed()
                < if *active {
                    self.active_ttl
                } else {
                    INACTIVE_TTL
                }
        {
            return Ok(*active);
        }
        // A fresh assertion for every attempt: the issuer spends its `jti` on first sight.
        let form = || -> Result<String, IntrospectionError> {
            let assertion = self.key.assertion().map_err(IntrospectionError::Sign)?;
            Ok(url::form_urlencoded::Serializer::new(String::new())
                .append_pair("token", token)
                .append_pair("token_type_hint", "access_token")
                .append_pair("client_assertion_type", JWT_BEARER)
                .append_pair("client_assertion", &assertion)
                .finish())
        };
        let body = self
            .fetcher
            .post_form(&self.endpoint, form, self.timeout, MAX_ANSWER_BYTES)
            .await?;
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| IntrospectionError::Answer(e.to_string()))?;
        let keep = if answer.active {
            self.active_ttl
        } else {
            INACTIVE_TTL
        };
        if !keep.is_zero()
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(token.into(), (answer.active, Instant::now()));
        }
        Ok(answer.active)
    }
}
