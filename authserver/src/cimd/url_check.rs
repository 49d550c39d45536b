//! The shape a client_id URL (or a URL inside a document) must have before anything is fetched.
//! Pure: no lookup, no I/O.

use url::{Host, Url};

use super::address::AddressPolicy;
use super::error::{CimdError, UrlRule};

/// Longer client_ids are refused before parsing: they only serve to bloat logs and caches.
pub const MAX_URL_LEN: usize = 2048;

/// What the caller allows beyond the draft's strict form.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlAllowances {
    pub query: bool,
    pub http: bool,
}

/// Check `raw` and return it parsed. `which` names the URL in the error (`client_id`, `jwks_uri`).
/// An IP-literal host, in any notation the parser accepts (`0x7f.1`, `2130706433`, `[::ffff:…]`),
/// is judged by `addresses` here, so the refusal names the address rather than the spelling.
///
/// The raw string is inspected as well as the parsed URL, because parsing quietly rewrites what
/// the draft forbids (dot segments, case, default ports) and the document's `client_id` must equal
/// the URL as written.
pub fn check_url(
    raw: &str,
    which: &'static str,
    allow: UrlAllowances,
    addresses: &AddressPolicy,
) -> Result<Url, CimdError> {
    let refuse = |rule| CimdError::UrlRefused { which, rule };
    if raw.len() > MAX_URL_LEN {
        return Err(refuse(UrlRule::TooLong(MAX_URL_LEN)));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse(UrlRule::BadCharacters));
    }
    let url = Url::parse(raw).map_err(|_| refuse(UrlRule::NotAUrl))?;
    match url.scheme() {
        "https" => {}
        "http" if allow.http => {}
        _ => return Err(refuse(UrlRule::NotHttps)),
    }
    if !url.username().is_empty() || url.password().is_some() || authority(raw).contains('@') {
        return Err(refuse(UrlRule::Userinfo));
    }
    if url.fragment().is_some() {
        return Err(refuse(UrlRule::Fragment));
    }
    if url.query().is_some() && !allow.query {
        return Err(refuse(UrlRule::Query));
    }
    match url.host() {
        None => return Err(refuse(UrlRule::NoHost)),
        Some(Host::Domain("")) => return Err(refuse(UrlRule::NoHost)),
        // The URL standard lets `*`, `!`, `$`… into host names; DNS names never need them, and a
        // `*` would read as a wildcard in policies and logs.
        Some(Host::Domain(d))
            if !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) =>
        {
            return Err(refuse(UrlRule::BadHost));
        }
        Some(Host::Domain(_)) => {}
        Some(Host::Ipv4(ip)) => check_literal(addresses, &url, ip.into())?,
        Some(Host::Ipv6(ip)) => check_literal(addresses, &url, ip.into())?,
    }
    if raw_path(raw).split('/').any(is_dot_segment) {
        return Err(refuse(UrlRule::DotSegment));
    }
    if url.path().is_empty() || url.path() == "/" {
        return Err(refuse(UrlRule::NoPath));
    }
    if url.as_str() != raw {
        return Err(refuse(UrlRule::NotCanonical(url.as_str().to_owned())));
    }
    Ok(url)
}

fn check_literal(
    addresses: &AddressPolicy,
    url: &Url,
    ip: std::net::IpAddr,
) -> Result<(), CimdError> {
    addresses
        .check(ip)
        .map_err(|reason| CimdError::ForbiddenAddress {
            host: url.host_str().unwrap_or_default().to_owned(),
            addr: ip,
            reason,
        })
}

