//! OAuth errors as values that render themselves: JSON at the token-style endpoints, a redirect with `error`,
//! `state` and `iss` at `/authorize`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The `error` codes we answer with (RFC 6749 §4.1.2.1 and §5.2, RFC 8707, RFC 7009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedTokenType,
    InvalidClientMetadata,
    InvalidRedirectUri,
    /// The person must do something in a browser first (OpenID Connect Core §3.1.2.6): connect a provider.
    InteractionRequired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::UnsupportedTokenType => "unsupported_token_type",
            ErrorCode::InvalidClientMetadata => "invalid_client_metadata",
            ErrorCode::InvalidRedirectUri => "invalid_redirect_uri",
            ErrorCode::InteractionRequired => "interaction_required",
        }
    }

    /// Parses a code produced elsewhere (the CIMD module reports its own).
    pub fn from_code(code: &str) -> ErrorCode {
        match code {
            "invalid_client" => ErrorCode::InvalidClient,
            "invalid_grant" => ErrorCode::InvalidGrant,
            "unauthorized_client" => ErrorCode::UnauthorizedClient,
            "invalid_scope" => ErrorCode::InvalidScope,
            "invalid_target" => ErrorCode::InvalidTarget,
            "access_denied" => ErrorCode::AccessDenied,
            "temporarily_unavailable" => ErrorCode::TemporarilyUnavailable,
            "server_error" => ErrorCode::ServerError,
            "invalid_client_metadata" => ErrorCode::InvalidClientMetadata,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

/// An OAuth error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
    /// Set on a refusal by a rate limit: answered 429 with this `Retry-After` (seconds).
    pub retry_after_secs: Option<u64>,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
            retry_after_secs: None,
        }
    }
    /// A request over a rate limit: 429 with `Retry-After`. The code is `temporarily_unavailable`: RFC 6749
    /// defines no code for it, and this is the registered one that says "the same request later may work"
    /// (the MCP SDKs parse it into their own error type; `invalid_request` would read as a request to fix, and
    /// `slow_down` belongs to the device flow).
    pub fn rate_limited(d: impl Into<String>, retry_after_secs: u64) -> Self {
        OAuthError {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(ErrorCode::TemporarilyUnavailable, d)
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidClient, d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidGrant, d)
    }
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::TemporarilyUnavailable,
            "the server cannot reach its store; retry shortly",
        )
    }

    /// The low-cardinality reason for Prometheus.
    pub fn metric_label(&self) -> &'static str {
        if self.retry_after_secs.is_some() {
            return "rate_limited";
        }
        self.code.as_str()
    }

    pub fn status(&self) -> StatusCode {
        if self.retry_after_secs.is_some() {
            return StatusCode::TOO_MANY_REQUESTS;
        }
        match self.code {
            ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        OAuthError::unavailable()
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({ "error": self.code.as_str(), "error_description": self.description });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_become_invalid_request() {
        for code in [
            ErrorCode::InvalidClient,
            ErrorCode::InvalidTarget,
            ErrorCode::InvalidScope,
            ErrorCode::AccessDenied,
        ] {
            assert_eq!(ErrorCode::from_code(code.as_str()), code);
        }
        assert_eq!(ErrorCode::from_code("bogus"), ErrorCode::InvalidRequest);
        assert_eq!(
            OAuthError::invalid_client("x").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            OAuthError::invalid_grant("x").status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_rate_limited_refusal_is_429_with_retry_after_in_oauth_form() {
        let r = OAuthError::rate_limited("slow down, please", 7).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
