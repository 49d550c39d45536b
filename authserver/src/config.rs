//! The rendered configuration of the authorization server: the contract with the operator and local mode.
//!
//! The operator renders [`AuthServerConfig`] from the `AuthorizationServer`, `MCPService`, `MCPScope` and
//! `CIMDPolicy` resources into a ConfigMap; `mcp-authz local` renders the same type from a directory of YAML.
//! The server reads it with [`AuthServerConfig::load`] (YAML or JSON) and reloads it when the file changes.
//! Every struct refuses unknown fields, so a typo in a rendered file fails loudly instead of being ignored.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use url::Url;

/// Refusals while loading or checking a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// A low-cardinality reason for Prometheus.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Json { .. } | ConfigError::Yaml { .. } => "parse",
            ConfigError::Invalid(_) => "invalid",
        }
    }
}

/// The whole configuration of one authorization server deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthServerConfig {
    /// The issuer identifier: an `https` URL (or `http` on a loopback host for local mode), without query or
    /// fragment. It is published verbatim as `issuer` and as the `iss` of every token and authorization response.
    pub issuer: String,
    /// Address the OAuth endpoints listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the admin port: `/metrics`, `/healthz`, `/readyz` and the admin API.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// A second listener serving the same OAuth endpoints over TLS: in a cluster, the one sidecars use for
    /// JWKS and introspection, so bearer tokens never cross the pod network in cleartext. Absent: plain
    /// `listen` only (local mode on loopback, or a mesh that does mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListenConfig>,
    /// Where codes, grants, refresh tokens, consents, revocations and audit events are kept.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Signing keys of access tokens.
    pub signing: SigningConfig,
    /// Lifetimes of codes and tokens.
    #[serde(default)]
    pub tokens: TokenLifetimes,
    /// The scope catalogue: every scope any resource may offer.
    #[serde(default)]
    pub scopes: Vec<ScopeDefinition>,
    /// The protected MCP resources: a token is issued for exactly one of them.
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    /// How people log in.
    pub login: LoginConfig,
    /// Clients registered in advance (by the platform team).
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Dynamic Client Registration (RFC 7591). Off unless asked: deprecated by MCP 2026-07-28 in favour of CIMD.
    #[serde(default)]
    pub dynamic_client_registration: DynamicClientRegistration,
    /// Admin API credentials.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Clients identified by a Client ID Metadata Document (URL `client_id`s): fetch limits and admission
    /// policies. On by default; advertised in metadata only when enabled.
    #[serde(default)]
    pub cimd: crate::cimd::CimdConfig,
    /// Resource servers (the sidecars) that may introspect tokens of their own resource, authenticated with keys
    /// derived from one root (see [`crate::resource_servers`]). Absent: only the admin credential and registered
    /// clients with `introspection: true` may introspect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_servers: Option<ResourceServers>,
    /// Token buckets per client and per source address on `/token`, the browser flow and `/register`. On by
    /// default with generous rates; each replica keeps its own buckets.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Networks (CIDRs) of the proxies in front of the server, such as an ingress controller's pods. A request
    /// from one of them is taken to come from the address its `X-Forwarded-For` names (the nearest one not in
    /// these networks); from anywhere else the header is ignored. Empty: the connection's own address, always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Enterprise identity providers whose Identity Assertion JWT Authorization Grants (ID-JAGs) `/token`
    /// redeems (MCP enterprise-managed authorization). Empty: the `jwt-bearer` grant is not offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_identity_providers: Vec<TrustedIdentityProvider>,
    /// Third-party OAuth providers (an issue tracker, a mail service) whose APIs MCP servers call with the
    /// person's own account: the person connects the provider once, the server keeps the provider's refresh
    /// token sealed, and the sidecar of each resource listing the provider in `providers` obtains a fresh
    /// provider access token for the person of each request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderConfig>,
    /// File of the keys that seal provider tokens at rest (see [`crate::providers::seal`]), kept with the signing
    /// keys. Needed when `providers` is not empty; written with a fresh key when missing and `signing.selfManaged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_token_keys_file: Option<PathBuf>,
}

/// A third-party OAuth provider people connect their own account of. The server is a confidential client there
/// (authorization code with PKCE, the secret in HTTP Basic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderConfig {
    /// The provider's name in this server: lowercase letters, digits and '-' (the connect URL
    /// `{issuer}/connect/{id}`, the audience `urn:mcp-authz:provider:{id}` sidecars ask tokens for).
    pub id: String,
    /// Name people read on the consent screen and the connect pages.
    pub display_name: String,
    /// The provider's issuer, when it publishes OpenID Connect discovery
    /// (`{issuer}/.well-known/openid-configuration`); its endpoints are read from there. Otherwise give
    /// `authorizationEndpoint` and `tokenEndpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The provider's authorization endpoint (without discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// The provider's token endpoint (without discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// The provider's RFC 7009 revocation endpoint (without discovery): a disconnect revokes the refresh token
    /// there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// Our client id at the provider. Register `{issuer}/connect/{id}/callback` as its redirect URI.
    pub client_id: String,
    /// File holding our client secret at the provider (a mounted Secret), read at each use, so a rotated Secret
    /// takes effect without a restart.
    pub client_secret_file: PathBuf,
    /// Scopes asked of the provider.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra PEM CA bundle trusted when talking to the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// How a provider is named as the audience of a token exchange: an absolute URI (RFC 8707 `resource`) that no
/// downstream (an https URL) can be.
pub const PROVIDER_AUDIENCE_PREFIX: &str = "urn:mcp-authz:provider:";

impl ProviderConfig {
    /// The audience a sidecar names to obtain this provider's token.
    pub fn audience(&self) -> String {
        format!("{PROVIDER_AUDIENCE_PREFIX}{}", self.id)
    }
}

