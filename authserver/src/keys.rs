//! Signing keys: the on-disk format shared with the operator, loading, self-managed rotation, JWS signing.
//!
//! The keys directory (a mounted Secret, or a local directory) holds `keys.json` ([`KeyIndex`]) and one PKCS#8 PEM
//! per key. Each key carries the instants it starts signing (`activatesAt`), stops signing (`retiresAt`) and leaves
//! the JWKS (`expiresAt` = `retiresAt` + the longest token lifetime). At any instant the server signs with the
//! latest-activated key that has not retired, and publishes every key that has not expired: the next key is in the
//! JWKS before it signs, and a retired key stays until every token it signed has expired.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Name of the index file in the keys directory.
pub const INDEX_FILE: &str = "keys.json";

/// Key problems; each stops the server from signing, so they surface at start and on reload.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("keys index is invalid: {0}")]
    Index(String),
    #[error("key {kid} is not a usable ES256 PKCS#8 key: {message}")]
    BadKey { kid: String, message: String },
    #[error("no key is active now (index has {0} keys)")]
    NoActiveKey(usize),
    #[error("cannot write keys: {0}")]
    Write(String),
}

impl KeyError {
    /// A low-cardinality reason for Prometheus.
    pub fn metric_label(&self) -> &'static str {
        match self {
            KeyError::Read { .. } => "read",
            KeyError::Index(_) => "index",
            KeyError::BadKey { .. } => "bad_key",
            KeyError::NoActiveKey(_) => "no_active_key",
            KeyError::Write(_) => "write",
        }
    }
}

/// The state of a key at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyState {
    /// Published in JWKS, not signing yet.
    Next,
    /// Signing (and published).
    Active,
    /// No longer signing; published until every token it signed has expired.
    Retiring,
}

/// One key of the index. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// JWS algorithm (`ES256`).
    pub alg: String,
    /// File in the directory holding the PKCS#8 PEM private key.
    pub file: String,
    /// State when the index was written (informative: the instants below decide).
    pub state: KeyState,
    /// When the key was generated.
    pub created_at: u64,
    /// First instant the key signs.
    pub activates_at: u64,
    /// First instant the key no longer signs.
    pub retires_at: u64,
    /// First instant the key is no longer published.
    pub expires_at: u64,
}

impl KeyRecord {
    /// The key's state at `now`, or `None` once it has expired.
    pub fn state_at(&self, now: u64) -> Option<KeyState> {
        if now >= self.expires_at {
            None
        } else if now >= self.retires_at {
            Some(KeyState::Retiring)
        } else if now >= self.activates_at {
            Some(KeyState::Active)
        } else {
            Some(KeyState::Next)
        }
    }
}

/// The index file: every published key. The operator writes it into the keys Secret; local mode and
/// self-managed servers write it into their keys directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyIndex {
    /// Keys, oldest first.
    pub keys: Vec<KeyRecord>,
}

/// One loaded key.
pub struct LoadedKey {
    pub record: KeyRecord,
    pair: EcdsaKeyPair,
    /// The public JWK (with `kid`, `alg`, `use`).
    pub jwk: Value,
}

/// The keys in force at one instant: who signs, who is published.
pub struct KeySet {
    signer: Arc<LoadedKey>,
    published: Vec<Arc<LoadedKey>>,
    by_kid: HashMap<String, Arc<LoadedKey>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signer", &self.signer.record.kid)
            .finish()
    }
}

impl KeySet {
    /// Reads the directory and picks the keys in force at `now`.
    pub fn load(dir: &Path, now: u64) -> Result<Self, KeyError> {
        let index = read_index(dir)?;
        let mut published = Vec::new();
        for record in index.keys.iter().filter(|k| k.state_at(now).is_some()) {
            if record.alg != "ES256" {
                return Err(KeyError::BadKey {
                    kid: record.kid.clone(),
                    message: format!("algorithm {}", record.alg),
                });
            }
            if record.file.contains('/') || record.file.starts_with('.') {
                return Err(KeyError::Index(format!(
                    "file name {:?} must be a plain name",
                    record.file
                )));
            }
            let path = dir.join(&record.file);
            let pem = std::fs::read_to_string(&path).map_err(|e| KeyError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            published.push(Arc::new(load_key(record.clone(), &pem)?));
        }
        let signer = published
            .iter()
            .filter(|k| k.record.state_at(now) == Some(KeyState::Active))
            .max_by_key(|k| k.record.activates_at)
            .cloned()
            .ok_or(KeyError::NoActiveKey(index.keys.len()))?;
        let by_kid = published
            .iter()
            .map(|k| (k.record.kid.clone(), k.clone()))
            .collect();
        Ok(KeySet {
            signer,
            published,
            by_kid,
            rng: SystemRandom::new(),
        })
    }

    /// The JWK Set to publish: next, active and retiring keys.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.published.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// The signing key's record.
    pub fn signer(&self) -> &KeyRecord {
        &self.signer.record
    }

    /// Signs `claims` as a compact JWS with header `typ`.
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, KeyError> {
        let header = json!({ "alg": "ES256", "typ": typ, "kid": self.signer.record.kid });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .signer
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| KeyError::BadKey {
                kid: self.signer.record.kid.clone(),
                message: "signing failed".into(),
            })?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Verifies a compact JWS signed by one of the published keys and returns its header and claims.
    /// Only the signature is checked here: the caller decides on `exp`, `iss` and the rest.
    pub fn verify(&self, token: &str) -> Option<(Value, Value)> {
        if token.len() > 16 * 1024 {
            return None;
        }
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.get("alg")?.as_str()? != "ES256" {
            return None;
        }
        let key = self.by_kid.get(header.get("kid")?.as_str()?)?;
        let signature = URL_SAFE_NO_PAD.decode(s).ok()?;
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.pair.public_key().as_ref());
        public
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .ok()?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
        Some((header, claims))
    }
}

