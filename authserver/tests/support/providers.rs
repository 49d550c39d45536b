//! A server with one third-party provider, Acme, that the files service receives tokens of: found by discovery
//! at a real provider (npm `oidc-provider`), or at explicit endpoints of a provider this test plays (token and
//! revocation endpoints answering what the test sets, recording what they were told).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mcp_authz_authserver::config::{ProviderConfig, ResourceServers, StaticUser};
use mcp_authz_authserver::providers::seal::{Field, Sealer};
use mcp_authz_authserver::resource_servers::Root;
use mcp_authz_authserver::store::{ProviderConnection, Store};
use serde_json::Value;

use super::federation::{NodeProvider, start_node_provider};
use super::*;

pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const ACME: &str = "urn:mcp-authz:provider:acme";
pub const PROVIDER_CLIENT: &str = "mcp-authz-connect";
pub const PROVIDER_SECRET: &str = "third-party-secret-0123456789abcdef";

pub struct Plane {
    pub s: TestServer,
    pub root: Root,
    pub keys_file: PathBuf,
    pub provider: Option<NodeProvider>,
}

impl Plane {
    pub fn store(&self) -> Arc<dyn Store> {
        self.s.running.as_ref().unwrap().state.store.clone()
    }

    pub fn sealer(&self) -> Sealer {
        Sealer::load(&self.keys_file).unwrap()
    }

    /// Token exchange as the resource server of `service` for `person`'s token to `audience`.
    pub async fn provider_token(&self, service: &str, person: &str, jti: &str) -> (u16, Value) {
        let assertion = resource_server_assertion(&self.s, &self.root, service, jti);
        let (status, body, headers) = self
            .s
            .token(&[
                ("grant_type", GRANT),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("subject_token", person),
                ("subject_token_type", ACCESS_TOKEN),
                ("resource", ACME),
            ])
            .await;
        assert_eq!(headers["cache-control"], "no-store");
        (status, body)
    }

    pub async fn stored_rows(&self) -> i64 {
        let pool = sqlx_pool(&self.s).await;
        sqlx::query_scalar("SELECT COUNT(*) FROM provider_connections")
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

/// A second handle on the test server's SQLite file, to read rows as they are at rest.
pub async fn sqlx_pool(s: &TestServer) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&format!(
        "sqlite://{}",
        s.dir.path().join("as.db").display()
    ))
    .await
    .unwrap()
}

/// Where the provider is: a real one on `port` (by discovery), or explicit endpoints of a fake.
pub enum At {
    Discovery(u16),
    Endpoints(String),
}

/// The files service receives Acme tokens; bob is a second person. `at` says where Acme is.
pub async fn plane(at: At, node: Option<(u16, &str, &str)>) -> Plane {
    plane_with(at, node, |_| {}).await
}

pub async fn plane_with(
    at: At,
    node: Option<(u16, &str, &str)>,
    edit: impl FnOnce(&mut mcp_authz_authserver::config::AuthServerConfig),
) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::generate().unwrap();
    let root_file = dir.path().join("resource-server-root");
    std::fs::write(&root_file, root.to_text()).unwrap();
    let secret_file = dir.path().join("acme-secret");
    std::fs::write(&secret_file, format!("{PROVIDER_SECRET}\n")).unwrap();
    let keys_file = dir.path().join("keys/provider-token-keys");
    let mut config = base_config(dir.path(), free_port());
    config.resource_servers = Some(ResourceServers { root_file });
    let (issuer, authorization_endpoint, token_endpoint) = match &at {
        At::Discovery(port) => (Some(format!("http://127.0.0.1:{port}")), None, None),
        At::Endpoints(base) => (
            None,
            Some(format!("{base}/auth")),
            Some(format!("{base}/token")),
        ),
    };
    let revocation_endpoint = match &at {
        At::Discovery(_) => None,
        At::Endpoints(base) => Some(format!("{base}/revoke")),
    };
    config.providers = vec![ProviderConfig {
        id: "acme".into(),
        display_name: "Acme".into(),
        issuer,
        authorization_endpoint,
        token_endpoint,
        revocation_endpoint,
        client_id: PROVIDER_CLIENT.into(),
        client_secret_file: secret_file,
        scopes: vec!["openid".into(), "api:read".into()],
        ca_file: None,
    }];
    config.provider_token_keys_file = Some(keys_file.clone());
    config.resources[0].providers = vec!["acme".into()];
    if let Some(users) = config.login.static_users.as_mut() {
        users.users.push(StaticUser {
            username: "bob".into(),
            password_hash: alice_hash(),
            subject: None,
        });
    }
    edit(&mut config);
    config.validate().unwrap();
    let callback = format!("{}/connect/acme/callback", config.issuer);
    let provider = node.map(|(port, ttl, rotate)| {
        start_node_provider("oidc-third-party.mjs", port, &[&callback, ttl, rotate])
    });
    Plane {
        s: TestServer::start_in(dir, config).await,
        root,
        keys_file,
        provider,
    }
}

