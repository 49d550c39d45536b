//! One cache per kind the operator reads, filled by one watch each (one per served namespace in the
//! namespace-scoped install) and shared by every controller, every mapper and the webhook. A reconcile reads
//! its inputs from here instead of listing whole kinds from the API server: with n services, listing on each
//! reconcile made a cold start cost n² objects sent and about 47 requests per service.
//!
//! A cache that has not finished its first list is empty, and an empty cache reads as "no other claimant":
//! a restarted operator would hand a held resource URL or scope value to a younger claimant. So nothing reads
//! a cache before every one has synced ([`Stores::wait_until_ready`] before the controllers and the webhook
//! start, and [`Stores::synced`] again in each reconcile); after a re-list the writer swaps the new contents
//! in whole, so a synced cache never goes back to empty.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{ReconcileError, WatchScope};
use crate::api::{AuthorizationServer, CIMDPolicy, MCPClient, MCPScope, MCPService};
use crate::metrics::Metrics;
use crate::tenancy::NamespaceLabels;

/// The caches of one kind: one per served namespace, or one for the cluster.
#[derive(Clone)]
pub struct Cached<K: Resource<DynamicType = ()> + Clone + 'static> {
    stores: Vec<Store<K>>,
    /// Tells the controllers what the caches have taken in (see [`Cached::touched`]).
    touched: tokio::sync::broadcast::Sender<Touched<K>>,
}

/// What a cache has just taken in, for the controllers it triggers.
#[derive(Debug)]
pub enum Touched<K> {
    /// An object was written (the cache now holds `now`) or deleted (`now` is its last state). `before` is
    /// what the cache held of it until then: an edit concerns what the object was as much as what it is (a
    /// scope value a service stopped offering).
    One {
        /// The object as written, or as it was deleted.
        now: Arc<K>,
        /// The object as the cache held it before, if it did.
        before: Option<Arc<K>>,
    },
    /// The cache was re-listed after a lost watch, or its reader fell behind: any object may have changed.
    Any,
}

impl<K> Clone for Touched<K> {
    fn clone(&self) -> Self {
        match self {
            Self::One { now, before } => Self::One {
                now: now.clone(),
                before: before.clone(),
            },
            Self::Any => Self::Any,
        }
    }
}

/// What a watch event tells the controllers, once the cache has applied it; `before` is what the cache held
/// of its object until then. A re-list is told once, when its contents are swapped in whole: before that the
/// cache still holds the old contents, and a controller reading it on an earlier item would decide without
/// the change.
pub fn touch_of<K: Clone>(event: &watcher::Event<K>, before: Option<Arc<K>>) -> Option<Touched<K>> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => Some(Touched::One {
            now: Arc::new(o.clone()),
            before,
        }),
        watcher::Event::InitDone => Some(Touched::Any),
        watcher::Event::Init | watcher::Event::InitApply(_) => None,
    }
}

