//! MCPService -> sidecar ConfigMap, NetworkPolicy and credentials Secret, and status: `Ready`,
//! `ScopesResolved`, `PolicyResolved`, `CredentialsIssued`, `TransportSecured`, `RawPortExposed`,
//! `SidecarsCurrent`, injected and outdated pod counts.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::service_observe::{self, Attachment, Facts, Trust};
use super::{Context, FOLLOWER_REQUEUE, ReconcileError, apply, secret_data};
use crate::api::{AuthorizationServer, MCPService};
use crate::naming;
use crate::render::exchange::Peers;
use crate::status::{self, Observed};
use crate::tenancy;

/// Services of the namespace that still send traffic to the MCP server's own port (bypassing the
/// sidecar): their selector picks the same pods and a port targets `upstream.port`, by number or by
/// a name that one of `pods` (the service's pods) gives that port.
pub fn raw_port_services(service: &MCPService, services: &[Service], pods: &[Pod]) -> Vec<String> {
    let upstream = service.spec.upstream.port;
    let names_upstream = |name: &str| {
        pods.iter()
            .filter_map(|p| p.spec.as_ref())
            .flat_map(|spec| {
                spec.containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.container_port == upstream && p.name.as_deref() == Some(name))
    };
    services
        .iter()
        .filter(|svc| {
            let Some(spec) = &svc.spec else { return false };
            let selector = spec.selector.clone().unwrap_or_default();
            let same_pods = !selector.is_empty()
                && selector
                    .iter()
                    .all(|(k, v)| service.spec.selector.get(k) == Some(v));
            let raw = spec.ports.iter().flatten().any(|p| match &p.target_port {
                Some(IntOrString::Int(port)) => *port == upstream,
                Some(IntOrString::String(name)) => names_upstream(name),
                None => p.port == upstream,
            });
            same_pods && raw
        })
        .map(ResourceExt::name_any)
        .collect()
}

/// The services to reconcile when Secret `namespace/name` changes: when it is a server's TLS Secret
/// (`<server>-authserver-tls`), the services naming that server, whose sidecar ConfigMaps copy its CA bundle;
/// none otherwise. Only those: a tenant may make a Secret of that name, with the operator's label, in its own
/// namespace, and each write must not re-render every service of the cluster.
pub fn bundle_readers<'a>(
    name: &str,
    namespace: &str,
    services: impl IntoIterator<Item = &'a MCPService>,
) -> Vec<&'a MCPService> {
    let Some(server) = name.strip_suffix(&naming::authserver_tls("")) else {
        return Vec::new();
    };
    services
        .into_iter()
        .filter(|s| crate::render::names_server_at(s, server, namespace))
        .collect()
}

