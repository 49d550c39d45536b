//! Valid sample resources and a table of invalid ones with the refusal each must get. The same
//! table is checked offline against the CRD schemas (kube's CEL evaluator) and, in the cluster
//! tests, against the real API server.

use serde_json::{Value, json};

/// A sample `AuthorizationServer` every rule accepts.
pub fn authorization_server() -> Value {
    json!({
        "apiVersion": "mcp-authz.io/v1alpha1", "kind": "AuthorizationServer",
        "metadata": {"name": "auth"},
        "spec": {
            "issuer": "https://auth.example.com",
            "login": {"staticUsers": {"name": "users", "key": "users.yaml"}}
        }
    })
}

/// A sample `MCPService` every rule accepts.
pub fn mcp_service() -> Value {
    json!({
        "apiVersion": "mcp-authz.io/v1alpha1", "kind": "MCPService",
        "metadata": {"name": "files"},
        "spec": {
            "selector": {"app": "files"},
            "resourceUrl": "https://mcp.example.com/files",
            "authorizationServerRef": {"name": "auth"},
            "upstream": {"port": 8080},
            "scopes": ["files:read", "files:write"],
            "rules": [
                {"methods": ["tools/call"], "names": ["read_*"], "scopes": ["files:read"]},
                {"methods": ["tools/call"], "names": ["write_*"], "scopes": ["files:write"]}
            ]
        }
    })
}

/// A typed sample `MCPService` in `namespace` for AuthorizationServer `mcp-authz/auth`, with its own resource
/// URL, scopes and CIMD policy and no rules: the fixture the operator's unit tests share.
pub fn mcp_service_in(
    namespace: &str,
    name: &str,
    resource_url: &str,
    scopes: &[&str],
    policy: Option<&str>,
) -> super::MCPService {
    let mut v = mcp_service();
    v["metadata"] = json!({"name": name, "namespace": namespace});
    v["spec"]["resourceUrl"] = json!(resource_url);
    v["spec"]["scopes"] = json!(scopes);
    v["spec"]["rules"] = json!([]);
    v["spec"]["authorizationServerRef"] = json!({"name": "auth", "namespace": "mcp-authz"});
    if let Some(p) = policy {
        v["spec"]["cimdPolicyRef"] = json!(p);
    }
    serde_json::from_value(v).expect("the sample MCPService is valid")
}

/// A sample `MCPScope` every rule accepts.
pub fn mcp_scope() -> Value {
    json!({
        "apiVersion": "mcp-authz.io/v1alpha1", "kind": "MCPScope",
        "metadata": {"name": "files-read"},
        "spec": {"value": "files:read", "description": "Read your files"}
    })
}

/// A sample `CIMDPolicy` every rule accepts.
pub fn cimd_policy() -> Value {
    json!({
        "apiVersion": "mcp-authz.io/v1alpha1", "kind": "CIMDPolicy",
        "metadata": {"name": "default"},
        "spec": {"allowedHosts": ["*.example.com", "claude.ai"], "allowedPrivateNetworks": ["10.0.0.0/8"]}
    })
}

/// A sample `MCPClient` every rule accepts: a CI job with a client secret and client credentials.
pub fn mcp_client() -> Value {
    json!({
        "apiVersion": "mcp-authz.io/v1alpha1", "kind": "MCPClient",
        "metadata": {"name": "ci-job"},
        "spec": {
            "authorizationServer": "auth",
            "clientId": "ci-job",
            "clientName": "CI job",
            "tokenEndpointAuthMethod": "client_secret_basic",
            "clientSecretRef": {"name": "ci-job", "key": "secret"},
            "grantTypes": ["client_credentials"],
            "scopes": ["files:read"]
        }
    })
}

