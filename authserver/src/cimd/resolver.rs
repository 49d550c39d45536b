//! The entry point the endpoints call: check the client_id, admit it by policy, fetch (once, even
//! under concurrency) and cache the document, then apply the request's policy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::Value;
use url::Url;

use super::address::AddressPolicy;
use super::cache::TtlCache;
use super::client::ClientDocument;
use super::config::CimdConfig;
use super::dns::{HostResolver, SystemResolver};
use super::document::{CheckedDocument, check_document};
use super::error::{CimdError, DocumentRule};
use super::fetch::Fetcher;
use super::policy::{CompiledPolicy, admit};
use super::url_check::{UrlAllowances, check_url};

/// The name the baseline policy carries in errors and audit records.
pub const BASELINE_POLICY: &str = "baseline";

/// The admission decisions that need no network: the client_id's shape and the policies' rules on it, then the
/// policies' rules on a document. The resolver runs them around its fetch; `mcp-authz test` runs them on a
/// document given inline, so a policy test and the running server decide alike.
#[derive(Debug, Clone)]
pub struct Admission {
    enabled: bool,
    allow_http: bool,
    baseline: CompiledPolicy,
    policies: HashMap<String, CompiledPolicy>,
    addresses: AddressPolicy,
}

impl Admission {
    /// Compiles the baseline and every named policy of `config`.
    pub fn new(config: &CimdConfig) -> Result<Self, CimdError> {
        let baseline = CompiledPolicy::compile(BASELINE_POLICY, &config.baseline)?;
        let policies = config
            .policies
            .iter()
            .map(|(name, p)| CompiledPolicy::compile(name, p).map(|c| (name.clone(), c)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        let addresses =
            AddressPolicy::new(&config.allowed_private_cidrs).map_err(CimdError::Config)?;
        Ok(Self {
            enabled: config.enabled,
            allow_http: config.allow_http_for_development,
            baseline,
            policies,
            addresses,
        })
    }

    /// What is decided before anything is fetched: the URL's shape, then each policy's deny list and patterns.
    /// Answers the URL and the policies (baseline first) the document must then pass.
    pub fn gate(
        &self,
        client_id: &str,
        policy_name: Option<&str>,
    ) -> Result<(Url, Vec<&CompiledPolicy>), CimdError> {
        if !self.enabled {
            return Err(CimdError::Disabled);
        }
        let mut policies = vec![&self.baseline];
        if let Some(name) = policy_name {
            policies.push(
                self.policies
                    .get(name)
                    .ok_or_else(|| CimdError::UnknownPolicy(name.to_owned()))?,
            );
        }
        let allow = UrlAllowances {
            query: policies.iter().all(|p| p.policy.allow_query_in_client_id),
            http: self.allow_http,
        };
        let url = check_url(client_id, "client_id", allow, &self.addresses)?;
        for policy in &policies {
            policy.admit_client_id(&url)?;
        }
        Ok((url, policies))
    }

    /// The whole decision on a document already in hand (`body`, as it would have been fetched from
    /// `client_id`): [`Admission::gate`], the policy-independent document rules, then the policies.
    pub fn admit_document(
        &self,
        client_id: &str,
        policy_name: Option<&str>,
        body: &[u8],
    ) -> Result<ClientDocument, CimdError> {
        let (url, policies) = self.gate(client_id, policy_name)?;
        let doc = check_document(url.as_str(), body, self.allow_http, &self.addresses)?;
        admit(&doc, &policies)
    }
}

type Flight = Shared<BoxFuture<'static, Result<Arc<CheckedDocument>, CimdError>>>;
type JwksFlight = Shared<BoxFuture<'static, Result<Arc<Value>, CimdError>>>;

/// Resolves CIMD clients. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    config: CimdConfig,
    admission: Admission,
    fetcher: Fetcher,
    addresses: AddressPolicy,
    cache: TtlCache<CheckedDocument>,
    /// JWK Sets fetched from `jwks_uri`s, kept for their RFC 9111 freshness like documents.
    jwks_cache: TtlCache<Value>,
    /// `jwks_uri`s whose last fetch failed, for [`JWKS_FAILURE_TTL`].
    jwks_failures: TtlCache<CimdError>,
    in_flight: Mutex<HashMap<String, Flight>>,
    jwks_in_flight: Mutex<HashMap<String, JwksFlight>>,
    fetch_slots: Arc<tokio::sync::Semaphore>,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    fetches: AtomicU64,
    cache_hits: AtomicU64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolverStats {
    /// Documents actually fetched over the network (successful or not).
    pub fetches: u64,
    /// Resolves answered from the cache.
    pub cache_hits: u64,
    /// Documents in the cache now.
    pub cached: usize,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Resolver {
    /// A resolver using the system's DNS.
    pub fn new(config: CimdConfig) -> Result<Self, CimdError> {
        Self::with_dns(config, Arc::new(SystemResolver))
    }

    /// A resolver with injected name resolution (tests, air-gapped directories).
    pub fn with_dns(config: CimdConfig, dns: Arc<dyn HostResolver>) -> Result<Self, CimdError> {
        let admission = Admission::new(&config)?;
        let limits = &config.fetch;
        if limits.cache_min_ttl_secs > limits.cache_max_ttl_secs {
            return Err(CimdError::Config(
                "fetch.cacheMinTtlSecs must not exceed fetch.cacheMaxTtlSecs".to_owned(),
            ));
        }
        if limits.max_document_bytes == 0
            || limits.total_timeout_ms == 0
            || limits.connect_timeout_ms == 0
            || limits.max_concurrent_fetches == 0
        {
            return Err(CimdError::Config(
                "fetch limits (maxDocumentBytes, connectTimeoutMs, totalTimeoutMs, maxConcurrentFetches) must be positive".to_owned(),
            ));
        }
        let addresses = admission.addresses.clone();
        let fetcher = Fetcher::new(&config, addresses.clone(), dns)?;
        let cache = TtlCache::new(limits.cache_capacity);
        let jwks_cache = TtlCache::new(limits.cache_capacity);
        let jwks_failures = TtlCache::new(limits.cache_capacity);
        let fetch_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_fetches));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                admission,
                fetcher,
                addresses,
                cache,
                jwks_cache,
                jwks_failures,
                in_flight: Mutex::new(HashMap::new()),
                jwks_in_flight: Mutex::new(HashMap::new()),
                fetch_slots,
                stats: Counters::default(),
            }),
        })
    }

    pub fn config(&self) -> &CimdConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> ResolverStats {
        ResolverStats {
            fetches: self.inner.stats.fetches.load(Ordering::Relaxed),
            cache_hits: self.inner.stats.cache_hits.load(Ordering::Relaxed),
            cached: self.inner.cache.len(),
        }
    }

    /// Forget a cached document so the next resolve fetches it again.
    pub fn forget(&self, client_id: &str) {
        self.inner.cache.remove(client_id);
    }

    /// Resolve a URL `client_id` under the baseline and, when the request's resource names one,
    /// the policy `policy_name`. Nothing is fetched for a client_id the policies refuse by shape,
    /// pattern or deny list.
    pub async fn resolve(
        &self,
        client_id: &str,
        policy_name: Option<&str>,
    ) -> Result<ClientDocument, CimdError> {
        let (url, policies) = self.inner.admission.gate(client_id, policy_name)?;
        let doc = self.checked_document(url).await?;
        admit(&doc, &policies)
    }

    /// The cached document, or one fetch shared by every concurrent caller for the same URL.
    async fn checked_document(&self, url: Url) -> Result<Arc<CheckedDocument>, CimdError> {
        let key = url.as_str().to_owned();
        if let Some(doc) = self.inner.cache.get(&key, Instant::now()) {
            self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(doc);
        }
        let key_for_flight = key.clone();
        let flight = {
            let mut in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // A flight may have finished (and filled the cache) between the miss and this lock.
            if let Some(doc) = self.inner.cache.get(&key, Instant::now()) {
                self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(doc);
            }
            in_flight
                .entry(key.clone())
                .or_insert_with(|| {
                    let inner = self.inner.clone();
                    let url_text = key.clone();
                    // Spawned, so the fetch finishes (and fills the cache) even when every caller
                    // gives up; the flight retires itself for the same reason. No newer flight for
                    // this key can exist meanwhile: one is only created when none is registered.
                    let task = tokio::spawn(async move {
                        let result = fetch_and_cache(&inner, url).await;
                        inner
                            .in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key_for_flight);
                        result
                    });
                    async move {
                        task.await.unwrap_or_else(|e| {
                            Err(CimdError::Connect {
                                url: url_text,
                                detail: format!("the fetch task failed: {e}"),
                            })
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        flight.await
    }

    /// A client's `jwks_uri`, fetched under the same address, TLS, size and time rules as documents
    /// and kept for its RFC 9111 freshness (within the cache bounds), so a stream of assertions
    /// naming it costs one fetch per lifetime, not one each. Returns the JWK Set (an object with a
    /// non-empty `keys` array of public keys). A key the client adds is seen when the entry expires.
    pub async fn fetch_jwks(&self, jwks_uri: &str) -> Result<Arc<Value>, CimdError> {
        let allow = UrlAllowances {
            query: true,
            http: self.inner.config.allow_http_for_development,
        };
        let url = check_url(jwks_uri, "jwks_uri", allow, &self.inner.addresses)?;
        let key = url.as_str().to_owned();
        if let Some(jwks) = self.inner.jwks_cache.get(&key, Instant::now()) {
            self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(jwks);
        }
        // A `jwks_uri` that failed lately is not fetched again for a while: a tarpit named by a stream of
        // assertions would otherwise hold a shared fetch slot per assertion.
        if let Some(failure) = self.inner.jwks_failures.get(&key, Instant::now()) {
            return Err(failure.as_ref().clone());
        }
        let flight = {
            let mut in_flight = self
                .inner
                .jwks_in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            in_flight
                .entry(key.clone())
                .or_insert_with(|| {
                    let inner = self.inner.clone();
                    let url_text = key.clone();
                    // One fetch per URL however many wait for it; spawned so it finishes (and fills a cache)
                    // even when every waiter gives up.
                    let task = tokio::spawn(async move {
                        let result = fetch_jwks_uncached(&inner, url).await;
                        let now = Instant::now();
                        match &result {
                            Ok((jwks, ttl)) => {
                                inner
                                    .jwks_cache
                                    .insert(key.clone(), jwks.clone(), *ttl, now)
                            }
                            // Our own saturation says nothing about the URL.
                            Err(CimdError::Busy) => {}
                            Err(e) => inner.jwks_failures.insert(
                                key.clone(),
                                Arc::new(e.clone()),
                                JWKS_FAILURE_TTL,
                                now,
                            ),
                        }
                        inner
                            .jwks_in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                        result.map(|(jwks, _)| jwks)
                    });
                    async move {
                        task.await.unwrap_or_else(|e| {
                            Err(CimdError::Connect {
                                url: url_text,
                                detail: format!("the fetch task failed: {e}"),
                            })
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        flight.await
    }
}

/// How long a failed `jwks_uri` fetch is remembered.
const JWKS_FAILURE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Fetches and checks a JWK Set: a non-empty `keys` array of public keys. Returns it with its freshness lifetime.
async fn fetch_jwks_uncached(
    inner: &Inner,
    url: Url,
) -> Result<(Arc<Value>, std::time::Duration), CimdError> {
    let _slot = inner
        .fetch_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| CimdError::Busy)?;
    let fetched = inner
        .fetcher
        .get(&url, inner.config.fetch.max_jwks_bytes)
        .await?;
    let jwks: Value =
        serde_json::from_slice(&fetched.body).map_err(|e| CimdError::InvalidJson {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .filter(|k| !k.is_empty())
        .ok_or(CimdError::Document(DocumentRule::InvalidJwks))?;
    for key in keys {
        let key = key
            .as_object()
            .ok_or(CimdError::Document(DocumentRule::InvalidJwks))?;
        if let Some(member) = super::document::private_member(key) {
            return Err(CimdError::Document(DocumentRule::PrivateKeyInJwks(
                member.to_owned(),
            )));
        }
    }
    Ok((Arc::new(jwks), fetched.ttl))
}

async fn fetch_and_cache(inner: &Inner, url: Url) -> Result<Arc<CheckedDocument>, CimdError> {
    let _slot = inner
        .fetch_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| CimdError::Busy)?;
    inner.stats.fetches.fetch_add(1, Ordering::Relaxed);
    let fetched = inner
        .fetcher
        .get(&url, inner.config.fetch.max_document_bytes)
        .await;
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(client_id = %url, reason = e.metric_label(), "client metadata fetch refused: {e}");
            return Err(e);
        }
    };
    let doc = Arc::new(check_document(
        url.as_str(),
        &fetched.body,
        inner.config.allow_http_for_development,
        &inner.addresses,
    )?);
    inner.cache.insert(
        url.as_str().to_owned(),
        doc.clone(),
        fetched.ttl,
        Instant::now(),
    );
    Ok(doc)
}
