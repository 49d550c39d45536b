//! `CIMDPolicy`: which clients that identify by a Client ID Metadata Document are admitted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// How clients identifying by a Client ID Metadata Document (an https `client_id` URL) are
/// admitted: which hosts, which redirect URIs, which auth methods, and the limits of fetching.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp-authz.io",
    version = "v1alpha1",
    kind = "CIMDPolicy",
    doc = "How clients identified by a Client ID Metadata Document are admitted.",
    plural = "cimdpolicies",
    singular = "cimdpolicy",
    shortname = "cimdpol",
    namespaced,
    category = "mcp-authz",
    status = "CIMDPolicyStatus",
    printcolumn = r#"{"name":"DCR","type":"boolean","jsonPath":".spec.dynamicClientRegistration"}"#,
    printcolumn = r#"{"name":"InUse","type":"string","jsonPath":".status.conditions[?(@.type==\"InUse\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!self.redirectUris.allowLoopback || 'native' in self.applicationTypes")
    .message("loopback redirect URIs are only for native clients: add native to applicationTypes or set redirectUris.allowLoopback to false")
    .field_path(".redirectUris.allowLoopback"))]
#[serde(rename_all = "camelCase")]
pub struct CIMDPolicySpec {
    /// Hosts a client_id URL may have: exact (`app.example.com`) or one leading wildcard label
    /// (`*.example.com`), lower case, no scheme or path; with `:port` when the documents are served
    /// on another port than 443 (the port must then match exactly). Any https host when empty.
    #[serde(default)]
    #[schemars(
        length(max = 128),
        inner(
            length(max = 253),
            regex(
                pattern = r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*(:[1-9][0-9]{0,4})?$"
            )
        )
    )]
    pub allowed_hosts: Vec<String>,

    /// Whether a client_id URL may carry a query string (the draft advises against it).
    #[serde(default)]
    pub allow_query: bool,

    /// Application types admitted: `web` (https redirect URIs) and `native` (desktop, CLI, IDE).
    #[serde(default = "default_application_types")]
    #[schemars(length(min = 1, max = 2))]
    pub application_types: Vec<ApplicationType>,

    /// Rules for the document's redirect_uris.
    #[serde(default)]
    pub redirect_uris: RedirectUriRules,

    /// token_endpoint_auth_method values admitted. Shared-secret methods never are.
    #[serde(default = "default_auth_methods")]
    #[schemars(length(min = 1, max = 2))]
    pub token_endpoint_auth_methods: Vec<TokenEndpointAuthMethod>,

    /// Grant types admitted.
    #[serde(default = "default_grant_types")]
    #[schemars(length(min = 1, max = 3))]
    pub grant_types: Vec<GrantType>,

    /// The most scopes one client may ask for; unlimited when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_scopes: Option<i32>,

    /// Limits of fetching a document.
    #[serde(default)]
    pub fetch: FetchLimits,

    /// Private networks (CIDRs) documents may be fetched from. None by default: special-use
    /// addresses (RFC 6890) are refused.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(n, isCIDR(n))").message("allowedPrivateNetworks entries must be CIDRs like 10.0.0.0/8"))]
    pub allowed_private_networks: Vec<String>,

    /// ConfigMap key with extra PEM CA certificates trusted when fetching documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_bundle: Option<ConfigMapKeyRef>,

    /// Deprecated: use the AuthorizationServer's `dynamicClientRegistration`. True on the server's
    /// default policy still opens Dynamic Client Registration, under the server's rules for it.
    #[serde(default)]
    pub dynamic_client_registration: bool,
}

fn default_application_types() -> Vec<ApplicationType> {
    vec![ApplicationType::Web, ApplicationType::Native]
}

fn default_auth_methods() -> Vec<TokenEndpointAuthMethod> {
    vec![
        TokenEndpointAuthMethod::None,
        TokenEndpointAuthMethod::PrivateKeyJwt,
    ]
}

fn default_grant_types() -> Vec<GrantType> {
    vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
}

/// Client application types (OIDC registration `application_type`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplicationType {
    /// Browser or server-hosted clients: https redirect URIs.
    Web,
    /// Desktop, CLI and IDE clients: loopback redirect URIs.
    Native,
}

/// Redirect URI rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedirectUriRules {
    /// Whether every https redirect URI must be same-site as the client_id URL.
    #[serde(default = "yes")]
    pub require_same_site: bool,
    /// Whether loopback redirect URIs (`http://127.0.0.1`, `http://[::1]`, any port) are admitted;
    /// only native clients use them.
    #[serde(default = "yes")]
    pub allow_loopback: bool,
}

impl Default for RedirectUriRules {
    fn default() -> Self {
        Self {
            require_same_site: true,
            allow_loopback: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// token_endpoint_auth_method values a CIMD client may use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TokenEndpointAuthMethod {
    /// Public client (PKCE only).
    #[serde(rename = "none")]
    None,
    /// Confidential client authenticating with a key from its document's jwks/jwks_uri.
    #[serde(rename = "private_key_jwt")]
    PrivateKeyJwt,
}

/// Grant types a CIMD client may use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum GrantType {
    /// The authorization code grant with PKCE.
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    /// Refresh tokens.
    #[serde(rename = "refresh_token")]
    RefreshToken,
    /// Redeeming an ID-JAG (RFC 7523 jwt-bearer) from an identity provider the server trusts for this
    /// client (`spec.trustedIdentityProviders` of the AuthorizationServer); `private_key_jwt` clients only.
    #[serde(rename = "jwt_bearer")]
    JwtBearer,
}

/// Limits of fetching a Client ID Metadata Document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.cacheMinSeconds <= self.cacheMaxSeconds")
    .message("fetch.cacheMinSeconds must not exceed fetch.cacheMaxSeconds")
    .field_path(".cacheMinSeconds"))]
pub struct FetchLimits {
    /// Largest document accepted, in bytes.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 512, max = 65536))]
    pub max_bytes: i32,
    /// Time allowed for one fetch, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 100, max = 30000))]
    pub timeout_ms: i32,
    /// Shortest time a fetched document is cached, whatever its Cache-Control says.
    #[serde(default = "default_cache_min")]
    #[schemars(range(min = 0, max = 604800))]
    pub cache_min_seconds: i32,
    /// Longest time a fetched document is cached.
    #[serde(default = "default_cache_max")]
    #[schemars(range(min = 0, max = 604800))]
    pub cache_max_seconds: i32,
    /// Most documents kept in the cache.
    #[serde(default = "default_cache_entries")]
    #[schemars(range(min = 1, max = 1000000))]
    pub cache_entries: i32,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            timeout_ms: default_timeout_ms(),
            cache_min_seconds: default_cache_min(),
            cache_max_seconds: default_cache_max(),
            cache_entries: default_cache_entries(),
        }
    }
}

fn default_max_bytes() -> i32 {
    5120
}
fn default_timeout_ms() -> i32 {
    3000
}
fn default_cache_min() -> i32 {
    60
}
fn default_cache_max() -> i32 {
    86400
}
fn default_cache_entries() -> i32 {
    10000
}

/// A reference to one key of a ConfigMap in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the ConfigMap's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Observed state of a CIMDPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CIMDPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, Kubernetes style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
