//! The server's shared state: the current config snapshot (swapped whole on reload, so a request in flight keeps
//! the snapshot it started with), the keys in force, the store and the metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::cimd;
use crate::config::{AuthServerConfig, ConfigError, StaticUser};
use crate::identity_providers::IdentityProvider;
use crate::keys::{KeyError, KeySet};
use crate::metrics::Metrics;
use crate::providers::client::ProviderClient;
use crate::providers::seal::Sealer;
use crate::rate_limits::RateLimiter;
use crate::resource_servers::Root;
use crate::store::Store;
use crate::upstream::Upstream;

/// The shortest client secret accepted: 32 characters of a generated secret are far beyond guessing, and the
/// token endpoint's rate limits stand in front of every try.
pub const MIN_CLIENT_SECRET_CHARS: usize = 32;

/// Everything derived from one config file.
pub struct Snapshot {
    pub config: AuthServerConfig,
    /// Static users by username (inline and from `usersFile`).
    pub users: HashMap<String, StaticUser>,
    /// The admin bearer credential, when configured.
    pub admin_token: Option<String>,
    /// The CIMD resolver, when CIMD is enabled.
    pub cimd: Option<cimd::Resolver>,
    /// The upstream OpenID provider, when login is federated.
    pub upstream: Option<Arc<Upstream>>,
    /// The rate limits' buckets, when limits are on (kept across reloads that leave the limits unchanged).
    pub limiter: Option<Arc<RateLimiter>>,
    /// `trustedProxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The SHA-256 (hex) of each registered client's secret, by client id, read from `clientSecretFile`.
    pub client_secrets: HashMap<String, String>,
    /// The trusted enterprise identity providers, by issuer (kept across reloads that leave one unchanged, with
    /// its fetched keys).
    pub identity_providers: HashMap<String, Arc<IdentityProvider>>,
    /// The third-party providers people connect, by id (kept across reloads that leave one unchanged, with its
    /// discovered endpoints).
    pub providers: HashMap<String, Arc<ProviderClient>>,
    /// The keys that seal provider tokens, when providers are configured and the key file is usable.
    pub sealer: Option<Sealer>,
    /// Why the configured key file cannot be used, when it cannot: without keys read before, the provider
    /// features answer `temporarily_unavailable` and the rest of the server serves on; with them, they serve on.
    pub sealer_problem: Option<String>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

impl Snapshot {
    /// Builds the snapshot, reading the files the config points at. `previous` lends its CIMD resolver (and cache)
    /// when the CIMD section did not change.
    pub fn build(
        config: AuthServerConfig,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigError> {
        let mut users = HashMap::new();
        if let Some(login) = &config.login.static_users {
            let mut all = login.users.clone();
            if let Some(file) = &login.users_file {
                all.extend(read_users_file(file)?);
            }
            for user in all {
                if !user.password_hash.starts_with("$argon2id$") {
                    return Err(ConfigError::Invalid(format!(
                        "user {:?}: passwordHash must be an Argon2id PHC string",
                        user.username
                    )));
                }
                users.insert(user.username.clone(), user);
            }
        }
        let admin_token = match &config.admin.token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned();
                if token.len() < 16 {
                    return Err(ConfigError::Invalid(
                        "admin token must be at least 16 characters".into(),
                    ));
                }
                Some(token)
            }
            None => None,
        };
        let cimd = if !config.cimd.enabled {
            None
        } else if let Some(prev) = previous
            .filter(|p| p.config.cimd == config.cimd)
            .and_then(|p| p.cimd.clone())
        {
            Some(prev)
        } else {
            Some(
                cimd::Resolver::new(config.cimd.clone())
                    .map_err(|e| ConfigError::Invalid(format!("cimd: {}", e.description())))?,
            )
        };
        let upstream = match &config.login.upstream_oidc {
            None => None,
            // Keep the previous client (and its discovery document) when the section did not change.
            Some(u) => {
                match previous.filter(|p| p.config.login.upstream_oidc.as_ref() == Some(u)) {
                    Some(p) => p.upstream.clone(),
                    None => Some(Arc::new(Upstream::new(u).map_err(|e| {
                        ConfigError::Invalid(format!("login.upstreamOidc: {e}"))
                    })?)),
                }
            }
        };
        // Buckets start full only when the limits change: a reload for another reason must not hand every
        // client a fresh burst.
        let limiter = match previous.filter(|p| p.config.rate_limits == config.rate_limits) {
            Some(p) => p.limiter.clone(),
            None => RateLimiter::new(&config.rate_limits).map(Arc::new),
        };
        let trusted_proxies = config.trusted_proxy_networks()?;
        let client_secrets = read_client_secrets(&config)?;
        let mut identity_providers = HashMap::new();
        for idp in &config.trusted_identity_providers {
            let kept = previous
                .and_then(|p| p.identity_providers.get(&idp.issuer))
                .filter(|p| &p.config == idp)
                .cloned();
            let provider = match kept {
                Some(p) => p,
                None => Arc::new(IdentityProvider::new(idp).map_err(|e| {
                    ConfigError::Invalid(format!("trustedIdentityProviders {:?}: {e}", idp.issuer))
                })?),
            };
            identity_providers.insert(idp.issuer.clone(), provider);
        }
        let mut providers = HashMap::new();
        for p in &config.providers {
            let kept = previous
                .and_then(|prev| prev.providers.get(&p.id))
                .filter(|prev| &prev.config == p)
                .cloned();
            let client = match kept {
                Some(c) => c,
                None => Arc::new(
                    ProviderClient::new(p)
                        .map_err(|e| ConfigError::Invalid(format!("providers {:?}: {e}", p.id)))?,
                ),
            };
            providers.insert(p.id.clone(), client);
        }
        let (sealer, sealer_problem) = sealer_or_problem(&config, previous);
        Ok(Snapshot {
            config,
            users,
            admin_token,
            cimd,
            upstream,
            limiter,
            trusted_proxies,
            client_secrets,
            identity_providers,
            providers,
            sealer,
            sealer_problem,
        })
    }
}

