//! Who holds what when teams share one AuthorizationServer. Pure decisions, no I/O.
//!
//! ```text
//! claim order   = (holding now, creationTimestamp, uid, namespace, name): what works keeps working; else the oldest
//! resource URL  -> the oldest admitted MCPService naming it (per server)  -> key, entry, Ready
//! scope value   -> the oldest MCPScope defining it among the namespaces   -> consent text, sensitive, lifetime
//!                  the server admits (its own included; per server)
//! "holding"     -> a service: CredentialsIssued=True (one server per service)
//!                  a scope: the server is in its status.ownsAt (a scope counts at several servers, and holding
//!                  at one must not count at another)
//! namespace     -> AuthorizationServer.spec.allowedNamespaces             -> may a service attach at all
//! URL           -> AuthorizationServer.spec.resourceUrls (longest prefix) -> may it claim that URL at all
//!                  AuthorizationServer.spec.tokenExchange[].audience       -> no: an API's URL, held by none
//! ```
//!
//! A claim that holds keeps holding (until it is deleted, detached or its namespace is shut out): age alone let an
//! old claim parked elsewhere (naming another server, or in a namespace not yet admitted) take a working URL the
//! moment it attached. Among claims that do not hold, age decides, the one order a newcomer cannot influence:
//! names sort however their owner picks them, so "first by name" let a team displace a working service by
//! choosing a namespace like `aaa`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};

use crate::api::resource_urls::{self, UrlStanding};
use crate::api::{AuthorizationServer, MCPScope, MCPService};

