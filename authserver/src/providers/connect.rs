//! The browser side of connecting a provider: `GET /connect/{id}` (from an MCP client's URL elicitation, or
//! chained from the consent page), `GET /connect/{id}/callback` (the provider sends the browser back), and
//! `GET`/`POST /connect/{id}/disconnect` (the person takes it back: the stored tokens are deleted, and both the
//! refresh and the access token revoked at the provider when it has a revocation endpoint, retried until it
//! answers).
//!
//! The person is whoever the browser's session says: the connection is stored for that subject and no other, so
//! a connect link opened by someone else connects their own account to themselves. The flow is bound to the
//! browser by a cookie of its provider (the callback must come back to the browser that started it), the `state`
//! is single use and spent only by that browser, each provider has a callback path of its own (a code cannot be replayed at another provider's
//! callback: RFC 9700 §4.4 mix-up), and an `iss` in the callback must name the provider (RFC 9207).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::audit::{Decision, Who};
use crate::browser_flow::{self, SESSION_COOKIE, error_page, issue_code};
use crate::clients::{self, shorten};
use crate::clock::now_secs;
use crate::config::ProviderConfig;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::pages;
use crate::params::Params;
use crate::providers::client::ProviderError;
use crate::providers::tokens::sealed_connection;
use crate::secrets;
use crate::state::{AppState, Snapshot};
use crate::store::ConnectRequest;

/// Cookie binding connect flows to the browser that started them: one per provider (`<this>_<provider id>`),
/// so connecting one provider does not undo a pending connect of another.
pub const CONNECT_COOKIE: &str = "mcp_authz_connect";
/// Cookie binding a disconnect form to the browser that asked for it, one per provider as well: a form must not
/// undo a pending connect.
pub const DISCONNECT_COOKIE: &str = "mcp_authz_disconnect";
/// How many pending connects of one provider a browser keeps bound (two tabs, a retry): the newest. With one
/// cookie per configured provider, a browser never holds more than providers × this many bindings.
pub const BOUND_PER_PROVIDER: usize = 3;
/// How long the person has at the provider.
pub const CONNECT_TTL_SECS: i64 = 600;
/// How long a disconnect waits for the provider to take its revocation before answering (the queue holds it).
const TELL_AT_ONCE: std::time::Duration = std::time::Duration::from_secs(3);

/// The name of `provider`'s cookie of kind `base` (provider ids are lowercase letters, digits and '-').
fn provider_cookie(base: &str, provider: &str) -> String {
    format!("{base}_{provider}")
}

/// The connect bindings `headers` hold for `provider`, newest first: only values this server could have set.
fn bindings(snapshot: &Snapshot, headers: &HeaderMap, provider: &str) -> Vec<String> {
    let name = browser_flow::cookie_name(snapshot, &provider_cookie(CONNECT_COOKIE, provider));
    browser_flow::cookie(headers, &name)
        .unwrap_or_default()
        .split('.')
        .filter(|b| b.len() == 43 && secrets::valid_pkce_string(b))
        .take(BOUND_PER_PROVIDER)
        .map(str::to_owned)
        .collect()
}

/// Whether the browser's cookie holds `csrf` among its bindings for `provider`.
fn bound(snapshot: &Snapshot, headers: &HeaderMap, provider: &str, csrf: &str) -> bool {
    bindings(snapshot, headers, provider)
        .iter()
        .fold(false, |found, b| secrets::constant_time_eq(b, csrf) | found)
}

/// Where the provider sends the browser back: one path per provider.
pub fn callback_url(snapshot: &Snapshot, provider: &str) -> String {
    format!("{}/connect/{provider}/callback", snapshot.config.issuer)
}

/// Every provider `resource` uses, in the declaration's order, with whether `subject` has connected it.
pub async fn used_by<'a>(
    state: &AppState,
    snapshot: &'a Snapshot,
    resource: &str,
    subject: &str,
) -> Result<Vec<(&'a ProviderConfig, bool)>, OAuthError> {
    let mut used = Vec::new();
    let declared = snapshot
        .config
        .resource(resource)
        .map(|r| r.providers.as_slice())
        .unwrap_or_default();
    for id in declared {
        if let Some(p) = snapshot.config.provider(id) {
            // A v1 row is no connection: the first exchange deletes it and asks the person to connect again.
            let connected = state
                .store
                .connection(subject, id)
                .await?
                .is_some_and(|c| crate::providers::seal::is_current(&c.key_id));
            used.push((p, connected));
        }
    }
    Ok(used)
}

