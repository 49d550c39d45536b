//! What a set of scopes means: the request's scopes checked against a resource's offer, and their closure under
//! `implies`, from which sensitivity, token lifetime and the consent page's list are all derived. A scope that
//! implies a sensitive one carries that sensitivity: a token with it passes the sidecar's checks for the
//! sensitive scope, so consent, lifetime and revocation checks must treat it alike.

use std::collections::{BTreeMap, BTreeSet};

use crate::clients::shorten;
use crate::config::{ScopeDefinition, is_scope_token};
use crate::oauth_error::{ErrorCode, OAuthError};

/// The scope catalogue, by value.
pub type Catalogue<'a> = BTreeMap<&'a str, &'a ScopeDefinition>;

/// `scopes` and every scope they imply, transitively (cycles end the walk, unknown values are kept as they are).
pub fn closure<'a>(catalogue: &Catalogue<'a>, scopes: &'a [String]) -> BTreeSet<&'a str> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = scopes.iter().map(String::as_str).collect();
    while let Some(scope) = todo.pop() {
        if !seen.insert(scope) {
            continue;
        }
        if let Some(definition) = catalogue.get(scope) {
            todo.extend(definition.implies.iter().map(String::as_str));
        }
    }
    seen
}

/// Whether any scope in the closure of `scopes` is sensitive.
pub fn any_sensitive(catalogue: &Catalogue<'_>, scopes: &[String]) -> bool {
    closure(catalogue, scopes)
        .into_iter()
        .any(|s| catalogue.get(s).is_some_and(|d| d.sensitive))
}

/// The lifetime of an access token for `scopes`: the shortest `maxLifetimeSecs` in their closure, capped by
/// `default_secs`.
pub fn token_lifetime(catalogue: &Catalogue<'_>, scopes: &[String], default_secs: u64) -> u64 {
    closure(catalogue, scopes)
        .into_iter()
        .filter_map(|s| catalogue.get(s).and_then(|d| d.max_lifetime_secs))
        .fold(default_secs, u64::min)
}

/// One line of the consent page: a scope, what it lets the client do, whether it is sensitive, and (for a scope
/// that is only implied) the requested scope that brings it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentLine<'a> {
    pub value: &'a str,
    pub description: &'a str,
    pub sensitive: bool,
    pub implied: bool,
}

/// What the consent page lists: the requested scopes, then every sensitive scope they imply (a person must see
/// that approving `files:admin` also approves `files:delete`).
pub fn consent_lines<'a>(catalogue: &Catalogue<'a>, scopes: &'a [String]) -> Vec<ConsentLine<'a>> {
    let line = |value: &'a str, implied: bool| {
        let definition = catalogue.get(value);
        ConsentLine {
            value,
            description: definition.map_or(value, |d| d.description.as_str()),
            sensitive: definition.is_some_and(|d| d.sensitive),
            implied,
        }
    };
    let mut lines: Vec<ConsentLine<'a>> = scopes.iter().map(|s| line(s, false)).collect();
    for value in closure(catalogue, scopes) {
        if !scopes.iter().any(|s| s == value) && catalogue.get(value).is_some_and(|d| d.sensitive) {
            lines.push(line(value, true));
        }
    }
    lines
}

/// Parses and checks `scope` against the resource's offer. Absent: the offered scopes that are not sensitive,
/// themselves or through what they imply. Returned sorted and de-duplicated, so the same set always has the
/// same spelling.
pub fn requested(
    catalogue: &Catalogue<'_>,
    offered: &[String],
    resource: &str,
    scope: Option<&str>,
) -> Result<Vec<String>, OAuthError> {
    let mut scopes: Vec<String> = match scope {
        None => offered
            .iter()
            .filter(|s| {
                catalogue.contains_key(s.as_str())
                    && !any_sensitive(catalogue, std::slice::from_ref(*s))
            })
            .cloned()
            .collect(),
        Some(text) => {
            let mut out = Vec::new();
            for s in text.split(' ').filter(|s| !s.is_empty()) {
                if !is_scope_token(s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        "scope contains a character that is not allowed",
                    ));
                }
                if !offered.iter().any(|o| o == s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!(
                            "scope {:?} is not offered by resource {resource}",
                            shorten(s)
                        ),
                    ));
                }
                out.push(s.to_owned());
            }
            out
        }
    };
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "no scope requested and the resource offers none by default",
        ));
    }
    Ok(scopes)
}

/// Whether the resource still offers every scope of a grant: a scope the platform team withdrew is not minted
/// again from an old grant.
pub fn still_offered(offered: &[String], scopes: &[String]) -> Result<(), OAuthError> {
    match scopes.iter().find(|s| !offered.contains(s)) {
        Some(gone) => Err(OAuthError::new(
            ErrorCode::InvalidScope,
            format!(
                "scope {:?} is no longer offered by this resource; authorize again",
                shorten(gone)
            ),
        )),
        None => Ok(()),
    }
}

