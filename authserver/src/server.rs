//! Wiring: the store, the keys, both listeners, and the maintenance loop (config reload, key reload and
//! self-managed rotation, purging expired rows, the SQLite log's gauge).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mcp_authz_audit::stop::Stop;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::{AuthServerConfig, ConfigError};
use crate::keys::{KeyError, KeySet};
use crate::metrics::Metrics;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::state::{AppState, ReloadError, Snapshot};
use crate::store::{SqlStore, Store, StoreError};
use crate::{admin, authorize, consent, introspect, login, metadata, providers, register, token};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS listener: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl ServerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ServerError::Config(e) => e.metric_label(),
            ServerError::Keys(e) => e.metric_label(),
            ServerError::Store(e) => e.metric_label(),
            ServerError::Listen { .. } => "listen",
            ServerError::Tls(e) => e.metric_label(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the configured store (and migrates it).
pub async fn open_store(config: &AuthServerConfig) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(pg) = &config.storage.postgres {
        let url = match (&pg.url_file, &pg.url_env) {
            (Some(file), _) => std::fs::read_to_string(file)
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot read {}: {e}", file.display()))
                })?
                .trim()
                .to_owned(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                StoreError::Unavailable(format!("environment variable {var} is not set"))
            })?,
            (None, None) => {
                return Err(StoreError::Unavailable(
                    "postgres needs urlFile or urlEnv".into(),
                ));
            }
        };
        return Ok(Arc::new(
            SqlStore::open_postgres(&url, pg.max_connections).await?,
        ));
    }
    let path = config
        .storage
        .sqlite
        .as_ref()
        .map(|s| s.path.clone())
        .unwrap_or_default();
    Ok(Arc::new(SqlStore::open_sqlite(&path).await?))
}

/// The longest an access token can live: how long a key is published before it signs and after it retires.
fn key_lead(config: &AuthServerConfig) -> u64 {
    config.tokens.access_token_secs.max(60)
}

/// Loads the keys in force now, rotating them first in self-managed mode.
pub fn load_keys(config: &AuthServerConfig) -> Result<KeySet, KeyError> {
    let now = unix_now();
    let signing = &config.signing;
    if signing.self_managed {
        crate::self_managed::rotate_self_managed(
            &signing.keys_dir,
            now,
            signing.rotation_period_secs,
            key_lead(config),
        )?;
    }
    KeySet::load(&signing.keys_dir, now)
}

