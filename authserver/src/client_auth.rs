//! Client authentication at the token, introspection and revocation endpoints: `none` (public clients, identified
//! by `client_id`), `private_key_jwt` (RFC 7523 assertions), or a shared secret (`client_secret_basic`,
//! `client_secret_post`) for a client the platform registered with one. `alg: none` and HMAC assertions are
//! refused, and so is a secret for any client registered without one (CIMD and DCR clients never have one).
//!
//! Two steps, so callers can decide under which resource the client is looked up before anything is fetched:
//! [`presented`] reads what the request claims (no I/O), [`authenticate`] checks it under a resource's policy.
//! An assertion's claims are checked before the client's keys are looked up, so junk assertions never make the
//! server fetch a `jwks_uri`.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use crate::clients::{self, ClientKeySource, ClientView, cimd_error, shorten};
use crate::clock::now_secs;
use crate::config::ClientAuthMethod;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::params::Params;
use crate::secrets;
use crate::state::{AppState, Snapshot};
use crate::store::AssertionClaim;

/// The only assertion type (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Asymmetric algorithms accepted for client assertions.
pub const ACCEPTED_ALGS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];
/// The furthest in the future an assertion's `exp` may be (Authlib, a common client, defaults to one hour).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
const LEEWAY_SECS: u64 = 30;

/// The URLs a client assertion may name as its audience at an endpoint: that endpoint's URL or the issuer.
/// An assertion made for `/token` is not accepted at `/introspect` or `/revoke`.
pub fn assertion_audiences(snapshot: &Snapshot, endpoint: &str) -> Vec<String> {
    let issuer = &snapshot.config.issuer;
    vec![format!("{issuer}/{endpoint}"), issuer.clone()]
}

/// What a request says about its client, before anything is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The client id: the assertion's `iss`, or `client_id`.
    pub client_id: String,
    /// The assertion, when the request carries one (`private_key_jwt`).
    pub assertion: Option<Assertion<'a>>,
    /// The shared secret, when the request carries one, and where it came.
    pub secret: Option<PresentedSecret>,
}

/// A client secret as presented; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedSecret {
    pub value: String,
    /// `client_secret_basic` or `client_secret_post`.
    pub method: ClientAuthMethod,
}

impl std::fmt::Debug for PresentedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PresentedSecret({}, ...)", self.method.as_str())
    }
}

/// A client assertion with its header and claims decoded but not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion<'a> {
    pub jwt: &'a str,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Value,
}

impl Presented<'_> {
    /// The method the request authenticates with.
    pub fn method(&self) -> ClientAuthMethod {
        match (&self.assertion, &self.secret) {
            (Some(_), _) => ClientAuthMethod::PrivateKeyJwt,
            (None, Some(secret)) => secret.method,
            (None, None) => ClientAuthMethod::None,
        }
    }
}

/// The client id and secret of an HTTP Basic `Authorization` header (RFC 6749 §2.3.1: each form-encoded, then
/// joined by a colon); `None` without a Basic header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        OAuthError::invalid_client(
            "the Authorization header is not Basic base64(client_id:client_secret)",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    // Other schemes are not client authentication (introspection reads the admin's Bearer itself).
    let Some(encoded) = value
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case("basic "))
        .map(|_| value[6..].trim())
    else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let form_decode = |part: &str| {
        percent_encoding::percent_decode_str(&part.replace('+', " "))
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| malformed())
    };
    let (id, secret) = (form_decode(id)?, form_decode(secret)?);
    if id.is_empty() || secret.is_empty() {
        return Err(malformed());
    }
    Ok(Some((id, secret)))
}

/// The refusal of a request as a response: RFC 6749 §5.2 wants a 401 to a client that authenticated with an
/// `Authorization` header to challenge in that header's scheme.
pub fn refusal_response(headers: &HeaderMap, refusal: OAuthError) -> axum::response::Response {
    let mut response = axum::response::IntoResponse::into_response(refusal);
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().get(..6))
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"basic "));
    if basic && response.status() == axum::http::StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"token endpoint\""),
        );
    }
    response
}

