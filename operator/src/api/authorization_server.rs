//! `AuthorizationServer`: the one shared OAuth 2.1 authorization server of a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::core::{Selector, SelectorExt};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;
use super::resource_urls::ResourceUrlGrant;

/// The shared OAuth 2.1 authorization server: one Deployment that issues audience-bound access
/// tokens for every MCPService that names it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp-authz.io",
    version = "v1alpha1",
    kind = "AuthorizationServer",
    doc = "The shared OAuth 2.1 authorization server of mcp-authz.",
    plural = "authorizationservers",
    shortname = "authzserver",
    shortname = "mas",
    namespaced,
    category = "mcp-authz",
    status = "AuthorizationServerStatus",
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuer"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.storage.type != 'Embedded' || self.replicas == 1")
    .message("embedded storage is a single SQLite file on one volume: it allows exactly one replica; use storage.type Postgres for more")
    .field_path(".replicas"))]
#[x_kube(validation = Rule::new("self.storage.type != 'Postgres' || has(self.storage.postgres)")
    .message("storage.type Postgres needs storage.postgres.urlSecretRef")
    .field_path(".storage.postgres"))]
#[x_kube(validation = Rule::new("duration(self.signing.rotationPeriod) > duration(self.tokens.accessTokenLifetime)")
    .message("signing.rotationPeriod must be longer than tokens.accessTokenLifetime, or keys would retire before their tokens expire")
    .field_path(".signing.rotationPeriod"))]
#[x_kube(validation = Rule::new("!has(self.trustedIdentityProviders) || self.trustedIdentityProviders.all(p, p.issuer != self.issuer)")
    .message("a trusted identity provider cannot be this server itself")
    .field_path(".trustedIdentityProviders"))]
