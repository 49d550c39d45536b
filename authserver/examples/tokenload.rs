//! Load on `/token` with `client_credentials` and `private_key_jwt`: the release server pinned to one core, the
//! load from this process on the other, every assertion unique (so its `jti` is recorded), for a fixed time.
//!
//! ```text
//! cargo build --release -p mcp-authz-authserver --bin mcp-authz-server --example tokenload
//! target/release/examples/tokenload target/release/mcp-authz-server [seconds] [connections] [rounds]
//! ```
//!
//! Prints, per round: tokens/s, the server's CPU per token (user + system time from /proc), and the load average;
//! then the medians. A round whose answers are not all 200 is an error, not a figure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

const RESOURCE: &str = "https://mcp.example.com/files";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server = PathBuf::from(
        args.get(1)
            .expect("usage: tokenload SERVER [seconds] [connections] [rounds]"),
    );
    let seconds: u64 = args.get(2).map_or(10, |s| s.parse().unwrap());
    let connections: usize = args.get(3).map_or(16, |s| s.parse().unwrap());
    let rounds: usize = args.get(4).map_or(3, |s| s.parse().unwrap());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_core, load_core) = if cores > 1 { ("0", "1") } else { ("0", "0") };
    pin_self(load_core);

    let mut rates = Vec::new();
    let mut cpu_per_token = Vec::new();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Fixture::write(dir.path());
        let mut child = start(&server, server_core, &fixture.config);
        wait_ready(fixture.port, &fixture.config.with_file_name("server.log"));
        let port = fixture.port;
        // Enough unique assertions for the round at a rate well above any expected.
        let bodies = Arc::new(fixture.bodies(seconds as usize * 12_000));
        let cpu_before = cpu_seconds(child.id());
        let (done, elapsed) = drive(port, bodies, connections, Duration::from_secs(seconds));
        let cpu = cpu_seconds(child.id()) - cpu_before;
        let _ = child.kill();
        let _ = child.wait();
        let rate = done as f64 / elapsed.as_secs_f64();
        let per = cpu / done as f64 * 1e6;
        println!(
            "round {round}: {done} tokens in {:.2} s = {rate:.0} tokens/s, server CPU {per:.0} µs per token, load {}",
            elapsed.as_secs_f64(),
            load_average()
        );
        rates.push(rate);
        cpu_per_token.push(per);
    }
    println!(
        "median: {:.0} tokens/s, {:.0} µs server CPU per token ({rounds} rounds, {seconds} s, {connections} connections)",
        median(&mut rates),
        median(&mut cpu_per_token)
    );
}

struct Fixture {
    config: PathBuf,
    port: u16,
    client_pem: String,
    client_kid: String,
    issuer: String,
}

impl Fixture {
    fn write(dir: &Path) -> Fixture {
        let (client_pem, client_kid) = mcp_authz_authserver::keys::generate_es256().unwrap();
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pem_der(&client_pem),
        )
        .unwrap();
        let (mut jwk, _) = mcp_authz_authserver::keys::public_jwk(
            aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref(),
        )
        .unwrap();
        jwk["kid"] = json!(client_kid);
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        std::fs::write(dir.join("admin"), "load-admin-token-0123456789").unwrap();
        let config = dir.join("server.yaml");
        let yaml = json!({
            "issuer": issuer,
            "listen": format!("127.0.0.1:{port}"),
            "adminListen": "127.0.0.1:0",
            "storage": {"sqlite": {"path": dir.join("as.db")}},
            "signing": {"keysDir": dir.join("keys"), "selfManaged": true},
            "scopes": [{"value": "files:read", "description": "Read"}],
            "resources": [{"resource": RESOURCE, "displayName": "Files", "scopes": ["files:read"]}],
            "clients": [{
                "clientId": "svc", "clientName": "Service", "tokenEndpointAuthMethod": "private_key_jwt",
                "jwks": {"keys": [jwk]}, "grantTypes": ["client_credentials"], "scopes": ["files:read"],
            }],
            "login": {"static": {"users": []}},
            "admin": {"tokenFile": dir.join("admin")},
        });
        std::fs::write(&config, serde_json::to_string(&yaml).unwrap()).unwrap();
        Fixture {
            config,
            port,
            client_pem,
            client_kid,
            issuer,
        }
    }

    fn bodies(&self, n: usize) -> Vec<Bytes> {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.client_pem.as_bytes()).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.client_kid.clone());
        let exp = mcp_authz_authserver::clock::now_secs() + 600;
        (0..n)
            .map(|_| {
                let claims = json!({
                    "iss": "svc", "sub": "svc", "aud": format!("{}/token", self.issuer), "exp": exp,
                    "jti": mcp_authz_authserver::secrets::random_token(),
                });
                let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
                Bytes::from(
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("grant_type", "client_credentials")
                        .append_pair(
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        )
                        .append_pair("client_assertion", &assertion)
                        .append_pair("resource", RESOURCE)
                        .finish(),
                )
            })
            .collect()
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn start(server: &Path, core: &str, config: &Path) -> Child {
    let log = std::fs::File::create(config.with_file_name("server.log")).unwrap();
    Command::new("taskset")
        .args(["-c", core])
        .arg(server)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("taskset and the server binary")
}

fn wait_ready(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the server did not listen on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Runs `connections` keep-alive connections, each posting the next unused body, until `length` has passed.
fn drive(
    port: u16,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    length: Duration,
) -> (usize, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let deadline = started + length;
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (bodies, next) = (bodies.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut done = 0usize;
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let body = bodies
                        .get(i)
                        .expect("more assertions than the round used")
                        .clone();
                    let request = Request::post("/token")
                        .header("host", "127.0.0.1")
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(Full::new(body))
                        .unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    let status = response.status();
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
                    done += 1;
                }
                done
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        (total, started.elapsed())
    })
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which sits in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn pin_self(core: &str) {
    let _ = Command::new("taskset")
        .args(["-cp", core, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}
