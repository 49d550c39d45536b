//! The authorization server against a hostile client, over its real HTTP port: each case is one way a review
//! found to get more than the policy allows (or to make the server work for nothing), and asserts the exact
//! refusal. Clients that identify by a metadata document fetch it from a real HTTPS server with a test CA.

mod cimd_support;
mod support;

use std::time::Duration;

use cimd_support::{HttpsServer, Reply, TestCa};
use mcp_authz_authserver::cimd::{AuthMethod, CimdConfig, Policy};
use mcp_authz_authserver::config::{AuthServerConfig, ScopeDefinition, StaticUser};
use mcp_authz_authserver::server;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTPS server serving client metadata documents at `https://127.0.0.1:PORT/...`, trusted through its CA.
struct Documents {
    ca: TestCa,
    server: HttpsServer,
}

impl Documents {
    async fn start() -> Self {
        let ca = TestCa::new("hostile documents");
        let server = HttpsServer::start(ca.tls_acceptor(&["127.0.0.1"])).await;
        Documents { ca, server }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.server.port())
    }

    /// A CIMD config that may fetch from this server, with `policies` by name.
    fn config(&self, policies: &[(&str, Policy)]) -> CimdConfig {
        let mut config = CimdConfig {
            allowed_private_cidrs: vec!["127.0.0.1/32".into()],
            extra_ca_bundle: Some(self.ca.bundle.clone()),
            ..CimdConfig::default()
        };
        config.fetch.total_timeout_ms = 5000;
        for (name, policy) in policies {
            config.policies.insert((*name).to_owned(), policy.clone());
        }
        config
    }

    /// Serves `document` at `path` and returns its client_id.
    fn serve(&self, path: &str, mut document: Value) -> String {
        let client_id = self.url(path);
        document["client_id"] = json!(client_id);
        self.server.route(path, Reply::Json(document.to_string()));
        client_id
    }
}

/// A document that may authenticate both ways: `none` first, so a policy allowing both makes it public.
fn two_way_document() -> Value {
    let (_, jwks) = service_key();
    json!({
        "client_name": "Two-way agent",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "jwks": jwks,
    })
}

fn keys_only() -> Policy {
    Policy {
        allowed_auth_methods: vec![AuthMethod::PrivateKeyJwt],
        ..Policy::default()
    }
}

/// A client assertion for `client_id`, signed with the tests' service key.
fn assertion_for(s: &TestServer, client_id: &str) -> String {
    assertion(s, |c| {
        c["iss"] = json!(client_id);
        c["sub"] = json!(client_id);
    })
}

/// Code and token exchange for a document client that authenticates with an assertion.
async fn confidential_tokens(s: &TestServer, client_id: &str) -> Value {
    let code = s
        .code_for(&mut Browser::default(), client_id, REDIRECT, "files:read")
        .await;
    let a = assertion_for(s, client_id);
    let (status, body, _) = s
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("resource", RESOURCE),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Rewrites the server's config file and reloads it, as the maintenance loop would.
fn reload(s: &TestServer, edit: impl FnOnce(&mut AuthServerConfig)) {
    let mut config = AuthServerConfig::load(&s.config_path).unwrap();
    edit(&mut config);
    std::fs::write(
        &s.config_path,
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    server::reload_config(&s.running.as_ref().unwrap().state, &s.config_path).unwrap();
}

/// A refresh token of a client that must authenticate under its resource's policy cannot be redeemed as a public
/// client by leaving `resource` out (the baseline would have judged the client public).
#[tokio::test]
async fn omitting_resource_does_not_make_a_confidential_client_public() {
    let docs = Documents::start().await;
    let client_id = docs.serve("/two-way.json", two_way_document());
    let config = docs.config(&[("keys-only", keys_only())]);
    let s = TestServer::start_with(|c| {
        c.cimd = config;
        c.resources[0].cimd_policy = Some("keys-only".into());
    })
    .await;
    let tokens = confidential_tokens(&s, &client_id).await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    for form in [
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", client_id.as_str()),
        ],
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", client_id.as_str()),
            ("resource", OTHER_RESOURCE),
        ],
    ] {
        let (status, body, _) = s.token(&form).await;
        assert_eq!(
            (status, error_of(&body)),
            (
                401,
                (
                    "invalid_client",
                    "this client is registered for token_endpoint_auth_method private_key_jwt, not none"
                )
            ),
            "{form:?}"
        );
    }
    // The owner, authenticating as its policy requires, still refreshes.
    let a = assertion_for(&s, &client_id);
    let (status, body, _) = s
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A grant remembers how its client authenticated: when the policy is relaxed later, the client still cannot
/// drop its assertion on that grant.
#[tokio::test]
async fn a_grant_keeps_the_method_it_was_made_with() {
    let docs = Documents::start().await;
    let client_id = docs.serve("/two-way.json", two_way_document());
    let config = docs.config(&[("keys-only", keys_only())]);
    let s = TestServer::start_with(|c| {
        c.cimd = config;
        c.resources[0].cimd_policy = Some("keys-only".into());
    })
    .await;
    let tokens = confidential_tokens(&s, &client_id).await;
    // The platform team drops the policy: the baseline now admits the document as a public client.
    reload(&s, |c| c.resources[0].cimd_policy = None);
    let (status, body, _) = s
        .refresh(tokens["refresh_token"].as_str().unwrap(), &client_id, &[])
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            401,
            (
                "invalid_client",
                "this grant was made for a client authenticating with private_key_jwt; this request used none"
            )
        )
    );
}

