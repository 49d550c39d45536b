//! The checks of an authorization request, in the order that decides where their errors go (RFC 9700 §4.11.2:
//! the server must not redirect to a URI it does not trust):
//!
//! 1. [`resource`]: the resource names the policy under which the client's document and its redirect URIs are
//!    admitted, so nothing is trusted before it is known. Its errors are shown as a page.
//! 2. (the handler resolves the client under that resource's policy; a refusal is a page)
//! 3. [`redirect_uri`]: the redirect URI must be one the admitted client registered. Its errors are a page.
//! 4. [`check`]: everything else. Only these errors go back to the client's redirect URI.

use crate::clients::{ClientView, shorten};
use crate::config::{AuthServerConfig, GrantType, ResourceConfig};
use crate::oauth::scopes::{self, Catalogue};
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::secrets::valid_pkce_string;

/// The longest `state` kept: it is stored with the request until the code is issued, and no client needs more
/// than a few dozen characters.
pub const MAX_STATE_BYTES: usize = 1024;

/// Step 1: the resource the request is for, which must be one of this server's.
pub fn resource<'c>(
    config: &'c AuthServerConfig,
    params: &Params,
) -> Result<&'c ResourceConfig, OAuthError> {
    let resource = params.get("resource").ok_or_else(|| {
        OAuthError::new(
            ErrorCode::InvalidTarget,
            "the resource parameter is required (RFC 8707)",
        )
    })?;
    config.resource(resource).ok_or_else(|| {
        OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "resource {:?} is not a resource of this server",
                shorten(resource)
            ),
        )
    })
}

/// Step 3: the redirect URI, registered by the client as admitted under the resource's policy, and a `state`
/// short enough to keep.
pub fn redirect_uri<'p>(client: &ClientView, params: &'p Params) -> Result<&'p str, OAuthError> {
    let redirect_uri = params.require("redirect_uri")?;
    if !client.redirect_uri_matches(redirect_uri) {
        return Err(OAuthError::invalid_request(format!(
            "redirect_uri {:?} is not registered for this client",
            shorten(redirect_uri)
        )));
    }
    if params
        .get("state")
        .is_some_and(|s| s.len() > MAX_STATE_BYTES)
    {
        return Err(OAuthError::invalid_request(format!(
            "state is longer than {MAX_STATE_BYTES} bytes"
        )));
    }
    Ok(redirect_uri)
}

/// What a checked request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub scopes: Vec<String>,
    pub code_challenge: String,
}

