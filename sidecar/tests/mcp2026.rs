//! The sidecar as an MCP 2026-07-28 intermediary, over real sockets: a real JWKS server, a real upstream
//! that records what reaches it, real ES256 tokens.

mod support;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::*;

const V: &str = "2026-07-28";

/// Header pairs a test adds to its request (values as bytes: some are not ASCII).
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// A 2026-07-28 request body: the envelope in `params._meta`.
fn modern(id: u64, method: &str, mut params: Value) -> String {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string()
}

fn request(h: &Harness, token: &str, headers: &[(&str, &[u8])], body: &str) -> Request<Body> {
    let mut req = post_request(&h.url("/mcp"), Some(token), body);
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    req
}

fn standard<'a>(method: &'a str, name: Option<&'a str>) -> Headers<'a> {
    let mut headers = vec![
        ("mcp-protocol-version", V.as_bytes()),
        ("mcp-method", method.as_bytes()),
    ];
    if let Some(name) = name {
        headers.push(("mcp-name", name.as_bytes()));
    }
    headers
}

#[tokio::test]
async fn routing_headers_that_disagree_with_the_body_get_400_header_mismatch_and_reach_no_one() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let get_user = modern(
        7,
        "tools/call",
        json!({"name":"get_user","arguments":{"region":"us-west1"}}),
    );
    let legacy = call(8, "get_user");
    let cases: Vec<(&str, Headers, String, Value, &str)> = vec![
        (
            "no MCP-Protocol-Version",
            vec![("mcp-method", b"tools/call"), ("mcp-name", b"get_user")],
            get_user.clone(),
            json!(7),
            "Header mismatch: MCP-Protocol-Version header is missing",
        ),
        (
            "no Mcp-Method",
            vec![
                ("mcp-protocol-version", V.as_bytes()),
                ("mcp-name", b"get_user"),
            ],
            get_user.clone(),
            json!(7),
            "Header mismatch: Mcp-Method header is missing",
        ),
        (
            "no Mcp-Name",
            standard("tools/call", None),
            get_user.clone(),
            json!(7),
            "Header mismatch: Mcp-Name header is missing",
        ),
        (
            "Mcp-Name of another tool (a gateway would route or rate-limit delete_user)",
            standard("tools/call", Some("delete_user")),
            get_user.clone(),
            json!(7),
            "Header mismatch: Mcp-Name header does not match the body's params.name",
        ),
        (
            "Base64 Mcp-Name of another tool",
            standard("tools/call", Some("=?base64?ZGVsZXRlX3VzZXI=?=")),
            get_user.clone(),
            json!(7),
            "Header mismatch: Mcp-Name header does not match the body's params.name",
        ),
        (
            "malformed Base64",
            standard("tools/call", Some("=?base64?Z2V0X3VzZXI?=")),
            get_user.clone(),
            json!(7),
            "Header mismatch: Mcp-Name header carries a malformed base64 value",
        ),
        (
            "Mcp-Method of another method",
            standard("tools/list", Some("get_user")),
            get_user.clone(),
            json!(7),
            "Header mismatch: Mcp-Method header does not match the body's method",
        ),
        (
            "MCP-Protocol-Version other than the envelope's",
            vec![
                ("mcp-protocol-version", b"2025-11-25"),
                ("mcp-method", b"tools/call"),
                ("mcp-name", b"get_user"),
            ],
            get_user.clone(),
            json!(7),
            "Header mismatch: MCP-Protocol-Version header does not match the body's _meta protocol version",
        ),
        (
            "Mcp-Param value the arguments do not have",
            {
                let mut h = standard("tools/call", Some("get_user"));
                h.push(("mcp-param-region", b"eu-north1"));
                h
            },
            get_user.clone(),
            json!(7),
            "Header mismatch: an Mcp-Param header carries a value no argument of the body has",
        ),
        (
            "Mcp-Param sent twice",
            {
                let mut h = standard("tools/call", Some("get_user"));
                h.push(("mcp-param-region", b"us-west1"));
                h.push(("mcp-param-region", b"eu-north1"));
                h
            },
            get_user.clone(),
            json!(7),
            "Header mismatch: an Mcp-Param header appears more than once",
        ),
        (
            "raw non-ASCII Mcp-Param",
            {
                let mut h = standard("tools/call", Some("get_user"));
                h.push(("mcp-param-region", "zürich".as_bytes()));
                h
            },
            get_user.clone(),
            json!(7),
            "Header mismatch: an Mcp-Param header contains characters outside visible ASCII",
        ),
        (
            "2025 body with a 2026-07-28 version header",
            standard("tools/call", Some("get_user")),
            legacy.clone(),
            json!(8),
            "Header mismatch: MCP-Protocol-Version header names a per-request version, the body's _meta names none",
        ),
        (
            "2025 request whose optional Mcp-Name lies",
            vec![
                ("mcp-protocol-version", b"2025-06-18"),
                ("mcp-name", b"delete_user"),
            ],
            legacy.clone(),
            json!(8),
            "Header mismatch: Mcp-Name header does not match the body's params.name",
        ),
        (
            "2025 batch with routing headers",
            vec![("mcp-method", b"tools/call")],
            format!("[{legacy},{}]", call(9, "get_user")),
            Value::Null,
            "Header mismatch: routing headers describe one message, this body is a batch",
        ),
    ];
    for (what, headers, body, id, message) in cases {
        let (status, response_headers, text) = h.send(request(&h, &token, &headers, &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(
            response_headers["content-type"], "application/json",
            "{what}"
        );
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            answer,
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32020,"message":message}}),
            "{what}"
        );
    }
    // A 2026-07-28 batch is not a header problem, and is refused as an invalid request.
    let (status, _, text) = h
        .send(request(
            &h,
            &token,
            &standard("tools/call", Some("get_user")),
            &format!("[{get_user}]"),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,
            "message":"invalid request: a 2026-07-28 request carries a single JSON-RPC message, not a batch"}})
    );
    assert!(h.upstream.seen().is_empty(), "nothing reached the upstream");
    let (_, _, metrics) = h.admin("/metrics").await;
    assert!(
        metrics.contains(
            r#"mcp_authz_sidecar_requests_total{decision="deny",reason="header_mismatch"} 14"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn agreeing_headers_in_every_encoding_reach_the_upstream_unchanged() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let cases: Vec<(Headers, String)> = vec![
        (
            {
                let mut h = standard("tools/call", Some("get_user"));
                h.push(("mcp-param-region", b"us-west1"));
                h.push(("mcp-param-n", b"42"));
                h
            },
            modern(
                1,
                "tools/call",
                json!({"name":"get_user","arguments":{"region":"us-west1","n":42}}),
            ),
        ),
        (
            standard("tools/call", Some("=?base64?Z2V0X3Vzw6ly?=")),
            modern(2, "tools/call", json!({"name":"get_usér","arguments":{}})),
        ),
        (
            standard("server/discover", None),
            modern(3, "server/discover", json!({})),
        ),
        (
            standard("tools/list", None),
            modern(4, "tools/list", json!({})),
        ),
        // 2025: none of the headers is required.
        (vec![], call(5, "get_user")),
        (
            vec![("mcp-protocol-version", b"2025-06-18")],
            call(6, "get_user"),
        ),
    ];
    let n = cases.len();
    for (headers, body) in cases {
        let (status, _, text) = h.send(request(&h, &token, &headers, &body)).await;
        assert_eq!(status, StatusCode::OK, "{body}: {text}");
    }
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), n);
    assert_eq!(seen[0].headers["mcp-param-region"], "us-west1");
    assert_eq!(seen[1].headers["mcp-name"], "=?base64?Z2V0X3Vzw6ly?=");
}