/// `applicationTypes: [native]` admits loopback redirects only: a document with an https redirect is refused.
#[tokio::test]
async fn a_native_only_policy_refuses_web_redirects() {
    let docs = Documents::start().await;
    let client_id = docs.serve(
        "/web.json",
        json!({"client_name": "Web agent", "redirect_uris": ["https://app.example.com/cb"],
               "token_endpoint_auth_method": "none"}),
    );
    let mut native = Policy::default();
    native.redirect_uris.allow_web = false;
    let config = docs.config(&[("native", native)]);
    let s = TestServer::start_with(|c| {
        c.cimd = config;
        c.resources[0].cimd_policy = Some("native".into());
    })
    .await;
    let r = s
        .http
        .get(s.url(&authorize_query(
            &client_id,
            "https://app.example.com/cb",
            "files:read",
            "st",
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    let html = r.text().await.unwrap();
    assert!(
        html.contains("https (web) redirects are not allowed by this policy"),
        "{html}"
    );
}

/// An error is redirected only to a URI admitted under the request's resource: with an unknown resource nothing
/// is trusted, and the server shows a page instead of sending the browser to the attacker's document's URI.
#[tokio::test]
async fn errors_are_not_redirected_to_untrusted_uris() {
    let docs = Documents::start().await;
    let phish = "https://phish.example/x";
    let client_id = docs.serve(
        "/phish.json",
        json!({"client_name": "Phisher", "redirect_uris": [phish], "token_endpoint_auth_method": "none"}),
    );
    let config = docs.config(&[]);
    let s = TestServer::start_with(|c| c.cimd = config).await;
    for (resource, description) in [
        (
            Some("https://unknown.example/mcp"),
            "resource &quot;https://unknown.example/mcp&quot; is not a resource of this server",
        ),
        (None, "the resource parameter is required (RFC 8707)"),
    ] {
        let mut pairs = vec![
            ("response_type", "bogus"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", phish),
            ("state", "st"),
        ];
        if let Some(r) = resource {
            pairs.push(("resource", r));
        }
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let r = s
            .http
            .get(s.url(&format!("/authorize?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{resource:?}");
        assert!(r.headers().get("location").is_none(), "{resource:?}");
        assert!(r.text().await.unwrap().contains(description));
    }
    assert_eq!(
        docs.server.hits("/phish.json"),
        0,
        "nothing is fetched before the resource is known"
    );
    // A state too long to keep is refused before anything is stored.
    let long = "s".repeat(1025);
    let r = s
        .http
        .get(s.url(&authorize_query(
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
            &long,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("state is longer than 1024 bytes")
    );
}

/// Two redemptions of one code at once: whichever wins, the replay revokes the grant, and nothing issued from it
/// stays alive, even a token recorded after the revocation.
async fn concurrent_redemptions_leave_nothing_alive(s: &TestServer) {
    let mut browser = Browser::default();
    let mut raced = 0;
    for round in 0..12 {
        let code = s
            .code_for(&mut browser, PUBLIC_CLIENT, REDIRECT, "files:read")
            .await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", PUBLIC_CLIENT),
        ];
        let (a, b) = tokio::join!(s.token(&form), s.token(&form));
        let mut issued = Vec::new();
        for (status, body, _) in [a, b] {
            match status {
                200 => issued.push(body),
                400 => assert_eq!(body["error"], "invalid_grant", "round {round}: {body}"),
                other => panic!("round {round}: {other} {body}"),
            }
        }
        assert!(
            issued.len() <= 1,
            "round {round}: a code was redeemed twice"
        );
        if let Some(body) = issued.first() {
            raced += 1;
            let access = body["access_token"].as_str().unwrap();
            assert_eq!(
                s.introspect(access).await["active"],
                false,
                "round {round}: the winner's token outlived the replay"
            );
            let (status, refused, _) = s
                .refresh(body["refresh_token"].as_str().unwrap(), PUBLIC_CLIENT, &[])
                .await;
            assert_eq!(
                (status, error_of(&refused)),
                (400, ("invalid_grant", "this grant has been revoked")),
                "round {round}"
            );
        }
    }
    assert!(raced > 0, "no round had a winner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_code_redemption_on_sqlite() {
    let s = TestServer::start().await;
    concurrent_redemptions_leave_nothing_alive(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_code_redemption_on_postgres() {
    let (_url_file, storage) = postgres_storage("hostile_race", 8).await;
    let s = TestServer::start_with(|c| c.storage = storage).await;
    concurrent_redemptions_leave_nothing_alive(&s).await;
}

/// A scope that implies a sensitive one is sensitive in effect: the consent page names what it implies, the
/// consent is not remembered, and the token is as short as the sensitive scope's.
#[tokio::test]
async fn an_implied_sensitive_scope_is_treated_as_sensitive() {
    let s = TestServer::start_with(|c| {
        c.scopes.push(ScopeDefinition {
            value: "files:admin".into(),
            description: "Administer your files".into(),
            sensitive: false,
            max_lifetime_secs: None,
            implies: vec!["files:write".into(), "files:delete".into()],
        });
        c.resources[0].scopes.push("files:admin".into());
    })
    .await;
    let mut browser = Browser::default();
    for round in 0..2 {
        let step = browser
            .get(
                &s,
                &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:admin", "st"),
            )
            .await;
        let step = match step {
            Step::Page(_, html) if html.contains("name=\"password\"") => {
                browser.login(&s, &html, "alice", "wonderland").await
            }
            other => other,
        };
        let Step::Page(200, consent) = step else {
            panic!("round {round}: consent was not asked: {step:?}")
        };
        assert!(
            consent.contains(
                "<li><strong>Delete your files</strong> (sensitive) (included in what is asked above) <code>files:delete</code></li>"
            ),
            "round {round}: {consent}"
        );
        let Step::Redirect(location) = browser.consent(&s, &consent, "approve").await else {
            panic!("round {round}: no redirect")
        };
        let code = query(&location)["code"].clone();
        let (status, body, _) = s.exchange(&code, PUBLIC_CLIENT).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["expires_in"], 60,
            "files:delete caps the token's lifetime"
        );
    }
}

/// Parallel guesses from one address: each is charged before its password is checked, so together they get no
/// more checks than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_get_no_more_than_the_budget() {
    let s = TestServer::start().await;
    let mut browser = Browser::default();
    let Step::Page(_, login) = browser
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "x"),
        )
        .await
    else {
        panic!()
    };
    let guesses = (0..24).map(|i| {
        let mut b = Browser {
            cookies: browser.cookies.clone(),
            ..Browser::default()
        };
        let (s, login) = (&s, login.clone());
        async move { b.login(s, &login, "alice", &format!("guess-{i}")).await }
    });
    let mut checked = 0;
    for step in futures::future::join_all(guesses).await {
        match step {
            Step::Page(401, _) => checked += 1,
            Step::Page(429, _) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        checked <= mcp_authz_authserver::login_guard::MAX_ATTEMPTS_PER_ADDRESS,
        "{checked} passwords were checked"
    );
}

/// A client that hangs up after sending its guess does not escape the count: the attempt is charged before the
/// password is checked.
#[tokio::test]
async fn a_guess_that_hangs_up_is_still_counted() {
    let s = TestServer::start().await;
    let mut browser = Browser::default();
    let Step::Page(_, login) = browser
        .get(
            &s,
            &authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "x"),
        )
        .await
    else {
        panic!()
    };
    let (id, csrf) = (hidden(&login, "request_id"), hidden(&login, "csrf"));
    let cookie = format!("mcp_authz_csrf={}", browser.cookies["mcp_authz_csrf"]);
    let addr = s.running.as_ref().unwrap().addr;
    let state = s.running.as_ref().unwrap().state.clone();
    let key = mcp_authz_authserver::secrets::hash("alice\n127.0.0.1");
    let charged = || async {
        state
            .store
            .login_failures(&key)
            .await
            .unwrap()
            .map_or(0, |(n, _)| n)
    };
    for i in 0..mcp_authz_authserver::login_guard::MAX_ATTEMPTS_PER_ADDRESS {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("request_id", id.as_str()),
                ("csrf", csrf.as_str()),
                ("username", "alice"),
                ("password", &format!("guess-{i}")),
            ])
            .finish();
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(
                format!(
                    "POST /login HTTP/1.1\r\nhost: {addr}\r\ncookie: {cookie}\r\n\
                     content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        // Hang up once the password check has started (the attempt is charged just before it), without
        // waiting for the answer.
        let mut started = false;
        for _ in 0..200 {
            if charged().await > i64::from(i) {
                started = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(started, "guess {i} never reached the password check");
        drop(socket);
        // Its check keeps its slot until the hash is done; the next guess waits for it rather than be turned
        // away as busy.
        for _ in 0..500 {
            if state.login_guard.checks_running() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    match browser.login(&s, &login, "alice", "wonderland").await {
        Step::Page(429, html) => assert!(
            html.contains("too many failed sign-ins for this user; try again in 15 minutes"),
            "{html}"
        ),
        other => panic!("the right password was checked although the budget was spent: {other:?}"),
    }
}

/// A body that never finishes does not hold its connection past the request timeout.
#[tokio::test]
async fn a_trickled_body_is_cut_off_with_408() {
    let s = TestServer::start().await;
    let addr = s.running.as_ref().unwrap().addr;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(
            format!(
                "POST /token HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
                 content-length: 100\r\n\r\ngrant_type="
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        server::REQUEST_TIMEOUT + Duration::from_secs(10),
        socket.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the connection was still open");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains(
            r#"{"error":"invalid_request","error_description":"the request was not completed within 20 seconds"}"#
        ),
        "{text}"
    );
}

/// Junk assertions naming a client with a `jwks_uri` do not make the server fetch it: claims are checked first,
/// and a fetched JWK Set is kept for its freshness lifetime.
#[tokio::test]
async fn junk_assertions_do_not_make_the_server_fetch_keys() {
    let docs = Documents::start().await;
    let (_, jwks) = service_key();
    docs.server.route(
        "/jwks.json",
        Reply::JsonWith(
            vec![("cache-control", "max-age=300".into())],
            jwks.to_string(),
        ),
    );
    let client_id = docs.serve(
        "/keyed.json",
        json!({"client_name": "Keyed agent", "redirect_uris": [REDIRECT],
               "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": docs.url("/jwks.json")}),
    );
    let config = docs.config(&[]);
    let s = TestServer::start_with(|c| c.cimd = config).await;
    let form = |a: &str| {
        vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_assertion_type".to_owned(), JWT_BEARER.to_owned()),
            ("client_assertion".to_owned(), a.to_owned()),
            ("resource".to_owned(), RESOURCE.to_owned()),
        ]
    };
    let post = |f: Vec<(String, String)>| {
        let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        s.http
            .post(s.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    for _ in 0..10 {
        let junk = assertion(&s, |c| {
            c["iss"] = json!(client_id);
            c["sub"] = json!(client_id);
            c["aud"] = json!("https://elsewhere.example/token");
        });
        let r: Value = post(form(&junk)).await.unwrap().json().await.unwrap();
        assert_eq!(
            error_of(&r),
            (
                "invalid_client",
                "client_assertion aud must be this endpoint's URL or the issuer"
            )
        );
    }
    assert_eq!(
        docs.server.hits("/jwks.json"),
        0,
        "a junk assertion fetched keys"
    );
    assert_eq!(
        docs.server.hits("/keyed.json"),
        0,
        "a junk assertion fetched the document"
    );
    // Well-formed claims with a bad signature: the keys are fetched once, then served from the cache.
    let (other_pem, _) = mcp_authz_authserver::keys::generate_es256().unwrap();
    for i in 0..10 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_owned);
        let forged = jsonwebtoken::encode(
            &header,
            &json!({"iss": client_id, "sub": client_id, "aud": s.url("/token"), "exp": now + 60,
                    "jti": format!("forged-{i}")}),
            &jsonwebtoken::EncodingKey::from_ec_pem(other_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let r: Value = post(form(&forged)).await.unwrap().json().await.unwrap();
        assert_eq!(
            error_of(&r),
            (
                "invalid_client",
                "client_assertion rejected: InvalidSignature"
            )
        );
    }
    assert_eq!(docs.server.hits("/jwks.json"), 1);
}

/// A person removed from the static users keeps no access through a refresh token.
#[tokio::test]
async fn a_removed_user_cannot_refresh() {
    let s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    reload(&s, |c| {
        let static_users = c.login.static_users.as_mut().unwrap();
        static_users.users = vec![StaticUser {
            username: "bob".into(),
            password_hash: alice_hash(),
            subject: None,
        }];
    });
    let (status, body, _) = s
        .refresh(
            tokens["refresh_token"].as_str().unwrap(),
            PUBLIC_CLIENT,
            &[],
        )
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            ("invalid_grant", "the user of this grant no longer exists")
        )
    );
    assert_eq!(
        s.introspect(tokens["access_token"].as_str().unwrap()).await["active"],
        false
    );
}

/// After an administrator revokes a grant, its refresh token is refused as revoked (not "already used", which
/// would send an on-call engineer looking for a token thief).
#[tokio::test]
async fn a_refresh_after_an_admin_revocation_says_revoked() {
    let s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    let r: Value = s
        .http
        .post(format!("{}/admin/grants/revoke?subject=alice", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"revoked": 1}));
    let (status, body, _) = s
        .refresh(
            tokens["refresh_token"].as_str().unwrap(),
            PUBLIC_CLIENT,
            &[],
        )
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, ("invalid_grant", "this grant has been revoked"))
    );
}

/// Dynamic registration takes public keys only: a private or symmetric member is refused, never stored.
#[tokio::test]
async fn registration_refuses_private_keys() {
    let s = TestServer::start_with(|c| c.dynamic_client_registration.enabled = true).await;
    for (key, member) in [
        (
            json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}),
            "d",
        ),
        (json!({"kty": "oct", "k": "c2VjcmV0"}), "k"),
    ] {
        let r = s
            .http
            .post(s.url("/register"))
            .json(&json!({"client_name": "x", "redirect_uris": [REDIRECT], "application_type": "native",
                          "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [key]}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            error_of(&body),
            (
                "invalid_client_metadata",
                format!(
                    "jwks holds a private or symmetric key (member {member:?}); send public keys only"
                )
                .as_str()
            )
        );
    }
}

/// How many refusal rows the audit table holds.
async fn refusal_rows(s: &TestServer) -> usize {
    let audit: Value = s
        .http
        .get(format!("{}/admin/audit?limit=1000", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .count()
}

/// An anonymous flood of refusals writes its log lines but only a budget of audit rows.
#[tokio::test]
async fn a_flood_of_refusals_stores_a_bounded_number_of_audit_rows() {
    let s = TestServer::start().await;
    for i in 0..60 {
        let (status, _, _) = s
            .token(&[
                ("grant_type", "client_credentials"),
                ("client_id", &format!("nobody-{i}")),
                ("resource", RESOURCE),
            ])
            .await;
        assert_eq!(status, 401);
    }
    let refusals = refusal_rows(&s).await;
    assert!(
        (20..=21).contains(&refusals),
        "{refusals} refusal rows were stored"
    );
    let metrics = reqwest::get(format!("{}/metrics", s.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let suppressed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mcp_authz_authserver_audit_rows_suppressed_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(suppressed as usize + refusals, 60);
}

/// The holder of a live grant repeating a refusal that changes nothing (a refresh for another resource) gets
/// a budget of rows like anyone: a grant's refusals used to be stored without one, so a holder could fill the
/// table at will.
#[tokio::test]
async fn a_grant_holder_repeating_a_refusal_stores_a_bounded_number_of_rows() {
    let s = TestServer::start().await;
    let mut browser = Browser::default();
    let tokens = s.tokens_for(&mut browser, "files:read").await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    for _ in 0..60 {
        let (status, body, _) = s
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", PUBLIC_CLIENT),
                ("resource", "https://elsewhere.example/mcp"),
            ])
            .await;
        assert_eq!(status, 400, "{body}");
    }
    let refusals = refusal_rows(&s).await;
    assert!(
        (20..=21).contains(&refusals),
        "{refusals} refusal rows were stored"
    );
}

/// A holder spending the grants' row budget with refusals that change nothing cannot hide another grant's
/// security event: a refresh token reused (which revokes its grant, so each grant causes it once) is stored.
#[tokio::test]
async fn a_spent_grant_budget_does_not_hide_a_reused_refresh_token() {
    let s = TestServer::start().await;
    let mut noisy = Browser::default();
    let noisy_tokens = s.tokens_for(&mut noisy, "files:read").await;
    for _ in 0..30 {
        let (status, body, _) = s
            .token(&[
                ("grant_type", "refresh_token"),
                (
                    "refresh_token",
                    noisy_tokens["refresh_token"].as_str().unwrap(),
                ),
                ("client_id", PUBLIC_CLIENT),
                ("resource", "https://elsewhere.example/mcp"),
            ])
            .await;
        assert_eq!(status, 400, "{body}");
    }
    let mut victim = Browser::default();
    let stolen = s.tokens_for(&mut victim, "files:read").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh = |token: String| {
        let s = &s;
        async move {
            s.token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &token),
                ("client_id", PUBLIC_CLIENT),
                ("resource", RESOURCE),
            ])
            .await
        }
    };
    assert_eq!(refresh(stolen.clone()).await.0, 200);
    let (status, body, _) = refresh(stolen).await;
    assert_eq!(status, 400, "{body}");
    let audit: Value = s
        .http
        .get(format!("{}/admin/audit?limit=1000", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reused: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["reason"]
                == "invalid_grant: the refresh token was already used; the whole grant has been revoked"
        })
        .collect();
    assert_eq!(reused.len(), 1, "{audit}");
}

/// Rows made straight in the server's SQLite file, for the cases that need thousands of them.
async fn sqlite(s: &TestServer) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let db = format!("sqlite://{}", s.dir.path().join("as.db").display());
    sqlx::AnyPool::connect(&db).await.unwrap()
}

/// Too many sign-ins pending at once: new ones wait (a page), rather than an anonymous flood filling the disk.
#[tokio::test]
async fn pending_authorization_requests_are_bounded() {
    let s = TestServer::start().await;
    let pool = sqlite(&s).await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
         INSERT INTO auth_requests (id, body, expires_at) SELECT 'flood-' || i, '{}', 4102444800 FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let r = s
        .http
        .get(s.url(&authorize_query(
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
            "st",
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("location").is_none());
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("too many sign-ins are in progress; try again in a few minutes")
    );
}

/// An administrator revoking a widely used client's grants reaches all of them, and a listing never passes a
/// page off as the whole.
#[tokio::test]
async fn bulk_revocation_reaches_every_grant_and_listings_say_when_they_are_cut() {
    let s = TestServer::start().await;
    let pool = sqlite(&s).await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1005)
         INSERT INTO grants (id, subject, client_id, resource, scopes, grant_type, created_at, expires_at)
         SELECT 'g-' || i, 'user-' || i, 'busy', 'https://mcp.example.com/files', 'files:read',
                'authorization_code', 1700000000 + i, 4102444800 FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let admin = |method: reqwest::Method, path: &str| {
        s.http
            .request(method, format!("{}{path}", s.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let list: Value = admin(reqwest::Method::GET, "/admin/grants?client_id=busy")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (list["grants"].as_array().unwrap().len(), &list["truncated"]),
        (1000, &json!(true))
    );
    let revoked: Value = admin(reqwest::Method::POST, "/admin/grants/revoke?client_id=busy")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked, json!({"revoked": 1005}));
    let list: Value = admin(reqwest::Method::GET, "/admin/grants?client_id=busy")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!({"grants": [], "truncated": false}));
}

/// An anonymous document (the platform's policy does not name it) is not trusted with error redirects even at a
/// real resource: the error is a page; a team's policy naming its host does not vouch on the shared issuer's
/// behalf. A document the platform's policy names gets its errors back as usual, and so does a loopback redirect,
/// which stays on the person's machine.
#[tokio::test]
async fn only_vouched_clients_get_error_redirects() {
    let docs = Documents::start().await;
    let web = "https://app.example.com/cb";
    let anonymous = docs.serve(
        "/agents/web.json",
        json!({"client_name": "Web agent", "redirect_uris": [web], "token_endpoint_auth_method": "none"}),
    );
    let local = docs.serve(
        "/local.json",
        json!({"client_name": "Local", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}),
    );
    let team_names_it = Policy {
        client_id_patterns: vec![docs.url("/agents")],
        ..Policy::default()
    };
    let config = docs.config(&[("team", team_names_it)]);
    let open = TestServer::start_with(|c| {
        c.cimd = config.clone();
        c.resources[1].cimd_policy = Some("team".into());
    })
    .await;
    let mut vouching = config.clone();
    vouching.baseline.client_id_patterns = vec![docs.url("/")];
    let platform_names_it = TestServer::start_with(|c| c.cimd = vouching).await;
    let bogus = |s: &TestServer, client_id: &str, redirect: &str, resource: &str| {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "bogus"),
                ("client_id", client_id),
                ("redirect_uri", redirect),
                ("state", "st"),
                ("resource", resource),
            ])
            .finish();
        s.http.get(s.url(&format!("/authorize?{query}"))).send()
    };
    for resource in [RESOURCE, OTHER_RESOURCE] {
        let r = bogus(&open, &anonymous, web, resource).await.unwrap();
        assert_eq!(r.status(), 400, "{resource}");
        assert!(r.headers().get("location").is_none());
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("response_type &quot;bogus&quot; is not supported; use code")
        );
    }
    let r = bogus(&open, &local, REDIRECT, RESOURCE).await.unwrap();
    assert_eq!(r.status(), 303);
    let r = bogus(&platform_names_it, &anonymous, web, RESOURCE)
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("https://app.example.com/cb?error=unsupported_response_type")
    );
}

