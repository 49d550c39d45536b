//! AuthorizationServer (+ the scopes, services and policies that name it) -> the authserver's
//! config ConfigMap, Deployment, Service, PVC and PodDisruptionBudget.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use mcp_authz_authserver::config::{
    AuthServerConfig, ResourceConfig, ResourceServers, ScopeDefinition, TrustedIdentityProvider,
};

use super::sidecar::{AUTHSERVER_PORT, AUTHSERVER_TLS_PORT};
use super::{
    Inputs, RenderError, RenderSettings, RenderedObject, authserver_labels, cimd, clients, object,
    owner_ref, seconds, visible_scopes,
};
use crate::admission::patch::hardened_security_context;
use crate::api::authorization_server::{IssuerKind, StorageKind, TransportMode};
use crate::api::{CIMDPolicy, MCPService};
use crate::naming;

/// Admin port (`/metrics`, `/healthz`, `/readyz`) of the authorization server.
pub const ADMIN_PORT: u16 = 9090;
/// Where the config ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/mcp-authz/config";
/// Where the keys Secret is mounted.
pub const KEYS_DIR: &str = "/etc/mcp-authz/keys";
/// Where the TLS Secret (serving certificate and CA bundle) is mounted.
pub const TLS_DIR: &str = "/etc/mcp-authz/tls";
/// Where the embedded database lives (the PVC).
pub const DATA_DIR: &str = "/var/lib/mcp-authz";
/// Where the static users Secret is mounted.
pub const USERS_DIR: &str = "/etc/mcp-authz/users";
/// Where the upstream OIDC client secret is mounted.
pub const OIDC_DIR: &str = "/etc/mcp-authz/oidc";
/// Where each provider's client secret is mounted: `{PROVIDERS_DIR}/{id}/{key}`.
pub const PROVIDERS_DIR: &str = "/etc/mcp-authz/providers";
/// Environment variable carrying the PostgreSQL URL (from the referenced Secret).
pub const POSTGRES_URL_ENV: &str = "MCP_AUTHZ_POSTGRES_URL";

/// The most bytes the server's config may have: a ConfigMap holds 1 MiB, its metadata included.
pub const MAX_CONFIG_BYTES: usize = 1_000_000;

/// The services of the cluster that name `inputs.server` from a namespace it admits, sorted by namespace and
/// name.
pub fn services_of<'a>(inputs: &Inputs<'a>) -> Vec<&'a MCPService> {
    let mut services: Vec<&MCPService> = inputs
        .services
        .iter()
        .filter(|s| crate::tenancy::attached(s, inputs.server, inputs.namespaces))
        .collect();
    services.sort_by_key(|s| (s.namespace(), s.name_any()));
    services
}

/// The server's default CIMDPolicy, if it names one and it exists in its namespace.
pub fn default_policy<'a>(inputs: &Inputs<'a>) -> Option<&'a CIMDPolicy> {
    let name = inputs.server.spec.default_cimd_policy.as_ref()?;
    inputs
        .policies
        .iter()
        .find(|p| &p.name_any() == name && p.namespace() == inputs.server.namespace())
}

/// The CIMDPolicies the services of `inputs` name (existing ones), by key, once each.
fn named_policies<'a>(inputs: &Inputs<'a>) -> Vec<&'a CIMDPolicy> {
    let mut named: Vec<&CIMDPolicy> = services_of(inputs)
        .into_iter()
        .filter_map(|s| super::service_policy(s, inputs.policies).and_then(Result::ok))
        .collect();
    named.sort_by_key(|p| cimd::policy_key(p));
    named.dedup_by_key(|p| cimd::policy_key(p));
    named
}

/// The authserver config for `inputs`.
pub fn authserver_config(inputs: &Inputs<'_>) -> Result<AuthServerConfig, RenderError> {
    config_and_exchange_report(inputs).map(|(config, _)| config)
}

/// Why each `spec.tokenExchange` edge not in force is left out, by index (`tokenExchange[i]: why`).
pub fn exchange_left_out(inputs: &Inputs<'_>) -> Result<Vec<String>, RenderError> {
    config_and_exchange_report(inputs).map(|(_, report)| report)
}

/// The `audience` edges whose URL an MCPService naming this server claims (`tokenExchange[i]: …`): that service is
/// refused, which is right for a squatter and wrong for a chain written before `to` existed; the platform must
/// see which.
/// At most this many are named: each claim is a tenant's object, and a status message must not grow with
/// however many a tenant makes.
pub const MAX_CLAIMS_NAMED: usize = 8;

pub fn audiences_claimed(inputs: &Inputs<'_>) -> Vec<String> {
    let mut claimed = Vec::new();
    for (index, edge) in inputs.server.spec.token_exchange.iter().enumerate() {
        let Some(audience) = &edge.audience else {
            continue;
        };
        for service in inputs.services {
            if super::names_server(service, inputs.server)
                && crate::api::resource_urls::same_resource(audience, &service.spec.resource_url)
            {
                claimed.push(format!(
                    "tokenExchange[{index}]: its audience is the resourceUrl of MCPService {}",
                    crate::tenancy::key_of(service)
                ));
            }
        }
    }
    if claimed.len() > MAX_CLAIMS_NAMED {
        let more = claimed.len() - MAX_CLAIMS_NAMED;
        claimed.truncate(MAX_CLAIMS_NAMED);
        claimed.push(format!("and {more} more such claim(s)"));
    }
    claimed
}

