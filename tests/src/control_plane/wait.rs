//! Waiting for a cluster to converge, and reading the API server's refusals.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits: controllers and webhook configuration informers settle in well under this.
pub const EVENTUALLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Calls `probe` every 100 ms until it returns `Some`, for at most [`EVENTUALLY_TIMEOUT`].
///
/// # Panics
/// When time runs out, naming `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, EVENTUALLY_TIMEOUT, probe).await
}

/// [`eventually`] with another time limit.
///
/// # Panics
/// When time runs out, naming `what` was awaited.
pub async fn eventually_within<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API server's refusal (status code, reason, message, field causes) from a kube call that must fail.
///
/// # Panics
/// If the call succeeded or failed without an answer from the API server.
#[track_caller]
pub fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        Err(other) => panic!("expected a refusal from the API server, got the error {other}"),
        Ok(value) => panic!("expected a refusal from the API server, got {value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value() {
        let mut calls = 0;
        let value = eventually("the third call", || {
            calls += 1;
            let ready = calls == 3;
            async move { ready.then_some(calls) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 200ms waiting for nothing")]
    async fn eventually_gives_up_naming_what_it_awaited() {
        eventually_within("nothing", Duration::from_millis(200), || async {
            None::<()>
        })
        .await;
    }

    #[test]
    fn api_error_unwraps_the_status() {
        let status = kube::core::Status::failure("no", "Forbidden").with_code(403);
        let refused = api_error::<()>(Err(kube::Error::Api(status.boxed())));
        assert_eq!(
            (
                refused.code,
                refused.reason.as_str(),
                refused.message.as_str()
            ),
            (403, "Forbidden", "no")
        );
    }

    #[test]
    #[should_panic(expected = "expected a refusal from the API server, got 7")]
    fn api_error_panics_on_success() {
        api_error(Ok::<_, kube::Error>(7));
    }
}