pub(crate) fn read_index(dir: &Path) -> Result<KeyIndex, KeyError> {
    let path = dir.join(INDEX_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| KeyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| KeyError::Index(e.to_string()))
}

fn load_key(record: KeyRecord, pem: &str) -> Result<LoadedKey, KeyError> {
    let bad = |message: String| KeyError::BadKey {
        kid: record.kid.clone(),
        message,
    };
    let der = pem_body(pem, "PRIVATE KEY").ok_or_else(|| bad("no PRIVATE KEY PEM block".into()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|e| bad(e.to_string()))?;
    let point = pair.public_key().as_ref();
    let (jwk, kid) = public_jwk(point).ok_or_else(|| bad("not a P-256 public point".into()))?;
    if kid != record.kid {
        return Err(bad(format!(
            "kid does not match the key's thumbprint {kid}"
        )));
    }
    let mut jwk = jwk;
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    Ok(LoadedKey { record, pair, jwk })
}

/// The public JWK (`kty`, `crv`, `x`, `y`) of an uncompressed P-256 point, and its RFC 7638 thumbprint.
pub fn public_jwk(point: &[u8]) -> Option<(Value, String)> {
    if point.len() != 65 || point[0] != 4 {
        return None;
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..]);
    // RFC 7638: the required members, lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    Some((json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }), kid))
}

fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

/// A fresh ES256 key as PKCS#8 PEM, with its thumbprint.
pub fn generate_es256() -> Result<(String, String), KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| KeyError::Write(e.to_string()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| KeyError::Write(e.to_string()))?;
    let (_, kid) = public_jwk(pair.public_key().as_ref())
        .ok_or_else(|| KeyError::Write("bad point".into()))?;
    Ok((pkcs8_pem(pkcs8.as_ref()), kid))
}

/// A PKCS#8 DER private key as PEM (`PRIVATE KEY`, 64 characters a line).
pub fn pkcs8_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::self_managed::rotate_self_managed;

    const DAY: u64 = 86_400;

    #[test]
    fn first_rotation_makes_a_signing_key_then_a_successor_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_000_000;
        assert!(rotate_self_managed(dir.path(), t0, 30 * DAY, 600).unwrap());
        let set = KeySet::load(dir.path(), t0).unwrap();
        assert_eq!(set.jwks()["keys"].as_array().unwrap().len(), 1);
        let first = set.signer().kid.clone();
        assert!(!rotate_self_managed(dir.path(), t0 + DAY, 30 * DAY, 600).unwrap());
        // Within one token lifetime of retiring: the successor is published but does not sign yet.
        let t1 = t0 + 30 * DAY - 500;
        assert!(rotate_self_managed(dir.path(), t1, 30 * DAY, 600).unwrap());
        let set = KeySet::load(dir.path(), t1).unwrap();
        assert_eq!(set.signer().kid, first);
        assert_eq!(set.jwks()["keys"].as_array().unwrap().len(), 2);
        // After the switch, the old key is still published until its tokens have expired.
        let t2 = t0 + 30 * DAY + 1 + 100;
        rotate_self_managed(dir.path(), t2, 30 * DAY, 600).unwrap();
        let set = KeySet::load(dir.path(), t2).unwrap();
        assert_ne!(set.signer().kid, first);
        assert_eq!(set.jwks()["keys"].as_array().unwrap().len(), 2);
        let t3 = t0 + 30 * DAY + 100 + 600;
        rotate_self_managed(dir.path(), t3, 30 * DAY, 600).unwrap();
        let set = KeySet::load(dir.path(), t3).unwrap();
        assert_eq!(set.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn signs_and_verifies_and_refuses_tampering() {
        let dir = tempfile::tempdir().unwrap();
        rotate_self_managed(dir.path(), 10, DAY, 600).unwrap();
        let set = KeySet::load(dir.path(), 10).unwrap();
        let token = set.sign("at+jwt", &json!({"sub": "alice"})).unwrap();
        let (header, claims) = set.verify(&token).unwrap();
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(claims["sub"], "alice");
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"mallory"}"#);
        parts[1] = &forged;
        assert!(set.verify(&parts.join(".")).is_none());
        assert!(set.verify("a.b").is_none());
        assert!(set.verify("").is_none());
    }

    #[test]
    fn refuses_a_kid_that_is_not_the_thumbprint_and_an_index_without_active_key() {
        let dir = tempfile::tempdir().unwrap();
        rotate_self_managed(dir.path(), 10, DAY, 600).unwrap();
        let text = std::fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap();
        let mut index: KeyIndex = serde_json::from_str(&text).unwrap();
        let real = index.keys[0].kid.clone();
        std::fs::copy(
            dir.path().join(&index.keys[0].file),
            dir.path().join("other.pem"),
        )
        .unwrap();
        index.keys[0].kid = "other".into();
        index.keys[0].file = "other.pem".into();
        std::fs::write(
            dir.path().join(INDEX_FILE),
            serde_json::to_string(&index).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            KeySet::load(dir.path(), 10),
            Err(KeyError::BadKey { .. })
        ));
        index.keys[0].kid = real;
        index.keys[0].activates_at = 100;
        std::fs::write(
            dir.path().join(INDEX_FILE),
            serde_json::to_string(&index).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            KeySet::load(dir.path(), 10),
            Err(KeyError::NoActiveKey(1))
        ));
    }
}
