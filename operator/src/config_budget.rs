//! How much of a shared AuthorizationServer's config one namespace may fill.
//!
//! Every service attached to a server adds its resource (URL, display name, scopes) and the scope definitions
//! its namespace owns to one ConfigMap, and the API server refuses a ConfigMap past 1 MiB. Without a share per
//! namespace, one team could create services and scopes until the config no longer applies, and then no team's
//! change would reach the server. Each namespace gets `spec.configBytesPerNamespace`; the services past it, newest
//! claims first, are left out of the config and say why in their status. Other namespaces never notice.
//!
//! Pure: the server's render and each service's reconcile decide the same way.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::api::{AuthorizationServer, MCPScope, MCPService};
use crate::tenancy::{self, NamespaceLabels};

/// The share of the server's config each namespace gets when the server names none.
pub const DEFAULT_BYTES_PER_NAMESPACE: u32 = 64 * 1024;

/// What a resource entry costs beyond its strings (member names, quoting, its holder's uid, its policy's
/// name), and what each scope definition costs beyond its strings: generous, so the sum bounds the bytes
/// rendered.
const RESOURCE_OVERHEAD: usize = 320;
const SCOPE_OVERHEAD: usize = 160;

/// Every service of `services` that `server`'s budget leaves out, by `namespace/name`, with why. `scopes` are
/// those that count at the server ([`tenancy::scopes_at`]).
pub fn left_out(
    server: &AuthorizationServer,
    services: &[MCPService],
    scopes: &[MCPScope],
    labels: &NamespaceLabels,
) -> BTreeMap<String, String> {
    let budget = server
        .spec
        .config_bytes_per_namespace
        .unwrap_or(DEFAULT_BYTES_PER_NAMESPACE) as usize;
    let owners = tenancy::scope_owners(scopes, &tenancy::key_of(server));
    // Only services that would be in the config spend the budget: attached, holding their URL.
    let mut holding: Vec<&MCPService> = services
        .iter()
        .filter(|s| {
            tenancy::attached(s, server, labels)
                && tenancy::resource_holder(s, server, services, labels).is_none()
        })
        .collect();
    holding.sort_by_key(|s| (s.namespace(), tenancy::service_claim(s)));
    let mut spent: BTreeMap<String, (usize, BTreeSet<&str>)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for service in holding {
        let namespace = service.namespace().unwrap_or_default();
        let (total, defined) = spent.entry(namespace.clone()).or_default();
        *total += cost(service, &namespace, &owners, defined);
        if *total > budget {
            out.insert(
                tenancy::key_of(service),
                format!(
                    "the services of namespace {namespace} need {total} bytes of AuthorizationServer {}'s config with this one, past the {budget} each namespace may fill (spec.configBytesPerNamespace); the newest are left out",
                    tenancy::key_of(server)
                ),
            );
        }
    }
    out
}