/// Whether `id` may name a provider (it appears in URL paths and audiences unescaped; the last segment of an
/// endpoint's path would put `/connect/<id>` in that endpoint's rate-limit bucket).
pub fn is_provider_id(id: &str) -> bool {
    ![
        "authorize",
        "login",
        "consent",
        "token",
        "introspect",
        "revoke",
        "register",
        "jwks",
    ]
    .contains(&id)
        && (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// The providers' declarations: each id valid and used once, exactly one of discovery and explicit endpoints,
/// every URL https (http only on loopback).
pub fn check_providers(config: &AuthServerConfig) -> Result<(), String> {
    let mut ids = HashSet::new();
    for p in &config.providers {
        let id = &p.id;
        if !is_provider_id(id) {
            return Err(format!(
                "providers: id {id:?} must be 1 to 63 lowercase letters, digits and '-'"
            ));
        }
        if !ids.insert(id.as_str()) {
            return Err(format!("providers: id {id:?} is used twice"));
        }
        let endpoints = [
            &p.authorization_endpoint,
            &p.token_endpoint,
            &p.revocation_endpoint,
        ];
        let discovered = p.issuer.is_some() && endpoints.iter().all(|e| e.is_none());
        let explicit =
            p.issuer.is_none() && p.authorization_endpoint.is_some() && p.token_endpoint.is_some();
        if !discovered && !explicit {
            return Err(format!(
                "providers {id:?}: needs either issuer (discovery) or authorizationEndpoint and tokenEndpoint, not both"
            ));
        }
        for (field, url) in [
            ("issuer", &p.issuer),
            ("authorizationEndpoint", &p.authorization_endpoint),
            ("tokenEndpoint", &p.token_endpoint),
            ("revocationEndpoint", &p.revocation_endpoint),
        ] {
            if let Some(url) = url
                && !Url::parse(url).is_ok_and(|u| {
                    is_https_or_loopback(&u) && u.fragment().is_none() && u.username().is_empty()
                })
            {
                return Err(format!(
                    "providers {id:?}: {field} {url:?} must be an https URL (http only on a loopback host) without fragment or userinfo"
                ));
            }
        }
        if p.client_id.is_empty() {
            return Err(format!("providers {id:?}: clientId is empty"));
        }
    }
    if !config.providers.is_empty() && config.provider_token_keys_file.is_none() {
        return Err(
            "providers need providerTokenKeysFile (the keys that seal provider tokens)".into(),
        );
    }
    for resource in &config.resources {
        if let Some(missing) = resource
            .providers
            .iter()
            .find(|p| !ids.contains(p.as_str()))
        {
            return Err(format!(
                "resource {:?} receives tokens of provider {missing:?}, which is not in providers",
                resource.resource
            ));
        }
    }
    Ok(())
}

/// An enterprise identity provider (IdP) trusted to say which person may use which client at which resource.
/// Its ID-JAGs are redeemed without a browser or a consent screen: the IdP's own policy stands in for consent,
/// so list here only the providers the organisation runs and the clients each may speak for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustedIdentityProvider {
    /// The provider's issuer, compared character for character with an ID-JAG's `iss`.
    pub issuer: String,
    /// Where the provider publishes its signing keys (https; http only on a loopback host). Exactly one of
    /// `jwksUri` and `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The provider's public keys inline (a JWK Set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Extra PEM CA bundle trusted when fetching `jwksUri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The client ids this provider may issue ID-JAGs to (registered ids or CIMD URLs); an ID-JAG for any other
    /// client is refused. At least one.
    pub clients: Vec<String>,
}

/// The rate limits of the authorization server (see the README, "Rate limits"). Each is a token bucket: it
/// holds up to `burst` requests and refills at `requestsPerSecond`. The defaults are far above what a person
/// or a well-behaved agent does and far below what one core serves (about 5,000 tokens/s), so they only bite
/// on floods and loops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimits {
    /// False turns every limit below off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Tokens issued to one client (`/token`). A request naming a client whose bucket is empty is refused,
    /// but only requests that obtain a token spend from it, so nobody can spend a client's budget by naming it.
    #[serde(default = "default_token_per_client")]
    pub token_per_client: RateBucket,
    /// `/token` requests from one source address (an IPv6 address counts as its /64), refused or not.
    #[serde(default = "default_token_per_address")]
    pub token_per_address: RateBucket,
    /// Sign-ins people complete for one client: authorization codes issued to it. Checked at `/authorize`
    /// before a sign-in starts; spent only when a signed-in person's request ends in a code, so nobody can
    /// spend a client's budget by starting sign-ins they never finish.
    #[serde(default = "default_authorize_per_client")]
    pub authorize_per_client: RateBucket,
    /// Requests from one source address to the browser flow: `/authorize`, `/login`, `/consent`,
    /// `/upstream/callback` and the provider pages (`/connect/...`) together.
    #[serde(default = "default_authorize_per_address")]
    pub authorize_per_address: RateBucket,
    /// `/register` requests from one source address (besides `dynamicClientRegistration.maxPerHour`, which
    /// counts registrations over every replica).
    #[serde(default = "default_register_per_address")]
    pub register_per_address: RateBucket,
}

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateBucket {
    /// The rate the bucket refills at, per second (0.001 to 1000000).
    #[schemars(range(min = 0.001, max = 1_000_000.0))]
    pub requests_per_second: f64,
    /// The most it holds: requests allowed at once after a quiet spell (1 to 1000000).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            token_per_client: default_token_per_client(),
            token_per_address: default_token_per_address(),
            authorize_per_client: default_authorize_per_client(),
            authorize_per_address: default_authorize_per_address(),
            register_per_address: default_register_per_address(),
        }
    }
}

impl RateLimits {
    /// Each bucket with the name it has in the config file.
    pub fn buckets(&self) -> [(&'static str, RateBucket); 5] {
        [
            ("tokenPerClient", self.token_per_client),
            ("tokenPerAddress", self.token_per_address),
            ("authorizePerClient", self.authorize_per_client),
            ("authorizePerAddress", self.authorize_per_address),
            ("registerPerAddress", self.register_per_address),
        ]
    }
}

fn default_true() -> bool {
    true
}

fn bucket(requests_per_second: f64, burst: u32) -> RateBucket {
    RateBucket {
        requests_per_second,
        burst,
    }
}

// A client_credentials agent asks once per token lifetime; a public client shared by 10,000 people who
// refresh every 10 minutes asks about 17 times a second.
fn default_token_per_client() -> RateBucket {
    bucket(100.0, 500)
}
// About 2 % of a core per address; an office behind one NAT address shares it.
fn default_token_per_address() -> RateBucket {
    bucket(100.0, 500)
}
// Each started sign-in holds a pending request row until it completes or expires.
fn default_authorize_per_client() -> RateBucket {
    bucket(20.0, 200)
}
// A person's sign-in is three or four requests.
fn default_authorize_per_address() -> RateBucket {
    bucket(10.0, 100)
}
// An MCP client registers once per installation: ten at once, then one every 50 s.
fn default_register_per_address() -> RateBucket {
    bucket(0.02, 10)
}

/// The TLS listener. The certificate and key files are re-read when they change (a renewed certificate in a
/// mounted Secret takes effect without a restart); a pair that does not load leaves the previous one in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsListenConfig {
    /// Address of the TLS listener. Changing it needs a restart.
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

/// Where the resource-server root is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceServers {
    /// File holding the root (32 bytes in base64, a mounted Secret), from which each resource's key is derived.
    pub root_file: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}