fn config_and_exchange_report(
    inputs: &Inputs<'_>,
) -> Result<(AuthServerConfig, Vec<String>), RenderError> {
    let spec = &inputs.server.spec;
    let server_ns = inputs.server.namespace().unwrap_or_default();
    let login = match (&spec.login.static_users, &spec.login.oidc) {
        (Some(users), _) => {
            serde_json::json!({"static": {"usersFile": PathBuf::from(USERS_DIR).join(&users.key)}})
        }
        (None, Some(oidc)) => serde_json::json!({"upstreamOidc": {
            "issuer": oidc.issuer,
            "clientId": oidc.client_id,
            "clientSecretFile": PathBuf::from(OIDC_DIR).join(&oidc.client_secret_ref.key),
        }}),
        (None, None) => {
            return Err(RenderError::Invalid {
                field: "spec.login".into(),
                message: "needs staticUsers or oidc".into(),
            });
        }
    };
    let storage = match spec.storage.kind {
        StorageKind::Embedded => {
            serde_json::json!({"sqlite": {"path": PathBuf::from(DATA_DIR).join("authserver.db")}})
        }
        StorageKind::Postgres => serde_json::json!({"postgres": {"urlEnv": POSTGRES_URL_ENV}}),
    };
    let mut config: AuthServerConfig = serde_json::from_value(serde_json::json!({
        "issuer": spec.issuer,
        "listen": format!("0.0.0.0:{AUTHSERVER_PORT}"),
        "adminListen": format!("0.0.0.0:{ADMIN_PORT}"),
        "storage": storage,
        "signing": {"keysDir": KEYS_DIR, "algorithm": "ES256", "selfManaged": false,
                    "rotationPeriodSecs": seconds("spec.signing.rotationPeriod", &spec.signing.rotation_period)?},
        "login": login,
    }))
    .map_err(|e| RenderError::Serialize { what: "authserver config".into(), message: e.to_string() })?;
    if spec.in_cluster_transport.tls() {
        config.tls = Some(mcp_authz_authserver::config::TlsListenConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], AUTHSERVER_TLS_PORT)),
            cert_file: PathBuf::from(TLS_DIR).join(crate::serving_tls::keys::TLS_CERT),
            key_file: PathBuf::from(TLS_DIR).join(crate::serving_tls::keys::TLS_KEY),
        });
    }
    config.tokens.access_token_secs = seconds(
        "spec.tokens.accessTokenLifetime",
        &spec.tokens.access_token_lifetime,
    )?;
    config.tokens.refresh_token_secs = seconds(
        "spec.tokens.refreshTokenLifetime",
        &spec.tokens.refresh_token_lifetime,
    )?;

    let services = services_of(inputs);
    let mut exchange_report = std::collections::BTreeMap::new();
    let mut edges_seen = std::collections::BTreeSet::new();
    // The catalogue: every scope some service offers and can see, plus every scope the server's
    // namespace owns (so a scope exists before its first service). Only owners enter it, so no
    // team's definition of a value can replace another's.
    let server_key = crate::tenancy::key_of(inputs.server);
    let owners = crate::tenancy::scope_owners(inputs.scopes, &server_key);
    let mut catalogue: BTreeMap<String, ScopeDefinition> = BTreeMap::new();
    let mut add = |scope: &crate::api::MCPScope| -> Result<(), RenderError> {
        let max = scope
            .spec
            .max_token_lifetime
            .as_deref()
            .map(|t| {
                seconds(
                    &format!("MCPScope {}: spec.maxTokenLifetime", scope.name_any()),
                    t,
                )
            })
            .transpose()?;
        catalogue
            .entry(scope.spec.value.clone())
            .or_insert_with(|| ScopeDefinition {
                value: scope.spec.value.clone(),
                description: scope.spec.description.clone(),
                sensitive: scope.spec.sensitive,
                max_lifetime_secs: max,
                implies: scope.spec.implies.clone(),
            });
        Ok(())
    };
    for scope in owners
        .values()
        .filter(|s| s.namespace().as_deref() == Some(server_ns.as_str()))
    {
        add(scope)?;
    }
    // One team's object must not stop the shared server from loading its config: a policy the server would
    // refuse is left out (with the services naming it), and so is a resource URL it would refuse.
    let named = named_policies(inputs);
    let refused_policies: std::collections::BTreeSet<String> = named
        .iter()
        .filter(|p| {
            mcp_authz_authserver::cimd::CompiledPolicy::compile(
                &cimd::policy_key(p),
                &cimd::policy(p),
            )
            .is_err()
        })
        .map(|p| cimd::policy_key(p))
        .collect();
    let over_budget = crate::config_budget::left_out(
        inputs.server,
        inputs.services,
        inputs.scopes,
        inputs.policies,
        inputs.namespaces,
    );
    let mut resources = Vec::new();
    for service in &services {
        if let Err(e) = mcp_authz_authserver::config::check_resource_url(&service.spec.resource_url)
        {
            tracing::warn!(service = %crate::tenancy::key_of(*service), error = %e, "left out of the server's config");
            continue;
        }
        if crate::tenancy::resource_holder(
            service,
            inputs.server,
            inputs.services,
            inputs.namespaces,
        )
        .is_some()
            || over_budget.contains_key(&crate::tenancy::key_of(*service))
        {
            continue;
        }
        let visible = visible_scopes(service, &server_ns, inputs.scopes);
        let offered: Vec<String> = service
            .spec
            .scopes
            .iter()
            .filter(|v| visible.contains_key(*v))
            .cloned()
            .collect();
        for value in &offered {
            if let Some(scope) = visible.get(value) {
                add(scope)?;
            }
        }
        let policy = match super::service_policy(service, inputs.policies) {
            Some(Ok(p)) if refused_policies.contains(&cimd::policy_key(p)) => continue,
            Some(Ok(p)) => Some(cimd::policy_key(p)),
            // A missing policy must not silently widen admission to the default: the service is
            // left out until its policy exists (its PolicyResolved condition says why).
            Some(Err(_)) => continue,
            None => None,
        };
        let mut token_exchange = Vec::new();
        let mut kept_edges = Vec::new();
        for (index, edge) in
            super::exchange::resolve(inputs.server, service, &offered, inputs.peers())
        {
            match edge {
                Ok(edge) => {
                    kept_edges.push(edge.clone());
                    token_exchange.push(mcp_authz_authserver::config::ExchangeTarget {
                        audience: edge.audience,
                        scopes: edge.scopes,
                    });
                }
                Err(why) => {
                    exchange_report.insert(index, why);
                }
            }
            edges_seen.insert(index);
        }
        resources.push(ResourceConfig {
            resource: service.spec.resource_url.clone(),
            display_name: service
                .spec
                .display_name
                .clone()
                .unwrap_or_else(|| service.name_any()),
            scopes: offered,
            cimd_policy: policy,
            // The holder's key, grants, consents and tokens, and no earlier holder's, are accepted for this URL.
            holder: service.uid().unwrap_or_default(),
            token_exchange,
            providers: super::exchange::providers_of(inputs.server, service, &kept_edges)
                .into_iter()
                .map(|p| p.id)
                .collect(),
        });
    }
    // Implied scopes must exist, and belong to the implying scope's team or the platform: a team's scope
    // implying a value it does not own would let the value's owner (any team that defines it first) set the
    // lifetime, sensitivity and consent text of this team's tokens. Others are dropped, not refused.
    let owner_namespace = |value: &str| owners.get(value).and_then(|s| s.namespace());
    for scope in catalogue.values_mut() {
        let own = owner_namespace(&scope.value);
        let implies = std::mem::take(&mut scope.implies);
        scope.implies = implies
            .into_iter()
            .filter(|v| {
                let theirs = owner_namespace(v);
                theirs.is_some() && (theirs == own || theirs.as_deref() == Some(server_ns.as_str()))
            })
            .collect();
    }
    let values: Vec<String> = catalogue.keys().cloned().collect();
    for scope in catalogue.values_mut() {
        scope.implies.retain(|v| values.contains(v));
    }
    config.scopes = catalogue.into_values().collect();
    config.resources = resources;
    // Only the policies of services in the config: a service left out (its URL taken, its namespace's share
    // spent) must not still bring its policy, which no share would count.
    let used: std::collections::BTreeSet<&str> = config
        .resources
        .iter()
        .filter_map(|r| r.cimd_policy.as_deref())
        .collect();
    let kept: Vec<_> = named
        .into_iter()
        .filter(|p| used.contains(cimd::policy_key(p).as_str()))
        .collect();
    config.cimd = cimd::config(default_policy(inputs), &kept);
    config.dynamic_client_registration = inputs
        .server
        .spec
        .dynamic_client_registration
        .clone()
        .unwrap_or_default();
    // The default CIMDPolicy's switch came first and still opens registration (deprecated: it is the server's
    // business, not a policy's).
    config.dynamic_client_registration.enabled |=
        default_policy(inputs).is_some_and(|p| p.spec.dynamic_client_registration);
    config.resource_servers = Some(ResourceServers {
        root_file: PathBuf::from(KEYS_DIR).join(crate::keys::RESOURCE_SERVER_ROOT_FILE),
    });
    config.rate_limits = inputs.server.spec.rate_limits.clone().unwrap_or_default();
    config.trusted_proxies = inputs.server.spec.trusted_proxies.clone();
    config.trusted_identity_providers = spec
        .trusted_identity_providers
        .iter()
        .map(|p| TrustedIdentityProvider {
            issuer: p.issuer.clone(),
            jwks_uri: p.jwks_uri.clone(),
            jwks: p.jwks.clone(),
            ca_file: None,
            clients: p.clients.clone(),
        })
        .collect();
    config.providers = spec
        .providers
        .iter()
        .map(|p| mcp_authz_authserver::config::ProviderConfig {
            id: p.id.clone(),
            display_name: p.display_name.clone(),
            issuer: p.issuer.clone(),
            authorization_endpoint: p.authorization_endpoint.clone(),
            token_endpoint: p.token_endpoint.clone(),
            revocation_endpoint: p.revocation_endpoint.clone(),
            client_id: p.client_id.clone(),
            client_secret_file: PathBuf::from(PROVIDERS_DIR)
                .join(&p.id)
                .join(&p.client_secret_ref.key),
            scopes: p.scopes.clone(),
            ca_file: None,
        })
        .collect();
    if !config.providers.is_empty() {
        config.provider_token_keys_file =
            Some(PathBuf::from(KEYS_DIR).join(crate::keys::PROVIDER_TOKEN_KEYS_FILE));
    }
    config.clients = clients::registered(&clients::declared(inputs, &config));
    for (index, edge) in spec.token_exchange.iter().enumerate() {
        if !edges_seen.contains(&index) {
            let namespace = edge.from.namespace.as_deref().unwrap_or(&server_ns);
            exchange_report.insert(
                index,
                format!(
                    "MCPService {namespace}/{} is not in this server's config",
                    edge.from.name
                ),
            );
        }
    }
    let report = exchange_report
        .into_iter()
        .map(|(index, why)| format!("tokenExchange[{index}]: {why}"))
        .collect();
    // Each team's input is checked where it is read, so one team's mistake leaves out that team's part; this is
    // the last line: a config the server would refuse is never written, and the one in force stays.
    config.validate().map_err(|e| RenderError::Invalid {
        field: "spec".into(),
        message: format!("the rendered server config would be refused: {e}"),
    })?;
    Ok((config, report))
}