#[x_kube(validation = Rule::new("!has(self.trustedIdentityProviders) || self.trustedIdentityProviders.all(a, self.trustedIdentityProviders.exists_one(b, b.issuer == a.issuer))")
    .message("each trusted identity provider issuer may be listed once")
    .field_path(".trustedIdentityProviders"))]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationServerSpec {
    /// The issuer identifier (RFC 8414): an https URL without query or fragment. It is the `iss`
    /// of every token and must be the exact URL clients reach the server at.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && !self.contains('?') && !self.contains('#')")
        .message("issuer must be an https URL without query or fragment"))]
    pub issuer: String,

    /// Number of authorization server pods. More than one needs PostgreSQL storage.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: i32,

    /// Container image of the authorization server; the operator's default image when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Where grants, refresh tokens and revocations are kept.
    #[serde(default)]
    pub storage: Storage,

    /// Token signing keys: algorithm and rotation.
    #[serde(default)]
    pub signing: Signing,

    /// Lifetimes of the tokens the server issues.
    #[serde(default)]
    pub tokens: TokenLifetimes,

    /// How people sign in before they consent.
    pub login: Login,

    /// Name of the CIMDPolicy (in this namespace) applied to clients of services that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cimd_policy: Option<String>,

    /// Namespaces whose MCPServices this server issues tokens for (like Gateway API's
    /// `allowedRoutes.namespaces`). A service from any other namespace gets no entry in the server
    /// and no credentials, and says so in its status.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,

    /// Which namespaces may protect which resource URLs: each entry grants the URLs at and below its
    /// `prefix` to the namespaces it selects, and the longest covering prefix decides. Empty (the
    /// default): a service from any allowed namespace may claim any URL, and the oldest claim holds
    /// it. List them whenever several teams share this server: then no team can claim another's URL,
    /// nor park a claim on it to inherit it the moment its holder is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub resource_urls: Vec<ResourceUrlGrant>,

    /// Bytes of this server's config each namespace's services may fill (their resource entries, the
    /// definitions of the scopes they offer that their namespace owns, and the CIMDPolicies they name; the
    /// platform's own scopes count against no one). A namespace past it loses its newest services from the config, each saying why in its status,
    /// so no team can grow the config past what a ConfigMap holds (1 MiB) and freeze it for everyone. 65536
    /// (about a hundred typical services) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4096, max = 1000000))]
    pub config_bytes_per_namespace: Option<u32>,

    /// How sidecars reach this server inside the cluster: they fetch its signing keys and post bearer
    /// tokens to its introspection endpoint. TLS with a certificate the operator makes, unless set.
    #[serde(default)]
    pub in_cluster_transport: InClusterTransport,

    /// CPU and memory for the authorization server container; small defaults when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Rate limits: token buckets per client and per source address on `/token`, the browser
    /// sign-in flow and `/register`, answered with 429 and `Retry-After`. Each replica keeps its
    /// own buckets, so with n replicas a client may reach up to n times a rate. On with generous
    /// defaults when absent; `enabled: false` turns them off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<mcp_authz_authserver::config::RateLimits>,

    /// Dynamic Client Registration (RFC 7591) for clients that cannot identify themselves with a
    /// Client ID Metadata Document: off unless `enabled` (MCP 2026-07-28 deprecates it in favour of
    /// CIMD). Registrations must name their `application_type` (SEP-837); `redirectUris` says which
    /// redirect URIs they may ask for (`LoopbackOnly` by default: native clients on the person's
    /// machine), and `maxPerHour` bounds how fast anyone can fill the store with clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_client_registration:
        Option<mcp_authz_authserver::config::DynamicClientRegistration>,

    /// Networks (CIDRs) of the proxies in front of the server, such as the ingress controller's
    /// pods: a request from one of them is counted against the address its `X-Forwarded-For`
    /// names (rate limits, sign-in budgets). Empty: the connection's address, and the header is
    /// never read. Behind an ingress, set it, or every client shares the ingress's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(n, isCIDR(n))").message("trustedProxies entries must be CIDRs like 10.0.0.0/8"))]
    pub trusted_proxies: Vec<String>,

    /// Enterprise identity providers whose Identity Assertion JWT Authorization Grants (ID-JAGs)
    /// the server redeems for the clients each lists (MCP enterprise-managed authorization): the
    /// provider's policy stands in for the person's consent, so list only providers the
    /// organisation runs. Empty: the `jwt-bearer` grant is not offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub trusted_identity_providers: Vec<TrustedIdentityProvider>,

    /// Downstreams an MCPService's server may call as the person whose token reached it (RFC 8693
    /// token exchange): its sidecar trades the person's token for one to the downstream (`to` or
    /// `audience`), holding the listed scopes the person's token holds, and hands it to the MCP server
    /// in `header`; the person's token itself never reaches the server. A platform decision, so it
    /// lives here and not on the MCPService: an edge lets one team's code act as its users elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub token_exchange: Vec<TokenExchangeEdge>,

    /// Third-party OAuth providers whose APIs MCP servers call with the person's own account there: a
    /// person connects the provider once (on the consent screen, or from the link an MCP client shows
    /// when a tool first needs it), the server keeps the provider's refresh token sealed, and the
    /// sidecars of the listed `services` hand the MCP server a fresh provider access token for the
    /// person of each tool call in `header`. A platform decision, like `tokenExchange`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.id == p.id))").message("providers ids must be unique"))]
    pub providers: Vec<ThirdPartyProvider>,
}

/// A third-party OAuth provider people connect their own account of. The server is a confidential
/// client there; register `{issuer}/connect/{id}/callback` as its redirect URI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.issuer) ? !has(self.authorizationEndpoint) && !has(self.tokenEndpoint) && !has(self.revocationEndpoint) : has(self.authorizationEndpoint) && has(self.tokenEndpoint)")
    .message("a provider needs either issuer (discovery) or authorizationEndpoint and tokenEndpoint")
    .field_path(".issuer"))]
