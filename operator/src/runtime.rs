//! `mcp-authz operator`: wires the lease, the controllers, the webhook (and its certificate) and
//! the admin server together.

mod controllers;
mod watch_errors;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use serde_json::json;
use tokio::sync::watch;

use crate::admission::patch::{SidecarDefaults, supports_native_sidecars};
use crate::admission::server::{SharedTls, Webhook};
use crate::certs::{self, CertAction, WebhookTls};
use crate::lease::{self, LeaseSettings};
use crate::metrics::{self, Metrics};
use crate::naming::FIELD_MANAGER;
use crate::reconcile::stores::Stores;
use crate::reconcile::{Context, WatchScope};
use crate::render::RenderSettings;

/// Settings of `mcp-authz operator` (flags, or the environment the Helm chart sets).
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Namespace the operator runs in (its Lease and webhook Secret live here).
    #[arg(long, env = "MCP_AUTHZ_NAMESPACE", default_value = "mcp-authz")]
    pub namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "mcp-authz-operator")]
    pub identity: String,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, env = "MCP_AUTHZ_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Address of the admission webhook (TLS).
    #[arg(long, env = "MCP_AUTHZ_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,
    /// On SIGTERM, the budget of the whole stop, in milliseconds (the chart renders the pod's
    /// `terminationGracePeriodSeconds` from the same value, with a margin).
    #[arg(long, env = "MCP_AUTHZ_SHUTDOWN_GRACE_MS", default_value_t = mcp_authz_audit::stop::DEFAULT_BUDGET_MS)]
    pub shutdown_grace_ms: u64,
    /// Service the API server reaches the webhook through (names in the serving certificate).
    #[arg(
        long,
        env = "MCP_AUTHZ_WEBHOOK_SERVICE",
        default_value = "mcp-authz-webhook"
    )]
    pub webhook_service: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(
        long,
        env = "MCP_AUTHZ_WEBHOOK_CONFIGURATION",
        default_value = "mcp-authz-webhook"
    )]
    pub webhook_configuration: String,
    /// Extra names (DNS or IP) in the serving certificate.
    #[arg(long, value_delimiter = ',')]
    pub webhook_extra_names: Vec<String>,
    /// Extra names (DNS or IP) in the in-cluster serving certificates of AuthorizationServers with
    /// `inClusterTransport: OperatorTLS`, besides their Service's names: for sidecars that reach a server
    /// through another name (an alias Service, a port-forward to 127.0.0.1 when checking it by hand).
    #[arg(long, value_delimiter = ',')]
    pub authserver_tls_extra_names: Vec<String>,
    /// Take the serving certificate from cert-manager (files in --webhook-cert-dir) instead.
    #[arg(long, env = "MCP_AUTHZ_WEBHOOK_CERT_MANAGER", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_cert_manager: bool,
    /// Directory of tls.crt and tls.key when cert-manager provides them.
    #[arg(long, default_value = "/var/run/mcp-authz/webhook-tls")]
    pub webhook_cert_dir: PathBuf,
    /// Image of the authorization server.
    #[arg(long, env = "MCP_AUTHZ_AUTHSERVER_IMAGE")]
    pub authserver_image: Option<String>,
    /// Image of the sidecar.
    #[arg(long, env = "MCP_AUTHZ_SIDECAR_IMAGE")]
    pub sidecar_image: Option<String>,
    /// Pull policy of the containers the operator creates.
    #[arg(long, env = "MCP_AUTHZ_IMAGE_PULL_POLICY")]
    pub image_pull_policy: Option<String>,
    /// Elect a leader through a Lease (off: this replica always writes).
    #[arg(long, env = "MCP_AUTHZ_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "mcp-authz-operator")]
    pub lease_name: String,
    /// Seconds a leader's claim lasts without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// ConfigMap (in --namespace) whose `*.yaml` values are AuthorizationServers to apply: the Helm
    /// chart's default server travels this way (a custom resource beside its CRD fails a first install).
    #[arg(long, env = "MCP_AUTHZ_DEFAULTS_CONFIGMAP")]
    pub defaults_configmap: Option<String>,
    /// Labels (`key=value,...`) of the namespaces whose pods may scrape the sidecars' admin port (`/metrics`)
    /// through each MCPService's NetworkPolicy. Unset: the port is closed to everyone.
    #[arg(long, env = "MCP_AUTHZ_METRICS_SCRAPER_NAMESPACE_LABELS", value_parser = crate::render::parse_labels)]
    pub metrics_scraper_namespace_labels: Option<std::collections::BTreeMap<String, String>>,
    /// Labels (`key=value,...`) of the scraping pods within those namespaces; any pod there when unset.
    #[arg(long, env = "MCP_AUTHZ_METRICS_SCRAPER_POD_LABELS", value_parser = crate::render::parse_labels)]
    pub metrics_scraper_pod_labels: Option<std::collections::BTreeMap<String, String>>,
    /// Namespace-scoped install: the namespaces to serve (besides --namespace, always served). The operator
    /// then watches, lists and writes only there, and needs Roles there instead of ClusterRoles (only
    /// Namespaces, for their labels, and its webhook configuration stay cluster-scoped). Empty: the cluster.
    #[arg(long, env = "MCP_AUTHZ_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Seconds between checks of the webhook certificate and caBundle.
    #[arg(long, default_value_t = 10)]
    pub cert_check_seconds: u64,
}