/// Reads the client a request presents. Refuses more than one way of authenticating (RFC 6749 §2.3), a
/// malformed assertion or Basic header, and a `client_id` that disagrees with the assertion's issuer or the
/// Basic header.
pub fn presented<'a>(headers: &HeaderMap, params: &'a Params) -> Result<Presented<'a>, OAuthError> {
    let basic = basic_credentials(headers)?;
    let posted_secret = params.get("client_secret");
    let has_assertion =
        params.get("client_assertion_type").is_some() || params.get("client_assertion").is_some();
    if [basic.is_some(), posted_secret.is_some(), has_assertion]
        .into_iter()
        .filter(|present| *present)
        .count()
        > 1
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "a request may authenticate its client one way only: a Basic header, client_secret or client_assertion",
        ));
    }
    if let Some((client_id, value)) = basic {
        if params.get("client_id").is_some_and(|c| c != client_id) {
            return Err(OAuthError::invalid_client(
                "client_id does not match the Authorization header",
            ));
        }
        return Ok(Presented {
            client_id,
            assertion: None,
            secret: Some(PresentedSecret {
                value,
                method: ClientAuthMethod::ClientSecretBasic,
            }),
        });
    }
    if !has_assertion {
        let client_id = params
            .get("client_id")
            .ok_or_else(|| OAuthError::invalid_client("client_id is missing"))?;
        return Ok(Presented {
            client_id: client_id.to_owned(),
            assertion: None,
            secret: posted_secret.map(|value| PresentedSecret {
                value: value.to_owned(),
                method: ClientAuthMethod::ClientSecretPost,
            }),
        });
    }
    if params.get("client_assertion_type") != Some(JWT_BEARER) {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion_type must be {JWT_BEARER}"
        )));
    }
    let jwt = params
        .require("client_assertion")
        .map_err(|_| OAuthError::invalid_client("client_assertion is missing"))?;
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| {
        OAuthError::invalid_client("client_assertion is not a signed JWT with an accepted algorithm (ES256, RS256, PS256, EdDSA)")
    })?;
    if !ACCEPTED_ALGS.contains(&header.alg) {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion algorithm {:?} is refused; use ES256, RS256, PS256 or EdDSA",
            header.alg
        )));
    }
    let claims = unverified_claims(jwt)
        .ok_or_else(|| OAuthError::invalid_client("client_assertion payload is not JSON"))?;
    let client_id = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| OAuthError::invalid_client("client_assertion has no iss"))?
        .to_owned();
    if params.get("client_id").is_some_and(|c| c != client_id) {
        return Err(OAuthError::invalid_client(
            "client_id does not match the client_assertion issuer",
        ));
    }
    Ok(Presented {
        client_id,
        assertion: Some(Assertion {
            jwt,
            alg: header.alg,
            kid: header.kid,
            claims,
        }),
        secret: None,
    })
}

