//! RFC 7662 introspection for operations that need a sensitive scope: a signed token stays valid until it
//! expires, so for these operations the issuer is asked whether it was revoked. Answers are cached for a
//! short time; when the issuer cannot answer, the request is refused with 503 (never let through).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

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
}

impl IntrospectionError {
    /// Low-cardinality reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Fetch(_) => "introspection_unavailable",
            Self::Answer(_) => "introspection_invalid",
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    active: bool,
}

/// The introspection client of one config.
pub struct Introspector {
    endpoint: String,
    authorization: String,
    sensitive: BTreeSet<String>,
    ttl: Duration,
    timeout: Duration,
    fetcher: Fetcher,
    cache: Mutex<HashMap<Box<str>, (bool, Instant)>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// Reads the client credentials file (`client_id:client_secret`) and prepares the client.
    pub fn new(config: &IntrospectionConfig, fetcher: Fetcher) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(&config.client_credentials_file).map_err(|source| {
            ConfigError::Read {
                path: config.client_credentials_file.clone(),
                source,
            }
        })?;
        let (id, secret) = text
            .trim()
            .split_once(':')
            .filter(|(id, secret)| !id.is_empty() && !secret.is_empty())
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "introspection credentials must be one line client_id:client_secret".into(),
                )
            })?;
        // RFC 6749 §2.3.1: each part is form-urlencoded before Basic encoding.
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(id),
            encode(secret)
        ));
        Ok(Self {
            endpoint: config.endpoint.clone(),
            authorization: format!("Basic {basic}"),
            sensitive: config.sensitive_scopes.iter().cloned().collect(),
            ttl: Duration::from_secs(config.cache_seconds),
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
            && at.elapsed() < self.ttl
        {
            return Ok(*active);
        }
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let body = self
            .fetcher
            .post_form(
                &self.endpoint,
                &self.authorization,
                form,
                self.timeout,
                MAX_ANSWER_BYTES,
            )
            .await?;
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| IntrospectionError::Answer(e.to_string()))?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(token.into(), (answer.active, Instant::now()));
        }
        Ok(answer.active)
    }
}
