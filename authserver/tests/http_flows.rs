//! The authorization code flow over real HTTP: metadata, login, consent, code, tokens, refresh, replay, restart.

mod support;

use support::*;

#[tokio::test]
async fn metadata_advertises_exactly_what_is_served() {
    let s = TestServer::start().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let m: serde_json::Value = r.json().await.unwrap();
        assert_eq!(m["issuer"], s.base);
        assert_eq!(m["authorization_endpoint"], s.url("/authorize"));
        assert_eq!(m["token_endpoint"], s.url("/token"));
        assert_eq!(m["jwks_uri"], s.url("/jwks"));
        assert_eq!(
            m["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        let methods = m["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap();
        assert!(methods.contains(&"none".into()) && methods.contains(&"private_key_jwt".into()));
        assert_eq!(m["client_id_metadata_document_supported"], true);
        assert_eq!(m["authorization_response_iss_parameter_supported"], true);
        assert_eq!(
            m["scopes_supported"],
            serde_json::json!(["files:read", "files:write", "files:delete", "mail:read"])
        );
        assert!(m.get("registration_endpoint").is_none());
    }
    let s = TestServer::start_with(|c| c.cimd.enabled = false).await;
    let m: serde_json::Value = s.metadata().await;
    assert_eq!(m["client_id_metadata_document_supported"], false);
}

#[tokio::test]
async fn code_flow_issues_an_audience_bound_rfc9068_token() {
    let s = TestServer::start().await;
    let mut b = Browser::default();
    let login = match b
        .get(
            &s,
            &authorize_query(
                PUBLIC_CLIENT,
                "http://127.0.0.1:53999/callback",
                "files:read files:write",
                "st",
            ),
        )
        .await
    {
        Step::Page(200, html) => html,
        other => panic!("{other:?}"),
    };
    assert!(
        login.contains("The &lt;b&gt;CLI&lt;/b&gt;"),
        "client name is escaped: {login}"
    );
    let consent = match b.login(&s, &login, "alice", "wonderland").await {
        Step::Page(200, html) => html,
        other => panic!("{other:?}"),
    };
    assert!(consent.contains("<span id=\"client_id_host\">cli</span>"));
    assert!(consent.contains("<strong id=\"redirect_host\">127.0.0.1</strong>"));
    assert!(
        consent.contains("id=\"loopback_warning\""),
        "every redirect is loopback: warn"
    );
    assert!(consent.contains("Read your files") && consent.contains("Change your files"));
    assert!(!consent.contains("Delete your files"));
    let location = match b.consent(&s, &consent, "approve").await {
        Step::Redirect(l) => l,
        other => panic!("{other:?}"),
    };
    // The loopback port the client used is where the code goes (RFC 8252).
    assert!(
        location.starts_with("http://127.0.0.1:53999/callback?"),
        "{location}"
    );
    let q = query(&location);
    assert_eq!(q["state"], "st");
    assert_eq!(q["iss"], s.base);
    let (status, body, headers) = s
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", "http://127.0.0.1:53999/callback"),
            ("code_verifier", VERIFIER),
            ("client_id", PUBLIC_CLIENT),
            ("resource", RESOURCE),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "files:read files:write");
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);
    let (header, claims) = verify_with_jwks(&s, body["access_token"].as_str().unwrap()).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], PUBLIC_CLIENT);
    assert_eq!(claims["scope"], "files:read files:write");
    assert_eq!(claims["mcp_authz_caller"], "person");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    // Twelve hex digits of the time, then 128 random bits (secrets::record_id).
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 34, "{jti}");
    assert!(jti[..12].bytes().all(|b| b.is_ascii_hexdigit()), "{jti}");
}