/// The checks of an assertion's claims that need no key: subject, audience, a usable `exp` within the cap, a
/// `jti`. Returns `(exp, jti)`. The signature check repeats the time and audience checks with the key.
pub fn check_claims<'c>(
    claims: &'c Value,
    client_id: &str,
    audiences: &[String],
    now: i64,
) -> Result<(i64, &'c str), OAuthError> {
    if claims.get("sub").and_then(Value::as_str) != Some(client_id) {
        return Err(OAuthError::invalid_client(
            "client_assertion sub must be the client id",
        ));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(a),
        Some(Value::Array(all)) => all
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !aud_ok {
        return Err(OAuthError::invalid_client(
            "client_assertion aud must be this endpoint's URL or the issuer",
        ));
    }
    // A NumericDate may have a fraction (`time.time()`); it is rounded up, so the cap and the time the `jti`
    // is remembered both cover the assertion's whole life. One no clock reaches (past year 33,000) is refused
    // rather than read as 0, which would skip both.
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .filter(|e| e.is_finite() && *e < 1e12)
        .map(|e| e.ceil() as i64)
        .ok_or_else(|| {
            OAuthError::invalid_client("client_assertion exp is not a usable NumericDate")
        })?;
    if exp + (LEEWAY_SECS as i64) < now {
        return Err(OAuthError::invalid_client("client_assertion has expired"));
    }
    if exp > now + MAX_ASSERTION_LIFETIME_SECS + LEEWAY_SECS as i64 {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion exp is more than {MAX_ASSERTION_LIFETIME_SECS} seconds away"
        )));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        // Control characters are refused: a NUL cannot be stored in PostgreSQL's text, and one in a claim
        // failed the whole batch of other clients' tokens it was written with.
        .filter(|j| !j.is_empty() && j.len() <= 256 && !j.chars().any(char::is_control))
        .ok_or_else(|| {
            OAuthError::invalid_client(
                "client_assertion needs a jti of 1 to 256 characters, none of them a control character",
            )
        })?;
    Ok((exp, jti))
}

/// Authenticates the presented client, looked up under the policy of `resource` (for URL client ids), and
/// spends its assertion's `jti`. `audiences` are the values an assertion's `aud` may hold.
pub async fn authenticate(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    audiences: &[String],
    resource: Option<&str>,
) -> Result<ClientView, OAuthError> {
    let (client, claim) = verify(state, snapshot, presented, audiences, resource).await?;
    if let Some(claim) = claim {
        spend(state, claim).await?;
    }
    Ok(client)
}

/// Records an assertion's id as used, now; a replay is refused.
pub async fn spend(state: &AppState, claim: AssertionClaim) -> Result<(), OAuthError> {
    if !state
        .store
        .use_assertion_id(&claim.client_id, &claim.jti, claim.expires_at)
        .await?
    {
        return Err(replayed(&claim.jti));
    }
    Ok(())
}

/// The refusal of an assertion whose `jti` was used before.
pub fn replayed(jti: &str) -> OAuthError {
    OAuthError::invalid_client(format!(
        "client_assertion jti {:?} was already used",
        shorten(jti)
    ))
}

/// [`authenticate`] but for spending the assertion: its id is returned, for the caller to record together with
/// what it writes anyway ([`crate::store::Issue`]), or to [`spend`] if the request is refused after all. Until
/// then the assertion is not spent: the caller must do one or the other on every path.
pub async fn verify(
    state: &AppState,
    snapshot: &Snapshot,
    presented: &Presented<'_>,
    audiences: &[String],
    resource: Option<&str>,
) -> Result<(ClientView, Option<AssertionClaim>), OAuthError> {
    let Some(assertion) = &presented.assertion else {
        let client = clients::lookup(snapshot, state, &presented.client_id, resource).await?;
        check_method(client.auth_method, presented.method())?;
        if let Some(secret) = &presented.secret {
            let matches = snapshot
                .client_secrets
                .get(&client.client_id)
                .is_some_and(|expected| {
                    secrets::constant_time_eq(&secrets::hash(&secret.value), expected)
                });
            if !matches {
                return Err(OAuthError::invalid_client(
                    "the client secret is not this client's",
                ));
            }
        }
        return Ok((client, None));
    };
    let client_id = &presented.client_id;
    let now = now_secs();
    let (exp, jti) = check_claims(&assertion.claims, client_id, audiences, now)?;
    let client = clients::lookup(snapshot, state, client_id, resource).await?;
    check_method(client.auth_method, ClientAuthMethod::PrivateKeyJwt)?;
    let jwks: JwkSet = match &client.keys {
        Some(ClientKeySource::Jwks(v)) => serde_json::from_value(v.clone()),
        Some(ClientKeySource::JwksUri(uri)) => {
            let resolver = snapshot
                .cimd
                .as_ref()
                .ok_or_else(|| OAuthError::invalid_client("jwks_uri cannot be fetched"))?;
            let fetched = resolver.fetch_jwks(uri).await.map_err(cimd_error)?;
            serde_json::from_value(fetched.as_ref().clone())
        }
        None => return Err(OAuthError::invalid_client("the client has no keys")),
    }
    .map_err(|e| OAuthError::invalid_client(format!("the client's JWK Set is invalid: {e}")))?;
    let mut validation = Validation::new(assertion.alg);
    validation.set_audience(audiences);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.clone());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = LEEWAY_SECS;
    // RFC 7523 §3: an assertion is not accepted before its `nbf`.
    validation.validate_nbf = true;
    crate::jwt_verify::verify(
        assertion.jwt,
        &jwks,
        assertion.kid.as_deref(),
        &validation,
        "no key of the client matches the assertion's kid",
    )
    .map_err(|e| OAuthError::invalid_client(format!("client_assertion rejected: {e}")))?;
    let claim = AssertionClaim {
        client_id: client_id.clone(),
        jti: jti.to_owned(),
        expires_at: exp + LEEWAY_SECS as i64,
    };
    Ok((client, Some(claim)))
}