/// A provider's token endpoint that answers whatever the test sets.
pub async fn fake_token_endpoint(answer: Arc<Mutex<(u16, String)>>) -> String {
    counted_token_endpoint(answer, Arc::default(), std::time::Duration::ZERO).await
}

/// The same, counting its calls and taking `delay` over each.
pub async fn counted_token_endpoint(
    answer: Arc<Mutex<(u16, String)>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    delay: std::time::Duration,
) -> String {
    FakeProvider::start_with(answer, calls, delay).await.base
}

/// A provider this test plays: its token endpoint (`/token`) answers `answer`, its revocation endpoint
/// (`/revoke`, RFC 7009) answers `revoke_status` with `revoke_body` and records each `(token, token_type_hint)` it
/// is told.
pub struct FakeProvider {
    pub base: String,
    pub answer: Arc<Mutex<(u16, String)>>,
    pub revoke_status: Arc<Mutex<u16>>,
    pub revoke_body: Arc<Mutex<String>>,
    pub revoked: Arc<Mutex<Vec<(String, String)>>>,
    /// Signalled as each call reaches the token endpoint, before it answers.
    pub token_called: Arc<tokio::sync::Notify>,
    /// Held by a test, keeps the token endpoint from answering until released: what the test does meanwhile
    /// happens while the server waits on the provider, however slow the machine.
    pub token_gate: Arc<tokio::sync::Mutex<()>>,
}

impl FakeProvider {
    pub async fn start(answer: &str) -> Self {
        Self::start_with(
            Arc::new(Mutex::new((200, answer.to_owned()))),
            Arc::default(),
            std::time::Duration::ZERO,
        )
        .await
    }

