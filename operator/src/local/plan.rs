//! From manifests to the configs local mode runs: the operator's own render functions, then the
//! few overrides that make a cluster config a laptop config (pure; no I/O).
//!
//! The overrides, and only these: every listener moves to a loopback port kept in the state
//! directory; the issuer and each service's public URL become those loopback URLs (tokens carry
//! them, so clients must reach exactly them); the database, the signing keys (self-managed), the
//! users file, CA bundles and sidecar keys move from their cluster mount points into the state
//! directory; the sidecars fetch JWKS from, and introspect at, the local issuer.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use mcp_authz_authserver::config::{AuthServerConfig, SqliteStorage, StorageConfig};
use mcp_authz_sidecar::config::SidecarConfig;

use super::ports::PortPlan;
use crate::api::{AuthorizationServer, CIMDPolicy, MCPService};
use crate::manifests::{Loaded, ManifestSet, Origin};
use crate::render::{self, Inputs, authserver, sidecar};

/// Files of the state directory.
pub mod files {
    /// The rendered authserver config.
    pub const AUTHSERVER_CONFIG: &str = "authserver.json";
    /// The SQLite database.
    pub const DATABASE: &str = "authserver.db";
    /// The signing keys (self-managed in local mode).
    pub const KEYS_DIR: &str = "keys";
    /// The static users, copied from their Secret.
    pub const USERS: &str = "users.yaml";
    /// The admin API credential, made on the first run.
    pub const ADMIN_TOKEN: &str = "admin-token";
    /// The root of the sidecars' introspection keys, made on the first run.
    pub const RESOURCE_SERVER_ROOT: &str = "resource-server-root";
    /// Each sidecar's introspection key, derived from the root: `sidecar-<namespace>-<name>.key.pem`.
    pub const SIDECAR_KEY_SUFFIX: &str = ".key.pem";
    /// Rendered sidecar configs, one per service: `sidecar-<namespace>-<name>.json`.
    pub const SIDECAR_PREFIX: &str = "sidecar-";
    /// Trusted CA bundles of CIMD policies, copied from their ConfigMaps.
    pub const CA_BUNDLE: &str = "cimd-ca.pem";
    /// Declared clients' secrets, copied from their Secrets: `client-secret-<n>`, in the order of the declarations.
    pub const CLIENT_SECRET_PREFIX: &str = "client-secret-";
    /// Each provider's client secret, numbered.
    pub const PROVIDER_SECRET_PREFIX: &str = "provider-secret-";
    /// The keys that seal provider tokens (written by the server itself when missing: it is self-managed).
    pub const PROVIDER_TOKEN_KEYS: &str = "keys/provider-token-keys";
}

/// Why the manifests cannot make a local plane.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Local mode runs exactly one AuthorizationServer.
    #[error("{0}")]
    Servers(String),
    /// A reference to something the directories do not hold, or a value rendering refused.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// File and object.
        origin: Origin,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl PlanError {
    /// A low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Servers(_) => "servers",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// One file local mode writes before starting (or re-rendering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    /// Path inside the state directory.
    pub path: PathBuf,
    /// Content.
    pub content: Vec<u8>,
    /// Readable by the owner only (secrets).
    pub private: bool,
}

/// One protected service of the local plane.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalService {
    /// `namespace/name` of the MCPService.
    pub key: String,
    /// Its name.
    pub name: String,
    /// The URL clients use locally (the token audience).
    pub url: String,
    /// The MCP server it protects.
    pub upstream: String,
    /// The resource URL of the manifest (what it is in a cluster).
    pub cluster_url: String,
    /// The sidecar config.
    pub config: SidecarConfig,
    /// Where its config file goes.
    pub config_file: PathBuf,
    /// Where its introspection key goes (derived from the root at start, as the operator does in a cluster).
    pub key_file: PathBuf,
}

/// Everything local mode runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPlan {
    /// The local issuer.
    pub issuer: String,
    /// The issuer of the manifest (what it is in a cluster).
    pub cluster_issuer: String,
    /// The authserver config.
    pub authserver: AuthServerConfig,
    /// Where its config file goes.
    pub authserver_file: PathBuf,
    /// The admin API base URL.
    pub admin_url: String,
    /// Sidecars, by service key.
    pub services: Vec<LocalService>,
    /// Files copied out of Secrets and ConfigMaps.
    pub files: Vec<StateFile>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The key of a namespaced object.