/// A client authenticates exactly the way it is registered to: a secret client cannot fall back to `none`, and a
/// public client cannot bring a secret.
fn check_method(
    registered: ClientAuthMethod,
    presented: ClientAuthMethod,
) -> Result<(), OAuthError> {
    if registered == presented {
        return Ok(());
    }
    Err(OAuthError::invalid_client(format!(
        "this client is registered for token_endpoint_auth_method {}, not {}",
        registered.as_str(),
        presented.as_str()
    )))
}

pub(crate) fn unverified_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const JTI: &str =
        "client_assertion needs a jti of 1 to 256 characters, none of them a control character";

    #[test]
    fn claims_are_checked_before_any_key_is_looked_up() {
        let audiences = vec![
            "https://as.example/token".to_owned(),
            "https://as.example".to_owned(),
        ];
        let good = json!({"iss": "c", "sub": "c", "aud": "https://as.example/token", "exp": 1100, "jti": "j"});
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v;
            }
            c
        };
        type Case = (Value, Result<(i64, &'static str), &'static str>);
        let cases: Vec<Case> = vec![
            (good.clone(), Ok((1100, "j"))),
            (
                with("aud", json!(["x", "https://as.example"])),
                Ok((1100, "j")),
            ),
            (with("exp", json!(1099.2)), Ok((1100, "j"))),
            (
                with("sub", json!("other")),
                Err("client_assertion sub must be the client id"),
            ),
            (
                with("sub", Value::Null),
                Err("client_assertion sub must be the client id"),
            ),
            (
                with("aud", json!("https://as.example/introspect")),
                Err("client_assertion aud must be this endpoint's URL or the issuer"),
            ),
            (
                with("aud", json!(7)),
                Err("client_assertion aud must be this endpoint's URL or the issuer"),
            ),
            (
                with("exp", json!("soon")),
                Err("client_assertion exp is not a usable NumericDate"),
            ),
            (
                with("exp", json!(1e13)),
                Err("client_assertion exp is not a usable NumericDate"),
            ),
            (with("exp", json!(900)), Err("client_assertion has expired")),
            (
                with("exp", json!(1000 + 3600 + 31)),
                Err("client_assertion exp is more than 3600 seconds away"),
            ),
            (with("jti", Value::Null), Err(JTI)),
            (with("jti", json!("")), Err(JTI)),
            (with("jti", json!("j".repeat(257))), Err(JTI)),
            (with("jti", json!("a\u{0}b")), Err(JTI)),
            (with("jti", json!("line\nbreak")), Err(JTI)),
            (with("jti", json!("\u{7f}")), Err(JTI)),
            (
                with("jti", json!("é-unicode-is-fine")),
                Ok((1100, "é-unicode-is-fine")),
            ),
        ];
        for (claims, want) in cases {
            let got = check_claims(&claims, "c", &audiences, 1000).map_err(|e| e.description);
            assert_eq!(got, want.map_err(str::to_owned), "{claims}");
        }
    }

    #[test]
    fn what_a_request_presents() {
        let form = |pairs: &[(&str, &str)]| {
            Params::parse(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish(),
            )
            .unwrap()
        };
        let none = HeaderMap::new();
        let p = form(&[("client_id", "cli")]);
        let got = presented(&none, &p).unwrap();
        assert_eq!(
            (got.client_id.as_str(), got.method()),
            ("cli", ClientAuthMethod::None)
        );
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":"svc"}"#);
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#);
        let jwt = format!("{header}.{payload}.sig");
        let p = form(&[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &jwt),
        ]);
        let got = presented(&none, &p).unwrap();
        assert_eq!(
            (got.client_id.as_str(), got.method()),
            ("svc", ClientAuthMethod::PrivateKeyJwt)
        );
        let basic_of = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        // RFC 6749 §2.3.1: both halves form-encoded before base64; "a%3Ab+c" is "a:b c".
        let basic = basic_of(&format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("a%3Ab+c:s%C3%A9cret")
        ));
        let empty = form(&[]);
        let got = presented(&basic, &empty).unwrap();
        assert_eq!(
            (
                got.client_id.as_str(),
                got.method(),
                got.secret.map(|s| s.value)
            ),
            (
                "a:b c",
                ClientAuthMethod::ClientSecretBasic,
                Some("sécret".to_owned())
            )
        );
        let p = form(&[("client_id", "cli"), ("client_secret", "s")]);
        let got = presented(&none, &p).unwrap();
        assert_eq!(got.method(), ClientAuthMethod::ClientSecretPost);
        assert_eq!(
            format!("{:?}", got.secret.unwrap()),
            "PresentedSecret(client_secret_post, ...)"
        );
        let bearer = basic_of("Bearer admin");
        assert_eq!(
            presented(&bearer, &form(&[("client_id", "cli")]))
                .unwrap()
                .method(),
            ClientAuthMethod::None
        );
        let malformed = "the Authorization header is not Basic base64(client_id:client_secret)";
        let one_way = "a request may authenticate its client one way only: a Basic header, client_secret or client_assertion";
        let hs = format!(
            "{}.{payload}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#)
        );
        let cases: Vec<(HeaderMap, Params, &str)> = vec![
            (none.clone(), form(&[]), "client_id is missing"),
            (
                basic.clone(),
                form(&[("client_id", "other")]),
                "client_id does not match the Authorization header",
            ),
            (basic.clone(), form(&[("client_secret", "s")]), one_way),
            (basic.clone(), form(&[("client_assertion", &jwt)]), one_way),
            (
                none.clone(),
                form(&[
                    ("client_secret", "s"),
                    ("client_assertion_type", JWT_BEARER),
                ]),
                one_way,
            ),
            (basic_of("Basic !!!"), form(&[]), malformed),
            (
                basic_of(&format!("Basic {}", URL_SAFE_NO_PAD.encode("no-colon"))),
                form(&[]),
                malformed,
            ),
            (
                basic_of(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(":s")
                )),
                form(&[]),
                malformed,
            ),
            (
                basic_of(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("id:%FF")
                )),
                form(&[]),
                malformed,
            ),
            (
                none.clone(),
                form(&[("client_assertion", &jwt)]),
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            (
                none.clone(),
                form(&[("client_assertion_type", JWT_BEARER)]),
                "client_assertion is missing",
            ),
            (
                none.clone(),
                form(&[
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &hs),
                ]),
                "client_assertion algorithm HS256 is refused; use ES256, RS256, PS256 or EdDSA",
            ),
            (
                none.clone(),
                form(&[
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &jwt),
                    ("client_id", "other"),
                ]),
                "client_id does not match the client_assertion issuer",
            ),
        ];
        for (headers, params, want) in cases {
            let e = presented(&headers, &params).unwrap_err();
            assert_eq!(e.description, want, "{params:?}");
        }
    }
}
