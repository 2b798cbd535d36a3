//! The Kubernetes client's request rate limit: a token bucket of `EXECUTOR_KUBERNETES_CLIENT_BURST`
//! requests refilled at `EXECUTOR_KUBERNETES_CLIENT_QPS`, as client-go's limiter is.
//!
//! A fixed window (N requests per N/QPS seconds) would let a burst use up the window and then hold
//! every request, a Job delete as much as a create, until the window ends: seconds of stall at
//! twice the average rate. Here a request over the rate waits only for its own token.
//!
//! Requests take their tokens in the order they were sent, so a burst of new jobs' creates would
//! hold the running jobs' log streams and deletes back behind it. [`Headroom`] lets the dequeue
//! loop take a job only while at least half the bucket is free, so the lower half stays for the
//! jobs already running.

use std::{
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::Clock,
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Tokio's clock, so the limiter follows a paused test clock as the executor's timers do.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// How many of the bucket's tokens are free, followed the way the bucket counts them (GCRA): each
/// token taken moves the time the bucket is full again one token's worth later.
#[derive(Clone)]
pub struct Headroom {
    full_at: Arc<Mutex<Instant>>,
    burst: u32,
    per_token: Duration,
}

impl Headroom {
    fn new(qps: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            full_at: Arc::new(Mutex::new(Instant::now())),
            burst: burst.get(),
            per_token: Duration::from_secs(1) / qps.get(),
        }
    }

    /// A request took a token.
    fn took_one(&self) {
        let mut full_at = self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        *full_at = (*full_at).max(Instant::now()) + self.per_token;
    }

    /// When at least `tokens` (at most the burst) are free; `None` when they always were.
    fn free_at(&self, tokens: u32) -> Option<Instant> {
        let full_at = *self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        full_at.checked_sub(self.per_token * (self.burst - tokens.min(self.burst)))
    }

    /// Tokens a new job may start at: the upper half of the bucket (at least one), so the lower
    /// half stays free for the log streams and deletes of the jobs already running.
    pub fn for_new_jobs(&self) -> u32 {
        self.burst.div_ceil(2)
    }

    /// Waits until at least [`Self::for_new_jobs`] tokens are free. Tokens come back with time
    /// alone, so this sleeps until then and looks again: requests sent meanwhile took some.
    pub async fn wait_for_new_job_room(&self) {
        while let Some(room_at) = self.free_at(self.for_new_jobs())
            && room_at > Instant::now()
        {
            tokio::time::sleep_until(room_at).await;
        }
    }
}

/// Puts [`ClientRateLimit`] in front of the client's HTTP service.
#[derive(Clone)]
pub struct ClientRateLimitLayer {
    bucket: Arc<Bucket>,
    headroom: Headroom,
    metrics: Metrics,
}

impl ClientRateLimitLayer {
    /// `qps` requests a second on average, `burst` at once (zeros count as one); the time requests
    /// are held back goes to `kube_executor_kubernetes_rate_limited_seconds_total`.
    pub fn new(qps: u32, burst: u32, metrics: Metrics) -> Self {
        let qps = NonZeroU32::new(qps).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(qps).allow_burst(burst);
        let clock = TokioClock {
            origin: Instant::now(),
        };
        Self {
            bucket: Arc::new(RateLimiter::direct_with_clock(quota, clock)),
            headroom: Headroom::new(qps, burst),
            metrics,
        }
    }

    /// The bucket's free tokens, for the dequeue loop.
    pub fn headroom(&self) -> Headroom {
        self.headroom.clone()
    }
}

impl<S> Layer<S> for ClientRateLimitLayer {
    type Service = ClientRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientRateLimit {
            inner,
            bucket: self.bucket.clone(),
            headroom: self.headroom.clone(),
            metrics: self.metrics.clone(),
            waiting: None,
            holds_token: false,
        }
    }
}

/// Ready once the next request has its token. The client's requests queue in front of one
/// instance of it (the client's buffer), so they get their tokens in the order they were sent.
pub struct ClientRateLimit<S> {
    inner: S,
    bucket: Arc<Bucket>,
    headroom: Headroom,
    metrics: Metrics,
    /// The wait for the next token, and when it began.
    waiting: Option<(Pin<Box<Sleep>>, Instant)>,
    /// A token was taken for the request that `call` sends next.
    holds_token: bool,
}

