//! The rendered sidecar configuration: the contract between the operator (or local mode), which writes it,
//! and the sidecar, which reads it and reloads it when the file changes.
//!
//! Field names are camelCase like the Kubernetes resources they are rendered from. Unknown fields are refused
//! so that a typo in a hand-written file, or a newer operator talking to an older sidecar, fails loudly
//! instead of silently dropping a security rule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::caller::Callers;

/// Signature algorithms a sidecar may accept. HMAC is absent on purpose: a resource server holding a shared
/// secret could mint tokens, and a public key must never be usable as an HMAC secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256 (the authserver's default).
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// Ed25519.
    EdDSA,
}

impl SigningAlgorithm {
    /// The matching `jsonwebtoken` algorithm.
    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::ES256 => A::ES256,
            Self::ES384 => A::ES384,
            Self::RS256 => A::RS256,
            Self::RS384 => A::RS384,
            Self::RS512 => A::RS512,
            Self::PS256 => A::PS256,
            Self::PS384 => A::PS384,
            Self::PS512 => A::PS512,
            Self::EdDSA => A::EdDSA,
        }
    }
}

/// Everything one sidecar needs. Rendered by the operator into the MCPService's sidecar ConfigMap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarConfig {
    /// Address the proxy listens on for MCP clients. Changing it needs a restart.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`). Changing it needs a restart.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: SocketAddr,
    /// Base URL of the MCP server in the same pod, `http://127.0.0.1:<port>`. The request path is appended
    /// unchanged. Only plain http is supported: the upstream is on the loopback interface.
    pub upstream: String,
    /// The public URL clients use for this MCP service, character for character (RFC 9728 `resource`, and the
    /// value every token's `aud` must contain).
    pub resource: String,
    /// Who holds `resource` at the authorization server (the MCPService's uid): a token naming another holder
    /// (claim `mcp_authz_holder`) was issued while another service held the URL, and is refused. Empty: no
    /// holder is checked (local mode).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub holder: String,
    /// The path of the MCP endpoint as it reaches the sidecar (`/mcp`). Only this path and the metadata paths
    /// are served; everything else is 404 so that nothing bypasses the JSON-RPC checks.
    #[serde(default = "defaults::mcp_path")]
    pub mcp_path: String,
    /// The authorization server's issuer identifier; every token's `iss` must equal it.
    pub issuer: String,
    /// Where the issuer publishes its signing keys (JWKS). http is accepted only for loopback and in-cluster
    /// use; https is verified against `issuerCaFile` or the system roots.
    pub jwks_uri: String,
    /// PEM bundle of CA certificates trusted for an https `jwksUri` (and introspection) signed by a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ca_file: Option<PathBuf>,
    /// Authorization servers listed in the protected-resource metadata. Empty means `[issuer]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,
    /// Signature algorithms accepted in tokens (never `none`, never HMAC).
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "defaults::leeway_seconds")]
    pub leeway_seconds: u64,
    /// Accepted JWT `typ` header values, compared case-insensitively (RFC 9068 says `at+jwt`).
    #[serde(default = "defaults::token_types")]
    pub token_types: Vec<String>,
    /// The minimal scopes a client needs for basic use, published as `scopes_supported` and put in the
    /// `scope` of a 401 challenge. Never include `offline_access`.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Scope hierarchy: a broader scope (key) implies each narrower scope in its list. Transitive.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scope_implies: BTreeMap<String, Vec<String>>,
    /// JSON-RPC methods any valid token may call, whatever its scopes (globs). The defaults are the session
    /// plumbing and the list methods, whose answers are filtered to what the token may use.
    #[serde(default = "defaults::open_methods")]
    pub open_methods: Vec<String>,
    /// Operation rules, tried in order; the first rule that matches an operation decides its scopes.
    #[serde(default)]
    pub rules: Vec<ScopeRule>,
    /// What happens to an operation no rule and no `openMethods` entry matches.
    #[serde(default)]
    pub unmatched: UnmatchedPolicy,
    /// Header names the verified identity is sent upstream in.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
    /// Optional RFC 7662 introspection for operations that need a sensitive scope (revocation check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionConfig>,
    /// Tokens for downstream APIs the MCP server calls as the person (RFC 8693 token exchange at the issuer),
    /// each handed to the upstream in its own header with every forwarded POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_tokens: Option<DownstreamTokens>,
    /// How the signing keys are fetched and cached.
    #[serde(default)]
    pub jwks: JwksSettings,
    /// Size and time limits.
    #[serde(default)]
    pub limits: Limits,
    /// Token buckets on authorized requests (none by default): a request over one gets 429 with
    /// `Retry-After`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

