//! POST `/login` (static users, password checked under [`crate::login_guard`]) and GET `/upstream/callback`
//! (the upstream OpenID provider sends the browser back): both end with a session and the step to consent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;

use crate::audit::{Decision, Who};
use crate::browser_flow::{
    self, SESSION_COOKIE, consent_or_code, error_page, error_redirect, form_request, upstream_error,
};
use crate::clients::{self, ClientView, shorten};
use crate::clock::now_secs;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::pages;
use crate::params::Params;
use crate::passwords;
use crate::secrets;
use crate::server::ClientAddr;
use crate::state::{AppState, Snapshot};
use crate::store::AuthRequest;
use crate::upstream::PendingLogin;

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
        state
            .record_decision(Decision {
                event: "login",
                subject: Some(username),
                client_id: Some(&request.client_id),
                resource: Some(&request.resource),
                outcome: "refused",
                reason: self.audit_reason,
                ..Default::default()
            })
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
pub async fn login(
    State(state): State<Arc<AppState>>,
    ClientAddr(address): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = Who::default();
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        let mut request = form_request(&state, &snapshot, &headers, &params).await?;
        who.client_id = Some(request.client_id.clone());
        who.resource = Some(request.resource.clone());
        let client = clients::lookup(
            &snapshot,
            &state,
            &request.client_id,
            Some(&request.resource),
        )
        .await?;
        let username = params.require("username")?.to_owned();
        let password = params.require("password")?.to_owned();
        let attempt = match state
            .login_guard
            .admit(state.store.as_ref(), &username, address, now_secs())
            .await?
        {
            Ok(attempt) => attempt,
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
        let crate::login_guard::Attempt { slot, charged } = attempt;
        let ok = check_password(
            user.as_ref().map(|u| u.password_hash.clone()),
            password,
            slot,
        )
        .await;
        let Some(user) = user.filter(|_| ok) else {
            // The attempt was counted before the check: nothing to add.
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
            .succeeded(state.store.as_ref(), &charged)
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
        browser_flow::set_cookie(
            &mut response,
            &snapshot,
            SESSION_COOKIE,
            &session,
            session_secs,
        );
        Ok::<_, OAuthError>(response)
    }
    .await;
    match result {
        Ok(response) => response,
        Err(e) => {
            state.refuse("login", &who, &e).await;
            error_page(&e)
        }
    }
}

/// GET `/upstream/callback`: the provider sends the browser back here with its code (or an error).
pub async fn upstream_callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = Who::default();
    let result = async {
        let params = Params::parse(uri.query().unwrap_or_default())?;
        let id = params.require("state")?;
        let mut request = browser_flow::pending_request(&state, &snapshot, id).await?;
        who.client_id = Some(request.client_id.clone());
        who.resource = Some(request.resource.clone());
        let cookie = browser_flow::csrf_cookie(&snapshot, &headers).unwrap_or_default();
        if !secrets::constant_time_eq(&cookie, &request.csrf) {
            return Err(OAuthError::invalid_request(
                "the sign-in did not start in this browser",
            ));
        }
        let pending = request
            .upstream_verifier
            .as_deref()
            .and_then(PendingLogin::decode)
            .ok_or_else(|| {
                OAuthError::invalid_request("this sign-in did not go to the upstream provider")
            })?;
        // The pending login is single use: a replayed callback finds nothing to finish.
        request.upstream_verifier = None;
        state.store.put_auth_request(&request).await?;
        if let Some(error) = params.get("error") {
            state.store.delete_auth_request(&request.id).await?;
            let e = OAuthError::new(
                ErrorCode::AccessDenied,
                format!("the upstream sign-in failed: {}", shorten(error)),
            );
            // The person has not seen our consent page yet: the same rule as at /authorize decides whether
            // the error may go to the client's redirect URI (a page otherwise, answered at the handler's exit).
            let client = clients::lookup(
                &snapshot,
                &state,
                &request.client_id,
                Some(&request.resource),
            )
            .await?;
            if !client.may_receive_error_redirects(&request.redirect_uri) {
                return Err(e);
            }
            state.refuse("login", &who, &e).await;
            return Ok(error_redirect(
                &request.redirect_uri,
                &e,
                request.state.as_deref(),
                &snapshot.config.issuer,
            ));
        }
        let code = params.require("code")?;
        let upstream = snapshot
            .upstream
            .clone()
            .ok_or_else(|| OAuthError::invalid_request("upstream login is not configured"))?;
        let callback = format!("{}/upstream/callback", snapshot.config.issuer);
        let subject = match upstream.finish(code, &callback, &pending).await {
            Ok(s) => s,
            // Counted and audited once, as every refusal, where the handler answers.
            Err(e) => return Err(upstream_error(e)),
        };
        let client = clients::lookup(
            &snapshot,
            &state,
            &request.client_id,
            Some(&request.resource),
        )
        .await?;
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
        browser_flow::set_cookie(
            &mut response,
            &snapshot,
            SESSION_COOKIE,
            &session,
            session_secs,
        );
        Ok::<_, OAuthError>(response)
    }
    .await;
    match result {
        Ok(response) => response,
        Err(e) => {
            state.refuse("login", &who, &e).await;
            error_page(&e)
        }
    }
}

/// Checks a password in the blocking pool. The check slot moves into the blocking work, so it is released when
/// the hash is done, not when the request goes away. An unknown user is checked against a decoy hash, so both
/// take as long.
async fn check_password(
    hash: Option<String>,
    password: String,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> bool {
    let hash = hash.unwrap_or_else(|| passwords::DECOY_HASH.to_owned());
    tokio::task::spawn_blocking(move || {
        let ok = passwords::verify_password(&hash, &password);
        drop(slot);
        ok
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    #[tokio::test]
    async fn the_check_slot_is_held_until_the_hash_is_done_even_when_the_request_goes() {
        let slots = Arc::new(Semaphore::new(1));
        let slot = slots.clone().try_acquire_owned().expect("free slot");
        // Start the check, then drop its future at once, as a client that hangs up would.
        tokio::select! {
            biased;
            _ = check_password(None, "guess".into(), slot) => panic!("a hash finished at once"),
            () = std::future::ready(()) => {}
        }
        assert_eq!(
            slots.available_permits(),
            0,
            "the slot was freed while its hash still runs"
        );
        let mut freed = false;
        for _ in 0..500 {
            if slots.available_permits() == 1 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "the slot was never given back");
    }
}
