//! One exit deadline per stop. A terminated pod is killed when its grace period ends, so a program that drains,
//! then flushes its audit stream, then stops tracing, then closes its outputs must fit all of it in one budget:
//! timeouts per step would add up past the kubelet's SIGKILL, and the records still queued would be lost.
//!
//! ```text
//! signal ──────────── drain ──────────── | audit | tracing | exit | deadline
//!        each step runs until its own end point and no later; one that ends early leaves its time to the next
//! ```
//!
//! The audit flush, the tracing stop and the exit have reserved shares, so a drain that uses all of its share
//! (a hung upstream, a long admin request) cannot starve them.

use std::time::{Duration, Instant};

/// The stop budget when none is configured, in milliseconds: inside Kubernetes' default grace period of 30 s
/// with [`MARGIN`].
pub const DEFAULT_BUDGET_MS: u64 = 25_000;
/// [`DEFAULT_BUDGET_MS`] as a duration.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(DEFAULT_BUDGET_MS);

/// What a pod's `terminationGracePeriodSeconds` must leave beyond a program's budget: the signal's delivery,
/// the runtime's own exit, and a kubelet that counts from a little earlier than the program does.
pub const MARGIN: Duration = Duration::from_secs(5);

/// The most the audit flush, the tracing stop and the exit keep for themselves. Beyond these, a longer budget
/// goes to the drain: queued records are written in milliseconds when their reader keeps up, and a tracing
/// stop longer than `mcp_authz_otel::export::STOP_BUDGET` only waits on a collector.
const AUDIT_MAX: Duration = Duration::from_secs(5);
const TRACING_MAX: Duration = Duration::from_secs(2);
const EXIT_MAX: Duration = Duration::from_millis(500);

/// How a budget is shared between the steps of a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Open connections and requests finish.
    pub drain: Duration,
    /// The audit records queued are written.
    pub audit: Duration,
    /// The spans queued are exported.
    pub tracing: Duration,
    /// The log stream is closed and the process exits.
    pub exit: Duration,
}

impl Split {
    /// A fifth of the budget to the audit flush, a tenth to tracing, a twentieth to the exit (each capped),
    /// the rest to the drain.
    pub fn of(budget: Duration) -> Self {
        let audit = (budget / 5).min(AUDIT_MAX);
        let tracing = (budget / 10).min(TRACING_MAX);
        let exit = (budget / 20).min(EXIT_MAX);
        Split {
            drain: budget.saturating_sub(audit + tracing + exit),
            audit,
            tracing,
            exit,
        }
    }
}

/// A stop under way: the deadline of each step, fixed when the signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    drained: Instant,
    audited: Instant,
    traced: Instant,
    deadline: Instant,
}

impl Stop {
    /// A stop starting now, within `budget`.
    pub fn begin(budget: Duration) -> Self {
        Self::at(Instant::now(), budget)
    }

    /// A stop that started at `start`.
    pub fn at(start: Instant, budget: Duration) -> Self {
        let split = Split::of(budget);
        let drained = start + split.drain;
        let audited = drained + split.audit;
        let traced = audited + split.tracing;
        Stop {
            drained,
            audited,
            traced,
            deadline: start + budget,
        }
    }

    /// When connections still open are closed and requests still running are cut.
    pub fn drained_by(&self) -> Instant {
        self.drained
    }

    /// When the audit flush gives up.
    pub fn audited_by(&self) -> Instant {
        self.audited
    }

    /// When the tracing stop gives up.
    pub fn traced_by(&self) -> Instant {
        self.traced
    }

    /// When the process must be gone.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The time from now to `at` (zero once it passed).
    pub fn left_until(at: Instant) -> Duration {
        at.saturating_duration_since(Instant::now())
    }
}

/// The `terminationGracePeriodSeconds` a pod needs for a program stopping within `budget`.
pub fn grace_period_seconds(budget: Duration) -> i64 {
    let total = budget + MARGIN;
    let seconds = total.as_secs() + u64::from(total.subsec_nanos() > 0);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_split_with_shares_reserved_for_what_comes_after_the_drain() {
        let ms = Duration::from_millis;
        for (budget, drain, audit, tracing, exit) in [
            (ms(25_000), ms(17_500), ms(5_000), ms(2_000), ms(500)),
            (ms(10_000), ms(6_500), ms(2_000), ms(1_000), ms(500)),
            (ms(3_000), ms(1_950), ms(600), ms(300), ms(150)),
            (ms(600_000), ms(592_500), ms(5_000), ms(2_000), ms(500)),
            (ms(0), ms(0), ms(0), ms(0), ms(0)),
        ] {
            let split = Split::of(budget);
            assert_eq!(
                split,
                Split {
                    drain,
                    audit,
                    tracing,
                    exit
                },
                "{budget:?}"
            );
            assert_eq!(drain + audit + tracing + exit, budget, "{budget:?}");
        }
    }

    #[test]
    fn each_step_ends_where_the_next_begins_and_the_last_at_the_deadline() {
        let start = Instant::now();
        let stop = Stop::at(start, Duration::from_secs(25));
        assert_eq!(stop.drained_by() - start, Duration::from_millis(17_500));
        assert_eq!(stop.audited_by() - start, Duration::from_millis(22_500));
        assert_eq!(stop.traced_by() - start, Duration::from_millis(24_500));
        assert_eq!(stop.deadline() - start, Duration::from_secs(25));
    }

    #[test]
    fn a_pod_grace_period_exceeds_the_budget_by_the_margin_in_whole_seconds() {
        for (budget, seconds) in [
            (Duration::from_secs(25), 30),
            (Duration::from_millis(25_001), 31),
            (Duration::from_millis(2_500), 8),
            (Duration::ZERO, 5),
        ] {
            assert_eq!(grace_period_seconds(budget), seconds, "{budget:?}");
        }
    }
}