/// One rule: an MCP operation pattern and the scopes it needs (all of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScopeRule {
    /// JSON-RPC method glob (`tools/call`, `resources/*`, `*`). `*` matches any run of characters, `?` one.
    pub method: String,
    /// Glob on the operation's name: the tool name for `tools/call`, the URI for `resources/read`, the prompt
    /// name for `prompts/get`. Absent matches any name, and also methods that have no name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Scopes the operation needs, all of them. Empty means any valid token may do it.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Who may perform it besides holding the scopes: `anyone` (the default), `people` (a person stands behind
    /// the token) or `machines` (a client acting for itself, `client_credentials`). Not a matcher: a rule whose
    /// callers refuse the token refuses the operation, it does not pass it on to a later rule.
    #[serde(default, skip_serializing_if = "Callers::is_anyone")]
    pub callers: Callers,
}

/// The decision for operations nothing matched.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UnmatchedPolicy {
    /// Refuse them (403 with a JSON-RPC error). The safe default.
    #[default]
    Deny,
    /// Allow them to any valid token.
    Allow,
    /// Allow them to tokens holding all these scopes.
    RequireScopes(Vec<String>),
}

/// The most downstreams one service may call.
pub const MAX_DOWNSTREAMS: usize = 8;

/// Fields the sidecar writes to the upstream itself or HTTP and MCP give a meaning (lowercase): none of these
/// may carry the identity or a downstream token, or the upstream would get the field twice, read the proxy's
/// value as something else (an MCP server answers 406 to an `Accept` holding a token), or write the token to
/// its access log (`user-agent`, `referer`). The operator's CRD rule for token headers is built from the same
/// lists.
pub const PROXY_OWNED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "host",
    "cookie",
    "accept",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "expect",
    "forwarded",
    "via",
    "x-real-ip",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "uber-trace-id",
    "sentry-trace",
    "x-cloud-trace-context",
    "x-amzn-trace-id",
    "x-request-id",
    "last-event-id",
    "range",
    "cache-control",
    "pragma",
    "date",
    "origin",
    "referer",
    "user-agent",
];

/// Prefixes of field families in [`PROXY_OWNED_HEADERS`]'s sense: forwarding fields, MCP's own, content
/// negotiation and description (`accept-encoding`, `content-type`...), conditional requests, and the trace
/// propagation fields an instrumented MCP server copies onto every call it makes (B3, Jaeger, OpenTracing,
/// Datadog).
pub const PROXY_OWNED_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "mcp-",
    "accept-",
    "content-",
    "if-",
    "x-b3-",
    "uberctx-",
    "ot-baggage-",
    "x-datadog-",
];

/// Whether `header` (lowercase) is in [`PROXY_OWNED_HEADERS`] or starts with one of [`PROXY_OWNED_PREFIXES`].
pub fn proxy_owns_header(header: &str) -> bool {
    PROXY_OWNED_HEADERS.contains(&header)
        || PROXY_OWNED_PREFIXES
            .iter()
            .any(|prefix| header.starts_with(prefix))
}

/// Whether `header` may carry a downstream token: a lowercase name of letters, digits and `-`, and none the
/// sidecar sets itself (`identity`, forwarding fields) or HTTP and MCP give a meaning.
pub fn downstream_header_allowed(header: &str, identity: &IdentityHeaders) -> bool {
    // Header names are case-insensitive: `X-Subject` as an identity header is `x-subject` on the wire.
    let reserved = identity
        .names()
        .iter()
        .any(|name| name.eq_ignore_ascii_case(header))
        || proxy_owns_header(header);
    let well_formed = !header.is_empty()
        && header
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    well_formed && !reserved
}