/// Labels of every namespace by name, as far as they are known. A namespace missing here is taken to carry only
/// `kubernetes.io/metadata.name` (which the API server sets on each), as in local mode.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// The order of claims: the claim that holds now first (`holding`, from the operator's own status, which tenants
/// cannot write), so a working claim is never displaced by one that merely is older; then creation time; then
/// uid (unique and fixed, so the rest is settled the same way every time), then namespace and name (for
/// manifests read from files, which have neither).
pub fn claim_key<K: Resource>(
    object: &K,
    holding: bool,
) -> (bool, Option<Time>, String, String, String) {
    let meta = object.meta();
    (
        !holding,
        meta.creation_timestamp.clone(),
        meta.uid.clone().unwrap_or_default(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether the operator last reported condition `type_` as True on `conditions`.
fn reported(conditions: Option<&[Condition]>, type_: &str) -> bool {
    conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// A service's claim: it holds now when its key was issued, to this very object for this URL. The status
/// says so by `issuedFor`; without it (a status written before it existed), by `CredentialsIssued` alone,
/// until the operator writes the status again.
pub fn service_claim(service: &MCPService) -> (bool, Option<Time>, String, String, String) {
    let status = service.status.as_ref();
    let conditions = status.map(|s| s.conditions.as_slice());
    let for_this_object = status
        .and_then(|s| s.issued_for.as_deref())
        .is_none_or(|issued| issued == issued_for(service));
    claim_key(
        service,
        for_this_object && reported(conditions, "CredentialsIssued"),
    )
}

/// What `status.issuedFor` records for `service`: its uid and its resource URL.
pub fn issued_for(service: &MCPService) -> String {
    format!(
        "{} {}",
        service.uid().unwrap_or_default(),
        service.spec.resource_url
    )
}

/// A scope's claim at `server` (`namespace/name`): it holds there when the operator last found it owning its
/// value at that server (`status.ownsAt`). Holding at one server says nothing about another: a definition
/// accepted at a server that admits its namespace, once another server admits that namespace too, must not
/// take the value from the team already working there just by being older.
///
/// A status written before `ownsAt` existed (an upgrade) falls back to `Accepted=True`, at every server, until
/// the operator writes it again (its first status pass after the upgrade).
pub fn scope_claim(scope: &MCPScope, server: &str) -> (bool, Option<Time>, String, String, String) {
    let status = scope.status.as_ref();
    // What the status says was owned is the value it was written for: a definition whose value changed since
    // (an edit made before `value` was immutable) arrives at its new value as a newcomer, never holding.
    let same_value = status
        .and_then(|s| s.owned_value.as_deref())
        .is_none_or(|owned| owned == scope.spec.value);
    let holding = same_value
        && match status.and_then(|s| s.owns_at.as_ref()) {
            Some(servers) => servers.iter().any(|s| s == server),
            None => reported(status.map(|s| s.conditions.as_slice()), "Accepted"),
        };
    claim_key(scope, holding)
}

/// `namespace/name` of an object.
pub fn key_of<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Whether `server` admits services from `namespace` (its `allowedNamespaces`).
pub fn admits(server: &AuthorizationServer, namespace: &str, labels: &NamespaceLabels) -> bool {
    server.spec.allowed_namespaces.admits(
        &server.namespace().unwrap_or_default(),
        namespace,
        labels.get(namespace),
    )
}

/// Whether `service` names `server` and is admitted by it, both its namespace and its URL.
pub fn attached(
    service: &MCPService,
    server: &AuthorizationServer,
    labels: &NamespaceLabels,
) -> bool {
    crate::render::names_server(service, server)
        && admits(server, &service.namespace().unwrap_or_default(), labels)
        && url_standing(service, server, labels).allows()
}

/// What `server` says of `service`'s claim on its URL: refused when the server takes no such resource URL or a
/// token-exchange edge names it as an API's audience, else as its `resourceUrls` say.
pub fn url_standing(
    service: &MCPService,
    server: &AuthorizationServer,
    labels: &NamespaceLabels,
) -> UrlStanding {
    let url = &service.spec.resource_url;
    // A URL the server would refuse in its config (userinfo, a port out of range, http off loopback) must
    // not be held: held, it would be another service's token-exchange audience, and refused there too.
    if let Err(e) = mcp_authz_authserver::config::check_resource_url(url) {
        return UrlStanding::Unusable(match e {
            mcp_authz_authserver::config::ConfigError::Invalid(why) => why,
            other => other.to_string(),
        });
    }
    let reserved = server.spec.token_exchange.iter().position(|edge| {
        edge.audience
            .as_deref()
            .is_some_and(|audience| resource_urls::same_resource(audience, url))
    });
    if let Some(index) = reserved {
        return UrlStanding::Reserved(index);
    }
    let namespace = service.namespace().unwrap_or_default();
    resource_urls::standing(
        &server.spec.resource_urls,
        &service.spec.resource_url,
        &server.namespace().unwrap_or_default(),
        &namespace,
        labels.get(&namespace),
    )
}

/// The other service holding `service`'s resource URL at `server`, if one does. Tokens and the resource-server
/// key are bound to the URL, so it has one holder per server: the oldest claim among the services attached to
/// `server` with that URL. A service the server does not admit holds nothing.
pub fn resource_holder<'a>(
    service: &MCPService,
    server: &AuthorizationServer,
    services: &'a [MCPService],
    labels: &NamespaceLabels,
) -> Option<&'a MCPService> {
    if !attached(service, server, labels) {
        return None;
    }
    services
        .iter()
        .filter(|s| s.spec.resource_url == service.spec.resource_url && attached(s, server, labels))
        .min_by_key(|s| service_claim(s))
        .filter(|holder| key_of(*holder) != key_of(service))
}

/// The MCPScopes that count at `server`: those of its own namespace and of the namespaces it admits. A
/// namespace the server shuts out can attach nothing to it, so it must not own a value there either: else any
/// namespace of the cluster could define `files:read` before the team that uses it and keep that team's
/// definition out (squatting).
pub fn scopes_at(
    server: &AuthorizationServer,
    scopes: &[MCPScope],
    labels: &NamespaceLabels,
) -> Vec<MCPScope> {
    let own = server.namespace().unwrap_or_default();
    scopes
        .iter()
        .filter(|s| {
            let ns = s.namespace().unwrap_or_default();
            ns == own || admits(server, &ns, labels)
        })
        .cloned()
        .collect()
}

/// The owner of every scope value among `scopes` at `server` (`namespace/name`; `scopes` are those that count
/// there, [`scopes_at`]): the oldest MCPScope defining it, after the one holding it there. Values are one
/// namespace per server (a token carries `files:read`, not a namespace), so a value can only mean one thing.
pub fn scope_owners<'a>(scopes: &'a [MCPScope], server: &str) -> BTreeMap<&'a str, &'a MCPScope> {
    let mut owners: BTreeMap<&str, &MCPScope> = BTreeMap::new();
    for scope in scopes {
        owners
            .entry(scope.spec.value.as_str())
            .and_modify(|owner| {
                if scope_claim(scope, server) < scope_claim(owner, server) {
                    *owner = scope;
                }
            })
            .or_insert(scope);
    }
    owners
}

/// Where an MCPScope stands at each server that counts it ([`scopes_at`]). Both lists empty: no server counts
/// its namespace, it defines nothing anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeStanding {
    /// The servers (`namespace/name`, sorted) where it owns its value: what the operator records as
    /// `status.ownsAt`.
    pub owns_at: Vec<String>,
    /// The servers where an older definition owns the value, each with that owner (`namespace/name`).
    pub taken_at: Vec<(String, String)>,
}

