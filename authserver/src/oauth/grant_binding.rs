//! Whether a request on an existing grant (a code or refresh token) comes from the client the grant was made for,
//! authenticating the way it did then, with the document it had then. The grant decides, never the request: a
//! client that may authenticate two ways must not escape the stronger one by changing what it sends.

use crate::oauth_error::OAuthError;
use crate::store::Grant;

/// How the request's client stands to the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Same client, same method, same document.
    Holds,
    /// Another client presents the grant's code or token.
    OtherClient,
    /// The client authenticated another way than when the grant was made.
    MethodChanged {
        granted: String,
        presented: &'static str,
    },
    /// The client's metadata document changed since the grant (redirect URIs, keys or auth methods).
    DocumentChanged,
}

/// Decides the [`Binding`] of a request by `client_id`, authenticated with `method`, whose document has
/// `fingerprint` (empty for registered clients). A grant made before methods were recorded binds no method.
pub fn binding(grant: &Grant, client_id: &str, method: &'static str, fingerprint: &str) -> Binding {
    if grant.client_id != client_id {
        return Binding::OtherClient;
    }
    if !grant.client_auth_method.is_empty() && grant.client_auth_method != method {
        return Binding::MethodChanged {
            granted: grant.client_auth_method.clone(),
            presented: method,
        };
    }
    if grant.client_fingerprint != fingerprint {
        return Binding::DocumentChanged;
    }
    Binding::Holds
}

impl Binding {
    /// The refusal a request gets, and whether the grant must be revoked with it (the grant's holder is no longer
    /// who it was: a code in another client's hands, a document that changed).
    pub fn refusal(&self, what: &str) -> Option<(OAuthError, bool)> {
        match self {
            Binding::Holds => None,
            Binding::OtherClient => Some((
                OAuthError::invalid_grant(format!("the {what} was issued to another client")),
                what == "authorization code",
            )),
            Binding::MethodChanged { granted, presented } => Some((
                OAuthError::invalid_client(format!(
                    "this grant was made for a client authenticating with {granted}; this request used {presented}"
                )),
                false,
            )),
            Binding::DocumentChanged => Some((
                OAuthError::invalid_grant(
                    "the client's metadata document changed since this grant (redirect URIs, keys or authentication method); sign in again",
                ),
                true,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth_error::ErrorCode;

    fn grant(method: &str, fingerprint: &str) -> Grant {
        Grant {
            id: "g".into(),
            subject: "alice".into(),
            client_id: "https://agent.example/doc.json".into(),
            resource: "https://mcp.example/files".into(),
            scopes: vec!["files:read".into()],
            grant_type: "authorization_code".into(),
            created_at: 0,
            expires_at: 100,
            revoked_at: None,
            revoked_reason: None,
            client_fingerprint: fingerprint.into(),
            client_auth_method: method.into(),
            holder: String::new(),
        }
    }

    #[test]
    fn the_grant_decides_who_may_use_it_and_how() {
        const ME: &str = "https://agent.example/doc.json";
        // (grant method, grant fingerprint, request client, request method, request fingerprint, what, outcome)
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            Option<(ErrorCode, &'static str, bool)>,
        );
        let cases: &[Case] = &[
            (
                "private_key_jwt",
                "f1",
                ME,
                "private_key_jwt",
                "f1",
                "refresh token",
                None,
            ),
            ("none", "f1", ME, "none", "f1", "refresh token", None),
            // Recorded before methods were: the fingerprint still guards the document.
            ("", "f1", ME, "none", "f1", "refresh token", None),
            (
                "private_key_jwt",
                "f1",
                ME,
                "none",
                "f1",
                "refresh token",
                Some((
                    ErrorCode::InvalidClient,
                    "this grant was made for a client authenticating with private_key_jwt; this request used none",
                    false,
                )),
            ),
            (
                "none",
                "f1",
                ME,
                "private_key_jwt",
                "f1",
                "refresh token",
                Some((
                    ErrorCode::InvalidClient,
                    "this grant was made for a client authenticating with none; this request used private_key_jwt",
                    false,
                )),
            ),
            (
                "none",
                "f1",
                "https://other.example/doc.json",
                "none",
                "f1",
                "refresh token",
                Some((
                    ErrorCode::InvalidGrant,
                    "the refresh token was issued to another client",
                    false,
                )),
            ),
            (
                "none",
                "f1",
                "https://other.example/doc.json",
                "none",
                "f1",
                "authorization code",
                Some((
                    ErrorCode::InvalidGrant,
                    "the authorization code was issued to another client",
                    true,
                )),
            ),
            (
                "none",
                "f1",
                ME,
                "none",
                "f2",
                "refresh token",
                Some((
                    ErrorCode::InvalidGrant,
                    "the client's metadata document changed since this grant (redirect URIs, keys or authentication method); sign in again",
                    true,
                )),
            ),
        ];
        for (gm, gf, client, method, fp, what, want) in cases {
            let got = binding(&grant(gm, gf), client, method, fp).refusal(what);
            let got = got.map(|(e, revoke)| (e.code, e.description, revoke));
            let want = want.map(|(c, d, r)| (c, d.to_owned(), r));
            assert_eq!(got, want, "{gm} {gf} {client} {method} {fp}");
        }
    }
}
