//! Backoff for everything the executor tries again: frontend calls, creating a job's Kubernetes
//! objects, the dequeue loop after frontend errors, and reopening a container log; the one module
//! that knows the backoff crate.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder, Retryable as _};
use tokio::time::Instant;

use crate::queue::QueueError;

/// Steps doubling from `min_delay` to half of `max_delay`, each with up to 100% random jitter
/// added, so the waits level off between half of `max_delay` and `max_delay`.
fn jittered_exponential(min_delay: Duration, max_delay: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(min_delay)
        .with_max_delay((max_delay / 2).max(min_delay))
        .without_max_times()
        .with_jitter()
        // NB: whether the backoff crate seeds itself depends on its `std` feature, which other
        // crates switch on or not; unseeded, every process would draw the same jitter sequence
        // and executors would retry in lockstep.
        .with_jitter_seed(uuid::Uuid::new_v4().as_u64_pair().0)
}

/// An endless sequence of jittered, capped, exponentially growing waits between attempts.
#[derive(Debug)]
pub struct Backoff {
    min_delay: Duration,
    max_delay: Duration,
    steps: ExponentialBackoff,
}

impl Backoff {
    /// The first wait lasts between `min_delay` and twice that; waits double and level off
    /// between half of `max_delay` and `max_delay`.
    fn new(min_delay: Duration, max_delay: Duration) -> Self {
        Self {
            min_delay,
            max_delay,
            steps: jittered_exponential(min_delay, max_delay).build(),
        }
    }

    /// The wait after the next failure in a row.
    pub fn next_delay(&mut self) -> Duration {
        self.steps.next().unwrap_or(self.max_delay).min(self.max_delay)
    }

    /// Starts over at the shortest wait, after an attempt succeeded.
    pub fn reset(&mut self) {
        *self = Self::new(self.min_delay, self.max_delay);
    }

    /// The wait after `failures` failures in a row (the first failure is 1).
    pub fn delay_after(mut self, failures: u32) -> Duration {
        // Past this many doublings every step is at the cap; skipping more only costs time.
        const CAPPED_AFTER: u32 = 64;
        for _ in 1..failures.min(CAPPED_AFTER) {
            self.next_delay();
        }
        self.next_delay()
    }
}

/// Waits of the dequeue loop after consecutive frontend errors: from the poll interval (at least
/// half a second) up to 30 s, so a restarting frontend is not hammered by every executor at once.
pub fn dequeue_errors(poll_interval: Duration) -> Backoff {
    Backoff::new(
        poll_interval.max(Duration::from_millis(500)),
        Duration::from_secs(30),
    )
}

/// Waits before reopening a container log that could not be opened or broke: short at first,
/// since a stream breaks mostly for a moment (an API server or kubelet restart), up to 5 s while
/// it keeps failing.
pub fn log_reconnects() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}

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

    /// For creating and deleting a job's Kubernetes objects: rides out an API server restart
    /// (about a minute), so a job is not errored, nor its objects left, for a blip.
    pub const fn kubernetes_objects() -> Self {
        Self::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
            Duration::from_secs(60),
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
/// (for calls that must not be repeated once the frontend may have processed them, and for
/// Kubernetes calls).
pub async fn retry_when<T, E, F, Fut, P>(
    op: &'static str,
    policy: RetryPolicy,
    should_retry: P,
    attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: Fn(&E) -> bool,
    E: std::fmt::Display,
{
    let mut attempt = attempt;
    if policy.max_elapsed.is_zero() {
        return attempt().await;
    }
    let backoff = jittered_exponential(policy.min_delay, policy.max_delay);
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
        .notify(|err: &E, delay: Duration| {
            failed_attempts += 1;
            tracing::warn!(
                op,
                attempt = failed_attempts,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %err,
                "request failed, retrying"
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

    #[tokio::test(start_paused = true)]
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
        // The last attempt starts within 200 ms (timers of the paused clock fire on whole
        // milliseconds, so the last wait may end up to one late).
        assert!(elapsed <= Duration::from_millis(201), "ran {elapsed:?}");
        // Waits of at most 8 ms (9 with rounding) allow at least 22 attempts; uncapped doubling
        // from 2 ms would allow at most 7.
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls >= 22, "only {calls} attempts");
    }

    #[tokio::test]
    async fn custom_predicate_limits_what_is_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_when(
            "test",
            fast(),
            |err: &QueueError| err.status() == Some(429),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable())
            },
        )
        .await;
        assert_eq!(result.err().and_then(|e| e.status()), Some(503));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    fn assert_within(delay: Duration, from: Duration, to: Duration) {
        assert!(
            from <= delay && delay <= to,
            "{delay:?} not within {from:?}..={to:?}"
        );
    }

    #[test]
    fn dequeue_error_waits_double_from_the_poll_interval_and_level_off_at_the_cap() {
        let second = Duration::from_secs(1);
        for _ in 0..50 {
            assert_within(dequeue_errors(second).delay_after(1), second, 2 * second);
            assert_within(dequeue_errors(second).delay_after(3), 4 * second, 8 * second);
            assert_within(dequeue_errors(second).delay_after(30), 15 * second, 30 * second);
            assert_within(
                dequeue_errors(Duration::from_millis(10)).delay_after(1),
                Duration::from_millis(500),
                second,
            );
        }
    }

    #[test]
    fn log_reconnect_waits_grow_while_failing_and_start_over_after_a_reset() {
        let mut backoff = log_reconnects();
        assert_within(
            backoff.next_delay(),
            Duration::from_millis(200),
            Duration::from_millis(400),
        );
        assert_within(
            backoff.next_delay(),
            Duration::from_millis(400),
            Duration::from_millis(800),
        );
        for _ in 0..20 {
            backoff.next_delay();
        }
        assert_within(
            backoff.next_delay(),
            Duration::from_millis(2500),
            Duration::from_secs(5),
        );
        backoff.reset();
        assert_within(
            backoff.next_delay(),
            Duration::from_millis(200),
            Duration::from_millis(400),
        );
    }

    #[test]
    fn each_backoff_draws_its_own_jitter() {
        let first_waits: Vec<Duration> = (0..4).map(|_| log_reconnects().next_delay()).collect();
        let mut distinct = first_waits.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            first_waits.len(),
            "executors would retry in lockstep: {first_waits:?}"
        );
    }
}
