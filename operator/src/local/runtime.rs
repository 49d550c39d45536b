//! Running the plan: state files, the authorization server and one sidecar per MCPService in this
//! process, a readiness check over real sockets, the summary, and re-rendering when a manifest
//! changes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use mcp_authz_audit::stop::Stop;
use mcp_authz_authserver::resource_servers::Root;
use mcp_authz_sidecar::server::{Drained, Sidecar};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::plan::{self, LocalPlan, PlanError, StateFile, files};
use super::ports::{PortError, PortPlan};
use crate::manifests::{self, ManifestError, ManifestSet};

/// How long everything has to answer after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the sidecars look at their config files.
const SIDECAR_RELOAD_EVERY: Duration = Duration::from_millis(500);

/// What `mcp-authz local` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Manifest directories.
    pub dirs: Vec<PathBuf>,
    /// The state directory (database, keys, ports, rendered configs).
    pub state_dir: PathBuf,
    /// Where to write the JSON summary once everything answers.
    pub ready_file: Option<PathBuf>,
    /// How often the manifest directories are checked for changes.
    pub watch_every: Duration,
    /// The budget of the whole stop, from the signal to the exit.
    pub stop_budget: Duration,
}

/// Why local mode stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A manifest could not be read or is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifests do not make a plane.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The ports file.
    #[error(transparent)]
    Ports(#[from] PortError),
    /// A state file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The authorization server did not start.
    #[error("the authorization server did not start: {0}")]
    AuthServer(String),
    /// The writer threads of the logs and the audit records did not start.
    #[error("the log and audit outputs did not start: {0}")]
    Audit(std::io::Error),
    /// A sidecar did not start.
    #[error("the sidecar of {service} did not start: {message}")]
    Sidecar {
        /// The MCPService.
        service: String,
        /// Why.
        message: String,
    },
    /// An `OTEL_*` variable cannot be honoured, or the span export did not start.
    #[error("tracing: {0}")]
    Tracing(String),
    /// Something did not answer in time.
    #[error("{what} did not answer at {url} within {seconds} s")]
    NotReady {
        /// What.
        what: String,
        /// Where it was asked.
        url: String,
        /// How long we waited.
        seconds: u64,
    },
}

impl LocalError {
    /// A low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Manifest(e) => e.metric_label(),
            Self::Plan(e) => e.metric_label(),
            Self::Ports(e) => e.metric_label(),
            Self::Io { .. } => "io",
            Self::AuthServer(_) => "authserver",
            Self::Audit(_) => "audit",
            Self::Sidecar { .. } => "sidecar",
            Self::NotReady { .. } => "not_ready",
            Self::Tracing(_) => "tracing",
        }
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the state directory, readable by its owner only: it holds the signing keys, the
/// database of grants and the admin credential.
pub fn prepare_state_dir(path: &Path) -> Result<(), LocalError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(io_error(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io_error(path))
}

/// Reads the manifests and renders the plan, choosing ports for new services.
pub fn load_plan(options: &LocalOptions) -> Result<LocalPlan, LocalError> {
    let set: ManifestSet = manifests::load_dirs(&options.dirs, manifests::DEFAULT_NAMESPACE)?;
    refuse_other_kinds(&set)?;
    let ports = PortPlan::load_or_choose(&options.state_dir, &plan::service_keys(&set))?;
    Ok(plan::plan(&set, &ports, &options.state_dir)?)
}

/// Local mode runs only what it knows: an object of another kind in the directories is refused
/// rather than quietly left out (someone may expect it to run).
fn refuse_other_kinds(set: &ManifestSet) -> Result<(), ManifestError> {
    match set.skipped.first() {
        None => Ok(()),
        Some(origin) => Err(ManifestError::Invalid {
            origin: origin.clone(),
            field: "kind".into(),
            message: format!(
                "{} is not read by local mode (AuthorizationServer, MCPService, MCPScope, CIMDPolicy, Secret, ConfigMap are)",
                origin.object.split('/').next().unwrap_or_default()
            ),
        }),
    }
}