/// The store. Exactly one of `sqlite` and `postgres`; SQLite at the default path when the section is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageConfig {
    /// Embedded SQLite (WAL mode): one replica, the file on a persistent volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteStorage>,
    /// PostgreSQL: several replicas share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStorage>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sqlite: Some(SqliteStorage {
                path: PathBuf::from("/var/lib/mcp-authz/authserver.db"),
            }),
            postgres: None,
        }
    }
}

/// An embedded SQLite database file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqliteStorage {
    /// Path of the database file; created when missing.
    pub path: PathBuf,
}

/// A PostgreSQL database. The URL is a secret, so it is read from a file (a mounted Secret) or an environment
/// variable, never written in the config itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresStorage {
    /// File holding the connection URL (`postgres://user:pass@host:port/db`), surrounding whitespace ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// Environment variable holding the connection URL, used when `urlFile` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// Most connections this replica opens.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    10
}

/// Signing keys. The directory holds one PEM (PKCS#8) per key and an index `keys.json`
/// (see [`crate::keys::KeyIndex`]) giving each key's `kid`, algorithm, state (`next`, `active`, `retiring`) and
/// validity. The server signs with the `active` key and publishes `next`, `active` and `retiring` in its JWKS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SigningConfig {
    /// Directory of the key files (the operator mounts its keys Secret here).
    pub keys_dir: PathBuf,
    /// Signature algorithm of new keys. Only `ES256` for now.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// Let the server write and rotate its own keys in `keysDir` (local mode, or embedded storage without an
    /// operator). When false the directory is read-only to the server and an empty one is an error.
    #[serde(default)]
    pub self_managed: bool,
    /// With `selfManaged`: how long a key signs before the next one takes over.
    #[serde(default = "default_rotation_period")]
    pub rotation_period_secs: u64,
}

fn default_rotation_period() -> u64 {
    30 * 24 * 3600
}

/// Algorithms the server signs access tokens with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256 (RFC 7518).
    #[default]
    ES256,
}

/// Lifetimes, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenLifetimes {
    /// Access token lifetime (capped further by each scope's `maxLifetimeSecs`).
    #[serde(default = "default_access_token_secs")]
    pub access_token_secs: u64,
    /// Refresh token lifetime; each use rotates the token but keeps the grant's original end.
    #[serde(default = "default_refresh_token_secs")]
    pub refresh_token_secs: u64,
    /// Authorization code lifetime.
    #[serde(default = "default_code_secs")]
    pub authorization_code_secs: u64,
    /// How long a login session (cookie) lasts before the person must log in again.
    #[serde(default = "default_session_secs")]
    pub session_secs: u64,
    /// The longest life of a token obtained by token exchange for a downstream (never past the subject token's).
    #[serde(default = "default_exchanged_token_secs")]
    pub exchanged_token_secs: u64,
}

impl Default for TokenLifetimes {
    fn default() -> Self {
        TokenLifetimes {
            access_token_secs: default_access_token_secs(),
            refresh_token_secs: default_refresh_token_secs(),
            authorization_code_secs: default_code_secs(),
            session_secs: default_session_secs(),
            exchanged_token_secs: default_exchanged_token_secs(),
        }
    }
}

fn default_access_token_secs() -> u64 {
    300
}
fn default_refresh_token_secs() -> u64 {
    30 * 24 * 3600
}
fn default_code_secs() -> u64 {
    60
}
fn default_session_secs() -> u64 {
    8 * 3600
}
fn default_exchanged_token_secs() -> u64 {
    300
}

/// One scope of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScopeDefinition {
    /// The scope value as it appears in requests and tokens (RFC 6749 `scope-token`).
    pub value: String,
    /// What a person reads on the consent screen.
    pub description: String,
    /// Consent is asked every time and tokens are kept short.
    #[serde(default)]
    pub sensitive: bool,
    /// Longest access token lifetime for a token carrying this scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_secs: Option<u64>,
    /// Narrower scopes this one implies (`files:write` implies `files:read`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub implies: Vec<String>,
}

/// One protected MCP service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceConfig {
    /// The public URL clients use (RFC 8707 `resource`, the token `aud`), compared character for character.
    pub resource: String,
    /// Name shown on the consent screen.
    pub display_name: String,
    /// Scopes of the catalogue this service offers.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Name of the CIMD policy that admits clients for this resource (the default policy when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cimd_policy: Option<String>,
    /// Who holds this URL (the operator writes the MCPService's uid): part of its resource server's key, so a
    /// key issued to an earlier holder is not accepted; recorded with every grant and consent, and carried in
    /// access tokens, so none made under an earlier holder passes to this one (`oauth::holder`). Empty in local
    /// mode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub holder: String,
    /// Downstreams this service's resource server may obtain tokens for, as the person whose token it holds
    /// (RFC 8693 token exchange).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_exchange: Vec<ExchangeTarget>,
    /// Providers (ids of `providers`) whose access tokens this service's resource server may obtain for the
    /// person of a request: the MCP server calls those providers' APIs with the person's own account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
}

impl ResourceConfig {
    /// Whether this resource's server obtains tokens by exchange: for downstreams, or for providers.
    pub fn exchanges(&self) -> bool {
        !self.token_exchange.is_empty() || !self.providers.is_empty()
    }
}

