//! What a controller does when one of its watches fails. A controller merges all its watches into one stream
//! and pauses the whole stream after any error (kube's default: 0.8 s doubling to 30 s). Under an error storm (the
//! operator's Role not yet in force at install, an API server restart), dozens of watches fail together and the
//! pause reaches 30 s, so a controller can sit idle for half a minute after the cause is gone: a short ceiling
//! keeps it responsive (5 s here), and one relist per watch every few seconds costs the API server little.
//! The errors themselves are logged: kube hands them to the controller's output stream, which drops them.

use std::time::Duration;

use kube::runtime::controller;
use kube::runtime::utils::Backoff;

/// Doubling pauses from `FIRST` to `CEILING`, back to `FIRST` once any watch of the controller delivers.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

// kube resets the pause whenever any watch of the controller delivers, so a watch that keeps failing beside busy
// ones is retried at `FIRST`: one relist a second, as kube's own default (0.8 s) would do.
const FIRST: Duration = Duration::from_secs(1);
const CEILING: Duration = Duration::from_secs(5);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(CEILING);
        Some(now)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// Logs and counts (`mcp_authz_operator_watch_errors_total{kind}`) what a controller's run yields that nothing
/// else reports: failed watches (a Role missing a verb shows here and nowhere else). Failed reconciles are
/// already logged by the error policy.
pub fn log_failures<T, R, Q>(
    outcome: Result<T, controller::Error<R, Q>>,
    kind: &'static str,
    errors: &prometheus::IntCounter,
) -> std::future::Ready<()>
where
    R: std::error::Error,
    Q: std::error::Error,
{
    match outcome {
        Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
        // A trigger for an object deleted meanwhile: expected, nothing to do.
        Err(error @ controller::Error::ObjectNotFound(_)) => tracing::debug!(kind, %error),
        Err(error) => {
            errors.inc();
            tracing::warn!(kind, %error, "watch failed; retrying");
        }
    }
    std::future::ready(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::ObjectRef;

    #[test]
    fn only_failed_watches_are_counted() {
        type Outcome = Result<(), controller::Error<std::io::Error, std::io::Error>>;
        let errors = prometheus::IntCounter::new("errors", "test").unwrap();
        let object = || {
            Box::new(
                ObjectRef::<crate::api::MCPService>::new("x")
                    .within("ns")
                    .erase(),
            )
        };
        let cases: Vec<(Outcome, u64)> = vec![
            (Ok(()), 0),
            // Logged by the error policy already.
            (
                Err(controller::Error::ReconcilerFailed(
                    std::io::Error::other("reconcile"),
                    object(),
                )),
                0,
            ),
            // Deleted meanwhile: expected.
            (Err(controller::Error::ObjectNotFound(object())), 0),
            (
                Err(controller::Error::QueueError(std::io::Error::other(
                    "403 forbidden",
                ))),
                1,
            ),
        ];
        for (outcome, counted) in cases {
            let before = errors.get();
            drop(log_failures(outcome, "MCPService", &errors));
            assert_eq!(errors.get() - before, counted);
        }
    }

    #[test]
    fn pauses_double_to_the_ceiling_and_start_over_after_a_reset() {
        let mut b = WatchBackoff::default();
        let ms: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [1000, 2000, 4000, 5000, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_secs(1)));
    }
}