/// Every object of the authorization server. The keys Secret is not among them: it holds state the
/// reconciler keeps (see [`crate::keys`]).
pub fn render(
    inputs: &Inputs<'_>,
    settings: &RenderSettings,
) -> Result<Vec<RenderedObject>, RenderError> {
    let server = inputs.server;
    let spec = &server.spec;
    let name = naming::authserver(&server.name_any());
    let namespace = server.namespace().unwrap_or_default();
    let owner = owner_ref(server);
    let meta = || ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        ..Default::default()
    };
    let labels = authserver_labels(&server.name_any());

    let config = authserver_config(inputs)?;
    let serialize = |what: &str, r: Result<String, serde_saphyr::ser::Error>| {
        r.map_err(|e| RenderError::Serialize {
            what: what.into(),
            message: e.to_string(),
        })
    };
    let config_yaml = serialize("authserver config", serde_saphyr::to_string(&config))?;
    // Each namespace's share is bounded, not their number: past what a ConfigMap holds, the apply would fail on
    // every retry, so the render is refused instead and the server's status says why (the config in force stays).
    if config_yaml.len() > MAX_CONFIG_BYTES {
        return Err(RenderError::Invalid {
            field: "spec.configBytesPerNamespace".into(),
            message: format!(
                "the server's config would be {} bytes, past the {MAX_CONFIG_BYTES} a ConfigMap holds; lower configBytesPerNamespace or admit fewer namespaces",
                config_yaml.len()
            ),
        });
    }

    let config_map = ConfigMap {
        metadata: meta(),
        data: Some([(naming::AUTHSERVER_CONFIG_FILE.to_owned(), config_yaml)].into()),
        ..Default::default()
    };

    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "keys".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(naming::authserver_keys(&server.name_any())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![mount("config", CONFIG_DIR), mount("keys", KEYS_DIR)];
    let tls = spec.in_cluster_transport.tls();
    if tls {
        // The whole Secret, not subPaths: the kubelet then updates it in place and the server reloads it.
        volumes.push(secret_volume(
            "tls",
            &naming::authserver_tls(&server.name_any()),
        ));
        mounts.push(mount("tls", TLS_DIR));
    }
    let mut env = Vec::new();
    match spec.storage.kind {
        StorageKind::Embedded => {
            volumes.push(Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: name.clone(),
                    read_only: None,
                }),
                ..Default::default()
            });
            let mut data = mount("data", DATA_DIR);
            data.read_only = None;
            mounts.push(data);
        }
        StorageKind::Postgres => {
            if let Some(pg) = &spec.storage.postgres {
                env.push(EnvVar {
                    name: POSTGRES_URL_ENV.into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: pg.url_secret_ref.name.clone(),
                            key: pg.url_secret_ref.key.clone(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
    }
    if let Some(users) = &spec.login.static_users {
        volumes.push(secret_volume("users", &users.name));
        mounts.push(mount("users", USERS_DIR));
    }
    if let Some(oidc) = &spec.login.oidc {
        volumes.push(secret_volume("oidc", &oidc.client_secret_ref.name));
        mounts.push(mount("oidc", OIDC_DIR));
    }
    // Only the key the server reads (the Secret is the platform's and may hold other things); optional, so a
    // missing Secret fails that provider's connections, not the server's start.
    for provider in &spec.providers {
        let volume = format!("provider-{}", provider.id);
        let key = &provider.client_secret_ref.key;
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(provider.client_secret_ref.name.clone()),
                items: Some(vec![KeyToPath {
                    key: key.clone(),
                    path: key.clone(),
                    mode: None,
                }]),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &volume,
            &PathBuf::from(PROVIDERS_DIR)
                .join(&provider.id)
                .to_string_lossy(),
        ));
    }
    // One volume per Secret the registered clients read, holding only the keys they read (the Secret is the
    // platform's and may hold other things), kept up to date so a rotated secret reaches the server. Optional: a
    // key removed before the operator has taken the client out must not keep the server's pod from starting.
    for (index, (secret, keys)) in clients::secret_names(&clients::declared(inputs, &config))
        .iter()
        .enumerate()
    {
        let volume = format!("client-secret-{index}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(
                    keys.iter()
                        .map(|key| KeyToPath {
                            key: key.clone(),
                            path: key.clone(),
                            mode: None,
                        })
                        .collect(),
                ),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &volume,
            &clients::secret_dir(secret).to_string_lossy(),
        ));
    }
    if let Some(ca) = default_policy(inputs).and_then(|p| p.spec.trusted_ca_bundle.as_ref()) {
        volumes.push(Volume {
            name: "cimd-ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ca.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("cimd-ca", cimd::CA_BUNDLE_DIR));
    }

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let container = Container {
        name: "authserver".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| settings.authserver_image.clone()),
        ),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{}", naming::AUTHSERVER_CONFIG_FILE),
        ]),
        env: {
            env.extend(super::tracing_env::env_vars(
                &settings.tracing,
                "mcp-authz-server",
            ));
            (!env.is_empty()).then_some(env)
        },
        ports: Some(
            [
                ("http", AUTHSERVER_PORT),
                ("https", AUTHSERVER_TLS_PORT),
                ("admin", ADMIN_PORT),
            ]
            .into_iter()
            .filter(|(name, _)| tls || *name != "https")
            .map(|(name, port)| ContainerPort {
                name: Some(name.into()),
                container_port: i32::from(port),
                ..Default::default()
            })
            .collect(),
        ),
        volume_mounts: Some(mounts),
        security_context: Some(hardened_security_context()),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        startup_probe: Some(Probe {
            failure_threshold: Some(60),
            ..probe("/readyz", 1)
        }),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        ..Default::default()
    };
    let embedded = spec.storage.kind == StorageKind::Embedded;
    let deployment = Deployment {
        metadata: meta(),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            // One SQLite file on a ReadWriteOnce volume: the old pod must be gone before the new one opens it.
            strategy: embedded.then(|| DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The server's stop, at its default budget, with a margin: past it the kubelet's SIGKILL
                    // would take the last audit records with it.
                    termination_grace_period_seconds: Some(
                        mcp_authz_audit::stop::grace_period_seconds(
                            mcp_authz_audit::stop::DEFAULT_BUDGET,
                        ),
                    ),
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        fs_group: Some(65532),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: meta(),
        spec: Some(ServiceSpec {
            selector: Some(labels.clone()),
            ports: Some(
                [
                    ("http", AUTHSERVER_PORT),
                    ("https", AUTHSERVER_TLS_PORT),
                    ("admin", ADMIN_PORT),
                ]
                .into_iter()
                .filter(|(name, _)| tls || *name != "https")
                .map(|(name, port)| ServicePort {
                    name: Some(name.into()),
                    port: i32::from(port),
                    target_port: Some(IntOrString::String(name.into())),
                    // Lets meshes and Gateway API backends know the port speaks TLS.
                    app_protocol: (name == "https").then(|| "https".into()),
                    ..Default::default()
                })
                .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut objects = vec![
        object(config_map, owner.clone())?,
        object(deployment, owner.clone())?,
        object(service, owner.clone())?,
    ];
    if embedded {
        let pvc = PersistentVolumeClaim {
            metadata: meta(),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spec.storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(
                        [("storage".to_owned(), Quantity(spec.storage.size.clone()))].into(),
                    ),
                    limits: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Not owned, so deleting the server does not garbage-collect every grant with it: a server
        // re-created under the same name takes the claim up again.
        objects.push(object(pvc, None)?);
    }
    if spec.in_cluster_transport.mode == TransportMode::CertManagerTls
        && let Some(issuer) = &spec.in_cluster_transport.cert_manager_issuer_ref
    {
        objects.push(certificate(server, issuer, owner.clone()));
    }
    if spec.replicas > 1 {
        let pdb = PodDisruptionBudget {
            metadata: meta(),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(labels),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        objects.push(object(pdb, owner)?);
    }
    Ok(objects)
}

/// Kinds [`render`] makes only for some specs, which must go when the spec stops asking for them (a
/// PodDisruptionBudget left behind at one replica blocks every node drain). The PersistentVolumeClaim is not
/// among them: it holds every grant, and leaving Embedded storage must not delete it.
pub const OPTIONAL_KINDS: &[(&str, &str)] = &[
    ("policy/v1", "PodDisruptionBudget"),
    ("cert-manager.io/v1", "Certificate"),
];

/// The cert-manager Certificate of a server with `mode: CertManagerTLS`: it writes the TLS Secret in the
/// layout the operator's own CA uses (`tls.crt`, `tls.key`, `ca.crt`), labelled so the operator sees it.
fn certificate(
    server: &crate::api::AuthorizationServer,
    issuer: &crate::api::authorization_server::IssuerRef,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> RenderedObject {
    let name = naming::authserver(&server.name_any());
    let namespace = server.namespace().unwrap_or_default();
    let hours = |d: time::Duration| format!("{}h", d.whole_hours());
    let mut metadata = serde_json::json!({
        "name": name, "namespace": namespace,
        "labels": {naming::MANAGED_BY_LABEL: naming::MANAGED_BY},
    });
    if let Some(owner) = owner {
        metadata["ownerReferences"] = serde_json::json!([owner]);
    }
    RenderedObject {
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        namespace: namespace.clone(),
        name: name.clone(),
        body: serde_json::json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": metadata,
            "spec": {
                "secretName": naming::authserver_tls(&server.name_any()),
                "secretTemplate": {"labels": {naming::MANAGED_BY_LABEL: naming::MANAGED_BY}},
                "dnsNames": crate::serving_tls::service_names(&name, &namespace),
                "duration": hours(crate::serving_tls::SERVING_LIFETIME),
                "renewBefore": hours(crate::serving_tls::RENEW_BEFORE),
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["server auth", "digital signature"],
                "issuerRef": {
                    "name": issuer.name,
                    "kind": match issuer.kind { IssuerKind::Issuer => "Issuer", IssuerKind::ClusterIssuer => "ClusterIssuer" },
                    "group": "cert-manager.io",
                },
            },
        }),
    }
}

/// The optional objects of the server that `rendered` no longer contains: `(apiVersion, kind, name)`.
pub fn unwanted(
    server_name: &str,
    rendered: &[RenderedObject],
) -> Vec<(&'static str, &'static str, String)> {
    OPTIONAL_KINDS
        .iter()
        .filter(|(_, kind)| !rendered.iter().any(|o| o.kind == *kind))
        .map(|(api_version, kind)| (*api_version, *kind, naming::authserver(server_name)))
        .collect()
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests and limits of an authserver whose resource sets none.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), q("100m")),
                ("memory".to_owned(), q("64Mi")),
            ]
            .into(),
        ),
        limits: Some([("memory".to_owned(), q("256Mi"))].into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AuthorizationServer, MCPScope, cases};
    use crate::tenancy::NamespaceLabels;
    use serde_json::{Value, json};

    fn server(spec: Value) -> AuthorizationServer {
        let mut v = cases::authorization_server();
        v["metadata"] = json!({"name": "auth", "namespace": "mcp-authz", "uid": "u-1"});
        for (k, val) in spec.as_object().cloned().unwrap_or_default() {
            v["spec"][k] = val;
        }
        serde_json::from_value(v).expect("server")
    }

    fn scope(ns: &str, value: &str, sensitive: bool) -> MCPScope {
        let mut v = cases::mcp_scope();
        v["metadata"] = json!({"name": value.replace(':', "-"), "namespace": ns});
        v["spec"]["value"] = json!(value);
        v["spec"]["sensitive"] = json!(sensitive);
        if sensitive {
            v["spec"]["maxTokenLifetime"] = json!("5m");
        }
        serde_json::from_value(v).expect("scope")
    }

    fn policy(ns: &str, name: &str) -> CIMDPolicy {
        let mut v = cases::cimd_policy();
        v["metadata"] = json!({"name": name, "namespace": ns});
        serde_json::from_value(v).expect("policy")
    }

    /// The config of a server with no services, scopes or policies.
    fn alone(server: &AuthorizationServer) -> AuthServerConfig {
        let inputs = Inputs {
            server,
            services: &[],
            scopes: &[],
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        authserver_config(&inputs).expect("config")
    }

    fn kinds(objects: &[RenderedObject]) -> Vec<&str> {
        objects.iter().map(|o| o.kind.as_str()).collect()
    }

    /// A namespace that fills the schema's maxima (2,000-character URLs, 48 scopes per service, each its own
    /// definition with a 512-character description) loses its newest services from the config, which stays
    /// within what a ConfigMap holds with another team's service in it; many namespaces each given a large share
    /// get a refused render rather than an apply that fails on every retry.
    #[test]
    fn no_namespace_can_grow_the_config_past_what_a_configmap_holds() {
        let long_url =
            |ns: &str, i: usize| format!("https://mcp.example.com/{ns}/{i}/{}", "p".repeat(1950));
        let mut services = vec![cases::mcp_service_in(
            "team-a",
            "files",
            "https://mcp.example.com/files",
            &[],
            None,
        )];
        let mut scopes = Vec::new();
        let definitions = |ns: &str, i: usize| -> Vec<MCPScope> {
            (0..48)
                .map(|j| {
                    let mut v = cases::mcp_scope();
                    let value = format!("{ns}-{i}-{j}-{}", "v".repeat(100));
                    v["metadata"] = json!({"name": format!("s{i}-{j}"), "namespace": ns});
                    v["spec"]["value"] = json!(value);
                    v["spec"]["description"] = json!("d".repeat(512));
                    serde_json::from_value(v).expect("scope")
                })
                .collect()
        };
        let namespaces = ["team-b", "team-c", "team-d"];
        for ns in namespaces {
            for i in 0..25 {
                let defined = definitions(ns, i);
                let values: Vec<&str> = defined.iter().map(|d| d.spec.value.as_str()).collect();
                let mut service = cases::mcp_service_in(
                    ns,
                    &format!("big-{i:02}"),
                    &long_url(ns, i),
                    &values,
                    None,
                );
                service.spec.display_name = Some("n".repeat(128));
                services.push(service);
                scopes.extend(defined);
            }
        }
        let labels = NamespaceLabels::new();
        let inputs = |server| Inputs {
            server,
            services: &services,
            scopes: &scopes,
            policies: &[],
            namespaces: &labels,
            clients: &[],
            client_secrets: None,
        };
        let shared = server(json!({"allowedNamespaces": {"from": "All"}}));
        let objects = render(&inputs(&shared), &RenderSettings::default()).expect("render");
        let config = objects
            .iter()
            .find(|o| o.kind == "ConfigMap")
            .and_then(|o| o.body["data"][naming::AUTHSERVER_CONFIG_FILE].as_str())
            .expect("the config");
        assert!(config.len() <= MAX_CONFIG_BYTES, "{}", config.len());
        let config = authserver_config(&inputs(&shared)).expect("config");
        // Each big service needs about 52 KiB: one per namespace fits the default 64 KiB share.
        let held: Vec<&str> = config
            .resources
            .iter()
            .map(|r| &r.resource[..r.resource.len().min(35)])
            .collect();
        assert_eq!(
            held,
            [
                "https://mcp.example.com/files",
                "https://mcp.example.com/team-b/0/pp",
                "https://mcp.example.com/team-c/0/pp",
                "https://mcp.example.com/team-d/0/pp"
            ]
        );
        // Three namespaces with nearly 1 MB each: refused before anything is applied.
        let generous = server(
            json!({"allowedNamespaces": {"from": "All"}, "configBytesPerNamespace": 1_000_000}),
        );
        let error = render(&inputs(&generous), &RenderSettings::default()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("spec.configBytesPerNamespace: the server's config would be ")
                && message.ends_with(
                    " bytes, past the 1000000 a ConfigMap holds; lower configBytesPerNamespace or admit fewer namespaces"
                ),
            "{message}"
        );
    }

    /// A namespace's CIMDPolicies count against its share: thirty services each naming a policy of 128 hosts of
    /// 253 characters (about 34 KB rendered each) leave one service and its policy in the config, not a config
    /// too large to apply. A policy of a service left out is not rendered.
    #[test]
    fn a_namespaces_policies_count_against_its_share() {
        let host = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let mut services = vec![cases::mcp_service_in(
            "team-a",
            "files",
            "https://mcp.example.com/files",
            &[],
            None,
        )];
        let mut policies = Vec::new();
        for i in 0..30 {
            let mut p = cases::cimd_policy();
            p["metadata"] = json!({"name": format!("p{i:02}"), "namespace": "team-p"});
            p["spec"] = json!({"allowedHosts": vec![host.clone(); 128]});
            policies.push(serde_json::from_value::<CIMDPolicy>(p).expect("policy"));
            services.push(cases::mcp_service_in(
                "team-p",
                &format!("s{i:02}"),
                &format!("https://mcp.example.com/p/{i}"),
                &[],
                Some(&format!("p{i:02}")),
            ));
        }
        let labels = NamespaceLabels::new();
        let shared = server(json!({"allowedNamespaces": {"from": "All"}}));
        let inputs = Inputs {
            server: &shared,
            services: &services,
            scopes: &[],
            policies: &policies,
            namespaces: &labels,
            clients: &[],
            client_secrets: None,
        };
        let objects = render(&inputs, &RenderSettings::default()).expect("render");
        let yaml = objects
            .iter()
            .find(|o| o.kind == "ConfigMap")
            .and_then(|o| o.body["data"][naming::AUTHSERVER_CONFIG_FILE].as_str())
            .expect("the config");
        assert!(yaml.len() < 64 * 1024, "{}", yaml.len());
        let config = authserver_config(&inputs).expect("config");
        let held: Vec<&str> = config
            .resources
            .iter()
            .map(|r| r.resource.as_str())
            .collect();
        assert_eq!(
            held,
            [
                "https://mcp.example.com/files",
                "https://mcp.example.com/p/0"
            ]
        );
        let rendered: Vec<&String> = config.cimd.policies.keys().collect();
        assert_eq!(rendered, ["team-p/p00"]);
    }

    /// A token-exchange edge reaches the server's config and the service's sidecar config alike, and each program
    /// accepts what it gets; an edge the service cannot use reaches neither.
    #[test]
    fn a_token_exchange_edge_reaches_both_configs_or_neither() {
        let server = server(
            json!({"allowedNamespaces": {"from": "All"}, "tokenExchange": [
                {"from": {"name": "files", "namespace": "apps"}, "audience": "https://inventory.example.com/api",
                 "scopes": ["files:read", "files:write", "mail:read"], "header": "x-inventory-token"},
                {"from": {"name": "files", "namespace": "apps"}, "audience": "https://payroll.example.com/api",
                 "scopes": ["mail:read"], "header": "x-payroll-token"},
                {"from": {"name": "gone"}, "audience": "https://payroll.example.com/api",
                 "scopes": ["files:read"], "header": "x-payroll-token"},
            ]}),
        );
        let services = [cases::mcp_service_in(
            "apps",
            "files",
            "https://mcp.example.com/files",
            &["files:read", "files:write"],
            None,
        )];
        let scopes = [
            scope("mcp-authz", "files:read", false),
            scope("apps", "files:write", false),
        ];
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &scopes,
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let config = authserver_config(&inputs).expect("config");
        assert_eq!(
            config.resources[0].token_exchange,
            [mcp_authz_authserver::config::ExchangeTarget {
                audience: "https://inventory.example.com/api".into(),
                scopes: vec!["files:read".into(), "files:write".into()],
            }]
        );
        config
            .validate()
            .expect("the server accepts the rendered config");
        assert_eq!(
            exchange_left_out(&inputs).expect("report"),
            [
                "tokenExchange[1]: the service offers none of the scopes \"mail:read\"",
                "tokenExchange[2]: MCPService mcp-authz/gone is not in this server's config",
            ]
        );
        let sidecar =
            crate::render::sidecar::sidecar_config(&services[0], &server, &scopes, inputs.peers())
                .expect("sidecar");
        let tokens = sidecar
            .downstream_tokens
            .clone()
            .expect("downstream tokens");
        assert_eq!(
            tokens.token_endpoint,
            "https://auth-authserver.mcp-authz.svc:8443/token"
        );
        assert_eq!(
            tokens.client_id,
            "urn:mcp-authz:resource-server:https://mcp.example.com/files"
        );
        assert_eq!(
            tokens
                .targets
                .iter()
                .map(|t| (t.audience.as_str(), t.header.as_str()))
                .collect::<Vec<_>>(),
            [("https://inventory.example.com/api", "x-inventory-token")]
        );
        sidecar
            .validate()
            .expect("the sidecar accepts the rendered config");
    }

    /// A provider reaches the server's config (with its secret mounted and the sealing keys named) and the
    /// listed service's sidecar config (its audience, header and connect link) alike, and each program accepts
    /// what it gets; a service it does not list gets nothing of it.
    #[test]
    fn a_provider_reaches_both_configs_of_the_services_it_lists() {
        let server = server(json!({"allowedNamespaces": {"from": "All"}, "providers": [
            {"id": "acme", "displayName": "Acme", "issuer": "https://login.acme.example", "clientId": "mcp",
             "clientSecretRef": {"name": "acme-oauth", "key": "secret"}, "scopes": ["openid", "issues:read"],
             "services": [{"name": "files", "namespace": "apps"}], "header": "x-acme-token"},
        ]}));
        let services = [
            cases::mcp_service_in(
                "apps",
                "files",
                "https://mcp.example.com/files",
                &["files:read"],
                None,
            ),
            cases::mcp_service_in(
                "apps",
                "mail",
                "https://mcp.example.com/mail",
                &["files:read"],
                None,
            ),
        ];
        let scopes = [scope("mcp-authz", "files:read", false)];
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &scopes,
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let config = authserver_config(&inputs).expect("config");
        let provider = &config.providers[0];
        assert_eq!(
            (
                provider.id.as_str(),
                provider.issuer.as_deref(),
                provider.client_secret_file.as_path()
            ),
            (
                "acme",
                Some("https://login.acme.example"),
                std::path::Path::new("/etc/mcp-authz/providers/acme/secret")
            )
        );
        assert_eq!(
            config.provider_token_keys_file.as_deref(),
            Some(std::path::Path::new(
                "/etc/mcp-authz/keys/provider-token-keys"
            ))
        );
        let receives: Vec<(&str, &[String])> = config
            .resources
            .iter()
            .map(|r| (r.resource.as_str(), r.providers.as_slice()))
            .collect();
        assert_eq!(
            receives,
            [
                ("https://mcp.example.com/files", &["acme".to_owned()][..]),
                ("https://mcp.example.com/mail", &[][..])
            ]
        );
        config
            .validate()
            .expect("the server accepts the rendered config");
        let objects = render(&inputs, &RenderSettings::default()).expect("render");
        let pod = &objects[1].body["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "provider-acme")
            .expect("the provider's secret is mounted");
        assert_eq!(
            volume["secret"],
            json!({"secretName": "acme-oauth", "items": [{"key": "secret", "path": "secret"}], "optional": true})
        );
        assert!(
            pod["containers"][0]["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["name"] == "provider-acme"
                    && m["mountPath"] == "/etc/mcp-authz/providers/acme")
        );
        let files =
            crate::render::sidecar::sidecar_config(&services[0], &server, &scopes, inputs.peers())
                .expect("sidecar");
        let targets = files.downstream_tokens.clone().expect("tokens").targets;
        assert_eq!(
            targets
                .iter()
                .map(|t| (
                    t.audience.as_str(),
                    t.header.as_str(),
                    t.connect_url.as_deref()
                ))
                .collect::<Vec<_>>(),
            [(
                "urn:mcp-authz:provider:acme",
                "x-acme-token",
                Some(format!("{}/connect/acme", server.spec.issuer).as_str())
            )]
        );
        files
            .validate()
            .expect("the sidecar accepts the rendered config");
        let mail =
            crate::render::sidecar::sidecar_config(&services[1], &server, &scopes, inputs.peers())
                .expect("sidecar");
        assert!(mail.downstream_tokens.is_none());
    }

    #[test]
    fn config_collects_scopes_resources_and_policies() {
        let server =
            server(json!({"defaultCimdPolicy": "default", "allowedNamespaces": {"from": "All"}}));
        let services = [
            cases::mcp_service_in(
                "apps",
                "files",
                "https://mcp.example.com/files",
                &["files:read", "files:write"],
                Some("strict"),
            ),
            cases::mcp_service_in(
                "apps",
                "notes",
                "https://mcp.example.com/notes",
                &["notes:read"],
                None,
            ),
            cases::mcp_service_in("apps", "other", "https://mcp.example.com/other", &[], None),
        ];
        let mut other = services[2].clone();
        other.spec.authorization_server_ref.name = "someone-else".into();
        let services = [services[0].clone(), services[1].clone(), other];
        let scopes = [
            scope("mcp-authz", "files:read", false),
            scope("apps", "files:write", true),
            scope("elsewhere", "notes:read", false),
        ];
        let policies = [policy("mcp-authz", "default"), policy("apps", "strict")];
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &scopes,
            policies: &policies,
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let c = authserver_config(&inputs).expect("config");
        assert_eq!(c.issuer, "https://auth.example.com");
        assert_eq!(
            c.scopes
                .iter()
                .map(|s| s.value.as_str())
                .collect::<Vec<_>>(),
            ["files:read", "files:write"]
        );
        assert_eq!(c.scopes[1].max_lifetime_secs, Some(300));
        assert!(c.scopes[1].sensitive);
        assert_eq!(
            c.resources.len(),
            2,
            "the service of another server is not ours"
        );
        assert_eq!(c.resources[0].resource, "https://mcp.example.com/files");
        assert_eq!(c.resources[0].cimd_policy.as_deref(), Some("apps/strict"));
        assert_eq!(
            c.resources[1].scopes,
            Vec::<String>::new(),
            "notes:read is not visible from apps"
        );
        assert_eq!(c.signing.keys_dir, PathBuf::from(KEYS_DIR));
        assert_eq!(
            c.resource_servers.as_ref().map(|r| r.root_file.clone()),
            Some(PathBuf::from("/etc/mcp-authz/keys/resource-server-root")),
            "the root lives with the signing keys"
        );
        assert!(!c.signing.self_managed);
        assert_eq!(c.signing.rotation_period_secs, 720 * 3600);
        assert_eq!(c.tokens.access_token_secs, 600);
        assert_eq!(
            c.login
                .static_users
                .as_ref()
                .and_then(|s| s.users_file.clone()),
            Some(PathBuf::from("/etc/mcp-authz/users/users.yaml"))
        );
        assert_eq!(c.cimd.policies.keys().collect::<Vec<_>>(), ["apps/strict"]);
        assert_eq!(
            c.cimd.baseline.client_id_patterns,
            ["https://*.example.com", "https://claude.ai"]
        );
        assert_eq!(c.cimd.allowed_private_cidrs, ["10.0.0.0/8"]);
        c.validate().expect("the authserver accepts what we render");
    }

    #[test]
    fn a_service_whose_policy_is_missing_is_left_out() {
        let server = server(json!({"allowedNamespaces": {"from": "All"}}));
        let services = [cases::mcp_service_in(
            "apps",
            "files",
            "https://mcp.example.com/files",
            &[],
            Some("nope"),
        )];
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &[],
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        assert!(
            authserver_config(&inputs)
                .expect("config")
                .resources
                .is_empty()
        );
    }

    #[test]
    fn one_teams_bad_object_leaves_out_that_team_only() {
        let server = server(json!({"allowedNamespaces": {"from": "All"}}));
        let services = [
            cases::mcp_service_in("good", "files", "https://mcp.example.com/files", &[], None),
            // The CRD's prefix check lets this through; the server's URL parser does not.
            cases::mcp_service_in("bad", "url", "https://mcp.tenant example/mcp", &[], None),
            cases::mcp_service_in(
                "bad",
                "wild",
                "https://mcp.example.com/wild",
                &[],
                Some("too-wide"),
            ),
        ];
        let mut too_wide = policy("bad", "too-wide");
        too_wide.spec.allowed_hosts = vec!["*.com".into()];
        let policies = [too_wide];
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &[],
            policies: &policies,
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let c = authserver_config(&inputs).expect("config");
        assert_eq!(
            c.resources
                .iter()
                .map(|r| r.resource.as_str())
                .collect::<Vec<_>>(),
            ["https://mcp.example.com/files"]
        );
        assert!(c.cimd.policies.is_empty(), "{:?}", c.cimd.policies.keys());
        c.validate()
            .expect("the shared server still loads its config");
        mcp_authz_authserver::cimd::Resolver::new(c.cimd.clone()).expect("and its CIMD policies");
    }

    #[test]
    fn a_scope_implies_only_its_own_teams_values_or_the_platforms() {
        let server = server(json!({"allowedNamespaces": {"from": "All"}}));
        let services = [cases::mcp_service_in(
            "zzz",
            "b",
            "https://mcp.example.com/b",
            &["b:admin", "b:list", "b:read"],
            None,
        )];
        let mut admin = scope("zzz", "b:admin", false);
        admin.spec.implies = vec!["b:read".into(), "b:list".into(), "platform:read".into()];
        // `b:read` is defined first by another team, which would set its lifetime and consent text.
        let squatted = scope("aaa", "b:read", true);
        let scopes = [
            admin,
            squatted,
            scope("zzz", "b:list", false),
            scope("mcp-authz", "platform:read", false),
        ];
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &scopes,
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let c = authserver_config(&inputs).expect("config");
        let admin = c
            .scopes
            .iter()
            .find(|s| s.value == "b:admin")
            .expect("b:admin");
        assert_eq!(admin.implies, ["b:list", "platform:read"]);
        assert!(c.scopes.iter().all(|s| s.value != "b:read"));
        c.validate().expect("valid");
    }

    #[test]
    fn declared_clients_and_identity_providers_reach_the_config_and_client_secrets_are_mounted() {
        let server = server(json!({"trustedIdentityProviders": [
            {"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/jwks", "clients": ["ci-job"]}
        ]}));
        let scopes = [scope("mcp-authz", "files:read", false)];
        let client = |name: &str, id: &str, secret: &str| -> crate::api::MCPClient {
            let mut v = cases::mcp_client();
            v["metadata"] = json!({"name": name, "namespace": "mcp-authz"});
            v["spec"]["clientId"] = json!(id);
            v["spec"]["clientSecretRef"]["name"] = json!(secret);
            serde_json::from_value(v).expect("client")
        };
        // Two clients share one Secret, a third has its own, and a fourth names a Secret that does not exist.
        let clients = [
            client("a", "agent-a", "shared"),
            client("b", "agent-b", "shared"),
            client("c", "agent-c", "own"),
            client("d", "agent-d", "missing"),
        ];
        let long = Some(40);
        let secrets: clients::SecretLengths = [
            (
                ("mcp-authz".to_owned(), "shared".to_owned()),
                [("secret".to_owned(), long)].into(),
            ),
            (
                ("mcp-authz".to_owned(), "own".to_owned()),
                [("secret".to_owned(), long)].into(),
            ),
        ]
        .into();
        let inputs = Inputs {
            server: &server,
            services: &[],
            scopes: &scopes,
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &clients,
            client_secrets: Some(&secrets),
        };
        let config = authserver_config(&inputs).expect("config");
        let ids: Vec<&str> = config
            .clients
            .iter()
            .map(|c| c.client_id.as_str())
            .collect();
        assert_eq!(ids, ["agent-a", "agent-b", "agent-c"]);
        assert_eq!(
            config.clients[2].client_secret_file.as_deref(),
            Some(std::path::Path::new("/etc/mcp-authz/clients/own/secret"))
        );
        assert_eq!(config.trusted_identity_providers.len(), 1);
        assert_eq!(
            config.trusted_identity_providers[0].jwks_uri.as_deref(),
            Some("https://idp.example.com/jwks")
        );
        config
            .validate()
            .expect("the server accepts the rendered config");

        let objects = render(&inputs, &RenderSettings::default()).expect("render");
        let pod = &objects[1].body["spec"]["template"]["spec"];
        let secret_volumes: Vec<(&str, &serde_json::Value)> = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("client-secret-"))
            })
            .map(|v| (v["name"].as_str().unwrap_or(""), &v["secret"]))
            .collect();
        // Only the keys the clients read, never the whole Secret.
        assert_eq!(
            secret_volumes,
            [
                (
                    "client-secret-0",
                    &json!({"secretName": "own", "items": [{"key": "secret", "path": "secret"}], "optional": true})
                ),
                (
                    "client-secret-1",
                    &json!({"secretName": "shared", "items": [{"key": "secret", "path": "secret"}], "optional": true})
                )
            ]
        );
        let mounts: Vec<(&str, &str)> = pod["containers"][0]["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter(|m| {
                m["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("client-secret-"))
            })
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or(""),
                    m["mountPath"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("client-secret-0", "/etc/mcp-authz/clients/own"),
                ("client-secret-1", "/etc/mcp-authz/clients/shared")
            ]
        );
    }

    #[test]
    fn embedded_storage_gets_a_volume_and_recreate() {
        let server = server(json!({}));
        let inputs = Inputs {
            server: &server,
            services: &[],
            scopes: &[],
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let objects = render(&inputs, &RenderSettings::default()).expect("render");
        assert_eq!(
            kinds(&objects),
            [
                "ConfigMap",
                "Deployment",
                "Service",
                "PersistentVolumeClaim"
            ]
        );
        let deployment = &objects[1].body;
        assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
        // The server's default stop budget of 25 s and the 5 s margin.
        assert_eq!(
            deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            30
        );
        assert_eq!(
            objects[3].body["spec"]["resources"]["requests"]["storage"],
            "1Gi"
        );
        assert_eq!(deployment["metadata"]["ownerReferences"][0]["name"], "auth");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["args"],
            json!(["--config", "/etc/mcp-authz/config/authserver.yaml"])
        );
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert_eq!(
            mounts,
            [
                "/etc/mcp-authz/config",
                "/etc/mcp-authz/keys",
                "/etc/mcp-authz/tls",
                "/var/lib/mcp-authz",
                "/etc/mcp-authz/users"
            ]
        );
        let text = objects[0].body["data"]["authserver.yaml"]
            .as_str()
            .expect("yaml");
        AuthServerConfig::parse(text, std::path::Path::new("a.yaml"))
            .expect("parses")
            .validate()
            .expect("valid");
    }

    #[test]
    fn postgres_with_replicas_gets_a_pdb_and_the_url_from_the_secret() {
        let server = server(
            json!({"replicas": 3, "storage": {"type": "Postgres", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"}}}}),
        );
        let inputs = Inputs {
            server: &server,
            services: &[],
            scopes: &[],
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let objects = render(&inputs, &RenderSettings::default()).expect("render");
        assert_eq!(
            kinds(&objects),
            ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
        );
        let deployment = &objects[1].body;
        assert_eq!(deployment["spec"]["replicas"], 3);
        assert!(
            deployment["spec"]
                .get("strategy")
                .is_none_or(Value::is_null)
        );
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"][0];
        assert_eq!(env["name"], POSTGRES_URL_ENV);
        assert_eq!(
            env["valueFrom"]["secretKeyRef"],
            json!({"name": "pg", "key": "url"})
        );
        assert_eq!(objects[3].body["spec"]["minAvailable"], 1);
        let certificate = (
            "cert-manager.io/v1",
            "Certificate",
            "auth-authserver".to_owned(),
        );
        assert_eq!(
            unwanted("auth", &objects),
            std::slice::from_ref(&certificate)
        );
        let mut one = server.clone();
        one.spec.replicas = 1;
        let inputs = Inputs {
            server: &one,
            ..inputs
        };
        let objects = render(&inputs, &RenderSettings::default()).expect("render");
        assert_eq!(
            unwanted("auth", &objects),
            [
                (
                    "policy/v1",
                    "PodDisruptionBudget",
                    "auth-authserver".to_owned()
                ),
                certificate
            ],
            "back at one replica, the budget goes"
        );
    }

    /// The operator's tracing settings reach the server's container, named as the server; none without them.
    #[test]
    fn the_server_gets_the_tracing_env_only_when_tracing_is_on() {
        let server = server(json!({}));
        let inputs = Inputs {
            server: &server,
            services: &[],
            scopes: &[],
            policies: &[],
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let otel_env = |settings: &RenderSettings| -> Vec<(String, String)> {
            let objects = render(&inputs, settings).expect("render");
            let deployment = objects
                .iter()
                .find(|o| o.kind == "Deployment")
                .expect("deployment");
            deployment.body["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .map(|env| {
                    env.iter()
                        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("OTEL_")))
                        .map(|e| {
                            (
                                e["name"].as_str().unwrap_or_default().to_owned(),
                                e["value"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(otel_env(&RenderSettings::default()), vec![]);
        let traced = RenderSettings {
            tracing: vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    "http://otel.monitoring.svc:4318".into(),
                ),
                ("OTEL_TRACES_SAMPLER_ARG".into(), "0.01".into()),
            ],
            ..RenderSettings::default()
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            otel_env(&traced),
            pairs(&[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://otel.monitoring.svc:4318"
                ),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("OTEL_SERVICE_NAME", "mcp-authz-server"),
            ])
        );
    }

    /// The in-cluster listener per transport mode: the config's TLS section, the mounted Secret, the
    /// `https` port of the container and the Service, and cert-manager's Certificate.
    #[test]
    fn transport_modes_shape_the_listener() {
        let cases = [
            (json!(null), true, false),
            (json!({"mode": "OperatorTLS"}), true, false),
            (
                json!({"mode": "CertManagerTLS", "certManagerIssuerRef": {"name": "ca", "kind": "ClusterIssuer"}}),
                true,
                true,
            ),
            (json!({"mode": "Mesh"}), false, false),
        ];
        for (transport, tls, cert_manager) in cases {
            let mut spec = json!({});
            if !transport.is_null() {
                spec["inClusterTransport"] = transport.clone();
            }
            let server = server(spec);
            let inputs = Inputs {
                server: &server,
                services: &[],
                scopes: &[],
                policies: &[],
                namespaces: &NamespaceLabels::new(),
                clients: &[],
                client_secrets: None,
            };
            let config = authserver_config(&inputs).expect("config");
            assert_eq!(
                config.tls,
                tls.then(|| mcp_authz_authserver::config::TlsListenConfig {
                    listen: "0.0.0.0:8443".parse().expect("addr"),
                    cert_file: "/etc/mcp-authz/tls/tls.crt".into(),
                    key_file: "/etc/mcp-authz/tls/tls.key".into(),
                }),
                "{transport}"
            );
            let objects = render(&inputs, &RenderSettings::default()).expect("render");
            let pod = &objects[1].body["spec"]["template"]["spec"];
            let port_names = |ports: &Value| -> Vec<String> {
                ports
                    .as_array()
                    .expect("ports")
                    .iter()
                    .map(|p| p["name"].as_str().expect("name").to_owned())
                    .collect()
            };
            let want: Vec<&str> = if tls {
                vec!["http", "https", "admin"]
            } else {
                vec!["http", "admin"]
            };
            assert_eq!(
                port_names(&pod["containers"][0]["ports"]),
                want,
                "{transport}"
            );
            assert_eq!(
                port_names(&objects[2].body["spec"]["ports"]),
                want,
                "{transport}"
            );
            let tls_volume = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == "tls")
                .map(|v| v["secret"]["secretName"].clone());
            assert_eq!(
                tls_volume,
                tls.then(|| json!("auth-authserver-tls")),
                "{transport}"
            );
            let certificate = objects.iter().find(|o| o.kind == "Certificate");
            assert_eq!(certificate.is_some(), cert_manager, "{transport}");
            if let Some(c) = certificate {
                assert_eq!(
                    c.body["spec"]["issuerRef"],
                    json!({"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
                );
                assert_eq!(c.body["spec"]["secretName"], "auth-authserver-tls");
                assert_eq!(
                    c.body["spec"]["dnsNames"],
                    json!([
                        "auth-authserver",
                        "auth-authserver.mcp-authz",
                        "auth-authserver.mcp-authz.svc",
                        "auth-authserver.mcp-authz.svc.cluster.local"
                    ])
                );
                assert_eq!(c.body["spec"]["duration"], "2160h");
                assert_eq!(c.body["spec"]["renewBefore"], "720h");
                assert_eq!(c.body["metadata"]["ownerReferences"][0]["name"], "auth");
            }
        }
    }

    #[test]
    fn only_admitted_namespaces_and_the_oldest_claims_enter_the_config() {
        let at = |s: i64| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(s).expect("time"),
            )
        };
        let url = "https://mcp.example.com/files";
        let mut holder = cases::mcp_service_in("zzz", "files", url, &["files:read"], None);
        holder.metadata.creation_timestamp = Some(at(100));
        let mut newcomer = cases::mcp_service_in("aaa", "files", url, &["files:read"], None);
        newcomer.metadata.creation_timestamp = Some(at(200));
        newcomer.spec.display_name = Some("Impostor".into());
        let outsider =
            cases::mcp_service_in("outside", "mail", "https://mcp.example.com/mail", &[], None);
        let services = [newcomer, holder, outsider];
        let mut platform = scope("mcp-authz", "files:read", true);
        platform.metadata.creation_timestamp = Some(at(10));
        let mut squatter = scope("aaa", "files:read", false);
        squatter.metadata.creation_timestamp = Some(at(20));
        squatter.spec.description = "Nothing to worry about".into();
        let scopes = [squatter, platform];
        let tenants: NamespaceLabels = ["aaa", "zzz"]
            .into_iter()
            .map(|ns| {
                (
                    ns.to_owned(),
                    [("mcp-authz.io/tenant".to_owned(), "enabled".to_owned())].into(),
                )
            })
            .collect();
        let server = server(json!({"allowedNamespaces": {"from": "Selector",
            "selector": {"matchLabels": {"mcp-authz.io/tenant": "enabled"}}}}));
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &scopes,
            policies: &[],
            namespaces: &tenants,
            clients: &[],
            client_secrets: None,
        };
        let c = authserver_config(&inputs).expect("config");
        let entries: Vec<(&str, &str)> = c
            .resources
            .iter()
            .map(|r| (r.resource.as_str(), r.display_name.as_str()))
            .collect();
        assert_eq!(
            entries,
            [(url, "files")],
            "the older claim keeps the URL; the outside namespace is not admitted"
        );
        assert_eq!(c.scopes.len(), 1);
        assert_eq!(
            (c.scopes[0].description.as_str(), c.scopes[0].sensitive),
            ("Read your files", true),
            "the younger definition of files:read changes nothing"
        );
    }

    #[test]
    fn oidc_login_mounts_the_client_secret() {
        let server = server(
            json!({"login": {"oidc": {"issuer": "https://idp.example.com", "clientId": "mcp", "clientSecretRef": {"name": "idp", "key": "secret"}}}}),
        );
        let c = alone(&server);
        let oidc = c.login.upstream_oidc.expect("oidc");
        assert_eq!(
            oidc.client_secret_file,
            Some(PathBuf::from("/etc/mcp-authz/oidc/secret"))
        );
        assert!(c.login.static_users.is_none());
    }

    #[test]
    fn registration_is_off_unless_declared_and_the_policy_switch_still_opens_it() {
        use mcp_authz_authserver::config::RegistrationRedirects;
        let plain = alone(&server(json!({})));
        assert!(!plain.dynamic_client_registration.enabled);
        let declared = alone(&server(json!({
            "dynamicClientRegistration": {"enabled": true, "maxPerHour": 7, "redirectUris": "LoopbackOrHttps"}
        })));
        declared
            .validate()
            .expect("the authserver accepts what we render");
        assert!(declared.dynamic_client_registration.enabled);
        assert_eq!(declared.dynamic_client_registration.max_per_hour, 7);
        assert_eq!(
            declared.dynamic_client_registration.redirect_uris,
            RegistrationRedirects::LoopbackOrHttps
        );
        // The deprecated switch on the server's default CIMDPolicy opens it with the server's rules.
        let with_policy = server(json!({"defaultCimdPolicy": "platform"}));
        let mut policy = cases::cimd_policy();
        policy["metadata"] = json!({"name": "platform", "namespace": "mcp-authz"});
        policy["spec"]["dynamicClientRegistration"] = json!(true);
        let policies: Vec<CIMDPolicy> = vec![serde_json::from_value(policy).expect("policy")];
        let inputs = Inputs {
            server: &with_policy,
            services: &[],
            scopes: &[],
            policies: &policies,
            namespaces: &NamespaceLabels::new(),
            clients: &[],
            client_secrets: None,
        };
        let opened = authserver_config(&inputs).expect("config");
        assert!(opened.dynamic_client_registration.enabled);
        assert_eq!(
            opened.dynamic_client_registration.redirect_uris,
            RegistrationRedirects::LoopbackOnly
        );
    }

    #[test]
    fn rate_limits_and_trusted_proxies_reach_the_server_as_declared() {
        let render = |spec: Value| {
            let c = alone(&server(spec));
            c.validate().expect("the authserver accepts what we render");
            c
        };
        let plain = render(json!({}));
        assert_eq!(
            plain.rate_limits,
            mcp_authz_authserver::config::RateLimits::default()
        );
        assert!(plain.rate_limits.enabled, "on unless turned off");
        assert!(plain.trusted_proxies.is_empty());
        let declared = render(json!({
            "rateLimits": {"tokenPerAddress": {"requestsPerSecond": 5, "burst": 10}},
            "trustedProxies": ["10.0.0.0/8", "fd00::/8"],
        }));
        assert_eq!(
            declared.rate_limits.token_per_address.requests_per_second,
            5.0
        );
        assert_eq!(declared.rate_limits.token_per_address.burst, 10);
        assert_eq!(
            declared.rate_limits.token_per_client, plain.rate_limits.token_per_client,
            "what is not declared keeps its default"
        );
        assert_eq!(declared.trusted_proxies, ["10.0.0.0/8", "fd00::/8"]);
        let off = render(json!({"rateLimits": {"enabled": false}}));
        assert!(!off.rate_limits.enabled);
    }

    #[test]
    fn claims_on_an_api_audience_are_named_up_to_a_bound() {
        let mut server = cases::authorization_server();
        server["metadata"]["namespace"] = json!("mcp-authz");
        server["spec"]["tokenExchange"] = json!([{"from": {"name": "files"}, "audience": "https://inventory.example.com",
            "scopes": ["files:read"], "header": "x-inventory"}]);
        let server: AuthorizationServer = serde_json::from_value(server).expect("server");
        let services: Vec<MCPService> = (0..20)
            .map(|i| {
                cases::mcp_service_in(
                    &format!("t{i:02}"),
                    "squat",
                    "https://INVENTORY.example.com/",
                    &[],
                    None,
                )
            })
            .collect();
        let namespaces = crate::tenancy::NamespaceLabels::new();
        let inputs = Inputs {
            server: &server,
            services: &services,
            scopes: &[],
            policies: &[],
            namespaces: &namespaces,
            clients: &[],
            client_secrets: None,
        };
        let claimed = audiences_claimed(&inputs);
        assert_eq!(claimed.len(), MAX_CLAIMS_NAMED + 1);
        assert_eq!(
            claimed[0],
            "tokenExchange[0]: its audience is the resourceUrl of MCPService t00/squat"
        );
        assert_eq!(claimed[MAX_CLAIMS_NAMED], "and 12 more such claim(s)");
    }
}