/// One downstream a service may call as the person: the token's audience and the scopes that may be passed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExchangeTarget {
    /// The downstream's identifier, the exchanged token's `aud` (an https URL; another service's resource URL
    /// for a chain of MCP services).
    pub audience: String,
    /// Scopes of this service that may be passed on: an exchanged token gets those the person's token holds.
    pub scopes: Vec<String>,
}

/// Login: exactly one of `static` and `upstreamOidc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginConfig {
    /// A fixed list of users with Argon2id password hashes.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_users: Option<StaticLogin>,
    /// An upstream OpenID Connect provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_oidc: Option<UpstreamOidc>,
}

/// Static users, inline and/or from a file (a mounted Secret holding a YAML or JSON list of [`StaticUser`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticLogin {
    /// Users written in the config.
    #[serde(default)]
    pub users: Vec<StaticUser>,
    /// File with more users (a YAML or JSON list), read at load and on every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
}

/// One person who may log in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticUser {
    /// Login name typed in the form.
    pub username: String,
    /// Argon2id PHC string (`$argon2id$v=19$...`), made by `mcp-authz-server hash-password`.
    pub password_hash: String,
    /// Token `sub`; the username when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// An upstream OpenID Connect provider people log in with (authorization code + PKCE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamOidc {
    /// The provider's issuer; its discovery document is read from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Our client id at the provider.
    pub client_id: String,
    /// File holding our client secret (a mounted Secret); a public client when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked of the provider.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// ID token claim that becomes our `sub`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Extra PEM CA bundle trusted when talking to the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_subject_claim() -> String {
    "sub".into()
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// A public client (PKCE only).
    #[default]
    None,
    /// RFC 7523 JWT assertion signed with the client's private key.
    PrivateKeyJwt,
    /// A shared secret in an HTTP Basic `Authorization` header (RFC 6749 §2.3.1). Registered clients only: the
    /// official SDKs' enterprise (ID-JAG) clients authenticate this way.
    ClientSecretBasic,
    /// A shared secret in the form body (`client_secret`). Registered clients only.
    ClientSecretPost,
}

impl ClientAuthMethod {
    /// The OAuth registry name of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::None => "none",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
        }
    }

    /// Whether the method proves who the client is (anything but a public client).
    pub fn is_confidential(self) -> bool {
        self != ClientAuthMethod::None
    }

    /// Whether the method is a shared secret.
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost
        )
    }
}

/// OAuth grant types a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    /// RFC 7523 `urn:ietf:params:oauth:grant-type:jwt-bearer` with an Identity Assertion JWT Authorization Grant
    /// (ID-JAG) from a trusted identity provider: the MCP enterprise-managed authorization extension.
    JwtBearer,
}

/// The grant type URN of an ID-JAG redemption (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

impl GrantType {
    /// The grant's name on the wire (`grant_type`, metadata, client documents).
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::JwtBearer => JWT_BEARER_GRANT,
        }
    }

    /// The grant a wire name means.
    pub fn from_wire(name: &str) -> Option<Self> {
        [
            GrantType::AuthorizationCode,
            GrantType::RefreshToken,
            GrantType::ClientCredentials,
            GrantType::JwtBearer,
        ]
        .into_iter()
        .find(|g| g.as_str() == name)
    }
}

/// The token-exchange declarations of one resource: each downstream an https URL other than the resource
/// itself, declared once, passing on only scopes the resource offers (an exchanged token only ever holds scopes
/// the person's token for this resource holds, so any other could never be granted).
pub fn check_exchange_targets(resource: &ResourceConfig) -> Result<(), String> {
    let mut seen = HashSet::new();
    for target in &resource.token_exchange {
        let name = &resource.resource;
        let audience = &target.audience;
        // Userinfo too: `https://files.example.com@evil.example` is evil.example's, whatever it reads like.
        let well_formed = url::Url::parse(audience).is_ok_and(|u| {
            u.host().is_some()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none()
                && is_https_or_loopback(&u)
        });
        if !well_formed {
            return Err(format!(
                "resource {name:?}: tokenExchange audience {audience:?} must be an https URL (http only on loopback) without fragment or userinfo"
            ));
        }
        if audience == name {
            return Err(format!(
                "resource {name:?}: tokenExchange may not name the resource itself"
            ));
        }
        if !seen.insert(audience.as_str()) {
            return Err(format!(
                "resource {name:?}: tokenExchange names {audience:?} twice"
            ));
        }
        if target.scopes.is_empty() {
            return Err(format!(
                "resource {name:?}: tokenExchange to {audience:?} passes on no scope"
            ));
        }
        if let Some(scope) = target.scopes.iter().find(|s| !resource.scopes.contains(s)) {
            return Err(format!(
                "resource {name:?}: tokenExchange to {audience:?} passes on scope {scope:?}, which the resource does not offer"
            ));
        }
    }
    Ok(())
}

/// A pre-registered client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConfig {
    /// The client id; never starts with `https://` (those are CIMD clients).
    pub client_id: String,
    /// Name shown on the consent screen.
    pub client_name: String,
    /// Exact redirect URIs (https, or http on a loopback host whose port may vary).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Token endpoint authentication.
    #[serde(default)]
    pub token_endpoint_auth_method: ClientAuthMethod,
    /// The client's public keys (a JWK Set) for `private_key_jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// File holding the client's secret (a mounted Secret) for `client_secret_basic` and `client_secret_post`:
    /// at least 32 characters, read when the config is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Grant types allowed; `authorization_code` and `refresh_token` when empty.
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
    /// Scopes this client may be given with `client_credentials` (no person consents there).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// May call the introspection endpoint (a resource server, authenticated with `private_key_jwt`).
    #[serde(default)]
    pub introspection: bool,
}

/// Dynamic Client Registration switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DynamicClientRegistration {
    /// Serve `/register` (RFC 7591: public or `private_key_jwt` clients, ids starting `dcr-`) and advertise
    /// `registration_endpoint`.
    #[serde(default)]
    pub enabled: bool,
    /// Most registrations accepted in any hour (counted in the store, so across replicas); past it `/register`
    /// answers 429. Unused registrations are never deleted, so this bounds how fast the store can be filled.
    #[serde(default = "default_registrations_per_hour")]
    pub max_per_hour: u32,
    /// Most registrations accepted in any hour from one network (an IPv4 address, or an IPv6 /48: the site a
    /// subscriber is commonly given whole), counted where the network is the client's own (a public peer, or an
    /// address a trusted proxy forwarded): without it two addresses could use up `maxPerHour` for everyone.
    /// Behind an ingress without `trustedProxies` every client is one private peer, so only `maxPerHour` counts.
    #[serde(default = "default_registrations_per_hour_per_network")]
    #[schemars(range(min = 1))]
    pub max_per_hour_per_network: u32,
    /// Which redirect URIs a registration may ask for.
    #[serde(default)]
    pub redirect_uris: RegistrationRedirects,
}

