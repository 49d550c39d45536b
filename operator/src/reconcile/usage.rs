//! MCPScope and CIMDPolicy status: who uses the object (`InUse`), and for a CIMDPolicy whether what it
//! asks for takes effect (`ServerWideSettingsApplied`, `CABundleFound`). Neither kind renders anything of its
//! own, so without this an object nobody uses, or a setting that is ignored, would look just like one that works.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Context, FOLLOWER_REQUEUE, ReconcileError};
use crate::api::{AuthorizationServer, CIMDPolicy, MCPScope, MCPService};
use crate::render::visible_scopes;
use crate::status::{self, Observed};

/// How often usage is re-checked without a change (ConfigMaps are not watched).
const RESYNC: Duration = Duration::from_secs(300);

fn key<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The services that offer `scope`'s value and see this very object for it: only the owner of a value at the
/// service's server is ever seen, and only from the service's own namespace or its server's.
pub fn scope_users(
    scope: &MCPScope,
    services: &[MCPService],
    scopes: &[MCPScope],
    servers: &[AuthorizationServer],
    labels: &crate::tenancy::NamespaceLabels,
) -> Vec<String> {
    let mut users: Vec<String> = services
        .iter()
        .filter(|service| service.spec.scopes.contains(&scope.spec.value))
        .filter(|service| {
            let own = service.namespace().unwrap_or_default();
            let server_ns = service
                .spec
                .authorization_server_ref
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or(own);
            // What counts at its server; a service naming no existing server sees nothing.
            let Some(server) = servers
                .iter()
                .find(|s| crate::render::names_server(service, s))
            else {
                return false;
            };
            let here = crate::tenancy::scopes_at(server, scopes, labels);
            visible_scopes(service, &server_ns, &here)
                .get(&scope.spec.value)
                .is_some_and(|seen| key(*seen) == key(scope))
        })
        .map(|s| format!("MCPService {}", key(s)))
        .collect();
    users.sort();
    users
}

/// The services that name `policy`, and the servers whose default it is.
pub fn policy_users(
    policy: &CIMDPolicy,
    services: &[MCPService],
    servers: &[AuthorizationServer],
) -> (Vec<String>, Vec<String>) {
    let name = policy.name_any();
    let ns = policy.namespace();
    let mut named: Vec<String> = services
        .iter()
        .filter(|s| s.spec.cimd_policy_ref.as_deref() == Some(name.as_str()) && s.namespace() == ns)
        .map(|s| format!("MCPService {}", key(s)))
        .collect();
    named.sort();
    let mut defaults: Vec<String> = servers
        .iter()
        .filter(|s| {
            s.spec.default_cimd_policy.as_deref() == Some(name.as_str()) && s.namespace() == ns
        })
        .map(|s| format!("AuthorizationServer {}", key(s)))
        .collect();
    defaults.sort();
    (named, defaults)
}