/// Step 4: response type, grant type, PKCE and scopes. These errors may be redirected.
pub fn check(
    catalogue: &Catalogue<'_>,
    resource: &ResourceConfig,
    client: &ClientView,
    params: &Params,
) -> Result<Checked, OAuthError> {
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
    let scopes = scopes::requested(
        catalogue,
        &resource.scopes,
        &resource.resource,
        params.get("scope"),
    )?;
    client.check_scope_limits(&scopes)?;
    Ok(Checked {
        scopes,
        code_challenge: challenge.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuthMethod, ClientConfig, ScopeDefinition};

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn config() -> AuthServerConfig {
        let mut c = AuthServerConfig::parse(
            "issuer: https://auth.example\nsigning: {keysDir: /nonexistent}\nlogin: {static: {users: []}}\n",
            std::path::Path::new("c.yaml"),
        )
        .expect("config");
        c.scopes = vec![ScopeDefinition {
            value: "files:read".into(),
            description: "Read".into(),
            sensitive: false,
            max_lifetime_secs: None,
            implies: vec![],
        }];
        c.resources = vec![ResourceConfig {
            resource: "https://mcp.example/files".into(),
            display_name: "Files".into(),
            scopes: vec!["files:read".into()],
            cimd_policy: None,
            holder: String::new(),
            token_exchange: Vec::new(),
            providers: Vec::new(),
        }];
        c
    }

    fn client() -> ClientView {
        ClientView::registered(&ClientConfig {
            client_secret_file: None,
            client_id: "cli".into(),
            client_name: "CLI".into(),
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            token_endpoint_auth_method: ClientAuthMethod::None,
            jwks: None,
            grant_types: vec![],
            scopes: vec![],
            introspection: false,
        })
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        let text = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Params::parse(&text).expect("params")
    }

    #[test]
    fn the_resource_comes_first_and_its_errors_are_never_redirected() {
        let c = config();
        for (pairs, want) in [
            (vec![], "the resource parameter is required (RFC 8707)"),
            (
                vec![("resource", "https://mcp.example/other")],
                "resource \"https://mcp.example/other\" is not a resource of this server",
            ),
        ] {
            let e = resource(&c, &params(&pairs)).unwrap_err();
            assert_eq!(
                (e.code, e.description.as_str()),
                (ErrorCode::InvalidTarget, want)
            );
        }
        let found = resource(&c, &params(&[("resource", "https://mcp.example/files")])).unwrap();
        assert_eq!(found.display_name, "Files");
    }

    #[test]
    fn only_a_registered_redirect_uri_and_a_short_state_pass() {
        let long_state = "s".repeat(MAX_STATE_BYTES + 1);
        type Case<'a> = (Vec<(&'a str, &'a str)>, Result<&'a str, &'a str>);
        let cases: Vec<Case> = vec![
            (
                vec![("redirect_uri", "http://127.0.0.1:5000/cb")],
                Ok("http://127.0.0.1:5000/cb"),
            ),
            (vec![], Err("parameter redirect_uri is missing")),
            (
                vec![("redirect_uri", "https://phish.example/x")],
                Err("redirect_uri \"https://phish.example/x\" is not registered for this client"),
            ),
            (
                vec![
                    ("redirect_uri", "http://127.0.0.1/cb"),
                    ("state", &long_state),
                ],
                Err("state is longer than 1024 bytes"),
            ),
        ];
        for (pairs, want) in cases {
            let p = params(&pairs);
            let got = redirect_uri(&client(), &p).map_err(|e| e.description);
            assert_eq!(got, want.map_err(str::to_owned), "{pairs:?}");
        }
    }

    #[test]
    fn the_redirectable_checks() {
        let c = config();
        let catalogue = c.scope_catalogue();
        let resource = &c.resources[0];
        let good = [
            ("response_type", "code"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ];
        let with = |change: &[(&'static str, &'static str)], drop: &[&str]| {
            let mut pairs: Vec<(&str, &str)> = good
                .iter()
                .copied()
                .filter(|(k, _)| !drop.contains(k) && !change.iter().any(|(c, _)| c == k))
                .collect();
            pairs.extend_from_slice(change);
            params(&pairs)
        };
        type Case = (Params, Result<Checked, (ErrorCode, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                with(&[], &[]),
                Ok(Checked {
                    scopes: vec!["files:read".into()],
                    code_challenge: CHALLENGE.into(),
                }),
            ),
            (
                with(&[("response_type", "token")], &[]),
                Err((
                    ErrorCode::UnsupportedResponseType,
                    "response_type \"token\" is not supported; use code",
                )),
            ),
            (
                with(&[], &["response_type"]),
                Err((
                    ErrorCode::InvalidRequest,
                    "parameter response_type is missing",
                )),
            ),
            (
                with(&[], &["code_challenge"]),
                Err((
                    ErrorCode::InvalidRequest,
                    "code_challenge is required (PKCE with S256)",
                )),
            ),
            (
                with(&[("code_challenge_method", "plain")], &[]),
                Err((
                    ErrorCode::InvalidRequest,
                    "code_challenge_method \"plain\" is not supported; only S256",
                )),
            ),
            (
                with(&[], &["code_challenge_method"]),
                Err((
                    ErrorCode::InvalidRequest,
                    "code_challenge_method is required and must be S256",
                )),
            ),
            (
                with(&[("code_challenge", "short")], &[]),
                Err((
                    ErrorCode::InvalidRequest,
                    "code_challenge is not a base64url SHA-256 value (43 characters)",
                )),
            ),
            (
                with(&[("scope", "files:write")], &[]),
                Err((
                    ErrorCode::InvalidScope,
                    "scope \"files:write\" is not offered by resource https://mcp.example/files",
                )),
            ),
        ];
        for (p, want) in cases {
            let got =
                check(&catalogue, resource, &client(), &p).map_err(|e| (e.code, e.description));
            assert_eq!(got, want.map_err(|(c, d)| (c, d.to_owned())), "{p:?}");
        }
    }
}
