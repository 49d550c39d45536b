//! The token-exchange edges of an AuthorizationServer (`spec.tokenExchange`) resolved for one MCPService. The
//! server's config and the service's sidecar config are both rendered from [`resolve`], so an edge is in both or
//! in neither: a sidecar asking for a downstream its server was not told of would fail every request.

use kube::ResourceExt;
use mcp_authz_sidecar::config::{IdentityHeaders, MAX_DOWNSTREAMS, downstream_header_allowed};

use crate::api::{AuthorizationServer, MCPService};

/// One downstream a service may call as the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The tokens' `aud`.
    pub audience: String,
    /// The scopes that may be passed on, each one the service offers.
    pub scopes: Vec<String>,
    /// Where the MCP server reads the token.
    pub header: String,
}

/// Each edge of `server` from `service` (by its index in `spec.tokenExchange`): kept, or left out with why.
/// `offered` is what the service offers at this server. A scope the service does not offer is dropped from the
/// edge (its token could never hold it); an edge left with none, naming the service itself, repeating an audience
/// or a header, or with a header the sidecar reserves, is left out.
pub fn resolve(
    server: &AuthorizationServer,
    service: &MCPService,
    offered: &[String],
) -> Vec<(usize, Result<Edge, String>)> {
    let server_ns = server.namespace().unwrap_or_default();
    let service_ns = service.namespace().unwrap_or_default();
    let identity = IdentityHeaders::default();
    let mut kept: Vec<Edge> = Vec::new();
    let mut out = Vec::new();
    for (index, edge) in server.spec.token_exchange.iter().enumerate() {
        let from_ns = edge.from.namespace.as_deref().unwrap_or(&server_ns);
        if edge.from.name != service.name_any() || from_ns != service_ns {
            continue;
        }
        let scopes: Vec<String> = edge
            .scopes
            .iter()
            .filter(|s| offered.contains(s))
            .cloned()
            .collect();
        let why = if scopes.is_empty() {
            Some(format!(
                "the service offers none of the scopes {:?}",
                edge.scopes.join(" ")
            ))
        } else if edge.audience == service.spec.resource_url {
            Some("the audience is the service itself".to_owned())
        } else if kept.iter().any(|k| k.audience == edge.audience) {
            Some("an earlier edge of this service names the same audience".to_owned())
        } else if kept.iter().any(|k| k.header == edge.header) {
            Some(format!(
                "an earlier edge of this service uses header {}",
                edge.header
            ))
        } else if !downstream_header_allowed(&edge.header, &identity) {
            Some(format!(
                "header {} is one the sidecar or HTTP gives a meaning",
                edge.header
            ))
        } else if kept.len() == MAX_DOWNSTREAMS {
            Some(format!(
                "a service may call at most {MAX_DOWNSTREAMS} downstreams"
            ))
        } else {
            None
        };
        match why {
            Some(why) => out.push((index, Err(why))),
            None => {
                let edge = Edge {
                    audience: edge.audience.clone(),
                    scopes,
                    header: edge.header.clone(),
                };
                kept.push(edge.clone());
                out.push((index, Ok(edge)));
            }
        }
    }
    out
}

/// The kept edges of [`resolve`].
pub fn kept(server: &AuthorizationServer, service: &MCPService, offered: &[String]) -> Vec<Edge> {
    resolve(server, service, offered)
        .into_iter()
        .filter_map(|(_, e)| e.ok())
        .collect()
}

/// A third-party provider whose person's tokens a service receives (`spec.providers[].services`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEdge {
    /// The provider's id in the server.
    pub id: String,
    /// Where the MCP server reads the token.
    pub header: String,
    /// Where a person connects the provider.
    pub connect_url: String,
}

