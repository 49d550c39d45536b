//! Who each handshake-era session (`Mcp-Session-Id`) belongs to.
//!
//! A session id is not authorization (MCP's security guidance: bind sessions to the user). The upstream keeps a
//! session's state and replays its streams to whoever names it, so a leaked id would let another token read the
//! session's answers (`GET` with `Last-Event-ID`) or end it (`DELETE`). The sidecar records who was answered
//! with each new session id and lets only that caller use it (404 to anyone else, as for a session that is gone).
//!
//! An id this sidecar did not see opened belongs to the first caller that names it here: the session may have
//! been opened before this process started, or through another replica of the pod when the upstream shares its
//! sessions, and refusing those would send every such client back to `initialize` at every hop. A leaked id is
//! therefore refused only where its owner got there first, which is everywhere it was opened.
//!
//! Ids and owners are kept as keyed hashes, at most [`CAPACITY`] of them (about 200 bytes each with their
//! indexes: a test binary's resident memory grew 3.2 MB filling the table, its key strings included): the
//! oldest binding goes first. One caller holds at most [`PER_CALLER`]: a token opening sessions in a loop
//! replaces its own, and cannot push everyone else's out to make their ids first-claimant again.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Most sessions remembered at once.
pub const CAPACITY: usize = 16_384;

/// Whether a caller may use a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The session was opened for this caller, or this caller named it here first.
    Own,
    /// Another caller's session.
    Others,
}

/// The owners of the sessions opened through this sidecar.
#[derive(Debug)]
pub struct SessionOwners {
    keys: RandomState,
    capacity: usize,
    state: Mutex<State>,
}

/// A session's owner, and when it was bound (a number that only grows).
#[derive(Debug, Clone, Copy)]
struct Binding {
    owner: u64,
    age: u64,
}

/// Every binding is in all three maps. Finding the oldest session, a caller's oldest, or any session's place
/// takes a lookup, never a walk over the others: a token naming unknown ids in a loop, once it holds its
/// share, makes each request replace its own oldest, and that must not cost a scan of 16,384 entries under the
/// lock every request of the pod takes.
#[derive(Debug, Default)]
struct State {
    next_age: u64,
    sessions: HashMap<u64, Binding>,
    /// Sessions by age, oldest first.
    by_age: BTreeMap<u64, u64>,
    /// Each owner's sessions by age.
    by_owner: HashMap<u64, BTreeMap<u64, u64>>,
}

impl State {
    fn bind(&mut self, id: u64, owner: u64, capacity: usize) {
        match self.sessions.get(&id) {
            Some(binding) if binding.owner == owner => return,
            Some(_) => {
                self.remove(id);
            }
            None => {}
        }
        // One caller's sessions beyond its share replace its own oldest, not anyone else's.
        let own_oldest = self
            .by_owner
            .get(&owner)
            .filter(|own| own.len() >= PER_CALLER)
            .and_then(|own| own.first_key_value())
            .map(|(_, &oldest)| oldest);
        if let Some(oldest) = own_oldest {
            self.remove(oldest);
        }
        let age = self.next_age;
        self.next_age += 1;
        self.sessions.insert(id, Binding { owner, age });
        self.by_age.insert(age, id);
        self.by_owner.entry(owner).or_default().insert(age, id);
        while self.sessions.len() > capacity {
            match self.by_age.first_key_value() {
                Some((_, &oldest)) => {
                    self.remove(oldest);
                }
                None => break,
            }
        }
    }

    /// Forgets `id`; whether it was known.
    fn remove(&mut self, id: u64) -> bool {
        let Some(binding) = self.sessions.remove(&id) else {
            return false;
        };
        self.by_age.remove(&binding.age);
        if let Some(own) = self.by_owner.get_mut(&binding.owner) {
            own.remove(&binding.age);
            if own.is_empty() {
                self.by_owner.remove(&binding.owner);
            }
        }
        true
    }
}

/// Most sessions one caller (subject and client) holds at once; more replace its own oldest.
pub const PER_CALLER: usize = 64;

