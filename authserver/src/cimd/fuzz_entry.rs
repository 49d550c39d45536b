//! Entry points for the cargo-fuzz targets in `authserver/fuzz`, kept in the library so the
//! same code runs in unit tests. Each asserts the invariants the rest of the server relies on.

use super::address::AddressPolicy;
use super::config::Policy;
use super::document::check_document;
use super::policy::{CompiledPolicy, admit};
use super::url_check::{UrlAllowances, check_url, is_url_client_id};

const FUZZ_URL: &str = "https://client.example/doc";

/// Any bytes as a fetched document: never a panic; what passes keeps its promises.
pub fn document(data: &[u8]) {
    let Ok(doc) = check_document(FUZZ_URL, data, false, &AddressPolicy::default()) else {
        return;
    };
    assert_eq!(doc.client_id, FUZZ_URL);
    assert_eq!(doc.fingerprint.len(), 64);
    assert!(!doc.redirect_uris.is_empty());
    assert!(!doc.properties.contains("client_secret"));
    let baseline =
        CompiledPolicy::compile("baseline", &Policy::default()).expect("default policy compiles");
    if let Ok(client) = admit(&doc, &[&baseline]) {
        for uri in &client.redirect_uris {
            assert!(!uri.contains('*'));
            assert!(client.check_redirect_uri(uri).is_ok());
        }
        assert!(
            !client
                .grant_types
                .iter()
                .any(|g| g == "password" || g == "implicit")
        );
    }
}

/// Any bytes as a client_id URL and as a policy pattern: never a panic; an accepted URL is
/// exactly the input, https, with a path, no fragment and no userinfo.
pub fn client_id_url(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let allow = UrlAllowances {
        query: flags & 1 != 0,
        http: false,
    };
    let strict = AddressPolicy::default();
    if let Ok(url) = check_url(text, "client_id", allow, &strict) {
        assert_eq!(url.as_str(), text);
        assert!(is_url_client_id(text));
        assert_eq!(url.scheme(), "https");
        assert!(url.fragment().is_none() && url.username().is_empty() && url.password().is_none());
        assert!(url.path().len() > 1);
        assert!(allow.query || url.query().is_none());
        if url.query().is_some() || text.contains('*') {
            return; // patterns never carry a query, and read `*` only as `*.` before a host
        }
        let pattern = Policy {
            client_id_patterns: vec![text.to_owned()],
            ..Policy::default()
        };
        let compiled =
            CompiledPolicy::compile("fuzz", &pattern).expect("an accepted URL is a valid pattern");
        assert!(
            compiled.admit_client_id(&url).is_ok(),
            "a URL matches itself as a pattern"
        );
    }
    let as_pattern = Policy {
        client_id_patterns: vec![text.to_owned()],
        ..Policy::default()
    };
    let _ = CompiledPolicy::compile("fuzz", &as_pattern);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        for seed in [
            &br#"{"client_id":"https://client.example/doc","client_name":"a","redirect_uris":["https://a.example/cb","http://127.0.0.1/cb"]}"#[..],
            br#"{"client_id":"https://client.example/doc","client_name":"a","redirect_uris":["com.example.app:/cb"],"grant_types":["password","authorization_code"]}"#,
            b"{}",
            b"\x00\xff",
            b"[",
        ] {
            document(seed);
        }
        for seed in [
            &b"\x00https://client.example/doc"[..],
            b"\x01https://client.example/doc?x=1",
            b"\x00https://0x7f.1/x",
            b"\x00https://*.example.com/",
            b"\x00https://[::1]/x",
            // Found by the fuzzer: a `*` inside a host name was accepted.
            b"\x00https://examnt*exam1le/do://c",
            b"\x00https://a//*",
            b"\x00",
            b"",
        ] {
            client_id_url(seed);
        }
    }
}
