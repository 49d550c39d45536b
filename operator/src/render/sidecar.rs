//! MCPService -> the sidecar config (in a ConfigMap its pods mount) and the NetworkPolicy that
//! leaves only the sidecar port open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use mcp_authz_authserver::resource_servers;
use mcp_authz_sidecar::caller::Callers;
use mcp_authz_sidecar::config::{
    DownstreamTarget, DownstreamTokens, IntrospectionConfig, ScopeRule, SidecarConfig,
    UnmatchedPolicy,
};

use super::exchange::Peers;
use super::{RenderError, RenderedObject, object, owner_ref, visible_scopes};
use crate::api::mcp_service::{AccessRule, DefaultDecision, RuleCallers};
use crate::api::{AuthorizationServer, MCPScope, MCPService};
use crate::naming;

/// Path of the JWKS on the authorization server's in-cluster Service.
pub const JWKS_PATH: &str = "/jwks";
/// Path of the introspection endpoint on the authorization server's in-cluster Service.
pub const INTROSPECTION_PATH: &str = "/introspect";
/// Path of the token endpoint (token exchange for downstreams).
pub const TOKEN_PATH: &str = "/token";
/// Port of the authorization server's OAuth endpoints (its Service and container).
pub const AUTHSERVER_PORT: u16 = 8080;
/// Port of the same endpoints over TLS, the one sidecars use unless the server declares a mesh.
pub const AUTHSERVER_TLS_PORT: u16 = 8443;

/// The base URL sidecars reach `server` at inside the cluster: https on [`AUTHSERVER_TLS_PORT`], or plain
/// http on [`AUTHSERVER_PORT`] when the server's `inClusterTransport` is `Mesh`. The host is the Service's
/// `<name>.<namespace>.svc`, one of the serving certificate's names.
pub fn in_cluster_base(server: &AuthorizationServer) -> String {
    let host = format!(
        "{}.{}.svc",
        naming::authserver(&server.name_any()),
        server.namespace().unwrap_or_default()
    );
    if server.spec.in_cluster_transport.tls() {
        format!("https://{host}:{AUTHSERVER_TLS_PORT}")
    } else {
        format!("http://{host}:{AUTHSERVER_PORT}")
    }
}

