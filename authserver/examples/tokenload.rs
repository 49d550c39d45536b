//! Load on an authorization server's token and introspection endpoints: `client_credentials` tokens and
//! client-authenticated introspection, every client assertion unique (so its `jti` is recorded), from this
//! process pinned to one core, for a fixed time. It drives mcp-authz and Keycloak alike
//! (`tests/bench/authserver-vs-keycloak.sh` runs both).
//!
//! ```text
//! cargo build --release -p mcp-authz-authserver --bin mcp-authz-server --example tokenload
//! tokenload SERVER [seconds] [connections] [rounds]   # starts mcp-authz (SQLite, pinned to core 0) each round
//! tokenload keys DIR                                  # an ES256 client key: DIR/client.pem, client.kid, client.jwk.json
//! tokenload run --url URL [--url URL2] --mode token|introspect --auth jwt|basic --client-id ID
//!               [--key DIR | --secret S] --aud ISSUER [--resource R] [--token-path P] [--introspect-path P]
//!               [--seconds 10] [--connections 16] [--warmup 0] [--pids 1,2,3]
//! ```
//!
//! `run` prints one line: operations per second, the CPU per operation of the processes in `--pids` (user +
//! system time from /proc, their reaped children included), and the load average. Every answer must be 200
//! (an introspection must say `"active":true`): a round that sees anything else is an error, not a figure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const RESOURCE: &str = "https://mcp.example.com/files";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Bodies made ahead per second of a measured run: above any rate expected on one core. A run that uses them
/// all ends there (its rate is still right: operations over the time they took).
const BODIES_PER_SECOND: usize = 20_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("keys") => write_keys(Path::new(args.get(1).expect("tokenload keys DIR"))),
        Some("run") => {
            let opts = Options::parse(&args[1..]);
            let result = run(&opts);
            println!(
                "{} {:.0} /s, server CPU {:.1} µs per op, {} ops in {:.2} s, load {}",
                opts.mode,
                result.rate,
                result.cpu_per_op_us,
                result.done,
                result.elapsed,
                load_average()
            );
        }
        Some(_) => self_contained(&args),
        None => {
            eprintln!(
                "usage: tokenload SERVER [seconds] [connections] [rounds] | keys DIR | run ..."
            );
            std::process::exit(2);
        }
    }
}

/// What a `run` is told.
struct Options {
    urls: Vec<String>,
    mode: String,
    auth: String,
    client_id: String,
    key: Option<PathBuf>,
    secret: Option<String>,
    aud: String,
    resource: Option<String>,
    token_path: String,
    introspect_path: String,
    seconds: u64,
    connections: usize,
    warmup: u64,
    pids: Vec<u32>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let mut o = Options {
            urls: Vec::new(),
            mode: "token".into(),
            auth: "jwt".into(),
            client_id: String::new(),
            key: None,
            secret: None,
            aud: String::new(),
            resource: None,
            token_path: "/token".into(),
            introspect_path: "/introspect".into(),
            seconds: 10,
            connections: 16,
            warmup: 0,
            pids: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone();
            match flag.as_str() {
                "--url" => o.urls.push(value),
                "--mode" => o.mode = value,
                "--auth" => o.auth = value,
                "--client-id" => o.client_id = value,
                "--key" => o.key = Some(value.into()),
                "--secret" => o.secret = Some(value),
                "--aud" => o.aud = value,
                "--resource" => o.resource = Some(value),
                "--token-path" => o.token_path = value,
                "--introspect-path" => o.introspect_path = value,
                "--seconds" => o.seconds = value.parse().expect("--seconds"),
                "--connections" => o.connections = value.parse().expect("--connections"),
                "--warmup" => o.warmup = value.parse().expect("--warmup"),
                "--pids" => {
                    o.pids = value
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| p.parse().expect("--pids"))
                        .collect()
                }
                other => panic!("unknown option {other}"),
            }
        }
        assert!(!o.urls.is_empty(), "--url is needed");
        assert!(
            o.mode == "token" || o.mode == "introspect",
            "--mode token|introspect"
        );
        o
    }
}

/// A client's credentials, and the request bodies and headers it makes.
struct Client {
    id: String,
    aud: String,
    /// ES256 key and its kid (`jwt`), or the secret (`basic`).
    key: Option<(jsonwebtoken::EncodingKey, String)>,
    basic: Option<String>,
}

