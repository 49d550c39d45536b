//! Every refusal of `/authorize` and `/token`, with the exact `error` and `error_description`.

mod support;

use support::*;

/// `/authorize` with one parameter replaced (or removed with `None`).
fn authorize_with(changes: &[(&str, Option<&str>)]) -> String {
    let base = authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "st");
    let url = url::Url::parse(&format!("http://x{base}")).unwrap();
    let mut pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    for (name, value) in changes {
        pairs.retain(|(k, _)| k != name);
        if let Some(v) = value {
            pairs.push(((*name).to_owned(), (*v).to_owned()));
        }
    }
    format!(
        "/authorize?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    )
}

#[tokio::test]
async fn authorize_errors_that_must_not_redirect_are_pages() {
    let s = TestServer::start().await;
    let cases: Vec<(String, &str, &str)> = vec![
        (
            authorize_with(&[("client_id", None)]),
            "invalid_request",
            "parameter client_id is missing",
        ),
        (
            authorize_with(&[("client_id", Some("nobody"))]),
            "invalid_client",
            "unknown client_id &quot;nobody&quot;",
        ),
        (
            authorize_with(&[("redirect_uri", None)]),
            "invalid_request",
            "parameter redirect_uri is missing",
        ),
        (
            authorize_with(&[("redirect_uri", Some("https://evil.example/cb"))]),
            "invalid_request",
            "redirect_uri &quot;https://evil.example/cb&quot; is not registered for this client",
        ),
        (
            authorize_with(&[("redirect_uri", Some("https://app.example.com/cb/../evil"))]),
            "invalid_request",
            "is not registered for this client",
        ),
        (
            format!("{}&state=again", authorize_with(&[])),
            "invalid_request",
            "parameter state is repeated",
        ),
        (
            authorize_with(&[("client_id", Some("https://127.0.0.1/client.json"))]),
            "invalid_client",
            "",
        ),
    ];
    for (path, error, description) in cases {
        let r = s.http.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert!(
            r.headers().get("location").is_none(),
            "{path} must not redirect"
        );
        assert_eq!(r.headers()["cache-control"], "no-store");
        let html = r.text().await.unwrap();
        assert!(
            html.contains(&format!("data-error=\"{error}\"")),
            "{path}: {html}"
        );
        assert!(html.contains(description), "{path}: {html}");
    }
}

#[tokio::test]
async fn authorize_errors_redirect_with_error_state_and_iss() {
    let s = TestServer::start().await;
    let cases: Vec<(String, &str, &str)> = vec![
        (
            authorize_with(&[("response_type", None)]),
            "invalid_request",
            "parameter response_type is missing",
        ),
        (
            authorize_with(&[("response_type", Some("token"))]),
            "unsupported_response_type",
            "response_type \"token\" is not supported; use code",
        ),
        (
            authorize_with(&[("code_challenge", None)]),
            "invalid_request",
            "code_challenge is required (PKCE with S256)",
        ),
        (
            authorize_with(&[("code_challenge_method", None)]),
            "invalid_request",
            "code_challenge_method is required and must be S256",
        ),
        (
            authorize_with(&[("code_challenge_method", Some("plain"))]),
            "invalid_request",
            "code_challenge_method \"plain\" is not supported; only S256",
        ),
        (
            authorize_with(&[("code_challenge", Some("short"))]),
            "invalid_request",
            "code_challenge is not a base64url SHA-256 value (43 characters)",
        ),
        (
            authorize_with(&[("scope", Some("mail:read"))]),
            "invalid_scope",
            "scope \"mail:read\" is not offered by resource https://mcp.example.com/files",
        ),
        (
            authorize_with(&[("scope", Some("files:read \"x"))]),
            "invalid_scope",
            "scope contains a character that is not allowed",
        ),
    ];
    for (path, error, description) in cases {
        let r = s.http.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(WEB_REDIRECT), "{location}");
        let q = query(&location);
        assert_eq!(q.get("error").map(String::as_str), Some(error), "{path}");
        assert_eq!(
            q.get("error_description").map(String::as_str),
            Some(description),
            "{path}"
        );
        assert_eq!(q["state"], "st");
        assert_eq!(q["iss"], s.base);
    }
    // Without a resource of ours no policy says which redirect URIs are trusted (RFC 9700 §4.11.2): a page.
    let pages = [
        (
            authorize_with(&[("resource", None)]),
            "the resource parameter is required (RFC 8707)",
        ),
        (
            authorize_with(&[("resource", Some("https://mcp.example.com/other"))]),
            "resource &quot;https://mcp.example.com/other&quot; is not a resource of this server",
        ),
        (
            authorize_with(&[("resource", Some("https://mcp.example.com/files/"))]),
            "resource &quot;https://mcp.example.com/files/&quot; is not a resource of this server",
        ),
    ];
    for (path, description) in pages {
        let r = s.http.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert!(r.headers().get("location").is_none(), "{path}");
        let html = r.text().await.unwrap();
        assert!(html.contains("data-error=\"invalid_target\""), "{html}");
        assert!(
            html.contains(&format!("<p id=\"error_description\">{description}</p>")),
            "{html}"
        );
    }
    // A client that may not use the code grant.
    let path = authorize_query(SERVICE_CLIENT, WEB_REDIRECT, "files:read", "st");
    let r = s.http.get(s.url(&path)).send().await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "the service client has no redirect URI, so this is a page"
    );
}