/// An administrator's revocation also forgets the consent: the client must ask the person again.
#[tokio::test]
async fn an_admin_revocation_forgets_the_consent() {
    let s = TestServer::start().await;
    let mut browser = Browser::default();
    s.tokens_for(&mut browser, "files:read").await;
    let r: Value = s
        .http
        .post(format!(
            "{}/admin/grants/revoke?client_id={PUBLIC_CLIENT}",
            s.admin
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"revoked": 1}));
    match browser
        .get(
            &s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "xyz"),
        )
        .await
    {
        Step::Page(200, html) => assert!(html.contains("Allow access?"), "{html}"),
        other => panic!("a code was issued without asking: {other:?}"),
    }
}

/// A flood of anonymous refusals does not crowd a refusal about a live grant (a replayed code) out of the table.
#[tokio::test]
async fn a_grant_holders_refusal_is_always_audited() {
    let s = TestServer::start().await;
    for _ in 0..40 {
        assert_eq!(
            s.token(&[
                ("grant_type", "client_credentials"),
                ("client_id", "junk"),
                ("resource", RESOURCE)
            ])
            .await
            .0,
            401
        );
    }
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
    assert_eq!(s.token(&form).await.0, 200);
    assert_eq!(s.token(&form).await.0, 400);
    let audit: Value = s
        .http
        .get(format!("{}/admin/audit?limit=1000", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit["events"].as_array().unwrap().iter().any(|e| e["reason"]
            == "invalid_grant: the authorization code was already used; every token issued from it has been revoked"),
        "{audit}"
    );
}

/// A grant is judged by what its resource offers and its policy allows today: a narrowed policy narrows the
/// grants made under it, and a grant whose resource is gone is revoked rather than judged by the baseline.
#[tokio::test]
async fn grants_follow_their_resource_and_policy_as_they_are_now() {
    let docs = Documents::start().await;
    let client_id = docs.serve(
        "/agent.json",
        json!({"client_name": "Agent", "redirect_uris": [REDIRECT],
               "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"}),
    );
    let config = docs.config(&[("team", Policy::default())]);
    let s = TestServer::start_with(|c| {
        c.cimd = config;
        c.resources[0].cimd_policy = Some("team".into());
    })
    .await;
    let code = s
        .code_for(
            &mut Browser::default(),
            &client_id,
            REDIRECT,
            "files:read files:write",
        )
        .await;
    let (status, tokens, _) = s.exchange(&code, &client_id).await;
    assert_eq!(status, 200, "{tokens}");
    let refresh = |token: String| {
        let (s, client_id) = (&s, client_id.clone());
        async move {
            s.token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &token),
                ("client_id", &client_id),
            ])
            .await
        }
    };
    reload(&s, |c| {
        c.cimd.policies.get_mut("team").unwrap().allowed_scopes = Some(vec!["files:read".into()]);
    });
    let (status, body, _) = refresh(tokens["refresh_token"].as_str().unwrap().into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("files:write"),
        "{body}"
    );
    // Narrowed on request, the grant still serves what the policy allows.
    let (status, body, _) = s
        .refresh(
            tokens["refresh_token"].as_str().unwrap(),
            &client_id,
            &[("scope", "files:read")],
        )
        .await;
    assert_eq!(
        (status, body["scope"].as_str()),
        (200, Some("files:read")),
        "{body}"
    );
    reload(&s, |c| c.resources.retain(|r| r.resource != RESOURCE));
    let (status, gone, _) = refresh(body["refresh_token"].as_str().unwrap().into()).await;
    assert_eq!(
        (status, error_of(&gone)),
        (
            400,
            (
                "invalid_grant",
                "the resource of this grant is no longer served by this server"
            )
        )
    );
}

