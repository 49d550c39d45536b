//! The token-exchange edges of an AuthorizationServer (`spec.tokenExchange`) resolved for one MCPService. The
//! server's config and the service's sidecar config are both rendered from [`resolve`], so an edge is in both or
//! in neither: a sidecar asking for a downstream its server was not told of would fail every request.

use kube::ResourceExt;
use mcp_authz_sidecar::config::{IdentityHeaders, MAX_DOWNSTREAMS, downstream_header_allowed};

use crate::api::{AuthorizationServer, MCPService, NamespacedRef};
use crate::tenancy::{self, NamespaceLabels};

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

/// The MCPServices an edge's `to` may name, and the labels of their namespaces, to tell whether the one it names
/// holds its URL at the server: only then is that URL the edge's audience.
#[derive(Clone, Copy)]
pub struct Peers<'a> {
    /// At least the services claiming the URLs of the services the edges name (each of those included).
    pub services: &'a [MCPService],
    /// See [`crate::tenancy::NamespaceLabels`].
    pub labels: &'a NamespaceLabels,
}

impl Peers<'static> {
    /// No services: every `to` is left out.
    pub const NONE: Peers<'static> = Peers {
        services: &[],
        labels: &NamespaceLabels::new(),
    };
}

/// Each edge of `server` from `service` (by its index in `spec.tokenExchange`): kept, or left out with why.
/// `offered` is what the service offers at this server. A scope the service does not offer is dropped from the
/// edge (its token could never hold it); an edge left with none, naming the service itself, naming a service
/// that does not hold its URL at this server, repeating an audience or a header, or with a header the sidecar
/// reserves, is left out.
pub fn resolve(
    server: &AuthorizationServer,
    service: &MCPService,
    offered: &[String],
    peers: Peers<'_>,
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
        let audience = match (&edge.to, &edge.audience) {
            (Some(to), _) => called_service(server, to, peers),
            (None, Some(audience)) => Ok(audience.clone()),
            (None, None) => Err("it names neither to nor audience".to_owned()),
        };
        let audience = match audience {
            Ok(audience) => audience,
            Err(why) => {
                out.push((index, Err(why)));
                continue;
            }
        };
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
        } else if audience == service.spec.resource_url {
            Some("the audience is the service itself".to_owned())
        } else if kept.iter().any(|k| k.audience == audience) {
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
                    audience,
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

/// The `resourceUrl` of the MCPService `to` names, when it holds that URL at `server`.
fn called_service(
    server: &AuthorizationServer,
    to: &NamespacedRef,
    peers: Peers<'_>,
) -> Result<String, String> {
    let server_ns = server.namespace().unwrap_or_default();
    let namespace = to.namespace.as_deref().unwrap_or(&server_ns);
    let Some(called) = peers
        .services
        .iter()
        .find(|s| s.name_any() == to.name && s.namespace().as_deref() == Some(namespace))
    else {
        return Err(format!("MCPService {namespace}/{} does not exist", to.name));
    };
    let holds = tenancy::attached(called, server, peers.labels)
        && tenancy::resource_holder(called, server, peers.services, peers.labels).is_none();
    if !holds {
        return Err(format!(
            "MCPService {namespace}/{} does not hold its resourceUrl at this server",
            to.name
        ));
    }
    Ok(called.spec.resource_url.clone())
}

/// The kept edges of [`resolve`].
pub fn kept(
    server: &AuthorizationServer,
    service: &MCPService,
    offered: &[String],
    peers: Peers<'_>,
) -> Vec<Edge> {
    resolve(server, service, offered, peers)
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
        let resolved = resolve(&s, &svc, &["files:read".to_owned()], Peers::NONE);
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
    fn an_edge_to_a_service_calls_it_while_it_holds_its_url() {
        let called = |ns: &str, name: &str, url: &str, created: i64| {
            let mut v = cases::mcp_service();
            v["metadata"]["namespace"] = json!(ns);
            v["metadata"]["name"] = json!(name);
            v["metadata"]["uid"] = json!(format!("u-{ns}-{name}"));
            v["metadata"]["creationTimestamp"] = json!(format!("2026-01-01T00:00:{created:02}Z"));
            v["spec"]["resourceUrl"] = json!(url);
            v["spec"]["authorizationServerRef"] = json!({"name": "auth", "namespace": "mcp-authz"});
            serde_json::from_value::<MCPService>(v).expect("service")
        };
        let svc = called("team", "files", "https://mcp.example.com/files", 3);
        let name = svc.name_any();
        let search = called("search", "search", "https://mcp.example.com/search", 5);
        // An older claim of the URL of `mail`, from another namespace: `mail` does not hold it.
        let mail = called("mail", "mail", "https://mcp.example.com/mail", 9);
        let squatter = called("aaa", "mail", "https://mcp.example.com/mail", 1);
        let to = |ns: &str, called: &str, header: &str| json!({"from": {"name": name, "namespace": "team"}, "to": {"name": called, "namespace": ns}, "scopes": ["files:read"], "header": header});
        let mut s = server(json!([
            to("search", "search", "x-search"),
            to("mail", "mail", "x-mail"),
            to("search", "gone", "x-gone"),
            to("team", &name, "x-me"),
        ]));
        s.spec.allowed_namespaces = serde_json::from_value(json!({"from": "All"})).expect("all");
        let services = [svc.clone(), search, mail, squatter];
        let labels = NamespaceLabels::new();
        let peers = Peers {
            services: &services,
            labels: &labels,
        };
        let got: Vec<(usize, Result<String, String>)> =
            resolve(&s, &svc, &["files:read".to_owned()], peers)
                .into_iter()
                .map(|(i, e)| (i, e.map(|e| e.audience)))
                .collect();
        assert_eq!(
            got,
            [
                (0, Ok("https://mcp.example.com/search".to_owned())),
                (
                    1,
                    Err(
                        "MCPService mail/mail does not hold its resourceUrl at this server"
                            .to_owned()
                    )
                ),
                (2, Err("MCPService search/gone does not exist".to_owned())),
                (3, Err("the audience is the service itself".to_owned())),
            ]
        );
        // Without the services, no `to` is resolved.
        let alone: Vec<bool> = resolve(&s, &svc, &["files:read".to_owned()], Peers::NONE)
            .into_iter()
            .map(|(_, e)| e.is_ok())
            .collect();
        assert_eq!(alone, [false; 4]);
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
