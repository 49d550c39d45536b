//! This server as a confidential OAuth client of one third-party provider: where to send the person (code flow
//! with PKCE S256), and the provider's token endpoint for the code, for refreshes and for revocation.
//!
//! Every answer the provider gives is read by [`read_token_answer`], a pure function: a token, a revocation of
//! the connection (`invalid_grant`), or a refusal or garbage named without repeating a byte of the body (it may
//! hold tokens).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::clients::shorten;
use crate::config::ProviderConfig;

/// Largest answer read from a provider.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A provider access token is believed to live this long when the provider does not say (RFC 6749 makes
/// `expires_in` only recommended); the sidecar never keeps it longer.
pub const UNSTATED_LIFETIME_SECS: u64 = 3600;

/// Why the provider gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider is misconfigured: {0}")]
    Config(String),
    #[error("the provider could not be reached")]
    Unreachable,
    #[error("the provider answered with something that is not a usable token response: {0}")]
    Garbage(&'static str),
    /// `invalid_grant` at the token endpoint: the refresh token (or code) is no longer good there.
    #[error("the provider no longer accepts the grant")]
    Revoked,
    #[error("the provider refused with {0}")]
    Refused(String),
    /// As many calls to the provider as one server makes at once are in progress (see [`MAX_CALLS`]).
    #[error("too many calls to the provider are in progress")]
    Busy,
}

impl ProviderError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProviderError::Config(_) => "provider_config",
            ProviderError::Unreachable => "provider_unreachable",
            ProviderError::Garbage(_) => "provider_garbage",
            ProviderError::Revoked => "provider_revoked",
            ProviderError::Refused(_) => "provider_refused",
            ProviderError::Busy => "provider_busy",
        }
    }
}

/// What the provider's token endpoint gave. Its `Debug` never shows the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderTokens {
    pub access_token: String,
    /// Always `Bearer` (the only kind a header can carry for an MCP server).
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
    /// The scopes granted, when the provider says.
    pub scope: Option<String>,
}

impl std::fmt::Debug for ProviderTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderTokens")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A token is visible ASCII, and short enough to be a header value.
fn token_text(token: &str) -> bool {
    (1..=8192).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads one answer of the provider's token endpoint (`status`, body).
pub fn read_token_answer(status: u16, body: &[u8]) -> Result<ProviderTokens, ProviderError> {
    if !(200..300).contains(&status) {
        #[derive(Deserialize)]
        struct Refusal {
            error: String,
        }
        return match serde_json::from_slice::<Refusal>(body) {
            Ok(r) if r.error == "invalid_grant" => Err(ProviderError::Revoked),
            // Only an error code of OAuth's own alphabet (RFC 6749 §5.2: `%x20-21 / %x23-5B / %x5D-7E`, here
            // without the space) is repeated: the provider's text goes to logs, audit records and pages, and
            // anything else (a newline, a token echoed back) must not.
            Ok(r)
                if (400..500).contains(&status)
                    && !r.error.is_empty()
                    && r.error.len() <= 64
                    && r.error.bytes().all(|b| {
                        b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
                    }) =>
            {
                Err(ProviderError::Refused(shorten(&r.error)))
            }
            _ => Err(ProviderError::Refused(format!("HTTP status {status}"))),
        };
    }
    #[derive(Deserialize)]
    struct Answer {
        access_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<serde_json::Value>,
        refresh_token: Option<String>,
        scope: Option<String>,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|_| ProviderError::Garbage("not a JSON object"))?;
    let access_token = answer
        .access_token
        .filter(|t| token_text(t))
        .ok_or(ProviderError::Garbage("no usable access_token"))?;
    if !answer
        .token_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return Err(ProviderError::Garbage("token_type is not Bearer"));
    }
    // Some providers send the number as a string.
    let expires_in = match answer.expires_in {
        None | Some(serde_json::Value::Null) => UNSTATED_LIFETIME_SECS,
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or(ProviderError::Garbage(
            "expires_in is not a whole number of seconds",
        ))?,
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map_err(|_| ProviderError::Garbage("expires_in is not a whole number of seconds"))?,
        Some(_) => {
            return Err(ProviderError::Garbage(
                "expires_in is not a whole number of seconds",
            ));
        }
    };
    if let Some(refresh) = &answer.refresh_token
        && !token_text(refresh)
    {
        return Err(ProviderError::Garbage("refresh_token is not a token"));
    }
    Ok(ProviderTokens {
        access_token,
        token_type: "Bearer".into(),
        expires_in,
        refresh_token: answer.refresh_token,
        scope: answer.scope.map(|s| shorten(&s)),
    })
}