/// Changes a controller may fall behind by before it is told [`Touched::Any`] instead.
const TOUCHED_BUFFER: usize = 1024;

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cached<K> {
    /// Caches read from `stores` (their writers are fed elsewhere, and report to [`Cached::took_in`]).
    pub fn new(stores: Vec<Store<K>>) -> Self {
        Self {
            stores,
            touched: tokio::sync::broadcast::channel(TOUCHED_BUFFER).0,
        }
    }

    /// Tells the controllers following this cache about `event`, which the cache has applied; `before` is
    /// what it held of the event's object until then.
    pub fn took_in(&self, event: &watcher::Event<K>, before: Option<Arc<K>>) {
        if let Some(touched) = touch_of(event, before) {
            // Err: nobody follows this cache yet (the controllers start after the first lists).
            let _ = self.touched.send(touched);
        }
    }

    /// One item for each change the caches take in from now on, sent after the cache holds it. A
    /// controller triggered by these reads the change from the cache, where a trigger from a watch of its
    /// own could arrive before the cache has it (or while the cache re-lists after a lost watch), and its
    /// reconcile would decide without it and not run again until the periodic check.
    pub fn touched(&self) -> impl futures::Stream<Item = Touched<K>> + Send + 'static
    where
        K: Send + Sync,
    {
        futures::stream::unfold(self.touched.subscribe(), |mut rx| async move {
            use tokio::sync::broadcast::error::RecvError;
            match rx.recv().await {
                Ok(touched) => Some((touched, rx)),
                Err(RecvError::Lagged(_)) => Some((Touched::Any, rx)),
                Err(RecvError::Closed) => None,
            }
        })
    }

    /// One item for each change the caches take in (see [`Cached::touched`]), for controllers that
    /// re-check every object on any change.
    pub fn changes(&self) -> impl futures::Stream<Item = ()> + Send + 'static
    where
        K: Send + Sync,
    {
        self.touched().map(|_| ())
    }

    /// How many objects are cached.
    pub fn count(&self) -> usize {
        self.stores.iter().map(|s| s.state().len()).sum()
    }

    /// Every cached object.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(Store::state).collect()
    }

    /// Copies of the cached objects that pass `keep` (the pure decisions take plain slices; filter first so
    /// only what they need is copied).
    pub fn cloned_where(&self, keep: impl Fn(&K) -> bool) -> Vec<K> {
        self.stores
            .iter()
            .flat_map(Store::state)
            .filter(|o| keep(o))
            .map(|o| o.as_ref().clone())
            .collect()
    }

    /// Copies of every cached object.
    pub fn cloned(&self) -> Vec<K> {
        self.cloned_where(|_| true)
    }

    /// The object `namespace/name`, if cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.stores.iter().find_map(|s| {
            s.find(|o| {
                o.meta().name.as_deref() == Some(name)
                    && o.meta().namespace.as_deref().unwrap_or_default() == namespace
            })
        })
    }

    /// Whether every cache has finished its first list.
    pub fn is_ready(&self) -> bool {
        self.stores.iter().all(|s| {
            s.wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        })
    }

    /// Waits until every cache has finished its first list.
    pub async fn wait_until_ready(&self) {
        for store in &self.stores {
            // Err: the writer is gone (its task aborted at shutdown); nothing will ever fill it.
            if store.wait_until_ready().await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    }
}

impl<K> Cached<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// Starts one watch per served namespace, feeding one cache each (their tasks go to `tasks`).
    pub fn watch(
        client: &kube::Client,
        scope: &WatchScope,
        metrics: &Metrics,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        let mut stores = Vec::new();
        let mut writers = Vec::new();
        for api in scope.apis::<K>(client) {
            let (store, writer) = reflector::store();
            stores.push(store.clone());
            writers.push((api, store, writer));
        }
        let cached = Self::new(stores);
        for (api, store, writer) in writers {
            let events = watcher(api, watcher::Config::default());
            tasks.push(tokio::spawn(counted(
                cached.fed(store, writer, events).default_backoff(),
                metrics,
                &K::kind(&()),
            )));
        }
        cached
    }
}

impl<K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static> Cached<K> {
    /// The watch `events` applied to `store` (one of this cache's, through its `writer`), each told to this
    /// cache's followers once applied, with what the store held of its object before.
    fn fed<S>(
        &self,
        store: Store<K>,
        writer: Writer<K>,
        events: S,
    ) -> impl futures::Stream<Item = S::Item> + Send + 'static
    where
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        // The reflector applies each event as it passes it on, one at a time: read just ahead of it, the
        // store still holds the object as it was.
        let slot = Arc::new(std::sync::Mutex::new(None::<Arc<K>>));
        let ahead = slot.clone();
        let events = events.inspect(move |event| {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) = event
                && let Ok(mut before) = ahead.lock()
            {
                *before = store.get(&ObjectRef::from_obj(o));
            }
        });
        let cached = self.clone();
        reflector(writer, events).inspect(move |event| {
            if let Ok(event) = event {
                let before = slot.lock().ok().and_then(|mut b| b.take());
                cached.took_in(event, before);
            }
        })
    }
}