pub struct ThirdPartyProvider {
    /// The provider's name in this server (lowercase letters, digits, `-`): its connect link is
    /// `{issuer}/connect/{id}`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub id: String,
    /// Name people read on the consent screen and the connect pages.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,
    /// The provider's issuer, when it publishes OpenID Connect discovery; else give
    /// `authorizationEndpoint` and `tokenEndpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1:') || self.startsWith('http://localhost:')").message("issuer must be an https URL (http only on a loopback host)"))]
    pub issuer: Option<String>,
    /// The provider's authorization endpoint (without discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1:') || self.startsWith('http://localhost:')").message("authorizationEndpoint must be an https URL (http only on a loopback host)"))]
    pub authorization_endpoint: Option<String>,
    /// The provider's token endpoint (without discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1:') || self.startsWith('http://localhost:')").message("tokenEndpoint must be an https URL (http only on a loopback host)"))]
    pub token_endpoint: Option<String>,
    /// The provider's RFC 7009 revocation endpoint (without discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://127.0.0.1:') || self.startsWith('http://localhost:')").message("revocationEndpoint must be an https URL (http only on a loopback host)"))]
    pub revocation_endpoint: Option<String>,
    /// The server's client id at the provider.
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// The Secret (in this server's namespace) and key holding the server's client secret at the
    /// provider; a rotated secret takes effect without a restart.
    pub client_secret_ref: super::SecretKeyRef,
    /// Scopes asked of the provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
    /// The MCPServices whose sidecars receive the person's token for this provider (namespace: this
    /// server's when empty).
    #[schemars(length(min = 1, max = 64))]
    pub services: Vec<super::NamespacedRef>,
    /// The request header the MCP server reads the provider's token from (lowercase letters,
    /// digits, `-`).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    #[x_kube(validation = super::token_header_rule())]
    pub header: String,
}

/// One service that may call one downstream as the person. The downstream is named one of two ways,
/// because they differ in who may hold the URL: an MCPService (`to`), whose URL its team holds, or
/// an API that is no MCPService (`audience`), whose URL no MCPService may then hold at this server.
/// Were any team free to claim an API's URL as its service's `resourceUrl`, the people consenting
/// to that service would hand it tokens the API accepts as its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.to) != has(self.audience)")
    .message("a token-exchange edge names exactly one of to and audience"))]
pub struct TokenExchangeEdge {
    /// The MCPService whose sidecar obtains the tokens (namespace: this server's when empty).
    pub from: super::NamespacedRef,
    /// Another MCPService, for a chain of MCP services (namespace: this server's when empty): the
    /// tokens' `aud` is its `resourceUrl` while it holds that URL at this server, and each hop is
    /// named in the token's `act`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<super::NamespacedRef>,
    /// An API that is not an MCPService, the tokens' `aud`. No MCPService may hold this URL at this
    /// server: one naming it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && !self.contains('#')").message("audience must be an https URL without fragment"))]
    pub audience: Option<String>,
    /// Scopes of the service that may be passed on; a token gets those the person's token holds.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
    /// The request header the MCP server reads the token from (lowercase letters, digits, `-`).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    #[x_kube(validation = super::token_header_rule())]
    pub header: String,
}

/// An identity provider trusted to say which person may use which client at which service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwksUri) != has(self.jwks)")
    .message("a trusted identity provider needs exactly one of jwksUri and jwks")
    .field_path(".jwksUri"))]
pub struct TrustedIdentityProvider {
    /// The provider's issuer, compared character for character with an ID-JAG's `iss`.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("issuer must be an https URL"))]
    pub issuer: String,
    /// Where the provider publishes its signing keys (https, a publicly trusted certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("jwksUri must be an https URL"))]
    pub jwks_uri: Option<String>,
    /// The provider's public keys inline (a JWK Set, `{"keys": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::mcp_client::jwk_set_schema")]
    pub jwks: Option<serde_json::Value>,
    /// Client ids (MCPClient `clientId`s or CIMD URLs) the provider may issue ID-JAGs to.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 2048)))]
    pub clients: Vec<String>,
}

/// How the in-cluster endpoints (the ones sidecars call) are protected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.mode == 'CertManagerTLS') == has(self.certManagerIssuerRef)")
    .message("inClusterTransport.certManagerIssuerRef is required with mode: CertManagerTLS, and only allowed with it")
    .field_path(".certManagerIssuerRef"))]