pub fn key_of<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Keys of every MCPService in the set (the ports they need).
pub fn service_keys(set: &ManifestSet) -> Vec<String> {
    set.services.iter().map(|s| key_of(&s.object)).collect()
}

/// Renders the plane of `set` with `ports`, its files under `state_dir`.
pub fn plan(set: &ManifestSet, ports: &PortPlan, state_dir: &Path) -> Result<LocalPlan, PlanError> {
    let server = single_server(set)?;
    let invalid = |origin: &Origin, field: &str, message: String| PlanError::Invalid {
        origin: origin.clone(),
        field: field.to_owned(),
        message,
    };
    let services: Vec<MCPService> = set.services.iter().map(|s| s.object.clone()).collect();
    let scopes: Vec<_> = set.scopes.iter().map(|s| s.object.clone()).collect();
    let policies: Vec<CIMDPolicy> = set.policies.iter().map(|p| p.object.clone()).collect();
    let clients = set.client_objects();
    let client_secrets = set.client_secret_lengths();
    for service in &set.services {
        check_service(set, server, service)?;
    }
    let inputs = Inputs {
        server: &server.object,
        services: &services,
        scopes: &scopes,
        policies: &policies,
        namespaces: &crate::tenancy::NamespaceLabels::new(),
        clients: &clients,
        client_secrets: Some(&client_secrets),
    };
    let render_error = |e: render::RenderError| invalid(&server.origin, "", e.to_string());

    let issuer = format!("http://127.0.0.1:{}", ports.authserver);
    let mut config = authserver::authserver_config(&inputs).map_err(render_error)?;
    let cluster_issuer = std::mem::replace(&mut config.issuer, issuer.clone());
    config.listen = loopback(ports.authserver);
    config.admin_listen = loopback(ports.authserver_admin);
    // Local mode is one machine's loopback interface: nothing crosses a network, so plain HTTP.
    config.tls = None;
    config.storage = StorageConfig {
        sqlite: Some(SqliteStorage {
            path: state_dir.join(files::DATABASE),
        }),
        postgres: None,
    };
    config.signing.keys_dir = state_dir.join(files::KEYS_DIR);
    config.signing.self_managed = true;
    config.admin.token_file = Some(state_dir.join(files::ADMIN_TOKEN));
    if let Some(resource_servers) = config.resource_servers.as_mut() {
        resource_servers.root_file = state_dir.join(files::RESOURCE_SERVER_ROOT);
    }

    let mut state_files = Vec::new();
    if let Some(users) = &server.object.spec.login.static_users {
        let content = secret_value(set, &server.object, &users.name, &users.key)
            .map_err(|m| invalid(&server.origin, "spec.login.staticUsers", m))?;
        let path = state_dir.join(files::USERS);
        if let Some(static_login) = config.login.static_users.as_mut() {
            static_login.users_file = Some(path.clone());
        }
        state_files.push(StateFile {
            path,
            content,
            private: true,
        });
    }
    // A declaration the cluster would leave out stops a local run, with its file and field, as a service's does.
    for loaded in &set.clients {
        let client = &loaded.object;
        if !crate::render::clients::names_server(client, &server.object) {
            return Err(invalid(
                &loaded.origin,
                "spec.authorizationServer",
                format!(
                    "an MCPClient must be in its AuthorizationServer's namespace and name it; the manifests hold only {}",
                    key_of(&server.object)
                ),
            ));
        }
    }
    for (index, declared) in crate::render::clients::declared(&inputs, &config)
        .into_iter()
        .enumerate()
    {
        let origin = set
            .clients
            .iter()
            .find(|c| key_of(&c.object) == key_of(declared.client))
            .map_or_else(|| server.origin.clone(), |c| c.origin.clone());
        if let crate::render::clients::Standing::Refused { reason, message } = declared.standing {
            return Err(invalid(&origin, "spec", format!("{reason}: {message}")));
        }
        if let Some(reference) = &declared.client.spec.client_secret_ref {
            let namespace = declared.client.namespace().unwrap_or_default();
            let content = set
                .secrets
                .get(&(namespace, reference.name.clone()))
                .and_then(|s| s.object.get(&reference.key))
                .cloned()
                .unwrap_or_default();
            // Numbered, not named after the Secret: names in hand-written manifests are not checked as a
            // cluster checks them, and must not lead a path out of the state directory.
            let path = state_dir.join(format!("{}{index}", files::CLIENT_SECRET_PREFIX));
            if let Some(entry) = config
                .clients
                .iter_mut()
                .find(|c| c.client_id == declared.client.spec.client_id)
            {
                entry.client_secret_file = Some(path.clone());
            }
            state_files.push(StateFile {
                path,
                content,
                private: true,
            });
        }
    }
    if !config.providers.is_empty() {
        config.provider_token_keys_file = Some(state_dir.join(files::PROVIDER_TOKEN_KEYS));
    }
    for (index, provider) in server.object.spec.providers.iter().enumerate() {
        let reference = &provider.client_secret_ref;
        let content =
            secret_value(set, &server.object, &reference.name, &reference.key).map_err(|m| {
                invalid(
                    &server.origin,
                    &format!("spec.providers[{index}].clientSecretRef"),
                    m,
                )
            })?;
        let path = state_dir.join(format!("{}{index}", files::PROVIDER_SECRET_PREFIX));
        if let Some(entry) = config.providers.iter_mut().find(|p| p.id == provider.id) {
            entry.client_secret_file = path.clone();
        }
        state_files.push(StateFile {
            path,
            content,
            private: true,
        });
    }
    if let Some(policy) = authserver::default_policy(&inputs)
        && let Some(bundle) = &policy.spec.trusted_ca_bundle
    {
        let origin = set
            .policies
            .iter()
            .find(|p| key_of(&p.object) == key_of(policy))
            .map(|p| p.origin.clone())
            .unwrap_or_else(|| server.origin.clone());
        let namespace = policy.namespace().unwrap_or_default();
        let pem = set
            .config_maps
            .get(&(namespace.clone(), bundle.name.clone()))
            .ok_or_else(|| {
                format!(
                    "ConfigMap {namespace}/{} is not in the manifests",
                    bundle.name
                )
            })
            .and_then(|c| {
                c.object.get(&bundle.key).cloned().ok_or_else(|| {
                    format!(
                        "ConfigMap {namespace}/{} has no key {}",
                        bundle.name, bundle.key
                    )
                })
            })
            .map_err(|m| invalid(&origin, "spec.trustedCaBundle", m))?;
        let path = state_dir.join(files::CA_BUNDLE);
        config.cimd.extra_ca_bundle = Some(path.clone());
        state_files.push(StateFile {
            path,
            content: pem.into_bytes(),
            private: false,
        });
    }

    let mut local_services = Vec::new();
    let mut local_url_of: BTreeMap<String, String> = BTreeMap::new();
    for service in &set.services {
        let key = key_of(&service.object);
        let Some(service_ports) = ports.services.get(&key) else {
            return Err(invalid(
                &service.origin,
                "",
                "no port was chosen for this service".into(),
            ));
        };
        let mut sidecar_config =
            sidecar::sidecar_config(&service.object, &server.object, &scopes, inputs.peers())
                .map_err(|e| invalid(&service.origin, "", e.to_string()))?;
        let url = format!(
            "http://127.0.0.1:{}{}",
            service_ports.port, sidecar_config.mcp_path
        );
        let cluster_url = std::mem::replace(&mut sidecar_config.resource, url.clone());
        sidecar_config.listen = loopback(service_ports.port);
        sidecar_config.admin_listen = loopback(service_ports.admin_port);
        sidecar_config.issuer = issuer.clone();
        sidecar_config.jwks_uri = format!("{issuer}{}", sidecar::JWKS_PATH);
        sidecar_config.issuer_ca_file = None;
        sidecar_config.authorization_servers = vec![issuer.clone()];
        let stem = format!("{}{}", files::SIDECAR_PREFIX, key.replace('/', "-"));
        let key_file = state_dir.join(format!("{stem}{}", files::SIDECAR_KEY_SUFFIX));
        if let Some(introspection) = sidecar_config.introspection.take() {
            sidecar_config.introspection = Some(
                sidecar::introspection(
                    &format!("{issuer}{}", sidecar::INTROSPECTION_PATH),
                    &url,
                    key_file.clone(),
                    introspection.sensitive_scopes,
                )
                .map_err(|e| invalid(&service.origin, "", e.to_string()))?,
            );
        }
        if let Some(tokens) = sidecar_config.downstream_tokens.as_mut() {
            tokens.token_endpoint = format!("{issuer}{}", sidecar::TOKEN_PATH);
            tokens.client_id = mcp_authz_authserver::resource_servers::client_id(&url);
            tokens.private_key_file = key_file.clone();
        }
        local_url_of.insert(cluster_url.clone(), url.clone());
        let file_name = format!("{stem}.json");
        local_services.push(LocalService {
            name: service.object.name_any(),
            upstream: sidecar_config.upstream.clone(),
            key,
            url,
            cluster_url,
            config: sidecar_config,
            config_file: state_dir.join(file_name),
            key_file,
        });
    }
    // Every name of a service, its own and the audiences other services call it by, becomes its local URL.
    let local = |name: &mut String| {
        if let Some(url) = local_url_of.get(name.as_str()) {
            *name = url.clone();
        }
    };
    for resource in &mut config.resources {
        local(&mut resource.resource);
        resource
            .token_exchange
            .iter_mut()
            .for_each(|t| local(&mut t.audience));
    }
    for service in &mut local_services {
        if let Some(tokens) = service.config.downstream_tokens.as_mut() {
            for target in &mut tokens.targets {
                local(&mut target.audience);
                // The connect link is the server's: on this machine, its local URL.
                if let Some(url) = target.connect_url.as_mut()
                    && let Some(path) = url.strip_prefix(cluster_issuer.as_str())
                {
                    *url = format!("{issuer}{path}");
                }
            }
        }
    }
    Ok(LocalPlan {
        admin_url: format!("http://127.0.0.1:{}", ports.authserver_admin),
        issuer,
        cluster_issuer,
        authserver: config,
        authserver_file: state_dir.join(files::AUTHSERVER_CONFIG),
        services: local_services,
        files: state_files,
    })
}

