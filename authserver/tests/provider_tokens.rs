//! Third-party APIs with the person's own account (issue 18 part 2) at a real server: a real OAuth provider (npm
//! `oidc-provider`, tests/authserver/oidc-third-party.mjs) with real login and consent pages, connected on our
//! consent page or from a connect link; the files service's resource server (with the key derived for it, as its
//! sidecar holds it) obtains the person's provider access token by token exchange. Refresh, rotation, revocation
//! at the provider, a provider that is down or answers garbage: each answered in OAuth's form, and no other person
//! or service ever gets the token.

mod support;

use std::sync::{Arc, Mutex};

use mcp_authz_authserver::providers::seal::Field;
use mcp_authz_authserver::store::ProviderConnection;
use serde_json::Value;
use support::federation::{Browser, NodeProvider, Page};
use support::providers::*;
use support::*;

/// Our sign-in as `user`, up to our consent page (its URL and HTML).
async fn to_consent(p: &Plane, b: &mut Browser, user: &str) -> (String, String) {
    let Page::Html(at, consent) = sign_in(p, b, user).await else {
        panic!("no consent page")
    };
    (at, consent)
}

/// Our sign-in as `user`: what follows the login form.
async fn sign_in(p: &Plane, b: &mut Browser, user: &str) -> Page {
    let start = url::Url::parse(&p.s.url(&authorize_query(
        PUBLIC_CLIENT,
        REDIRECT,
        "files:read",
        "st",
    )))
    .unwrap();
    let Page::Html(at, login) = b.go(b.http.get(start.clone()), start).await else {
        panic!("no login page")
    };
    b.submit(
        &at,
        &login,
        &[("username", user), ("password", "wonderland")],
    )
    .await
}

/// The provider's own login and consent pages, as `user`; where the browser lands after them.
async fn at_provider(b: &mut Browser, at: &str, login: &str, user: &str) -> Page {
    let Page::Html(at, consent) = b
        .submit(at, login, &[("login", user), ("password", "any")])
        .await
    else {
        panic!("no provider consent page")
    };
    b.submit(&at, &consent, &[]).await
}

/// The access token for the code in a callback to the client.
async fn redeem(s: &TestServer, callback: &str) -> String {
    let q = query(callback);
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
    body["access_token"].as_str().unwrap().to_owned()
}

