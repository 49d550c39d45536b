//! A small, bounded HTTP(S) client for the issuer's endpoints (JWKS, introspection): a size limit on the
//! answer, a time limit on the whole exchange, no redirects. JWKS fetches (every few minutes) take a connection
//! each; the introspection client keeps a few connections for reuse (`Fetcher::pooled`), since over TLS a
//! handshake per sensitive operation cost about three times the exchange itself (issue 15).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Where the system's CA bundle lives on Debian-like images.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL cannot be fetched by this client.
    #[error("unsupported URL {0}")]
    Url(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Io(String),
    /// The time limit passed.
    #[error("timed out")]
    Timeout,
    /// The answer was not 200.
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// A 400 or 401 whose JSON body names an OAuth error code (RFC 6749 §5.2): only the code is kept, never
    /// the rest of the body.
    #[error("refused with {1} (HTTP status {0})")]
    Refused(StatusCode, String),
    /// The answer was larger than allowed.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The CA bundle could not be read.
    #[error("CA bundle: {0}")]
    Roots(String),
}

impl FetchError {
    /// Low-cardinality reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Url(_) => "url",
            Self::Io(_) => "io",
            Self::Timeout => "timeout",
            Self::Status(_) => "status",
            Self::Refused(..) => "refused",
            Self::TooLarge(_) => "too_large",
            Self::Roots(_) => "roots",
        }
    }
}

/// A client for one trust configuration.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
    pool: Option<Arc<Pool>>,
}

/// Idle connections kept by a pooled fetcher: enough for the introspections a busy sidecar has in flight at
/// once to find one, few enough that an idle sidecar holds little.
const POOL_MAX_IDLE: usize = 8;
/// How long an idle connection is kept. A server that closes it sooner is noticed (the connection task reads
/// the close) and the connection skipped; one that closes it just as a request is written costs one retry.
const POOL_IDLE_FOR: Duration = Duration::from_secs(30);

/// Idle HTTP/1.1 connections by `scheme://host:port`, most recently used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    key: Arc<str>,
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection to `key` that is still open.
    fn take(&self, key: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.lock();
        idle.retain(|i| i.since.elapsed() < POOL_IDLE_FOR && !i.sender.is_closed());
        let pos = idle.iter().rposition(|i| &*i.key == key)?;
        Some(idle.swap_remove(pos).sender)
    }

    fn put(&self, key: Arc<str>, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.lock();
        idle.retain(|i| i.since.elapsed() < POOL_IDLE_FOR && !i.sender.is_closed());
        if idle.len() >= POOL_MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            key,
            sender,
            since: Instant::now(),
        });
    }
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetcher")
    }
}

