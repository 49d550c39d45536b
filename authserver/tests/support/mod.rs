//! Starts a real authorization server on loopback (SQLite in a temp dir, self-managed keys) and drives it like a
//! browser and an OAuth client would.
#![allow(dead_code)]

pub mod federation;
pub mod providers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcp_authz_authserver::config::*;
use mcp_authz_authserver::server::{self, Running};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

pub const RESOURCE: &str = "https://mcp.example.com/files";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const OTHER_RESOURCE: &str = "https://mcp.example.com/mail";
pub const PUBLIC_CLIENT: &str = "cli";
pub const REDIRECT: &str = "http://127.0.0.1/callback";
pub const WEB_CLIENT: &str = "webapp";
pub const WEB_REDIRECT: &str = "https://app.example.com/cb";
pub const SERVICE_CLIENT: &str = "service";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// The password hash of `alice` / `wonderland`, computed once per test binary (Argon2 is slow on purpose).
pub fn alice_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| mcp_authz_authserver::passwords::hash_password("wonderland").unwrap())
        .clone()
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A free loopback port (bound then released: the issuer must name the port before the server binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A service client's key: (PEM private key, public JWK Set).
pub fn service_key() -> (String, Value) {
    static KEY: OnceLock<(String, Value)> = OnceLock::new();
    KEY.get_or_init(|| {
        let (pem, kid) = mcp_authz_authserver::keys::generate_es256().unwrap();
        let der = pem_der(&pem);
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
        )
        .unwrap();
        use aws_lc_rs::signature::KeyPair;
        let (mut jwk, _) =
            mcp_authz_authserver::keys::public_jwk(pair.public_key().as_ref()).unwrap();
        jwk["kid"] = kid.into();
        jwk["alg"] = "ES256".into();
        (pem, serde_json::json!({ "keys": [jwk] }))
    })
    .clone()
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// The config every test starts from.
pub fn base_config(dir: &std::path::Path, port: u16) -> AuthServerConfig {
    let yaml = format!(
        r#"
issuer: http://127.0.0.1:{port}
listen: 127.0.0.1:{port}
adminListen: 127.0.0.1:0
storage:
  sqlite:
    path: {db}
signing:
  keysDir: {keys}
  selfManaged: true
scopes:
  - value: files:read
    description: Read your files
  - value: files:write
    description: Change your files
  - value: files:delete
    description: Delete your files
    sensitive: true
    maxLifetimeSecs: 60
  - value: mail:read
    description: Read your mail
resources:
  - resource: {RESOURCE}
    displayName: Files
    scopes: [files:read, files:write, files:delete]
  - resource: {OTHER_RESOURCE}
    displayName: Mail
    scopes: [mail:read]
login:
  static:
    users:
      - username: alice
        passwordHash: "{hash}"
clients:
  - clientId: {PUBLIC_CLIENT}
    clientName: The <b>CLI</b>
    redirectUris: ["{REDIRECT}"]
  - clientId: {WEB_CLIENT}
    clientName: Web App
    redirectUris: ["{WEB_REDIRECT}"]
admin:
  tokenFile: {admin}
"#,
        db = dir.join("as.db").display(),
        keys = dir.join("keys").display(),
        hash = alice_hash(),
        admin = dir.join("admin-token").display(),
    );
    std::fs::write(dir.join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut config = AuthServerConfig::parse(&yaml, std::path::Path::new("c.yaml")).unwrap();
    let (_, jwks) = service_key();
    config.clients.push(ClientConfig {
        client_secret_file: None,
        client_id: SERVICE_CLIENT.into(),
        client_name: "Service".into(),
        redirect_uris: vec![],
        token_endpoint_auth_method: ClientAuthMethod::PrivateKeyJwt,
        jwks: Some(jwks),
        grant_types: vec![GrantType::ClientCredentials],
        scopes: vec!["files:read".into(), "mail:read".into()],
        introspection: true,
    });
    config.validate().unwrap();
    config
}

/// A running server, its directory and an HTTP client that does not follow redirects.
pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub config_path: PathBuf,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut AuthServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = base_config(dir.path(), port);
        edit(&mut config);
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: AuthServerConfig) -> Self {
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let base = config.issuer.clone();
        let running = server::start(config, Some(config_path.clone()))
            .await
            .unwrap();
        let admin = format!("http://{}", running.admin_addr);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        TestServer {
            running: Some(running),
            dir,
            base,
            admin,
            http,
            config_path,
        }
    }

    /// Stops the server and starts a new one on the same directory (same database, same keys).
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        let config = AuthServerConfig::load(&self.config_path).unwrap();
        self.running = Some(
            server::start(config, Some(self.config_path.clone()))
                .await
                .unwrap(),
        );
        self.admin = format!("http://{}", self.running.as_ref().unwrap().admin_addr);
    }

    /// The authorization server metadata document (RFC 8414).
    pub async fn metadata(&self) -> Value {
        self.http
            .get(self.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The admin port's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POST /token and the JSON answer.
    pub async fn token(&self, form: &[(&str, &str)]) -> (u16, Value, HeaderMap) {
        let r = self.post_form("/token", form).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.json().await.unwrap_or(Value::Null), headers)
    }

    /// A refresh as a public client (`client_id` only), with any `extra` fields.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client_id: &str,
        extra: &[(&str, &str)],
    ) -> (u16, Value, HeaderMap) {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ];
        form.extend_from_slice(extra);
        self.token(&form).await
    }

    /// A code exchange as a public client with the tests' PKCE verifier and [`REDIRECT`].
    pub async fn exchange(&self, code: &str, client_id: &str) -> (u16, Value, HeaderMap) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", client_id),
        ])
        .await
    }

    /// A client_credentials grant for [`RESOURCE`] with a client assertion (and any `extra` fields).
    pub async fn client_credentials(
        &self,
        assertion: &str,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("resource", RESOURCE),
        ];
        form.extend_from_slice(extra);
        let (status, body, _) = self.token(&form).await;
        (status, body)
    }

    /// Introspects `token` as the client of `assertion`.
    pub async fn introspect_as(&self, assertion: &str, token: &str) -> (u16, Value) {
        let form = [
            ("token", token),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ];
        let r = self.post_form("/introspect", &form).await;
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn introspect(&self, token: &str) -> Value {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        self.http
            .post(self.url("/introspect"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Runs the browser part for alice and returns the code.
    pub async fn code_for(
        &self,
        browser: &mut Browser,
        client: &str,
        redirect: &str,
        scope: &str,
    ) -> String {
        let page = browser
            .get(self, &authorize_query(client, redirect, scope, "xyz"))
            .await;
        let page = match page {
            Step::Page(_, html) if html.contains("name=\"password\"") => {
                browser.login(self, &html, "alice", "wonderland").await
            }
            other => other,
        };
        let location = match page {
            Step::Page(_, html) => match browser.consent(self, &html, "approve").await {
                Step::Redirect(l) => l,
                other => panic!("consent did not redirect: {other:?}"),
            },
            Step::Redirect(l) => l,
        };
        let params = query(&location);
        assert_eq!(params.get("state").map(String::as_str), Some("xyz"));
        assert_eq!(params.get("iss"), Some(&self.base));
        params
            .get("code")
            .cloned()
            .unwrap_or_else(|| panic!("no code in {location}"))
    }

    /// Code and token exchange for the public client; returns the token response.
    pub async fn tokens_for(&self, browser: &mut Browser, scope: &str) -> Value {
        let code = self.code_for(browser, PUBLIC_CLIENT, REDIRECT, scope).await;
        let (status, body, _) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", PUBLIC_CLIENT),
                ("resource", RESOURCE),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.running.take());
    }
}

/// `/authorize?...` for the files resource with a valid PKCE challenge.
pub fn authorize_query(client: &str, redirect: &str, scope: &str, state: &str) -> String {
    let mut pairs = vec![
        ("response_type", "code".to_owned()),
        ("client_id", client.to_owned()),
        ("redirect_uri", redirect.to_owned()),
        ("code_challenge", challenge(VERIFIER)),
        ("code_challenge_method", "S256".to_owned()),
        ("resource", RESOURCE.to_owned()),
        ("state", state.to_owned()),
    ];
    if !scope.is_empty() {
        pairs.push(("scope", scope.to_owned()));
    }
    format!(
        "/authorize?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    )
}

/// Query parameters of a URL.
pub fn query(location: &str) -> HashMap<String, String> {
    Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// A hidden input's value in a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[derive(Debug)]
pub enum Step {
    Page(u16, String),
    Redirect(String),
}

/// A cookie-keeping browser without JavaScript.
#[derive(Default)]
pub struct Browser {
    pub cookies: HashMap<String, String>,
    /// Sent as `X-Forwarded-For`: the address the browser stands for behind a trusted proxy.
    pub forwarded_for: Option<String>,
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn forwarded(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(from) = &self.forwarded_for {
            headers.insert("x-forwarded-for", from.parse().unwrap());
        }
        headers
    }

    async fn absorb(&mut self, r: reqwest::Response) -> Step {
        for v in r.headers().get_all(SET_COOKIE) {
            let first = v.to_str().unwrap().split(';').next().unwrap();
            let (k, val) = first.split_once('=').unwrap();
            self.cookies.insert(k.to_owned(), val.to_owned());
        }
        if let Some(l) = r.headers().get(LOCATION) {
            return Step::Redirect(l.to_str().unwrap().to_owned());
        }
        let status = r.status().as_u16();
        Step::Page(status, r.text().await.unwrap())
    }

    pub async fn get(&mut self, s: &TestServer, path: &str) -> Step {
        let r = s
            .http
            .get(s.url(path))
            .header("cookie", self.cookie_header())
            .headers(self.forwarded())
            .send()
            .await
            .unwrap();
        self.absorb(r).await
    }

    pub async fn post(&mut self, s: &TestServer, path: &str, form: &[(&str, &str)]) -> Step {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = s
            .http
            .post(s.url(path))
            .header("cookie", self.cookie_header())
            .headers(self.forwarded())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.absorb(r).await
    }

    pub async fn login(
        &mut self,
        s: &TestServer,
        login_page: &str,
        user: &str,
        password: &str,
    ) -> Step {
        let (id, csrf) = (hidden(login_page, "request_id"), hidden(login_page, "csrf"));
        self.post(
            s,
            "/login",
            &[
                ("request_id", &id),
                ("csrf", &csrf),
                ("username", user),
                ("password", password),
            ],
        )
        .await
    }

    pub async fn consent(&mut self, s: &TestServer, consent_page: &str, decision: &str) -> Step {
        let (id, csrf) = (
            hidden(consent_page, "request_id"),
            hidden(consent_page, "csrf"),
        );
        self.post(
            s,
            "/consent",
            &[("request_id", &id), ("csrf", &csrf), ("decision", decision)],
        )
        .await
    }
}

/// The claims of a JWT, after checking its signature against the server's published JWKS.
pub async fn verify_with_jwks(s: &TestServer, token: &str) -> (jsonwebtoken::Header, Value) {
    verify_for_audiences(s, token, &[RESOURCE, OTHER_RESOURCE]).await
}

/// The same, for a token whose `aud` must be one of `audiences`.
pub async fn verify_for_audiences(
    s: &TestServer,
    token: &str,
    audiences: &[&str],
) -> (jsonwebtoken::Header, Value) {
    let jwks: jsonwebtoken::jwk::JwkSet = s
        .http
        .get(s.url("/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("signing key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(audiences);
    validation.set_issuer(&[&s.base]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    (data.header, data.claims)
}

/// A client assertion for the service client, with overridable claims and algorithm.
pub fn assertion(s: &TestServer, edit: impl FnOnce(&mut Value)) -> String {
    let (pem, jwks) = service_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT, "aud": s.url("/token"),
        "exp": now + 60, "iat": now, "jti": mcp_authz_authserver::secrets::random_token(),
    });
    edit(&mut claims);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Storage on a fresh PostgreSQL database `name`, its URL in a file (kept while the returned file lives).
pub async fn postgres_storage(
    name: &str,
    max_connections: u32,
) -> (tempfile::NamedTempFile, StorageConfig) {
    let url = pg_database(name).await;
    let url_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(url_file.path(), &url).unwrap();
    let storage = StorageConfig {
        sqlite: None,
        postgres: Some(PostgresStorage {
            url_file: Some(url_file.path().to_path_buf()),
            url_env: None,
            max_connections,
        }),
    };
    (url_file, storage)
}

/// A fresh, empty PostgreSQL database on the test server (tests/setup/20-postgres.sh).
pub async fn pg_database(name: &str) -> String {
    let admin = std::env::var("MCP_AUTHZ_TEST_PG_URL").expect(
        "MCP_AUTHZ_TEST_PG_URL is not set: source tests/setup/20-postgres.sh (tests/run-all does)",
    );
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .expect("the test PostgreSQL server answers");
    let db = format!("t_{name}_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{db}"));
    url.to_string()
}

/// A resource server's assertion for `resource`, signed with the key derived from `root`.
pub fn resource_server_assertion(
    s: &TestServer,
    root: &mcp_authz_authserver::resource_servers::Root,
    resource: &str,
    jti: &str,
) -> String {
    held_resource_server_assertion(s, root, resource, "", jti)
}

/// The same, with the key of the URL's `holder`.
pub fn held_resource_server_assertion(
    s: &TestServer,
    root: &mcp_authz_authserver::resource_servers::Root,
    resource: &str,
    holder: &str,
    jti: &str,
) -> String {
    let id = mcp_authz_authserver::resource_servers::client_id(resource);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &serde_json::json!({"iss": id, "sub": id, "aud": s.base, "exp": now + 60, "jti": jti}),
        &jsonwebtoken::EncodingKey::from_ed_pem(
            root.private_key_pem_for(resource, holder).as_bytes(),
        )
        .unwrap(),
    )
    .unwrap()
}

/// An OAuth error body's `error` and `error_description`.
pub fn error_of(body: &Value) -> (&str, &str) {
    (
        body["error"].as_str().unwrap_or_default(),
        body["error_description"].as_str().unwrap_or_default(),
    )
}

/// The `mcp-authz-server` binary on `base_config`, its stdout where the caller says, its stderr discarded; waits
/// until it answers. Returns its state directory, the child (killing it is the caller's) and its base URL.
pub async fn start_binary(
    stdout: std::process::Stdio,
) -> (tempfile::TempDir, std::process::Child, String) {
    start_binary_with_env(stdout, &[]).await
}

/// `start_binary` with these environment variables set.
pub async fn start_binary_with_env(
    stdout: std::process::Stdio,
    env: &[(&str, &str)],
) -> (tempfile::TempDir, std::process::Child, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = base_config(dir.path(), port);
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-authz-server"))
        .arg("--config")
        .arg(&config_path)
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{base}/jwks")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (dir, child, base)
}

/// The key and header `SERVICE_CLIENT` signs its assertions with.
pub fn service_signer() -> (jsonwebtoken::EncodingKey, jsonwebtoken::Header) {
    let (pem, jwks) = service_key();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_owned);
    (key, header)
}
