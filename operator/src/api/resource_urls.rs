//! `AuthorizationServer.spec.resourceUrls`: which namespaces may protect which resource URLs.
//!
//! First-claim-holds alone cannot tell a squatter from the owner: a team that files a claim for another
//! team's URL in advance waits, parked, until the holder is deleted (a reinstall, a rename), and then holds
//! the URL, with its key and its entry in the server. Only the platform admin knows which URLs are whose,
//! so the server's own spec says it, the way a Gateway listener's hostname comes with its allowedRoutes.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use url::Url;

use super::AllowedNamespaces;

/// The URLs at and below `prefix`, granted to the namespaces `namespaces` selects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceUrlGrant {
    /// An https URL without query or fragment. It covers itself and every URL below it at a path
    /// segment boundary: `https://mcp.example.com/files` covers `.../files` and `.../files/v2`,
    /// not `.../files-admin`. Scheme, host and port must be equal.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && !self.contains('?') && !self.contains('#')")
        .message("resourceUrls[].prefix must be an https URL without query or fragment"))]
    pub prefix: String,
    /// The namespaces whose MCPServices may protect these URLs (`Same`: only the server's own).
    pub namespaces: AllowedNamespaces,
}

/// What the grants say of one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlStanding {
    /// No grants are listed: any admitted namespace may claim any URL.
    Open,
    /// The longest prefix covering the URL admits the claimant's namespace.
    Granted,
    /// No prefix covers the URL.
    NotCovered,
    /// The longest prefix covering the URL (named here) admits other namespaces only.
    GrantedElsewhere(String),
    /// The server's `tokenExchange[index]` names the URL as an API that is no MCPService.
    Reserved(usize),
    /// The server does not take the URL as a resource at all (why).
    Unusable(String),
}

impl UrlStanding {
    /// Whether the claim may hold its URL.
    pub fn allows(&self) -> bool {
        matches!(self, Self::Open | Self::Granted)
    }

    /// Why the claim may not hold its URL, in words (`None` when it may): the cluster's condition and the
    /// local plan's refusal say the same.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Self::Open | Self::Granted => None,
            Self::NotCovered => Some("none of its resourceUrls covers this URL".to_owned()),
            Self::GrantedElsewhere(prefix) => Some(format!(
                "its resourceUrls grant {prefix} to other namespaces"
            )),
            Self::Reserved(index) => Some(format!(
                "its tokenExchange[{index}] names this URL as the audience of an API that is no MCPService"
            )),
            Self::Unusable(why) => Some(format!("the server takes no such resource URL ({why})")),
        }
    }
}

/// Where a claim on `resource_url` from `namespace` stands under `grants` of a server in
/// `server_namespace`. The most specific prefix decides, so an admin can hand a host to the platform team
/// and one path under it to another team. A prefix or URL that does not parse covers nothing: a typo must
/// not open a URL to everyone.
pub fn standing(
    grants: &[ResourceUrlGrant],
    resource_url: &str,
    server_namespace: &str,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> UrlStanding {
    if grants.is_empty() {
        return UrlStanding::Open;
    }
    let Ok(url) = Url::parse(resource_url) else {
        return UrlStanding::NotCovered;
    };
    let covering: Vec<(usize, &ResourceUrlGrant)> = grants
        .iter()
        .filter_map(|g| covered_path_len(&g.prefix, &url).map(|len| (len, g)))
        .collect();
    let Some(longest) = covering.iter().map(|(len, _)| *len).max() else {
        return UrlStanding::NotCovered;
    };
    // Several grants may spell the same prefix (`/files` and `/files/`, or one entry per selector): together
    // they decide, so which of them comes last in the list changes nothing.
    let mut deciding = covering.iter().filter(|(len, _)| *len == longest);
    if deciding
        .clone()
        .any(|(_, g)| g.namespaces.admits(server_namespace, namespace, labels))
    {
        return UrlStanding::Granted;
    }
    match deciding.next() {
        Some((_, grant)) => UrlStanding::GrantedElsewhere(grant.prefix.clone()),
        None => UrlStanding::NotCovered,
    }
}

/// Whether `a` and `b` name one resource once parsed: host case, default ports, dot segments and a trailing `/`
/// are settled before comparing, since a downstream may settle them too. Either unparsable: equal as written.
pub fn same_resource(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
                && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
                && a.query() == b.query()
        }
        _ => a == b,
    }
}