/// Downstream targets: distinct audiences, each with a header name of its own that no client may send in its
/// place and that names nothing the proxy or HTTP gives a meaning.
fn check_downstream_tokens(
    downstream: &DownstreamTokens,
    identity: &IdentityHeaders,
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if downstream.targets.is_empty() || downstream.targets.len() > MAX_DOWNSTREAMS {
        return invalid(format!(
            "downstreamTokens.targets must list 1 to {MAX_DOWNSTREAMS} downstreams"
        ));
    }
    let mut audiences = std::collections::HashSet::new();
    let mut headers = std::collections::HashSet::new();
    for target in &downstream.targets {
        if target.audience.is_empty() || !audiences.insert(target.audience.as_str()) {
            return invalid(format!(
                "downstreamTokens: audience {:?} is empty or named twice",
                target.audience
            ));
        }
        if let Some(url) = &target.connect_url
            && !url::Url::parse(url).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "http")
                    && u.host().is_some()
                    && u.username().is_empty()
            })
        {
            return invalid(format!(
                "downstreamTokens: connectUrl {url:?} of {:?} must be an http(s) URL without userinfo",
                target.audience
            ));
        }
        let header = target.header.as_str();
        if !downstream_header_allowed(header, identity) || !headers.insert(header) {
            return invalid(format!(
                "downstreamTokens: header {header:?} must be a lowercase name of letters, digits and '-', used once, and not one the sidecar or HTTP gives a meaning"
            ));
        }
    }
    Ok(())
}

/// Header names for the identity forwarded upstream. The sidecar removes any client-sent header of these
/// names first, so a client cannot forge its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityHeaders {
    /// The token's `sub`.
    #[serde(default = "defaults::subject_header")]
    pub subject: String,
    /// The token's `client_id`.
    #[serde(default = "defaults::client_id_header")]
    pub client_id: String,
    /// The token's scopes, space-separated, as granted (not expanded).
    #[serde(default = "defaults::scopes_header")]
    pub scopes: String,
    /// Who stands behind the token: `person`, `machine` (a client acting for itself) or `unknown` (a token
    /// that does not say).
    #[serde(default = "defaults::caller_header")]
    pub caller: String,
}

impl IdentityHeaders {
    /// Every name, in the order of [`crate::verified::Verified::header_values`].
    pub fn names(&self) -> [&str; 4] {
        [&self.subject, &self.client_id, &self.scopes, &self.caller]
    }
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: defaults::subject_header(),
            client_id: defaults::client_id_header(),
            scopes: defaults::scopes_header(),
            caller: defaults::caller_header(),
        }
    }
}

/// RFC 7662 token introspection, used only when an operation needs one of `sensitiveScopes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntrospectionConfig {
    /// The issuer's introspection endpoint (in a cluster, the authorization server's Service).
    pub endpoint: String,
    /// The sidecar's client id at the issuer.
    pub client_id: String,
    /// The sidecar's private key (PKCS#8 PEM, Ed25519 or P-256; a mounted Secret). Each call is authenticated with
    /// a fresh `private_key_jwt` assertion signed with it, whose `aud` is the `issuer`.
    pub private_key_file: PathBuf,
    /// Scopes whose operations are checked against the issuer, so a revoked token stops working at once.
    #[serde(default)]
    pub sensitive_scopes: Vec<String>,
    /// How long an `active` answer is reused, in seconds. 0 (the default) asks on every sensitive operation, so a
    /// revocation takes effect at once; `inactive` answers are always kept for ten minutes.
    #[serde(default = "defaults::introspection_cache_seconds")]
    pub cache_seconds: u64,
    /// Time limit for one introspection call, in milliseconds; on timeout the request is refused (503).
    #[serde(default = "defaults::introspection_timeout_ms")]
    pub timeout_ms: u64,
}

/// Token exchange for downstream calls: the sidecar trades the request's token, as its service's resource
/// server, for a token to each target and sends that upstream, so the MCP server never holds the person's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DownstreamTokens {
    /// The issuer's token endpoint (in a cluster, the authorization server's Service).
    pub token_endpoint: String,
    /// The sidecar's client id at the issuer (its service's resource server).
    pub client_id: String,
    /// The sidecar's private key (PKCS#8 PEM, Ed25519 or P-256), as for introspection.
    pub private_key_file: PathBuf,
    /// Time limit for one exchange, in milliseconds; on timeout the request is refused (503).
    #[serde(default = "defaults::introspection_timeout_ms")]
    pub timeout_ms: u64,
    /// The downstreams (at most 8).
    pub targets: Vec<DownstreamTarget>,
}

/// One downstream: the token's audience and the header the upstream reads it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DownstreamTarget {
    /// The downstream's identifier (`resource` of the exchange, the token's `aud`).
    pub audience: String,
    /// The request header the token is sent upstream in (a client's own field of that name is removed).
    pub header: String,
    /// For a third-party provider's token (audience `urn:mcp-authz:provider:<id>`): where the person connects
    /// their account (`{issuer}/connect/<id>`). A tool call, prompt or resource read of a person who has not
    /// connected is answered with an MCP URL elicitation of this link; other requests go on without the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_url: Option<String>,
}

