//! Signing keys of the authorization server: generation and the rotation schedule.
//!
//! The schedule is a pure function of (keys, now, rotation period, publish lead). Every key carries
//! the instants it starts signing (`activatesAt`), stops signing (`retiresAt`) and leaves the JWKS
//! (`expiresAt` = `retiresAt` + the longest token lifetime). Those instants are stored in the keys
//! Secret, so the state of a rotation is whatever the Secret says: an operator restarted in the
//! middle of one re-derives the same plan, never loses a key and never generates a second
//! successor.

use std::collections::BTreeMap;

// The on-disk format (index and records) is the authorization server's: it reads what we write.
pub use mcp_authz_authserver::keys::{INDEX_FILE, KeyIndex, KeyRecord, KeyState};

/// Rotation settings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long one key signs.
    pub period: u64,
    /// How long before it signs a key is published, and how long after it retires it stays: the
    /// longest lifetime of any token it signs (so verifiers holding a cached JWKS know it in time).
    pub max_token_lifetime: u64,
}

/// A key the plan asks to generate, with its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewKeySlot {
    /// When it starts signing.
    pub activates_at: u64,
    /// When it stops signing.
    pub retires_at: u64,
}

/// What to do with the keys at some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// Keys to keep (expired ones dropped, states refreshed, an overdue active key extended).
    pub keep: Vec<KeyRecord>,
    /// A key to generate now, if any.
    pub generate: Option<NewKeySlot>,
    /// When the plan next changes (the reconciler requeues then).
    pub next_change: u64,
}