/// The live pods of `pods` the webhook injected for `service`.
pub fn injected_pods<'a>(service: &MCPService, pods: &'a [Pod]) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| {
            p.annotations().get(naming::INJECTED_SERVICE_ANNOTATION) == Some(&service.name_any())
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Names of the `injected` pods whose sidecar came from another operator version than `version` (their
/// `injected-version` annotation): they run the sidecar image and settings of that version until restarted.
pub fn outdated_pods(injected: &[&Pod], version: &str) -> Vec<String> {
    let mut names: Vec<String> = injected
        .iter()
        .filter(|p| {
            p.annotations()
                .get(naming::INJECTED_VERSION_ANNOTATION)
                .map(String::as_str)
                != Some(version)
        })
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// Most pod names a condition message lists.
const NAMES_SHOWN: usize = 5;

/// The `SidecarsCurrent` condition for `outdated` pods out of `injected`.
pub fn sidecars_current(outdated: &[String], injected: usize, version: &str) -> Observed {
    if outdated.is_empty() {
        return Observed::yes(
            "SidecarsCurrent",
            "AllCurrent",
            format!("{injected} injected pod(s), all with the sidecar of version {version}"),
        );
    }
    let shown = outdated
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = outdated.len().saturating_sub(NAMES_SHOWN);
    Observed::no(
        "SidecarsCurrent",
        "OutdatedSidecars",
        format!(
            "{} of {injected} injected pod(s) run a sidecar injected by another version than {version}: {shown}{}; restart them (kubectl rollout restart) to take the current sidecar",
            outdated.len(),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
    )
}

/// The CA bundle of `server`'s TLS Secret (written by the operator or cert-manager), when it uses TLS.
async fn issuer_trust(
    client: &kube::Client,
    server: &AuthorizationServer,
    server_ns: &str,
) -> Result<Trust, kube::Error> {
    if !server.spec.in_cluster_transport.tls() {
        return Ok(Trust::Mesh);
    }
    let bundle = Api::<Secret>::namespaced(client.clone(), server_ns)
        .get_opt(&naming::authserver_tls(&server.name_any()))
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(crate::serving_tls::keys::BUNDLE).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"));
    Ok(bundle.map_or(Trust::Waiting, Trust::Tls))
}

/// Deletes the service's credentials Secret if the operator made it for this very service.
async fn revoke_credentials(
    service: &MCPService,
    client: &kube::Client,
    namespace: &str,
) -> Result<(), ReconcileError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let name = naming::sidecar_credentials(&service.name_any());
    let Some(secret) = secrets.get_opt(&name).await? else {
        return Ok(());
    };
    let ours = secret
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == service.meta().uid.as_ref());
    if ours {
        secrets.delete(&name, &Default::default()).await?;
    }
    Ok(())
}

/// Reconciles one MCPService.
pub async fn reconcile(
    service: Arc<MCPService>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(FOLLOWER_REQUEUE));
    }
    let _running = ctx.metrics.reconcile_running("MCPService");
    let span = crate::spans::reconcile("MCPService", service.as_ref());
    let started = std::time::Instant::now();
    let key = crate::tenancy::key_of(service.as_ref());
    tracing::debug!(service = %key, "reconcile starts");
    let result = reconcile_inner(&service, &ctx).await;
    tracing::debug!(service = %key, ready = ?result.as_ref().ok().map(|(_, ready)| ready), elapsed = ?started.elapsed(), "reconcile ends");
    let result = result.map(|(action, _)| action);
    span.finish(&result);
    let outcome = result
        .as_ref()
        .map_or_else(ReconcileError::metric_label, |_| "ok");
    ctx.metrics
        .reconciles
        .with_label_values(&["MCPService", outcome])
        .inc();
    ctx.metrics
        .reconcile_seconds
        .with_label_values(&["MCPService"])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(service.as_ref());
    }
    result
}

