//! Decisions against upstreams that read a request differently from its text: resource URIs as URL parsers
//! read them, completions by what they complete, answers routed by request id.
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::{ISSUER, RESOURCE, TestKey};
use serde_json::{Value, json};
use support::{Harness, JwksServer, Upstream};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn config_with(upstream: &str, jwks: &str, rules: &str) -> SidecarConfig {
    SidecarConfig::parse(&format!(
        "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nupstream: {upstream}\nresource: {RESOURCE}\n\
         issuer: {ISSUER}\njwksUri: {jwks}\nscopesSupported: [mcp:read]\n{rules}"
    ))
    .unwrap()
}

/// A harness like `Harness::start` with the rules of one test.
async fn harness_with(rules: &str) -> Harness {
    Harness::start_with(|upstream, jwks| config_with(upstream, jwks, rules)).await
}

fn read(id: u64, uri: &str) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"resources/read","params":{"uri":uri}}).to_string()
}

// The TypeScript SDK's McpServer looks resources up by `new URL(uri).toString()`, which resolves `..` and
// `%2e%2e` segments, turns `\` into `/`, lowercases the scheme and host, and strips tabs. `*` in the rules
// matches `/`, so `file:///public/*` must not admit `file:///public/../secret.txt`.

/// The README's own example rule: public files need no scope, nothing else is allowed.
const PUBLIC_ONLY: &str = "
rules:
  - {method: resources/read, name: 'file:///public/*', scopes: []}
unmatched: deny
";

#[tokio::test]
async fn dot_segments_in_a_resource_uri_do_not_escape_an_allowed_prefix() {
    let h = harness_with(PUBLIC_ONLY).await;
    let token = h.token("mcp:read");
    let mut forwarded = Vec::new();
    for (id, uri) in [
        (1, "file:///public/../secret.txt"),
        (2, "file:///public/%2e%2e/secret.txt"),
        (3, r"file:///public/..\secret.txt"),
    ] {
        let (status, _, _) = h.post(Some(&token), &read(id, uri)).await;
        if status != StatusCode::FORBIDDEN {
            forwarded.push(uri);
        }
    }
    // Each is file:///secret.txt to an upstream that normalises the URI (TypeScript SDK: new URL).
    assert!(
        forwarded.is_empty(),
        "forwarded as inside file:///public/: {forwarded:?}"
    );
}

/// Specific-first, broad-later rules (as the tool rules in the README are written).
const SECRET_FIRST: &str = "
scopeImplies: {mcp:admin: [mcp:read]}
rules:
  - {method: resources/read, name: 'file:///secret*', scopes: [mcp:admin]}
  - {method: resources/read, name: 'file:///*', scopes: [mcp:read]}
unmatched: deny
";

#[tokio::test]
async fn a_resource_uri_spelled_differently_still_needs_the_scope_of_its_resource() {
    let h = harness_with(SECRET_FIRST).await;
    let token = h.token("mcp:read");
    let (status, _, _) = h.post(Some(&token), &read(1, "file:///secret.txt")).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the plain spelling is refused"
    );
    // Each of these is file:///secret.txt to WHATWG URL parsing (TypeScript SDK McpServer's lookup key).
    let mut forwarded = Vec::new();
    for (id, uri) in [
        (2, "file:///./secret.txt"),
        (3, "file:///x/../secret.txt"),
        (4, "file:///x/%2E%2E/secret.txt"),
        (5, "file:///sec\tret.txt"),
    ] {
        let (status, _, _) = h.post(Some(&token), &read(id, uri)).await;
        if status != StatusCode::FORBIDDEN {
            forwarded.push(uri);
        }
    }
    assert!(
        forwarded.is_empty(),
        "reached the upstream with only mcp:read: {forwarded:?}"
    );
}

// Upstreams route answers by request id within a session (Python SDK streamable_http.py: `request_id =
// str(message.id)`, `self._request_streams[request_id] = ...`), so a second in-flight POST with the same id
// (`"1"` for `1`) would take over the first one's answer: a `tools/list` answer on a `tools/call` POST, which
// the sidecar does not filter as a list. Such a second request is refused.

type Streams = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>>;

