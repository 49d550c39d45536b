//! Test support shared by unit tests, integration tests and benchmarks: real ES256 keys generated on the
//! spot, tokens signed with them, and the matching JWKS document. Compiled only for tests
//! (feature `test-support`).

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

use crate::keys::{KeySet, VerifyKey};
use crate::token::TokenRules;

/// The issuer the test helpers use.
pub const ISSUER: &str = "https://auth.example.com";
/// The resource (audience) the test helpers use.
pub const RESOURCE: &str = "https://mcp.example.com/mcp";

/// A freshly generated P-256 signing key.
pub struct TestKey {
    kid: String,
    encoding: EncodingKey,
    point: Vec<u8>,
}

impl TestKey {
    /// Generates a key with this `kid`.
    pub fn es256(kid: &str) -> Self {
        let pair =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key generation");
        let pkcs8 = pair.to_pkcs8v1().expect("pkcs8");
        Self {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            point: pair.public_key().as_ref().to_vec(),
        }
    }

    /// The uncompressed public point (`04 || x || y`).
    pub fn public_point(&self) -> Vec<u8> {
        self.point.clone()
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.point[33..65]),
        })
    }

    /// The verification key.
    pub fn verify_key(&self) -> VerifyKey {
        let key = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            &URL_SAFE_NO_PAD.encode(&self.point[33..65]),
        )
        .expect("ec components");
        VerifyKey {
            kid: Some(self.kid.clone()),
            alg: Some(Algorithm::ES256),
            key,
        }
    }

    /// A key set holding only this key.
    pub fn key_set(&self) -> KeySet {
        KeySet::from_keys(vec![self.verify_key()])
    }

    /// Signs claims with the RFC 9068 header (`typ: at+jwt`, this `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            claims,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid}),
        )
    }

    /// Signs claims with any header.
    pub fn sign_with_header(&self, claims: &Value, header: Value) -> String {
        let header: Header = serde_json::from_value(header).expect("header");
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// A JWKS document holding these keys.
pub fn jwks_document(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Good RFC 9068 claims for `alice`, valid for an hour from `now`.
pub fn claims_for(now: u64) -> Value {
    json!({
        "iss": ISSUER, "aud": RESOURCE, "sub": "alice", "client_id": "https://client.example/cimd.json",
        "scope": "mcp:read mcp:write", "iat": now, "exp": now + 3600, "jti": "t-1",
        "mcp_authz_caller": "person",
    })
}

/// Token rules matching the helpers.
pub fn rules() -> TokenRules {
    TokenRules {
        algorithms: vec![Algorithm::ES256],
        token_types: vec!["at+jwt".into(), "application/at+jwt".into()],
        issuer: ISSUER.into(),
        audience: RESOURCE.into(),
        holder: None,
        leeway: 30,
        max_token_bytes: 8192,
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
