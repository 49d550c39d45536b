//! The official MCP Python SDK on both sides of the sidecar: its streamable-HTTP server as the upstream,
//! its client as the MCP client (handshake-era `legacy` mode and 2026-07-28 `auto` mode).
//! Needs `MCP_AUTHZ_PYTHON` from tests/setup/30-python.sh.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::{ISSUER, RESOURCE, TestKey, claims_for, now};
use serde_json::{Value, json};
use support::JwksServer;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> PathBuf {
    PathBuf::from(std::env::var("MCP_AUTHZ_PYTHON").expect(
        "MCP_AUTHZ_PYTHON is not set: source tests/setup/30-python.sh (tests/run-all does) to get the venv with the MCP SDK",
    ))
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

async fn start_upstream(mode: &str) -> (Killed, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python())
        .arg(script("upstream_server.py"))
        .arg(port.to_string())
        .arg(mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the Python MCP server");
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
    panic!("the Python MCP server did not listen on {port}");
}

async fn run_client(url: &str, token: &str, mode: &str) -> Value {
    let mut command = Command::new(python());
    command.arg(script("client.py")).args([url, token, mode]);
    // The sidecar runs on this runtime's threads while the client process runs.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the Python MCP client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn config(upstream_port: u16, jwks: &str) -> SidecarConfig {
    SidecarConfig::parse(&format!(
        "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nupstream: http://127.0.0.1:{upstream_port}\n\
         resource: {RESOURCE}\nissuer: {ISSUER}\njwksUri: {jwks}\nscopesSupported: [mcp:read]\n\
         scopeImplies: {{'mcp:admin': ['mcp:read']}}\n\
         rules:\n\
         - {{method: tools/call, name: 'get_*', scopes: [mcp:read]}}\n\
         - {{method: tools/call, name: whoami, scopes: [mcp:read]}}\n\
         - {{method: tools/call, name: 'delete_*', scopes: [mcp:admin]}}\n"
    ))
    .unwrap()
}

async fn through_the_sidecar(server_mode: &str) {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let (_server, port) = start_upstream(server_mode).await;
    let sidecar = Sidecar::start(config(port, &jwks.url())).await.unwrap();
    let url = format!("http://{}/mcp", sidecar.proxy_addr);
    let token = |scope: &str| {
        let mut claims = claims_for(now());
        claims["scope"] = json!(scope);
        key.sign(&claims)
    };
    for client_mode in ["legacy", "auto"] {
        let reader = run_client(&url, &token("mcp:read"), client_mode).await;
        let expected_version = match client_mode {
            "auto" => "2026-07-28",
            _ => "2025-11-25",
        };
        assert_eq!(
            reader["protocol_version"], expected_version,
            "{client_mode}: the era the connection settled on through the sidecar: {reader}"
        );
        assert_eq!(
            reader["tools"],
            json!(["get_region", "get_user", "whoami"]),
            "{client_mode}: {reader}"
        );
        assert_eq!(
            reader["get_user"],
            json!(["user bob"]),
            "{client_mode}: {reader}"
        );
        // On 2026-07-28 the client mirrors the annotated argument into `Mcp-Param-Region`; the sidecar checks
        // it against the body and forwards it.
        let mirrored = match client_mode {
            "auto" => "eu-north1|header:eu-north1",
            _ => "eu-north1|header:-",
        };
        assert_eq!(
            reader["get_region"],
            json!([mirrored]),
            "{client_mode}: {reader}"
        );
        assert_eq!(
            reader["whoami"],
            json!(["alice|https://client.example/cimd.json|mcp:read|authorization:absent"]),
            "{client_mode}: identity arrives as headers, the token never does"
        );
        let refusal = reader["delete_user_error"]
            .as_str()
            .unwrap_or_else(|| panic!("{client_mode}: {reader}"));
        // The SDK reads the JSON-RPC error the sidecar puts in its 403 body.
        assert_eq!(
            refusal, "MCPError: insufficient scope: this operation needs mcp:admin",
            "{client_mode}"
        );
        assert!(reader.get("delete_user").is_none());

        let admin = run_client(&url, &token("mcp:admin"), client_mode).await;
        assert_eq!(
            admin["tools"],
            json!(["delete_user", "get_region", "get_user", "whoami"]),
            "{client_mode}: {admin}"
        );
        assert_eq!(
            admin["delete_user"],
            json!(["deleted bob"]),
            "{client_mode}: {admin}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_client_and_server_through_the_sidecar_sse_answers() {
    through_the_sidecar("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_client_and_server_through_the_sidecar_json_answers() {
    through_the_sidecar("json").await;
}