/// The text between `scheme://` and the path, as written.
fn authority(raw: &str) -> &str {
    let rest = raw.split_once("://").map_or("", |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// The path as written, before the parser resolves dot segments away.
fn raw_path(raw: &str) -> &str {
    let rest = raw.split_once("://").map_or(raw, |(_, r)| r);
    let Some(start) = rest.find('/') else {
        return "";
    };
    let path = &rest[start..];
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// True when `s` looks like a URL client_id rather than a registered or generated one: such
/// client_ids go through CIMD, and our own generated ids never start this way.
pub fn is_url_client_id(s: &str) -> bool {
    let lower = s.get(..8).map(str::to_ascii_lowercase);
    lower.as_deref() == Some("https://")
        || s.get(..7).map(str::to_ascii_lowercase).as_deref() == Some("http://")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlAllowances = UrlAllowances {
        query: false,
        http: false,
    };

    fn rule(raw: &str, allow: UrlAllowances) -> Option<UrlRule> {
        let addresses =
            AddressPolicy::new(&["127.0.0.1/32".into(), "2001:db8::1/128".into()]).expect("cidrs");
        match check_url(raw, "client_id", allow, &addresses) {
            Ok(_) => None,
            Err(CimdError::UrlRefused {
                which: "client_id",
                rule,
            }) => Some(rule),
            Err(other) => panic!("unexpected error {other:?} for {raw}"),
        }
    }

    #[test]
    fn well_formed_client_ids_pass() {
        for ok in [
            "https://app.example.com/client.json",
            "https://app.example.com/oauth/client-metadata",
            "https://app.example.com:8443/c",
            "https://127.0.0.1:9/c",
            "https://[2001:db8::1]/c",
            "https://app.example.com/a%20b",
        ] {
            assert_eq!(rule(ok, STRICT), None, "{ok}");
        }
    }

    #[test]
    fn each_rule_refuses_its_case() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let table: Vec<(&str, UrlRule)> = vec![
            (long.as_str(), UrlRule::TooLong(MAX_URL_LEN)),
            ("https://example.com/a b", UrlRule::BadCharacters),
            ("https://example.com/a\n", UrlRule::BadCharacters),
            ("https://example.com/a\tb", UrlRule::BadCharacters),
            ("client-123", UrlRule::NotAUrl),
            ("https://", UrlRule::NotAUrl),
            ("https://exa mple.com/x", UrlRule::BadCharacters),
            ("http://example.com/c", UrlRule::NotHttps),
            ("ftp://example.com/c", UrlRule::NotHttps),
            ("javascript:alert(1)//example.com/c", UrlRule::NotHttps),
            ("data:application/json,{}", UrlRule::NotHttps),
            ("https://user@example.com/c", UrlRule::Userinfo),
            ("https://user:pw@example.com/c", UrlRule::Userinfo),
            ("https://@example.com/c", UrlRule::Userinfo),
            ("https://example.com/c#frag", UrlRule::Fragment),
            ("https://example.com/c#", UrlRule::Fragment),
            ("https://example.com/c?x=1", UrlRule::Query),
            ("https://example.com/c?", UrlRule::Query),
            ("https://example.com/a/../c", UrlRule::DotSegment),
            ("https://example.com/a/./c", UrlRule::DotSegment),
            ("https://example.com/a/%2e%2E/c", UrlRule::DotSegment),
            ("https://example.com/a/.%2e/c", UrlRule::DotSegment),
            ("https://example.com/a/..", UrlRule::DotSegment),
            ("https://example.com", UrlRule::NoPath),
            ("https://exa*mple.com/c", UrlRule::BadHost),
            ("https://*.example.com/c", UrlRule::BadHost),
            ("https://exa$mple.com/c", UrlRule::BadHost),
            ("https://example.com/", UrlRule::NoPath),
            (
                "https://EXAMPLE.com/c",
                UrlRule::NotCanonical("https://example.com/c".into()),
            ),
            (
                "HTTPS://example.com/c",
                UrlRule::NotCanonical("https://example.com/c".into()),
            ),
            (
                "https://example.com:443/c",
                UrlRule::NotCanonical("https://example.com/c".into()),
            ),
            (
                "https:example.com/c",
                UrlRule::NotCanonical("https://example.com/c".into()),
            ),
            (
                "https:\\\\example.com\\c",
                UrlRule::NotCanonical("https://example.com/c".into()),
            ),
            (
                "https://0x7f.1/c",
                UrlRule::NotCanonical("https://127.0.0.1/c".into()),
            ),
            (
                "https://bücher.example/c",
                UrlRule::NotCanonical("https://xn--bcher-kva.example/c".into()),
            ),
            (
                "https://example.com/<c>",
                UrlRule::NotCanonical("https://example.com/%3Cc%3E".into()),
            ),
        ];
        for (raw, want) in table {
            assert_eq!(rule(raw, STRICT), Some(want.clone()), "{raw}");
        }
    }

    #[test]
    fn ip_literals_in_every_notation_are_judged_by_address() {
        let strict = AddressPolicy::default();
        let table = [
            ("https://127.0.0.1/c", "127.0.0.1", "a loopback address"),
            ("https://2130706433/c", "127.0.0.1", "a loopback address"),
            ("https://0x7f000001/c", "127.0.0.1", "a loopback address"),
            ("https://0177.0.0.1/c", "127.0.0.1", "a loopback address"),
            ("https://127.1/c", "127.0.0.1", "a loopback address"),
            ("https://[::1]/c", "::1", "a loopback address"),
            (
                "https://[::ffff:127.0.0.1]/c",
                "::ffff:127.0.0.1",
                "an IPv4-mapped address",
            ),
            (
                "https://[::ffff:169.254.169.254]/c",
                "::ffff:169.254.169.254",
                "a cloud metadata address",
            ),
            (
                "https://169.254.169.254/latest",
                "169.254.169.254",
                "a cloud metadata address",
            ),
            (
                "https://[64:ff9b::a00:1]/c",
                "64:ff9b::a00:1",
                "a NAT64 address",
            ),
            ("https://10.1.2.3/c", "10.1.2.3", "a private address"),
            ("https://0.0.0.0/c", "0.0.0.0", "a \"this network\" address"),
            (
                "https://[fd12::1]/c",
                "fd12::1",
                "a unique-local (private) address",
            ),
        ];
        for (raw, addr, reason) in table {
            match check_url(raw, "client_id", STRICT, &strict) {
                Err(CimdError::ForbiddenAddress {
                    addr: got,
                    reason: why,
                    ..
                }) => {
                    assert_eq!(got, addr.parse::<std::net::IpAddr>().expect("ip"), "{raw}");
                    assert_eq!(why, reason, "{raw}");
                }
                other => panic!("{raw}: expected a forbidden address, got {other:?}"),
            }
        }
    }

    #[test]
    fn allowances_open_only_what_they_name() {
        assert_eq!(
            rule(
                "https://example.com/c?tenant=a",
                UrlAllowances {
                    query: true,
                    http: false
                }
            ),
            None
        );
        assert_eq!(
            rule(
                "http://example.com/c",
                UrlAllowances {
                    query: false,
                    http: true
                }
            ),
            None
        );
        assert_eq!(
            rule(
                "http://example.com/c?x",
                UrlAllowances {
                    query: false,
                    http: true
                }
            ),
            Some(UrlRule::Query)
        );
    }

    #[test]
    fn url_client_ids_are_recognised_case_insensitively() {
        assert!(is_url_client_id("https://a/b"));
        assert!(is_url_client_id("HTTPS://a/b"));
        assert!(is_url_client_id("http://a/b"));
        assert!(!is_url_client_id("client-123"));
        assert!(!is_url_client_id("https:/a"));
        assert!(!is_url_client_id("é"));
    }
}
