//! What happens to a person's provider tokens when a connection ends or is replaced, and the refusals around it,
//! against a provider this test plays (its token and RFC 7009 revocation endpoints record what they are told):
//! both tokens are revoked, through the durable queue, retried until the provider answers; a connect flow is
//! bound to its browser before its `state` is spent; concurrent flows do not undo each other; sealed tokens open
//! only as the field they were sealed for; an identity provider's subject gets no local person's connection; the
//! consent page names every provider; a key file that does not read stops only the provider features.

mod support;

use std::sync::Arc;

use mcp_authz_authserver::config::{
    ClientAuthMethod, ClientConfig, GrantType, ProviderConfig, TrustedIdentityProvider,
};
use mcp_authz_authserver::providers::client::MAX_CALLS;
use serde_json::{Value, json};
use support::providers::*;
use support::*;

const NEW_TOKENS: &str = r#"{"access_token":"new-access","token_type":"Bearer","expires_in":600,"refresh_token":"new-refresh"}"#;
const FAR: i64 = 4_000_000_000;

/// alice signed in (in `b`) with Acme connected beforehand (so that the consent page starts no connect): her
/// token for the files service.
async fn alice_connected(p: &Plane, b: &mut Browser, access: &str, refresh: &str) -> String {
    p.seed("alice", access, Some(refresh), FAR).await;
    p.person(b).await
}

/// The disconnect form in `b`, posted back.
async fn disconnect(p: &Plane, b: &mut Browser) -> (u16, String) {
    let (status, form) = page(b.get(&p.s, "/connect/acme/disconnect").await);
    assert_eq!(status, 200, "{form}");
    let csrf = hidden(&form, "csrf");
    page(
        b.post(&p.s, "/connect/acme/disconnect", &[("csrf", &csrf)])
            .await,
    )
}

/// A disconnect revokes the access token the MCP server may hold as well as the refresh token; both are queued in
/// the transaction that deletes them and told to the provider at once. What the provider does not take (here a
/// 503) is told again by the queue after its backoff; after the provider's first failure, its other tokens wait
/// for the next pass instead of each waiting on it in turn.
#[tokio::test]
async fn a_disconnect_revokes_both_tokens_and_retries_until_the_provider_takes_them() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    alice_connected(&p, &mut alice, "live-access", "stored-refresh").await;
    *fake.revoke_status.lock().unwrap() = 503;
    let (status, done) = disconnect(&p, &mut alice).await;
    assert_eq!(status, 200, "{done}");
    assert!(
        done.contains("Your Acme account is no longer connected."),
        "{done}"
    );
    assert_eq!(
        fake.revoked(),
        [told("stored-refresh", "refresh_token")],
        "told at once, until the provider fails"
    );
    assert_eq!(p.stored_rows().await, 0);
    assert_eq!(
        p.queued_revocations().await,
        2,
        "kept while the provider fails"
    );
    p.revoke_queued().await;
    assert_eq!(fake.revoked().len(), 1, "not before the backoff");
    *fake.revoke_status.lock().unwrap() = 200;
    p.all_due().await;
    p.revoke_queued().await;
    assert_eq!(p.queued_revocations().await, 0);
    assert_eq!(
        fake.revoked()[1..],
        [
            told("stored-refresh", "refresh_token"),
            told("live-access", "access_token")
        ]
    );
}

/// An administrator's revocation of the person's grants deletes the connection: its live access token is queued
/// with its refresh token (an expired one is not: nothing to revoke).
#[tokio::test]
async fn revoking_a_grant_revokes_the_connections_access_token_too() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    alice_connected(&p, &mut alice, "live-access", "stored-refresh").await;
    let r =
        p.s.http
            .post(format!("{}/admin/grants/revoke?subject=alice", p.s.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.stored_rows().await, 0);
    p.revoke_queued().await;
    assert_eq!(
        fake.revoked(),
        [
            told("stored-refresh", "refresh_token"),
            told("live-access", "access_token")
        ]
    );
    // An expired access token is not queued.
    p.seed("alice", "expired-access", Some("refresh-2"), 1)
        .await;
    p.s.http
        .post(format!("{}/admin/grants/revoke?subject=alice", p.s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    p.revoke_queued().await;
    assert_eq!(fake.revoked()[2..], [told("refresh-2", "refresh_token")]);
}

/// Connecting again replaces the connection and revokes nothing: to the same account it usually continues the same
/// grant at the provider, where revoking any of the grant's tokens ends all of them (Google's rule, and RFC 7009
/// §2.1's for access tokens), the new connection's too.
#[tokio::test]
async fn connecting_again_revokes_nothing_at_the_provider() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    alice_connected(&p, &mut alice, "old-access", "old-refresh").await;
    let state = begin_connect(&p.s, &mut alice, &fake.base).await;
    let (status, done) = page(
        alice
            .get(
                &p.s,
                &format!("/connect/acme/callback?code=c&state={state}"),
            )
            .await,
    );
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("Your Acme account is connected."), "{done}");
    assert_eq!(p.queued_revocations().await, 0);
    p.revoke_queued().await;
    assert_eq!(fake.revoked(), Vec::<(String, String)>::new());
    // The new connection is the one served.
    let person = p.person(&mut alice).await;
    let (status, body) = p.provider_token(RESOURCE, &person, "after-reconnect").await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("new-access")),
        "{body}"
    );
}