/// Writes `content` to `path` through a temporary file and a rename, so the servers' reload loops
/// never read half a file.
fn write_atomic(path: &Path, content: &[u8], private: bool) -> Result<(), LocalError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(io_error(&tmp))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// Writes every state file of `plan`; the admin credential and the resource-server root only when they do not
/// exist yet.
pub fn write_state(plan: &LocalPlan) -> Result<(), LocalError> {
    if let Some(token_file) = &plan.authserver.admin.token_file
        && !token_file.exists()
    {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| LocalError::Io {
            path: token_file.clone(),
            source: std::io::Error::other("no randomness for the admin token"),
        })?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        write_atomic(token_file, token.as_bytes(), true)?;
    }
    if let Some(resource_servers) = &plan.authserver.resource_servers {
        let root_file = &resource_servers.root_file;
        let io = |e: mcp_authz_authserver::config::ConfigError| LocalError::Io {
            path: root_file.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let root = if root_file.exists() {
            Root::load(root_file).map_err(io)?
        } else {
            let root = Root::generate().map_err(io)?;
            write_atomic(root_file, root.to_text().as_bytes(), true)?;
            root
        };
        // What the operator puts in each service's credentials Secret.
        for service in &plan.services {
            write_atomic(
                &service.key_file,
                root.private_key_pem(&service.url).as_bytes(),
                true,
            )?;
        }
    }
    std::fs::create_dir_all(&plan.authserver.signing.keys_dir)
        .map_err(io_error(&plan.authserver.signing.keys_dir))?;
    for StateFile {
        path,
        content,
        private,
    } in &plan.files
    {
        write_atomic(path, content, *private)?;
    }
    let to_json = |value: serde_json::Result<Vec<u8>>, path: &Path| {
        value.map_err(|e| LocalError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })
    };
    let authserver = to_json(
        serde_json::to_vec_pretty(&plan.authserver),
        &plan.authserver_file,
    )?;
    write_atomic(&plan.authserver_file, &authserver, false)?;
    for service in &plan.services {
        let config = to_json(
            serde_json::to_vec_pretty(&service.config),
            &service.config_file,
        )?;
        write_atomic(&service.config_file, &config, false)?;
    }
    Ok(())
}

/// The summary people read: issuer, each service's protected URL and its upstream.
pub fn summary_table(plan: &LocalPlan, state_dir: &Path) -> String {
    let mut out = format!(
        "mcp-authz local: the plane is up (state in {})\n  issuer  {}   (in a cluster: {})\n  admin   {}   (bearer token in {})\n",
        state_dir.display(),
        plan.issuer,
        plan.cluster_issuer,
        plan.admin_url,
        state_dir.join(files::ADMIN_TOKEN).display(),
    );
    let width = plan
        .services
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max("SERVICE".len());
    let url_width = plan
        .services
        .iter()
        .map(|s| s.url.len())
        .max()
        .unwrap_or(0)
        .max("PROTECTED URL".len());
    out.push_str(&format!(
        "  {:width$}  {:url_width$}  UPSTREAM\n",
        "SERVICE", "PROTECTED URL"
    ));
    for s in &plan.services {
        out.push_str(&format!(
            "  {:width$}  {:url_width$}  {}\n",
            s.name, s.url, s.upstream
        ));
    }
    out
}

/// The ready file: the same facts as the table, as JSON.
pub fn ready_json(plan: &LocalPlan, state_dir: &Path) -> serde_json::Value {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for s in &plan.services {
        *names.entry(s.name.clone()).or_default() += 1;
    }
    let services: serde_json::Map<String, serde_json::Value> = plan
        .services
        .iter()
        .map(|s| {
            // Two services of one name in different namespaces are told apart by their key.
            let name = if names[&s.name] > 1 {
                s.key.clone()
            } else {
                s.name.clone()
            };
            (
                name,
                json!({"url": s.url, "upstream": s.upstream, "clusterUrl": s.cluster_url}),
            )
        })
        .collect();
    json!({
        "issuer": plan.issuer,
        "clusterIssuer": plan.cluster_issuer,
        "admin": {"url": plan.admin_url, "tokenFile": state_dir.join(files::ADMIN_TOKEN)},
        "stateDir": state_dir,
        "services": services,
    })
}

