//! Limits on password sign-in. Each Argon2id check holds about 19 MiB and a core for tens of milliseconds, so the
//! number running at once is bounded per replica, and the slot stays taken until the check itself ends (a client
//! that hangs up cannot free it early). Every attempt is counted before its password is checked, atomically in
//! the store, so parallel guesses each see their own number and none slips past the budget; a correct password
//! takes its attempt back.
//!
//! Two budgets per window, both kept in the store (by hash) so they hold across replicas and restarts:
//! - a username from one client address: small, so one guesser gets a handful of tries;
//! - a username from anywhere: larger, so a guesser spreading over many addresses is still stopped.
//!
//! A stranger can thus lock a person out only by exhausting the larger budget from several addresses, not with a
//! handful of wrong passwords. Unknown usernames are counted like known ones, so the limit reveals nothing.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::secrets;
use crate::store::{Store, StoreError, Timestamp};

/// Attempts a username may make from one client address in one window.
pub const MAX_ATTEMPTS_PER_ADDRESS: u32 = 5;
/// Attempts a username may make from all addresses together in one window.
pub const MAX_ATTEMPTS_PER_USERNAME: u32 = 20;
/// Length of the window, in seconds.
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

/// The network an address stands for: the address itself for IPv4, its /64 for IPv6 (one host commonly holds a
/// whole /64, so counting its addresses one by one would give it endless budgets).
pub fn network_of(address: IpAddr) -> String {
    match crate::client_address::network(address) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The budgets of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    pub per_address: u32,
    pub per_username: u32,
    pub window_secs: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            per_address: MAX_ATTEMPTS_PER_ADDRESS,
            per_username: MAX_ATTEMPTS_PER_USERNAME,
            window_secs: WINDOW_SECS,
        }
    }
}

/// A password check that may go ahead: its slot (move it into the blocking work that checks the password) and the
/// counters it was charged to.
pub struct Attempt {
    pub slot: OwnedSemaphorePermit,
    pub charged: Charged,
}

/// The counters an attempt was charged to.
pub struct Charged {
    address_key: String,
    username_key: String,
}

/// The sign-in limits of one server.
#[derive(Debug)]
pub struct LoginGuard {
    checks: Arc<Semaphore>,
    slots: usize,
    budgets: Budgets,
}

impl Default for LoginGuard {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(2 * cores, Budgets::default())
    }
}

impl LoginGuard {
    pub fn new(concurrent_checks: usize, budgets: Budgets) -> Self {
        LoginGuard {
            checks: Arc::new(Semaphore::new(concurrent_checks)),
            slots: concurrent_checks,
            budgets,
        }
    }

    /// Password checks running now (their slots are taken until each hash is done).
    pub fn checks_running(&self) -> usize {
        self.slots - self.checks.available_permits()
    }

    /// Takes a check slot and charges the attempt to both budgets, before any password is looked at. The outer
    /// error is the store's.
    pub async fn admit(
        &self,
        store: &dyn Store,
        username: &str,
        address: Option<IpAddr>,
        now: Timestamp,
    ) -> Result<Result<Attempt, LoginRefusal>, StoreError> {
        let Ok(slot) = self.checks.clone().try_acquire_owned() else {
            return Ok(Err(LoginRefusal::Busy));
        };
        let window = i64::try_from(self.budgets.window_secs).unwrap_or(i64::MAX);
        let address_key = secrets::hash(&format!(
            "{username}\n{}",
            address.map(network_of).unwrap_or_default()
        ));
        let username_key = secrets::hash(username);
        // The address's budget first: an attempt it refuses is not charged to the username, so one address
        // cannot spend the budget every other address shares.
        let over_address = store
            .record_login_failure(&address_key, now, window)
            .await?
            > i64::from(self.budgets.per_address);
        let over_username = !over_address
            && store
                .record_login_failure(&username_key, now, window)
                .await?
                > i64::from(self.budgets.per_username);
        if over_address || over_username {
            let key = if over_address {
                &address_key
            } else {
                &username_key
            };
            let window_end = store
                .login_failures(key)
                .await?
                .map_or(now + window, |(_, end)| end);
            let left = u64::try_from(window_end - now).unwrap_or(0);
            return Ok(Err(LoginRefusal::TooManyFailures {
                retry_after_mins: left.div_ceil(60).max(1),
            }));
        }
        Ok(Ok(Attempt {
            slot,
            charged: Charged {
                address_key,
                username_key,
            },
        }))
    }

