//! Credentials of the resource servers (the sidecars) that call the introspection endpoint.
//!
//! ```text
//!  root (32 random bytes, kept with the signing keys)
//!    └─ HKDF-SHA256(info = resource URL) ─▶ Ed25519 seed ─▶ private key (mounted into that service's sidecars)
//!                                                         └▶ public key (derived again here, never configured)
//!  client_id = urn:mcp-authz:resource-server:<resource URL>   authenticates with private_key_jwt (EdDSA)
//! ```
//!
//! Deriving the key pair from the resource URL ties each credential to the one service it protects: the server
//! needs no list of callers (a new MCPService can introspect as soon as its resource is configured), nothing
//! but the root is stored, and a leaked sidecar key only ever learns about its own service's tokens, because
//! introspection answers such a caller `active: false` for every token of another audience.

use std::path::Path;

use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::config::ConfigError;

/// Client ids of resource servers are this prefix followed by the resource URL.
pub const CLIENT_ID_PREFIX: &str = "urn:mcp-authz:resource-server:";
/// Bytes of a root.
pub const ROOT_BYTES: usize = 32;
/// Domain separation: a key derived here is never a key of anything else.
const SALT: &[u8] = b"mcp-authz resource-server key v1";

/// The resource URL a client id names, when it is a resource server's.
pub fn resource_of(client_id: &str) -> Option<&str> {
    client_id
        .strip_prefix(CLIENT_ID_PREFIX)
        .filter(|r| !r.is_empty())
}

/// The client id of the resource server for `resource`.
pub fn client_id(resource: &str) -> String {
    format!("{CLIENT_ID_PREFIX}{resource}")
}

/// The secret every resource-server key is derived from.
#[derive(Clone, PartialEq, Eq)]
pub struct Root([u8; ROOT_BYTES]);

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Root(..)")
    }
}

impl Root {
    /// A fresh random root.
    pub fn generate() -> Result<Self, ConfigError> {
        let mut bytes = [0u8; ROOT_BYTES];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| ConfigError::Invalid("the system random generator failed".into()))?;
        Ok(Self(bytes))
    }

    /// Parses the stored form: standard base64 of 32 bytes, surrounding whitespace ignored.
    pub fn parse(text: &[u8]) -> Result<Self, ConfigError> {
        let invalid = || {
            ConfigError::Invalid(format!(
                "the resource-server root must be {ROOT_BYTES} bytes in base64"
            ))
        };
        let text = std::str::from_utf8(text).map_err(|_| invalid())?;
        let bytes = STANDARD.decode(text.trim()).map_err(|_| invalid())?;
        Ok(Self(bytes.try_into().map_err(|_| invalid())?))
    }

    /// Reads the stored form from a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The stored form (what [`Root::parse`] reads).
    pub fn to_text(&self) -> String {
        format!("{}\n", STANDARD.encode(self.0))
    }

    /// The key of `resource`'s resource server while `holder` holds the URL. The holder (the operator's claim
    /// id: the MCPService's uid) is part of the derivation, so when the URL passes to another claim, or its
    /// holder is deleted and created again, every key issued before stops working: deleting a leaked Secret is
    /// not the only remedy. An empty holder is the derivation from before holders existed (local mode).
    fn key_pair(&self, resource: &str, holder: &str) -> Ed25519KeyPair {
        let mut seed = [0u8; 32];
        let info: &[&[u8]] = if holder.is_empty() {
            &[resource.as_bytes()]
        } else {
            &[resource.as_bytes(), b"\n", holder.as_bytes()]
        };
        Salt::new(HKDF_SHA256, SALT)
            .extract(&self.0)
            .expand(info, HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut seed))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Ed25519KeyPair::from_seed_unchecked(&seed).expect("every 32-byte seed is an Ed25519 key")
    }

    /// The private key of `resource`'s resource server held by `holder`: PKCS#8 PEM, what the sidecar signs its
    /// assertions with.
    pub fn private_key_pem_for(&self, resource: &str, holder: &str) -> String {
        let der = self
            .key_pair(resource, holder)
            .to_pkcs8()
            .expect("an Ed25519 key serialises to PKCS#8");
        crate::keys::pkcs8_pem(der.as_ref())
    }

    /// [`Root::private_key_pem_for`] without a holder.
    pub fn private_key_pem(&self, resource: &str) -> String {
        self.private_key_pem_for(resource, "")
    }

    /// The public JWK Set (one EdDSA key) of `resource`'s resource server held by `holder`.
    pub fn public_jwks_for(&self, resource: &str, holder: &str) -> Value {
        let public = self.key_pair(resource, holder);
        let x = URL_SAFE_NO_PAD.encode(public.public_key().as_ref());
        json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig" }] })
    }

    /// [`Root::public_jwks_for`] without a holder.
    pub fn public_jwks(&self, resource: &str) -> Value {
        self.public_jwks_for(resource, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

    fn root(byte: u8) -> Root {
        Root([byte; ROOT_BYTES])
    }

    #[test]
    fn client_ids_name_their_resource() {
        let id = client_id("https://mcp.example.com/mcp");
        assert_eq!(
            id,
            "urn:mcp-authz:resource-server:https://mcp.example.com/mcp"
        );
        assert_eq!(resource_of(&id), Some("https://mcp.example.com/mcp"));
        assert_eq!(resource_of(CLIENT_ID_PREFIX), None);
        assert_eq!(resource_of("https://mcp.example.com/mcp"), None);
    }

    #[test]
    fn the_stored_form_round_trips_and_bad_forms_are_refused() {
        let r = Root::generate().expect("random");
        assert_eq!(Root::parse(r.to_text().as_bytes()).expect("parse"), r);
        let expected = "the resource-server root must be 32 bytes in base64";
        for bad in [&b"not base64!"[..], b"", b"AAAA", &[0xff, 0xfe][..]] {
            assert_eq!(
                Root::parse(bad).expect_err("bad").to_string(),
                format!("invalid config: {expected}")
            );
        }
    }

    #[test]
    fn keys_differ_by_resource_and_by_root_and_are_stable() {
        let a = root(1).public_jwks("https://a.example/mcp");
        assert_eq!(a, root(1).public_jwks("https://a.example/mcp"));
        assert_ne!(a, root(1).public_jwks("https://b.example/mcp"));
        assert_ne!(a, root(2).public_jwks("https://a.example/mcp"));
        // Another holder of the same URL has another key; the old holder's stops working.
        let held = root(1).public_jwks_for("https://a.example/mcp", "uid-1");
        assert_ne!(held, a);
        assert_ne!(
            held,
            root(1).public_jwks_for("https://a.example/mcp", "uid-2")
        );
        assert_eq!(
            held,
            root(1).public_jwks_for("https://a.example/mcp", "uid-1")
        );
    }

    #[test]
    fn the_private_key_signs_what_the_public_key_verifies() {
        let r = root(7);
        let resource = "https://a.example/mcp";
        let key = EncodingKey::from_ed_pem(r.private_key_pem(resource).as_bytes()).expect("pem");
        let jwt = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &json!({"iss": "x", "exp": 4_000_000_000u64}),
            &key,
        )
        .expect("sign");
        let check = |jwks: Value| {
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).expect("jwks");
            let decoding = DecodingKey::from_jwk(&set.keys[0]).expect("jwk");
            let mut validation = Validation::new(Algorithm::EdDSA);
            validation.required_spec_claims.clear();
            jsonwebtoken::decode::<Value>(&jwt, &decoding, &validation).is_ok()
        };
        assert!(check(r.public_jwks(resource)));
        assert!(!check(r.public_jwks("https://b.example/mcp")));
    }
}