/// What the provider's userinfo endpoint says of a token.
async fn userinfo(provider: &NodeProvider, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/me", provider.issuer))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// bob signs in and consents, then walks away from the provider's login page: the provider answers
/// access_denied, and the client still gets its code (connecting is not a condition of consent).
async fn token_without_connecting(p: &Plane, user: &str) -> String {
    let mut b = Browser::new();
    let (at, consent) = to_consent(p, &mut b, user).await;
    let Page::Html(at, _) = b.submit(&at, &consent, &[("decision", "approve")]).await else {
        panic!("no provider page")
    };
    let at = url::Url::parse(&at).unwrap();
    let abort = at.join(&format!("{}/abort", at.path())).unwrap();
    let Page::ToClient(callback) = b.go(b.http.get(abort.clone()), abort).await else {
        panic!("no code for the client after the provider was left")
    };
    redeem(&p.s, &callback).await
}

#[tokio::test]
async fn a_person_connects_on_the_consent_page_and_only_their_service_gets_their_provider_token() {
    let port = free_port();
    let p = plane(At::Discovery(port), Some((port, "600", "false"))).await;
    let provider = p.provider.as_ref().unwrap();
    let s = &p.s;

    let mut b = Browser::new();
    let (at, consent) = to_consent(&p, &mut b, "alice").await;
    assert!(
        consent.contains(
            "<ul id=\"providers\"><li>Acme (not connected)</li></ul><p>If you allow, you will connect your \
             <strong>Acme</strong> account next.</p>"
        ),
        "{consent}"
    );
    let Page::Html(at, login) = b.submit(&at, &consent, &[("decision", "approve")]).await else {
        panic!("no provider login page")
    };
    assert!(at.starts_with(&provider.issuer), "{at}");
    let Page::ToClient(callback) = at_provider(&mut b, &at, &login, "alice").await else {
        panic!("no code for the client after connecting")
    };
    assert_eq!(query(&callback)["state"], "st");
    let person = redeem(s, &callback).await;

    let (status, body) = p.provider_token(RESOURCE, &person, "p-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["issued_token_type"].as_str(),
            body["token_type"].as_str()
        ),
        (Some(ACCESS_TOKEN), Some("Bearer"))
    );
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!((540..=600).contains(&expires_in), "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(userinfo(provider, &token).await["sub"], "alice");
    // Still fresh: the stored token is handed out again, the provider is not asked.
    let (_, again) = p.provider_token(RESOURCE, &person, "p-2").await;
    assert_eq!(again["access_token"].as_str(), Some(token.as_str()));

    // At rest the row holds neither token, and opens only for alice at Acme.
    let pool = sqlx_pool(s).await;
    let (subject, key_id, access, refresh): (String, String, String, String) = sqlx::query_as(
        "SELECT subject, key_id, access_sealed, refresh_sealed FROM provider_connections",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(subject, "alice");
    assert!(!access.contains(&token) && !refresh.contains(&token));
    let sealer = p.sealer();
    assert_eq!(
        sealer
            .open(&key_id, &access, "alice", "acme", Field::Access)
            .as_deref(),
        Ok(token.as_str())
    );
    assert!(
        sealer
            .open(&key_id, &access, "bob", "acme", Field::Access)
            .is_err()
    );
    assert!(
        sealer
            .open(&key_id, &refresh, "alice", "other", Field::Refresh)
            .is_err()
    );

    // Another person's token gets nothing of alice's; another service's resource server gets nothing at all.
    let bobs = token_without_connecting(&p, "bob").await;
    let (status, body) = p.provider_token(RESOURCE, &bobs, "p-3").await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "interaction_required",
                format!(
                    "not connected: the person must connect Acme at {}/connect/acme",
                    s.base
                )
                .as_str()
            )
        )
    );
    let (status, body) = p.provider_token(OTHER_RESOURCE, &person, "p-4").await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "invalid_grant",
                "the subject token was not issued for this resource server's service"
            )
        )
    );
    // No refusal says anything of the token.
    let audit = s
        .http
        .get(format!("{}/admin/audit?limit=100", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !audit.contains(&token),
        "the audit rows hold a provider token"
    );
    assert!(audit.contains("provider_token"), "{audit}");

    // Revoking alice's grant deletes her connection (bob has none), and the server tells Acme within seconds.
    assert_eq!(p.stored_rows().await, 1);
    let refresh = refresh_of(&p).await;
    assert_eq!(
        provider_refresh(provider, &refresh).await,
        200,
        "Acme takes it before"
    );
    let r = s
        .http
        .post(format!("{}/admin/grants/revoke?subject=alice", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.stored_rows().await, 0);
    let mut refused_at_acme = false;
    for _ in 0..40 {
        if provider_refresh(provider, &refresh).await == 400 {
            refused_at_acme = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        refused_at_acme,
        "Acme still takes the refresh token of a revoked grant after 20 s"
    );
    let (status, body) = p.provider_token(RESOURCE, &person, "p-6").await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "invalid_grant",
                "the subject token is revoked or unknown to this server"
            )
        )
    );
}

