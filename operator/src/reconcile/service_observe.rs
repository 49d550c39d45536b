//! The decision of an MCPService reconcile, apart from its I/O: from what the caches and a few reads say
//! ([`Facts`]), what to apply, whether to take its key back, and the conditions to report ([`observe`]).
//! The reconcile in [`super::mcp_service`] gathers the facts and carries the observation out.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use mcp_authz_authserver::resource_servers::Root;

use super::mcp_service::{injected_pods, outdated_pods, raw_port_services, sidecars_current};
use crate::api::{AuthorizationServer, CIMDPolicy, MCPScope, MCPService};
use crate::naming;
use crate::render::exchange::Peers;
use crate::render::{
    RenderError, RenderedObject, Scrapers, missing_scopes, service_policy, sidecar,
};
use crate::status::{Observed, Refusal};
use crate::tenancy::{self, NamespaceLabels};

/// How a service stands with the server it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// The server does not exist.
    NoServer,
    /// The server does not admit the service's namespace (`allowedNamespaces`, with its description).
    NotAdmitted(String),
    /// The server's `resourceUrls` do not grant the service's URL to its namespace (why, in words).
    UrlNotGranted(String),
    /// An older claim (`namespace/name`) holds the resource URL.
    Taken(String),
    /// The service would hold its URL, but its namespace's share of the server's config is spent (why, in
    /// words: [`crate::config_budget`]).
    OverBudget(String),
    /// The service is the server's for its resource URL.
    Holds,
}

/// Where `service` stands with `server` (the one it names, if it exists), among `claimants` (the services
/// naming the same URL, itself included).
pub fn attachment(
    service: &MCPService,
    server: Option<&AuthorizationServer>,
    claimants: &[MCPService],
    labels: &NamespaceLabels,
) -> Attachment {
    let Some(server) = server else {
        return Attachment::NoServer;
    };
    let namespace = service.namespace().unwrap_or_default();
    if !tenancy::admits(server, &namespace, labels) {
        return Attachment::NotAdmitted(server.spec.allowed_namespaces.describe());
    }
    if let Some(why) = tenancy::url_standing(service, server, labels).refusal() {
        return Attachment::UrlNotGranted(why);
    }
    match tenancy::resource_holder(service, server, claimants, labels) {
        Some(holder) => Attachment::Taken(tenancy::key_of(holder)),
        None => Attachment::Holds,
    }
}

/// How a service's sidecars will reach its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// TLS, trusting this CA bundle.
    Tls(String),
    /// TLS, but the server's Secret has no bundle yet.
    Waiting,
    /// Plain HTTP: the server declares a mesh.
    Mesh,
}

impl Trust {
    fn condition(&self, server: &AuthorizationServer) -> Observed {
        let secret = format!(
            "{}/{}",
            server.namespace().unwrap_or_default(),
            naming::authserver_tls(&server.name_any())
        );
        let base = sidecar::in_cluster_base(server);
        match self {
            Self::Tls(_) => Observed::yes(
                "TransportSecured",
                "TLS",
                format!(
                    "sidecars reach the authorization server at {base} and trust only the CA bundle of Secret {secret}"
                ),
            ),
            Self::Waiting => Observed::no(
                "TransportSecured",
                "WaitingForServerCA",
                format!(
                    "Secret {secret} has no CA bundle (ca.crt) yet; the sidecar config follows it"
                ),
            ),
            Self::Mesh => Observed::yes(
                "TransportSecured",
                "Mesh",
                format!(
                    "sidecars reach the authorization server at {base} in plain HTTP: its inClusterTransport declares a mesh that does mTLS"
                ),
            ),
        }
    }
}

