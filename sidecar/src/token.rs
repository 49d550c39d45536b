//! Finding the bearer token in a request and verifying it: pure functions of (token, keys, settings, now).

use std::collections::HashSet;

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::caller::Caller;
use crate::config::SidecarConfig;
use crate::keys::KeySet;

/// The verified identity behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: String,
    /// The granted scopes, as in the token.
    pub scopes: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `jti`, if present.
    pub token_id: Option<String>,
    /// Who stands behind the token, as its issuer marked it.
    pub caller: Caller,
}

/// Why a request's token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No bearer token at all.
    #[error("no bearer token")]
    Missing,
    /// Malformed `Authorization` use (400 `invalid_request`).
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The token is larger than the limit.
    #[error("the token is too large")]
    TooLarge,
    /// Not a well-formed JWS.
    #[error("the token is malformed")]
    Malformed,
    /// `alg` is not on the allow list.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// `typ` is not an access-token type.
    #[error("the token is not an access token (typ)")]
    Type,
    /// The header has `crit` extensions we do not understand.
    #[error("the token has critical header extensions")]
    Critical,
    /// No key with this `kid`.
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The keys could not be loaded, so an unknown key cannot be told from a new one (503, not 401).
    #[error("the issuer's keys are unavailable")]
    KeysUnavailable,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// A claim is missing or has the wrong type.
    #[error("the token lacks a valid {0} claim")]
    Claim(&'static str),
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not our issuer.
    #[error("the token was issued by another issuer")]
    Issuer,
    /// `aud` does not contain this resource.
    #[error("the token is for another audience")]
    Audience,
    /// The token names another holder of this resource URL than the one this sidecar serves.
    #[error("the token was issued while another service held this resource")]
    Holder,
    /// Introspection said the token is no longer active.
    #[error("the token is no longer active")]
    Inactive,
}

impl TokenError {
    /// Low-cardinality reason for metrics and audit.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::InvalidRequest(_) => "invalid_request",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "token_malformed",
            Self::Algorithm => "token_algorithm",
            Self::Type => "token_type",
            Self::Critical => "token_crit",
            Self::UnknownKey => "token_unknown_key",
            Self::KeysUnavailable => "jwks_unavailable",
            Self::Signature => "token_signature",
            Self::Claim(_) => "token_claim",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::Issuer => "token_issuer",
            Self::Audience => "token_audience",
            Self::Holder => "token_holder",
            Self::Inactive => "token_inactive",
        }
    }
}

/// What a token must satisfy, derived once per config.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// The accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Accepted `typ` values, lowercase.
    pub token_types: Vec<String>,
    /// The `iss` required.
    pub issuer: String,
    /// The value `aud` must contain.
    pub audience: String,
    /// The holder a token's `mcp_authz_holder` must name when it names one; `None`: not checked.
    pub holder: Option<String>,
    /// Leeway for `exp` and `nbf`.
    pub leeway: u64,
    /// Largest token accepted.
    pub max_token_bytes: usize,
}

impl TokenRules {
    /// The token rules of a config.
    pub fn from_config(config: &SidecarConfig) -> Self {
        Self {
            algorithms: config.algorithms.iter().map(|a| a.to_jwt()).collect(),
            token_types: config
                .token_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            issuer: config.issuer.clone(),
            audience: config.resource.clone(),
            holder: Some(config.holder.clone()).filter(|h| !h.is_empty()),
            leeway: config.leeway_seconds,
            max_token_bytes: config.limits.max_token_bytes,
        }
    }
}

/// Finds the bearer token. Exactly one `Authorization` header with the `Bearer` scheme (any case, RFC 9110
/// §11.1) and a b64token (RFC 6750 §2.1). Other schemes count as no token.
pub fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<&str, TokenError> {
    bearer_token_of(authorization(headers)?, max_bytes)
}

