//! Limits on password sign-in. Each Argon2id check holds about 19 MiB and a core for tens of milliseconds, so the
//! number running at once is bounded per replica (a flood of login posts cannot exhaust memory through the
//! blocking pool); and each username gets a small budget of failures per window, so an online guesser gets a
//! handful of tries rather than thousands. The budget is kept in the store (by username hash), so it holds across
//! replicas and restarts; unknown usernames are counted like known ones, so the limit reveals nothing.

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::secrets;
use crate::store::{Store, StoreError, Timestamp};

/// Failures a username may have in one window before sign-in is refused without checking the password.
pub const MAX_FAILURES: u32 = 5;
/// Length of the failure window, in seconds.
pub const WINDOW_SECS: u64 = 15 * 60;

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

/// The sign-in limits of one server.
#[derive(Debug)]
pub struct LoginGuard {
    checks: Semaphore,
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
            max_failures,
            window_secs,
        }
    }

    /// May `username` try a password now? On success the permit bounds the check that follows. The outer error is
    /// the store's.
    pub async fn admit(
        &self,
        store: &dyn Store,
        username: &str,
        now: Timestamp,
    ) -> Result<Result<SemaphorePermit<'_>, LoginRefusal>, StoreError> {
        if let Some((failures, window_end)) = store.login_failures(&secrets::hash(username)).await?
            && now < window_end
            && failures >= i64::from(self.max_failures)
        {
            let left = u64::try_from(window_end - now).unwrap_or(0);
            return Ok(Err(LoginRefusal::TooManyFailures {
                retry_after_mins: left.div_ceil(60),
            }));
        }
        Ok(self.checks.try_acquire().map_err(|_| LoginRefusal::Busy))
    }

    /// Counts a wrong password (or an unknown username) against `username`.
    pub async fn failed(
        &self,
        store: &dyn Store,
        username: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let window = i64::try_from(self.window_secs).unwrap_or(i64::MAX);
        store
            .record_login_failure(&secrets::hash(username), now, window)
            .await
    }

    /// A correct password clears the username's failures.
    pub async fn succeeded(&self, store: &dyn Store, username: &str) -> Result<(), StoreError> {
        store.clear_login_failures(&secrets::hash(username)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::SqlStore;

    async fn store() -> (tempfile::TempDir, SqlStore) {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqlStore::open_sqlite(&dir.path().join("s.db"))
            .await
            .expect("store");
        (dir, store)
    }

    #[tokio::test]
    async fn a_username_gets_its_budget_of_failures_per_window() {
        let (_dir, store) = store().await;
        let guard = LoginGuard::new(4, 3, 600);
        let admit = |name: &'static str, now| {
            let (guard, store) = (&guard, &store);
            async move {
                guard
                    .admit(store, name, now)
                    .await
                    .expect("store")
                    .map(drop)
            }
        };
        for _ in 0..3 {
            assert!(admit("alice", 1000).await.is_ok());
            guard.failed(&store, "alice", 1000).await.expect("store");
        }
        assert_eq!(
            admit("alice", 1001).await.unwrap_err(),
            LoginRefusal::TooManyFailures {
                retry_after_mins: 10
            }
        );
        assert!(
            admit("bob", 1001).await.is_ok(),
            "other users are not affected"
        );
        assert_eq!(
            admit("alice", 1599).await.unwrap_err(),
            LoginRefusal::TooManyFailures {
                retry_after_mins: 1
            }
        );
        assert!(admit("alice", 1600).await.is_ok(), "a new window starts");
        guard.failed(&store, "alice", 1600).await.expect("store");
        assert!(
            admit("alice", 1601).await.is_ok(),
            "the old failures no longer count"
        );
    }

    #[tokio::test]
    async fn the_budget_is_shared_by_every_guard_on_one_store() {
        // Two replicas: failures on either count against the same username.
        let (_dir, store) = store().await;
        let (a, b) = (LoginGuard::new(4, 2, 600), LoginGuard::new(4, 2, 600));
        a.failed(&store, "alice", 10).await.expect("store");
        b.failed(&store, "alice", 11).await.expect("store");
        assert!(matches!(
            a.admit(&store, "alice", 12).await.expect("store"),
            Err(LoginRefusal::TooManyFailures { .. })
        ));
    }

    #[tokio::test]
    async fn success_clears_failures() {
        let (_dir, store) = store().await;
        let guard = LoginGuard::new(4, 2, 600);
        guard.failed(&store, "alice", 10).await.expect("store");
        guard.succeeded(&store, "alice").await.expect("store");
        guard.failed(&store, "alice", 11).await.expect("store");
        assert!(
            guard
                .admit(&store, "alice", 12)
                .await
                .expect("store")
                .is_ok()
        );
    }

    #[tokio::test]
    async fn concurrent_checks_are_bounded() {
        let (_dir, store) = store().await;
        let guard = LoginGuard::new(1, 5, 600);
        let held = guard
            .admit(&store, "alice", 0)
            .await
            .expect("store")
            .expect("first check");
        assert_eq!(
            guard
                .admit(&store, "bob", 0)
                .await
                .expect("store")
                .unwrap_err(),
            LoginRefusal::Busy
        );
        drop(held);
        assert!(guard.admit(&store, "bob", 0).await.expect("store").is_ok());
    }

    #[tokio::test]
    async fn spent_windows_are_purged() {
        let (_dir, store) = store().await;
        let guard = LoginGuard::new(1, 5, 600);
        guard.failed(&store, "user", 0).await.expect("store");
        assert!(store.purge_expired(601).await.expect("purge") >= 1);
        assert_eq!(
            store
                .login_failures(&secrets::hash("user"))
                .await
                .expect("store"),
            None
        );
    }
}
