//! A JWT's signature checked against a JWK Set (client assertions, ID-JAGs, upstream ID tokens): the key its
//! `kid` names, or each key in turn when it names none.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

/// The verified claims, or why no key verified them (`no_key` when no key is a candidate at all).
pub fn verify(
    jwt: &str,
    keys: &JwkSet,
    kid: Option<&str>,
    validation: &Validation,
    no_key: &str,
) -> Result<Value, String> {
    let candidates: Vec<_> = match kid {
        Some(kid) => keys.find(kid).into_iter().collect(),
        None => keys.keys.iter().collect(),
    };
    let mut last_error = no_key.to_owned();
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<Value>(jwt, &key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(last_error)
}
