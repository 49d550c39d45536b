//! The sidecar over real sockets: a real JWKS server, a real upstream, real ES256 tokens.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use mcp_authz_sidecar::testing::{RESOURCE, TestKey, claims_for, now};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

fn www_authenticate(headers: &http::HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn metadata_is_served_at_root_and_path_inserted_forms() {
    let h = Harness::start().await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let (status, headers, body) = h
            .send(Request::get(h.url(path)).body(body(Bytes::new())).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers["access-control-allow-origin"], "*");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            doc,
            json!({"resource": RESOURCE, "authorization_servers": ["https://auth.example.com"],
                   "scopes_supported": ["mcp:read"], "bearer_methods_supported": ["header"]})
        );
    }
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn missing_and_bad_tokens_get_401_challenges_and_never_reach_upstream() {
    let h = Harness::start().await;
    let (status, headers, _) = h.post(None, &call(1, "get_user")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        www_authenticate(&headers),
        format!("Bearer resource_metadata=\"{METADATA_URL}\", scope=\"mcp:read\"")
    );

    let mut expired = claims_for(now() - 7200);
    expired["scope"] = json!("mcp:read");
    let mut wrong_audience = claims_for(now());
    wrong_audience["aud"] = json!("https://other.example.com/mcp");
    let stranger = TestKey::es256("k1");
    let cases = [
        (h.key.sign(&expired), "the token has expired"),
        (
            h.key.sign(&wrong_audience),
            "the token is for another audience",
        ),
        (
            stranger.sign(&claims_for(now())),
            "the token's signature is invalid",
        ),
        ("garbage".to_owned(), "the token is malformed"),
    ];
    for (token, description) in cases {
        let (status, headers, _) = h.post(Some(&token), &call(1, "get_user")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{description}");
        assert_eq!(
            www_authenticate(&headers),
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{description}\", resource_metadata=\"{METADATA_URL}\", scope=\"mcp:read\""
            )
        );
    }
    // GET and DELETE are checked too: a session id is never a credential.
    for method in ["GET", "DELETE"] {
        let req = Request::builder()
            .method(method)
            .uri(h.url("/mcp"))
            .header("mcp-session-id", "session-1");
        let (status, _, _) = h.send(req.body(body(Bytes::new())).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method}");
    }
    assert!(h.upstream.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn header_tricks_are_refused() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    // Two Authorization headers.
    let req = post_request(&h.url("/mcp"), Some(&token), &call(1, "get_user"));
    let (mut parts, b) = req.into_parts();
    parts
        .headers
        .append("authorization", format!("Bearer {token}").parse().unwrap());
    let (status, headers, _) = h.send(Request::from_parts(parts, b)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(www_authenticate(&headers).starts_with(
        "Bearer error=\"invalid_request\", error_description=\"more than one Authorization header\""
    ));
    // A token in the query string.
    let (status, headers, _) = h
        .send(post_request(
            &h.url(&format!("/mcp?access_token={token}")),
            Some(&token),
            &call(1, "get_user"),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(www_authenticate(&headers).contains("tokens are not accepted in the query string"));
    // A huge token.
    let huge = "a".repeat(20_000);
    let (status, headers, _) = h.post(Some(&huge), &call(1, "get_user")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(www_authenticate(&headers).contains("the token is too large"));
    assert!(h.upstream.seen().is_empty());
    // Lowercase scheme is the same scheme (RFC 9110 §11.1).
    let mut req = post_request(&h.url("/mcp"), None, &call(1, "get_user"));
    req.headers_mut()
        .insert("authorization", format!("bearer {token}").parse().unwrap());
    assert_eq!(h.send(req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn identity_claims_outside_visible_ascii_arrive_percent_encoded() {
    let h = Harness::start().await;
    let token = h.key.sign(&{
        let mut c = claims_for(now());
        c["sub"] = json!("josé\r\nx-mcp-authz-subject: root");
        c["scope"] = json!("mcp:read");
        c
    });
    let (status, _, body) = h.post(Some(&token), &call(1, "get_user")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = h.upstream.seen();
    assert_eq!(
        seen[0]
            .headers
            .get_all("x-mcp-authz-subject")
            .iter()
            .collect::<Vec<_>>(),
        ["jos%C3%A9%0D%0Ax-mcp-authz-subject:%20root"]
    );
}

#[tokio::test]
async fn allowed_calls_reach_upstream_with_identity_and_without_the_token() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    h.open_session(&token).await;
    let mut req = post_request(&h.url("/mcp"), Some(&token), &call(7, "get_user"));
    // A client trying to forge its identity.
    req.headers_mut()
        .insert("x-mcp-authz-subject", "root".parse().unwrap());
    req.headers_mut()
        .insert("x-mcp-authz-caller", "machine".parse().unwrap());
    req.headers_mut()
        .insert("x_mcp_authz_caller", "machine".parse().unwrap());
    req.headers_mut()
        .insert("mcp-session-id", "session-1".parse().unwrap());
    let (status, headers, body) = h.send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["mcp-session-id"], "session-1");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"jsonrpc":"2.0","id":7,"result":{"echo":"tools/call"}})
    );
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 2, "the session's initialize, then the call");
    let up = &seen[1];
    assert!(
        up.headers.get("authorization").is_none(),
        "no token passthrough"
    );
    assert_eq!(up.headers["x-mcp-authz-subject"], "alice");
    assert_eq!(
        up.headers["x-mcp-authz-client-id"],
        "https://client.example/cimd.json"
    );
    assert_eq!(up.headers["x-mcp-authz-scopes"], "mcp:read");
    assert_eq!(
        up.headers
            .get_all("x-mcp-authz-caller")
            .iter()
            .collect::<Vec<_>>(),
        ["person"]
    );
    assert!(up.headers.get("x_mcp_authz_caller").is_none());
    assert_eq!(up.headers["mcp-session-id"], "session-1");
    assert_eq!(up.headers["host"], h.upstream.addr.to_string());
    assert_eq!(
        up.body,
        Bytes::from(call(7, "get_user")),
        "the body is forwarded byte for byte"
    );
}

#[tokio::test]
async fn missing_scopes_get_403_naming_every_scope_the_operation_needs() {
    let h = Harness::start().await;
    let (status, headers, body) = h
        .post(Some(&h.token("mcp:read")), &call(3, "delete_user"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        www_authenticate(&headers),
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"mcp:admin\", resource_metadata=\"{METADATA_URL}\""
        )
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], json!(3));
    assert_eq!(v["error"]["code"], json!(-32003));
    // The hierarchy: admin implies read.
    let (status, _, _) = h
        .post(Some(&h.token("mcp:admin")), &call(4, "get_user"))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Unmatched operations are denied by default, without a misleading challenge.
    let (status, headers, body) = h
        .post(Some(&h.token("mcp:admin")), &call(5, "not_in_any_rule"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get("www-authenticate").is_none());
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        json!(-32003)
    );
    assert_eq!(h.upstream_posts(), 1, "only the allowed call went up");
}

#[tokio::test]
async fn a_batch_with_one_forbidden_call_is_refused_whole() {
    let h = Harness::start().await;
    let batch = format!("[{},{}]", call(1, "get_user"), call(2, "delete_user"));
    let (status, headers, body) = h.post(Some(&h.token("mcp:read")), &batch).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Every scope the batch needs, the allowed entry's too: a token with exactly these gets it through.
    assert!(
        www_authenticate(&headers).contains("scope=\"mcp:read mcp:admin\""),
        "{}",
        www_authenticate(&headers)
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], json!(2), "the refused entry is named");
    assert_eq!(h.upstream_posts(), 0);
    let (status, _, body) = h.post(Some(&h.token("mcp:admin")), &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn bad_bodies_are_refused_before_upstream() {
    let h = Harness::start().await;
    let token = h.token("mcp:admin");
    let (status, _, body) = h.post(Some(&token), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        json!(-32700)
    );
    let (status, _, body) = h
        .post(
            Some(&token),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        json!(-32602)
    );
    // A name given twice means different calls to different parsers: refused, whichever one is allowed.
    let twice = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_user","name":"delete_user"}}"#;
    let (status, _, body) = h.post(Some(&token), twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = &serde_json::from_str::<Value>(&body).unwrap()["error"];
    assert_eq!(error["code"], json!(-32700));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("duplicate member \"name\""),
        "{error}"
    );
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(5000)
    );
    let (status, _, body) = h.post(Some(&token), &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body, r#"{"error":"body_too_large"}"#);
    // Other paths are not proxied at all.
    let (status, _, _) = h
        .send(post_request(
            &h.url("/admin"),
            Some(&token),
            &call(1, "get_user"),
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h.upstream_posts(), 0);
}

#[tokio::test]
async fn tool_lists_are_filtered_in_json_and_sse_answers() {
    let h = Harness::start().await;
    let list = r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#;
    let names = |v: &Value| -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, _, body) = h.post(Some(&h.token("mcp:read")), list).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        names(&serde_json::from_str(&body).unwrap()),
        vec!["get_user"]
    );
    let (_, _, body) = h.post(Some(&h.token("mcp:admin")), list).await;
    assert_eq!(
        names(&serde_json::from_str(&body).unwrap()),
        vec!["get_user", "delete_user"]
    );

    let (status, headers, body) = h
        .send(post_request(
            &h.url("/mcp?sse=1"),
            Some(&h.token("mcp:read")),
            list,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(body.starts_with(": keep-alive comment\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\""), "{body}");
    let last = body.split("\n\n").find(|e| e.contains("\"id\":9")).unwrap();
    assert!(
        last.starts_with("id: ev-0\nevent: message\ndata: "),
        "{last}"
    );
    let data: Value =
        serde_json::from_str(last.lines().nth(2).unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(names(&data), vec!["get_user"]);
}

#[tokio::test]
async fn get_streams_flow_event_by_event_and_delete_is_forwarded() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    h.open_session(&token).await;
    let req = Request::get(h.url("/mcp"))
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "session-1")
        .header("last-event-id", "ev-3")
        .body(body(Bytes::new()))
        .unwrap();
    let response = h.client.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    // Wait until the upstream has the GET, then push events one at a time: each must arrive on its own.
    for _ in 0..100 {
        if h.upstream.events.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.sidecar.metrics.active_streams.get(), 1);
    for i in 0..3 {
        let event = format!(
            "id: {i}\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"n\":{i}}}}}\n\n"
        );
        h.upstream.events.send(event.clone()).unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(2), stream.frame())
            .await
            .expect("event not buffered")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from(event));
    }
    // A resumed stream may carry a list answer; it is filtered by shape.
    h.upstream
        .events
        .send(format!("data: {}\n\n", tools_list_result(&json!(5))))
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(2), stream.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(
        text.contains("get_user") && !text.contains("delete_user"),
        "{text}"
    );
    let seen = h.upstream.seen();
    assert_eq!(seen[1].method, http::Method::GET);
    assert_eq!(seen[1].headers["last-event-id"], "ev-3");
    assert_eq!(seen[1].headers["mcp-session-id"], "session-1");
    drop(stream);
    for _ in 0..100 {
        if h.sidecar.metrics.active_streams.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.sidecar.metrics.active_streams.get(), 0);

    let req = Request::delete(h.url("/mcp"))
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-session-id", "session-1")
        .body(body(Bytes::new()))
        .unwrap();
    assert_eq!(h.send(req).await.0, StatusCode::OK);
    assert_eq!(
        h.upstream.seen().last().unwrap().method,
        http::Method::DELETE
    );
}

#[tokio::test]
async fn an_upstream_that_is_down_gives_502_with_a_clear_body() {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let sidecar = mcp_authz_sidecar::server::Sidecar::start(config(&dead, &jwks.url()))
        .await
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let mut claims = claims_for(now());
    claims["scope"] = json!("mcp:read");
    let url = format!("http://{}/mcp", sidecar.proxy_addr);
    let mut status = StatusCode::OK;
    let mut text = String::new();
    for _ in 0..50 {
        let (s, _, b) = collect(
            client
                .request(post_request(
                    &url,
                    Some(&key.sign(&claims)),
                    &call(1, "get_user"),
                ))
                .await
                .unwrap(),
        )
        .await;
        (status, text) = (s, b);
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        json!("upstream_unavailable")
    );
}

#[tokio::test]
async fn issuer_down_known_keys_pass_unknown_keys_fail_closed() {
    let h = Harness::start().await;
    h.jwks.set_down(true);
    let (status, _, _) = h
        .post(Some(&h.token("mcp:read")), &call(1, "get_user"))
        .await;
    assert_eq!(status, StatusCode::OK, "a cached key keeps working");
    let new_key = TestKey::es256("k2");
    let mut claims = claims_for(now());
    claims["scope"] = json!("mcp:read");
    let (status, headers, _) = h
        .post(Some(&new_key.sign(&claims)), &call(2, "get_user"))
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot tell: fail closed, but not with a 401"
    );
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(h.upstream_posts(), 1);
}