pub struct InClusterTransport {
    /// `OperatorTLS`: the server also listens with TLS on port 8443, with a certificate the operator
    /// issues from its own CA (kept in a Secret of this namespace, renewed before expiry); sidecars
    /// trust that CA only. `CertManagerTLS`: the same, with the certificate from cert-manager
    /// (`certManagerIssuerRef`, a CA-type issuer whose Secret carries `ca.crt`). `Mesh`: no TLS
    /// listener; sidecars use plain HTTP on port 8080. Choose Mesh only when a service mesh encrypts
    /// and authenticates all traffic between the sidecars and this server (mTLS).
    #[serde(default)]
    pub mode: TransportMode,
    /// The cert-manager issuer of the serving certificate, with `mode: CertManagerTLS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager_issuer_ref: Option<IssuerRef>,
}

impl InClusterTransport {
    /// Whether the server serves TLS to sidecars (and sidecars use it).
    pub fn tls(&self) -> bool {
        self.mode != TransportMode::Mesh
    }
}

/// The in-cluster transport modes.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum TransportMode {
    /// TLS with a certificate from the operator's own CA.
    #[default]
    #[serde(rename = "OperatorTLS")]
    OperatorTls,
    /// TLS with a certificate from cert-manager.
    #[serde(rename = "CertManagerTLS")]
    CertManagerTls,
    /// Plain HTTP: a service mesh provides mTLS.
    Mesh,
}

/// A cert-manager `Issuer` (in this namespace) or `ClusterIssuer`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

/// Kinds of cert-manager issuers.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum IssuerKind {
    /// A namespaced `Issuer` in the server's namespace.
    #[default]
    Issuer,
    /// A cluster-wide `ClusterIssuer`.
    ClusterIssuer,
}

fn default_replicas() -> i32 {
    1
}

/// Which namespaces may attach MCPServices to an AuthorizationServer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.from == 'Selector') == has(self.selector)")
    .message("allowedNamespaces.selector is required with from: Selector, and only allowed with it")
    .field_path(".selector"))]
pub struct AllowedNamespaces {
    /// `Same` (only this server's namespace), `All`, or `Selector` (namespaces whose labels match
    /// `selector`).
    #[serde(default)]
    pub from: NamespacesFrom,
    /// Labels of the allowed namespaces, with `from: Selector`. Every namespace carries
    /// `kubernetes.io/metadata.name: <name>`, so a list of names is `matchExpressions` on that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Where the MCPServices of a server may come from.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum NamespacesFrom {
    /// Only the server's own namespace.
    #[default]
    Same,
    /// Every namespace.
    All,
    /// Namespaces whose labels match `selector`.
    Selector,
}

/// The label the API server puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl AllowedNamespaces {
    /// Whether a service in `namespace` (with `labels`, or only [`NAMESPACE_NAME_LABEL`] when they are
    /// unknown, as in local mode) may use a server in `server_namespace`. A selector that does not parse
    /// admits nobody: a typo must not open the server.
    pub fn admits(
        &self,
        server_namespace: &str,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match self.from {
            NamespacesFrom::Same => namespace == server_namespace,
            NamespacesFrom::All => true,
            NamespacesFrom::Selector => {
                let Some(selector) = self
                    .selector
                    .clone()
                    .and_then(|s| Selector::try_from(s).ok())
                else {
                    return false;
                };
                let fallback: BTreeMap<String, String> =
                    [(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned())].into();
                selector.matches(labels.unwrap_or(&fallback))
            }
        }
    }

    /// A short description for messages, e.g. `from: Same`.
    pub fn describe(&self) -> String {
        match (&self.from, &self.selector) {
            (NamespacesFrom::Selector, Some(s)) => format!(
                "from: Selector {}",
                Selector::try_from(s.clone()).map_or_else(|e| e.to_string(), |s| s.to_string())
            ),
            (from, _) => format!("from: {from:?}"),
        }
    }
}

