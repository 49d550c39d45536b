//! `/token`: authorization code (single use; a replay revokes the grant), refresh token (rotated on every use;
//! reuse revokes the grant) and client credentials (confidential clients). Access tokens are RFC 9068 JWTs.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::audit::{self, Decision};
use crate::authorize::requested_scopes;
use crate::client_auth;
use crate::clients::{ClientView, shorten};
use crate::config::GrantType;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::secrets;
use crate::state::{AppState, Snapshot};
use crate::store::{CodeRedemption, Grant, RefreshRotation, sql::now_secs};

/// An access token and the response that carries it.
pub struct Issued {
    pub body: Value,
    pub jti: String,
}

/// Signs an RFC 9068 access token for `grant` and records its `jti` (for introspection and revocation).
pub async fn issue_access_token(
    state: &AppState,
    snapshot: &Snapshot,
    grant: &Grant,
    scopes: &[String],
) -> Result<Issued, OAuthError> {
    let now = now_secs();
    let catalogue = snapshot.config.scope_catalogue();
    // The shortest limit wins: a sensitive scope keeps the whole token short.
    let lifetime = scopes
        .iter()
        .filter_map(|s| catalogue.get(s.as_str()).and_then(|d| d.max_lifetime_secs))
        .fold(snapshot.config.tokens.access_token_secs, u64::min) as i64;
    let jti = secrets::random_token();
    let claims = json!({
        "iss": snapshot.config.issuer,
        "sub": grant.subject,
        "aud": grant.resource,
        "client_id": grant.client_id,
        "scope": scopes.join(" "),
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    });
    let token = state.keys().sign("at+jwt", &claims).map_err(|e| {
        tracing::error!(error = %e, "cannot sign");
        OAuthError::new(
            ErrorCode::ServerError,
            "the server cannot sign tokens right now",
        )
    })?;
    state
        .store
        .put_access_token(&jti, &grant.id, now + lifetime)
        .await?;
    Ok(Issued {
        body: json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scopes.join(" "),
        }),
        jti,
    })
}

/// The URLs a client assertion may name as its audience at an endpoint: that endpoint's URL or the issuer.
/// An assertion made for `/token` is not accepted at `/introspect` or `/revoke`.
pub fn assertion_audiences(snapshot: &Snapshot, endpoint: &str) -> Vec<String> {
    let issuer = &snapshot.config.issuer;
    vec![format!("{issuer}/{endpoint}"), issuer.clone()]
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// POST `/token`.
pub async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let snapshot = state.snapshot();
    let result = handle(&state, &snapshot, &headers, body).await;
    state
        .metrics
        .latency
        .with_label_values(&["token"])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((grant_type, body)) => {
            state.metrics.outcome("token", "ok");
            state
                .metrics
                .tokens_issued
                .with_label_values(&[grant_type])
                .inc();
            no_store(axum::Json(body).into_response())
        }
        Err(e) => {
            state.metrics.outcome("token", e.metric_label());
            e.into_response()
        }
    }
}

async fn handle(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    body: Body,
) -> Result<(&'static str, Value), OAuthError> {
    let params = Params::from_form(headers, body).await?;
    let grant_type = params.require("grant_type")?;
    let grant = match grant_type {
        "authorization_code" => GrantType::AuthorizationCode,
        "refresh_token" => GrantType::RefreshToken,
        "client_credentials" => GrantType::ClientCredentials,
        other => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                format!("grant_type {:?} is not supported", shorten(other)),
            ));
        }
    };
    let resource = params.get("resource");
    let client = client_auth::authenticate(
        state,
        snapshot,
        headers,
        &params,
        &assertion_audiences(snapshot, "token"),
        resource,
    )
    .await?;
    if !client.allows(grant) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            format!("this client may not use grant_type {grant_type}"),
        ));
    }
    let result = match grant {
        GrantType::AuthorizationCode => authorization_code(state, snapshot, &client, &params).await,
        GrantType::RefreshToken => refresh_token(state, snapshot, &client, &params).await,
        GrantType::ClientCredentials => client_credentials(state, snapshot, &client, &params).await,
    };
    if let Err(e) = &result {
        audit::record(
            state.store.as_ref(),
            Decision {
                event: "token",
                client_id: Some(&client.client_id),
                resource,
                outcome: "refused",
                reason: &e.to_string(),
                ..Default::default()
            },
        )
        .await;
    }
    result.map(|body| (grant_type_label(grant), body))
}

