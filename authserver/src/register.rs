//! RFC 7591 Dynamic Client Registration, when the config turns it on (off by default; deprecated by MCP
//! 2026-07-28 in favour of Client ID Metadata Documents). Registered clients get ids starting `dcr-` and are
//! public (`none`) or `private_key_jwt` with inline `jwks`; shared secrets are never issued.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{Decision, Who};
use crate::client_address::site;
use crate::clients::{DYNAMIC_CLIENT_PREFIX, shorten};
use crate::clock::now_secs;
use crate::config::{
    ClientAuthMethod, ClientConfig, DynamicClientRegistration, GrantType, RegistrationRedirects,
    check_redirect_uri, is_loopback_host,
};
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::secrets;
use crate::server::ClientOrigin;
use crate::state::AppState;
use crate::store::{Counted, RegistrationBudget};

/// Largest registration request.
const MAX_BODY: usize = 16 * 1024;

/// The metadata we read (RFC 7591 §2); members we do not understand are ignored, as §2 requires.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    grant_types: Vec<String>,
    jwks: Option<Value>,
    jwks_uri: Option<String>,
    application_type: Option<String>,
}

/// The window of the registration budget.
const REGISTRATION_WINDOW_SECS: i64 = 3600;
/// What a client over the budget is told to wait before trying again.
const REGISTRATION_RETRY_SECS: u64 = 60;

/// Whether one more registration may be accepted, given those of the past hour: the network's share first (a
/// network at its cap is told so, and waiting is up to it), then the server's budget. 429 in OAuth's own form
/// either way, with a hint at the way in that needs no registration. `network_counted`: the registration's
/// network is the client's own, so its share applies.
fn registration_refusal(
    recent: Counted,
    network_counted: bool,
    limits: &DynamicClientRegistration,
) -> Option<OAuthError> {
    if network_counted && recent.from_network >= i64::from(limits.max_per_hour_per_network) {
        return Some(OAuthError::rate_limited(
            format!(
                "this address has registered its limit of {} clients in the past hour; try again later, or identify the client by a Client ID Metadata Document (an https client_id)",
                limits.max_per_hour_per_network
            ),
            REGISTRATION_RETRY_SECS,
        ));
    }
    (recent.total >= i64::from(limits.max_per_hour)).then(|| server_budget_spent(limits))
}

fn server_budget_spent(limits: &DynamicClientRegistration) -> OAuthError {
    OAuthError::rate_limited(
        format!(
            "this server has registered its limit of {} clients in the past hour; try again later, or identify the client by a Client ID Metadata Document (an https client_id)",
            limits.max_per_hour
        ),
        REGISTRATION_RETRY_SECS,
    )
}

fn metadata_error(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClientMetadata, d)
}

/// OpenID Connect's client kinds (Dynamic Client Registration §2), which SEP-837 has MCP clients declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplicationType {
    /// Runs on the person's machine: loopback redirect URIs only.
    Native,
    /// A web site: https redirect URIs on a host other than localhost only.
    Web,
}

impl ApplicationType {
    fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Web => "web",
        }
    }
}

/// Reads `application_type`. SEP-837 has every MCP client send it; a server that took its absence as OIDC's
/// default (`web`) would refuse the loopback redirects native clients use with an error about redirects, so
/// its absence is refused by name instead.
fn application_type(value: Option<&str>) -> Result<ApplicationType, OAuthError> {
    match value {
        Some("native") => Ok(ApplicationType::Native),
        Some("web") => Ok(ApplicationType::Web),
        None => Err(metadata_error(
            "application_type is required (SEP-837): native for a client on the person's machine with loopback redirect URIs, web for a web site with https redirect URIs",
        )),
        Some(other) => Err(metadata_error(format!(
            "application_type {:?} is not native or web",
            shorten(other)
        ))),
    }
}

/// Checks one redirect URI against the client's kind and the server's policy.
fn check_registered_redirect(
    uri: &str,
    kind: ApplicationType,
    allowed: RegistrationRedirects,
) -> Result<(), OAuthError> {
    let refuse = |m: String| OAuthError::new(ErrorCode::InvalidRedirectUri, m);
    let url = check_redirect_uri(uri).map_err(refuse)?;
    let loopback = url.scheme() == "http" && is_loopback_host(&url);
    match kind {
        ApplicationType::Native if !loopback => Err(refuse(format!(
            "redirect URI {uri:?} is not a loopback http URI, which is what a native client registers (RFC 8252)"
        ))),
        ApplicationType::Web if allowed == RegistrationRedirects::LoopbackOnly => Err(refuse(
            "this server registers native clients with loopback redirect URIs only; a web client is identified by a Client ID Metadata Document (an https client_id) instead".to_owned(),
        )),
        ApplicationType::Web if url.scheme() != "https" || is_loopback_host(&url) => {
            Err(refuse(format!(
                "redirect URI {uri:?} is not an https URI on a host other than localhost, which is what a web client registers"
            )))
        }
        _ => Ok(()),
    }
}