/// Drives a cache's watch `stream` to its end, counting what it takes in and its failures as `kind`.
fn counted<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    metrics: &Metrics,
    kind: &str,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    K: Send + 'static,
{
    let events = metrics.watch_events.with_label_values(&[kind]);
    let errors = metrics.watch_errors.with_label_values(&[kind]);
    let kind = kind.to_owned();
    stream.for_each(move |event| {
        match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))
            | Ok(watcher::Event::InitApply(_)) => events.inc(),
            Ok(_) => {}
            Err(e) => {
                errors.inc();
                tracing::warn!(kind, error = %e, "a cache's watch failed; retrying");
            }
        }
        async {}
    })
}

/// The shared caches.
#[derive(Clone)]
pub struct Stores {
    /// MCPServices of the served namespaces.
    pub services: Cached<MCPService>,
    /// MCPScopes of the served namespaces.
    pub scopes: Cached<MCPScope>,
    /// CIMDPolicies of the served namespaces.
    pub policies: Cached<CIMDPolicy>,
    /// AuthorizationServers of the served namespaces.
    pub servers: Cached<AuthorizationServer>,
    /// MCPClients of the served namespaces.
    pub clients: Cached<MCPClient>,
    /// Every Namespace's metadata (labels decide `allowedNamespaces`), cluster-wide in either install.
    pub namespaces: Cached<PartialObjectMeta<Namespace>>,
}