/// Plans the keys at `now`.
///
/// - No usable key: generate one that signs at once (nothing was published, so nothing to protect).
/// - The active key is within `max_token_lifetime` of retiring and has no successor: generate the
///   successor, activating exactly when the active key retires.
/// - The operator woke up late (or was down) so that a successor made now would be published for
///   less than `max_token_lifetime` before the signer retires: the signer's retirement is pushed
///   back until the successor has been published that long. A signer already expired is gone,
///   and a new key signs at once.
pub fn plan(keys: &[KeyRecord], now: u64, policy: RotationPolicy) -> RotationPlan {
    let lead = policy.max_token_lifetime;
    let period = policy.period.max(1);
    let mut keep: Vec<KeyRecord> = keys
        .iter()
        .filter(|k| k.state_at(now).is_some())
        .cloned()
        .collect();
    keep.sort_by_key(|k| (k.activates_at, k.kid.clone()));

    // The key signing now is the latest-activated one whose activation has passed.
    let signer = keep.iter().rposition(|k| k.activates_at <= now);
    let successor_of = |keep: &[KeyRecord], i: usize| {
        keep.iter()
            .skip(i + 1)
            .any(|k| k.activates_at > keep[i].activates_at)
    };

    let generate = match signer {
        None if keep.iter().all(|k| k.activates_at > now) && !keep.is_empty() => None,
        None => Some(NewKeySlot {
            activates_at: now,
            retires_at: now.saturating_add(period),
        }),
        Some(i) if successor_of(&keep, i) => None,
        Some(i) => {
            let retires = keep[i].retires_at;
            if now.saturating_add(lead) < retires {
                None
            } else {
                // A successor must be published a whole token lifetime before it signs. If the
                // operator woke late (or was down), the signer signs on until then.
                let activates_at = retires.max(now.saturating_add(lead));
                if activates_at > retires {
                    keep[i].retires_at = activates_at;
                    keep[i].expires_at = activates_at.saturating_add(lead);
                }
                Some(NewKeySlot {
                    activates_at,
                    retires_at: activates_at.saturating_add(period),
                })
            }
        }
    };

    let mut next_change = u64::MAX;
    for key in &mut keep {
        key.state = key.state_at(now).unwrap_or(KeyState::Retiring);
        for instant in [
            key.activates_at,
            key.retires_at,
            key.expires_at,
            key.retires_at.saturating_sub(lead),
        ] {
            if instant > now {
                next_change = next_change.min(instant);
            }
        }
    }
    if let Some(slot) = generate {
        next_change = next_change.min(slot.activates_at.max(now.saturating_add(1)));
    }
    RotationPlan {
        keep,
        generate,
        next_change,
    }
}

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

    fn record(kid: &str, activates_at: u64, retires_at: u64) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            file: format!("{kid}.pem"),
            state: KeyState::Next,
            created_at: activates_at,
            activates_at,
            retires_at,
            expires_at: retires_at + POLICY.max_token_lifetime,
        }
    }

    /// Runs the schedule from `start` to `end` in `step`s, applying each plan like the reconciler
    /// does, and returns every key ever made.
    fn simulate(
        start: u64,
        end: u64,
        step: u64,
        restart_every: Option<u64>,
    ) -> (Vec<KeyRecord>, Vec<KeyRecord>) {
        let mut keys: Vec<KeyRecord> = Vec::new();
        let mut all = Vec::new();
        let mut n = 0;
        let mut now = start;
        while now <= end {
            let p = plan(&keys, now, POLICY);
            keys = p.keep;
            if let Some(slot) = p.generate {
                n += 1;
                let kid = format!("k{n}");
                let mut r = record(&kid, slot.activates_at, slot.retires_at);
                r.created_at = now;
                r.state = r.state_at(now).expect("new key is live");
                keys.push(r.clone());
                all.push(r);
            }
            if let Some(every) = restart_every {
                // A restart re-plans from the stored keys at once: nothing may change.
                if now.is_multiple_of(every) {
                    let again = plan(&keys, now, POLICY);
                    assert_eq!(
                        again.generate, None,
                        "a re-plan at {now} generated a second key"
                    );
                    assert_eq!(again.keep.len(), keys.len());
                }
            }
            // Invariants at every instant.
            let signers: Vec<_> = keys
                .iter()
                .filter(|k| k.state_at(now) == Some(KeyState::Active))
                .collect();
            let signer = keys
                .iter()
                .filter(|k| k.activates_at <= now)
                .max_by_key(|k| k.activates_at)
                .expect("a signer");
            assert!(
                signer.activates_at == 0
                    || signer.activates_at == start
                    || all.iter().any(|a| a.kid == signer.kid)
            );
            assert!(signers.len() <= 1, "two active keys at {now}");
            now += step;
        }
        (keys, all)
    }

    #[test]
    fn first_key_signs_at_once() {
        let p = plan(&[], 1000, POLICY);
        assert_eq!(
            p.generate,
            Some(NewKeySlot {
                activates_at: 1000,
                retires_at: 1000 + 24 * HOUR
            })
        );
        assert!(p.keep.is_empty());
    }

    #[test]
    fn nothing_to_do_mid_period() {
        let keys = [record("a", 0, 24 * HOUR)];
        let p = plan(&keys, 10 * HOUR, POLICY);
        assert_eq!(p.generate, None);
        assert_eq!(p.keep[0].state, KeyState::Active);
        assert_eq!(
            p.next_change,
            23 * HOUR,
            "wakes up when the successor is due"
        );
    }

    #[test]
    fn successor_is_published_one_token_lifetime_before_it_signs() {
        let keys = [record("a", 0, 24 * HOUR)];
        let p = plan(&keys, 23 * HOUR, POLICY);
        assert_eq!(
            p.generate,
            Some(NewKeySlot {
                activates_at: 24 * HOUR,
                retires_at: 48 * HOUR
            })
        );
    }

    #[test]
    fn retired_key_stays_until_its_last_token_expired() {
        let keys = [record("a", 0, 24 * HOUR), record("b", 24 * HOUR, 48 * HOUR)];
        let p = plan(&keys, 24 * HOUR + HOUR - 1, POLICY);
        assert_eq!(
            p.keep
                .iter()
                .map(|k| (k.kid.as_str(), k.state))
                .collect::<Vec<_>>(),
            [("a", KeyState::Retiring), ("b", KeyState::Active)]
        );
        let p = plan(&keys, 25 * HOUR, POLICY);
        assert_eq!(
            p.keep.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn replanning_after_a_restart_generates_no_second_successor() {
        let keys = [record("a", 0, 24 * HOUR), record("b", 24 * HOUR, 48 * HOUR)];
        for now in [23 * HOUR, 23 * HOUR + 1, 24 * HOUR - 1] {
            assert_eq!(plan(&keys, now, POLICY).generate, None, "at {now}");
        }
    }

    #[test]
    fn overdue_signer_keeps_signing_until_its_successor_was_published() {
        // The operator was down across the retirement instant (but not past the key's expiry).
        let keys = [record("a", 0, 24 * HOUR)];
        let now = 24 * HOUR + 30 * 60;
        let p = plan(&keys, now, POLICY);
        assert_eq!(
            p.generate,
            Some(NewKeySlot {
                activates_at: now + HOUR,
                retires_at: now + HOUR + 24 * HOUR
            })
        );
        assert_eq!(p.keep[0].retires_at, now + HOUR);
        assert_eq!(p.keep[0].state, KeyState::Active);
    }

    #[test]
    fn all_keys_expired_starts_over() {
        let keys = [record("a", 0, HOUR)];
        let p = plan(&keys, 100 * HOUR, POLICY);
        assert!(p.keep.is_empty());
        assert_eq!(p.generate.map(|s| s.activates_at), Some(100 * HOUR));
    }

    #[test]
    fn a_month_of_minutes_keeps_the_invariants() {
        let (keys, all) = simulate(0, 30 * 24 * HOUR, 60, Some(7 * 60));
        assert_eq!(all.len(), 31, "one key a day plus the first");
        assert!(keys.len() <= 3);
        for pair in all.windows(2) {
            assert_eq!(
                pair[0].retires_at, pair[1].activates_at,
                "no gap and no overlap in signing"
            );
            assert!(
                pair[1].created_at + POLICY.max_token_lifetime <= pair[1].activates_at,
                "{:?}",
                pair[1]
            );
        }
    }

    #[test]
    fn coarse_steps_still_publish_before_signing() {
        // Wake-ups every 50 minutes (less than a token lifetime): successors made late or early
        // must still be published a whole token lifetime before they sign.
        let (_, all) = simulate(0, 10 * 24 * HOUR, 50 * 60, None);
        for key in all.iter().skip(1) {
            assert!(
                key.activates_at >= key.created_at + POLICY.max_token_lifetime,
                "{key:?}"
            );
        }
    }

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
        let again = write_secret(&index, &data, &[]).expect("old material reused");
        assert_eq!(again, data);
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
        let index = KeyIndex {
            keys: vec![record("a", 0, HOUR)],
        };
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