/// JWKS fetching and caching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwksSettings {
    /// Regular refresh period, in seconds.
    #[serde(default = "defaults::jwks_refresh_seconds")]
    pub refresh_seconds: u64,
    /// Least time between two refreshes caused by unknown `kid`s, in seconds (rate limit).
    #[serde(default = "defaults::jwks_min_refresh_seconds")]
    pub min_refresh_seconds: u64,
    /// Longest a request waits for a refresh caused by its unknown `kid`, in milliseconds.
    #[serde(default = "defaults::jwks_request_wait_ms")]
    pub request_wait_ms: u64,
    /// Time limit of one JWKS fetch, in milliseconds.
    #[serde(default = "defaults::jwks_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    /// Largest JWKS document accepted, in bytes.
    #[serde(default = "defaults::jwks_max_bytes")]
    pub max_bytes: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh_seconds: defaults::jwks_refresh_seconds(),
            min_refresh_seconds: defaults::jwks_min_refresh_seconds(),
            request_wait_ms: defaults::jwks_request_wait_ms(),
            fetch_timeout_ms: defaults::jwks_fetch_timeout_ms(),
            max_bytes: defaults::jwks_max_bytes(),
        }
    }
}

/// Limits that protect the sidecar and the upstream from hostile or broken clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Largest POST body, in bytes (413 above).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest bearer token, in bytes (401 above).
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// Time a client has to send its request headers, in milliseconds (slowloris guard).
    #[serde(default = "defaults::header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time a client has to send its whole request body, in milliseconds.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Time the upstream has to begin its answer (the head of its final response) once a request was sent,
    /// in milliseconds; past it the client gets 504 `upstream_timeout` and the upstream connection is closed.
    /// A JSON answer's head comes only with its result, so this bounds the slowest tool call that answers
    /// in JSON; a stream's head comes at once, and the stream itself has no time limit.
    #[serde(default = "defaults::upstream_head_timeout_ms")]
    pub upstream_head_timeout_ms: u64,
    /// Largest JSON `*/list` or `resources/read` response that is filtered (or marked private) in memory, in
    /// bytes (502 above).
    #[serde(default = "defaults::max_list_response_bytes")]
    pub max_list_response_bytes: usize,
    /// On SIGTERM, the budget of the whole stop, in milliseconds: from the signal to the exit. In-flight requests
    /// and streams continue for most of it; shares are kept for the audit flush, the tracing stop and the exit
    /// (`mcp_authz_audit::stop::Split`). The pod's `terminationGracePeriodSeconds` must exceed it, which the
    /// operator's webhook sees to when it injects the sidecar.
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Most client connections open at once on the proxy port. At the cap the sidecar stops accepting: new
    /// connections wait in the kernel's listen backlog (then in their own SYN retries) and are accepted as
    /// open ones close; none is refused. Each open stream costs tens of KiB (sidecar/README.md, Benchmarks),
    /// so the cap bounds memory under a connection flood. Read at start only.
    #[serde(default = "Limits::default_max_connections")]
    pub max_connections: std::num::NonZeroUsize,
}

impl Limits {
    fn default_max_connections() -> std::num::NonZeroUsize {
        std::num::NonZeroUsize::new(10_000).expect("not zero")
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: defaults::max_body_bytes(),
            max_token_bytes: defaults::max_token_bytes(),
            header_timeout_ms: defaults::header_timeout_ms(),
            body_timeout_ms: defaults::body_timeout_ms(),
            upstream_head_timeout_ms: defaults::upstream_head_timeout_ms(),
            max_list_response_bytes: defaults::max_list_response_bytes(),
            shutdown_grace_ms: defaults::shutdown_grace_ms(),
            max_connections: Self::default_max_connections(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid YAML/JSON for this schema.
    #[error("cannot parse config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the field).
        message: String,
    },
    /// The values are inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Parse { .. } => "parse",
            Self::Invalid(_) => "invalid",
        }
    }
}

