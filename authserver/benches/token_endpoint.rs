//! What issuing and checking tokens costs, through the real router (no sockets) over SQLite in a temp dir:
//! signing alone, `/token` with client_credentials (client assertion verified, jti and grant stored, token signed
//! and recorded), `/token` with a refresh token (rotation), `/introspect` of an access token, and what the rate
//! limits add to a token request.

use std::hint::black_box;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mcp_authz_authserver::config::{
    AuthServerConfig, ClientAuthMethod, ClientConfig, GrantType, RateBucket, RateLimits,
};
use mcp_authz_authserver::keys::{self, KeySet};
use mcp_authz_authserver::rate_limits::{Endpoint, RateLimiter};
use mcp_authz_authserver::server::oauth_router;
use mcp_authz_authserver::state::{AppState, Snapshot};
use mcp_authz_authserver::store::{Grant, SqlStore, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

const ISSUER: &str = "http://127.0.0.1:8080";
const RESOURCE: &str = "https://mcp.example.com/files";
const ADMIN: &str = "bench-admin-token-0123456789";

struct Fixture {
    state: Arc<AppState>,
    client_pem: String,
    client_kid: String,
    _dir: tempfile::TempDir,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (client_pem, client_kid) = keys::generate_es256().unwrap();
    let der: Vec<u8> = {
        use base64::Engine;
        let b64: String = client_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
    )
    .unwrap();
    let (mut jwk, _) =
        keys::public_jwk(aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref()).unwrap();
    jwk["kid"] = json!(client_kid);
    std::fs::write(dir.path().join("admin"), ADMIN).unwrap();
    let yaml = format!(
        "issuer: {ISSUER}\nstorage:\n  sqlite:\n    path: {db}\nsigning:\n  keysDir: {keys}\n  selfManaged: true\n\
         scopes:\n  - value: files:read\n    description: Read\nresources:\n  - resource: {RESOURCE}\n    displayName: Files\n    \
         scopes: [files:read]\nlogin:\n  static:\n    users:\n      - username: alice\n        passwordHash: \"{alice}\"\nadmin:\n  tokenFile: {admin}\n",
        db = dir.path().join("as.db").display(),
        keys = dir.path().join("keys").display(),
        admin = dir.path().join("admin").display(),
        // The refreshed grant's subject must still be a user, or the refresh revokes it.
        alice = mcp_authz_authserver::passwords::hash_password("bench").unwrap(),
    );
    let mut config = AuthServerConfig::parse(&yaml, std::path::Path::new("b.yaml")).unwrap();
    config.clients.push(ClientConfig {
        client_secret_file: None,
        client_id: "svc".into(),
        client_name: "Service".into(),
        redirect_uris: vec![],
        token_endpoint_auth_method: ClientAuthMethod::PrivateKeyJwt,
        jwks: Some(json!({ "keys": [jwk] })),
        grant_types: vec![GrantType::ClientCredentials, GrantType::RefreshToken],
        scopes: vec!["files:read".into()],
        introspection: false,
    });
    config.validate().unwrap();
    mcp_authz_authserver::self_managed::rotate_self_managed(
        &config.signing.keys_dir,
        now() as u64,
        86_400,
        300,
    )
    .unwrap();
    let key_set = KeySet::load(&config.signing.keys_dir, now() as u64).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        rt.block_on(SqlStore::open_sqlite(&dir.path().join("as.db")))
            .unwrap(),
    );
    let snapshot = Snapshot::build(config, None).unwrap();
    let state = Arc::new(AppState::new(snapshot, key_set, store, None));
    Fixture {
        state,
        client_pem,
        client_kid,
        _dir: dir,
    }
}

fn now() -> i64 {
    mcp_authz_authserver::clock::now_secs()
}