/// The references of `service` that rendering it at `server` needs, each refusal naming the service's file and
/// field: it names that server, the server admits its namespace, the MCPScopes it offers are defined where it may
/// use them, and the CIMDPolicy it names exists. `mcp-authz explain` and `test` check a service the same way.
pub fn check_service(
    set: &ManifestSet,
    server: &Loaded<AuthorizationServer>,
    service: &Loaded<MCPService>,
) -> Result<(), PlanError> {
    let invalid = |origin: &Origin, field: &str, message: String| PlanError::Invalid {
        origin: origin.clone(),
        field: field.to_owned(),
        message,
    };
    let scopes = set.scope_objects();
    let policies = set.policy_objects();
    if !render::names_server(&service.object, &server.object) {
        let reference = &service.object.spec.authorization_server_ref;
        return Err(invalid(
            &service.origin,
            "spec.authorizationServerRef",
            format!(
                "names AuthorizationServer {}{}, but the manifests hold only {}",
                reference
                    .namespace
                    .as_deref()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                reference.name,
                key_of(&server.object)
            ),
        ));
    }
    let namespace = service.object.namespace().unwrap_or_default();
    if !crate::tenancy::admits(&server.object, &namespace, &Default::default()) {
        return Err(invalid(
            &service.origin,
            "metadata.namespace",
            format!(
                "AuthorizationServer {} does not admit services from namespace {namespace} (allowedNamespaces {})",
                key_of(&server.object),
                server.object.spec.allowed_namespaces.describe()
            ),
        ));
    }
    // The cluster leaves such a service out of the server (ResourceURLNotGranted): a local run that kept it
    // would pass what the cluster refuses.
    if let Some(why) =
        crate::tenancy::url_standing(&service.object, &server.object, &Default::default()).refusal()
    {
        return Err(invalid(
            &service.origin,
            "spec.resourceUrl",
            format!(
                "AuthorizationServer {} does not let namespace {namespace} protect {}: {why}",
                key_of(&server.object),
                service.object.spec.resource_url
            ),
        ));
    }
    let missing = render::missing_scopes(
        &service.object,
        &server.object.namespace().unwrap_or_default(),
        &scopes,
    );
    if !missing.is_empty() {
        return Err(invalid(
            &service.origin,
            "spec.scopes",
            format!("no MCPScope defines {}", missing.join(", ")),
        ));
    }
    if let Some(Err(name)) = render::service_policy(&service.object, &policies) {
        return Err(invalid(
            &service.origin,
            "spec.cimdPolicyRef",
            format!("no CIMDPolicy {name} in the manifests"),
        ));
    }
    Ok(())
}

