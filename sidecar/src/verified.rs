//! A small cache of tokens already verified against the current key set: MCP clients send the same token
//! with every request, and an ES256 verification costs tens of microseconds while a lookup costs well under
//! one. An entry is used only with the very key set it was verified against (a rotated or withdrawn key
//! forces a fresh check) and only until the token's `exp` (plus leeway).
//!
//! Each entry also keeps what the proxy derives from the identity for every request and what depends only on
//! the token and this config (the cache lives in the config's `Runtime`, so a reload starts it afresh): the
//! scopes expanded through the hierarchy and the identity header values. Deriving them per request cost
//! about a tenth of the sidecar's user-space work per `tools/call` (string copies and a scope set built
//! each time).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, DefaultHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::keys::KeySet;
use crate::token::Identity;

/// A verified token's identity and what this config derives from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// Who, as the token says.
    pub identity: Arc<Identity>,
    /// The granted scopes expanded through the config's hierarchy.
    pub scopes: Arc<BTreeSet<String>>,
    /// The identity header values sent upstream: subject, client id, scopes (space-separated), caller.
    pub header_values: Arc<[HeaderValue; 4]>,
}

impl Verified {
    /// Derives everything from `identity` once; `scopes` is the identity's granted scopes expanded.
    pub fn new(identity: Identity, scopes: BTreeSet<String>) -> Self {
        let header_values = [
            crate::identity::header_value(&identity.subject),
            crate::identity::header_value(&identity.client_id),
            crate::identity::header_value(&identity.scopes.join(" ")),
            HeaderValue::from_static(identity.caller.as_str()),
        ];
        Self {
            identity: Arc::new(identity),
            scopes: Arc::new(scopes),
            header_values: Arc::new(header_values),
        }
    }
}

/// A verified token and the key set it was verified against.
type Entry = (Verified, Arc<KeySet>);

/// How the cache hashes a token: its length and its last [`HASHED_TAIL`] bytes, with the map's per-process
/// random keys. Keys are still compared whole.
///
/// A JWT ends with its signature, bytes nobody but the issuer can choose; hashing all of a token of several
/// hundred bytes cost about 2 % of a proxied request. Only tokens that verified are ever stored, so a client
/// sending tokens made to share a tail adds no entries: its lookups probe a table of at most `capacity` real
/// tokens, spread by their signatures.
#[derive(Clone, Default)]
struct TailHashing(RandomState);

/// How much of a token's end is hashed: more than a third of an ES256 signature's 86 characters.
const HASHED_TAIL: usize = 32;

impl BuildHasher for TailHashing {
    type Hasher = TailHasher;

    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

struct TailHasher(DefaultHasher);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0
            .write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
    }

    fn write_usize(&mut self, n: usize) {
        self.0.write_usize(n);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// Verified tokens, bounded.
pub struct VerifiedTokens {
    entries: Mutex<HashMap<Box<[u8]>, Entry, TailHashing>>,
    capacity: usize,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::default()),
            capacity,
        }
    }

    /// A token verified earlier against `keys` and not expired at `now`.
    pub fn get(&self, token: &[u8], keys: &Arc<KeySet>, now: u64, leeway: u64) -> Option<Verified> {
        let entries = self.entries.lock().ok()?;
        let (verified, verified_with) = entries.get(token)?;
        (Arc::ptr_eq(verified_with, keys)
            && now < verified.identity.expires_at.saturating_add(leeway))
        .then(|| verified.clone())
    }

    /// Remembers a verified token.
    pub fn insert(&self, token: &[u8], verified: Verified, keys: Arc<KeySet>) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            // Wholesale clearing keeps the bound without bookkeeping; a refill costs one verification each.
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(token.into(), (verified, keys));
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

    fn identity(exp: u64) -> Verified {
        let identity = Identity {
            subject: "s".into(),
            client_id: "c".into(),
            scopes: vec![],
            expires_at: exp,
            token_id: None,
            caller: crate::caller::Caller::Person,
        };
        Verified::new(identity, BTreeSet::new())
    }

    #[test]
    fn the_derived_values_are_those_of_the_identity() {
        let identity = Identity {
            subject: "josé".into(),
            client_id: "c 1".into(),
            scopes: vec!["mcp:read".into(), "mcp:write".into()],
            expires_at: 1,
            token_id: None,
            caller: crate::caller::Caller::Person,
        };
        let scopes: BTreeSet<String> = ["mcp:read".into(), "mcp:write".into(), "x".into()].into();
        let verified = Verified::new(identity.clone(), scopes.clone());
        assert_eq!(*verified.identity, identity);
        assert_eq!(*verified.scopes, scopes);
        assert_eq!(
            *verified.header_values,
            ["jos%C3%A9", "c%201", "mcp:read%20mcp:write", "person"]
        );
    }

    #[test]
    fn entries_are_bound_to_their_key_set_and_expiry() {
        let cache = VerifiedTokens::new(2);
        let keys = Arc::new(TestKey::es256("a").key_set());
        let rotated = Arc::new(TestKey::es256("a").key_set());
        cache.insert(b"t1", identity(100), keys.clone());
        assert_eq!(cache.get(b"t1", &keys, 99, 0), Some(identity(100)));
        assert_eq!(cache.get(b"t1", &keys, 100, 0), None, "expired");
        assert_eq!(
            cache.get(b"t1", &keys, 129, 30),
            Some(identity(100)),
            "leeway"
        );
        assert_eq!(cache.get(b"t1", &rotated, 50, 0), None, "another key set");
        assert_eq!(cache.get(b"t2", &keys, 50, 0), None);
    }

    #[test]
    fn tokens_sharing_a_hashed_tail_are_still_told_apart() {
        let cache = VerifiedTokens::new(4);
        let keys = Arc::new(TestKey::es256("a").key_set());
        let tail = "s".repeat(HASHED_TAIL);
        let (stored, forged) = (
            format!("header.claims.{tail}"),
            format!("header.CLAIMS.{tail}"),
        );
        cache.insert(stored.as_bytes(), identity(100), keys.clone());
        assert_eq!(cache.get(forged.as_bytes(), &keys, 50, 0), None);
        assert_eq!(cache.get(tail.as_bytes(), &keys, 50, 0), None);
        assert_eq!(
            cache.get(stored.as_bytes(), &keys, 50, 0),
            Some(identity(100))
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = VerifiedTokens::new(2);
        let keys = Arc::new(TestKey::es256("a").key_set());
        for t in [b"a", b"b", b"c"] {
            cache.insert(t, identity(100), keys.clone());
        }
        assert_eq!(cache.len(), 1);
        let off = VerifiedTokens::new(0);
        off.insert(b"a", identity(100), keys.clone());
        assert!(off.is_empty());
    }
}
