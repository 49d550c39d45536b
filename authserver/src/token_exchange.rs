//! RFC 8693 token exchange for downstream calls: the resource server of an MCP service (its sidecar, with the
//! key derived for that service) trades a user's access token to its service for a short token to one downstream
//! the platform declared for that service (`resources[].tokenExchange`), so the MCP server can call it as the user
//! without ever holding the user's token.
//!
//! ```text
//!  sidecar of S --private_key_jwt + subject_token (aud = S)--> /token --> token { aud = D, sub, client_id,
//!                                                                            scope ⊆ declared(S→D) ∩ subject's,
//!                                                                            act = {sub: S, act: <earlier hops>} }
//! ```
//!
//! The exchanged token is recorded under the subject token's grant: revoking the person's grant revokes it too.
//! The audience `urn:mcp-authz:provider:<id>` asks instead for the person's own access token at a third-party
//! provider declared for the service ([`crate::providers`]): one exchange, one client key, one cache in the
//! sidecar for both kinds.
//! The decisions are pure ([`plan`]) and table-tested; [`exchange`] gathers the facts and writes the token.

use serde_json::{Value, json};

use crate::audit::{self, Decision, Who};
use crate::client_auth::{self, Presented};
use crate::clients::shorten;
use crate::clock::now_secs;
use crate::config::{ExchangeTarget, PROVIDER_AUDIENCE_PREFIX};
use crate::oauth::holder;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::providers;
use crate::resource_servers;
use crate::secrets;
use crate::state::{AppState, Snapshot};
use crate::store::{AccessTokenRecord, Issue};

/// The grant type (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an OAuth access token (RFC 8693 §3), the only kind exchanged and issued here.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A JWT (RFC 8693 §3): our access tokens are JWTs, so a caller may name them so.
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The most actors a token may name (`act` nested): a chain of services calling each other, even in a cycle the
/// declarations allow, ends here.
pub const MAX_ACTORS: usize = 8;

fn invalid_request(message: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidRequest, message)
}

fn invalid_grant(message: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidGrant, message)
}

/// What the request asks, read from its parameters before anything is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked<'a> {
    pub subject_token: &'a str,
    /// The downstream: `resource` or `audience` (one of them, or both naming the same).
    pub target: &'a str,
    /// `scope`, split.
    pub scopes: Option<Vec<&'a str>>,
}

/// Reads the exchange parameters: the types this server speaks, no `actor_token` (the caller authenticates as
/// itself), exactly one downstream.
pub fn asked(params: &Params) -> Result<Asked<'_>, OAuthError> {
    let subject_token = params.require("subject_token")?;
    let subject_type = params.require("subject_token_type")?;
    if subject_type != ACCESS_TOKEN_TYPE && subject_type != JWT_TOKEN_TYPE {
        return Err(invalid_request(format!(
            "subject_token_type {:?} is not supported: only access tokens of this server are exchanged ({ACCESS_TOKEN_TYPE})",
            shorten(subject_type)
        )));
    }
    if let Some(requested) = params.get("requested_token_type")
        && requested != ACCESS_TOKEN_TYPE
        && requested != JWT_TOKEN_TYPE
    {
        return Err(invalid_request(format!(
            "requested_token_type {:?} is not supported: this server issues access tokens ({ACCESS_TOKEN_TYPE})",
            shorten(requested)
        )));
    }
    if params.get("actor_token").is_some() || params.get("actor_token_type").is_some() {
        return Err(invalid_request(
            "actor_token is not accepted: the resource server authenticates as itself and is the actor",
        ));
    }
    let target = match (params.get("resource"), params.get("audience")) {
        (Some(r), Some(a)) if r != a => {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "resource and audience name different downstreams: ask for one",
            ));
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(invalid_request(
                "a token exchange names its downstream in resource or audience",
            ));
        }
    };
    let scopes = params
        .get("scope")
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect());
    Ok(Asked {
        subject_token,
        target,
        scopes,
    })
}

/// The subject token as verified: our signature, `at+jwt`, our issuer, not expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub claims: Value,
    /// Whether the store knows its `jti` and neither it nor its grant is revoked; the grant's id if so.
    pub grant_id: Option<String>,
}

/// The token to issue.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub claims: Value,
    pub scopes: Vec<String>,
    pub lifetime: i64,
}