/// The next action, and the Ready condition's status and reason (for the log).
async fn reconcile_inner(
    service: &MCPService,
    ctx: &Context,
) -> Result<(Action, Option<(String, String)>), ReconcileError> {
    let namespace = service.namespace().ok_or(ReconcileError::NoNamespace)?;
    let client = &ctx.client;
    let reference = &service.spec.authorization_server_ref;
    let server_ns = reference
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| namespace.clone());
    ctx.stores.synced()?;
    // A server outside the namespaces this operator serves is none of its business (and unreadable to it).
    let server = if ctx.scope.includes(&server_ns) {
        ctx.stores.servers.get(&server_ns, &reference.name)
    } else {
        None
    };
    let server = server.as_deref();
    let labels = ctx.stores.labels();
    let scopes = ctx.stores.scopes.cloned();
    // Only what counts at the server the service names (no server: nothing to render with them).
    let scopes = match &server {
        Some(server) => tenancy::scopes_at(server, &scopes, &labels),
        None => scopes,
    };
    let policies = ctx
        .stores
        .policies
        .cloned_where(|p| p.namespace().as_deref() == Some(namespace.as_str()));
    // Only the claimants of the same URL can hold it.
    let url = &service.spec.resource_url;
    let claimants = ctx
        .stores
        .services
        .cloned_where(|s| &s.spec.resource_url == url);
    let attachment = match (
        service_observe::attachment(service, server, &claimants, &labels),
        server,
    ) {
        // The budget weighs every service of the namespace at the server, each against its URL's rivals: only
        // those are copied, not every service of the cluster on every reconcile.
        (Attachment::Holds, Some(server)) => {
            let urls: std::collections::BTreeSet<String> = ctx
                .stores
                .services
                .cloned_where(|s| s.namespace().as_deref() == Some(namespace.as_str()))
                .into_iter()
                .map(|s| s.spec.resource_url)
                .collect();
            let services = ctx.stores.services.cloned_where(|s| {
                s.namespace().as_deref() == Some(namespace.as_str())
                    || urls.contains(&s.spec.resource_url)
            });
            let policies = ctx
                .stores
                .policies
                .cloned_where(|p| p.namespace().as_deref() == Some(namespace.as_str()));
            match crate::config_budget::left_out(server, &services, &scopes, &policies, &labels)
                .remove(&tenancy::key_of(service))
            {
                Some(why) => Attachment::OverBudget(why),
                None => Attachment::Holds,
            }
        }
        (attachment, _) => attachment,
    };
    // The services this one's edges call by name (`to`), with their rivals for their URLs: enough to tell
    // whether each holds its URL, without a copy of every service per reconcile.
    let called_urls: Vec<String> = server
        .map(|server| {
            let name = service.name_any();
            server
                .spec
                .token_exchange
                .iter()
                .filter(|e| {
                    e.from.name == name
                        && e.from.namespace.as_deref().unwrap_or(&server_ns) == namespace
                })
                .filter_map(|e| e.to.as_ref())
                .filter_map(|to| {
                    let to_ns = to.namespace.as_deref().unwrap_or(&server_ns);
                    ctx.stores.services.get(to_ns, &to.name)
                })
                .map(|called| called.spec.resource_url.clone())
                .collect()
        })
        .unwrap_or_default();
    let called = ctx
        .stores
        .services
        .cloned_where(|s| called_urls.contains(&s.spec.resource_url));
    let (trust, keys_root) = match (server, &attachment) {
        (Some(server), Attachment::Holds) => (
            Some(issuer_trust(client, server, &server_ns).await?),
            crate::keys::resource_server_root(
                &secret_data(
                    client,
                    &server_ns,
                    &naming::authserver_keys(&server.name_any()),
                )
                .await?,
            ),
        ),
        _ => (None, None),
    };
    let selector = service
        .spec
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let services = Api::<Service>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let facts = Facts {
        server_key: format!("{server_ns}/{}", reference.name),
        server,
        attachment,
        scopes: &scopes,
        policies: &policies,
        trust,
        keys_root,
        pods: &pods,
        services: &services,
        peers: Peers {
            services: &called,
            labels: &labels,
        },
        scrapers: ctx.settings.metrics_scrapers.as_ref(),
        version: &ctx.settings.version,
    };
    let observation = service_observe::observe(service, &facts)?;

    for object in &observation.apply {
        apply(client, object).await?;
    }
    if observation.revoke {
        revoke_credentials(service, client, &namespace).await?;
    }
    let previous = ctx.conditions_now(
        service,
        service
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    );
    let conditions = status::merge(
        &previous,
        &observation.observed,
        service.meta().generation,
        &status::now(),
    );
    for c in status::flipped(&previous, &conditions) {
        let warning = (c.type_ == "RawPortExposed") == (c.status == "True");
        ctx.event(service, warning, &c.reason, c.message.clone())
            .await;
    }
    let (injected, outdated) = (observation.injected, observation.outdated);
    // A status that would not change is not sent: each service is reconciled again whenever its server,
    // namespace or URL sharers change, and an unchanged write is still a request.
    let issued = conditions
        .iter()
        .any(|c| c.type_ == "CredentialsIssued" && c.status == "True");
    let unchanged = service.status.as_ref().is_some_and(|s| {
        s.issued_for.as_deref() == issued.then(|| tenancy::issued_for(service)).as_deref()
            && s.conditions == conditions
            && s.observed_generation == service.meta().generation
            && usize::try_from(s.injected_pods).ok() == Some(injected)
            && usize::try_from(s.outdated_pods).ok() == Some(outdated)
    });
    if !unchanged {
        let mut status = json!({"observedGeneration": service.meta().generation, "conditions": conditions, "injectedPods": injected, "outdatedPods": outdated});
        if issued {
            status["issuedFor"] = json!(tenancy::issued_for(service));
        }
        ctx.write_status(service, status).await?;
    }
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()));
    Ok((Action::requeue(observation.requeue), ready))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;

    fn k8s_service(name: &str, selector: serde_json::Value, ports: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"selector": selector, "ports": ports}}),
        )
        .expect("service")
    }

    #[test]
    fn raw_port_detection() {
        let mcp: MCPService = serde_json::from_value(cases::mcp_service()).expect("mcp");
        let services = [
            k8s_service(
                "raw",
                json!({"app": "files"}),
                json!([{"port": 80, "targetPort": 8080}]),
            ),
            k8s_service(
                "raw-implicit",
                json!({"app": "files"}),
                json!([{"port": 8080}]),
            ),
            k8s_service(
                "good",
                json!({"app": "files"}),
                json!([{"port": 80, "targetPort": 8443}]),
            ),
            k8s_service(
                "named",
                json!({"app": "files"}),
                json!([{"port": 80, "targetPort": "mcp-authz"}]),
            ),
            k8s_service(
                "named-raw",
                json!({"app": "files"}),
                json!([{"port": 80, "targetPort": "http"}]),
            ),
            k8s_service(
                "other-pods",
                json!({"app": "notes"}),
                json!([{"port": 80, "targetPort": 8080}]),
            ),
            k8s_service("no-selector", json!({}), json!([{"port": 8080}])),
        ];
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "files-0", "labels": {"app": "files"}},
            "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"name": "http", "containerPort": 8080}]}],
                     "initContainers": [{"name": "mcp-authz-sidecar", "image": "s", "restartPolicy": "Always",
                                          "ports": [{"name": "mcp-authz", "containerPort": 8443}]}]}
        }))
        .expect("pod");
        assert_eq!(
            raw_port_services(&mcp, &services, std::slice::from_ref(&pod)),
            ["raw", "raw-implicit", "named-raw"]
        );
        assert_eq!(
            raw_port_services(&mcp, &services, &[]),
            ["raw", "raw-implicit"],
            "a port name no pod defines reaches nothing"
        );
    }

    #[test]
    fn outdated_sidecars() {
        let service: MCPService = serde_json::from_value({
            let mut v = crate::api::cases::mcp_service();
            v["metadata"] = json!({"name": "files", "namespace": "apps"});
            v
        })
        .expect("service");
        let pod =
            |name: &str, service: Option<&str>, version: Option<&str>, deleting: bool| -> Pod {
                let mut annotations = serde_json::Map::new();
                if let Some(s) = service {
                    annotations.insert(naming::INJECTED_SERVICE_ANNOTATION.into(), json!(s));
                }
                if let Some(v) = version {
                    annotations.insert(naming::INJECTED_VERSION_ANNOTATION.into(), json!(v));
                }
                let mut meta = json!({"name": name, "annotations": annotations});
                if deleting {
                    meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                }
                serde_json::from_value(json!({"metadata": meta})).expect("pod")
            };
        /// (name, pods, injected, outdated names, (status, message))
        type Case = (
            &'static str,
            Vec<Pod>,
            usize,
            Vec<&'static str>,
            (&'static str, &'static str),
        );
        let cases: Vec<Case> = vec![
            (
                "no pods",
                vec![],
                0,
                vec![],
                (
                    "True",
                    "0 injected pod(s), all with the sidecar of version 1.2.0",
                ),
            ),
            (
                "current and outdated, another service's and a deleted one left out",
                vec![
                    pod("b", Some("files"), Some("1.1.0"), false),
                    pod("a", Some("files"), Some("1.2.0"), false),
                    pod("c", Some("files"), None, false),
                    pod("d", Some("other"), Some("1.0.0"), false),
                    pod("e", Some("files"), Some("1.0.0"), true),
                ],
                3,
                vec!["b", "c"],
                (
                    "False",
                    "2 of 3 injected pod(s) run a sidecar injected by another version than 1.2.0: b, c; restart them (kubectl rollout restart) to take the current sidecar",
                ),
            ),
            (
                "long lists are cut",
                (0..7)
                    .map(|i| pod(&format!("p{i}"), Some("files"), Some("0.9.0"), false))
                    .collect(),
                7,
                vec!["p0", "p1", "p2", "p3", "p4", "p5", "p6"],
                (
                    "False",
                    "7 of 7 injected pod(s) run a sidecar injected by another version than 1.2.0: p0, p1, p2, p3, p4 and 2 more; restart them (kubectl rollout restart) to take the current sidecar",
                ),
            ),
        ];
        for (name, pods, injected, outdated, (status, message)) in cases {
            let live = injected_pods(&service, &pods);
            assert_eq!(live.len(), injected, "{name}");
            let names = outdated_pods(&live, "1.2.0");
            assert_eq!(names, outdated, "{name}");
            let condition = sidecars_current(&names, live.len(), "1.2.0");
            let got = if condition.status { "True" } else { "False" };
            assert_eq!(
                (got, condition.message.as_str()),
                (status, message),
                "{name}"
            );
        }
    }

    /// Which services a changed Secret re-renders: a server's TLS Secret reaches the services naming that
    /// server; a Secret a tenant names like one in its own namespace reaches at most its own services naming a
    /// server of that name there (before, every MCPService of the cluster, at each write).
    #[test]
    fn a_tls_secret_requeues_only_the_services_of_its_server() {
        let svc = |ns: &str, name: &str, server: serde_json::Value| -> MCPService {
            let mut s =
                crate::api::cases::mcp_service_in(ns, name, "https://mcp.example.com/x", &[], None);
            s.spec.authorization_server_ref = serde_json::from_value(server).expect("ref");
            s
        };
        let services = [
            svc(
                "team-a",
                "files",
                json!({"name": "auth", "namespace": "mcp-authz"}),
            ),
            svc(
                "team-b",
                "notes",
                json!({"name": "auth", "namespace": "mcp-authz"}),
            ),
            svc(
                "team-c",
                "mail",
                json!({"name": "other", "namespace": "mcp-authz"}),
            ),
            svc("team-a", "local", json!({"name": "x"})),
        ];
        let cases: &[(&str, &str, &str, &[&str])] = &[
            (
                "the server's TLS Secret",
                "auth-authserver-tls",
                "mcp-authz",
                &["team-a/files", "team-b/notes"],
            ),
            (
                "another server's",
                "other-authserver-tls",
                "mcp-authz",
                &["team-c/mail"],
            ),
            (
                "a tenant's look-alike",
                "auth-authserver-tls",
                "team-a",
                &[],
            ),
            (
                "a tenant's look-alike for a server named in its namespace",
                "x-authserver-tls",
                "team-a",
                &["team-a/local"],
            ),
            ("the keys Secret", "auth-authserver-keys", "mcp-authz", &[]),
            (
                "a name that only ends alike",
                "auth-authserver-tls-old",
                "mcp-authz",
                &[],
            ),
        ];
        for (case, name, namespace, want) in cases {
            let got: Vec<String> = bundle_readers(name, namespace, &services)
                .into_iter()
                .map(crate::tenancy::key_of)
                .collect();
            assert_eq!(got, *want, "{case}");
        }
    }
}