impl SidecarConfig {
    /// Reads a config file: JSON when it starts with `{`, YAML otherwise. The result is validated.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text (JSON or YAML).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: PathBuf::new(),
            message,
        };
        let config: Self = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| parse_error(e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: URLs, paths, the algorithm list.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let upstream = url::Url::parse(&self.upstream)
            .map_err(|e| ConfigError::Invalid(format!("upstream: {e}")))?;
        if upstream.scheme() != "http" || upstream.host().is_none() {
            return invalid(format!(
                "upstream must be an http:// URL with a host, got {}",
                self.upstream
            ));
        }
        if upstream.path() != "/" || upstream.query().is_some() {
            return invalid("upstream must be a base URL without path or query".into());
        }
        let resource = url::Url::parse(&self.resource)
            .map_err(|e| ConfigError::Invalid(format!("resource: {e}")))?;
        if !matches!(resource.scheme(), "https" | "http") || resource.fragment().is_some() {
            return invalid("resource must be an http(s) URL without fragment".into());
        }
        for (name, value) in [("issuer", &self.issuer), ("jwksUri", &self.jwks_uri)] {
            let parsed =
                url::Url::parse(value).map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return invalid(format!("{name} must be an http(s) URL"));
            }
        }
        if !self.mcp_path.starts_with('/') || self.mcp_path.starts_with("/.well-known/") {
            return invalid("mcpPath must start with / and not be under /.well-known/".into());
        }
        if self.algorithms.is_empty() {
            return invalid("algorithms must not be empty".into());
        }
        if self.token_types.is_empty() {
            return invalid("tokenTypes must not be empty".into());
        }
        if self.scopes_supported.iter().any(|s| s == "offline_access") {
            return invalid("scopesSupported must not contain offline_access".into());
        }
        // Refresh tokens are not a resource requirement: a rule needing one would put it in challenges
        // (MCP 2026-07-28 authorization, "Refresh Tokens", SEP-2207).
        if self.all_scopes().any(|s| s == "offline_access") {
            return invalid(
                "offline_access is not a resource scope: rules, unmatched and scopeImplies must not name it"
                    .into(),
            );
        }
        for scope in self.all_scopes() {
            if scope.is_empty() || !scope.chars().all(is_scope_char) {
                return invalid(format!(
                    "scope {scope:?} has characters RFC 6749 does not allow"
                ));
            }
        }
        if let Some(downstream) = &self.downstream_tokens {
            check_downstream_tokens(downstream, &self.identity_headers)?;
        }
        let mut identity_names = std::collections::HashSet::new();
        for header in self.identity_headers.names() {
            let name = http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                ConfigError::Invalid(format!("identity header {header:?} is not a header name"))
            })?;
            if !identity_names.insert(name.clone()) {
                return invalid(format!(
                    "identity header {header:?} is named twice (each identity field needs a name of its own)"
                ));
            }
            // CGI and WSGI servers read `_` and `-` alike; the proxy strips a client's look-alikes of a name
            // spelled with `-`, so a name with `_` would let a client's `x-user` through as the same field.
            if header.contains('_') {
                return invalid(format!(
                    "identity header {header:?} must use '-', not '_' (servers read both as one field)"
                ));
            }
            if proxy_owns_header(name.as_str()) {
                return invalid(format!(
                    "identity header {header:?} is reserved: the sidecar writes it or HTTP or MCP gives it a meaning"
                ));
            }
        }
        if let Some(intro) = &self.introspection {
            let parsed = url::Url::parse(&intro.endpoint)
                .map_err(|e| ConfigError::Invalid(format!("introspection.endpoint: {e}")))?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return invalid("introspection.endpoint must be an http(s) URL".into());
            }
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_token_bytes == 0 {
            return invalid("limits must be positive".into());
        }
        for (i, limit) in self.rate_limits.iter().enumerate() {
            if !(limit.requests_per_second.is_finite()
                && limit.requests_per_second >= 0.001
                && limit.requests_per_second <= 1e6)
            {
                return invalid(format!(
                    "rateLimits[{i}].requestsPerSecond must be 0.001 to 1000000"
                ));
            }
            if limit.burst == 0 || limit.burst > 1_000_000 {
                return invalid(format!("rateLimits[{i}].burst must be 1 to 1000000"));
            }
        }
        Ok(())
    }

    /// The authorization servers to advertise.
    pub fn authorization_servers(&self) -> Vec<String> {
        if self.authorization_servers.is_empty() {
            vec![self.issuer.clone()]
        } else {
            self.authorization_servers.clone()
        }
    }

    fn all_scopes(&self) -> impl Iterator<Item = &String> {
        let unmatched: &[String] = match &self.unmatched {
            UnmatchedPolicy::RequireScopes(s) => s,
            _ => &[],
        };
        self.scopes_supported
            .iter()
            .chain(
                self.scope_implies
                    .iter()
                    .flat_map(|(k, v)| std::iter::once(k).chain(v)),
            )
            .chain(self.rules.iter().flat_map(|r| &r.scopes))
            .chain(unmatched)
    }
}

