//! Retrying frontend calls with capped exponential backoff; the one module that knows the backoff crate.

use std::{future::Future, time::Duration};

use backon::{ExponentialBuilder, Retryable as _};
use tokio::time::Instant;

use super::client::QueueError;

/// How long and how often a failed frontend call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    min_delay: Duration,
    max_delay: Duration,
    max_elapsed: Duration,
}

impl RetryPolicy {
    /// The first wait lasts between `min_delay` and twice that; waits double and level off between
    /// half of `max_delay` and `max_delay` (random jitter, so executors don't retry in lockstep).
    /// Gives up once the next attempt would start later than `max_elapsed` after the first one.
    pub const fn new(min_delay: Duration, max_delay: Duration, max_elapsed: Duration) -> Self {
        Self {
            min_delay,
            max_delay,
            max_elapsed,
        }
    }

    /// For log entries, mark calls and files: rides out a frontend restart or a short outage
    /// (about two minutes) so no job state or log output is lost to a blip.
    pub const fn reporting() -> Self {
        Self::new(
            Duration::from_millis(500),
            Duration::from_secs(15),
            Duration::from_secs(120),
        )
    }

    /// A single attempt.
    pub const fn none() -> Self {
        Self::new(Duration::ZERO, Duration::ZERO, Duration::ZERO)
    }

    /// The longest time after the first attempt at which another attempt may still start.
    pub const fn max_elapsed(&self) -> Duration {
        self.max_elapsed
    }
}

/// Runs `attempt` until it succeeds, fails with an error that is not [`QueueError::is_transient`],
/// or `policy` gives up; returns the last result.
pub async fn retry_transient<T, F, Fut>(
    op: &'static str,
    policy: RetryPolicy,
    attempt: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    retry_when(op, policy, QueueError::is_transient, attempt).await
}

/// Like [`retry_transient`], but retries exactly the errors for which `should_retry` is true
/// (for calls that must not be repeated once the frontend may have processed them).
pub async fn retry_when<T, F, Fut, P>(
    op: &'static str,
    policy: RetryPolicy,
    should_retry: P,
    attempt: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
    P: Fn(&QueueError) -> bool,
{
    let mut attempt = attempt;
    if policy.max_elapsed.is_zero() {
        return attempt().await;
    }
    // Jitter adds up to 100% to each step, so the steps stop growing at half the cap.
    let backoff = ExponentialBuilder::new()
        .with_min_delay(policy.min_delay)
        .with_max_delay((policy.max_delay / 2).max(policy.min_delay))
        .without_max_times()
        .with_jitter()
        // NB: the backoff crate is built without its `std` feature, so without a seed every
        // process would draw the same jitter sequence and executors would retry in lockstep.
        .with_jitter_seed(uuid::Uuid::new_v4().as_u64_pair().0);
    let started = Instant::now();
    let mut failed_attempts: u32 = 0;
    attempt
        .retry(backoff)
        .when(|err| should_retry(err))
        .adjust(move |_, delay| {
            delay
                .map(|delay| delay.min(policy.max_delay))
                .filter(|delay| started.elapsed() + *delay <= policy.max_elapsed)
        })
        .notify(|err: &QueueError, delay: Duration| {
            failed_attempts += 1;
            tracing::warn!(
                op,
                attempt = failed_attempts,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %err,
                "frontend request failed, retrying"
            );
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unavailable() -> QueueError {
        QueueError::Status {
            op: "test",
            status: 503,
            body: String::new(),
        }
    }

    fn unauthorized() -> QueueError {
        QueueError::Status {
            op: "test",
            status: 401,
            body: String::new(),
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(1),
            Duration::from_millis(4),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = retry_transient("test", fast(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(unavailable())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_transient("test", fast(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unauthorized())
        })
        .await;
        assert_eq!(result.err().and_then(|e| e.status()), Some(401));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn policy_none_tries_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_transient("test", RetryPolicy::none(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert_eq!(result.err().and_then(|e| e.status()), Some(503));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_elapsed_with_capped_waits() {
        let policy = RetryPolicy::new(
            Duration::from_millis(2),
            Duration::from_millis(8),
            Duration::from_millis(200),
        );
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = retry_transient("test", policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert_eq!(result.err().and_then(|e| e.status()), Some(503));
        let elapsed = started.elapsed();
        // The last attempt starts within 200 ms; generous slack for a loaded machine.
        assert!(elapsed < Duration::from_secs(5), "ran {elapsed:?}");
        // Waits of at most 8 ms allow about 25 attempts; uncapped doubling from 2 ms would allow
        // at most 7, so 10 proves the cap while leaving room for timer overshoot.
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls >= 10, "only {calls} attempts");
    }

    #[tokio::test]
    async fn custom_predicate_limits_what_is_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_when(
            "test",
            fast(),
            |err| err.status() == Some(429),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable())
            },
        )
        .await;
        assert_eq!(result.err().and_then(|e| e.status()), Some(503));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