/// The sidecar config of `service`, whose tokens `server` issues.
pub fn sidecar_config(
    service: &MCPService,
    server: &AuthorizationServer,
    scopes: &[MCPScope],
    peers: Peers<'_>,
) -> Result<SidecarConfig, RenderError> {
    let spec = &service.spec;
    let server_ns = server.namespace().unwrap_or_default();
    let visible = visible_scopes(service, &server_ns, scopes);
    let offered: Vec<String> = spec
        .scopes
        .iter()
        .filter(|s| visible.contains_key(*s))
        .cloned()
        .collect();
    let scope_implies: BTreeMap<String, Vec<String>> = offered
        .iter()
        .filter_map(|v| {
            visible
                .get(v)
                .filter(|s| !s.spec.implies.is_empty())
                .map(|s| (v.clone(), s.spec.implies.clone()))
        })
        .collect();
    let rules = sidecar_rules(&spec.rules)
        .into_iter()
        .map(|(_, rule)| rule)
        .collect();
    let port = |p: i32| u16::try_from(p).unwrap_or(0);
    let base = in_cluster_base(server);
    let jwks_uri = format!("{base}{JWKS_PATH}");
    // Only the required fields are given: the sidecar's own serde defaults fill in limits, JWKS
    // cadence and identity headers, so the two crates never disagree on them.
    let mut config: SidecarConfig = serde_json::from_value(serde_json::json!({
        "upstream": format!("http://127.0.0.1:{}", port(spec.upstream.port)),
        "resource": spec.resource_url,
        "issuer": server.spec.issuer,
        "jwksUri": jwks_uri,
    }))
    .map_err(|e| RenderError::Serialize {
        what: "sidecar config".into(),
        message: e.to_string(),
    })?;
    if server.spec.in_cluster_transport.tls() {
        // The bundle rides in the same ConfigMap as the config, so the kubelet swaps both at once.
        config.issuer_ca_file =
            Some(PathBuf::from(naming::SIDECAR_CONFIG_DIR).join(naming::SIDECAR_ISSUER_CA_FILE));
    }
    config.listen = SocketAddr::from(([0, 0, 0, 0], port(spec.sidecar.port)));
    config.admin_listen = SocketAddr::from(([0, 0, 0, 0], port(spec.sidecar.admin_port)));
    config.mcp_path = spec.upstream.path.clone();
    // As the server's config names the URL's holder: each refuses the tokens of the other holders.
    config.holder = service.uid().unwrap_or_default();
    config.scopes_supported = basic_scopes(&offered, &visible);
    config.scope_implies = scope_implies;
    config.rules = rules;
    config.rate_limits = spec.rate_limits.clone();
    config.unmatched = match spec.default_decision {
        DefaultDecision::Deny => UnmatchedPolicy::Deny,
        DefaultDecision::AllowAuthenticated => UnmatchedPolicy::Allow,
    };
    let sensitive: Vec<String> = offered
        .iter()
        .filter(|v| visible.get(*v).is_some_and(|s| s.spec.sensitive))
        .cloned()
        .collect();
    let edges = super::exchange::kept(server, service, &offered, peers);
    let providers = super::exchange::providers_of(server, service, &edges);
    if !edges.is_empty() || !providers.is_empty() {
        let targets: Vec<DownstreamTarget> = edges
            .into_iter()
            .map(|e| DownstreamTarget {
                audience: e.audience,
                header: e.header,
                connect_url: None,
            })
            .chain(providers.into_iter().map(|p| DownstreamTarget {
                audience: format!(
                    "{}{}",
                    mcp_authz_authserver::config::PROVIDER_AUDIENCE_PREFIX,
                    p.id
                ),
                header: p.header,
                connect_url: Some(p.connect_url),
            }))
            .collect();
        // The sidecar's own default fills in the time limit.
        let tokens: DownstreamTokens = serde_json::from_value(serde_json::json!({
            "tokenEndpoint": format!("{base}{TOKEN_PATH}"),
            "clientId": resource_servers::client_id(&spec.resource_url),
            "privateKeyFile": PathBuf::from(naming::SIDECAR_CREDENTIALS_DIR).join(naming::SIDECAR_KEY_FILE),
            "targets": targets,
        }))
        .map_err(|e| RenderError::Serialize {
            what: "sidecar downstream tokens".into(),
            message: e.to_string(),
        })?;
        config.downstream_tokens = Some(tokens);
    }
    if !sensitive.is_empty() {
        config.introspection = Some(introspection(
            &format!("{base}{INTROSPECTION_PATH}"),
            &spec.resource_url,
            PathBuf::from(naming::SIDECAR_CREDENTIALS_DIR).join(naming::SIDECAR_KEY_FILE),
            sensitive,
        )?);
    }
    Ok(config)
}

/// The sidecar's rules for an MCPService's `rules`, in order, each with the position of the `spec.rules` entry it
/// came from: one sidecar rule per method and name, since a sidecar rule matches one method glob and one name glob.
pub fn sidecar_rules(rules: &[AccessRule]) -> Vec<(usize, ScopeRule)> {
    let mut out = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        for method in &rule.methods {
            let names = rule.names.iter().map(|n| Some(n.clone()));
            let names: Vec<Option<String>> = if rule.names.is_empty() {
                vec![None]
            } else {
                names.collect()
            };
            for name in names {
                let scopes = rule.scopes.clone();
                let method = method.clone();
                let callers = match rule.callers {
                    RuleCallers::Anyone => Callers::Anyone,
                    RuleCallers::People => Callers::People,
                    RuleCallers::Machines => Callers::Machines,
                };
                out.push((
                    index,
                    ScopeRule {
                        method,
                        name,
                        scopes,
                        callers,
                    },
                ));
            }
        }
    }
    out
}