/// Everything one MCPService's reconcile decides from.
pub struct Facts<'a> {
    /// `namespace/name` of the server the service names.
    pub server_key: String,
    /// That server, when it exists and this operator serves its namespace.
    pub server: Option<&'a AuthorizationServer>,
    /// Where the service stands with it ([`attachment`]).
    pub attachment: Attachment,
    /// The MCPScopes that count at the server (every one when there is none).
    pub scopes: &'a [MCPScope],
    /// The CIMDPolicies of the service's namespace.
    pub policies: &'a [CIMDPolicy],
    /// The server's CA bundle, read only when the service holds its URL.
    pub trust: Option<Trust>,
    /// The server's resource-server root key, read only when the service holds its URL (`None` also when
    /// the server has not written its keys yet).
    pub keys_root: Option<Root>,
    /// The pods the service's selector picks.
    pub pods: &'a [Pod],
    /// The Services of the service's namespace.
    pub services: &'a [Service],
    /// The services this one's token-exchange edges may name with `to`, and their rivals for their URLs.
    pub peers: Peers<'a>,
    /// Who may scrape the sidecar's admin port.
    pub scrapers: Option<&'a Scrapers>,
    /// The operator's version (what current sidecars were injected by).
    pub version: &'a str,
}

/// What a reconcile does for one MCPService.
#[derive(Debug)]
pub struct Observation {
    /// Objects to apply: the sidecar's ConfigMap and NetworkPolicy, then its credentials Secret.
    pub apply: Vec<RenderedObject>,
    /// Whether a credentials Secret made for this service must be deleted (it may no longer hold a key).
    pub revoke: bool,
    /// The conditions, `Ready` first.
    pub observed: Vec<Observed>,
    /// Injected pods, and those with another version's sidecar.
    pub injected: usize,
    /// See `injected`.
    pub outdated: usize,
    /// When to look again.
    pub requeue: Duration,
}

