//! The admin port: `/metrics`, `/healthz`, `/readyz`, and the admin API (list and revoke grants by user, client or
//! resource; recent audit events). The API needs the admin bearer credential; refusals are counted and audited.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::audit::Decision;
use crate::clock::now_secs;
use crate::secrets;
use crate::state::AppState;
use crate::store::GrantFilter;

/// A refusal of the admin API, rendered as a JSON error.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API is disabled: no admin token file is configured")]
    Disabled,
    #[error("a valid admin bearer credential is required")]
    Unauthenticated,
    #[error("{0}")]
    BadRequest(String),
    #[error("the store is unavailable")]
    Store(#[from] crate::store::StoreError),
}

impl AdminError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AdminError::Disabled => "disabled",
            AdminError::Unauthenticated => "unauthenticated",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Store(e) => e.metric_label(),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::Disabled | AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut r = (
            status,
            axum::Json(
                json!({ "error": self.metric_label(), "error_description": self.to_string() }),
            ),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"admin\""),
            );
        }
        r
    }
}

async fn require_admin(
    state: &AppState,
    headers: &HeaderMap,
    action: &str,
) -> Result<(), AdminError> {
    let snapshot = state.snapshot();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let result = match (&snapshot.admin_token, presented) {
        (None, _) => Err(AdminError::Disabled),
        (Some(expected), Some(p)) if secrets::constant_time_eq(p, expected) => Ok(()),
        _ => Err(AdminError::Unauthenticated),
    };
    if let Err(e) = &result {
        state.metrics.outcome("admin", e.metric_label());
        state
            .record_decision(Decision {
                event: "admin",
                outcome: "refused",
                reason: &format!("{action}: {e}"),
                ..Default::default()
            })
            .await;
    }
    result
}

/// Query of the grant endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantQuery {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub resource: Option<String>,
    #[serde(default)]
    pub include_inactive: bool,
}

impl From<GrantQuery> for GrantFilter {
    fn from(q: GrantQuery) -> Self {
        GrantFilter {
            subject: q.subject,
            client_id: q.client_id,
            resource: q.resource,
            include_inactive: q.include_inactive,
        }
    }
}

/// The most grants one listing returns (oldest first); `truncated` says when more matched.
pub const MAX_LISTED_GRANTS: i64 = 1000;

/// GET `/admin/grants?subject=&client_id=&resource=&include_inactive=`.
pub async fn list_grants(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<GrantQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AdminError> {
    require_admin(&state, &headers, "list grants").await?;
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    // One more than a page tells whether there are more, so a long list never looks complete when it is not.
    let mut grants = state
        .store
        .list_grants(&query.into(), now_secs(), MAX_LISTED_GRANTS + 1)
        .await?;
    let truncated = grants.len() as i64 > MAX_LISTED_GRANTS;
    grants.truncate(MAX_LISTED_GRANTS as usize);
    state.metrics.outcome("admin", "ok");
    Ok(axum::Json(json!({ "grants": grants, "truncated": truncated })).into_response())
}

/// POST `/admin/grants/revoke?subject=&client_id=&resource=`: revokes every active grant matching (at least one
/// filter is required, so an empty call cannot revoke everything by accident).
pub async fn revoke_grants(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<GrantQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AdminError> {
    require_admin(&state, &headers, "revoke grants").await?;
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    if query.subject.is_none() && query.client_id.is_none() && query.resource.is_none() {
        return Err(AdminError::BadRequest(
            "name at least one of subject, client_id and resource".into(),
        ));
    }
    let now = now_secs();
    let filter: GrantFilter = query.into();
    // One transaction however many grants match: during an incident nothing may be left behind by a page size.
    let revoked = state
        .store
        .revoke_grants(&filter, "revoked by an administrator", now)
        .await?;
    let scope = format!(
        "revoked by an administrator: {revoked} grants matching subject={} client_id={} resource={}",
        filter.subject.as_deref().unwrap_or("*"),
        filter.client_id.as_deref().unwrap_or("*"),
        filter.resource.as_deref().unwrap_or("*"),
    );
    state
        .record_decision(Decision {
            event: "admin_revoke",
            subject: filter.subject.as_deref(),
            client_id: filter.client_id.as_deref(),
            resource: filter.resource.as_deref(),
            outcome: "revoked",
            reason: &scope,
            ..Default::default()
        })
        .await;
    state.metrics.outcome("admin", "ok");
    Ok(axum::Json(json!({ "revoked": revoked })).into_response())
}

/// Query of `/admin/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub limit: Option<i64>,
}

/// GET `/admin/audit?limit=`: the newest audit events.
pub async fn recent_audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AdminError> {
    require_admin(&state, &headers, "read audit").await?;
    let Query(query) = query.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let events = state.store.recent_audit(query.limit.unwrap_or(100)).await?;
    Ok(axum::Json(json!({ "events": events })).into_response())
}

/// GET `/metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let age = now_secs() - state.keys().signer().activates_at as i64;
    state.metrics.signing_key_age.set(age.max(0));
    state
        .metrics
        .provider_keys_unusable
        .set(i64::from(state.snapshot().sealer_problem.is_some()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// GET `/healthz`: the process serves.
pub async fn healthz() -> &'static str {
    "ok"
}

/// GET `/readyz`: the store answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {}", e.metric_label()),
        )
            .into_response(),
    }
}