impl OperatorArgs {
    fn render_settings(&self) -> RenderSettings {
        let mut settings = RenderSettings::default();
        if let Some(image) = &self.authserver_image {
            settings.authserver_image = image.clone();
        }
        if let Some(image) = &self.sidecar_image {
            settings.sidecar_image = image.clone();
        }
        settings.image_pull_policy = self.image_pull_policy.clone();
        settings.authserver_tls_extra_names = self.authserver_tls_extra_names.clone();
        settings.tracing = crate::render::tracing_env::handed_on(|name| std::env::var(name).ok());
        settings.metrics_scrapers = crate::render::Scrapers::from_labels(
            self.metrics_scraper_namespace_labels.as_ref(),
            self.metrics_scraper_pod_labels.as_ref(),
        );
        settings
    }

    fn webhook_names(&self) -> Vec<String> {
        let mut names = certs::service_names(&self.webhook_service, &self.namespace);
        names.extend(self.webhook_extra_names.iter().cloned());
        names
    }

    fn webhook_secret(&self) -> String {
        format!("{}-tls", self.webhook_service)
    }
}

/// A running operator's handles (for tests and shutdown).
pub struct Running {
    /// Metrics of this replica.
    pub metrics: Metrics,
    /// Whether this replica holds the lease.
    pub leader: watch::Receiver<bool>,
    /// Address the webhook listens on.
    pub webhook_addr: SocketAddr,
    /// Address of the admin server.
    pub admin_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops every task of this replica.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the operator with `client` and returns once its servers listen.
pub async fn start(args: OperatorArgs, client: kube::Client) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (leader_tx, leader_rx) = watch::channel(!args.leader_election);
    let mut tasks = Vec::new();

