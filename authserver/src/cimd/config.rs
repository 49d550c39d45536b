//! The CIMD section of the rendered authserver config: fetch limits, trust, and admission policies.
//!
//! Field names are camelCase like the Kubernetes resources they are rendered from (`CIMDPolicy`,
//! `AuthorizationServer`), so the operator can copy values across without renaming.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the authorization server treats a `client_id` that is an https URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CimdConfig {
    /// Accept Client ID Metadata Documents at all. When false, a URL `client_id` is refused as unknown.
    pub enabled: bool,
    /// Limits on every fetch (the document and any `jwks_uri`) and on the cache.
    pub fetch: FetchLimits,
    /// Private or special-use networks (CIDR, e.g. `10.20.0.0/16`) that may nevertheless be fetched,
    /// for an in-cluster client directory or a test. Empty by default: only public addresses.
    /// Cloud metadata addresses (169.254.169.254, fd00:ec2::254) stay refused even when covered.
    pub allowed_private_cidrs: Vec<String>,
    /// A PEM bundle of extra CA certificates trusted for fetches, on top of the system roots.
    pub extra_ca_bundle: Option<PathBuf>,
    /// Also accept `http://` client_ids and fetch them in clear text. Development only: the operator
    /// refuses to render this in a cluster.
    pub allow_http_for_development: bool,
    /// The server-wide policy every CIMD client must pass.
    pub baseline: Policy,
    /// Further policies by name; an MCP resource that names one must pass it on top of the baseline.
    pub policies: BTreeMap<String, Policy>,
}

impl Default for CimdConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fetch: FetchLimits::default(),
            allowed_private_cidrs: Vec::new(),
            extra_ca_bundle: None,
            allow_http_for_development: false,
            baseline: Policy::default(),
            policies: BTreeMap::new(),
        }
    }
}

/// Bounds on fetching and caching documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct FetchLimits {
    /// The most bytes read from a metadata document; reading stops past it (the draft recommends 5 KB).
    pub max_document_bytes: usize,
    /// The most bytes read from a `jwks_uri` (a few RSA keys do not fit in 5 KB).
    pub max_jwks_bytes: usize,
    /// Milliseconds allowed to establish the TCP connection.
    pub connect_timeout_ms: u64,
    /// Milliseconds allowed for the whole fetch: lookup, connect, TLS, headers and body.
    pub total_timeout_ms: u64,
    /// A document is kept at least this many seconds, whatever its `Cache-Control` says.
    pub cache_min_ttl_secs: u64,
    /// A document is kept at most this many seconds, whatever its `Cache-Control` says.
    pub cache_max_ttl_secs: u64,
    /// The most documents kept; the least recently used one leaves first.
    pub cache_capacity: usize,
    /// The most fetches in progress at once (documents and `jwks_uri`s together). Past it a new
    /// client is refused with `temporarily_unavailable` instead of queueing: a flood of made-up
    /// client_ids must not turn the server into a crawler.
    pub max_concurrent_fetches: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_document_bytes: 5120,
            max_jwks_bytes: 65536,
            connect_timeout_ms: 2000,
            total_timeout_ms: 5000,
            cache_min_ttl_secs: 60,
            cache_max_ttl_secs: 86400,
            cache_capacity: 1000,
            max_concurrent_fetches: 64,
        }
    }
}

/// `token_endpoint_auth_method` values a CIMD client may use: it never has a shared secret.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A public client: PKCE only.
    None,
    /// A confidential client that signs a JWT assertion with a key from its `jwks` / `jwks_uri`.
    PrivateKeyJwt,
}

impl AuthMethod {
    /// The OAuth registry name of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// One admission policy. Every rule has a default that admits any well-formed document, so a
/// policy states only what it restricts. When several policies apply, a client must pass each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Policy {
    /// Allowed client_id URLs as patterns `https://host/path-prefix`: the scheme and port match
    /// exactly, the host exactly or, written `*.example.com`, any subdomain of it (not the apex),
    /// and the path by whole segments (`/agents` admits `/agents/x`, not `/agentsx`).
    /// Empty: any client_id.
    pub client_id_patterns: Vec<String>,
    /// client_ids admitted even when no pattern matches (exact strings). The document rules still apply.
    pub allow_client_ids: Vec<String>,
    /// client_ids always refused (exact strings), checked before anything is fetched.
    pub deny_client_ids: Vec<String>,
    /// Accept a client_id URL with a query string (the draft says it SHOULD NOT have one).
    pub allow_query_in_client_id: bool,
    /// Rules for the document's `redirect_uris`.
    pub redirect_uris: RedirectUriRules,
    /// Token endpoint authentication methods admitted.
    pub allowed_auth_methods: Vec<AuthMethod>,
    /// Grant types a client keeps (others listed in its document are dropped).
    pub allowed_grant_types: Vec<String>,
    /// The scopes a client may ever request; absent: any scope the resource offers.
    pub allowed_scopes: Option<Vec<String>>,
    /// The most scopes one request may carry; absent: no limit.
    pub max_scopes_per_request: Option<u32>,
    /// Document properties that must be present (e.g. `logo_uri`, `tos_uri`, `jwks_uri`).
    pub required_properties: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            client_id_patterns: Vec::new(),
            allow_client_ids: Vec::new(),
            deny_client_ids: Vec::new(),
            allow_query_in_client_id: false,
            redirect_uris: RedirectUriRules::default(),
            allowed_auth_methods: vec![AuthMethod::None, AuthMethod::PrivateKeyJwt],
            allowed_grant_types: vec!["authorization_code".to_owned(), "refresh_token".to_owned()],
            allowed_scopes: None,
            max_scopes_per_request: None,
            required_properties: Vec::new(),
        }
    }
}

/// Rules a client's `redirect_uris` must follow (on top of the fixed ones: absolute, no fragment,
/// no userinfo, no wildcard, https or loopback http).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RedirectUriRules {
    /// Accept loopback redirects (`http://127.0.0.1`, `http://[::1]`, `http://localhost`, any port)
    /// used by native and desktop clients (RFC 8252).
    pub allow_loopback: bool,
    /// Accept https redirects (web applications). A policy for native clients only turns it off.
    pub allow_web: bool,
    /// Non-loopback redirects must be on the client_id's host or one of its subdomains.
    pub require_same_site: bool,
    /// Accept private-use schemes of native apps (reverse domain names like `com.example.app:/cb`).
    pub allow_private_use_schemes: bool,
}

impl Default for RedirectUriRules {
    fn default() -> Self {
        Self {
            allow_loopback: true,
            allow_web: true,
            require_same_site: false,
            allow_private_use_schemes: false,
        }
    }
}
