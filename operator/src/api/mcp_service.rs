//! `MCPService`: one protected MCP endpoint and the rules that map its methods to scopes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::NamespacedRef;

/// One protected MCP endpoint. Pods it selects (and labelled `mcp-authz.io/inject: enabled`) get a
/// token-checking sidecar; tokens for it carry its resource URL as audience.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp-authz.io",
    version = "v1alpha1",
    kind = "MCPService",
    doc = "One MCP endpoint protected by the mcp-authz sidecar.",
    plural = "mcpservices",
    singular = "mcpservice",
    shortname = "mcpsvc",
    namespaced,
    category = "mcp-authz",
    status = "MCPServiceStatus",
    printcolumn = r#"{"name":"Resource","type":"string","jsonPath":".spec.resourceUrl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.injectedPods"}"#,
    printcolumn = r#"{"name":"Outdated","type":"integer","priority":1,"jsonPath":".status.outdatedPods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.rules.all(r, r.scopes.all(s, s in self.scopes))")
    .message("every scope a rule requires must be listed in scopes")
    .field_path(".rules"))]
#[x_kube(validation = Rule::new("self.sidecar.port != self.upstream.port && self.sidecar.adminPort != self.upstream.port && self.sidecar.port != self.sidecar.adminPort")
    .message("sidecar.port, sidecar.adminPort and upstream.port must all differ")
    .field_path(".sidecar.port"))]
#[serde(rename_all = "camelCase")]
pub struct MCPServiceSpec {
    /// Labels of the pods that serve this MCP endpoint (matchLabels semantics).
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16))]
    pub selector: BTreeMap<String, String>,

    /// The public URL clients use for this MCP endpoint, character for character (RFC 9728
    /// `resource`, RFC 8707 token audience): https, no fragment. Immutable: the oldest service
    /// claiming a URL holds it, so moving one means deleting it and creating a new one, which
    /// queues behind any service already holding the new URL.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && !self.contains('#')")
        .message("resourceUrl must be an https URL without fragment"))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("resourceUrl is immutable: delete this MCPService and create a new one to move it"))]
    pub resource_url: String,

    /// Name people see on the consent screen; the MCPService's name when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,

    /// The AuthorizationServer that issues tokens for this service.
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("authorizationServerRef is immutable: delete this MCPService and create a new one to move it"))]
    pub authorization_server_ref: NamespacedRef,

    /// Where the MCP server listens inside the pod.
    pub upstream: Upstream,

    /// Scope values this service offers; each must exist as an MCPScope (in this namespace or the
    /// AuthorizationServer's).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub scopes: Vec<String>,

    /// Rules mapping MCP methods and tool/resource/prompt names to the scopes they need. The first
    /// matching rule wins.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub rules: Vec<AccessRule>,

    /// Decision for a request no rule matches.
    #[serde(default)]
    pub default_decision: DefaultDecision,

    /// Name of the CIMDPolicy (in this namespace) for clients asking tokens for this service; the
    /// AuthorizationServer's default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cimd_policy_ref: Option<String>,

    /// Token buckets on authorized requests, checked by the sidecar (none by default). Each counts the
    /// operations of `method` and `name` (globs; every one when absent) per `client`, `user` or `tool`; a
    /// request over one gets 429 with Retry-After. Buckets are per sidecar, so per pod: with n replicas a
    /// client may reach n times the rate through the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<mcp_authz_sidecar::config::RateLimit>,

    /// The injected sidecar.
    #[serde(default)]
    pub sidecar: SidecarSettings,
}

/// Where the MCP server listens inside the pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// Container port of the MCP server (reached by the sidecar on localhost).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Path of the MCP endpoint.
    #[serde(default = "default_mcp_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("upstream.path must start with /"))]
    pub path: String,
}

fn default_mcp_path() -> String {
    "/mcp".to_owned()
}

/// One access rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// MCP methods this rule covers, as globs (e.g. `tools/call`, `resources/*`).
    #[schemars(length(min = 1, max = 32))]
    pub methods: Vec<String>,
    /// Tool, resource or prompt names (globs) this rule covers; every name when empty.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub names: Vec<String>,
    /// Scopes a token needs (all of them) for a matching request; an authenticated token suffices
    /// when empty.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub scopes: Vec<String>,
    /// Who may make a matching request besides holding the scopes: `Anyone`, `People` (a person signed in
    /// and the client acts for them) or `Machines` (a client acting for itself with client_credentials,
    /// such as a declared MCPClient). A request this refuses is refused (403), never passed to a later rule.
    #[serde(default, skip_serializing_if = "RuleCallers::is_anyone")]
    pub callers: RuleCallers,
}

/// Who an access rule admits.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum RuleCallers {
    /// People and machine clients alike: only the scopes decide.
    #[default]
    Anyone,
    /// Only tokens a person stands behind.
    People,
    /// Only tokens a client got for itself (client_credentials).
    Machines,
}

impl RuleCallers {
    fn is_anyone(&self) -> bool {
        *self == Self::Anyone
    }
}

/// What happens to a request no rule matches.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum DefaultDecision {
    /// Refuse it (403).
    #[default]
    Deny,
    /// Let any valid token for this service through.
    AllowAuthenticated,
}

/// Settings of the injected sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSettings {
    /// Port the sidecar serves MCP on; Services should target it.
    #[serde(default = "default_sidecar_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Port of the sidecar's /metrics, /healthz and /readyz.
    #[serde(default = "default_sidecar_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// Sidecar image; the operator's default image when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of the sidecar; small defaults when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for SidecarSettings {
    fn default() -> Self {
        Self {
            port: default_sidecar_port(),
            admin_port: default_sidecar_admin_port(),
            image: None,
            resources: None,
        }
    }
}

fn default_sidecar_port() -> i32 {
    8443
}

fn default_sidecar_admin_port() -> i32 {
    9464
}

/// Observed state of an MCPService.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MCPServiceStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ScopesResolved`, `PolicyResolved`, `CredentialsIssued`, `TransportSecured`, `RawPortExposed`,
    /// `SidecarsCurrent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Running pods of this service that carry the sidecar.
    #[serde(default)]
    pub injected_pods: i32,
    /// Injected pods whose sidecar came from another operator version (`mcp-authz.io/injected-version`); they
    /// keep that sidecar until restarted.
    #[serde(default)]
    pub outdated_pods: i32,
    /// The object and URL the key of `CredentialsIssued=True` was issued for (`uid resourceUrl`). A claim
    /// holds only when this names the object itself: a write of a reconcile of a deleted service that lands
    /// on a new one of the same name carries the old uid, and gives the newcomer no standing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_for: Option<String>,
}