    if args.leader_election {
        let settings = LeaseSettings {
            namespace: args.namespace.clone(),
            name: args.lease_name.clone(),
            identity: args.identity.clone(),
            duration: Duration::from_secs(args.lease_seconds),
            renew_every: Duration::from_secs((args.lease_seconds / 3).max(1)),
        };
        tasks.push(tokio::spawn(lease::run(
            client.clone(),
            settings,
            leader_tx,
        )));
    }
    {
        let metrics = metrics.clone();
        let mut leader = leader_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                metrics.leader.set(i64::from(*leader.borrow_and_update()));
                if leader.changed().await.is_err() {
                    return;
                }
            }
        }));
    }

    let admin = metrics::bind(args.admin_listen).await?;
    let admin_addr = admin.local_addr()?;
    tasks.push(tokio::spawn(metrics::serve_admin(
        admin,
        metrics.clone(),
        ready.clone(),
    )));

    // The shared caches, filled before anything reads them: the webhook and the controllers decide from them.
    let scope = WatchScope::new(&args.watch_namespaces, &args.namespace);
    let stores = Stores::start(&client, &scope, &metrics, &mut tasks);
    stores.wait_until_ready().await;

    // Webhook: TLS first (every replica serves it; the leader makes and rotates the certificate).
    let tls = wait_for_tls(&args, &client, &leader_rx).await?;
    metrics.certificate_expiry.set(tls.not_after);
    let shared: SharedTls = Arc::new(RwLock::new(Arc::new(
        certs::server_config(&tls).map_err(anyhow::Error::msg)?,
    )));
    let version = client.apiserver_version().await?;
    let settings = args.render_settings();
    let webhook = Arc::new(Webhook {
        client: client.clone(),
        services: Some(stores.services.clone()),
        defaults: SidecarDefaults {
            image: settings.sidecar_image.clone(),
            version: settings.version.clone(),
            native_sidecars: supports_native_sidecars(&version.major, &version.minor),
            tracing: settings.tracing.clone(),
        },
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind(args.webhook_listen).await?;
    let webhook_addr = listener.local_addr()?;
    tasks.push(tokio::spawn(crate::admission::server::serve(
        listener,
        shared.clone(),
        webhook,
    )));
    tasks.push(tokio::spawn(keep_tls(
        args.clone(),
        client.clone(),
        leader_rx.clone(),
        shared,
        metrics.clone(),
    )));

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "mcp-authz-operator".into(),
            instance: Some(args.identity.clone()),
        },
    );
    if let Some(name) = args.defaults_configmap.clone() {
        tasks.push(tokio::spawn(apply_defaults(
            client.clone(),
            args.namespace.clone(),
            name,
            leader_rx.clone(),
            recorder.clone(),
        )));
    }
    let ctx = Arc::new(Context {
        scope,
        stores: stores.clone(),
        client: client.clone(),
        settings,
        metrics: metrics.clone(),
        leader: leader_rx.clone(),
        recorder,
        failures: Default::default(),
        written: Default::default(),
    });
    tasks.push(tokio::spawn(controllers::run(client.clone(), ctx, stores)));
    ready.store(true, Ordering::Relaxed);
    Ok(Running {
        metrics,
        leader: leader_rx,
        webhook_addr,
        admin_addr,
        tasks,
    })
}

