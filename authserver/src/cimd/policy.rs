//! Admission: a checked document against the baseline and the resource's policy. Pure.

use url::{Host, Url};

use super::client::{ClientDocument, ScopeLimit, ScopeRule, redirect_parts};
use super::config::{AuthMethod, Policy};
use super::document::{CheckedDocument, RedirectKind};
use super::error::{CimdError, PolicyRule, RedirectProblem};

/// Grants OAuth 2.1 removed: never kept, whatever a policy lists.
const REMOVED_GRANTS: &[&str] = &["implicit", "password"];
/// Grants only a client that authenticates may use.
const CONFIDENTIAL_ONLY_GRANTS: &[&str] = &[
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
];

/// A policy with its client_id patterns parsed, ready to decide.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    pub policy: Policy,
    patterns: Vec<ClientIdPattern>,
}

/// `https://host/path-prefix`, the host exact or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientIdPattern {
    scheme: String,
    host: HostPattern,
    port: Option<u16>,
    path_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    SubdomainOf(String),
}

const WILDCARD_LABEL: &str = "wildcard-label-0";

impl ClientIdPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("client_id pattern {pattern:?} {why}");
        let (text, wildcard) = match pattern.split_once("://*.") {
            Some((scheme, rest)) => (format!("{scheme}://{WILDCARD_LABEL}.{rest}"), true),
            None => (pattern.to_owned(), false),
        };
        if text.contains('*') {
            return Err(bad("may only use `*.` at the start of the host"));
        }
        let url = Url::parse(&text).map_err(|e| bad(&format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad("must start with https://"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("must not have a query, fragment or userinfo"));
        }
        let host = url.host_str().ok_or_else(|| bad("has no host"))?.to_owned();
        let host = if wildcard {
            let suffix = host
                .strip_prefix(&format!("{WILDCARD_LABEL}."))
                .filter(|s| s.contains('.'))
                .ok_or_else(|| bad("must name at least a registrable domain after `*.`"))?;
            HostPattern::SubdomainOf(suffix.to_owned())
        } else {
            HostPattern::Exact(host)
        };
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host,
            port: url.port_or_known_default(),
            path_prefix: url.path().trim_end_matches('/').to_owned(),
        })
    }

    fn matches(&self, url: &Url) -> bool {
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_owned(),
            Some(other) => other.to_string(),
            None => return false,
        };
        let host_ok = match &self.host {
            HostPattern::Exact(h) => *h == host,
            HostPattern::SubdomainOf(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| label.len() > 1 && label.ends_with('.')),
        };
        let path = url.path();
        let path_ok = self.path_prefix.is_empty()
            || path == self.path_prefix
            || path
                .strip_prefix(self.path_prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        url.scheme() == self.scheme
            && url.port_or_known_default() == self.port
            && host_ok
            && path_ok
    }
}