impl Default for SessionOwners {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl SessionOwners {
    /// Remembering at most `capacity` sessions.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            keys: RandomState::new(),
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn owner(&self, subject: &str, client_id: &str) -> u64 {
        self.keys.hash_one((subject, client_id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the upstream opened `session` for the caller `subject` of `client_id`.
    pub fn bind(&self, session: &[u8], subject: &str, client_id: &str) {
        let (id, owner) = (self.keys.hash_one(session), self.owner(subject, client_id));
        self.lock().bind(id, owner, self.capacity);
    }

    /// Whether the caller `subject` of `client_id` may use `session`; an id not known here becomes theirs.
    pub fn claim(&self, session: &[u8], subject: &str, client_id: &str) -> Standing {
        let (id, owner) = (self.keys.hash_one(session), self.owner(subject, client_id));
        let mut state = self.lock();
        match state.sessions.get(&id) {
            Some(known) if known.owner == owner => Standing::Own,
            Some(_) => Standing::Others,
            None => {
                state.bind(id, owner, self.capacity);
                Standing::Own
            }
        }
    }

    /// Forgets `session` (its owner ended it).
    pub fn forget(&self, session: &[u8]) {
        let id = self.keys.hash_one(session);
        self.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_caller_a_session_was_opened_for_may_use_it() {
        let owners = SessionOwners::with_capacity(2);
        owners.bind(b"s1", "alice", "app");
        owners.bind(b"s2", "bob", "app");
        let cases = [
            (&b"s1"[..], "alice", "app", Standing::Own),
            (b"s1", "bob", "app", Standing::Others),
            (b"s1", "alice", "other-app", Standing::Others),
            (b"s2", "bob", "app", Standing::Own),
        ];
        for (session, subject, client, expected) in cases {
            assert_eq!(
                owners.claim(session, subject, client),
                expected,
                "{session:?} {subject} {client}"
            );
        }
        // An id not seen opened is the first claimant's; past its capacity the oldest binding goes.
        assert_eq!(owners.claim(b"s3", "carol", "app"), Standing::Own);
        assert_eq!(owners.claim(b"s3", "alice", "app"), Standing::Others);
        assert_eq!(
            owners.claim(b"s1", "bob", "app"),
            Standing::Own,
            "s1 was forgotten"
        );
        // An ended session is forgotten.
        owners.forget(b"s3");
        assert_eq!(owners.claim(b"s3", "alice", "app"), Standing::Own);
        // The subject and client are kept apart: ("ab", "c") is not ("a", "bc").
        owners.bind(b"s4", "ab", "c");
        assert_eq!(owners.claim(b"s4", "a", "bc"), Standing::Others);
    }

    #[test]
    fn a_caller_opening_sessions_in_a_loop_replaces_only_its_own() {
        let owners = SessionOwners::with_capacity(PER_CALLER + 2);
        owners.bind(b"alice-1", "alice", "app");
        for i in 0..PER_CALLER * 3 {
            owners.bind(format!("m-{i}").as_bytes(), "mallory", "app");
        }
        assert_eq!(owners.claim(b"alice-1", "bob", "app"), Standing::Others);
        assert_eq!(
            owners.claim(b"m-0", "bob", "app"),
            Standing::Own,
            "mallory's oldest went"
        );
        let last = format!("m-{}", PER_CALLER * 3 - 1);
        assert_eq!(
            owners.claim(last.as_bytes(), "bob", "app"),
            Standing::Others
        );
        owners.lock().assert_consistent();
    }

    impl State {
        /// Every binding is in all three maps, and nothing else is.
        fn assert_consistent(&self) {
            assert_eq!(self.by_age.len(), self.sessions.len());
            let owned: usize = self.by_owner.values().map(BTreeMap::len).sum();
            assert_eq!(owned, self.sessions.len());
            for (id, binding) in &self.sessions {
                assert_eq!(self.by_age.get(&binding.age), Some(id));
                assert_eq!(self.by_owner[&binding.owner].get(&binding.age), Some(id));
            }
            assert!(
                self.by_owner
                    .values()
                    .all(|own| !own.is_empty() && own.len() <= PER_CALLER)
            );
        }
    }

    #[test]
    fn a_full_table_keeps_its_order_through_every_kind_of_change() {
        let owners = SessionOwners::with_capacity(CAPACITY);
        // Many callers fill the table; one caller then names unknown ids far past its share.
        for i in 0..CAPACITY {
            owners.bind(
                format!("s-{i}").as_bytes(),
                &format!("caller-{}", i % 300),
                "app",
            );
        }
        for i in 0..PER_CALLER * 40 {
            let id = format!("m-{i}");
            assert_eq!(owners.claim(id.as_bytes(), "mallory", "app"), Standing::Own);
        }
        owners.lock().assert_consistent();
        assert_eq!(owners.lock().sessions.len(), CAPACITY);
        assert_eq!(
            owners.lock().by_owner[&owners.owner("mallory", "app")].len(),
            PER_CALLER
        );
        // Mallory's share pushed out only the oldest others' sessions as it grew to 64, then only its own.
        let known = |id: &str| {
            let id = owners.keys.hash_one(id.as_bytes());
            owners.lock().sessions.contains_key(&id)
        };
        let others_left: Vec<usize> = (0..CAPACITY).filter(|i| known(&format!("s-{i}"))).collect();
        assert_eq!(others_left, (PER_CALLER..CAPACITY).collect::<Vec<_>>());
        // A session taken over by another owner, and one ended, leave no trace in the order.
        owners.bind(b"s-100", "mallory", "app");
        owners.forget(b"s-200");
        owners.forget(b"never-seen");
        owners.lock().assert_consistent();
        assert_eq!(
            owners.claim(b"s-100", "caller-100", "app"),
            Standing::Others
        );
    }
}
