//! `/token`: authorization code (single use; a replay revokes the grant), refresh token (rotated on every use;
//! reuse revokes the grant), client credentials (confidential clients) and ID-JAG redemption
//! ([`crate::identity_assertion`]). Access tokens are RFC 9068 JWTs.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::audit::{self, Decision, Who};
use crate::client_auth::{self, Presented};
use crate::clients::{ClientView, shorten};
use crate::clock::now_secs;
use crate::config::{GrantType, ResourceConfig};
use crate::oauth::{authorize_request, grant_binding, holder, scopes};
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::rate_limits::Endpoint;
use crate::secrets;
use crate::state::{AppState, Snapshot};
use crate::store::{
    AccessTokenRecord, AssertionClaim, CodeRedemption, Grant, Issue, RefreshRotation,
};
use crate::token_exchange::TOKEN_EXCHANGE_GRANT;

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
    let (issued, record) = sign_access_token(state, snapshot, grant, scopes)?;
    state
        .store
        .put_access_token(&record.jti, &record.grant_id, record.expires_at)
        .await?;
    Ok(issued)
}

/// The private claim (RFC 7519 §4.3) saying who stands behind an access token: `person` or `machine`. Resource
/// servers (the sidecar's `callers` rules) tell people from clients acting alone by it, since `sub` cannot: a
/// machine's `sub` is its client id, which may look like any user name.
pub const CALLER_CLAIM: &str = "mcp_authz_caller";

/// Who stands behind a token of a grant made by `grant_type`: a client's own grant has no person behind it;
/// every other grant starts from a person's login, consent or an identity provider's assertion about them.
fn caller(grant_type: &str) -> &'static str {
    match GrantType::from_wire(grant_type) {
        Some(GrantType::ClientCredentials) => "machine",
        Some(GrantType::AuthorizationCode | GrantType::RefreshToken | GrantType::JwtBearer) => {
            "person"
        }
        // Every grant is stored with one of ours; a row that says otherwise is claimed by neither kind.
        None => "unknown",
    }
}

/// Signs `claims` as an RFC 9068 access token (`typ: at+jwt`) with the current key.
pub(crate) fn sign_at_jwt(state: &AppState, claims: &Value) -> Result<String, OAuthError> {
    state.keys().sign("at+jwt", claims).map_err(|e| {
        tracing::error!(error = %e, "cannot sign");
        OAuthError::new(
            ErrorCode::ServerError,
            "the server cannot sign tokens right now",
        )
    })
}

/// Signs an RFC 9068 access token for `grant`; the record returned must be stored before the token is answered.
fn sign_access_token(
    state: &AppState,
    snapshot: &Snapshot,
    grant: &Grant,
    scopes: &[String],
) -> Result<(Issued, AccessTokenRecord), OAuthError> {
    let now = now_secs();
    let catalogue = snapshot.config.scope_catalogue();
    // The shortest limit wins, through `implies` too: a sensitive scope keeps the whole token short.
    let lifetime = i64::try_from(scopes::token_lifetime(
        &catalogue,
        scopes,
        snapshot.config.tokens.access_token_secs,
    ))
    .unwrap_or(i64::MAX);
    let jti = secrets::record_id();
    let mut claims = json!({
        "iss": snapshot.config.issuer,
        "sub": grant.subject,
        "aud": grant.resource,
        "client_id": grant.client_id,
        "scope": scopes.join(" "),
        CALLER_CLAIM: caller(&grant.grant_type),
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    });
    // Today's holder of the audience: every path here checked that the grant was made under it (or adopted it
    // just now), or made the grant just now.
    if let Some(held) = snapshot
        .config
        .resource(&grant.resource)
        .map(|r| r.holder.as_str())
        .filter(|h| !h.is_empty())
    {
        claims[holder::HOLDER_CLAIM] = json!(held);
    }
    let token = sign_at_jwt(state, &claims)?;
    let record = AccessTokenRecord {
        jti: jti.clone(),
        grant_id: grant.id.clone(),
        expires_at: now + lifetime,
    };
    let issued = Issued {
        body: json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scopes.join(" "),
        }),
        jti,
    };
    Ok((issued, record))
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
    let mut who = Who::default();
    let result = handle(&state, &snapshot, &headers, body, &mut who).await;
    state
        .metrics
        .latency
        .with_label_values(&["token"])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((grant_type, body)) => {
            state.metrics.outcome("token", "ok");
            if let (Some(limiter), Some(client_id)) = (&snapshot.limiter, &who.client_id) {
                limiter.spend_client(Endpoint::Token, client_id, Instant::now());
            }
            // One series per configured resource at most: a name the config does not hold cannot be a label.
            let resource = who
                .resource
                .as_deref()
                .filter(|r| snapshot.config.resource(r).is_some())
                .unwrap_or("other");
            state
                .metrics
                .tokens_issued
                .with_label_values(&[grant_type, resource])
                .inc();
            no_store(axum::Json(body).into_response())
        }
        Err(e) => {
            state.refuse("token", &who, &e).await;
            client_auth::refusal_response(&headers, e)
        }
    }
}