/// Checks a registration request and turns it into a client (and its declared kind, echoed back).
fn client_from(
    request: Request,
    allowed: RegistrationRedirects,
) -> Result<(ClientConfig, ApplicationType), OAuthError> {
    let kind = application_type(request.application_type.as_deref())?;
    let auth = match request.token_endpoint_auth_method.as_deref() {
        None | Some("none") => ClientAuthMethod::None,
        Some("private_key_jwt") => ClientAuthMethod::PrivateKeyJwt,
        Some(other) => {
            return Err(metadata_error(format!(
                "token_endpoint_auth_method {:?} is not supported; use none or private_key_jwt",
                shorten(other)
            )));
        }
    };
    if request.jwks_uri.is_some() {
        return Err(metadata_error(
            "jwks_uri is not supported for registered clients; send jwks",
        ));
    }
    if auth == ClientAuthMethod::PrivateKeyJwt
        && request
            .jwks
            .as_ref()
            .and_then(|j| j.get("keys"))
            .and_then(Value::as_array)
            .is_none_or(|k| k.is_empty())
    {
        return Err(metadata_error(
            "private_key_jwt needs jwks with at least one key",
        ));
    }
    // A private (`d`, `p`, ...) or symmetric (`k`) member would be stored and echoed back to anyone who reads
    // the registration: only public keys are taken.
    if let Some(keys) = request.jwks.as_ref() {
        let keys = keys
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| metadata_error("jwks must be an object with a keys array"))?;
        for key in keys {
            let key = key
                .as_object()
                .ok_or_else(|| metadata_error("every key in jwks must be a JSON object"))?;
            if let Some(member) = crate::cimd::private_member(key) {
                return Err(metadata_error(format!(
                    "jwks holds a private or symmetric key (member {member:?}); send public keys only"
                )));
            }
        }
    }
    let mut grant_types = Vec::new();
    for g in if request.grant_types.is_empty() {
        vec!["authorization_code".to_owned()]
    } else {
        request.grant_types
    } {
        grant_types.push(match g.as_str() {
            "authorization_code" => GrantType::AuthorizationCode,
            "refresh_token" => GrantType::RefreshToken,
            "client_credentials" if auth == ClientAuthMethod::PrivateKeyJwt => {
                GrantType::ClientCredentials
            }
            other => {
                return Err(metadata_error(format!(
                    "grant type {:?} is not available",
                    shorten(other)
                )));
            }
        });
    }
    if grant_types.contains(&GrantType::AuthorizationCode) && request.redirect_uris.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            "redirect_uris is required",
        ));
    }
    if request.redirect_uris.len() > 10 {
        return Err(OAuthError::new(
            ErrorCode::InvalidRedirectUri,
            "at most 10 redirect_uris",
        ));
    }
    for uri in &request.redirect_uris {
        check_registered_redirect(uri, kind, allowed)?;
    }
    let name = request
        .client_name
        .unwrap_or_else(|| "Unnamed client".into());
    if name.chars().count() > 200 {
        return Err(metadata_error("client_name is longer than 200 characters"));
    }
    let client = ClientConfig {
        client_id: format!("{DYNAMIC_CLIENT_PREFIX}{}", secrets::random_token()),
        client_name: name,
        redirect_uris: request.redirect_uris,
        token_endpoint_auth_method: auth,
        jwks: request.jwks,
        client_secret_file: None,
        grant_types,
        scopes: Vec::new(),
        introspection: false,
    };
    Ok((client, kind))
}

