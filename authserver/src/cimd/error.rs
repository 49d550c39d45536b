//! Why a CIMD client was refused, in words a person understands and in OAuth's own terms.

use std::net::IpAddr;

/// Every way resolving a CIMD client can fail. Cheap to clone: a single-flight fetch hands the
/// same outcome to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CimdError {
    #[error("client metadata documents are not accepted by this server")]
    Disabled,
    #[error("the {which} URL is refused: {rule}")]
    UrlRefused { which: &'static str, rule: UrlRule },
    #[error("{host} resolves to {addr}, {reason}; such addresses are never fetched")]
    ForbiddenAddress {
        host: String,
        addr: IpAddr,
        reason: &'static str,
    },
    #[error("the host {host} could not be resolved: {detail}")]
    Dns { host: String, detail: String },
    #[error("too many client metadata fetches are in progress; try again shortly")]
    Busy,
    #[error("could not fetch {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("fetching {url} took longer than {after_ms} ms")]
    Timeout { url: String, after_ms: u64 },
    #[error("{url} answered with a redirect (HTTP {status}); redirects are not followed")]
    Redirect { url: String, status: u16 },
    #[error("{url} answered with HTTP {status}; only 200 is accepted")]
    HttpStatus { url: String, status: u16 },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} sent content type {found:?}; a JSON document is required")]
    ContentType { url: String, found: String },
    #[error("{url} did not send valid JSON: {detail}")]
    InvalidJson { url: String, detail: String },
    #[error("the client metadata document is invalid: {0}")]
    Document(DocumentRule),
    #[error("policy {policy:?} refuses this client: {rule}")]
    Denied { policy: String, rule: PolicyRule },
    #[error("redirect_uri {0:?} is not one of the client's registered redirect_uris")]
    RedirectUriNotRegistered(String),
    #[error("no CIMD policy is named {0:?}")]
    UnknownPolicy(String),
    #[error("the CIMD configuration is invalid: {0}")]
    Config(String),
}

impl CimdError {
    /// The OAuth 2.1 error code this refusal is reported with.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            CimdError::Denied {
                rule: PolicyRule::ScopeNotAllowed(_) | PolicyRule::TooManyScopes { .. },
                ..
            } => "invalid_scope",
            CimdError::RedirectUriNotRegistered(_) => "invalid_request",
            CimdError::UnknownPolicy(_) | CimdError::Config(_) => "server_error",
            // A fetch that may work a moment later says so: `invalid_client` makes SDKs drop the person's tokens.
            CimdError::Busy
            | CimdError::Dns { .. }
            | CimdError::Connect { .. }
            | CimdError::Timeout { .. } => "temporarily_unavailable",
            CimdError::HttpStatus { status, .. } if *status == 429 || *status >= 500 => {
                "temporarily_unavailable"
            }
            _ => "invalid_client",
        }
    }

    /// The sentence shown on the error page and written to the audit log: it names the rule.
    pub fn description(&self) -> String {
        self.to_string()
    }

    /// A low-cardinality reason for Prometheus labels.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CimdError::Disabled => "cimd_disabled",
            CimdError::UrlRefused { .. } => "url_refused",
            CimdError::ForbiddenAddress { .. } => "forbidden_address",
            CimdError::Dns { .. } => "dns_failed",
            CimdError::Busy => "busy",
            CimdError::Connect { .. } => "connect_failed",
            CimdError::Timeout { .. } => "timeout",
            CimdError::Redirect { .. } => "redirect",
            CimdError::HttpStatus { .. } => "http_status",
            CimdError::TooLarge { .. } => "too_large",
            CimdError::ContentType { .. } => "content_type",
            CimdError::InvalidJson { .. } => "invalid_json",
            CimdError::Document(_) => "document_invalid",
            CimdError::Denied { .. } => "policy_denied",
            CimdError::RedirectUriNotRegistered(_) => "redirect_uri_not_registered",
            CimdError::UnknownPolicy(_) => "unknown_policy",
            CimdError::Config(_) => "config_invalid",
        }
    }
}

/// The rules a client_id (or jwks_uri) URL must follow before anything is fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRule {
    #[error("it is not an absolute URL")]
    NotAUrl,
    #[error("it is longer than {0} characters")]
    TooLong(usize),
    #[error("its scheme must be https")]
    NotHttps,
    #[error("it must not contain a username or password")]
    Userinfo,
    #[error("it must not contain a fragment")]
    Fragment,
    #[error("it must not contain a query string")]
    Query,
    #[error("it must have a host name")]
    NoHost,
    #[error("its host is not a valid DNS name")]
    BadHost,
    #[error("it must have a path after the host")]
    NoPath,
    #[error("it must not contain `.` or `..` path segments")]
    DotSegment,
    #[error("it must not contain whitespace or control characters")]
    BadCharacters,
    #[error("it is not written in canonical form (it reads as {0:?})")]
    NotCanonical(String),
}