/// A disconnect the provider has not taken yet, then connecting again: the queued revocations are dropped, since
/// told after the new connection they would end its grant at a provider that revokes grant-wide.
#[tokio::test]
async fn connecting_again_drops_the_revocations_a_disconnect_left_queued() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    alice_connected(&p, &mut alice, "old-access", "old-refresh").await;
    *fake.revoke_status.lock().unwrap() = 503;
    let (status, done) = disconnect(&p, &mut alice).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(p.queued_revocations().await, 2);
    *fake.revoke_status.lock().unwrap() = 200;
    let state = begin_connect(&p.s, &mut alice, &fake.base).await;
    let (status, done) = page(
        alice
            .get(
                &p.s,
                &format!("/connect/acme/callback?code=c&state={state}"),
            )
            .await,
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(p.queued_revocations().await, 0);
    p.all_due().await;
    p.revoke_queued().await;
    assert_eq!(
        fake.revoked(),
        [told("old-refresh", "refresh_token")],
        "only what the disconnect told at once, before the provider failed"
    );
}

/// A `state` travels in URLs (and so into referrers and logs): whoever learns one, without the browser's
/// binding, is refused and leaves the person's connect pending; the person then completes it, once.
#[tokio::test]
async fn a_state_without_its_browser_leaves_the_persons_connect_pending() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    alice_connected(&p, &mut alice, "old-access", "old-refresh").await;
    let state = begin_connect(&p.s, &mut alice, &fake.base).await;
    let callback = format!("/connect/acme/callback?code=c&state={state}");
    let mut stranger = Browser::default();
    let (status, html) = page(stranger.get(&p.s, &callback).await);
    assert_eq!(status, 400);
    assert!(
        shows(
            &html,
            "invalid_request",
            "the connection did not start in this browser"
        ),
        "{html}"
    );
    // The stranger's attempt is recorded, but not as the person's: whoever learns a state cannot write records
    // in someone's name.
    let audit: Value =
        p.s.http
            .get(format!("{}/admin/audit?limit=50", p.s.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let refused: Vec<&Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "connect" && e["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{audit}");
    assert_ne!(refused[0]["subject"], "alice", "{audit}");
    let (status, done) = page(alice.get(&p.s, &callback).await);
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("Your Acme account is connected."), "{done}");
    let (status, html) = page(alice.get(&p.s, &callback).await);
    assert_eq!(status, 400);
    assert!(
        shows(
            &html,
            "invalid_request",
            "this connection has expired or was already completed; start again"
        ),
        "{html}"
    );
}

/// Two tabs connecting the same provider, and a connect of another provider meanwhile: each completes. A browser
/// keeps the newest three bindings of each provider, in one cookie per provider.
#[tokio::test]
async fn connects_in_two_tabs_and_to_two_providers_do_not_undo_each_other() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let base = fake.base.clone();
    let p = plane_with(At::Endpoints(base.clone()), None, |c| {
        let mut globex: ProviderConfig = c.providers[0].clone();
        globex.id = "globex".into();
        globex.display_name = "Globex".into();
        c.providers.push(globex);
        c.resources[0].providers.push("globex".into());
    })
    .await;
    let mut alice = Browser::default();
    p.seed("alice", "a", Some("r"), FAR).await;
    p.seed_at("alice", "globex", "g", Some("gr"), FAR).await;
    p.person(&mut alice).await;
    let first = begin_connect(&p.s, &mut alice, &base).await;
    let second = begin_connect(&p.s, &mut alice, &base).await;
    let other = begin_connect_to(&p.s, &mut alice, "globex", &base).await;
    for (id, state) in [("acme", &first), ("acme", &second), ("globex", &other)] {
        let (status, done) = page(
            alice
                .get(
                    &p.s,
                    &format!("/connect/{id}/callback?code=c&state={state}"),
                )
                .await,
        );
        assert_eq!(status, 200, "{id}: {done}");
    }
    let connect_cookies = alice
        .cookies
        .keys()
        .filter(|k| k.starts_with("mcp_authz_connect"))
        .count();
    assert_eq!(connect_cookies, 2, "{:?}", alice.cookies);
    // Four flows started: the oldest is no longer bound; the newest three are.
    let states = [
        begin_connect(&p.s, &mut alice, &base).await,
        begin_connect(&p.s, &mut alice, &base).await,
        begin_connect(&p.s, &mut alice, &base).await,
        begin_connect(&p.s, &mut alice, &base).await,
    ];
    let (status, html) = page(
        alice
            .get(
                &p.s,
                &format!("/connect/acme/callback?code=c&state={}", states[0]),
            )
            .await,
    );
    assert_eq!(status, 400);
    assert!(
        shows(
            &html,
            "invalid_request",
            "the connection did not start in this browser"
        ),
        "{html}"
    );
    for state in &states[1..] {
        let (status, done) = page(
            alice
                .get(
                    &p.s,
                    &format!("/connect/acme/callback?code=c&state={state}"),
                )
                .await,
        );
        assert_eq!(status, 200, "{done}");
    }
}