#[tokio::test]
async fn consent_is_remembered_unless_a_scope_is_sensitive() {
    let s = TestServer::start().await;
    let mut b = Browser::default();
    s.code_for(&mut b, WEB_CLIENT, WEB_REDIRECT, "files:read")
        .await;
    // Same browser (session), same client, resource and scopes: straight back with a code.
    match b
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "s2"),
        )
        .await
    {
        Step::Redirect(l) => assert!(query(&l).contains_key("code"), "{l}"),
        other => panic!("expected a redirect, got {other:?}"),
    }
    // Another scope set asks again; the consent names the https redirect host and does not warn.
    match b
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read files:write", "s3"),
        )
        .await
    {
        Step::Page(200, html) => {
            assert!(html.contains("<strong id=\"redirect_host\">app.example.com</strong>"));
            assert!(!html.contains("loopback_warning"));
        }
        other => panic!("{other:?}"),
    }
    // A sensitive scope asks every time, and its token is short.
    s.code_for(&mut b, WEB_CLIENT, WEB_REDIRECT, "files:delete")
        .await;
    match b
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:delete", "s4"),
        )
        .await
    {
        Step::Page(200, html) => {
            assert!(html.contains("Delete your files") && html.contains("(sensitive)"))
        }
        other => panic!("{other:?}"),
    }
    let body = s.tokens_for(&mut Browser::default(), "files:delete").await;
    assert_eq!(body["expires_in"], 60);
}

#[tokio::test]
async fn denying_consent_redirects_access_denied_with_iss_and_state() {
    let s = TestServer::start().await;
    let mut b = Browser::default();
    let Step::Page(_, login) = b
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "keep-me"),
        )
        .await
    else {
        panic!()
    };
    let Step::Page(_, consent) = b.login(&s, &login, "alice", "wonderland").await else {
        panic!()
    };
    let Step::Redirect(l) = b.consent(&s, &consent, "deny").await else {
        panic!()
    };
    assert!(l.starts_with(WEB_REDIRECT));
    let q = query(&l);
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "keep-me");
    assert_eq!(q["iss"], s.base);
    assert!(!q.contains_key("code"));
}