impl Client {
    fn new(o: &Options) -> Client {
        let (key, basic) = match o.auth.as_str() {
            "jwt" => {
                let dir = o.key.as_ref().expect("--key DIR with --auth jwt");
                let pem = std::fs::read(dir.join("client.pem")).unwrap();
                let kid = std::fs::read_to_string(dir.join("client.kid")).unwrap();
                (
                    Some((
                        jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
                        kid.trim().to_owned(),
                    )),
                    None,
                )
            }
            "basic" => {
                let secret = o.secret.as_ref().expect("--secret with --auth basic");
                let pair = format!("{}:{secret}", o.client_id);
                (
                    None,
                    Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    )),
                )
            }
            other => panic!("--auth jwt|basic, not {other}"),
        };
        Client {
            id: o.client_id.clone(),
            aud: o.aud.clone(),
            key,
            basic,
        }
    }

    /// The form fields that authenticate one request: a fresh assertion each time, or none (the secret goes in
    /// the Authorization header).
    fn auth_fields(&self, form: &mut url::form_urlencoded::Serializer<String>) {
        if let Some((key, kid)) = &self.key {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.kid = Some(kid.clone());
            let now = mcp_authz_authserver::clock::now_secs();
            let claims = json!({
                "iss": self.id, "sub": self.id, "aud": self.aud, "exp": now + 600, "iat": now,
                "jti": mcp_authz_authserver::secrets::random_token(),
            });
            let assertion = jsonwebtoken::encode(&header, &claims, key).unwrap();
            form.append_pair("client_assertion_type", JWT_BEARER)
                .append_pair("client_assertion", &assertion);
        }
    }

    fn token_body(&self, resource: Option<&str>) -> Bytes {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(r) = resource {
            form.append_pair("resource", r);
        }
        self.auth_fields(&mut form);
        Bytes::from(form.finish())
    }

    fn introspect_body(&self, token: &str) -> Bytes {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token)
            .append_pair("token_type_hint", "access_token");
        self.auth_fields(&mut form);
        Bytes::from(form.finish())
    }
}

struct Outcome {
    done: usize,
    elapsed: f64,
    rate: f64,
    cpu_per_op_us: f64,
}

fn run(o: &Options) -> Outcome {
    let client = Client::new(o);
    let path = if o.mode == "token" {
        o.token_path.clone()
    } else {
        o.introspect_path.clone()
    };
    // Tokens to introspect: a few hundred, taken from the first URL (a replica's token is good at the others).
    let tokens: Vec<String> = if o.mode == "introspect" {
        let bodies: Vec<Bytes> = (0..256)
            .map(|_| client.token_body(o.resource.as_deref()))
            .collect();
        let answers = drive(
            &o.urls[..1],
            &o.token_path,
            client.basic.as_deref(),
            Bodies::Made(Arc::new(bodies)),
            4,
            Duration::from_secs(3600),
            Check::Status,
        )
        .answers;
        answers
            .iter()
            .map(|b| {
                let v: Value = serde_json::from_slice(b).unwrap();
                v["access_token"].as_str().unwrap().to_owned()
            })
            .collect()
    } else {
        Vec::new()
    };
    let check = if o.mode == "token" {
        Check::Status
    } else {
        Check::Active
    };
    let make = |i: usize| -> Bytes {
        if o.mode == "token" {
            client.token_body(o.resource.as_deref())
        } else {
            client.introspect_body(&tokens[i % tokens.len()])
        }
    };
    if o.warmup > 0 {
        // Made as they are sent: the warm-up's rate does not matter, only that the server has run.
        let n = o.warmup as usize * BODIES_PER_SECOND / 4;
        let bodies: Vec<Bytes> = (0..n).map(make).collect();
        drive(
            &o.urls,
            &path,
            client.basic.as_deref(),
            Bodies::Made(Arc::new(bodies)),
            o.connections,
            Duration::from_secs(o.warmup),
            check,
        );
    }
    let bodies: Vec<Bytes> = match &client.key {
        Some(_) => (0..o.seconds as usize * BODIES_PER_SECOND)
            .map(make)
            .collect(),
        // A basic-authenticated request's body does not change: a few hundred, sent round and round.
        None => (0..tokens.len().max(1)).map(make).collect(),
    };
    let bodies = match &client.key {
        Some(_) => Bodies::Made(Arc::new(bodies)),
        None => Bodies::Cycled(Arc::new(bodies)),
    };
    let cpu_before = cpu_seconds(&o.pids);
    let driven = drive(
        &o.urls,
        &path,
        client.basic.as_deref(),
        bodies,
        o.connections,
        Duration::from_secs(o.seconds),
        check,
    );
    let cpu = cpu_seconds(&o.pids) - cpu_before;
    let elapsed = driven.elapsed.as_secs_f64();
    Outcome {
        done: driven.done,
        elapsed,
        rate: driven.done as f64 / elapsed,
        cpu_per_op_us: cpu / driven.done as f64 * 1e6,
    }
}

