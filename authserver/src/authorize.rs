//! `/authorize`, the login form and the consent form: the authorization code flow up to the code.
//!
//! Errors before the client and its redirect URI are known are shown as a page (redirecting there would make
//! us an open redirector); every later error goes back to the client with `error`, `state` and `iss` (RFC 9207).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use url::Url;

use crate::audit::{self, Decision};
use crate::clients::{self, ClientView, shorten};
use crate::config::{GrantType, is_scope_token};
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::pages::{self, ConsentView};
use crate::params::Params;
use crate::passwords;
use crate::secrets::{self, valid_pkce_string};
use crate::state::{AppState, Snapshot};
use crate::store::{AuthRequest, CodeRecord, Consent, Grant, sql::now_secs};
use crate::upstream::{PendingLogin, UpstreamError};

/// Cookie binding the forms to the browser that started the request.
pub const CSRF_COOKIE: &str = "mcp_authz_csrf";
/// Cookie of a logged-in browser.
pub const SESSION_COOKIE: &str = "mcp_authz_session";
/// How long someone has to log in and consent.
const REQUEST_TTL_SECS: i64 = 600;

/// A redirect back to the client with `params`, `state` and `iss`.
fn redirect_to_client(
    redirect_uri: &str,
    params: &[(&str, &str)],
    state: Option<&str>,
    issuer: &str,
) -> Response {
    let Ok(mut url) = Url::parse(redirect_uri) else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the redirect_uri is not a URL",
        );
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(state) = state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", issuer);
    }
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_redirect(
    redirect_uri: &str,
    e: &OAuthError,
    state: Option<&str>,
    issuer: &str,
) -> Response {
    redirect_to_client(
        redirect_uri,
        &[
            ("error", e.code.as_str()),
            ("error_description", &e.description),
        ],
        state,
        issuer,
    )
}

fn error_page(e: &OAuthError) -> Response {
    let status = if e.code == ErrorCode::TemporarilyUnavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    pages::error_page(status, e.code.as_str(), &e.description)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(response: &mut Response, name: &str, value: &str, secure: bool, max_age: u64) {
    let secure = if secure { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secure_cookies(snapshot: &Snapshot) -> bool {
    snapshot.config.issuer.starts_with("https://")
}

/// Parses and checks `scope` against the resource's offer and the catalogue. Absent: the resource's non-sensitive
/// scopes. Returned sorted and de-duplicated, so the same set always has the same spelling.
pub fn requested_scopes(
    snapshot: &Snapshot,
    resource: &str,
    scope: Option<&str>,
) -> Result<Vec<String>, OAuthError> {
    let offered = snapshot
        .config
        .resource(resource)
        .map(|r| r.scopes.clone())
        .unwrap_or_default();
    let catalogue = snapshot.config.scope_catalogue();
    let mut scopes: Vec<String> = match scope {
        None => offered
            .iter()
            .filter(|s| catalogue.get(s.as_str()).is_some_and(|d| !d.sensitive))
            .cloned()
            .collect(),
        Some(text) => {
            let mut out = Vec::new();
            for s in text.split(' ').filter(|s| !s.is_empty()) {
                if !is_scope_token(s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        "scope contains a character that is not allowed",
                    ));
                }
                if !offered.iter().any(|o| o == s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!(
                            "scope {:?} is not offered by resource {resource}",
                            shorten(s)
                        ),
                    ));
                }
                out.push(s.to_owned());
            }
            out
        }
    };
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "no scope requested and the resource offers none by default",
        ));
    }
    Ok(scopes)
}