/// The request's one `Authorization` value.
pub fn authorization(headers: &HeaderMap) -> Result<&HeaderValue, TokenError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenError::Missing)?;
    if values.next().is_some() {
        return Err(TokenError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    Ok(value)
}

/// `bearer_token`'s reading of the one `Authorization` value.
pub fn bearer_token_of(value: &HeaderValue, max_bytes: usize) -> Result<&str, TokenError> {
    match well_formed_bearer(value.as_bytes(), max_bytes) {
        Some(token) => Ok(token),
        None => bearer_token_stepwise(value, max_bytes),
    }
}

/// The bytes a `Bearer` value carries as its token, their characters not read: wherever `bearer_token_of`
/// accepts a value, these are the bytes of its token. A token verified earlier is found by them without
/// reading its several hundred characters again (it was well-formed then, and the same bytes still are).
pub fn bearer_bytes(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    // Spaces only, as `bearer_token` trims: a tab or another blank is part of the token, and refused.
    let start = rest.iter().position(|&b| b != b' ')?;
    let end = rest.iter().rposition(|&b| b != b' ')? + 1;
    Some(&rest[start..end])
}

/// `bearer_token`'s reading of one `Authorization` value, step by step, each refusal with its own error.
fn bearer_token_stepwise(value: &HeaderValue, max_bytes: usize) -> Result<&str, TokenError> {
    let value = value
        .to_str()
        .map_err(|_| TokenError::InvalidRequest("Authorization is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    let token = rest.trim_start_matches(' ').trim_end_matches(' ');
    if token.is_empty() {
        return Err(TokenError::InvalidRequest("empty bearer token"));
    }
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !b64token {
        return Err(TokenError::InvalidRequest(
            "the bearer token has characters RFC 6750 does not allow",
        ));
    }
    Ok(token)
}

/// The token of a well-formed `Bearer` value in one pass over its bytes, or `None` for anything else, which
/// `bearer_token` then reads step by step for its exact refusal. Every request carries a token of several
/// hundred bytes: the step-by-step reading walks it twice, once for ASCII and once for the b64token grammar.
fn well_formed_bearer(value: &[u8], max_bytes: usize) -> Option<&str> {
    let token = bearer_bytes(value)?;
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    let (body, padding) = token.split_at(body_len);
    let well_formed = !body.is_empty()
        && token.len() <= max_bytes
        && body.iter().all(|&b| B64TOKEN[usize::from(b)])
        && padding.iter().all(|&b| b == b'=');
    // Every byte of a well-formed token is ASCII.
    well_formed.then(|| std::str::from_utf8(token).ok())?
}

/// The b64token characters of RFC 6750 §2.1 other than the trailing `=`.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// Whether the query string carries a token (`access_token`), which we refuse: URLs end up in logs.
pub fn query_has_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            key.eq_ignore_ascii_case("access_token") || key.eq_ignore_ascii_case("access%5Ftoken")
        })
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    client_id: Option<String>,
    scope: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    jti: Option<String>,
    /// [`crate::caller::CALLER_CLAIM`].
    mcp_authz_caller: Option<String>,
    /// The holder of the audience's URL when the token was issued (the authorization server's `HOLDER_CLAIM`).
    mcp_authz_holder: Option<String>,
}

/// Verifies a token: signature with a key of `keys`, then `typ`, `iss`, `aud`, `exp`, `nbf`, `sub`,
/// `client_id`. `now` is seconds since the epoch.
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &TokenRules,
    now: u64,
) -> Result<Identity, TokenError> {
    if token.len() > rules.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if !rules.algorithms.contains(&header.alg) {
        return Err(TokenError::Algorithm);
    }
    let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
    if !typ.is_some_and(|t| rules.token_types.contains(&t)) {
        return Err(TokenError::Type);
    }
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    let kid = header.kid.as_deref();
    if kid.is_some_and(|k| !keys.has_kid(k)) {
        return Err(TokenError::UnknownKey);
    }

    // jsonwebtoken checks the signature and that the key family fits `alg`; claims are checked below
    // against our `now`, so its own clock-based checks are off.
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let mut claims = None;
    let mut last_error = TokenError::UnknownKey;
    for key in keys.candidates(kid, header.alg) {
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => {
                last_error = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature
                    | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                    | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                    | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                    | jsonwebtoken::errors::ErrorKind::InvalidEddsaKey => TokenError::Signature,
                    jsonwebtoken::errors::ErrorKind::Json(_) => TokenError::Claim("claims"),
                    _ => TokenError::Malformed,
                };
                if last_error != TokenError::Signature {
                    return Err(last_error);
                }
            }
        }
    }
    let claims = claims.ok_or(last_error)?;
    check_claims(claims, rules, now)
}

/// The claims of `token` checked exactly as [`verify`] checks them, with no key and no signature check: for
/// `mcp-authz explain --token`, which tells what a token would be allowed, never for letting a request in.
pub fn claims_without_signature(
    token: &str,
    rules: &TokenRules,
    now: u64,
) -> Result<Identity, TokenError> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| TokenError::Claim("claims"))?;
    check_claims(claims, rules, now)
}

