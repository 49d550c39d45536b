//! `/token` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`: redeeming an Identity Assertion JWT
//! Authorization Grant (ID-JAG) from a trusted enterprise identity provider, as the MCP enterprise-managed
//! authorization extension and draft-ietf-oauth-identity-assertion-authz-grant describe.
//!
//! The IdP has already decided that this person may use this client at this resource; what is left here is to
//! make sure the assertion says exactly that and nothing else: signed by a provider we trust for this client,
//! meant for this server (`aud`), issued to the client that presents it (`client_id`), for one of our resources
//! (`resource`, which binds the token's audience whatever the request says), used once (`jti`), and granting no
//! scope the assertion does not. No refresh token is issued: the provider decides how long access lasts by
//! deciding whether to issue the next assertion.

use jsonwebtoken::Validation;
use serde_json::Value;

use crate::audit::Who;
use crate::client_auth::{self, ACCEPTED_ALGS, Presented, unverified_claims};
use crate::clients::shorten;
use crate::clock::now_secs;
use crate::config::{GrantType, JWT_BEARER_GRANT};
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::state::{AppState, Snapshot};
use crate::store::AssertionClaim;
use crate::token::{Direct, issue_direct};

/// The JWT `typ` of an ID-JAG; compared without case, with or without the `application/` prefix (RFC 8725 §3.11).
const TYP: &str = "oauth-id-jag+jwt";
/// The furthest in the future an assertion's `exp` may be; its `jti` is remembered that long.
const MAX_LIFETIME_SECS: i64 = 3600;
const LEEWAY_SECS: i64 = 30;

/// The claims of an ID-JAG that passed the checks needing no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdJag {
    pub subject: String,
    pub client_id: String,
    pub resource: String,
    /// The `scope` claim, when the assertion has one.
    pub scope: Option<String>,
    pub jti: String,
    pub exp: i64,
}

fn refused(description: impl Into<String>) -> OAuthError {
    OAuthError::invalid_grant(description)
}

/// A short string claim with no control characters (they cannot be stored, and would forge log lines).
fn text_claim<'c>(claims: &'c Value, name: &str, max: usize) -> Option<&'c str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control))
}

fn numeric_date(claims: &Value, name: &str) -> Result<i64, OAuthError> {
    // A fraction is rounded up; a date no clock reaches is refused rather than read as 0.
    claims
        .get(name)
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && (0.0..1e12).contains(t))
        .map(|t| t.ceil() as i64)
        .ok_or_else(|| {
            refused(format!(
                "the assertion's {name} is not a usable NumericDate"
            ))
        })
}

/// The checks of an ID-JAG that need no key: its type, that it is meant for `issuer`, its times, and the claims
/// the grant is made of. The signature check repeats the time and audience checks with the key.
pub fn check_claims(
    typ: Option<&str>,
    claims: &Value,
    issuer: &str,
    now: i64,
) -> Result<IdJag, OAuthError> {
    let typ_ok = typ.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == TYP || t.strip_prefix("application/") == Some(TYP)
    });
    if !typ_ok {
        return Err(refused(format!("the assertion's typ must be {TYP}")));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == issuer,
        Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(issuer)),
        _ => false,
    };
    if !aud_ok {
        return Err(refused(format!(
            "the assertion's aud must be this server's issuer {issuer}"
        )));
    }
    let exp = numeric_date(claims, "exp")?;
    if exp + LEEWAY_SECS < now {
        return Err(refused("the assertion has expired"));
    }
    if exp > now + MAX_LIFETIME_SECS + LEEWAY_SECS {
        return Err(refused(format!(
            "the assertion's exp is more than {MAX_LIFETIME_SECS} seconds away"
        )));
    }
    if numeric_date(claims, "iat")? > now + LEEWAY_SECS {
        return Err(refused("the assertion's iat is in the future"));
    }
    let subject = text_claim(claims, "sub", 255)
        .ok_or_else(|| refused("the assertion needs a sub of 1 to 255 characters"))?;
    let client_id = text_claim(claims, "client_id", 2048)
        .ok_or_else(|| refused("the assertion needs a client_id"))?;
    let resource = text_claim(claims, "resource", 2048)
        .ok_or_else(|| refused("the assertion needs a resource"))?;
    let jti = text_claim(claims, "jti", 256).ok_or_else(|| {
        refused(
            "the assertion needs a jti of 1 to 256 characters, none of them a control character",
        )
    })?;
    let scope = match claims.get("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(refused("the assertion's scope must be a string")),
    };
    Ok(IdJag {
        subject: subject.to_owned(),
        client_id: client_id.to_owned(),
        resource: resource.to_owned(),
        scope,
        jti: jti.to_owned(),
        exp,
    })
}