/// The rules every metadata document must follow, whatever the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentRule {
    #[error("it must be a JSON object")]
    NotAnObject,
    #[error("it repeats the property {0:?}")]
    DuplicateProperty(String),
    #[error("its client_id {found:?} differs from the URL it was fetched from")]
    ClientIdMismatch { found: String },
    #[error("the property {0} is required")]
    Missing(&'static str),
    #[error("the property {property} must be {expected}")]
    WrongType {
        property: &'static str,
        expected: &'static str,
    },
    #[error("it must not contain a client_secret")]
    ClientSecret,
    #[error(
        "token_endpoint_auth_method {0:?} uses a shared secret, which a metadata document cannot carry"
    )]
    SharedSecretAuthMethod(String),
    #[error("token_endpoint_auth_method {0:?} is not supported (use none or private_key_jwt)")]
    UnsupportedAuthMethod(String),
    #[error("none of token_endpoint_auth_methods_supported {0:?} is none or private_key_jwt")]
    NoUsableAuthMethod(Vec<String>),
    #[error("private_key_jwt needs jwks or jwks_uri")]
    KeysMissing,
    #[error("jwks and jwks_uri must not both be present")]
    BothJwksAndJwksUri,
    #[error("jwks must be an object with a non-empty keys array")]
    InvalidJwks,
    #[error("jwks contains a private key part ({0:?}); publish public keys only")]
    PrivateKeyInJwks(String),
    #[error("redirect_uris must list at least one URI")]
    NoRedirectUris,
    #[error("redirect URI {uri:?} is refused: {problem}")]
    RedirectUri {
        uri: String,
        problem: RedirectProblem,
    },
    #[error("{property} {uri:?} must be an https URL")]
    UnsafeUri { property: &'static str, uri: String },
    #[error("response_types must include code and nothing else (found {0:?})")]
    ResponseTypes(Vec<String>),
    #[error("client_name must be between 1 and {0} characters")]
    ClientNameLength(usize),
}

/// Why one redirect URI is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectProblem {
    #[error("it is not an absolute URI")]
    NotAUri,
    #[error("it contains a wildcard")]
    Wildcard,
    #[error("it contains a fragment")]
    Fragment,
    #[error("it contains a username or password")]
    Userinfo,
    #[error("the scheme {0:?} is never allowed")]
    ForbiddenScheme(String),
    #[error("plain http is only allowed for loopback addresses")]
    HttpNotLoopback,
    #[error("loopback redirects are not allowed by this policy")]
    LoopbackNotAllowed,
    #[error("https (web) redirects are not allowed by this policy")]
    WebNotAllowed,
    #[error("it is not on the client_id's site {0:?}")]
    NotSameSite(String),
    #[error("private-use URI schemes are not allowed by this policy")]
    PrivateUseScheme,
}

/// The admission rules of a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRule {
    #[error("the client_id is on the deny list")]
    DeniedClientId,
    #[error("the client_id matches none of the allowed patterns {0:?}")]
    NoPatternMatches(Vec<String>),
    #[error("token_endpoint_auth_method {0} is not allowed")]
    AuthMethodNotAllowed(&'static str),
    #[error("redirect URI {uri:?} is refused: {problem}")]
    RedirectUri {
        uri: String,
        problem: RedirectProblem,
    },
    #[error("the document must contain {0}")]
    MissingRequiredProperty(String),
    #[error("none of the client's grant types {0:?} is allowed")]
    NoGrantTypeLeft(Vec<String>),
    #[error("the scope {0:?} may not be requested by this client")]
    ScopeNotAllowed(String),
    #[error("{requested} scopes were requested; at most {max} are allowed")]
    TooManyScopes { requested: usize, max: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_that_may_pass_later_is_temporary() {
        let url = || "https://agent.example/doc.json".to_owned();
        let cases = [
            (CimdError::Busy, "temporarily_unavailable"),
            (
                CimdError::Dns {
                    host: "agent.example".into(),
                    detail: "no answer".into(),
                },
                "temporarily_unavailable",
            ),
            (
                CimdError::Connect {
                    url: url(),
                    detail: "refused".into(),
                },
                "temporarily_unavailable",
            ),
            (
                CimdError::Timeout {
                    url: url(),
                    after_ms: 3000,
                },
                "temporarily_unavailable",
            ),
            (
                CimdError::HttpStatus {
                    url: url(),
                    status: 503,
                },
                "temporarily_unavailable",
            ),
            (
                CimdError::HttpStatus {
                    url: url(),
                    status: 429,
                },
                "temporarily_unavailable",
            ),
            (
                CimdError::HttpStatus {
                    url: url(),
                    status: 404,
                },
                "invalid_client",
            ),
            (
                CimdError::Redirect {
                    url: url(),
                    status: 302,
                },
                "invalid_client",
            ),
            (CimdError::Disabled, "invalid_client"),
            (CimdError::UnknownPolicy("p".into()), "server_error"),
        ];
        for (error, code) in cases {
            assert_eq!(error.oauth_error(), code, "{error}");
        }
    }
}
