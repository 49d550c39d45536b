//! Rendering: resources in, Kubernetes objects out. Pure functions, shared by the reconcilers,
//! `mcp-authz render` and local mode, so all three produce the same objects.

pub mod authserver;
pub mod cimd;
pub mod clients;
pub mod exchange;
pub mod manifests;
pub mod sidecar;
pub mod tracing_env;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use crate::api::{AuthorizationServer, CIMDPolicy, MCPScope, MCPService};
use crate::naming;

/// What rendering needs besides the resources: images and the operator's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// Image of the authorization server when the resource names none.
    pub authserver_image: String,
    /// Image of the sidecar when the MCPService names none.
    pub sidecar_image: String,
    /// Pull policy of the containers the operator creates; the cluster default when empty.
    pub image_pull_policy: Option<String>,
    /// Version of the operator (recorded on injected pods).
    pub version: String,
    /// Names added to every operator-issued in-cluster serving certificate (`--authserver-tls-extra-names`).
    pub authserver_tls_extra_names: Vec<String>,
    /// Who may reach the sidecars' admin port (`/metrics`) through each MCPService's NetworkPolicy; nobody
    /// when `None`.
    pub metrics_scrapers: Option<Scrapers>,
    /// The `OTEL_*` variables handed on to the authorization server and the sidecars (`tracing_env`); empty
    /// when tracing is off.
    pub tracing: Vec<(String, String)>,
}

/// The pods allowed to scrape the sidecars' admin port: those matching `pods` (all, when empty) in the
/// namespaces matching `namespaces` (never empty: "any namespace" would open the port to every tenant).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scrapers {
    /// Labels the scraper's namespace carries (`kubernetes.io/metadata.name: monitoring`).
    pub namespaces: BTreeMap<String, String>,
    /// Labels the scraper's pods carry (`app.kubernetes.io/name: prometheus`).
    pub pods: BTreeMap<String, String>,
}

impl Scrapers {
    /// Scrapers from `key=value,...` label lists; `None` when no namespace labels are given (the port stays
    /// closed).
    pub fn from_labels(
        namespaces: Option<&BTreeMap<String, String>>,
        pods: Option<&BTreeMap<String, String>>,
    ) -> Option<Self> {
        let namespaces = namespaces.filter(|n| !n.is_empty())?.clone();
        Some(Self {
            namespaces,
            pods: pods.cloned().unwrap_or_default(),
        })
    }
}

/// Parses `key=value,key2=value2` (a label selector of equalities only) into labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(format!("{pair:?} has an empty key"));
            }
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

impl Default for RenderSettings {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        Self {
            authserver_image: format!("ghcr.io/mcp-authz/mcp-authz-server:{version}"),
            sidecar_image: format!("ghcr.io/mcp-authz/mcp-authz-sidecar:{version}"),
            image_pull_policy: None,
            version,
            authserver_tls_extra_names: Vec::new(),
            metrics_scrapers: None,
            tracing: Vec::new(),
        }
    }
}

/// One Kubernetes object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedObject {
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `Deployment`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The whole object as JSON (apiVersion, kind and metadata included).
    pub body: Value,
}

/// Errors of rendering. Input problems are never errors: they are reported as conditions.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A value that comes from the schema did not parse (a resource written without the CRD's validation).
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as in the resource.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A config type did not serialise.
    #[error("serialising {what}: {message}")]
    Serialize {
        /// What was serialised.
        what: String,
        /// The serialiser's message.
        message: String,
    },
}

impl RenderError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_spec",
            Self::Serialize { .. } => "serialize",
        }
    }
}

/// Turns a typed Kubernetes object into a [`RenderedObject`].
pub(crate) fn object<K>(
    mut obj: K,
    owner: Option<OwnerReference>,
) -> Result<RenderedObject, RenderError>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    if let Some(owner) = owner {
        obj.meta_mut().owner_references = Some(vec![owner]);
    }
    obj.labels_mut().insert(
        naming::MANAGED_BY_LABEL.to_owned(),
        naming::MANAGED_BY.to_owned(),
    );
    let mut body = serde_json::to_value(&obj).map_err(|e| RenderError::Serialize {
        what: K::kind(&()).into_owned(),
        message: e.to_string(),
    })?;
    if let Value::Object(map) = &mut body {
        map.insert(
            "apiVersion".into(),
            Value::String(K::api_version(&()).into_owned()),
        );
        map.insert("kind".into(), Value::String(K::kind(&()).into_owned()));
    }
    Ok(RenderedObject {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        body,
    })
}