/// The providers of `server` that list `service`, after its kept token-exchange edges: one whose header an edge
/// (or an earlier provider) uses, or the sidecar reserves, or past the sidecar's bound of downstreams, is left
/// out. The server's config and the sidecar's both come from here.
pub fn providers_of(
    server: &AuthorizationServer,
    service: &MCPService,
    edges: &[Edge],
) -> Vec<ProviderEdge> {
    let server_ns = server.namespace().unwrap_or_default();
    let service_ns = service.namespace().unwrap_or_default();
    let identity = IdentityHeaders::default();
    let mut out: Vec<ProviderEdge> = Vec::new();
    for provider in &server.spec.providers {
        let listed = provider.services.iter().any(|s| {
            s.name == service.name_any()
                && s.namespace.as_deref().unwrap_or(&server_ns) == service_ns
        });
        let taken = edges.iter().any(|e| e.header == provider.header)
            || out
                .iter()
                .any(|p| p.header == provider.header || p.id == provider.id);
        if !listed
            || taken
            || !downstream_header_allowed(&provider.header, &identity)
            || edges.len() + out.len() >= MAX_DOWNSTREAMS
        {
            continue;
        }
        out.push(ProviderEdge {
            id: provider.id.clone(),
            header: provider.header.clone(),
            connect_url: format!("{}/connect/{}", server.spec.issuer, provider.id),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;
    use serde_json::json;

    fn server(edges: serde_json::Value) -> AuthorizationServer {
        let mut v = cases::authorization_server();
        v["metadata"]["namespace"] = json!("mcp-authz");
        v["spec"]["tokenExchange"] = edges;
        serde_json::from_value(v).expect("server")
    }

    fn service() -> MCPService {
        let mut v = cases::mcp_service();
        v["metadata"]["namespace"] = json!("team");
        serde_json::from_value(v).expect("service")
    }

    #[test]
    fn edges_of_a_service() {
        let svc = service();
        let name = svc.name_any();
        let me = svc.spec.resource_url.clone();
        let from = json!({"name": name, "namespace": "team"});
        let edge = |audience: &str, scopes: serde_json::Value, header: &str| json!({"from": from, "audience": audience, "scopes": scopes, "header": header});
        let s = server(json!([
            edge("https://inventory.example.com", json!(["files:read", "files:admin"]), "x-inventory"),
            // Another service's edge, and one in the server's namespace by default: not this service's.
            {"from": {"name": "other", "namespace": "team"}, "audience": "https://x.example", "scopes": ["files:read"], "header": "x-x"},
            {"from": {"name": name}, "audience": "https://y.example", "scopes": ["files:read"], "header": "x-y"},
            edge("https://payroll.example.com", json!(["files:admin"]), "x-payroll"),
            edge(&me, json!(["files:read"]), "x-me"),
            edge("https://inventory.example.com", json!(["files:read"]), "x-again"),
            edge("https://stock.example.com", json!(["files:read"]), "x-inventory"),
            edge("https://mail.example.com", json!(["files:read"]), "x-mcp-authz-subject"),
            edge("https://mail.example.com", json!(["files:read"]), "authorization"),
        ]));
        let resolved = resolve(&s, &svc, &["files:read".to_owned()]);
        type Resolved = (usize, Result<(String, Vec<String>, String), String>);
        let got: Vec<Resolved> = resolved
            .into_iter()
            .map(|(i, e)| (i, e.map(|e| (e.audience, e.scopes, e.header))))
            .collect();
        assert_eq!(
            got,
            [
                (
                    0,
                    Ok((
                        "https://inventory.example.com".to_owned(),
                        vec!["files:read".to_owned()],
                        "x-inventory".to_owned()
                    ))
                ),
                (
                    3,
                    Err("the service offers none of the scopes \"files:admin\"".to_owned())
                ),
                (4, Err("the audience is the service itself".to_owned())),
                (
                    5,
                    Err("an earlier edge of this service names the same audience".to_owned())
                ),
                (
                    6,
                    Err("an earlier edge of this service uses header x-inventory".to_owned())
                ),
                (
                    7,
                    Err(
                        "header x-mcp-authz-subject is one the sidecar or HTTP gives a meaning"
                            .to_owned()
                    )
                ),
                (
                    8,
                    Err(
                        "header authorization is one the sidecar or HTTP gives a meaning"
                            .to_owned()
                    )
                ),
            ]
        );
    }

    #[test]
    fn providers_a_service_receives() {
        let svc = service();
        let name = svc.name_any();
        let provider = |id: &str, services: serde_json::Value, header: &str| {
            json!({"id": id, "displayName": id, "issuer": format!("https://{id}.example"), "clientId": "c",
                   "clientSecretRef": {"name": "s", "key": "k"}, "services": services, "header": header})
        };
        let mine = json!([{"name": name, "namespace": "team"}]);
        let mut v = cases::authorization_server();
        v["metadata"]["namespace"] = json!("mcp-authz");
        v["spec"]["issuer"] = json!("https://auth.example.com");
        v["spec"]["providers"] = json!([
            provider("acme", mine.clone(), "x-acme"),
            // Another service's, and one in the server's namespace by default: not this service's.
            provider(
                "other",
                json!([{"name": "other", "namespace": "team"}]),
                "x-other"
            ),
            provider("here", json!([{"name": name}]), "x-here"),
            // A header an exchange edge or an earlier provider uses, or one the sidecar reserves.
            provider("clash", mine.clone(), "x-inventory"),
            provider("again", mine.clone(), "x-acme"),
            provider("reserved", mine.clone(), "x-mcp-authz-subject"),
            provider("mail", mine, "x-mail"),
        ]);
        let s: AuthorizationServer = serde_json::from_value(v).expect("server");
        let edges = [Edge {
            audience: "https://inventory.example.com".into(),
            scopes: vec!["files:read".into()],
            header: "x-inventory".into(),
        }];
        let got: Vec<(String, String, String)> = providers_of(&s, &svc, &edges)
            .into_iter()
            .map(|p| (p.id, p.header, p.connect_url))
            .collect();
        let want = |id: &str, header: &str| {
            (
                id.to_owned(),
                header.to_owned(),
                format!("https://auth.example.com/connect/{id}"),
            )
        };
        assert_eq!(got, [want("acme", "x-acme"), want("mail", "x-mail")]);
    }
}