#[tokio::test]
async fn a_connect_link_then_refreshes_with_rotation_a_disconnect_and_a_revocation_at_the_provider()
{
    let port = free_port();
    // Access tokens of 30 s: never fresh enough to hand out, so every exchange refreshes.
    let p = plane(At::Discovery(port), Some((port, "30", "true"))).await;
    let provider = p.provider.as_ref().unwrap();
    let s = &p.s;
    let person = token_without_connecting(&p, "alice").await;
    let (status, body) = p.provider_token(RESOURCE, &person, "r-0").await;
    assert_eq!(error_of(&body).0, "interaction_required", "{status} {body}");

    // The link an MCP client shows (URL elicitation), opened in a browser signed in as alice.
    let mut b = Browser::new();
    // Signed in (the session is all the link needs; the consent given before is remembered).
    assert!(matches!(
        sign_in(&p, &mut b, "alice").await,
        Page::ToClient(_)
    ));
    let done = connect_via_link(&p, &mut b, "alice").await;
    assert!(done.contains("Your Acme account is connected."), "{done}");
    let first_refresh = refresh_of(&p).await;

    let (status, body) = p.provider_token(RESOURCE, &person, "r-1").await;
    assert_eq!(status, 200, "{body}");
    let one = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(userinfo(provider, &one).await["sub"], "alice");
    let second_refresh = refresh_of(&p).await;
    assert_ne!(
        first_refresh, second_refresh,
        "the rotated refresh token is stored"
    );
    let (status, body) = p.provider_token(RESOURCE, &person, "r-2").await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["access_token"].as_str(), Some(one.as_str()));
    let held = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh_of(&p).await, second_refresh);

    // alice disconnects: the stored tokens go, and the provider no longer takes the refresh token.
    let refresh = refresh_of(&p).await;
    let form = url::Url::parse(&s.url("/connect/acme/disconnect")).unwrap();
    let Page::Html(at, question) = b.go(b.http.get(form.clone()), form).await else {
        panic!("no disconnect page")
    };
    let Page::Html(_, done) = b.submit(&at, &question, &[]).await else {
        panic!("no page after disconnecting")
    };
    assert!(
        done.contains("Your Acme account is no longer connected."),
        "{done}"
    );
    assert_eq!(p.stored_rows().await, 0);
    assert_eq!(
        provider_refresh(provider, &refresh).await,
        400,
        "revoked at the provider too"
    );
    // The access token the MCP server was handed no longer works there either.
    assert_eq!(userinfo(provider, &held).await["error"], "invalid_token");
    assert_eq!(p.queued_revocations().await, 0, "nothing left to tell");
    let (status, body) = p.provider_token(RESOURCE, &person, "r-d").await;
    assert_eq!(
        (status, error_of(&body).0),
        (400, "interaction_required"),
        "{body}"
    );

    // Connected again, then the person revokes the grant at the provider itself (RFC 7009 with our client's
    // credentials, as the provider's own account page would).
    connect_via_link(&p, &mut b, "alice").await;
    let r = reqwest::Client::new()
        .post(format!("{}/token/revocation", provider.issuer))
        .basic_auth(PROVIDER_CLIENT, Some(PROVIDER_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("token", &refresh_of(&p).await)
                .append_pair("token_type_hint", "refresh_token")
                .finish(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = p.provider_token(RESOURCE, &person, "r-3").await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "interaction_required",
                format!(
                    "the provider no longer accepts the stored connection (revoked there): the person must connect Acme at {}/connect/acme",
                    s.base
                )
                .as_str()
            )
        )
    );
    assert_eq!(
        p.stored_rows().await,
        0,
        "the revoked connection is deleted"
    );
}

/// Opens the connect link in `b` (signed in here) and goes through the provider's pages as `user`, whichever it
/// shows (none when it remembers the person and their consent); our page at the end.
async fn connect_via_link(p: &Plane, b: &mut Browser, user: &str) -> String {
    let link = url::Url::parse(&p.s.url("/connect/acme")).unwrap();
    let mut page = b.go(b.http.get(link.clone()), link).await;
    for _ in 0..4 {
        match page {
            Page::Html(at, html) if at.starts_with(&p.s.base) => return html,
            Page::Html(at, html) => {
                let login = [("login", user), ("password", "any")];
                let fields: &[(&str, &str)] = if html.contains("name=\"login\"") {
                    &login
                } else {
                    &[]
                };
                page = b.submit(&at, &html, fields).await;
            }
            Page::ToClient(to) => panic!("sent to the client: {to}"),
        }
    }
    panic!("the provider's pages did not end")
}