/// GET `/authorize`.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let snapshot = state.snapshot();
    let issuer = snapshot.config.issuer.clone();
    let params = match Params::parse(uri.query().unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => return refused_page(&state, &e, None).await,
    };
    let client_id = match params.require("client_id") {
        Ok(c) => c.to_owned(),
        Err(e) => return refused_page(&state, &e, None).await,
    };
    let resource = params.get("resource");
    let client = match clients::lookup(&snapshot, &state, &client_id, resource).await {
        Ok(c) => c,
        Err(e) => return refused_page(&state, &e, Some(&client_id)).await,
    };
    let Some(redirect_uri) = params.get("redirect_uri") else {
        let e = OAuthError::invalid_request("parameter redirect_uri is missing");
        return refused_page(&state, &e, Some(&client_id)).await;
    };
    if !client.redirect_uri_matches(redirect_uri) {
        let e = OAuthError::invalid_request(format!(
            "redirect_uri {:?} is not registered for this client",
            shorten(redirect_uri)
        ));
        return refused_page(&state, &e, Some(&client_id)).await;
    }
    let redirect_uri = redirect_uri.to_owned();
    let client_state = params.get("state").map(str::to_owned);
    match check_request(&snapshot, &client, &params) {
        Ok((resource, scopes, challenge)) => {
            let csrf = cookie(&headers, CSRF_COOKIE)
                .filter(|c| c.len() == 43)
                .unwrap_or_else(secrets::random_token);
            let request = AuthRequest {
                id: secrets::random_token(),
                client_id: client.client_id.clone(),
                redirect_uri,
                state: client_state,
                resource,
                scopes,
                code_challenge: challenge,
                subject: None,
                csrf: csrf.clone(),
                upstream_verifier: None,
                expires_at: now_secs() + REQUEST_TTL_SECS,
            };
            let mut response =
                match continue_request(&state, &snapshot, &client, request, &headers).await {
                    Ok(r) => r,
                    Err(e) => error_page(&e),
                };
            set_cookie(
                &mut response,
                CSRF_COOKIE,
                &csrf,
                secure_cookies(&snapshot),
                REQUEST_TTL_SECS as u64,
            );
            state.metrics.outcome("authorize", "ok");
            response
        }
        Err(e) => {
            state.metrics.outcome("authorize", e.metric_label());
            audit::record(
                state.store.as_ref(),
                Decision {
                    event: "authorize",
                    client_id: Some(&client_id),
                    resource: params.get("resource"),
                    outcome: "refused",
                    reason: &e.to_string(),
                    ..Default::default()
                },
            )
            .await;
            error_redirect(&redirect_uri, &e, client_state.as_deref(), &issuer)
        }
    }
}

async fn refused_page(state: &AppState, e: &OAuthError, client_id: Option<&str>) -> Response {
    state.metrics.outcome("authorize", e.metric_label());
    audit::record(
        state.store.as_ref(),
        Decision {
            event: "authorize",
            client_id,
            outcome: "refused",
            reason: &e.to_string(),
            ..Default::default()
        },
    )
    .await;
    error_page(e)
}

/// The checks whose errors may be redirected: response type, PKCE, resource, scopes, grant type.
fn check_request(
    snapshot: &Snapshot,
    client: &ClientView,
    params: &Params,
) -> Result<(String, Vec<String>, String), OAuthError> {
    match params.get("response_type") {
        Some("code") => {}
        Some(other) => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedResponseType,
                format!(
                    "response_type {:?} is not supported; use code",
                    shorten(other)
                ),
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                "parameter response_type is missing",
            ));
        }
    }
    if !client.allows(GrantType::AuthorizationCode) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this client may not use the authorization code grant",
        ));
    }
    let challenge = params.get("code_challenge").ok_or_else(|| {
        OAuthError::invalid_request("code_challenge is required (PKCE with S256)")
    })?;
    match params.get("code_challenge_method") {
        Some("S256") => {}
        Some(m) => {
            return Err(OAuthError::invalid_request(format!(
                "code_challenge_method {:?} is not supported; only S256",
                shorten(m)
            )));
        }
        None => {
            return Err(OAuthError::invalid_request(
                "code_challenge_method is required and must be S256",
            ));
        }
    }
    if challenge.len() != 43 || !valid_pkce_string(challenge) {
        return Err(OAuthError::invalid_request(
            "code_challenge is not a base64url SHA-256 value (43 characters)",
        ));
    }
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
    let scopes = requested_scopes(snapshot, resource, params.get("scope"))?;
    client.check_scope_limits(&scopes)?;
    Ok((resource.to_owned(), scopes, challenge.to_owned()))
}