/// A controller owner reference to `owner`, or `None` when it has no uid yet (rendering files).
pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// Labels shared by an authorization server's Deployment, pods and Service.
pub(crate) fn authserver_labels(server: &str) -> BTreeMap<String, String> {
    [
        (
            "app.kubernetes.io/name".to_owned(),
            "mcp-authz-authserver".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), server.to_owned()),
    ]
    .into()
}

/// Everything one AuthorizationServer's rendering looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The server.
    pub server: &'a AuthorizationServer,
    /// Every MCPService of the cluster (those naming another server are skipped).
    pub services: &'a [MCPService],
    /// The MCPScopes that count at the server ([`crate::tenancy::scopes_at`]).
    pub scopes: &'a [MCPScope],
    /// Every CIMDPolicy of the cluster.
    pub policies: &'a [CIMDPolicy],
    /// Labels of the namespaces (for the server's `allowedNamespaces`).
    pub namespaces: &'a crate::tenancy::NamespaceLabels,
    /// Every MCPClient of the cluster (those naming another server are skipped).
    pub clients: &'a [crate::api::MCPClient],
    /// What the server's namespace's Secrets hold for the clients' secrets; `None` when unknown (`render`
    /// from files without the Secrets): each is then taken to be there.
    pub client_secrets: Option<&'a clients::SecretLengths>,
}

impl<'a> Inputs<'a> {
    /// The services and namespace labels an edge's `to` is resolved against.
    pub fn peers(&self) -> exchange::Peers<'a> {
        exchange::Peers {
            services: self.services,
            labels: self.namespaces,
        }
    }
}

/// Whether `service` names `server`.
pub fn names_server(service: &MCPService, server: &AuthorizationServer) -> bool {
    names_server_at(
        service,
        &server.name_any(),
        &server.namespace().unwrap_or_default(),
    )
}

/// Whether `service` names the AuthorizationServer `name` of `namespace` (which need not exist).
pub fn names_server_at(service: &MCPService, name: &str, namespace: &str) -> bool {
    let reference = &service.spec.authorization_server_ref;
    let service_ns = service.namespace().unwrap_or_default();
    let ns = reference
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(&service_ns);
    reference.name == name && ns == namespace
}

/// `namespace/name` of the server `service` names, whose namespace is `server_ns`.
fn server_key(service: &MCPService, server_ns: &str) -> String {
    format!("{server_ns}/{}", service.spec.authorization_server_ref.name)
}

/// Scopes visible to a service, by value: each value's owner (the oldest MCPScope defining it, see
/// [`crate::tenancy::scope_owners`]) when that owner is in the service's namespace or its server's. A value owned
/// by another team's namespace is not visible: its meaning is that team's to change.
pub fn visible_scopes<'a>(
    service: &MCPService,
    server_ns: &str,
    scopes: &'a [MCPScope],
) -> BTreeMap<String, &'a MCPScope> {
    let service_ns = service.namespace().unwrap_or_default();
    crate::tenancy::scope_owners(scopes, &server_key(service, server_ns))
        .into_iter()
        .filter(|(_, owner)| {
            let ns = owner.namespace().unwrap_or_default();
            ns == server_ns || ns == service_ns
        })
        .map(|(value, owner)| (value.to_owned(), owner))
        .collect()
}

/// The scope values a service offers that no visible MCPScope defines, each with the owner that keeps it out of
/// reach when another team's namespace owns it (`value (MCPScope ns/name)`).
pub fn missing_scopes(service: &MCPService, server_ns: &str, scopes: &[MCPScope]) -> Vec<String> {
    let visible = visible_scopes(service, server_ns, scopes);
    let owners = crate::tenancy::scope_owners(scopes, &server_key(service, server_ns));
    service
        .spec
        .scopes
        .iter()
        .filter(|s| !visible.contains_key(*s))
        .map(|s| match owners.get(s.as_str()) {
            Some(owner) => format!("{s} (owned by MCPScope {})", crate::tenancy::key_of(*owner)),
            None => s.clone(),
        })
        .collect()
}

/// The CIMDPolicy a service names, if it names one and it exists.
pub fn service_policy<'a>(
    service: &MCPService,
    policies: &'a [CIMDPolicy],
) -> Option<Result<&'a CIMDPolicy, String>> {
    let name = service.spec.cimd_policy_ref.as_ref()?;
    let ns = service.namespace();
    Some(
        policies
            .iter()
            .find(|p| &p.name_any() == name && p.namespace() == ns)
            .ok_or_else(|| name.clone()),
    )
}

/// Parses a schema duration, naming the field when it does not parse.
pub(crate) fn seconds(field: &str, text: &str) -> Result<u64, RenderError> {
    crate::api::parse_duration(text)
        .map(|d| d.as_secs())
        .ok_or_else(|| RenderError::Invalid {
            field: field.to_owned(),
            message: format!("{text:?} is not a duration like 10m or 720h"),
        })
}