    /// A correct password: this address starts afresh, and the attempt no longer counts against the username.
    pub async fn succeeded(&self, store: &dyn Store, charged: &Charged) -> Result<(), StoreError> {
        store.clear_login_failures(&charged.address_key).await?;
        store.forget_login_failure(&charged.username_key).await
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

    const BUDGETS: Budgets = Budgets {
        per_address: 3,
        per_username: 5,
        window_secs: 600,
    };

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn addresses_are_counted_by_network() {
        for (address, network) in [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("::1", "0:0:0:0::/64"),
        ] {
            assert_eq!(network_of(address.parse().unwrap()), network, "{address}");
        }
    }

    #[tokio::test]
    async fn each_attempt_is_charged_before_its_check_and_a_success_takes_it_back() {
        let (_dir, store) = store().await;
        let guard = LoginGuard::new(8, BUDGETS);
        let try_from = |addr: &'static str, now| {
            let (guard, store) = (&guard, &store);
            async move {
                guard
                    .admit(store, "alice", ip(addr), now)
                    .await
                    .expect("store")
            }
        };
        // Three attempts from one address pass (nothing was checked yet: each is charged as it starts).
        for _ in 0..3 {
            assert!(try_from("192.0.2.1", 1000).await.is_ok());
        }
        assert_eq!(
            try_from("192.0.2.1", 1001).await.err(),
            Some(LoginRefusal::TooManyFailures {
                retry_after_mins: 10
            })
        );
        // The refused attempt was not charged to the username (3 of 5), and another address has its own small
        // budget, until the username's is spent too.
        let ok = try_from("192.0.2.2", 1001).await.expect("second address");
        guard.succeeded(&store, &ok.charged).await.expect("store");
        // The success gave its attempt back: still 3 of 5.
        assert!(try_from("192.0.2.3", 1002).await.is_ok());
        assert!(try_from("192.0.2.4", 1003).await.is_ok());
        assert_eq!(
            try_from("192.0.2.5", 1599).await.err(),
            Some(LoginRefusal::TooManyFailures {
                retry_after_mins: 1
            })
        );
        assert!(
            try_from("192.0.2.1", 1600).await.is_ok(),
            "a new window starts"
        );
        assert!(
            guard
                .admit(&store, "bob", ip("192.0.2.1"), 1001)
                .await
                .expect("store")
                .is_ok(),
            "other users are not affected"
        );
    }

    #[tokio::test]
    async fn parallel_attempts_cannot_pass_the_budget_together() {
        let (_dir, store) = store().await;
        let guard = Arc::new(LoginGuard::new(64, BUDGETS));
        let store: Arc<dyn Store> = Arc::new(store);
        let attempts = (0..20).map(|_| {
            let (guard, store) = (guard.clone(), store.clone());
            tokio::spawn(async move {
                guard
                    .admit(store.as_ref(), "alice", ip("192.0.2.9"), 10)
                    .await
                    .expect("store")
                    .map(drop)
            })
        });
        let mut admitted = 0;
        for a in attempts {
            if a.await.expect("task").is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, BUDGETS.per_address);
    }

    #[tokio::test]
    async fn the_budget_is_shared_by_every_guard_on_one_store() {
        // Two replicas: attempts on either count against the same username and address.
        let (_dir, store) = store().await;
        let (a, b) = (LoginGuard::new(4, BUDGETS), LoginGuard::new(4, BUDGETS));
        for guard in [&a, &b, &a] {
            assert!(
                guard
                    .admit(&store, "alice", ip("192.0.2.1"), 12)
                    .await
                    .expect("store")
                    .is_ok()
            );
        }
        assert!(matches!(
            b.admit(&store, "alice", ip("192.0.2.1"), 12)
                .await
                .expect("store"),
            Err(LoginRefusal::TooManyFailures { .. })
        ));
    }

    #[tokio::test]
    async fn a_slot_is_held_until_its_attempt_is_dropped() {
        let (_dir, store) = store().await;
        let guard = LoginGuard::new(1, BUDGETS);
        let held = guard
            .admit(&store, "alice", None, 0)
            .await
            .expect("store")
            .expect("first check");
        assert_eq!(
            guard
                .admit(&store, "bob", None, 0)
                .await
                .expect("store")
                .err(),
            Some(LoginRefusal::Busy)
        );
        drop(held);
        assert!(
            guard
                .admit(&store, "bob", None, 0)
                .await
                .expect("store")
                .is_ok()
        );
    }

    #[tokio::test]
    async fn spent_windows_are_purged() {
        let (_dir, store) = store().await;
        let guard = LoginGuard::new(1, BUDGETS);
        drop(guard.admit(&store, "user", None, 0).await.expect("store"));
        assert!(store.purge_expired(601).await.expect("purge") >= 2);
        assert_eq!(
            store
                .login_failures(&secrets::hash("user"))
                .await
                .expect("store"),
            None
        );
    }
}