/// The scopes of the token: those asked for (or, when none are, every one the assertion grants), each granted by
/// the assertion and offered by the resource; at least one. An assertion may grant scopes of other resources of
/// ours, which this token simply does not get; a request for a scope the assertion does not grant is refused
/// rather than quietly narrowed, so the client learns why its call will fail.
pub fn granted_scopes(
    asserted: Option<&str>,
    requested: Option<&str>,
    offered: &[String],
) -> Result<Vec<String>, OAuthError> {
    let words = |text: &str| -> Vec<String> {
        text.split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let asserted = asserted.map(words).unwrap_or_default();
    let mut scopes = match requested.map(words) {
        Some(asked) if !asked.is_empty() => {
            for s in &asked {
                if !asserted.contains(s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!(
                            "scope {:?} is not granted by the identity provider's assertion",
                            shorten(s)
                        ),
                    ));
                }
                if !offered.contains(s) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        format!("scope {:?} is not offered by this resource", shorten(s)),
                    ));
                }
            }
            asked
        }
        _ => asserted
            .into_iter()
            .filter(|s| offered.contains(s))
            .collect(),
    };
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "the identity provider's assertion grants no scope this resource offers",
        ));
    }
    Ok(scopes)
}

/// The store key an ID-JAG's `jti` is spent under: one per provider, and never a client id (client ids carry no
/// fragment, CIMD ones by rule and registered ones because this one starts `https://`).
fn replay_key(issuer: &str) -> String {
    format!("{issuer}#id-jag")
}