/// The OAuth router (public port).
pub fn oauth_router(state: Arc<AppState>) -> Router {
    let snapshot = state.snapshot();
    let issuer_path = url::Url::parse(&snapshot.config.issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let endpoints = Router::new()
        .route("/authorize", get(authorize::authorize))
        .route("/login", post(login::login))
        .route("/consent", post(consent::consent))
        .route("/upstream/callback", get(login::upstream_callback))
        .route("/connect/{provider}", get(providers::connect::start))
        .route(
            "/connect/{provider}/callback",
            get(providers::connect::callback),
        )
        .route(
            "/connect/{provider}/disconnect",
            get(providers::connect::disconnect_form).post(providers::connect::disconnect),
        )
        .route("/token", post(token::token))
        .route("/introspect", post(introspect::introspect))
        .route("/revoke", post(introspect::revoke))
        .route("/register", post(register::register))
        .route("/jwks", get(metadata::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::metadata),
        )
        .route("/.well-known/openid-configuration", get(metadata::metadata));
    let mut router = if issuer_path.is_empty() {
        endpoints
    } else {
        // RFC 8414 §3.1: the well-known name is inserted before the issuer's path; OIDC appends it.
        Router::new()
            .nest(&issuer_path, endpoints)
            .route(
                &format!("/.well-known/oauth-authorization-server{issuer_path}"),
                get(metadata::metadata),
            )
            .route(
                &format!("/.well-known/openid-configuration{issuer_path}"),
                get(metadata::metadata),
            )
    };
    router = router.fallback(not_found);
    router
        .layer(middleware::from_fn_with_state(state.clone(), limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(
            state.stopping.subscribe(),
            bounded,
        ))
        // Outside the time limit, so that a timed-out request's audit record has its trace too.
        .layer(middleware::from_fn(traced))
        .layer(middleware::from_fn_with_state(
            (state.metrics.clone(), state.in_flight.clone()),
            finished,
        ))
        .with_state(state)
}

/// Requests in progress at once. Each runs on its own task to its end, and a client that hangs up no longer ends
/// its request's work, so this is what bounds the work nobody waits for; past it a request is refused at once
/// (429 `temporarily_unavailable` with `Retry-After`). A busy server has a few dozen in progress (about 5,000 tokens/s at a few
/// milliseconds each), and each step of a request is bounded within the request limit.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Runs the request on a task of its own, to its end: a client that hangs up drops only the wait for the answer.
/// Cancelled with it, a handler could stop between its store write and its audit record (a token issued and
/// recorded in the store, with no record on the audit stream), or between two writes. The time limit inside
/// bounds each such task, [`MAX_IN_FLIGHT`] how many there are, and a stopping server waits for them.
async fn finished(
    State((metrics, in_flight)): State<(Metrics, Arc<tokio::sync::Semaphore>)>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = in_flight.try_acquire_owned() else {
        // Counted with the rate limits' refusals, keyed on what ran out.
        metrics
            .rate_limited
            .with_label_values(&["all", "in_progress"])
            .inc();
        return OAuthError::rate_limited(
            "the server has too many requests in progress; retry shortly",
            1,
        )
        .into_response();
    };
    let endpoint = endpoint_of(request.uri().path());
    let trace = trace_of(request.headers());
    let handler = tokio::spawn(async move {
        let response = next.run(request).await;
        drop(permit);
        response
    });
    match handler.await {
        Ok(response) => response,
        Err(error) => {
            // A panic is a bug: the client gets an OAuth error, the metric, the log and the audit stream say
            // which endpoint (a token request that failed has its record like one that was refused). Not the
            // panic's message: it may hold what the request carried (the panic hook logs where it happened).
            let outcome = if error.is_panic() {
                "handler_panicked"
            } else {
                "handler_cancelled"
            };
            metrics.outcome(endpoint, outcome);
            crate::audit::TRACE.sync_scope(trace, || {
                crate::audit::log(&crate::audit::Decision {
                    event: endpoint,
                    outcome: "failed",
                    reason: outcome,
                    ..Default::default()
                })
            });
            tracing::error!(endpoint, outcome, "a request's handler failed");
            OAuthError::new(ErrorCode::ServerError, "the request could not be handled")
                .into_response()
        }
    }
}

/// The ids of a request's `traceparent` header, for its audit records.
fn trace_of(headers: &axum::http::HeaderMap) -> Option<mcp_authz_audit::TraceIds> {
    mcp_authz_audit::TraceIds::of_header(
        headers.get_all("traceparent").iter().map(|v| v.as_bytes()),
    )
}

/// Runs the request with its `traceparent` header's ids at hand for its audit records and, when tracing is on,
/// inside its server span (which continues that trace).
async fn traced(request: Request, next: Next) -> Response {
    use mcp_authz_otel::opentelemetry::context::FutureExt as _;
    let headers = request.headers();
    let trace = trace_of(headers);
    let tracestate = headers.get("tracestate").and_then(|v| v.to_str().ok());
    let endpoint = endpoint_of(request.uri().path());
    match crate::spans::request(request.method(), endpoint, trace.as_ref(), tracestate) {
        None => crate::audit::TRACE.scope(trace, next.run(request)).await,
        Some(cx) => {
            let run = next.run(request).with_context(cx.clone());
            let response = crate::audit::TRACE.scope(trace, run).await;
            crate::spans::finish(&cx, response.status());
            response
        }
    }
}

/// The admin router (admin port).
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(admin::metrics))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/admin/grants", get(admin::list_grants))
        .route("/admin/grants/revoke", post(admin::revoke_grants))
        .route("/admin/audit", get(admin::recent_audit))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.stopping.subscribe(),
            bounded_admin,
        ))
        .layer(middleware::from_fn(traced))
        .layer(middleware::from_fn_with_state(
            (state.metrics.clone(), state.admin_in_flight.clone()),
            finished,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "not_found" })),
    )
        .into_response()
}

/// The endpoint a path names, from a fixed set (the path's last segment when it is one of ours): the latency
/// metric's label and the audit event of a request that timed out.
fn endpoint_of(path: &str) -> &'static str {
    let last = path.rsplit('/').next().unwrap_or_default();
    [
        "authorize",
        "login",
        "consent",
        "token",
        "introspect",
        "revoke",
        "register",
        "jwks",
    ]
    .into_iter()
    .find(|e| *e == last)
    .unwrap_or(if path.contains("/.well-known/") {
        "metadata"
    } else {
        "other"
    })
}