/// Status code of a plain HTTP/1.1 GET, or None when nothing answers.
async fn http_status(url: &str) -> Option<u16> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    let addr: SocketAddr = format!("{host}:{}", parsed.port_or_known_default()?)
        .parse()
        .ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        parsed.path()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head))
        .await
        .ok()?
        .ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn wait_until_answers(what: &str, url: &str, want: u16) -> Result<(), LocalError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if http_status(url).await == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LocalError::NotReady {
                what: what.to_owned(),
                url: url.to_owned(),
                seconds: READY_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The URLs that must answer before the plane is called ready.
fn readiness_probes(plan: &LocalPlan) -> Vec<(String, String)> {
    let mut probes = vec![(
        "the authorization server".to_owned(),
        format!("{}/.well-known/oauth-authorization-server", plan.issuer),
    )];
    for s in &plan.services {
        let path = url::Url::parse(&s.url)
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        probes.push((
            format!("the sidecar of {}", s.key),
            format!(
                "http://{}/.well-known/oauth-protected-resource{path}",
                s.config.listen
            ),
        ));
    }
    probes
}

/// A fingerprint of the manifest directories: names, sizes and modification times.
fn fingerprint(dirs: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for dir in dirs {
        for file in manifests::manifest_files(dir).unwrap_or_default() {
            let meta = std::fs::metadata(&file).ok();
            out.push((
                file,
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            ));
        }
    }
    out
}

/// Runs the plane until `shutdown` resolves, then stops within the options' budget: the sidecars drain together,
/// then the server, under one deadline; then `outputs` finish the stop (audit flush, tracing, exit).
pub async fn run(
    options: LocalOptions,
    shutdown: impl Future<Output = ()>,
    outputs: &mcp_authz_audit::Outputs,
) -> Result<(), LocalError> {
    prepare_state_dir(&options.state_dir)?;
    let mut plan = load_plan(&options)?;
    write_state(&plan)?;

    // The same `OTEL_*` variables as in a cluster: the authorization server's spans and each sidecar's go to that
    // endpoint, under their own service names (unless OTEL_SERVICE_NAME names them all).
    let tracing = match mcp_authz_otel::Settings::from_process_env("mcp-authz-server")
        .map_err(|e| LocalError::Tracing(e.to_string()))?
    {
        Some(settings) => {
            let dropped = mcp_authz_authserver::spans::dropped().clone();
            let tracing = mcp_authz_otel::start(&settings, dropped)
                .map_err(|e| LocalError::Tracing(e.to_string()))?;
            mcp_authz_authserver::spans::install(tracing.tracer.clone());
            Some(tracing)
        }
        None => None,
    };
    let authserver = mcp_authz_authserver::server::start(
        plan.authserver.clone(),
        Some(plan.authserver_file.clone()),
    )
    .await
    .map_err(|e| LocalError::AuthServer(e.to_string()))?;
    let mut sidecars: BTreeMap<String, (Sidecar, tokio::task::JoinHandle<()>)> = BTreeMap::new();
    for service in &plan.services {
        let sidecar = start_sidecar(service).await?;
        sidecars.insert(service.key.clone(), sidecar);
    }
    for (what, url) in readiness_probes(&plan) {
        wait_until_answers(&what, &url, 200).await?;
    }
    announce(&plan, &options)?;

    let mut seen = fingerprint(&options.dirs);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(options.watch_every) => {}
        }
        let now = fingerprint(&options.dirs);
        if now == seen {
            continue;
        }
        seen = now;
        match load_plan(&options) {
            Err(error) => eprintln!(
                "mcp-authz local: manifests changed but were refused, the running config stays: {error}"
            ),
            Ok(next) => {
                if let Err(error) = apply(&next, &mut sidecars).await {
                    eprintln!(
                        "mcp-authz local: manifests changed but could not be applied: {error}"
                    );
                    continue;
                }
                plan = next;
                println!("mcp-authz local: manifests changed; configs re-rendered and reloaded");
                announce(&plan, &options)?;
            }
        }
    }
    println!("mcp-authz local: stopping");
    let stop = Stop::begin(options.stop_budget);
    let sidecars = sidecars
        .into_values()
        .map(|(sidecar, watcher)| {
            watcher.abort();
            sidecar
        })
        .collect();
    // The sidecars first: their requests in progress may still ask the server (introspection, keys).
    let drained = drain_together(sidecars, &stop).await;
    authserver.stop_within(stop).await;
    outputs
        .finish_stop(&stop, |by| async move {
            // Each sidecar has its own export thread: stopped together, they take one share, not one each.
            let mut stopping = tokio::task::JoinSet::new();
            for sidecar in drained {
                stopping.spawn(sidecar.stop_tracing(by));
            }
            if let Some(tracing) = tracing {
                stopping.spawn_blocking(move || tracing.shutdown(by));
            }
            stopping.join_all().await;
        })
        .await;
    Ok(())
}

