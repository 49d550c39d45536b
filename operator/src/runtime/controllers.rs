//! The controllers and their triggers. Each trigger maps a changed object to the objects it concerns (the pure
//! mappers are in [`crate::reconcile::triggers`]). A change to a kind the reconciles read from the shared caches
//! (services, scopes, policies, servers, clients, namespaces) comes from that cache, once it holds the change
//! ([`FollowsCaches`]); only the kinds a reconcile reads from the API server (the objects it owns, Secrets, Pods,
//! Services) have watches of the controller's own.
//!
//! Every namespaced watch goes through the [`WatchScope`]: one watch for the whole cluster, or one per served
//! namespace in the namespace-scoped install (where the operator may read nothing else). There, each served
//! namespace gets its own controller of each kind (a controller has one primary watch), fed by the watches of
//! every served namespace: n namespaces cost about 12·n² watch streams, which is why that mode is for a handful.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::watch_errors::{WatchBackoff, log_failures};
use crate::api::{AuthorizationServer, CIMDPolicy, MCPClient, MCPScope, MCPService};
use crate::reconcile::stores::{Cached, Stores, Touched};
use crate::reconcile::{self, Context, WatchScope, triggers};

/// Requeues for a change that concerns many objects: every object of the controller's store in
/// `namespace`, or all of them for `None`.
fn objects_in<K>(store: Store<K>) -> impl Fn(Option<String>) -> Vec<ObjectRef<K>> + Clone
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    move |namespace| {
        store
            .state()
            .iter()
            .filter(|o| namespace.is_none() || o.namespace() == namespace)
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect()
    }
}

/// Watches only what the operator made (the owned-object watches of every controller).
fn owned() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        crate::naming::MANAGED_BY_LABEL,
        crate::naming::MANAGED_BY
    ))
}

/// The AuthorizationServer a retained object belongs to, by its name `<server><suffix>`.
fn retained_by<K: Resource<DynamicType = ()>>(
    object: &K,
    suffix: &str,
) -> Option<ObjectRef<AuthorizationServer>> {
    let server = object.meta().name.as_deref()?.strip_suffix(suffix)?;
    Some(ObjectRef::new(server).within(object.meta().namespace.as_deref()?))
}

/// Namespaced kinds the controllers watch.
trait Watched:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> Watched for T where
    T: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// `.owns` and `.watches` over every served namespace.
trait ScopedWatches<K: Watched> {
    fn owns_in<C: Watched>(self, scope: &WatchScope, client: &kube::Client) -> Self;
    fn watches_in<C, I>(
        self,
        scope: &WatchScope,
        client: &kube::Client,
        config: watcher::Config,
        mapper: impl Fn(C) -> I + Clone + Send + Sync + 'static,
    ) -> Self
    where
        C: Watched,
        I: IntoIterator<Item = ObjectRef<K>> + Send + 'static,
        I::IntoIter: Send;
}

impl<K: Watched> ScopedWatches<K> for Controller<K> {
    fn owns_in<C: Watched>(self, scope: &WatchScope, client: &kube::Client) -> Self {
        scope
            .apis::<C>(client)
            .into_iter()
            .fold(self, |c, api| c.owns(api, owned()))
    }

    fn watches_in<C, I>(
        self,
        scope: &WatchScope,
        client: &kube::Client,
        config: watcher::Config,
        mapper: impl Fn(C) -> I + Clone + Send + Sync + 'static,
    ) -> Self
    where
        C: Watched,
        I: IntoIterator<Item = ObjectRef<K>> + Send + 'static,
        I::IntoIter: Send,
    {
        scope.apis::<C>(client).into_iter().fold(self, |c, api| {
            c.watches(api, config.clone(), mapper.clone())
        })
    }
}

/// Triggers taken from the shared caches ([`Cached::touched`]): each change a cache takes in reconciles the
/// objects `mapper` says it concerns, or every object of the controller when the cache cannot say which
/// changed. The reconciles read these caches, so their triggers must come after the cache holds the change,
/// never from a watch of the controller's own (which can deliver it first; the reconcile would then decide
/// without it and nothing would bring it back before the periodic check).
trait FollowsCaches<K: Watched> {
    /// `mapper` takes the changed object as it is now and as the cache held it before.
    fn follows<C, I>(
        self,
        cache: &Cached<C>,
        mapper: impl Fn(&C, Option<&C>) -> I + Send + 'static,
    ) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
        I: IntoIterator<Item = ObjectRef<K>>;
}