/// The providers `resource` uses that `subject` has not connected, in the declaration's order.
pub async fn missing<'a>(
    state: &AppState,
    snapshot: &'a Snapshot,
    resource: &str,
    subject: &str,
) -> Result<Vec<&'a ProviderConfig>, OAuthError> {
    Ok(used_by(state, snapshot, resource, subject)
        .await?
        .into_iter()
        .filter_map(|(p, connected)| (!connected).then_some(p))
        .collect())
}

/// The refusal of a provider feature while the provider-token keys cannot be used.
pub fn keys_unusable() -> OAuthError {
    OAuthError::new(
        ErrorCode::TemporarilyUnavailable,
        "provider connections are unavailable: the provider-token keys of this server cannot be used; retry later",
    )
}

/// Stores the pending flow and sends the browser to the provider.
pub async fn begin(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    subject: &str,
    provider: &str,
    auth_request: Option<String>,
) -> Result<Response, OAuthError> {
    let client = snapshot
        .providers
        .get(provider)
        .ok_or_else(|| OAuthError::invalid_request("no such provider"))?;
    if snapshot.sealer.is_none() {
        return Err(keys_unusable());
    }
    let pending = ConnectRequest {
        id: secrets::random_token(),
        subject: subject.to_owned(),
        provider: provider.to_owned(),
        verifier: secrets::random_token(),
        csrf: secrets::random_token(),
        auth_request,
        expires_at: now_secs() + CONNECT_TTL_SECS,
    };
    let url = client
        .authorization_url(
            &callback_url(snapshot, provider),
            &pending.id,
            &pending.verifier,
        )
        .await
        .map_err(|e| provider_failure(&client.config, &e))?;
    state.store.put_connect_request(&pending).await?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    let location = HeaderValue::from_str(&url).map_err(|_| {
        OAuthError::new(
            ErrorCode::ServerError,
            "the provider's URL is not a header value",
        )
    })?;
    response.headers_mut().insert(header::LOCATION, location);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The new binding first, and the newest others after it: a flow in another tab stays bound.
    let mut kept = vec![pending.csrf.clone()];
    kept.extend(bindings(snapshot, headers, provider));
    kept.truncate(BOUND_PER_PROVIDER);
    browser_flow::set_cookie(
        &mut response,
        snapshot,
        &provider_cookie(CONNECT_COOKIE, provider),
        &kept.join("."),
        CONNECT_TTL_SECS as u64,
    );
    Ok(response)
}

/// What a provider failure tells the person.
fn provider_failure(provider: &ProviderConfig, e: &ProviderError) -> OAuthError {
    tracing::warn!(error = %e, provider = %provider.id, "connecting a provider failed");
    let code = match e {
        ProviderError::Unreachable | ProviderError::Garbage(_) | ProviderError::Busy => {
            ErrorCode::TemporarilyUnavailable
        }
        ProviderError::Config(_) => ErrorCode::ServerError,
        ProviderError::Revoked | ProviderError::Refused(_) => ErrorCode::AccessDenied,
    };
    OAuthError::new(code, format!("connecting {}: {e}", provider.display_name))
}

/// The subject of the browser's session, if it has a live one.
async fn session_subject(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
) -> Result<Option<String>, OAuthError> {
    match browser_flow::cookie(
        headers,
        &browser_flow::cookie_name(snapshot, SESSION_COOKIE),
    ) {
        Some(session) => Ok(state
            .store
            .session_subject(&secrets::hash(&session), now_secs())
            .await?),
        None => Ok(None),
    }
}

/// What is known of a connect page's requester at first: the provider named in the path.
fn who_for(provider: &str) -> Who {
    Who {
        resource: Some(shorten(provider)),
        ..Who::default()
    }
}

/// A connect page's answer: a refusal is counted and audited once, and shown as a page (never a redirect).
async fn answer(state: &AppState, who: &Who, result: Result<Response, OAuthError>) -> Response {
    match result {
        Ok(response) => response,
        Err(e) => {
            state.refuse("connect", who, &e).await;
            error_page(&e)
        }
    }
}

