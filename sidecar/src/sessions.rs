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
//! Ids and owners are kept as keyed hashes, a few dozen bytes a session, at most [`CAPACITY`] of them: the
//! oldest binding goes first. One caller holds at most [`PER_CALLER`]: a token opening sessions in a loop
//! replaces its own, and cannot push everyone else's out to make their ids first-claimant again.

use std::collections::{HashMap, VecDeque};
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

#[derive(Debug, Default)]
struct State {
    owners: HashMap<u64, u64>,
    /// Sessions in the order they were bound, with their owners.
    order: VecDeque<(u64, u64)>,
    /// Sessions per owner.
    counts: HashMap<u64, usize>,
}

impl State {
    fn bind(&mut self, id: u64, owner: u64, capacity: usize) {
        match self.owners.insert(id, owner) {
            Some(same) if same == owner => return,
            Some(_) => self.unlist(id),
            None => {}
        }
        // One caller's sessions beyond its share replace its own oldest, not anyone else's.
        if self.counts.get(&owner).copied().unwrap_or(0) >= PER_CALLER
            && let Some(at) = self.order.iter().position(|(_, o)| *o == owner)
            && let Some((oldest, _)) = self.order.remove(at)
        {
            self.owners.remove(&oldest);
            self.count(owner, false);
        }
        self.order.push_back((id, owner));
        self.count(owner, true);
        while self.order.len() > capacity {
            if let Some((oldest, owner)) = self.order.pop_front() {
                self.owners.remove(&oldest);
                self.count(owner, false);
            }
        }
    }

    /// Takes `id` out of the order (its entry in `owners` is the caller's to handle).
    fn unlist(&mut self, id: u64) {
        if let Some(at) = self.order.iter().position(|(i, _)| *i == id)
            && let Some((_, owner)) = self.order.remove(at)
        {
            self.count(owner, false);
        }
    }

    fn count(&mut self, owner: u64, up: bool) {
        let count = self.counts.entry(owner).or_default();
        if up {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.counts.remove(&owner);
            }
        }
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
        match state.owners.get(&id) {
            Some(&known) if known == owner => Standing::Own,
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
        let mut state = self.lock();
        if state.owners.remove(&id).is_some() {
            state.unlist(id);
        }
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
        let state = owners.lock();
        assert_eq!(state.order.len(), state.owners.len());
        assert_eq!(state.counts.values().sum::<usize>(), state.order.len());
    }
}