impl<K: Watched> FollowsCaches<K> for Controller<K> {
    fn follows<C, I>(
        self,
        cache: &Cached<C>,
        mapper: impl Fn(&C, Option<&C>) -> I + Send + 'static,
    ) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
        I: IntoIterator<Item = ObjectRef<K>>,
    {
        let store = self.store();
        let all = objects_in(self.store());
        let refs = cache.touched().flat_map(move |touched| {
            let refs: Vec<ObjectRef<K>> = match touched {
                // Only this controller's objects: in the namespace-scoped install each served namespace
                // has its own controller, and a reference to another's object is an error to it.
                Touched::One { now, before } => mapper(&now, before.as_deref())
                    .into_iter()
                    .filter(|r| store.get(r).is_some())
                    .collect(),
                Touched::Any => all(None),
            };
            futures::stream::iter(refs)
        });
        self.reconcile_on(refs)
    }
}

/// Runs the controllers of every kind until the tasks are aborted.
pub(super) async fn run(client: kube::Client, ctx: Arc<Context>, stores: Stores) {
    let scope = ctx.scope.clone();
    let mut all = Vec::new();
    for api in scope.apis::<AuthorizationServer>(&client) {
        all.push(tokio::spawn(server_controller(
            api,
            client.clone(),
            ctx.clone(),
        )));
    }
    for api in scope.apis::<MCPService>(&client) {
        all.push(tokio::spawn(service_controller(
            api,
            client.clone(),
            ctx.clone(),
            stores.clone(),
        )));
    }
    for api in scope.apis::<MCPScope>(&client) {
        all.push(tokio::spawn(scope_controller(api, ctx.clone())));
    }
    for api in scope.apis::<CIMDPolicy>(&client) {
        all.push(tokio::spawn(policy_controller(api, ctx.clone())));
    }
    // Aborting the task running this aborts none of these by itself: keep them tied to it.
    struct AbortAll(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortAll {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let all = AbortAll(all);
    futures::future::pending::<()>().await;
    drop(all);
}

async fn server_controller(
    servers: Api<AuthorizationServer>,
    client: kube::Client,
    ctx: Arc<Context>,
) {
    // Labelled apart from the shared caches' watches of the same kind.
    let errors = ctx
        .metrics
        .watch_errors
        .with_label_values(&["AuthorizationServer/controller"]);
    let scope = ctx.scope.clone();
    let stores = ctx.stores.clone();
    Controller::new(servers, watcher::Config::default())
        .trigger_backoff(WatchBackoff::default())
        .owns_in::<ConfigMap>(&scope, &client)
        .owns_in::<Deployment>(&scope, &client)
        .owns_in::<Service>(&scope, &client)
        // The PVC and the keys Secret carry no owner reference (they outlive the server): their
        // names lead back to it, so a deleted one is made again at once.
        .watches_in(&scope, &client, owned(), |pvc: PersistentVolumeClaim| {
            retained_by(&pvc, "-authserver")
        })
        // The same goes for the in-cluster CA and TLS Secrets (owned, but a deleted one must come back
        // before the next periodic check).
        .watches_in(&scope, &client, owned(), |secret: Secret| {
            ["-authserver-keys", "-authserver-ca", "-authserver-tls"]
                .into_iter()
                .find_map(|suffix| retained_by(&secret, suffix))
        })
        // What the server's config is rendered from: the shared caches, and a Secret a client names (it
        // decides whether the client is in the config).
        .reconcile_all_on(stores.services.changes())
        .reconcile_all_on(stores.scopes.changes())
        .reconcile_all_on(stores.policies.changes())
        .reconcile_all_on(stores.clients.changes())
        .reconcile_all_on(client_secret_changes(
            &scope,
            &client,
            stores.clients.clone(),
        ))
        // Namespace labels decide which services a server admits (allowedNamespaces).
        .reconcile_all_on(stores.namespaces.changes())
        .run(
            reconcile::authorization_server::reconcile,
            reconcile::error_policy,
            ctx,
        )
        .for_each(move |outcome| log_failures(outcome, "AuthorizationServer", &errors))
        .await;
}

/// One item for each change to a Secret a declared client names. Secrets are watched by their metadata only:
/// their values are read by the reconcile that needs them, and never kept.
fn client_secret_changes(
    scope: &WatchScope,
    client: &kube::Client,
    clients: crate::reconcile::stores::Cached<MCPClient>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let watches = scope
        .apis::<PartialObjectMeta<Secret>>(client)
        .into_iter()
        .map(|api| {
            watcher(api, watcher::Config::default())
                .default_backoff()
                .touched_objects()
                .boxed()
        });
    futures::stream::select_all(watches).filter_map(move |touched| {
        let named = touched.is_ok_and(|secret| names_secret(&clients, &secret));
        std::future::ready(named.then_some(()))
    })
}

/// Whether a declared client in the Secret's namespace names it.
fn names_secret<K: Resource>(
    clients: &crate::reconcile::stores::Cached<MCPClient>,
    secret: &K,
) -> bool {
    let meta = secret.meta();
    clients.all().iter().any(|c| {
        c.metadata.namespace == meta.namespace
            && c.spec
                .client_secret_ref
                .as_ref()
                .is_some_and(|r| Some(&r.name) == meta.name.as_ref())
    })
}

/// MCPScope status: re-checked when a service, scope, server or namespace changes, for the scopes that
/// change can concern ([`triggers`]).
async fn scope_controller(scopes: Api<MCPScope>, ctx: Arc<Context>) {
    // Labelled apart from the shared caches' watches of the same kind.
    let errors = ctx
        .metrics
        .watch_errors
        .with_label_values(&["MCPScope/controller"]);
    let stores = ctx.stores.clone();
    let controller = Controller::new(scopes, watcher::Config::default())
        .trigger_backoff(WatchBackoff::default());
    let (by_service, by_scope, by_namespace) =
        (controller.store(), controller.store(), controller.store());
    controller
        // InUse: the scopes defining a value the service offers (or offered before this edit).
        .follows(&stores.services, move |service: &MCPService, before| {
            let values = triggers::values_then_and_now(
                &service.spec.scopes,
                before.map(|b| b.spec.scopes.as_slice()),
            );
            let scopes = by_service.state();
            triggers::scopes_defining(&values, scopes.iter().map(|s| s.as_ref()))
                .into_iter()
                .map(ObjectRef::from_obj)
                .collect::<Vec<_>>()
        })
        // Ownership: the definitions of the same value (before and after an edit of it).
        .follows(&stores.scopes, move |changed: &MCPScope, before| {
            let values = triggers::values_then_and_now(
                std::slice::from_ref(&changed.spec.value),
                before.map(|b| std::slice::from_ref(&b.spec.value)),
            );
            let scopes = by_scope.state();
            triggers::scopes_defining(&values, scopes.iter().map(|s| s.as_ref()))
                .into_iter()
                .map(ObjectRef::from_obj)
                .collect::<Vec<_>>()
        })
        // Which namespaces a server counts (allowedNamespaces, or the server itself coming or going): all of
        // them, servers change seldom.
        .reconcile_all_on(stores.servers.changes())
        // A namespace let in or shut out by its labels: the definitions sharing a value with its own.
        .follows(&stores.namespaces, move |namespace, _| {
            let scopes = by_namespace.state();
            let scopes: Vec<&MCPScope> = scopes.iter().map(|s| s.as_ref()).collect();
            triggers::scopes_sharing_values_with(&namespace.name_any(), &scopes)
                .into_iter()
                .map(ObjectRef::from_obj)
                .collect::<Vec<_>>()
        })
        .run(
            reconcile::usage::reconcile_scope,
            reconcile::error_policy,
            ctx,
        )
        .for_each(move |outcome| log_failures(outcome, "MCPScope", &errors))
        .await;
}

/// CIMDPolicy status: re-checked when a service or server changes.
async fn policy_controller(policies: Api<CIMDPolicy>, ctx: Arc<Context>) {
    // Labelled apart from the shared caches' watches of the same kind.
    let errors = ctx
        .metrics
        .watch_errors
        .with_label_values(&["CIMDPolicy/controller"]);
    let stores = ctx.stores.clone();
    Controller::new(policies, watcher::Config::default())
        .trigger_backoff(WatchBackoff::default())
        .reconcile_all_on(stores.services.changes())
        .reconcile_all_on(stores.servers.changes())
        .run(
            reconcile::usage::reconcile_policy,
            reconcile::error_policy,
            ctx,
        )
        .for_each(move |outcome| log_failures(outcome, "CIMDPolicy", &errors))
        .await;
}

/// Requeues the services naming the resource URL a changed (or deleted) service names or named before the
/// edit: when the URL's holder goes, the next in line gets its key now rather than at the next resync. And
/// the services whose token-exchange edges call it by name: their sidecars' edges to it follow whether it
/// holds its URL. The changed service itself is among them: its own watch can reconcile it before the cache
/// holds the edit, and its reconcile reads its claim to the URL and its share of the server's config budget
/// from the cache.
fn sharing_resource_url(
    store: Store<MCPService>,
    servers: Cached<AuthorizationServer>,
) -> impl Fn(&MCPService, Option<&MCPService>) -> Vec<ObjectRef<MCPService>> + Clone {
    move |changed, before| {
        let urls = [Some(changed), before].map(|s| s.map(|s| &s.spec.resource_url));
        let services = store.state();
        let servers = servers.all();
        let servers: Vec<&AuthorizationServer> = servers.iter().map(|s| s.as_ref()).collect();
        let callers = triggers::callers_of(changed, &servers, services.iter().map(|s| s.as_ref()));
        services
            .iter()
            .filter(|s| urls.contains(&Some(&s.spec.resource_url)))
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .chain(callers.into_iter().map(ObjectRef::from_obj))
            .chain([ObjectRef::from_obj(changed)])
            .collect()
    }
}

async fn service_controller(
    services: Api<MCPService>,
    client: kube::Client,
    ctx: Arc<Context>,
    stores: Stores,
) {
    // Labelled apart from the shared caches' watches of the same kind.
    let errors = ctx
        .metrics
        .watch_errors
        .with_label_values(&["MCPService/controller"]);
    let scope = ctx.scope.clone();
    let controller = Controller::new(services, watcher::Config::default())
        .trigger_backoff(WatchBackoff::default());
    let same_url = sharing_resource_url(controller.store(), stores.servers.clone());
    let in_namespace = objects_in(controller.store());
    let g = controller.store();
    let readers = controller.store();
    let (d, e) = (in_namespace.clone(), in_namespace.clone());
    let injected = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::api::INJECT_LABEL,
        crate::api::INJECT_ENABLED
    ));
    let servers = stores.servers.clone();
    let labelled = stores.clone();
    controller
        .owns_in::<ConfigMap>(&scope, &client)
        .owns_in::<NetworkPolicy>(&scope, &client)
        .owns_in::<Secret>(&scope, &client)
        // A server's TLS Secret carries the CA bundle its services' sidecar ConfigMaps copy: a new CA (or
        // the first one) must reach them. (Read from the API server by the reconcile: no cache to wait for.)
        .watches_in(&scope, &client, owned(), move |secret: Secret| {
            let services = g.state();
            reconcile::mcp_service::bundle_readers(
                &secret.name_any(),
                &secret.namespace().unwrap_or_default(),
                services.iter().map(|s| s.as_ref()),
            )
            .into_iter()
            .map(ObjectRef::from_obj)
            .collect::<Vec<_>>()
        })
        .watches_in(&scope, &client, injected, move |p: Pod| d(p.namespace()))
        .watches_in(
            &scope,
            &client,
            watcher::Config::default(),
            move |s: Service| e(s.namespace()),
        )
        // Only the services that can see a definition of the scope's value (now or before the edit) at their
        // server: every edit re-rendered every service of the cluster.
        .follows(&stores.scopes, move |changed: &MCPScope, before| {
            let values = triggers::values_then_and_now(
                std::slice::from_ref(&changed.spec.value),
                before.map(|b| std::slice::from_ref(&b.spec.value)),
            );
            let services = readers.state();
            let servers = servers.all();
            let servers: Vec<&AuthorizationServer> = servers.iter().map(|s| s.as_ref()).collect();
            triggers::services_using_scope(
                &values,
                &changed.namespace().unwrap_or_default(),
                services.iter().map(|s| s.as_ref()),
                &servers,
                &labelled.labels(),
            )
            .into_iter()
            .map(ObjectRef::from_obj)
            .collect::<Vec<_>>()
        })
        .follows(&stores.policies, move |p: &CIMDPolicy, _| {
            in_namespace(p.namespace())
        })
        .reconcile_all_on(stores.servers.changes())
        .follows(&stores.services, same_url)
        // A namespace let in or shut out changes its services, and whoever shares a URL with them.
        .reconcile_all_on(stores.namespaces.changes())
        .run(
            reconcile::mcp_service::reconcile,
            reconcile::error_policy,
            ctx,
        )
        .for_each(move |outcome| log_failures(outcome, "MCPService", &errors))
        .await;
}
