//! The five custom resources of `mcp-authz.io/v1alpha1`, as Rust types that do no I/O.
//!
//! The CRD YAML in `crds/` is generated from these types (`mcp-authz crds`); field docs become
//! `kubectl explain` text, `#[x_kube(validation)]` rules become `x-kubernetes-validations`.

pub mod authorization_server;
pub mod cases;
pub mod cimd_policy;
pub mod mcp_client;
pub mod mcp_scope;
pub mod mcp_service;
pub mod resource_urls;

pub use authorization_server::{
    AllowedNamespaces, AuthorizationServer, AuthorizationServerSpec, AuthorizationServerStatus,
    NamespacesFrom,
};
pub use cimd_policy::{CIMDPolicy, CIMDPolicySpec};
pub use mcp_client::{MCPClient, MCPClientSpec, MCPClientStatus};
pub use mcp_scope::{MCPScope, MCPScopeSpec};
pub use mcp_service::{MCPService, MCPServiceSpec, MCPServiceStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of every mcp-authz resource.
pub const GROUP: &str = "mcp-authz.io";
/// The label a pod carries to ask for a sidecar; it is the webhook's objectSelector.
pub const INJECT_LABEL: &str = "mcp-authz.io/inject";
/// The value of [`INJECT_LABEL`] that opts a pod in.
pub const INJECT_ENABLED: &str = "enabled";

/// Go-style durations the API server's CEL `duration()` also understands, restricted to whole
/// hours, minutes and seconds so both sides parse them the same way.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$";

/// The CEL rule for a header that carries a token to an MCP server (`tokenExchange[].header`,
/// `providers[].header`): none the sidecar writes itself or HTTP and MCP give a meaning, built from the
/// sidecar's own lists so the API server refuses what the sidecar would (a render used to drop such an
/// edge without a word).
pub fn token_header_rule() -> kube::core::Rule {
    let quoted = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let identity = mcp_authz_sidecar::config::IdentityHeaders::default();
    let mut rule = format!(
        "!(self in [{}]) && !(self in [{}])",
        quoted(mcp_authz_sidecar::config::PROXY_OWNED_HEADERS),
        quoted(&identity.names()),
    );
    for prefix in mcp_authz_sidecar::config::PROXY_OWNED_PREFIXES {
        rule.push_str(&format!(" && !self.startsWith('{prefix}')"));
    }
    kube::core::Rule::new(rule).message(
        "header is one the sidecar writes (identity, forwarding, tracing) or HTTP or MCP gives a meaning",
    )
}

/// Every CRD of the group, in a stable order (the order `mcp-authz crds` prints them).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        AuthorizationServer::crd(),
        MCPService::crd(),
        MCPScope::crd(),
        CIMDPolicy::crd(),
        MCPClient::crd(),
    ]
}

/// Parses a duration written like `1h30m`, `15m` or `90s` (see [`DURATION_PATTERN`]).
/// Returns `None` for anything else, including the empty string.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit_rank = 0u8;
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            if digits.len() >= 6 {
                return None;
            }
            digits.push(ch);
            continue;
        }
        let (rank, seconds) = match ch {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return None,
        };
        // Units must appear once each, largest first, as the schema pattern demands.
        if digits.is_empty() || rank <= last_unit_rank {
            return None;
        }
        last_unit_rank = rank;
        let value: u64 = digits.parse().ok()?;
        total = total.checked_add(value.checked_mul(seconds)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return None;
    }
    Some(std::time::Duration::from_secs(total))
}

/// A reference to one key of a Secret in the same namespace as the resource that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key inside the Secret's data (what Kubernetes allows there: letters, digits, `-`, `_`, `.`). Both
    /// become parts of file paths where the Secret is mounted.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("key must not be . or .."))]
    pub key: String,
}

/// A reference to an object by name, optionally in another namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referenced object; the referring object's own namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_the_schema_pattern_says() {
        let cases: &[(&str, Option<u64>)] = &[
            ("90s", Some(90)),
            ("15m", Some(900)),
            ("1h30m", Some(5400)),
            ("2h0m5s", Some(7205)),
            ("720h", Some(720 * 3600)),
            ("", None),
            ("h", None),
            ("10", None),
            ("5m1h", None),
            ("1h1h", None),
            ("1d", None),
            ("-1h", None),
            ("1.5h", None),
            ("1234567s", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_duration(text),
                want.map(Duration::from_secs),
                "{text:?}"
            );
        }
    }

    #[test]
    fn crds_are_in_one_group_with_status_and_short_names() {
        for crd in all_crds() {
            assert_eq!(crd.spec.group, GROUP);
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{}",
                crd.spec.names.kind
            );
            assert!(
                !crd.spec
                    .names
                    .short_names
                    .clone()
                    .unwrap_or_default()
                    .is_empty(),
                "{}",
                crd.spec.names.kind
            );
        }
    }
}
