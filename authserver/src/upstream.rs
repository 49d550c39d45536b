//! Login through an upstream OpenID Connect provider: authorization code + PKCE to the provider, the ID token
//! checked against its JWKS (issuer, audience, expiry, nonce), and the configured claim taken as our subject.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use url::Url;

use crate::config::{UpstreamOidc, is_https_or_loopback};

/// Largest discovery, JWKS or token response we read from the provider.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why an upstream login failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream login is misconfigured: {0}")]
    Config(String),
    #[error("the upstream provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the upstream provider answered badly: {0}")]
    BadResponse(String),
    #[error("the upstream provider refused the login: {0}")]
    Refused(String),
    #[error("the upstream ID token is not acceptable: {0}")]
    BadIdToken(String),
}

impl UpstreamError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            UpstreamError::Config(_) => "upstream_config",
            UpstreamError::Unreachable(_) => "upstream_unreachable",
            UpstreamError::BadResponse(_) => "upstream_bad_response",
            UpstreamError::Refused(_) => "upstream_refused",
            UpstreamError::BadIdToken(_) => "upstream_bad_id_token",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The provider as configured, with its discovery document fetched once.
pub struct Upstream {
    config: UpstreamOidc,
    secret: Option<String>,
    http: reqwest::Client,
    discovery: OnceCell<Discovery>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

/// What the login leg keeps between the redirect and the callback.
pub struct PendingLogin {
    pub verifier: String,
    pub nonce: String,
}

impl PendingLogin {
    pub fn new() -> Self {
        PendingLogin {
            verifier: crate::secrets::random_token(),
            nonce: crate::secrets::random_token(),
        }
    }

    /// Stored in the authorization request as one string.
    pub fn encode(&self) -> String {
        format!("{} {}", self.verifier, self.nonce)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (verifier, nonce) = s.split_once(' ')?;
        Some(PendingLogin {
            verifier: verifier.to_owned(),
            nonce: nonce.to_owned(),
        })
    }
}

impl Default for PendingLogin {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new(config: &UpstreamOidc) -> Result<Self, UpstreamError> {
        let issuer = Url::parse(&config.issuer)
            .map_err(|e| UpstreamError::Config(format!("issuer: {e}")))?;
        if !is_https_or_loopback(&issuer) {
            return Err(UpstreamError::Config(
                "issuer must be https (http only on loopback)".into(),
            ));
        }
        if !config.scopes.iter().any(|s| s == "openid") {
            return Err(UpstreamError::Config("scopes must include openid".into()));
        }
        let secret = match &config.client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        UpstreamError::Config(format!("clientSecretFile {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let http =
            platform_http_client(config.ca_file.as_deref()).map_err(UpstreamError::Config)?;
        Ok(Upstream {
            config: config.clone(),
            secret,
            http,
            discovery: OnceCell::new(),
        })
    }

    async fn get_json(&self, url: &str) -> Result<Value, UpstreamError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        read_json(response).await
    }

    async fn discovery(&self) -> Result<&Discovery, UpstreamError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let d: Discovery = serde_json::from_value(self.get_json(&url).await?)
                    .map_err(|e| UpstreamError::BadResponse(format!("discovery document: {e}")))?;
                if d.issuer != self.config.issuer {
                    return Err(UpstreamError::BadResponse(format!(
                        "discovery issuer {:?} is not the configured {:?}",
                        d.issuer, self.config.issuer
                    )));
                }
                Ok(d)
            })
            .await
    }

    /// Where to send the browser: the provider's authorization endpoint with PKCE, nonce and `state`.
    pub async fn authorization_url(
        &self,
        callback: &str,
        state: &str,
        pending: &PendingLogin,
    ) -> Result<String, UpstreamError> {
        let d = self.discovery().await?;
        let mut url = Url::parse(&d.authorization_endpoint)
            .map_err(|e| UpstreamError::BadResponse(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", callback)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", &pending.nonce)
            .append_pair(
                "code_challenge",
                &URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes())),
            )
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Redeems the provider's code and returns the subject from the checked ID token.
    pub async fn finish(
        &self,
        code: &str,
        callback: &str,
        pending: &PendingLogin,
    ) -> Result<String, UpstreamError> {
        let d = self.discovery().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", callback),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let mut request = self.http.post(&d.token_endpoint);
        match &self.secret {
            Some(secret) => request = request.basic_auth(&self.config.client_id, Some(secret)),
            None => form.push(("client_id", self.config.client_id.as_str())),
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let response = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = read_json(response).await?;
        if !status.is_success() {
            return Err(UpstreamError::Refused(format!(
                "token endpoint answered {status}: {}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error code")
            )));
        }
        let id_token = body
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                UpstreamError::BadResponse("no id_token in the token response".into())
            })?;
        let claims = self.check_id_token(d, id_token, &pending.nonce).await?;
        match claims.get(&self.config.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Ok(s.clone()),
            _ => Err(UpstreamError::BadIdToken(format!(
                "claim {:?} is missing or not a short string",
                self.config.subject_claim
            ))),
        }
    }

    async fn check_id_token(
        &self,
        d: &Discovery,
        token: &str,
        nonce: &str,
    ) -> Result<Value, UpstreamError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| UpstreamError::BadIdToken(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(UpstreamError::BadIdToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let jwks: JwkSet = serde_json::from_value(self.get_json(&d.jwks_uri).await?)
            .map_err(|e| UpstreamError::BadResponse(format!("jwks: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.client_id]);
        validation.leeway = 30;
        let claims = crate::jwt_verify::verify(
            token,
            &jwks,
            header.kid.as_deref(),
            &validation,
            "no key of the provider matches the ID token's kid",
        )
        .map_err(UpstreamError::BadIdToken)?;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(UpstreamError::BadIdToken("nonce does not match".into()));
        }
        Ok(claims)
    }
}

/// The HTTP client for a server the platform configured (an upstream provider, a trusted identity provider): no
/// redirects followed, 5 s to connect, 10 s in all, and `ca_file`'s certificates trusted besides the system's.
pub fn platform_http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("mcp-authz-authserver/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("caFile {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("caFile {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| e.to_string())
}

async fn read_json(response: reqwest::Response) -> Result<Value, UpstreamError> {
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(UpstreamError::BadResponse(format!(
                "response larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| UpstreamError::BadResponse(format!("not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_login_round_trips_and_config_is_checked() {
        let p = PendingLogin::new();
        let back = PendingLogin::decode(&p.encode()).unwrap();
        assert_eq!((back.verifier, back.nonce), (p.verifier, p.nonce));
        assert!(PendingLogin::decode("nospace").is_none());
        let mut c = UpstreamOidc {
            issuer: "http://idp.example.com".into(),
            client_id: "c".into(),
            client_secret_file: None,
            scopes: vec!["openid".into()],
            subject_claim: "sub".into(),
            ca_file: None,
        };
        assert!(matches!(Upstream::new(&c), Err(UpstreamError::Config(_))));
        c.issuer = "https://idp.example.com".into();
        c.scopes = vec!["email".into()];
        assert!(
            Upstream::new(&c)
                .unwrap_err()
                .to_string()
                .contains("openid")
        );
    }
}
