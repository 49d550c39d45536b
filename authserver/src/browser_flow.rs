//! The browser part of the authorization code flow shared by its endpoints (`/authorize`, `/login`, `/consent`,
//! `/upstream/callback`): cookies, redirects back to the client, the pending request between the forms, and the
//! step from a signed-in person to consent or a code. No handler lives here, so handlers never import handlers.
//!
//! Errors before the client and its redirect URI are trusted are shown as a page (redirecting there would make us
//! an open redirector); later ones go back to the client with `error`, `state` and `iss` (RFC 9207).

use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use url::Url;

use crate::audit::Decision;
use crate::clients::ClientView;
use crate::clock::now_secs;
use crate::oauth::{holder, scopes};
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::pages::{self, ConsentView};
use crate::params::Params;
use crate::rate_limits::Endpoint;
use crate::secrets;
use crate::state::{AppState, Snapshot};
use crate::store::{AuthRequest, CodeRecord, Consent, Counted, Grant};
use crate::upstream::{PendingLogin, UpstreamError};

/// Cookie binding the forms to the browser that started the request. On an https issuer it carries the
/// `__Host-` prefix, so no sibling or parent domain can plant a value of its choosing.
pub const CSRF_COOKIE: &str = "mcp_authz_csrf";
/// Cookie of a logged-in browser (prefixed like [`CSRF_COOKIE`]).
pub const SESSION_COOKIE: &str = "mcp_authz_session";
/// How long someone has to log in and consent.
pub const REQUEST_TTL_SECS: i64 = 600;
/// The most authorization requests pending at once (each holds a row until it is completed or expires): past
/// it, new sign-ins wait rather than an anonymous flood filling the disk.
pub const MAX_PENDING_REQUESTS: i64 = 50_000;
/// The most of them from one network (an IPv4 address, an IPv6 /64, as the rate limits count), when the
/// network is the client's own ([`crate::client_address::ClientAddress::is_own_network`]: forwarded by a
/// trusted proxy, or a public peer). Starting a sign-in needs no person, so without it the few networks an
/// attacker holds could fill [`MAX_PENDING_REQUESTS`] and turn away every sign-in on the server for a request's
/// lifetime; with it that takes a hundred networks. A person has one or two pending; this leaves room for
/// hundreds of people behind one NAT who leave sign-ins unfinished within ten minutes. A private peer with no
/// trusted proxy (an ingress without `trustedProxies`) is everyone's network, so it is not counted: one stranger
/// filling its cap would turn every person away for ten minutes.
pub const MAX_PENDING_PER_NETWORK: i64 = 500;

/// Whether one more authorization request may be kept, given those pending. The network's cap comes first: a
/// network at its own cap is told so, and waiting (or finishing a sign-in) is up to it.
pub fn pending_refusal(pending: Counted) -> Option<OAuthError> {
    if pending.from_network >= MAX_PENDING_PER_NETWORK {
        return Some(OAuthError::rate_limited(
            "too many sign-ins are in progress from this address; finish one or try again in a few minutes",
            REQUEST_TTL_SECS as u64,
        ));
    }
    (pending.total >= MAX_PENDING_REQUESTS).then(|| {
        OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "too many sign-ins are in progress; try again in a few minutes",
        )
    })
}