impl Default for DynamicClientRegistration {
    fn default() -> Self {
        Self {
            enabled: false,
            max_per_hour: default_registrations_per_hour(),
            max_per_hour_per_network: default_registrations_per_hour_per_network(),
            redirect_uris: RegistrationRedirects::default(),
        }
    }
}

/// The redirect URIs Dynamic Client Registration accepts. Anyone may register, so a registered client proves
/// nothing about who runs it; a loopback redirect at least keeps the code on the machine of the person who
/// signs in, where an https redirect could send it to any site the registrant names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RegistrationRedirects {
    /// Only loopback http URIs (`http://127.0.0.1:PORT/...`, `[::1]`, `localhost`): native clients, as the
    /// desktop, CLI and IDE clients that still need registration are.
    #[default]
    LoopbackOnly,
    /// Loopback URIs for native clients and https URIs for web clients.
    LoopbackOrHttps,
}

fn default_registrations_per_hour() -> u32 {
    100
}

fn default_registrations_per_hour_per_network() -> u32 {
    10
}

/// Admin API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// File holding the admin bearer credential (a mounted Secret). The admin API refuses every call when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl AuthServerConfig {
    /// Reads a YAML or JSON file (JSON when the name ends in `.json` or the text starts with `{`) and checks it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses without checking (the name decides the format, as in [`AuthServerConfig::load`]).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        if json {
            serde_json::from_str(text).map_err(|e| ConfigError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    }

    /// Checks the rules that span fields; the first broken rule is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let issuer = Url::parse(&self.issuer).map_err(|e| {
            ConfigError::Invalid(format!("issuer {:?} is not a URL: {e}", self.issuer))
        })?;
        if issuer.query().is_some() || issuer.fragment().is_some() {
            return bad(format!(
                "issuer {:?} must not have a query or fragment",
                self.issuer
            ));
        }
        if !is_https_or_loopback(&issuer) {
            return bad(format!(
                "issuer {:?} must be https (http only on a loopback host)",
                self.issuer
            ));
        }
        if self.issuer.ends_with('/') {
            return bad(format!("issuer {:?} must not end with '/'", self.issuer));
        }
        match (&self.storage.sqlite, &self.storage.postgres) {
            (Some(_), None) => {}
            (None, Some(pg)) if pg.url_file.is_none() && pg.url_env.is_none() => {
                return bad("storage.postgres needs urlFile or urlEnv".into());
            }
            (None, Some(_)) => {}
            _ => return bad("storage needs exactly one of sqlite and postgres".into()),
        }
        if self.signing.rotation_period_secs < 60 {
            return bad("signing.rotationPeriodSecs must be at least 60".into());
        }
        if self.dynamic_client_registration.max_per_hour_per_network == 0 {
            return bad(
                "dynamicClientRegistration.maxPerHourPerNetwork must be at least 1 (enabled: false closes registration)"
                    .into(),
            );
        }
        if self.tokens.access_token_secs == 0 || self.tokens.authorization_code_secs == 0 {
            return bad("tokens lifetimes must be positive".into());
        }
        let mut scope_values = HashSet::new();
        for scope in &self.scopes {
            if !is_scope_token(&scope.value) {
                return bad(format!(
                    "scope {:?} is not a valid scope token",
                    scope.value
                ));
            }
            if !scope_values.insert(scope.value.as_str()) {
                return bad(format!("scope {:?} is defined twice", scope.value));
            }
        }
        for scope in &self.scopes {
            if let Some(missing) = scope
                .implies
                .iter()
                .find(|s| !scope_values.contains(s.as_str()))
            {
                return bad(format!(
                    "scope {:?} implies unknown scope {missing:?}",
                    scope.value
                ));
            }
        }
        let mut resources = HashSet::new();
        for resource in &self.resources {
            check_resource_url(&resource.resource)?;
            if !resources.insert(resource.resource.as_str()) {
                return bad(format!("resource {:?} is defined twice", resource.resource));
            }
            if let Some(missing) = resource
                .scopes
                .iter()
                .find(|s| !scope_values.contains(s.as_str()))
            {
                return bad(format!(
                    "resource {:?} offers scope {missing:?} that is not in the catalogue",
                    resource.resource
                ));
            }
            check_exchange_targets(resource).map_err(ConfigError::Invalid)?;
        }
        if self.tokens.exchanged_token_secs == 0 {
            return bad("tokens.exchangedTokenSecs must be positive".into());
        }
        match (&self.login.static_users, &self.login.upstream_oidc) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return bad("login needs exactly one of static and upstreamOidc".into()),
        }
        if let Some(users) = &self.login.static_users {
            let mut names = HashSet::new();
            for user in &users.users {
                if !names.insert(user.username.as_str()) {
                    return bad(format!("user {:?} is defined twice", user.username));
                }
                if !user.password_hash.starts_with("$argon2id$") {
                    return bad(format!(
                        "user {:?}: passwordHash must be an Argon2id PHC string",
                        user.username
                    ));
                }
            }
        }
        let mut client_ids = HashSet::new();
        for client in &self.clients {
            if !client_ids.insert(client.client_id.as_str()) {
                return bad(format!("client {:?} is defined twice", client.client_id));
            }
            check_client(client, |s| scope_values.contains(s)).map_err(ConfigError::Invalid)?;
        }
        for (name, b) in self.rate_limits.buckets() {
            if !(b.requests_per_second.is_finite()
                && (0.001..=1e6).contains(&b.requests_per_second))
            {
                return bad(format!(
                    "rateLimits.{name}.requestsPerSecond must be 0.001 to 1000000"
                ));
            }
            if !(1..=1_000_000).contains(&b.burst) {
                return bad(format!("rateLimits.{name}.burst must be 1 to 1000000"));
            }
        }
        self.trusted_proxy_networks()?;
        check_providers(self).map_err(ConfigError::Invalid)?;
        let mut idp_issuers = HashSet::new();
        for idp in &self.trusted_identity_providers {
            let name = &idp.issuer;
            let url = Url::parse(name).map_err(|e| {
                ConfigError::Invalid(format!(
                    "trustedIdentityProviders: issuer {name:?} is not a URL: {e}"
                ))
            })?;
            if !is_https_or_loopback(&url) || name == &self.issuer {
                return bad(format!(
                    "trustedIdentityProviders: issuer {name:?} must be https (http only on a loopback host) and not this server"
                ));
            }
            if !idp_issuers.insert(name.as_str()) {
                return bad(format!(
                    "trustedIdentityProviders: issuer {name:?} is listed twice"
                ));
            }
            match (&idp.jwks_uri, &idp.jwks) {
                (Some(uri), None) => {
                    if !Url::parse(uri).is_ok_and(|u| is_https_or_loopback(&u)) {
                        return bad(format!(
                            "trustedIdentityProviders {name:?}: jwksUri {uri:?} must be an https URL (http only on a loopback host)"
                        ));
                    }
                }
                (None, Some(_)) => {}
                _ => {
                    return bad(format!(
                        "trustedIdentityProviders {name:?}: needs exactly one of jwksUri and jwks"
                    ));
                }
            }
            if idp.clients.is_empty() || idp.clients.iter().any(String::is_empty) {
                return bad(format!(
                    "trustedIdentityProviders {name:?}: clients must list at least one client id"
                ));
            }
        }
        Ok(())
    }

    /// `trustedProxies`, parsed.
    pub fn trusted_proxy_networks(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|n| {
                n.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "trustedProxies: {n:?} is not a CIDR like 10.0.0.0/8"
                    ))
                })
            })
            .collect()
    }

    /// The catalogue keyed by scope value.
    pub fn scope_catalogue(&self) -> BTreeMap<&str, &ScopeDefinition> {
        self.scopes.iter().map(|s| (s.value.as_str(), s)).collect()
    }

    /// The registered resource with exactly this URL.
    pub fn resource(&self, resource: &str) -> Option<&ResourceConfig> {
        self.resources.iter().find(|r| r.resource == resource)
    }

    /// The provider of this id.
    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.id == id)
    }
}