/// Redeems the ID-JAG in `assertion` for an access token.
pub async fn redeem(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    params: &Params,
    who: &mut Who,
) -> Result<Value, OAuthError> {
    let jwt = params.require("assertion")?;
    let header = jsonwebtoken::decode_header(jwt)
        .map_err(|_| refused("the assertion is not a signed JWT"))?;
    if !ACCEPTED_ALGS.contains(&header.alg) {
        return Err(refused(format!(
            "the assertion's algorithm {:?} is refused; use ES256, RS256, PS256 or EdDSA",
            header.alg
        )));
    }
    let claims =
        unverified_claims(jwt).ok_or_else(|| refused("the assertion's payload is not JSON"))?;
    let iss =
        text_claim(&claims, "iss", 2048).ok_or_else(|| refused("the assertion needs an iss"))?;
    let now = now_secs();
    let jag = check_claims(header.typ.as_deref(), &claims, &snapshot.config.issuer, now)?;
    who.subject = Some(jag.subject.clone());
    who.resource = Some(jag.resource.clone());
    if jag.client_id != presented.client_id {
        return Err(refused(format!(
            "the assertion was issued to client {:?}, not to the client presenting it",
            shorten(&jag.client_id)
        )));
    }
    let target = snapshot.config.resource(&jag.resource).ok_or_else(|| {
        OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "the assertion's resource {:?} is not a resource of this server",
                shorten(&jag.resource)
            ),
        )
    })?;
    if let Some(asked) = params.get("resource")
        && asked != jag.resource
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "resource {:?} is not the resource the assertion is for",
                shorten(asked)
            ),
        ));
    }
    // The client, under the policy of the resource the assertion names; its own assertion (private_key_jwt) is
    // spent now, whatever happens to the ID-JAG.
    let client = client_auth::authenticate(
        state,
        snapshot,
        presented,
        &client_auth::assertion_audiences(snapshot, "token"),
        Some(&jag.resource),
    )
    .await?;
    if !client.auth_method.is_confidential() {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "a public client may not redeem an identity assertion",
        ));
    }
    if !client.allows(GrantType::JwtBearer) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            format!("this client may not use grant_type {JWT_BEARER_GRANT}"),
        ));
    }
    // Which providers this server trusts, and for which clients, is told only to an authenticated client: an
    // anonymous request learns no more than whether its assertion is well formed.
    let provider = snapshot.identity_providers.get(iss).ok_or_else(|| {
        refused(format!(
            "the assertion's issuer {:?} is not a trusted identity provider",
            shorten(iss)
        ))
    })?;
    if !provider.config.clients.contains(&jag.client_id) {
        return Err(refused(format!(
            "identity provider {:?} may not speak for client {:?}",
            shorten(iss),
            shorten(&jag.client_id)
        )));
    }
    let keys = provider.keys(header.kid.as_deref()).await.map_err(|e| {
        OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            format!("the identity provider's keys cannot be had right now: {e}"),
        )
    })?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[iss]);
    validation.set_audience(&[&snapshot.config.issuer]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    validation.leeway = LEEWAY_SECS as u64;
    validation.validate_nbf = true;
    crate::jwt_verify::verify(
        jwt,
        &keys,
        header.kid.as_deref(),
        &validation,
        "no key of the identity provider matches the assertion's kid",
    )
    .map_err(|e| refused(format!("the assertion's signature does not verify: {e}")))?;
    let scopes = granted_scopes(jag.scope.as_deref(), params.get("scope"), &target.scopes)?;
    client.check_scope_limits(&scopes)?;
    let made = Direct {
        client: &client,
        subject: &jag.subject,
        resource: &jag.resource,
        grant_type: GrantType::JwtBearer,
        claim: Some(AssertionClaim {
            client_id: replay_key(iss),
            jti: jag.jti.clone(),
            expires_at: jag.exp + LEEWAY_SECS,
        }),
    };
    issue_direct(state, snapshot, made, scopes)
        .await?
        .ok_or_else(|| {
            refused(format!(
                "the assertion {:?} was already redeemed",
                shorten(&jag.jti)
            ))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://as.example";

    #[test]
    fn what_an_assertion_must_say() {
        let good = json!({
            "iss": "https://idp.example", "sub": "u1", "aud": ISSUER, "client_id": "agent",
            "resource": "https://mcp.example/files", "jti": "j1", "iat": 990, "exp": 1200,
            "scope": "files:read",
        });
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v;
            }
            c
        };
        let ok = IdJag {
            subject: "u1".into(),
            client_id: "agent".into(),
            resource: "https://mcp.example/files".into(),
            scope: Some("files:read".into()),
            jti: "j1".into(),
            exp: 1200,
        };
        let jti =
            "the assertion needs a jti of 1 to 256 characters, none of them a control character";
        let aud = "the assertion's aud must be this server's issuer https://as.example";
        type Case = (Option<&'static str>, Value, Result<IdJag, &'static str>);
        let cases: Vec<Case> = vec![
            (Some("oauth-id-jag+jwt"), good.clone(), Ok(ok.clone())),
            (
                Some("application/OAuth-ID-JAG+JWT"),
                good.clone(),
                Ok(ok.clone()),
            ),
            (
                Some(TYP),
                with("scope", Value::Null),
                Ok(IdJag {
                    scope: None,
                    ..ok.clone()
                }),
            ),
            (Some(TYP), with("aud", json!(["x", ISSUER])), Ok(ok.clone())),
            (
                Some("JWT"),
                good.clone(),
                Err("the assertion's typ must be oauth-id-jag+jwt"),
            ),
            (
                None,
                good.clone(),
                Err("the assertion's typ must be oauth-id-jag+jwt"),
            ),
            (
                Some(TYP),
                with("aud", json!("https://as.example/")),
                Err(aud),
            ),
            (
                Some(TYP),
                with("aud", json!("https://other.example")),
                Err(aud),
            ),
            (Some(TYP), with("aud", Value::Null), Err(aud)),
            (
                Some(TYP),
                with("exp", json!(960)),
                Err("the assertion has expired"),
            ),
            (
                Some(TYP),
                with("exp", json!(1000 + 3600 + 31)),
                Err("the assertion's exp is more than 3600 seconds away"),
            ),
            (
                Some(TYP),
                with("exp", json!("soon")),
                Err("the assertion's exp is not a usable NumericDate"),
            ),
            (
                Some(TYP),
                with("iat", Value::Null),
                Err("the assertion's iat is not a usable NumericDate"),
            ),
            (
                Some(TYP),
                with("iat", json!(1031)),
                Err("the assertion's iat is in the future"),
            ),
            (
                Some(TYP),
                with("sub", json!("")),
                Err("the assertion needs a sub of 1 to 255 characters"),
            ),
            (
                Some(TYP),
                with("sub", json!("a\nb")),
                Err("the assertion needs a sub of 1 to 255 characters"),
            ),
            (
                Some(TYP),
                with("client_id", json!(7)),
                Err("the assertion needs a client_id"),
            ),
            (
                Some(TYP),
                with("resource", Value::Null),
                Err("the assertion needs a resource"),
            ),
            (Some(TYP), with("jti", Value::Null), Err(jti)),
            (Some(TYP), with("jti", json!("a\u{0}b")), Err(jti)),
            (
                Some(TYP),
                with("scope", json!(["files:read"])),
                Err("the assertion's scope must be a string"),
            ),
        ];
        for (typ, claims, want) in cases {
            let got = check_claims(typ, &claims, ISSUER, 1000).map_err(|e| {
                assert_eq!(e.code, ErrorCode::InvalidGrant);
                e.description
            });
            assert_eq!(got, want.map_err(str::to_owned), "{typ:?} {claims}");
        }
    }

    #[test]
    fn which_scopes_a_token_gets() {
        let offered: Vec<String> = vec!["files:read".into(), "files:write".into()];
        // (asserted, requested, granted or the refusal)
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Result<&'a [&'a str], &'a str>,
        );
        let cases: Vec<Case> = vec![
            (Some("files:read other:x"), None, Ok(&["files:read"])),
            (
                Some("files:write files:read"),
                Some("files:read"),
                Ok(&["files:read"]),
            ),
            (
                Some("files:write files:read"),
                Some(""),
                Ok(&["files:read", "files:write"]),
            ),
            (
                Some("files:read"),
                Some("files:read files:write"),
                Err("scope \"files:write\" is not granted by the identity provider's assertion"),
            ),
            (
                Some("files:read other:x"),
                Some("other:x"),
                Err("scope \"other:x\" is not offered by this resource"),
            ),
            (
                None,
                None,
                Err("the identity provider's assertion grants no scope this resource offers"),
            ),
            (
                Some("other:x"),
                None,
                Err("the identity provider's assertion grants no scope this resource offers"),
            ),
        ];
        for (asserted, requested, want) in cases {
            let got = granted_scopes(asserted, requested, &offered).map_err(|e| {
                assert_eq!(e.code, ErrorCode::InvalidScope);
                e.description
            });
            let want = want
                .map(|s| s.iter().map(|x| x.to_string()).collect::<Vec<_>>())
                .map_err(str::to_owned);
            assert_eq!(got, want, "{asserted:?} {requested:?}");
        }
    }
}
