//! Self-managed keys (local mode): the rotation plan ([`crate::rotation::plan`], the operator's own) applied to a
//! keys directory the server owns. Kept apart from `keys` (loading and signing) so that module does not depend on
//! the schedule that is built on its records.

use std::path::Path;

use crate::keys;
use crate::rotation;

/// Self-managed mode: applies the rotation plan ([`rotation::plan`], the operator's own) to the directory:
/// generates the key it asks for, drops expired ones, and writes the index atomically. Returns whether anything
/// changed. Several replicas must not share a self-managed directory.
pub fn rotate_self_managed(
    dir: &Path,
    now: u64,
    period: u64,
    lead: u64,
) -> Result<bool, keys::KeyError> {
    std::fs::create_dir_all(dir).map_err(|e| keys::KeyError::Write(e.to_string()))?;
    let index = if dir.join(keys::INDEX_FILE).exists() {
        keys::read_index(dir)?
    } else {
        keys::KeyIndex::default()
    };
    let policy = rotation::RotationPolicy {
        period,
        max_token_lifetime: lead,
    };
    let plan = rotation::plan(&index.keys, now, policy);
    let mut next = keys::KeyIndex { keys: plan.keep };
    if let Some(slot) = plan.generate {
        let (pem, kid) = keys::generate_es256()?;
        let file = format!("{kid}.pem");
        write_file(&dir.join(&file), pem.as_bytes())?;
        next.keys.push(keys::KeyRecord {
            kid,
            alg: "ES256".into(),
            file,
            state: if slot.activates_at <= now {
                keys::KeyState::Active
            } else {
                keys::KeyState::Next
            },
            created_at: now,
            activates_at: slot.activates_at,
            retires_at: slot.retires_at,
            expires_at: slot.retires_at.saturating_add(lead),
        });
    }
    if next == index {
        return Ok(false);
    }
    let text =
        serde_json::to_string_pretty(&next).map_err(|e| keys::KeyError::Write(e.to_string()))?;
    write_file(&dir.join(keys::INDEX_FILE), text.as_bytes())?;
    for gone in index
        .keys
        .iter()
        .filter(|k| !next.keys.iter().any(|n| n.kid == k.kid))
    {
        let _ = std::fs::remove_file(dir.join(&gone.file));
    }
    Ok(true)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), keys::KeyError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .map_err(|e| keys::KeyError::Write(format!("{}: {e}", tmp.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| keys::KeyError::Write(format!("{}: {e}", path.display())))
}
