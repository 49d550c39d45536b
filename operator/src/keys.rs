//! Signing keys of the authorization server in the keys Secret: generation, reading and writing.
//!
//! The rotation schedule ([`plan`]) is the authorization server's own (`mcp_authz_authserver::rotation`):
//! its instants are stored in the Secret, so the state of a rotation is whatever the Secret says, and an
//! operator restarted in the middle of one re-derives the same plan.

use std::collections::BTreeMap;

// The on-disk format (index and records) is the authorization server's: it reads what we write.
pub use mcp_authz_authserver::keys::{INDEX_FILE, KeyIndex, KeyRecord, KeyState};
// So is the rotation schedule: the operator and a self-managed server rotate by the same plan.
pub use mcp_authz_authserver::rotation::{NewKeySlot, RotationPlan, RotationPolicy, plan};

/// Errors of making or reading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The crypto library refused to generate a key.
    #[error("generating a signing key: {0}")]
    Generate(String),
    /// The keys index in the Secret is not what this operator writes.
    #[error("keys index {INDEX_FILE} is unreadable: {0}")]
    Index(String),
}

impl KeyError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Generate(_) => "key_generate",
            Self::Index(_) => "key_index",
        }
    }
}

/// A freshly generated key: its record and its PEM.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The index entry.
    pub record: KeyRecord,
    /// PKCS#8 PEM of the private key.
    pub pem: String,
}

/// Generates an ES256 key for `slot` (the key itself is the authorization server's kind: one generator,
/// one thumbprint, so the `kid` the operator records is the one the server computes when it loads the key).
pub fn generate_es256(
    slot: NewKeySlot,
    now: u64,
    policy: RotationPolicy,
) -> Result<GeneratedKey, KeyError> {
    let (pem, kid) = mcp_authz_authserver::keys::generate_es256()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let record = KeyRecord {
        file: format!("{kid}.pem"),
        kid,
        alg: "ES256".to_owned(),
        state: if slot.activates_at <= now {
            KeyState::Active
        } else {
            KeyState::Next
        },
        created_at: now,
        activates_at: slot.activates_at,
        retires_at: slot.retires_at,
        expires_at: slot.retires_at.saturating_add(policy.max_token_lifetime),
    };
    Ok(GeneratedKey { record, pem })
}

/// Reads the index and key files out of a Secret's data. Files the index does not name are ignored;
/// an index naming a missing file is an error (a key would be lost).
pub fn read_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<KeyIndex, KeyError> {
    let Some(raw) = data.get(INDEX_FILE) else {
        return Ok(KeyIndex::default());
    };
    let index: KeyIndex =
        serde_json::from_slice(raw).map_err(|e| KeyError::Index(e.to_string()))?;
    if let Some(missing) = index.keys.iter().find(|k| !data.contains_key(&k.file)) {
        return Err(KeyError::Index(format!(
            "key file {} is missing",
            missing.file
        )));
    }
    Ok(index)
}

/// The entry of the keys Secret holding the root of resource-server (sidecar) credentials: beside the signing
/// keys, because the authorization server mounts that Secret and derives each sidecar's public key from it.
pub const RESOURCE_SERVER_ROOT_FILE: &str = "resource-server-root";

/// The entry of the keys Secret holding the keys that seal provider tokens at rest (see
/// `mcp_authz_authserver::providers::seal`): kept with the signing keys, never rotated by the operator.
pub const PROVIDER_TOKEN_KEYS_FILE: &str = "provider-token-keys";

/// Whether a keys Secret's data holds usable provider-token keys.
pub fn has_provider_token_keys(data: &BTreeMap<String, Vec<u8>>) -> bool {
    data.get(PROVIDER_TOKEN_KEYS_FILE).is_some_and(|raw| {
        std::str::from_utf8(raw)
            .is_ok_and(|t| mcp_authz_authserver::providers::seal::Sealer::parse(t).is_ok())
    })
}

/// The resource-server root in a keys Secret's data, if it holds a valid one.
pub fn resource_server_root(
    data: &BTreeMap<String, Vec<u8>>,
) -> Option<mcp_authz_authserver::resource_servers::Root> {
    data.get(RESOURCE_SERVER_ROOT_FILE)
        .and_then(|raw| mcp_authz_authserver::resource_servers::Root::parse(raw).ok())
}