/// An upstream speaking 2026-07-28 results: every cacheable result says `cacheScope: "public"`, as a server
/// that does not know about the sidecar's filtering would. Answers after `delay`; SSE with `?sse=1`.
struct ModernUpstream {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    /// The `Mcp-Session-Id` of each request, in order.
    sessions: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModernUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn modern_result(message: &Value) -> Value {
    let id = message["id"].clone();
    let result = match message["method"].as_str().unwrap_or("") {
        "tools/list" => json!({"tools":[
            {"name":"get_user","inputSchema":{"type":"object"}},
            {"name":"delete_user","inputSchema":{"type":"object"}}],
            "ttlMs":60000,"cacheScope":"public","resultType":"complete"}),
        "resources/read" => json!({"contents":[{"uri":message["params"]["uri"],"text":"hello"}],
            "ttlMs":300000,"cacheScope":"public","resultType":"complete"}),
        "server/discover" => json!({"supportedVersions":[V],"capabilities":{"tools":{}},
            "serverInfo":{"name":"modern","version":"1"},"ttlMs":60000,"cacheScope":"public","resultType":"complete"}),
        _ => json!({"content":[],"resultType":"complete"}),
    };
    json!({"jsonrpc":"2.0","id":id,"result":result})
}

async fn modern_upstream(delay: std::time::Duration) -> ModernUpstream {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sessions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (record, record_session) = (seen.clone(), sessions.clone());
    let (addr, task) = serve(move |request: Request<hyper::body::Incoming>| {
        let (record, record_session) = (record.clone(), record_session.clone());
        async move {
            use http_body_util::BodyExt;
            let session = request
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned());
            record_session.lock().unwrap().push(session);
            let sse = request.uri().query().is_some_and(|q| q.contains("sse=1"));
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            record.lock().unwrap().push(message.clone());
            tokio::time::sleep(delay).await;
            let answer = modern_result(&message);
            let (text, content_type) = if sse {
                (
                    format!("event: message\ndata: {answer}\n\n"),
                    "text/event-stream",
                )
            } else {
                (answer.to_string(), "application/json")
            };
            let mut r = http::Response::new(full(text));
            r.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            r
        }
    })
    .await;
    ModernUpstream {
        url: format!("http://{addr}"),
        seen,
        sessions,
        task,
    }
}

