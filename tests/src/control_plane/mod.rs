//! A real Kubernetes control plane for tests: etcd, kube-apiserver and (optionally) kube-controller-manager,
//! built from their Go modules by `tests/control-plane/build.sh` and found through the variables that
//! `tests/setup/10-control-plane.sh` exports.
//!
//! ```text
//!  test process ──pipe──> sh watchdog (kills everything below and removes DIR when the pipe closes)
//!      │ kube::Client (admin: client cert, group system:masters)
//!      v
//!  kube-apiserver https://127.0.0.1:PORT  RBAC, admission incl. Mutating/ValidatingAdmissionWebhook and
//!      │                                   ValidatingAdmissionPolicy, service-account tokens (ES256)
//!      v
//!  etcd http://127.0.0.1:PORT (DIR/etcd)   kube-controller-manager: garbage collector, namespaces,
//!                                           service accounts, kube-root-ca.crt
//! ```
//!
//! Use [`ControlPlane::shared`] (one instance per test binary, started by the first test that asks) and isolate
//! tests with [`ControlPlane::new_namespace`]; use [`ControlPlane::start`] for a private instance, stopped on drop.
//! Webhooks served by a test on `https://127.0.0.1:PORT` are reachable from the API server; [`TestAuthority`]
//! makes their certificates.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mcp_authz_tests::control_plane::ControlPlaneError> {
//! use mcp_authz_tests::control_plane::ControlPlane;
//! let cluster = ControlPlane::shared();
//! let namespace = cluster.new_namespace("webhook").await?;
//! let admin = cluster.client();
//! let restricted = cluster.client_for_service_account(&namespace, "reader").await?;
//! # Ok(()) }
//! ```

mod binaries;
mod error;
mod kubeconfig;
pub mod pki;
mod process;
mod wait;

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

pub use binaries::{
    BIN_DIR_ENV, HELM_ENV, KUBECTL_ENV, helm, helm_command, kubectl, kubectl_command,
};
pub use error::ControlPlaneError;
pub use pki::{IssuedCertificate, TestAuthority};
pub use wait::{EVENTUALLY_TIMEOUT, api_error, eventually, eventually_within};

use binaries::Binaries;
use kubeconfig::Credentials;
use process::{Supervised, Watchdog, log_tail};

/// The controllers started by default: owner-reference garbage collection, namespace deletion, the `default`
/// ServiceAccount of every namespace, the `kube-root-ca.crt` ConfigMap, and Deployments → ReplicaSets → Pods
/// (Pods are admitted, webhooks included, but stay Pending: there is no scheduler or kubelet).
pub const DEFAULT_CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
];

/// Webhooks and CEL admission policies. They are in kube-apiserver's default set (with NamespaceLifecycle,
/// ServiceAccount, PodSecurity, ResourceQuota and the rest a real cluster runs); naming them here keeps them on
/// whatever the default becomes, and a test proves each of them works.
const ADMISSION_PLUGINS: &str =
    "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy";

/// The issuer (and default audience) of service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Set to `1` to keep each control plane's directory (logs, certificates, etcd data) after it stops, for
/// reading kube-apiserver.log after a failed test; the path is printed on stderr.
pub const KEEP_ENV: &str = "MCP_AUTHZ_KEEP_CONTROL_PLANE";

/// One start-up probe may not hang past this (a server that accepts but does not answer yet).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The user name of the admin client certificate (group `system:masters`).
pub const ADMIN_USER: &str = "mcp-authz-test-admin";

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Start kube-controller-manager with `controllers` (needed for garbage collection and namespace deletion).
    pub controller_manager: bool,
    /// The kube-controller-manager `--controllers` list.
    pub controllers: Vec<String>,
    /// Extra kube-apiserver flags, e.g. `--feature-gates=...`; later flags win.
    pub extra_apiserver_args: Vec<String>,
    /// How long to wait for `/readyz` (and for the controller manager's first work).
    pub startup_timeout: Duration,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            controller_manager: true,
            controllers: DEFAULT_CONTROLLERS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            extra_apiserver_args: Vec::new(),
            startup_timeout: Duration::from_secs(120),
        }
    }
}