impl<S, Request> Service<Request> for ClientRateLimit<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.holds_token {
            if let Some((sleep, _)) = &mut self.waiting {
                ready!(sleep.as_mut().poll(cx));
            }
            match self.bucket.check() {
                Ok(()) => {
                    self.headroom.took_one();
                    if let Some((_, since)) = self.waiting.take() {
                        self.metrics.record_rate_limited(since.elapsed());
                    }
                    self.holds_token = true;
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.bucket.clock().now());
                    let since = self.waiting.take().map_or_else(Instant::now, |(_, since)| since);
                    self.waiting = Some((Box::pin(tokio::time::sleep(wait)), since));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.holds_token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;
    use crate::k8s::testing;

    /// Sends `count` GETs at once through a client limited by `layer`; returns when each reached
    /// the server, measured from the start.
    async fn arrivals(layer: &ClientRateLimitLayer, count: usize) -> Vec<Duration> {
        let (client, mut server) = testing::client_through(layer);
        let started = Instant::now();
        let api: kube::Api<Pod> = kube::Api::namespaced(client, "ns");
        let requests: Vec<_> = (0..count)
            .map(|i| {
                let api = api.clone();
                tokio::spawn(async move { api.get_opt(&format!("pod-{i}")).await })
            })
            .collect();
        let mut arrivals = Vec::new();
        for _ in 0..count {
            let call = server.next().await;
            arrivals.push(started.elapsed());
            call.answer(
                404,
                serde_json::json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            );
        }
        for request in requests {
            let pod = request
                .await
                .expect("the request task")
                .expect("a 404 is no error");
            assert!(pod.is_none());
        }
        arrivals
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_burst_each_request_waits_for_its_own_token() {
        // 2 a second with bursts of 4: four at once, then one every half second.
        let arrivals = arrivals(&ClientRateLimitLayer::new(2, 4, Metrics::for_tests()), 8).await;
        let ms: Vec<u128> = arrivals.iter().map(Duration::as_millis).collect();
        assert!(ms[..4].iter().all(|at| *at < 10), "{ms:?}");
        for (n, at) in ms[4..].iter().enumerate() {
            let due = 500 * (n as u128 + 1);
            assert!(
                (due..due + 10).contains(at),
                "request {} came at {at} ms, its token at {due} ms: {ms:?}",
                n + 5
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_gets_its_burst_back() {
        let layer = ClientRateLimitLayer::new(2, 4, Metrics::for_tests());
        arrivals(&layer, 4).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = arrivals(&layer, 4).await;
        assert!(again.iter().all(|at| at.as_millis() < 10), "{again:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_job_waits_until_half_the_burst_is_free_again() {
        // 10 a second with bursts of 4: the lower two tokens are kept for the running jobs.
        let layer = ClientRateLimitLayer::new(10, 4, Metrics::for_tests());
        let headroom = layer.headroom();
        assert_eq!(headroom.for_new_jobs(), 2);
        let started = Instant::now();
        headroom.wait_for_new_job_room().await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "an idle client has room at once"
        );
        arrivals(&layer, 4).await;
        let started = Instant::now();
        headroom.wait_for_new_job_room().await;
        let waited = started.elapsed().as_millis();
        assert!(
            (200..210).contains(&waited),
            "two tokens come back in 200 ms, waited {waited} ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_sent_during_the_wait_takes_its_token_from_the_new_job() {
        let layer = ClientRateLimitLayer::new(10, 4, Metrics::for_tests());
        let headroom = layer.headroom();
        arrivals(&layer, 4).await;
        let started = Instant::now();
        let waiting = tokio::spawn({
            let headroom = headroom.clone();
            async move { headroom.wait_for_new_job_room().await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A running job's delete takes the token that came back at 100 ms.
        arrivals(&layer, 1).await;
        waiting.await.expect("the waiting task");
        let waited = started.elapsed().as_millis();
        assert!(
            (300..310).contains(&waited),
            "room comes a token later, waited {waited} ms"
        );
    }

    #[test]
    fn a_bucket_of_one_lets_a_new_job_take_its_only_token() {
        let layer = ClientRateLimitLayer::new(1, 1, Metrics::for_tests());
        assert_eq!(layer.headroom().for_new_jobs(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_held_back_is_counted() {
        let metrics = Metrics::for_tests();
        let layer = ClientRateLimitLayer::new(2, 1, metrics.clone());
        arrivals(&layer, 3).await;
        // Held back for the second request's token half a second, then for the third's as long.
        let held = metrics.rate_limited_seconds();
        assert!((0.99..1.05).contains(&held), "{held}");
    }
}