/// After the request is checked: log in, or consent, or (remembered consent) the code.
async fn continue_request(
    state: &AppState,
    snapshot: &Snapshot,
    client: &ClientView,
    mut request: AuthRequest,
    headers: &HeaderMap,
) -> Result<Response, OAuthError> {
    let subject = match cookie(headers, SESSION_COOKIE) {
        Some(session) => {
            state
                .store
                .session_subject(&secrets::hash(&session), now_secs())
                .await?
        }
        None => None,
    };
    match subject {
        Some(subject) => {
            request.subject = Some(subject.clone());
            state.store.put_auth_request(&request).await?;
            consent_or_code(state, snapshot, client, &request, &subject).await
        }
        None if snapshot.upstream.is_some() => {
            let upstream = snapshot
                .upstream
                .clone()
                .ok_or_else(OAuthError::unavailable)?;
            let pending = PendingLogin::new();
            request.upstream_verifier = Some(pending.encode());
            state.store.put_auth_request(&request).await?;
            let callback = format!("{}/upstream/callback", snapshot.config.issuer);
            let url = upstream
                .authorization_url(&callback, &request.id, &pending)
                .await
                .map_err(upstream_error)?;
            let mut response = StatusCode::SEE_OTHER.into_response();
            let location = HeaderValue::from_str(&url)
                .map_err(|_| OAuthError::new(ErrorCode::ServerError, "bad upstream URL"))?;
            response.headers_mut().insert(header::LOCATION, location);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        None => {
            state.store.put_auth_request(&request).await?;
            Ok(pages::login_page(
                &snapshot.config.issuer,
                &request.id,
                &request.csrf,
                &client.name,
                None,
            ))
        }
    }
}

/// Shows the consent form, unless this exact consent is remembered and nothing in it is sensitive.
async fn consent_or_code(
    state: &AppState,
    snapshot: &Snapshot,
    client: &ClientView,
    request: &AuthRequest,
    subject: &str,
) -> Result<Response, OAuthError> {
    let catalogue = snapshot.config.scope_catalogue();
    let sensitive = request
        .scopes
        .iter()
        .any(|s| catalogue.get(s.as_str()).is_some_and(|d| d.sensitive));
    let scopes_key = request.scopes.join(" ");
    if !sensitive
        && state
            .store
            .has_consent(&Consent {
                subject,
                client_id: &client.client_id,
                resource: &request.resource,
                scopes: &scopes_key,
                client_fingerprint: client.fingerprint(),
            })
            .await?
    {
        return issue_code(
            state,
            snapshot,
            request,
            subject,
            client.fingerprint(),
            "consent remembered",
        )
        .await;
    }
    let resource_name = snapshot
        .config
        .resource(&request.resource)
        .map(|r| r.display_name.as_str())
        .unwrap_or("");
    let redirect_host = Url::parse(&request.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let view = ConsentView {
        base: &snapshot.config.issuer,
        request_id: &request.id,
        csrf: &request.csrf,
        client_name: &client.name,
        client_id_host: &client.id_host,
        redirect_host: &redirect_host,
        all_loopback: client.all_redirects_loopback(),
        resource_name,
        resource: &request.resource,
        scopes: request
            .scopes
            .iter()
            .map(|s| {
                let d = catalogue.get(s.as_str());
                (
                    s.as_str(),
                    d.map(|d| d.description.as_str()).unwrap_or(s.as_str()),
                    d.is_some_and(|d| d.sensitive),
                )
            })
            .collect(),
        subject,
    };
    Ok(pages::consent_page(&view))
}

/// Creates the grant and its code, and redirects to the client.
async fn issue_code(
    state: &AppState,
    snapshot: &Snapshot,
    request: &AuthRequest,
    subject: &str,
    fingerprint: &str,
    reason: &str,
) -> Result<Response, OAuthError> {
    let now = now_secs();
    let grant = Grant {
        id: secrets::random_token(),
        subject: subject.to_owned(),
        client_id: request.client_id.clone(),
        resource: request.resource.clone(),
        scopes: request.scopes.clone(),
        grant_type: "authorization_code".into(),
        created_at: now,
        expires_at: now + snapshot.config.tokens.refresh_token_secs as i64,
        revoked_at: None,
        revoked_reason: None,
        client_fingerprint: fingerprint.to_owned(),
    };
    state.store.put_grant(&grant).await?;
    let code = secrets::random_token();
    state
        .store
        .put_code(&CodeRecord {
            code_hash: secrets::hash(&code),
            grant_id: grant.id.clone(),
            client_id: request.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            code_challenge: request.code_challenge.clone(),
            expires_at: now + snapshot.config.tokens.authorization_code_secs as i64,
        })
        .await?;
    state.store.delete_auth_request(&request.id).await?;
    audit::record(
        state.store.as_ref(),
        Decision {
            event: "authorize",
            subject: Some(subject),
            client_id: Some(&request.client_id),
            resource: Some(&request.resource),
            scopes: &request.scopes,
            outcome: "granted",
            reason,
        },
    )
    .await;
    Ok(redirect_to_client(
        &request.redirect_uri,
        &[("code", &code)],
        request.state.as_deref(),
        &snapshot.config.issuer,
    ))
}

/// Loads the request a form refers to and checks the CSRF binding (hidden field, cookie and stored value agree).
async fn form_request(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<AuthRequest, OAuthError> {
    let id = params.require("request_id")?;
    let csrf = params.require("csrf")?;
    let request = state
        .store
        .auth_request(id, now_secs())
        .await?
        .ok_or_else(|| OAuthError::invalid_request("this sign-in has expired or was already completed; start again from the application"))?;
    let cookie = cookie(headers, CSRF_COOKIE).unwrap_or_default();
    if !secrets::constant_time_eq(csrf, &request.csrf)
        || !secrets::constant_time_eq(&cookie, &request.csrf)
    {
        return Err(OAuthError::invalid_request(
            "the form's CSRF token does not match this browser",
        ));
    }
    Ok(request)
}

/// A sign-in refused before a session exists: counted, audited, and the login page again.
struct LoginRefused<'a> {
    metric: &'static str,
    audit_reason: &'a str,
    message: &'a str,
    /// Overrides the login page's own status (401 for a page with a message).
    status: Option<StatusCode>,
}

impl LoginRefused<'_> {
    async fn respond(
        &self,
        state: &AppState,
        snapshot: &Snapshot,
        request: &AuthRequest,
        client: &ClientView,
        username: &str,
    ) -> Response {
        state.metrics.outcome("login", self.metric);
        audit::record(
            state.store.as_ref(),
            Decision {
                event: "login",
                subject: Some(username),
                client_id: Some(&request.client_id),
                resource: Some(&request.resource),
                outcome: "refused",
                reason: self.audit_reason,
                ..Default::default()
            },
        )
        .await;
        let mut page = pages::login_page(
            &snapshot.config.issuer,
            &request.id,
            &request.csrf,
            &client.name,
            Some(self.message),
        );
        if let Some(status) = self.status {
            *page.status_mut() = status;
        }
        page
    }
}

/// POST `/login`.
pub async fn login(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let snapshot = state.snapshot();
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        let mut request = form_request(&state, &headers, &params).await?;
        let client = clients::lookup(
            &snapshot,
            &state,
            &request.client_id,
            Some(&request.resource),
        )
        .await?;
        let username = params.require("username")?.to_owned();
        let password = params.require("password")?.to_owned();
        let permit = match state
            .login_guard
            .admit(state.store.as_ref(), &username, now_secs())
            .await?
        {
            Ok(permit) => permit,
            Err(refusal) => {
                let refused = LoginRefused {
                    metric: refusal.metric_label(),
                    audit_reason: refusal.metric_label(),
                    message: &refusal.to_string(),
                    status: Some(StatusCode::TOO_MANY_REQUESTS),
                };
                return Ok(refused
                    .respond(&state, &snapshot, &request, &client, &username)
                    .await);
            }
        };
        let user = snapshot.users.get(&username).cloned();
        let hash = user.as_ref().map_or(passwords::DECOY_HASH.to_owned(), |u| {
            u.password_hash.clone()
        });
        let ok = tokio::task::spawn_blocking(move || passwords::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        drop(permit);
        let Some(user) = user.filter(|_| ok) else {
            if let Err(e) = state
                .login_guard
                .failed(state.store.as_ref(), &username, now_secs())
                .await
            {
                tracing::warn!(error = %e, "a failed sign-in could not be counted");
            }
            let refused = LoginRefused {
                metric: "wrong_credentials",
                audit_reason: "wrong username or password",
                message: "Wrong username or password.",
                status: None,
            };
            return Ok(refused
                .respond(&state, &snapshot, &request, &client, &username)
                .await);
        };
        state
            .login_guard
            .succeeded(state.store.as_ref(), &username)
            .await?;
        let subject = user.subject.clone().unwrap_or(user.username.clone());
        let session = secrets::random_token();
        let session_secs = snapshot.config.tokens.session_secs;
        state
            .store
            .put_session(
                &secrets::hash(&session),
                &subject,
                now_secs() + session_secs as i64,
            )
            .await?;
        request.subject = Some(subject.clone());
        state.store.put_auth_request(&request).await?;
        state.metrics.outcome("login", "ok");
        let mut response = consent_or_code(&state, &snapshot, &client, &request, &subject).await?;
        set_cookie(
            &mut response,
            SESSION_COOKIE,
            &session,
            secure_cookies(&snapshot),
            session_secs,
        );
        Ok::<_, OAuthError>(response)
    }
    .await;
    result.unwrap_or_else(|e| {
        state.metrics.outcome("login", e.metric_label());
        error_page(&e)
    })
}

/// POST `/consent`.
pub async fn consent(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let snapshot = state.snapshot();
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        let request = form_request(&state, &headers, &params).await?;
        let subject = request
            .subject
            .clone()
            .ok_or_else(|| OAuthError::invalid_request("sign in before consenting"))?;
        // Looked up again: the consent is for the document version the person sees now.
        let client = clients::lookup(
            &snapshot,
            &state,
            &request.client_id,
            Some(&request.resource),
        )
        .await?;
        match params.require("decision")? {
            "approve" => {
                let catalogue = snapshot.config.scope_catalogue();
                let sensitive = request
                    .scopes
                    .iter()
                    .any(|s| catalogue.get(s.as_str()).is_some_and(|d| d.sensitive));
                if !sensitive {
                    state
                        .store
                        .put_consent(
                            &Consent {
                                subject: &subject,
                                client_id: &request.client_id,
                                resource: &request.resource,
                                scopes: &request.scopes.join(" "),
                                client_fingerprint: client.fingerprint(),
                            },
                            now_secs(),
                        )
                        .await?;
                }
                state.metrics.outcome("consent", "approved");
                issue_code(
                    &state,
                    &snapshot,
                    &request,
                    &subject,
                    client.fingerprint(),
                    "consent given",
                )
                .await
            }
            "deny" => {
                state.store.delete_auth_request(&request.id).await?;
                state.metrics.outcome("consent", "denied");
                audit::record(
                    state.store.as_ref(),
                    Decision {
                        event: "authorize",
                        subject: Some(&subject),
                        client_id: Some(&request.client_id),
                        resource: Some(&request.resource),
                        scopes: &request.scopes,
                        outcome: "denied",
                        reason: "the user denied consent",
                    },
                )
                .await;
                let e = OAuthError::new(ErrorCode::AccessDenied, "the user denied the request");
                Ok(error_redirect(
                    &request.redirect_uri,
                    &e,
                    request.state.as_deref(),
                    &snapshot.config.issuer,
                ))
            }
            other => Err(OAuthError::invalid_request(format!(
                "decision {:?} must be approve or deny",
                shorten(other)
            ))),
        }
    }
    .await;
    result.unwrap_or_else(|e| {
        state.metrics.outcome("consent", e.metric_label());
        error_page(&e)
    })
}