impl Fetcher {
    /// Trusts the given PEM bundle, or the system bundle when none is given (an empty store if there is no
    /// system bundle: https then fails closed, plain http still works).
    pub fn new(ca_file: Option<&Path>) -> Result<Self, FetchError> {
        let mut roots = RootCertStore::empty();
        let (path, required) = match ca_file {
            Some(p) => (p, true),
            None => (Path::new(SYSTEM_BUNDLE), false),
        };
        match std::fs::read(path) {
            Ok(pem) => {
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert =
                        cert.map_err(|e| FetchError::Roots(format!("{}: {e}", path.display())))?;
                    // A system bundle may hold certificates rustls cannot parse; skip those, not the bundle.
                    if roots.add(cert).is_err() && required {
                        return Err(FetchError::Roots(format!(
                            "{}: unusable certificate",
                            path.display()
                        )));
                    }
                }
                if required && roots.is_empty() {
                    return Err(FetchError::Roots(format!(
                        "{}: no certificate",
                        path.display()
                    )));
                }
            }
            Err(e) if required => {
                return Err(FetchError::Roots(format!("{}: {e}", path.display())));
            }
            Err(_) => {}
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Roots(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: Arc::new(tls),
            pool: None,
        })
    }

    /// The same client, keeping up to 8 connections for reuse (each for at most 30 s idle).
    pub fn pooled(mut self) -> Self {
        self.pool = Some(Arc::default());
        self
    }

    /// GET a URL; only 200 is success.
    pub async fn get(
        &self,
        url: &str,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Bytes, FetchError> {
        self.send(url, http::Method::GET, Bytes::new(), timeout, max_bytes)
            .await
    }

    /// POST a form (the credentials inside it); only 200 is success. `form` is called for each attempt: a
    /// request written into a kept connection that the server closed at that moment is sent once more, on a
    /// new connection, with a new form (so one-time credentials inside it, an assertion's `jti`, are fresh).
    pub async fn post_form<E: From<FetchError>>(
        &self,
        url: &str,
        form: impl Fn() -> Result<String, E>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Bytes, E> {
        let attempts = async {
            let target = Target::parse(url)?;
            let mut reuse = true;
            loop {
                let body = Bytes::from(form()?);
                match self
                    .send_once(&target, http::Method::POST, body, max_bytes, reuse)
                    .await
                {
                    Err(Sent::Stale) => reuse = false,
                    Err(Sent::Failed(error)) => return Err(E::from(error)),
                    Ok(bytes) => return Ok(bytes),
                }
            }
        };
        tokio::time::timeout(timeout, attempts)
            .await
            .map_err(|_| E::from(FetchError::Timeout))?
    }

    async fn send(
        &self,
        url: &str,
        method: http::Method,
        body: Bytes,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Bytes, FetchError> {
        let attempt = async {
            let target = Target::parse(url)?;
            match self
                .send_once(&target, method, body, max_bytes, false)
                .await
            {
                Ok(bytes) => Ok(bytes),
                Err(Sent::Failed(error)) => Err(error),
                Err(Sent::Stale) => Err(FetchError::Io("connection closed".into())),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    /// One exchange, on a kept connection if `reuse` and there is one, else on a new one.
    async fn send_once(
        &self,
        target: &Target,
        method: http::Method,
        body: Bytes,
        max_bytes: usize,
        reuse: bool,
    ) -> Result<Bytes, Sent> {
        let is_post = method == http::Method::POST;
        let mut request = Request::builder()
            .method(method)
            .uri(target.path.as_str())
            .header(http::header::HOST, target.authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "mcp-authz-sidecar");
        if is_post {
            request = request.header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Sent::Failed(FetchError::Io(e.to_string())))?;
        let kept = match (&self.pool, reuse) {
            (Some(pool), true) => pool.take(&target.key),
            _ => None,
        };
        let reused = kept.is_some();
        let mut sender = match kept {
            Some(sender) => sender,
            None => self.connect(target).await.map_err(Sent::Failed)?,
        };
        // A kept connection that cannot take a request, or fails before its answer's head, was closed by the
        // server while idle: the request is sent again on a new connection. An issuer's introspection has no
        // effect to repeat; the new attempt carries a new assertion.
        let stale = |error: hyper::Error| {
            if reused {
                Sent::Stale
            } else {
                Sent::Failed(FetchError::Io(error.to_string()))
            }
        };
        sender.ready().await.map_err(stale)?;
        let response = sender.send_request(request).await.map_err(stale)?;
        let status = response.status();
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
            let limited = Limited::new(response.into_body(), MAX_ERROR_BYTES);
            let code = limited
                .collect()
                .await
                .ok()
                .and_then(|c| oauth_error_code(&c.to_bytes()));
            return Err(Sent::Failed(match code {
                Some(code) => FetchError::Refused(status, code),
                None => FetchError::Status(status),
            }));
        }
        if status != StatusCode::OK {
            return Err(Sent::Failed(FetchError::Status(status)));
        }
        let limited = Limited::new(response.into_body(), max_bytes);
        let bytes = limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
            Sent::Failed(if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge(max_bytes)
            } else {
                FetchError::Io(e.to_string())
            })
        })?;
        // Read whole: the connection may carry the next request (hyper closes it if the server said so).
        if let Some(pool) = &self.pool {
            pool.put(target.key.clone(), sender);
        }
        Ok(bytes)
    }

    /// A new HTTP/1.1 connection, over TLS for https.
    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>, FetchError> {
        let tcp = TcpStream::connect((target.dial_host.as_str(), target.port))
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let name = ServerName::try_from(target.dial_host.clone())
                .map_err(|_| FetchError::Url(target.url.clone()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Io(format!("TLS: {e}")))?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }
}

/// Largest error body read for its OAuth error code.
const MAX_ERROR_BYTES: usize = 4096;

/// The `error` member of an OAuth error body when it is a well-formed error code (RFC 6749 §5.2: `%x20-21 /
/// %x23-5B / %x5D-7E`; here lowercase letters and `_`, as every registered code is), else nothing.
fn oauth_error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    (!code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    .then(|| code.to_owned())
}

/// How one attempt ended without an answer.
enum Sent {
    /// A kept connection turned out closed: worth another attempt on a new one.
    Stale,
    Failed(FetchError),
}

/// Where a URL's requests go.
struct Target {
    url: String,
    /// `scheme://host:port`: which kept connections may serve it.
    key: Arc<str>,
    tls: bool,
    dial_host: String,
    port: u16,
    /// The `Host` field.
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, FetchError> {
        let bad = || FetchError::Url(url.into());
        let parsed = url::Url::parse(url).map_err(|_| bad())?;
        let tls = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(bad()),
        };
        let host = parsed.host_str().ok_or_else(bad)?.to_owned();
        let port = parsed.port_or_known_default().ok_or_else(bad)?;
        let path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let dial_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            url: url.to_owned(),
            key: format!("{}://{host}:{port}", parsed.scheme()).into(),
            tls,
            dial_host,
            port,
            authority,
            path,
        })
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, FetchError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
    // The connection task ends when its sender is dropped (or the server closes): with the exchange, or when
    // the pool lets the connection go.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::oauth_error_code;

    #[test]
    fn only_a_well_formed_error_code_is_kept() {
        for (body, code) in [
            (
                &br#"{"error":"invalid_grant","error_description":"revoked"}"#[..],
                Some("invalid_grant"),
            ),
            (br#"{"error":"invalid_scope"}"#, Some("invalid_scope")),
            (br#"{"error":"Invalid Grant"}"#, None),
            (br#"{"error":""}"#, None),
            (br#"{"error":7}"#, None),
            (br#"{"error_description":"x"}"#, None),
            (b"<html>bad gateway</html>", None),
        ] {
            assert_eq!(
                oauth_error_code(body).as_deref(),
                code,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(r#"{{"error":"{}"}}"#, "a".repeat(65));
        assert_eq!(oauth_error_code(long.as_bytes()), None);
    }
}
