//! A small cache of tokens already verified against the current key set: MCP clients send the same token
//! with every request, and an ES256 verification costs tens of microseconds while a lookup costs well under
//! one. An entry is used only with the very key set it was verified against (a rotated or withdrawn key
//! forces a fresh check) and only until the token's `exp` (plus leeway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::keys::KeySet;
use crate::token::Identity;

/// A verified identity and the key set it was verified against.
type Entry = (Identity, Arc<KeySet>);

/// Verified tokens, bounded.
pub struct VerifiedTokens {
    entries: Mutex<HashMap<Box<str>, Entry>>,
    capacity: usize,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The identity of a token verified earlier against `keys` and not expired at `now`.
    pub fn get(&self, token: &str, keys: &Arc<KeySet>, now: u64, leeway: u64) -> Option<Identity> {
        let entries = self.entries.lock().ok()?;
        let (identity, verified_with) = entries.get(token)?;
        (Arc::ptr_eq(verified_with, keys) && now < identity.expires_at.saturating_add(leeway))
            .then(|| identity.clone())
    }

    /// Remembers a verified token.
    pub fn insert(&self, token: &str, identity: Identity, keys: Arc<KeySet>) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            // Wholesale clearing keeps the bound without bookkeeping; a refill costs one verification each.
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(token.into(), (identity, keys));
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestKey;

    fn identity(exp: u64) -> Identity {
        Identity {
            subject: "s".into(),
            client_id: "c".into(),
            scopes: vec![],
            expires_at: exp,
            token_id: None,
        }
    }

    #[test]
    fn entries_are_bound_to_their_key_set_and_expiry() {
        let cache = VerifiedTokens::new(2);
        let keys = Arc::new(TestKey::es256("a").key_set());
        let rotated = Arc::new(TestKey::es256("a").key_set());
        cache.insert("t1", identity(100), keys.clone());
        assert_eq!(cache.get("t1", &keys, 99, 0), Some(identity(100)));
        assert_eq!(cache.get("t1", &keys, 100, 0), None, "expired");
        assert_eq!(
            cache.get("t1", &keys, 129, 30),
            Some(identity(100)),
            "leeway"
        );
        assert_eq!(cache.get("t1", &rotated, 50, 0), None, "another key set");
        assert_eq!(cache.get("t2", &keys, 50, 0), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = VerifiedTokens::new(2);
        let keys = Arc::new(TestKey::es256("a").key_set());
        for t in ["a", "b", "c"] {
            cache.insert(t, identity(100), keys.clone());
        }
        assert_eq!(cache.len(), 1);
        let off = VerifiedTokens::new(0);
        off.insert("a", identity(100), keys.clone());
        assert!(off.is_empty());
    }
}
