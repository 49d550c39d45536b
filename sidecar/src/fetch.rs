//! A small, bounded HTTP(S) client for the issuer's endpoints (JWKS, introspection): one request per
//! connection, a size limit on the answer, a time limit on the whole exchange, no redirects.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
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
            Self::TooLarge(_) => "too_large",
            Self::Roots(_) => "roots",
        }
    }
}

/// A client for one trust configuration.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
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
        Ok(Self { tls: Arc::new(tls) })
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

    /// POST a form (the credentials inside it); only 200 is success.
    pub async fn post_form(
        &self,
        url: &str,
        form: String,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Bytes, FetchError> {
        self.send(
            url,
            http::Method::POST,
            Bytes::from(form),
            timeout,
            max_bytes,
        )
        .await
    }

    async fn send(
        &self,
        url: &str,
        method: http::Method,
        body: Bytes,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Bytes, FetchError> {
        tokio::time::timeout(timeout, self.send_inner(url, method, body, max_bytes))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn send_inner(
        &self,
        url: &str,
        method: http::Method,
        body: Bytes,
        max_bytes: usize,
    ) -> Result<Bytes, FetchError> {
        let parsed = url::Url::parse(url).map_err(|_| FetchError::Url(url.into()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| FetchError::Url(url.into()))?
            .to_owned();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| FetchError::Url(url.into()))?;
        let path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let is_post = method == http::Method::POST;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
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
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let dial_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tcp = TcpStream::connect((dial_host.as_str(), port))
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let response = match parsed.scheme() {
            "http" => exchange(TokioIo::new(tcp), request).await?,
            "https" => {
                let name =
                    ServerName::try_from(dial_host).map_err(|_| FetchError::Url(url.into()))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| FetchError::Io(format!("TLS: {e}")))?;
                exchange(TokioIo::new(tls), request).await?
            }
            _ => return Err(FetchError::Url(url.into())),
        };
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let limited = Limited::new(response.into_body(), max_bytes);
        limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge(max_bytes)
            } else {
                FetchError::Io(e.to_string())
            }
        })
    }
}

async fn exchange<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, FetchError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
    // The connection task ends with the exchange; the caller's timeout bounds it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| FetchError::Io(e.to_string()))
}