/// Latency per endpoint.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let endpoint = endpoint_of(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    if endpoint != "token" {
        // The token handler measures itself, so its figure excludes nothing here.
        state
            .metrics
            .latency
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
    }
    if response.status().is_server_error() && response.status() != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(endpoint, status = %response.status(), "server error");
    }
    response
}

/// The rate limits keyed by address, before the handler reads a byte of the body (the client limits need the
/// client id, and are the handlers' own: see [`crate::rate_limits`]).
async fn limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(endpoint) = crate::rate_limits::Endpoint::of_path(request.uri().path()) else {
        return next.run(request).await;
    };
    let snapshot = state.snapshot();
    let Some(limiter) = snapshot.limiter.as_deref() else {
        return next.run(request).await;
    };
    let peer = request.extensions().get::<PeerAddr>().and_then(|p| p.0);
    let address =
        crate::client_address::client_address(peer, request.headers(), &snapshot.trusted_proxies);
    if let Some(address) = address
        && let Err(refusal) = limiter.check_address(endpoint, address, Instant::now())
    {
        let error = refusal.counted(&state.metrics);
        state
            .refuse(endpoint.label(), &crate::audit::Who::default(), &error)
            .await;
        return refusal.respond(error);
    }
    next.run(request).await
}

/// The longest a request may take from its first byte to its answer, body included: a client that trickles a body
/// (the header read has its own bound) or a handler stuck on an upstream cannot hold a connection longer. Every
/// bounded step inside (a CIMD fetch, a store call, a password check) finishes well within it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The admin port's bound: a bulk revocation over a large store may take longer than an OAuth request, and must
/// not be cut off (and rolled back) mid-way while the server runs; a stopping server cuts it at the end of its
/// drain all the same, since the pod's grace period is far shorter. The port is not public.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The stop under way, once one began (`AppState::stopping`).
type Stopping = watch::Receiver<Option<Stop>>;

async fn bounded(State(stopping): State<Stopping>, request: Request, next: Next) -> Response {
    let endpoint = endpoint_of(request.uri().path());
    within(REQUEST_TIMEOUT, stopping, endpoint, request, next).await
}

async fn bounded_admin(State(stopping): State<Stopping>, request: Request, next: Next) -> Response {
    within(ADMIN_REQUEST_TIMEOUT, stopping, "admin", request, next).await
}

/// Resolves when a stop's drain is over; never while the server runs.
async fn drain_over(mut stopping: Stopping) {
    loop {
        let current = *stopping.borrow_and_update();
        if let Some(stop) = current {
            return tokio::time::sleep_until(stop.drained_by().into()).await;
        }
        if stopping.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Answers 408 with an OAuth error, and closes the connection, when a request is not done in `limit`, and 503
/// when it is still running at the end of a stop's drain: the request was refused either way, so the audit
/// stream says so (a store row is not written: anyone can time out). A request cut mid-way has its store
/// transaction rolled back with it.
async fn within(
    limit: Duration,
    stopping: Stopping,
    endpoint: &str,
    request: Request,
    next: Next,
) -> Response {
    let (status, reason, error) = tokio::select! {
        done = tokio::time::timeout(limit, next.run(request)) => match done {
            Ok(response) => return response,
            Err(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                OAuthError::invalid_request(format!(
                    "the request was not completed within {} seconds",
                    limit.as_secs()
                )),
            ),
        },
        () = drain_over(stopping) => {
            tracing::warn!(endpoint, "a request still running when the server's drain ended was cut");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_stopping",
                OAuthError::new(ErrorCode::TemporarilyUnavailable, "the server is stopping; retry"),
            )
        }
    };
    crate::audit::log(&crate::audit::Decision {
        event: endpoint,
        outcome: "refused",
        reason,
        ..Default::default()
    });
    let mut response = error.into_response();
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The address of the client's end of the connection (set by [`serve`] on every request); `None` when the router
/// is driven without a socket (benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<PeerAddr>()
            .copied()
            .unwrap_or(PeerAddr(None)))
    }
}

/// The address the client is at: the connection's peer, or the address a trusted proxy names (see
/// [`crate::client_address`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl axum::extract::FromRequestParts<Arc<AppState>> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let ClientOrigin(origin) = ClientOrigin::from_request_parts(parts, state).await?;
        Ok(ClientAddr(origin.map(|o| o.address)))
    }
}

/// The client's address and where it came from (see [`crate::client_address::client_origin`]): for the caps
/// that count a network only when it is the client's own.
#[derive(Debug, Clone, Copy)]
pub struct ClientOrigin(pub Option<crate::client_address::ClientAddress>);

