//! The reconcilers: apply what [`crate::render`] produced with server-side apply (one field
//! manager), write status, and only while this replica holds the lease.

pub mod authorization_server;
pub mod mcp_service;
pub mod service_observe;
pub mod stores;
pub mod triggers;
pub mod usage;
pub mod written;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::naming::FIELD_MANAGER;
use crate::render::{RenderError, RenderSettings, RenderedObject};

/// The namespaces the operator serves: the whole cluster, or a list (the namespace-scoped install, where its
/// RBAC is Roles in those namespaces only). Every watch and every list goes through this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (ClusterRoles).
    #[default]
    All,
    /// Only these (Roles in each).
    Namespaces(std::collections::BTreeSet<String>),
}

impl WatchScope {
    /// The scope of `--watch-namespaces`: all when the list is empty, else the list and the operator's own
    /// namespace (its Lease, its webhook Secret and the chart's default AuthorizationServer live there).
    pub fn new(namespaces: &[String], own: &str) -> Self {
        let listed: std::collections::BTreeSet<String> = namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if listed.is_empty() {
            Self::All
        } else {
            Self::Namespaces(listed.into_iter().chain([own.to_owned()]).collect())
        }
    }

    /// Whether objects of `namespace` are served.
    pub fn includes(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(list) => list.contains(namespace),
        }
    }

    /// One API handle per served namespace (one for the whole cluster with [`WatchScope::All`]).
    pub fn apis<K>(&self, client: &kube::Client) -> Vec<Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Self::All => vec![Api::all(client.clone())],
            Self::Namespaces(list) => list
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// The namespaces served.
    pub scope: WatchScope,
    /// The shared caches every reconcile reads its inputs from.
    pub stores: stores::Stores,
    /// Client (the operator's ServiceAccount).
    pub client: kube::Client,
    /// Images and version.
    pub settings: RenderSettings,
    /// Metrics.
    pub metrics: Metrics,
    /// Whether this replica holds the lease.
    pub leader: watch::Receiver<bool>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Consecutive failed reconciles per object (`Kind/namespace/name`), for [`backoff`].
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// What the last status writes were, for reconciles that read a cache behind them.
    pub written: written::Written,
}

impl Context {
    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Publishes an Event about `object` (best effort: an Event that fails is only logged).
    pub async fn event<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(error = %e, "publishing an event failed");
        }
    }
}

/// Errors of one reconcile. Missing references are not errors (they are conditions).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Rendering failed.
    #[error("rendering: {0}")]
    Render(#[from] RenderError),
    /// Signing keys could not be made or read.
    #[error("signing keys: {0}")]
    Keys(#[from] crate::keys::KeyError),
    /// The in-cluster TLS certificate could not be made.
    #[error("in-cluster TLS: {0}")]
    Cert(#[from] crate::certs::CertError),
    /// The object has no namespace (never for our namespaced kinds).
    #[error("object without namespace")]
    NoNamespace,
    /// A shared cache has not finished its first list: deciding on it could misjudge who holds what.
    #[error("the operator's caches are still filling")]
    NotSynced,
}

impl ReconcileError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Render(e) => e.metric_label(),
            Self::Keys(e) => e.metric_label(),
            Self::Cert(e) => e.metric_label(),
            Self::NoNamespace => "no_namespace",
            Self::NotSynced => "not_synced",
        }
    }
}

/// Applies one rendered object with server-side apply (forcing our field manager's ownership).
pub async fn apply(client: &kube::Client, object: &RenderedObject) -> Result<(), kube::Error> {
    let (group, version) = match object.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", object.api_version.as_str()),
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &object.kind));
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &object.namespace, &resource);
    api.patch(
        &object.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object.body),
    )
    .await?;
    Ok(())
}

impl Context {
    /// The conditions `object` has now, given its own (`own`): this operator's last write when the copy at
    /// hand predates it ([`written`]).
    pub fn conditions_now<K: kube::Resource>(
        &self,
        object: &K,
        own: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    ) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.written.conditions_now(object, own)
    }

    /// Writes `status` (the fields under `.status`) to `object`'s status subresource, as the operator's
    /// field manager, unless this operator wrote exactly that last and nobody wrote since. The write goes by
    /// name: a reconcile of an object deleted meanwhile can land its conditions on a new object of the same
    /// name (the API server ignores a uid in a server-side apply of a custom resource's status), and the new
    /// object's own reconcile, which that write triggers, writes them again.
    pub async fn write_status<K>(
        &self,
        object: &K,
        status: serde_json::Value,
    ) -> Result<(), kube::Error>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        if self.written.unchanged(object, &status) {
            return Ok(());
        }
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()),
            "status": status,
        });
        let made = Api::<K>::namespaced(
            self.client.clone(),
            object.meta().namespace.as_deref().unwrap_or_default(),
        )
        .patch_status(
            object.meta().name.as_deref().unwrap_or_default(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        self.written
            .record(object, made.meta().resource_version.clone(), status);
        Ok(())
    }
}

/// The Secret data of `name` in `namespace`, empty when there is none.
pub async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, kube::Error> {
    Ok(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .and_then(|s| s.data)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    )
}