fn check_claims(claims: Claims, rules: &TokenRules, now: u64) -> Result<Identity, TokenError> {
    if claims.iss.as_deref() != Some(rules.issuer.as_str()) {
        return Err(if claims.iss.is_none() {
            TokenError::Claim("iss")
        } else {
            TokenError::Issuer
        });
    }
    let audience_ok = match &claims.aud {
        None => return Err(TokenError::Claim("aud")),
        Some(Audience::One(a)) => *a == rules.audience,
        Some(Audience::Many(list)) => list.contains(&rules.audience),
    };
    if !audience_ok {
        return Err(TokenError::Audience);
    }
    // The URL passed to another service since this token was issued, or this sidecar is the earlier holder's
    // still running with its last config. A token without the claim comes from a server that predates it, and
    // lives one token lifetime at most: refusing it would fail every request during the upgrade.
    if let (Some(wanted), Some(named)) = (&rules.holder, &claims.mcp_authz_holder)
        && wanted != named
    {
        return Err(TokenError::Holder);
    }
    let exp = claims.exp.ok_or(TokenError::Claim("exp"))?;
    if now >= exp.saturating_add(rules.leeway) {
        return Err(TokenError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(rules.leeway))
    {
        return Err(TokenError::NotYetValid);
    }
    let subject = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or(TokenError::Claim("sub"))?;
    let client_id = claims
        .client_id
        .filter(|c| !c.is_empty())
        .ok_or(TokenError::Claim("client_id"))?;
    let scopes = claims
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Ok(Identity {
        subject,
        client_id,
        scopes,
        expires_at: exp,
        token_id: claims.jti,
        caller: Caller::from_claim(claims.mcp_authz_caller.as_deref()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{TestKey, claims_for, rules};
    use http::HeaderValue;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn claims_without_signature_hold_the_same_claims_to_the_same_rules() {
        let key = TestKey::es256("k1");
        let stranger = TestKey::es256("k2");
        let mut other_audience = claims_for(NOW);
        other_audience["aud"] = json!("https://other.example/mcp");
        let cases: Vec<(&str, String, Result<(), TokenError>)> = vec![
            ("our key", key.sign(&claims_for(NOW)), Ok(())),
            (
                "a stranger's key: not looked at",
                stranger.sign(&claims_for(NOW)),
                Ok(()),
            ),
            (
                "expired",
                key.sign(&claims_for(NOW - 7200)),
                Err(TokenError::Expired),
            ),
            (
                "another audience",
                key.sign(&other_audience),
                Err(TokenError::Audience),
            ),
            ("two parts", "a.b".to_owned(), Err(TokenError::Malformed)),
            (
                "payload not base64url",
                "a.b+c.d".to_owned(),
                Err(TokenError::Malformed),
            ),
            (
                "payload not claims",
                "a.WzFd.d".to_owned(),
                Err(TokenError::Claim("claims")),
            ),
        ];
        for (what, token, expected) in cases {
            let got = claims_without_signature(&token, &rules(), NOW).map(|_| ());
            assert_eq!(got, expected, "{what}");
        }
        let identity =
            claims_without_signature(&key.sign(&claims_for(NOW)), &rules(), NOW).unwrap();
        assert_eq!(
            identity,
            verify(&key.sign(&claims_for(NOW)), &key.key_set(), &rules(), NOW).unwrap()
        );
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_header_table() {
        let cases: Vec<(Vec<&str>, Result<&str, TokenError>)> = vec![
            (vec![], Err(TokenError::Missing)),
            (vec!["Bearer abc.def.ghi"], Ok("abc.def.ghi")),
            (vec!["bearer abc.def.ghi"], Ok("abc.def.ghi")),
            (vec!["BEARER  abc.def.ghi "], Ok("abc.def.ghi")),
            (vec!["Basic dXNlcjpwYXNz"], Err(TokenError::Missing)),
            (
                vec!["Bearer"],
                Err(TokenError::InvalidRequest("empty bearer token")),
            ),
            (
                vec!["Bearer    "],
                Err(TokenError::InvalidRequest("empty bearer token")),
            ),
            (
                vec!["Bearer a b"],
                Err(TokenError::InvalidRequest(
                    "the bearer token has characters RFC 6750 does not allow",
                )),
            ),
            (
                vec!["Bearer a,b"],
                Err(TokenError::InvalidRequest(
                    "the bearer token has characters RFC 6750 does not allow",
                )),
            ),
            (
                vec!["Bearer ==="],
                Err(TokenError::InvalidRequest(
                    "the bearer token has characters RFC 6750 does not allow",
                )),
            ),
            (
                vec!["Bearer a", "Bearer b"],
                Err(TokenError::InvalidRequest(
                    "more than one Authorization header",
                )),
            ),
            (
                vec!["Bearer a", "Basic b"],
                Err(TokenError::InvalidRequest(
                    "more than one Authorization header",
                )),
            ),
        ];
        for (values, expected) in cases {
            assert_eq!(bearer_token(&headers(&values), 100), expected, "{values:?}");
        }
        let huge = format!("Bearer {}", "a".repeat(101));
        assert_eq!(
            bearer_token(&headers(&[&huge]), 100),
            Err(TokenError::TooLarge)
        );
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(
            bearer_token(&non_ascii, 100),
            Err(TokenError::InvalidRequest("Authorization is not ASCII"))
        );
    }

    #[test]
    fn the_one_pass_reading_accepts_exactly_what_the_stepwise_one_does() {
        // Every value of up to four characters from an alphabet of the awkward ones, after each scheme.
        let alphabet = [
            " ", "\t", "a", "Z", "9", "=", ".", ",", "~", "+", "/", "-", "_", "é", "\u{7f}",
        ];
        let mut tails = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = tails
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            tails.extend(longer);
        }
        tails.sort();
        tails.dedup();
        let mut accepted = 0;
        for scheme in ["Bearer", "bEaReR", "Basic", "Bearerx", ""] {
            for tail in &tails {
                let text = format!("{scheme}{tail}");
                let Ok(value) = HeaderValue::from_bytes(text.as_bytes()) else {
                    continue;
                };
                for max in [2, 100] {
                    let one_pass = well_formed_bearer(value.as_bytes(), max);
                    let stepwise = bearer_token_stepwise(&value, max);
                    match one_pass {
                        Some(token) => assert_eq!(stepwise, Ok(token), "{text:?}"),
                        None => assert!(stepwise.is_err(), "{text:?}: {stepwise:?}"),
                    }
                    // The verified-token cache is searched by these bytes before any reading.
                    if let Ok(token) = stepwise {
                        let unread = bearer_bytes(value.as_bytes());
                        assert_eq!(unread, Some(token.as_bytes()), "{text:?}");
                    }
                    accepted += usize::from(one_pass.is_some());
                }
            }
        }
        assert!(accepted > 1000, "{accepted}");
    }

    #[test]
    fn query_tokens_are_spotted() {
        assert!(query_has_token(Some("access_token=x")));
        assert!(query_has_token(Some("a=1&ACCESS_TOKEN=x")));
        assert!(query_has_token(Some("access_token")));
        assert!(!query_has_token(Some("token=x&access_tokens=1")));
        assert!(!query_has_token(None));
    }

    #[test]
    fn verification_table() {
        let key = TestKey::es256("k1");
        let other = TestKey::es256("k1");
        let keys = key.key_set();
        let rules = rules();
        let good = claims_for(NOW);
        let with = |patch: serde_json::Value| {
            let mut c = good.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            c
        };
        let ok = verify(&key.sign(&good), &keys, &rules, NOW).unwrap();
        assert_eq!(ok.subject, "alice");
        assert_eq!(ok.client_id, "https://client.example/cimd.json");
        assert_eq!(
            ok.scopes,
            vec!["mcp:read".to_string(), "mcp:write".to_string()]
        );

        let cases: Vec<(String, TokenError)> = vec![
            ("not a jwt".into(), TokenError::Malformed),
            ("a.b.c".into(), TokenError::Malformed),
            (other.sign(&good), TokenError::Signature),
            (
                key.sign_with_header(&good, json!({"alg":"ES256","typ":"JWT","kid":"k1"})),
                TokenError::Type,
            ),
            (
                key.sign_with_header(&good, json!({"alg":"ES256","kid":"k1"})),
                TokenError::Type,
            ),
            (
                key.sign_with_header(&good, json!({"alg":"ES256","typ":"at+jwt","kid":"k2"})),
                TokenError::UnknownKey,
            ),
            (
                key.sign_with_header(
                    &good,
                    json!({"alg":"ES256","typ":"at+jwt","kid":"k1","crit":["exp"]}),
                ),
                TokenError::Critical,
            ),
            (unsigned_none(&good), TokenError::Malformed),
            (hmac_with_public_key(&good, &key), TokenError::Algorithm),
            (
                key.sign(&with(json!({"iss":"https://evil.example"}))),
                TokenError::Issuer,
            ),
            (
                key.sign(&with(json!({"iss":null}))),
                TokenError::Claim("iss"),
            ),
            (
                key.sign(&with(json!({"aud":"https://other.example/mcp"}))),
                TokenError::Audience,
            ),
            (
                key.sign(&with(json!({"aud":["https://other.example/mcp"]}))),
                TokenError::Audience,
            ),
            (
                key.sign(&with(json!({"aud":null}))),
                TokenError::Claim("aud"),
            ),
            (
                key.sign(&with(json!({"exp": NOW - 31}))),
                TokenError::Expired,
            ),
            (
                key.sign(&with(json!({"exp":null}))),
                TokenError::Claim("exp"),
            ),
            (
                key.sign(&with(json!({"exp":"tomorrow"}))),
                TokenError::Claim("claims"),
            ),
            (
                key.sign(&with(json!({"nbf": NOW + 31}))),
                TokenError::NotYetValid,
            ),
            (
                key.sign(&with(json!({"sub":null}))),
                TokenError::Claim("sub"),
            ),
            (key.sign(&with(json!({"sub":""}))), TokenError::Claim("sub")),
            (
                key.sign(&with(json!({"client_id":null}))),
                TokenError::Claim("client_id"),
            ),
            ("a".repeat(9000), TokenError::TooLarge),
        ];
        for (token, expected) in cases {
            assert_eq!(
                verify(&token, &keys, &rules, NOW),
                Err(expected.clone()),
                "expected {expected:?}"
            );
        }
    }

    #[test]
    fn leeway_and_audience_lists_are_honoured() {
        let key = TestKey::es256("k1");
        let mut claims = claims_for(NOW);
        claims["exp"] = json!(NOW - 29);
        claims["nbf"] = json!(NOW + 29);
        claims["aud"] = json!(["https://other.example", "https://mcp.example.com/mcp"]);
        claims["typ"] = json!("ignored");
        let token = key.sign_with_header(
            &claims,
            json!({"alg":"ES256","typ":"application/AT+JWT","kid":"k1"}),
        );
        assert!(verify(&token, &key.key_set(), &rules(), NOW).is_ok());
    }

    /// A URL passed from one MCPService to another: each holder's sidecar accepts only the tokens issued under
    /// it, so neither the old holder's pods (still running with their last config) nor the new holder's take
    /// the other's tokens.
    #[test]
    fn a_token_of_another_holder_of_the_url_is_refused() {
        let key = TestKey::es256("k1");
        let keys = key.key_set();
        let token = |holder: Option<&str>| {
            let mut claims = claims_for(NOW);
            if let Some(h) = holder {
                claims["mcp_authz_holder"] = json!(h);
            }
            key.sign(&claims)
        };
        let held_by = |holder: Option<&str>| TokenRules {
            holder: holder.map(str::to_owned),
            ..rules()
        };
        // (sidecar's holder, token's holder, outcome)
        for (serving, issued_under, expected) in [
            (Some("uid-1"), Some("uid-1"), Ok(())),
            (Some("uid-1"), Some("uid-2"), Err(TokenError::Holder)),
            (Some("uid-2"), Some("uid-1"), Err(TokenError::Holder)),
            // Issued by a server from before holders were recorded: lives one token lifetime at most.
            (Some("uid-1"), None, Ok(())),
            // A sidecar that knows no holder (local mode) checks none.
            (None, Some("uid-1"), Ok(())),
        ] {
            assert_eq!(
                verify(&token(issued_under), &keys, &held_by(serving), NOW).map(|_| ()),
                expected,
                "sidecar {serving:?}, token {issued_under:?}"
            );
        }
        assert_eq!(TokenError::Holder.metric_label(), "token_holder");
    }

    #[test]
    fn tokens_without_kid_try_every_key() {
        let a = TestKey::es256("a");
        let b = TestKey::es256("b");
        let keys = KeySet::from_keys(vec![a.verify_key(), b.verify_key()]);
        let token = b.sign_with_header(&claims_for(NOW), json!({"alg":"ES256","typ":"at+jwt"}));
        assert_eq!(
            verify(&token, &keys, &rules(), NOW).unwrap().subject,
            "alice"
        );
        let stranger = TestKey::es256("c")
            .sign_with_header(&claims_for(NOW), json!({"alg":"ES256","typ":"at+jwt"}));
        assert_eq!(
            verify(&stranger, &keys, &rules(), NOW),
            Err(TokenError::Signature)
        );
    }

    fn b64(v: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn unsigned_none(claims: &serde_json::Value) -> String {
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    /// The classic confusion attack: HS256 with the issuer's public key bytes as the secret.
    fn hmac_with_public_key(claims: &serde_json::Value, key: &TestKey) -> String {
        let header = jsonwebtoken::Header {
            typ: Some("at+jwt".into()),
            kid: Some("k1".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        };
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_secret(&key.public_point()),
        )
        .unwrap()
    }
}
