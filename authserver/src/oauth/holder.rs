//! Whether a grant, a remembered consent or an access token still belongs to the service that holds its resource
//! URL now. A URL can pass from one MCPService to another (another team's, parked behind it, takes it the moment
//! the first is deleted or recreated) without ever ceasing to be served: what the person agreed to, and what the
//! old service's pods accept, must not pass with it.
//!
//! The holder is the operator's claim id (the MCPService's uid, `ResourceConfig::holder`); empty in local mode,
//! where nothing changes hands.

use crate::oauth_error::OAuthError;

/// The private claim (RFC 7519 §4.3) of an access token naming the holder of its audience when it was issued: a
/// sidecar of another holder of the same URL (the old holder's pods still running with their last config, or
/// the new holder's) refuses it.
pub const HOLDER_CLAIM: &str = "mcp_authz_holder";

/// How a grant stands to the holder of its resource today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Made under the holder that holds the URL now.
    Holds,
    /// Made before holders were recorded (or by an older replica during an upgrade): it takes today's holder at
    /// this use, and is bound to it from then on.
    Adopts,
    /// Made under another holder: the grant goes.
    Changed,
}

/// The [`Standing`] of a grant that recorded `recorded`, when `configured` holds its resource.
pub fn standing(recorded: &str, configured: &str) -> Standing {
    if recorded == configured {
        Standing::Holds
    } else if recorded.is_empty() {
        Standing::Adopts
    } else {
        Standing::Changed
    }
}

/// The refusal of a request on a grant whose holder changed, and the revocation reason recorded with it.
pub fn changed(recorded: &str, configured: &str) -> (OAuthError, String) {
    let now = if configured.is_empty() {
        "no holder"
    } else {
        configured
    };
    (
        OAuthError::invalid_grant(
            "the resource of this grant has passed to another service since it was granted; sign in again",
        ),
        format!("the holder of its resource changed from {recorded} to {now}"),
    )
}

/// Whether an access token carrying `claim` (its [`HOLDER_CLAIM`]) may still be accepted for an audience held by
/// `configured` (`None`: the audience is not a resource of this server, and has no holder to compare). A token
/// without the claim was issued before holders were recorded: accepted, since it lives at most one access-token
/// lifetime past the upgrade, and refusing it would sign everyone out at once.
pub fn token_held(claim: Option<&str>, configured: Option<&str>) -> bool {
    match (claim, configured) {
        (Some(claim), Some(configured)) => claim == configured,
        _ => true,
    }
}

/// Whether a sign-in that began while `recorded` held its resource may go on now that `configured` holds it
/// (`None`: the resource is no longer served here). The login and consent pages named the service of the holder
/// at the start; a consent given there must not be recorded, nor a code issued, for the next holder of the URL.
pub fn sign_in_held(recorded: &str, configured: Option<&str>) -> Result<(), OAuthError> {
    match configured {
        Some(configured) if configured == recorded => Ok(()),
        // Written (or saved again, dropping the field) by a replica of an earlier release during a rolling
        // upgrade: which service its pages named is unknown.
        Some(_) if recorded.is_empty() => Err(OAuthError::invalid_request(
            "this sign-in began while the server was being upgraded; start again from the application",
        )),
        Some(_) => Err(OAuthError::invalid_request(
            "the service of this sign-in has passed to another service since it began; start again from the application",
        )),
        None => Err(OAuthError::invalid_request(
            "the service of this sign-in is no longer served here; start again from the application",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_goes_on_only_under_the_holder_it_began_under() {
        let changed = "the service of this sign-in has passed to another service since it began; start again from the application";
        let gone = "the service of this sign-in is no longer served here; start again from the application";
        let upgrade = "this sign-in began while the server was being upgraded; start again from the application";
        let table: [(&str, Option<&str>, Option<&str>); 6] = [
            ("uid-1", Some("uid-1"), None),
            ("", Some(""), None),
            ("uid-1", Some("uid-2"), Some(changed)),
            // Begun on (or saved again by) a replica that records no holder: during a rolling upgrade, and up to
            // one request lifetime after it, the person starts again.
            ("", Some("uid-1"), Some(upgrade)),
            ("uid-1", Some(""), Some(changed)),
            ("uid-1", None, Some(gone)),
        ];
        for (recorded, configured, refusal) in table {
            let got = sign_in_held(recorded, configured).map_err(|e| e.description);
            assert_eq!(
                got,
                refusal.map_or(Ok(()), |r| Err(r.to_owned())),
                "{recorded:?} then {configured:?}"
            );
        }
    }

    #[test]
    fn a_grant_holds_only_under_its_own_holder() {
        for (recorded, configured, expected) in [
            ("uid-1", "uid-1", Standing::Holds),
            ("", "", Standing::Holds),
            ("", "uid-1", Standing::Adopts),
            ("uid-1", "uid-2", Standing::Changed),
            // A URL whose holder is no longer known (local mode) is not the holder the grant was made under.
            ("uid-1", "", Standing::Changed),
        ] {
            assert_eq!(
                standing(recorded, configured),
                expected,
                "{recorded:?} under {configured:?}"
            );
        }
        let (refusal, reason) = changed("uid-1", "uid-2");
        assert_eq!(refusal.code, crate::oauth_error::ErrorCode::InvalidGrant);
        assert_eq!(
            reason,
            "the holder of its resource changed from uid-1 to uid-2"
        );
        assert_eq!(
            changed("uid-1", "").1,
            "the holder of its resource changed from uid-1 to no holder"
        );
    }

    #[test]
    fn a_token_is_accepted_only_under_the_holder_it_names() {
        for (claim, configured, expected) in [
            (Some("uid-1"), Some("uid-1"), true),
            (Some("uid-1"), Some("uid-2"), false),
            (Some("uid-1"), Some(""), false),
            // Issued before holders were recorded.
            (None, Some("uid-1"), true),
            // An audience that is not one of ours has no holder here.
            (Some("uid-1"), None, true),
        ] {
            assert_eq!(
                token_held(claim, configured),
                expected,
                "{claim:?} under {configured:?}"
            );
        }
    }
}