impl Stores {
    /// Starts the watches (their tasks go to `tasks`); the caches fill in the background.
    pub fn start(
        client: &kube::Client,
        scope: &WatchScope,
        metrics: &Metrics,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        let (store, writer) = reflector::store();
        let namespaces = Cached::new(vec![store.clone()]);
        // Labels only: metadata-only requests.
        let events = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        );
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(counted(
            namespaces.fed(store, writer, events).default_backoff(),
            &metrics,
            "Namespace",
        )));
        let stores = Self {
            services: Cached::watch(client, scope, &metrics, tasks),
            scopes: Cached::watch(client, scope, &metrics, tasks),
            policies: Cached::watch(client, scope, &metrics, tasks),
            servers: Cached::watch(client, scope, &metrics, tasks),
            clients: Cached::watch(client, scope, &metrics, tasks),
            namespaces,
        };
        tasks.push(tokio::spawn(stores.clone().count_objects(metrics)));
        stores
    }

    /// Keeps `mcp_authz_operator_cached_objects` current (a count every 15 s; reading every cache on each
    /// change would cost more than the watch itself).
    async fn count_objects(self, metrics: Metrics) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(15));
        loop {
            every.tick().await;
            for (kind, n) in [
                ("MCPService", self.services.count()),
                ("MCPScope", self.scopes.count()),
                ("CIMDPolicy", self.policies.count()),
                ("AuthorizationServer", self.servers.count()),
                ("MCPClient", self.clients.count()),
                ("Namespace", self.namespaces.count()),
            ] {
                metrics
                    .cached_objects
                    .with_label_values(&[kind])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// Waits until every cache has finished its first list.
    pub async fn wait_until_ready(&self) {
        self.services.wait_until_ready().await;
        self.scopes.wait_until_ready().await;
        self.policies.wait_until_ready().await;
        self.servers.wait_until_ready().await;
        self.clients.wait_until_ready().await;
        self.namespaces.wait_until_ready().await;
    }

    /// Refuses a reconcile while any cache is still filling (a decision on a partial cache could give away a
    /// held claim).
    pub fn synced(&self) -> Result<(), ReconcileError> {
        let ready = self.services.is_ready()
            && self.scopes.is_ready()
            && self.policies.is_ready()
            && self.servers.is_ready()
            && self.clients.is_ready()
            && self.namespaces.is_ready();
        if ready {
            Ok(())
        } else {
            Err(ReconcileError::NotSynced)
        }
    }

    /// Labels of every namespace, for the servers' `allowedNamespaces`.
    pub fn labels(&self) -> NamespaceLabels {
        self.namespaces
            .all()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;
    use kube::runtime::watcher::Event;
    use std::time::Duration;

    fn service(ns: &str, name: &str) -> MCPService {
        cases::mcp_service_in(ns, name, "https://mcp.example.com/x", &["files:read"], None)
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let mut meta = PartialObjectMeta::<Namespace>::default();
        meta.metadata.name = Some(name.to_owned());
        meta.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        meta
    }

    type OtherWriters = (
        Writer<MCPScope>,
        Writer<CIMDPolicy>,
        Writer<AuthorizationServer>,
        Writer<PartialObjectMeta<Namespace>>,
        Writer<MCPClient>,
    );

    struct Fed {
        stores: Stores,
        services: Writer<MCPService>,
        others: OtherWriters,
    }

    fn unsynced() -> Fed {
        let (services, sw) = reflector::store();
        let (scopes, cw) = reflector::store();
        let (policies, pw) = reflector::store();
        let (servers, aw) = reflector::store();
        let (namespaces, nw) = reflector::store();
        let (clients, lw) = reflector::store();
        Fed {
            stores: Stores {
                services: Cached::new(vec![services]),
                scopes: Cached::new(vec![scopes]),
                policies: Cached::new(vec![policies]),
                servers: Cached::new(vec![servers]),
                namespaces: Cached::new(vec![namespaces]),
                clients: Cached::new(vec![clients]),
            },
            services: sw,
            others: (cw, pw, aw, nw, lw),
        }
    }

    fn list<K: Resource<DynamicType = ()> + Clone>(writer: &mut Writer<K>, objects: Vec<K>) {
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            writer.apply_watcher_event(&Event::InitApply(o));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    #[test]
    fn no_reconcile_reads_a_cache_before_every_one_has_listed() {
        let mut fed = unsynced();
        assert!(matches!(
            fed.stores.synced(),
            Err(ReconcileError::NotSynced)
        ));
        // Midway through the first list of services: still nothing to decide on.
        fed.services.apply_watcher_event(&Event::Init);
        fed.services
            .apply_watcher_event(&Event::InitApply(service("team-a", "files")));
        list(&mut fed.others.0, vec![]);
        list(&mut fed.others.1, vec![]);
        list(&mut fed.others.2, vec![]);
        list(&mut fed.others.3, vec![namespace("team-a", &[])]);
        list(&mut fed.others.4, vec![]);
        assert!(matches!(
            fed.stores.synced(),
            Err(ReconcileError::NotSynced)
        ));
        assert!(
            fed.stores.services.all().is_empty(),
            "a half-read list is not visible"
        );
        fed.services.apply_watcher_event(&Event::InitDone);
        assert!(fed.stores.synced().is_ok());
        assert_eq!(fed.stores.services.all().len(), 1);
        // A re-list after a lost watch keeps the old contents until it is complete.
        fed.services.apply_watcher_event(&Event::Init);
        fed.services
            .apply_watcher_event(&Event::InitApply(service("team-b", "notes")));
        assert!(fed.stores.synced().is_ok());
        assert_eq!(
            fed.stores
                .services
                .all()
                .iter()
                .map(|s| crate::tenancy::key_of(s.as_ref()))
                .collect::<Vec<_>>(),
            ["team-a/files"]
        );
    }

    #[test]
    fn reads_span_every_namespace_cache() {
        let (a, mut aw) = reflector::store();
        let (b, mut bw) = reflector::store();
        let cached = Cached::new(vec![a, b]);
        assert!(!cached.is_ready());
        list(&mut aw, vec![service("team-a", "files")]);
        assert!(!cached.is_ready(), "one namespace listed of two");
        list(
            &mut bw,
            vec![service("team-b", "files"), service("team-b", "notes")],
        );
        assert!(cached.is_ready());
        let table = [
            ("team-a", "files", true),
            ("team-b", "files", true),
            ("team-b", "notes", true),
            ("team-a", "notes", false),
            ("team-c", "files", false),
        ];
        for (ns, name, found) in table {
            assert_eq!(cached.get(ns, name).is_some(), found, "{ns}/{name}");
        }
        assert_eq!(cached.all().len(), 3);
        assert_eq!(
            cached
                .cloned_where(|s| s.namespace().as_deref() == Some("team-b"))
                .len(),
            2
        );
    }

    fn touched_key(t: &Touched<MCPService>) -> String {
        match t {
            Touched::One { now, before } => format!(
                "{}{}",
                crate::tenancy::key_of(now.as_ref()),
                before.as_ref().map_or("", |_| " (changed)")
            ),
            Touched::Any => "any".to_owned(),
        }
    }

    #[test]
    fn each_event_tells_the_controllers_what_the_cache_then_holds() {
        let files = service("team-a", "files");
        let table: [(Event<MCPService>, Option<&str>); 5] = [
            (Event::Apply(files.clone()), Some("team-a/files")),
            (Event::Delete(files.clone()), Some("team-a/files")),
            // A re-list: nothing until its contents are swapped in, then anything may have changed.
            (Event::Init, None),
            (Event::InitApply(files), None),
            (Event::InitDone, Some("any")),
        ];
        for (event, told) in table {
            assert_eq!(
                touch_of(&event, None).as_ref().map(touched_key).as_deref(),
                told,
                "{event:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_follower_hears_each_change_once_the_cache_holds_it_with_what_it_held_before() {
        let (store, writer) = reflector::store::<MCPService>();
        let cached = Cached::new(vec![store.clone()]);
        let mut touched = Box::pin(cached.touched());
        let offering = |scopes: &[&str]| {
            cases::mcp_service_in("team-a", "files", "https://mcp.example.com/x", scopes, None)
        };
        let events = futures::stream::iter([
            Ok(Event::Init),
            Ok(Event::InitDone),
            Ok(Event::Apply(offering(&["files:read"]))),
            Ok(Event::Apply(offering(&["files:write"]))),
            Ok(Event::Delete(offering(&["files:write"]))),
        ]);
        let held = cached.clone();
        let scopes_held = move || held.get("team-a", "files").map(|s| s.spec.scopes.clone());
        // Each item is taken before the next event is applied, as the cache's task drives its stream.
        let mut fed = Box::pin(cached.fed(store, writer, events));
        let scopes = |s: &Option<Arc<MCPService>>| s.as_ref().map(|s| s.spec.scopes.clone());
        let mut told = Vec::new();
        while fed.next().await.is_some() {
            if let Ok(Some(t)) =
                tokio::time::timeout(Duration::from_millis(50), touched.next()).await
            {
                let now = match &t {
                    Touched::One { now, before } => Some((now.spec.scopes.clone(), scopes(before))),
                    Touched::Any => None,
                };
                told.push((now, scopes_held()));
            }
        }
        let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            told,
            vec![
                // The first list: anything may have changed, and the cache holds it.
                (None, None),
                (Some((v(&["files:read"]), None)), Some(v(&["files:read"]))),
                (
                    Some((v(&["files:write"]), Some(v(&["files:read"])))),
                    Some(v(&["files:write"]))
                ),
                // A delete: its last state, what the cache held, and the cache no longer holds it.
                (Some((v(&["files:write"]), Some(v(&["files:write"])))), None),
            ]
        );
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_is_told_anything_may_have_changed() {
        let (store, _writer) = reflector::store::<MCPService>();
        let cached = Cached::new(vec![store]);
        let mut touched = Box::pin(cached.touched());
        for i in 0..=TOUCHED_BUFFER {
            cached.took_in(&Event::Apply(service("team-a", &format!("s{i}"))), None);
        }
        let told = touched.next().await.expect("an item");
        assert_eq!(touched_key(&told), "any");
        // Then the newest changes it still has, in order.
        let next = touched.next().await.expect("an item");
        assert_eq!(touched_key(&next), "team-a/s1");
    }

    #[test]
    fn labels_come_from_the_namespace_cache() {
        let mut fed = unsynced();
        list(
            &mut fed.others.3,
            vec![
                namespace("team-a", &[("tenant", "yes")]),
                namespace("p1", &[]),
            ],
        );
        let labels = fed.stores.labels();
        assert_eq!(labels["team-a"]["tenant"], "yes");
        assert!(labels["p1"].is_empty());
        assert_eq!(labels.len(), 2);
    }
}
