//! The reconcilers: apply what [`crate::render`] produced with server-side apply (one field
//! manager), write status, and only while this replica holds the lease.

pub mod authorization_server;
pub mod mcp_service;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::naming::FIELD_MANAGER;
use crate::render::{RenderError, RenderSettings, RenderedObject};

/// Shared by every reconcile.
pub struct Context {
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
    /// The object has no namespace (never for our namespaced kinds).
    #[error("object without namespace")]
    NoNamespace,
}

impl ReconcileError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Render(e) => e.metric_label(),
            Self::Keys(e) => e.metric_label(),
            Self::NoNamespace => "no_namespace",
        }
    }
}

/// Labels of every namespace (metadata only), for the servers' `allowedNamespaces`.
pub async fn namespace_labels(
    client: &kube::Client,
) -> Result<crate::tenancy::NamespaceLabels, kube::Error> {
    Ok(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .list_metadata(&kube::api::ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|n| {
                (
                    n.metadata.name.unwrap_or_default(),
                    n.metadata.labels.unwrap_or_default(),
                )
            })
            .collect(),
    )
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

/// Retry with a growing delay on errors (capped), so a broken object does not spin.
pub fn error_policy<K>(_object: Arc<K>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(match error {
        ReconcileError::Kube(kube::Error::Api(s)) if s.code == 409 => 1,
        _ => 15,
    }))
}

/// How long a follower waits before looking again.
pub const FOLLOWER_REQUEUE: Duration = Duration::from_secs(5);
