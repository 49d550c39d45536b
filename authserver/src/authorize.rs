//! GET `/authorize`: checks the request in the order that decides where its errors may go
//! ([`crate::oauth::authorize_request`]), keeps it while the person signs in and consents, and continues the
//! browser flow ([`crate::browser_flow`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;

use crate::audit::Who;
use crate::browser_flow::{
    self, CSRF_COOKIE, REQUEST_TTL_SECS, continue_request, error_page, error_redirect,
    pending_refusal,
};
use crate::client_address::network;
use crate::clients;
use crate::clock::now_secs;
use crate::oauth::authorize_request;
use crate::oauth_error::OAuthError;
use crate::params::Params;
use crate::rate_limits::Endpoint;
use crate::secrets;
use crate::server::ClientOrigin;
use crate::state::AppState;
use crate::store::AuthRequest;

/// GET `/authorize`.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let snapshot = state.snapshot();
    let params = match Params::parse(uri.query().unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => return refused_page(&state, &e, None, None).await,
    };
    let client_id = match params.require("client_id") {
        Ok(c) => c.to_owned(),
        Err(e) => return refused_page(&state, &e, None, None).await,
    };
    // Checked before any work; spent only where a person's sign-in ends in a code
    // ([`browser_flow::issue_code`]), never by a request that merely names the client.
    if let Some(limiter) = &snapshot.limiter
        && let Err(refusal) = limiter.check_client(Endpoint::Authorize, &client_id, Instant::now())
    {
        let e = refusal.counted(&state.metrics);
        return refused_page(&state, &e, Some(&client_id), None).await;
    }
    // Until the resource is known, no policy says which documents and redirect URIs are trusted.
    let resource = match authorize_request::resource(&snapshot.config, &params) {
        Ok(r) => r,
        Err(e) => return refused_page(&state, &e, Some(&client_id), None).await,
    };
    let client =
        match clients::lookup(&snapshot, &state, &client_id, Some(&resource.resource)).await {
            Ok(c) => c,
            Err(e) => {
                return refused_page(&state, &e, Some(&client_id), Some(&resource.resource)).await;
            }
        };
    let redirect_uri = match authorize_request::redirect_uri(&client, &params) {
        Ok(r) => r.to_owned(),
        Err(e) => {
            return refused_page(&state, &e, Some(&client_id), Some(&resource.resource)).await;
        }
    };
    let client_state = params.get("state").map(str::to_owned);
    let catalogue = snapshot.config.scope_catalogue();
    let checked = match authorize_request::check(&catalogue, resource, &client, &params) {
        Ok(c) => c,
        Err(e) => {
            let who = Who {
                client_id: Some(client_id.clone()),
                resource: Some(resource.resource.clone()),
                ..Who::default()
            };
            if !client.may_receive_error_redirects(&redirect_uri) {
                return refused_page(&state, &e, Some(&client_id), Some(&resource.resource)).await;
            }
            state.refuse("authorize", &who, &e).await;
            return error_redirect(
                &redirect_uri,
                &e,
                client_state.as_deref(),
                &snapshot.config.issuer,
            );
        }
    };
    let now = now_secs();
    // Counted per network only when the network is the client's own: behind an ingress or a NAT without
    // `trustedProxies` every client is one private peer, and its cap would be everyone's.
    let network = origin
        .filter(|c| c.is_own_network())
        .map(|c| network(c.address).to_string());
    match state
        .store
        .pending_auth_requests(network.as_deref(), now)
        .await
    {
        Ok(pending) => {
            if let Some(e) = pending_refusal(pending) {
                return refused_page(&state, &e, Some(&client_id), Some(&resource.resource)).await;
            }
        }
        Err(e) => {
            let e = OAuthError::from(e);
            return refused_page(&state, &e, Some(&client_id), Some(&resource.resource)).await;
        }
    }
    let csrf = browser_flow::csrf_cookie(&snapshot, &headers).unwrap_or_else(secrets::random_token);
    let request = AuthRequest {
        id: secrets::random_token(),
        client_id: client.client_id.clone(),
        redirect_uri,
        state: client_state,
        resource: resource.resource.clone(),
        scopes: checked.scopes,
        code_challenge: checked.code_challenge,
        subject: None,
        csrf: csrf.clone(),
        upstream_verifier: None,
        expires_at: now + REQUEST_TTL_SECS,
        network,
        holder: resource.holder.clone(),
    };
    let mut response = match continue_request(&state, &snapshot, &client, request, &headers).await {
        Ok(r) => r,
        Err(e) => {
            return refused_page(&state, &e, Some(&client_id), Some(&resource.resource)).await;
        }
    };
    browser_flow::set_cookie(
        &mut response,
        &snapshot,
        CSRF_COOKIE,
        &csrf,
        REQUEST_TTL_SECS as u64,
    );
    state.metrics.outcome("authorize", "ok");
    response
}

/// A request refused before its redirect URI is trusted: counted, audited, and shown as a page.
async fn refused_page(
    state: &AppState,
    e: &OAuthError,
    client_id: Option<&str>,
    resource: Option<&str>,
) -> Response {
    let who = Who {
        client_id: client_id.map(str::to_owned),
        resource: resource.map(str::to_owned),
        ..Who::default()
    };
    state.refuse("authorize", &who, e).await;
    error_page(e)
}
