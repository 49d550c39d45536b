//! Names of the objects the operator owns, shared by rendering and the webhook so they agree.

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "mcp-authz-operator";
/// Name of the injected sidecar container.
pub const SIDECAR_CONTAINER: &str = "mcp-authz-sidecar";
/// Name of the pod volume holding the sidecar config.
pub const SIDECAR_CONFIG_VOLUME: &str = "mcp-authz-sidecar-config";
/// Where the sidecar config is mounted in the sidecar container.
pub const SIDECAR_CONFIG_DIR: &str = "/etc/mcp-authz";
/// File name of the sidecar config inside its ConfigMap.
pub const SIDECAR_CONFIG_FILE: &str = "sidecar.yaml";
/// Volume of the sidecar's credentials Secret in an injected pod.
pub const SIDECAR_CREDENTIALS_VOLUME: &str = "mcp-authz-sidecar-credentials";
/// Where the sidecar's credentials Secret is mounted.
pub const SIDECAR_CREDENTIALS_DIR: &str = "/var/run/secrets/mcp-authz";
/// The key file in the credentials Secret.
pub const SIDECAR_KEY_FILE: &str = "introspection-key.pem";
/// File name of the authserver config inside its ConfigMap.
pub const AUTHSERVER_CONFIG_FILE: &str = "authserver.yaml";
/// Annotation recording the sidecar version a pod was injected with.
pub const INJECTED_VERSION_ANNOTATION: &str = "mcp-authz.io/injected-version";
/// Annotation naming the MCPService a pod was injected for.
pub const INJECTED_SERVICE_ANNOTATION: &str = "mcp-authz.io/service";
/// Label put on every object the operator renders.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "mcp-authz-operator";

/// ConfigMap holding the sidecar config of an MCPService.
pub fn sidecar_config_map(service: &str) -> String {
    format!("{service}-mcp-authz-sidecar")
}

/// Secret holding an MCPService's resource-server key (what its sidecars introspect with).
pub fn sidecar_credentials(service: &str) -> String {
    format!("{service}-mcp-authz-sidecar-credentials")
}

/// NetworkPolicy of an MCPService.
pub fn network_policy(service: &str) -> String {
    format!("{service}-mcp-authz")
}

/// Deployment, Service, ConfigMap, PDB and PVC of an AuthorizationServer share this name.
pub fn authserver(server: &str) -> String {
    format!("{server}-authserver")
}

/// Secret holding an AuthorizationServer's signing keys.
pub fn authserver_keys(server: &str) -> String {
    format!("{server}-authserver-keys")
}

/// Secret holding an AuthorizationServer's in-cluster CA (key included; never mounted anywhere).
pub fn authserver_ca(server: &str) -> String {
    format!("{server}-authserver-ca")
}

/// Secret holding an AuthorizationServer's in-cluster serving certificate and the CA bundle (`tls.crt`,
/// `tls.key`, `ca.crt`: the layout cert-manager writes too).
pub fn authserver_tls(server: &str) -> String {
    format!("{server}-authserver-tls")
}

/// Key of the sidecar ConfigMap holding the CA bundle sidecars trust for the authorization server.
pub const SIDECAR_ISSUER_CA_FILE: &str = "issuer-ca.crt";