/// What ends a revocation at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeAnswer {
    /// The provider took it (2xx: revoked, or already invalid).
    Revoked,
    /// The provider has no revocation endpoint: nothing can be told.
    NoEndpoint,
    /// The provider refused the request itself, as asking again would not change: `unsupported_token_type`
    /// (RFC 7009 §2.2.1) or `invalid_request`.
    Refused(&'static str),
}

/// Reads one answer of the provider's revocation endpoint (`status`, body). A 2xx ends the revocation, and so does
/// a 4xx about this one token: `invalid_token` or `invalid_grant` (already invalid there: Google answers so for a
/// token whose grant went with the other token of the pair), `unsupported_token_type` (RFC 7009 §2.2.1),
/// `invalid_request` or any other code. What is about this server or the provider's state is retried, and holds up
/// that provider's other revocations for the pass: `invalid_client` (RFC 6749 §5.2 allows it with a 400: our client
/// secret wrong, or being rotated; the token is still valid there), 401, 408, 429, 5xx, no readable answer.
pub fn read_revocation_answer(status: u16, body: &[u8]) -> Result<RevokeAnswer, ProviderError> {
    if (200..300).contains(&status) {
        return Ok(RevokeAnswer::Revoked);
    }
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
    }
    let about_this_token = (400..500).contains(&status) && !matches!(status, 401 | 408 | 429);
    if about_this_token {
        match serde_json::from_slice::<Refusal>(body).map(|r| r.error) {
            Ok(e) if e == "invalid_client" => {}
            Ok(e) if e == "invalid_token" || e == "invalid_grant" => {
                return Ok(RevokeAnswer::Revoked);
            }
            Ok(e) if e == "unsupported_token_type" => {
                return Ok(RevokeAnswer::Refused("unsupported_token_type"));
            }
            Ok(e) if e == "invalid_request" => return Ok(RevokeAnswer::Refused("invalid_request")),
            // Another code, or none: a refusal of this token that asking again would not change.
            _ => return Ok(RevokeAnswer::Refused("refused")),
        }
    }
    Err(match read_token_answer(status, body) {
        Err(ProviderError::Revoked) => ProviderError::Refused("invalid_grant".into()),
        Err(e) => e,
        Ok(_) => ProviderError::Refused(format!("HTTP status {status}")),
    })
}

#[derive(Debug, Clone, Deserialize)]
struct Endpoints {
    issuer: Option<String>,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
}

/// One provider as configured, with its discovery document once it was read.
pub struct ProviderClient {
    pub config: ProviderConfig,
    http: reqwest::Client,
    endpoints: OnceCell<Endpoints>,
    /// Calls in progress to this provider, at most [`MAX_CALLS`].
    calls: Arc<Semaphore>,
    /// Until when the provider is taken to be down, after a call that could not reach it.
    down_until: Mutex<Option<Instant>>,
}

/// Calls one server makes to one provider at once. A provider that stops answering holds each call up to the
/// client's timeout (10 s), and each holds one of the server's requests in progress: without this bound, a
/// provider's outage (or a person reloading a connect page) would take every slot of every tenant.
pub const MAX_CALLS: usize = 16;

/// After a call that could not reach the provider, how long further calls fail at once instead of each waiting
/// out the timeout.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