/// Deletes object `kind/name` in `namespace` if it exists and `owner` controls it (never someone else's
/// object of the same name).
pub async fn delete_owned<K: kube::Resource<DynamicType = ()>>(
    client: &kube::Client,
    owner: &K,
    namespace: &str,
    api_version: &str,
    kind: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let existing = match api.get_opt(name).await {
        Ok(Some(existing)) => existing,
        Ok(None) => return Ok(()),
        // The kind is not served at all (cert-manager's Certificate where cert-manager is not installed): the
        // API server answers a bare `404 page not found`, which kube does not count as not found.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    let owned = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == owner.meta().uid.as_ref() && o.controller == Some(true));
    if owned {
        match api.delete(name, &Default::default()).await {
            // The garbage collector (or another hand) got there between the read and the delete.
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            other => other?,
        };
        tracing::info!(
            kind,
            name,
            namespace,
            "deleted what the spec no longer asks for"
        );
    }
    Ok(())
}

/// Delay before the `failures`-th retry of one object: 1 s doubling up to 5 min, so a broken object
/// neither spins nor waits long after a passing fault.
pub fn backoff(failures: u32) -> Duration {
    const CAP: u64 = 300;
    Duration::from_secs(
        1u64.checked_shl(failures.saturating_sub(1))
            .unwrap_or(CAP)
            .min(CAP),
    )
}

/// The key an object's failures are counted under: its uid too, so an object created again under the name of
/// a deleted one that kept failing starts afresh instead of inheriting its backoff.
fn failure_key<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default(),
        object.meta().uid.as_deref().unwrap_or_default()
    )
}

/// The most objects whose failures are counted at once. An object deleted while failing is never counted
/// as succeeding, so its entry would stay: past this many, one entry is forgotten for each new one (that
/// object retries after one second once more) rather than grow with every name a tenant churns through.
/// Forgetting one, not all, keeps a tenant's churn from resetting every failing object's backoff at once.
const MAX_COUNTED_FAILURES: usize = 4096;

/// Counts one more failure of `key` in `failures` and returns how many in a row it has had.
fn count_failure(failures: &mut std::collections::HashMap<String, u32>, key: String) -> u32 {
    if failures.len() >= MAX_COUNTED_FAILURES
        && !failures.contains_key(&key)
        && let Some(any) = failures.keys().next().cloned()
    {
        failures.remove(&any);
    }
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    *n
}

impl Context {
    /// Forgets an object's failures after a reconcile that succeeded.
    pub fn succeeded<K: kube::Resource<DynamicType = ()>>(&self, object: &K) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&failure_key(object));
        }
    }
}

/// Retries a failed object after [`backoff`] of its consecutive failures; a write conflict (another
/// writer got in between) is retried at once.
pub fn error_policy<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.failures.lock().map_or(1, |mut f| {
        count_failure(&mut f, failure_key(object.as_ref()))
    });
    let delay = match error {
        ReconcileError::Kube(kube::Error::Api(s)) if s.code == 409 => Duration::from_secs(1),
        _ => backoff(failures),
    };
    tracing::warn!(error = %error, failures, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// How long a follower waits before looking again.
pub const FOLLOWER_REQUEUE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_scope_is_the_listed_namespaces_and_the_operators_own() {
        assert_eq!(WatchScope::new(&[], "mcp-authz"), WatchScope::All);
        assert_eq!(
            WatchScope::new(&[" ".into(), String::new()], "mcp-authz"),
            WatchScope::All
        );
        let scope = WatchScope::new(&["a".into(), "b ".into()], "mcp-authz");
        assert_eq!(
            scope,
            WatchScope::Namespaces(["a", "b", "mcp-authz"].map(String::from).into())
        );
        let table = [
            ("a", true),
            ("b", true),
            ("mcp-authz", true),
            ("c", false),
            ("", false),
        ];
        for (ns, want) in table {
            assert_eq!(scope.includes(ns), want, "{ns}");
            assert!(WatchScope::All.includes(ns));
        }
    }

    #[test]
    fn failures_are_counted_per_object_and_the_count_stays_bounded() {
        let mut failures = std::collections::HashMap::new();
        assert_eq!(count_failure(&mut failures, "a".into()), 1);
        assert_eq!(count_failure(&mut failures, "a".into()), 2);
        for i in 0..3 * MAX_COUNTED_FAILURES {
            count_failure(&mut failures, format!("churn-{i}"));
            assert!(failures.len() <= MAX_COUNTED_FAILURES);
        }
        assert_eq!(failures.len(), MAX_COUNTED_FAILURES);
        let last = format!("churn-{}", 3 * MAX_COUNTED_FAILURES - 1);
        assert_eq!(
            count_failure(&mut failures, last),
            2,
            "one entry forgotten per new one: the newest are still counted"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_and_stops_at_five_minutes() {
        let table = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (5, 16),
            (9, 256),
            (10, 300),
            (40, 300),
            (64, 300),
            (u32::MAX, 300),
        ];
        for (failures, seconds) in table {
            assert_eq!(
                backoff(failures),
                Duration::from_secs(seconds),
                "{failures}"
            );
        }
    }
}
