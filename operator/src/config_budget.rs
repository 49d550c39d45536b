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

use crate::api::{AuthorizationServer, CIMDPolicy, MCPScope, MCPService};
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
    policies: &[CIMDPolicy],
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
    let mut spent: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for service in holding {
        let namespace = service.namespace().unwrap_or_default();
        let (total, counted) = spent.entry(namespace.clone()).or_default();
        *total += cost(service, &namespace, &owners, policies, counted);
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

/// What `service` adds to its server's config: its resource entry; the definitions of the scopes it offers that
/// its own namespace owns, and the CIMDPolicy it names (a policy lives in the service's namespace), each counted
/// once per namespace (`counted`). Scopes the server's namespace owns are the platform's, counted against no team.
/// Strings count as JSON writes them, escapes included: no shorter than the YAML rendered.
fn cost(
    service: &MCPService,
    namespace: &str,
    owners: &BTreeMap<&str, &MCPScope>,
    policies: &[CIMDPolicy],
    counted: &mut BTreeSet<String>,
) -> usize {
    let spec = &service.spec;
    let mut bytes = RESOURCE_OVERHEAD
        + written(&spec.resource_url)
        + written(spec.display_name.as_deref().unwrap_or(&service.name_any()));
    for value in &spec.scopes {
        bytes += written(value);
        let Some(scope) = owners.get(value.as_str()) else {
            continue;
        };
        if scope.namespace().as_deref() == Some(namespace)
            && counted.insert(format!("scope {value}"))
        {
            bytes += SCOPE_OVERHEAD + written_json(&scope.spec);
        }
    }
    if let Some(Ok(policy)) = crate::render::service_policy(service, policies) {
        let key = crate::render::cimd::policy_key(policy);
        if counted.insert(format!("policy {key}")) {
            bytes += SCOPE_OVERHEAD + written_json(&crate::render::cimd::policy(policy));
        }
    }
    bytes
}

/// The bytes of `text` as a JSON string, quotes and escapes included.
fn written(text: &str) -> usize {
    written_json(&text)
}

/// JSON's length, and an eighth more: YAML folds long text at 80 columns and indents each folded line as deep as
/// its member sits.
fn written_json(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |json| json.len() + json.len() / 8)
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
        left_out(server, services, scopes, &[], &NamespaceLabels::new())
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
        // The budget fits the first service with its definitions and the second, with 10 bytes to spare.
        let owners = tenancy::scope_owners(&scopes, "platform/shared");
        let mut counted = BTreeSet::new();
        let fits: usize = services[1..3]
            .iter()
            .map(|s| cost(s, "team-b", &owners, &[], &mut counted))
            .sum();
        assert!(fits > 5_000, "{fits}");
        let server = server(Some(u32::try_from(fits).unwrap() + 10));
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
    fn strings_count_no_shorter_than_the_yaml_renders_them() {
        for text in [
            "plain text",
            "quotes \" and \\ backslashes",
            "\u{1}\u{7}\u{1b}\u{7f}\u{85}\u{9f}",
            "line\nbreaks\r\tand tabs",
            "\u{2028}\u{2029}\u{feff}",
            "é 日本語 🙂",
            ": - # leading indicators",
        ] {
            let long = text.repeat(20);
            // As deep as a resource's member sits in the server's config.
            let nested = |text: &str| {
                serde_saphyr::to_string(&serde_json::json!({"resources": [{"displayName": text}]}))
                    .unwrap()
            };
            let yaml = nested(&long);
            let grew = yaml.len() - nested("").len();
            assert!(written(&long) >= grew, "{text:?}: {grew} {yaml}");
        }
    }

    #[test]
    fn the_reason_names_the_namespace_the_bytes_and_the_knob() {
        let services = vec![service("team-b", "one", "2026-01-02T00:00:00Z", &[])];
        let why = left_out(
            &server(Some(100)),
            &services,
            &[],
            &[],
            &NamespaceLabels::new(),
        );
        assert_eq!(
            why["team-b/one"],
            "the services of namespace team-b need 365 bytes of AuthorizationServer platform/shared's config with this one, past the 100 each namespace may fill (spec.configBytesPerNamespace); the newest are left out"
        );
    }
}