impl ProviderClient {
    pub fn new(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let http = crate::upstream::platform_http_client(config.ca_file.as_deref())
            .map_err(ProviderError::Config)?;
        let endpoints = OnceCell::new();
        if let (Some(authorization_endpoint), Some(token_endpoint)) =
            (&config.authorization_endpoint, &config.token_endpoint)
        {
            let _ = endpoints.set(Endpoints {
                issuer: None,
                authorization_endpoint: authorization_endpoint.clone(),
                token_endpoint: token_endpoint.clone(),
                revocation_endpoint: config.revocation_endpoint.clone(),
            });
        }
        Ok(ProviderClient {
            config: config.clone(),
            http,
            endpoints,
            calls: Arc::new(Semaphore::new(MAX_CALLS)),
            down_until: Mutex::new(None),
        })
    }

    /// A slot for one call to the provider: none while it is taken to be down, or while [`MAX_CALLS`] are in
    /// progress. Either answer comes at once.
    fn slot(&self) -> Result<OwnedSemaphorePermit, ProviderError> {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_some_and(|until| Instant::now() < until) {
            return Err(ProviderError::Unreachable);
        }
        drop(down);
        self.calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProviderError::Busy)
    }

    /// Notes that a call could not reach the provider.
    fn unreachable(&self) -> ProviderError {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
        ProviderError::Unreachable
    }

    /// The provider's endpoints: configured, or discovered (a failed discovery is tried again next time).
    async fn endpoints(&self) -> Result<&Endpoints, ProviderError> {
        self.endpoints
            .get_or_try_init(|| async {
                let issuer =
                    self.config.issuer.as_deref().ok_or_else(|| {
                        ProviderError::Config("no issuer and no endpoints".into())
                    })?;
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let _slot = self.slot()?;
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .map_err(|_| self.unreachable())?;
                if !response.status().is_success() {
                    return Err(ProviderError::Garbage("discovery did not answer 200"));
                }
                let body = read_bounded(response).await?;
                let found: Endpoints = serde_json::from_slice(&body)
                    .map_err(|_| ProviderError::Garbage("discovery document is not usable"))?;
                // RFC 8414 §3.3: a document naming another issuer is not this provider's. Its endpoints are not
                // pinned to the issuer's host: real providers serve them elsewhere (Google's issuer is
                // accounts.google.com, its token endpoint oauth2.googleapis.com); the document is trusted because
                // it came from the configured issuer over TLS and names it.
                if found.issuer.as_deref() != Some(issuer) {
                    return Err(ProviderError::Garbage(
                        "discovery document names another issuer",
                    ));
                }
                for url in [
                    Some(&found.authorization_endpoint),
                    Some(&found.token_endpoint),
                    found.revocation_endpoint.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    if !Url::parse(url).is_ok_and(|u| crate::config::is_https_or_loopback(&u)) {
                        return Err(ProviderError::Garbage(
                            "discovery document names an endpoint that is not https",
                        ));
                    }
                }
                Ok(found)
            })
            .await
    }

    /// The issuer the provider's authorization responses must name in `iss` (RFC 9207), when known.
    pub async fn issuer(&self) -> Option<String> {
        self.endpoints().await.ok()?.issuer.clone()
    }

    /// Where to send the browser: the authorization endpoint with our client id, PKCE and `state`.
    pub async fn authorization_url(
        &self,
        callback: &str,
        state: &str,
        verifier: &str,
    ) -> Result<String, ProviderError> {
        let endpoints = self.endpoints().await?;
        let mut url = Url::parse(&endpoints.authorization_endpoint)
            .map_err(|_| ProviderError::Garbage("authorization_endpoint is not a URL"))?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", callback)
                .append_pair("state", state)
                .append_pair(
                    "code_challenge",
                    &URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
                )
                .append_pair("code_challenge_method", "S256");
            if !self.config.scopes.is_empty() {
                query.append_pair("scope", &self.config.scopes.join(" "));
            }
        }
        Ok(url.into())
    }

    /// Redeems the provider's code.
    pub async fn redeem(
        &self,
        code: &str,
        callback: &str,
        verifier: &str,
    ) -> Result<ProviderTokens, ProviderError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", callback),
            ("code_verifier", verifier),
        ])
        .await
    }

    /// A fresh access token for a stored refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<ProviderTokens, ProviderError> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    /// Revokes a token at the provider (RFC 7009), `hint` its `token_type_hint`: what ended the revocation, or
    /// why it is to be tried again.
    pub async fn revoke(&self, token: &str, hint: &str) -> Result<RevokeAnswer, ProviderError> {
        let Some(endpoint) = self.endpoints().await?.revocation_endpoint.clone() else {
            return Ok(RevokeAnswer::NoEndpoint);
        };
        let _slot = self.slot()?;
        let response = self
            .post_form(&endpoint, &[("token", token), ("token_type_hint", hint)])
            .await?;
        let status = response.status().as_u16();
        let body = read_bounded(response).await?;
        read_revocation_answer(status, &body)
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<ProviderTokens, ProviderError> {
        let endpoint = self.endpoints().await?.token_endpoint.clone();
        let _slot = self.slot()?;
        let response = self.post_form(&endpoint, form).await?;
        let status = response.status().as_u16();
        let body = read_bounded(response).await?;
        read_token_answer(status, &body)
    }

    async fn post_form(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
    ) -> Result<reqwest::Response, ProviderError> {
        let secret = std::fs::read_to_string(&self.config.client_secret_file).map_err(|e| {
            ProviderError::Config(format!(
                "clientSecretFile {}: {e}",
                self.config.client_secret_file.display()
            ))
        })?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.http
            .post(endpoint)
            .basic_auth(
                form_encode(&self.config.client_id),
                Some(form_encode(secret.trim())),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|_| self.unreachable())
    }
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before they go into HTTP Basic.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| ProviderError::Unreachable)?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ProviderError::Garbage("the answer is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_providers_token_endpoint_answers_decides() {
        let token = |access: &str, refresh: Option<&str>, expires_in: u64| ProviderTokens {
            access_token: access.into(),
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: refresh.map(str::to_owned),
            scope: None,
        };
        let garbage = |why| Err(ProviderError::Garbage(why));
        // (status, body, outcome)
        let cases: Vec<(u16, &str, Result<ProviderTokens, ProviderError>)> = vec![
            (
                200,
                r#"{"access_token":"at","token_type":"Bearer","expires_in":600,"refresh_token":"rt"}"#,
                Ok(token("at", Some("rt"), 600)),
            ),
            (
                200,
                r#"{"access_token":"at","token_type":"bearer","expires_in":"60"}"#,
                Ok(token("at", None, 60)),
            ),
            (
                200,
                r#"{"access_token":"at","token_type":"Bearer"}"#,
                Ok(token("at", None, UNSTATED_LIFETIME_SECS)),
            ),
            (200, "<html>oops</html>", garbage("not a JSON object")),
            (200, "[]", garbage("not a JSON object")),
            (
                200,
                r#"{"token_type":"Bearer","expires_in":60}"#,
                garbage("no usable access_token"),
            ),
            (
                200,
                r#"{"access_token":"a b","token_type":"Bearer"}"#,
                garbage("no usable access_token"),
            ),
            (
                200,
                r#"{"access_token":"at\r\nx: y","token_type":"Bearer"}"#,
                garbage("no usable access_token"),
            ),
            (
                200,
                r#"{"access_token":"at","token_type":"DPoP","expires_in":60}"#,
                garbage("token_type is not Bearer"),
            ),
            (
                200,
                r#"{"access_token":"at","expires_in":60}"#,
                garbage("token_type is not Bearer"),
            ),
            (
                200,
                r#"{"access_token":"at","token_type":"Bearer","expires_in":-5}"#,
                garbage("expires_in is not a whole number of seconds"),
            ),
            (
                200,
                r#"{"access_token":"at","token_type":"Bearer","refresh_token":""}"#,
                garbage("refresh_token is not a token"),
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
                Err(ProviderError::Revoked),
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                Err(ProviderError::Refused("invalid_client".into())),
            ),
            (
                503,
                r#"{"error":"temporarily_unavailable"}"#,
                Err(ProviderError::Refused("HTTP status 503".into())),
            ),
            (
                500,
                "Internal Server Error",
                Err(ProviderError::Refused("HTTP status 500".into())),
            ),
            // A provider's text outside OAuth's error alphabet is not repeated anywhere.
            (
                400,
                r#"{"error":"bad\nfake log line"}"#,
                Err(ProviderError::Refused("HTTP status 400".into())),
            ),
            (
                400,
                r#"{"error":"token gho_16C7e42F292c6912E7710c838347Ae178B4a"}"#,
                Err(ProviderError::Refused("HTTP status 400".into())),
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                read_token_answer(status, body.as_bytes()),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn what_the_providers_revocation_endpoint_answers_decides() {
        let again = |why: &str| Err(ProviderError::Refused(why.into()));
        // (status, body, outcome)
        let cases: Vec<(u16, &str, Result<RevokeAnswer, ProviderError>)> = vec![
            (200, "", Ok(RevokeAnswer::Revoked)),
            (204, "", Ok(RevokeAnswer::Revoked)),
            (
                400,
                r#"{"error":"unsupported_token_type"}"#,
                Ok(RevokeAnswer::Refused("unsupported_token_type")),
            ),
            (
                400,
                r#"{"error":"invalid_request","error_description":"x"}"#,
                Ok(RevokeAnswer::Refused("invalid_request")),
            ),
            // Our client, not the request, refused: the token is still valid there.
            (
                400,
                r#"{"error":"invalid_client"}"#,
                again("invalid_client"),
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                again("invalid_client"),
            ),
            // Already invalid there: Google answers so for the second token of a grant it revoked with the first.
            (
                400,
                r#"{"error":"invalid_token"}"#,
                Ok(RevokeAnswer::Revoked),
            ),
            (
                400,
                r#"{"error":"invalid_grant"}"#,
                Ok(RevokeAnswer::Revoked),
            ),
            // About this token, whatever the code: asking again would not change it.
            (400, "", Ok(RevokeAnswer::Refused("refused"))),
            (
                400,
                "<html>Bad Request</html>",
                Ok(RevokeAnswer::Refused("refused")),
            ),
            (
                403,
                r#"{"error":"unsupported_token_type"}"#,
                Ok(RevokeAnswer::Refused("unsupported_token_type")),
            ),
            (404, "", Ok(RevokeAnswer::Refused("refused"))),
            // About this server or the provider's state: asked again later.
            (429, r#"{"error":"invalid_token"}"#, again("invalid_token")),
            (408, "", again("HTTP status 408")),
            (
                503,
                r#"{"error":"unsupported_token_type"}"#,
                again("HTTP status 503"),
            ),
            (500, "", again("HTTP status 500")),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                read_revocation_answer(status, body.as_bytes()),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn provider_tokens_never_show_in_debug_output() {
        let t = read_token_answer(
            200,
            br#"{"access_token":"secret-at","token_type":"Bearer","refresh_token":"secret-rt"}"#,
        )
        .expect("token");
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[tokio::test]
    async fn calls_to_a_provider_are_bounded_and_one_that_is_down_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        // Nothing listens on port 1: the call fails to connect at once.
        let config = ProviderConfig {
            id: "acme".into(),
            display_name: "Acme".into(),
            issuer: None,
            authorization_endpoint: Some("http://127.0.0.1:1/authorize".into()),
            token_endpoint: Some("http://127.0.0.1:1/token".into()),
            revocation_endpoint: None,
            client_id: "c".into(),
            client_secret_file: secret,
            scopes: vec![],
            ca_file: None,
        };
        let client = ProviderClient::new(&config).unwrap();
        let taken: Vec<_> = (0..MAX_CALLS).map(|_| client.slot().unwrap()).collect();
        assert_eq!(client.refresh("r").await, Err(ProviderError::Busy));
        drop(taken);
        assert_eq!(client.refresh("r").await, Err(ProviderError::Unreachable));
        // Taken to be down now: the next call does not try, and no slot is needed for that answer.
        let started = Instant::now();
        let taken: Vec<_> = (0..MAX_CALLS)
            .map(|_| client.calls.clone().try_acquire_owned().unwrap())
            .collect();
        assert_eq!(client.refresh("r").await, Err(ProviderError::Unreachable));
        assert!(started.elapsed() < DOWN_FOR);
        drop(taken);
        *client.down_until.lock().unwrap() = Some(Instant::now());
        assert_eq!(client.refresh("r").await, Err(ProviderError::Unreachable));
    }
}
