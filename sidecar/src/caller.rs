//! People and machines: who stands behind a token, as its issuer marks it, and which of them a rule admits.
//!
//! The authorization server marks every access token with [`CALLER_CLAIM`]: `machine` for a token a client got
//! for itself (`client_credentials`, no person involved), `person` for one a person's login or assertion stands
//! behind. A rule's `callers` then restricts who may perform what it matches, whatever the scopes: a tool a CI
//! job runs need not be callable by a person holding the same scope, and a tool that acts on a person's data
//! need not be callable by an agent with no person behind it.

use serde::{Deserialize, Serialize};

/// The private claim (RFC 7519 §4.3) the authorization server sets on every access token it issues.
pub const CALLER_CLAIM: &str = "mcp_authz_caller";

/// Who stands behind one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Caller {
    /// A person signed in (or an enterprise IdP asserted one) and the client acts for them.
    Person,
    /// A client acting for itself, no person involved.
    Machine,
    /// The token does not say (issued before the claim existed, or an unknown value): no rule restricted to
    /// people or to machines admits it.
    Unknown,
}

impl Caller {
    /// The caller a token's claim names; a missing or unknown value is [`Caller::Unknown`], never a guess.
    pub fn from_claim(value: Option<&str>) -> Self {
        match value {
            Some("person") => Self::Person,
            Some("machine") => Self::Machine,
            _ => Self::Unknown,
        }
    }

    /// The claim's value, and what the sidecar forwards upstream and writes in audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Machine => "machine",
            Self::Unknown => "unknown",
        }
    }
}

/// Who a rule admits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Callers {
    /// People and machines alike: only the scopes decide.
    #[default]
    Anyone,
    /// Only tokens a person stands behind.
    People,
    /// Only tokens a client got for itself (`client_credentials`).
    Machines,
}

impl Callers {
    /// Whether `caller` may perform what a rule with these callers matches.
    pub fn admits(self, caller: Caller) -> bool {
        match self {
            Self::Anyone => true,
            Self::People => caller == Caller::Person,
            Self::Machines => caller == Caller::Machine,
        }
    }

    /// Whether these are the default (a rule that says nothing about callers).
    pub fn is_anyone(&self) -> bool {
        *self == Self::Anyone
    }

    /// The JSON-RPC error message of an operation refused because of who called.
    pub fn refusal_message(self) -> &'static str {
        match self {
            Self::Anyone => "forbidden: no scope grants this operation",
            Self::People => {
                "forbidden: this operation is for people only, not for clients acting alone"
            }
            Self::Machines => "forbidden: this operation is for machine clients only",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_is_read_exactly_and_anything_else_is_unknown() {
        for (claim, caller) in [
            (Some("person"), Caller::Person),
            (Some("machine"), Caller::Machine),
            (None, Caller::Unknown),
            (Some(""), Caller::Unknown),
            (Some("Machine"), Caller::Unknown),
            (Some("machine "), Caller::Unknown),
            (Some("robot"), Caller::Unknown),
        ] {
            assert_eq!(Caller::from_claim(claim), caller, "{claim:?}");
        }
    }

    #[test]
    fn each_restriction_admits_its_callers_only() {
        use Caller::*;
        for (callers, admitted) in [
            (Callers::Anyone, [true, true, true]),
            (Callers::People, [true, false, false]),
            (Callers::Machines, [false, true, false]),
        ] {
            for (caller, expected) in [Person, Machine, Unknown].into_iter().zip(admitted) {
                assert_eq!(callers.admits(caller), expected, "{callers:?} {caller:?}");
            }
        }
    }
}