fn upstream_error(e: UpstreamError) -> OAuthError {
    tracing::warn!(error = %e, "upstream login failed");
    let code = match e {
        UpstreamError::Unreachable(_) | UpstreamError::BadResponse(_) => {
            ErrorCode::TemporarilyUnavailable
        }
        UpstreamError::Refused(_) | UpstreamError::BadIdToken(_) => ErrorCode::AccessDenied,
        UpstreamError::Config(_) => ErrorCode::ServerError,
    };
    OAuthError::new(code, e.to_string())
}

/// GET `/upstream/callback`: the provider sends the browser back here with its code (or an error).
pub async fn upstream_callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let snapshot = state.snapshot();
    let result = async {
        let params = Params::parse(uri.query().unwrap_or_default())?;
        let id = params.require("state")?;
        let mut request = state
            .store
            .auth_request(id, now_secs())
            .await?
            .ok_or_else(|| OAuthError::invalid_request("this sign-in has expired or was already completed; start again from the application"))?;
        let cookie = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
        if !secrets::constant_time_eq(&cookie, &request.csrf) {
            return Err(OAuthError::invalid_request("the sign-in did not start in this browser"));
        }
        let pending = request
            .upstream_verifier
            .as_deref()
            .and_then(PendingLogin::decode)
            .ok_or_else(|| OAuthError::invalid_request("this sign-in did not go to the upstream provider"))?;
        // The pending login is single use: a replayed callback finds nothing to finish.
        request.upstream_verifier = None;
        state.store.put_auth_request(&request).await?;
        if let Some(error) = params.get("error") {
            state.store.delete_auth_request(&request.id).await?;
            audit::record(
                state.store.as_ref(),
                Decision {
                    event: "login",
                    client_id: Some(&request.client_id),
                    resource: Some(&request.resource),
                    outcome: "refused",
                    reason: &format!("upstream provider: {}", shorten(error)),
                    ..Default::default()
                },
            )
            .await;
            let e = OAuthError::new(ErrorCode::AccessDenied, format!("the upstream sign-in failed: {}", shorten(error)));
            return Ok(error_redirect(&request.redirect_uri, &e, request.state.as_deref(), &snapshot.config.issuer));
        }
        let code = params.require("code")?;
        let upstream = snapshot
            .upstream
            .clone()
            .ok_or_else(|| OAuthError::invalid_request("upstream login is not configured"))?;
        let callback = format!("{}/upstream/callback", snapshot.config.issuer);
        let subject = match upstream.finish(code, &callback, &pending).await {
            Ok(s) => s,
            Err(e) => {
                state.metrics.outcome("login", e.metric_label());
                audit::record(
                    state.store.as_ref(),
                    Decision {
                        event: "login",
                        client_id: Some(&request.client_id),
                        resource: Some(&request.resource),
                        outcome: "refused",
                        reason: &e.to_string(),
                        ..Default::default()
                    },
                )
                .await;
                return Err(upstream_error(e));
            }
        };
        let client = clients::lookup(&snapshot, &state, &request.client_id, Some(&request.resource)).await?;
        let session = secrets::random_token();
        let session_secs = snapshot.config.tokens.session_secs;
        state.store.put_session(&secrets::hash(&session), &subject, now_secs() + session_secs as i64).await?;
        request.subject = Some(subject.clone());
        state.store.put_auth_request(&request).await?;
        state.metrics.outcome("login", "ok");
        let mut response = consent_or_code(&state, &snapshot, &client, &request, &subject).await?;
        set_cookie(&mut response, SESSION_COOKIE, &session, secure_cookies(&snapshot), session_secs);
        Ok::<_, OAuthError>(response)
    }
    .await;
    result.unwrap_or_else(|e| {
        state.metrics.outcome("login", e.metric_label());
        error_page(&e)
    })
}
