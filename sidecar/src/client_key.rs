//! The sidecar's own credential at the issuer: a mounted private key (PKCS#8 PEM, Ed25519 or P-256) with which it
//! signs a fresh RFC 7523 client assertion (`private_key_jwt`) for every call, so nothing replayable crosses the
//! wire. Introspection and token exchange both authenticate with it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::config::ConfigError;

/// The RFC 7523 assertion type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of one client assertion: it is sent at once, and its `jti` is spent on first use.
const ASSERTION_SECS: u64 = 60;

/// A client id and the key it signs its assertions with.
pub struct ClientKey {
    client_id: String,
    /// The `aud` of assertions: the issuer identifier (RFC 7523 §3 lets the server accept it for every endpoint).
    audience: String,
    key: EncodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// Reads the key at `path` (named `field` in errors) and signs one assertion, so a key that cannot sign is
    /// found at load, not on a user's request.
    pub fn load(
        path: &Path,
        field: &str,
        client_id: &str,
        issuer: &str,
    ) -> Result<Self, ConfigError> {
        let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (key, algorithm) = EncodingKey::from_ed_pem(&pem)
            .map(|k| (k, Algorithm::EdDSA))
            .or_else(|_| EncodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
            .map_err(|_| {
                ConfigError::Invalid(format!(
                    "{field} {}: not a PKCS#8 PEM Ed25519 or P-256 private key",
                    path.display()
                ))
            })?;
        let client = Self {
            client_id: client_id.to_owned(),
            audience: issuer.to_owned(),
            key,
            algorithm,
        };
        client
            .assertion()
            .map_err(|e| ConfigError::Invalid(format!("{field} {}: {e}", path.display())))?;
        Ok(client)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A fresh RFC 7523 client assertion.
    pub fn assertion(&self) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness for the jti".to_owned())?;
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "iat": now,
            "exp": now + ASSERTION_SECS,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_usable_key_is_refused_naming_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = ClientKey::load(&junk, "downstreamTokens.privateKeyFile", "c", "https://i")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid config: downstreamTokens.privateKeyFile {}: not a PKCS#8 PEM Ed25519 or P-256 private key",
                junk.display()
            )
        );
        let missing = dir.path().join("missing.pem");
        let err = ClientKey::load(
            &missing,
            "downstreamTokens.privateKeyFile",
            "c",
            "https://i",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Read { ref path, .. } if *path == missing),
            "{err}"
        );
    }
}