/// A `jwks_uri` that hangs is fetched once however many assertions name it, and remembered as failed for a
/// while: it cannot hold the shared fetch slots every tenant's new clients need.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_jwks_uri_holds_one_fetch_slot_at_most() {
    let docs = Documents::start().await;
    docs.server.route("/tarpit-jwks.json", Reply::Hang);
    let attacker = docs.serve(
        "/attacker.json",
        json!({"client_name": "Attacker", "redirect_uris": [REDIRECT],
               "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": docs.url("/tarpit-jwks.json")}),
    );
    let victim = docs.serve(
        "/victim.json",
        json!({"client_name": "Victim", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}),
    );
    let mut config = docs.config(&[]);
    config.fetch.max_concurrent_fetches = 4;
    config.fetch.total_timeout_ms = 2000;
    let s = TestServer::start_with(|c| c.cimd = config).await;
    let junk = |i: usize| {
        let a = assertion(&s, |c| {
            c["iss"] = json!(attacker);
            c["sub"] = json!(attacker);
            c["aud"] = json!(s.url("/revoke"));
            c["jti"] = json!(format!("junk-{i}"));
        });
        let s = &s;
        async move {
            let r = s
                .post_form(
                    "/revoke",
                    &[
                        ("token", "no-such-token"),
                        ("client_assertion_type", JWT_BEARER),
                        ("client_assertion", &a),
                    ],
                )
                .await;
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let flood = futures::future::join_all((0..8).map(junk));
    let victim_try = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.http
            .get(s.url(&authorize_query(&victim, REDIRECT, "files:read", "v")))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let (answers, victim_status) = tokio::join!(flood, victim_try);
    assert_eq!(docs.server.hits("/tarpit-jwks.json"), 1);
    assert_eq!(
        victim_status, 200,
        "the victim's document could not be fetched"
    );
    for (status, body) in &answers {
        assert_eq!(
            (*status, body["error"].as_str()),
            (503, Some("temporarily_unavailable")),
            "{body}"
        );
    }
    // Remembered as failed: the next assertion does not reach out again.
    let (status, _) = junk(99).await;
    assert_eq!(status, 503);
    assert_eq!(docs.server.hits("/tarpit-jwks.json"), 1);
}

/// A team's policy judges documents; a client registered on the fly at `/register` is not admitted where a
/// policy governs.
#[tokio::test]
async fn registered_clients_are_not_admitted_where_a_team_policy_governs() {
    let docs = Documents::start().await;
    let config = docs.config(&[("strict", keys_only())]);
    let s = TestServer::start_with(|c| {
        c.cimd = config;
        c.resources[0].cimd_policy = Some("strict".into());
        c.dynamic_client_registration.enabled = true;
    })
    .await;
    let registered: Value = s
        .http
        .post(s.url("/register"))
        .json(&json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "client_name": "x", "application_type": "native"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();
    let r = s
        .http
        .get(s.url(&authorize_query(client_id, REDIRECT, "files:read", "st")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains(
        "clients registered at /register are not admitted for this resource: its policy &quot;strict&quot; admits clients by metadata document only"
    ));
}

/// The refusals of a refresh at its edges: a grant past its end, and a `resource` that is not the grant's.
#[tokio::test]
async fn refresh_refusals_name_their_reason() {
    let s = TestServer::start().await;
    let tokens = s.tokens_for(&mut Browser::default(), "files:read").await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, body, _) = s
        .refresh(refresh, PUBLIC_CLIENT, &[("resource", OTHER_RESOURCE)])
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "invalid_target",
                "resource \"https://mcp.example.com/mail\" is not the resource this grant is for"
            )
        )
    );
    let pool = sqlite(&s).await;
    sqlx::query("UPDATE grants SET expires_at = 1")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body, _) = s.refresh(refresh, PUBLIC_CLIENT, &[]).await;
    assert_eq!(
        (status, error_of(&body)),
        (400, ("invalid_grant", "this grant has expired"))
    );
}

