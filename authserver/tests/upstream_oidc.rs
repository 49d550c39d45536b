//! Login federated to a real upstream OpenID Provider (npm `oidc-provider`, run by Node 22 from
//! tests/setup/40-node.sh): code + PKCE to the provider, ID token checked, the configured claim as subject.

mod support;

use mcp_authz_authserver::config::{LoginConfig, UpstreamOidc};
use support::federation::{Browser, NodeProvider, Page, start_node_provider};
use support::*;

async fn federated_server() -> (TestServer, NodeProvider) {
    let port = free_port();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "upstream-secret-0123456789\n").unwrap();
    let secret_path = secret.into_temp_path().keep().unwrap();
    let issuer = format!("http://127.0.0.1:{port}");
    let s = TestServer::start_with(|c| {
        c.login = LoginConfig {
            static_users: None,
            upstream_oidc: Some(UpstreamOidc {
                issuer: issuer.clone(),
                client_id: "mcp-authz".into(),
                client_secret_file: Some(secret_path),
                scopes: vec!["openid".into(), "email".into()],
                subject_claim: "email".into(),
                ca_file: None,
            }),
        };
    })
    .await;
    let provider = start_node_provider("oidc-upstream.mjs", port, &[&s.url("/upstream/callback")]);
    (s, provider)
}

#[tokio::test]
async fn a_person_logs_in_at_the_upstream_provider_and_gets_a_token() {
    let (s, provider) = federated_server().await;
    let mut b = Browser::new();
    let start = url::Url::parse(&s.url(&authorize_query(
        PUBLIC_CLIENT,
        REDIRECT,
        "files:read",
        "up",
    )))
    .unwrap();
    let Page::Html(at, login) = b.go(b.http.get(start.clone()), start).await else {
        panic!("no login page")
    };
    assert!(
        at.starts_with(&provider.issuer),
        "the browser went to the provider: {at}"
    );
    let Page::Html(at, consent) = b
        .submit(&at, &login, &[("login", "alice"), ("password", "any")])
        .await
    else {
        panic!("no provider consent page")
    };
    // The provider's consent, then ours (the subject is the email claim).
    let Page::Html(at, ours) = b.submit(&at, &consent, &[]).await else {
        panic!("no consent page of ours")
    };
    assert!(at.starts_with(&s.base), "{at}");
    assert!(
        ours.contains("Signed in as <strong>alice@example.com</strong>"),
        "{ours}"
    );
    let Page::ToClient(callback) = b.submit(&at, &ours, &[("decision", "approve")]).await else {
        panic!()
    };
    let q = query(&callback);
    assert_eq!(
        (q["state"].as_str(), q["iss"].as_str()),
        ("up", s.base.as_str())
    );
    let (status, body, _) = s
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = verify_with_jwks(&s, body["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "alice@example.com");

    // Replaying the provider's callback finds nothing to finish.
    let replay = format!("{}/upstream/callback?code=x&state=y", s.base);
    let r = s.http.get(replay).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("expired or was already completed")
    );
}

#[tokio::test]
async fn an_upstream_refusal_goes_back_to_the_client_as_access_denied() {
    let (s, provider) = federated_server().await;
    let mut b = Browser::new();
    let start = url::Url::parse(&s.url(&authorize_query(
        PUBLIC_CLIENT,
        REDIRECT,
        "files:read",
        "no",
    )))
    .unwrap();
    let Page::Html(at, login) = b.go(b.http.get(start.clone()), start).await else {
        panic!()
    };
    assert!(at.starts_with(&provider.issuer));
    // oidc-provider's interaction pages link to ".../abort", which answers the request with access_denied.
    let abort = url::Url::parse(&at)
        .unwrap()
        .join(&format!("{}/abort", url::Url::parse(&at).unwrap().path()))
        .unwrap();
    let _ = login;
    let Page::ToClient(callback) = b.go(b.http.get(abort.clone()), abort).await else {
        panic!("no redirect to client")
    };
    let q = query(&callback);
    assert_eq!(q["error"], "access_denied");
    assert!(
        q["error_description"].starts_with("the upstream sign-in failed: access_denied"),
        "{q:?}"
    );
    assert_eq!(
        (q["state"].as_str(), q["iss"].as_str()),
        ("no", s.base.as_str())
    );
}