async fn handle(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    body: Body,
    who: &mut Who,
) -> Result<(&'static str, Value), OAuthError> {
    let params = Params::from_form(headers, body).await?;
    let grant_type = params.require("grant_type")?;
    // Not a grant a client may hold: only the resource servers of this server's services exchange tokens.
    let exchange = grant_type == TOKEN_EXCHANGE_GRANT
        && snapshot
            .config
            .resources
            .iter()
            .any(crate::config::ResourceConfig::exchanges);
    let grant = GrantType::from_wire(grant_type)
        .filter(|g| {
            *g != GrantType::JwtBearer || !snapshot.config.trusted_identity_providers.is_empty()
        })
        .map(Some)
        .or(exchange.then_some(None))
        .ok_or_else(|| {
            OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                format!("grant_type {:?} is not supported", shorten(grant_type)),
            )
        })?;
    let presented = client_auth::presented(headers, &params)?;
    who.client_id = Some(presented.client_id.clone());
    if let Some(limiter) = &snapshot.limiter {
        limiter
            .check_client(Endpoint::Token, &presented.client_id, Instant::now())
            .map_err(|refusal| refusal.counted(&state.metrics))?;
    }
    who.resource = params.get("resource").map(str::to_owned);
    let Some(grant) = grant else {
        let body =
            crate::token_exchange::exchange(state, snapshot, &presented, &params, who).await?;
        return Ok(("token_exchange", body));
    };
    let body = match grant {
        GrantType::AuthorizationCode => {
            authorization_code(state, snapshot, &presented, &params, who).await?
        }
        GrantType::RefreshToken => refresh_token(state, snapshot, &presented, &params, who).await?,
        GrantType::ClientCredentials => {
            client_credentials(state, snapshot, &presented, &params, who).await?
        }
        GrantType::JwtBearer => {
            crate::identity_assertion::redeem(state, snapshot, &presented, &params, who).await?
        }
    };
    Ok((grant_type_label(grant), body))
}

/// The grant's metric label: short names, `jwt_bearer` for the URN.
fn grant_type_label(g: GrantType) -> &'static str {
    match g {
        GrantType::JwtBearer => "jwt_bearer",
        other => other.as_str(),
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

/// The client of a request on an existing grant, authenticated under the grant's resource (never the request's:
/// leaving `resource` out must not pick a laxer policy), allowed `grant_type` by that policy, and bound to the
/// grant (same client, same method, same document). A broken binding that means the grant is compromised
/// revokes it.
async fn client_of_grant(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    grant: &Grant,
    grant_type: GrantType,
    what: &str,
) -> Result<ClientView, OAuthError> {
    // A grant is only as good as what serves and governs its resource today: without the resource there is no
    // policy to judge the client by (the baseline must not stand in), and the URL may be claimed by another team.
    if snapshot.config.resource(&grant.resource).is_none() {
        state
            .store
            .revoke_grant(&grant.id, "its resource is no longer served", now_secs())
            .await?;
        return Err(OAuthError::invalid_grant(
            "the resource of this grant is no longer served by this server",
        ));
    }
    check_holder(state, snapshot, grant).await?;
    let client = client_auth::authenticate(
        state,
        snapshot,
        presented,
        &client_auth::assertion_audiences(snapshot, "token"),
        Some(&grant.resource),
    )
    .await?;
    if !client.allows(grant_type) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            format!("this client may not use grant_type {}", grant_type.as_str()),
        ));
    }
    let binding = grant_binding::binding(
        grant,
        &client.client_id,
        client.auth_method.as_str(),
        client.fingerprint(),
    );
    if let Some((refusal, revoke)) = binding.refusal(what) {
        if revoke {
            state
                .store
                .revoke_grant(&grant.id, &refusal.description, now_secs())
                .await?;
        }
        return Err(refusal);
    }
    Ok(client)
}