#[tokio::test]
async fn token_errors_are_oauth_json_with_exact_codes() {
    let s = TestServer::start().await;
    let code = s
        .code_for(
            &mut Browser::default(),
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
        )
        .await;
    let good = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
        ("client_id", PUBLIC_CLIENT),
    ];
    let with = |name: &'static str, value: Option<&'static str>| {
        let mut f: Vec<(&str, &str)> = good.iter().filter(|(k, _)| *k != name).cloned().collect();
        if let Some(v) = value {
            f.push((name, v));
        }
        f
    };
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            with("grant_type", None),
            400,
            "invalid_request",
            "parameter grant_type is missing",
        ),
        (
            with("grant_type", Some("password")),
            400,
            "unsupported_grant_type",
            "grant_type \"password\" is not supported",
        ),
        (
            with("client_id", None),
            401,
            "invalid_client",
            "client_id is missing",
        ),
        (
            with("client_id", Some("nobody")),
            401,
            "invalid_client",
            "unknown client_id \"nobody\"",
        ),
        (
            with("client_id", Some(SERVICE_CLIENT)),
            401,
            "invalid_client",
            "this client is registered for token_endpoint_auth_method private_key_jwt, not none",
        ),
        (
            with("code", None),
            400,
            "invalid_request",
            "parameter code is missing",
        ),
        (
            with("code_verifier", None),
            400,
            "invalid_request",
            "parameter code_verifier is missing",
        ),
        (
            with("code", Some("not-a-code")),
            400,
            "invalid_grant",
            "the authorization code is unknown or expired",
        ),
        (
            with("client_secret", Some("s3cret")),
            401,
            "invalid_client",
            "this client is registered for token_endpoint_auth_method none, not client_secret_post",
        ),
        (
            with(
                "client_assertion_type",
                Some("urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
            ),
            401,
            "invalid_client",
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
    ];
    for (form, status, error, description) in cases {
        let (got, body, headers) = s.token(&form).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{form:?}: {body}"
        );
        assert_eq!(body["error_description"], description, "{form:?}");
        assert_eq!(headers["cache-control"], "no-store");
    }
    // The code is still good after all those (none of them spent it) - but a wrong verifier or redirect spends it.
    let (status, body, _) = s
        .token(&with(
            "code_verifier",
            Some("wrong-verifier-wrong-verifier-wrong-verifier-x"),
        ))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        body["error_description"],
        "code_verifier does not match the code_challenge"
    );

    let code = s
        .code_for(
            &mut Browser::default(),
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
        )
        .await;
    let mut form = good.clone();
    form[1] = ("code", code.as_str());
    form[2] = ("redirect_uri", "http://127.0.0.1/other");
    let (_, body, _) = s.token(&form).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        body["error_description"],
        "redirect_uri does not match the authorization request"
    );

    let code = s
        .code_for(
            &mut Browser::default(),
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
        )
        .await;
    let mut form = good.clone();
    form[1] = ("code", code.as_str());
    form.push(("resource", OTHER_RESOURCE));
    let (_, body, _) = s.token(&form).await;
    assert_eq!(body["error"], "invalid_target");

    let code = s
        .code_for(
            &mut Browser::default(),
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
        )
        .await;
    let mut form = good.clone();
    form[1] = ("code", code.as_str());
    form[4] = ("client_id", WEB_CLIENT);
    let (_, body, _) = s.token(&form).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        body["error_description"],
        "the authorization code was issued to another client"
    );
}

#[tokio::test]
async fn token_endpoint_refuses_malformed_bodies() {
    let s = TestServer::start().await;
    let send = |body: String, content_type: &'static str| {
        s.http
            .post(s.url("/token"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = vec![
        (
            send(
                "grant_type=a&grant_type=b".into(),
                "application/x-www-form-urlencoded",
            )
            .await
            .unwrap(),
            "parameter grant_type is repeated",
        ),
        (
            send("{\"grant_type\":\"x\"}".into(), "application/json")
                .await
                .unwrap(),
            "the body must be application/x-www-form-urlencoded",
        ),
        (
            send(
                format!("grant_type={}", "a".repeat(20_000)),
                "application/x-www-form-urlencoded",
            )
            .await
            .unwrap(),
            "the body is larger than 16384 bytes",
        ),
        (
            send("code=%FF%FE".into(), "application/x-www-form-urlencoded")
                .await
                .unwrap(),
            "parameter grant_type is missing",
        ),
    ];
    for (r, description) in cases {
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_description"], description);
    }
    let r = s
        .http
        .post(s.url("/token"))
        .basic_auth("cli", Some("x"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&resource={RESOURCE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"token endpoint\""
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (&body["error"], &body["error_description"]),
        (
            &serde_json::json!("invalid_client"),
            &serde_json::json!(
                "this client is registered for token_endpoint_auth_method none, not client_secret_basic"
            )
        )
    );
    let r = s.http.get(s.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_client_trickling_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let addr = s.running.as_ref().unwrap().addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Headers started, never finished (slowloris).
    stream
        .write_all(b"GET /jwks HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let bound = mcp_authz_authserver::server::HEADER_READ_TIMEOUT * 3;
    let read = tokio::time::timeout(bound, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server kept a half-sent request open for {bound:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}
