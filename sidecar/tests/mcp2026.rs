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