/// A harness whose sidecar forwards to `upstream`, with the given rules.
async fn harness_for(upstream: &str, rules: &str) -> Harness {
    use mcp_authz_sidecar::testing::{ISSUER, RESOURCE};
    let key = mcp_authz_sidecar::testing::TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let config = mcp_authz_sidecar::config::SidecarConfig::parse(&format!(
        "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nupstream: {upstream}\nresource: {RESOURCE}\n\
         issuer: {ISSUER}\njwksUri: {}\nscopesSupported: [mcp:read]\nscopeImplies: {{mcp:admin: [mcp:read]}}\n{rules}",
        jwks.url()
    ))
    .unwrap();
    let h = Harness {
        sidecar: mcp_authz_sidecar::server::Sidecar::start(config)
            .await
            .unwrap(),
        key,
        jwks,
        upstream: Upstream::start().await,
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    };
    h.wait_ready().await;
    h
}

fn sse_data(text: &str) -> Value {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line in {text:?}"));
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn lists_and_reads_decided_for_a_token_come_back_private_whatever_the_server_said() {
    let upstream = modern_upstream(std::time::Duration::ZERO).await;
    let rules = "rules:\n  - {method: tools/call, name: 'get_*', scopes: [mcp:read]}\n  - {method: tools/call, name: 'delete_*', scopes: [mcp:admin]}\n  - {method: resources/read, name: 'file:///public/*', scopes: []}\n";
    let h = harness_for(&upstream.url, rules).await;
    let token = h.token("mcp:read");
    for path in ["/mcp", "/mcp?sse=1"] {
        let list = modern(1, "tools/list", json!({}));
        let mut req = request(&h, &token, &standard("tools/list", None), &list);
        *req.uri_mut() = h.url(path).parse().unwrap();
        let (status, _, text) = h.send(req).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let answer = if path.contains("sse") {
            sse_data(&text)
        } else {
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(
            answer["result"],
            json!({"tools":[{"name":"get_user","inputSchema":{"type":"object"}}],
                "ttlMs":60000,"cacheScope":"private","resultType":"complete"}),
            "{path}"
        );
        let read = modern(
            2,
            "resources/read",
            json!({"uri":"file:///public/readme.txt"}),
        );
        let mut req = request(
            &h,
            &token,
            &standard("resources/read", Some("file:///public/readme.txt")),
            &read,
        );
        *req.uri_mut() = h.url(path).parse().unwrap();
        let (status, _, text) = h.send(req).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let answer = if path.contains("sse") {
            sse_data(&text)
        } else {
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(answer["result"]["cacheScope"], "private", "{path}");
        assert_eq!(answer["result"]["ttlMs"], 300000, "{path}");
    }
    // What the sidecar neither filters nor decides per resource keeps the server's word.
    let discover = modern(3, "server/discover", json!({}));
    let (status, _, text) = h
        .send(request(
            &h,
            &token,
            &standard("server/discover", None),
            &discover,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["result"]["cacheScope"], "public");
    assert_eq!(upstream.seen.lock().unwrap().len(), 5);
}

fn www_authenticate(headers: &http::HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn challenges_name_the_scopes_of_this_request_and_never_offline_access() {
    let upstream = modern_upstream(std::time::Duration::ZERO).await;
    let rules = "rules:\n  - {method: tools/call, name: 'get_*', scopes: [mcp:read]}\n  - {method: tools/call, name: 'delete_*', scopes: [mcp:admin, mcp:audit]}\n  - {method: tools/call, name: 'report_*', scopes: [mcp:reports]}\n";
    let h = harness_for(&upstream.url, rules).await;
    let metadata = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
    let delete = modern(
        1,
        "tools/call",
        json!({"name":"delete_user","arguments":{}}),
    );
    let delete_headers = standard("tools/call", Some("delete_user"));
    // 401 without a token: the scopes this call needs, not scopesSupported, not every scope of the service.
    let mut req = request(&h, "x", &delete_headers, &delete);
    req.headers_mut().remove("authorization");
    let (status, headers, _) = h.send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        www_authenticate(&headers),
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"mcp:admin mcp:audit\"")
    );
    // 401 for a bad token: the same.
    let (status, headers, _) = h
        .send(request(&h, "garbage", &delete_headers, &delete))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        www_authenticate(&headers),
        format!(
            "Bearer error=\"invalid_token\", error_description=\"the token is malformed\", resource_metadata=\"{metadata}\", scope=\"mcp:admin mcp:audit\""
        )
    );
    // A request needing nothing beyond basic use: the basic scopes.
    let list = modern(2, "tools/list", json!({}));
    let mut req = request(&h, "x", &standard("tools/list", None), &list);
    req.headers_mut().remove("authorization");
    let (_, headers, _) = h.send(req).await;
    assert_eq!(
        www_authenticate(&headers),
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"mcp:read\"")
    );
    // 403: every scope the operation needs (the token has one of them), nothing another tool needs.
    let (status, headers, body) = h
        .send(request(
            &h,
            &h.token("mcp:read mcp:audit"),
            &delete_headers,
            &delete,
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        www_authenticate(&headers),
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"mcp:admin mcp:audit\", resource_metadata=\"{metadata}\""
        )
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"jsonrpc":"2.0","id":1,"error":{"code":-32003,
            "message":"insufficient scope: this operation needs mcp:admin mcp:audit"}})
    );
    assert!(upstream.seen.lock().unwrap().is_empty());
    // offline_access is in no challenge above and in no metadata: a config naming it anywhere is refused.
    let (_, _, document) = h
        .send(
            Request::get(h.url("/.well-known/oauth-protected-resource/mcp"))
                .body(body_of(""))
                .unwrap(),
        )
        .await;
    assert!(!document.contains("offline_access"), "{document}");
    let mut config = support::config(&upstream.url, &h.jwks.url());
    config.rules.push(mcp_authz_sidecar::config::ScopeRule {
        method: "tools/call".into(),
        name: Some("refresh_*".into()),
        scopes: vec!["offline_access".into()],
        callers: Default::default(),
    });
    assert_eq!(
        h.sidecar.config.apply(config).unwrap_err().to_string(),
        "invalid config: offline_access is not a resource scope: rules, unmatched and scopeImplies must not name it"
    );
}