/// Someone who can write the database swaps a row's two sealed values: the refresh token is never handed out as
/// an access token (neither opens as the other field), and the row is deleted. A row of format v1 (sealed without
/// the field) is not connected any more: deleted, its tokens revoked at the provider, the person asked to
/// connect again.
#[tokio::test]
async fn swapped_sealed_tokens_are_never_handed_out_and_v1_rows_connect_again() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    let person = alice_connected(&p, &mut alice, "live-access", "refresh-secret").await;
    let pool = sqlx_pool(&p.s).await;
    sqlx::query(
        "UPDATE provider_connections SET access_sealed = refresh_sealed, refresh_sealed = access_sealed",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (status, body) = p.provider_token(RESOURCE, &person, "swap-1").await;
    let connect_again = |why: &str| {
        format!(
            "{why}: the person must connect Acme at {}/connect/acme",
            p.s.base
        )
    };
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "interaction_required",
                connect_again("the stored connection can no longer be read").as_str()
            )
        ),
        "{body}"
    );
    assert_eq!(p.stored_rows().await, 0);
    // Each value was queued under the other column's hint, and opens only as what it was sealed for: it is
    // revoked as that.
    p.revoke_queued().await;
    let mut revoked = fake.revoked();
    revoked.sort();
    assert_eq!(
        revoked,
        [
            told("live-access", "access_token"),
            told("refresh-secret", "refresh_token")
        ]
    );
    assert_eq!(p.queued_revocations().await, 0);

    let sealer = p.sealer();
    let (key_id, access_sealed) = sealer.seal_v1_for_tests("alice", "acme", "v1-access");
    p.store()
        .put_connection(&mcp_authz_authserver::store::ProviderConnection {
            subject: "alice".into(),
            provider: "acme".into(),
            key_id,
            refresh_sealed: Some(sealer.seal_v1_for_tests("alice", "acme", "v1-refresh").1),
            access_sealed,
            access_expires_at: FAR,
            scopes: String::new(),
            created_at: 0,
            updated_at: 0,
        })
        .await
        .unwrap();
    let (status, body) = p.provider_token(RESOURCE, &person, "v1-1").await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "interaction_required",
                connect_again(
                    "the stored connection was written in a format this server no longer uses"
                )
                .as_str()
            )
        ),
        "{body}"
    );
    assert_eq!(p.stored_rows().await, 0);
    p.revoke_queued().await;
    let revoked = fake.revoked();
    assert!(
        revoked.ends_with(&[
            told("v1-refresh", "refresh_token"),
            told("v1-access", "access_token")
        ]),
        "{revoked:?}"
    );
}

/// An ES256 key pair: (PEM private key, its public JWK with `kid`).
fn idp_key(kid: &str) -> (String, Value) {
    use base64::Engine;
    let (pem, _) = mcp_authz_authserver::keys::generate_es256().unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
    )
    .unwrap();
    use aws_lc_rs::signature::KeyPair;
    let (mut jwk, _) = mcp_authz_authserver::keys::public_jwk(pair.public_key().as_ref()).unwrap();
    jwk["kid"] = kid.into();
    jwk["alg"] = "ES256".into();
    (pem, jwk)
}

