//! A parsed JWKS: the verification keys the issuer publishes. Pure; fetching lives in `jwks`.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// At most this many keys are kept from one document: a JWKS is a handful of keys, and the no-`kid` path
/// tries each compatible key.
pub const MAX_KEYS: usize = 32;

/// One usable verification key.
#[derive(Clone)]
pub struct VerifyKey {
    /// The `kid`, if the issuer set one.
    pub kid: Option<String>,
    /// The `alg` the key is pinned to, if the issuer set one.
    pub alg: Option<Algorithm>,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

/// Why a JWKS document was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// Not a JWKS.
    #[error("not a JWKS document: {0}")]
    Parse(String),
    /// No key we could use.
    #[error("the JWKS has no usable signature key")]
    NoUsableKey,
}

impl KeySet {
    /// Parses a JWKS document, keeping the public signature keys; symmetric keys, encryption keys and unknown
    /// key types are skipped (one odd key must not take the whole set down).
    pub fn parse(document: &[u8]) -> Result<Self, KeySetError> {
        let set: JwkSet =
            serde_json::from_slice(document).map_err(|e| KeySetError::Parse(e.to_string()))?;
        let keys: Vec<VerifyKey> = set
            .keys
            .iter()
            .filter_map(usable_key)
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey);
        }
        Ok(Self { keys })
    }

    /// Builds a set from keys directly (tests, benchmarks).
    pub fn from_keys(keys: Vec<VerifyKey>) -> Self {
        Self { keys }
    }

    /// The candidate keys for a token header: the one with its `kid`, or, without a `kid`, every key.
    /// Keys pinned to another algorithm are left out.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> {
        self.keys.iter().filter(move |k| {
            kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
                && k.alg.is_none_or(|pinned| pinned == alg)
        })
    }

    /// Whether a key with this `kid` is present.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn usable_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(
        jwk.algorithm,
        AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
    ) {
        return None;
    }
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(signature_algorithm(alg)?),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn keeps_signature_keys_and_skips_the_rest() {
        let doc = format!(
            r#"{{"keys":[{EC},
            {{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},
            {{"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
            {{"kty":"EC","crv":"P-256","kid":"rsa-oaep","alg":"RSA-OAEP","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}]}}"#
        );
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.has_kid("k1"));
        assert!(!set.has_kid("hmac"));
        assert_eq!(set.candidates(Some("k1"), Algorithm::ES256).count(), 1);
        assert_eq!(
            set.candidates(Some("k1"), Algorithm::RS256).count(),
            0,
            "pinned alg"
        );
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(Some("other"), Algorithm::ES256).count(), 0);
    }

    #[test]
    fn refusals() {
        assert!(matches!(KeySet::parse(b"nope"), Err(KeySetError::Parse(_))));
        assert!(matches!(
            KeySet::parse(b"{\"keys\":{}}"),
            Err(KeySetError::Parse(_))
        ));
        assert_eq!(
            KeySet::parse(b"{\"keys\":[]}").unwrap_err(),
            KeySetError::NoUsableKey
        );
        let only_hmac = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert_eq!(
            KeySet::parse(only_hmac).unwrap_err(),
            KeySetError::NoUsableKey
        );
    }

    #[test]
    fn key_count_is_bounded() {
        let many = vec![EC; 100].join(",");
        let set = KeySet::parse(format!(r#"{{"keys":[{many}]}}"#).as_bytes()).unwrap();
        assert_eq!(set.len(), MAX_KEYS);
    }
}