/// A token bucket on authorized requests: each operation it counts (every one, or those of `method` and
/// `name`, globs as in `rules`) takes a token from the bucket of its key; an empty bucket refuses with 429.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// What one bucket is for.
    pub per: RateKey,
    /// JSON-RPC methods counted (a glob); every method when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Tool names, resource URIs or prompt names counted (a glob); every one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The rate a bucket refills at, per second (0.001 to 1000000).
    #[schemars(range(min = 0.001, max = 1_000_000.0))]
    pub requests_per_second: f64,
    /// The most a bucket holds: requests allowed at once after a quiet spell (1 to 1000000).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: u32,
}

/// What one bucket of a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RateKey {
    /// The token's `client_id`: one agent, whoever it acts for.
    Client,
    /// The token's `sub`: one person (or one client acting for itself), whatever client they use.
    User,
    /// The tool name, resource URI or prompt name (the method for an operation without one), over every
    /// caller: protects what is behind a tool.
    Tool,
}

/// RFC 6749 §3.3 scope-token characters.
fn is_scope_char(c: char) -> bool {
    c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c)
}

mod defaults {
    use super::SigningAlgorithm;
    use std::net::SocketAddr;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8443))
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 9091))
    }
    pub fn mcp_path() -> String {
        "/mcp".into()
    }
    pub fn algorithms() -> Vec<SigningAlgorithm> {
        vec![SigningAlgorithm::ES256]
    }
    pub fn leeway_seconds() -> u64 {
        30
    }
    pub fn token_types() -> Vec<String> {
        vec!["at+jwt".into(), "application/at+jwt".into()]
    }
    pub fn open_methods() -> Vec<String> {
        [
            "initialize",
            // The 2026-07-28 revision's stateless handshake.
            "server/discover",
            "ping",
            "notifications/*",
            // The 2026-07-28 notification stream (it replaces the GET stream); the resources it subscribes to are
            // each decided as `resources/subscribe` of their URI.
            "subscriptions/listen",
            "tools/list",
            "resources/list",
            "resources/templates/list",
            "prompts/list",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn subject_header() -> String {
        "x-mcp-authz-subject".into()
    }
    pub fn client_id_header() -> String {
        "x-mcp-authz-client-id".into()
    }
    pub fn scopes_header() -> String {
        "x-mcp-authz-scopes".into()
    }
    pub fn caller_header() -> String {
        "x-mcp-authz-caller".into()
    }
    pub fn introspection_cache_seconds() -> u64 {
        0
    }
    pub fn introspection_timeout_ms() -> u64 {
        2_000
    }
    pub fn jwks_refresh_seconds() -> u64 {
        300
    }
    pub fn jwks_min_refresh_seconds() -> u64 {
        10
    }
    pub fn jwks_request_wait_ms() -> u64 {
        500
    }
    pub fn jwks_fetch_timeout_ms() -> u64 {
        3_000
    }
    pub fn jwks_max_bytes() -> usize {
        64 * 1024
    }
    pub fn max_body_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn max_token_bytes() -> usize {
        8 * 1024
    }
    pub fn header_timeout_ms() -> u64 {
        10_000
    }
    pub fn body_timeout_ms() -> u64 {
        30_000
    }
    pub fn upstream_head_timeout_ms() -> u64 {
        300_000
    }
    pub fn max_list_response_bytes() -> usize {
        8 * 1024 * 1024
    }
    pub fn shutdown_grace_ms() -> u64 {
        mcp_authz_audit::stop::DEFAULT_BUDGET_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL_YAML: &str = "
upstream: http://127.0.0.1:8080
resource: https://mcp.example.com/mcp
issuer: https://auth.example.com
jwksUri: https://auth.example.com/jwks
";

    #[test]
    fn minimal_yaml_gets_safe_defaults() {
        let c = SidecarConfig::parse(MINIMAL_YAML).unwrap();
        assert_eq!(c.unmatched, UnmatchedPolicy::Deny);
        assert_eq!(c.algorithms, vec![SigningAlgorithm::ES256]);
        assert_eq!(c.mcp_path, "/mcp");
        assert_eq!(
            c.authorization_servers(),
            vec!["https://auth.example.com".to_string()]
        );
        assert_eq!(c.identity_headers.subject, "x-mcp-authz-subject");
    }

    #[test]
    fn full_yaml_round_trips_through_json() {
        let text = format!(
            "{MINIMAL_YAML}
scopesSupported: [mcp:tools]
scopeImplies:
  mcp:admin: [mcp:tools, mcp:secrets]
rules:
  - method: tools/call
    name: 'delete_*'
    scopes: [mcp:admin]
  - method: tools/call
    scopes: [mcp:tools]
unmatched:
  requireScopes: [mcp:admin]
introspection:
  endpoint: https://auth.example.com/introspect
  clientId: urn:mcp-authz:resource-server:https://mcp.example.com/mcp
  privateKeyFile: /var/run/secrets/introspection/key.pem
  sensitiveScopes: [mcp:secrets]
limits:
  maxBodyBytes: 1024
"
        );
        let c = SidecarConfig::parse(&text).unwrap();
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].name.as_deref(), Some("delete_*"));
        assert_eq!(
            c.unmatched,
            UnmatchedPolicy::RequireScopes(vec!["mcp:admin".into()])
        );
        assert_eq!(c.limits.max_body_bytes, 1024);
        assert_eq!(c.limits.max_token_bytes, 8 * 1024);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(SidecarConfig::parse(&json).unwrap(), c);
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let top =
            SidecarConfig::parse(&format!("{MINIMAL_YAML}\nlisten_addr: 1.2.3.4:1\n")).unwrap_err();
        assert!(top.to_string().contains("listen_addr"), "{top}");
        let nested =
            SidecarConfig::parse(&format!("{MINIMAL_YAML}\nlimits:\n  maxBody: 3\n")).unwrap_err();
        assert!(nested.to_string().contains("maxBody"), "{nested}");
        let rule = SidecarConfig::parse(&format!(
            "{MINIMAL_YAML}\nrules:\n  - method: x\n    scope: [a]\n"
        ))
        .unwrap_err();
        assert!(rule.to_string().contains("scope"), "{rule}");
    }

    #[test]
    fn hmac_and_none_are_not_algorithms() {
        for alg in ["HS256", "none"] {
            let err = SidecarConfig::parse(&format!("{MINIMAL_YAML}\nalgorithms: [{alg}]\n"))
                .unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{alg}: {err}");
        }
    }

    #[test]
    fn inconsistent_values_are_refused_with_the_field_name() {
        let cases = [
            (
                "upstream: https://127.0.0.1:8080",
                "upstream must be an http://",
            ),
            (
                "upstream: http://127.0.0.1:8080/base",
                "upstream must be a base URL",
            ),
            ("scopesSupported: [offline_access]", "offline_access"),
            (
                "rules: [{method: tools/call, scopes: [offline_access]}]",
                "offline_access is not a resource scope",
            ),
            (
                "unmatched: {requireScopes: [mcp:read, offline_access]}",
                "offline_access is not a resource scope",
            ),
            (
                "scopeImplies: {mcp:admin: [offline_access]}",
                "offline_access is not a resource scope",
            ),
            ("mcpPath: mcp", "mcpPath"),
            ("mcpPath: /.well-known/x", "mcpPath"),
            ("algorithms: []", "algorithms must not be empty"),
            ("scopesSupported: ['a b']", "scope \"a b\""),
            (
                "identityHeaders: {subject: authorization}",
                "identity header \"authorization\" is reserved: the sidecar writes it or HTTP or MCP gives it a meaning",
            ),
            // Fields the proxy writes itself: the upstream would get them twice.
            (
                "identityHeaders: {subject: X-Forwarded-For}",
                "identity header \"X-Forwarded-For\" is reserved",
            ),
            (
                "identityHeaders: {clientId: content-type}",
                "identity header \"content-type\" is reserved",
            ),
            (
                "identityHeaders: {scopes: traceparent}",
                "identity header \"traceparent\" is reserved",
            ),
            (
                "identityHeaders: {caller: mcp-session-id}",
                "identity header \"mcp-session-id\" is reserved",
            ),
            (
                "identityHeaders: {caller: Connection}",
                "identity header \"Connection\" is reserved",
            ),
            (
                "identityHeaders: {subject: x-who, clientId: X-Who}",
                "identity header \"X-Who\" is named twice (each identity field needs a name of its own)",
            ),
            (
                "identityHeaders: {subject: 'bad header'}",
                "not a header name",
            ),
            (
                "identityHeaders: {subject: x_user}",
                "identity header \"x_user\" must use '-', not '_' (servers read both as one field)",
            ),
            (
                "downstreamTokens: {tokenEndpoint: 'https://a/token', clientId: c, privateKeyFile: /k, targets: []}",
                "downstreamTokens.targets must list 1 to 8 downstreams",
            ),
            (
                "downstreamTokens: {tokenEndpoint: 'https://a/token', clientId: c, privateKeyFile: /k, targets: [{audience: 'https://d', header: x-d}, {audience: 'https://d', header: x-e}]}",
                "downstreamTokens: audience \"https://d\" is empty or named twice",
            ),
            (
                "downstreamTokens: {tokenEndpoint: 'https://a/token', clientId: c, privateKeyFile: /k, targets: [{audience: 'urn:mcp-authz:provider:acme', header: x-acme, connectUrl: 'javascript:alert(1)'}]}",
                "downstreamTokens: connectUrl \"javascript:alert(1)\" of \"urn:mcp-authz:provider:acme\" must be an http(s) URL without userinfo",
            ),
            (
                "downstreamTokens: {tokenEndpoint: 'https://a/token', clientId: c, privateKeyFile: /k, targets: [{audience: 'urn:mcp-authz:provider:acme', header: x-acme, connectUrl: 'https://me@auth.example.com/connect/acme'}]}",
                "downstreamTokens: connectUrl \"https://me@auth.example.com/connect/acme\" of \"urn:mcp-authz:provider:acme\" must be an http(s) URL without userinfo",
            ),
        ];
        // An identity header spelled in capitals is the same field as a downstream header in lowercase.
        let text = format!(
            "{MINIMAL_YAML}identityHeaders: {{subject: X-Inventory-Token}}\n\
             downstreamTokens: {{tokenEndpoint: 'https://a/token', clientId: c, privateKeyFile: /k, \
             targets: [{{audience: 'https://d', header: x-inventory-token}}]}}\n"
        );
        assert!(
            SidecarConfig::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("header \"x-inventory-token\" must be a lowercase name")
        );
        for header in [
            "x_d",
            "X-D",
            "keep-alive",
            "authorization",
            "x-mcp-authz-subject",
            "x-forwarded-for",
            "mcp-session-id",
            "cookie",
            "traceparent",
            "tracestate",
            "content-encoding",
            "accept-encoding",
            "''",
        ] {
            let line = format!(
                "downstreamTokens: {{tokenEndpoint: 'https://a/token', clientId: c, privateKeyFile: /k, targets: [{{audience: 'https://d', header: {header}}}]}}"
            );
            let text = format!("{MINIMAL_YAML}{line}\n");
            let err = SidecarConfig::parse(&text).unwrap_err();
            assert!(
                err.to_string()
                    .contains("must be a lowercase name of letters, digits and '-', used once, and not one the sidecar or HTTP gives a meaning"),
                "{header}: {err}"
            );
        }
        for (line, expected) in cases {
            let text = MINIMAL_YAML.replace("upstream: http://127.0.0.1:8080\n", "") + line + "\n";
            let text = if line.starts_with("upstream") {
                text
            } else {
                format!("upstream: http://127.0.0.1:8080\n{text}")
            };
            let err = SidecarConfig::parse(&text).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid(_)), "{line}: {err}");
            assert!(err.to_string().contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn load_reads_files_and_names_them_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("sidecar.yaml");
        std::fs::write(&good, MINIMAL_YAML).unwrap();
        assert_eq!(
            SidecarConfig::load(&good).unwrap().issuer,
            "https://auth.example.com"
        );
        let missing = dir.path().join("missing.yaml");
        let err = SidecarConfig::load(&missing).unwrap_err();
        assert_eq!(err.metric_label(), "read");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "upstream: [").unwrap();
        let err = SidecarConfig::load(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.yaml"), "{err}");
    }

    #[test]
    fn json_schema_is_generated() {
        let schema = serde_json::to_value(schemars::schema_for!(SidecarConfig)).unwrap();
        assert!(schema["properties"]["jwksUri"].is_object(), "{schema}");
        assert_eq!(
            schema["additionalProperties"],
            serde_json::Value::Bool(false)
        );
    }
}
