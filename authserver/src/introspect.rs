//! RFC 7662 introspection (callers authenticate: the admin credential, or a client allowed to introspect) and
//! RFC 7009 revocation (the client the token was issued to).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::audit::{Decision, Who};
use crate::client_auth;
use crate::client_auth::assertion_audiences;
use crate::clock::now_secs;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::secrets;
use crate::state::{AppState, Snapshot};

/// What a presented token turned out to be.
enum Found {
    Access {
        claims: Value,
        grant_id: Option<String>,
    },
    Refresh {
        grant_id: String,
    },
    Nothing,
}

async fn find(state: &AppState, snapshot: &Snapshot, token: &str) -> Result<Found, OAuthError> {
    let now = now_secs();
    if let Some((_, claims)) = state.keys().verify(token) {
        let live = claims.get("iss").and_then(Value::as_str)
            == Some(snapshot.config.issuer.as_str())
            && claims
                .get("exp")
                .and_then(Value::as_i64)
                .is_some_and(|exp| exp > now);
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // A token issued while another service held its audience's URL is not this holder's to use.
        let held = crate::oauth::holder::token_held(
            claims
                .get(crate::oauth::holder::HOLDER_CLAIM)
                .and_then(Value::as_str),
            claims
                .get("aud")
                .and_then(Value::as_str)
                .and_then(|aud| snapshot.config.resource(aud))
                .map(|r| r.holder.as_str()),
        );
        if !live || !held {
            return Ok(Found::Nothing);
        }
        // One read: the token's grant, and whether it or its grant is revoked.
        return Ok(match state.store.access_token_state(&jti).await? {
            Some((_, true)) => Found::Nothing,
            Some((grant_id, false)) => Found::Access {
                claims,
                grant_id: Some(grant_id),
            },
            None => Found::Access {
                claims,
                grant_id: None,
            },
        });
    }
    match state
        .store
        .refresh_token_grant(&secrets::hash(token), now)
        .await?
    {
        Some(grant_id) => Ok(Found::Refresh { grant_id }),
        None => Ok(Found::Nothing),
    }
}

fn json_no_store(status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The client a request claims to be, for the audit of its refusal (nothing is verified).
fn claimed_client(headers: &HeaderMap, params: &Params) -> Option<String> {
    client_auth::presented(headers, params)
        .ok()
        .map(|p| p.client_id)
}

/// Who asked, and which tokens it may learn about.
struct Caller {
    name: String,
    /// Only tokens whose `aud` holds this resource are described; every other token is `active: false`.
    audience: Option<String>,
}

impl Caller {
    fn may_see(&self, aud: Option<&Value>) -> bool {
        let Some(resource) = &self.audience else {
            return true;
        };
        match aud {
            Some(Value::String(a)) => a == resource,
            Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(resource)),
            _ => false,
        }
    }
}

/// Introspection callers: the admin bearer credential, a client registered with `introspection: true`, or a
/// resource server (for its own resource's tokens).
async fn authorize_introspection(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Caller, OAuthError> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return match &snapshot.admin_token {
            Some(admin) if secrets::constant_time_eq(bearer.trim(), admin) => Ok(Caller {
                name: "admin".into(),
                audience: None,
            }),
            _ => Err(OAuthError::invalid_client(
                "the bearer credential is not valid for introspection",
            )),
        };
    }
    // Only registered clients and resource servers may introspect. A client named by a metadata document is
    // refused before its document and keys would be fetched on an unauthenticated request's say-so.
    let presented = client_auth::presented(headers, params)?;
    if presented.client_id.starts_with("https://") || presented.client_id.starts_with("http://") {
        return Err(OAuthError::invalid_client(
            "this client may not introspect tokens",
        ));
    }
    let client = client_auth::authenticate(
        state,
        snapshot,
        &presented,
        &assertion_audiences(snapshot, "introspect"),
        None,
    )
    .await?;
    if !client.may_introspect
        || client.auth_method != crate::config::ClientAuthMethod::PrivateKeyJwt
    {
        return Err(OAuthError::invalid_client(
            "this client may not introspect tokens",
        ));
    }
    Ok(Caller {
        name: client.client_id,
        audience: client.introspection_audience,
    })
}