/// The scopes of a refresh: the grant's, or a subset of them when `scope` names one (RFC 6749 §6).
pub fn narrowed(granted: &[String], scope: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(text) = scope else {
        return Ok(granted.to_vec());
    };
    let mut asked: Vec<String> = text
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    asked.sort();
    asked.dedup();
    if let Some(extra) = asked.iter().find(|s| !granted.contains(s)) {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            format!("scope {:?} was not granted", shorten(extra)),
        ));
    }
    if asked.is_empty() {
        return Ok(granted.to_vec());
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(value: &str, sensitive: bool, max: Option<u64>, implies: &[&str]) -> ScopeDefinition {
        ScopeDefinition {
            value: value.into(),
            description: format!("may {value}"),
            sensitive,
            max_lifetime_secs: max,
            implies: implies.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn owned(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_closure_decides_sensitivity_lifetime_and_what_consent_shows() {
        let defs = [
            def("files:read", false, None, &[]),
            def("files:delete", true, Some(60), &[]),
            def("files:write", false, None, &["files:read"]),
            def(
                "files:admin",
                false,
                Some(900),
                &["files:write", "files:delete"],
            ),
            def("loop:a", false, None, &["loop:b"]),
            def("loop:b", false, Some(120), &["loop:a"]),
        ];
        let catalogue: Catalogue = defs.iter().map(|d| (d.value.as_str(), d)).collect();
        // (scopes, sensitive, lifetime with a 600 s default, consent lines as value/implied)
        type Case = (
            &'static [&'static str],
            bool,
            u64,
            &'static [(&'static str, bool)],
        );
        let cases: &[Case] = &[
            (&["files:read"], false, 600, &[("files:read", false)]),
            (&["files:write"], false, 600, &[("files:write", false)]),
            (&["files:delete"], true, 60, &[("files:delete", false)]),
            (
                &["files:admin"],
                true,
                60,
                &[("files:admin", false), ("files:delete", true)],
            ),
            (
                &["files:admin", "files:delete"],
                true,
                60,
                &[("files:admin", false), ("files:delete", false)],
            ),
            (&["loop:a"], false, 120, &[("loop:a", false)]),
            (&["unknown"], false, 600, &[("unknown", false)]),
            (&[], false, 600, &[]),
        ];
        for (scopes, sensitive, lifetime, lines) in cases {
            let scopes = owned(scopes);
            assert_eq!(any_sensitive(&catalogue, &scopes), *sensitive, "{scopes:?}");
            assert_eq!(
                token_lifetime(&catalogue, &scopes, 600),
                *lifetime,
                "{scopes:?}"
            );
            let got: Vec<(&str, bool)> = consent_lines(&catalogue, &scopes)
                .iter()
                .map(|l| (l.value, l.implied))
                .collect();
            assert_eq!(got, lines.to_vec(), "{scopes:?}");
        }
        let lines = consent_lines(
            &catalogue,
            &defs[3..4]
                .iter()
                .map(|d| d.value.clone())
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .map(|l| (l.description.to_owned(), l.sensitive))
        .collect::<Vec<_>>();
        assert_eq!(
            lines,
            vec![
                ("may files:admin".to_owned(), false),
                ("may files:delete".to_owned(), true)
            ]
        );
    }

    #[test]
    fn requested_scopes_are_checked_against_the_offer() {
        let defs = [
            def("a", false, None, &[]),
            def("s", true, None, &[]),
            def("wide", false, None, &["s"]),
        ];
        let catalogue: Catalogue = defs.iter().map(|d| (d.value.as_str(), d)).collect();
        let offered = owned(&["a", "s", "wide"]);
        type Case = (
            Option<&'static str>,
            Result<&'static [&'static str], &'static str>,
        );
        let cases: &[Case] = &[
            // Absent: what is offered and not sensitive, also not through `implies`.
            (None, Ok(&["a"])),
            (Some("s a a"), Ok(&["a", "s"])),
            (Some("wide"), Ok(&["wide"])),
            (Some("b"), Err("scope \"b\" is not offered by resource R")),
            (
                Some("a\"x"),
                Err("scope contains a character that is not allowed"),
            ),
            (
                Some("   "),
                Err("no scope requested and the resource offers none by default"),
            ),
        ];
        for (scope, want) in cases {
            let got = requested(&catalogue, &offered, "R", *scope);
            match want {
                Ok(v) => assert_eq!(got.unwrap(), owned(v), "{scope:?}"),
                Err(msg) => {
                    let e = got.unwrap_err();
                    assert_eq!(
                        (e.code, e.description.as_str()),
                        (ErrorCode::InvalidScope, *msg)
                    );
                }
            }
        }
        let none = requested(&catalogue, &owned(&["s"]), "R", None).unwrap_err();
        assert_eq!(
            none.description,
            "no scope requested and the resource offers none by default"
        );
    }

    #[test]
    fn a_withdrawn_scope_is_not_minted_again() {
        let offered = owned(&["a", "b"]);
        assert!(still_offered(&offered, &owned(&["a"])).is_ok());
        assert!(still_offered(&offered, &[]).is_ok());
        let e = still_offered(&offered, &owned(&["a", "c"])).unwrap_err();
        assert_eq!(
            (e.code, e.description.as_str()),
            (
                ErrorCode::InvalidScope,
                "scope \"c\" is no longer offered by this resource; authorize again"
            )
        );
    }

    #[test]
    fn a_refresh_may_only_narrow() {
        let granted = owned(&["a", "b"]);
        assert_eq!(narrowed(&granted, None).unwrap(), granted);
        assert_eq!(narrowed(&granted, Some("b")).unwrap(), owned(&["b"]));
        assert_eq!(narrowed(&granted, Some("b a b")).unwrap(), granted);
        let e = narrowed(&granted, Some("a c")).unwrap_err();
        assert_eq!(
            (e.code, e.description.as_str()),
            (ErrorCode::InvalidScope, "scope \"c\" was not granted")
        );
    }
}
