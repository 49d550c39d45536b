//! Real local servers for the CIMD tests: an HTTPS server with a test CA whose replies each test
//! scripts per path, and plain listeners that count every connection made to a forbidden address.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_authz_authserver::cimd::{CimdConfig, HostResolver, Resolver, StaticResolver};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Long enough for a TLS fetch on a busy shared machine, short enough for the timeout cases.
pub const TEST_TOTAL_TIMEOUT_MS: u64 = 2500;

/// Host names the test certificate covers; the tests' resolver maps them to addresses.
pub const CERT_NAMES: &[&str] = &[
    "client.test",
    "rebind.test",
    "a.agents.test",
    "b.agents.test",
    "loopback2.test",
    "mixed.test",
    "private.test",
    "localhost",
    "127.0.0.1",
];

/// A certificate authority made for one test run, with its PEM bundle on disk.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    _dir: tempfile::TempDir,
    pub bundle: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("ca cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, issuer.pem()).expect("write ca bundle");
        Self {
            issuer,
            _dir: dir,
            bundle,
        }
    }

    pub fn tls_acceptor(&self, names: &[&str]) -> TlsAcceptor {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let chain = vec![
            cert.der().clone(),
            CertificateDer::from(self.issuer.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        TlsAcceptor::from(Arc::new(config))
    }
}

/// How the server answers one path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200, `application/json`, with a Content-Length.
    Json(String),
    /// 200 JSON with extra headers (e.g. Cache-Control).
    JsonWith(Vec<(&'static str, String)>, String),
    /// Exactly this status, headers and body (Content-Length added).
    Raw {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// 200 JSON without Content-Length: the body ends when the connection closes.
    CloseDelimited(Vec<u8>),
    /// 200 JSON headers, then bytes forever.
    Endless,
    /// 200 JSON with a Content-Length, the body dribbled one byte at a time.
    Slow { body: String, every: Duration },
    /// The request is read and never answered.
    Hang,
    /// The answer is sent after a pause (to let concurrent requests pile up).
    Delayed(Duration, String),
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
}

/// An HTTPS server on 127.0.0.1 that answers each path as scripted and counts requests.
pub struct HttpsServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpsServer {
    pub async fn start(acceptor: TlsAcceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
        Self::serve(listener, acceptor)
    }

    pub fn serve(listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let state = state.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            handle(tls, state).await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            state,
            connections,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn route(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .expect("state")
            .routes
            .insert(path.to_owned(), reply);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .expect("state")
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(mut tls: tokio_rustls::server::TlsStream<TcpStream>, state: Arc<Mutex<State>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let reply = {
        let mut state = state.lock().expect("state");
        *state.hits.entry(path.clone()).or_default() += 1;
        state.routes.get(&path).cloned()
    };
    let json = |extra: &[(&str, String)], body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    };
    let _ = match reply {
        None => {
            tls.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await
        }
        Some(Reply::Json(body)) => tls.write_all(&json(&[], body.as_bytes())).await,
        Some(Reply::JsonWith(headers, body)) => {
            tls.write_all(&json(&headers, body.as_bytes())).await
        }
        Some(Reply::Delayed(pause, body)) => {
            tokio::time::sleep(pause).await;
            tls.write_all(&json(&[], body.as_bytes())).await
        }
        Some(Reply::Raw {
            status,
            headers,
            body,
        }) => {
            let mut out = format!(
                "HTTP/1.1 {status} Status\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&body);
            tls.write_all(&bytes).await
        }
        Some(Reply::CloseDelimited(body)) => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
            match tls.write_all(head.as_bytes()).await {
                Ok(()) => tls.write_all(&body).await,
                Err(e) => Err(e),
            }
        }
        Some(Reply::Endless) => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
            let chunk = vec![b' '; 16 * 1024];
            let mut result = tls.write_all(head.as_bytes()).await;
            while result.is_ok() {
                result = tls.write_all(&chunk).await;
            }
            result
        }
        Some(Reply::Slow { body, every }) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let mut result = tls.write_all(head.as_bytes()).await;
            for byte in body.bytes() {
                if result.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
                result = match tls.write_all(&[byte]).await {
                    Ok(()) => tls.flush().await,
                    Err(e) => Err(e),
                };
            }
            result
        }
        Some(Reply::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    };
    let _ = tls.shutdown().await;
}

/// A plain TCP listener at an address that must never be reached; it counts connections.
pub struct Tripwire {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Tripwire {
    /// Bind `ip:port`; `None` when that port is taken on this address.
    pub async fn bind(ip: IpAddr, port: u16) -> Option<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await.ok()?;
        let addr = listener.local_addr().ok()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let connections = connections.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                }
            }
        });
        Some(Self {
            addr,
            connections,
            task,
        })
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The allowed HTTPS server on 127.0.0.1:P plus tripwires on 127.0.0.2:P and [::1]:P, so a
/// forbidden name or literal with the server's port would land on a counter.
pub struct Range {
    pub ca: TestCa,
    pub server: HttpsServer,
    pub tripwires: Vec<Tripwire>,
}

impl Range {
    pub async fn start() -> Self {
        let ca = TestCa::new("mcp-authz CIMD test CA");
        for _ in 0..20 {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let (Some(v4), Some(v6)) = (
                Tripwire::bind("127.0.0.2".parse().expect("ip"), port).await,
                Tripwire::bind("::1".parse().expect("ip"), port).await,
            ) else {
                continue;
            };
            let server = HttpsServer::serve(listener, ca.tls_acceptor(CERT_NAMES));
            return Self {
                ca,
                server,
                tripwires: vec![v4, v6],
            };
        }
        panic!("could not find a port free on 127.0.0.1, 127.0.0.2 and ::1");
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn tripped(&self) -> usize {
        self.tripwires.iter().map(Tripwire::count).sum()
    }

    /// A config that trusts the test CA and may reach 127.0.0.1 (only), with short timeouts.
    pub fn config(&self) -> CimdConfig {
        let mut config = CimdConfig {
            allowed_private_cidrs: vec!["127.0.0.1/32".to_owned()],
            extra_ca_bundle: Some(self.ca.bundle.clone()),
            ..CimdConfig::default()
        };
        config.fetch.connect_timeout_ms = 2000;
        config.fetch.total_timeout_ms = TEST_TOTAL_TIMEOUT_MS;
        config
    }

    pub fn resolver(&self, config: CimdConfig) -> Resolver {
        Resolver::with_dns(config, Arc::new(test_dns())).expect("resolver")
    }

    pub fn resolver_with(&self, config: CimdConfig, dns: Arc<dyn HostResolver>) -> Resolver {
        Resolver::with_dns(config, dns).expect("resolver")
    }

    /// `https://client.test:P{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://client.test:{}{path}", self.port())
    }
}

/// The test names: the allowed one, and names that resolve to forbidden addresses.
pub fn test_dns() -> StaticResolver {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    StaticResolver::new()
        .with("client.test", &[ip("127.0.0.1")])
        .with("a.agents.test", &[ip("127.0.0.1")])
        .with("b.agents.test", &[ip("127.0.0.1")])
        .with("localhost", &[ip("127.0.0.1")])
        .with("loopback2.test", &[ip("127.0.0.2")])
        .with("v6loopback.test", &[ip("::1")])
        .with("mixed.test", &[ip("127.0.0.1"), ip("127.0.0.2")])
        .with("private.test", &[ip("10.0.0.5")])
        .with("metadata.test", &[ip("169.254.169.254")])
        .with("mapped.test", &[ip("::ffff:127.0.0.2")])
        .with("nat64.test", &[ip("64:ff9b::7f00:2")])
        .with("cgnat.test", &[ip("100.64.0.1")])
        .with("ula.test", &[ip("fd00::5")])
        .with("zero.test", &[ip("0.0.0.0")])
        .with("empty.test", &[])
}

/// A valid public-client document for `client_id`.
pub fn document(client_id: &str) -> serde_json::Value {
    serde_json::json!({
        "client_id": client_id,
        "client_name": "Test Agent",
        "redirect_uris": ["http://127.0.0.1/callback", "https://client.test/callback"],
        "token_endpoint_auth_method": "none",
    })
}