/// GET `/connect/{provider}`.
pub async fn start(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = who_for(&provider);
    let result = async {
        let subject = match person_and_provider(&state, &snapshot, &headers, &provider).await? {
            Ok(subject) => subject,
            Err(page) => return Ok(page),
        };
        who.subject = Some(subject.clone());
        begin(&state, &snapshot, &headers, &subject, &provider, None).await
    }
    .await;
    answer(&state, &who, result).await
}

/// GET `/connect/{provider}/callback`.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = who_for(&provider);
    let result = async {
        let params = Params::parse(uri.query().unwrap_or_default())?;
        let id = params.require("state")?;
        let gone = || {
            OAuthError::invalid_request(
                "this connection has expired or was already completed; start again",
            )
        };
        // Read, checked against this browser's binding, and only then spent: a `state` is no secret (it travels
        // in URLs, and so into referrers and logs), and whoever learns one must not be able to end the person's
        // pending connect with it.
        // Nothing is spent, nor anyone named in the audit record, until the browser, its person and the path all
        // match: a stranger's browser, another person signed in since, or another provider's callback path.
        let pending = state
            .store
            .connect_request(id, now_secs())
            .await?
            .ok_or_else(gone)?;
        if pending.provider != provider {
            return Err(OAuthError::invalid_request(
                "this callback belongs to another provider's connection",
            ));
        }
        if !bound(&snapshot, &headers, &provider, &pending.csrf) {
            return Err(OAuthError::invalid_request(
                "the connection did not start in this browser",
            ));
        }
        // A browser shared between people: whoever started connecting must still be the one signed in, or their
        // provider account would be stored as someone else's connection.
        if session_subject(&state, &snapshot, &headers).await?.as_deref()
            != Some(pending.subject.as_str())
        {
            return Err(OAuthError::invalid_request(
                "the person signed in to this browser is not the one who started connecting; start again",
            ));
        }
        who.subject = Some(pending.subject.clone());
        let pending = state
            .store
            .take_connect_request(id, now_secs())
            .await?
            .ok_or_else(gone)?;
        let client = snapshot
            .providers
            .get(&provider)
            .cloned()
            .ok_or_else(|| OAuthError::invalid_request("this server has no such provider"))?;
        let outcome = async {
            if let Some(error) = params.get("error") {
                return Err(OAuthError::new(
                    ErrorCode::AccessDenied,
                    format!(
                        "{} answered {}",
                        client.config.display_name,
                        shorten(error)
                    ),
                ));
            }
            if let (Some(iss), Some(issuer)) = (params.get("iss"), client.issuer().await)
                && iss != issuer
            {
                return Err(OAuthError::invalid_request(
                    "the callback's iss is not this provider's issuer",
                ));
            }
            // Before the code is redeemed: tokens the provider gave and nothing could store would be nobody's.
            let sealer = snapshot.sealer.as_ref().ok_or_else(keys_unusable)?;
            let tokens = client
                .redeem(
                    params.require("code")?,
                    &callback_url(&snapshot, &provider),
                    &pending.verifier,
                )
                .await
                .map_err(|e| provider_failure(&client.config, &e))?;
            let now = now_secs();
            let connection =
                sealed_connection(sealer, &pending.subject, &provider, &tokens, None, now, now);
            state.store.put_connection(&connection).await?;
            state
                .record_decision(Decision {
                    event: "connect",
                    subject: Some(&pending.subject),
                    resource: Some(&provider),
                    outcome: "granted",
                    reason: "provider connected",
                    ..Default::default()
                })
                .await;
            Ok(())
        }
        .await;
        let Some(request_id) = pending.auth_request else {
            outcome?;
            return Ok(pages::message_page(
                StatusCode::OK,
                "Connected",
                &format!(
                    "Your {} account is connected. You can close this page and return to your application.",
                    client.config.display_name
                ),
            ));
        };
        // Connecting is not a condition of the consent given: a refused or failed connection is recorded, the
        // client gets its code, and a tool that needs the provider asks the person again.
        let connected = match outcome {
            Ok(()) => true,
            Err(e) => {
                state.refuse("connect", &who, &e).await;
                false
            }
        };
        let request = crate::browser_flow::pending_request(&state, &snapshot, &request_id)
            .await
            .and_then(|r| {
                if r.subject.as_deref() == Some(pending.subject.as_str()) {
                    Ok(r)
                } else {
                    Err(OAuthError::invalid_request(
                        "this sign-in has expired or was already completed; start again from the application",
                    ))
                }
            })?;
        if connected
            && let Some(next) = missing(&state, &snapshot, &request.resource, &pending.subject)
                .await?
                .first()
        {
            return begin(
                &state,
                &snapshot,
                &headers,
                &pending.subject,
                &next.id,
                Some(request_id),
            )
            .await;
        }
        let client =
            clients::lookup(&snapshot, &state, &request.client_id, Some(&request.resource)).await?;
        issue_code(
            &state,
            &snapshot,
            &request,
            &pending.subject,
            &client,
            "consent given",
        )
        .await
    }
    .await;
    answer(&state, &who, result).await
}