fn grant_type_label(g: GrantType) -> &'static str {
    match g {
        GrantType::AuthorizationCode => "authorization_code",
        GrantType::RefreshToken => "refresh_token",
        GrantType::ClientCredentials => "client_credentials",
    }
}

/// `resource` at the token endpoint is optional, but when present it must name the grant's resource.
fn check_resource(params: &Params, grant: &Grant) -> Result<(), OAuthError> {
    match params.get("resource") {
        Some(r) if r != grant.resource => Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "resource {:?} is not the resource this grant is for",
                shorten(r)
            ),
        )),
        _ => Ok(()),
    }
}

fn check_grant_alive(grant: &Grant, now: i64) -> Result<(), OAuthError> {
    if grant.revoked_at.is_some() {
        return Err(OAuthError::invalid_grant("this grant has been revoked"));
    }
    if grant.expires_at <= now {
        return Err(OAuthError::invalid_grant("this grant has expired"));
    }
    Ok(())
}

async fn authorization_code(
    state: &AppState,
    snapshot: &Snapshot,
    client: &ClientView,
    params: &Params,
) -> Result<Value, OAuthError> {
    let code = params.require("code")?;
    let redirect_uri = params.require("redirect_uri")?;
    let verifier = params.require("code_verifier")?;
    let now = now_secs();
    let record = match state.store.redeem_code(&secrets::hash(code), now).await? {
        CodeRedemption::Redeemed(r) => r,
        CodeRedemption::Replayed { grant_id } => {
            // RFC 9700 §4.5: a second use means the code leaked; nothing issued from it may stay valid.
            state
                .store
                .revoke_grant(&grant_id, "authorization code replayed", now)
                .await?;
            return Err(OAuthError::invalid_grant(
                "the authorization code was already used; every token issued from it has been revoked",
            ));
        }
        CodeRedemption::Unknown => {
            return Err(OAuthError::invalid_grant(
                "the authorization code is unknown or expired",
            ));
        }
    };
    if record.client_id != client.client_id {
        state
            .store
            .revoke_grant(&record.grant_id, "code presented by another client", now)
            .await?;
        return Err(OAuthError::invalid_grant(
            "the authorization code was issued to another client",
        ));
    }
    if record.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    if !secrets::pkce_s256_matches(verifier, &record.code_challenge) {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    let grant = state
        .store
        .grant(&record.grant_id)
        .await?
        .ok_or_else(|| OAuthError::invalid_grant("the grant of this code no longer exists"))?;
    check_grant_alive(&grant, now)?;
    check_resource(params, &grant)?;
    let issued = issue_access_token(state, snapshot, &grant, &grant.scopes).await?;
    let mut body = issued.body;
    if client.allows(GrantType::RefreshToken) {
        let refresh = secrets::random_token();
        state
            .store
            .put_refresh_token(&secrets::hash(&refresh), &grant.id, grant.expires_at)
            .await?;
        body["refresh_token"] = json!(refresh);
    }
    audit::record(
        state.store.as_ref(),
        Decision {
            event: "token",
            subject: Some(&grant.subject),
            client_id: Some(&grant.client_id),
            resource: Some(&grant.resource),
            scopes: &grant.scopes,
            outcome: "issued",
            reason: "authorization_code",
        },
    )
    .await;
    Ok(body)
}

async fn refresh_token(
    state: &AppState,
    snapshot: &Snapshot,
    client: &ClientView,
    params: &Params,
) -> Result<Value, OAuthError> {
    let old = params.require("refresh_token")?;
    let now = now_secs();
    let old_hash = secrets::hash(old);
    // Look before spending: a token of another client must not burn the owner's token.
    let Some(grant_id) = state.store.refresh_token_grant(&old_hash, now).await? else {
        return match state
            .store
            .rotate_refresh_token(&old_hash, "-", now)
            .await?
        {
            RefreshRotation::Reused { grant_id } => {
                state
                    .store
                    .revoke_grant(&grant_id, "refresh token reused", now)
                    .await?;
                Err(OAuthError::invalid_grant(
                    "the refresh token was already used; the whole grant has been revoked",
                ))
            }
            _ => Err(OAuthError::invalid_grant(
                "the refresh token is unknown or expired",
            )),
        };
    };
    let grant = state.store.grant(&grant_id).await?.ok_or_else(|| {
        OAuthError::invalid_grant("the grant of this refresh token no longer exists")
    })?;
    if grant.client_id != client.client_id {
        return Err(OAuthError::invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    if grant.client_fingerprint != client.fingerprint() {
        // CIMD: the document's redirect URIs or keys changed since the grant; what the old one got goes.
        state
            .store
            .revoke_grant(&grant.id, "client metadata document changed", now)
            .await?;
        return Err(OAuthError::invalid_grant(
            "the client's metadata document changed since this grant (redirect URIs or keys); sign in again",
        ));
    }
    check_grant_alive(&grant, now)?;
    check_resource(params, &grant)?;
    let scopes = match params.get("scope") {
        None => grant.scopes.clone(),
        Some(text) => {
            let mut asked: Vec<String> = text
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            asked.sort();
            asked.dedup();
            if let Some(extra) = asked.iter().find(|s| !grant.scopes.contains(s)) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    format!("scope {:?} was not granted", shorten(extra)),
                ));
            }
            asked
        }
    };
    let new = secrets::random_token();
    match state
        .store
        .rotate_refresh_token(&old_hash, &secrets::hash(&new), now)
        .await?
    {
        RefreshRotation::Rotated { .. } => {}
        RefreshRotation::Reused { grant_id } => {
            // Lost a race with another use of the same token: that is reuse too.
            state
                .store
                .revoke_grant(&grant_id, "refresh token reused", now)
                .await?;
            return Err(OAuthError::invalid_grant(
                "the refresh token was already used; the whole grant has been revoked",
            ));
        }
        RefreshRotation::Unknown => {
            return Err(OAuthError::invalid_grant(
                "the refresh token is unknown or expired",
            ));
        }
    }
    let issued = issue_access_token(state, snapshot, &grant, &scopes).await?;
    let mut body = issued.body;
    body["refresh_token"] = json!(new);
    audit::record(
        state.store.as_ref(),
        Decision {
            event: "token",
            subject: Some(&grant.subject),
            client_id: Some(&grant.client_id),
            resource: Some(&grant.resource),
            scopes: &scopes,
            outcome: "issued",
            reason: "refresh_token",
        },
    )
    .await;
    Ok(body)
}