impl ScopeStanding {
    /// Whether no server counts the scope.
    pub fn not_admitted(&self) -> bool {
        self.owns_at.is_empty() && self.taken_at.is_empty()
    }
}

/// Where `scope` owns its value and where another definition does, server by server.
pub fn scope_standing(
    scope: &MCPScope,
    scopes: &[MCPScope],
    servers: &[AuthorizationServer],
    labels: &NamespaceLabels,
) -> ScopeStanding {
    let mut servers: Vec<&AuthorizationServer> = servers.iter().collect();
    servers.sort_by_key(|s| key_of(*s));
    let mut standing = ScopeStanding::default();
    for server in servers {
        let here = scopes_at(server, scopes, labels);
        if !here.iter().any(|s| key_of(s) == key_of(scope)) {
            continue;
        }
        let server_key = key_of(server);
        match scope_owners(&here, &server_key).get(scope.spec.value.as_str()) {
            Some(owner) if key_of(*owner) != key_of(scope) => {
                standing.taken_at.push((server_key, key_of(*owner)));
            }
            _ => standing.owns_at.push(server_key),
        }
    }
    standing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;
    use serde_json::json;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("time"))
    }

    fn server(allowed: serde_json::Value) -> AuthorizationServer {
        let mut v = cases::authorization_server();
        v["metadata"] = json!({"name": "auth", "namespace": "mcp-authz"});
        v["spec"]["allowedNamespaces"] = allowed;
        serde_json::from_value(v).expect("server")
    }

    fn service(ns: &str, name: &str, url: &str, created: i64, uid: &str) -> MCPService {
        let mut s = cases::mcp_service_in(ns, name, url, &[], None);
        s.metadata.creation_timestamp = Some(at(created));
        s.metadata.uid = Some(uid.to_owned());
        s
    }

    fn scope(ns: &str, name: &str, value: &str, created: Option<i64>, uid: &str) -> MCPScope {
        let mut v = cases::mcp_scope();
        v["metadata"] = json!({"name": name, "namespace": ns, "uid": uid});
        v["spec"]["value"] = json!(value);
        let mut s: MCPScope = serde_json::from_value(v).expect("scope");
        s.metadata.creation_timestamp = created.map(at);
        s
    }

    fn labels(pairs: &[(&str, &[(&str, &str)])]) -> NamespaceLabels {
        pairs
            .iter()
            .map(|(ns, l)| {
                (
                    (*ns).to_owned(),
                    l.iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_oldest_claim_of_a_resource_url_holds_it_whatever_the_names() {
        let all = server(json!({"from": "All"}));
        let url = "https://mcp.example.com/files";
        let victim = service("zzz", "files", url, 100, "u-9");
        let newcomer = service("aaa", "files", url, 200, "u-1");
        let same_second = service("bbb", "files", url, 100, "u-5");
        let other_url = service("aaa", "notes", "https://mcp.example.com/notes", 50, "u-0");
        let holder = |s: &MCPService, services: &[MCPService]| {
            resource_holder(s, &all, services, &NamespaceLabels::new()).map(key_of)
        };
        let two = [newcomer.clone(), victim.clone()];
        assert_eq!(holder(&newcomer, &two).as_deref(), Some("zzz/files"));
        assert_eq!(holder(&victim, &two), None, "the older claim keeps it");
        let three = [newcomer.clone(), victim.clone(), same_second.clone()];
        assert_eq!(
            holder(&victim, &three).as_deref(),
            Some("bbb/files"),
            "a tie in the creation second goes to the smaller uid"
        );
        assert_eq!(holder(&same_second, &three), None);
        let mut working = victim.clone();
        working.status = Some(crate::api::MCPServiceStatus {
            conditions: vec![Condition {
                type_: "CredentialsIssued".into(),
                status: "True".into(),
                reason: "KeyIssued".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: at(100),
            }],
            ..Default::default()
        });
        let working_three = [newcomer.clone(), working.clone(), same_second.clone()];
        assert_eq!(
            holder(&same_second, &working_three).as_deref(),
            Some("zzz/files"),
            "within the same second, the claim that holds now keeps it"
        );
        assert_eq!(holder(&working, &working_three), None);
        // An older claim that did not hold (parked at another server, or in a namespace admitted only now) does
        // not take a working URL when it attaches.
        let parked = service("aaa", "parked", url, 10, "u-0");
        let attached_late = [parked.clone(), working.clone()];
        assert_eq!(
            holder(&parked, &attached_late).as_deref(),
            Some("zzz/files"),
            "a working holder keeps its URL against an older claim"
        );
        assert_eq!(holder(&working, &attached_late), None);
        assert_eq!(
            holder(&other_url, &[other_url.clone(), victim.clone()]),
            None
        );
    }

    #[test]
    fn holding_counts_only_for_the_object_and_url_the_key_was_issued_for() {
        let url = "https://mcp.example.com/files";
        let issued = |service: &MCPService, issued_for: Option<String>| {
            let mut s = service.clone();
            s.status = Some(crate::api::MCPServiceStatus {
                conditions: vec![Condition {
                    type_: "CredentialsIssued".into(),
                    status: "True".into(),
                    reason: "KeyIssued".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: at(100),
                }],
                issued_for,
                ..Default::default()
            });
            s
        };
        let recreated = service("team", "files", url, 500, "u-new");
        // (status.issuedFor, holding)
        let table = [
            (Some(issued_for(&recreated)), true),
            // A write of a reconcile of the deleted object of the same name, landed on the new one.
            (Some(format!("u-old {url}")), false),
            (
                Some("u-new https://mcp.example.com/other".to_owned()),
                false,
            ),
            // Written before issuedFor existed: the condition alone, until the next status write.
            (None, true),
        ];
        for (issued_for, holding) in table {
            let s = issued(&recreated, issued_for.clone());
            assert_eq!(service_claim(&s).0, !holding, "{issued_for:?}");
        }
        // So an owner's new claim, older than the impostor's, keeps the URL against a stray write.
        let all = server(json!({"from": "All"}));
        let owner = service("owner", "files", url, 300, "u-owner");
        let impostor = issued(&recreated, Some(format!("u-old {url}")));
        assert_eq!(
            resource_holder(
                &impostor,
                &all,
                &[owner.clone(), impostor.clone()],
                &NamespaceLabels::new()
            )
            .map(key_of),
            Some("owner/files".to_owned())
        );
    }

    #[test]
    fn a_parked_squatter_never_inherits_a_url_the_server_grants_to_another_namespace() {
        let url = "https://mcp.example.com/files";
        let mut granting = server(json!({"from": "All"}));
        granting.spec.resource_urls = serde_json::from_value(json!([
            {"prefix": "https://mcp.example.com/files", "namespaces": {"from": "Selector",
                "selector": {"matchLabels": {"team": "files"}}}}
        ]))
        .expect("grants");
        let labels = labels(&[("files", &[("team", "files")]), ("aaa", &[])]);
        // The squatter filed first and waits; the owner's service was deleted and is created again.
        let squatter = service("aaa", "files", url, 10, "u-0");
        let recreated = service("files", "files", url, 500, "u-9");
        let alone = [squatter.clone()];
        let both = [squatter.clone(), recreated.clone()];
        assert!(!attached(&squatter, &granting, &labels));
        assert_eq!(
            url_standing(&squatter, &granting, &labels),
            UrlStanding::GrantedElsewhere(url.into())
        );
        assert_eq!(
            resource_holder(&squatter, &granting, &alone, &labels).map(key_of),
            None,
            "not attached, so it holds nothing even alone"
        );
        assert_eq!(
            resource_holder(&recreated, &granting, &both, &labels).map(key_of),
            None
        );
        // Without grants the same two claims go by age: the squatter would hold the URL.
        let open = server(json!({"from": "All"}));
        assert_eq!(
            resource_holder(&recreated, &open, &both, &labels).map(key_of),
            Some("aaa/files".to_owned())
        );
    }

    #[test]
    fn no_service_holds_the_url_of_an_api_that_tokens_are_exchanged_for() {
        let mut exchanging = server(json!({"from": "All"}));
        exchanging.spec.token_exchange = serde_json::from_value(json!([
            {"from": {"name": "files", "namespace": "files"}, "to": {"name": "search", "namespace": "search"},
             "scopes": ["files:read"], "header": "x-search"},
            {"from": {"name": "files", "namespace": "files"}, "audience": "https://inventory.example.com",
             "scopes": ["files:read"], "header": "x-inventory"},
        ]))
        .expect("edges");
        let none = NamespaceLabels::new();
        // However the squatter spells the API's URL, and however old its claim.
        for url in [
            "https://inventory.example.com",
            "https://INVENTORY.example.com:443/",
        ] {
            let squatter = service("aaa", "inventory", url, 1, "u-1");
            assert_eq!(
                url_standing(&squatter, &exchanging, &none),
                UrlStanding::Reserved(1),
                "{url}"
            );
            assert!(!attached(&squatter, &exchanging, &none), "{url}");
            assert_eq!(
                UrlStanding::Reserved(1).refusal().as_deref(),
                Some(
                    "its tokenExchange[1] names this URL as the audience of an API that is no MCPService"
                )
            );
        }
        // A URL the server would refuse in its config holds nothing, so no edge's `to` can carry it there.
        for url in [
            "https://x@mcp.example.com/search",
            "https://mcp.example.com:99999/search",
            "http://mcp.example.com/search",
        ] {
            let unusable = service("search", "search", url, 1, "u-3");
            assert!(
                matches!(
                    url_standing(&unusable, &exchanging, &none),
                    UrlStanding::Unusable(_)
                ),
                "{url}"
            );
            assert!(!attached(&unusable, &exchanging, &none), "{url}");
        }
        assert_eq!(
            url_standing(
                &service(
                    "search",
                    "search",
                    "https://x@mcp.example.com/search",
                    1,
                    "u-3"
                ),
                &exchanging,
                &none
            )
            .refusal()
            .as_deref(),
            Some(
                "the server takes no such resource URL (resource \"https://x@mcp.example.com/search\" must not carry userinfo)"
            )
        );
        // A service named by `to`, and a URL below the API's, are services like any other.
        for url in [
            "https://mcp.example.com/search",
            "https://inventory.example.com/mcp",
        ] {
            let service = service("search", "search", url, 1, "u-2");
            assert_eq!(
                url_standing(&service, &exchanging, &none),
                UrlStanding::Open,
                "{url}"
            );
        }
    }

    #[test]
    fn a_service_the_server_refuses_holds_nothing_and_gets_nothing() {
        let url = "https://mcp.example.com/files";
        let old_outsider = service("outside", "files", url, 1, "u-1");
        let insider = service("mcp-authz", "files", url, 2, "u-2");
        let same = server(json!({"from": "Same"}));
        let services = [old_outsider.clone(), insider.clone()];
        let none = NamespaceLabels::new();
        assert_eq!(
            resource_holder(&insider, &same, &services, &none).map(key_of),
            None,
            "the older claim is not admitted, so it does not count"
        );
        assert_eq!(
            resource_holder(&old_outsider, &same, &services, &none).map(key_of),
            None
        );
        assert!(!attached(&old_outsider, &same, &none));
        let mut elsewhere = insider.clone();
        elsewhere.spec.authorization_server_ref.name = "another".into();
        assert_eq!(
            resource_holder(&elsewhere, &same, &services, &none).map(key_of),
            None,
            "another server's tokens are another matter"
        );
    }

    #[test]
    fn allowed_namespaces_decide_by_from_and_selector() {
        let tenants = labels(&[
            (
                "team-a",
                &[
                    ("kubernetes.io/metadata.name", "team-a"),
                    ("mcp-authz.io/tenant", "enabled"),
                ],
            ),
            ("team-b", &[("kubernetes.io/metadata.name", "team-b")]),
        ]);
        let by_label = json!({"from": "Selector", "selector": {"matchLabels": {"mcp-authz.io/tenant": "enabled"}}});
        let by_name = json!({"from": "Selector", "selector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-b", "local"]}]}});
        let broken = json!({"from": "Selector", "selector": {"matchExpressions": [
            {"key": "x", "operator": "Near", "values": ["y"]}]}});
        let table: &[(serde_json::Value, &str, bool)] = &[
            (json!({}), "mcp-authz", true),
            (json!({}), "team-a", false),
            (json!({"from": "Same"}), "team-a", false),
            (json!({"from": "All"}), "team-a", true),
            (json!({"from": "All"}), "anything", true),
            (by_label.clone(), "team-a", true),
            (by_label.clone(), "team-b", false),
            (by_label, "mcp-authz", false),
            (by_name.clone(), "team-b", true),
            (by_name.clone(), "team-a", false),
            (by_name, "local", true),
            (broken, "team-a", false),
        ];
        for (allowed, namespace, want) in table {
            let allowed = if allowed == &json!({}) {
                serde_json::Value::Null
            } else {
                allowed.clone()
            };
            let mut v = cases::authorization_server();
            v["metadata"] = json!({"name": "auth", "namespace": "mcp-authz"});
            if !allowed.is_null() {
                v["spec"]["allowedNamespaces"] = allowed.clone();
            }
            let s: AuthorizationServer = serde_json::from_value(v).expect("server");
            assert_eq!(
                admits(&s, namespace, &tenants),
                *want,
                "{allowed} admitting {namespace}"
            );
        }
    }

    /// The older MCPScope owning `scope`'s value among `scopes`, when it is not `scope` itself.
    fn scope_owner_other_than<'a>(
        scope: &MCPScope,
        scopes: &'a [MCPScope],
    ) -> Option<&'a MCPScope> {
        scope_owners(scopes, "mcp-authz/auth")
            .get(scope.spec.value.as_str())
            .copied()
            .filter(|owner| key_of(*owner) != key_of(scope))
    }

    #[test]
    fn the_oldest_definition_of_a_scope_value_owns_it() {
        let platform = scope("mcp-authz", "read", "files:read", Some(100), "u-5");
        let squatter = scope("aaa", "read", "files:read", Some(200), "u-1");
        let twin = scope("zzz", "read", "files:read", Some(100), "u-3");
        let other = scope("aaa", "write", "files:write", Some(300), "u-7");
        let scopes = [squatter.clone(), platform.clone(), other.clone()];
        let owners = scope_owners(&scopes, "mcp-authz/auth");
        assert_eq!(
            owners.get("files:read").map(|s| key_of(*s)).as_deref(),
            Some("mcp-authz/read")
        );
        assert_eq!(
            owners.get("files:write").map(|s| key_of(*s)).as_deref(),
            Some("aaa/write")
        );
        assert_eq!(
            scope_owner_other_than(&squatter, &scopes)
                .map(key_of)
                .as_deref(),
            Some("mcp-authz/read"),
            "a younger definition is ignored, whatever its namespace's name"
        );
        assert_eq!(scope_owner_other_than(&platform, &scopes).map(key_of), None);
        let with_twin = [platform.clone(), twin.clone()];
        assert_eq!(
            scope_owner_other_than(&platform, &with_twin)
                .map(key_of)
                .as_deref(),
            Some("zzz/read"),
            "same second: the smaller uid"
        );
        let files = [
            scope("b", "read", "files:read", None, ""),
            scope("a", "read", "files:read", None, ""),
        ];
        assert_eq!(
            scope_owners(&files, "mcp-authz/auth")
                .get("files:read")
                .map(|s| key_of(*s))
                .as_deref(),
            Some("a/read"),
            "manifests from files have no age: namespace and name decide"
        );
    }

    #[test]
    fn a_namespace_the_server_shuts_out_owns_no_value_there() {
        let srv =
            server(json!({"from": "Selector", "selector": {"matchLabels": {"tenant": "yes"}}}));
        let squatter = scope("outside", "read", "files:read", Some(100), "u-1");
        let team = scope("team-a", "read", "files:read", Some(200), "u-2");
        let platform = scope("mcp-authz", "admin", "files:admin", Some(300), "u-3");
        let ns = labels(&[("team-a", &[("tenant", "yes")]), ("outside", &[])]);
        let all = [squatter.clone(), team.clone(), platform.clone()];
        let counted: Vec<String> = scopes_at(&srv, &all, &ns).iter().map(key_of).collect();
        assert_eq!(
            counted,
            ["team-a/read", "mcp-authz/admin"],
            "the server's own namespace counts even when its selector leaves it out"
        );
        let at_server = scopes_at(&srv, &all, &ns);
        assert_eq!(
            scope_owners(&at_server, "mcp-authz/auth")
                .get("files:read")
                .map(|s| key_of(*s))
                .as_deref(),
            Some("team-a/read"),
            "the older definition from a shut-out namespace does not take the value"
        );
        assert_eq!(
            scope_owners(&all, "mcp-authz/auth")
                .get("files:read")
                .map(|s| key_of(*s))
                .as_deref(),
            Some("outside/read"),
            "cluster-wide, it would have"
        );
    }

    #[test]
    fn a_scope_stands_by_the_servers_that_count_it() {
        let tenants = json!({"from": "Selector", "selector": {"matchLabels": {"tenant": "yes"}}});
        let mut other = server(json!({"from": "Same"}));
        other.metadata.namespace = Some("other-platform".into());
        other.metadata.name = Some("b".into());
        let srv = server(tenants);
        let ns = labels(&[
            ("team-a", &[("tenant", "yes")]),
            ("team-b", &[("tenant", "yes")]),
        ]);
        let outside = scope("outside", "read", "files:read", Some(100), "u-1");
        let a = scope("team-a", "read", "files:read", Some(200), "u-2");
        let b = scope("team-b", "read", "files:read", Some(300), "u-3");
        let at_other = scope("other-platform", "read", "files:read", Some(50), "u-4");
        let all = [outside.clone(), a.clone(), b.clone(), at_other.clone()];
        let servers = [srv.clone(), other.clone()];
        let standing = |owns: &[&str], taken: &[(&str, &str)]| ScopeStanding {
            owns_at: owns.iter().map(|s| (*s).to_owned()).collect(),
            taken_at: taken
                .iter()
                .map(|(s, o)| ((*s).to_owned(), (*o).to_owned()))
                .collect(),
        };
        let table: &[(&MCPScope, ScopeStanding)] = &[
            (&outside, standing(&[], &[])),
            (&a, standing(&["mcp-authz/auth"], &[])),
            (&b, standing(&[], &[("mcp-authz/auth", "team-a/read")])),
            // Older than all, but only counted by its own server: the teams of the other one keep theirs.
            (&at_other, standing(&["other-platform/b"], &[])),
        ];
        for (scope, expected) in table {
            assert_eq!(
                &scope_standing(scope, &all, &servers, &ns),
                expected,
                "{}",
                key_of(*scope)
            );
        }
    }

    /// `scope` as the operator last wrote it: owning its value at `owns_at` (`None`: a status from before
    /// `ownsAt`, with only `Accepted`).
    fn with_status(mut scope: MCPScope, owns_at: Option<&[&str]>, accepted: bool) -> MCPScope {
        scope.status = Some(crate::api::mcp_scope::MCPScopeStatus {
            observed_generation: None,
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: if accepted { "True" } else { "False" }.into(),
                reason: "OwnsValue".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: at(1),
            }],
            owns_at: owns_at.map(|o| o.iter().map(|s| (*s).to_owned()).collect()),
            owned_value: owns_at.map(|_| scope.spec.value.clone()),
        });
        scope
    }

    /// Review F3: `ownsAt` says where a definition held the value it had then. A tenant who changes an old
    /// MCPScope's value to another team's must not arrive holding it (and win on age): the team keeps its value.
    #[test]
    fn a_scope_whose_value_changed_does_not_hold_the_new_value() {
        let server = "platform/auth";
        let mut squatter = with_status(
            scope("team-a", "old", "a:read", Some(100), "u-1"),
            Some(&[server]),
            true,
        );
        squatter.spec.value = "files:read".into();
        let holder = with_status(
            scope("team-b", "read", "files:read", Some(200), "u-2"),
            Some(&[server]),
            true,
        );
        let scopes = [squatter, holder];
        let owner = scope_owners(&scopes, server)
            .get("files:read")
            .map(|s| key_of(*s));
        assert_eq!(owner.as_deref(), Some("team-b/read"));
    }

    /// F1: holding is per server. A definition accepted at S2 (the only server admitting its namespace), once S1
    /// admits that namespace too, must not take the value at S1 from the younger team already holding it there.
    #[test]
    fn a_scope_holding_at_one_server_does_not_hold_at_another() {
        let s1 = "platform-1/auth";
        let s2 = "platform-2/auth";
        let early = |owns: Option<&[&str]>, accepted| {
            with_status(
                scope("early", "read", "files:read", Some(100), "u-1"),
                owns,
                accepted,
            )
        };
        let team = |owns: Option<&[&str]>, accepted| {
            with_status(
                scope("team", "read", "files:read", Some(200), "u-2"),
                owns,
                accepted,
            )
        };
        let fresh_early = scope("early", "read", "files:read", Some(100), "u-1");
        let fresh_team = scope("team", "read", "files:read", Some(200), "u-2");
        // (early's status, team's status, server deciding, expected owner)
        let table: Vec<(MCPScope, MCPScope, &str, &str)> = vec![
            // The defect: early holds at S2 only, team holds at S1; at S1 the team keeps it.
            (
                early(Some(&[s2]), true),
                team(Some(&[s1]), true),
                s1,
                "team/read",
            ),
            (
                early(Some(&[s2]), true),
                team(Some(&[s1]), true),
                s2,
                "early/read",
            ),
            // Nobody holds (new objects): the oldest.
            (fresh_early.clone(), fresh_team.clone(), s1, "early/read"),
            // Holding nowhere written down: age.
            (
                early(Some(&[]), false),
                team(Some(&[]), false),
                s1,
                "early/read",
            ),
            // Held at both by early: early.
            (
                early(Some(&[s1, s2]), true),
                team(Some(&[]), false),
                s1,
                "early/read",
            ),
            // A status from before ownsAt: Accepted=True counts as holding everywhere, until rewritten.
            (early(None, false), team(None, true), s1, "team/read"),
            (early(None, true), team(None, true), s1, "early/read"),
            // ownsAt written wins over a stale Accepted.
            (
                early(Some(&[]), true),
                team(Some(&[s1]), true),
                s1,
                "team/read",
            ),
        ];
        for (i, (early, team, server, want)) in table.into_iter().enumerate() {
            let scopes = [early, team];
            let owner = scope_owners(&scopes, server)
                .get("files:read")
                .map(|s| key_of(*s));
            assert_eq!(owner.as_deref(), Some(want), "case {i} at {server}");
        }
    }
}
