//! Which objects a change concerns: the mappers of the controllers' watches, as pure functions. Each one
//! narrows "something changed" to the objects whose status or rendering can follow from it, so that one edit
//! does not re-reconcile every object of the cluster (each reconcile lists whole kinds from the API server).
//!
//! ```text
//! MCPScope edit (value v, namespace n)  -> MCPServices offering v whose server counts n, or that live in n
//! MCPScope edit (value v)               -> MCPScopes defining v (their ownership at each server may move)
//! MCPService edit (scopes S)            -> MCPScopes defining a value of S (InUse)
//! Namespace labels of n                 -> MCPScopes defining a value some MCPScope of n defines
//! MCPService edit (n/name)              -> MCPServices whose token-exchange edges call n/name (`to`)
//! ```
//!
//! An edit that changes a scope's value (or a service's scopes) concerns the old values as much as the new
//! ones, so the mappers take both: the shared caches tell each change with what they held before
//! ([`crate::reconcile::stores::Touched`]).

use std::collections::BTreeSet;

use kube::ResourceExt;

use crate::api::{AuthorizationServer, MCPScope, MCPService};
use crate::tenancy::{self, NamespaceLabels};

/// The values `now` and, when it differed, `before`.
pub fn values_then_and_now(now: &[String], before: Option<&[String]>) -> BTreeSet<String> {
    now.iter()
        .chain(before.into_iter().flatten())
        .cloned()
        .collect()
}

/// The services that can see an MCPScope of `namespace` defining one of `values`: those offering the value
/// whose own namespace is `namespace`, or whose server lives in `namespace` or admits it. A service whose
/// server is not (yet) known is taken, so a lagging store never loses a change.
pub fn services_using_scope<'a>(
    values: &BTreeSet<String>,
    namespace: &str,
    services: impl IntoIterator<Item = &'a MCPService>,
    servers: &[&AuthorizationServer],
    labels: &NamespaceLabels,
) -> Vec<&'a MCPService> {
    services
        .into_iter()
        .filter(|s| s.spec.scopes.iter().any(|v| values.contains(v)))
        .filter(|s| {
            if s.namespace().as_deref() == Some(namespace) {
                return true;
            }
            match servers
                .iter()
                .find(|server| crate::render::names_server(s, server))
            {
                Some(server) => {
                    server.namespace().as_deref() == Some(namespace)
                        || tenancy::admits(server, namespace, labels)
                }
                None => true,
            }
        })
        .collect()
}

/// The MCPScopes defining one of `values`.
pub fn scopes_defining<'a>(
    values: &BTreeSet<String>,
    scopes: impl IntoIterator<Item = &'a MCPScope>,
) -> Vec<&'a MCPScope> {
    scopes
        .into_iter()
        .filter(|s| values.contains(&s.spec.value))
        .collect()
}

/// The MCPScopes whose standing a change of `namespace`'s labels can move: those defining a value that some
/// MCPScope of `namespace` defines (being admitted or shut out moves that namespace's definitions, and with
/// them whoever shares their values).
pub fn scopes_sharing_values_with<'a>(
    namespace: &str,
    scopes: &[&'a MCPScope],
) -> Vec<&'a MCPScope> {
    let values: BTreeSet<String> = scopes
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace))
        .map(|s| s.spec.value.clone())
        .collect();
    scopes_defining(&values, scopes.iter().copied())
}