/// A resource URL this server accepts: https (http only on loopback), no fragment. The operator checks each
/// team's URL with it before rendering, so one bad URL leaves out one service instead of the whole config.
pub fn check_resource_url(resource: &str) -> Result<(), ConfigError> {
    let url = Url::parse(resource)
        .map_err(|e| ConfigError::Invalid(format!("resource {resource:?} is not a URL: {e}")))?;
    if url.fragment().is_some() || !is_https_or_loopback(&url) {
        return Err(ConfigError::Invalid(format!(
            "resource {resource:?} must be https (http only on loopback) without fragment"
        )));
    }
    // `https://files.example.com@team-b.example/x` is team-b's host but reads like another team's on a consent
    // screen.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::Invalid(format!(
            "resource {resource:?} must not carry userinfo"
        )));
    }
    Ok(())
}

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 §3.3).
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// True for `https` URLs and for `http` URLs whose host is a loopback address or `localhost`.
pub fn is_https_or_loopback(url: &Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback_host(url),
        _ => false,
    }
}

/// `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Client id prefixes of the kinds of client the server names itself: resource servers (sidecars), clients
/// registered at `/register`, and `http://` metadata documents (refused, but never to be shadowed).
const RESERVED_CLIENT_ID_PREFIXES: [&str; 3] = [
    crate::resource_servers::CLIENT_ID_PREFIX,
    crate::clients::DYNAMIC_CLIENT_PREFIX,
    "http://",
];

/// The rules one registered client must meet on its own (the operator checks each MCPClient with them, so one
/// bad declaration stays out of the server's config instead of stopping it): `known_scope` says which scope
/// values the catalogue holds. The message names the client.
pub fn check_client(
    client: &ClientConfig,
    known_scope: impl Fn(&str) -> bool,
) -> Result<(), String> {
    if client.client_id.is_empty() || client.client_id.starts_with("https://") {
        return Err(format!(
            "client id {:?} must be non-empty and must not start with https:// (reserved for CIMD)",
            client.client_id
        ));
    }
    // Registered ids are looked up first: one of these would stand in for a sidecar, a registration or a
    // metadata document that has the same id.
    if let Some(prefix) = RESERVED_CLIENT_ID_PREFIXES
        .iter()
        .find(|p| client.client_id.starts_with(**p))
    {
        return Err(format!(
            "client id {:?} must not start with {prefix} (reserved for the server's own kinds of client)",
            client.client_id
        ));
    }
    for uri in &client.redirect_uris {
        check_redirect_uri(uri).map_err(|m| format!("client {:?}: {m}", client.client_id))?;
    }
    if client.token_endpoint_auth_method == ClientAuthMethod::PrivateKeyJwt && client.jwks.is_none()
    {
        return Err(format!(
            "client {:?}: private_key_jwt needs jwks",
            client.client_id
        ));
    }
    let method = client.token_endpoint_auth_method;
    if method.is_secret() != client.client_secret_file.is_some() {
        return Err(format!(
            "client {:?}: clientSecretFile goes with client_secret_basic or client_secret_post, and only with them",
            client.client_id
        ));
    }
    for grant in [GrantType::ClientCredentials, GrantType::JwtBearer] {
        if client.grant_types.contains(&grant) && !method.is_confidential() {
            return Err(format!(
                "client {:?}: {} needs a confidential client (private_key_jwt or a client secret)",
                client.client_id,
                grant.as_str()
            ));
        }
    }
    if let Some(missing) = client.scopes.iter().find(|s| !known_scope(s.as_str())) {
        return Err(format!(
            "client {:?}: unknown scope {missing:?}",
            client.client_id
        ));
    }
    Ok(())
}