/// The refusals every exchange makes of its subject token: it must have been issued for the caller's own
/// service (a resource server may trade only what was given to its service: another service's token, even one
/// it saw, is not its to use), and its grant must still stand.
pub fn check_subject_for(caller: &str, subject: &Subject) -> Result<(), OAuthError> {
    let audience_ok = match subject.claims.get("aud") {
        Some(Value::String(a)) => a == caller,
        Some(Value::Array(all)) => all.len() == 1 && all[0].as_str() == Some(caller),
        _ => false,
    };
    if !audience_ok {
        return Err(invalid_grant(
            "the subject token was not issued for this resource server's service",
        ));
    }
    if subject.grant_id.is_none() {
        return Err(invalid_grant(
            "the subject token is revoked or unknown to this server",
        ));
    }
    Ok(())
}

/// Decides an exchange: `caller` is the resource the authenticated resource server protects, `targets` what the
/// platform declared for it, `subject` the verified subject token. Every refusal in the RFC's own errors.
pub fn plan(
    caller: &str,
    targets: &[ExchangeTarget],
    asked: &Asked<'_>,
    subject: &Subject,
    now: i64,
    max_lifetime: i64,
) -> Result<Planned, OAuthError> {
    check_subject_for(caller, subject)?;
    let claims = &subject.claims;
    let target = targets
        .iter()
        .find(|t| t.audience == asked.target)
        .ok_or_else(|| {
            OAuthError::new(
                ErrorCode::InvalidTarget,
                format!(
                    "{:?} is not a downstream this service may obtain tokens for",
                    shorten(asked.target)
                ),
            )
        })?;
    let held: Vec<&str> = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    // What the person granted this service and the platform lets it pass on, in the declaration's order.
    let passable: Vec<&str> = target
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| held.contains(s))
        .collect();
    let scopes: Vec<String> = match &asked.scopes {
        Some(wanted) => {
            if let Some(extra) = wanted.iter().find(|s| !passable.contains(s)) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    format!(
                        "scope {:?} may not be passed on to this downstream: the subject token holds {:?} and the declaration allows {:?}",
                        shorten(extra),
                        held.join(" "),
                        target.scopes.join(" ")
                    ),
                ));
            }
            passable
                .iter()
                .filter(|s| wanted.contains(s))
                .map(|s| (*s).to_owned())
                .collect()
        }
        None => passable.iter().map(|s| (*s).to_owned()).collect(),
    };
    if scopes.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "the subject token holds no scope this downstream is declared for",
        ));
    }
    let mut actors = 0;
    let mut earlier = claims.get("act");
    while let Some(actor) = earlier {
        actors += 1;
        earlier = actor.get("act");
    }
    if actors + 1 > MAX_ACTORS {
        return Err(invalid_grant(format!(
            "the subject token has passed through {actors} services already; at most {MAX_ACTORS} may act in a row"
        )));
    }
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
    let lifetime = (exp - now).min(max_lifetime);
    if lifetime <= 0 {
        return Err(invalid_grant("the subject token has expired"));
    }
    let mut act = json!({ "sub": caller });
    if let Some(earlier) = claims.get("act") {
        act["act"] = earlier.clone();
    }
    let claims = json!({
        "sub": claims.get("sub").cloned().unwrap_or(Value::Null),
        "aud": target.audience,
        "client_id": claims.get("client_id").cloned().unwrap_or(Value::Null),
        "scope": scopes.join(" "),
        crate::token::CALLER_CLAIM: claims.get(crate::token::CALLER_CLAIM).cloned().unwrap_or(Value::Null),
        "act": act,
    });
    Ok(Planned {
        claims,
        scopes,
        lifetime,
    })
}

/// What an exchange will give once its caller and subject token are judged.
enum Decided {
    /// A token of this server for a declared downstream, recorded under the subject token's grant.
    Downstream(Planned, String),
    /// The person's access token at a third-party provider.
    Provider(providers::tokens::Planned),
}

