//! `mcp-authz render -f DIR`: every object the operator would create for the resources of a
//! directory (read by [`crate::manifests`], the same reader as local mode).

use kube::ResourceExt;

use super::{Inputs, RenderError, RenderSettings, RenderedObject, authserver, sidecar};
use crate::manifests::ManifestSet;

/// Every object the operator would create for `manifests`, servers first.
pub fn render_all(
    manifests: &ManifestSet,
    settings: &RenderSettings,
) -> Result<Vec<RenderedObject>, RenderError> {
    let services = manifests.service_objects();
    let scopes = manifests.scope_objects();
    let policies = manifests.policy_objects();
    let clients = manifests.client_objects();
    let mut objects = Vec::new();
    for server in &manifests.authorization_servers {
        let inputs = Inputs {
            server: &server.object,
            services: &services,
            scopes: &scopes,
            policies: &policies,
            namespaces: &crate::tenancy::NamespaceLabels::new(),
            clients: &clients,
            // Offline, the Secrets are the cluster's: each client is rendered as if its Secret were there.
            client_secrets: None,
        };
        objects.extend(authserver::render(&inputs, settings)?);
    }
    for service in &services {
        if let Some(server) = manifests
            .authorization_servers
            .iter()
            .find(|s| crate::tenancy::attached(service, &s.object, &Default::default()))
        {
            // The CA bundle exists only in a cluster (the operator makes it); offline, a TLS server's sidecar
            // ConfigMap comes without it and the operator fills it in.
            let peers = super::exchange::Peers {
                services: &services,
                labels: &crate::tenancy::NamespaceLabels::new(),
            };
            objects.extend(sidecar::render(
                service,
                &server.object,
                &scopes,
                peers,
                None,
                settings.metrics_scrapers.as_ref(),
            )?);
        }
    }
    Ok(objects)
}

/// The objects as one YAML stream.
pub fn to_yaml(objects: &[RenderedObject]) -> Result<String, RenderError> {
    let mut out = String::new();
    for o in objects {
        let text = serde_saphyr::to_string(&o.body).map_err(|e| RenderError::Serialize {
            what: format!("{} {}", o.kind, o.name),
            message: e.to_string(),
        })?;
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

/// Names of the services in `manifests` that no server of the directory issues tokens for (none names them,
/// or the one they name does not admit their namespace).
pub fn orphan_services(manifests: &ManifestSet) -> Vec<String> {
    manifests
        .services
        .iter()
        .map(|s| &s.object)
        .filter(|svc| {
            !manifests
                .authorization_servers
                .iter()
                .any(|s| crate::tenancy::attached(svc, &s.object, &Default::default()))
        })
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_directory_of_manifests() {
        let dir = tempfile::tempdir().expect("dir");
        let docs = [
            crate::api::cases::authorization_server(),
            crate::api::cases::mcp_service(),
            crate::api::cases::mcp_scope(),
            crate::api::cases::cimd_policy(),
        ];
        let text: String = docs
            .iter()
            .map(|d| format!("---\n{}", serde_saphyr::to_string(d).expect("yaml")))
            .collect();
        std::fs::write(
            dir.path().join("all.yaml"),
            text + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: users}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
        let manifests =
            crate::manifests::load_dirs(&[dir.path().to_path_buf()], "team").expect("read");
        assert_eq!(
            manifests.services[0].object.metadata.namespace.as_deref(),
            Some("team")
        );
        let objects = render_all(&manifests, &RenderSettings::default()).expect("render");
        let names: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        assert_eq!(
            names,
            [
                "ConfigMap/auth-authserver",
                "Deployment/auth-authserver",
                "Service/auth-authserver",
                "PersistentVolumeClaim/auth-authserver",
                "ConfigMap/files-mcp-authz-sidecar",
                "NetworkPolicy/files-mcp-authz",
            ]
        );
        let yaml = to_yaml(&objects).expect("yaml");
        assert_eq!(yaml.matches("---\n").count(), 6);
        assert!(orphan_services(&manifests).is_empty());
    }
}
