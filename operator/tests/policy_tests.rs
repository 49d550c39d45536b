//! `mcp-authz test` and `explain` against the plane they describe: the quickstart's own case file through the
//! real binary, refusals of a broken case file with their exact messages, and every request case of that file
//! sent through a running sidecar (real sockets, a real ES256 token, a real introspection call) with the config
//! `explain` read, which must answer the same.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mcp_authz_operator::manifests;
use mcp_authz_operator::policy::cases::{self, Case};
use mcp_authz_operator::policy::explain::{self, Probe, Token};
use mcp_authz_operator::policy::world::service_view;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::{TestKey, jwks_document};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn quickstart() -> (PathBuf, PathBuf) {
    let dir = repo().join("examples/quickstart");
    (dir.join("manifests"), dir.join("policy-tests.yaml"))
}

fn mcp_authz(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-authz"))
        .args(args)
        .output()
        .expect("run mcp-authz");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_quickstart_case_file_passes_through_the_binary() {
    let (manifests, cases) = quickstart();
    let (code, out, err) = mcp_authz(&[
        "test",
        "-f",
        manifests.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("10 cases, 0 failed\n"), "{out}");
    assert!(
        out.contains("ok    a reader may not delete a note; the 403 asks for notes:write\n"),
        "{out}"
    );
}

#[test]
fn a_failing_case_names_itself_and_explains_and_exits_1() {
    let (manifests, _) = quickstart();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.yaml");
    std::fs::write(
        &file,
        "cases:\n- name: readers delete\n  service: notes\n  scopes: [notes:read]\n  \
         call: {method: tools/call, name: delete_note}\n  expect: allow\n",
    )
    .unwrap();
    let (code, out, _) = mcp_authz(&[
        "test",
        "-f",
        manifests.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FAIL  readers delete: expected allow, got insufficient_scope\n"),
        "{out}"
    );
    assert!(
        out.contains("      decision  insufficient_scope (HTTP 403)\n"),
        "{out}"
    );
    assert!(out.ends_with("1 cases, 1 failed\n"), "{out}");
}

/// A rule's `callers`, decided offline as the sidecar decides it: the quickstart with deleting notes kept for
/// people, checked for a person and for a machine client holding the same scopes.
#[test]
fn callers_are_decided_offline_for_people_and_machines() {
    let (manifests, _) = quickstart();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("manifests");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&manifests).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    let service = copy.join("notes-service.yaml");
    let text = std::fs::read_to_string(&service).unwrap();
    let edited = text.replace(
        "      names: [\"add_note\", \"delete_note\"]\n      scopes: [\"notes:write\"]\n",
        "      names: [\"add_note\", \"delete_note\"]\n      scopes: [\"notes:write\"]\n      callers: People\n",
    );
    assert_ne!(edited, text, "the quickstart's write rule moved");
    std::fs::write(&service, edited).unwrap();
    // And the platform lets the notes service call an inventory API as the person.
    let server = copy.join("authorization-server.yaml");
    let mut text = std::fs::read_to_string(&server).unwrap();
    text.push_str(
        "  tokenExchange:\n    - {from: {name: notes}, audience: 'https://inventory.example.com/api', \
         scopes: [notes:read], header: x-inventory-token}\n",
    );
    std::fs::write(&server, text).unwrap();
    let file = dir.path().join("cases.yaml");
    std::fs::write(
        &file,
        "cases:\n\
         - name: a person deletes\n  service: notes\n  scopes: [notes:read, notes:write]\n  \
           call: {method: tools/call, name: delete_note}\n  expect: allow\n\
         - name: a machine may not, whatever its scopes\n  service: notes\n  caller: machine\n  \
           scopes: [notes:read, notes:write]\n  call: {method: tools/call, name: delete_note}\n  \
           expect: caller_not_admitted\n  error: for people only\n\
         - name: a machine reads\n  service: notes\n  caller: machine\n  scopes: [notes:read]\n  \
           call: {method: tools/call, name: read_note}\n  expect: allow\n",
    )
    .unwrap();
    let (code, out, err) =
        mcp_authz(&["test", "-f", copy.to_str().unwrap(), file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("3 cases, 0 failed\n"), "{out}");
    // `mcp-authz explain` of the notes service of these manifests.
    let explain = |args: &[&str]| {
        let dir = copy.to_str().unwrap();
        mcp_authz(&[&["explain", "-f", dir, "--service", "notes"], args].concat())
    };
    let (code, out, err) = explain(&[
        "--scopes",
        "notes:read notes:write",
        "--caller",
        "machine",
        "--method",
        "tools/call",
        "--name",
        "delete_note",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("callers People"), "{out}");
    assert!(
        out.contains("forbidden: this operation is for people only, not for clients acting alone"),
        "{out}"
    );
    let (code, out, err) = explain(&[
        "--scopes",
        "notes:read",
        "--method",
        "tools/call",
        "--name",
        "read_note",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "upstream  x-inventory-token: <a token for https://inventory.example.com/api, obtained by token exchange>\n"
        ),
        "{out}"
    );
    let (code, _, err) = explain(&["--caller", "robot", "--method", "tools/list"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid value 'robot' for '--caller <CALLER>'"),
        "{err}"
    );
}

#[test]
fn case_files_that_cannot_run_exit_2_with_the_reason() {
    let (manifests, _) = quickstart();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 4] = [
        (
            "cases:\n- name: x\n  service: nope\n  call: {method: tools/list}\n  expect: allow\n",
            "case 0 (x): no MCPService nope in the manifests (they hold: default/notes)",
        ),
        (
            "cases:\n- name: both\n  service: notes\n  call: {method: tools/list}\n  body: {}\n  expect: allow\n",
            "case 0 (both): give exactly one of call, body and client",
        ),
        (
            "cases:\n- name: typo\n  service: notes\n  cal: {method: tools/list}\n  expect: allow\n",
            "unknown field `cal`",
        ),
        (
            "cases:\n- name: h\n  service: notes\n  call: {method: tools/list}\n  headers: {a: b}\n  expect: allow\n",
            "case 0 (h): headers go with body, not with call",
        ),
    ];
    for (text, message) in cases {
        let file = dir.path().join("cases.yaml");
        std::fs::write(&file, text).unwrap();
        let (code, out, err) = mcp_authz(&[
            "test",
            "-f",
            manifests.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{text}: {out}{err}");
        assert!(err.contains(message), "{text}: {err}");
    }
}

#[test]
fn explain_reads_a_token_s_claims_and_says_the_signature_was_not_checked() {
    let (manifests, _) = quickstart();
    let key = TestKey::es256("k");
    let now = cases::now();
    let claims = |aud: &str| {
        json!({"iss": "https://auth.quickstart.example", "aud": aud, "sub": "alice",
               "client_id": "https://agent.example/cimd.json", "scope": "notes:read",
               "iat": now, "exp": now + 600})
    };
    let good = key.sign(&claims("https://mcp.quickstart.example/mcp"));
    let args = |token: &str| -> Vec<String> {
        [
            "explain",
            "-f",
            manifests.to_str().unwrap(),
            "--service",
            "notes",
            "--token",
            token,
            "--method",
            "tools/call",
            "--name",
            "read_note",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |token: &str| {
        let a = args(token);
        mcp_authz(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, out, err) = run(&good);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("its signature was not"), "{err}");
    assert!(
        out.contains("decision  allow: forwarded to the MCP server\n"),
        "{out}"
    );
    assert!(
        out.contains("upstream  x-mcp-authz-subject: alice\n"),
        "{out}"
    );

    let other = key.sign(&claims("https://other.example/mcp"));
    let (_, out, _) = run(&other);
    assert!(
        out.contains("decision  token_audience (HTTP 401)\n"),
        "{out}"
    );
    assert!(out.contains("the token is for another audience"), "{out}");
}

/// One HTTP/1.1 server for the sidecar's three outside parties: the issuer's JWKS and introspection, and the
/// MCP server (which answers every call with an empty result, and a tools/list with the quickstart's tools).
async fn outside(jwks: String, active: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (jwks, active) = (jwks.clone(), active.clone());
            tokio::spawn(async move { serve(stream, &jwks, &active).await });
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, jwks: &str, active: &AtomicBool) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + length {
            continue;
        }
        let body = buf[end + 4..end + 4 + length].to_vec();
        let answer = if head.starts_with("get /jwks") {
            jwks.to_owned()
        } else if head.starts_with("post /introspect") {
            json!({"active": active.load(Ordering::SeqCst)}).to_string()
        } else {
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            json!({"jsonrpc": "2.0", "id": request["id"], "result": {"content": []}}).to_string()
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        buf.drain(..end + 4 + length);
    }
}

#[tokio::test]
async fn every_request_case_gets_the_same_answer_from_a_running_sidecar() {
    let (manifests_dir, cases_file) = quickstart();
    let set = manifests::load_dirs(&[manifests_dir], "default").unwrap();
    let file = cases::read(&cases_file).unwrap();
    let key = TestKey::es256("k1");
    let active = Arc::new(AtomicBool::new(true));
    let addr = outside(jwks_document(&[&key]), active.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let key_file = state.path().join("sidecar.key.pem");
    std::fs::write(
        &key_file,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();

    let mut compared = 0;
    for case in file.cases.iter().filter(|c| c.client.is_none()) {
        let view = service_view(&set, &case.service).unwrap();
        // Only where the parties are reached changes; the decision's inputs are the rendered ones.
        let mut config = view.sidecar.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.upstream = format!("http://{addr}");
        config.jwks_uri = format!("http://{addr}/jwks");
        config.issuer_ca_file = None;
        if let Some(introspection) = config.introspection.as_mut() {
            introspection.endpoint = format!("http://{addr}/introspect");
            introspection.private_key_file = key_file.clone();
        }
        let sidecar = Sidecar::start(config.clone()).await.unwrap();
        active.store(case.active, Ordering::SeqCst);

        let probe = probe_of(case);
        let expected = explain::explain(&view, &token_of(case), &probe);
        let now = cases::now();
        let token = key.sign(&json!({
            "iss": config.issuer, "aud": config.resource, "sub": "alice",
            "client_id": "https://agent.example/cimd.json", "scope": case.scopes.join(" "),
            "mcp_authz_caller": case.caller.as_str(), "iat": now, "exp": now + 600, "jti": format!("t-{compared}"),
        }));
        let client = post_over_socket(sidecar.proxy_addr, &config.mcp_path, &token, &probe).await;
        let (status, www_authenticate, body) = client;
        let what = &case.name;
        assert_eq!(status, expected.decision.status, "{what}: status");
        assert_eq!(
            www_authenticate, expected.decision.challenge,
            "{what}: challenge"
        );
        if expected.decision.decision != "allow" {
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(Some(body), expected.decision.body, "{what}: body");
        }
        assert_eq!(
            expected.decision.decision, case.expect,
            "{what}: the case file's own expectation"
        );
        sidecar.shutdown().await;
        compared += 1;
    }
    assert_eq!(
        compared, 8,
        "every request case of the quickstart's file was compared"
    );
}

fn probe_of(case: &Case) -> Probe {
    if let Some(call) = &case.call {
        return Probe::call(
            &call.method,
            call.name.as_deref(),
            call.protocol_version.as_deref(),
        );
    }
    let mut headers = http::HeaderMap::new();
    for (name, value) in &case.headers {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let body = case.body.as_ref().map(Value::to_string).unwrap_or_default();
    Probe::from_body(body.into(), headers)
}

fn token_of(case: &Case) -> Token {
    Token {
        scopes: case.scopes.clone(),
        client_id: Some("https://agent.example/cimd.json".into()),
        subject: Some("alice".into()),
        caller: case.caller,
        active: case.active,
        refused: None,
    }
}

/// POSTs the probe with the token over a plain socket; answers the status, the `WWW-Authenticate` value and
/// the body.
async fn post_over_socket(
    addr: SocketAddr,
    path: &str,
    token: &str,
    probe: &Probe,
) -> (u16, Option<String>, String) {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         content-length: {}\r\nconnection: close\r\n",
        probe.body.len()
    );
    for (name, value) in &probe.headers {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&probe.body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let www_authenticate = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("www-authenticate")
            .then(|| value.trim().to_owned())
    });
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, www_authenticate, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        text = &rest[size + 2..];
    }
    out
}