/// Storage backend of the authorization server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// `Embedded` (SQLite on a PersistentVolumeClaim, one replica) or `Postgres` (shared, several replicas).
    #[serde(rename = "type", default)]
    pub kind: StorageKind,
    /// Size of the PersistentVolumeClaim for embedded storage.
    #[serde(default = "default_volume_size")]
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: String,
    /// StorageClass of the PersistentVolumeClaim; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// PostgreSQL connection, required when type is Postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStorage>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            kind: StorageKind::Embedded,
            size: default_volume_size(),
            storage_class_name: None,
            postgres: None,
        }
    }
}

fn default_volume_size() -> String {
    "1Gi".to_owned()
}

/// The storage backends.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum StorageKind {
    /// SQLite on a PersistentVolumeClaim; exactly one replica.
    #[default]
    Embedded,
    /// PostgreSQL, for several replicas.
    Postgres,
}

/// PostgreSQL connection settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStorage {
    /// Secret key holding the connection URL (`postgres://user:password@host:5432/db`).
    pub url_secret_ref: SecretKeyRef,
}

/// Signing keys of access tokens. The operator generates them and keeps them in a Secret it owns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// JWS algorithm of access tokens.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// How long a key signs before the next one takes over (e.g. `720h`). The next key is published
    /// one access-token lifetime before it starts signing; a retired key stays published until every
    /// token it signed has expired.
    #[serde(default = "default_rotation_period")]
    #[schemars(
        regex(pattern = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$"),
        length(min = 2, max = 24)
    )]
    pub rotation_period: String,
}

impl Default for Signing {
    fn default() -> Self {
        Self {
            algorithm: SigningAlgorithm::ES256,
            rotation_period: default_rotation_period(),
        }
    }
}

fn default_rotation_period() -> String {
    "720h".to_owned()
}

/// Supported JWS algorithms.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum SigningAlgorithm {
    /// ECDSA with P-256 and SHA-256.
    #[default]
    ES256,
}

/// Token lifetimes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenLifetimes {
    /// Lifetime of access tokens (e.g. `10m`); sensitive scopes may shorten it.
    #[serde(default = "default_access_token_lifetime")]
    #[schemars(
        regex(pattern = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$"),
        length(min = 2, max = 24)
    )]
    pub access_token_lifetime: String,
    /// Lifetime of refresh tokens (e.g. `720h`); public clients' refresh tokens rotate on every use.
    #[serde(default = "default_refresh_token_lifetime")]
    #[schemars(
        regex(pattern = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$"),
        length(min = 2, max = 24)
    )]
    pub refresh_token_lifetime: String,
}

impl Default for TokenLifetimes {
    fn default() -> Self {
        Self {
            access_token_lifetime: default_access_token_lifetime(),
            refresh_token_lifetime: default_refresh_token_lifetime(),
        }
    }
}

fn default_access_token_lifetime() -> String {
    "10m".to_owned()
}

fn default_refresh_token_lifetime() -> String {
    "720h".to_owned()
}

/// Sign-in: static users from a Secret, or an upstream OpenID provider. Exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.staticUsers) != has(self.oidc)")
    .message("login needs exactly one of staticUsers or oidc"))]
pub struct Login {
    /// Secret key holding the static users: a YAML list of `{username, passwordHash, subject}` with
    /// Argon2id hashes (`mcp-authz-server hash-password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_users: Option<SecretKeyRef>,
    /// Upstream OpenID Connect provider people sign in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcLogin>,
}

/// An upstream OpenID Connect provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcLogin {
    /// Issuer URL of the provider (https).
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("oidc.issuer must be an https URL"))]
    #[schemars(length(min = 9, max = 2048))]
    pub issuer: String,
    /// Client id registered at the provider.
    #[schemars(length(min = 1, max = 512))]
    pub client_id: String,
    /// Secret key holding the client secret registered at the provider.
    pub client_secret_ref: SecretKeyRef,
}

/// Observed state of an AuthorizationServer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationServerStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and friends, Kubernetes style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Key id currently signing tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_id: Option<String>,
    /// Number of keys published in JWKS (signing, next and retiring).
    #[serde(default)]
    pub published_keys: i32,
    /// Number of MCPServices whose resources are in the rendered config.
    #[serde(default)]
    pub services: i32,
}