/// An enterprise identity provider asserts `sub: alice` (ID-JAG): that token is a person's, but not the alice
/// who signed in here and connected Acme; her Acme token is not handed to it.
#[tokio::test]
async fn an_identity_providers_subject_gets_no_local_persons_connection() {
    const IDP: &str = "https://idp.corp.example";
    const AGENT: &str = "enterprise-agent";
    const SECRET: &str = "s3cret-of-the-enterprise-agent-0123456789";
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let (pem, jwk) = idp_key("idp-1");
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("agent-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let p = plane_with(At::Endpoints(fake.base.clone()), None, |c| {
        c.clients.push(ClientConfig {
            client_id: AGENT.into(),
            client_name: "Enterprise agent".into(),
            redirect_uris: vec![],
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretPost,
            jwks: None,
            client_secret_file: Some(secret_file.clone()),
            grant_types: vec![GrantType::JwtBearer],
            scopes: vec![],
            introspection: false,
        });
        c.trusted_identity_providers = vec![TrustedIdentityProvider {
            issuer: IDP.into(),
            jwks_uri: None,
            jwks: Some(json!({ "keys": [jwk] })),
            ca_file: None,
            clients: vec![AGENT.into()],
        }];
    })
    .await;
    let mut alice = Browser::default();
    let local = alice_connected(&p, &mut alice, "alices-access", "alices-refresh").await;
    let (status, body) = p.provider_token(RESOURCE, &local, "local").await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("alices-access"))
    );
    let now = mcp_authz_authserver::clock::now_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("oauth-id-jag+jwt".into());
    header.kid = Some("idp-1".into());
    let jag = jsonwebtoken::encode(
        &header,
        &json!({
            "iss": IDP, "sub": "alice", "aud": p.s.base, "client_id": AGENT, "resource": RESOURCE,
            "scope": "files:read", "jti": "jag-1", "iat": now, "exp": now + 300,
        }),
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, body, _) =
        p.s.token(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &jag),
            ("client_id", AGENT),
            ("client_secret", SECRET),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let asserted = body["access_token"].as_str().unwrap();
    let (status, body) = p.provider_token(RESOURCE, asserted, "asserted").await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "invalid_scope",
                "provider tokens are for people signed in at this server: the subject token's grant did not start with a sign-in here"
            )
        ),
        "{body}"
    );
}

/// The consent page names every provider the service receives the person's access at, connected or not.
#[tokio::test]
async fn the_consent_page_names_every_provider_and_which_are_connected() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane_with(At::Endpoints(fake.base.clone()), None, |c| {
        let mut globex: ProviderConfig = c.providers[0].clone();
        globex.id = "globex".into();
        globex.display_name = "Globex".into();
        c.providers.push(globex);
        c.resources[0].providers.push("globex".into());
    })
    .await;
    p.seed("alice", "a", Some("r"), FAR).await;
    // A row of the retired format v1 is no connection: its first use deletes it and asks to connect again.
    let sealer = p.sealer();
    let (key_id, access_sealed) = sealer.seal_v1_for_tests("alice", "globex", "v1-access");
    p.store()
        .put_connection(&mcp_authz_authserver::store::ProviderConnection {
            subject: "alice".into(),
            provider: "globex".into(),
            key_id,
            refresh_sealed: None,
            access_sealed,
            access_expires_at: FAR,
            scopes: String::new(),
            created_at: 0,
            updated_at: 0,
        })
        .await
        .unwrap();
    let mut alice = Browser::default();
    let Step::Page(_, form) = alice
        .get(
            &p.s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "st"),
        )
        .await
    else {
        panic!("no login page")
    };
    let login = alice.login(&p.s, &form, "alice", "wonderland").await;
    let Step::Page(200, consent) = login else {
        panic!("no consent page: {login:?}")
    };
    assert!(
        consent.contains(
            "<ul id=\"providers\"><li>Acme (connected)</li><li>Globex (not connected)</li></ul>\
             <p>If you allow, you will connect your <strong>Globex</strong> account next.</p>"
        ),
        "{consent}"
    );
}