/// The status Acme answers a refresh with `refresh` (as our client).
async fn provider_refresh(provider: &NodeProvider, refresh: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/token", provider.issuer))
        .basic_auth(PROVIDER_CLIENT, Some(PROVIDER_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh)
                .finish(),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// alice's refresh token at Acme as stored, opened with the server's key file.
async fn refresh_of(p: &Plane) -> String {
    let (key_id, refresh): (String, String) =
        sqlx::query_as("SELECT key_id, refresh_sealed FROM provider_connections")
            .fetch_one(&sqlx_pool(&p.s).await)
            .await
            .unwrap();
    p.sealer()
        .open(&key_id, &refresh, "alice", "acme", Field::Refresh)
        .unwrap()
}

#[tokio::test]
async fn a_provider_that_is_down_or_answers_garbage_is_refused_in_oauth_form() {
    let answer = Arc::new(Mutex::new((200, String::new())));
    let base = fake_token_endpoint(answer.clone()).await;
    let p = plane(At::Endpoints(base), None).await;
    let down = plane(
        At::Endpoints(format!("http://127.0.0.1:{}", free_port())),
        None,
    )
    .await;
    let refresh_token = "stored-refresh-token-0123456789";
    // alice connected earlier; her access token has expired, so the next request refreshes.
    let seed = |p: &Plane| {
        let sealer = p.sealer();
        let (key_id, refresh_sealed) = sealer.seal("alice", "acme", Field::Refresh, refresh_token);
        let connection = ProviderConnection {
            subject: "alice".into(),
            provider: "acme".into(),
            key_id,
            refresh_sealed: Some(refresh_sealed),
            access_sealed: sealer
                .seal("alice", "acme", Field::Access, "expired-access")
                .1,
            access_expires_at: 0,
            scopes: String::new(),
            created_at: 0,
            updated_at: 0,
        };
        let store = p.store();
        async move { store.put_connection(&connection).await.unwrap() }
    };
    let unavailable = |what: &str| {
        (
            503,
            (
                "temporarily_unavailable".to_owned(),
                format!("no token from the provider: Acme {what}; retry later"),
            ),
        )
    };
    // Connected before signing in, so the consent page has nothing to connect.
    seed(&p).await;
    let person =
        p.s.tokens_for(&mut support::Browser::default(), "files:read")
            .await;
    let person = person["access_token"].as_str().unwrap().to_owned();
    // (what the provider answers, what the resource server is told)
    let cases = [
        (
            (200, "<html>busy</html>"),
            unavailable("answered with an unusable token response (not a JSON object)"),
        ),
        (
            (
                200,
                r#"{"access_token":"at","token_type":"MAC","expires_in":60}"#,
            ),
            unavailable("answered with an unusable token response (token_type is not Bearer)"),
        ),
        (
            (200, r#"{"token_type":"Bearer","expires_in":600}"#),
            unavailable("answered with an unusable token response (no usable access_token)"),
        ),
        (
            (500, "Internal Server Error"),
            unavailable("refused the refresh (HTTP status 500)"),
        ),
        (
            (401, r#"{"error":"invalid_client"}"#),
            unavailable("refused the refresh (invalid_client)"),
        ),
    ];
    for (n, ((status, body), want)) in cases.into_iter().enumerate() {
        *answer.lock().unwrap() = (status, body.to_owned());
        seed(&p).await;
        let (got_status, got) = p.provider_token(RESOURCE, &person, &format!("g-{n}")).await;
        let (code, description) = error_of(&got);
        assert_eq!(
            (got_status, (code.to_owned(), description.to_owned())),
            want,
            "{body}"
        );
        assert!(!description.contains(refresh_token), "{description}");
        assert_eq!(
            p.stored_rows().await,
            1,
            "a provider in trouble keeps the connection"
        );
    }

    // Rows that can no longer serve: deleted, and the person asked to connect again.
    let connect_again = |why: &str| {
        (
            400,
            (
                "interaction_required".to_owned(),
                format!(
                    "{why}: the person must connect Acme at {}/connect/acme",
                    p.s.base
                ),
            ),
        )
    };
    let sealer = p.sealer();
    let unreadable = ProviderConnection {
        subject: "alice".into(),
        provider: "acme".into(),
        key_id: "v2:a-key-no-longer-in-the-file".into(),
        refresh_sealed: Some(
            sealer
                .seal("alice", "acme", Field::Refresh, refresh_token)
                .1,
        ),
        access_sealed: sealer
            .seal("alice", "acme", Field::Access, "expired-access")
            .1,
        access_expires_at: 0,
        scopes: String::new(),
        created_at: 0,
        updated_at: 0,
    };
    let (key_id, access_sealed) = sealer.seal("alice", "acme", Field::Access, "expired-access");
    let no_refresh = ProviderConnection {
        key_id: key_id.clone(),
        access_sealed,
        refresh_sealed: None,
        ..unreadable.clone()
    };
    // Sealed under a key this server has, for another person: altered, it never opens again.
    let altered = ProviderConnection {
        key_id: key_id.clone(),
        access_sealed: sealer
            .seal("mallory", "acme", Field::Access, "expired-access")
            .1,
        refresh_sealed: Some(
            sealer
                .seal("mallory", "acme", Field::Refresh, refresh_token)
                .1,
        ),
        ..unreadable.clone()
    };
    // (row, answer, rows left): a key id this server has not read (yet: a new key file reaching the replicas one
    // by one) keeps the connection and asks to retry; rows that can never open are deleted.
    for (n, (row, want, left)) in [
        (
            unreadable,
            (
                503,
                (
                    "temporarily_unavailable".to_owned(),
                    "the provider connection is sealed under a key this server does not have yet; retry later"
                        .to_owned(),
                ),
            ),
            1,
        ),
        (
            altered,
            connect_again("the stored connection can no longer be read"),
            0,
        ),
        (
            no_refresh,
            connect_again("the provider's access token expired and it gave no refresh token"),
            0,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        p.store().put_connection(&row).await.unwrap();
        let (status, body) = p.provider_token(RESOURCE, &person, &format!("u-{n}")).await;
        let (code, description) = error_of(&body);
        assert_eq!((status, (code.to_owned(), description.to_owned())), want);
        assert_eq!(p.stored_rows().await, left, "{n}");
    }

    // Revoked at the provider: the connection is deleted and the person asked to connect again.
    *answer.lock().unwrap() = (400, r#"{"error":"invalid_grant"}"#.to_owned());
    seed(&p).await;
    let (status, body) = p.provider_token(RESOURCE, &person, "g-revoked").await;
    let (code, description) = error_of(&body);
    assert_eq!(
        (status, (code.to_owned(), description.to_owned())),
        connect_again("the provider no longer accepts the stored connection (revoked there)")
    );
    assert_eq!(p.stored_rows().await, 0);

    // A good answer after all that: the token, and the refresh token kept (the provider did not rotate it).
    *answer.lock().unwrap() = (
        200,
        r#"{"access_token":"fresh-access","token_type":"Bearer","expires_in":900}"#.to_owned(),
    );
    seed(&p).await;
    let (status, body) = p.provider_token(RESOURCE, &person, "g-ok").await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("fresh-access")),
        "{body}"
    );
    let stored = p
        .store()
        .connection("alice", "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        p.sealer()
            .open(
                &stored.key_id,
                stored.refresh_sealed.as_deref().unwrap(),
                "alice",
                "acme",
                Field::Refresh
            )
            .as_deref(),
        Ok(refresh_token)
    );

    // A machine client's token has no person's account behind it: nothing to pass on (the sidecar forwards its
    // calls without the header).
    let (status, machine) = p.s.client_credentials(&assertion(&p.s, |_| {}), &[]).await;
    assert_eq!(status, 200, "{machine}");
    let (status, body) = p
        .provider_token(
            RESOURCE,
            machine["access_token"].as_str().unwrap(),
            "machine",
        )
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "invalid_scope",
                "provider tokens are for people: no person stands behind the subject token"
            )
        )
    );

    // Nothing listens where the provider should be.
    seed(&down).await;
    let person = down
        .s
        .tokens_for(&mut support::Browser::default(), "files:read")
        .await;
    let (status, body) = down
        .provider_token(RESOURCE, person["access_token"].as_str().unwrap(), "d-1")
        .await;
    let (code, description) = error_of(&body);
    assert_eq!(
        (status, (code.to_owned(), description.to_owned())),
        unavailable("could not be reached")
    );
}

/// Every refusal of the connect pages, as a page with the exact error (never a redirect anywhere).
#[tokio::test]
async fn the_connect_pages_refuse_in_their_own_form() {
    let answer = Arc::new(Mutex::new((200, "<html>busy</html>".to_owned())));
    let base = fake_token_endpoint(answer.clone()).await;
    let p = plane(At::Endpoints(base.clone()), None).await;
    let s = &p.s;
    let mut stranger = support::Browser::default();
    let (status, html) = page(stranger.get(s, "/connect/acme").await);
    assert_eq!(status, 401);
    assert!(
        shows(
            &html,
            "login_required",
            "sign in to this server through your application first (your sign-in has ended), then open the link again"
        ),
        "{html}"
    );
    let (status, html) = page(stranger.get(s, "/connect/nobody").await);
    assert_eq!(status, 404);
    assert!(
        shows(&html, "invalid_request", "this server has no such provider"),
        "{html}"
    );
    let (status, html) = page(
        stranger
            .get(s, "/connect/acme/callback?state=nope&code=c")
            .await,
    );
    assert_eq!(status, 400);
    assert!(
        shows(
            &html,
            "invalid_request",
            "this connection has expired or was already completed; start again"
        ),
        "{html}"
    );

    // alice, signed in (connected beforehand so that her consent does not go to the fake provider).
    let sealer = p.sealer();
    let (key_id, access_sealed) = sealer.seal("alice", "acme", Field::Access, "a");
    let store = p.store();
    store
        .put_connection(&ProviderConnection {
            subject: "alice".into(),
            provider: "acme".into(),
            key_id,
            refresh_sealed: None,
            access_sealed,
            access_expires_at: i64::MAX,
            scopes: String::new(),
            created_at: 0,
            updated_at: 0,
        })
        .await
        .unwrap();
    let mut alice = support::Browser::default();
    s.tokens_for(&mut alice, "files:read").await;
    // (path after the state, whether the browser's connect cookie goes along, status, error, description)
    let cases = [
        (
            "/connect/acme/callback?code=c&state=",
            false,
            400,
            "invalid_request",
            "the connection did not start in this browser",
        ),
        (
            "/connect/acme/callback?code=c&state=forged-",
            true,
            400,
            "invalid_request",
            "this connection has expired or was already completed; start again",
        ),
        (
            "/connect/other/callback?code=c&state=",
            true,
            400,
            "invalid_request",
            "this callback belongs to another provider&#39;s connection",
        ),
        (
            "/connect/acme/callback?error=access_denied&state=",
            true,
            400,
            "access_denied",
            "Acme answered access_denied",
        ),
        (
            "/connect/acme/callback?code=c&state=",
            true,
            503,
            "temporarily_unavailable",
            "connecting Acme: the provider answered with something that is not a usable token response: not a JSON object",
        ),
    ];
    // A disconnect form from another page, or without this browser's binding.
    let (status, html) = page(
        alice
            .post(
                s,
                "/connect/acme/disconnect",
                &[("csrf", "forged-by-another-page")],
            )
            .await,
    );
    assert_eq!(status, 400);
    assert!(
        shows(
            &html,
            "invalid_request",
            "the form&#39;s CSRF token does not match this browser"
        ),
        "{html}"
    );
    assert!(
        p.store()
            .connection("alice", "acme")
            .await
            .unwrap()
            .is_some()
    );
    for (path, with_cookie, status, error, description) in cases {
        let state = begin_connect(s, &mut alice, &base).await;
        let mut b = support::Browser::default();
        if with_cookie {
            b.cookies = alice.cookies.clone();
        }
        let (got, html) = page(b.get(s, &format!("{path}{state}")).await);
        assert_eq!(got, status, "{path}: {html}");
        assert!(shows(&html, error, description), "{path}: {html}");
        // A callback from another browser, with a state never given, or at another provider's path leaves the
        // person's flow pending (the provider is asked, and answers garbage); any other spends it.
        let (got, html) = page(
            alice
                .get(s, &format!("/connect/acme/callback?code=c&state={state}"))
                .await,
        );
        let pending =
            !with_cookie || path.ends_with("forged-") || path.starts_with("/connect/other/");
        assert_eq!(got, if pending { 503 } else { 400 }, "{path}: {html}");
    }
}

/// Two replicas on one PostgreSQL store asked at once for the same person's expired token: the provider is asked
/// once (a provider that rotates refresh tokens may revoke the grant when one is presented twice), and both
/// answer with the token it gave.
#[tokio::test]
async fn two_replicas_refresh_one_connection_once() {
    let answer = Arc::new(Mutex::new((
        200,
        r#"{"access_token":"from-one-refresh","token_type":"Bearer","expires_in":600,"refresh_token":"rotated"}"#
            .to_owned(),
    )));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let base =
        counted_token_endpoint(answer, calls.clone(), std::time::Duration::from_millis(500)).await;
    let (_url_file, storage) = postgres_storage("provider_replicas", 4).await;
    let p = plane_with(At::Endpoints(base), None, |c| c.storage = storage).await;
    let sealer = p.sealer();
    let (key_id, refresh_sealed) = sealer.seal("alice", "acme", Field::Refresh, "stored-refresh");
    p.store()
        .put_connection(&ProviderConnection {
            subject: "alice".into(),
            provider: "acme".into(),
            key_id,
            refresh_sealed: Some(refresh_sealed),
            access_sealed: sealer.seal("alice", "acme", Field::Access, "expired").1,
            access_expires_at: 0,
            scopes: String::new(),
            created_at: 0,
            updated_at: 0,
        })
        .await
        .unwrap();
    let person =
        p.s.tokens_for(&mut support::Browser::default(), "files:read")
            .await;
    let person = person["access_token"].as_str().unwrap().to_owned();
    let mut config =
        mcp_authz_authserver::config::AuthServerConfig::load(&p.s.config_path).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = mcp_authz_authserver::server::start(config, None)
        .await
        .unwrap();
    let at_b = format!("http://{}/token", b.addr);
    let ask = |url: String, jti: &'static str| {
        let assertion = resource_server_assertion(&p.s, &p.root, RESOURCE, jti);
        let person = person.clone();
        let http = p.s.http.clone();
        async move {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", GRANT)
                .append_pair("client_assertion_type", JWT_BEARER)
                .append_pair("client_assertion", &assertion)
                .append_pair("subject_token", &person)
                .append_pair("subject_token_type", ACCESS_TOKEN)
                .append_pair("resource", ACME)
                .finish();
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (one, two) = tokio::join!(ask(p.s.url("/token"), "rep-a"), ask(at_b, "rep-b"));
    for (status, body) in [&one, &two] {
        assert_eq!(
            (*status, body["access_token"].as_str()),
            (200, Some("from-one-refresh")),
            "{body}"
        );
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one refresh for both replicas"
    );
    b.stop().await;
}

/// Connecting is no condition of the consent given: with the provider unreachable (nothing listens where its
/// discovery document should be), approving still signs the person in, and the provider is left for later.
#[tokio::test]
async fn a_provider_that_cannot_be_reached_does_not_stop_a_sign_in() {
    let p = plane(At::Discovery(free_port()), None).await;
    let mut b = Browser::new();
    let (at, consent) = to_consent(&p, &mut b, "alice").await;
    let Page::ToClient(callback) = b.submit(&at, &consent, &[("decision", "approve")]).await else {
        panic!("no code for the client with the provider unreachable")
    };
    let person = redeem(&p.s, &callback).await;
    assert!(!person.is_empty());
}