impl Snapshot {
    /// Whether `subject` is one of the static users now; `None` when people sign in elsewhere (an upstream
    /// provider), where this server cannot know.
    pub fn subject_exists(&self, subject: &str) -> Option<bool> {
        self.config.login.static_users.as_ref()?;
        Some(
            self.users
                .values()
                .any(|u| u.subject.as_deref().unwrap_or(&u.username) == subject),
        )
    }
}

/// The SHA-256 (hex) of each registered client's secret, read from its `clientSecretFile` now. Called at every
/// config load and every 10 s, so a rotated Secret (the kubelet rewrites the file) takes effect without a restart.
pub fn read_client_secrets(
    config: &AuthServerConfig,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut client_secrets = HashMap::new();
    for client in &config.clients {
        if let Some(path) = &client.client_secret_file {
            let secret = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let secret = secret.trim();
            if secret.chars().count() < MIN_CLIENT_SECRET_CHARS {
                return Err(ConfigError::Invalid(format!(
                    "client {:?}: the secret in clientSecretFile must be at least {MIN_CLIENT_SECRET_CHARS} characters",
                    client.client_id
                )));
            }
            client_secrets.insert(client.client_id.clone(), crate::secrets::hash(secret));
        }
    }
    Ok(client_secrets)
}

/// The provider-token keys, read now (at every config load and every 10 s, so a rotated key file takes effect
/// without a restart). A self-managed server writes a fresh file when there is none.
pub fn read_sealer(config: &AuthServerConfig) -> Result<Option<Sealer>, ConfigError> {
    let Some(path) = &config.provider_token_keys_file else {
        return Ok(None);
    };
    if config.signing.self_managed && !path.exists() {
        write_new_key_file(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
    }
    Sealer::load(path)
        .map(Some)
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// The provider-token keys, or why they cannot be used. A key file that does not read stops only the provider
/// features, not the server: sign-in, tokens and every service without a provider keep working while the file is
/// fixed (it is read again every 10 s). A reload keeps the keys in force rather than lose them to a bad file.
fn sealer_or_problem(
    config: &AuthServerConfig,
    previous: Option<&Snapshot>,
) -> (Option<Sealer>, Option<String>) {
    match read_sealer(config) {
        Ok(sealer) => (sealer, None),
        Err(e) => match previous.and_then(|p| p.sealer.clone()) {
            // The keys in force still serve, and the problem is kept for the gauge: the next restart would find
            // no keys at all.
            Some(kept) => {
                tracing::error!(error = %e, "the provider-token key file cannot be used; the keys in force stay");
                (Some(kept), Some(e.to_string()))
            }
            None => {
                tracing::error!(
                    error = %e,
                    "the provider-token key file cannot be used; provider connections and provider tokens are \
                     unavailable until it is fixed"
                );
                (None, Some(e.to_string()))
            }
        },
    }
}

/// A key file only this user may read.
fn write_new_key_file(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(Sealer::generate("k1").as_bytes())
}

fn read_users_file(path: &Path) -> Result<Vec<StaticUser>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| ConfigError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    } else {
        serde_saphyr::from_str(&text).map_err(|e| ConfigError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Shared by every handler.
pub struct AppState {
    snapshot: RwLock<Arc<Snapshot>>,
    keys: RwLock<Arc<KeySet>>,
    /// Re-read with the keys, not with the config: it lives in the keys Secret, which kubelet may refresh later
    /// than the ConfigMap that names it.
    resource_server_root: RwLock<Option<Root>>,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    /// Bounds on password checks (concurrency, failures per username).
    pub login_guard: crate::login_guard::LoginGuard,
    /// Bounds the audit rows refusals may write.
    pub audit_budget: crate::audit::RowBudget,
    /// The file the config came from (reloaded when it changes), if any.
    pub config_path: Option<PathBuf>,
    /// One provider-token refresh at a time per connection.
    pub provider_flights: crate::providers::Flights,
    /// Requests in progress (each runs on its own task to its end): see [`crate::server::MAX_IN_FLIGHT`].
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The same for the admin port, apart: a flood of OAuth requests must not fail the kubelet's probes.
    pub admin_in_flight: Arc<tokio::sync::Semaphore>,
    /// The stop under way, once one began: requests still running at the end of its drain are cut.
    pub stopping: tokio::sync::watch::Sender<Option<mcp_authz_audit::stop::Stop>>,
}

impl AppState {
    pub fn new(
        snapshot: Snapshot,
        keys: KeySet,
        store: Arc<dyn Store>,
        config_path: Option<PathBuf>,
    ) -> Self {
        let root = read_resource_server_root(&snapshot.config);
        AppState {
            snapshot: RwLock::new(Arc::new(snapshot)),
            keys: RwLock::new(Arc::new(keys)),
            resource_server_root: RwLock::new(root),
            store,
            metrics: Metrics::new(),
            login_guard: crate::login_guard::LoginGuard::default(),
            audit_budget: crate::audit::RowBudget::default(),
            config_path,
            provider_flights: crate::providers::Flights::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(crate::server::MAX_IN_FLIGHT)),
            admin_in_flight: Arc::new(tokio::sync::Semaphore::new(crate::server::MAX_IN_FLIGHT)),
            stopping: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The snapshot a request works with from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    pub fn replace_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// The one way a handler refuses: the refusal is counted under its endpoint and metric label and audited
    /// (`who` says what is known of the requester), once, whatever the endpoint renders it as.
    pub async fn refuse(
        &self,
        endpoint: &'static str,
        who: &crate::audit::Who,
        error: &crate::oauth_error::OAuthError,
    ) {
        self.metrics.outcome(endpoint, error.metric_label());
        let decision = crate::audit::Decision {
            event: endpoint,
            caller: None,
            subject: who.subject.as_deref(),
            client_id: who.client_id.as_deref(),
            resource: who.resource.as_deref(),
            scopes: &[],
            outcome: "refused",
            reason: &error.to_string(),
        };
        let grant_key;
        let key = match &who.grant {
            _ if who.revoked_grant => None,
            Some(_) => {
                grant_key = format!("{endpoint} (presented grant)");
                Some(grant_key.as_str())
            }
            None => Some(endpoint),
        };
        if !crate::audit::record(self.store.as_ref(), &self.audit_budget, decision, key).await {
            self.metrics.audit_rows_suppressed.inc();
        }
    }

    /// Audits a decision: its log line always, its row within the refusal budget (a suppressed row is counted).
    pub async fn record_decision(&self, decision: crate::audit::Decision<'_>) {
        let key = crate::audit::is_refusal(decision.outcome).then_some(decision.event);
        if !crate::audit::record(self.store.as_ref(), &self.audit_budget, decision, key).await {
            self.metrics.audit_rows_suppressed.inc();
        }
    }

    /// The root of resource-server keys, when resource servers may introspect and it could be read.
    pub fn resource_server_root(&self) -> Option<Root> {
        self.resource_server_root
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the root again (the current config says where).
    pub fn refresh_resource_server_root(&self) {
        let root = read_resource_server_root(&self.snapshot().config);
        let mut current = self
            .resource_server_root
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if *current != root {
            tracing::info!(present = root.is_some(), "resource-server root changed");
            *current = root;
        }
    }
}

/// The configured root, or `None` (logged) when there is none or it cannot be read yet: resource servers are
/// then refused, and everything else works.
fn read_resource_server_root(config: &crate::config::AuthServerConfig) -> Option<Root> {
    let file = &config.resource_servers.as_ref()?.root_file;
    match Root::load(file) {
        Ok(root) => Some(root),
        Err(e) => {
            tracing::warn!(error = %e, "resource servers cannot introspect until the root can be read");
            None
        }
    }
}

/// Reload failures keep the previous state in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

impl ReloadError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReloadError::Config(e) => e.metric_label(),
            ReloadError::Keys(e) => e.metric_label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> AuthServerConfig {
        AuthServerConfig::parse(
            &format!("issuer: https://auth.example\nsigning: {{keysDir: /nonexistent}}\nlogin: {{static: {{users: []}}}}\n{extra}"),
            Path::new("c.yaml"),
        )
        .expect("config")
    }

    #[test]
    fn a_key_file_that_breaks_keeps_the_keys_in_force_and_says_so() {
        use base64::Engine;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("provider-token-keys");
        let good = format!(
            "k1 {}\n",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        std::fs::write(&path, &good).expect("write");
        let mut config = config("");
        config.provider_token_keys_file = Some(path.clone());
        let first = Snapshot::build(config.clone(), None).expect("snapshot");
        assert!(first.sealer.is_some() && first.sealer_problem.is_none());
        std::fs::write(&path, "garbage\n").expect("write");
        let (kept, problem) = sealer_or_problem(&config, Some(&first));
        assert_eq!(kept, first.sealer, "the keys in force stay");
        assert_eq!(
            problem.as_deref(),
            Some(
                format!(
                    "invalid config: provider token key file {}: line 1: expected `<key id> <key in base64>`",
                    path.display()
                )
                .as_str()
            ),
            "and the gauge says the file is broken"
        );
        let (none, problem) = sealer_or_problem(&config, None);
        assert!(
            none.is_none() && problem.is_some(),
            "no keys before: none now"
        );
    }

    #[test]
    fn a_reload_keeps_the_buckets_unless_the_limits_change() {
        let first = Snapshot::build(config(""), None).expect("snapshot");
        let same = |s: &Snapshot, t: &Snapshot| match (&s.limiter, &t.limiter) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        // (the new config's extra lines, whether the buckets are kept)
        for (extra, kept) in [
            ("tokens: {accessTokenSecs: 60}", true),
            ("trustedProxies: [10.0.0.0/8]", true),
            (
                "rateLimits: {tokenPerClient: {requestsPerSecond: 1, burst: 1}}",
                false,
            ),
        ] {
            let next = Snapshot::build(config(extra), Some(&first)).expect("snapshot");
            assert_eq!(same(&first, &next), kept, "{extra}");
        }
        let off = Snapshot::build(config("rateLimits: {enabled: false}"), Some(&first))
            .expect("snapshot");
        assert!(off.limiter.is_none());
        let proxies = Snapshot::build(config("trustedProxies: [10.0.0.0/8, \"fd00::/8\"]"), None)
            .expect("snapshot");
        assert_eq!(proxies.trusted_proxies.len(), 2);
    }
}
