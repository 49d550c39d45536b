//! RFC 8414 authorization server metadata (also served as OIDC discovery) and the JWKS.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::state::{AppState, Snapshot};

/// The metadata document of `snapshot`.
pub fn document(snapshot: &Snapshot) -> Value {
    let c = &snapshot.config;
    let issuer = &c.issuer;
    // Shared secrets only for clients the platform registered with one: advertising them otherwise would invite
    // clients to try a method nobody can use here.
    let mut auth_methods = vec!["none", "private_key_jwt"];
    if c.clients
        .iter()
        .any(|k| k.token_endpoint_auth_method.is_secret())
    {
        auth_methods.extend(["client_secret_basic", "client_secret_post"]);
    }
    let mut introspection_methods = vec!["private_key_jwt"];
    if c.clients
        .iter()
        .any(|k| k.introspection && k.token_endpoint_auth_method.is_secret())
    {
        introspection_methods.extend(["client_secret_basic", "client_secret_post"]);
    }
    let mut grant_types = vec!["authorization_code", "refresh_token", "client_credentials"];
    let id_jag = !c.trusted_identity_providers.is_empty();
    if id_jag {
        grant_types.push(crate::config::JWT_BEARER_GRANT);
    }
    if c.resources
        .iter()
        .any(crate::config::ResourceConfig::exchanges)
    {
        grant_types.push(crate::token_exchange::TOKEN_EXCHANGE_GRANT);
    }
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grant_types,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": introspection_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": c.scopes.iter().map(|s| s.value.as_str()).collect::<Vec<_>>(),
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": snapshot.cimd.is_some(),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    if id_jag {
        // The MCP enterprise-managed authorization extension's advertisement of ID-JAG redemption.
        doc["authorization_grant_profiles_supported"] =
            json!(["urn:ietf:params:oauth:grant-profile:id-jag"]);
    }
    if c.dynamic_client_registration.enabled {
        doc["registration_endpoint"] = json!(format!("{issuer}/register"));
    }
    doc
}

fn json_cached(body: Value, max_age: u32) -> Response {
    let mut r = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// GET the metadata (both well-known names, with and without the issuer's path inserted).
pub async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.outcome("metadata", "ok");
    json_cached(document(&state.snapshot()), 300)
}

/// GET `/jwks`: next, active and retiring keys. Short cache: verifiers must see a new key before it signs.
pub async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.outcome("jwks", "ok");
    json_cached(state.keys().jwks(), 60)
}