/// The length of `prefix`'s path when it covers `url`, compared as parsed URLs (host case, default ports,
/// dot segments and their percent-encoded forms are settled by the parser before anything is compared).
fn covered_path_len(prefix: &str, url: &Url) -> Option<usize> {
    let prefix = Url::parse(prefix).ok()?;
    if prefix.scheme() != "https"
        || prefix.query().is_some()
        || prefix.fragment().is_some()
        || prefix.scheme() != url.scheme()
        || prefix.host_str()? != url.host_str()?
        || prefix.port_or_known_default() != url.port_or_known_default()
    {
        return None;
    }
    let base = prefix.path().trim_end_matches('/');
    let path = url.path();
    let below = path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'));
    below.then_some(base.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grant(prefix: &str, namespaces: serde_json::Value) -> ResourceUrlGrant {
        serde_json::from_value(json!({"prefix": prefix, "namespaces": namespaces})).expect("grant")
    }

    fn names(list: &[&str]) -> serde_json::Value {
        json!({"from": "Selector", "selector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list}
        ]}})
    }

    #[test]
    fn one_resource_however_it_is_spelled() {
        let cases = [
            ("https://api.example.com", "https://api.example.com/", true),
            (
                "https://API.example.com:443/v1/",
                "https://api.example.com/v1",
                true,
            ),
            (
                "https://api.example.com/a/../v1",
                "https://api.example.com/v1",
                true,
            ),
            (
                "https://api.example.com/v1",
                "https://api.example.com/v2",
                false,
            ),
            (
                "https://api.example.com/v1",
                "https://api.example.com/v1/x",
                false,
            ),
            (
                "https://api.example.com:8443",
                "https://api.example.com",
                false,
            ),
            (
                "https://api.example.com?x=1",
                "https://api.example.com",
                false,
            ),
            ("https://api.example.com", "http://api.example.com", false),
            ("not a url", "not a url", true),
            ("not a url", "https://api.example.com", false),
        ];
        for (a, b, same) in cases {
            assert_eq!(same_resource(a, b), same, "{a} vs {b}");
            assert_eq!(same_resource(b, a), same, "{b} vs {a}");
        }
    }

    #[test]
    fn the_longest_covering_prefix_decides_who_may_claim() {
        let grants = [
            grant("https://mcp.example.com/", names(&["platform"])),
            grant("https://mcp.example.com/files", names(&["files"])),
            grant("https://other.example.com:8443/x/", json!({"from": "All"})),
        ];
        let table: &[(&str, &str, UrlStanding)] = &[
            (
                "https://mcp.example.com/files",
                "files",
                UrlStanding::Granted,
            ),
            (
                "https://mcp.example.com/files/v2",
                "files",
                UrlStanding::Granted,
            ),
            (
                "https://MCP.example.com:443/files/",
                "files",
                UrlStanding::Granted,
            ),
            (
                "https://mcp.example.com/files",
                "platform",
                UrlStanding::GrantedElsewhere("https://mcp.example.com/files".into()),
            ),
            // A segment boundary, not a string prefix.
            (
                "https://mcp.example.com/files-admin",
                "files",
                UrlStanding::GrantedElsewhere("https://mcp.example.com/".into()),
            ),
            (
                "https://mcp.example.com/files-admin",
                "platform",
                UrlStanding::Granted,
            ),
            // Dot segments, plain or percent-encoded, are settled before comparing.
            (
                "https://mcp.example.com/files/../admin",
                "files",
                UrlStanding::GrantedElsewhere("https://mcp.example.com/".into()),
            ),
            (
                "https://mcp.example.com/files/%2e%2e/admin",
                "files",
                UrlStanding::GrantedElsewhere("https://mcp.example.com/".into()),
            ),
            // Another host (a suffix trick included), port or scheme is not covered.
            (
                "https://mcp.example.com.evil.test/files",
                "files",
                UrlStanding::NotCovered,
            ),
            (
                "https://mcp.example.com:8443/files",
                "files",
                UrlStanding::NotCovered,
            ),
            (
                "http://mcp.example.com/files",
                "files",
                UrlStanding::NotCovered,
            ),
            (
                "https://other.example.com:8443/x",
                "anyone",
                UrlStanding::Granted,
            ),
            (
                "https://other.example.com:8443/y",
                "anyone",
                UrlStanding::NotCovered,
            ),
            ("not a url", "files", UrlStanding::NotCovered),
        ];
        for (url, namespace, want) in table {
            assert_eq!(
                &standing(&grants, url, "mcp-authz", namespace, None),
                want,
                "{url} from {namespace}"
            );
        }
    }

    #[test]
    fn no_grants_leave_every_url_open_and_a_broken_prefix_covers_nothing() {
        assert_eq!(
            standing(
                &[],
                "https://mcp.example.com/files",
                "mcp-authz",
                "files",
                None
            ),
            UrlStanding::Open
        );
        assert!(UrlStanding::Open.allows());
        for prefix in [
            "https://",
            "https://mcp.example.com/files?x=1",
            "http://mcp.example.com/",
            "mcp.example.com/files",
        ] {
            assert_eq!(
                standing(
                    &[grant(prefix, json!({"from": "All"}))],
                    "https://mcp.example.com/files",
                    "mcp-authz",
                    "files",
                    None
                ),
                UrlStanding::NotCovered,
                "{prefix}"
            );
        }
    }

    #[test]
    fn grants_of_one_prefix_decide_together_whatever_their_order() {
        let files = grant("https://mcp.example.com/files", names(&["files"]));
        let platform = grant("https://mcp.example.com/files/", json!({"from": "Same"}));
        for grants in [
            [files.clone(), platform.clone()],
            [platform.clone(), files.clone()],
        ] {
            let table: &[(&str, UrlStanding)] = &[
                ("files", UrlStanding::Granted),
                ("mcp-authz", UrlStanding::Granted),
                (
                    "other",
                    UrlStanding::GrantedElsewhere(grants[0].prefix.clone()),
                ),
            ];
            for (namespace, want) in table {
                assert_eq!(
                    &standing(
                        &grants,
                        "https://mcp.example.com/files/v2",
                        "mcp-authz",
                        namespace,
                        None
                    ),
                    want,
                    "{namespace} with {:?} first",
                    grants[0].prefix
                );
            }
        }
    }

    #[test]
    fn same_means_the_servers_own_namespace() {
        let grants = [grant("https://mcp.example.com/", json!({"from": "Same"}))];
        assert_eq!(
            standing(
                &grants,
                "https://mcp.example.com/a",
                "mcp-authz",
                "mcp-authz",
                None
            ),
            UrlStanding::Granted
        );
        assert!(
            !standing(
                &grants,
                "https://mcp.example.com/a",
                "mcp-authz",
                "team",
                None
            )
            .allows()
        );
    }
}
