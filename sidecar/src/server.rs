//! Wiring: the proxy and admin listeners, config reload, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mcp_authz_audit::stop::Stop;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admin;
use crate::config::{ConfigError, SidecarConfig};
use crate::fetch::Fetcher;
use crate::http1::{self, server::Settings};
use crate::jwks::{JwksCache, JwksSource};
use crate::metrics::{Metrics, StreamGuard};
use crate::proxy::{Proxy, Runtime};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad CA bundle.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// Tracing could not start.
    #[error("tracing: {0}")]
    Tracing(#[from] mcp_authz_otel::StartError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

impl StartError {
    /// Low-cardinality reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(e) => e.metric_label(),
            Self::Fetch(e) => e.metric_label(),
            Self::Bind { .. } => "bind",
            Self::Tracing(_) => "tracing",
        }
    }
}

/// A running sidecar.
pub struct Sidecar {
    /// Where the proxy listens (useful with port 0).
    pub proxy_addr: SocketAddr,
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    /// Metrics, for tests.
    pub metrics: Metrics,
    /// Replace the config at runtime (what file reload does).
    pub config: ConfigHandle,
    shutdown: watch::Sender<bool>,
    /// When the connections still open are closed: set by the stop before `shutdown` is sent.
    drained_by: Arc<OnceLock<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tracing: Option<mcp_authz_otel::Tracing>,
}

/// Applies new configs to a running sidecar.
#[derive(Clone)]
pub struct ConfigHandle {
    runtime: Arc<watch::Sender<Arc<Runtime>>>,
    jwks_source: Arc<watch::Sender<JwksSource>>,
    metrics: Metrics,
}

impl ConfigHandle {
    /// Validates and applies a config. Listen addresses are fixed at start; the rest applies to the next
    /// request, while open connections and streams carry on.
    pub fn apply(&self, config: SidecarConfig) -> Result<(), StartError> {
        let current = self.runtime.borrow().config.clone();
        if config.listen != current.listen || config.admin_listen != current.admin_listen {
            tracing::warn!("listen addresses changed; they apply after a restart");
        }
        if config.limits.max_connections != current.limits.max_connections {
            tracing::warn!("limits.maxConnections changed; it applies after a restart");
        }
        let fetcher = Fetcher::new(config.issuer_ca_file.as_deref())?;
        let source = JwksSource {
            uri: config.jwks_uri.clone(),
            fetcher,
            settings: config.jwks.clone(),
        };
        // With a CA file the bundle may have changed under the same path (a rollover): the JWKS client is
        // rebuilt, since it is the only way to know it trusts the current bundle.
        let jwks_changed = source.uri != current.jwks_uri
            || config.issuer_ca_file.is_some()
            || config.issuer_ca_file != current.issuer_ca_file
            || source.settings != current.jwks;
        let runtime = Runtime::new(config)?;
        self.runtime.send_replace(Arc::new(runtime));
        if jwks_changed {
            self.jwks_source.send_replace(source);
        }
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        Ok(())
    }
}

impl Sidecar {
    /// Binds both listeners and starts serving, without tracing.
    pub async fn start(config: SidecarConfig) -> Result<Self, StartError> {
        Self::start_traced(config, None).await
    }

    /// Binds both listeners and starts serving; with `tracing` settings, every request is traced and its spans
    /// exported over OTLP.
    pub async fn start_traced(
        config: SidecarConfig,
        tracing: Option<&mcp_authz_otel::Settings>,
    ) -> Result<Self, StartError> {
        let metrics = Metrics::new();
        let tracing = tracing
            .map(|settings| mcp_authz_otel::start(settings, metrics.trace_spans_dropped.clone()))
            .transpose()?;
        let fetcher = Fetcher::new(config.issuer_ca_file.as_deref())?;
        let source = JwksSource {
            uri: config.jwks_uri.clone(),
            fetcher,
            settings: config.jwks.clone(),
        };
        let runtime = Arc::new(Runtime::new(config.clone())?);
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let proxy_listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin_listen).await?;
        let proxy_addr = proxy_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin_listen,
                source,
            })?;

        let (jwks, jwks_source) = JwksCache::start(source, metrics.clone());
        let (runtime_tx, runtime_rx) = watch::channel(runtime);
        // One shared handle: a request clones one Arc instead of every metric and client handle.
        let proxy = Arc::new(Proxy::new(
            runtime_rx.clone(),
            jwks.clone(),
            metrics.clone(),
            tracing.as_ref().map(|t| t.tracer.clone()),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let drained_by = Arc::new(OnceLock::new());
        let tasks = vec![
            tokio::spawn(serve_proxy(
                proxy_listener,
                proxy,
                runtime_rx,
                metrics.clone(),
                shutdown_rx.clone(),
                drained_by.clone(),
            )),
            tokio::spawn(admin::serve(
                admin_listener,
                jwks,
                metrics.clone(),
                shutdown_rx,
            )),
        ];
        tracing::info!(%proxy_addr, %admin_addr, "sidecar listening");
        let config = ConfigHandle {
            runtime: Arc::new(runtime_tx),
            jwks_source: Arc::new(jwks_source),
            metrics: metrics.clone(),
        };
        Ok(Self {
            proxy_addr,
            admin_addr,
            metrics,
            config,
            shutdown,
            drained_by,
            tasks,
            tracing,
        })
    }

    /// Watches a config file and applies it when its content changes (ConfigMap updates swap a symlink,
    /// so the content is compared, not the modification time), or when the introspection key it names
    /// changes: kubelet refreshes that Secret on its own schedule, often after the ConfigMap. A bad file is
    /// logged and ignored.
    pub fn watch_file(&self, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let handle = self.config.clone();
        // Read before spawning: a change made right after this call must count as a change.
        let mut last = watched_files(&path);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let now = watched_files(&path);
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                match SidecarConfig::load(&path)
                    .map_err(StartError::from)
                    .and_then(|c| handle.apply(c))
                {
                    Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
                    Err(error) => {
                        handle
                            .metrics
                            .reloads
                            .with_label_values(&[error.metric_label()])
                            .inc();
                        tracing::error!(%error, "config reload refused; keeping the previous config");
                    }
                }
            }
        })
    }

    /// The stop budget of the config in force (`limits.shutdownGraceMs`): the whole stop, from the signal to
    /// the exit, of which the drain takes what `mcp_authz_audit::stop::Split` leaves it.
    pub fn stop_budget(&self) -> Duration {
        let limits = &self.config.runtime.borrow().config.limits;
        Duration::from_millis(limits.shutdown_grace_ms)
    }

    /// Stops within [`Sidecar::stop_budget`], starting now: drains, then stops tracing.
    pub async fn shutdown(self) {
        let stop = Stop::begin(self.stop_budget());
        self.drain(&stop).await.stop_tracing(stop.traced_by()).await;
    }

    /// Stops accepting and lets in-flight requests and streams finish until `stop` says the drain is over,
    /// then closes what is left; the spans are still to be sent. A program flushes its audit stream between
    /// the two: stopping tracing may wait on a collector.
    pub async fn drain(self, stop: &Stop) -> Drained {
        let _ = self.drained_by.set(stop.drained_by());
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!("drained");
        Drained {
            tracing: self.tracing,
        }
    }
}