/// Builds a Secret's data from an index and the PEMs (old ones from `previous`, new ones given). The
/// resource-server root is carried over, or generated when `previous` has no valid one.
pub fn write_secret(
    index: &KeyIndex,
    previous: &BTreeMap<String, Vec<u8>>,
    generated: &[GeneratedKey],
) -> Result<BTreeMap<String, Vec<u8>>, KeyError> {
    let mut data = BTreeMap::new();
    for key in &index.keys {
        let pem = generated
            .iter()
            .find(|g| g.record.kid == key.kid)
            .map(|g| g.pem.clone().into_bytes())
            .or_else(|| previous.get(&key.file).cloned())
            .ok_or_else(|| KeyError::Index(format!("no key material for {}", key.kid)))?;
        data.insert(key.file.clone(), pem);
    }
    let index_json =
        serde_json::to_vec_pretty(index).map_err(|e| KeyError::Index(e.to_string()))?;
    data.insert(INDEX_FILE.to_owned(), index_json);
    let root = match resource_server_root(previous) {
        Some(root) => root,
        None => mcp_authz_authserver::resource_servers::Root::generate()
            .map_err(|e| KeyError::Generate(e.to_string()))?,
    };
    data.insert(
        RESOURCE_SERVER_ROOT_FILE.to_owned(),
        root.to_text().into_bytes(),
    );
    // Carried over as written (an admin may have put a new key first to rotate; one that does not load is the
    // admin's to fix, and the server says so), generated only when missing: replacing it would make every stored
    // connection unreadable.
    let sealing = match previous.get(PROVIDER_TOKEN_KEYS_FILE) {
        Some(raw) => raw.clone(),
        None => mcp_authz_authserver::providers::seal::Sealer::generate("k1").into_bytes(),
    };
    data.insert(PROVIDER_TOKEN_KEYS_FILE.to_owned(), sealing);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const POLICY: RotationPolicy = RotationPolicy {
        period: 24 * HOUR,
        max_token_lifetime: HOUR,
    };

    #[test]
    fn generated_key_has_thumbprint_kid_and_pkcs8_pem() {
        let slot = NewKeySlot {
            activates_at: 10,
            retires_at: 20,
        };
        let key = generate_es256(slot, 10, POLICY).expect("key");
        assert!(key.pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(key.record.kid.len(), 43, "base64url of 32 bytes");
        assert_eq!(key.record.state, KeyState::Active);
        assert_eq!(key.record.expires_at, 20 + HOUR);
    }

    #[test]
    fn secret_round_trip_keeps_every_key() {
        let slot = NewKeySlot {
            activates_at: 0,
            retires_at: 24 * HOUR,
        };
        let key = generate_es256(slot, 0, POLICY).expect("key");
        let index = KeyIndex {
            keys: vec![key.record.clone()],
        };
        let data =
            write_secret(&index, &BTreeMap::new(), std::slice::from_ref(&key)).expect("data");
        assert_eq!(read_secret(&data).expect("index"), index);
        assert!(resource_server_root(&data).is_some(), "a root is generated");
        assert!(
            has_provider_token_keys(&data),
            "provider-token keys are generated"
        );
        let again = write_secret(&index, &data, &[]).expect("old material reused");
        assert_eq!(again, data);
        // An admin's rotated key file (a new key first) is kept as written, even one that does not load.
        let mut rotated = data.clone();
        let text = format!(
            "{}{}",
            mcp_authz_authserver::providers::seal::Sealer::generate("k2"),
            String::from_utf8(data[PROVIDER_TOKEN_KEYS_FILE].clone()).expect("text")
        );
        rotated.insert(PROVIDER_TOKEN_KEYS_FILE.into(), text.clone().into_bytes());
        let kept = write_secret(&index, &rotated, &[]).expect("data");
        assert_eq!(kept[PROVIDER_TOKEN_KEYS_FILE], text.into_bytes());
        rotated.insert(PROVIDER_TOKEN_KEYS_FILE.into(), b"garbage".to_vec());
        assert!(!has_provider_token_keys(&rotated));
        let kept = write_secret(&index, &rotated, &[]).expect("data");
        assert_eq!(kept[PROVIDER_TOKEN_KEYS_FILE], b"garbage");
    }

    #[test]
    fn the_authserver_loads_the_secret_we_write_and_signs_with_the_active_key() {
        let now = 1_000_000;
        let mut generated = Vec::new();
        let plan0 = plan(&[], now, POLICY);
        generated
            .push(generate_es256(plan0.generate.expect("first key"), now, POLICY).expect("key"));
        let later = now + 23 * HOUR;
        let plan1 = plan(&[generated[0].record.clone()], later, POLICY);
        generated
            .push(generate_es256(plan1.generate.expect("successor"), later, POLICY).expect("key"));
        let index = KeyIndex {
            keys: generated.iter().map(|g| g.record.clone()).collect(),
        };
        let data = write_secret(&index, &BTreeMap::new(), &generated).expect("data");
        let dir = tempfile::tempdir().expect("dir");
        for (name, bytes) in &data {
            std::fs::write(dir.path().join(name), bytes).expect("write");
        }
        let set = mcp_authz_authserver::keys::KeySet::load(dir.path(), later)
            .expect("authserver loads our keys");
        let jwks = set.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert_eq!(
            kids.len(),
            2,
            "the successor is published before it signs: {jwks}"
        );
        assert!(kids.contains(&generated[1].record.kid.as_str()));
    }

    #[test]
    fn unreadable_or_incomplete_secrets_are_refused() {
        let mut data = BTreeMap::new();
        data.insert(INDEX_FILE.to_owned(), b"{not json".to_vec());
        assert!(matches!(read_secret(&data), Err(KeyError::Index(_))));
        let slot = NewKeySlot {
            activates_at: 0,
            retires_at: HOUR,
        };
        let mut key = generate_es256(slot, 0, POLICY).expect("key").record;
        key.file = "a.pem".into();
        let index = KeyIndex { keys: vec![key] };
        data.insert(
            INDEX_FILE.to_owned(),
            serde_json::to_vec(&index).expect("json"),
        );
        let err = read_secret(&data).expect_err("missing file");
        assert_eq!(
            err.to_string(),
            "keys index keys.json is unreadable: key file a.pem is missing"
        );
        assert!(
            read_secret(&BTreeMap::new())
                .expect("empty")
                .keys
                .is_empty()
        );
    }
}
