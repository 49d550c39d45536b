//! Confidential clients (private_key_jwt, RFC 7523), introspection, revocation, the admin port.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use support::*;

#[tokio::test]
async fn client_credentials_with_private_key_jwt() {
    let s = TestServer::start().await;
    let a = assertion(&s, |_| {});
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "files:read");
    assert!(body.get("refresh_token").is_none());
    let (_, claims) = verify_with_jwks(&s, body["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], SERVICE_CLIENT);
    assert_eq!(claims["client_id"], SERVICE_CLIENT);
    assert_eq!(claims["aud"], RESOURCE);
    // No person behind it: the sidecar's `callers` rules read this, not `sub`.
    assert_eq!(claims["mcp_authz_caller"], "machine");
    let introspected = s.introspect(body["access_token"].as_str().unwrap()).await;
    assert_eq!(
        introspected["mcp_authz_caller"], "machine",
        "{introspected}"
    );
    // The same assertion twice: its jti is spent.
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .ends_with("was already used"),
        "{body}"
    );
    // Scope outside what the client may have, and a resource we do not know.
    let (_, body) = s
        .client_credentials(&assertion(&s, |_| {}), &[("scope", "files:write")])
        .await;
    assert_eq!(body["error"], "invalid_scope");
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
    ];
    let a = assertion(&s, |_| {});
    form.push(("client_assertion", &a));
    form.push(("resource", "https://elsewhere.example/"));
    let (_, body, _) = s.token(&form).await;
    assert_eq!(body["error"], "invalid_target");
    // A public client may not use client_credentials.
    let (_, body, _) = s
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", PUBLIC_CLIENT),
            ("resource", RESOURCE),
        ])
        .await;
    assert_eq!(body["error"], "unauthorized_client");
}

#[tokio::test]
async fn client_assertions_are_refused_for_every_flaw() {
    let s = TestServer::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let unsigned = |alg: &str| {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(
            json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT, "aud": s.url("/token"), "exp": now + 60, "jti": "x"}).to_string(),
        );
        format!("{header}.{claims}.")
    };
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT, "aud": s.url("/token"), "exp": now + 60, "jti": "h"}),
        &jsonwebtoken::EncodingKey::from_secret(b"shared secret"),
    )
    .unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            unsigned("none"),
            "client_assertion is not a signed JWT with an accepted algorithm (ES256, RS256, PS256, EdDSA)",
        ),
        (
            hmac,
            "client_assertion algorithm HS256 is refused; use ES256, RS256, PS256 or EdDSA",
        ),
        (
            "garbage".into(),
            "client_assertion is not a signed JWT with an accepted algorithm (ES256, RS256, PS256, EdDSA)",
        ),
        (
            assertion(&s, |c| {
                c["aud"] = json!("https://someone-else.example/token")
            }),
            "client_assertion aud must be this endpoint's URL or the issuer",
        ),
        (
            assertion(&s, |c| c["exp"] = json!(now - 3600)),
            "client_assertion has expired",
        ),
        (
            assertion(&s, |c| c["exp"] = json!(now + 7200)),
            "client_assertion exp is more than 3600 seconds away",
        ),
        (
            assertion(&s, |c| c["sub"] = json!("someone")),
            "client_assertion sub must be the client id",
        ),
        (
            assertion(&s, |c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            "client_assertion needs a jti of 1 to 256 characters, none of them a control character",
        ),
        (
            assertion(&s, |c| {
                c["iss"] = json!(PUBLIC_CLIENT);
                c["sub"] = json!(PUBLIC_CLIENT);
            }),
            "this client is registered for token_endpoint_auth_method none, not private_key_jwt",
        ),
    ];
    for (jwt, description) in cases {
        let (status, body) = s.client_credentials(&jwt, &[]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{description}: {body}"
        );
        assert_eq!(body["error_description"], description);
    }
    // Signed with another key than the registered one.
    let (other_pem, _) = mcp_authz_authserver::keys::generate_es256().unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT, "aud": s.url("/token"), "exp": now + 60, "jti": "f"}),
        &jsonwebtoken::EncodingKey::from_ec_pem(other_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, body) = s.client_credentials(&forged, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(
        body["error_description"],
        "client_assertion rejected: InvalidSignature"
    );
}