/// Drains every sidecar at once, under the one deadline of `stop`: one after another, N sidecars would stop
/// accepting one at a time, and the whole stop would take N drains.
async fn drain_together(sidecars: Vec<Sidecar>, stop: &Stop) -> Vec<Drained> {
    futures::future::join_all(sidecars.into_iter().map(|sidecar| sidecar.drain(stop))).await
}

async fn start_sidecar(
    service: &plan::LocalService,
) -> Result<(Sidecar, tokio::task::JoinHandle<()>), LocalError> {
    let tracing = mcp_authz_otel::Settings::from_process_env("mcp-authz-sidecar")
        .map_err(|e| LocalError::Tracing(e.to_string()))?;
    let sidecar = Sidecar::start_traced(service.config.clone(), tracing.as_ref())
        .await
        .map_err(|e| LocalError::Sidecar {
            service: service.key.clone(),
            message: e.to_string(),
        })?;
    let watcher = sidecar.watch_file(service.config_file.clone(), SIDECAR_RELOAD_EVERY);
    Ok((sidecar, watcher))
}

/// Writes the new plan's files (the servers reload them) and starts or stops sidecars of services
/// that came or went.
async fn apply(
    next: &LocalPlan,
    sidecars: &mut BTreeMap<String, (Sidecar, tokio::task::JoinHandle<()>)>,
) -> Result<(), LocalError> {
    write_state(next)?;
    let wanted: Vec<&str> = next.services.iter().map(|s| s.key.as_str()).collect();
    let gone: Vec<String> = sidecars
        .keys()
        .filter(|k| !wanted.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in gone {
        if let Some((sidecar, watcher)) = sidecars.remove(&key) {
            watcher.abort();
            sidecar.shutdown().await;
        }
    }
    for service in &next.services {
        if !sidecars.contains_key(&service.key) {
            let started = start_sidecar(service).await?;
            sidecars.insert(service.key.clone(), started);
        }
    }
    for (what, url) in readiness_probes(next) {
        wait_until_answers(&what, &url, 200).await?;
    }
    Ok(())
}

fn announce(plan: &LocalPlan, options: &LocalOptions) -> Result<(), LocalError> {
    print!("{}", summary_table(plan, &options.state_dir));
    if let Some(path) = &options.ready_file {
        let text =
            serde_json::to_vec_pretty(&ready_json(plan, &options.state_dir)).map_err(|e| {
                LocalError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                }
            })?;
        write_atomic(path, &text, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::ports::SidecarPorts;

    fn quickstart_plan(state: &Path) -> LocalPlan {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/manifests");
        let mut set =
            manifests::load_dirs(&[dir], manifests::DEFAULT_NAMESPACE).expect("manifests");
        manifests::add_file(
            &mut set,
            Path::new("ca.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: quickstart-ca}\ndata: {ca.pem: PEM}\n",
        )
        .expect("ca");
        let ports = PortPlan {
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
        };
        plan::plan(&set, &ports, state).expect("plan")
    }

    /// With several sidecars, the stop takes one drain, not one per sidecar: they all stop accepting at once
    /// and share the stop's deadline. Each holds a connection whose request head never ends, so each drain
    /// lasts until that deadline.
    #[tokio::test]
    async fn sidecars_drain_together_under_one_deadline() {
        let mut sidecars = Vec::new();
        let mut held = Vec::new();
        for _ in 0..3 {
            let config = mcp_authz_sidecar::config::SidecarConfig::parse(
                "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\n\
                 resource: https://mcp.example.com/mcp\nissuer: https://auth.example.com\n\
                 jwksUri: http://127.0.0.1:9/jwks\nlimits: {headerTimeoutMs: 60000}\n",
            )
            .expect("config");
            let sidecar = Sidecar::start(config).await.expect("sidecar");
            let mut socket = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
            socket
                .write_all(b"POST /mcp HTTP/1.1\r\nhost: a\r\n")
                .await
                .unwrap();
            held.push(socket);
            sidecars.push(sidecar);
        }
        let addresses: Vec<SocketAddr> = sidecars.iter().map(|s| s.proxy_addr).collect();
        let budget = Duration::from_millis(1500);
        let stop = Stop::begin(budget);
        let draining = tokio::spawn(async move { drain_together(sidecars, &stop).await.len() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        for address in addresses {
            assert!(
                TcpStream::connect(address).await.is_err(),
                "{address} still accepts while another sidecar drains"
            );
        }
        assert_eq!(draining.await.unwrap(), 3);
        let over = Instant::now();
        assert!(
            over >= stop.drained_by() && over < stop.drained_by() + Duration::from_millis(300),
            "the drains ended {:?} after the drain's deadline",
            over.saturating_duration_since(stop.drained_by())
        );
        drop(held);
    }

    #[test]
    fn objects_of_other_kinds_are_refused_by_name() {
        let mut set = ManifestSet::default();
        manifests::add_file(
            &mut set,
            Path::new("dir/m.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
        )
        .expect("read");
        assert_eq!(
            refuse_other_kinds(&set).expect_err("refused").to_string(),
            "dir/m.yaml: Pod/p: kind: Pod is not read by local mode (AuthorizationServer, MCPService, MCPScope, CIMDPolicy, Secret, ConfigMap are)"
        );
        assert!(refuse_other_kinds(&ManifestSet::default()).is_ok());
    }

    #[test]
    fn the_table_and_the_ready_file_say_the_same() {
        let state = Path::new(".mcp-authz");
        let plan = quickstart_plan(state);
        let table = summary_table(&plan, state);
        assert!(
            table.contains(
                "issuer  http://127.0.0.1:7100   (in a cluster: https://auth.quickstart.example)"
            ),
            "{table}"
        );
        assert!(
            table.contains("notes    http://127.0.0.1:7110/mcp  http://127.0.0.1:8000"),
            "{table}"
        );
        let ready = ready_json(&plan, state);
        assert_eq!(ready["issuer"], "http://127.0.0.1:7100");
        assert_eq!(
            ready["services"]["notes"]["url"],
            "http://127.0.0.1:7110/mcp"
        );
        assert_eq!(
            ready["services"]["notes"]["upstream"],
            "http://127.0.0.1:8000"
        );
        assert_eq!(ready["admin"]["url"], "http://127.0.0.1:7101");
    }

    #[test]
    fn the_state_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("a/b/.mcp-authz");
        prepare_state_dir(&state).expect("created");
        let mode = std::fs::metadata(&state)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        prepare_state_dir(&state).expect("idempotent");
    }

    #[test]
    fn state_files_are_written_once_and_secrets_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = quickstart_plan(dir.path());
        write_state(&plan).expect("written");
        let token_path = dir.path().join(files::ADMIN_TOKEN);
        let token = std::fs::read_to_string(&token_path).expect("token");
        assert_eq!(token.len(), 43, "32 random bytes, base64url");
        let mode = std::fs::metadata(&token_path)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let users_mode = std::fs::metadata(dir.path().join(files::USERS))
            .expect("users")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(users_mode, 0o600);
        write_state(&plan).expect("rewritten");
        assert_eq!(
            std::fs::read_to_string(&token_path).expect("token"),
            token,
            "the admin token survives"
        );
        let config = mcp_authz_authserver::config::AuthServerConfig::load(&plan.authserver_file)
            .expect("authserver config loads");
        assert_eq!(config, plan.authserver);
        let sidecar = mcp_authz_sidecar::config::SidecarConfig::load(&plan.services[0].config_file)
            .expect("sidecar config loads");
        assert_eq!(sidecar, plan.services[0].config);
    }
}