#[tokio::test]
async fn login_and_consent_refuse_bad_passwords_forged_forms_and_replays() {
    let s = TestServer::start().await;
    let mut b = Browser::default();
    let Step::Page(_, login) = b
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "x"),
        )
        .await
    else {
        panic!()
    };
    match b.login(&s, &login, "alice", "wrong").await {
        Step::Page(401, html) => assert!(html.contains("Wrong username or password.")),
        other => panic!("{other:?}"),
    }
    match b.login(&s, &login, "nobody", "wonderland").await {
        Step::Page(401, html) => assert!(html.contains("Wrong username or password.")),
        other => panic!("{other:?}"),
    }
    // Another browser (no CSRF cookie) posting this form is refused.
    let mut attacker = Browser::default();
    match attacker.login(&s, &login, "alice", "wonderland").await {
        Step::Page(400, html) => assert!(
            html.contains("the form&#39;s CSRF token does not match this browser"),
            "{html}"
        ),
        other => panic!("{other:?}"),
    }
    // A tampered hidden field too.
    let id = hidden(&login, "request_id");
    match b
        .post(
            &s,
            "/login",
            &[
                ("request_id", &id),
                ("csrf", "forged"),
                ("username", "alice"),
                ("password", "wonderland"),
            ],
        )
        .await
    {
        Step::Page(400, html) => assert!(html.contains("CSRF")),
        other => panic!("{other:?}"),
    }
    // Consent before login is refused.
    match b.consent(&s, &login, "approve").await {
        Step::Page(400, html) => assert!(html.contains("sign in before consenting")),
        other => panic!("{other:?}"),
    }
    let Step::Page(_, consent) = b.login(&s, &login, "alice", "wonderland").await else {
        panic!()
    };
    match b.consent(&s, &consent, "maybe").await {
        Step::Page(400, html) => {
            assert!(html.contains("decision &quot;maybe&quot; must be approve or deny"))
        }
        other => panic!("{other:?}"),
    }
    let Step::Redirect(_) = b.consent(&s, &consent, "approve").await else {
        panic!()
    };
    // The request is spent: posting the form again is refused.
    match b.consent(&s, &consent, "approve").await {
        Step::Page(400, html) => assert!(html.contains("expired or was already completed")),
        other => panic!("{other:?}"),
    }
    // Repeated and oversized form bodies.
    match b
        .post(&s, "/login", &[("request_id", &id), ("request_id", &id)])
        .await
    {
        Step::Page(400, html) => assert!(html.contains("parameter request_id is repeated")),
        other => panic!("{other:?}"),
    }
    let big = "x".repeat(20_000);
    match b
        .post(
            &s,
            "/login",
            &[
                ("a", &big[..8000]),
                ("b", &big[..8000]),
                ("c", &big[..8000]),
            ],
        )
        .await
    {
        Step::Page(400, html) => assert!(html.contains("larger than 16384 bytes"), "{html}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_grant() {
    let s = TestServer::start().await;
    let first = s
        .tokens_for(&mut Browser::default(), "files:read files:write")
        .await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let (status, second, headers) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r1),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(headers["cache-control"], "no-store");
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2);
    // Narrowing on refresh is allowed, widening is not.
    let (status, narrow, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r2),
            ("client_id", PUBLIC_CLIENT),
            ("scope", "files:read"),
        ])
        .await;
    assert_eq!(status, 200, "{narrow}");
    assert_eq!(narrow["scope"], "files:read");
    let r3 = narrow["refresh_token"].as_str().unwrap();
    let (status, wide, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r3),
            ("client_id", PUBLIC_CLIENT),
            ("scope", "mail:read"),
        ])
        .await;
    assert_eq!(
        (status, wide["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    // Another client cannot use it.
    let (status, other, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r3),
            ("client_id", WEB_CLIENT),
        ])
        .await;
    assert_eq!(
        (status, other["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        other["error_description"],
        "the refresh token was issued to another client"
    );
    let access = narrow["access_token"].as_str().unwrap();
    assert_eq!(s.introspect(access).await["active"], true);
    // Replaying r1 (already rotated) revokes the grant: r3 and the access tokens die with it.
    let (status, reuse, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r1),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(
        (status, reuse["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        reuse["error_description"],
        "the refresh token was already used; the whole grant has been revoked"
    );
    let (_, dead, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r3),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(dead["error"], "invalid_grant");
    assert_eq!(s.introspect(access).await["active"], false);
    assert_eq!(
        s.introspect(first["access_token"].as_str().unwrap()).await["active"],
        false
    );
}

#[tokio::test]
async fn a_replayed_code_is_refused_and_revokes_what_it_issued() {
    let s = TestServer::start().await;
    let code = s
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
    let (status, first, _) = s.token(&form).await;
    assert_eq!(status, 200);
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(s.introspect(access).await["active"], true);
    let (status, replay, _) = s.token(&form).await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        replay["error_description"],
        "the authorization code was already used; every token issued from it has been revoked"
    );
    assert_eq!(s.introspect(access).await["active"], false);
    let (_, refresh, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(refresh["error"], "invalid_grant");
}

#[tokio::test]
async fn grants_and_keys_survive_a_restart_and_config_changes_reload() {
    let mut s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    let kid_before = jsonwebtoken::decode_header(tokens["access_token"].as_str().unwrap())
        .unwrap()
        .kid;
    s.restart().await;
    assert_eq!(
        s.introspect(tokens["access_token"].as_str().unwrap()).await["active"],
        true
    );
    let (status, refreshed, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(status, 200, "{refreshed}");
    let kid_after = jsonwebtoken::decode_header(refreshed["access_token"].as_str().unwrap())
        .unwrap()
        .kid;
    assert_eq!(kid_before, kid_after);

    // Edit the file: a new scope appears in metadata without a restart; a broken file is refused and ignored.
    let mut config = mcp_authz_authserver::config::AuthServerConfig::load(&s.config_path).unwrap();
    config
        .scopes
        .push(mcp_authz_authserver::config::ScopeDefinition {
            value: "files:share".into(),
            description: "Share".into(),
            sensitive: false,
            max_lifetime_secs: None,
            implies: vec![],
        });
    std::fs::write(&s.config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let mut seen = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let m: serde_json::Value = s.metadata().await;
        if m["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&"files:share".into())
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "the reloaded scope never appeared");
    std::fs::write(&s.config_path, "{ \"issuer\": 1 }").unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let m: serde_json::Value = s.metadata().await;
    assert_eq!(
        m["issuer"], s.base,
        "a broken file leaves the running config in force"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("mcp_authz_authserver_config_reloads_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_authz_authserver_config_reloads_total{outcome=\"parse\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_refresh_after_the_client_document_changed_revokes_the_grant() {
    let s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    // What a CIMD client's grant looks like after its document changed: the stored fingerprint differs from the
    // client's current one (registered clients have none).
    sqlx::any::install_default_drivers();
    let db = format!("sqlite://{}", s.dir.path().join("as.db").display());
    let pool = sqlx::AnyPool::connect(&db).await.unwrap();
    sqlx::query("UPDATE grants SET client_fingerprint = 'old-document'")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        body["error_description"],
        "the client's metadata document changed since this grant (redirect URIs, keys or authentication method); sign in again"
    );
    assert_eq!(
        s.introspect(tokens["access_token"].as_str().unwrap()).await["active"],
        false
    );
}

#[tokio::test]
async fn repeated_wrong_passwords_throttle_the_username_even_for_the_right_one() {
    let s = TestServer::start().await;
    let mut b = Browser::default();
    let Step::Page(_, login) = b
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "x"),
        )
        .await
    else {
        panic!()
    };
    for _ in 0..mcp_authz_authserver::login_guard::MAX_ATTEMPTS_PER_ADDRESS {
        match b.login(&s, &login, "alice", "guess").await {
            Step::Page(401, html) => assert!(html.contains("Wrong username or password.")),
            other => panic!("{other:?}"),
        }
    }
    // The budget is spent: even the right password is not checked until the window ends.
    match b.login(&s, &login, "alice", "wonderland").await {
        Step::Page(429, html) => assert!(
            html.contains("too many failed sign-ins for this user; try again in 15 minutes"),
            "{html}"
        ),
        other => panic!("{other:?}"),
    }
    let metrics = reqwest::get(format!("{}/metrics", s.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "mcp_authz_authserver_requests_total{endpoint=\"login\",outcome=\"login_throttled\"} 1"
        ),
        "{metrics}"
    );
}

/// A config naming a file that is not there yet (a kubelet updates each mounted volume on its own schedule) is
/// refused, then taken without any further change to the config once the file appears.
#[tokio::test]
async fn a_refused_reload_is_tried_again_until_what_it_names_appears() {
    let s = TestServer::start().await;
    let users = s.config_path.with_file_name("late-users.yaml");
    let mut config = mcp_authz_authserver::config::AuthServerConfig::load(&s.config_path).unwrap();
    config
        .login
        .static_users
        .as_mut()
        .expect("static login")
        .users_file = Some(users.clone());
    config
        .scopes
        .push(mcp_authz_authserver::config::ScopeDefinition {
            value: "files:late".into(),
            description: "Late".into(),
            sensitive: false,
            max_lifetime_secs: None,
            implies: vec![],
        });
    std::fs::write(&s.config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let scopes = || async {
        let m: serde_json::Value = s.metadata().await;
        m["scopes_supported"].as_array().unwrap().clone()
    };
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !scopes().await.contains(&"files:late".into()),
        "taken before the users file exists"
    );
    std::fs::write(&users, "[]").unwrap();
    let mut seen = false;
    for _ in 0..75 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if scopes().await.contains(&"files:late".into()) {
            seen = true;
            break;
        }
    }
    let metrics = s.metrics().await;
    assert!(seen, "the refused reload was never tried again: {metrics}");
}