/// A cookie's name as set and read on this issuer: `__Host-` prefixed when cookies are `Secure`.
pub fn cookie_name(snapshot: &Snapshot, base: &str) -> String {
    if secure_cookies(snapshot) {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}

/// The browser's CSRF binding, when it holds one this server could have issued (43 base64url characters).
pub fn csrf_cookie(snapshot: &Snapshot, headers: &HeaderMap) -> Option<String> {
    cookie(headers, &cookie_name(snapshot, CSRF_COOKIE))
        .filter(|c| c.len() == 43 && secrets::valid_pkce_string(c))
}

/// A redirect back to the client with `params`, `state` and `iss`.
pub fn redirect_to_client(
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

pub fn error_redirect(
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

pub fn error_page(e: &OAuthError) -> Response {
    let status = if e.retry_after_secs.is_some() {
        StatusCode::TOO_MANY_REQUESTS
    } else if e.code == ErrorCode::TemporarilyUnavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut page = pages::error_page(status, e.code.as_str(), &e.description);
    if let Some(secs) = e.retry_after_secs {
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    page
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

pub fn set_cookie(
    response: &mut Response,
    snapshot: &Snapshot,
    base: &str,
    value: &str,
    max_age: u64,
) {
    let name = cookie_name(snapshot, base);
    let secure = if secure_cookies(snapshot) {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secure_cookies(snapshot: &Snapshot) -> bool {
    snapshot.config.issuer.starts_with("https://")
}

/// After the request is checked: log in, or consent, or (remembered consent) the code.
pub async fn continue_request(
    state: &AppState,
    snapshot: &Snapshot,
    client: &ClientView,
    mut request: AuthRequest,
    headers: &HeaderMap,
) -> Result<Response, OAuthError> {
    let subject = match cookie(headers, &cookie_name(snapshot, SESSION_COOKIE)) {
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
pub async fn consent_or_code(
    state: &AppState,
    snapshot: &Snapshot,
    client: &ClientView,
    request: &AuthRequest,
    subject: &str,
) -> Result<Response, OAuthError> {
    let catalogue = snapshot.config.scope_catalogue();
    let sensitive = scopes::any_sensitive(&catalogue, &request.scopes);
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
                holder: &request.holder,
            })
            .await?
    {
        return issue_code(
            state,
            snapshot,
            request,
            subject,
            client,
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
    let used =
        crate::providers::connect::used_by(state, snapshot, &request.resource, subject).await?;
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
        scopes: scopes::consent_lines(&catalogue, &request.scopes),
        downstreams: pages::downstreams_of(
            snapshot.config.resource(&request.resource),
            &request.scopes,
        ),
        providers: used
            .iter()
            .map(|(p, connected)| (p.display_name.as_str(), *connected))
            .collect(),
        subject,
    };
    Ok(pages::consent_page(&view))
}

/// Creates the grant and its code, and redirects to the client.
pub async fn issue_code(
    state: &AppState,
    snapshot: &Snapshot,
    request: &AuthRequest,
    subject: &str,
    client: &ClientView,
    reason: &str,
) -> Result<Response, OAuthError> {
    // The client was looked up again for this step: what it registers and may ask for now is what counts, not
    // what it did when the request started (up to the request's lifetime ago).
    if !client.redirect_uri_matches(&request.redirect_uri) {
        return Err(OAuthError::invalid_request(
            "the redirect_uri is no longer registered for this client; start again from the application",
        ));
    }
    client.check_scope_limits(&request.scopes)?;
    let now = now_secs();
    let grant = Grant {
        id: secrets::record_id(),
        subject: subject.to_owned(),
        client_id: request.client_id.clone(),
        resource: request.resource.clone(),
        scopes: request.scopes.clone(),
        grant_type: "authorization_code".into(),
        created_at: now,
        expires_at: now + snapshot.config.tokens.refresh_token_secs as i64,
        revoked_at: None,
        revoked_reason: None,
        client_fingerprint: client.fingerprint().to_owned(),
        client_auth_method: client.auth_method.as_str().to_owned(),
        // The holder the pages named (checked against today's by `pending_request`, or read at `/authorize`).
        holder: request.holder.clone(),
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
    // The client's sign-in budget is spent here, by a person carrying a sign-in through, not at `/authorize`:
    // anyone can start a sign-in for a public client (its redirect URIs are published), so a budget spent by
    // starting one is a budget any stranger can empty for everyone who uses the client.
    if let Some(limiter) = &snapshot.limiter {
        limiter.spend_client(Endpoint::Authorize, &request.client_id, Instant::now());
    }
    state
        .record_decision(Decision {
            event: "authorize",
            caller: None,
            subject: Some(subject),
            client_id: Some(&request.client_id),
            resource: Some(&request.resource),
            scopes: &request.scopes,
            outcome: "granted",
            reason,
        })
        .await;
    Ok(redirect_to_client(
        &request.redirect_uri,
        &[("code", &code)],
        request.state.as_deref(),
        &snapshot.config.issuer,
    ))
}

/// The pending request `id`, while it has not expired and the service it began for still holds its resource:
/// every step of a sign-in (a form, the upstream login's or a provider's callback) goes on through here.
pub async fn pending_request(
    state: &AppState,
    snapshot: &Snapshot,
    id: &str,
) -> Result<AuthRequest, OAuthError> {
    let request = state
        .store
        .auth_request(id, now_secs())
        .await?
        .ok_or_else(|| OAuthError::invalid_request("this sign-in has expired or was already completed; start again from the application"))?;
    holder::sign_in_held(
        &request.holder,
        snapshot
            .config
            .resource(&request.resource)
            .map(|r| r.holder.as_str()),
    )?;
    Ok(request)
}

/// Loads the request a form refers to and checks the CSRF binding (hidden field, cookie and stored value agree).
pub async fn form_request(
    state: &AppState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    params: &Params,
) -> Result<AuthRequest, OAuthError> {
    let id = params.require("request_id")?;
    let csrf = params.require("csrf")?;
    let request = pending_request(state, snapshot, id).await?;
    let cookie = csrf_cookie(snapshot, headers).unwrap_or_default();
    if !secrets::constant_time_eq(csrf, &request.csrf)
        || !secrets::constant_time_eq(&cookie, &request.csrf)
    {
        return Err(OAuthError::invalid_request(
            "the form's CSRF token does not match this browser",
        ));
    }
    Ok(request)
}

pub fn upstream_error(e: UpstreamError) -> OAuthError {
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::AuthServerConfig;

    fn snapshot(issuer: &str) -> Snapshot {
        let config = AuthServerConfig::parse(
            &format!("issuer: {issuer}\nsigning: {{keysDir: /nonexistent}}\nlogin: {{static: {{users: []}}}}\n"),
            std::path::Path::new("c.yaml"),
        )
        .expect("config");
        Snapshot::build(config, None).expect("snapshot")
    }

    #[test]
    fn pending_requests_are_capped_per_network_and_in_all() {
        let at = |from_network, total| Counted {
            total,
            from_network,
        };
        // (pending, expected status or none)
        let cases = [
            (at(0, 0), None),
            (
                at(MAX_PENDING_PER_NETWORK - 1, MAX_PENDING_REQUESTS - 1),
                None,
            ),
            (
                at(MAX_PENDING_PER_NETWORK, MAX_PENDING_PER_NETWORK),
                Some(429),
            ),
            (at(MAX_PENDING_PER_NETWORK, MAX_PENDING_REQUESTS), Some(429)),
            (at(0, MAX_PENDING_REQUESTS), Some(503)),
            (at(3, MAX_PENDING_REQUESTS + 10), Some(503)),
        ];
        for (pending, want) in cases {
            let got = pending_refusal(pending).map(|e| error_page(&e));
            assert_eq!(
                got.as_ref().map(|r| r.status().as_u16()),
                want,
                "{pending:?}"
            );
            if let Some(r) = got.filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS) {
                // Every request pending now has expired by then.
                assert_eq!(r.headers()[header::RETRY_AFTER], "600");
            }
        }
        let network = pending_refusal(at(MAX_PENDING_PER_NETWORK, 0)).unwrap();
        assert_eq!(
            network.description,
            "too many sign-ins are in progress from this address; finish one or try again in a few minutes"
        );
        let all = pending_refusal(at(0, MAX_PENDING_REQUESTS)).unwrap();
        assert_eq!(
            all.description,
            "too many sign-ins are in progress; try again in a few minutes"
        );
    }

    #[test]
    fn cookies_are_host_bound_on_https_and_only_our_own_values_are_read() {
        let https = snapshot("https://auth.example");
        let http = snapshot("http://127.0.0.1:8080");
        assert_eq!(cookie_name(&https, CSRF_COOKIE), "__Host-mcp_authz_csrf");
        assert_eq!(cookie_name(&http, CSRF_COOKIE), "mcp_authz_csrf");
        let mut response = StatusCode::OK.into_response();
        set_cookie(&mut response, &https, SESSION_COOKIE, "v", 60);
        assert_eq!(
            response.headers()[header::SET_COOKIE],
            "__Host-mcp_authz_session=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
        let ours = secrets::random_token();
        // (cookie header, what the https issuer reads as the CSRF binding)
        let cases = [
            (format!("__Host-mcp_authz_csrf={ours}"), Some(ours.clone())),
            // Planted by a sibling domain: it cannot carry the prefix, so it is not read.
            (format!("mcp_authz_csrf={ours}"), None),
            // Not a value this server issues.
            (format!("__Host-mcp_authz_csrf={}", "a".repeat(42)), None),
            (format!("__Host-mcp_authz_csrf={}!", &ours[..42]), None),
        ];
        for (cookie, want) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::COOKIE,
                HeaderValue::from_str(&cookie).expect("header"),
            );
            assert_eq!(csrf_cookie(&https, &headers), want, "{cookie}");
        }
    }
}