/// A provider-token key file that does not read: the server starts and serves sign-ins; the provider features
/// answer `temporarily_unavailable`, and the metric says so.
#[tokio::test]
async fn a_key_file_that_does_not_read_stops_only_the_provider_features() {
    const CHECKER: &str = "revocation-checker";
    const ROTATED: &str = "the-checkers-second-secret-0123456789abcdef";
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let keys = Arc::new(std::sync::Mutex::new(None));
    let keys_seen = keys.clone();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("checker-secret");
    std::fs::write(&secret_file, "the-checkers-first-secret-0123456789abcdef").unwrap();
    let p = plane_with(At::Endpoints(fake.base.clone()), None, |c| {
        let path = c.provider_token_keys_file.clone().unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "garbage\n").unwrap();
        *keys_seen.lock().unwrap() = Some(path);
        c.clients.push(ClientConfig {
            client_id: CHECKER.into(),
            client_name: "Revocation checker".into(),
            redirect_uris: vec![],
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretPost,
            jwks: None,
            client_secret_file: Some(secret_file.clone()),
            grant_types: vec![GrantType::ClientCredentials],
            scopes: vec![],
            introspection: false,
        });
    })
    .await;
    let path = keys.lock().unwrap().clone().unwrap();
    assert_eq!(
        p.s.running
            .as_ref()
            .unwrap()
            .state
            .snapshot()
            .sealer_problem
            .as_deref(),
        Some(
            format!(
                "invalid config: provider token key file {}: line 1: expected `<key id> <key in base64>`",
                path.display()
            )
            .as_str()
        )
    );
    let unavailable = "provider connections are unavailable: the provider-token keys of this server cannot be used; retry later";
    // Signing in still works (the consent page's connect is left for later).
    let mut alice = Browser::default();
    let person = p.person(&mut alice).await;
    let (status, html) = page(alice.get(&p.s, "/connect/acme").await);
    assert_eq!(status, 503);
    assert!(
        shows(&html, "temporarily_unavailable", unavailable),
        "{html}"
    );
    let (status, body) = p.provider_token(RESOURCE, &person, "keys-1").await;
    assert_eq!(
        (status, error_of(&body)),
        (503, ("temporarily_unavailable", unavailable))
    );
    let metrics = p.s.metrics().await;
    assert!(
        metrics.contains("mcp_authz_authserver_provider_token_keys_unusable 1"),
        "{metrics}"
    );
    // A client's rotated secret takes effect at the next reading of the files (every 10 s) all the same.
    std::fs::write(&secret_file, ROTATED).unwrap();
    let with_rotated = || async {
        let (status, body, _) =
            p.s.token(&[
                ("grant_type", "client_credentials"),
                ("client_id", CHECKER),
                ("client_secret", ROTATED),
                ("resource", RESOURCE),
            ])
            .await;
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let refused = (401, "invalid_client".to_owned());
    let started = std::time::Instant::now();
    let mut answer = with_rotated().await;
    assert_eq!(
        answer, refused,
        "the rotated secret before the files are read again"
    );
    while answer == refused && started.elapsed() < std::time::Duration::from_secs(25) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        answer = with_rotated().await;
    }
    // Authenticated: refused now only for scope (the checker holds none).
    assert_eq!(
        answer,
        (400, "invalid_scope".to_owned()),
        "the rotated secret was never taken"
    );
}

/// A queued revocation sealed under a key this replica has not read yet waits (another replica may seal under a
/// new key first), however old: the provider was never asked, so nothing gives it up.
#[tokio::test]
async fn a_queued_revocation_under_a_key_not_read_yet_waits() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let pool = sqlx_pool(&p.s).await;
    let now = mcp_authz_authserver::clock::now_secs();
    sqlx::query(
        "INSERT INTO provider_revocations (refresh_sealed, subject, provider, key_id, queued_at, token_type_hint)
         VALUES ('sealed-under-k9', 'alice', 'acme', 'v2:k9', $1, 'refresh_token')",
    )
    .bind(now - 2 * 86_400)
    .execute(&pool)
    .await
    .unwrap();
    p.revoke_queued().await;
    assert_eq!(p.queued_revocations().await, 1, "waits for the key");
    p.all_due().await;
    p.revoke_queued().await;
    let rows = p.queue_rows().await;
    assert_eq!(rows.len(), 1, "still waits");
    assert_eq!(rows[0].2, 0, "no attempt at the provider counted");
    assert_eq!(fake.revoked(), []);
}