impl axum::extract::FromRequestParts<Arc<AppState>> for ClientOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<PeerAddr>().and_then(|p| p.0);
        let trusted = &state.snapshot().trusted_proxies;
        Ok(ClientOrigin(crate::client_address::client_origin(
            peer,
            &parts.headers,
            trusted,
        )))
    }
}

/// A running server. Dropping it stops it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where the TLS listener listens, when the config has one.
    pub tls_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops within [`mcp_authz_audit::stop::DEFAULT_BUDGET`], starting now: see [`Running::stop_within`].
    pub async fn stop(self) {
        self.stop_within(Stop::begin(mcp_authz_audit::stop::DEFAULT_BUDGET))
            .await;
    }

    /// Stops accepting, lets in-flight requests finish until `stop`'s drain is over, cuts those still running
    /// then (each with its audit record), and waits.
    pub async fn stop_within(mut self, stop: Stop) {
        self.state.stopping.send_replace(Some(stop));
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Resolves when the server stops (a listener failed, or `stop` was called elsewhere).
    pub async fn wait(mut self) {
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How long a client may take to send a request's headers: a connection that trickles them (slowloris) is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take: one that stalls must not hold a task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` (through TLS when `tls` is given), then lets open ones finish until the
/// drain of the stop `stopping` holds is over (a stop of the default budget when none was given).
async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
    stopping: Stopping,
    in_flight: Arc<tokio::sync::Semaphore>,
) {
    // HTTP/1.1 only, as the TLS listener's ALPN says: the automatic builder would also take HTTP/2 without
    // negotiation (h2c), whose stream resets cost a client nothing per cancelled request.
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .http1_only();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(PeerAddr(Some(peer.ip())));
                router.clone().oneshot(request)
            });
        match &tls {
            None => {
                let connection = graceful.watch(
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .into_owned(),
                );
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            Some(acceptor) => {
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                let watcher = graceful.watcher();
                // The handshake runs in the connection's task, so a slow client does not hold up accepting.
                tokio::spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let connection =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                });
            }
        }
    }
    let stopped =
        (*stopping.borrow()).unwrap_or_else(|| Stop::begin(mcp_authz_audit::stop::DEFAULT_BUDGET));
    if tokio::time::timeout_at(stopped.drained_by().into(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the end of the drain were closed");
    }
    // Requests whose clients hung up run on without a connection: they finish too, or are cut at the end of the
    // drain with their record, before the process may exit and close the audit stream behind them. Past the
    // drain only a handler that never yields is left; it may not take the audit flush's whole share.
    let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
    if tokio::time::timeout_at(stopped.audited_by().into(), in_flight.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress when the server stopped were cut off");
    }
}

/// Starts the server from a config (already validated) that came from `config_path`, if any.
pub async fn start(
    config: AuthServerConfig,
    config_path: Option<PathBuf>,
) -> Result<Running, ServerError> {
    let snapshot = Snapshot::build(config, None)?;
    let keys = load_keys(&snapshot.config)?;
    let store = open_store(&snapshot.config).await?;
    // Grants from before holders were recorded take the holders of the config the server starts with: the nearest
    // to the ones they were made under that can be known (the migration cannot read the config). Left to their
    // first use, a grant unused until its URL passed to another service would be adopted by the new holder.
    // Those an older replica writes during a rolling upgrade are adopted at their first use.
    for resource in snapshot
        .config
        .resources
        .iter()
        .filter(|r| !r.holder.is_empty())
    {
        let adopted = store
            .adopt_holders(&resource.resource, &resource.holder)
            .await?;
        if adopted > 0 {
            tracing::info!(resource = %resource.resource, adopted, "grants from before holders were recorded took the resource's holder");
        }
    }
    let (listen, admin_listen) = (snapshot.config.listen, snapshot.config.admin_listen);
    let state = Arc::new(AppState::new(snapshot, keys, store, config_path));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: listen,
            source,
        })?;
    let admin_listener =
        TcpListener::bind(admin_listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: admin_listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: admin_listen,
            source,
        })?;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let tls_config = state.snapshot().config.tls.clone();
    let (mut tls_addr, mut tls_cert) = (None, None);
    if let Some(tls) = tls_config {
        let cert = Arc::new(crate::tls::ReloadingCert::load(&tls)?);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()?));
        let listener =
            TcpListener::bind(tls.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: tls.listen,
                    source,
                })?;
        tls_addr = Some(
            listener
                .local_addr()
                .map_err(|source| ServerError::Listen {
                    addr: tls.listen,
                    source,
                })?,
        );
        tls_cert = Some(cert);
        tasks.push(tokio::spawn(serve(
            listener,
            oauth_router(state.clone()),
            Some(acceptor),
            shutdown.clone(),
            state.stopping.subscribe(),
            state.in_flight.clone(),
        )));
    }
    for (listener, router, in_flight) in [
        (
            listener,
            oauth_router(state.clone()),
            state.in_flight.clone(),
        ),
        (
            admin_listener,
            admin_router(state.clone()),
            state.admin_in_flight.clone(),
        ),
    ] {
        tasks.push(tokio::spawn(serve(
            listener,
            router,
            None,
            shutdown.clone(),
            state.stopping.subscribe(),
            in_flight,
        )));
    }
    let stamp = state
        .config_path
        .as_deref()
        .and_then(|path| loaded_stamp(&state, path));
    tasks.push(tokio::spawn(maintain(
        state.clone(),
        stamp,
        tls_cert,
        shutdown.clone(),
    )));
    tracing::info!(%addr, %admin_addr, ?tls_addr, issuer = %state.snapshot().config.issuer, "authorization server started");
    Ok(Running {
        addr,
        admin_addr,
        tls_addr,
        state,
        shutdown,
        tasks,
    })
}

