//! What the authorization server learns about an admitted CIMD client.

use std::collections::BTreeSet;

use url::Url;

use super::config::AuthMethod;
use super::document::{ClientKeys, RedirectKind, RedirectUri, is_loopback_host};
use super::error::{CimdError, PolicyRule};

/// An admitted client: its document after the policy of the request was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDocument {
    /// The URL, exactly as the client sent it and the document states it.
    pub client_id: String,
    /// The client_id's host, to show on the consent page.
    pub client_id_host: String,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    /// The method chosen for the token endpoint. `PrivateKeyJwt` makes the client confidential:
    /// every token request must then carry a `client_assertion` signed by one of its keys.
    pub auth_method: AuthMethod,
    pub keys: Option<ClientKeys>,
    /// Grant types after the policy (confidential-only grants are stripped from public clients).
    pub grant_types: Vec<String>,
    pub scope_limit: ScopeLimit,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    pub tos_uri: Option<String>,
    pub policy_uri: Option<String>,
    /// SHA-256 (hex) of the redirect URIs and keys. Store it with consents and grants; when a
    /// later resolve returns another value, what the old document was given must be revoked.
    pub fingerprint: String,
    /// The policies this client was admitted under (baseline first), for the audit log.
    pub policies: Vec<String>,
    /// Whether the baseline (the platform's policy) named this client (an `allowClientIds` entry or a matching
    /// client_id pattern) rather than admitting any well-formed document: only then is it trusted with redirects
    /// before a person saw it. A team's policy does not vouch on the shared issuer's behalf.
    pub vouched: bool,
    pub(crate) redirect_kinds: Vec<RedirectKind>,
}

impl ClientDocument {
    /// True when every redirect URI is loopback: anyone can run a client with this client_id on
    /// their own machine, so the consent page must warn (MCP authorization, security considerations).
    pub fn all_redirects_loopback(&self) -> bool {
        !self.redirect_kinds.is_empty()
            && self
                .redirect_kinds
                .iter()
                .all(|k| *k == RedirectKind::Loopback)
    }

    /// Whether the token endpoint must authenticate this client.
    pub fn is_confidential(&self) -> bool {
        self.auth_method == AuthMethod::PrivateKeyJwt
    }

    /// Whether the client may use `grant_type`.
    pub fn allows_grant_type(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }

    /// Accept `requested` only when it is one of the registered redirect URIs by exact string
    /// comparison, except that a loopback redirect may use any port (RFC 8252 §7.3).
    pub fn check_redirect_uri(&self, requested: &str) -> Result<(), CimdError> {
        if self.redirect_uris.iter().any(|r| r == requested) {
            return Ok(());
        }
        let same_but_port = Url::parse(requested).ok().is_some_and(|req| {
            is_loopback_host(req.host())
                && req.scheme() == "http"
                && self
                    .redirect_uris
                    .iter()
                    .filter_map(|r| Url::parse(r).ok())
                    .any(|reg| {
                        reg.scheme() == "http"
                            && reg.host() == req.host()
                            && reg.path() == req.path()
                            && reg.query() == req.query()
                            && reg.fragment().is_none()
                            && req.fragment().is_none()
                    })
        });
        if same_but_port {
            Ok(())
        } else {
            Err(CimdError::RedirectUriNotRegistered(
                requested.chars().take(300).collect(),
            ))
        }
    }
}

/// The scopes a client may request, from each policy and from the document's own `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeLimit {
    pub rules: Vec<ScopeRule>,
}

/// One source of a scope limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRule {
    /// The policy name, or `client document` for the document's own `scope` property.
    pub source: String,
    pub allowed: Option<BTreeSet<String>>,
    pub max_per_request: Option<u32>,
}

impl ScopeLimit {
    /// Refuse a request whose scopes go beyond any rule.
    pub fn check<'a>(&self, requested: impl IntoIterator<Item = &'a str>) -> Result<(), CimdError> {
        let requested: BTreeSet<&str> = requested.into_iter().collect();
        for rule in &self.rules {
            let denied = |r| CimdError::Denied {
                policy: rule.source.clone(),
                rule: r,
            };
            if let Some(allowed) = &rule.allowed
                && let Some(extra) = requested.iter().find(|s| !allowed.contains(**s))
            {
                return Err(denied(PolicyRule::ScopeNotAllowed((*extra).to_owned())));
            }
            if let Some(max) = rule.max_per_request
                && requested.len() > max as usize
            {
                return Err(denied(PolicyRule::TooManyScopes {
                    requested: requested.len(),
                    max,
                }));
            }
        }
        Ok(())
    }
}

pub(crate) fn redirect_parts(uris: &[RedirectUri]) -> (Vec<String>, Vec<RedirectKind>) {
    uris.iter().map(|r| (r.uri.clone(), r.kind.clone())).unzip()
}