/// The MCPServices whose token-exchange edges call `changed` by name (`to`): whether it holds its URL decides
/// whether their edges to it are in force, and a sidecar must not keep asking for tokens its server stopped
/// issuing.
pub fn callers_of<'a>(
    changed: &MCPService,
    servers: &[&AuthorizationServer],
    services: impl IntoIterator<Item = &'a MCPService>,
) -> Vec<&'a MCPService> {
    let (name, namespace) = (changed.name_any(), changed.namespace().unwrap_or_default());
    let mut callers: BTreeSet<(String, String)> = BTreeSet::new();
    for server in servers {
        let server_ns = server.namespace().unwrap_or_default();
        let of = |r: &crate::api::NamespacedRef| {
            (
                r.namespace.clone().unwrap_or_else(|| server_ns.clone()),
                r.name.clone(),
            )
        };
        for edge in &server.spec.token_exchange {
            if edge.to.as_ref().map(of) == Some((namespace.clone(), name.clone())) {
                callers.insert(of(&edge.from));
            }
        }
    }
    services
        .into_iter()
        .filter(|s| callers.contains(&(s.namespace().unwrap_or_default(), s.name_any())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;
    use serde_json::json;

    fn server(ns: &str, name: &str, allowed: serde_json::Value) -> AuthorizationServer {
        let mut v = cases::authorization_server();
        v["metadata"] = json!({"name": name, "namespace": ns});
        v["spec"]["allowedNamespaces"] = allowed;
        serde_json::from_value(v).expect("server")
    }

    fn service(ns: &str, name: &str, server_ns: &str, scopes: &[&str]) -> MCPService {
        let mut s = cases::mcp_service_in(ns, name, "https://mcp.example.com/x", scopes, None);
        s.spec.authorization_server_ref.namespace = Some(server_ns.to_owned());
        s
    }

    fn scope(ns: &str, name: &str, value: &str) -> MCPScope {
        let mut v = cases::mcp_scope();
        v["metadata"] = json!({"name": name, "namespace": ns});
        v["spec"]["value"] = json!(value);
        serde_json::from_value(v).expect("scope")
    }

    fn values(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn names<'a, K: ResourceExt + 'a>(objects: impl IntoIterator<Item = &'a K>) -> Vec<String> {
        objects.into_iter().map(tenancy::key_of).collect()
    }

    #[test]
    fn a_scope_edit_concerns_the_services_that_can_see_it_at_their_server() {
        let tenants = json!({"from": "Selector", "selector": {"matchLabels": {"tenant": "yes"}}});
        let p1 = server("p1", "auth", tenants);
        let p2 = server("p2", "auth", json!({"from": "Same"}));
        let labels: NamespaceLabels = [
            (
                "team-a".to_owned(),
                [("tenant".to_owned(), "yes".to_owned())].into(),
            ),
            (
                "team-b".to_owned(),
                [("tenant".to_owned(), "yes".to_owned())].into(),
            ),
        ]
        .into();
        let services = [
            service("team-a", "files", "p1", &["files:read", "files:write"]),
            service("team-b", "notes", "p1", &["files:read"]),
            service("team-b", "mail", "p1", &["mail:read"]),
            service("p2", "files", "p2", &["files:read"]),
            service("team-c", "files", "p2", &["files:read"]),
            service("team-d", "lost", "nowhere", &["files:read"]),
        ];
        let servers = [&p1, &p2];
        let table: &[(&[&str], &str, &[&str])] = &[
            // A tenant's scope at p1: the services of p1 that admit it, not p2's (which does not count team-a).
            (
                &["files:read"],
                "team-a",
                &["team-a/files", "team-b/notes", "team-d/lost"],
            ),
            // The platform namespace of p2: p2's services only (p1 does not admit p2).
            (
                &["files:read"],
                "p2",
                &["p2/files", "team-c/files", "team-d/lost"],
            ),
            // A namespace nobody admits: its own services only (and one whose server is unknown).
            (&["files:read"], "team-c", &["team-c/files", "team-d/lost"]),
            (&["mail:read"], "p1", &["team-b/mail"]),
            (&["files:write"], "team-b", &["team-a/files"]),
            (&["calendar:read"], "p1", &[]),
            // A value edited from mail:read to files:write: the services of both.
            (
                &["mail:read", "files:write"],
                "team-b",
                &["team-a/files", "team-b/mail"],
            ),
        ];
        for (vals, ns, want) in table {
            let got = names(services_using_scope(
                &values(vals),
                ns,
                &services,
                &servers,
                &labels,
            ));
            assert_eq!(got, *want, "{vals:?} in {ns}");
        }
    }

    #[test]
    fn a_namespace_change_concerns_the_scopes_sharing_its_values() {
        let scopes = [
            scope("team-a", "read", "files:read"),
            scope("team-b", "read", "files:read"),
            scope("team-b", "mail", "mail:read"),
            scope("p1", "write", "files:write"),
        ];
        let all: Vec<&MCPScope> = scopes.iter().collect();
        let table: &[(&str, &[&str])] = &[
            ("team-a", &["team-a/read", "team-b/read"]),
            ("team-b", &["team-a/read", "team-b/read", "team-b/mail"]),
            ("p1", &["p1/write"]),
            ("empty", &[]),
        ];
        for (ns, want) in table {
            assert_eq!(names(scopes_sharing_values_with(ns, &all)), *want, "{ns}");
        }
        assert_eq!(
            names(scopes_defining(
                &values(&["files:read", "files:write"]),
                &scopes
            )),
            ["team-a/read", "team-b/read", "p1/write"]
        );
    }

    #[test]
    fn an_edit_concerns_the_values_before_and_after() {
        let read = vec!["files:read".to_owned()];
        let write = vec!["files:write".to_owned()];
        assert_eq!(
            values_then_and_now(&write, Some(&read)),
            values(&["files:read", "files:write"])
        );
        assert_eq!(values_then_and_now(&write, None), values(&["files:write"]));
        assert_eq!(
            values_then_and_now(&write, Some(&write)),
            values(&["files:write"])
        );
    }

    #[test]
    fn a_service_concerns_the_services_calling_it_by_name() {
        let svc = |ns: &str, name: &str| {
            crate::api::cases::mcp_service_in(
                ns,
                name,
                &format!("https://mcp.example.com/{name}"),
                &[],
                None,
            )
        };
        let mut server: AuthorizationServer =
            serde_json::from_value(crate::api::cases::authorization_server()).expect("server");
        server.metadata.namespace = Some("mcp-authz".into());
        server.spec.token_exchange = serde_json::from_value(serde_json::json!([
            {"from": {"name": "notes", "namespace": "a"}, "to": {"name": "reports", "namespace": "b"}, "scopes": ["s"], "header": "x-r"},
            {"from": {"name": "mail", "namespace": "a"}, "audience": "https://mcp.example.com/reports", "scopes": ["s"], "header": "x-r"},
            {"from": {"name": "platform"}, "to": {"name": "reports", "namespace": "b"}, "scopes": ["s"], "header": "x-r"},
            {"from": {"name": "other", "namespace": "a"}, "to": {"name": "reports"}, "scopes": ["s"], "header": "x-r"},
        ]))
        .expect("edges");
        let services = [
            svc("a", "notes"),
            svc("a", "mail"),
            svc("mcp-authz", "platform"),
            svc("a", "other"),
            svc("b", "reports"),
        ];
        let callers: Vec<String> = callers_of(&svc("b", "reports"), &[&server], &services)
            .into_iter()
            .map(tenancy::key_of)
            .collect();
        // Not `mail` (an audience is no service) nor `other` (its `to` is mcp-authz/reports).
        assert_eq!(callers, ["a/notes", "mcp-authz/platform"]);
        assert!(callers_of(&svc("a", "notes"), &[&server], &services).is_empty());
    }
}