/// POST `/register`.
pub async fn register(
    State(state): State<Arc<AppState>>,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let snapshot = state.snapshot();
    if !snapshot.config.dynamic_client_registration.enabled {
        state.metrics.outcome("register", "disabled");
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "not_found" })),
        )
            .into_response();
    }
    // A flood of registrations would fill the store with clients nobody uses: past the hourly budget (counted in
    // the store, so it holds across replicas) the server refuses before reading the body, and the insert itself
    // holds to the budget (a client may take its time sending the body). A network's share is counted only where
    // the network is the client's own, as for pending sign-ins, and per IPv6 site (/48).
    let limits = &snapshot.config.dynamic_client_registration;
    let network = origin
        .filter(|c| c.is_own_network())
        .map(|c| site(c.address).to_string());
    match state
        .store
        .dynamic_clients_since(now_secs() - REGISTRATION_WINDOW_SECS, network.as_deref())
        .await
    {
        Ok(recent) => {
            if let Some(e) = registration_refusal(recent, network.is_some(), limits) {
                state.metrics.outcome("register", "rate_limited");
                return e.into_response();
            }
        }
        Err(e) => {
            let e = OAuthError::from(e);
            state.refuse("register", &Who::default(), &e).await;
            return e.into_response();
        }
    }
    let result = async {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            });
        if !json {
            return Err(metadata_error("the body must be application/json"));
        }
        let bytes = to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| metadata_error(format!("the body is larger than {MAX_BODY} bytes")))?;
        let request: Request = serde_json::from_slice(&bytes)
            .map_err(|e| metadata_error(format!("the body is not client metadata: {e}")))?;
        let (client, kind) = client_from(
            request,
            snapshot.config.dynamic_client_registration.redirect_uris,
        )?;
        let now = now_secs();
        let stored = serde_json::to_string(&client).map_err(|e| metadata_error(e.to_string()))?;
        let budget = RegistrationBudget {
            since: now - REGISTRATION_WINDOW_SECS,
            total: i64::from(limits.max_per_hour),
            per_network: i64::from(limits.max_per_hour_per_network),
        };
        let kept = state
            .store
            .put_dynamic_client(&client.client_id, &stored, network.as_deref(), now, budget)
            .await?;
        if !kept {
            // Others registered while this body was on its way: the budget is spent now.
            state.metrics.outcome("register", "rate_limited");
            let recent = state
                .store
                .dynamic_clients_since(budget.since, network.as_deref())
                .await?;
            return Err(registration_refusal(recent, network.is_some(), limits)
                .unwrap_or_else(|| server_budget_spent(limits)));
        }
        state
            .record_decision(Decision {
                event: "register",
                client_id: Some(&client.client_id),
                outcome: "registered",
                reason: &client.client_name,
                ..Default::default()
            })
            .await;
        let auth = client.token_endpoint_auth_method.as_str();
        let grants: Vec<&str> = client.grant_types.iter().map(|g| g.as_str()).collect();
        let mut body = json!({
            "client_id": client.client_id,
            "client_id_issued_at": now,
            "client_name": client.client_name,
            "redirect_uris": client.redirect_uris,
            "grant_types": grants,
            "response_types": ["code"],
            "token_endpoint_auth_method": auth,
            "application_type": kind.name(),
        });
        if let Some(jwks) = client.jwks {
            body["jwks"] = jwks;
        }
        Ok::<_, OAuthError>(body)
    }
    .await;
    match result {
        Ok(body) => {
            state.metrics.outcome("register", "ok");
            let mut r = (StatusCode::CREATED, axum::Json(body)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            state.refuse("register", &Who::default(), &e).await;
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_refused_past_the_networks_share_then_the_servers_budget() {
        let limits = DynamicClientRegistration {
            max_per_hour: 100,
            max_per_hour_per_network: 10,
            ..DynamicClientRegistration::default()
        };
        let network = "this address has registered its limit of 10 clients in the past hour; try again later, or identify the client by a Client ID Metadata Document (an https client_id)";
        let server = "this server has registered its limit of 100 clients in the past hour; try again later, or identify the client by a Client ID Metadata Document (an https client_id)";
        // (from the network, in all, refusal)
        let table: [(i64, i64, Option<&str>); 6] = [
            (0, 0, None),
            (9, 99, None),
            (10, 50, Some(network)),
            // The network's cap is told first: waiting is up to it, whatever the server's count.
            (10, 100, Some(network)),
            (0, 100, Some(server)),
            (3, 250, Some(server)),
        ];
        for (from_network, total, want) in table {
            let got = registration_refusal(
                Counted {
                    total,
                    from_network,
                },
                true,
                &limits,
            );
            assert_eq!(
                got.as_ref()
                    .map(|e| (e.description.as_str(), e.retry_after_secs)),
                want.map(|d| (d, Some(REGISTRATION_RETRY_SECS))),
                "{from_network} of {total}"
            );
            if let Some(e) = got {
                assert_eq!(e.code, ErrorCode::TemporarilyUnavailable);
            }
        }
        // A network that is not the client's own (a private peer without trusted proxies) is everyone's: only
        // the server's budget applies.
        let everyone = Counted {
            total: 50,
            from_network: 0,
        };
        assert!(registration_refusal(everyone, false, &limits).is_none());
        let spent = Counted {
            total: 100,
            from_network: 0,
        };
        assert_eq!(
            registration_refusal(spent, false, &limits).map(|e| e.description),
            Some(server.to_owned())
        );
    }
}
