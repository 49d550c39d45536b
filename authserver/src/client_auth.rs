//! Client authentication at the token, introspection and revocation endpoints: `none` (public clients, identified
//! by `client_id`) or `private_key_jwt` (RFC 7523 assertions). Shared secrets, `alg: none` and HMAC are refused.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::clients::{self, ClientKeySource, ClientView, cimd_error, shorten};
use crate::config::ClientAuthMethod;
use crate::oauth_error::OAuthError;
use crate::params::Params;
use crate::state::{AppState, Snapshot};
use crate::store::sql::now_secs;

/// The only assertion type (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Asymmetric algorithms accepted for client assertions.
pub const ACCEPTED_ALGS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];
/// The furthest in the future an assertion's `exp` may be (Authlib, a common client, defaults to one hour).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
const LEEWAY_SECS: u64 = 30;

/// Authenticates the caller. `audiences` are the values an assertion's `aud` may hold (the endpoint URL, the
/// issuer). `resource` picks the CIMD policy for URL client ids.
pub async fn authenticate(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    params: &Params,
    audiences: &[String],
    resource: Option<&str>,
) -> Result<ClientView, OAuthError> {
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() >= 6 && v[..6].eq_ignore_ascii_case("basic "))
    {
        return Err(OAuthError::invalid_client(
            "client_secret_basic is not supported; authenticate with private_key_jwt or as a public client",
        ));
    }
    if params.get("client_secret").is_some() {
        return Err(OAuthError::invalid_client(
            "client secrets are not supported; use private_key_jwt",
        ));
    }
    if params.get("client_assertion_type").is_some() || params.get("client_assertion").is_some() {
        return assertion(state, snapshot, params, audiences, resource).await;
    }
    let client_id = params
        .get("client_id")
        .ok_or_else(|| OAuthError::invalid_client("client_id is missing"))?;
    let client = clients::lookup(snapshot, state, client_id, resource).await?;
    if client.auth_method == ClientAuthMethod::PrivateKeyJwt {
        return Err(OAuthError::invalid_client(
            "this client must authenticate with private_key_jwt",
        ));
    }
    Ok(client)
}

async fn assertion(
    state: &AppState,
    snapshot: &Snapshot,
    params: &Params,
    audiences: &[String],
    resource: Option<&str>,
) -> Result<ClientView, OAuthError> {
    if params.get("client_assertion_type") != Some(JWT_BEARER) {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion_type must be {JWT_BEARER}"
        )));
    }
    let jwt = params
        .require("client_assertion")
        .map_err(|_| OAuthError::invalid_client("client_assertion is missing"))?;
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| {
        OAuthError::invalid_client("client_assertion is not a signed JWT with an accepted algorithm (ES256, RS256, PS256, EdDSA)")
    })?;
    if !ACCEPTED_ALGS.contains(&header.alg) {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion algorithm {:?} is refused; use ES256, RS256, PS256 or EdDSA",
            header.alg
        )));
    }
    let unverified = unverified_claims(jwt)
        .ok_or_else(|| OAuthError::invalid_client("client_assertion payload is not JSON"))?;
    let client_id = unverified
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| OAuthError::invalid_client("client_assertion has no iss"))?
        .to_owned();
    if params.get("client_id").is_some_and(|c| c != client_id) {
        return Err(OAuthError::invalid_client(
            "client_id does not match the client_assertion issuer",
        ));
    }
    let client = clients::lookup(snapshot, state, &client_id, resource).await?;
    if client.auth_method != ClientAuthMethod::PrivateKeyJwt {
        return Err(OAuthError::invalid_client(
            "this client is registered for token_endpoint_auth_method none",
        ));
    }
    let jwks: JwkSet = match &client.keys {
        Some(ClientKeySource::Jwks(v)) => serde_json::from_value(v.clone()),
        Some(ClientKeySource::JwksUri(uri)) => {
            let resolver = snapshot
                .cimd
                .as_ref()
                .ok_or_else(|| OAuthError::invalid_client("jwks_uri cannot be fetched"))?;
            serde_json::from_value(resolver.fetch_jwks(uri).await.map_err(cimd_error)?)
        }
        None => return Err(OAuthError::invalid_client("the client has no keys")),
    }
    .map_err(|e| OAuthError::invalid_client(format!("the client's JWK Set is invalid: {e}")))?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(audiences);
    validation.set_issuer(&[&client_id]);
    validation.sub = Some(client_id.clone());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = LEEWAY_SECS;
    // RFC 7523 §3: an assertion is not accepted before its `nbf`.
    validation.validate_nbf = true;
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => jwks.find(kid).into_iter().collect(),
        None => jwks.keys.iter().collect(),
    };
    let mut claims = None;
    let mut last_error = String::from("no key of the client matches the assertion's kid");
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let claims = claims.ok_or_else(|| {
        OAuthError::invalid_client(format!("client_assertion rejected: {last_error}"))
    })?;
    let now = now_secs();
    // A NumericDate may have a fraction (`time.time()`); it is rounded up, so the cap and the time the `jti`
    // is remembered both cover the assertion's whole life. One the library accepts but no clock reaches
    // (past year 33,000) is refused rather than read as 0, which would skip both.
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .filter(|e| e.is_finite() && *e < 1e12)
        .map(|e| e.ceil() as i64)
        .ok_or_else(|| {
            OAuthError::invalid_client("client_assertion exp is not a usable NumericDate")
        })?;
    if exp > now + MAX_ASSERTION_LIFETIME_SECS + LEEWAY_SECS as i64 {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion exp is more than {MAX_ASSERTION_LIFETIME_SECS} seconds away"
        )));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| {
            OAuthError::invalid_client("client_assertion needs a jti (at most 256 characters)")
        })?;
    if !state
        .store
        .use_assertion_id(&client_id, jti, exp + LEEWAY_SECS as i64)
        .await?
    {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion jti {:?} was already used",
            shorten(jti)
        )));
    }
    Ok(client)
}

/// The client a request's assertion (or `client_id`) claims to be, before anything is verified: for
/// decisions that must not cost a lookup.
pub fn claimed_client(params: &Params) -> Option<String> {
    let from_assertion = params
        .get("client_assertion")
        .and_then(unverified_claims)
        .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_owned));
    from_assertion.or_else(|| params.get("client_id").map(str::to_owned))
}

fn unverified_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}