/// Refuses, and revokes, a grant made while another service held its resource URL; a grant from before holders
/// were recorded takes today's holder. Every path that lets a grant stand for a client calls this: a URL passed
/// to another service without a moment unserved would otherwise carry the old holder's grants to the new one.
pub(crate) async fn check_holder(
    state: &AppState,
    snapshot: &Snapshot,
    grant: &Grant,
) -> Result<(), OAuthError> {
    // A resource no longer served is refused by its callers; nothing is held then.
    let Some(configured) = snapshot
        .config
        .resource(&grant.resource)
        .map(|r| r.holder.as_str())
    else {
        return Ok(());
    };
    let recorded = match holder::standing(&grant.holder, configured) {
        holder::Standing::Holds => return Ok(()),
        holder::Standing::Changed => grant.holder.clone(),
        holder::Standing::Adopts => {
            match state.store.adopt_holder(&grant.id, configured).await? {
                // Another replica may have adopted first, under a config that already moved on.
                Some(adopted) if adopted != configured => adopted,
                _ => return Ok(()),
            }
        }
    };
    let (refusal, reason) = holder::changed(&recorded, configured);
    state
        .store
        .revoke_grant(&grant.id, &reason, now_secs())
        .await?;
    Err(refusal)
}

/// The scopes a grant may still be used for: offered by its resource and within the client's policy limits today
/// (a team that narrows its policy narrows the grants made under it).
fn check_grant_scopes(
    snapshot: &Snapshot,
    client: &ClientView,
    grant: &Grant,
    scopes: &[String],
) -> Result<(), OAuthError> {
    let offered = snapshot
        .config
        .resource(&grant.resource)
        .map(|r| r.scopes.as_slice())
        .unwrap_or_default();
    scopes::still_offered(offered, scopes)?;
    client.check_scope_limits(scopes)
}

/// A grant of a person who is no longer a static user goes: its tokens must not outlive the account.
async fn check_subject_exists(
    state: &AppState,
    snapshot: &Snapshot,
    grant: &Grant,
    now: i64,
) -> Result<(), OAuthError> {
    if snapshot.subject_exists(&grant.subject) == Some(false) {
        state
            .store
            .revoke_grant(&grant.id, "the user no longer exists", now)
            .await?;
        return Err(OAuthError::invalid_grant(
            "the user of this grant no longer exists",
        ));
    }
    Ok(())
}