/// The status of an MCPScope: where it owns its value (`ownsAt`, the servers, sorted), `Accepted` (at each
/// server that counts its namespace the oldest definition of a value, or the one holding it there, is the only
/// one that counts) and who uses it (`InUse`).
///
/// `Accepted` names the servers, since a tenant reading `kubectl describe` needs to know where its definition
/// is in force and, where it is not, whose is: True `OwnsValue` where it owns its value at every server that
/// counts it, True `TakenAtSomeServers` where it owns it at some and another definition owns it at others (its
/// services at those servers do not see it), False `ValueTaken` where it owns it nowhere, False
/// `NamespaceNotAdmitted` where no server counts it.
pub fn scope_conditions(
    scope: &MCPScope,
    services: &[MCPService],
    scopes: &[MCPScope],
    servers: &[AuthorizationServer],
    labels: &crate::tenancy::NamespaceLabels,
) -> (Vec<String>, Vec<Observed>) {
    let standing = crate::tenancy::scope_standing(scope, scopes, servers, labels);
    let value = &scope.spec.value;
    let servers_text = |servers: &[String]| {
        servers
            .iter()
            .map(|s| format!("AuthorizationServer {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let taken_text = standing
        .taken_at
        .iter()
        .map(|(server, owner)| {
            format!("MCPScope {owner} defined {value} first and owns its meaning at AuthorizationServer {server}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    let accepted = if standing.not_admitted() {
        Observed::no(
            "Accepted",
            "NamespaceNotAdmitted",
            format!(
                "no AuthorizationServer admits namespace {}, so this definition counts nowhere",
                scope.namespace().unwrap_or_default()
            ),
        )
    } else if standing.owns_at.is_empty() {
        Observed::no(
            "Accepted",
            "ValueTaken",
            format!("{taken_text}; this definition is ignored: choose another value"),
        )
    } else if standing.taken_at.is_empty() {
        Observed::yes(
            "Accepted",
            "OwnsValue",
            format!("defines {value} at {}", servers_text(&standing.owns_at)),
        )
    } else {
        Observed::yes(
            "Accepted",
            "TakenAtSomeServers",
            format!(
                "defines {value} at {}; {taken_text}, where this definition is ignored",
                servers_text(&standing.owns_at)
            ),
        )
    };
    let users = scope_users(scope, services, scopes, servers, labels);
    (standing.owns_at, vec![accepted, in_use(&users)])
}

fn in_use(users: &[String]) -> Observed {
    if users.is_empty() {
        Observed::no("InUse", "Unused", "no resource uses it")
    } else {
        Observed::yes("InUse", "Used", format!("used by {}", users.join(", ")))
    }
}

/// The conditions of a CIMDPolicy. `bundle_has_key` says whether its trusted CA bundle's ConfigMap exists
/// and holds the key (`None` when it names no bundle).
pub fn policy_conditions(
    policy: &CIMDPolicy,
    services: &[MCPService],
    servers: &[AuthorizationServer],
    bundle_has_key: Option<bool>,
) -> Vec<Observed> {
    let (named, defaults) = policy_users(policy, services, servers);
    let all: Vec<String> = defaults.iter().chain(&named).cloned().collect();
    let mut observed = vec![in_use(&all)];
    // Fetch limits, private networks and the CA bundle shape the one fetcher every client shares, so only a
    // server's default policy sets them; a policy used only by name would look as if they applied.
    observed.push(if defaults.is_empty() && !named.is_empty() {
        Observed::no(
            "ServerWideSettingsApplied",
            "OnlyAdmissionRulesApply",
            "fetch, allowedPrivateNetworks and trustedCaBundle are server-wide: they come from the AuthorizationServer's defaultCimdPolicy; this policy's admission rules apply to its services",
        )
    } else {
        Observed::yes(
            "ServerWideSettingsApplied",
            if defaults.is_empty() { "NotUsed" } else { "DefaultPolicy" },
            if defaults.is_empty() {
                "the policy is not in use".to_owned()
            } else {
                format!("the default policy of {}", defaults.join(", "))
            },
        )
    });
    if let (Some(bundle), Some(found)) = (&policy.spec.trusted_ca_bundle, bundle_has_key) {
        observed.push(if found {
            Observed::yes(
                "CABundleFound",
                "Found",
                format!("ConfigMap {} holds {}", bundle.name, bundle.key),
            )
        } else {
            Observed::no(
                "CABundleFound",
                "NotFound",
                format!(
                    "ConfigMap {} with key {} is not in namespace {}",
                    bundle.name,
                    bundle.key,
                    policy.namespace().unwrap_or_default()
                ),
            )
        });
    }
    observed
}

fn count(ctx: &Context, kind: &str, result: &Result<Action, ReconcileError>) {
    let outcome = result
        .as_ref()
        .map_or_else(ReconcileError::metric_label, |_| "ok");
    ctx.metrics
        .reconciles
        .with_label_values(&[kind, outcome])
        .inc();
}

/// Reconciles one MCPScope's status.
pub async fn reconcile_scope(
    scope: Arc<MCPScope>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(FOLLOWER_REQUEUE));
    }
    let _running = ctx.metrics.reconcile_running("MCPScope");
    let span = crate::spans::reconcile("MCPScope", scope.as_ref());
    let result = scope_status(&scope, &ctx).await;
    span.finish(&result);
    count(&ctx, "MCPScope", &result);
    if result.is_ok() {
        ctx.succeeded(scope.as_ref());
    }
    result
}

async fn scope_status(scope: &MCPScope, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.stores.synced()?;
    // Only the services offering its value can use it.
    let services = ctx
        .stores
        .services
        .cloned_where(|s| s.spec.scopes.contains(&scope.spec.value));
    let scopes = ctx.stores.scopes.cloned();
    let servers = ctx.stores.servers.cloned();
    let labels = ctx.stores.labels();
    let (owns_at, observed) = scope_conditions(scope, &services, &scopes, &servers, &labels);
    let status = scope.status.as_ref();
    let previous = status.map(|s| s.conditions.clone()).unwrap_or_default();
    let moved = status.and_then(|s| s.owns_at.as_ref()) != Some(&owns_at)
        || status.and_then(|s| s.owned_value.as_deref()) != Some(scope.spec.value.as_str());
    let extra = Extra {
        fields: json!({"ownsAt": owns_at, "ownedValue": scope.spec.value}),
        changed: moved,
    };
    write_status(ctx, scope, &previous, &observed, Some(extra)).await?;
    Ok(Action::requeue(RESYNC))
}

/// Reconciles one CIMDPolicy's status.
pub async fn reconcile_policy(
    policy: Arc<CIMDPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(FOLLOWER_REQUEUE));
    }
    let _running = ctx.metrics.reconcile_running("CIMDPolicy");
    let span = crate::spans::reconcile("CIMDPolicy", policy.as_ref());
    let result = policy_status(&policy, &ctx).await;
    span.finish(&result);
    count(&ctx, "CIMDPolicy", &result);
    if result.is_ok() {
        ctx.succeeded(policy.as_ref());
    }
    result
}

async fn policy_status(policy: &CIMDPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.stores.synced()?;
    // Only the services that can name it (the rest cannot change its status).
    let (name, ns) = (policy.name_any(), policy.namespace());
    let services = ctx.stores.services.cloned_where(|s| {
        s.spec.cimd_policy_ref.as_deref() == Some(name.as_str()) && s.namespace() == ns
    });
    let servers = ctx.stores.servers.cloned();
    let bundle_has_key = match &policy.spec.trusted_ca_bundle {
        None => None,
        Some(bundle) => Some(
            Api::<ConfigMap>::namespaced(
                ctx.client.clone(),
                &policy.namespace().unwrap_or_default(),
            )
            .get_opt(&bundle.name)
            .await?
            .and_then(|c| c.data)
            .is_some_and(|d| d.contains_key(&bundle.key)),
        ),
    };
    let observed = policy_conditions(policy, &services, &servers, bundle_has_key);
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    write_status(ctx, policy, &previous, &observed, None).await?;
    Ok(Action::requeue(RESYNC))
}

/// Status fields besides the conditions, sent with every write (server-side apply drops a field its manager
/// stops sending); `changed` says whether they differ from the object's.
struct Extra {
    fields: serde_json::Value,
    changed: bool,
}

async fn write_status<K>(
    ctx: &Context,
    object: &K,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    observed: &[Observed],
    extra: Option<Extra>,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let previous = ctx.conditions_now(object, previous.to_vec());
    let conditions = status::merge(
        &previous,
        observed,
        object.meta().generation,
        &status::now(),
    );
    if conditions == previous && !extra.as_ref().is_some_and(|e| e.changed) {
        return Ok(());
    }
    let mut status =
        json!({"observedGeneration": object.meta().generation, "conditions": conditions});
    if let (
        Some(Extra {
            fields: serde_json::Value::Object(fields),
            ..
        }),
        Some(status),
    ) = (extra, status.as_object_mut())
    {
        status.extend(fields);
    }
    ctx.write_status(object, status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;

    fn scope(ns: &str, name: &str, value: &str) -> MCPScope {
        let mut v = cases::mcp_scope();
        v["metadata"] = json!({"name": name, "namespace": ns});
        v["spec"]["value"] = json!(value);
        serde_json::from_value(v).expect("scope")
    }

    fn service(ns: &str, name: &str, scopes: &[&str], policy: Option<&str>) -> MCPService {
        cases::mcp_service_in(ns, name, "https://mcp.example.com/files", scopes, policy)
    }

    fn policy(ns: &str, name: &str, bundle: bool) -> CIMDPolicy {
        let mut v = cases::cimd_policy();
        v["metadata"] = json!({"name": name, "namespace": ns});
        if bundle {
            v["spec"]["trustedCaBundle"] = json!({"name": "ca", "key": "ca.pem"});
        }
        serde_json::from_value(v).expect("policy")
    }

    fn server(default_policy: &str) -> AuthorizationServer {
        let mut v = cases::authorization_server();
        v["metadata"] = json!({"name": "auth", "namespace": "mcp-authz"});
        v["spec"]["defaultCimdPolicy"] = json!(default_policy);
        serde_json::from_value(v).expect("server")
    }

    #[test]
    fn a_scope_is_used_by_the_services_that_see_it() {
        let shared = scope("mcp-authz", "read", "files:read");
        let own = scope("apps", "write", "files:write");
        let scopes = [shared.clone(), own.clone()];
        let services = [
            service("apps", "files", &["files:read", "files:write"], None),
            service("other", "notes", &["files:read", "files:write"], None),
            service("other", "mail", &["mail:read"], None),
        ];
        let mut all = server("default");
        all.spec.allowed_namespaces =
            serde_json::from_value(json!({"from": "All"})).expect("allowed");
        let servers = [all];
        let labels = crate::tenancy::NamespaceLabels::new();
        let users = |scope: &MCPScope, servers: &[AuthorizationServer]| {
            scope_users(scope, &services, &scopes, servers, &labels)
        };
        assert_eq!(
            users(&shared, &servers),
            ["MCPService apps/files", "MCPService other/notes"],
            "the server's namespace serves every tenant"
        );
        assert_eq!(
            users(&own, &servers),
            ["MCPService apps/files"],
            "a team's own scope is not another team's"
        );
        assert!(users(&scope("x", "y", "z:z"), &servers).is_empty());
        assert!(
            users(&own, &[server("default")]).is_empty(),
            "a server that does not admit apps does not count its scope"
        );
        assert!(users(&shared, &[]).is_empty(), "no server, no use");
    }

    #[test]
    fn a_younger_definition_of_a_value_is_not_accepted_and_used_by_nobody() {
        let at = |s: i64| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(s).expect("time"),
            ))
        };
        let mut owner = scope("zzz", "read", "files:read");
        owner.metadata.creation_timestamp = at(100);
        let mut squatter = scope("aaa", "read", "files:read");
        squatter.metadata.creation_timestamp = at(200);
        let scopes = [squatter.clone(), owner.clone()];
        let services = [
            service("aaa", "files", &["files:read"], None),
            service("zzz", "files", &["files:read"], None),
        ];
        let view = |o: &[Observed]| {
            o.iter()
                .map(|o| (o.type_, o.status, o.reason, o.message.clone()))
                .collect::<Vec<_>>()
        };
        let servers = [{
            let mut v = crate::api::cases::authorization_server();
            v["metadata"] = serde_json::json!({"name": "auth", "namespace": "mcp-authz"});
            v["spec"]["allowedNamespaces"] = serde_json::json!({"from": "All"});
            serde_json::from_value::<AuthorizationServer>(v).expect("server")
        }];
        let labels = crate::tenancy::NamespaceLabels::new();
        assert_eq!(
            view(&scope_conditions(&squatter, &services, &scopes, &servers, &labels).1),
            [
                (
                    "Accepted",
                    false,
                    "ValueTaken",
                    "MCPScope zzz/read defined files:read first and owns its meaning at AuthorizationServer mcp-authz/auth; this definition is ignored: choose another value".to_owned()
                ),
                ("InUse", false, "Unused", "no resource uses it".to_owned()),
            ]
        );
        assert_eq!(
            view(&scope_conditions(&owner, &services, &scopes, &servers, &labels).1),
            [
                (
                    "Accepted",
                    true,
                    "OwnsValue",
                    "defines files:read at AuthorizationServer mcp-authz/auth".to_owned()
                ),
                (
                    "InUse",
                    true,
                    "Used",
                    "used by MCPService zzz/files".to_owned()
                ),
            ],
            "aaa's service cannot reach zzz's scope, and its own is ignored"
        );
    }

    /// F2: a definition owned at one server and taken at another says both, naming the servers and the owner,
    /// and `ownsAt` lists where it holds.
    #[test]
    fn a_scope_says_at_which_servers_it_holds_and_where_it_is_taken() {
        let at = |s: i64| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(s).expect("time"),
            ))
        };
        let named = |ns: &str, allowed: serde_json::Value| {
            let mut v = cases::authorization_server();
            v["metadata"] = json!({"name": "auth", "namespace": ns});
            v["spec"]["allowedNamespaces"] = allowed;
            serde_json::from_value::<AuthorizationServer>(v).expect("server")
        };
        let by_name = |names: &[&str]| {
            json!({"from": "Selector", "selector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}]}})
        };
        // p1 admits the team and the early namespace; p2 admits early only; p3 admits the team only.
        let servers = [
            named("p1", by_name(&["team", "early"])),
            named("p2", by_name(&["early"])),
            named("p3", by_name(&["team"])),
        ];
        let labels = crate::tenancy::NamespaceLabels::new();
        let mut early = scope("early", "read", "files:read");
        early.metadata.creation_timestamp = at(100);
        let mut team = scope("team", "read", "files:read");
        team.metadata.creation_timestamp = at(200);
        let lone = scope("nowhere", "read", "files:read");
        let scopes = [early.clone(), team.clone(), lone.clone()];
        let view = |scope: &MCPScope| {
            let (owns_at, observed) = scope_conditions(scope, &[], &scopes, &servers, &labels);
            let a = &observed[0];
            (owns_at, a.status, a.reason, a.message.clone())
        };
        assert_eq!(
            view(&team),
            (
                vec!["p3/auth".to_owned()],
                true,
                "TakenAtSomeServers",
                "defines files:read at AuthorizationServer p3/auth; MCPScope early/read defined files:read first and owns its meaning at AuthorizationServer p1/auth, where this definition is ignored".to_owned()
            )
        );
        assert_eq!(
            view(&early),
            (
                vec!["p1/auth".to_owned(), "p2/auth".to_owned()],
                true,
                "OwnsValue",
                "defines files:read at AuthorizationServer p1/auth, AuthorizationServer p2/auth"
                    .to_owned()
            )
        );
        assert_eq!(
            view(&lone),
            (
                vec![],
                false,
                "NamespaceNotAdmitted",
                "no AuthorizationServer admits namespace nowhere, so this definition counts nowhere"
                    .to_owned()
            )
        );
        let only_p1 = [servers[0].clone()];
        let (owns_at, observed) = scope_conditions(&team, &[], &scopes, &only_p1, &labels);
        assert_eq!(
            (owns_at, observed[0].status, observed[0].reason),
            (vec![], false, "ValueTaken")
        );
    }

    #[test]
    fn a_policy_used_only_by_name_says_its_server_wide_settings_do_not_apply() {
        let strict = policy("apps", "strict", true);
        let services = [service("apps", "files", &[], Some("strict"))];
        let observed = policy_conditions(&strict, &services, &[server("default")], Some(false));
        let view: Vec<(&str, bool, &str)> = observed
            .iter()
            .map(|o| (o.type_, o.status, o.reason))
            .collect();
        assert_eq!(
            view,
            [
                ("InUse", true, "Used"),
                (
                    "ServerWideSettingsApplied",
                    false,
                    "OnlyAdmissionRulesApply"
                ),
                ("CABundleFound", false, "NotFound"),
            ]
        );
        assert_eq!(
            observed[2].message,
            "ConfigMap ca with key ca.pem is not in namespace apps"
        );

        let found = policy_conditions(&strict, &services, &[server("default")], Some(true));
        assert_eq!(
            (found[2].type_, found[2].status, found[2].message.as_str()),
            ("CABundleFound", true, "ConfigMap ca holds ca.pem")
        );

        let default = policy("mcp-authz", "default", false);
        let observed = policy_conditions(&default, &services, &[server("default")], None);
        assert_eq!(observed.len(), 2, "no bundle, no CABundleFound");
        assert_eq!(
            observed[0].message,
            "used by AuthorizationServer mcp-authz/auth"
        );
        assert_eq!(observed[1].reason, "DefaultPolicy");

        let unused = policy("apps", "spare", false);
        let observed = policy_conditions(&unused, &services, &[server("default")], None);
        assert_eq!((observed[0].status, observed[0].reason), (false, "Unused"));
    }
}