/// Request bodies: each used once (fresh assertions), or the same few again and again.
#[derive(Clone)]
enum Bodies {
    Made(Arc<Vec<Bytes>>),
    Cycled(Arc<Vec<Bytes>>),
}

#[derive(Clone, Copy)]
enum Check {
    Status,
    Active,
}

struct Driven {
    done: usize,
    elapsed: Duration,
    /// The answers' bodies, kept only for the first 256 (to read tokens from).
    answers: Vec<Bytes>,
}

/// Runs `connections` keep-alive connections spread over `urls`, each posting the next body, until `length` has
/// passed or the bodies ran out.
fn drive(
    urls: &[String],
    path: &str,
    authorization: Option<&str>,
    bodies: Bodies,
    connections: usize,
    length: Duration,
    check: Check,
) -> Driven {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let targets: Vec<(String, String)> = urls
        .iter()
        .map(|u| {
            let url = url::Url::parse(u).unwrap();
            let host = url.host_str().unwrap().to_owned();
            let port = url.port_or_known_default().unwrap();
            (
                format!("{host}:{port}"),
                format!("{}{path}", url.path().trim_end_matches('/')),
            )
        })
        .collect();
    let authorization = authorization.map(str::to_owned);
    runtime.block_on(async move {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let deadline = started + length;
        let mut tasks = Vec::new();
        for c in 0..connections {
            let (bodies, next) = (bodies.clone(), next.clone());
            let (address, path) = targets[c % targets.len()].clone();
            let authorization = authorization.clone();
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut done = 0usize;
                let mut answers = Vec::new();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let body = match &bodies {
                        Bodies::Made(all) => match all.get(i) {
                            Some(b) => b.clone(),
                            None => break,
                        },
                        Bodies::Cycled(all) => all[i % all.len()].clone(),
                    };
                    let mut request = Request::post(path.as_str())
                        .header("host", address.as_str())
                        .header("content-type", "application/x-www-form-urlencoded");
                    if let Some(a) = &authorization {
                        request = request.header("authorization", a.as_str());
                    }
                    let response = sender
                        .send_request(request.body(Full::new(body)).unwrap())
                        .await
                        .unwrap();
                    let status = response.status();
                    let bytes = response.into_body().collect().await.unwrap().to_bytes();
                    let text = || String::from_utf8_lossy(&bytes).into_owned();
                    assert_eq!(status, 200, "{}", text());
                    if let Check::Active = check {
                        assert!(
                            bytes.windows(13).any(|w| w == b"\"active\":true"),
                            "not active: {}",
                            text()
                        );
                    }
                    if answers.len() < 256 {
                        answers.push(bytes);
                    }
                    done += 1;
                }
                (done, answers)
            }));
        }
        let mut total = 0;
        let mut answers = Vec::new();
        for t in tasks {
            let (done, mut a) = t.await.unwrap();
            total += done;
            answers.append(&mut a);
        }
        answers.truncate(256);
        Driven {
            done: total,
            elapsed: started.elapsed(),
            answers,
        }
    })
}

/// User + system time of the processes, and of their children they reaped, in seconds. A process gone by the
/// second reading is left out of both.
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| process_cpu(*p)).sum()
}

fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which sits in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    Some(ticks / 100.0)
}