/// A running etcd + kube-apiserver (+ kube-controller-manager) on loopback ports, in a throwaway directory.
/// Dropping it stops the processes and removes the directory; if the test process dies first, a watchdog does.
pub struct ControlPlane {
    etcd: Supervised,
    apiserver: Supervised,
    controller_manager: Option<Supervised>,
    watchdog: Option<Watchdog>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    keep_dir: bool,
    authority: TestAuthority,
    server_url: String,
    kubeconfig_path: PathBuf,
    admin_config: kube::Config,
    startup_time: Duration,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir_path)
            .field("startup_time", &self.startup_time)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static NAMESPACE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on first use with the default
    /// options. It is never dropped: the watchdog stops it when the binary exits.
    ///
    /// # Panics
    /// If it cannot start (every later caller panics with the same message).
    pub fn shared() -> &'static ControlPlane {
        match Self::try_shared() {
            Ok(control_plane) => control_plane,
            Err(error) => panic!("{error}"),
        }
    }

    /// [`ControlPlane::shared`] without the panic.
    pub fn try_shared() -> Result<&'static ControlPlane, ControlPlaneError> {
        SHARED
            .get_or_init(|| Self::start().map_err(|error| error.to_string()))
            .as_ref()
            .map_err(|message| ControlPlaneError::SharedStartFailed(message.clone()))
    }

    /// A private control plane with the default options.
    pub fn start() -> Result<Self, ControlPlaneError> {
        Self::start_with(ControlPlaneOptions::default())
    }

    /// A private control plane. Blocks until `/readyz` answers `ok`; callable from sync code and from inside a
    /// Tokio runtime (the start-up runs on a thread of its own).
    pub fn start_with(options: ControlPlaneOptions) -> Result<Self, ControlPlaneError> {
        let booted = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(ControlPlaneError::io("cannot build a Tokio runtime"))?;
                    // The ports are free when chosen but only taken when the processes bind them: another
                    // process can get in between. Start again on fresh ports then.
                    let mut attempts = 1;
                    loop {
                        match runtime.block_on(Self::boot(options.clone())) {
                            Err(error) if attempts < 3 && error.is_port_conflict() => attempts += 1,
                            result => return result,
                        }
                    }
                })
                .join()
        });
        match booted {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// A client with the admin's client certificate (group `system:masters`).
    ///
    /// # Panics
    /// Outside a Tokio runtime (kube's client spawns its worker on the current runtime).
    pub fn client(&self) -> Client {
        Client::try_from(self.admin_config.clone())
            .expect("kube accepts the configuration it parsed at start-up")
    }

    /// The admin kube configuration, to build clients with other settings.
    pub fn admin_config(&self) -> &kube::Config {
        &self.admin_config
    }

    /// A kubeconfig file for the admin user (for kubectl, helm and programs under test).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The cluster CA certificate, PEM: it signed the API server's serving certificate and the client
    /// certificates, and it is the CA of service-account tokens' `ca.crt`.
    pub fn ca_pem(&self) -> String {
        self.authority.ca_pem()
    }

    /// The cluster CA, to issue more client certificates (`issue_client(user, groups)`: the API server maps
    /// CN to the user and O to groups).
    pub fn authority(&self) -> &TestAuthority {
        &self.authority
    }

    /// The throwaway directory: `logs/` (etcd.log, kube-apiserver.log, kube-controller-manager.log), `pki/`,
    /// `etcd/`, kubeconfig files. Removed when the control plane stops, unless [`KEEP_ENV`] is `1`.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// How long [`ControlPlane::start`] took until the API server was ready (and the controller manager had
    /// done its first work).
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// The process ids of etcd, kube-apiserver and kube-controller-manager (if started).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.etcd.pid(), self.apiserver.pid()];
        pids.extend(self.controller_manager.as_ref().map(Supervised::pid));
        pids
    }

    /// Creates a namespace `PREFIX-N` (unique in this process) labelled `mcp-authz.io/test=true`, with its
    /// `default` ServiceAccount already present (the ServiceAccount admission plugin refuses Pods without it).
    pub async fn new_namespace(&self, prefix: &str) -> Result<String, ControlPlaneError> {
        let client = self.client();
        let name = namespace_name(prefix, NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed));
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("mcp-authz.io/test".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        ensure_service_account(&client, &name, "default").await?;
        Ok(name)
    }

    /// A client authenticated as ServiceAccount `namespace/name` (created if missing) with a one-hour token from
    /// the TokenRequest API: it can do exactly what RBAC grants that ServiceAccount.
    pub async fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Client, ControlPlaneError> {
        let token = self.service_account_token(namespace, name).await?;
        let text = kubeconfig::render(
            &self.server_url,
            &self.authority.ca_pem(),
            &format!("system:serviceaccount:{namespace}:{name}"),
            Credentials::BearerToken(&token),
            namespace,
        );
        let config = kube::Config::try_from(kube::config::Kubeconfig::from_yaml(&text)?)?;
        Ok(Client::try_from(config)?)
    }

    /// A kubeconfig file for ServiceAccount `namespace/name` (created if missing), for running kubectl or helm
    /// with exactly that ServiceAccount's rights. The file lives in the control plane's directory.
    pub async fn kubeconfig_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, ControlPlaneError> {
        let token = self.service_account_token(namespace, name).await?;
        let text = kubeconfig::render(
            &self.server_url,
            &self.authority.ca_pem(),
            &format!("system:serviceaccount:{namespace}:{name}"),
            Credentials::BearerToken(&token),
            namespace,
        );
        let path = self
            .dir_path
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        write_file(&path, &text)?;
        Ok(path)
    }

    /// A token for ServiceAccount `namespace/name` (created if missing) from the TokenRequest API, valid for an
    /// hour, audience [`SERVICE_ACCOUNT_ISSUER`].
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<String, ControlPlaneError> {
        let client = self.client();
        ensure_service_account(&client, namespace, name).await?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued = Api::<ServiceAccount>::namespaced(client, namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        Ok(issued.status.map(|status| status.token).unwrap_or_default())
    }

    async fn boot(options: ControlPlaneOptions) -> Result<Self, ControlPlaneError> {
        let started = Instant::now();
        let binaries = Binaries::from_env()?;
        let dir = tempfile::Builder::new()
            .prefix("mcp-authz-control-plane-")
            .tempdir()
            .map_err(ControlPlaneError::io(
                "cannot create the control plane directory",
            ))?;
        let dir_path = dir.path().to_path_buf();
        let keep_dir = std::env::var_os(KEEP_ENV).is_some_and(|value| value == "1");
        if keep_dir {
            eprintln!(
                "{KEEP_ENV}=1: the control plane directory {} is kept",
                dir_path.display()
            );
        }
        let mut watchdog = Watchdog::spawn(&dir_path, keep_dir)?;
        let layout = Layout::create(&dir_path)?;

        let authority = TestAuthority::new("mcp-authz test cluster CA")?;
        let serving = authority.issue_server(&[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.0.0.1",
        ])?;
        let admin = authority.issue_client(ADMIN_USER, &["system:masters"])?;
        write_file(&layout.ca_cert, &authority.ca_pem())?;
        write_file(&layout.serving_cert, &serving.cert_pem)?;
        write_file(&layout.serving_key, &serving.key_pem)?;
        let (service_account_key, service_account_public_key) = pki::new_key_pair_pem()?;
        write_file(&layout.service_account_key, &service_account_key)?;
        write_file(
            &layout.service_account_public_key,
            &service_account_public_key,
        )?;

        let [etcd_client_port, etcd_peer_port, apiserver_port] = free_ports()?;
        let etcd = Supervised::spawn(
            "etcd",
            &binaries.etcd,
            etcd_args(&layout, etcd_client_port, etcd_peer_port),
            layout.logs.join("etcd.log"),
            &mut watchdog,
        )?;
        let mut apiserver_args = apiserver_args(&layout, etcd_client_port, apiserver_port);
        apiserver_args.extend(options.extra_apiserver_args.iter().map(OsString::from));
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            apiserver_args,
            layout.logs.join("kube-apiserver.log"),
            &mut watchdog,
        )?;

        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let admin_kubeconfig = kubeconfig::render(
            &server_url,
            &authority.ca_pem(),
            ADMIN_USER,
            Credentials::ClientCertificate(&admin),
            "default",
        );
        let kubeconfig_path = dir_path.join("admin.kubeconfig");
        write_file(&kubeconfig_path, &admin_kubeconfig)?;
        let admin_config =
            kube::Config::try_from(kube::config::Kubeconfig::from_yaml(&admin_kubeconfig)?)?;

        // From here on, an early return drops `control_plane`, which stops what was started.
        let mut control_plane = Self {
            etcd,
            apiserver,
            controller_manager: None,
            watchdog: Some(watchdog),
            dir: Some(dir),
            dir_path,
            keep_dir,
            authority,
            server_url,
            kubeconfig_path,
            admin_config,
            startup_time: Duration::ZERO,
        };
        let deadline = started + options.startup_timeout;
        control_plane.wait_for_readyz(started, deadline).await?;

        if options.controller_manager {
            control_plane.start_controller_manager(&binaries, &layout, &options.controllers)?;
            if options
                .controllers
                .iter()
                .any(|name| name == "serviceaccount-controller")
            {
                control_plane
                    .wait_for_default_service_account(started, deadline)
                    .await?;
            }
        }
        control_plane.startup_time = started.elapsed();
        Ok(control_plane)
    }

    fn start_controller_manager(
        &mut self,
        binaries: &Binaries,
        layout: &Layout,
        controllers: &[String],
    ) -> Result<(), ControlPlaneError> {
        // The controller manager's own identity, as kubeadm sets it up: it then asks for a token per controller
        // (--use-service-account-credentials), so each controller has only its bootstrap RBAC role.
        let identity = self
            .authority
            .issue_client("system:kube-controller-manager", &[])?;
        let kubeconfig_path = self.dir_path.join("controller-manager.kubeconfig");
        write_file(
            &kubeconfig_path,
            &kubeconfig::render(
                &self.server_url,
                &self.authority.ca_pem(),
                "system:kube-controller-manager",
                Credentials::ClientCertificate(&identity),
                "kube-system",
            ),
        )?;
        let args = controller_manager_args(layout, &kubeconfig_path, controllers);
        let watchdog = self
            .watchdog
            .as_mut()
            .ok_or_else(|| ControlPlaneError::Io {
                what: "the watchdog is gone".into(),
                source: std::io::Error::other("no watchdog"),
            })?;
        self.controller_manager = Some(Supervised::spawn(
            "kube-controller-manager",
            &binaries.kube_controller_manager,
            args,
            layout.logs.join("kube-controller-manager.log"),
            watchdog,
        )?);
        Ok(())
    }

    fn check_processes(&mut self) -> Result<(), ControlPlaneError> {
        self.etcd.check_running()?;
        self.apiserver.check_running()?;
        if let Some(controller_manager) = self.controller_manager.as_mut() {
            controller_manager.check_running()?;
        }
        Ok(())
    }

    async fn wait_for_readyz(
        &mut self,
        started: Instant,
        deadline: Instant,
    ) -> Result<(), ControlPlaneError> {
        let client = self.client();
        loop {
            self.check_processes()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|error| ControlPlaneError::Io {
                    what: "cannot build the /readyz request".into(),
                    source: std::io::Error::other(error),
                })?;
            let last_answer =
                match tokio::time::timeout(PROBE_TIMEOUT, client.request_text(request)).await {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                    Ok(Ok(body)) => body,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
                };
            if Instant::now() >= deadline {
                return Err(not_ready(
                    "kube-apiserver /readyz",
                    started,
                    last_answer,
                    &self.apiserver,
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_for_default_service_account(
        &mut self,
        started: Instant,
        deadline: Instant,
    ) -> Result<(), ControlPlaneError> {
        let accounts = Api::<ServiceAccount>::namespaced(self.client(), "default");
        loop {
            self.check_processes()?;
            let last_answer =
                match tokio::time::timeout(PROBE_TIMEOUT, accounts.get_opt("default")).await {
                    Ok(Ok(Some(_))) => return Ok(()),
                    Ok(Ok(None)) => "no ServiceAccount default/default yet".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
                };
            if Instant::now() >= deadline {
                let process = self.controller_manager.as_ref().unwrap_or(&self.apiserver);
                return Err(not_ready(
                    "kube-controller-manager",
                    started,
                    last_answer,
                    process,
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn not_ready(
    what: &'static str,
    started: Instant,
    last_answer: String,
    process: &Supervised,
) -> ControlPlaneError {
    ControlPlaneError::NotReady {
        what,
        waited: started.elapsed(),
        last_answer,
        log: process.log().to_path_buf(),
        log_tail: log_tail(process.log()),
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The API server and the controller manager first, so that they do not log etcd errors while stopping.
        if let Some(controller_manager) = self.controller_manager.as_mut() {
            controller_manager.stop();
        }
        self.apiserver.stop();
        self.etcd.stop();
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(dir) = self.dir.take()
            && self.keep_dir
        {
            let _ = dir.keep();
        }
    }
}

/// Creates ServiceAccount `namespace/name` unless it exists.
async fn ensure_service_account(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), ControlPlaneError> {
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// `prefix` made into a DNS label, a dash, and `n`: at most 63 characters, lowercase alphanumerics and dashes.
fn namespace_name(prefix: &str, n: u64) -> String {
    let suffix = format!("-{n}");
    let mut label: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    label.truncate(63 - suffix.len());
    let label = label.trim_matches('-');
    let label = if label.is_empty() { "test" } else { label };
    format!("{label}{suffix}")
}

/// Binds `N` distinct loopback ports at once and releases them for the processes to take.
fn free_ports<const N: usize>() -> Result<[u16; N], ControlPlaneError> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(ControlPlaneError::io("cannot bind a free loopback port"))?;
        *port = listener
            .local_addr()
            .map_err(ControlPlaneError::io("cannot read a bound port"))?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

fn write_file(path: &Path, contents: &str) -> Result<(), ControlPlaneError> {
    std::fs::write(path, contents).map_err(ControlPlaneError::io(format!(
        "cannot write {}",
        path.display()
    )))
}

/// Where everything lives inside the control plane's directory.
struct Layout {
    etcd_data: PathBuf,
    logs: PathBuf,
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
}

impl Layout {
    fn create(dir: &Path) -> Result<Self, ControlPlaneError> {
        let pki = dir.join("pki");
        let logs = dir.join("logs");
        for path in [&pki, &logs] {
            std::fs::create_dir_all(path).map_err(ControlPlaneError::io(format!(
                "cannot create {}",
                path.display()
            )))?;
        }
        Ok(Self {
            etcd_data: dir.join("etcd"),
            logs,
            ca_cert: pki.join("ca.crt"),
            serving_cert: pki.join("apiserver.crt"),
            serving_key: pki.join("apiserver.key"),
            service_account_key: pki.join("service-account.key"),
            service_account_public_key: pki.join("service-account.pub"),
        })
    }
}

fn flag(name: &str, value: impl AsRef<std::ffi::OsStr>) -> OsString {
    let mut flag = OsString::from(format!("--{name}="));
    flag.push(value);
    flag
}

fn etcd_args(layout: &Layout, client_port: u16, peer_port: u16) -> Vec<OsString> {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    vec![
        flag("name", "test"),
        flag("data-dir", &layout.etcd_data),
        flag("listen-client-urls", &client_url),
        flag("advertise-client-urls", &client_url),
        flag("listen-peer-urls", &peer_url),
        flag("initial-advertise-peer-urls", &peer_url),
        flag("initial-cluster", format!("test={peer_url}")),
        // A throwaway store: durability buys nothing and fsync costs seconds on a busy disk.
        flag("unsafe-no-fsync", "true"),
        flag("log-level", "warn"),
    ]
}

fn apiserver_args(layout: &Layout, etcd_port: u16, port: u16) -> Vec<OsString> {
    vec![
        flag("etcd-servers", format!("http://127.0.0.1:{etcd_port}")),
        flag("bind-address", "127.0.0.1"),
        flag("advertise-address", "127.0.0.1"),
        // The `kubernetes` Service's endpoints may not be loopback addresses; nothing here reaches the API
        // server through that Service, so it keeps no endpoints (as in envtest).
        flag("endpoint-reconciler-type", "none"),
        flag("secure-port", port.to_string()),
        flag("cert-dir", layout.logs.join("unused-cert-dir")),
        flag("tls-cert-file", &layout.serving_cert),
        flag("tls-private-key-file", &layout.serving_key),
        flag("client-ca-file", &layout.ca_cert),
        flag("authorization-mode", "RBAC"),
        flag("anonymous-auth", "false"),
        flag("enable-admission-plugins", ADMISSION_PLUGINS),
        flag("service-account-issuer", SERVICE_ACCOUNT_ISSUER),
        flag(
            "service-account-key-file",
            &layout.service_account_public_key,
        ),
        flag(
            "service-account-signing-key-file",
            &layout.service_account_key,
        ),
        flag("service-cluster-ip-range", "10.0.0.0/24"),
        flag("allow-privileged", "true"),
        flag("profiling", "false"),
        flag("v", "1"),
    ]
}

fn controller_manager_args(
    layout: &Layout,
    kubeconfig: &Path,
    controllers: &[String],
) -> Vec<OsString> {
    vec![
        flag("kubeconfig", kubeconfig),
        flag("authentication-kubeconfig", kubeconfig),
        flag("authorization-kubeconfig", kubeconfig),
        flag("controllers", controllers.join(",")),
        flag("use-service-account-credentials", "true"),
        flag(
            "service-account-private-key-file",
            &layout.service_account_key,
        ),
        flag("root-ca-file", &layout.ca_cert),
        flag("leader-elect", "false"),
        flag("bind-address", "127.0.0.1"),
        // It serves nothing the tests read; 0 turns its HTTPS endpoint off.
        flag("secure-port", "0"),
        flag("v", "1"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels() {
        assert_eq!(namespace_name("webhook", 3), "webhook-3");
        assert_eq!(namespace_name("Helm Install!", 0), "helm-install-0");
        assert_eq!(namespace_name("--", 7), "test-7");
        let long = namespace_name(&"x".repeat(100), 12345);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-12345"));
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports().unwrap();
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn the_default_options_run_the_controllers_that_tests_rely_on() {
        let options = ControlPlaneOptions::default();
        assert!(options.controller_manager);
        for needed in [
            "garbage-collector-controller",
            "namespace-controller",
            "serviceaccount-controller",
            "deployment-controller",
            "replicaset-controller",
        ] {
            assert!(
                options.controllers.iter().any(|name| name == needed),
                "{needed}"
            );
        }
    }

    #[test]
    fn the_api_server_runs_the_admission_plugins_of_a_real_cluster() {
        let layout = Layout::create(tempfile::tempdir().unwrap().path()).unwrap();
        let args = apiserver_args(&layout, 1, 2);
        let plugins = args
            .iter()
            .filter_map(|arg| arg.to_str()?.strip_prefix("--enable-admission-plugins="))
            .next()
            .unwrap();
        for plugin in [
            "MutatingAdmissionWebhook",
            "ValidatingAdmissionWebhook",
            "ValidatingAdmissionPolicy",
        ] {
            assert!(plugins.split(',').any(|p| p == plugin), "{plugin}");
        }
        assert!(args.contains(&OsString::from("--authorization-mode=RBAC")));
    }
}