/// Sixteen calls to Acme in progress (connect callbacks waiting on a slow token endpoint): a token exchange that
/// needs a refresh is refused at once, in OAuth's form.
#[tokio::test]
async fn a_provider_with_sixteen_calls_in_progress_is_refused_at_once() {
    let answer = Arc::new(std::sync::Mutex::new((200, NEW_TOKENS.to_owned())));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fake =
        FakeProvider::start_with(answer, calls.clone(), std::time::Duration::from_secs(3)).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    p.seed("alice", "expired", Some("stored-refresh"), 1).await;
    let person = p.person(&mut alice).await;
    let mut tabs = Vec::new();
    for _ in 0..MAX_CALLS {
        let mut tab = Browser {
            cookies: alice.cookies.clone(),
            ..Browser::default()
        };
        let state = begin_connect(&p.s, &mut tab, &fake.base).await;
        tabs.push((tab, state));
    }
    let callbacks = futures::future::join_all(tabs.iter_mut().map(|(tab, state)| {
        let path = format!("/connect/acme/callback?code=c&state={state}");
        let s = &p.s;
        async move { page(tab.get(s, &path).await).0 }
    }));
    // Asked once every callback holds its call (the provider has seen them all), well within their 3 s.
    let exchange = async {
        for _ in 0..500 {
            if calls.load(std::sync::atomic::Ordering::SeqCst) >= MAX_CALLS {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        p.provider_token(RESOURCE, &person, "busy").await
    };
    let (statuses, (status, body)) = tokio::join!(callbacks, exchange);
    assert_eq!(
        (status, error_of(&body)),
        (
            503,
            (
                "temporarily_unavailable",
                "no token from the provider: too many calls to Acme are in progress; retry later"
            )
        )
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// A refresh that loses to a disconnect (the row is gone when it comes back with the provider's answer): the
/// tokens the provider just gave are nobody's, and are revoked there.
#[tokio::test]
async fn a_refresh_that_loses_to_a_disconnect_revokes_what_the_provider_gave_it() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    p.seed("alice", "expired", Some("stored-refresh"), 1).await;
    let person = p.person(&mut alice).await;
    let held = fake.token_gate.clone().lock_owned().await;
    let exchange = p.provider_token(RESOURCE, &person, "lost");
    let gone = async {
        fake.token_called.notified().await;
        let done = disconnect(&p, &mut alice).await;
        drop(held);
        done
    };
    let ((status, body), (disconnected, _)) = tokio::join!(exchange, gone);
    assert_eq!(disconnected, 200);
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "interaction_required",
                format!(
                    "not connected: the person must connect Acme at {}/connect/acme",
                    p.s.base
                )
                .as_str()
            )
        )
    );
    p.revoke_queued().await;
    let revoked = fake.revoked();
    assert_eq!(revoked[0], told("stored-refresh", "refresh_token"));
    let mut later = revoked[1..].to_vec();
    later.sort();
    assert_eq!(
        later,
        [
            told("new-access", "access_token"),
            told("new-refresh", "refresh_token")
        ]
    );
    assert_eq!(p.queued_revocations().await, 0);
}

/// A refresh that loses to a newer row (another replica's refresh, or the person connecting again): the stored row
/// is served, and the tokens the provider just gave are left to expire, since revoking them would revoke the grant
/// the stored row continues at many providers.
#[tokio::test]
async fn a_refresh_that_loses_to_a_newer_row_serves_it_and_revokes_nothing() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    p.seed("alice", "expired", Some("stored-refresh"), 1).await;
    let person = p.person(&mut alice).await;
    let held = fake.token_gate.clone().lock_owned().await;
    let exchange = p.provider_token(RESOURCE, &person, "lost");
    let newer = async {
        fake.token_called.notified().await;
        let live_until = mcp_authz_authserver::clock::now_secs() + 600;
        let seeded = p
            .seed("alice", "newer-access", Some("newer-refresh"), live_until)
            .await;
        drop(held);
        seeded
    };
    let ((status, body), _) = tokio::join!(exchange, newer);
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("newer-access")),
        "{body}"
    );
    assert_eq!(p.queued_revocations().await, 0);
    p.revoke_queued().await;
    assert_eq!(fake.revoked(), Vec::<(String, String)>::new());
}

/// A provider that takes a disconnect's revocation and never answers holds neither the page nor the record: the
/// person is told at once that the account is no longer connected, the audit holds the decision, and the tokens
/// stay queued for the maintenance loop.
#[tokio::test]
async fn a_provider_that_never_answers_a_revocation_holds_up_no_disconnect() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let p = plane(At::Endpoints(base), None).await;
    p.seed("alice", "held-access", Some("held-refresh"), FAR)
        .await;
    let mut alice = Browser::default();
    p.person(&mut alice).await;
    let asked = std::time::Instant::now();
    let (status, done) = disconnect(&p, &mut alice).await;
    // The page waits for the provider 3 s at most (the provider client's own limit is 10 s a call): a bound on
    // behaviour, far from both, not a speed target.
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(8),
        "the disconnect waited {:?} for the provider",
        asked.elapsed()
    );
    assert_eq!(status, 200, "{done}");
    assert!(
        done.contains("Your Acme account is no longer connected."),
        "{done}"
    );
    assert_eq!(p.queued_revocations().await, 2);
    let audit =
        p.s.http
            .get(format!("{}/admin/audit?limit=20", p.s.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(audit.contains("provider disconnected"), "{audit}");
    held.abort();
}

/// A browser shared between people: the person who started connecting again has signed out and another signed in.
/// The callback is refused and nothing is stored: neither person's connection changes.
#[tokio::test]
async fn a_connect_finished_by_another_person_signed_in_since_is_refused() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let seeded = p.seed("alice", "a", Some("r"), FAR).await;
    let mut shared = Browser::default();
    p.person(&mut shared).await;
    let state = begin_connect(&p.s, &mut shared, &fake.base).await;
    shared.cookies.retain(|name, _| !name.contains("session"));
    let Step::Page(_, form) = shared
        .get(
            &p.s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "bobs"),
        )
        .await
    else {
        panic!("no login page")
    };
    shared.login(&p.s, &form, "bob", "wonderland").await;
    let (status, html) = page(
        shared
            .get(
                &p.s,
                &format!("/connect/acme/callback?code=c&state={state}"),
            )
            .await,
    );
    assert_eq!(status, 400, "{html}");
    assert!(
        shows(
            &html,
            "invalid_request",
            "the person signed in to this browser is not the one who started connecting; start again"
        ),
        "{html}"
    );
    let store = p.store();
    assert_eq!(
        store.connection("alice", "acme").await.unwrap(),
        Some(seeded)
    );
    assert!(store.connection("bob", "acme").await.unwrap().is_none());
}

