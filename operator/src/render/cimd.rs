//! CIMDPolicy resources -> the CIMD section of the authserver config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::ResourceExt;
use mcp_authz_authserver::cimd::{AuthMethod, CimdConfig, FetchLimits, Policy, RedirectUriRules};

use crate::api::CIMDPolicy;
use crate::api::cimd_policy::{ApplicationType, GrantType, TokenEndpointAuthMethod};

/// Where a policy's trusted CA bundle is mounted in the authserver pod.
pub const CA_BUNDLE_DIR: &str = "/etc/mcp-authz/cimd-ca";

/// The key of a policy in the rendered config: `<namespace>/<name>`.
pub fn policy_key(policy: &CIMDPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// One CIMDPolicy as an admission policy.
pub fn policy(policy: &CIMDPolicy) -> Policy {
    let spec = &policy.spec;
    let native = spec.application_types.contains(&ApplicationType::Native);
    let web = spec.application_types.contains(&ApplicationType::Web);
    Policy {
        client_id_patterns: spec
            .allowed_hosts
            .iter()
            .map(|h| format!("https://{h}"))
            .collect(),
        allow_query_in_client_id: spec.allow_query,
        redirect_uris: RedirectUriRules {
            // The CRD's CEL rule already refuses loopback without native; this keeps a resource
            // written around the schema from widening anything.
            allow_loopback: spec.redirect_uris.allow_loopback && native,
            // `web` is what admits https redirect URIs: a native-only policy refuses them.
            allow_web: web,
            require_same_site: spec.redirect_uris.require_same_site,
            allow_private_use_schemes: false,
        },
        allowed_auth_methods: spec
            .token_endpoint_auth_methods
            .iter()
            .map(|m| match m {
                TokenEndpointAuthMethod::None => AuthMethod::None,
                TokenEndpointAuthMethod::PrivateKeyJwt => AuthMethod::PrivateKeyJwt,
            })
            .collect(),
        allowed_grant_types: spec
            .grant_types
            .iter()
            .map(|g| match g {
                GrantType::AuthorizationCode => "authorization_code".to_owned(),
                GrantType::RefreshToken => "refresh_token".to_owned(),
                GrantType::JwtBearer => mcp_authz_authserver::config::JWT_BEARER_GRANT.to_owned(),
            })
            .collect(),
        max_scopes_per_request: spec.max_scopes.and_then(|n| u32::try_from(n).ok()),
        ..Policy::default()
    }
}

/// The server-wide CIMD config: fetch limits, networks, CA bundle and the baseline from the
/// server's default policy (or the library defaults without one), plus every named policy.
pub fn config(default: Option<&CIMDPolicy>, named: &[&CIMDPolicy]) -> CimdConfig {
    let mut config = CimdConfig::default();
    if let Some(default) = default {
        let spec = &default.spec;
        let clamp = |v: i32| u64::try_from(v).unwrap_or(0);
        config.fetch = FetchLimits {
            max_document_bytes: usize::try_from(spec.fetch.max_bytes).unwrap_or(5120),
            total_timeout_ms: clamp(spec.fetch.timeout_ms),
            connect_timeout_ms: clamp(spec.fetch.timeout_ms)
                .min(FetchLimits::default().connect_timeout_ms),
            cache_min_ttl_secs: clamp(spec.fetch.cache_min_seconds),
            cache_max_ttl_secs: clamp(spec.fetch.cache_max_seconds),
            cache_capacity: usize::try_from(spec.fetch.cache_entries).unwrap_or(1000),
            ..FetchLimits::default()
        };
        config.allowed_private_cidrs = spec.allowed_private_networks.clone();
        config.extra_ca_bundle = spec
            .trusted_ca_bundle
            .as_ref()
            .map(|r| PathBuf::from(CA_BUNDLE_DIR).join(&r.key));
        config.baseline = policy(default);
    }
    config.policies = named
        .iter()
        .map(|p| (policy_key(p), policy(p)))
        .collect::<BTreeMap<_, _>>();
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;
    use serde_json::json;

    fn sample(extra: serde_json::Value) -> CIMDPolicy {
        let mut value = cases::cimd_policy();
        value["metadata"]["namespace"] = json!("mcp-authz");
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            value["spec"][k] = v;
        }
        serde_json::from_value(value).expect("policy")
    }

    #[test]
    fn policy_maps_every_field() {
        let p = policy(&sample(
            json!({"allowQuery": true, "maxScopes": 3, "tokenEndpointAuthMethods": ["none"], "grantTypes": ["authorization_code"]}),
        ));
        assert_eq!(
            p.client_id_patterns,
            ["https://*.example.com", "https://claude.ai"]
        );
        assert!(p.allow_query_in_client_id);
        assert!(p.redirect_uris.allow_loopback);
        assert!(p.redirect_uris.require_same_site);
        assert_eq!(p.allowed_auth_methods, [AuthMethod::None]);
        assert_eq!(p.allowed_grant_types, ["authorization_code"]);
        assert_eq!(p.max_scopes_per_request, Some(3));
    }

    #[test]
    fn enterprise_agents_may_be_admitted_to_redeem_id_jags() {
        let p = policy(&sample(
            json!({"tokenEndpointAuthMethods": ["private_key_jwt"], "grantTypes": ["authorization_code", "jwt_bearer"]}),
        ));
        assert_eq!(
            p.allowed_grant_types,
            [
                "authorization_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer"
            ]
        );
    }

    #[test]
    fn a_host_with_a_port_admits_documents_on_that_port_only() {
        let p = policy(&sample(
            json!({"allowedHosts": ["agents.example.com:8443"]}),
        ));
        assert_eq!(p.client_id_patterns, ["https://agents.example.com:8443"]);
        let compiled =
            mcp_authz_authserver::cimd::CompiledPolicy::compile("p", &p).expect("compiles");
        let admit = |u: &str| {
            compiled
                .admit_client_id(&url::Url::parse(u).expect("url"))
                .is_ok()
        };
        assert!(admit("https://agents.example.com:8443/a.json"));
        assert!(!admit("https://agents.example.com/a.json"));
        assert!(!admit("https://agents.example.com:9443/a.json"));
    }

    #[test]
    fn loopback_needs_native_even_without_the_schema() {
        let p = policy(&sample(
            json!({"applicationTypes": ["web"], "redirectUris": {"allowLoopback": true, "requireSameSite": false}}),
        ));
        assert!(!p.redirect_uris.allow_loopback);
        assert!(!p.redirect_uris.require_same_site);
        assert!(p.redirect_uris.allow_web);
    }

    #[test]
    fn each_application_type_admits_its_own_redirects_only() {
        // (applicationTypes, https redirects admitted, loopback redirects admitted)
        for (types, web, loopback) in [
            (json!(["web"]), true, false),
            (json!(["native"]), false, true),
            (json!(["web", "native"]), true, true),
        ] {
            let p = policy(&sample(json!({ "applicationTypes": types.clone() })));
            assert_eq!(
                (p.redirect_uris.allow_web, p.redirect_uris.allow_loopback),
                (web, loopback),
                "{types}"
            );
        }
    }

    #[test]
    fn server_wide_settings_come_from_the_default_policy() {
        let default = sample(
            json!({"fetch": {"maxBytes": 4096, "timeoutMs": 1500, "cacheMinSeconds": 30, "cacheMaxSeconds": 600, "cacheEntries": 50}, "trustedCaBundle": {"name": "ca", "key": "ca.pem"}}),
        );
        let other = sample(json!({}));
        let c = config(Some(&default), &[&other]);
        assert_eq!(c.fetch.max_document_bytes, 4096);
        assert_eq!(c.fetch.total_timeout_ms, 1500);
        assert_eq!(c.fetch.connect_timeout_ms, 1500);
        assert_eq!(
            (
                c.fetch.cache_min_ttl_secs,
                c.fetch.cache_max_ttl_secs,
                c.fetch.cache_capacity
            ),
            (30, 600, 50)
        );
        assert_eq!(c.allowed_private_cidrs, ["10.0.0.0/8"]);
        assert_eq!(
            c.extra_ca_bundle,
            Some(PathBuf::from("/etc/mcp-authz/cimd-ca/ca.pem"))
        );
        assert_eq!(c.policies.keys().collect::<Vec<_>>(), ["mcp-authz/default"]);
        assert!(!c.allow_http_for_development);
    }

    #[test]
    fn without_a_default_policy_the_library_defaults_apply() {
        let c = config(None, &[]);
        assert_eq!(c, CimdConfig::default());
    }
}