#[tokio::test]
async fn introspection_needs_an_authenticated_caller() {
    let s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    let access = tokens["access_token"].as_str().unwrap();
    // No credentials: refused.
    let r = s.post_form("/introspect", &[("token", access)]).await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_description"], "client_id is missing");
    // A public client: refused.
    let r = s
        .post_form(
            "/introspect",
            &[("token", access), ("client_id", PUBLIC_CLIENT)],
        )
        .await;
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error_description"],
        "this client may not introspect tokens"
    );
    // A wrong bearer: refused.
    let r = s
        .http
        .post(s.url("/introspect"))
        .bearer_auth("not-the-admin-token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A resource server with private_key_jwt (aud = the introspection endpoint).
    let a = assertion(&s, |c| c["aud"] = json!(s.url("/introspect")));
    let r = s
        .post_form(
            "/introspect",
            &[
                ("token", access),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &a),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["aud"], RESOURCE);
    assert_eq!(body["scope"], "files:read");
    assert_eq!(body["client_id"], PUBLIC_CLIENT);
    assert_eq!(body["mcp_authz_caller"], "person");
    let refresh = s
        .introspect(tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(
        (refresh["active"].as_bool(), refresh["token_type"].as_str()),
        (Some(true), Some("refresh_token"))
    );
    assert_eq!(s.introspect("garbage").await, json!({"active": false}));
    // A token signed by someone else's key with our claims is not active.
    let mut parts: Vec<String> = access.split('.').map(str::to_owned).collect();
    parts[2] = URL_SAFE_NO_PAD.encode([0u8; 64]);
    assert_eq!(
        s.introspect(&parts.join(".")).await,
        json!({"active": false})
    );
}

#[tokio::test]
async fn revocation_by_the_client_kills_the_grant() {
    let s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    let (access, refresh) = (
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
    );
    // Another client may not revoke it.
    let r = s
        .post_form("/revoke", &[("token", refresh), ("client_id", WEB_CLIENT)])
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error_description"],
        "the token was not issued to this client"
    );
    // Unknown tokens are fine (RFC 7009 §2.2).
    let r = s
        .post_form(
            "/revoke",
            &[("token", "unknown"), ("client_id", PUBLIC_CLIENT)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = s
        .post_form(
            "/revoke",
            &[("token", refresh), ("client_id", PUBLIC_CLIENT)],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.introspect(access).await["active"], false);
    let (_, body, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(body["error"], "invalid_grant");
    // Revoking only an access token leaves the refresh token working.
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    let r = s
        .post_form(
            "/revoke",
            &[
                ("token", tokens["access_token"].as_str().unwrap()),
                ("client_id", PUBLIC_CLIENT),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.introspect(tokens["access_token"].as_str().unwrap()).await["active"],
        false
    );
    let (status, _, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn admin_api_lists_and_revokes_and_refuses_strangers() {
    let s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    let grants_url = format!("{}/admin/grants?subject=alice", s.admin);
    for auth in [None, Some("wrong-token")] {
        let mut req = s.http.get(&grants_url);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthenticated");
    }
    let r = s
        .http
        .post(format!("{}/admin/grants/revoke?client_id=cli", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let audit: serde_json::Value = s
        .http
        .get(format!("{}/admin/audit?limit=50", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refusals = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "admin" && e["outcome"] == "refused")
        .count();
    assert_eq!(refusals, 3, "{audit}");
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "authorize"
                && e["outcome"] == "granted"
                && e["subject"] == "alice")
    );

    let list: serde_json::Value = s
        .http
        .get(&grants_url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grants = list["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["client_id"], PUBLIC_CLIENT);
    assert_eq!(grants[0]["resource"], RESOURCE);
    let r = s
        .http
        .post(format!("{}/admin/grants/revoke", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an unfiltered revoke is refused");
    let r = s
        .http
        .get(format!("{}/admin/grants?bogus=1", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let revoked: serde_json::Value = s
        .http
        .post(format!(
            "{}/admin/grants/revoke?resource={}",
            s.admin, RESOURCE
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["revoked"], 1);
    assert_eq!(
        s.introspect(tokens["access_token"].as_str().unwrap()).await["active"],
        false
    );
    let list: serde_json::Value = s
        .http
        .get(&grants_url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["grants"].as_array().unwrap().len(), 0);

    assert_eq!(
        s.http
            .get(format!("{}/healthz", s.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        s.http
            .get(format!("{}/readyz", s.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A client whose metadata document sits on a loopback address: refused before any fetch, and counted.
    let refused = s
        .http
        .get(s.url(
            "/authorize?response_type=code&client_id=https%3A%2F%2F127.0.0.1%2Fclient.json\
             &redirect_uri=https%3A%2F%2F127.0.0.1%2Fcb&resource=https%3A%2F%2Fmcp.example.com%2Ffiles\
             &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "mcp_authz_authserver_requests_total{endpoint=\"token\",outcome=\"ok\"} 1",
        "mcp_authz_authserver_requests_total{endpoint=\"admin\",outcome=\"unauthenticated\"} 3",
        "mcp_authz_authserver_tokens_issued_total{grant_type=\"authorization_code\",resource=\"https://mcp.example.com/files\"} 1",
        "mcp_authz_authserver_request_duration_seconds_bucket{endpoint=\"token\"",
        "mcp_authz_authserver_signing_key_age_seconds",
        "mcp_authz_authserver_cimd_resolutions_total{outcome=\"forbidden_address\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn admin_api_is_closed_without_a_token_file() {
    let s = TestServer::start_with(|c| c.admin.token_file = None).await;
    let r = s
        .http
        .get(format!("{}/admin/grants", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "disabled");
}

#[tokio::test]
async fn dynamic_client_registration_is_off_by_default_and_works_when_on() {
    let off = TestServer::start().await;
    let r = off
        .http
        .post(off.url("/register"))
        .json(&json!({"redirect_uris": [REDIRECT]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // This test registers more clients from one address than the default per-address budget lets through.
    let s = TestServer::start_with(|c| {
        c.dynamic_client_registration.enabled = true;
        c.rate_limits.enabled = false;
    })
    .await;
    let m: serde_json::Value = s
        .http
        .get(s.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["registration_endpoint"], s.url("/register"));
    let r = s
        .http
        .post(s.url("/register"))
        .json(&json!({"redirect_uris": [REDIRECT], "client_name": "Agent", "application_type": "native", "grant_types": ["authorization_code", "refresh_token"], "logo_uri": "ignored"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let registered: serde_json::Value = r.json().await.unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();
    assert!(client_id.starts_with("dcr-"), "{client_id}");
    assert_eq!(registered["token_endpoint_auth_method"], "none");
    assert!(registered.get("client_secret").is_none());
    assert_eq!(registered["application_type"], "native");
    // The new client completes the code flow and refreshes.
    let code = s
        .code_for(&mut Browser::default(), &client_id, REDIRECT, "files:read")
        .await;
    let (status, tokens, _) = s
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", &client_id),
        ])
        .await;
    assert_eq!(status, 200, "{tokens}");
    let (status, _, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
        ])
        .await;
    assert_eq!(status, 200);

    let cases = vec![
        (
            json!({"application_type": "native", "redirect_uris": ["http://evil.example/cb"]}),
            "invalid_redirect_uri",
            "redirect URI \"http://evil.example/cb\" must be https, or http on a loopback host",
        ),
        (
            json!({"application_type": "native", "redirect_uris": []}),
            "invalid_redirect_uri",
            "redirect_uris is required",
        ),
        (
            json!({"application_type": "native", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"}),
            "invalid_client_metadata",
            "token_endpoint_auth_method \"client_secret_basic\" is not supported; use none or private_key_jwt",
        ),
        (
            json!({"application_type": "native", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
            "private_key_jwt needs jwks with at least one key",
        ),
        (
            json!({"application_type": "native", "redirect_uris": [REDIRECT], "grant_types": ["client_credentials"]}),
            "invalid_client_metadata",
            "grant type \"client_credentials\" is not available",
        ),
        (
            json!({"application_type": "native", "redirect_uris": "not-a-list"}),
            "invalid_client_metadata",
            "",
        ),
        (
            json!({"redirect_uris": [REDIRECT]}),
            "invalid_client_metadata",
            "application_type is required (SEP-837): native for a client on the person's machine with loopback redirect URIs, web for a web site with https redirect URIs",
        ),
        (
            json!({"application_type": "desktop", "redirect_uris": [REDIRECT]}),
            "invalid_client_metadata",
            "application_type \"desktop\" is not native or web",
        ),
        (
            json!({"application_type": "native", "redirect_uris": ["https://app.example.com/cb"]}),
            "invalid_redirect_uri",
            "redirect URI \"https://app.example.com/cb\" is not a loopback http URI, which is what a native client registers (RFC 8252)",
        ),
        (
            json!({"application_type": "web", "redirect_uris": ["https://app.example.com/cb"]}),
            "invalid_redirect_uri",
            "this server registers native clients with loopback redirect URIs only; a web client is identified by a Client ID Metadata Document (an https client_id) instead",
        ),
    ];
    for (body, error, description) in cases {
        let r = s
            .http
            .post(s.url("/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(answer["error"], error, "{body}");
        assert!(
            answer["error_description"]
                .as_str()
                .unwrap()
                .starts_with(description),
            "{answer}"
        );
    }
    let r = s
        .http
        .post(s.url("/register"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error_description"],
        "the body must be application/json"
    );
}

#[tokio::test]
async fn resource_servers_introspect_only_their_own_resource() {
    use mcp_authz_authserver::resource_servers::Root;
    let dir = tempfile::tempdir().unwrap();
    let root = Root::generate().unwrap();
    let root_file = dir.path().join("resource-server-root");
    std::fs::write(&root_file, root.to_text()).unwrap();
    let mut config = base_config(dir.path(), free_port());
    config.resource_servers = Some(mcp_authz_authserver::config::ResourceServers { root_file });
    let s = TestServer::start_in(dir, config).await;
    let files = s.tokens_for(&mut Browser::default(), "files:read").await;
    let files = files["access_token"].as_str().unwrap();
    let a = assertion(&s, |_| {});
    let (_, mail, _) = s
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("resource", OTHER_RESOURCE),
            ("scope", "mail:read"),
        ])
        .await;
    let mail = mail["access_token"].as_str().expect("a mail token");

    // Its own resource's token: described in full.
    let (status, body) = s
        .introspect_as(&resource_server_assertion(&s, &root, RESOURCE, "1"), files)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["active"].as_bool(),
            body["aud"].as_str(),
            body["sub"].as_str()
        ),
        (Some(true), Some(RESOURCE), Some("alice"))
    );
    // Another resource's token, valid as it is: inactive for this caller, active for the mail service's.
    let (_, body) = s
        .introspect_as(&resource_server_assertion(&s, &root, RESOURCE, "2"), mail)
        .await;
    assert_eq!(body, json!({"active": false}));
    let (_, body) = s
        .introspect_as(
            &resource_server_assertion(&s, &root, OTHER_RESOURCE, "3"),
            mail,
        )
        .await;
    assert_eq!(body["active"], true);

    // A key derived from another root, or for another resource than the client id names: the signature fails.
    let other_root = Root::generate().unwrap();
    let (status, body) = s
        .introspect_as(
            &resource_server_assertion(&s, &other_root, RESOURCE, "4"),
            files,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(
        body["error_description"],
        "client_assertion rejected: InvalidSignature"
    );
    // A resource this server does not protect.
    let (status, body) = s
        .introspect_as(
            &resource_server_assertion(&s, &root, "https://elsewhere.example/mcp", "5"),
            files,
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        "\"https://elsewhere.example/mcp\" is not a resource of this server"
    );
    // The same assertion twice: its jti is spent.
    let (_, body) = s
        .introspect_as(&resource_server_assertion(&s, &root, RESOURCE, "1"), files)
        .await;
    assert_eq!(
        body["error_description"],
        "client_assertion jti \"1\" was already used"
    );
    // Nor may it start an authorization: it has no redirect URI, so nothing is redirected anywhere.
    let rs_id = mcp_authz_authserver::resource_servers::client_id(RESOURCE);
    let r = s
        .http
        .get(s.url(&authorize_query(&rs_id, REDIRECT, "files:read", "x")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none(), "never redirected");
    let page = r.text().await.unwrap();
    assert!(
        page.contains(&format!(
            "redirect_uri &quot;{REDIRECT}&quot; is not registered for this client"
        )),
        "{page}"
    );
    // A resource server has no grant of its own.
    let (status, body) = s
        .client_credentials(&resource_server_assertion(&s, &root, RESOURCE, "6"), &[])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
}

#[tokio::test]
async fn a_root_that_arrives_after_the_config_is_picked_up() {
    // In a cluster the root comes in the keys Secret, which kubelet may refresh later than the ConfigMap.
    use mcp_authz_authserver::resource_servers::Root;
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("resource-server-root");
    let mut config = base_config(dir.path(), free_port());
    config.resource_servers = Some(mcp_authz_authserver::config::ResourceServers {
        root_file: root_file.clone(),
    });
    let s = TestServer::start_in(dir, config).await;
    let root = Root::generate().unwrap();
    let (status, body) = s
        .introspect_as(&resource_server_assertion(&s, &root, RESOURCE, "1"), "x")
        .await;
    assert_eq!(
        status, 401,
        "the server starts, and refuses resource servers: {body}"
    );
    assert_eq!(
        body["error_description"],
        "this server accepts no resource-server credentials"
    );
    std::fs::write(&root_file, root.to_text()).unwrap();
    let mut answered = None;
    for attempt in 2..40 {
        let (status, body) = s
            .introspect_as(
                &resource_server_assertion(&s, &root, RESOURCE, &attempt.to_string()),
                "x",
            )
            .await;
        if status == 200 {
            answered = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        answered,
        Some(json!({"active": false})),
        "the root was never read"
    );
}

#[tokio::test]
async fn resource_server_credentials_need_a_root() {
    let s = TestServer::start().await;
    let root = mcp_authz_authserver::resource_servers::Root::generate().unwrap();
    let (status, body) = s
        .introspect_as(&resource_server_assertion(&s, &root, RESOURCE, "1"), "x")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(
        body["error_description"],
        "this server accepts no resource-server credentials"
    );
}

/// With `redirectUris: LoopbackOrHttps` a web client may register an https redirect, and still only that: each
/// kind keeps to its own redirects.
#[tokio::test]
async fn web_clients_register_https_redirects_only_where_the_policy_allows_them() {
    let s = TestServer::start_with(|c| {
        c.dynamic_client_registration.enabled = true;
        c.dynamic_client_registration.redirect_uris =
            mcp_authz_authserver::config::RegistrationRedirects::LoopbackOrHttps;
    })
    .await;
    let register = |body: serde_json::Value| {
        let s = &s;
        async move {
            let r = s
                .http
                .post(s.url("/register"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, web) = register(
        json!({"application_type": "web", "redirect_uris": ["https://app.example.com/cb"]}),
    )
    .await;
    assert_eq!(status, 201, "{web}");
    assert_eq!(web["application_type"], "web");
    assert_eq!(web["redirect_uris"], json!(["https://app.example.com/cb"]));
    let (status, native) =
        register(json!({"application_type": "native", "redirect_uris": [REDIRECT]})).await;
    assert_eq!(
        (status, &native["application_type"]),
        (201, &json!("native"))
    );
    for (body, description) in [
        (
            json!({"application_type": "web", "redirect_uris": [REDIRECT]}),
            "redirect URI \"http://127.0.0.1/callback\" is not an https URI on a host other than localhost, which is what a web client registers",
        ),
        (
            json!({"application_type": "web", "redirect_uris": ["https://localhost/cb"]}),
            "redirect URI \"https://localhost/cb\" is not an https URI on a host other than localhost, which is what a web client registers",
        ),
        (
            json!({"application_type": "native", "redirect_uris": ["https://app.example.com/cb"]}),
            "redirect URI \"https://app.example.com/cb\" is not a loopback http URI, which is what a native client registers (RFC 8252)",
        ),
    ] {
        let (status, answer) = register(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            answer,
            json!({"error": "invalid_redirect_uri", "error_description": description}),
            "{body}"
        );
    }
}

#[tokio::test]
async fn registrations_past_the_hourly_budget_are_refused_with_429() {
    let s = TestServer::start_with(|c| {
        c.dynamic_client_registration.enabled = true;
        c.dynamic_client_registration.max_per_hour = 2;
    })
    .await;
    let register = || async {
        s.http
            .post(s.url("/register"))
            .json(&json!({"redirect_uris": [REDIRECT], "client_name": "Agent", "application_type": "native"}))
            .send()
            .await
            .unwrap()
    };
    for _ in 0..2 {
        assert_eq!(register().await.status(), 201);
    }
    let refused = register().await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "60");
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "error": "temporarily_unavailable",
            "error_description": "this server has registered its limit of 2 clients in the past hour; try again later, or identify the client by a Client ID Metadata Document (an https client_id)"
        })
    );
    // Counted in the store: a restarted server (or another replica) keeps the count.
    let mut s = s;
    s.restart().await;
    let again = s
        .http
        .post(s.url("/register"))
        .json(&json!({"redirect_uris": [REDIRECT], "client_name": "Agent", "application_type": "native"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 429);
}

/// A resource server's key belongs to the claim holding the URL: when the URL passes to another holder (or its
/// holder is created again), a key issued before is refused, whoever kept a copy of its Secret.
#[tokio::test]
async fn an_earlier_holders_key_is_refused() {
    use mcp_authz_authserver::resource_servers::Root;
    let dir = tempfile::tempdir().unwrap();
    let root = Root::generate().unwrap();
    let root_file = dir.path().join("resource-server-root");
    std::fs::write(&root_file, root.to_text()).unwrap();
    let mut config = base_config(dir.path(), free_port());
    config.resource_servers = Some(mcp_authz_authserver::config::ResourceServers { root_file });
    config.resources[0].holder = "uid-now".into();
    let s = TestServer::start_in(dir, config).await;
    let files = s.tokens_for(&mut Browser::default(), "files:read").await;
    let files = files["access_token"].as_str().unwrap();
    let (status, body) = s
        .introspect_as(
            &held_resource_server_assertion(&s, &root, RESOURCE, "uid-now", "1"),
            files,
        )
        .await;
    assert_eq!(
        (status, body["active"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    for (holder, jti) in [("uid-before", "2"), ("", "3")] {
        let (status, body) = s
            .introspect_as(
                &held_resource_server_assertion(&s, &root, RESOURCE, holder, jti),
                files,
            )
            .await;
        assert_eq!(
            (status, body["error_description"].as_str()),
            (401, Some("client_assertion rejected: InvalidSignature")),
            "{holder:?}: {body}"
        );
    }
}