async fn client_credentials(
    state: &AppState,
    snapshot: &Snapshot,
    client: &ClientView,
    params: &Params,
) -> Result<Value, OAuthError> {
    let resource = params.get("resource").ok_or_else(|| {
        OAuthError::new(
            ErrorCode::InvalidTarget,
            "the resource parameter is required (RFC 8707)",
        )
    })?;
    if snapshot.config.resource(resource).is_none() {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "resource {:?} is not a resource of this server",
                shorten(resource)
            ),
        ));
    }
    let mut scopes = match params.get("scope") {
        Some(_) => requested_scopes(snapshot, resource, params.get("scope"))?,
        None => {
            let offered = snapshot
                .config
                .resource(resource)
                .map(|r| r.scopes.clone())
                .unwrap_or_default();
            client
                .client_credentials_scopes
                .iter()
                .filter(|s| offered.contains(s))
                .cloned()
                .collect()
        }
    };
    scopes.sort();
    if let Some(extra) = scopes
        .iter()
        .find(|s| !client.client_credentials_scopes.contains(s))
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            format!("scope {:?} is not allowed for this client", shorten(extra)),
        ));
    }
    if scopes.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "this client has no scope at this resource",
        ));
    }
    let now = now_secs();
    let grant = Grant {
        id: secrets::random_token(),
        subject: client.client_id.clone(),
        client_id: client.client_id.clone(),
        resource: resource.to_owned(),
        scopes: scopes.clone(),
        grant_type: "client_credentials".into(),
        created_at: now,
        expires_at: now + snapshot.config.tokens.access_token_secs as i64,
        revoked_at: None,
        revoked_reason: None,
        client_fingerprint: client.fingerprint().to_owned(),
    };
    state.store.put_grant(&grant).await?;
    let issued = issue_access_token(state, snapshot, &grant, &scopes).await?;
    audit::record(
        state.store.as_ref(),
        Decision {
            event: "token",
            subject: Some(&grant.subject),
            client_id: Some(&grant.client_id),
            resource: Some(resource),
            scopes: &scopes,
            outcome: "issued",
            reason: "client_credentials",
        },
    )
    .await;
    Ok(issued.body)
}