/// The person signed in to this browser, and the provider named in the path; a refusal page otherwise.
async fn person_and_provider(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    provider: &str,
) -> Result<Result<String, Response>, OAuthError> {
    if snapshot.config.provider(provider).is_none() {
        state.metrics.outcome("connect", "unknown_provider");
        return Ok(Err(pages::error_page(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "this server has no such provider",
        )));
    }
    match session_subject(state, snapshot, headers).await? {
        Some(subject) => Ok(Ok(subject)),
        None => {
            state.metrics.outcome("connect", "login_required");
            Ok(Err(pages::error_page(
                StatusCode::UNAUTHORIZED,
                "login_required",
                "sign in to this server through your application first (your sign-in has ended), then open the link again",
            )))
        }
    }
}

/// GET `/connect/{provider}/disconnect`: the question, with a form bound to this browser.
pub async fn disconnect_form(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
) -> Response {
    let snapshot = state.snapshot();
    let who = who_for(&provider);
    let result = async {
        if let Err(page) = person_and_provider(&state, &snapshot, &headers, &provider).await? {
            return Ok(page);
        }
        let name = snapshot
            .config
            .provider(&provider)
            .map_or("", |p| p.display_name.as_str());
        let csrf = secrets::random_token();
        let mut page = pages::disconnect_page(&snapshot.config.issuer, &provider, name, &csrf);
        browser_flow::set_cookie(
            &mut page,
            &snapshot,
            &provider_cookie(DISCONNECT_COOKIE, &provider),
            &csrf,
            CONNECT_TTL_SECS as u64,
        );
        Ok(page)
    }
    .await;
    answer(&state, &who, result).await
}

/// POST `/connect/{provider}/disconnect`.
pub async fn disconnect(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = who_for(&provider);
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        let subject = match person_and_provider(&state, &snapshot, &headers, &provider).await? {
            Ok(subject) => subject,
            Err(page) => return Ok(page),
        };
        who.subject = Some(subject.clone());
        let cookie = browser_flow::cookie(
            &headers,
            &browser_flow::cookie_name(&snapshot, &provider_cookie(DISCONNECT_COOKIE, &provider)),
        )
        .unwrap_or_default();
        let csrf = params.require("csrf")?;
        if cookie.is_empty() || !secrets::constant_time_eq(csrf, &cookie) {
            return Err(OAuthError::invalid_request(
                "the form's CSRF token does not match this browser",
            ));
        }
        // The tokens are queued for revocation in the transaction that deletes them, and the decision recorded at
        // once; then the provider is told, for a few seconds at most: what it does not take by then is tried
        // again by the maintenance loop, and a slow provider neither holds the page nor loses the record.
        let now = now_secs();
        let removed = state
            .store
            .delete_connection(&subject, &provider, now)
            .await?;
        state
            .record_decision(Decision {
                event: "connect",
                subject: Some(&subject),
                resource: Some(&provider),
                outcome: "revoked",
                reason: if removed.is_some() {
                    "provider disconnected"
                } else {
                    "provider was not connected"
                },
                ..Default::default()
            })
            .await;
        if let Some(connection) = &removed {
            let queued = connection.queued(now);
            let telling = crate::providers::revoke(&state, &queued);
            if tokio::time::timeout(TELL_AT_ONCE, telling).await.is_err() {
                tracing::warn!(provider = %provider, "the provider did not take a disconnect's revocation at once; it stays queued");
            }
        }
        let client = snapshot.providers.get(&provider).cloned();
        let name = client.map_or_else(String::new, |c| c.config.display_name.clone());
        Ok(pages::message_page(
            StatusCode::OK,
            "Disconnected",
            &format!("Your {name} account is no longer connected."),
        ))
    }
    .await;
    answer(&state, &who, result).await
}