/// The decision for `service` from `facts`.
pub fn observe(service: &MCPService, facts: &Facts) -> Result<Observation, RenderError> {
    let namespace = service.namespace().unwrap_or_default();
    let server_ns = facts
        .server_key
        .split_once('/')
        .map_or("", |(ns, _)| ns)
        .to_owned();
    let server_key = &facts.server_key;
    let mut observed = Vec::new();
    let mut apply = Vec::new();

    let missing = missing_scopes(service, &server_ns, facts.scopes);
    observed.push(if missing.is_empty() {
        Observed::yes(
            "ScopesResolved",
            "AllScopesFound",
            "every scope is defined by an MCPScope",
        )
    } else {
        Observed::no(
            "ScopesResolved",
            "MCPScopeNotFound",
            format!(
                "no MCPScope of namespace {namespace} or {server_ns} owns: {}",
                missing.join(", ")
            ),
        )
    });
    let (policy_ok, policy) = match service_policy(service, facts.policies) {
        None => (
            true,
            Observed::yes(
                "PolicyResolved",
                "ServerDefault",
                "clients are admitted by the AuthorizationServer's default CIMDPolicy",
            ),
        ),
        Some(Ok(p)) => (
            true,
            Observed::yes(
                "PolicyResolved",
                "PolicyFound",
                format!("clients are admitted by CIMDPolicy {}", p.name_any()),
            ),
        ),
        Some(Err(name)) => (
            false,
            Observed::no(
                "PolicyResolved",
                "CIMDPolicyNotFound",
                format!(
                    "CIMDPolicy {name} does not exist in namespace {namespace}; the service is left out of the authorization server until it does"
                ),
            ),
        ),
    };
    observed.push(policy);

    let mut credentials_issued = false;
    let mut transport_ready = true;
    let mut refusal_of_config = None;
    if let (Some(server), Attachment::Holds) = (facts.server, &facts.attachment) {
        let trust = facts.trust.clone().unwrap_or(Trust::Waiting);
        observed.push(trust.condition(server));
        // Without the CA bundle a TLS config would not start: the ConfigMap waits for it (an injected
        // pod waits for its ConfigMap), so no sidecar ever falls back to cleartext.
        let bundle = match &trust {
            Trust::Tls(bundle) => Some(Some(bundle.as_str())),
            Trust::Mesh => Some(None),
            Trust::Waiting => None,
        };
        transport_ready = bundle.is_some();
        if let Some(bundle) = bundle {
            let rendered = sidecar::render(
                service,
                server,
                facts.scopes,
                facts.peers,
                bundle,
                facts.scrapers,
            );
            match rendered {
                Ok(objects) => apply.extend(objects),
                // Nothing of the sidecar's is applied: the ConfigMap in force stays, running and new pods keep
                // a config they start with.
                Err(error @ RenderError::Invalid { .. }) => {
                    let refusal = Refusal::new(error, "the sidecar ConfigMap");
                    observed.push(refusal.config_rendered());
                    refusal_of_config = Some(refusal);
                }
                Err(error) => return Err(error),
            }
        }
        observed.push(match &facts.keys_root {
            None => Observed::no(
                "CredentialsIssued",
                "WaitingForServerKeys",
                format!(
                    "AuthorizationServer {server_key} has not written its keys yet; the sidecar's introspection key follows"
                ),
            ),
            Some(root) => {
                apply.push(sidecar::credentials_secret(service, root)?);
                credentials_issued = true;
                Observed::yes(
                    "CredentialsIssued",
                    "KeyIssued",
                    format!(
                        "Secret {} holds the sidecar's introspection key",
                        naming::sidecar_credentials(&service.name_any())
                    ),
                )
            }
        });
    }
    let refusal = match &facts.attachment {
        Attachment::NoServer | Attachment::Holds => None,
        Attachment::Taken(holder) => Some(Observed::no(
            "CredentialsIssued",
            "ResourceURLTaken",
            format!(
                "MCPService {holder} already protects {} with AuthorizationServer {server_key}; give this service its own resourceUrl",
                service.spec.resource_url,
            ),
        )),
        Attachment::NotAdmitted(allowed) => Some(Observed::no(
            "CredentialsIssued",
            "NamespaceNotAllowed",
            format!(
                "AuthorizationServer {server_key} does not admit services from namespace {namespace} (allowedNamespaces {allowed}); a platform admin decides which namespaces may use it"
            ),
        )),
        Attachment::OverBudget(why) => Some(Observed::no(
            "CredentialsIssued",
            "ConfigBudgetExceeded",
            format!(
                "{why}; remove services or scopes of this namespace, or ask a platform admin for a larger share"
            ),
        )),
        Attachment::UrlNotGranted(why) => Some(Observed::no(
            "CredentialsIssued",
            "ResourceURLNotGranted",
            format!(
                "AuthorizationServer {server_key} does not let namespace {namespace} protect {}: {why}; a platform admin decides which namespaces may use which URLs",
                service.spec.resource_url,
            ),
        )),
    };
    // A key issued before the refusal (the server narrowed its namespaces or URLs, or an older claim came
    // back) must not outlive it.
    let revoke = refusal.is_some();
    observed.extend(refusal);

    let raw = raw_port_services(service, facts.services, facts.pods);
    observed.push(if raw.is_empty() {
        Observed::no(
            "RawPortExposed",
            "SidecarPortOnly",
            "no Service targets the MCP server's own port",
        )
    } else {
        Observed::yes(
            "RawPortExposed",
            "ServiceTargetsRawPort",
            format!(
                "Service(s) {} target port {} of the MCP server directly; point them at the sidecar port {}",
                raw.join(", "),
                service.spec.upstream.port,
                service.spec.sidecar.port
            ),
        )
    });
    let injected = injected_pods(service, facts.pods);
    let outdated = outdated_pods(&injected, facts.version);
    observed.push(sidecars_current(&outdated, injected.len(), facts.version));

    observed.insert(
        0,
        match (&facts.attachment, missing.is_empty() && policy_ok) {
            (Attachment::NoServer, _) => Observed::no(
                "Ready",
                "AuthorizationServerNotFound",
                format!("AuthorizationServer {server_key} does not exist"),
            ),
            (Attachment::NotAdmitted(_), _) => {
                Observed::no("Ready", "NamespaceNotAllowed", "see CredentialsIssued")
            }
            (Attachment::UrlNotGranted(_), _) => {
                Observed::no("Ready", "ResourceURLNotGranted", "see CredentialsIssued")
            }
            (Attachment::Taken(_), _) => {
                Observed::no("Ready", "ResourceURLTaken", "see CredentialsIssued")
            }
            (Attachment::OverBudget(_), _) => {
                Observed::no("Ready", "ConfigBudgetExceeded", "see CredentialsIssued")
            }
            (Attachment::Holds, false) => Observed::no(
                "Ready",
                "ReferencesUnresolved",
                "see ScopesResolved and PolicyResolved",
            ),
            (Attachment::Holds, true) => match &refusal_of_config {
                Some(refusal) => refusal.ready(),
                None if !transport_ready => {
                    Observed::no("Ready", "WaitingForServerCA", "see TransportSecured")
                }
                None if !credentials_issued => {
                    Observed::no("Ready", "CredentialsPending", "see CredentialsIssued")
                }
                None => Observed::yes(
                    "Ready",
                    "Configured",
                    format!(
                        "sidecar config {} is current",
                        naming::sidecar_config_map(&service.name_any())
                    ),
                ),
            },
        },
    );
    // Waiting for the server's keys is short; come back soon rather than at the resync.
    let requeue = if facts.attachment == Attachment::Holds && !credentials_issued {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(300)
    };
    Ok(Observation {
        apply,
        revoke,
        observed,
        injected: injected.len(),
        outdated: outdated.len(),
        requeue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    const URL: &str = "https://mcp.example.com/files";

    fn server(spec: serde_json::Value) -> AuthorizationServer {
        let mut v = cases::authorization_server();
        v["metadata"] = json!({"name": "auth", "namespace": "mcp-authz"});
        for (k, value) in spec.as_object().expect("spec") {
            v["spec"][k] = value.clone();
        }
        serde_json::from_value(v).expect("server")
    }

    fn service(ns: &str, created: i64, scopes: &[&str]) -> MCPService {
        let mut s = cases::mcp_service_in(ns, "files", URL, scopes, None);
        s.metadata.uid = Some(format!("uid-{ns}"));
        s.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("time"),
        ));
        s
    }

    /// What a test looks at in an observation: Ready's and CredentialsIssued's reasons, the kinds applied,
    /// whether the key is taken back, and the requeue in seconds.
    fn summary(o: &Observation) -> Summary {
        let reason = |t: &str| {
            o.observed
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.reason.to_owned())
                .unwrap_or_default()
        };
        (
            reason("Ready"),
            reason("CredentialsIssued"),
            o.apply.iter().map(|a| a.kind.clone()).collect(),
            o.revoke,
            o.requeue.as_secs(),
        )
    }

    /// What [`summary`] gives.
    type Summary = (String, String, Vec<String>, bool, u64);

    /// A case: name, service, server, claimants of its URL, trust, whether the server wrote its keys,
    /// and the expected summary.
    type Row<'a> = (
        &'a str,
        &'a MCPService,
        Option<&'a AuthorizationServer>,
        Vec<MCPService>,
        Option<Trust>,
        bool,
        Summary,
    );

    #[test]
    fn each_standing_gives_its_conditions_objects_and_key() {
        let all = server(json!({"allowedNamespaces": {"from": "All"}}));
        let same = server(json!({}));
        let granted_elsewhere = server(json!({
            "allowedNamespaces": {"from": "All"},
            "resourceUrls": [{"prefix": "https://mcp.example.com/", "namespaces": {"from": "Same"}}]
        }));
        let mesh = server(json!({
            "allowedNamespaces": {"from": "All"},
            "inClusterTransport": {"mode": "Mesh"}
        }));
        let root = Root::generate().expect("root");
        let team = service("team", 200, &[]);
        let older = service("older", 100, &[]);
        let unresolved = service("team", 200, &["files:nowhere"]);
        let mut well_known = service("team", 200, &[]);
        well_known.spec.upstream.path = "/.well-known/mcp".into();
        let kinds = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let s = |x: &str| x.to_owned();
        // (case, service, server, claimants, trust, keys, expected)
        let table: Vec<Row> = vec![
            (
                "no server",
                &team,
                None,
                vec![],
                None,
                false,
                (
                    s("AuthorizationServerNotFound"),
                    s(""),
                    kinds(&[]),
                    false,
                    300,
                ),
            ),
            (
                "namespace shut out",
                &team,
                Some(&same),
                vec![],
                None,
                false,
                (
                    s("NamespaceNotAllowed"),
                    s("NamespaceNotAllowed"),
                    kinds(&[]),
                    true,
                    300,
                ),
            ),
            (
                "URL granted to another namespace",
                &team,
                Some(&granted_elsewhere),
                vec![],
                None,
                false,
                (
                    s("ResourceURLNotGranted"),
                    s("ResourceURLNotGranted"),
                    kinds(&[]),
                    true,
                    300,
                ),
            ),
            (
                "an older claim holds the URL",
                &team,
                Some(&all),
                vec![older.clone(), team.clone()],
                None,
                false,
                (
                    s("ResourceURLTaken"),
                    s("ResourceURLTaken"),
                    kinds(&[]),
                    true,
                    300,
                ),
            ),
            (
                "holds, no CA bundle, no keys yet",
                &team,
                Some(&all),
                vec![team.clone()],
                Some(Trust::Waiting),
                false,
                (
                    s("WaitingForServerCA"),
                    s("WaitingForServerKeys"),
                    kinds(&[]),
                    false,
                    10,
                ),
            ),
            (
                "holds, CA bundle, no keys yet",
                &team,
                Some(&all),
                vec![team.clone()],
                Some(Trust::Tls(s("-----BEGIN CERTIFICATE-----"))),
                false,
                (
                    s("CredentialsPending"),
                    s("WaitingForServerKeys"),
                    kinds(&["ConfigMap", "NetworkPolicy"]),
                    false,
                    10,
                ),
            ),
            (
                "holds over a mesh, with keys",
                &team,
                Some(&mesh),
                vec![team.clone()],
                Some(Trust::Mesh),
                true,
                (
                    s("Configured"),
                    s("KeyIssued"),
                    kinds(&["ConfigMap", "NetworkPolicy", "Secret"]),
                    false,
                    300,
                ),
            ),
            (
                "holds, a scope nobody defines",
                &unresolved,
                Some(&mesh),
                vec![unresolved.clone()],
                Some(Trust::Mesh),
                true,
                (
                    s("ReferencesUnresolved"),
                    s("KeyIssued"),
                    kinds(&["ConfigMap", "NetworkPolicy", "Secret"]),
                    false,
                    300,
                ),
            ),
            (
                "holds, a config the sidecar would refuse",
                &well_known,
                Some(&mesh),
                vec![well_known.clone()],
                Some(Trust::Mesh),
                true,
                (
                    s("ConfigRefused"),
                    s("KeyIssued"),
                    kinds(&["Secret"]),
                    false,
                    300,
                ),
            ),
        ];
        let labels = NamespaceLabels::new();
        for (case, service, server, claimants, trust, keys, want) in table {
            let facts = Facts {
                server_key: "mcp-authz/auth".into(),
                server,
                attachment: attachment(service, server, &claimants, &labels),
                scopes: &[],
                policies: &[],
                trust,
                keys_root: keys.then(|| root.clone()),
                pods: &[],
                services: &[],
                peers: Peers::NONE,
                scrapers: None,
                version: "1.0.0",
            };
            let observation = observe(service, &facts).expect(case);
            assert_eq!(summary(&observation), want, "{case}");
        }
    }

    /// The schema admits any path that starts with '/'; the sidecar refuses one under /.well-known/ (its
    /// metadata lives there). The operator's last line keeps the ConfigMap in force and says why.
    #[test]
    fn a_sidecar_config_the_sidecar_would_refuse_is_not_applied_and_says_why() {
        let mesh = server(json!({
            "allowedNamespaces": {"from": "All"},
            "inClusterTransport": {"mode": "Mesh"}
        }));
        let mut svc = service("team", 200, &[]);
        svc.spec.upstream.path = "/.well-known/mcp".into();
        let labels = NamespaceLabels::new();
        let claimants = [svc.clone()];
        let facts = Facts {
            server_key: "mcp-authz/auth".into(),
            server: Some(&mesh),
            attachment: attachment(&svc, Some(&mesh), &claimants, &labels),
            scopes: &[],
            policies: &[],
            trust: Some(Trust::Mesh),
            keys_root: None,
            pods: &[],
            services: &[],
            peers: Peers::NONE,
            scrapers: None,
            version: "1.0.0",
        };
        let observation = observe(&svc, &facts).expect("observed");
        assert!(
            observation.apply.iter().all(|a| a.kind != "ConfigMap"),
            "{:?}",
            observation.apply
        );
        let refusal = "spec: the rendered sidecar config would be refused: invalid config: mcpPath must start \
                       with / and not be under /.well-known/; the sidecar ConfigMap in force stays";
        let said = |type_: &str| {
            observation
                .observed
                .iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status, c.reason, c.message.as_str()))
        };
        assert_eq!(said("ConfigRendered"), Some((false, "Refused", refusal)));
        // Ready says it too, not only where to look: a watcher of Ready alone learns what stays in force.
        assert_eq!(said("Ready"), Some((false, "ConfigRefused", refusal)));
    }

    #[test]
    fn refusals_name_the_holder_the_namespaces_and_the_prefix() {
        let labels = NamespaceLabels::new();
        let team = service("team", 200, &[]);
        let older = service("older", 100, &[]);
        let all = server(json!({"allowedNamespaces": {"from": "All"}}));
        assert_eq!(
            attachment(&team, Some(&all), &[older.clone(), team.clone()], &labels),
            Attachment::Taken("older/files".into())
        );
        assert_eq!(
            attachment(&team, Some(&server(json!({}))), &[], &labels),
            Attachment::NotAdmitted("from: Same".into())
        );
        let narrow = server(json!({
            "allowedNamespaces": {"from": "All"},
            "resourceUrls": [{"prefix": "https://other.example.com/", "namespaces": {"from": "All"}}]
        }));
        assert_eq!(
            attachment(&team, Some(&narrow), &[], &labels),
            Attachment::UrlNotGranted("none of its resourceUrls covers this URL".into())
        );
        let facts = Facts {
            peers: Peers::NONE,
            server_key: "mcp-authz/auth".into(),
            server: Some(&narrow),
            attachment: attachment(&team, Some(&narrow), &[], &labels),
            scopes: &[],
            policies: &[],
            trust: None,
            keys_root: None,
            pods: &[],
            services: &[],
            scrapers: None,
            version: "1.0.0",
        };
        let observation = observe(&team, &facts).expect("observe");
        let credentials = observation
            .observed
            .iter()
            .find(|c| c.type_ == "CredentialsIssued")
            .expect("CredentialsIssued");
        assert_eq!(
            credentials.message,
            "AuthorizationServer mcp-authz/auth does not let namespace team protect https://mcp.example.com/files: none of its resourceUrls covers this URL; a platform admin decides which namespaces may use which URLs"
        );
        // A service its namespace's share leaves out: not ready, no key (one issued before is taken back).
        let facts = Facts {
            attachment: Attachment::OverBudget("the share is spent".into()),
            ..facts
        };
        let observation = observe(&team, &facts).expect("observe");
        let condition = |kind: &str| {
            let c = observation
                .observed
                .iter()
                .find(|c| c.type_ == kind)
                .expect(kind);
            (c.status, c.reason, c.message.clone())
        };
        assert_eq!(
            condition("CredentialsIssued"),
            (
                false,
                "ConfigBudgetExceeded",
                "the share is spent; remove services or scopes of this namespace, or ask a platform admin for a larger share".into()
            )
        );
        assert_eq!(
            condition("Ready"),
            (
                false,
                "ConfigBudgetExceeded",
                "see CredentialsIssued".into()
            )
        );
        assert!(observation.revoke);
    }
}