/// The stamp of the config file if it still holds the config in force, `None` (reloaded at the first check)
/// if it does not. The caller read the file before `start`, and the file may have changed since: a kubelet
/// swaps a ConfigMap volume's `..data` link whenever the object changes, and a server starting during a
/// re-render read the old version. A stamp taken now would pass the new version for the one loaded, and
/// the server would keep the old config until the next change. So the stamp is taken first, then the file
/// is read and compared.
fn loaded_stamp(state: &AppState, path: &Path) -> Option<(SystemTime, u64)> {
    let stamp = file_stamp(path)?;
    let on_disk = AuthServerConfig::load(path).ok()?;
    (on_disk == state.snapshot().config).then_some(stamp)
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Re-reads the config file; on any error the running config stays in force.
pub fn reload_config(state: &AppState, path: &Path) -> Result<(), ReloadError> {
    let config = AuthServerConfig::load(path)?;
    let previous = state.snapshot();
    for field in restart_only_changes(&previous.config, &config) {
        tracing::warn!(
            field,
            "config field changed: it takes effect at the next restart"
        );
    }
    let keys = load_keys(&config)?;
    let snapshot = Snapshot::build(config, Some(&previous))?;
    state.replace_keys(keys);
    state.replace_snapshot(snapshot);
    state.refresh_resource_server_root();
    Ok(())
}

/// The fields (as spelled in the config file) that differ between `old` and `new` and are read only at start:
/// the listeners are bound once, the store is opened once, and the TLS listener re-reads the certificate and key
/// files under the paths it was started with (a renewed pair under the same paths is picked up; new paths are
/// not, and without this the change would be dropped silently).
fn restart_only_changes(old: &AuthServerConfig, new: &AuthServerConfig) -> Vec<&'static str> {
    let (old_tls, new_tls) = (old.tls.as_ref(), new.tls.as_ref());
    [
        ("listen", old.listen != new.listen),
        ("adminListen", old.admin_listen != new.admin_listen),
        ("tls", old_tls.is_some() != new_tls.is_some()),
        (
            "tls.listen",
            old_tls
                .zip(new_tls)
                .is_some_and(|(o, n)| o.listen != n.listen),
        ),
        (
            "tls.certFile",
            old_tls
                .zip(new_tls)
                .is_some_and(|(o, n)| o.cert_file != n.cert_file),
        ),
        (
            "tls.keyFile",
            old_tls
                .zip(new_tls)
                .is_some_and(|(o, n)| o.key_file != n.key_file),
        ),
        ("storage", old.storage != new.storage),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}

/// Every 2 s: read the SQLite log's size for its gauge, reload the config when its file changed. Every 10 s:
/// reload (and rotate) keys and the TLS listener's certificate. Every 10 min: purge.
async fn maintain(
    state: Arc<AppState>,
    mut stamp: Option<(SystemTime, u64)>,
    tls: Option<Arc<crate::tls::ReloadingCert>>,
    shutdown: CancellationToken,
) {
    // A refused reload is tried again every 10 s with the file unchanged: what it refused for may be a file it
    // names (users, keys, a CA bundle) that a kubelet updates a little later than the config's own volume.
    let mut refused = false;
    let mut tick: u64 = 0;
    let mut revoking: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        tick += 1;
        if let Some(bytes) = state.store.wal_bytes() {
            state
                .metrics
                .sqlite_wal_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Some(path) = state.config_path.clone() {
            let now_stamp = file_stamp(&path);
            let changed = now_stamp.is_some() && now_stamp != stamp;
            if changed || (refused && tick.is_multiple_of(5)) {
                if changed {
                    stamp = now_stamp;
                }
                let outcome = reload_config(&state, &path);
                refused = outcome.is_err();
                match outcome {
                    Ok(()) => {
                        state.metrics.reloads.with_label_values(&["ok"]).inc();
                        tracing::info!(path = %path.display(), "config reloaded");
                    }
                    Err(e) => {
                        state
                            .metrics
                            .reloads
                            .with_label_values(&[e.metric_label()])
                            .inc();
                        tracing::error!(error = %e, "config reload refused; the previous config stays in force");
                    }
                }
            }
        }
        if tick.is_multiple_of(5)
            && let Some(cert) = &tls
        {
            match cert.reload() {
                Ok(false) => {}
                Ok(true) => {
                    state.metrics.reloads.with_label_values(&["ok"]).inc();
                    tracing::info!("TLS certificate reloaded");
                }
                Err(e) => {
                    state
                        .metrics
                        .reloads
                        .with_label_values(&[e.metric_label()])
                        .inc();
                    tracing::error!(error = %e, "TLS certificate reload failed; the previous certificate stays in force");
                }
            }
        }
        // In a task of its own, one at a time: a provider that hangs must not hold up reloads and rotation.
        if tick.is_multiple_of(5) && revoking.as_ref().is_none_or(JoinHandle::is_finished) {
            let state = state.clone();
            revoking = Some(tokio::spawn(async move {
                crate::providers::revoke_queued(&state).await;
            }));
        }
        if tick.is_multiple_of(5) {
            reload_client_secrets(&state);
            let config = state.snapshot().config.clone();
            state.refresh_resource_server_root();
            match tokio::task::spawn_blocking(move || load_keys(&config)).await {
                Ok(Ok(keys)) => state.replace_keys(keys),
                Ok(Err(e)) => {
                    state
                        .metrics
                        .reloads
                        .with_label_values(&[e.metric_label()])
                        .inc();
                    tracing::error!(error = %e, "key reload failed; the previous keys stay in force");
                }
                Err(_) => {}
            }
        }
        if tick % 300 == 1
            && let Err(e) = state.store.purge_expired(crate::clock::now_secs()).await
        {
            tracing::warn!(error = %e, "purge failed");
        }
    }
}

/// Swaps in client secrets and provider-token keys whose files changed under an unchanged config (a rotated
/// Secret). Client secrets that no longer load leave what is in force, as a refused config reload does; a key file
/// that no longer loads is the provider features' own matter (`state::sealer_or_problem`) and never holds back a
/// client's rotated secret.
fn reload_client_secrets(state: &AppState) {
    let snapshot = state.snapshot();
    if snapshot
        .config
        .clients
        .iter()
        .all(|c| c.client_secret_file.is_none())
        && snapshot.config.provider_token_keys_file.is_none()
    {
        return;
    }
    let outcome = crate::state::read_client_secrets(&snapshot.config).and_then(|secrets| {
        let keys = crate::state::read_sealer(&snapshot.config);
        if !files_moved(&snapshot, &secrets, keys.as_ref().ok()) {
            return Ok(None);
        }
        Snapshot::build(snapshot.config.clone(), Some(&snapshot)).map(Some)
    });
    match outcome {
        Ok(None) => {}
        Ok(Some(rebuilt)) => {
            state.replace_snapshot(rebuilt);
            state.metrics.reloads.with_label_values(&["ok"]).inc();
            tracing::info!("client secrets or provider-token keys reloaded");
        }
        Err(e) => {
            state
                .metrics
                .reloads
                .with_label_values(&[e.metric_label()])
                .inc();
            tracing::error!(error = %e, "secret reload failed; the secrets in force stay");
        }
    }
}

/// Whether what the secret files hold now differs from what `current` was built with: other client secrets, other
/// keys, or a key file that started or stopped reading (`keys` is `None` when it does not read).
fn files_moved(
    current: &Snapshot,
    secrets: &std::collections::HashMap<String, String>,
    keys: Option<&Option<crate::providers::seal::Sealer>>,
) -> bool {
    let keys_moved = match keys {
        Some(keys) => *keys != current.sealer || current.sealer_problem.is_some(),
        None => current.sealer_problem.is_none(),
    };
    *secrets != current.client_secrets || keys_moved
}

/// For handlers that need an OAuth error from a store error.
pub fn store_error(e: StoreError) -> OAuthError {
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit records this test binary writes, as JSON: captured once for the whole binary (the output is
    /// the process's), so a test picks its own by trace id.
    fn audit_records() -> &'static (
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        mcp_authz_audit::pipe::LogPipe,
    ) {
        #[derive(Clone)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        static CAPTURED: std::sync::OnceLock<(
            std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
            mcp_authz_audit::pipe::LogPipe,
        )> = std::sync::OnceLock::new();
        CAPTURED.get_or_init(|| {
            let buffer = std::sync::Arc::default();
            let pipe = mcp_authz_audit::install_sink(Sink(std::sync::Arc::clone(&buffer)))
                .expect("nothing else sets this binary's audit output");
            (buffer, pipe)
        })
    }

    fn audit_records_of(trace_id: &str) -> Vec<serde_json::Value> {
        let (buffer, pipe) = audit_records();
        assert!(pipe.flush(Duration::from_secs(5)));
        String::from_utf8(buffer.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["trace_id"] == trace_id)
            .collect()
    }

    /// A token request whose handler panics leaves its audit record, saying it failed, with its trace.
    #[tokio::test]
    async fn a_panicked_token_request_writes_a_failed_record() {
        audit_records();
        const TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
        let metrics = Metrics::new();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
        let router = Router::new()
            .route("/token", post(panics))
            .layer(middleware::from_fn(traced))
            .layer(middleware::from_fn_with_state(
                (metrics.clone(), in_flight),
                finished,
            ));
        let request = axum::http::Request::post("/token")
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let records = audit_records_of(TRACE);
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        for (field, value) in [
            ("source", "authserver"),
            ("event", "token"),
            ("outcome", "deny"),
            ("action", "failed"),
            ("reason", "handler_panicked"),
            ("parent_id", "00f067aa0ba902b7"),
        ] {
            assert_eq!(record[field], value, "{field} in {record}");
        }
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["token", "handler_panicked"])
                .get(),
            1
        );
    }

    /// An admin request may run for minutes (a bulk revocation), but not past a stop: at the end of the stop's
    /// drain it is cut, answered 503 and recorded.
    #[tokio::test]
    async fn a_long_admin_request_is_cut_at_the_end_of_the_drain_and_recorded() {
        audit_records();
        const TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4736";
        let (stopping, stopped) = watch::channel(None);
        let router = Router::new()
            .route(
                "/admin/grants/revoke",
                post(|| async { std::future::pending::<&'static str>().await }),
            )
            .layer(middleware::from_fn_with_state(stopped, bounded_admin))
            .layer(middleware::from_fn(traced));
        let request = axum::http::Request::post("/admin/grants/revoke")
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .body(axum::body::Body::empty())
            .unwrap();
        let answer = tokio::spawn(router.oneshot(request));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stop = Stop::begin(Duration::from_millis(1000));
        stopping.send_replace(Some(stop));
        let response = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("cut well before the admin timeout")
            .unwrap()
            .unwrap();
        let cut = std::time::Instant::now();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            cut >= stop.drained_by() && cut < stop.audited_by(),
            "cut off the drain's end"
        );
        let records = audit_records_of(TRACE);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(
            (
                &records[0]["event"],
                &records[0]["action"],
                &records[0]["reason"]
            ),
            (
                &serde_json::json!("admin"),
                &serde_json::json!("refused"),
                &serde_json::json!("server_stopping")
            )
        );
    }

    /// A handler that panics (a bug) is answered with the OAuth `server_error` and counted; the connection
    /// stays usable. The panicking route exists only here: nothing in a build can make a handler panic on purpose.
    async fn panics() -> &'static str {
        panic!("a bug")
    }

    /// Sends `request` on `stream` and reads one answer whole: its head, and a body of the length it announces.
    async fn answer(stream: &mut tokio::net::TcpStream, request: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(
                n > 0,
                "the connection was closed: {}",
                String::from_utf8_lossy(&read)
            );
            read.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&read).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return (head.to_owned(), body.to_owned());
                }
            }
        }
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_server_error_and_counted() {
        let metrics = Metrics::new();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let router = Router::new()
            .route("/token", post(panics))
            .route("/jwks", get(|| async { "{}" }))
            .layer(middleware::from_fn_with_state(
                (metrics.clone(), in_flight.clone()),
                finished,
            ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router,
            None,
            stop.clone(),
            watch::channel(None).1,
            in_flight,
        ));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (head, body) = answer(
            &mut stream,
            "POST /token HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": "server_error", "error_description": "the request could not be handled"})
        );
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["token", "handler_panicked"])
                .get(),
            1
        );
        // The same connection answers the next request.
        let (head, body) = answer(&mut stream, "GET /jwks HTTP/1.1\r\nhost: a\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body, "{}");
        stop.cancel();
        drop(stream);
        server.await.unwrap();
    }

    #[test]
    fn a_path_names_its_endpoint_from_a_fixed_set() {
        for (path, endpoint) in [
            ("/token", "token"),
            ("/tenant/a/token", "token"),
            ("/register", "register"),
            ("/token/", "other"),
            ("/tokens", "other"),
            ("/.well-known/oauth-authorization-server", "metadata"),
            ("/", "other"),
            ("", "other"),
        ] {
            assert_eq!(endpoint_of(path), endpoint, "{path}");
        }
    }

    fn config(extra: &str) -> AuthServerConfig {
        let text = format!(
            "issuer: https://auth.example\nsigning: {{keysDir: /nonexistent}}\nlogin: {{static: {{users: []}}}}\n{extra}"
        );
        AuthServerConfig::parse(&text, Path::new("c.yaml")).expect("config")
    }

    #[test]
    fn a_rotated_secret_or_key_file_moves_the_snapshot_whatever_else_reads() {
        use crate::providers::seal::Sealer;
        use base64::Engine;
        use std::collections::HashMap;
        let keys = |byte: u8| {
            let line = format!(
                "k1 {}\n",
                base64::engine::general_purpose::STANDARD.encode([byte; 32])
            );
            Some(Sealer::parse(&line).expect("keys"))
        };
        let mut snapshot = Snapshot::build(config(""), None).expect("snapshot");
        snapshot.client_secrets = HashMap::from([("c".to_owned(), "h1".to_owned())]);
        snapshot.sealer = keys(1);
        let same = snapshot.client_secrets.clone();
        let rotated = HashMap::from([("c".to_owned(), "h2".to_owned())]);
        let (old_keys, new_keys) = (keys(1), keys(2));
        // (secrets now, key file now (None: does not read), a problem already known, moved)
        let cases = [
            (&same, Some(&old_keys), false, false),
            (&rotated, Some(&old_keys), false, true),
            // A broken key file never holds back a rotated secret, and is itself news once.
            (&rotated, None, false, true),
            (&rotated, None, true, true),
            (&same, None, false, true),
            (&same, None, true, false),
            (&same, Some(&new_keys), false, true),
            // The file reads again: the problem ends.
            (&same, Some(&old_keys), true, true),
        ];
        for (secrets, read, known_problem, moved) in cases {
            snapshot.sealer_problem = known_problem.then(|| "broken".to_owned());
            assert_eq!(
                files_moved(&snapshot, secrets, read),
                moved,
                "{secrets:?} {} {known_problem}",
                read.is_some()
            );
        }
    }

    #[test]
    fn a_reload_names_each_field_that_needs_a_restart() {
        let tls = |listen: &str, cert: &str, key: &str| {
            format!("tls: {{listen: \"{listen}\", certFile: {cert}, keyFile: {key}}}\n")
        };
        let base = tls("0.0.0.0:8443", "/tls/tls.crt", "/tls/tls.key");
        // (old extra, new extra, fields warned about)
        let cases: Vec<(String, String, Vec<&str>)> = vec![
            (base.clone(), base.clone(), vec![]),
            (
                base.clone(),
                tls("0.0.0.0:8443", "/other/tls.crt", "/tls/tls.key"),
                vec!["tls.certFile"],
            ),
            (
                base.clone(),
                tls("0.0.0.0:8443", "/tls/tls.crt", "/other/tls.key"),
                vec!["tls.keyFile"],
            ),
            (
                base.clone(),
                tls("0.0.0.0:9443", "/new/tls.crt", "/new/tls.key"),
                vec!["tls.listen", "tls.certFile", "tls.keyFile"],
            ),
            (String::new(), base.clone(), vec!["tls"]),
            (base.clone(), String::new(), vec!["tls"]),
            (
                String::new(),
                "listen: \"127.0.0.1:9999\"\n".to_owned(),
                vec!["listen"],
            ),
        ];
        for (old, new, want) in cases {
            let got = restart_only_changes(&config(&old), &config(&new));
            assert_eq!(got, want, "from {old:?} to {new:?}");
        }
    }
}
