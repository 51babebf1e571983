//! [`eventually`]: the one way tests wait for a condition that has no event to await.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] re-checks its condition: short enough not to slow a test down,
/// long enough not to load the processes under test with requests.
pub const POLL: Duration = Duration::from_millis(25);

/// Polls `check` every [`POLL`] until it returns `Ok`, and returns that value.
///
/// Panics once `timeout` has passed with `"{what}: not true within {timeout:?}; last: {err}"`,
/// where `err` is the last `Err` of `check`: make it the observed value (a status, a metric,
/// a count), so a failure says what the system did instead. The timeout is an upper bound
/// against hangs, never the assertion itself: prefer awaiting an event (a frame, a log line,
/// a readiness change) where one exists.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_every(what, timeout, POLL, check).await
}

/// [`eventually`] with its own poll interval, for checks that are expensive or must see the
/// same value on two polls some time apart.
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not true within {timeout:?}; last: {last}"
            ),
        }
        tokio::time::sleep(poll).await;
    }
}
