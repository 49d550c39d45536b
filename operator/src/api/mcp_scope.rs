//! `MCPScope`: one scope of the catalogue people consent to.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One OAuth scope of the catalogue: its value, what a person reads on the consent screen, and how
/// carefully tokens carrying it are handled.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp-authz.io",
    version = "v1alpha1",
    kind = "MCPScope",
    doc = "One scope of the mcp-authz scope catalogue.",
    plural = "mcpscopes",
    singular = "mcpscope",
    shortname = "mcpscope",
    namespaced,
    category = "mcp-authz",
    status = "MCPScopeStatus",
    printcolumn = r#"{"name":"Value","type":"string","jsonPath":".spec.value"}"#,
    printcolumn = r#"{"name":"Sensitive","type":"boolean","jsonPath":".spec.sensitive"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"InUse","type":"string","jsonPath":".status.conditions[?(@.type==\"InUse\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!self.sensitive || !has(self.maxTokenLifetime) || duration(self.maxTokenLifetime) <= duration('1h')")
    .message("a sensitive scope's maxTokenLifetime may be at most 1h")
    .field_path(".maxTokenLifetime"))]
#[serde(rename_all = "camelCase")]
pub struct MCPScopeSpec {
    /// The scope value in tokens and requests (RFC 6749 scope-token characters, e.g. `tools:read`).
    /// `offline_access` is reserved.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$")
    )]
    #[x_kube(validation = Rule::new("self != 'offline_access'").message("offline_access is reserved for refresh tokens"))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("value is immutable: create another MCPScope for another value"))]
    pub value: String,

    /// What a person reads on the consent screen when a client asks for this scope.
    #[schemars(length(min = 1, max = 512))]
    pub description: String,

    /// Sensitive scopes get a shorter token lifetime, ask for consent every time and are checked
    /// against revocation.
    #[serde(default)]
    pub sensitive: bool,

    /// Longest lifetime of an access token carrying this scope (e.g. `5m`); the server's access
    /// token lifetime when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$"),
        length(min = 2, max = 24)
    )]
    pub max_token_lifetime: Option<String>,

    /// Narrower scope values this scope implies (`files:write` implies `files:read`); a token with
    /// this scope passes checks that need any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub implies: Vec<String>,
}

/// Observed state of an MCPScope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MCPScopeStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, Kubernetes style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The AuthorizationServers (`namespace/name`) at which this definition owns its value, as the operator
    /// last found. A definition keeps a value it owns at a server against older ones arriving there later
    /// (a namespace admitted later): owning it at one server says nothing about another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub owns_at: Option<Vec<String>>,
    /// The value `ownsAt` is about. Ownership is of a value, not of an object: were `spec.value` ever
    /// different from this, the definition owns nothing until the operator has judged the new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_value: Option<String>,
}