async fn authorization_code(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    params: &Params,
    who: &mut Who,
) -> Result<Value, OAuthError> {
    let code = params.require("code")?;
    let redirect_uri = params.require("redirect_uri")?;
    let verifier = params.require("code_verifier")?;
    let now = now_secs();
    let code_hash = secrets::hash(code);
    // The grant first: its resource decides the policy the client is authenticated under.
    let grant = match state.store.code_grant(&code_hash).await? {
        Some(id) => state.store.grant(&id).await?,
        None => None,
    }
    .ok_or_else(|| OAuthError::invalid_grant("the authorization code is unknown or expired"))?;
    who.resource = Some(grant.resource.clone());
    who.subject = Some(grant.subject.clone());
    // Only a live grant's refusals are exempt from the row budget: once revoked, a replayed token is just noise.
    who.grant = grant.revoked_at.is_none().then(|| grant.id.clone());
    let client = client_of_grant(
        state,
        snapshot,
        presented,
        &grant,
        GrantType::AuthorizationCode,
        "authorization code",
    )
    .await?;
    let record = match state.store.redeem_code(&code_hash, now).await? {
        CodeRedemption::Redeemed(r) => r,
        CodeRedemption::Replayed { grant_id } => {
            // RFC 9700 §4.5: a second use means the code leaked; nothing issued from it may stay valid.
            who.revoked_grant = state
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
    check_grant_alive(&grant, now)?;
    check_subject_exists(state, snapshot, &grant, now).await?;
    check_resource(params, &grant)?;
    check_grant_scopes(snapshot, &client, &grant, &grant.scopes)?;
    let issued = issue_access_token(state, snapshot, &grant, &grant.scopes).await?;
    let mut body = issued.body;
    // Whether the grant may be refreshed is the policy's word at the grant's resource.
    if client.allows(GrantType::RefreshToken) {
        let refresh = secrets::random_token();
        state
            .store
            .put_refresh_token(&secrets::hash(&refresh), &grant.id, grant.expires_at)
            .await?;
        body["refresh_token"] = json!(refresh);
    }
    state
        .record_decision(Decision {
            event: "token",
            caller: Some(caller(&grant.grant_type)),
            subject: Some(&grant.subject),
            client_id: Some(&grant.client_id),
            resource: Some(&grant.resource),
            scopes: &grant.scopes,
            outcome: "issued",
            reason: "authorization_code",
        })
        .await;
    Ok(body)
}

async fn refresh_token(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    params: &Params,
    who: &mut Who,
) -> Result<Value, OAuthError> {
    let old = params.require("refresh_token")?;
    let now = now_secs();
    let old_hash = secrets::hash(old);
    // The grant first, spent token or not: its resource decides the policy the client is authenticated under,
    // and its state decides the answer (a revoked grant says so, rather than "already used").
    let grant = match state.store.refresh_token_owner(&old_hash).await? {
        Some(id) => state.store.grant(&id).await?,
        None => None,
    }
    .ok_or_else(|| OAuthError::invalid_grant("the refresh token is unknown or expired"))?;
    who.resource = Some(grant.resource.clone());
    who.subject = Some(grant.subject.clone());
    // Only a live grant's refusals are exempt from the row budget: once revoked, a replayed token is just noise.
    who.grant = grant.revoked_at.is_none().then(|| grant.id.clone());
    let client = client_of_grant(
        state,
        snapshot,
        presented,
        &grant,
        GrantType::RefreshToken,
        "refresh token",
    )
    .await?;
    check_grant_alive(&grant, now)?;
    check_subject_exists(state, snapshot, &grant, now).await?;
    check_resource(params, &grant)?;
    let scopes = scopes::narrowed(&grant.scopes, params.get("scope"))?;
    check_grant_scopes(snapshot, &client, &grant, &scopes)?;
    let new = secrets::random_token();
    match state
        .store
        .rotate_refresh_token(&old_hash, &secrets::hash(&new), now)
        .await?
    {
        RefreshRotation::Rotated { .. } => {}
        RefreshRotation::Reused { grant_id } => {
            // A spent token again, or a race with another use of it: either way it leaked.
            who.revoked_grant = state
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
    state
        .record_decision(Decision {
            event: "token",
            caller: Some(caller(&grant.grant_type)),
            subject: Some(&grant.subject),
            client_id: Some(&grant.client_id),
            resource: Some(&grant.resource),
            scopes: &scopes,
            outcome: "issued",
            reason: "refresh_token",
        })
        .await;
    Ok(body)
}

/// `client_credentials` ([`issue_direct`]). A request refused after its assertion was verified spends the
/// assertion all the same.
async fn client_credentials(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    params: &Params,
    who: &mut Who,
) -> Result<Value, OAuthError> {
    // No grant exists yet: the resource asked for is the one whose policy the client must pass, and it must be
    // one of ours before the client is looked up.
    let target = authorize_request::resource(&snapshot.config, params)?;
    let resource = target.resource.as_str();
    who.resource = Some(resource.to_owned());
    let (client, claim) = client_auth::verify(
        state,
        snapshot,
        presented,
        &client_auth::assertion_audiences(snapshot, "token"),
        Some(resource),
    )
    .await?;
    let scopes = match client_credentials_scopes(snapshot, &client, target, params) {
        Ok(scopes) => scopes,
        Err(refusal) => {
            if let Some(claim) = claim {
                client_auth::spend(state, claim).await?;
            }
            return Err(refusal);
        }
    };
    let jti = claim.as_ref().map(|c| c.jti.clone());
    let made = Direct {
        client: &client,
        subject: &client.client_id,
        resource,
        grant_type: GrantType::ClientCredentials,
        claim,
    };
    issue_direct(state, snapshot, made, scopes)
        .await?
        .ok_or_else(|| client_auth::replayed(jti.as_deref().unwrap_or_default()))
}

/// A grant made and used at one request, with no code or consent before it (`client_credentials`, an ID-JAG).
pub(crate) struct Direct<'a> {
    pub client: &'a ClientView,
    pub subject: &'a str,
    pub resource: &'a str,
    pub grant_type: GrantType,
    /// The assertion id the request spends, written first in the same transaction.
    pub claim: Option<AssertionClaim>,
}

/// Makes the grant of `made` and its token, and writes both with the spent assertion id and the audit row in one
/// transaction (`store::Issue`), the claim first: `None` when the claim was spent before (a replay writes nothing
/// and gets no token). The grant lives as long as its token: there is no refresh.
pub(crate) async fn issue_direct(
    state: &AppState,
    snapshot: &Snapshot,
    made: Direct<'_>,
    scopes: Vec<String>,
) -> Result<Option<Value>, OAuthError> {
    let now = now_secs();
    let grant = Grant {
        id: secrets::record_id(),
        subject: made.subject.to_owned(),
        client_id: made.client.client_id.clone(),
        resource: made.resource.to_owned(),
        scopes: scopes.clone(),
        grant_type: made.grant_type.as_str().to_owned(),
        created_at: now,
        expires_at: now + snapshot.config.tokens.access_token_secs as i64,
        revoked_at: None,
        revoked_reason: None,
        client_fingerprint: made.client.fingerprint().to_owned(),
        client_auth_method: made.client.auth_method.as_str().to_owned(),
        holder: snapshot
            .config
            .resource(made.resource)
            .map(|r| r.holder.clone())
            .unwrap_or_default(),
    };
    let (issued, record) = sign_access_token(state, snapshot, &grant, &scopes)?;
    let decision = Decision {
        event: "token",
        caller: Some(caller(&grant.grant_type)),
        subject: Some(&grant.subject),
        client_id: Some(&grant.client_id),
        resource: Some(&grant.resource),
        scopes: &scopes,
        outcome: "issued",
        reason: grant_type_label(made.grant_type),
    };
    let issue = Issue {
        claim: made.claim,
        audit: Some(audit::row(&decision)),
        grant: Some(grant.clone()),
        access_token: Some(record),
    };
    if !state.store.record_issue(issue).await? {
        return Ok(None);
    }
    audit::log(&decision);
    Ok(Some(issued.body))
}

/// The scopes a `client_credentials` request gets: those it asks for, or all its client may have at the
/// resource, each allowed to the client; at least one.
fn client_credentials_scopes(
    snapshot: &Snapshot,
    client: &ClientView,
    target: &ResourceConfig,
    params: &Params,
) -> Result<Vec<String>, OAuthError> {
    if !client.allows(GrantType::ClientCredentials) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this client may not use grant_type client_credentials",
        ));
    }
    let resource = target.resource.as_str();
    let mut scopes = match params.get("scope") {
        Some(_) => scopes::requested(
            &snapshot.config.scope_catalogue(),
            &target.scopes,
            resource,
            params.get("scope"),
        )?,
        None => client
            .client_credentials_scopes
            .iter()
            .filter(|s| target.scopes.contains(s))
            .cloned()
            .collect(),
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
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clients_own_grant_is_a_machines() {
        for (grant_type, expected) in [
            ("client_credentials", "machine"),
            ("authorization_code", "person"),
            ("refresh_token", "person"),
            (crate::config::JWT_BEARER_GRANT, "person"),
            ("password", "unknown"),
            ("", "unknown"),
        ] {
            assert_eq!(caller(grant_type), expected, "{grant_type}");
        }
    }
}
