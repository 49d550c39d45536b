//! One MCPService as the policy tools see it: the sidecar config and the client admission the operator would
//! render for it, from the same manifest reader and render functions as `render` and `local`.

use kube::ResourceExt;
use mcp_authz_authserver::cimd::{Admission, CimdError};
use mcp_authz_sidecar::config::SidecarConfig;

use crate::api::MCPService;
use crate::local::plan::{self, PlanError};
use crate::manifests::{Loaded, ManifestSet, Origin};
use crate::render::exchange::Peers;
use crate::render::{self, Inputs, authserver, sidecar};
use crate::tenancy::NamespaceLabels;

/// What the decisions about one service read.
#[derive(Debug, Clone)]
pub struct ServiceView {
    /// `namespace/name`.
    pub key: String,
    /// Its manifest file and object.
    pub origin: Origin,
    /// Its resource URL (the tokens' audience).
    pub resource: String,
    /// The sidecar config the operator renders for it.
    pub sidecar: SidecarConfig,
    /// For each rule of `sidecar.rules`, the position of the `spec.rules` entry it came from.
    pub rule_origins: Vec<usize>,
    /// Its server's client admission, with the CIMDPolicy that applies to it.
    pub admission: Admission,
    /// The CIMDPolicy it names (else the server's default applies).
    pub cimd_policy: Option<String>,
}

/// Why a service cannot be looked at.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// No MCPService of that name.
    #[error("no MCPService {name} in the manifests (they hold: {known})")]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The services there are.
        known: String,
    },
    /// The name is in several namespaces.
    #[error("MCPService {name} is in several namespaces ({namespaces}): name it as namespace/name")]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// Where it is.
        namespaces: String,
    },
    /// A reference the service needs, or a value rendering refused.
    #[error(transparent)]
    Invalid(#[from] PlanError),
    /// The server's CIMD settings do not compile.
    #[error("{origin}: spec.cimd: {error}")]
    Cimd {
        /// The server's file and object.
        origin: Origin,
        /// The cause (its message).
        error: String,
    },
}

/// Finds `name` (`name` or `namespace/name`) and renders what its decisions read.
pub fn service_view(set: &ManifestSet, name: &str) -> Result<ServiceView, WorldError> {
    let service = find_service(set, name)?;
    let invalid = |origin: &Origin, field: &str, message: String| {
        WorldError::Invalid(PlanError::Invalid {
            origin: origin.clone(),
            field: field.to_owned(),
            message,
        })
    };
    let server = set
        .authorization_servers
        .iter()
        .find(|s| render::names_server(&service.object, &s.object))
        .ok_or_else(|| {
            let reference = &service.object.spec.authorization_server_ref;
            invalid(
                &service.origin,
                "spec.authorizationServerRef",
                format!(
                    "names AuthorizationServer {}, which is not in the manifests",
                    reference.name
                ),
            )
        })?;
    plan::check_service(set, server, service)?;
    let scopes = set.scope_objects();
    let services = set.service_objects();
    let namespaces = NamespaceLabels::new();
    let peers = Peers {
        services: &services,
        labels: &namespaces,
    };
    let rendering = |e: render::RenderError| invalid(&service.origin, "spec", e.to_string());
    let sidecar = sidecar::sidecar_config(&service.object, &server.object, &scopes, peers)
        .map_err(rendering)?;
    let rule_origins = sidecar::sidecar_rules(&service.object.spec.rules)
        .into_iter()
        .map(|(index, _)| index)
        .collect();

    let policies = set.policy_objects();
    let inputs = Inputs {
        server: &server.object,
        services: &services,
        scopes: &scopes,
        policies: &policies,
        namespaces: &namespaces,
        clients: &[],
        client_secrets: None,
    };
    let config = authserver::authserver_config(&inputs)
        .map_err(|e| invalid(&server.origin, "spec", e.to_string()))?;
    let resource = &service.object.spec.resource_url;
    let entry = config
        .resources
        .iter()
        .find(|r| &r.resource == resource)
        .ok_or_else(|| {
            invalid(
                &service.origin,
                "spec.resourceUrl",
                format!("{resource} is held by another MCPService at this server"),
            )
        })?;
    let admission = Admission::new(&config.cimd).map_err(|error: CimdError| WorldError::Cimd {
        origin: server.origin.clone(),
        error: error.description(),
    })?;
    Ok(ServiceView {
        key: plan::key_of(&service.object),
        origin: service.origin.clone(),
        resource: resource.clone(),
        sidecar,
        rule_origins,
        admission,
        cimd_policy: entry.cimd_policy.clone(),
    })
}

fn find_service<'a>(
    set: &'a ManifestSet,
    name: &str,
) -> Result<&'a Loaded<MCPService>, WorldError> {
    let (namespace, name) = match name.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, name),
    };
    let found: Vec<&Loaded<MCPService>> = set
        .services
        .iter()
        .filter(|s| {
            s.object.name_any() == name
                && namespace.is_none_or(|ns| s.object.namespace().as_deref() == Some(ns))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(WorldError::UnknownService {
            name: namespace.map_or(name.to_owned(), |ns| format!("{ns}/{name}")),
            known: set
                .services
                .iter()
                .map(|s| plan::key_of(&s.object))
                .collect::<Vec<_>>()
                .join(", "),
        }),
        many => Err(WorldError::Ambiguous {
            name: name.to_owned(),
            namespaces: many
                .iter()
                .map(|s| s.object.namespace().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
