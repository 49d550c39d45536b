//! `MCPClient`: a client the platform team registers in advance (an internal agent, a CI job, an
//! enterprise agent that redeems its identity provider's ID-JAGs), instead of one that identifies
//! itself with a Client ID Metadata Document.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// A client registered by the platform team. It lives in its AuthorizationServer's namespace: a
/// declared client may be given tokens without a person's consent (`client_credentials`) for any
/// service of that server, so declaring one is the platform team's act, not a tenant's.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp-authz.io",
    version = "v1alpha1",
    kind = "MCPClient",
    doc = "A client registered in advance at an mcp-authz AuthorizationServer.",
    plural = "mcpclients",
    singular = "mcpclient",
    shortname = "mcpclient",
    namespaced,
    category = "mcp-authz",
    status = "MCPClientStatus",
    printcolumn = r#"{"name":"Client ID","type":"string","jsonPath":".spec.clientId"}"#,
    printcolumn = r#"{"name":"Auth","type":"string","jsonPath":".spec.tokenEndpointAuthMethod"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("(self.tokenEndpointAuthMethod == 'private_key_jwt') == has(self.jwks)")
    .message("jwks is required with tokenEndpointAuthMethod private_key_jwt, and only allowed with it")
    .field_path(".jwks"))]
#[x_kube(validation = Rule::new("(self.tokenEndpointAuthMethod in ['client_secret_basic', 'client_secret_post']) == has(self.clientSecretRef)")
    .message("clientSecretRef is required with tokenEndpointAuthMethod client_secret_basic or client_secret_post, and only allowed with them")
    .field_path(".clientSecretRef"))]
#[x_kube(validation = Rule::new("self.tokenEndpointAuthMethod != 'none' || !self.grantTypes.exists(g, g in ['client_credentials', 'jwt_bearer'])")
    .message("client_credentials and jwt_bearer need a client that authenticates: private_key_jwt or a client secret")
    .field_path(".grantTypes"))]
#[x_kube(validation = Rule::new("!self.grantTypes.exists(g, g == 'authorization_code') || size(self.redirectUris) > 0")
    .message("authorization_code needs at least one redirect URI")
    .field_path(".redirectUris"))]
#[serde(rename_all = "camelCase")]
pub struct MCPClientSpec {
    /// Name of the AuthorizationServer (in this namespace) the client is registered at.
    #[schemars(length(min = 1, max = 253))]
    pub authorization_server: String,

    /// The `client_id` the client presents. Not an https URL (those identify clients by their
    /// metadata document). Two MCPClients with one id: the older one holds it.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[\x21-\x7E]+$"))]
    #[x_kube(validation = Rule::new("!self.startsWith('https://')")
        .message("clientId must not be an https URL: those name clients by their Client ID Metadata Document"))]
    pub client_id: String,

    /// Name people see on the consent screen.
    #[schemars(length(min = 1, max = 200))]
    pub client_name: String,

    /// Exact redirect URIs for `authorization_code` (https, or http on a loopback host whose port
    /// may vary).
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 2048)))]
    pub redirect_uris: Vec<String>,

    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_method: ClientAuthMethod,

    /// The client's public keys (a JWK Set, `{"keys": [...]}`) for `private_key_jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "jwk_set_schema")]
    pub jwks: Option<serde_json::Value>,

    /// The Secret key (in this namespace) holding the client's secret, at least 32 characters,
    /// for `client_secret_basic` and `client_secret_post`. The server reads it from a mounted
    /// volume: a rotated secret applies within a minute, without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,

    /// Grant types: `authorization_code` and `refresh_token` (a person signs in and consents),
    /// `client_credentials` (the client acts for itself, no person), `jwt_bearer` (redeeming an
    /// ID-JAG from an identity provider in `spec.trustedIdentityProviders` of the server).
    #[serde(default = "default_grant_types")]
    #[schemars(length(min = 1, max = 4))]
    pub grant_types: Vec<GrantType>,

    /// Scopes the client may be given with `client_credentials`, where no person consents. A
    /// token names one service and carries only scopes that service offers.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128)))]
    pub scopes: Vec<String>,
}

fn default_grant_types() -> Vec<GrantType> {
    vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
}

/// Any JSON object: the API server keeps a JWK Set's members as they are.
pub(crate) fn jwk_set_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Token endpoint authentication methods of a declared client.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ClientAuthMethod {
    /// A public client: PKCE, no authentication.
    #[default]
    #[serde(rename = "none")]
    None,
    /// A JWT signed with the client's private key (RFC 7523).
    #[serde(rename = "private_key_jwt")]
    PrivateKeyJwt,
    /// The client secret in an HTTP Basic header.
    #[serde(rename = "client_secret_basic")]
    ClientSecretBasic,
    /// The client secret in the form body.
    #[serde(rename = "client_secret_post")]
    ClientSecretPost,
}

impl From<ClientAuthMethod> for mcp_authz_authserver::config::ClientAuthMethod {
    fn from(m: ClientAuthMethod) -> Self {
        use mcp_authz_authserver::config::ClientAuthMethod as Server;
        match m {
            ClientAuthMethod::None => Server::None,
            ClientAuthMethod::PrivateKeyJwt => Server::PrivateKeyJwt,
            ClientAuthMethod::ClientSecretBasic => Server::ClientSecretBasic,
            ClientAuthMethod::ClientSecretPost => Server::ClientSecretPost,
        }
    }
}

/// Grant types of a declared client.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum GrantType {
    /// The authorization code grant with PKCE.
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    /// Refresh tokens.
    #[serde(rename = "refresh_token")]
    RefreshToken,
    /// The client acts for itself (RFC 6749 §4.4).
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    /// Redeeming an Identity Assertion JWT Authorization Grant (RFC 7523 jwt-bearer).
    #[serde(rename = "jwt_bearer")]
    JwtBearer,
}

impl From<GrantType> for mcp_authz_authserver::config::GrantType {
    fn from(g: GrantType) -> Self {
        use mcp_authz_authserver::config::GrantType as Server;
        match g {
            GrantType::AuthorizationCode => Server::AuthorizationCode,
            GrantType::RefreshToken => Server::RefreshToken,
            GrantType::ClientCredentials => Server::ClientCredentials,
            GrantType::JwtBearer => Server::JwtBearer,
        }
    }
}

/// Observed state of an MCPClient.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MCPClientStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether the client is in its server's configuration, and if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