fn body_of(text: &'static str) -> Body {
    full(text)
}

#[tokio::test]
async fn modern_requests_need_no_handshake_and_no_session_and_are_never_held_to_one() {
    // Each answer takes 300 ms, so two requests overlap.
    let upstream = modern_upstream(std::time::Duration::from_millis(300)).await;
    let rules = "rules:\n  - {method: tools/call, name: 'get_*', scopes: [mcp:read]}\n  - {method: tools/call, name: 'delete_*', scopes: [mcp:admin]}\n";
    let h = harness_for(&upstream.url, rules).await;
    let token = h.token("mcp:read");
    // No initialize, no Mcp-Session-Id: discovery and a list are answered (the list filtered for the token).
    for (method, body) in [
        ("server/discover", modern(1, "server/discover", json!({}))),
        ("tools/list", modern(2, "tools/list", json!({}))),
    ] {
        let (status, headers, text) = h
            .send(request(&h, &token, &standard(method, None), &body))
            .await;
        assert_eq!(status, StatusCode::OK, "{method}: {text}");
        assert!(headers.get("mcp-session-id").is_none());
        assert!(!text.contains("delete_user"), "{text}");
    }
    // Two requests reusing one id at once, even with a stray session id: each is a request of its own.
    let call = |name: &str| {
        let body = modern(7, "tools/call", json!({"name":name,"arguments":{}}));
        let mut req = request(&h, &token, &standard("tools/call", Some(name)), &body);
        req.headers_mut()
            .insert("mcp-session-id", "session-1".parse().unwrap());
        req
    };
    let (first, second) = tokio::join!(h.send(call("get_user")), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        h.send(call("get_report")).await
    });
    assert_eq!(first.0, StatusCode::OK, "{}", first.2);
    assert_eq!(second.0, StatusCode::OK, "{}", second.2);
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    // The upstream never saw the session id of a modern request.
    let sessions = upstream.sessions.lock().unwrap().clone();
    assert_eq!(sessions, vec![None, None, None, None]);
    // A handshake-era request in a session is still held to its ids (tests/decisions.rs).
}
