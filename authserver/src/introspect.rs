//! RFC 7662 introspection (callers authenticate: the admin credential, or a client allowed to introspect) and
//! RFC 7009 revocation (the client the token was issued to).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::audit::{self, Decision};
use crate::client_auth;
use crate::oauth_error::OAuthError;
use crate::params::Params;
use crate::secrets;
use crate::state::{AppState, Snapshot};
use crate::store::sql::now_secs;
use crate::token::assertion_audiences;

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
        if live && !state.store.access_token_revoked(&jti).await? {
            let grant_id = state.store.access_token_grant(&jti).await?;
            return Ok(Found::Access { claims, grant_id });
        }
        return Ok(Found::Nothing);
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
    if client_auth::claimed_client(params)
        .is_some_and(|id| id.starts_with("https://") || id.starts_with("http://"))
    {
        return Err(OAuthError::invalid_client(
            "this client may not introspect tokens",
        ));
    }
    let client = client_auth::authenticate(
        state,
        snapshot,
        headers,
        params,
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
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        let caller = match authorize_introspection(&state, &snapshot, &headers, &params).await {
            Ok(c) => c,
            Err(e) => {
                audit::record(
                    state.store.as_ref(),
                    Decision { event: "introspect", outcome: "refused", reason: &e.to_string(), ..Default::default() },
                )
                .await;
                return Err(e);
            }
        };
        let token = params.require("token")?;
        let body = match find(&state, &snapshot, token).await? {
            Found::Access { claims, .. } => {
                let mut body = json!({ "active": true, "token_type": "Bearer" });
                for claim in ["iss", "sub", "aud", "client_id", "scope", "jti", "iat", "nbf", "exp"] {
                    if let Some(v) = claims.get(claim) {
                        body[claim] = v.clone();
                    }
                }
                body
            }
            Found::Refresh { grant_id } => match state.store.grant(&grant_id).await? {
                Some(g) if g.revoked_at.is_none() => json!({
                    "active": true, "token_type": "refresh_token", "sub": g.subject, "client_id": g.client_id,
                    "aud": g.resource, "scope": g.scopes.join(" "), "exp": g.expires_at, "iss": snapshot.config.issuer,
                }),
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
            state.metrics.outcome("introspect", e.metric_label());
            e.into_response()
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
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        let client = client_auth::authenticate(
            &state,
            &snapshot,
            &headers,
            &params,
            &assertion_audiences(&snapshot, "revoke"),
            None,
        )
        .await?;
        let token = params.require("token")?;
        let now = now_secs();
        let grant_id = match find(&state, &snapshot, token).await? {
            Found::Access { claims, grant_id } => {
                if claims.get("client_id").and_then(Value::as_str)
                    != Some(client.client_id.as_str())
                {
                    return Err(OAuthError::invalid_request(
                        "the token was not issued to this client",
                    ));
                }
                if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
                    state.store.revoke_access_token(jti, now).await?;
                }
                // Revoking an access token leaves the grant (RFC 7009 §2.1 lets us choose); a refresh token revokes all.
                let _ = grant_id;
                None
            }
            Found::Refresh { grant_id } => Some(grant_id),
            // RFC 7009 §2.2: an invalid or unknown token is not an error.
            Found::Nothing => None,
        };
        if let Some(grant_id) = grant_id {
            let grant = state.store.grant(&grant_id).await?;
            if grant
                .as_ref()
                .is_some_and(|g| g.client_id != client.client_id)
            {
                return Err(OAuthError::invalid_request(
                    "the token was not issued to this client",
                ));
            }
            state
                .store
                .revoke_grant(&grant_id, "revoked by the client", now)
                .await?;
            if let Some(g) = grant {
                audit::record(
                    state.store.as_ref(),
                    Decision {
                        event: "revoke",
                        subject: Some(&g.subject),
                        client_id: Some(&g.client_id),
                        resource: Some(&g.resource),
                        scopes: &g.scopes,
                        outcome: "revoked",
                        reason: "revoked by the client",
                    },
                )
                .await;
            }
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
            state.metrics.outcome("revoke", e.metric_label());
            e.into_response()
        }
    }
}