/// Queues `token` of `subject` at `provider` for revocation as `hint`, `age` seconds ago, sealed as the server
/// seals it.
async fn queue(p: &Plane, subject: &str, provider: &str, token: &str, hint: &str, age: i64) {
    let field = mcp_authz_authserver::providers::seal::Field::from_hint(hint).unwrap();
    let (key_id, sealed) = p.sealer().seal(subject, provider, field, token);
    let now = mcp_authz_authserver::clock::now_secs();
    sqlx::query(
        "INSERT INTO provider_revocations (refresh_sealed, subject, provider, key_id, queued_at, token_type_hint)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(sealed)
    .bind(subject)
    .bind(provider)
    .bind(key_id)
    .bind(now - age)
    .bind(hint)
    .execute(&sqlx_pool(&p.s).await)
    .await
    .unwrap();
}

/// Acme fails (503) with a long queue of its own ahead of one revocation at Globex: Globex's is told in the same
/// pass, Acme is asked once per pass (its other rows wait for the next), and the failed rows are not told again
/// before their backoff; once due and answered, every row is told, past the hundred one read takes.
#[tokio::test]
async fn a_failing_provider_does_not_hold_up_another_and_waits_out_its_backoff() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let other = FakeProvider::start(NEW_TOKENS).await;
    let other_base = other.base.clone();
    let p = plane_with(At::Endpoints(fake.base.clone()), None, move |c| {
        let mut globex: ProviderConfig = c.providers[0].clone();
        globex.id = "globex".into();
        globex.display_name = "Globex".into();
        globex.revocation_endpoint = Some(format!("{other_base}/revoke"));
        c.providers.push(globex);
    })
    .await;
    *fake.revoke_status.lock().unwrap() = 503;
    // Before the rows exist: the maintenance loop's own pass may take them first, and backs off from its time.
    let started = mcp_authz_authserver::clock::now_secs();
    for i in 0..120 {
        queue(
            &p,
            "alice",
            "acme",
            &format!("acme-{i:03}"),
            "refresh_token",
            1_000 - i,
        )
        .await;
    }
    queue(&p, "bob", "globex", "globex-1", "refresh_token", 0).await;
    p.revoke_queued().await;
    assert_eq!(other.revoked(), [told("globex-1", "refresh_token")]);
    assert_eq!(fake.revoked(), [told("acme-000", "refresh_token")]);
    let rows = p.queue_rows().await;
    assert_eq!(rows.len(), 120);
    assert_eq!(
        rows.iter()
            .filter(|(_, _, attempts, _)| *attempts == 1)
            .count(),
        1,
        "only the row told counts a failed attempt"
    );
    assert!(
        rows.iter()
            .all(|(_, provider, _, next)| provider == "acme" && *next >= started + 10),
        "{rows:?}"
    );
    p.revoke_queued().await;
    assert_eq!(fake.revoked().len(), 1, "not told again before the backoff");
    *fake.revoke_status.lock().unwrap() = 200;
    p.all_due().await;
    p.revoke_queued().await;
    assert_eq!(fake.revoked().len(), 121);
    assert_eq!(p.queued_revocations().await, 0);
}

