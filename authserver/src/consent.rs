//! POST `/consent`: the signed-in person approves or denies what the client asked. A consent is remembered only
//! when nothing it covers is sensitive, through `implies` too.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::audit::{Decision, Who};
use crate::browser_flow::{error_page, error_redirect, form_request, issue_code};
use crate::clients::{self, shorten};
use crate::clock::now_secs;
use crate::oauth::scopes;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::providers;
use crate::state::AppState;
use crate::store::Consent;

/// POST `/consent`.
pub async fn consent(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let snapshot = state.snapshot();
    let mut who = Who::default();
    let result = async {
        let params = Params::from_form(&headers, body).await?;
        let request = form_request(&state, &snapshot, &headers, &params).await?;
        who.client_id = Some(request.client_id.clone());
        who.resource = Some(request.resource.clone());
        who.subject = request.subject.clone();
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
                if !scopes::any_sensitive(&catalogue, &request.scopes) {
                    state
                        .store
                        .put_consent(
                            &Consent {
                                subject: &subject,
                                client_id: &request.client_id,
                                resource: &request.resource,
                                scopes: &request.scopes.join(" "),
                                client_fingerprint: client.fingerprint(),
                                holder: &request.holder,
                            },
                            now_secs(),
                        )
                        .await?;
                }
                state.metrics.outcome("consent", "approved");
                // The service works with the person's own account at a provider not connected yet: connect it
                // now, and the code follows from the provider's callback.
                let missing =
                    providers::connect::missing(&state, &snapshot, &request.resource, &subject)
                        .await?;
                // Connecting is no condition of the consent given: a provider that cannot be reached now leaves
                // it for later (the tool that needs it asks), and the person signs in all the same.
                if let Some(first) = missing.first() {
                    match providers::connect::begin(
                        &state,
                        &snapshot,
                        &headers,
                        &subject,
                        &first.id,
                        Some(request.id.clone()),
                    )
                    .await
                    {
                        Ok(redirect) => return Ok(redirect),
                        Err(e) => tracing::warn!(
                            provider = %first.id,
                            error = %e.description,
                            "connecting a provider after consent could not start; signing in without it"
                        ),
                    }
                }
                issue_code(
                    &state,
                    &snapshot,
                    &request,
                    &subject,
                    &client,
                    "consent given",
                )
                .await
            }
            "deny" => {
                state.store.delete_auth_request(&request.id).await?;
                state.metrics.outcome("consent", "denied");
                state
                    .record_decision(Decision {
                        event: "authorize",
                        caller: None,
                        subject: Some(&subject),
                        client_id: Some(&request.client_id),
                        resource: Some(&request.resource),
                        scopes: &request.scopes,
                        outcome: "denied",
                        reason: "the user denied consent",
                    })
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
    match result {
        Ok(response) => response,
        Err(e) => {
            state.refuse("consent", &who, &e).await;
            error_page(&e)
        }
    }
}
