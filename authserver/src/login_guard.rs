//! Limits on password sign-in. Each Argon2id check holds about 19 MiB and a core for tens of milliseconds, so the
//! number running at once is bounded (a flood of login posts cannot exhaust memory through the blocking pool);
//! and each username gets a small budget of failures per window, so an online guesser gets a handful of tries
//! rather than thousands. The budget is kept per replica, in memory.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Failures a username may have in one window before sign-in is refused without checking the password.
pub const MAX_FAILURES: u32 = 5;
/// Length of the failure window, in seconds.
pub const WINDOW_SECS: u64 = 15 * 60;
/// Usernames tracked at most; past it the oldest window is forgotten, so sprayed names cannot grow memory.
const MAX_TRACKED: usize = 10_000;

/// Why a sign-in was refused before its password was checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    /// Every password-check slot is taken.
    #[error("the server is checking too many sign-ins at once; try again in a moment")]
    Busy,
    /// This username failed too often recently.
    #[error("too many failed sign-ins for this user; try again in {retry_after_mins} minutes")]
    TooManyFailures { retry_after_mins: u64 },
}

impl LoginRefusal {
    /// Low-cardinality reason for metrics and audit.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LoginRefusal::Busy => "login_busy",
            LoginRefusal::TooManyFailures { .. } => "login_throttled",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: u64,
    failures: u32,
}

/// The sign-in limits of one server.
#[derive(Debug)]
pub struct LoginGuard {
    checks: Semaphore,
    failures: Mutex<HashMap<String, Window>>,
    max_failures: u32,
    window_secs: u64,
}

impl Default for LoginGuard {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(2 * cores, MAX_FAILURES, WINDOW_SECS)
    }
}

impl LoginGuard {
    pub fn new(concurrent_checks: usize, max_failures: u32, window_secs: u64) -> Self {
        LoginGuard {
            checks: Semaphore::new(concurrent_checks),
            failures: Mutex::new(HashMap::new()),
            max_failures,
            window_secs,
        }
    }

    /// May `username` try a password now? On success the permit bounds the check that follows.
    pub fn admit(&self, username: &str, now: u64) -> Result<SemaphorePermit<'_>, LoginRefusal> {
        if let Some(w) = self.table().get(username)
            && now < w.started + self.window_secs
            && w.failures >= self.max_failures
        {
            let left = w.started + self.window_secs - now;
            return Err(LoginRefusal::TooManyFailures {
                retry_after_mins: left.div_ceil(60),
            });
        }
        self.checks.try_acquire().map_err(|_| LoginRefusal::Busy)
    }

    /// Counts a wrong password (or an unknown username) against `username`.
    pub fn failed(&self, username: &str, now: u64) {
        let mut table = self.table();
        if !table.contains_key(username) && table.len() >= MAX_TRACKED {
            table.retain(|_, w| now < w.started + self.window_secs);
            if table.len() >= MAX_TRACKED
                && let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(k, _)| k.clone())
            {
                table.remove(&oldest);
            }
        }
        let w = table.entry(username.to_owned()).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= w.started + self.window_secs {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }

    /// A correct password clears the username's failures.
    pub fn succeeded(&self, username: &str) {
        self.table().remove(username);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_username_gets_its_budget_of_failures_per_window() {
        let guard = LoginGuard::new(4, 3, 600);
        for _ in 0..3 {
            assert!(guard.admit("alice", 1000).is_ok());
            guard.failed("alice", 1000);
        }
        assert_eq!(
            guard.admit("alice", 1001).unwrap_err(),
            LoginRefusal::TooManyFailures {
                retry_after_mins: 10
            }
        );
        assert!(
            guard.admit("bob", 1001).is_ok(),
            "other users are not affected"
        );
        assert_eq!(
            guard.admit("alice", 1599).unwrap_err(),
            LoginRefusal::TooManyFailures {
                retry_after_mins: 1
            }
        );
        assert!(guard.admit("alice", 1600).is_ok(), "a new window starts");
        guard.failed("alice", 1600);
        assert!(
            guard.admit("alice", 1601).is_ok(),
            "the old failures no longer count"
        );
    }

    #[test]
    fn success_clears_failures() {
        let guard = LoginGuard::new(4, 2, 600);
        guard.failed("alice", 10);
        guard.succeeded("alice");
        guard.failed("alice", 11);
        assert!(guard.admit("alice", 12).is_ok());
    }

    #[test]
    fn concurrent_checks_are_bounded() {
        let guard = LoginGuard::new(1, 5, 600);
        let held = guard.admit("alice", 0).expect("first check");
        assert_eq!(guard.admit("bob", 0).unwrap_err(), LoginRefusal::Busy);
        drop(held);
        assert!(guard.admit("bob", 0).is_ok());
    }

    #[test]
    fn sprayed_usernames_do_not_grow_the_table_past_its_bound() {
        let guard = LoginGuard::new(1, 5, 1_000_000);
        for i in 0..(MAX_TRACKED + 50) {
            guard.failed(&format!("user{i}"), i as u64);
        }
        assert_eq!(guard.table().len(), MAX_TRACKED);
        assert!(
            !guard.table().contains_key("user0"),
            "the oldest window went first"
        );
    }
}
