//! Two replicas behind one issuer share a real PostgreSQL store: a code issued by one is redeemed at the other,
//! its replay at the first is refused (and revokes), and a refresh token rotated at one is spent at both.

mod support;

use mcp_authz_authserver::server;
use support::*;

#[tokio::test]
async fn replicas_share_codes_grants_and_refresh_tokens() {
    let (_url_file, storage) = postgres_storage("replicas", 4).await;
    let a = TestServer::start_with(|c| c.storage = storage).await;
    // Replica B: the same config (issuer, keys, store), another port.
    let mut config = mcp_authz_authserver::config::AuthServerConfig::load(&a.config_path).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = server::start(config, None).await.unwrap();
    let b_url = |path: &str| format!("http://{}{path}", b.addr);
    let post_b = |path: &str, form: &[(&str, &str)]| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        a.http
            .post(b_url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    let code = a
        .code_for(
            &mut Browser::default(),
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
        )
        .await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
        ("client_id", PUBLIC_CLIENT),
    ];
    let r = post_b("/token", &form).await.unwrap();
    assert_eq!(r.status(), 200);
    let tokens: serde_json::Value = r.json().await.unwrap();
    // B's token verifies with A's JWKS: one key set.
    let (_, claims) = verify_with_jwks(&a, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "alice");
    let (status, replay, _) = a.token(&form).await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        a.introspect(tokens["access_token"].as_str().unwrap()).await["active"],
        false
    );

    let fresh = a.tokens_for(&mut Browser::default(), "files:read").await;
    let refresh = fresh["refresh_token"].as_str().unwrap();
    let r = post_b(
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", PUBLIC_CLIENT),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let (_, reuse, _) = a
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(
        reuse["error_description"],
        "the refresh token was already used; the whole grant has been revoked"
    );
    b.stop().await;
}