/// `keys DIR`: an ES256 client key, its kid (RFC 7638 thumbprint) and its public JWK.
fn write_keys(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (pem, kid) = mcp_authz_authserver::keys::generate_es256().unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pem_der(&pem),
    )
    .unwrap();
    let (mut jwk, _) = mcp_authz_authserver::keys::public_jwk(
        aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref(),
    )
    .unwrap();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    std::fs::write(dir.join("client.pem"), &pem).unwrap();
    std::fs::write(dir.join("client.kid"), &kid).unwrap();
    std::fs::write(dir.join("client.jwk.json"), jwk.to_string()).unwrap();
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// The first form: starts the server itself each round (SQLite in a temp dir, pinned to core 0) and loads its
/// token endpoint from core 1.
fn self_contained(args: &[String]) {
    let server = PathBuf::from(&args[0]);
    let seconds: u64 = args.get(1).map_or(10, |s| s.parse().unwrap());
    let connections: usize = args.get(2).map_or(16, |s| s.parse().unwrap());
    let rounds: usize = args.get(3).map_or(3, |s| s.parse().unwrap());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_core, load_core) = if cores > 1 { ("0", "1") } else { ("0", "0") };
    pin_self(load_core);
    let mut rates = Vec::new();
    let mut cpu_per_token = Vec::new();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        write_keys(&dir.path().join("client"));
        let port = free_port();
        let config = write_config(dir.path(), port);
        let mut child = start(&server, server_core, &config);
        wait_ready(port, &config.with_file_name("server.log"));
        let issuer = format!("http://127.0.0.1:{port}");
        let opts = Options::parse(&[
            "--url".into(),
            issuer.clone(),
            "--client-id".into(),
            "svc".into(),
            "--key".into(),
            dir.path().join("client").display().to_string(),
            "--aud".into(),
            issuer,
            "--resource".into(),
            RESOURCE.into(),
            "--seconds".into(),
            seconds.to_string(),
            "--connections".into(),
            connections.to_string(),
            "--pids".into(),
            child.id().to_string(),
        ]);
        let result = run(&opts);
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "round {round}: {} tokens in {:.2} s = {:.0} tokens/s, server CPU {:.0} µs per token, load {}",
            result.done,
            result.elapsed,
            result.rate,
            result.cpu_per_op_us,
            load_average()
        );
        rates.push(result.rate);
        cpu_per_token.push(result.cpu_per_op_us);
    }
    println!(
        "median: {:.0} tokens/s, {:.0} µs server CPU per token ({rounds} rounds, {seconds} s, {connections} connections)",
        median(&mut rates),
        median(&mut cpu_per_token)
    );
}

/// A one-client, one-resource server config in `dir` (SQLite), the client allowed to introspect too.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let jwk: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("client/client.jwk.json")).unwrap())
            .unwrap();
    std::fs::write(dir.join("admin"), "load-admin-token-0123456789").unwrap();
    let config = dir.join("server.yaml");
    let yaml = json!({
        "issuer": format!("http://127.0.0.1:{port}"),
        "listen": format!("127.0.0.1:{port}"),
        "adminListen": "127.0.0.1:0",
        "storage": {"sqlite": {"path": dir.join("as.db")}},
        "signing": {"keysDir": dir.join("keys"), "selfManaged": true},
        "scopes": [{"value": "files:read", "description": "Read"}],
        "resources": [{"resource": RESOURCE, "displayName": "Files", "scopes": ["files:read"]}],
        "clients": [{
            "clientId": "svc", "clientName": "Service", "tokenEndpointAuthMethod": "private_key_jwt",
            "jwks": {"keys": [jwk]}, "grantTypes": ["client_credentials"], "scopes": ["files:read"],
            "introspection": true,
        }],
        "login": {"static": {"users": []}},
        "admin": {"tokenFile": dir.join("admin")},
        // Checked on every request but set above any load one client and one address send here, so the
        // figures include what the limits cost.
        "rateLimits": {
            "tokenPerClient": {"requestsPerSecond": 1_000_000, "burst": 1_000_000},
            "tokenPerAddress": {"requestsPerSecond": 1_000_000, "burst": 1_000_000},
        },
    });
    std::fs::write(&config, serde_json::to_string(&yaml).unwrap()).unwrap();
    config
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
