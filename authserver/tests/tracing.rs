//! Tracing of the real `mcp-authz-server` binary into a real Jaeger (issue 20): a token request continues the
//! caller's trace with a server span named for its endpoint and, under it, a span per store call; no span holds
//! the client's assertion or the token it got. Needs `MCP_AUTHZ_JAEGER` (tests/setup/17-jaeger.sh, which
//! `tests/run-all` sources).
mod support;

use std::process::Stdio;

use mcp_authz_otel::testing::{Jaeger, parent_of, tag};
use serde_json::{Value, json};
use support::{JWT_BEARER, RESOURCE, SERVICE_CLIENT, service_signer, start_binary_with_env};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
const PARENT: &str = "01f067aa0ba902b8";
/// What a request may carry that no span may hold: its query, a cookie, a resource it names.
const QUERY: &str = "query-secret-5d1f";
const COOKIE: &str = "cookie-secret-4e8d";
const RESOURCE_SECRET: &str = "resource-secret-7a2b";

#[tokio::test]
async fn a_token_request_is_traced_with_its_endpoint_and_store_calls() {
    let jaeger = Jaeger::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp.as_str()),
        ("OTEL_SERVICE_NAME", "authserver-under-test"),
    ];
    let (_dir, child, base) = start_binary_with_env(Stdio::null(), &env).await;
    let _server = Server(child);
    let (key, header) = service_signer();
    let now = mcp_authz_authserver::clock::now_secs();
    let claims = json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT, "aud": format!("{base}/token"),
        "exp": now + 300, "jti": mcp_authz_authserver::secrets::random_token()});
    let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.as_str()),
            ("resource", RESOURCE),
        ])
        .finish();
    let response = reqwest::Client::new()
        .post(format!("{base}/token?client_secret={QUERY}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("cookie", format!("session={COOKIE}"))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let access_token = body["access_token"].as_str().unwrap().to_owned();

    let trace = jaeger
        .trace(TRACE, |t| {
            !t.named("POST token").is_empty()
                && t.spans().iter().any(|s| {
                    s["operationName"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("store."))
                })
        })
        .await;
    let server = trace.one("POST token");
    assert_eq!(trace.service_of(server), "authserver-under-test");
    assert_eq!(parent_of(server), Some(PARENT), "{server}");
    assert_eq!(tag(server, "http.route"), Some(&json!("token")));
    assert_eq!(tag(server, "http.response.status_code"), Some(&json!(200)));
    let server_id = server["spanID"].as_str().unwrap();
    let store: Vec<&Value> = trace
        .spans()
        .into_iter()
        .filter(|s| {
            s["operationName"]
                .as_str()
                .is_some_and(|n| n.starts_with("store."))
        })
        .collect();
    for span in &store {
        assert_eq!(parent_of(span), Some(server_id), "{span}");
        let op = span["operationName"]
            .as_str()
            .unwrap()
            .trim_start_matches("store.");
        assert_eq!(tag(span, "db.operation.name"), Some(&json!(op)));
    }
    // A client-credentials grant records the issue (with its assertion's id, spent once) in one store write.
    assert!(
        store
            .iter()
            .any(|s| s["operationName"] == "store.record_issue"),
        "{}",
        trace.0
    );
    let text = trace.all_text();
    let signature = assertion.rsplit('.').next().unwrap();
    for secret in [
        assertion.as_str(),
        signature,
        access_token.as_str(),
        QUERY,
        COOKIE,
    ] {
        assert!(!text.contains(secret), "a span holds {secret}: {}", trace.0);
    }
    let token_signature = access_token.rsplit('.').next().unwrap();
    assert!(
        !text.contains(token_signature),
        "a span holds the token's signature"
    );
}

/// A browser's sign-in start carries its parameters in the query (a state, a resource URI) and its session in a
/// cookie: the server span names the endpoint, never them.
#[tokio::test]
async fn an_authorize_request_is_traced_without_its_query_or_cookie() {
    const AUTHORIZE_TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4738";
    let jaeger = Jaeger::start().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp.as_str())];
    let (_dir, child, base) = start_binary_with_env(Stdio::null(), &env).await;
    let _server = Server(child);
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", "https://client.example/metadata.json"),
            ("redirect_uri", "https://client.example/callback"),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ),
            ("code_challenge_method", "S256"),
            ("state", QUERY),
            (
                "resource",
                &format!("https://mcp.example.com/{RESOURCE_SECRET}"),
            ),
        ])
        .finish();
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/authorize?{query}"))
        .header("traceparent", format!("00-{AUTHORIZE_TRACE}-{PARENT}-01"))
        .header("cookie", format!("session={COOKIE}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let trace = jaeger
        .trace(AUTHORIZE_TRACE, |t| !t.named("GET authorize").is_empty())
        .await;
    let server = trace.one("GET authorize");
    assert_eq!(
        tag(server, "http.response.status_code"),
        Some(&json!(status.as_u16()))
    );
    let text = trace.all_text();
    for secret in [QUERY, COOKIE, RESOURCE_SECRET] {
        assert!(!text.contains(secret), "a span holds {secret}: {}", trace.0);
    }
}