/// POST `/introspect`.
pub async fn introspect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = Who::default();
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        who.client_id = claimed_client(&headers, &params);
        let caller = authorize_introspection(&state, &snapshot, &headers, &params).await?;
        let token = params.require("token")?;
        let body = match find(&state, &snapshot, token).await? {
            Found::Access { claims, .. } => {
                let mut body = json!({ "active": true, "token_type": "Bearer" });
                for claim in [
                    "iss", "sub", "aud", "client_id", "scope", "jti", "iat", "nbf", "exp",
                    crate::token::CALLER_CLAIM,
                ] {
                    if let Some(v) = claims.get(claim) {
                        body[claim] = v.clone();
                    }
                }
                body
            }
            Found::Refresh { grant_id } => match state.store.grant(&grant_id).await? {
                Some(g) if g.revoked_at.is_none() => {
                    match crate::token::check_holder(&state, &snapshot, &g).await {
                        Ok(()) => json!({
                            "active": true, "token_type": "refresh_token", "sub": g.subject, "client_id": g.client_id,
                            "aud": g.resource, "scope": g.scopes.join(" "), "exp": g.expires_at,
                            "iss": snapshot.config.issuer,
                        }),
                        // Revoked just now: its holder changed.
                        Err(e) if e.code == ErrorCode::InvalidGrant => json!({ "active": false }),
                        Err(e) => return Err(e),
                    }
                }
                _ => json!({ "active": false }),
            },
            Found::Nothing => json!({ "active": false }),
        };
        // RFC 7662 §4: a resource server learns nothing about tokens meant for another resource.
        let body = if caller.may_see(body.get("aud")) {
            body
        } else {
            json!({ "active": false })
        };
        let caller = caller.name;
        tracing::debug!(caller, active = %body["active"], "introspection");
        Ok::<_, OAuthError>(body)
    }
    .await;
    match result {
        Ok(body) => {
            state.metrics.outcome("introspect", "ok");
            json_no_store(StatusCode::OK, body)
        }
        Err(e) => {
            state.refuse("introspect", &who, &e).await;
            client_auth::refusal_response(&headers, e)
        }
    }
}

/// POST `/revoke`.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = Who::default();
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        who.client_id = claimed_client(&headers, &params);
        let presented = client_auth::presented(&headers, &params)?;
        let token = params.require("token")?;
        let now = now_secs();
        // The token's grant first: the client is authenticated under the policy of the grant's resource, as at
        // the token endpoint, so a client that may authenticate two ways cannot revoke with the weaker one.
        let found = find(&state, &snapshot, token).await?;
        let grant = match &found {
            Found::Access {
                grant_id: Some(id), ..
            }
            | Found::Refresh { grant_id: id } => state.store.grant(id).await?,
            Found::Access { grant_id: None, .. } | Found::Nothing => None,
        };
        let client = client_auth::authenticate(
            &state,
            &snapshot,
            &presented,
            &assertion_audiences(&snapshot, "revoke"),
            grant.as_ref().map(|g| g.resource.as_str()),
        )
        .await?;
        let issued_to_client =
            |client_id: Option<&str>| client_id == Some(client.client_id.as_str());
        match found {
            Found::Access { claims, .. } => {
                if !issued_to_client(claims.get("client_id").and_then(Value::as_str)) {
                    return Err(OAuthError::invalid_request(
                        "the token was not issued to this client",
                    ));
                }
                // Revoking an access token leaves the grant (RFC 7009 §2.1 lets us choose).
                if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
                    state.store.revoke_access_token(jti, now).await?;
                }
            }
            Found::Refresh { grant_id } => {
                if !issued_to_client(grant.as_ref().map(|g| g.client_id.as_str())) {
                    return Err(OAuthError::invalid_request(
                        "the token was not issued to this client",
                    ));
                }
                // A refresh token revokes the whole grant.
                state
                    .store
                    .revoke_grant(&grant_id, "revoked by the client", now)
                    .await?;
                if let Some(g) = &grant {
                    state
                        .record_decision(Decision {
                            event: "revoke",
                            caller: None,
                            subject: Some(&g.subject),
                            client_id: Some(&g.client_id),
                            resource: Some(&g.resource),
                            scopes: &g.scopes,
                            outcome: "revoked",
                            reason: "revoked by the client",
                        })
                        .await;
                }
            }
            // RFC 7009 §2.2: an invalid or unknown token is not an error.
            Found::Nothing => {}
        }
        Ok::<_, OAuthError>(())
    }
    .await;
    match result {
        Ok(()) => {
            state.metrics.outcome("revoke", "ok");
            json_no_store(StatusCode::OK, json!({}))
        }
        Err(e) => {
            state.refuse("revoke", &who, &e).await;
            client_auth::refusal_response(&headers, e)
        }
    }
}
