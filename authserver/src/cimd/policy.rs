//! Admission: a checked document against the baseline and the resource's policy. Pure.

use url::Url;

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
        // host_str keeps IPv6 brackets on both sides, so literals compare like names.
        let Some(host) = url.host_str() else {
            return false;
        };
        let host_ok = match &self.host {
            HostPattern::Exact(h) => h == host,
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

    /// Whether this policy names the client: listed in `allowClientIds`, or matching one of its patterns. A policy
    /// without patterns admits any client but vouches for none.
    pub fn vouches_for(&self, url: &Url) -> bool {
        self.policy
            .allow_client_ids
            .iter()
            .any(|a| a == url.as_str())
            || self.patterns.iter().any(|p| p.matches(url))
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
                RedirectKind::Https { .. } if !rules.allow_web => {
                    Some(RedirectProblem::WebNotAllowed)
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
        // Only the baseline (the platform's own policy) vouches: a team's policy naming hosts must not make the
        // shared issuer redirect to whatever those hosts list.
        vouched: Url::parse(&doc.client_id)
            .is_ok_and(|url| policies.first().is_some_and(|b| b.vouches_for(&url))),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cimd::address::AddressPolicy;
    use crate::cimd::document::check_document;

    const URL: &str = "https://a1.agents.example.com/agents/one.json";

    fn checked(
        edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> CheckedDocument {
        let mut doc = json!({
            "client_id": URL,
            "client_name": "Agent One",
            "redirect_uris": ["https://a1.agents.example.com/cb", "http://127.0.0.1/cb"],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials", "password"],
        });
        edit(doc.as_object_mut().expect("object"));
        check_document(
            URL,
            doc.to_string().as_bytes(),
            false,
            &AddressPolicy::default(),
        )
        .expect("valid")
    }

    fn compiled(name: &str, edit: impl FnOnce(&mut Policy)) -> CompiledPolicy {
        let mut p = Policy::default();
        edit(&mut p);
        CompiledPolicy::compile(name, &p).expect("policy compiles")
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn client_id_patterns() {
        let table: &[(&str, &str, bool)] = &[
            (
                "https://*.agents.example.com/",
                "https://a.agents.example.com/x",
                true,
            ),
            (
                "https://*.agents.example.com/",
                "https://a.b.agents.example.com/x",
                true,
            ),
            (
                "https://*.agents.example.com/",
                "https://agents.example.com/x",
                false,
            ),
            (
                "https://*.agents.example.com/",
                "https://evilagents.example.com/x",
                false,
            ),
            (
                "https://*.agents.example.com/",
                "https://a.agents.example.com.evil.io/x",
                false,
            ),
            (
                "https://*.agents.example.com/",
                "https://a.agents.example.com:8443/x",
                false,
            ),
            (
                "https://app.example.com/agents",
                "https://app.example.com/agents/x",
                true,
            ),
            (
                "https://app.example.com/agents/",
                "https://app.example.com/agents/x",
                true,
            ),
            (
                "https://app.example.com/agents",
                "https://app.example.com/agents",
                true,
            ),
            (
                "https://app.example.com/agents",
                "https://app.example.com/agentsx",
                false,
            ),
            (
                "https://app.example.com/agents",
                "https://app.example.com/other/agents",
                false,
            ),
            (
                "https://app.example.com/",
                "https://www.app.example.com/x",
                false,
            ),
            (
                "https://app.example.com:8443/",
                "https://app.example.com:8443/x",
                true,
            ),
            ("https://127.0.0.1:8443/", "https://127.0.0.1:8443/x", true),
            ("https://[2001:db8::1]/", "https://[2001:db8::1]/x", true),
            ("https://[2001:db8::1]/", "https://[2001:db8::2]/x", false),
        ];
        for (pattern, candidate, want) in table {
            let p = ClientIdPattern::parse(pattern).expect("pattern");
            assert_eq!(
                p.matches(&url(candidate)),
                *want,
                "{pattern} vs {candidate}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_config_errors() {
        for (pattern, why) in [
            ("https://*/", "may only use `*.` at the start of the host"),
            ("not a url", "is not a URL"),
            (
                "https://a.*.example.com/",
                "may only use `*.` at the start of the host",
            ),
            (
                "https://*.com/",
                "must name at least a registrable domain after `*.`",
            ),
            ("ftp://example.com/", "must start with https://"),
            (
                "https://example.com/?q",
                "must not have a query, fragment or userinfo",
            ),
        ] {
            let err = ClientIdPattern::parse(pattern).expect_err(pattern);
            assert!(err.contains(why), "{pattern}: {err}");
        }
    }

    #[test]
    fn deny_list_and_patterns_decide_before_fetching() {
        let partners = compiled("partners", |p| {
            p.client_id_patterns = vec!["https://*.agents.example.com/agents".into()];
            p.allow_client_ids = vec!["https://tools.example.org/client".into()];
            p.deny_client_ids = vec!["https://bad.agents.example.com/agents/x".into()];
        });
        assert_eq!(partners.admit_client_id(&url(URL)), Ok(()));
        assert_eq!(
            partners.admit_client_id(&url("https://tools.example.org/client")),
            Ok(())
        );
        assert_eq!(
            partners.admit_client_id(&url("https://bad.agents.example.com/agents/x")),
            Err(CimdError::Denied {
                policy: "partners".into(),
                rule: PolicyRule::DeniedClientId
            })
        );
        assert_eq!(
            partners.admit_client_id(&url("https://elsewhere.example.net/agents/x")),
            Err(CimdError::Denied {
                policy: "partners".into(),
                rule: PolicyRule::NoPatternMatches(vec![
                    "https://*.agents.example.com/agents".into()
                ])
            })
        );
    }

    #[test]
    fn a_permissive_baseline_admits_and_strips_grants() {
        let baseline = compiled("baseline", |_| {});
        let client = admit(&checked(|_| {}), &[&baseline]).expect("admitted");
        assert_eq!(client.auth_method, AuthMethod::None);
        // Public client: client_credentials stripped; password is gone from OAuth 2.1.
        assert_eq!(
            client.grant_types,
            vec!["authorization_code", "refresh_token"]
        );
        assert!(!client.all_redirects_loopback());
        assert!(!client.is_confidential());
        assert_eq!(client.policies, vec!["baseline"]);
    }

    #[test]
    fn each_policy_rule_refuses_its_case() {
        let doc = checked(|_| {});
        let denied = |policy: &str, rule| CimdError::Denied {
            policy: policy.into(),
            rule,
        };
        let table: Vec<(CompiledPolicy, CimdError)> = vec![
            (
                compiled("no-loopback", |p| p.redirect_uris.allow_loopback = false),
                denied(
                    "no-loopback",
                    PolicyRule::RedirectUri {
                        uri: "http://127.0.0.1/cb".into(),
                        problem: RedirectProblem::LoopbackNotAllowed,
                    },
                ),
            ),
            (
                compiled("native-only", |p| p.redirect_uris.allow_web = false),
                denied(
                    "native-only",
                    PolicyRule::RedirectUri {
                        uri: "https://a1.agents.example.com/cb".into(),
                        problem: RedirectProblem::WebNotAllowed,
                    },
                ),
            ),
            (
                compiled("keys-only", |p| {
                    p.allowed_auth_methods = vec![AuthMethod::PrivateKeyJwt]
                }),
                denied("keys-only", PolicyRule::AuthMethodNotAllowed("none")),
            ),
            (
                compiled("with-terms", |p| {
                    p.required_properties = vec!["tos_uri".into()]
                }),
                denied(
                    "with-terms",
                    PolicyRule::MissingRequiredProperty("tos_uri".into()),
                ),
            ),
            (
                compiled("cc-only", |p| {
                    p.allowed_grant_types = vec!["client_credentials".into()]
                }),
                denied(
                    "cc-only",
                    PolicyRule::NoGrantTypeLeft(vec![
                        "authorization_code".into(),
                        "refresh_token".into(),
                        "client_credentials".into(),
                        "password".into(),
                    ]),
                ),
            ),
        ];
        let baseline = compiled("baseline", |_| {});
        for (policy, want) in table {
            assert_eq!(
                admit(&doc, &[&baseline, &policy]),
                Err(want.clone()),
                "{}",
                policy.name
            );
            // The same rule in the baseline refuses with the baseline's name.
            let as_baseline =
                CompiledPolicy::compile("baseline", &policy.policy).expect("compiles");
            let CimdError::Denied { rule, .. } = want else {
                unreachable!()
            };
            assert_eq!(
                admit(&doc, &[&as_baseline]),
                Err(denied("baseline", rule)),
                "{} as baseline",
                policy.name
            );
        }
    }

    #[test]
    fn same_site_rule_allows_the_host_and_its_subdomains_and_loopback() {
        let same_site = compiled("same-site", |p| p.redirect_uris.require_same_site = true);
        let ok = checked(|d| {
            d.insert(
                "redirect_uris".into(),
                json!([
                    "https://a1.agents.example.com/cb",
                    "https://x.a1.agents.example.com/cb",
                    "http://localhost:9/cb"
                ]),
            );
        });
        assert!(admit(&ok, &[&same_site]).is_ok());
        let elsewhere = checked(|d| {
            d.insert(
                "redirect_uris".into(),
                json!(["https://agents.example.com/cb"]),
            );
        });
        assert_eq!(
            admit(&elsewhere, &[&same_site]),
            Err(CimdError::Denied {
                policy: "same-site".into(),
                rule: PolicyRule::RedirectUri {
                    uri: "https://agents.example.com/cb".into(),
                    problem: RedirectProblem::NotSameSite("a1.agents.example.com".into()),
                }
            })
        );
        let private_use = checked(|d| {
            d.insert("redirect_uris".into(), json!(["com.example.agent:/cb"]));
        });
        assert_eq!(
            admit(&private_use, &[&compiled("baseline", |_| {})]),
            Err(CimdError::Denied {
                policy: "baseline".into(),
                rule: PolicyRule::RedirectUri {
                    uri: "com.example.agent:/cb".into(),
                    problem: RedirectProblem::PrivateUseScheme,
                }
            })
        );
    }

    #[test]
    fn confidential_clients_keep_confidential_grants_and_pick_by_policy() {
        let doc = checked(|d| {
            d.insert(
                "token_endpoint_auth_methods_supported".into(),
                json!(["none", "private_key_jwt"]),
            );
            d.insert(
                "jwks_uri".into(),
                json!("https://a1.agents.example.com/jwks"),
            );
        });
        let baseline = compiled("baseline", |_| {});
        let open = admit(&doc, &[&baseline]).expect("admitted");
        assert_eq!(
            open.auth_method,
            AuthMethod::None,
            "the client's first choice"
        );
        let strict = compiled("strict", |p| {
            p.allowed_auth_methods = vec![AuthMethod::PrivateKeyJwt]
        });
        let client = admit(&doc, &[&baseline, &strict]).expect("admitted");
        assert_eq!(client.auth_method, AuthMethod::PrivateKeyJwt);
        assert!(client.is_confidential());
        assert_eq!(
            client.grant_types,
            vec!["authorization_code", "refresh_token"]
        );
        let with_cc = compiled("cc", |p| {
            p.allowed_auth_methods = vec![AuthMethod::PrivateKeyJwt];
            p.allowed_grant_types = vec!["authorization_code".into(), "client_credentials".into()];
        });
        let client = admit(&doc, &[&with_cc]).expect("admitted");
        assert_eq!(
            client.grant_types,
            vec!["authorization_code", "client_credentials"]
        );
    }

    #[test]
    fn scope_limits_from_policies_and_document() {
        let doc = checked(|d| {
            d.insert("scope".into(), json!("files:read files:write tools:call"));
        });
        let limited = compiled("limited", |p| {
            p.allowed_scopes = Some(vec!["files:read".into(), "files:write".into()]);
            p.max_scopes_per_request = Some(1);
        });
        let client = admit(&doc, &[&compiled("baseline", |_| {}), &limited]).expect("admitted");
        assert_eq!(client.scope_limit.check(["files:read"]), Ok(()));
        assert_eq!(
            client.scope_limit.check(["tools:call"]),
            Err(CimdError::Denied {
                policy: "limited".into(),
                rule: PolicyRule::ScopeNotAllowed("tools:call".into())
            })
        );
        assert_eq!(
            client.scope_limit.check(["files:read", "files:write"]),
            Err(CimdError::Denied {
                policy: "limited".into(),
                rule: PolicyRule::TooManyScopes {
                    requested: 2,
                    max: 1
                }
            })
        );
        let open = admit(&doc, &[&compiled("baseline", |_| {})]).expect("admitted");
        assert_eq!(
            open.scope_limit.check(["admin"]),
            Err(CimdError::Denied {
                policy: "client document".into(),
                rule: PolicyRule::ScopeNotAllowed("admin".into())
            })
        );
        assert_eq!(
            open.scope_limit
                .check(["admin"])
                .map_err(|e| e.oauth_error()),
            Err("invalid_scope")
        );
    }

    #[test]
    fn redirect_uri_matching_is_exact_except_loopback_ports() {
        let client = admit(&checked(|_| {}), &[&compiled("baseline", |_| {})]).expect("admitted");
        assert_eq!(
            client.check_redirect_uri("https://a1.agents.example.com/cb"),
            Ok(())
        );
        assert_eq!(
            client.check_redirect_uri("http://127.0.0.1:53121/cb"),
            Ok(())
        );
        for bad in [
            "https://a1.agents.example.com/cb/",
            "https://a1.agents.example.com/CB",
            "https://a1.agents.example.com:444/cb",
            "https://a1.agents.example.com/cb?x=1",
            "http://127.0.0.1:53121/other",
            "http://localhost:53121/cb",
            "https://127.0.0.1:53121/cb",
            "https://evil.example/cb",
        ] {
            assert_eq!(
                client.check_redirect_uri(bad),
                Err(CimdError::RedirectUriNotRegistered(bad.into())),
                "{bad}"
            );
        }
        let loopback_only = admit(
            &checked(|d| {
                d.insert(
                    "redirect_uris".into(),
                    json!(["http://127.0.0.1/cb", "http://[::1]/cb"]),
                );
            }),
            &[&compiled("baseline", |_| {})],
        )
        .expect("admitted");
        assert!(loopback_only.all_redirects_loopback());
    }
}