/// Requests run on to their end when their clients hang up, so their number is bounded: past it, a request is
/// refused at once with 429 and `Retry-After`, and counted; once a slot is free, requests are served again.
#[tokio::test]
async fn requests_past_the_bound_in_progress_are_refused_at_once() {
    let s = TestServer::start().await;
    let state = s.running.as_ref().unwrap().state.clone();
    let all = u32::try_from(server::MAX_IN_FLIGHT).unwrap();
    let busy = state
        .in_flight
        .clone()
        .acquire_many_owned(all)
        .await
        .unwrap();
    let refused = s.http.get(format!("{}/jwks", s.base)).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.json::<Value>().await.unwrap(),
        json!({"error": "temporarily_unavailable",
               "error_description": "the server has too many requests in progress; retry shortly"})
    );
    // The admin port has a bound of its own: a flood of OAuth requests does not fail the kubelet's probes.
    for path in ["/healthz", "/metrics"] {
        let admin = s.http.get(format!("{}{path}", s.admin)).send().await;
        assert_eq!(admin.unwrap().status(), 200, "{path}");
    }
    drop(busy);
    assert_eq!(
        s.http
            .get(format!("{}/jwks", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = s
        .http
        .get(format!("{}/metrics", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"mcp_authz_authserver_rate_limited_total{endpoint="all",key="in_progress"} 1"#
        ),
        "{metrics}"
    );
}

/// The plain port speaks HTTP/1.1 only: an HTTP/2 connection preface (h2c, which would let a client cancel
/// requests by resetting streams on one connection) gets no HTTP/2 answer.
#[tokio::test]
async fn the_oauth_port_does_not_speak_http2_without_negotiation() {
    let s = TestServer::start().await;
    let address = s.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "an HTTP/2 answer: {answer:?}"
    );
}
