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
//! oldest binding goes first.

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
    order: VecDeque<u64>,
}

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
        let mut state = self.lock();
        if state.owners.insert(id, owner).is_none() {
            state.order.push_back(id);
        }
        while state.order.len() > self.capacity {
            if let Some(oldest) = state.order.pop_front() {
                state.owners.remove(&oldest);
            }
        }
    }

    /// Whether the caller `subject` of `client_id` may use `session`; an id not known here becomes theirs.
    pub fn claim(&self, session: &[u8], subject: &str, client_id: &str) -> Standing {
        let (id, owner) = (self.keys.hash_one(session), self.owner(subject, client_id));
        let state = self.lock();
        match state.owners.get(&id) {
            Some(&known) if known == owner => Standing::Own,
            Some(_) => Standing::Others,
            None => {
                drop(state);
                self.bind(session, subject, client_id);
                Standing::Own
            }
        }
    }

    /// Forgets `session` (its owner ended it).
    pub fn forget(&self, session: &[u8]) {
        let id = self.keys.hash_one(session);
        let mut state = self.lock();
        if state.owners.remove(&id).is_some() {
            state.order.retain(|o| *o != id);
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
}