fn assertion(f: &Fixture) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(f.client_kid.clone());
    let claims = json!({
        "iss": "svc", "sub": "svc", "aud": format!("{ISSUER}/token"), "exp": now() + 60,
        "jti": mcp_authz_authserver::secrets::random_token(),
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(f.client_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn form(path: &str, body: String, bearer: Option<&str>) -> Request<Body> {
    let mut r = Request::post(path).header("content-type", "application/x-www-form-urlencoded");
    if let Some(b) = bearer {
        r = r.header("authorization", format!("Bearer {b}"));
    }
    r.body(Body::from(body)).unwrap()
}

async fn call(state: &Arc<AppState>, request: Request<Body>) -> Value {
    let response = oauth_router(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn client_credentials_body(f: &Fixture) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", &assertion(f))
        .append_pair("resource", RESOURCE)
        .finish()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture(&rt);

    c.bench_function("sign_access_token", |b| {
        let keys = f.state.keys();
        let claims = json!({"iss": ISSUER, "sub": "alice", "aud": RESOURCE, "scope": "files:read", "exp": now() + 300});
        b.iter(|| black_box(keys.sign("at+jwt", &claims).unwrap()))
    });

    c.bench_function("token_client_credentials_private_key_jwt", |b| {
        b.iter_batched(
            || client_credentials_body(&f),
            |body| rt.block_on(call(&f.state, form("/token", body, None))),
            BatchSize::SmallInput,
        )
    });

    // A grant with a live refresh token; each iteration rotates it once.
    let grant = Grant {
        id: "bench-grant".into(),
        subject: "alice".into(),
        client_id: "svc".into(),
        resource: RESOURCE.into(),
        scopes: vec!["files:read".into()],
        grant_type: "authorization_code".into(),
        created_at: now(),
        expires_at: now() + 86_400,
        revoked_at: None,
        revoked_reason: None,
        client_fingerprint: String::new(),
        client_auth_method: "private_key_jwt".into(),
        holder: String::new(),
    };
    rt.block_on(f.state.store.put_grant(&grant)).unwrap();
    let first = mcp_authz_authserver::secrets::random_token();
    rt.block_on(f.state.store.put_refresh_token(
        &mcp_authz_authserver::secrets::hash(&first),
        &grant.id,
        grant.expires_at,
    ))
    .unwrap();
    // Each use needs the token the previous use returned, so the body is built right before each timed call
    // (iter_batched would build a whole batch from one stale token).
    let mut refresh = first;
    c.bench_function("token_refresh_rotation", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", &refresh)
                    .append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair("client_assertion", &assertion(&f))
                    .finish();
                let started = std::time::Instant::now();
                let answer = rt.block_on(call(&f.state, form("/token", body, None)));
                total += started.elapsed();
                refresh = answer["refresh_token"].as_str().unwrap().to_owned();
            }
            total
        })
    });

    let token = rt.block_on(call(
        &f.state,
        form("/token", client_credentials_body(&f), None),
    ))["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = format!("token={token}");
    c.bench_function("introspect_access_token", |b| {
        b.iter(|| {
            let answer = rt.block_on(call(
                &f.state,
                form("/introspect", body.clone(), Some(ADMIN)),
            ));
            assert_eq!(answer["active"], true);
        })
    });
}

/// A token request's rate-limit work (its address's bucket, its client's check, the spend after it issued),
/// in tables already holding 10,000 keys each; rates far above any a config may set (the benchmark calls faster
/// than a million times a second), so nothing is refused.
fn rate_limits(c: &mut Criterion) {
    let huge = RateBucket {
        requests_per_second: 1e12,
        burst: u32::MAX,
    };
    let limits = RateLimits {
        token_per_client: huge,
        token_per_address: huge,
        ..RateLimits::default()
    };
    let limiter = RateLimiter::new(&limits).unwrap();
    let now = std::time::Instant::now();
    for i in 0..10_000u32 {
        let address = std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        limiter
            .check_address(Endpoint::Token, address, now)
            .unwrap();
        limiter.spend_client(Endpoint::Token, &format!("client-{i}"), now);
    }
    let address: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let client = "https://agent.example.com/oauth/client-metadata.json";
    c.bench_function("rate_limits_token_request", |b| {
        b.iter(|| {
            let now = std::time::Instant::now();
            black_box(limiter.check_address(Endpoint::Token, black_box(address), now)).unwrap();
            black_box(limiter.check_client(Endpoint::Token, black_box(client), now)).unwrap();
            limiter.spend_client(Endpoint::Token, client, now);
        })
    });
}

criterion_group!(name = token_endpoint; config = Criterion::default().sample_size(50); targets = benches, rate_limits);
criterion_main!(token_endpoint);