#[tokio::test]
async fn unknown_kids_cause_at_most_one_refresh_per_interval() {
    let h = Harness::start().await;
    // A long interval, so a slow machine cannot stretch the five requests over two intervals.
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config.jwks.min_refresh_seconds = 60;
    h.sidecar.config.apply(config).unwrap();
    // The changed JWKS settings cause one fetch of their own; let it happen first.
    let applied = h.jwks.hits();
    for _ in 0..100 {
        if h.jwks.hits() > applied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = h.jwks.hits();
    let stranger = TestKey::es256("nope");
    let mut claims = claims_for(now());
    claims["scope"] = json!("mcp:read");
    for _ in 0..5 {
        let (status, headers, _) = h
            .post(Some(&stranger.sign(&claims)), &call(1, "get_user"))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(www_authenticate(&headers).contains("the token's signing key is unknown"));
    }
    assert_eq!(
        h.jwks.hits() - before,
        1,
        "five unknown kids, one fetch (minRefreshSeconds: 2)"
    );
}

#[tokio::test]
async fn key_rotation_while_a_client_streams_fails_no_request() {
    let h = Harness::start().await;
    let old_token = h.token("mcp:read");
    let req = Request::get(h.url("/mcp"))
        .header("authorization", format!("Bearer {old_token}"))
        .body(body(Bytes::new()))
        .unwrap();
    let mut stream = h.client.request(req).await.unwrap().into_body();
    for _ in 0..100 {
        if h.upstream.events.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The issuer publishes the next key before signing with it, then retires the old one.
    let next = TestKey::es256("k2");
    h.jwks.set_keys(&[&h.key, &next]);
    let mut claims = claims_for(now());
    claims["scope"] = json!("mcp:read");
    let new_token = next.sign(&claims);
    for i in 0..20u64 {
        let token = if i % 2 == 0 { &old_token } else { &new_token };
        let (status, _, body) = h.post(Some(token), &call(i, "get_user")).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        h.upstream
            .events
            .send(format!("id: {i}\ndata: {{}}\n\n"))
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(2), stream.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            frame.into_data().unwrap(),
            Bytes::from(format!("id: {i}\ndata: {{}}\n\n"))
        );
    }
}

#[tokio::test]
async fn readiness_waits_for_keys_and_metrics_count_decisions() {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_down(true);
    let upstream = Upstream::start().await;
    let sidecar = mcp_authz_sidecar::server::Sidecar::start(config(&upstream.url(), &jwks.url()))
        .await
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let admin = |path: &str| {
        let req = Request::get(format!("http://{}{path}", sidecar.admin_addr))
            .body(body(Bytes::new()))
            .unwrap();
        let fut = client.request(req);
        async move { collect(fut.await.unwrap()).await }
    };
    assert_eq!(admin("/healthz").await.0, StatusCode::OK);
    assert_eq!(admin("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let url = format!("http://{}/mcp", sidecar.proxy_addr);
    let (status, _, _) = collect(
        client
            .request(post_request(
                &url,
                Some(&key.sign(&claims_for(now()))),
                &call(1, "x"),
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no keys yet: cannot judge any token"
    );
    jwks.set_down(false);
    let mut ready = false;
    for _ in 0..100 {
        if admin("/readyz").await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready);
    let (_, _, metrics) = admin("/metrics").await;
    assert!(
        metrics.contains(
            "mcp_authz_sidecar_requests_total{decision=\"deny\",reason=\"jwks_unavailable\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_authz_sidecar_jwks_refreshes_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_authz_sidecar_jwks_age_seconds 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_authz_sidecar_active_streams 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn slowloris_clients_are_cut_off() {
    let h = Harness::start().await;
    let mut socket = tokio::net::TcpStream::connect(h.sidecar.proxy_addr)
        .await
        .unwrap();
    socket
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // The sidecar closes the connection after headerTimeoutMs (400 ms) without the rest of the head.
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n")
            && answer.ends_with("\r\n\r\n{\"error\":\"head_timeout\"}"),
        "{answer}"
    );
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn config_changes_apply_to_the_next_request() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    assert_eq!(
        h.post(Some(&token), &call(1, "delete_user")).await.0,
        StatusCode::FORBIDDEN
    );
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config
        .rules
        .retain(|r| r.name.as_deref() != Some("delete_*"));
    config.unmatched =
        mcp_authz_sidecar::config::UnmatchedPolicy::RequireScopes(vec!["mcp:read".into()]);
    h.sidecar.config.apply(config).unwrap();
    assert_eq!(
        h.post(Some(&token), &call(2, "delete_user")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_config_file_is_watched_and_bad_files_are_ignored() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.json");
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let watcher = h
        .sidecar
        .watch_file(path.clone(), Duration::from_millis(50));
    let token = h.token("mcp:read");
    std::fs::write(&path, "{ broken").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.post(Some(&token), &call(1, "get_user")).await.0,
        StatusCode::OK,
        "the old config still serves"
    );
    config.rules.clear();
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let mut refused = false;
    for _ in 0..40 {
        if h.post(Some(&token), &call(1, "get_user")).await.0 == StatusCode::FORBIDDEN {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    assert!(refused, "the new rules never applied");
    let (_, _, metrics) = h.admin("/metrics").await;
    assert!(
        metrics.contains("mcp_authz_sidecar_config_reloads_total{result=\"parse\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_authz_sidecar_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish_within_the_grace_period() {
    let h = Harness::start().await;
    let req = Request::get(h.url("/mcp"))
        .header("authorization", format!("Bearer {}", h.token("mcp:read")))
        .body(body(Bytes::new()))
        .unwrap();
    let mut stream = h.client.request(req).await.unwrap().into_body();
    for _ in 0..100 {
        if h.upstream.events.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Harness {
        sidecar,
        upstream,
        client,
        key,
        jwks: _jwks,
    } = h;
    let proxy_addr = sidecar.proxy_addr;
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(sidecar.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused...
    assert!(tokio::net::TcpStream::connect(proxy_addr).await.is_err());
    // ...while the open stream still flows.
    upstream.events.send("data: {}\n\n".into()).unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(1), stream.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), Bytes::from("data: {}\n\n"));
    shutdown.await.unwrap();
    let waited = started.elapsed();
    // The stream is held to the end of the drain's share of the 2 s budget in the test config.
    let drain = mcp_authz_audit::stop::Split::of(Duration::from_millis(2000)).drain;
    assert!(
        waited >= drain - Duration::from_millis(100) && waited < drain + Duration::from_secs(1),
        "{waited:?}"
    );
    drop((client, key));
}

const INTROSPECTION_CLIENT: &str = "urn:mcp-authz:resource-server:https://mcp.example.com/mcp";

/// An Ed25519 key pair: the PKCS#8 PEM the sidecar signs with and the public `x` the issuer checks with.
fn introspection_key() -> (String, String) {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use base64::Engine;
    let pair = Ed25519KeyPair::generate().unwrap();
    let der = pair.to_pkcs8().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    (pem, x)
}

/// An RFC 7662 endpoint over a real socket: answers `active` from a flag, and first checks the sidecar's
/// `private_key_jwt` assertion as an issuer would (signature, `iss`, `sub`, `aud`, a `jti` never seen before).
async fn introspection_server(
    public_x: String,
    active: std::sync::Arc<std::sync::Mutex<Option<bool>>>,
    hits: std::sync::Arc<std::sync::Mutex<u32>>,
) -> std::net::SocketAddr {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = jsonwebtoken::DecodingKey::from_ed_components(&public_x).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (active, hits, key, seen) =
                (active.clone(), hits.clone(), key.clone(), seen.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |r: Request<hyper::body::Incoming>| {
                        let (active, hits, key, seen) =
                            (active.clone(), hits.clone(), key.clone(), seen.clone());
                        async move {
                            *hits.lock().unwrap() += 1;
                            let no_header = r.headers().get("authorization").is_none();
                            let form = r.into_body().collect().await.unwrap().to_bytes();
                            let form: std::collections::HashMap<String, String> =
                                url::form_urlencoded::parse(&form).into_owned().collect();
                            let mut validation =
                                jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
                            validation.set_audience(&["https://auth.example.com"]);
                            validation.set_issuer(&[INTROSPECTION_CLIENT]);
                            validation.sub = Some(INTROSPECTION_CLIENT.into());
                            let assertion_ok = form
                                .get("client_assertion_type")
                                .map(String::as_str)
                                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                                && form.get("client_assertion").is_some_and(|a| {
                                    jsonwebtoken::decode::<Value>(a, &key, &validation).is_ok_and(
                                        |d| {
                                            d.claims["jti"].as_str().is_some_and(|j| {
                                                seen.lock().unwrap().insert(j.to_owned())
                                            })
                                        },
                                    )
                                });
                            let form_ok = form.contains_key("token")
                                && form.get("token_type_hint").map(String::as_str)
                                    == Some("access_token");
                            // A token it never issued (a JWT has no spaces) is inactive to an issuer.
                            let known = form.get("token").is_some_and(|t| !t.contains(' '));
                            let flag = active.lock().unwrap().map(|a| a && known);
                            let (status, body) = match (no_header && assertion_ok && form_ok, flag)
                            {
                                (false, _) => (StatusCode::UNAUTHORIZED, "{}".to_owned()),
                                (true, None) => {
                                    (StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned())
                                }
                                (true, Some(a)) => {
                                    (StatusCode::OK, json!({"active": a}).to_string())
                                }
                            };
                            let mut response = http::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn admin_token(h: &Harness, jti: &str) -> String {
    h.key.sign(&{
        let mut c = claims_for(now());
        c["scope"] = json!("mcp:admin");
        c["jti"] = json!(jti);
        c
    })
}

#[tokio::test]
async fn sensitive_scopes_are_checked_against_revocation() {
    let h = Harness::start().await;
    let (pem, x) = introspection_key();
    let active = std::sync::Arc::new(std::sync::Mutex::new(Some(true)));
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let addr = introspection_server(x, active.clone(), hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, pem).unwrap();
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    let settings: mcp_authz_sidecar::config::IntrospectionConfig = serde_json::from_value(json!({
        "endpoint": format!("http://{addr}/introspect"),
        "clientId": INTROSPECTION_CLIENT,
        "privateKeyFile": key_file,
        "sensitiveScopes": ["mcp:admin"],
    }))
    .unwrap();
    assert_eq!(
        settings.cache_seconds, 0,
        "no reuse of active answers by default"
    );
    config.introspection = Some(settings.clone());
    h.sidecar.config.apply(config.clone()).unwrap();
    let admin = admin_token(&h, "t-admin");
    // Not sensitive: no introspection.
    assert_eq!(
        h.post(Some(&admin), &call(1, "get_user")).await.0,
        StatusCode::OK
    );
    assert_eq!(*hits.lock().unwrap(), 0);
    // Sensitive: asked every time, each with a fresh assertion (the issuer refuses a spent jti).
    for id in [2, 3] {
        assert_eq!(
            h.post(Some(&admin), &call(id, "delete_user")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(*hits.lock().unwrap(), 2);
    // Spaces after the token are no part of it: the issuer is asked about the token alone (the HTTP layer
    // trims them off the field already; `proxy::tests` holds the token's own slice to it).
    let spaced = format!("{admin}  ");
    assert_eq!(
        h.post(Some(&spaced), &call(3, "delete_user")).await.0,
        StatusCode::OK
    );
    assert_eq!(*hits.lock().unwrap(), 3);
    // Revoked: the very next sensitive call is refused; a dead token's answer is kept.
    *active.lock().unwrap() = Some(false);
    for id in [4, 5] {
        let (status, headers, _) = h.post(Some(&admin), &call(id, "delete_user")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            www_authenticate(&headers)
                .contains("error_description=\"the token is no longer active\""),
            "{headers:?}"
        );
    }
    assert_eq!(*hits.lock().unwrap(), 4);
    // The issuer cannot answer: refused with 503, never let through.
    *active.lock().unwrap() = None;
    let (status, headers, _) = h
        .post(Some(&admin_token(&h, "t-other")), &call(6, "delete_user"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    // With a cache, an active answer is reused.
    *active.lock().unwrap() = Some(true);
    config.introspection = Some(mcp_authz_sidecar::config::IntrospectionConfig {
        cache_seconds: 60,
        ..settings
    });
    h.sidecar.config.apply(config).unwrap();
    let cached = admin_token(&h, "t-cached");
    for id in [7, 8] {
        assert_eq!(
            h.post(Some(&cached), &call(id, "delete_user")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(*hits.lock().unwrap(), 6);
    assert_eq!(
        h.upstream_posts(),
        6,
        "only the active tokens' calls went up"
    );
}

#[tokio::test]
async fn a_refreshed_introspection_key_applies_without_a_config_change() {
    // kubelet refreshes the key's Secret on its own schedule, often after the ConfigMap that names it.
    let h = Harness::start().await;
    let (old_pem, _) = introspection_key();
    let (new_pem, new_x) = introspection_key();
    let active = std::sync::Arc::new(std::sync::Mutex::new(Some(true)));
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let addr = introspection_server(new_x, active, hits).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, old_pem).unwrap();
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config.introspection = Some(
        serde_json::from_value(json!({
            "endpoint": format!("http://{addr}/introspect"),
            "clientId": INTROSPECTION_CLIENT,
            "privateKeyFile": key_file,
            "sensitiveScopes": ["mcp:admin"],
        }))
        .unwrap(),
    );
    let path = dir.path().join("sidecar.json");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    h.sidecar.config.apply(config).unwrap();
    let watcher = h.sidecar.watch_file(path, Duration::from_millis(50));
    let admin = admin_token(&h, "t-rotated");
    // The issuer knows only the new key: the old one's assertions are refused, so the call is too.
    assert_eq!(
        h.post(Some(&admin), &call(1, "delete_user")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let staged = dir.path().join("key.pem.new");
    std::fs::write(&staged, new_pem).unwrap();
    std::fs::rename(&staged, &key_file).unwrap();
    let mut allowed = false;
    for id in 2..42 {
        if h.post(Some(&admin), &call(id, "delete_user")).await.0 == StatusCode::OK {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    assert!(allowed, "the new key was never picked up");
}

#[tokio::test]
async fn a_config_refused_for_a_missing_key_applies_when_the_key_arrives() {
    let h = Harness::start().await;
    let (pem, x) = introspection_key();
    let active = std::sync::Arc::new(std::sync::Mutex::new(Some(true)));
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let addr = introspection_server(x, active, hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config.introspection = Some(
        serde_json::from_value(json!({
            "endpoint": format!("http://{addr}/introspect"),
            "clientId": INTROSPECTION_CLIENT,
            "privateKeyFile": key_file,
            "sensitiveScopes": ["mcp:admin"],
        }))
        .unwrap(),
    );
    let path = dir.path().join("sidecar.json");
    let watcher = h
        .sidecar
        .watch_file(path.clone(), Duration::from_millis(50));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, metrics) = h.admin("/metrics").await;
    assert!(
        metrics.contains("mcp_authz_sidecar_config_reloads_total{result=\"read\"} 1"),
        "the key is not there yet: {metrics}"
    );
    std::fs::write(&key_file, pem).unwrap();
    let admin = admin_token(&h, "t-late-key");
    let mut checked = false;
    for id in 1..41 {
        assert_eq!(
            h.post(Some(&admin), &call(id, "delete_user")).await.0,
            StatusCode::OK
        );
        if *hits.lock().unwrap() > 0 {
            checked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    assert!(checked, "the config naming the key never applied");
}

#[tokio::test]
async fn unusable_introspection_keys_refuse_the_config() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (file, expected) in [
        (
            std::path::PathBuf::from("/nonexistent/key.pem"),
            "cannot read /nonexistent/key.pem".to_owned(),
        ),
        (
            not_a_key.clone(),
            format!(
                "introspection.privateKeyFile {}: not a PKCS#8 PEM Ed25519 or P-256 private key",
                not_a_key.display()
            ),
        ),
    ] {
        let mut config = config(&h.upstream.url(), &h.jwks.url());
        config.introspection = Some(mcp_authz_sidecar::config::IntrospectionConfig {
            endpoint: "http://127.0.0.1:1/introspect".into(),
            client_id: INTROSPECTION_CLIENT.into(),
            private_key_file: file,
            sensitive_scopes: vec!["mcp:admin".into()],
            cache_seconds: 0,
            timeout_ms: 500,
        });
        let err = h.sidecar.config.apply(config).expect_err("refused");
        assert!(err.to_string().contains(&expected), "{err}");
    }
}

#[tokio::test]
async fn only_mcp_methods_are_proxied_and_preflights_need_no_token() {
    let h = Harness::start().await;
    let token = h.token("mcp:admin");
    for method in ["PUT", "PATCH", "TRACE"] {
        let req = Request::builder()
            .method(method)
            .uri(h.url("/mcp"))
            .header("authorization", format!("Bearer {token}"))
            .body(body(Bytes::from(call(1, "delete_user"))))
            .unwrap();
        let (status, headers, _) = h.send(req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(headers["allow"], "GET, POST, DELETE, OPTIONS");
    }
    assert!(
        h.upstream.seen().is_empty(),
        "a body on another method never reaches the upstream unchecked"
    );
    let req = Request::builder()
        .method("OPTIONS")
        .uri(h.url("/mcp"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("x-mcp-authz-subject", "forged")
        .body(body(Bytes::new()))
        .unwrap();
    assert_eq!(h.send(req).await.0, StatusCode::OK);
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, http::Method::OPTIONS);
    assert!(
        seen[0].headers.get("x-mcp-authz-subject").is_none(),
        "no identity on an unauthenticated preflight"
    );
    assert!(seen[0].body.is_empty());
}

#[tokio::test]
async fn a_reload_keeps_open_streams_flowing() {
    let h = Harness::start().await;
    let req = Request::get(h.url("/mcp"))
        .header("authorization", format!("Bearer {}", h.token("mcp:read")))
        .body(body(Bytes::new()))
        .unwrap();
    let mut stream = h.client.request(req).await.unwrap().into_body();
    for _ in 0..100 {
        if h.upstream.events.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config.rules.clear();
    config.scopes_supported = vec!["mcp:other".into()];
    h.sidecar.config.apply(config).unwrap();
    h.upstream.events.send("data: {}\n\n".into()).unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(2), stream.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), Bytes::from("data: {}\n\n"));
    // New requests see the new config.
    let (_, headers, _) = h.post(None, &call(1, "get_user")).await;
    assert!(www_authenticate(&headers).ends_with("scope=\"mcp:other\""));
}

#[tokio::test]
async fn get_and_delete_with_a_body_are_refused() {
    let h = Harness::start().await;
    let token = h.token("mcp:admin");
    for method in ["GET", "DELETE"] {
        let req = Request::builder()
            .method(method)
            .uri(h.url("/mcp"))
            .header("authorization", format!("Bearer {token}"))
            .body(body(Bytes::from(call(1, "delete_user"))))
            .unwrap();
        let (status, _, text) = h.send(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}");
        assert!(text.contains("body_not_allowed"), "{text}");
    }
    assert!(h.upstream.seen().is_empty());
}

/// Opens one client connection of its own (no pool) to `addr`.
async fn own_connection(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Body>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

#[tokio::test]
async fn connections_over_the_cap_wait_in_the_backlog_until_one_closes() {
    let h = Harness::start_with(|upstream, jwks| {
        let mut config = config(upstream, jwks);
        config.limits.max_connections = std::num::NonZeroUsize::new(2).unwrap();
        config
    })
    .await;
    let token = h.token("mcp:read");
    let url = h.url("/mcp");
    let addr = h.sidecar.proxy_addr;
    let metrics = &h.sidecar.metrics;

    // Two GET streams hold both slots (an idle keep-alive connection would be closed after 60 s).
    let mut held = Vec::new();
    for _ in 0..2 {
        let (mut sender, task) = own_connection(addr).await;
        let request = Request::get(&url)
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/event-stream")
            .body(body(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push((response, sender, task));
    }
    assert_eq!(metrics.connections_open.get(), 2);

    // A third connection completes its TCP handshake in the kernel's backlog, but the sidecar does not
    // accept it, so its request is not read. Absence can only be shown by waiting; the wait bounds nothing.
    let (mut waiting, _task) = own_connection(addr).await;
    let answer = tokio::spawn(async move {
        let response = waiting
            .send_request({
                let mut request = post_request(&url, Some(&token), &call(3, "get_user"));
                let host = http::HeaderValue::from_str(&addr.to_string()).unwrap();
                request.headers_mut().insert("host", host);
                request
            })
            .await
            .unwrap();
        collect(response).await.0
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !answer.is_finished(),
        "a connection over the cap was served"
    );
    assert_eq!(h.upstream.seen().len(), 2);
    assert_eq!(metrics.connections_open.get(), 2);
    assert!(metrics.connection_limit_reached.get() >= 1);
    assert!(
        h.admin("/metrics")
            .await
            .2
            .contains("mcp_authz_sidecar_connections_open 2")
    );

    // Closing one stream's connection frees its slot: the waiting connection is accepted and answered.
    let (stream, sender, task) = held.remove(0);
    drop((stream, sender));
    task.abort();
    assert_eq!(answer.await.unwrap(), StatusCode::OK);
    assert_eq!(h.upstream_posts(), 1);
    assert_eq!(metrics.connections_open.get(), 2);
}

#[tokio::test]
async fn a_listen_stream_needs_what_subscribing_to_each_of_its_resources_needs() {
    let h = Harness::start().await;
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    for (pattern, scope) in [
        ("file:///public/*", "mcp:read"),
        ("file:///secret/*", "mcp:admin"),
    ] {
        config.rules.push(mcp_authz_sidecar::config::ScopeRule {
            method: "resources/subscribe".into(),
            name: Some(pattern.into()),
            scopes: vec![scope.into()],
            callers: Default::default(),
        });
    }
    h.sidecar.config.apply(config).unwrap();
    let reader = h.token("mcp:read");
    let listen = |id: u32, uris: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
               "params": {"notifications": {"toolsListChanged": true, "resourceSubscriptions": uris}}})
        .to_string()
    };
    // Open to any valid token; each subscribed resource is decided on its own.
    for (id, uris) in [(1, json!([])), (2, json!(["file:///public/a"]))] {
        let (status, _, body) = h.post(Some(&reader), &listen(id, uris)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, headers, body) = h
        .post(
            Some(&reader),
            &listen(3, json!(["file:///public/a", "file:///secret/x"])),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let challenge = www_authenticate(&headers);
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"mcp:read mcp:admin\""),
        "{challenge}"
    );
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["id"], 3, "one error for the one message: {refusal}");
    // A resource no rule names is refused to everyone.
    let (status, headers, _) = h
        .post(Some(&reader), &listen(4, json!(["file:///elsewhere"])))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(www_authenticate(&headers), "");
    assert_eq!(h.upstream_posts(), 2, "only the allowed streams went up");
}

/// `callers` on a rule: a tool for machines refuses a person's token whatever its scopes, with no step-up
/// challenge; a machine's token (`mcp_authz_caller: machine`) passes and the upstream is told who called; a token
/// that does not say is neither; and each caller's tools/list shows what its kind may call.
#[tokio::test]
async fn a_rule_for_machines_admits_only_tokens_a_client_got_for_itself() {
    let h = Harness::start().await;
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config.rules.insert(
        0,
        mcp_authz_sidecar::config::ScopeRule {
            method: "tools/call".into(),
            name: Some("get_report".into()),
            scopes: vec!["mcp:admin".into()],
            callers: mcp_authz_sidecar::caller::Callers::Machines,
        },
    );
    h.sidecar.config.apply(config).unwrap();
    let token_of = |caller: Option<&str>| {
        let mut c = claims_for(now());
        c["scope"] = json!("mcp:admin");
        match caller {
            Some(caller) => c["mcp_authz_caller"] = json!(caller),
            None => {
                c.as_object_mut().unwrap().remove("mcp_authz_caller");
            }
        }
        h.key.sign(&c)
    };
    let (status, headers, body) = h
        .post(Some(&token_of(Some("person"))), &call(1, "get_report"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(www_authenticate(&headers), "", "no scope would help");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32003,
               "message": "forbidden: this operation is for machine clients only"}})
    );
    for caller in [None, Some("Machine"), Some("robot")] {
        let (status, _, body) = h
            .post(Some(&token_of(caller)), &call(2, "get_report"))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{caller:?}: {body}");
    }
    assert_eq!(h.upstream_posts(), 0);
    let (status, _, body) = h
        .post(Some(&token_of(Some("machine"))), &call(3, "get_report"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = h.upstream.seen();
    assert_eq!(seen[0].headers["x-mcp-authz-caller"], "machine");
    // The rest of the rules still hold for machines: the scope is still needed.
    let mut c = claims_for(now());
    c["scope"] = json!("");
    c["mcp_authz_caller"] = json!("machine");
    let (status, headers, _) = h.post(Some(&h.key.sign(&c)), &call(4, "get_report")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        www_authenticate(&headers).contains("error=\"insufficient_scope\", scope=\"mcp:admin\""),
        "a machine is told the scope it lacks: {headers:?}"
    );
    // No token: the challenge sends a person to consent, so it does not ask for the machines' scope.
    let (status, headers, _) = h.post(None, &call(5, "get_report")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = www_authenticate(&headers);
    assert!(
        !challenge.contains("mcp:admin") && challenge.contains("scope=\"mcp:read\""),
        "{challenge}"
    );
}

/// A token endpoint for token exchange over a real socket: checks the sidecar's assertion (signature, `iss`, `aud`,
/// a fresh `jti`) and the exchange's form, waits `delay` (so concurrent requests overlap), counts calls, and answers
/// what `mode` says: a token naming the subject token and the downstream, or an OAuth error, or a 500.
async fn exchange_server(
    public_x: String,
    mode: std::sync::Arc<std::sync::Mutex<&'static str>>,
    hits: std::sync::Arc<std::sync::Mutex<u32>>,
) -> std::net::SocketAddr {
    let key = jsonwebtoken::DecodingKey::from_ed_components(&public_x).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let (addr, _task) = support::serve(move |r: Request<hyper::body::Incoming>| {
        let (mode, hits, key, seen) = (mode.clone(), hits.clone(), key.clone(), seen.clone());
        async move {
            *hits.lock().unwrap() += 1;
            let form = r.into_body().collect().await.unwrap().to_bytes();
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&form).into_owned().collect();
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
            validation.set_audience(&["https://auth.example.com"]);
            validation.set_issuer(&[INTROSPECTION_CLIENT]);
            let authenticated = form.get("client_assertion").is_some_and(|a| {
                jsonwebtoken::decode::<Value>(a, &key, &validation).is_ok_and(|d| {
                    d.claims["jti"]
                        .as_str()
                        .is_some_and(|j| seen.lock().unwrap().insert(j.to_owned()))
                })
            });
            let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
            let well_formed = get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange"
                && get("subject_token_type") == "urn:ietf:params:oauth:token-type:access_token"
                && !get("subject_token").is_empty();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mode = *mode.lock().unwrap();
            let (status, body) = match (authenticated && well_formed, mode) {
                (false, _) => (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"})),
                (true, "token") => (
                    StatusCode::OK,
                    json!({"access_token": format!("for.{}.{}", get("resource").len(), get("subject_token").len()),
                           "token_type": "Bearer", "expires_in": 300,
                           "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
                ),
                (true, "500") => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
                (true, code) => (StatusCode::BAD_REQUEST, json!({"error": code, "error_description": "no"})),
            };
            let mut response = http::Response::new(support::full(body.to_string()));
            *response.status_mut() = status;
            response
        }
    })
    .await;
    addr
}

/// Tokens for downstreams: obtained once per request token and downstream however many requests overlap, sent
/// upstream in the configured header (a client's own field of that name, or its `_` look-alike, never arrives),
/// and the issuer's refusals decide the request: `invalid_grant` 401, `invalid_scope` forwarded
/// without the header, an issuer in trouble 503.
#[tokio::test]
async fn the_upstream_gets_a_token_for_its_downstream_and_never_the_clients() {
    let h = Harness::start().await;
    let (pem, x) = introspection_key();
    let mode = std::sync::Arc::new(std::sync::Mutex::new("token"));
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let addr = exchange_server(x, mode.clone(), hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, pem).unwrap();
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config.downstream_tokens = Some(
        serde_json::from_value(json!({
            "tokenEndpoint": format!("http://{addr}/token"),
            "clientId": INTROSPECTION_CLIENT,
            "privateKeyFile": key_file,
            "targets": [{"audience": "https://inventory.example.com/api", "header": "x-inventory-token"}],
        }))
        .unwrap(),
    );
    h.sidecar.config.apply(config).unwrap();
    let token = h.token("mcp:read");
    let expected = format!(
        "for.{}.{}",
        "https://inventory.example.com/api".len(),
        token.len()
    );

    // Sixteen calls at once: one exchange.
    let calls = (0..16).map(|i| {
        let mut req = post_request(&h.url("/mcp"), Some(&token), &call(i, "get_user"));
        req.headers_mut()
            .insert("x-inventory-token", "forged".parse().unwrap());
        req.headers_mut()
            .insert("x_inventory_token", "forged".parse().unwrap());
        h.send(req)
    });
    for (status, _, body) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        *hits.lock().unwrap(),
        1,
        "one exchange for sixteen overlapping requests"
    );
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 16);
    for up in &seen {
        assert_eq!(
            up.headers
                .get_all("x-inventory-token")
                .iter()
                .collect::<Vec<_>>(),
            [expected.as_str()]
        );
        assert!(up.headers.get("x_inventory_token").is_none());
        assert!(up.headers.get("authorization").is_none());
    }
    // Reused while it lives.
    let (status, _, _) = h.post(Some(&token), &call(20, "get_user")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(*hits.lock().unwrap(), 1);

    // The issuer's refusals, each for a fresh request token (the cache is per token).
    let fresh = |jti: &str| {
        let mut c = claims_for(now());
        c["scope"] = json!("mcp:read");
        c["jti"] = json!(jti);
        h.key.sign(&c)
    };
    *mode.lock().unwrap() = "invalid_grant";
    let before_revoked = *hits.lock().unwrap();
    let revoked = fresh("g");
    for id in [30, 31, 32] {
        let (status, _, _) = h.post(Some(&revoked), &call(id, "get_user")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        *hits.lock().unwrap(),
        before_revoked + 1,
        "a revoked token repeated costs the issuer one exchange"
    );
    let (status, headers, _) = h.post(Some(&revoked), &call(21, "get_user")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        www_authenticate(&headers).starts_with(
            "Bearer error=\"invalid_token\", error_description=\"the token is no longer active\""
        ),
        "{headers:?}"
    );
    *mode.lock().unwrap() = "500";
    let (status, _, body) = h.post(Some(&fresh("u")), &call(22, "get_user")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "temporarily_unavailable",
               "error_description": "the authorization server cannot issue the token this service needs for its downstream right now"})
    );
    let before = h.upstream_posts();
    *mode.lock().unwrap() = "invalid_scope";
    let (status, _, body) = h.post(Some(&fresh("s")), &call(23, "get_user")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = h.upstream.seen();
    assert_eq!(h.upstream_posts(), before + 1);
    assert!(
        seen.last()
            .unwrap()
            .headers
            .get("x-inventory-token")
            .is_none()
    );
    // A refused request never reaches the upstream: the two refusals above did not.
    assert_eq!(h.upstream_posts(), 18);
}

/// A third-party provider's token (issue 18 part 2): injected like a downstream's; a person who has not connected
/// the provider is asked to, in the MCP way of their request (2025-11-25's -32042 URL elicitation error, or
/// 2026-07-28's `input_required` result for a client that declares URL elicitation), for tool calls, prompts and
/// resource reads only; everything else goes on without the header. Neither answer reaches the upstream.
#[tokio::test]
async fn a_person_without_the_providers_account_connected_is_asked_to_connect_it() {
    const CONNECT: &str = "https://auth.example.com/connect/acme";
    let h = Harness::start().await;
    let (pem, x) = introspection_key();
    let mode = std::sync::Arc::new(std::sync::Mutex::new("token"));
    let hits = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let addr = exchange_server(x, mode.clone(), hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, pem).unwrap();
    let mut config = config(&h.upstream.url(), &h.jwks.url());
    config.downstream_tokens = Some(
        serde_json::from_value(json!({
            "tokenEndpoint": format!("http://{addr}/token"),
            "clientId": INTROSPECTION_CLIENT,
            "privateKeyFile": key_file,
            "targets": [{"audience": "urn:mcp-authz:provider:acme", "header": "x-acme-token",
                         "connectUrl": CONNECT}],
        }))
        .unwrap(),
    );
    h.sidecar.config.apply(config).unwrap();
    let fresh = |jti: &str| {
        let mut c = claims_for(now());
        c["scope"] = json!("mcp:read");
        c["jti"] = json!(jti);
        h.key.sign(&c)
    };

    // Connected: the provider's token goes upstream, a client's own copy never does.
    let token = fresh("connected");
    let mut req = post_request(&h.url("/mcp"), Some(&token), &call(1, "get_user"));
    req.headers_mut()
        .insert("x-acme-token", "forged".parse().unwrap());
    let (status, _, body) = h.send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = h.upstream.seen();
    let acme: Vec<_> = seen
        .last()
        .unwrap()
        .headers
        .get_all("x-acme-token")
        .iter()
        .collect();
    assert_eq!(
        acme,
        [format!(
            "for.{}.{}",
            "urn:mcp-authz:provider:acme".len(),
            token.len()
        )
        .as_str()]
    );

    // Not connected, 2025-11-25: the URL elicitation error, on the request's own id.
    *mode.lock().unwrap() = "interaction_required";
    let before = h.upstream_posts();
    let token = fresh("not-connected");
    let (status, _, body) = h.post(Some(&token), &call(2, "get_user")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut answer: Value = serde_json::from_str(&body).unwrap();
    let elicitation = answer["error"]["data"]["elicitations"][0].take();
    assert!(
        elicitation["elicitationId"]
            .as_str()
            .is_some_and(|id| id.len() > 20),
        "{elicitation}"
    );
    assert_eq!(
        (
            &elicitation["mode"],
            &elicitation["url"],
            &elicitation["message"]
        ),
        (
            &json!("url"),
            &json!(CONNECT),
            &json!(
                "This needs your account at another service, which you have not connected yet: open the link (on auth.example.com) to connect it, then try again."
            )
        )
    );
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -32042,
               "message": "This request needs an account the person has not connected yet.",
               "data": {"elicitations": [null]}}})
    );
    // A listing needs no provider: it goes on, without the header.
    let list = json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}).to_string();
    let (status, _, body) = h.post(Some(&token), &list).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        h.upstream_posts(),
        before + 1,
        "only the listing reached the upstream"
    );
    assert!(
        h.upstream
            .seen()
            .last()
            .unwrap()
            .headers
            .get("x-acme-token")
            .is_none()
    );

    // 2026-07-28 with URL elicitation declared: an MRTR input_required result naming the link.
    let modern = json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get_user","arguments":{},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                  "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}}}}})
    .to_string();
    let mut req = post_request(&h.url("/mcp"), Some(&token), &modern);
    for (name, value) in [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "get_user"),
    ] {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    let (status, _, body) = h.send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"jsonrpc": "2.0", "id": 4, "result": {"resultType": "input_required", "inputRequests": {
            "connect-0": {"method": "elicitation/create", "params": {"mode": "url", "url": CONNECT,
                "message": "This needs your account at another service, which you have not connected yet: open the link (on auth.example.com) to connect it, then try again."}}}}})
    );
    assert_eq!(
        h.upstream_posts(),
        before + 1,
        "neither answer reached the upstream"
    );

    // The issuer cannot serve provider tokens (the provider is down): a call that may use the provider is
    // refused 503, a listing never asks for the provider's token and goes on.
    *mode.lock().unwrap() = "500";
    let token = fresh("provider-down");
    let asked = *hits.lock().unwrap();
    let list = json!({"jsonrpc":"2.0","id":5,"method":"tools/list"}).to_string();
    let (status, _, body) = h.post(Some(&token), &list).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(*hits.lock().unwrap(), asked, "no exchange for a listing");
    assert_eq!(h.upstream_posts(), before + 2);
    let (status, _, _) = h.post(Some(&token), &call(6, "get_user")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.upstream_posts(), before + 2);
}

/// A body is decided on as UTF-8 JSON, so it reaches the upstream only declared that way: a client's charset
/// (UTF-7 turns one tool name here into a second `name` member in body-parser) or content coding is refused
/// with 415 before anything goes up, and what goes up is declared `application/json` by the sidecar, asking for
/// answers the filter can read.
#[tokio::test]
async fn a_body_declared_in_another_charset_or_coding_never_reaches_the_upstream() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let smuggled = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x+ACI-,+ACI-name+ACI-:+ACI-delete+AF8-user"}}"#;
    for (name, value, reason) in [
        (
            "content-type",
            "application/json; charset=utf-7",
            "unsupported_charset",
        ),
        (
            "content-type",
            "application/json; charset=\"UTF-7\"",
            "unsupported_charset",
        ),
        ("content-type", "text/plain", "unsupported_content_type"),
        ("content-encoding", "gzip", "unsupported_content_encoding"),
        ("content-encoding", "br", "unsupported_content_encoding"),
    ] {
        let mut request = post_request(&h.url("/mcp"), Some(&token), smuggled);
        request.headers_mut().insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
        let (status, _, body) = h.send(request).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{value}: {body}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            json!(reason),
            "{value}"
        );
    }
    assert_eq!(h.upstream_posts(), 0);
    let mut request = post_request(&h.url("/mcp"), Some(&token), &call(2, "get_user"));
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("Application/JSON; charset=UTF-8"),
    );
    request.headers_mut().insert(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("gzip, br"),
    );
    let (status, _, body) = h.send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = h.upstream.seen();
    let forwarded = &seen.last().expect("forwarded").headers;
    assert_eq!(forwarded["content-type"], "application/json");
    assert_eq!(forwarded["accept-encoding"], "identity");
}

/// A session id is no authorization: only the caller the upstream opened a session for may post in it, resume its
/// streams or end it; another token naming it gets 404 (what a client takes as "start a new session") and nothing
/// reaches the upstream. A session not seen opened here is the first caller's to name it.
#[tokio::test]
async fn only_the_caller_a_session_was_opened_for_may_use_it() {
    let h = Harness::start().await;
    let alice = h.token("mcp:read");
    let mallory = h.key.sign(&{
        let mut c = claims_for(now());
        c["sub"] = json!("mallory");
        c["scope"] = json!("mcp:read");
        c
    });
    let in_session = |method: http::Method, token: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(h.url("/mcp"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", "session-1")
            .body(full(body.to_owned()))
            .unwrap()
    };
    let refused = |(status, _, body): (StatusCode, http::HeaderMap, String)| {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "session_not_found"
        );
    };
    h.open_session(&alice).await;
    let before = h.upstream.seen().len();
    refused(
        h.send(in_session(
            http::Method::POST,
            &mallory,
            &call(2, "get_user"),
        ))
        .await,
    );
    refused(h.send(in_session(http::Method::GET, &mallory, "")).await);
    refused(h.send(in_session(http::Method::DELETE, &mallory, "")).await);
    assert_eq!(
        h.upstream.seen().len(),
        before,
        "nothing of mallory's went up"
    );
    let (status, _, body) = h
        .send(in_session(http::Method::POST, &alice, &call(3, "get_user")))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A session opened before this sidecar started is the first caller's to name it here.
    let other_session = |token: &str| {
        let mut request = in_session(http::Method::POST, token, &call(4, "get_user"));
        request
            .headers_mut()
            .insert("mcp-session-id", "session-0".parse().unwrap());
        request
    };
    assert_eq!(h.send(other_session(&alice)).await.0, StatusCode::OK);
    refused(h.send(other_session(&mallory)).await);
    assert_eq!(
        h.send(in_session(http::Method::DELETE, &alice, "")).await.0,
        StatusCode::OK
    );
}

/// A field the `Connection` field lists is hop-by-hop: dropped before the upstream. An MCP field listed there
/// would be decided on by the sidecar and never seen by the upstream (a DELETE would end the sidecar's binding
/// of a session the upstream kept, leaving the id to whoever names it first), so such a request is refused.
#[tokio::test]
async fn a_connection_field_cannot_hide_an_mcp_field_from_the_upstream() {
    let h = Harness::start().await;
    let alice = h.token("mcp:read");
    let mallory = h.key.sign(&{
        let mut c = claims_for(now());
        c["sub"] = json!("mallory");
        c["scope"] = json!("mcp:read");
        c
    });
    let hiding = |method: http::Method, token: &str, connection: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(h.url("/mcp"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", "session-1")
            .header("mcp-protocol-version", "2025-11-25")
            .header("connection", connection)
            .body(full(body.to_owned()))
            .unwrap()
    };
    let refused = |(status, _, body): (StatusCode, http::HeaderMap, String)| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({
                "error": "invalid_request",
                "error_description": "the Connection field lists an MCP field: the upstream would not see what the request was decided on",
            })
        );
    };
    h.open_session(&alice).await;
    let before = h.upstream.seen().len();
    refused(
        h.send(hiding(http::Method::DELETE, &alice, "Mcp-Session-Id", ""))
            .await,
    );
    refused(
        h.send(hiding(
            http::Method::POST,
            &alice,
            "keep-alive, mcp-protocol-version",
            &call(2, "get_user"),
        ))
        .await,
    );
    // Refused before the token is looked at: no token needed to learn the request is malformed.
    refused(
        h.send(hiding(
            http::Method::GET,
            "not-a-token",
            "mcp-session-id",
            "",
        ))
        .await,
    );
    assert_eq!(h.upstream.seen().len(), before, "nothing went up");
    // The refused DELETE ended nothing: the session is still alice's alone.
    let (status, _, body) = h
        .send(hiding(
            http::Method::POST,
            &mallory,
            "keep-alive",
            &call(3, "get_user"),
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = h
        .send(hiding(
            http::Method::POST,
            &alice,
            "keep-alive",
            &call(4, "get_user"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// An MCP field spelled with `_` reads as the real one to a CGI-style server, but the sidecar decides on the
/// fields spelled with `-`: the look-alike never reaches the upstream, so it cannot name a session whose
/// caller nobody checked.
#[tokio::test]
async fn mcp_fields_spelled_with_underscores_do_not_reach_the_upstream() {
    let h = Harness::start().await;
    let alice = h.token("mcp:read");
    h.open_session(&alice).await;
    let request = Request::builder()
        .method(http::Method::POST)
        .uri(h.url("/mcp"))
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp_session_id", "session-1")
        .header("mcp_protocol_version", "2026-07-28")
        .header("mcp-param_region", "eu")
        .body(full(call(2, "get_user")))
        .unwrap();
    let (status, _, body) = h.send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = h.upstream.seen();
    let forwarded = &seen.last().expect("forwarded").headers;
    for gone in ["mcp_session_id", "mcp_protocol_version", "mcp-param_region"] {
        assert!(!forwarded.contains_key(gone), "{gone}: {forwarded:?}");
    }
}

/// The sidecar asks for answers unencoded; an upstream that compresses a list anyway sends bytes the filter
/// cannot read. Such an answer to a filtered request is refused, SSE as well as JSON (an SSE filter would find
/// no `data:` line and pass every entry on); an answer no filter reads goes on as it came.
#[tokio::test]
async fn an_encoded_answer_to_a_filtered_request_is_refused() {
    let h = Harness::start().await;
    let list = r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#;
    for url in ["/mcp?encoding=gzip", "/mcp?sse=1&encoding=gzip"] {
        let (status, _, body) = h
            .send(post_request(&h.url(url), Some(&h.token("mcp:read")), list))
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{url}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"error": "bad_gateway", "error_description": "the upstream's list answer could not be filtered"}),
            "{url}"
        );
    }
    let (status, headers, _) = h
        .send(post_request(
            &h.url("/mcp?sse=1&encoding=gzip"),
            Some(&h.token("mcp:read")),
            &call(3, "get_user"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
}

/// Two `Mcp-Session-Id` fields: the sidecar would bind one and an upstream reading the last copy (CGI) or the
/// copies joined would serve the other, whose caller nobody checked. Refused before the token is looked at.
#[tokio::test]
async fn a_request_naming_two_sessions_is_refused() {
    let h = Harness::start().await;
    let alice = h.token("mcp:read");
    let mallory = h.key.sign(&{
        let mut c = claims_for(now());
        c["sub"] = json!("mallory");
        c["scope"] = json!("mcp:read");
        c
    });
    h.open_session(&alice).await;
    let before = h.upstream.seen().len();
    for method in [http::Method::DELETE, http::Method::GET, http::Method::POST] {
        let body = if method == http::Method::POST {
            call(2, "get_user")
        } else {
            String::new()
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(h.url("/mcp"))
            .header("authorization", format!("Bearer {mallory}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", "mallory-own")
            .header("mcp-session-id", "session-1")
            .body(full(body))
            .unwrap();
        let (status, _, body) = h.send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({
                "error": "invalid_request",
                "error_description": "Mcp-Session-Id appears more than once: the sidecar and the upstream could read different sessions",
            }),
            "{method}"
        );
    }
    assert_eq!(h.upstream.seen().len(), before, "nothing went up");
}