/// The subject token's claims when it is one of our live access tokens, and its grant when it is still good.
async fn subject(
    state: &AppState,
    snapshot: &Snapshot,
    token: &str,
) -> Result<Subject, OAuthError> {
    let not_ours = || invalid_grant("the subject token is not a valid access token of this server");
    let (header, claims) = state.keys().verify(token).ok_or_else(not_ours)?;
    if header.get("typ").and_then(Value::as_str) != Some("at+jwt")
        || claims.get("iss").and_then(Value::as_str) != Some(snapshot.config.issuer.as_str())
    {
        return Err(not_ours());
    }
    if claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_none_or(|exp| exp <= now_secs())
    {
        return Err(invalid_grant("the subject token has expired"));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .ok_or_else(not_ours)?;
    let grant_id = match state.store.access_token_state(jti).await? {
        Some((grant_id, false)) => Some(grant_id),
        _ => None,
    };
    Ok(Subject { claims, grant_id })
}

/// POST `/token` with the token-exchange grant.
pub async fn exchange(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    params: &Params,
    who: &mut Who,
) -> Result<Value, OAuthError> {
    // Only a resource server of this server may exchange, and it is told so before its key is looked at.
    if resource_servers::resource_of(&presented.client_id).is_none() {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "only the resource server of one of this server's services may exchange tokens",
        ));
    }
    let asked = asked(params)?;
    who.resource = Some(asked.target.to_owned());
    let (client, claim) = client_auth::verify(
        state,
        snapshot,
        presented,
        &client_auth::assertion_audiences(snapshot, "token"),
        None,
    )
    .await?;
    // The caller's own assertion is spent whatever happens next, as with client_credentials.
    let decided = async {
        let caller = client
            .introspection_audience
            .as_deref()
            .filter(|_| resource_servers::resource_of(&client.client_id).is_some())
            .ok_or_else(|| {
                OAuthError::new(
                    ErrorCode::UnauthorizedClient,
                    "only the resource server of one of this server's services may exchange tokens",
                )
            })?;
        let resource = snapshot.config.resource(caller);
        let subject = subject(state, snapshot, asked.subject_token).await?;
        // The caller's key is derived for today's holder of its URL: a token issued under an earlier holder was
        // given to another service, whatever its `aud` says.
        if !holder::token_held(
            subject
                .claims
                .get(holder::HOLDER_CLAIM)
                .and_then(Value::as_str),
            resource.map(|r| r.holder.as_str()),
        ) {
            return Err(invalid_grant(
                "the subject token was issued while another service held this resource",
            ));
        }
        who.subject = subject
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(provider) = asked.target.strip_prefix(PROVIDER_AUDIENCE_PREFIX) {
            let declared = resource.map(|r| r.providers.as_slice()).unwrap_or_default();
            let grant_type = match &subject.grant_id {
                Some(id) => state.store.grant(id).await?.map(|g| g.grant_type),
                None => None,
            };
            let planned = providers::tokens::plan(
                caller,
                declared,
                provider,
                &subject,
                grant_type.as_deref(),
            )?;
            return Ok(Decided::Provider(planned));
        }
        let targets = resource
            .map(|r| r.token_exchange.as_slice())
            .unwrap_or_default();
        let max = i64::try_from(snapshot.config.tokens.exchanged_token_secs).unwrap_or(i64::MAX);
        let planned = plan(caller, targets, &asked, &subject, now_secs(), max)?;
        Ok::<_, OAuthError>(Decided::Downstream(
            planned,
            subject.grant_id.unwrap_or_default(),
        ))
    }
    .await;
    let (planned, grant_id) = match decided {
        Ok(Decided::Downstream(planned, grant_id)) => (planned, grant_id),
        Ok(Decided::Provider(planned)) => {
            // Spent before the provider is asked: a replayed assertion gets nothing from it.
            if let Some(claim) = claim {
                client_auth::spend(state, claim).await?;
            }
            return providers::tokens::serve(state, snapshot, &planned).await;
        }
        Err(refusal) => {
            if let Some(claim) = claim {
                client_auth::spend(state, claim).await?;
            }
            return Err(refusal);
        }
    };
    let now = now_secs();
    let jti = secrets::record_id();
    let mut claims = planned.claims;
    claims["iss"] = json!(snapshot.config.issuer);
    claims["jti"] = json!(jti);
    claims["iat"] = json!(now);
    claims["nbf"] = json!(now);
    claims["exp"] = json!(now + planned.lifetime);
    // A downstream that is one of our services checks the holder as for any token of its audience.
    if let Some(held) = snapshot
        .config
        .resource(asked.target)
        .map(|r| r.holder.as_str())
        .filter(|h| !h.is_empty())
    {
        claims[holder::HOLDER_CLAIM] = json!(held);
    }
    let token = crate::token::sign_at_jwt(state, &claims)?;
    let subject = claims.get("sub").and_then(Value::as_str);
    let client_id = claims.get("client_id").and_then(Value::as_str);
    let decision = Decision {
        event: "token",
        caller: claims
            .get(crate::token::CALLER_CLAIM)
            .and_then(Value::as_str),
        subject,
        client_id,
        resource: Some(asked.target),
        scopes: &planned.scopes,
        outcome: "issued",
        reason: "token_exchange",
    };
    let assertion_jti = claim.as_ref().map(|c| c.jti.clone());
    let issue = Issue {
        claim,
        audit: Some(audit::row(&decision)),
        grant: None,
        access_token: Some(AccessTokenRecord {
            jti,
            grant_id,
            expires_at: now + planned.lifetime,
        }),
    };
    if !state.store.record_issue(issue).await? {
        return Err(client_auth::replayed(
            assertion_jti.as_deref().unwrap_or_default(),
        ));
    }
    audit::log(&decision);
    Ok(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": planned.lifetime,
        "scope": planned.scopes.join(" "),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "https://mcp.example.com/files";
    const D: &str = "https://inventory.example.com/api";

    fn targets() -> Vec<ExchangeTarget> {
        vec![ExchangeTarget {
            audience: D.into(),
            scopes: vec!["files:read".into(), "files:list".into()],
        }]
    }

    fn subject(edit: impl FnOnce(&mut Value)) -> Subject {
        let mut claims = json!({
            "iss": "https://auth.example.com", "sub": "alice", "aud": S, "client_id": "cli",
            "scope": "files:list files:read files:write", "exp": 1_000, "mcp_authz_caller": "machine",
        });
        edit(&mut claims);
        Subject {
            claims,
            grant_id: Some("g".into()),
        }
    }

    fn asked(scopes: Option<Vec<&'static str>>) -> Asked<'static> {
        Asked {
            subject_token: "t",
            target: D,
            scopes,
        }
    }

    fn chain(depth: usize) -> Value {
        let mut act = Value::Null;
        for i in 0..depth {
            act = if act.is_null() {
                json!({"sub": format!("https://s{i}.example")})
            } else {
                json!({"sub": format!("https://s{i}.example"), "act": act})
            };
        }
        act
    }

    #[test]
    fn the_plan_of_an_exchange() {
        let ok = |p: Result<Planned, OAuthError>| p.expect("planned");
        // Every passable scope the subject holds, in the declaration's order; caller kind and client carried.
        let p = ok(plan(
            S,
            &targets(),
            &asked(None),
            &subject(|_| {}),
            900,
            300,
        ));
        assert_eq!(p.scopes, ["files:read", "files:list"]);
        assert_eq!(p.lifetime, 100, "never past the subject token's exp");
        assert_eq!(p.claims["aud"], D);
        assert_eq!(p.claims["mcp_authz_caller"], "machine");
        assert_eq!(p.claims["client_id"], "cli");
        assert_eq!(p.claims["act"], json!({"sub": S}));
        let p = ok(plan(
            S,
            &targets(),
            &asked(Some(vec!["files:list"])),
            &subject(|_| {}),
            0,
            300,
        ));
        assert_eq!((p.scopes, p.lifetime), (vec!["files:list".to_owned()], 300));
        // An audience given as a one-element array is the same audience.
        ok(plan(
            S,
            &targets(),
            &asked(None),
            &subject(|c| c["aud"] = json!([S])),
            0,
            300,
        ));
        // Seven earlier actors: the eighth may act.
        let p = ok(plan(
            S,
            &targets(),
            &asked(None),
            &subject(|c| c["act"] = chain(7)),
            0,
            300,
        ));
        assert_eq!(p.claims["act"]["sub"], S);
        assert_eq!(p.claims["act"]["act"], chain(7));
    }

    #[test]
    fn refusals_of_an_exchange() {
        let refused = |asked: Asked<'static>, subject: Subject, now: i64| {
            let e = plan(S, &targets(), &asked, &subject, now, 300).expect_err("refused");
            (e.code.as_str(), e.description)
        };
        let cases = [
            (
                refused(asked(None), subject(|c| c["aud"] = json!([S, D])), 0),
                (
                    "invalid_grant",
                    "the subject token was not issued for this resource server's service",
                ),
            ),
            (
                refused(
                    asked(None),
                    subject(|c| c["aud"] = json!("https://other.example")),
                    0,
                ),
                (
                    "invalid_grant",
                    "the subject token was not issued for this resource server's service",
                ),
            ),
            (
                refused(
                    asked(None),
                    Subject {
                        grant_id: None,
                        ..subject(|_| {})
                    },
                    0,
                ),
                (
                    "invalid_grant",
                    "the subject token is revoked or unknown to this server",
                ),
            ),
            (
                refused(
                    asked(None),
                    subject(|c| c["scope"] = json!("files:write")),
                    0,
                ),
                (
                    "invalid_scope",
                    "the subject token holds no scope this downstream is declared for",
                ),
            ),
            (
                refused(asked(None), subject(|c| c["act"] = chain(8)), 0),
                (
                    "invalid_grant",
                    "the subject token has passed through 8 services already; at most 8 may act in a row",
                ),
            ),
            (
                refused(asked(None), subject(|_| {}), 1_000),
                ("invalid_grant", "the subject token has expired"),
            ),
        ];
        for (got, (code, description)) in cases {
            assert_eq!((got.0, got.1.as_str()), (code, description));
        }
    }
}