/// Rules of a registered redirect URI (OAuth 2.1 §2.3.1, RFC 8252): absolute, https or loopback http,
/// no fragment, no userinfo, no wildcard.
pub fn check_redirect_uri(uri: &str) -> Result<Url, String> {
    let url = Url::parse(uri).map_err(|e| format!("redirect URI {uri:?} is not a URL: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect URI {uri:?} must not have a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("redirect URI {uri:?} must not carry userinfo"));
    }
    if uri.contains('*') {
        return Err(format!("redirect URI {uri:?} must not contain wildcards"));
    }
    if !is_https_or_loopback(&url) {
        return Err(format!(
            "redirect URI {uri:?} must be https, or http on a loopback host"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
issuer: https://auth.example.com
listen: 127.0.0.1:8443
storage:
  sqlite:
    path: /tmp/a.db
signing:
  keysDir: /keys
scopes:
  - value: files:read
    description: Read your files
  - value: files:write
    description: Change your files
    sensitive: true
    maxLifetimeSecs: 60
    implies: [files:read]
resources:
  - resource: https://mcp.example.com/files
    displayName: Files
    scopes: [files:read, files:write]
login:
  static:
    users:
      - username: alice
        passwordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
clients:
  - clientId: cli
    clientName: The CLI
    redirectUris: ["http://127.0.0.1/callback"]
"#;

    fn parse(text: &str) -> Result<AuthServerConfig, ConfigError> {
        let c = AuthServerConfig::parse(text, Path::new("c.yaml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn parses_yaml_with_defaults() {
        let c = parse(YAML).unwrap();
        assert_eq!(c.issuer, "https://auth.example.com");
        assert_eq!(c.admin_listen, default_admin_listen());
        assert_eq!(c.tokens.access_token_secs, 300);
        assert_eq!(c.signing.algorithm, SigningAlgorithm::ES256);
        assert_eq!(
            c.clients[0].token_endpoint_auth_method,
            ClientAuthMethod::None
        );
        assert!(!c.dynamic_client_registration.enabled);
        assert_eq!(c.rate_limits, RateLimits::default());
        assert!(c.rate_limits.enabled);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(
            c.scope_catalogue()["files:write"].implies,
            vec!["files:read"]
        );
    }

    #[test]
    fn json_round_trip_is_identical() {
        let c = parse(YAML).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back = AuthServerConfig::parse(&json, Path::new("c.json")).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn refuses_unknown_fields_at_every_level() {
        for (from, to) in [
            ("issuer:", "isuer: x\nissuer:"),
            ("keysDir: /keys", "keysDir: /keys\n  keyDir: /x"),
            (
                "    path: /tmp/a.db",
                "    path: /tmp/a.db\n    journal: wal",
            ),
            (
                "    displayName: Files",
                "    displayName: Files\n    owner: bob",
            ),
        ] {
            let text = YAML.replacen(from, to, 1);
            let err = AuthServerConfig::parse(&text, Path::new("c.yaml")).unwrap_err();
            assert!(matches!(err, ConfigError::Yaml { .. }), "{from}: {err}");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn refuses_broken_rules_with_the_field_named() {
        let cases = [
            (
                "https://auth.example.com",
                "http://auth.example.com",
                "must be https",
            ),
            (
                "https://auth.example.com",
                "https://auth.example.com/",
                "must not end with '/'",
            ),
            (
                "scopes: [files:read, files:write]",
                "scopes: [files:admin]",
                "not in the catalogue",
            ),
            (
                "clientId: cli",
                "clientId: https://cli.example",
                "reserved for CIMD",
            ),
            (
                "clientId: cli",
                "clientId: urn:mcp-authz:resource-server:https://mcp.example.com/mcp",
                "client id \"urn:mcp-authz:resource-server:https://mcp.example.com/mcp\" must not start with urn:mcp-authz:resource-server: (reserved for the server's own kinds of client)",
            ),
            (
                "clientId: cli",
                "clientId: dcr-0123",
                "client id \"dcr-0123\" must not start with dcr- (reserved for the server's own kinds of client)",
            ),
            (
                "clientId: cli",
                "clientId: http://cli.example",
                "client id \"http://cli.example\" must not start with http:// (reserved for the server's own kinds of client)",
            ),
            (
                "http://127.0.0.1/callback",
                "http://evil.example/cb",
                "loopback host",
            ),
            (
                "http://127.0.0.1/callback",
                "https://x.example/*",
                "wildcards",
            ),
            (
                "implies: [files:read]",
                "implies: [files:list]",
                "implies unknown scope",
            ),
            ("\"$argon2id$v=19", "\"$argon2i$v=19", "Argon2id"),
            (
                "- resource: https://mcp.example.com/files",
                "- resource: https://files.example.com@mcp.example.com/files",
                "resource \"https://files.example.com@mcp.example.com/files\" must not carry userinfo",
            ),
            (
                "clients:",
                "rateLimits: {tokenPerClient: {requestsPerSecond: 0, burst: 5}}\nclients:",
                "rateLimits.tokenPerClient.requestsPerSecond must be 0.001 to 1000000",
            ),
            (
                "clients:",
                "rateLimits: {registerPerAddress: {requestsPerSecond: 1, burst: 0}}\nclients:",
                "rateLimits.registerPerAddress.burst must be 1 to 1000000",
            ),
            (
                "clients:",
                "trustedProxies: [10.0.0.0/8, ingress]\nclients:",
                "trustedProxies: \"ingress\" is not a CIDR",
            ),
            (
                "    clientName: The CLI",
                "    clientName: The CLI\n    tokenEndpointAuthMethod: client_secret_post",
                "client \"cli\": clientSecretFile goes with client_secret_basic or client_secret_post, and only with them",
            ),
            (
                "    clientName: The CLI",
                "    clientName: The CLI\n    clientSecretFile: /s",
                "client \"cli\": clientSecretFile goes with client_secret_basic or client_secret_post, and only with them",
            ),
            (
                "    clientName: The CLI",
                "    clientName: The CLI\n    grantTypes: [jwt_bearer]",
                "client \"cli\": urn:ietf:params:oauth:grant-type:jwt-bearer needs a confidential client (private_key_jwt or a client secret)",
            ),
            (
                "clients:",
                "trustedIdentityProviders:\n  - {issuer: http://idp.example, jwksUri: https://idp.example/k, clients: [cli]}\nclients:",
                "trustedIdentityProviders: issuer \"http://idp.example\" must be https (http only on a loopback host) and not this server",
            ),
            (
                "clients:",
                "trustedIdentityProviders:\n  - {issuer: https://auth.example.com, jwksUri: https://idp.example/k, clients: [cli]}\nclients:",
                "trustedIdentityProviders: issuer \"https://auth.example.com\" must be https (http only on a loopback host) and not this server",
            ),
            (
                "clients:",
                "trustedIdentityProviders:\n  - {issuer: https://idp.example, clients: [cli]}\nclients:",
                "trustedIdentityProviders \"https://idp.example\": needs exactly one of jwksUri and jwks",
            ),
            (
                "clients:",
                "trustedIdentityProviders:\n  - {issuer: https://idp.example, jwksUri: http://idp.example/k, clients: [cli]}\nclients:",
                "trustedIdentityProviders \"https://idp.example\": jwksUri \"http://idp.example/k\" must be an https URL",
            ),
            (
                "clients:",
                "trustedIdentityProviders:\n  - {issuer: https://idp.example, jwks: {keys: []}, clients: []}\nclients:",
                "trustedIdentityProviders \"https://idp.example\": clients must list at least one client id",
            ),
            (
                "clients:",
                "trustedIdentityProviders:\n  - {issuer: https://idp.example, jwks: {keys: []}, clients: [a]}\n  - {issuer: https://idp.example, jwks: {keys: []}, clients: [a]}\nclients:",
                "trustedIdentityProviders: issuer \"https://idp.example\" is listed twice",
            ),
        ];
        for (from, to, expected) in cases {
            let text = YAML.replacen(from, to, 1);
            let err = parse(&text).unwrap_err();
            assert!(err.to_string().contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn refuses_a_registration_share_of_zero() {
        let mut c = parse(YAML).unwrap();
        c.dynamic_client_registration.max_per_hour_per_network = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            ConfigError::Invalid("dynamicClientRegistration.maxPerHourPerNetwork must be at least 1 (enabled: false closes registration)".into()).to_string()
        );
    }

    #[test]
    fn refuses_two_storages_and_two_logins() {
        let text = YAML.replacen(
            "    path: /tmp/a.db",
            "    path: /tmp/a.db\n  postgres:\n    urlEnv: PG",
            1,
        );
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("exactly one of sqlite and postgres")
        );
        let text = YAML.replacen("login:\n  static:", "login:\n  x: 1", 1);
        assert!(parse(&text).is_err());
    }

    #[test]
    fn json_schema_documents_fields_and_closes_objects() {
        let schema = serde_json::to_value(schemars::schema_for!(AuthServerConfig)).unwrap();
        assert_eq!(schema["additionalProperties"], false);
        assert!(
            schema["required"]
                .as_array()
                .unwrap()
                .contains(&"issuer".into())
        );
        let issuer = &schema["properties"]["issuer"]["description"];
        assert!(
            issuer
                .as_str()
                .unwrap()
                .starts_with("The issuer identifier"),
            "{issuer}"
        );
    }

    #[test]
    fn loopback_and_scope_token_rules() {
        assert!(is_loopback_host(&Url::parse("http://[::1]:9/x").unwrap()));
        assert!(is_loopback_host(&Url::parse("http://127.3.0.1/x").unwrap()));
        assert!(!is_loopback_host(&Url::parse("http://10.0.0.1/x").unwrap()));
        assert!(is_scope_token("files:read"));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token(""));
    }

    #[test]
    fn token_exchange_declarations() {
        let files = |targets: Vec<(&str, Vec<&str>)>| ResourceConfig {
            resource: "https://mcp.example.com/files".into(),
            display_name: "Files".into(),
            scopes: vec!["files:read".into(), "files:write".into()],
            cimd_policy: None,
            holder: String::new(),
            token_exchange: targets
                .into_iter()
                .map(|(audience, scopes)| ExchangeTarget {
                    audience: audience.into(),
                    scopes: scopes.into_iter().map(String::from).collect(),
                })
                .collect(),
            providers: Vec::new(),
        };
        let r = "resource \"https://mcp.example.com/files\": tokenExchange";
        type Targets<'a> = Vec<(&'a str, Vec<&'a str>)>;
        let cases: Vec<(Targets, Option<String>)> = vec![
            (vec![], None),
            (
                vec![("https://api.example.com/v1", vec!["files:read"])],
                None,
            ),
            (
                vec![("http://127.0.0.1:8000/mcp", vec!["files:read"])],
                None,
            ),
            (
                vec![("http://api.example.com", vec!["files:read"])],
                Some(format!(
                    "{r} audience \"http://api.example.com\" must be an https URL (http only on loopback) without fragment or userinfo"
                )),
            ),
            (
                vec![("https://api.example.com/#x", vec!["files:read"])],
                Some(format!(
                    "{r} audience \"https://api.example.com/#x\" must be an https URL (http only on loopback) without fragment or userinfo"
                )),
            ),
            (
                vec![(
                    "https://files.example.com@evil.example/",
                    vec!["files:read"],
                )],
                Some(format!(
                    "{r} audience \"https://files.example.com@evil.example/\" must be an https URL (http only on loopback) without fragment or userinfo"
                )),
            ),
            (
                vec![("api", vec!["files:read"])],
                Some(format!(
                    "{r} audience \"api\" must be an https URL (http only on loopback) without fragment or userinfo"
                )),
            ),
            (
                vec![("https://mcp.example.com/files", vec!["files:read"])],
                Some(format!("{r} may not name the resource itself")),
            ),
            (
                vec![
                    ("https://a.example", vec!["files:read"]),
                    ("https://a.example", vec!["files:write"]),
                ],
                Some(format!("{r} names \"https://a.example\" twice")),
            ),
            (
                vec![("https://a.example", vec![])],
                Some(format!("{r} to \"https://a.example\" passes on no scope")),
            ),
            (
                vec![("https://a.example", vec!["mail:read"])],
                Some(format!(
                    "{r} to \"https://a.example\" passes on scope \"mail:read\", which the resource does not offer"
                )),
            ),
        ];
        for (targets, expected) in cases {
            let what = format!("{targets:?}");
            assert_eq!(
                check_exchange_targets(&files(targets)).err(),
                expected,
                "{what}"
            );
        }
    }
}