/// The introspection settings of a sidecar: it authenticates as the resource server of `resource` with the key
/// in `key_file`; the sidecar's own defaults fill in the cache and timeout.
pub fn introspection(
    endpoint: &str,
    resource: &str,
    key_file: PathBuf,
    sensitive_scopes: Vec<String>,
) -> Result<IntrospectionConfig, RenderError> {
    serde_json::from_value(serde_json::json!({
        "endpoint": endpoint,
        "clientId": resource_servers::client_id(resource),
        "privateKeyFile": key_file,
        "sensitiveScopes": sensitive_scopes,
    }))
    .map_err(|e| RenderError::Serialize {
        what: "sidecar introspection config".into(),
        message: e.to_string(),
    })
}

/// The Secret holding `service`'s resource-server key, derived from its server's `root`. Kept apart from
/// [`render`]: the root is state read from the cluster, not something a manifest holds.
pub fn credentials_secret(
    service: &MCPService,
    root: &resource_servers::Root,
) -> Result<RenderedObject, RenderError> {
    let pem = root.private_key_pem_for(
        &service.spec.resource_url,
        service.uid().as_deref().unwrap_or_default(),
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(naming::sidecar_credentials(&service.name_any())),
            namespace: service.namespace(),
            ..Default::default()
        },
        data: Some(
            [(
                naming::SIDECAR_KEY_FILE.to_owned(),
                ByteString(pem.into_bytes()),
            )]
            .into(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    };
    object(secret, owner_ref(service))
}

/// What a client should ask for first (RFC 9728 `scopes_supported`, the 401 challenge's `scope`): the
/// offered scopes that are not sensitive. Sensitive ones are reached by step-up, on the 403 that names
/// them, so an agent does not ask a person for write access before it needs it. When every scope is
/// sensitive there is no smaller set, and all of them are listed.
fn basic_scopes(offered: &[String], visible: &BTreeMap<String, &MCPScope>) -> Vec<String> {
    let basic: Vec<String> = offered
        .iter()
        .filter(|v| visible.get(*v).is_some_and(|s| !s.spec.sensitive))
        .cloned()
        .collect();
    if basic.is_empty() {
        offered.to_vec()
    } else {
        basic
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

/// The ConfigMap and NetworkPolicy of `service`. `issuer_ca` is the CA bundle the server's serving
/// certificate chains to (read from its TLS Secret); with a TLS transport the ConfigMap carries it beside the
/// config. The CA certificates are public: copying them into tenant namespaces gives nothing away.
/// `scrapers` may reach the sidecar's admin port; nobody else.
pub fn render(
    service: &MCPService,
    server: &AuthorizationServer,
    scopes: &[MCPScope],
    peers: Peers<'_>,
    issuer_ca: Option<&str>,
    scrapers: Option<&super::Scrapers>,
) -> Result<Vec<RenderedObject>, RenderError> {
    let name = service.name_any();
    let namespace = service.namespace().unwrap_or_default();
    let config = sidecar_config(service, server, scopes, peers)?;
    // The last line, as for the server's: the schema admits what the sidecar may still refuse (an MCP path under
    // /.well-known/), and a ConfigMap it refuses would keep every new pod of the service from starting.
    config.validate().map_err(|e| RenderError::Invalid {
        field: "spec".into(),
        message: format!("the rendered sidecar config would be refused: {e}"),
    })?;
    let yaml = serde_saphyr::to_string(&config).map_err(|e| RenderError::Serialize {
        what: "sidecar config".into(),
        message: e.to_string(),
    })?;
    let mut data: BTreeMap<String, String> =
        [(naming::SIDECAR_CONFIG_FILE.to_owned(), yaml)].into();
    if let (Some(_), Some(bundle)) = (&config.issuer_ca_file, issuer_ca) {
        data.insert(naming::SIDECAR_ISSUER_CA_FILE.to_owned(), bundle.to_owned());
    }
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(naming::sidecar_config_map(&name)),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(naming::network_policy(&name)),
            namespace: Some(namespace),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(service.spec.selector.clone()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            // MCP traffic through the sidecar, from anywhere (that is the service). The sidecar's admin port
            // (/metrics, /healthz) only from the configured scrapers: it serves no MCP and no secrets, but
            // nothing in other tenants' namespaces needs it. The MCP server's own port is never reachable
            // from outside the pod.
            ingress: Some(
                [
                    Some(NetworkPolicyIngressRule {
                        ports: Some(vec![tcp(service.spec.sidecar.port)]),
                        from: None,
                    }),
                    scrapers.map(|scrapers| NetworkPolicyIngressRule {
                        ports: Some(vec![tcp(service.spec.sidecar.admin_port)]),
                        from: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector {
                                match_labels: Some(scrapers.namespaces.clone()),
                                ..Default::default()
                            }),
                            pod_selector: Some(LabelSelector {
                                match_labels: Some(scrapers.pods.clone()).filter(|p| !p.is_empty()),
                                ..Default::default()
                            }),
                            ip_block: None,
                        }]),
                    }),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            egress: None,
        }),
    };
    let owner = owner_ref(service);
    Ok(vec![
        object(config_map, owner.clone())?,
        object(policy, owner)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;
    use serde_json::json;

    fn server() -> AuthorizationServer {
        let mut v = cases::authorization_server();
        v["metadata"]["namespace"] = json!("mcp-authz");
        serde_json::from_value(v).expect("server")
    }

    fn service() -> MCPService {
        let mut v = cases::mcp_service();
        v["metadata"]["namespace"] = json!("apps");
        v["metadata"]["uid"] = json!("1234");
        v["spec"]["authorizationServerRef"] = json!({"name": "auth", "namespace": "mcp-authz"});
        serde_json::from_value(v).expect("service")
    }

    fn scope(ns: &str, value: &str, implies: &[&str]) -> MCPScope {
        let mut v = cases::mcp_scope();
        v["metadata"] = json!({"name": value.replace(':', "-"), "namespace": ns});
        v["spec"]["value"] = json!(value);
        v["spec"]["implies"] = json!(implies);
        serde_json::from_value(v).expect("scope")
    }

    #[test]
    fn callers_reach_every_sidecar_rule_of_their_access_rule_and_stay_out_of_configs_without_them()
    {
        let mut v = cases::mcp_service();
        v["spec"]["rules"] = json!([
            {"methods": ["tools/call"], "names": ["deploy", "rollback"], "scopes": [], "callers": "Machines"},
            {"methods": ["tools/call", "prompts/get"], "names": ["mine"], "scopes": [], "callers": "People"},
            {"methods": ["tools/call"], "names": ["any"], "scopes": []},
        ]);
        let service: MCPService = serde_json::from_value(v).expect("service");
        let rules = sidecar_rules(&service.spec.rules);
        let callers: Vec<(usize, Option<&str>, Callers)> = rules
            .iter()
            .map(|(i, r)| (*i, r.name.as_deref(), r.callers))
            .collect();
        assert_eq!(
            callers,
            [
                (0, Some("deploy"), Callers::Machines),
                (0, Some("rollback"), Callers::Machines),
                (1, Some("mine"), Callers::People),
                (1, Some("mine"), Callers::People),
                (2, Some("any"), Callers::Anyone),
            ]
        );
        // A rule for anyone renders as before, so a config without callers reads the same to an older sidecar.
        let rendered: Vec<serde_json::Value> = rules
            .iter()
            .map(|(_, r)| serde_json::to_value(r).expect("json"))
            .collect();
        assert_eq!(rendered[0]["callers"], "machines");
        assert_eq!(rendered[2]["callers"], "people");
        assert_eq!(
            rendered[4],
            json!({"method": "tools/call", "name": "any", "scopes": []})
        );
    }

    #[test]
    fn config_carries_the_service_and_its_server() {
        let scopes = [
            scope("mcp-authz", "files:read", &[]),
            scope("apps", "files:write", &["files:read"]),
        ];
        let c = sidecar_config(&service(), &server(), &scopes, Peers::NONE).expect("config");
        assert_eq!(c.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(c.admin_listen, "0.0.0.0:9464".parse().expect("addr"));
        assert_eq!(c.upstream, "http://127.0.0.1:8080");
        assert_eq!(c.resource, "https://mcp.example.com/files");
        // The holder the server's config names for the URL: tokens issued under another are refused.
        assert_eq!(c.holder, "1234");
        assert_eq!(c.mcp_path, "/mcp");
        assert_eq!(c.issuer, "https://auth.example.com");
        assert_eq!(
            c.jwks_uri,
            "https://auth-authserver.mcp-authz.svc:8443/jwks"
        );
        assert_eq!(
            c.issuer_ca_file,
            Some(PathBuf::from("/etc/mcp-authz/issuer-ca.crt"))
        );
        assert_eq!(c.scopes_supported, ["files:read", "files:write"]);
        assert_eq!(
            c.scope_implies.get("files:write"),
            Some(&vec!["files:read".to_owned()])
        );
        assert_eq!(c.unmatched, UnmatchedPolicy::Deny);
        assert_eq!(
            c.introspection, None,
            "nothing sensitive, nothing to introspect"
        );
        assert_eq!(
            c.rules,
            [
                ScopeRule {
                    method: "tools/call".into(),
                    name: Some("read_*".into()),
                    scopes: vec!["files:read".into()],
                    callers: Callers::Anyone,
                },
                ScopeRule {
                    method: "tools/call".into(),
                    name: Some("write_*".into()),
                    scopes: vec!["files:write".into()],
                    callers: Callers::Anyone,
                },
            ]
        );
        c.validate().expect("the sidecar accepts what we render");
    }

    #[test]
    fn sensitive_scopes_are_reached_by_step_up_not_asked_first() {
        let mut write = scope("apps", "files:write", &["files:read"]);
        write.spec.sensitive = true;
        let both = [scope("mcp-authz", "files:read", &[]), write.clone()];
        let c = sidecar_config(&service(), &server(), &both, Peers::NONE).expect("config");
        assert_eq!(c.scopes_supported, ["files:read"]);
        // ...and checked against revocation, as the service's own resource server.
        let introspection = c.introspection.expect("sensitive scopes are introspected");
        assert_eq!(
            introspection.endpoint,
            "https://auth-authserver.mcp-authz.svc:8443/introspect"
        );
        assert_eq!(
            introspection.client_id,
            "urn:mcp-authz:resource-server:https://mcp.example.com/files"
        );
        assert_eq!(
            introspection.private_key_file,
            PathBuf::from("/var/run/secrets/mcp-authz/introspection-key.pem")
        );
        assert_eq!(introspection.sensitive_scopes, ["files:write"]);

        let mut read = scope("mcp-authz", "files:read", &[]);
        read.spec.sensitive = true;
        let c = sidecar_config(&service(), &server(), &[read, write], Peers::NONE).expect("config");
        assert_eq!(
            c.scopes_supported,
            ["files:read", "files:write"],
            "no smaller set exists"
        );
    }

    #[test]
    fn missing_scopes_are_left_out_not_invented() {
        let c = sidecar_config(
            &service(),
            &server(),
            &[scope("elsewhere", "files:write", &[])],
            Peers::NONE,
        )
        .expect("config");
        assert!(c.scopes_supported.is_empty());
    }

    #[test]
    fn rendered_yaml_round_trips_through_the_sidecar_parser() {
        let objects = render(
            &service(),
            &server(),
            &[scope("apps", "files:read", &[])],
            Peers::NONE,
            Some("CA"),
            None,
        )
        .expect("render");
        let cm = &objects[0];
        assert_eq!(
            (cm.kind.as_str(), cm.name.as_str(), cm.namespace.as_str()),
            ("ConfigMap", "files-mcp-authz-sidecar", "apps")
        );
        let text = cm.body["data"]["sidecar.yaml"].as_str().expect("yaml");
        let parsed = SidecarConfig::parse(text).expect("sidecar parses it");
        assert_eq!(
            parsed,
            sidecar_config(
                &service(),
                &server(),
                &[scope("apps", "files:read", &[])],
                Peers::NONE
            )
            .expect("config")
        );
        assert_eq!(
            cm.body["metadata"]["ownerReferences"][0]["kind"],
            "MCPService"
        );
        assert_eq!(
            cm.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "mcp-authz-operator"
        );
    }

    #[test]
    fn rate_limits_reach_the_sidecar_as_declared() {
        let mut svc = service();
        svc.spec.rate_limits = serde_json::from_value(serde_json::json!([
            {"per": "client", "method": "tools/call", "requestsPerSecond": 5.0, "burst": 10},
            {"per": "tool", "method": "tools/call", "name": "delete_*", "requestsPerSecond": 0.5, "burst": 1},
        ]))
        .expect("limits");
        let c = sidecar_config(
            &svc,
            &server(),
            &[scope("apps", "files:read", &[])],
            Peers::NONE,
        )
        .expect("config");
        assert_eq!(c.rate_limits, svc.spec.rate_limits);
        let text = serde_saphyr::to_string(&c).expect("yaml");
        assert_eq!(
            SidecarConfig::parse(&text).expect("parses").rate_limits,
            svc.spec.rate_limits
        );
        // None declared: none rendered, and the key is left out.
        let plain = sidecar_config(&service(), &server(), &[], Peers::NONE).expect("config");
        assert!(plain.rate_limits.is_empty());
        assert!(
            !serde_saphyr::to_string(&plain)
                .expect("yaml")
                .contains("rateLimits")
        );
    }

    #[test]
    fn credentials_hold_the_key_derived_for_the_resource() {
        let root = resource_servers::Root::generate().expect("root");
        let secret = credentials_secret(&service(), &root).expect("secret");
        assert_eq!(
            (
                secret.kind.as_str(),
                secret.name.as_str(),
                secret.namespace.as_str()
            ),
            ("Secret", "files-mcp-authz-sidecar-credentials", "apps")
        );
        assert_eq!(
            secret.body["metadata"]["ownerReferences"][0]["kind"],
            "MCPService"
        );
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(
                secret.body["data"]["introspection-key.pem"]
                    .as_str()
                    .expect("key"),
            )
            .expect("base64");
        // Derived for the service that holds the URL (its uid), so an earlier holder's copy is refused.
        assert_eq!(
            String::from_utf8(pem).expect("utf-8"),
            root.private_key_pem_for(
                "https://mcp.example.com/files",
                &service().uid().unwrap_or_default()
            )
        );
    }

    #[test]
    fn network_policy_opens_the_sidecar_port_and_the_admin_port_only_to_scrapers() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let monitoring = crate::render::Scrapers {
            namespaces: labels(&[("kubernetes.io/metadata.name", "monitoring")]),
            pods: labels(&[("app.kubernetes.io/name", "prometheus")]),
        };
        let any_pod = crate::render::Scrapers {
            namespaces: labels(&[("team", "observability")]),
            pods: BTreeMap::new(),
        };
        let mcp = json!({"ports": [{"port": 8443, "protocol": "TCP"}]});
        let table = [
            (
                None,
                json!([mcp]),
                "no scrapers: the admin port stays closed",
            ),
            (
                Some(&monitoring),
                json!([mcp, {
                    "ports": [{"port": 9464, "protocol": "TCP"}],
                    "from": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
                    }]
                }]),
                "metrics only from Prometheus in the monitoring namespace",
            ),
            (
                Some(&any_pod),
                json!([mcp, {
                    "ports": [{"port": 9464, "protocol": "TCP"}],
                    "from": [{
                        "namespaceSelector": {"matchLabels": {"team": "observability"}},
                        "podSelector": {}
                    }]
                }]),
                "any pod of the scrapers' namespaces",
            ),
        ];
        for (scrapers, ingress, why) in table {
            let objects = render(
                &service(),
                &server(),
                &[],
                Peers::NONE,
                Some("CA"),
                scrapers,
            )
            .expect("render");
            let np = &objects[1];
            assert_eq!(np.kind, "NetworkPolicy");
            assert_eq!(
                np.body["spec"]["podSelector"]["matchLabels"],
                json!({"app": "files"})
            );
            assert_eq!(np.body["spec"]["ingress"], ingress, "{why}");
            assert_eq!(np.body["spec"]["policyTypes"], json!(["Ingress"]));
        }
    }

    #[test]
    fn scraper_labels_parse_as_equalities() {
        let parsed = crate::render::parse_labels(
            "kubernetes.io/metadata.name=monitoring, app.kubernetes.io/name=prometheus",
        )
        .expect("labels");
        assert_eq!(
            parsed.into_iter().collect::<Vec<_>>(),
            [
                ("app.kubernetes.io/name".to_owned(), "prometheus".to_owned()),
                (
                    "kubernetes.io/metadata.name".to_owned(),
                    "monitoring".to_owned()
                ),
            ]
        );
        assert_eq!(
            crate::render::parse_labels("").expect("empty"),
            BTreeMap::new()
        );
        assert_eq!(
            crate::render::parse_labels("app in (a,b)"),
            Err("\"app in (a\" is not key=value".to_owned())
        );
        assert_eq!(
            crate::render::parse_labels("=x"),
            Err("\"=x\" has an empty key".to_owned())
        );
        assert_eq!(
            crate::render::Scrapers::from_labels(
                None,
                Some(&BTreeMap::from([("a".into(), "b".into())]))
            ),
            None,
            "pods without namespaces: closed, never every namespace"
        );
    }

    /// What a sidecar dials and trusts, per transport mode of its server.
    #[test]
    fn transport_modes() {
        let sensitive = {
            let mut v = cases::mcp_scope();
            v["metadata"] = json!({"name": "files-write", "namespace": "apps"});
            v["spec"]["value"] = json!("files:write");
            v["spec"]["sensitive"] = json!(true);
            serde_json::from_value::<MCPScope>(v).expect("scope")
        };
        let cases = [
            (
                json!(null),
                "https://auth-authserver.mcp-authz.svc:8443",
                Some("/etc/mcp-authz/issuer-ca.crt"),
            ),
            (
                json!({"mode": "OperatorTLS"}),
                "https://auth-authserver.mcp-authz.svc:8443",
                Some("/etc/mcp-authz/issuer-ca.crt"),
            ),
            (
                json!({"mode": "CertManagerTLS", "certManagerIssuerRef": {"name": "ca"}}),
                "https://auth-authserver.mcp-authz.svc:8443",
                Some("/etc/mcp-authz/issuer-ca.crt"),
            ),
            (
                json!({"mode": "Mesh"}),
                "http://auth-authserver.mcp-authz.svc:8080",
                None,
            ),
        ];
        for (transport, base, ca_file) in cases {
            let mut v = serde_json::to_value(server()).expect("json");
            if !transport.is_null() {
                v["spec"]["inClusterTransport"] = transport.clone();
            }
            let server: AuthorizationServer = serde_json::from_value(v).expect("server");
            let c = sidecar_config(
                &service(),
                &server,
                std::slice::from_ref(&sensitive),
                Peers::NONE,
            )
            .expect("config");
            assert_eq!(c.jwks_uri, format!("{base}/jwks"), "{transport}");
            assert_eq!(
                c.introspection.expect("introspected").endpoint,
                format!("{base}/introspect"),
                "{transport}"
            );
            assert_eq!(c.issuer_ca_file, ca_file.map(PathBuf::from), "{transport}");
            let objects = render(
                &service(),
                &server,
                std::slice::from_ref(&sensitive),
                Peers::NONE,
                Some("BUNDLE"),
                None,
            )
            .expect("render");
            assert_eq!(
                objects[0].body["data"]["issuer-ca.crt"].as_str(),
                ca_file.map(|_| "BUNDLE"),
                "{transport}: the bundle rides with the config only when it is used"
            );
        }
    }
}