/// What `service` adds to its server's config: its resource entry, and the definitions of the scopes it
/// offers that its own namespace owns and no earlier service of the namespace brought (`defined`). Scopes the
/// server's namespace owns are the platform's, counted against no team.
fn cost<'a>(
    service: &MCPService,
    namespace: &str,
    owners: &BTreeMap<&'a str, &'a MCPScope>,
    defined: &mut BTreeSet<&'a str>,
) -> usize {
    let spec = &service.spec;
    let mut bytes = RESOURCE_OVERHEAD
        + spec.resource_url.len()
        + spec
            .display_name
            .as_ref()
            .map_or(service.name_any().len(), String::len);
    for value in &spec.scopes {
        bytes += value.len() + 4;
        let Some((&owned, scope)) = owners.get_key_value(value.as_str()) else {
            continue;
        };
        if scope.namespace().as_deref() == Some(namespace) && defined.insert(owned) {
            bytes += SCOPE_OVERHEAD
                + scope.spec.value.len()
                + scope.spec.description.len()
                + scope
                    .spec
                    .implies
                    .iter()
                    .map(|v| v.len() + 4)
                    .sum::<usize>();
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(budget: Option<u32>) -> AuthorizationServer {
        let mut spec = json!({"issuer": "https://auth.example.com", "login": {},
                              "allowedNamespaces": {"from": "All"}});
        if let Some(budget) = budget {
            spec["configBytesPerNamespace"] = json!(budget);
        }
        serde_json::from_value(json!({
            "apiVersion": "mcp-authz.io/v1alpha1", "kind": "AuthorizationServer",
            "metadata": {"name": "shared", "namespace": "platform", "uid": "srv"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn service(namespace: &str, name: &str, created: &str, scopes: &[&str]) -> MCPService {
        serde_json::from_value(json!({
            "apiVersion": "mcp-authz.io/v1alpha1", "kind": "MCPService",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("{namespace}-{name}"),
                         "creationTimestamp": created},
            "spec": {
                "selector": {"app": name},
                "resourceUrl": format!("https://mcp.example.com/{namespace}/{name}"),
                "authorizationServerRef": {"name": "shared", "namespace": "platform"},
                "upstream": {"port": 8080},
                "scopes": scopes,
            },
        }))
        .unwrap()
    }

    fn scope(namespace: &str, value: &str, description_bytes: usize) -> MCPScope {
        serde_json::from_value(json!({
            "apiVersion": "mcp-authz.io/v1alpha1", "kind": "MCPScope",
            "metadata": {"name": value.replace(':', "-"), "namespace": namespace,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"value": value, "description": "d".repeat(description_bytes)},
        }))
        .unwrap()
    }

    fn out(
        server: &AuthorizationServer,
        services: &[MCPService],
        scopes: &[MCPScope],
    ) -> Vec<String> {
        left_out(server, services, scopes, &NamespaceLabels::new())
            .into_keys()
            .collect()
    }

    #[test]
    fn a_namespace_past_its_share_loses_its_newest_services_and_no_one_else_does() {
        let big = |i: usize| format!("big:{i}");
        let values: Vec<String> = (0..8).map(big).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        // Each scope definition costs about 160 + 5 + 500 bytes: eight of them are about 5.3 KiB.
        let scopes: Vec<MCPScope> = values.iter().map(|v| scope("team-b", v, 500)).collect();
        let services = vec![
            service("team-a", "files", "2026-01-01T00:00:00Z", &[]),
            service("team-b", "first", "2026-01-02T00:00:00Z", &values),
            service("team-b", "second", "2026-01-03T00:00:00Z", &[]),
            service("team-b", "third", "2026-01-04T00:00:00Z", &[]),
        ];
        // The budget fits the first service and its definitions, and one more small entry.
        let server = server(Some(6_150));
        assert_eq!(
            out(&server, &services, &scopes),
            ["team-b/third".to_owned()]
        );
        // Definitions are counted once per namespace: a second service offering them adds only their values.
        let mut again = services.clone();
        again[2] = service("team-b", "second", "2026-01-03T00:00:00Z", &values);
        assert_eq!(
            out(&server, &again, &scopes),
            ["team-b/second".to_owned(), "team-b/third".to_owned()]
        );
        // The default share takes all of them.
        assert!(out(&self::server(None), &services, &scopes).is_empty());
    }

    #[test]
    fn the_platforms_scopes_and_services_not_in_the_config_spend_nothing() {
        let platform: Vec<MCPScope> = (0..8)
            .map(|i| scope("platform", &format!("p:{i}"), 500))
            .collect();
        let values: Vec<String> = (0..8).map(|i| format!("p:{i}")).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let mut services = vec![
            service("team-b", "one", "2026-01-02T00:00:00Z", &values),
            service("team-b", "two", "2026-01-03T00:00:00Z", &values),
        ];
        let server = server(Some(1_000));
        assert!(out(&server, &services, &platform).is_empty());
        // A service naming another server is no part of this one's budget.
        let mut elsewhere = service("team-b", "three", "2026-01-04T00:00:00Z", &[]);
        elsewhere.spec.authorization_server_ref.name = "other".into();
        services.push(elsewhere);
        assert!(out(&server, &services, &platform).is_empty());
        services.push(service("team-b", "four", "2026-01-05T00:00:00Z", &[]));
        assert_eq!(
            out(&server, &services, &platform),
            ["team-b/four".to_owned()]
        );
    }

    #[test]
    fn the_reason_names_the_namespace_the_bytes_and_the_knob() {
        let services = vec![service("team-b", "one", "2026-01-02T00:00:00Z", &[])];
        let why = left_out(&server(Some(100)), &services, &[], &NamespaceLabels::new());
        assert_eq!(
            why["team-b/one"],
            "the services of namespace team-b need 357 bytes of AuthorizationServer platform/shared's config with this one, past the 100 each namespace may fill (spec.configBytesPerNamespace); the newest are left out"
        );
    }
}