/// This replica cannot try (a provider it has no config for, during a rollout that adds or renames one; a key it
/// has not read): the revocation waits however old it is. What is given up is what the provider itself kept
/// failing, after thirty tries (about a day of backoff): logged and counted.
#[tokio::test]
async fn only_the_providers_own_failures_give_a_revocation_up() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let pool = sqlx_pool(&p.s).await;
    let two_days = 2 * 86_400;
    queue(
        &p,
        "alice",
        "globex",
        "unknown-provider",
        "refresh_token",
        two_days,
    )
    .await;
    p.revoke_queued().await;
    assert_eq!(p.queued_revocations().await, 1, "waits for its provider");
    sqlx::query("DELETE FROM provider_revocations")
        .execute(&pool)
        .await
        .unwrap();

    *fake.revoke_status.lock().unwrap() = 503;
    queue(&p, "alice", "acme", "failing", "refresh_token", two_days).await;
    sqlx::query("UPDATE provider_revocations SET attempts = 28")
        .execute(&pool)
        .await
        .unwrap();
    p.revoke_queued().await;
    assert_eq!(p.queued_revocations().await, 1, "29 failures: tried again");
    p.all_due().await;
    p.revoke_queued().await;
    assert_eq!(
        p.queued_revocations().await,
        0,
        "given up at the 30th failure"
    );
    assert_eq!(
        fake.revoked(),
        [
            told("failing", "refresh_token"),
            told("failing", "refresh_token")
        ]
    );
    let metrics = p.s.metrics().await;
    assert!(
        metrics.contains(
            "mcp_authz_authserver_provider_revocations_abandoned_total{reason=\"given_up\"} 1"
        ),
        "{metrics}"
    );
}

/// RFC 6749 §5.2 lets a revocation endpoint answer `invalid_client` with a 400 (our client secret wrong, or being
/// rotated): the token is still valid there, so the revocation stays queued and is told again after its backoff.
/// A 400 `unsupported_token_type` (RFC 7009 §2.2.1) ends it, counted.
#[tokio::test]
async fn a_revocation_refused_as_invalid_client_is_retried() {
    let fake = FakeProvider::start(NEW_TOKENS).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    *fake.revoke_status.lock().unwrap() = 400;
    *fake.revoke_body.lock().unwrap() = r#"{"error":"invalid_client"}"#.into();
    queue(&p, "alice", "acme", "stored-refresh", "refresh_token", 0).await;
    p.revoke_queued().await;
    assert_eq!(fake.revoked(), [told("stored-refresh", "refresh_token")]);
    assert_eq!(
        p.queued_revocations().await,
        1,
        "kept: the provider did not take it"
    );
    *fake.revoke_status.lock().unwrap() = 200;
    *fake.revoke_body.lock().unwrap() = String::new();
    p.all_due().await;
    p.revoke_queued().await;
    assert_eq!(fake.revoked().len(), 2);
    assert_eq!(p.queued_revocations().await, 0);

    *fake.revoke_status.lock().unwrap() = 400;
    *fake.revoke_body.lock().unwrap() = r#"{"error":"unsupported_token_type"}"#.into();
    queue(&p, "alice", "acme", "odd-access", "access_token", 0).await;
    p.revoke_queued().await;
    assert_eq!(p.queued_revocations().await, 0);
    let metrics = p.s.metrics().await;
    assert!(
        metrics.contains(
            "mcp_authz_authserver_provider_revocations_abandoned_total{reason=\"unsupported_token_type\"} 1"
        ),
        "{metrics}"
    );
}

/// The provider answers a refresh `invalid_grant` while the person connects again: the new connection is not
/// deleted (nor its tokens revoked); it is served.
#[tokio::test]
async fn an_invalid_grant_answered_during_a_reconnect_leaves_the_new_connection() {
    let answer = Arc::new(std::sync::Mutex::new((
        400,
        r#"{"error":"invalid_grant"}"#.to_owned(),
    )));
    let fake = FakeProvider::start_with(answer, Arc::default(), std::time::Duration::ZERO).await;
    let p = plane(At::Endpoints(fake.base.clone()), None).await;
    let mut alice = Browser::default();
    p.seed("alice", "expired", Some("stored-refresh"), 1).await;
    let person = p.person(&mut alice).await;
    let held = fake.token_gate.clone().lock_owned().await;
    let exchange = p.provider_token(RESOURCE, &person, "revoked-meanwhile");
    let newer = async {
        fake.token_called.notified().await;
        let live_until = mcp_authz_authserver::clock::now_secs() + 600;
        p.seed("alice", "newer-access", Some("newer-refresh"), live_until)
            .await;
        drop(held);
    };
    let ((status, body), ()) = tokio::join!(exchange, newer);
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("newer-access")),
        "{body}"
    );
    assert_eq!(p.stored_rows().await, 1);
    assert_eq!(p.queued_revocations().await, 0);
}