fn single_server(set: &ManifestSet) -> Result<&Loaded<AuthorizationServer>, PlanError> {
    match set.authorization_servers.as_slice() {
        [one] => Ok(one),
        [] => Err(PlanError::Servers(
            "no AuthorizationServer in the manifests: local mode needs exactly one".into(),
        )),
        many => Err(PlanError::Servers(format!(
            "{} AuthorizationServers ({}): local mode runs exactly one",
            many.len(),
            many.iter()
                .map(|s| s.origin.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

fn secret_value(
    set: &ManifestSet,
    server: &AuthorizationServer,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, String> {
    let namespace = server.namespace().unwrap_or_default();
    let secret = set
        .secrets
        .get(&(namespace.clone(), name.to_owned()))
        .ok_or_else(|| format!("Secret {namespace}/{name} is not in the manifests"))?;
    secret
        .object
        .get(key)
        .cloned()
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::ports::SidecarPorts;
    use crate::manifests::add_file;

    fn quickstart() -> ManifestSet {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/manifests");
        let mut set = crate::manifests::load_dirs(&[dir], crate::manifests::DEFAULT_NAMESPACE)
            .expect("quickstart manifests");
        add_file(
            &mut set,
            Path::new("generated/ca.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: quickstart-ca}\ndata: {ca.pem: PEM-TEXT}\n",
        )
        .expect("ca");
        set
    }

    fn ports() -> PortPlan {
        PortPlan {
            authserver: 7100,
            authserver_admin: 7101,
            services: [(
                "default/notes".to_owned(),
                SidecarPorts {
                    port: 7110,
                    admin_port: 7111,
                },
            )]
            .into(),
        }
    }

    /// Token-exchange edges run on loopback: a downstream that is another service of the plane is called by its
    /// local URL, in the server's config and the caller's sidecar config alike, with the local credentials.
    #[test]
    fn token_exchange_edges_use_the_local_urls() {
        let dir = tempfile::tempdir().expect("dir");
        let quickstart =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/manifests");
        for entry in std::fs::read_dir(&quickstart).expect("quickstart") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
        let server = dir.path().join("authorization-server.yaml");
        let text = std::fs::read_to_string(&server).expect("server");
        std::fs::write(
            &server,
            text.trim_end().to_owned()
                + "\n  tokenExchange:\n    - {from: {name: notes}, to: {name: reports}, scopes: [notes:read], header: x-reports-token}\n    - {from: {name: notes}, audience: 'https://inventory.example.com/api', scopes: [notes:read], header: x-inventory-token}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("reports.yaml"),
            "apiVersion: mcp-authz.io/v1alpha1\nkind: MCPService\nmetadata: {name: reports}\nspec:\n  selector: {app: reports}\n  \
             resourceUrl: https://mcp.quickstart.example/reports\n  authorizationServerRef: {name: quickstart}\n  \
             upstream: {port: 8001}\n  scopes: [notes:read]\n",
        )
        .expect("reports");
        let mut set = crate::manifests::load_dirs(
            &[dir.path().to_owned()],
            crate::manifests::DEFAULT_NAMESPACE,
        )
        .expect("manifests");
        add_file(
            &mut set,
            Path::new("generated/ca.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: quickstart-ca}\ndata: {ca.pem: PEM-TEXT}\n",
        )
        .expect("ca");
        let mut ports = ports();
        ports.services.insert(
            "default/reports".to_owned(),
            SidecarPorts {
                port: 7120,
                admin_port: 7121,
            },
        );
        let state = Path::new("/state");
        let plan = plan(&set, &ports, state).expect("plan");
        let notes = plan
            .authserver
            .resources
            .iter()
            .find(|r| r.resource == "http://127.0.0.1:7110/mcp")
            .expect("notes");
        let audiences: Vec<&str> = notes
            .token_exchange
            .iter()
            .map(|t| t.audience.as_str())
            .collect();
        assert_eq!(
            audiences,
            [
                "http://127.0.0.1:7120/mcp",
                "https://inventory.example.com/api"
            ]
        );
        plan.authserver
            .validate()
            .expect("the server accepts its local config");
        let sidecar = plan
            .services
            .iter()
            .find(|s| s.url == "http://127.0.0.1:7110/mcp")
            .expect("notes sidecar");
        let tokens = sidecar
            .config
            .downstream_tokens
            .as_ref()
            .expect("downstream tokens");
        assert_eq!(tokens.token_endpoint, "http://127.0.0.1:7100/token");
        assert_eq!(
            tokens.client_id,
            "urn:mcp-authz:resource-server:http://127.0.0.1:7110/mcp"
        );
        assert_eq!(tokens.private_key_file, sidecar.key_file);
        let targets: Vec<(&str, &str)> = tokens
            .targets
            .iter()
            .map(|t| (t.audience.as_str(), t.header.as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                ("http://127.0.0.1:7120/mcp", "x-reports-token"),
                ("https://inventory.example.com/api", "x-inventory-token")
            ]
        );
        sidecar
            .config
            .validate()
            .expect("the sidecar accepts its local config");
    }

    /// A provider runs locally: its secret copied from its Secret manifest into the state directory, the sealing
    /// keys there (the server writes them), and the connect link the notes sidecar hands out on this machine.
    #[test]
    fn a_provider_runs_locally_with_its_secret_and_a_local_connect_link() {
        let dir = tempfile::tempdir().expect("dir");
        let quickstart =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/manifests");
        for entry in std::fs::read_dir(&quickstart).expect("quickstart") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
        let server = dir.path().join("authorization-server.yaml");
        let text = std::fs::read_to_string(&server).expect("server");
        std::fs::write(
            &server,
            text.trim_end().to_owned()
                + "\n  providers:\n    - {id: acme, displayName: Acme, issuer: 'https://login.acme.example', clientId: mcp, \
                   clientSecretRef: {name: acme-oauth, key: secret}, services: [{name: notes}], header: x-acme-token}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("acme-secret.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: acme-oauth}\nstringData: {secret: acme-client-secret-0123456789}\n",
        )
        .expect("secret");
        let mut set = crate::manifests::load_dirs(
            &[dir.path().to_owned()],
            crate::manifests::DEFAULT_NAMESPACE,
        )
        .expect("manifests");
        add_file(
            &mut set,
            Path::new("generated/ca.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: quickstart-ca}\ndata: {ca.pem: PEM-TEXT}\n",
        )
        .expect("ca");
        let state = Path::new("/state");
        let plan = plan(&set, &ports(), state).expect("plan");
        let provider = &plan.authserver.providers[0];
        assert_eq!(provider.client_secret_file, state.join("provider-secret-0"));
        assert_eq!(
            plan.authserver.provider_token_keys_file.as_deref(),
            Some(state.join("keys/provider-token-keys").as_path())
        );
        assert!(
            plan.files
                .iter()
                .any(|f| f.path == provider.client_secret_file
                    && f.private
                    && f.content == b"acme-client-secret-0123456789")
        );
        plan.authserver
            .validate()
            .expect("the server accepts its local config");
        let notes = plan
            .services
            .iter()
            .find(|s| s.url == "http://127.0.0.1:7110/mcp")
            .expect("notes sidecar");
        let targets: Vec<(&str, Option<&str>)> = notes
            .config
            .downstream_tokens
            .as_ref()
            .expect("downstream tokens")
            .targets
            .iter()
            .map(|t| (t.audience.as_str(), t.connect_url.as_deref()))
            .collect();
        assert_eq!(
            targets,
            [(
                "urn:mcp-authz:provider:acme",
                Some("http://127.0.0.1:7100/connect/acme")
            )]
        );
    }

    #[test]
    fn the_quickstart_becomes_a_loopback_plane_with_state_in_one_directory() {
        let state = Path::new("/state");
        let plan = plan(&quickstart(), &ports(), state).expect("plan");
        assert_eq!(plan.issuer, "http://127.0.0.1:7100");
        assert_eq!(plan.cluster_issuer, "https://auth.quickstart.example");
        let a = &plan.authserver;
        assert_eq!(a.issuer, plan.issuer);
        assert_eq!(a.listen, loopback(7100));
        assert_eq!(a.admin_listen, loopback(7101));
        assert_eq!(
            a.storage.sqlite.as_ref().map(|s| s.path.clone()),
            Some(state.join("authserver.db"))
        );
        assert!(a.signing.self_managed);
        assert_eq!(a.signing.keys_dir, state.join("keys"));
        assert_eq!(
            a.login
                .static_users
                .as_ref()
                .and_then(|s| s.users_file.clone()),
            Some(state.join("users.yaml"))
        );
        assert_eq!(a.resources.len(), 1);
        assert_eq!(a.resources[0].resource, "http://127.0.0.1:7110/mcp");
        assert_eq!(a.resources[0].scopes, ["notes:read", "notes:write"]);
        assert_eq!(a.cimd.extra_ca_bundle, Some(state.join("cimd-ca.pem")));
        assert_eq!(a.cimd.allowed_private_cidrs, ["127.0.0.0/8"]);
        let write = a
            .scopes
            .iter()
            .find(|s| s.value == "notes:write")
            .expect("scope");
        assert!(write.sensitive);
        assert_eq!(write.max_lifetime_secs, Some(300));

        let [notes] = plan.services.as_slice() else {
            panic!("one service")
        };
        assert_eq!(notes.url, "http://127.0.0.1:7110/mcp");
        assert_eq!(notes.cluster_url, "https://mcp.quickstart.example/mcp");
        assert_eq!(notes.upstream, "http://127.0.0.1:8000");
        assert_eq!(notes.config.resource, notes.url);
        assert_eq!(notes.config.issuer, plan.issuer);
        assert_eq!(notes.config.jwks_uri, "http://127.0.0.1:7100/jwks");
        assert_eq!(notes.config.listen, loopback(7110));
        assert_eq!(notes.config.admin_listen, loopback(7111));
        assert_eq!(notes.config_file, state.join("sidecar-default-notes.json"));
        // The sensitive scope is checked at the local issuer, as the local URL's resource server.
        assert_eq!(
            a.resource_servers.as_ref().map(|r| r.root_file.clone()),
            Some(state.join("resource-server-root"))
        );
        let introspection = notes.config.introspection.as_ref().expect("introspection");
        assert_eq!(introspection.endpoint, "http://127.0.0.1:7100/introspect");
        assert_eq!(
            introspection.client_id,
            "urn:mcp-authz:resource-server:http://127.0.0.1:7110/mcp"
        );
        assert_eq!(introspection.private_key_file, notes.key_file);
        assert_eq!(notes.key_file, state.join("sidecar-default-notes.key.pem"));
        assert_eq!(introspection.sensitive_scopes, ["notes:write"]);

        let users = plan
            .files
            .iter()
            .find(|f| f.path == state.join("users.yaml"))
            .expect("users file");
        assert!(users.private);
        assert!(String::from_utf8_lossy(&users.content).contains("username: demo"));
        let ca = plan
            .files
            .iter()
            .find(|f| f.path == state.join("cimd-ca.pem"))
            .expect("ca file");
        assert_eq!(ca.content, b"PEM-TEXT");
    }

    #[test]
    fn a_plan_is_refused_with_the_file_object_and_field_at_fault() {
        let mut no_users = quickstart();
        no_users.secrets.clear();
        let mut no_ca = quickstart();
        no_ca.config_maps.clear();
        let mut other_server = quickstart();
        other_server.services[0]
            .object
            .spec
            .authorization_server_ref
            .name = "elsewhere".into();
        let mut unknown_scope = quickstart();
        unknown_scope.services[0]
            .object
            .spec
            .scopes
            .push("notes:admin".into());
        let mut other_namespace = quickstart();
        let service = &mut other_namespace.services[0].object;
        service.metadata.namespace = Some("team-a".into());
        service.spec.authorization_server_ref.namespace = Some("default".into());
        let grant = |prefix: &str, namespaces: serde_json::Value| {
            let mut set = quickstart();
            set.authorization_servers[0].object.spec.resource_urls = serde_json::from_value(
                serde_json::json!([{"prefix": prefix, "namespaces": namespaces}]),
            )
            .expect("grants");
            set
        };
        let not_covered = grant("https://other.example/", serde_json::json!({"from": "All"}));
        let granted_elsewhere = grant(
            "https://mcp.quickstart.example/",
            serde_json::json!({"from": "Selector", "selector": {"matchLabels": {"team": "platform"}}}),
        );
        let mut no_server = quickstart();
        no_server.authorization_servers.clear();
        let mut two_servers = quickstart();
        two_servers
            .authorization_servers
            .push(two_servers.authorization_servers[0].clone());
        let cases: Vec<(&str, ManifestSet, &str)> = vec![
            (
                "users secret missing",
                no_users,
                "authorization-server.yaml: AuthorizationServer/quickstart: spec.login.staticUsers: Secret default/quickstart-users is not in the manifests",
            ),
            (
                "CA ConfigMap missing",
                no_ca,
                "cimd-policy.yaml: CIMDPolicy/quickstart-agents: spec.trustedCaBundle: ConfigMap default/quickstart-ca is not in the manifests",
            ),
            (
                "service names another server",
                other_server,
                "notes-service.yaml: MCPService/notes: spec.authorizationServerRef: names AuthorizationServer elsewhere, but the manifests hold only default/quickstart",
            ),
            (
                "scope without MCPScope",
                unknown_scope,
                "notes-service.yaml: MCPService/notes: spec.scopes: no MCPScope defines notes:admin",
            ),
            (
                "service from a namespace the server does not admit",
                other_namespace,
                "notes-service.yaml: MCPService/notes: metadata.namespace: AuthorizationServer default/quickstart does not admit services from namespace team-a (allowedNamespaces from: Same)",
            ),
            (
                "service URL no grant covers",
                not_covered,
                "notes-service.yaml: MCPService/notes: spec.resourceUrl: AuthorizationServer default/quickstart does not let namespace default protect https://mcp.quickstart.example/mcp: none of its resourceUrls covers this URL",
            ),
            (
                "service URL granted to another namespace",
                granted_elsewhere,
                "notes-service.yaml: MCPService/notes: spec.resourceUrl: AuthorizationServer default/quickstart does not let namespace default protect https://mcp.quickstart.example/mcp: its resourceUrls grant https://mcp.quickstart.example/ to other namespaces",
            ),
            (
                "no server",
                no_server,
                "no AuthorizationServer in the manifests: local mode needs exactly one",
            ),
            ("two servers", two_servers, "2 AuthorizationServers ("),
        ];
        for (name, set, want) in cases {
            let err = plan(&set, &ports(), Path::new("/state"))
                .expect_err(name)
                .to_string();
            assert!(err.contains(want), "{name}: got {err:?}, want {want:?}");
        }
    }

    const CLIENT: &str = "apiVersion: mcp-authz.io/v1alpha1\nkind: MCPClient\nmetadata: {name: ci-job}\nspec:\n  authorizationServer: quickstart\n  clientId: ci-job\n  clientName: CI job\n  tokenEndpointAuthMethod: client_secret_post\n  clientSecretRef: {name: ci-job, key: secret}\n  grantTypes: [client_credentials]\n  scopes: [notes:read]\n";

    fn with_client(client: &str, secret: Option<&str>) -> ManifestSet {
        let mut set = quickstart();
        add_file(&mut set, Path::new("clients/ci-job.yaml"), client).expect("client");
        if let Some(value) = secret {
            let text = format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: ci-job}}\nstringData: {{secret: {value}}}\n"
            );
            add_file(&mut set, Path::new("clients/secret.yaml"), &text).expect("secret");
        }
        set
    }

    #[test]
    fn a_declared_client_reads_its_secret_from_a_private_copy_in_the_state_directory() {
        let state = Path::new("/state");
        let set = with_client(CLIENT, Some("0123456789abcdef0123456789abcdef"));
        let plan = plan(&set, &ports(), state).expect("plan");
        let [client] = plan.authserver.clients.as_slice() else {
            panic!("one client: {:?}", plan.authserver.clients)
        };
        assert_eq!(client.client_id, "ci-job");
        assert_eq!(client.scopes, ["notes:read"]);
        let path = state.join("client-secret-0");
        assert_eq!(client.client_secret_file.as_deref(), Some(path.as_path()));
        let file = plan
            .files
            .iter()
            .find(|f| f.path == path)
            .expect("secret file");
        assert!(file.private);
        assert_eq!(file.content, b"0123456789abcdef0123456789abcdef");
        // The config the server loads accepts it.
        plan.authserver.validate().expect("a valid server config");
    }

    #[test]
    fn a_declared_client_the_cluster_would_leave_out_stops_a_local_run() {
        let elsewhere = CLIENT.replace(
            "authorizationServer: quickstart",
            "authorizationServer: other",
        );
        let unknown_scope = CLIENT.replace("scopes: [notes:read]", "scopes: [notes:admin]");
        let cases: Vec<(&str, ManifestSet, &str)> = vec![
            (
                "no Secret",
                with_client(CLIENT, None),
                "ci-job.yaml: MCPClient/ci-job: spec: SecretNotFound: Secret default/ci-job does not exist",
            ),
            (
                "a short secret",
                with_client(CLIENT, Some("short")),
                "ci-job.yaml: MCPClient/ci-job: spec: SecretTooShort: the secret in key secret of Secret default/ci-job is shorter than 32 characters",
            ),
            (
                "a scope nobody offers",
                with_client(&unknown_scope, Some("0123456789abcdef0123456789abcdef")),
                "ci-job.yaml: MCPClient/ci-job: spec: Invalid: client \"ci-job\": unknown scope \"notes:admin\"",
            ),
            (
                "another server",
                with_client(&elsewhere, Some("0123456789abcdef0123456789abcdef")),
                "ci-job.yaml: MCPClient/ci-job: spec.authorizationServer: an MCPClient must be in its AuthorizationServer's namespace and name it; the manifests hold only default/quickstart",
            ),
        ];
        for (name, set, want) in cases {
            let err = plan(&set, &ports(), Path::new("/state"))
                .expect_err(name)
                .to_string();
            assert!(err.contains(want), "{name}: got {err:?}, want {want:?}");
        }
    }
}