/// One invalid manifest and what the API server must answer.
#[derive(Debug, Clone)]
pub struct InvalidCase {
    /// What the case breaks.
    pub name: &'static str,
    /// The manifest.
    pub object: Value,
    /// A part of the refusal message (CEL rule messages are quoted exactly).
    pub message: &'static str,
    /// The field the refusal names (as the API server prints it, without the leading `spec.`).
    pub field: &'static str,
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    if let Some(slot) = base.pointer_mut(pointer) {
        *slot = value;
    } else if let Some((parent, key)) = pointer.rsplit_once('/')
        && let Some(Value::Object(map)) = base.pointer_mut(parent)
    {
        map.insert(key.to_owned(), value);
    }
    base
}

/// `base` without the spec field `field`.
fn without(mut base: Value, field: &str) -> Value {
    if let Some(spec) = base["spec"].as_object_mut() {
        spec.remove(field);
    }
    base
}

/// Manifests that break a cross-field (CEL) rule.
pub fn cel_cases() -> Vec<InvalidCase> {
    vec![
        InvalidCase {
            name: "embedded storage with two replicas",
            object: with(authorization_server(), "/spec/replicas", json!(2)),
            message: "embedded storage is a single SQLite file on one volume: it allows exactly one replica",
            field: "replicas",
        },
        InvalidCase {
            name: "postgres without its secret",
            object: with(
                authorization_server(),
                "/spec/storage",
                json!({"type": "Postgres"}),
            ),
            message: "storage.type Postgres needs storage.postgres.urlSecretRef",
            field: "storage.postgres",
        },
        InvalidCase {
            name: "rotation shorter than token lifetime",
            object: with(
                authorization_server(),
                "/spec/signing",
                json!({"rotationPeriod": "5m"}),
            ),
            message: "signing.rotationPeriod must be longer than tokens.accessTokenLifetime",
            field: "signing.rotationPeriod",
        },
        InvalidCase {
            name: "allowedNamespaces from Selector without a selector",
            object: with(
                authorization_server(),
                "/spec/allowedNamespaces",
                json!({"from": "Selector"}),
            ),
            message: "allowedNamespaces.selector is required with from: Selector, and only allowed with it",
            field: "allowedNamespaces.selector",
        },
        InvalidCase {
            name: "allowedNamespaces selector with from: All",
            object: with(
                authorization_server(),
                "/spec/allowedNamespaces",
                json!({"from": "All", "selector": {"matchLabels": {"a": "b"}}}),
            ),
            message: "allowedNamespaces.selector is required with from: Selector, and only allowed with it",
            field: "allowedNamespaces.selector",
        },
        InvalidCase {
            name: "resourceUrls prefix with a query",
            object: with(
                authorization_server(),
                "/spec/resourceUrls",
                json!([{"prefix": "https://mcp.example.com/files?team=a", "namespaces": {"from": "All"}}]),
            ),
            message: "resourceUrls[].prefix must be an https URL without query or fragment",
            field: "resourceUrls[0].prefix",
        },
        InvalidCase {
            name: "resourceUrls prefix over plain http",
            object: with(
                authorization_server(),
                "/spec/resourceUrls",
                json!([{"prefix": "http://mcp.example.com/", "namespaces": {"from": "Same"}}]),
            ),
            message: "resourceUrls[].prefix must be an https URL without query or fragment",
            field: "resourceUrls[0].prefix",
        },
        InvalidCase {
            name: "resourceUrls selector with from: Same",
            object: with(
                authorization_server(),
                "/spec/resourceUrls",
                json!([{"prefix": "https://mcp.example.com/", "namespaces": {"from": "Same", "selector": {"matchLabels": {"a": "b"}}}}]),
            ),
            message: "allowedNamespaces.selector is required with from: Selector, and only allowed with it",
            field: "resourceUrls[0].namespaces.selector",
        },
        InvalidCase {
            name: "cert-manager transport without an issuer",
            object: with(
                authorization_server(),
                "/spec/inClusterTransport",
                json!({"mode": "CertManagerTLS"}),
            ),
            message: "inClusterTransport.certManagerIssuerRef is required with mode: CertManagerTLS, and only allowed with it",
            field: "inClusterTransport.certManagerIssuerRef",
        },
        InvalidCase {
            name: "cert-manager issuer with the mesh transport",
            object: with(
                authorization_server(),
                "/spec/inClusterTransport",
                json!({"mode": "Mesh", "certManagerIssuerRef": {"name": "ca"}}),
            ),
            message: "inClusterTransport.certManagerIssuerRef is required with mode: CertManagerTLS, and only allowed with it",
            field: "inClusterTransport.certManagerIssuerRef",
        },
        InvalidCase {
            name: "http issuer",
            object: with(
                authorization_server(),
                "/spec/issuer",
                json!("http://auth.example.com"),
            ),
            message: "issuer must be an https URL without query or fragment",
            field: "issuer",
        },
        InvalidCase {
            name: "issuer with fragment",
            object: with(
                authorization_server(),
                "/spec/issuer",
                json!("https://auth.example.com#x"),
            ),
            message: "issuer must be an https URL without query or fragment",
            field: "issuer",
        },
        InvalidCase {
            name: "two logins",
            object: with(
                authorization_server(),
                "/spec/login/oidc",
                json!({"issuer": "https://idp.example.com", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}}),
            ),
            message: "login needs exactly one of staticUsers or oidc",
            field: "login",
        },
        InvalidCase {
            name: "a token-exchange audience over http",
            object: with(
                authorization_server(),
                "/spec/tokenExchange",
                json!([{"from": {"name": "files"}, "audience": "http://inventory.example.com", "scopes": ["files:read"], "header": "x-inventory"}]),
            ),
            message: "audience must be an https URL without fragment",
            field: "tokenExchange[0].audience",
        },
        InvalidCase {
            name: "a token-exchange edge naming both a service and an audience",
            object: with(
                authorization_server(),
                "/spec/tokenExchange",
                json!([{"from": {"name": "files"}, "to": {"name": "reports"}, "audience": "https://inventory.example.com", "scopes": ["files:read"], "header": "x-inventory"}]),
            ),
            message: "a token-exchange edge names exactly one of to and audience",
            field: "tokenExchange[0]",
        },
        InvalidCase {
            name: "a token-exchange edge naming no downstream",
            object: with(
                authorization_server(),
                "/spec/tokenExchange",
                json!([{"from": {"name": "files"}, "scopes": ["files:read"], "header": "x-inventory"}]),
            ),
            message: "a token-exchange edge names exactly one of to and audience",
            field: "tokenExchange[0]",
        },
        InvalidCase {
            name: "a provider with both discovery and endpoints",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "x-acme", "issuer": "https://login.acme.example", "tokenEndpoint": "https://login.acme.example/token"}]),
            ),
            message: "a provider needs either issuer (discovery) or authorizationEndpoint and tokenEndpoint",
            field: "providers[0].issuer",
        },
        InvalidCase {
            name: "a provider with neither discovery nor a token endpoint",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "x-acme", "authorizationEndpoint": "https://login.acme.example/authorize"}]),
            ),
            message: "a provider needs either issuer (discovery) or authorizationEndpoint and tokenEndpoint",
            field: "providers[0].issuer",
        },
        InvalidCase {
            name: "a provider's issuer over http",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "x-acme", "issuer": "http://login.acme.example"}]),
            ),
            message: "issuer must be an https URL (http only on a loopback host)",
            field: "providers[0].issuer",
        },
        InvalidCase {
            name: "one provider id used twice",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "x-acme", "issuer": "https://login.acme.example"}, {"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "x-acme", "issuer": "https://other.acme.example"}]),
            ),
            message: "providers ids must be unique",
            field: "providers",
        },
        InvalidCase {
            name: "a provider's token in the trace context header",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "traceparent", "issuer": "https://login.acme.example"}]),
            ),
            message: "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
            field: "providers[0].header",
        },
        InvalidCase {
            name: "a token-exchange token in a forwarding header",
            object: with(
                authorization_server(),
                "/spec/tokenExchange",
                json!([{"from": {"name": "files"}, "audience": "https://inventory.example.com", "scopes": ["files:read"], "header": "x-forwarded-user"}]),
            ),
            message: "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
            field: "tokenExchange[0].header",
        },
        InvalidCase {
            name: "a token-exchange token in Accept (an MCP server would answer 406 to every request)",
            object: with(
                authorization_server(),
                "/spec/tokenExchange",
                json!([{"from": {"name": "files"}, "audience": "https://inventory.example.com", "scopes": ["files:read"], "header": "accept"}]),
            ),
            message: "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
            field: "tokenExchange[0].header",
        },
        InvalidCase {
            name: "a provider's token in a content negotiation field",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "content-language", "issuer": "https://login.acme.example"}]),
            ),
            message: "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
            field: "providers[0].header",
        },
        InvalidCase {
            name: "a provider's token in a trace baggage field an instrumented server passes on",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "uberctx-user", "issuer": "https://login.acme.example"}]),
            ),
            message: "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
            field: "providers[0].header",
        },
        InvalidCase {
            name: "a token-exchange token in the sidecar's identity header",
            object: with(
                authorization_server(),
                "/spec/tokenExchange",
                json!([{"from": {"name": "files"}, "audience": "https://inventory.example.com", "scopes": ["files:read"], "header": "x-mcp-authz-subject"}]),
            ),
            message: "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
            field: "tokenExchange[0].header",
        },
        InvalidCase {
            name: "a provider's token in an MCP header",
            object: with(
                authorization_server(),
                "/spec/providers",
                json!([{"id": "acme", "displayName": "Acme", "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "services": [{"name": "files"}], "header": "mcp-session-id", "issuer": "https://login.acme.example"}]),
            ),
            message: "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
            field: "providers[0].header",
        },
        InvalidCase {
            name: "resource URL with fragment",
            object: with(
                mcp_service(),
                "/spec/resourceUrl",
                json!("https://mcp.example.com/files#top"),
            ),
            message: "resourceUrl must be an https URL without fragment",
            field: "resourceUrl",
        },
        InvalidCase {
            name: "http resource URL",
            object: with(
                mcp_service(),
                "/spec/resourceUrl",
                json!("http://mcp.example.com/files"),
            ),
            message: "resourceUrl must be an https URL without fragment",
            field: "resourceUrl",
        },
        InvalidCase {
            name: "rule needs a scope the service does not offer",
            object: with(mcp_service(), "/spec/scopes", json!(["files:read"])),
            message: "every scope a rule requires must be listed in scopes",
            field: "rules",
        },
        InvalidCase {
            name: "sidecar port equals upstream port",
            object: with(mcp_service(), "/spec/sidecar", json!({"port": 8080})),
            message: "sidecar.port, sidecar.adminPort and upstream.port must all differ",
            field: "sidecar.port",
        },
        InvalidCase {
            name: "upstream path without slash",
            object: with(mcp_service(), "/spec/upstream/path", json!("mcp")),
            message: "upstream.path must start with /",
            field: "upstream.path",
        },
        InvalidCase {
            name: "offline_access as a catalogue scope",
            object: with(mcp_scope(), "/spec/value", json!("offline_access")),
            message: "offline_access is reserved for refresh tokens",
            field: "value",
        },
        InvalidCase {
            name: "long-lived sensitive scope",
            object: with(
                with(mcp_scope(), "/spec/sensitive", json!(true)),
                "/spec/maxTokenLifetime",
                json!("2h"),
            ),
            message: "a sensitive scope's maxTokenLifetime may be at most 1h",
            field: "maxTokenLifetime",
        },
        InvalidCase {
            name: "loopback redirects for web-only clients",
            object: with(cimd_policy(), "/spec/applicationTypes", json!(["web"])),
            message: "loopback redirect URIs are only for native clients",
            field: "redirectUris.allowLoopback",
        },
        InvalidCase {
            name: "private network that is not a CIDR",
            object: with(
                cimd_policy(),
                "/spec/allowedPrivateNetworks",
                json!(["10.0.0.0"]),
            ),
            message: "allowedPrivateNetworks entries must be CIDRs",
            field: "allowedPrivateNetworks",
        },
        InvalidCase {
            name: "trusted proxy that is not a CIDR",
            object: with(
                authorization_server(),
                "/spec/trustedProxies",
                json!(["10.0.0.0/8", "ingress-nginx"]),
            ),
            message: "trustedProxies entries must be CIDRs",
            field: "trustedProxies",
        },
        InvalidCase {
            name: "trusted identity provider with both jwksUri and jwks",
            object: with(
                authorization_server(),
                "/spec/trustedIdentityProviders",
                json!([{"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/jwks",
                        "jwks": {"keys": []}, "clients": ["agent"]}]),
            ),
            message: "a trusted identity provider needs exactly one of jwksUri and jwks",
            field: "trustedIdentityProviders[0].jwksUri",
        },
        InvalidCase {
            name: "the server trusting itself as an identity provider",
            object: with(
                authorization_server(),
                "/spec/trustedIdentityProviders",
                json!([{"issuer": "https://auth.example.com", "jwks": {"keys": []}, "clients": ["agent"]}]),
            ),
            message: "a trusted identity provider cannot be this server itself",
            field: "trustedIdentityProviders",
        },
        InvalidCase {
            name: "one identity provider listed twice",
            object: with(
                authorization_server(),
                "/spec/trustedIdentityProviders",
                json!([{"issuer": "https://idp.example.com", "jwks": {"keys": []}, "clients": ["a"]},
                       {"issuer": "https://idp.example.com", "jwks": {"keys": []}, "clients": ["b"]}]),
            ),
            message: "each trusted identity provider issuer may be listed once",
            field: "trustedIdentityProviders",
        },
        InvalidCase {
            name: "a declared client with jwks but a client secret",
            object: with(mcp_client(), "/spec/jwks", json!({"keys": []})),
            message: "jwks is required with tokenEndpointAuthMethod private_key_jwt, and only allowed with it",
            field: "jwks",
        },
        InvalidCase {
            name: "a declared client with private_key_jwt and no keys",
            object: without(
                with(
                    mcp_client(),
                    "/spec/tokenEndpointAuthMethod",
                    json!("private_key_jwt"),
                ),
                "clientSecretRef",
            ),
            message: "jwks is required with tokenEndpointAuthMethod private_key_jwt, and only allowed with it",
            field: "jwks",
        },
        InvalidCase {
            name: "a declared client with a secret method and no secret",
            object: without(
                with(
                    mcp_client(),
                    "/spec/tokenEndpointAuthMethod",
                    json!("client_secret_post"),
                ),
                "clientSecretRef",
            ),
            message: "clientSecretRef is required with tokenEndpointAuthMethod client_secret_basic or client_secret_post",
            field: "clientSecretRef",
        },
        InvalidCase {
            name: "a public declared client asking for client_credentials",
            object: without(
                with(mcp_client(), "/spec/tokenEndpointAuthMethod", json!("none")),
                "clientSecretRef",
            ),
            message: "client_credentials and jwt_bearer need a client that authenticates",
            field: "grantTypes",
        },
        InvalidCase {
            name: "a declared browser client without a redirect URI",
            object: with(
                mcp_client(),
                "/spec/grantTypes",
                json!(["authorization_code"]),
            ),
            message: "authorization_code needs at least one redirect URI",
            field: "redirectUris",
        },
        InvalidCase {
            name: "a client secret key that climbs out of its directory",
            object: with(mcp_client(), "/spec/clientSecretRef/key", json!("..")),
            message: "key must not be . or ..",
            field: "clientSecretRef.key",
        },
        InvalidCase {
            name: "a declared client id that is an https URL",
            object: with(
                mcp_client(),
                "/spec/clientId",
                json!("https://agent.example.com/client.json"),
            ),
            message: "clientId must not be an https URL",
            field: "clientId",
        },
        InvalidCase {
            name: "cache minimum above maximum",
            object: with(
                cimd_policy(),
                "/spec/fetch",
                json!({"cacheMinSeconds": 100, "cacheMaxSeconds": 10}),
            ),
            message: "fetch.cacheMinSeconds must not exceed fetch.cacheMaxSeconds",
            field: "fetch.cacheMinSeconds",
        },
    ]
}

/// Manifests that break a plain schema rule (type, enum, pattern, range, required).
pub fn schema_cases() -> Vec<InvalidCase> {
    vec![
        InvalidCase {
            name: "a rule's callers that are neither people nor machines",
            object: with(mcp_service(), "/spec/rules/0/callers", json!("Robots")),
            message: "Unsupported value: \"Robots\"",
            field: "rules[0].callers",
        },
        InvalidCase {
            name: "a token-exchange header that is not a lowercase name",
            object: with(
                authorization_server(),
                "/spec/tokenExchange",
                json!([{"from": {"name": "files"}, "audience": "https://inventory.example.com", "scopes": ["files:read"], "header": "X-Inventory"}]),
            ),
            message: "should match",
            field: "tokenExchange[0].header",
        },
        InvalidCase {
            name: "unknown storage type",
            object: with(
                authorization_server(),
                "/spec/storage",
                json!({"type": "Etcd"}),
            ),
            message: "Unsupported value: \"Etcd\"",
            field: "storage.type",
        },
        InvalidCase {
            name: "a Secret key with a path in it",
            object: with(
                mcp_client(),
                "/spec/clientSecretRef/key",
                json!("../keys/signing.pem"),
            ),
            message: "should match",
            field: "clientSecretRef.key",
        },
        InvalidCase {
            name: "rotation period that is not a duration",
            object: with(
                authorization_server(),
                "/spec/signing",
                json!({"rotationPeriod": "30d"}),
            ),
            message: "should match",
            field: "signing.rotationPeriod",
        },
        InvalidCase {
            name: "a rate limit bucket that holds nothing",
            object: with(
                authorization_server(),
                "/spec/rateLimits",
                json!({"tokenPerClient": {"requestsPerSecond": 10, "burst": 0}}),
            ),
            message: "should be greater than or equal to 1",
            field: "rateLimits.tokenPerClient.burst",
        },
        InvalidCase {
            name: "zero replicas",
            object: with(authorization_server(), "/spec/replicas", json!(0)),
            message: "should be greater than or equal to 1",
            field: "replicas",
        },
        InvalidCase {
            name: "port out of range",
            object: with(mcp_service(), "/spec/upstream/port", json!(70000)),
            message: "should be less than or equal to 65535",
            field: "upstream.port",
        },
        InvalidCase {
            name: "empty selector",
            object: with(mcp_service(), "/spec/selector", json!({})),
            message: "should have at least 1 properties",
            field: "selector",
        },
        InvalidCase {
            name: "scope value with a space",
            object: with(mcp_scope(), "/spec/value", json!("files read")),
            message: "should match",
            field: "value",
        },
        InvalidCase {
            name: "missing login",
            object: {
                let mut o = authorization_server();
                if let Some(spec) = o.pointer_mut("/spec").and_then(Value::as_object_mut) {
                    spec.remove("login");
                }
                o
            },
            message: "Required value",
            field: "login",
        },
        InvalidCase {
            name: "host with a scheme",
            object: with(
                cimd_policy(),
                "/spec/allowedHosts",
                json!(["example.com", "https://example.com"]),
            ),
            message: "should match",
            field: "allowedHosts[1]",
        },
        InvalidCase {
            name: "wildcard in the middle of a host",
            object: with(
                cimd_policy(),
                "/spec/allowedHosts",
                json!(["a.*.example.com"]),
            ),
            message: "should match",
            field: "allowedHosts[0]",
        },
        InvalidCase {
            name: "shared-secret auth method",
            object: with(
                cimd_policy(),
                "/spec/tokenEndpointAuthMethods",
                json!(["client_secret_basic"]),
            ),
            message: "Unsupported value: \"client_secret_basic\"",
            field: "tokenEndpointAuthMethods[0]",
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::all_crds;
    use kube::core::cel::Validator;

    fn schema_for(kind: &str) -> Value {
        let crd = all_crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .expect("kind exists");
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .and_then(|s| s.open_api_v3_schema)
            .expect("schema");
        serde_json::to_value(schema).expect("schema json")
    }

    fn validate(object: &Value) -> Result<(), Vec<(String, String)>> {
        let kind = object["kind"].as_str().expect("kind");
        Validator::new()
            .validate(&schema_for(kind), object, None)
            .map_err(|errors| {
                errors
                    .into_vec()
                    .into_iter()
                    .map(|e| (e.field_path.clone(), e.message.clone()))
                    .collect()
            })
    }

    #[test]
    fn samples_pass_every_rule() {
        for sample in [
            authorization_server(),
            mcp_service(),
            mcp_scope(),
            cimd_policy(),
            mcp_client(),
        ] {
            assert_eq!(validate(&sample), Ok(()), "{}", sample["kind"]);
        }
    }

    #[test]
    fn resource_url_cannot_change_but_the_rest_of_a_service_can() {
        let old = mcp_service();
        let moved = with(
            old.clone(),
            "/spec/resourceUrl",
            json!("https://mcp.example.com/other"),
        );
        let errors = Validator::new()
            .validate(&schema_for("MCPService"), &moved, Some(&old))
            .expect_err("a moved URL is refused")
            .into_vec();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].field_path.ends_with("resourceUrl"), "{errors:?}");
        assert_eq!(
            errors[0].message,
            "resourceUrl is immutable: delete this MCPService and create a new one to move it"
        );
        // Switching servers would let a claim parked at another server take a working URL: refused too.
        let switched = with(
            old.clone(),
            "/spec/authorizationServerRef",
            json!({"name": "other", "namespace": "mcp-authz"}),
        );
        let errors = Validator::new()
            .validate(&schema_for("MCPService"), &switched, Some(&old))
            .expect_err("a switched server is refused")
            .into_vec();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].field_path.ends_with("authorizationServerRef"),
            "{errors:?}"
        );
        assert_eq!(
            errors[0].message,
            "authorizationServerRef is immutable: delete this MCPService and create a new one to move it"
        );
        let renamed = with(old.clone(), "/spec/displayName", json!("Files"));
        assert!(
            Validator::new()
                .validate(&schema_for("MCPService"), &renamed, Some(&old))
                .is_ok()
        );
    }

    #[test]
    fn samples_deserialise_into_the_rust_types() {
        use crate::api::*;
        serde_json::from_value::<AuthorizationServer>(authorization_server())
            .expect("AuthorizationServer");
        serde_json::from_value::<MCPService>(mcp_service()).expect("MCPService");
        serde_json::from_value::<MCPScope>(mcp_scope()).expect("MCPScope");
        serde_json::from_value::<CIMDPolicy>(cimd_policy()).expect("CIMDPolicy");
        serde_json::from_value::<MCPClient>(mcp_client()).expect("MCPClient");
    }

    #[test]
    fn every_cel_rule_refuses_its_case_offline_with_the_field_named() {
        for case in cel_cases() {
            let errors = validate(&case.object).expect_err(case.name);
            assert!(
                errors
                    .iter()
                    .any(|(field, message)| message.contains(case.message)
                        && field.ends_with(case.field)),
                "{}: got {errors:?}",
                case.name
            );
        }
    }
}