    pub async fn start_with(
        answer: Arc<Mutex<(u16, String)>>,
        calls: Arc<std::sync::atomic::AtomicUsize>,
        delay: std::time::Duration,
    ) -> Self {
        use axum::routing::post;
        let revoke_status = Arc::new(Mutex::new(200));
        let revoke_body: Arc<Mutex<String>> = Arc::default();
        let revoked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let token_called: Arc<tokio::sync::Notify> = Arc::default();
        let token_gate: Arc<tokio::sync::Mutex<()>> = Arc::default();
        let token_answer = answer.clone();
        let (status, body_of_revoke, told) =
            (revoke_status.clone(), revoke_body.clone(), revoked.clone());
        let (called, gate) = (token_called.clone(), token_gate.clone());
        let app = axum::Router::new()
            .route(
                "/token",
                post(move || {
                    let (answer, calls) = (token_answer.clone(), calls.clone());
                    let (called, gate) = (called.clone(), gate.clone());
                    async move {
                        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        called.notify_one();
                        drop(gate.lock().await);
                        tokio::time::sleep(delay).await;
                        let (status, body) = answer.lock().unwrap().clone();
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            [("content-type", "application/json")],
                            body,
                        )
                    }
                }),
            )
            .route(
                "/revoke",
                post(move |body: String| {
                    let (status, answer, told) =
                        (status.clone(), body_of_revoke.clone(), told.clone());
                    async move {
                        let form: std::collections::HashMap<String, String> =
                            url::form_urlencoded::parse(body.as_bytes())
                                .into_owned()
                                .collect();
                        told.lock().unwrap().push((
                            form.get("token").cloned().unwrap_or_default(),
                            form.get("token_type_hint").cloned().unwrap_or_default(),
                        ));
                        let status = axum::http::StatusCode::from_u16(*status.lock().unwrap());
                        let answer = answer.lock().unwrap().clone();
                        (
                            status.unwrap(),
                            [("content-type", "application/json")],
                            answer,
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeProvider {
            base,
            answer,
            revoke_status,
            revoke_body,
            revoked,
            token_called,
            token_gate,
        }
    }

    /// What the revocation endpoint was told so far, in order.
    pub fn revoked(&self) -> Vec<(String, String)> {
        self.revoked.lock().unwrap().clone()
    }
}

/// The pair the revocation endpoint records for `token` revoked as `hint`.
pub fn told(token: &str, hint: &str) -> (String, String) {
    (token.to_owned(), hint.to_owned())
}

impl Plane {
    /// Stores a connection of `subject` at Acme holding `access` (live until `access_expires_at`) and `refresh`,
    /// sealed as the server seals them.
    pub async fn seed(
        &self,
        subject: &str,
        access: &str,
        refresh: Option<&str>,
        access_expires_at: i64,
    ) -> ProviderConnection {
        self.seed_at(subject, "acme", access, refresh, access_expires_at)
            .await
    }

    /// The same at `provider`.
    pub async fn seed_at(
        &self,
        subject: &str,
        provider: &str,
        access: &str,
        refresh: Option<&str>,
        access_expires_at: i64,
    ) -> ProviderConnection {
        let sealer = self.sealer();
        let (key_id, access_sealed) = sealer.seal(subject, provider, Field::Access, access);
        let connection = ProviderConnection {
            subject: subject.into(),
            provider: provider.into(),
            key_id,
            refresh_sealed: refresh.map(|r| sealer.seal(subject, provider, Field::Refresh, r).1),
            access_sealed,
            access_expires_at,
            scopes: String::new(),
            created_at: 0,
            updated_at: 0,
        };
        self.store().put_connection(&connection).await.unwrap();
        connection
    }

    /// Rows waiting in the revocation queue.
    pub async fn queued_revocations(&self) -> i64 {
        let pool = sqlx_pool(&self.s).await;
        sqlx::query_scalar("SELECT COUNT(*) FROM provider_revocations")
            .fetch_one(&pool)
            .await
            .unwrap()
    }

    /// The queue's rows: (sealed, provider, failed attempts, next attempt at), sorted.
    pub async fn queue_rows(&self) -> Vec<(String, String, i64, i64)> {
        let pool = sqlx_pool(&self.s).await;
        let mut rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT refresh_sealed, provider, attempts, next_attempt_at FROM provider_revocations",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.sort();
        rows
    }

    /// Makes every queued revocation due now, as if its backoff had passed.
    pub async fn all_due(&self) {
        let pool = sqlx_pool(&self.s).await;
        sqlx::query("UPDATE provider_revocations SET next_attempt_at = 0")
            .execute(&pool)
            .await
            .unwrap();
    }

    /// Runs the revocation queue once, as the maintenance loop does.
    pub async fn revoke_queued(&self) {
        mcp_authz_authserver::providers::revoke_queued(&self.s.running.as_ref().unwrap().state)
            .await;
    }

    /// A person's access token for the files service (signed in and consented in `b`).
    pub async fn person(&self, b: &mut Browser) -> String {
        self.s.tokens_for(b, "files:read").await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A page the server answered (a redirect is a failure here).
pub fn page(step: Step) -> (u16, String) {
    match step {
        Step::Page(status, html) => (status, html),
        Step::Redirect(to) => panic!("redirected to {to}"),
    }
}

/// Whether an error page shows exactly `error` and `description`.
pub fn shows(html: &str, error: &str, description: &str) -> bool {
    html.contains(&format!("data-error=\"{error}\""))
        && html.contains(&format!("<p id=\"error_description\">{description}</p>"))
}

/// Starts connecting Acme in `b`'s browser; the `state` sent to the provider at `provider`.
pub async fn begin_connect(s: &TestServer, b: &mut Browser, provider: &str) -> String {
    begin_connect_to(s, b, "acme", provider).await
}

/// Starts connecting provider `id` (at `provider`) in `b`'s browser; the `state` sent to it.
pub async fn begin_connect_to(s: &TestServer, b: &mut Browser, id: &str, provider: &str) -> String {
    match b.get(s, &format!("/connect/{id}")).await {
        Step::Redirect(to) => {
            assert!(to.starts_with(&format!("{provider}/auth?")), "{to}");
            let q = query(&to);
            assert_eq!(
                (
                    q["response_type"].as_str(),
                    q["code_challenge_method"].as_str(),
                    q["client_id"].as_str()
                ),
                ("code", "S256", PROVIDER_CLIENT)
            );
            assert_eq!(
                q["redirect_uri"],
                format!("{}/connect/{id}/callback", s.base)
            );
            q["state"].clone()
        }
        other => panic!("no redirect to the provider: {other:?}"),
    }
}