/// A sidecar that serves no more, its spans still to be sent.
pub struct Drained {
    tracing: Option<mcp_authz_otel::Tracing>,
}

impl Drained {
    /// Sends the spans still queued, by `by` and within `mcp_authz_otel::export::STOP_BUDGET`.
    pub async fn stop_tracing(self, by: Instant) {
        if let Some(tracing) = self.tracing {
            // Waits on the export thread, not on the runtime.
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown(by)).await;
        }
    }
}

/// The bytes a reload is judged by: the config file's, those of the introspection key and those of the issuer CA
/// bundle the file names. The paths are taken from the file, not from the config in force: a config refused
/// because its key was not there yet must be tried again when the key arrives. A changed CA bundle (a CA
/// rollover) reloads the config, which builds new clients trusting it.
type Watched = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

fn watched_files(path: &std::path::Path) -> Option<Watched> {
    let config = std::fs::read(path).ok()?;
    let parsed = SidecarConfig::load(path).ok();
    let key = parsed
        .as_ref()
        .and_then(|c| c.introspection.as_ref())
        .and_then(|i| std::fs::read(&i.private_key_file).ok());
    let ca = parsed
        .as_ref()
        .and_then(|c| c.issuer_ca_file.as_ref())
        .and_then(|f| std::fs::read(f).ok());
    Some((config, key, ca))
}

async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    runtime: watch::Receiver<Arc<Runtime>>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    drained_by: Arc<OnceLock<Instant>>,
) {
    let max_connections = runtime.borrow().config.limits.max_connections.get();
    let slots = Arc::new(Semaphore::new(max_connections));
    // Kept so the connections still open when the grace period ends can be closed.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // A slot is taken before accepting, so at the cap the listener is simply not read: new connections
        // queue in the kernel's backlog instead of being accepted and dropped.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics.connection_limit_reached.inc();
                tracing::warn!(
                    max_connections,
                    "connection cap reached; new connections wait in the backlog"
                );
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = shutdown.changed() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let open = StreamGuard::open(&metrics.connections_open);
        let _ = stream.set_nodelay(true);
        let settings = Settings {
            header_timeout: Duration::from_millis(runtime.borrow().config.limits.header_timeout_ms),
        };
        let proxy = proxy.clone();
        let requests = metrics.requests.clone();
        let connection_shutdown = shutdown.clone();
        connections.spawn(async move {
            let handle = |request| {
                let proxy = proxy.clone();
                // Boxed: the decision's large state machine lives only while a request is being decided,
                // not for the whole life of a connection that then holds a quiet stream.
                Box::pin(async move { proxy.handle(request, peer).await })
            };
            let refused =
                |reason: &'static str| requests.with_label_values(&["deny", reason]).inc();
            http1::server::serve(stream, settings, connection_shutdown, handle, refused).await;
            drop((open, slot));
        });
    }
    drop(listener);
    // A sidecar dropped without a stop (its shutdown sender gone) drains for the drain's share of its budget.
    let budget = Duration::from_millis(runtime.borrow().config.limits.shutdown_grace_ms);
    let by = *drained_by.get_or_init(|| Stop::begin(budget).drained_by());
    tracing::info!(drain = ?Stop::left_until(by), "shutting down: draining connections");
    // Every connection holds a slot until it ends: having them all back means every connection is done.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout_at(by.into(), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain over; closing the remaining connections");
        connections.shutdown().await;
    }
}
