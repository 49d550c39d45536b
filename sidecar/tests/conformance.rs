//! The MCP conformance suite (npm `@modelcontextprotocol/conformance`) against the reference "everything"
//! server (npm `@modelcontextprotocol/server-everything`), once directly and once through the sidecar behind
//! a tiny test-only forwarder that adds a valid token. Every check that passes directly must pass through
//! the sidecar: the proxy is transparent for everything a token allows.
//! Needs `MCP_AUTHZ_NODE22` and `MCP_AUTHZ_NPM_TOOLS` from tests/setup/40-node.sh.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::{ISSUER, RESOURCE, TestKey, claims_for, now};
use serde_json::{Value, json};
use support::JwksServer;

type Body = BoxBody<bytes::Bytes, hyper::Error>;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: source tests/setup/40-node.sh (tests/run-all does) for Node 22 and the conformance suite")
    }))
}

async fn start_everything_server() -> (Killed, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = env_path("MCP_AUTHZ_NPM_TOOLS")
        .join("@modelcontextprotocol/server-everything/dist/index.js");
    let child = Command::new(env_path("MCP_AUTHZ_NODE22"))
        .arg(server)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the everything server");
    let child = Killed(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the everything server did not listen on {port}");
}

/// Runs the suite against a URL; returns `scenario/check -> status`.
async fn run_suite(url: String, out: PathBuf) -> BTreeMap<String, String> {
    let cli =
        env_path("MCP_AUTHZ_NPM_TOOLS").join("@modelcontextprotocol/conformance/dist/index.js");
    let mut command = Command::new(env_path("MCP_AUTHZ_NODE22"));
    command
        .arg(cli)
        .args(["server", "--url", &url, "-o"])
        .arg(&out);
    // The sidecar serves on this runtime while the suite runs in its own process.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the conformance suite");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut results = BTreeMap::new();
    for entry in std::fs::read_dir(&out)
        .unwrap_or_else(|e| panic!("{e}: no results in {}\n{stdout}", out.display()))
    {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // `server-<scenario>-<YYYY-MM-DDTHH-MM-SS-mmmZ>`
        let scenario = &name["server-".len()..name.len() - "-2026-11-27T10-57-15-114Z".len()];
        let checks: Vec<Value> =
            serde_json::from_slice(&std::fs::read(dir.join("checks.json")).unwrap()).unwrap();
        for check in checks {
            let id = check["id"].as_str().unwrap_or("?");
            let status = check["status"].as_str().unwrap_or("?").to_owned();
            results.insert(format!("{scenario}/{id}"), status);
        }
    }
    assert!(
        !results.is_empty(),
        "the suite produced no checks:\n{stdout}"
    );
    results
}

/// The test-only forwarder: adds the token, streams both ways.
async fn start_forwarder(target: SocketAddr, token: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (client, token) = (client.clone(), token.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (client, token) = (client.clone(), token.clone());
                    async move {
                        let (mut parts, body) = request.into_parts();
                        let path = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default();
                        parts.uri = format!("http://{target}{path}").parse::<Uri>().unwrap();
                        parts.headers.insert(
                            "authorization",
                            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
                        );
                        let response = match client
                            .request(Request::from_parts(parts, body.boxed()))
                            .await
                        {
                            Ok(r) => r.map(|b| b.boxed()),
                            Err(_) => {
                                let mut r = Response::new(
                                    http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
                                );
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn config(upstream_port: u16, jwks: &str) -> SidecarConfig {
    // Every operation needs the one scope the forwarder's token carries: the suite exercises the rules path
    // for each method, not a blanket allow.
    SidecarConfig::parse(&format!(
        "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nupstream: http://127.0.0.1:{upstream_port}\n\
         resource: {RESOURCE}\nissuer: {ISSUER}\njwksUri: {jwks}\nscopesSupported: [mcp:conformance]\n\
         unmatched: {{requireScopes: [mcp:conformance]}}\n\
         rules:\n- {{method: '*', name: '*', scopes: [mcp:conformance]}}\n"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_that_passes_directly_passes_through_the_sidecar() {
    let work = tempfile::tempdir().unwrap();
    let (_server, port) = start_everything_server().await;
    let direct = run_suite(
        format!("http://127.0.0.1:{port}/mcp"),
        work.path().join("direct"),
    )
    .await;

    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let sidecar = Sidecar::start(config(port, &jwks.url())).await.unwrap();
    let mut claims = claims_for(now());
    claims["scope"] = json!("mcp:conformance");
    let forwarder = start_forwarder(sidecar.proxy_addr, key.sign(&claims)).await;
    let proxied = run_suite(
        format!("http://{forwarder}/mcp"),
        work.path().join("proxied"),
    )
    .await;

    let passing: Vec<&String> = direct
        .iter()
        .filter(|(_, s)| *s == "SUCCESS")
        .map(|(k, _)| k)
        .collect();
    assert!(
        passing.len() >= 10,
        "the direct run should pass most basic checks: {direct:?}"
    );
    let regressions: Vec<String> = passing
        .iter()
        .filter(|check| proxied.get(**check).map(String::as_str) != Some("SUCCESS"))
        .map(|check| format!("{check}: {:?}", proxied.get(*check)))
        .collect();
    assert!(
        regressions.is_empty(),
        "checks that pass directly but not through the sidecar: {regressions:#?}"
    );
    println!(
        "conformance: {} checks pass directly and through the sidecar",
        passing.len()
    );
}