/// Runs the operator until SIGTERM or Ctrl-C; returns the stop begun then, whose later steps (tracing) are
/// the caller's.
pub async fn run(args: OperatorArgs) -> anyhow::Result<mcp_authz_audit::stop::Stop> {
    let budget = Duration::from_millis(args.shutdown_grace_ms);
    let client = kube::Client::try_default().await?;
    let running = start(args, client).await?;
    tracing::info!(webhook = %running.webhook_addr, admin = %running.admin_addr, "operator started");
    shutdown_signal().await;
    let stop = mcp_authz_audit::stop::Stop::begin(budget);
    running.stop();
    Ok(stop)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The webhook certificate to start with: from cert-manager's files, or the operator's Secret
/// (made by the leader; followers wait for it).
async fn wait_for_tls(
    args: &OperatorArgs,
    client: &kube::Client,
    leader: &watch::Receiver<bool>,
) -> anyhow::Result<WebhookTls> {
    loop {
        match current_tls(args, client, leader).await {
            Ok(Some(tls)) => return Ok(tls),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "webhook certificate not available yet"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One round of certificate care. The leader creates, renews and writes the caBundle back if it
/// was wiped; everyone returns the current material.
async fn current_tls(
    args: &OperatorArgs,
    client: &kube::Client,
    leader: &watch::Receiver<bool>,
) -> anyhow::Result<Option<WebhookTls>> {
    if args.webhook_cert_manager {
        return Ok(certs::from_cert_manager(&args.webhook_cert_dir));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let name = args.webhook_secret();
    let stored = secrets
        .get_opt(&name)
        .await?
        .and_then(|s| s.data)
        .map(|d| d.into_iter().map(|(k, v)| (k, v.0)).collect())
        .and_then(|d| WebhookTls::from_secret(&d));
    if !*leader.borrow() {
        return Ok(stored);
    }
    let now = time::OffsetDateTime::now_utc();
    let tls = match (certs::decide(stored.as_ref(), now.unix_timestamp()), stored) {
        (CertAction::Keep, Some(tls)) => tls,
        (CertAction::Renew, Some(base)) => {
            write_tls(
                &secrets,
                &name,
                certs::renew(&base, &args.webhook_names(), now)?,
            )
            .await?
        }
        _ => write_tls(&secrets, &name, certs::create(&args.webhook_names(), now)?).await?,
    };
    ensure_ca_bundle(client, &args.webhook_configuration, &tls.ca_cert).await?;
    Ok(Some(tls))
}

async fn write_tls(
    secrets: &Api<Secret>,
    name: &str,
    tls: WebhookTls,
) -> anyhow::Result<WebhookTls> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(
                    crate::naming::MANAGED_BY_LABEL.to_owned(),
                    crate::naming::MANAGED_BY.to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(
            tls.to_secret()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let mut body = serde_json::to_value(&secret)?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Secret");
    secrets
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    tracing::info!(
        secret = name,
        not_after = tls.not_after,
        "webhook certificate written"
    );
    Ok(tls)
}

/// Writes the caBundle into every webhook of the configuration that lacks it or has another one.
async fn ensure_ca_bundle(
    client: &kube::Client,
    configuration: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(current) = api.get_opt(configuration).await? else {
        return Ok(());
    };
    let wanted = ByteString(ca_pem.as_bytes().to_vec());
    let webhooks = current.webhooks.unwrap_or_default();
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&wanted))
    {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration},
        "webhooks": webhooks.iter().map(|w| json!({
            "name": w.name,
            "admissionReviewVersions": w.admission_review_versions,
            "sideEffects": w.side_effects,
            "clientConfig": {"caBundle": wanted},
        })).collect::<Vec<_>>(),
    });
    api.patch(
        configuration,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracing::info!(configuration, "webhook caBundle written");
    Ok(())
}

async fn keep_tls(
    args: OperatorArgs,
    client: kube::Client,
    leader: watch::Receiver<bool>,
    shared: SharedTls,
    metrics: Metrics,
) {
    let mut in_use: Option<String> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(args.cert_check_seconds.max(1))).await;
        match current_tls(&args, &client, &leader).await {
            Ok(Some(tls)) if in_use.as_deref() != Some(tls.cert.as_str()) => {
                match certs::server_config(&tls) {
                    Ok(config) => {
                        if let Ok(mut slot) = shared.write() {
                            *slot = Arc::new(config);
                        }
                        metrics.certificate_expiry.set(tls.not_after);
                        in_use = Some(tls.cert);
                    }
                    Err(e) => tracing::warn!(error = %e, "webhook certificate unusable"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhook certificate check failed"),
        }
    }
}

/// Annotation on the defaults ConfigMap: the digest of the data last applied in full.
pub const DEFAULTS_APPLIED_ANNOTATION: &str = "mcp-authz.io/applied-digest";

/// A digest of the ConfigMap's `*.yaml` values (keys and texts, in key order).
pub fn defaults_digest(data: &std::collections::BTreeMap<String, String>) -> String {
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (key, text) in data.iter().filter(|(k, _)| k.ends_with(".yaml")) {
        for part in [key.as_bytes(), b"\0", text.as_bytes(), b"\0"] {
            hasher.update(part);
        }
    }
    hasher
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies the AuthorizationServers of the defaults ConfigMap, as the operator's field manager,
/// while this replica leads, once per content of the ConfigMap (checked every 10 s). What was
/// applied is recorded on the ConfigMap itself, so a new leader or a restarted operator does not
/// force the defaults again over a platform admin's later edits or deletion; a changed chart does.
/// A default that cannot be applied is a Warning Event on the ConfigMap, not only a log line.
async fn apply_defaults(
    client: kube::Client,
    namespace: String,
    name: String,
    leader: watch::Receiver<bool>,
    recorder: Recorder,
) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let mut reported: Option<String> = None;
    loop {
        if *leader.borrow() {
            match config_maps.get_opt(&name).await {
                Ok(Some(cm)) => {
                    let data = cm.data.clone().unwrap_or_default();
                    let digest = defaults_digest(&data);
                    if cm.annotations().get(DEFAULTS_APPLIED_ANNOTATION) != Some(&digest) {
                        let mut failures = Vec::new();
                        for (key, text) in data.iter().filter(|(k, _)| k.ends_with(".yaml")) {
                            if let Err(e) = apply_default(&client, &namespace, text).await {
                                tracing::warn!(configmap = %name, key = %key, error = %e, "default AuthorizationServer not applied");
                                failures.push(format!("{key}: {e:#}"));
                            }
                        }
                        if failures.is_empty() {
                            let mark = json!({
                                "apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "annotations": {DEFAULTS_APPLIED_ANNOTATION: digest}},
                            });
                            if let Err(e) = config_maps
                                .patch(
                                    &name,
                                    &PatchParams::apply(FIELD_MANAGER),
                                    &Patch::Apply(&mark),
                                )
                                .await
                            {
                                tracing::warn!(configmap = %name, error = %e, "recording the applied defaults failed");
                            }
                            reported = None;
                        } else {
                            let note = failures.join("; ");
                            if reported.as_ref() != Some(&note) {
                                let event = kube::runtime::events::Event {
                                    type_: kube::runtime::events::EventType::Warning,
                                    reason: "DefaultNotApplied".into(),
                                    note: Some(note.clone()),
                                    action: "ApplyDefaults".into(),
                                    secondary: None,
                                };
                                if let Err(e) = recorder
                                    .publish(&event, &kube::Resource::object_ref(&cm, &()))
                                    .await
                                {
                                    tracing::debug!(error = %e, "publishing an event failed");
                                }
                                reported = Some(note);
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(configmap = %name, error = %e, "reading the defaults ConfigMap failed")
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

async fn apply_default(client: &kube::Client, namespace: &str, text: &str) -> anyhow::Result<()> {
    let mut value: serde_json::Value = serde_saphyr::from_str(text)?;
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
    if kind != "AuthorizationServer" || api_version != "mcp-authz.io/v1alpha1" {
        anyhow::bail!(
            "expected an mcp-authz.io/v1alpha1 AuthorizationServer, found {api_version} {kind}"
        );
    }
    value["metadata"]["namespace"] = json!(namespace);
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let object = crate::render::RenderedObject {
        api_version,
        kind,
        namespace: namespace.to_owned(),
        name,
        body: value,
    };
    crate::reconcile::apply(client, &object).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_digest_follows_the_yaml_values_only() {
        let data = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let one = defaults_digest(&data(&[("a.yaml", "x")]));
        assert_eq!(one.len(), 64);
        assert_eq!(
            one,
            defaults_digest(&data(&[("a.yaml", "x"), ("notes.txt", "y")]))
        );
        assert_ne!(one, defaults_digest(&data(&[("a.yaml", "x2")])));
        assert_ne!(
            defaults_digest(&data(&[("a.yaml", "xb.yaml")])),
            defaults_digest(&data(&[("a.yaml", "x"), ("b.yaml", "")])),
            "keys and values are delimited"
        );
    }
}
