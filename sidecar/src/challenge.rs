//! Refusals rendered in the protocol's own form: `WWW-Authenticate: Bearer ...` (RFC 6750, RFC 9728 §5.1)
//! with a small JSON body, or JSON-RPC errors when the refusal is about operations rather than the token.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::caller::Callers;
use crate::jsonrpc;

/// The JSON-RPC error code used for operations the token may not perform (implementation-defined range).
pub const FORBIDDEN_CODE: i64 = -32003;

/// A refusal, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// 401: no token, or a bad one (`error` is `Some("invalid_token")` when one was sent).
    Unauthorized {
        /// The OAuth error code, if any.
        error: Option<&'static str>,
        /// Human-readable detail.
        description: Option<String>,
    },
    /// 400 `invalid_request`: a malformed use of the Authorization header or a token in the query.
    InvalidRequest(String),
    /// 403 `insufficient_scope`: `scopes` are all the scopes the request's operations need.
    InsufficientScope {
        /// All scopes the operations need.
        scopes: Vec<String>,
        /// JSON-RPC ids of the refused requests.
        ids: Vec<Value>,
    },
    /// 403 without a challenge: no scope would allow these operations.
    Forbidden {
        /// JSON-RPC ids of the refused requests.
        ids: Vec<Value>,
    },
    /// 403 without a challenge: a rule admits only these callers, and the token's is not one of them.
    CallerNotAdmitted {
        /// Who the rule admits.
        callers: Callers,
        /// JSON-RPC ids of the refused requests.
        ids: Vec<Value>,
    },
    /// 503: the keys cannot be loaded, so the token cannot be judged either way.
    KeysUnavailable,
    /// 503: a sensitive operation needs the issuer's word on revocation, and the issuer did not answer.
    IntrospectionUnavailable,
}

/// What a challenge needs from the config.
#[derive(Debug, Clone)]
pub struct ChallengeContext {
    /// The protected-resource metadata URL.
    pub resource_metadata: String,
    /// The scopes for basic use (the `scope` of a 401).
    pub basic_scopes: Vec<String>,
}

impl ChallengeContext {
    /// The context of a config: its metadata URL and its basic scopes.
    pub fn from_config(config: &crate::config::SidecarConfig) -> Self {
        Self {
            resource_metadata: crate::metadata::ResourceMetadata::from_config(config).url,
            basic_scopes: config.scopes_supported.clone(),
        }
    }
}

fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        // error_description is restricted to printable ASCII without `"` and `\` (RFC 6750 §3).
        match c {
            '"' | '\\' => out.push('\''),
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

impl Refusal {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InsufficientScope { .. }
            | Self::Forbidden { .. }
            | Self::CallerNotAdmitted { .. } => StatusCode::FORBIDDEN,
            Self::KeysUnavailable | Self::IntrospectionUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `WWW-Authenticate` value, if this refusal has one.
    pub fn www_authenticate(&self, ctx: &ChallengeContext) -> Option<String> {
        let metadata = format!("resource_metadata={}", quoted(&ctx.resource_metadata));
        let basic_scope = (!ctx.basic_scopes.is_empty())
            .then(|| format!("scope={}", quoted(&ctx.basic_scopes.join(" "))));
        let mut parts: Vec<String> = Vec::new();
        match self {
            Self::Unauthorized { error, description } => {
                if let Some(error) = error {
                    parts.push(format!("error={}", quoted(error)));
                }
                if let Some(d) = description {
                    parts.push(format!("error_description={}", quoted(d)));
                }
                parts.push(metadata);
                parts.extend(basic_scope);
            }
            Self::InvalidRequest(description) => {
                parts.push("error=\"invalid_request\"".into());
                parts.push(format!("error_description={}", quoted(description)));
                parts.push(metadata);
            }
            Self::InsufficientScope { scopes, .. } => {
                parts.push("error=\"insufficient_scope\"".into());
                parts.push(format!("scope={}", quoted(&scopes.join(" "))));
                parts.push(metadata);
            }
            Self::Forbidden { .. }
            | Self::CallerNotAdmitted { .. }
            | Self::KeysUnavailable
            | Self::IntrospectionUnavailable => {
                return None;
            }
        }
        Some(format!("Bearer {}", parts.join(", ")))
    }

    fn body(&self) -> (Bytes, &'static str) {
        let rpc_errors = |ids: &[Value], message: &str| {
            let errors: Vec<Value> = ids
                .iter()
                .map(|id| jsonrpc::error_object(id, FORBIDDEN_CODE, message))
                .collect();
            let value = match errors.len() {
                0 => jsonrpc::error_object(&Value::Null, FORBIDDEN_CODE, message),
                1 => errors.into_iter().next().unwrap_or(Value::Null),
                _ => Value::Array(errors),
            };
            (Bytes::from(value.to_string()), "application/json")
        };
        match self {
            Self::Unauthorized { error, description } => (
                Bytes::from(
                    json!({"error": error.unwrap_or("unauthorized"),
                           "error_description": description.as_deref().unwrap_or("a bearer token is required")})
                    .to_string(),
                ),
                "application/json",
            ),
            Self::InvalidRequest(d) => {
                (Bytes::from(json!({"error": "invalid_request", "error_description": d}).to_string()), "application/json")
            }
            Self::InsufficientScope { scopes, ids } => {
                rpc_errors(ids, &format!("insufficient scope: this operation needs {}", scopes.join(" ")))
            }
            Self::Forbidden { ids } => rpc_errors(ids, "forbidden: no scope grants this operation"),
            Self::CallerNotAdmitted { callers, ids } => rpc_errors(ids, callers.refusal_message()),
            Self::KeysUnavailable => (
                Bytes::from(
                    json!({"error": "temporarily_unavailable",
                           "error_description": "the authorization server's keys cannot be loaded"})
                    .to_string(),
                ),
                "application/json",
            ),
            Self::IntrospectionUnavailable => (
                Bytes::from(
                    json!({"error": "temporarily_unavailable",
                           "error_description": "the authorization server cannot confirm the token is still active"})
                    .to_string(),
                ),
                "application/json",
            ),
        }
    }

    /// The full HTTP response.
    pub fn into_response<B: From<Bytes>>(self, ctx: &ChallengeContext) -> Response<B> {
        let (body, content_type) = self.body();
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(value) = self
            .www_authenticate(ctx)
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if matches!(self, Self::KeysUnavailable | Self::IntrospectionUnavailable) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ChallengeContext {
        ChallengeContext {
            resource_metadata: "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
                .into(),
            basic_scopes: vec!["mcp:read".into(), "mcp:write".into()],
        }
    }

    #[test]
    fn challenges_table() {
        let md = "resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\"";
        let cases = [
            (
                Refusal::Unauthorized {
                    error: None,
                    description: None,
                },
                StatusCode::UNAUTHORIZED,
                Some(format!("Bearer {md}, scope=\"mcp:read mcp:write\"")),
            ),
            (
                Refusal::Unauthorized {
                    error: Some("invalid_token"),
                    description: Some("the token has \"expired\"".into()),
                },
                StatusCode::UNAUTHORIZED,
                Some(format!(
                    "Bearer error=\"invalid_token\", error_description=\"the token has 'expired'\", {md}, scope=\"mcp:read mcp:write\""
                )),
            ),
            (
                Refusal::InvalidRequest("more than one Authorization header".into()),
                StatusCode::BAD_REQUEST,
                Some(format!(
                    "Bearer error=\"invalid_request\", error_description=\"more than one Authorization header\", {md}"
                )),
            ),
            (
                Refusal::InsufficientScope {
                    scopes: vec!["mcp:admin".into(), "payments".into()],
                    ids: vec![json!(1)],
                },
                StatusCode::FORBIDDEN,
                Some(format!(
                    "Bearer error=\"insufficient_scope\", scope=\"mcp:admin payments\", {md}"
                )),
            ),
            (
                Refusal::Forbidden { ids: vec![] },
                StatusCode::FORBIDDEN,
                None,
            ),
            // No challenge: no token the client could get would change who it is.
            (
                Refusal::CallerNotAdmitted {
                    callers: Callers::Machines,
                    ids: vec![json!(1)],
                },
                StatusCode::FORBIDDEN,
                None,
            ),
            (
                Refusal::KeysUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
            ),
        ];
        for (refusal, status, header) in cases {
            assert_eq!(refusal.status(), status);
            let response: Response<Bytes> = refusal.clone().into_response(&ctx());
            assert_eq!(
                response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap().to_owned()),
                header,
                "{refusal:?}"
            );
        }
    }

    #[test]
    fn scope_refusals_answer_each_request_id() {
        let one: Response<Bytes> = Refusal::InsufficientScope {
            scopes: vec!["a".into()],
            ids: vec![json!(7)],
        }
        .into_response(&ctx());
        let v: Value = serde_json::from_slice(one.body()).unwrap();
        assert_eq!(v["id"], json!(7));
        assert_eq!(v["error"]["code"], json!(FORBIDDEN_CODE));
        let many: Response<Bytes> = Refusal::Forbidden {
            ids: vec![json!(1), json!("x")],
        }
        .into_response(&ctx());
        let v: Value = serde_json::from_slice(many.body()).unwrap();
        assert_eq!(v[1]["id"], json!("x"));
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_caller_refusal_says_who_the_operation_is_for() {
        for (callers, message) in [
            (
                Callers::Machines,
                "forbidden: this operation is for machine clients only",
            ),
            (
                Callers::People,
                "forbidden: this operation is for people only, not for clients acting alone",
            ),
        ] {
            let response: Response<Bytes> = Refusal::CallerNotAdmitted {
                callers,
                ids: vec![json!(3)],
            }
            .into_response(&ctx());
            let v: Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(
                v,
                json!({"jsonrpc": "2.0", "id": 3, "error": {"code": FORBIDDEN_CODE, "message": message}})
            );
        }
    }

    #[test]
    fn no_scope_attribute_when_nothing_is_basic() {
        let ctx = ChallengeContext {
            resource_metadata: "https://r/.well-known/oauth-protected-resource".into(),
            basic_scopes: vec![],
        };
        let v = Refusal::Unauthorized {
            error: None,
            description: None,
        }
        .www_authenticate(&ctx)
        .unwrap();
        assert_eq!(
            v,
            "Bearer resource_metadata=\"https://r/.well-known/oauth-protected-resource\""
        );
    }
}