impl CompiledPolicy {
    pub fn compile(name: &str, policy: &Policy) -> Result<Self, CimdError> {
        let patterns = policy
            .client_id_patterns
            .iter()
            .map(|p| ClientIdPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CimdError::Config(format!("policy {name:?}: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            policy: policy.clone(),
            patterns,
        })
    }

    fn deny(&self, rule: PolicyRule) -> CimdError {
        CimdError::Denied {
            policy: self.name.clone(),
            rule,
        }
    }

    /// The rules decided by the client_id alone: checked before anything is fetched, so a
    /// refused client never makes the server connect anywhere.
    pub fn admit_client_id(&self, url: &Url) -> Result<(), CimdError> {
        let client_id = url.as_str();
        if self.policy.deny_client_ids.iter().any(|d| d == client_id) {
            return Err(self.deny(PolicyRule::DeniedClientId));
        }
        if self.patterns.is_empty() || self.policy.allow_client_ids.iter().any(|a| a == client_id) {
            return Ok(());
        }
        if self.patterns.iter().any(|p| p.matches(url)) {
            Ok(())
        } else {
            Err(self.deny(PolicyRule::NoPatternMatches(
                self.policy.client_id_patterns.clone(),
            )))
        }
    }

    fn check_redirects(&self, doc: &CheckedDocument) -> Result<(), CimdError> {
        let rules = &self.policy.redirect_uris;
        for redirect in &doc.redirect_uris {
            let problem = match &redirect.kind {
                RedirectKind::Loopback if !rules.allow_loopback => {
                    Some(RedirectProblem::LoopbackNotAllowed)
                }
                RedirectKind::PrivateUse if !rules.allow_private_use_schemes => {
                    Some(RedirectProblem::PrivateUseScheme)
                }
                RedirectKind::Https { host }
                    if rules.require_same_site && !same_site(host, &doc.client_id_host) =>
                {
                    Some(RedirectProblem::NotSameSite(doc.client_id_host.clone()))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(self.deny(PolicyRule::RedirectUri {
                    uri: redirect.uri.clone(),
                    problem,
                }));
            }
        }
        Ok(())
    }

    fn check_required(&self, doc: &CheckedDocument) -> Result<(), CimdError> {
        match self
            .policy
            .required_properties
            .iter()
            .find(|p| !doc.properties.contains(*p))
        {
            Some(missing) => Err(self.deny(PolicyRule::MissingRequiredProperty(missing.clone()))),
            None => Ok(()),
        }
    }
}

/// The redirect host is the client_id host or one of its subdomains. Deliberately stricter than
/// the browser's "site" (no public-suffix list): sibling hosts must be listed by pattern instead.
fn same_site(redirect_host: &str, client_host: &str) -> bool {
    redirect_host == client_host
        || redirect_host
            .strip_suffix(client_host)
            .is_some_and(|label| label.ends_with('.') && label.len() > 1)
}

/// Apply every policy (baseline first) to a checked document.
pub fn admit(
    doc: &CheckedDocument,
    policies: &[&CompiledPolicy],
) -> Result<ClientDocument, CimdError> {
    for policy in policies {
        policy.check_required(doc)?;
        policy.check_redirects(doc)?;
    }
    let auth_method = choose_auth_method(doc, policies)?;

    let mut grant_types: Vec<String> = doc
        .grant_types
        .iter()
        .filter(|g| !REMOVED_GRANTS.contains(&g.as_str()))
        .filter(|g| {
            auth_method == AuthMethod::PrivateKeyJwt
                || !CONFIDENTIAL_ONLY_GRANTS.contains(&g.as_str())
        })
        .cloned()
        .collect();
    grant_types.dedup();
    for policy in policies {
        grant_types.retain(|g| policy.policy.allowed_grant_types.contains(g));
        if grant_types.is_empty() {
            return Err(policy.deny(PolicyRule::NoGrantTypeLeft(doc.grant_types.clone())));
        }
    }

    let mut scope_rules: Vec<ScopeRule> = policies
        .iter()
        .filter(|p| p.policy.allowed_scopes.is_some() || p.policy.max_scopes_per_request.is_some())
        .map(|p| ScopeRule {
            source: p.name.clone(),
            allowed: p
                .policy
                .allowed_scopes
                .as_ref()
                .map(|s| s.iter().cloned().collect()),
            max_per_request: p.policy.max_scopes_per_request,
        })
        .collect();
    if let Some(scope) = &doc.scope {
        scope_rules.push(ScopeRule {
            source: "client document".to_owned(),
            allowed: Some(scope.clone()),
            max_per_request: None,
        });
    }

    let (redirect_uris, redirect_kinds) = redirect_parts(&doc.redirect_uris);
    Ok(ClientDocument {
        client_id: doc.client_id.clone(),
        client_id_host: doc.client_id_host.clone(),
        client_name: doc.client_name.clone(),
        redirect_uris,
        auth_method,
        keys: doc.keys.clone(),
        grant_types,
        scope_limit: ScopeLimit { rules: scope_rules },
        logo_uri: doc.logo_uri.clone(),
        client_uri: doc.client_uri.clone(),
        tos_uri: doc.tos_uri.clone(),
        policy_uri: doc.policy_uri.clone(),
        fingerprint: doc.fingerprint.clone(),
        policies: policies.iter().map(|p| p.name.clone()).collect(),
        redirect_kinds,
    })
}

/// The client's first usable method that every policy allows.
fn choose_auth_method(
    doc: &CheckedDocument,
    policies: &[&CompiledPolicy],
) -> Result<AuthMethod, CimdError> {
    let allowed_by_all = |m: &AuthMethod| {
        policies
            .iter()
            .all(|p| p.policy.allowed_auth_methods.contains(m))
    };
    if let Some(method) = doc.auth_candidates.iter().copied().find(allowed_by_all) {
        return Ok(method);
    }
    let first = doc
        .auth_candidates
        .first()
        .copied()
        .unwrap_or(AuthMethod::None);
    let refusing = policies
        .iter()
        .find(|p| !p.policy.allowed_auth_methods.contains(&first))
        .or(policies.first());
    Err(CimdError::Denied {
        policy: refusing.map(|p| p.name.clone()).unwrap_or_default(),
        rule: PolicyRule::AuthMethodNotAllowed(first.as_str()),
    })
}