/// An upstream that routes answers the way the Python SDK's streamable HTTP transport (JSON mode) does: each
/// POST registers a stream under `str(id)` (replacing any earlier one) and answers with the first message
/// routed to it; every answer goes to the stream registered under its id when it is ready. `tools/list`
/// takes 300 ms (a list built from a database, say), `tools/call` 600 ms.
async fn id_routing_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams: Streams = Arc::new(Mutex::new(HashMap::new()));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let streams = streams.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let streams = streams.clone();
                    async move {
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let message: Value = serde_json::from_slice(&body).unwrap();
                        let id = message["id"].clone();
                        let key = match &id {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        let (tx, mut rx) = mpsc::unbounded_channel();
                        streams.lock().unwrap().insert(key.clone(), tx);
                        let (delay, answer) = match message["method"].as_str() {
                            Some("tools/list") => (300, support::tools_list_result(&id)),
                            Some("tools/call") => (
                                600,
                                json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}}),
                            ),
                            _ => (0, json!({"jsonrpc":"2.0","id":id,"result":{}})),
                        };
                        // The session's handler runs on its own and routes its answer by id.
                        let router = streams.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            if let Some(slot) = router.lock().unwrap().get(&key) {
                                let _ = slot.send(answer);
                            }
                        });
                        let routed = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or(json!({"jsonrpc":"2.0","id":id,"error":{"code":-32603,"message":"no answer"}}));
                        let mut r = Response::new(Full::new(Bytes::from(routed.to_string())));
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        r.headers_mut()
                            .insert("mcp-session-id", "session-1".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_request_reusing_an_id_in_flight_cannot_take_over_its_answer() {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let (upstream_url, upstream_task) = id_routing_upstream().await;
    let h = Harness {
        sidecar: Sidecar::start(support::config(&upstream_url, &jwks.url()))
            .await
            .unwrap(),
        key,
        jwks,
        upstream: Upstream::start().await,
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    h.wait_ready().await;
    let token = h.token("mcp:read");
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string();
    // An allowed call (get_* needs mcp:read) with the same id as the client reads it (`"1"` for `1`).
    let call = json!({"jsonrpc":"2.0","id":"1","method":"tools/call","params":{"name":"get_user","arguments":{}}}).to_string();
    let in_session = |body: &str| {
        let mut request = support::post_request(&h.url("/mcp"), Some(&token), body);
        request
            .headers_mut()
            .insert("mcp-session-id", "session-1".parse().unwrap());
        request
    };
    // The session is opened for this caller first: only it may use the session.
    let ping = json!({"jsonrpc":"2.0","id":0,"method":"ping"}).to_string();
    let (opened, _, body) = h
        .send(support::post_request(&h.url("/mcp"), Some(&token), &ping))
        .await;
    assert_eq!(opened, StatusCode::OK, "{body}");
    let first = h.send(in_session(&list));
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.send(in_session(&call)).await
    };
    let ((_, _, list_body), (call_status, _, call_body)) = tokio::join!(first, second);
    upstream_task.abort();
    assert_eq!(call_status, StatusCode::BAD_REQUEST, "{call_body}");
    assert_eq!(
        call_body,
        r#"{"error":{"code":-32600,"message":"invalid request: a request with this id is still being answered in this session"},"id":null,"jsonrpc":"2.0"}"#
    );
    assert!(
        !list_body.contains("delete_user"),
        "the list POST is filtered: {list_body}"
    );
    assert!(
        !call_body.contains("delete_user"),
        "an mcp:read token saw the admin-only tool in the answer to its tools/call POST: {call_body}"
    );
}

// `completion/complete` names a prompt (`ref/prompt` + `name`) or a resource template (`ref/resource` +
// `uri`) in `params.ref`; completing it shows what getting or reading it would (completion values of a
// template variable are typically resource names), so it needs the same.

const COMPLETIONS: &str = "
scopeImplies: {mcp:admin: [mcp:read]}
rules:
  - {method: resources/read, name: 'file:///secret/*', scopes: [mcp:admin]}
  - {method: resources/read, scopes: [mcp:read]}
  - {method: prompts/get, name: 'admin_*', scopes: [mcp:admin]}
  - {method: prompts/get, scopes: [mcp:read]}
  - {method: completion/complete, scopes: [mcp:read]}
unmatched: deny
";

#[tokio::test]
async fn completions_are_decided_on_what_they_complete() {
    let h = harness_with(COMPLETIONS).await;
    let token = h.token("mcp:read");
    let refs = [
        json!({"type":"ref/resource","uri":"file:///secret/{name}"}),
        json!({"type":"ref/prompt","name":"admin_reset"}),
    ];
    for (id, reference) in refs.into_iter().enumerate() {
        let body = json!({"jsonrpc":"2.0","id":id,"method":"completion/complete",
            "params":{"ref":reference,"argument":{"name":"name","value":""}}});
        let (status, _, answer) = h.post(Some(&token), &body.to_string()).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "completion of {reference} reached the upstream with only mcp:read: {answer}"
        );
    }
}
